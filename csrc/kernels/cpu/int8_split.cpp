// Activations as int8 digits of a fixed-point value (see split_fixed_point_rows in
// int8_gemm.h): conversion at O(M K), next to an O(N K) product, so plain C++.
#include <cmath>
#include <limits>

#include "int8_gemm.h"

namespace effgen::cpu {
namespace {

constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23
constexpr int64_t kChunk = 256;              // columns converted at a time

// Plain comparisons, not std::fmax / std::fmin: those honour NaN and were libm calls on
// the baseline ISA (5 ns per value); NaN and Inf are caught by the finiteness test instead.
template <typename T>
bool split_rows_t(const T* x, int64_t k, int limbs, int64_t i0, int64_t i1, int8_t* rows, float* scales) {
  const float kMax = static_cast<float>(split_max(limbs));
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = x + i * k;
    float absmax = 0.0f;
    bool finite = true;
    for (int64_t c = 0; c < k; ++c) {
      const float v = std::fabs(to_f32(row[c]));
      finite &= v <= std::numeric_limits<float>::max();  // false for Inf and NaN
      absmax = v > absmax ? v : absmax;
    }
    if (!finite) return false;
    scales[i] = absmax / kMax;
    const float inv = absmax > 0.0f ? kMax / absmax : 0.0f;
    // A chunk of columns at a time, digit row by digit row: loops the compiler vectorises.
    for (int64_t c0 = 0; c0 < k; c0 += kChunk) {
      const int64_t nc = k - c0 < kChunk ? k - c0 : kChunk;
      int32_t a[kChunk];
      for (int64_t c = 0; c < nc; ++c) {
        // Round half to even by adding and subtracting 1.5 * 2^23 (exact for |v| < 2^22,
        // in the default rounding mode; nearbyint is a libm call on the baseline ISA). The
        // clamp absorbs |x| * inv exceeding split_max by a rounding.
        float v = to_f32(row[c0 + c]) * inv;
        v = v > kMax ? kMax : (v < -kMax ? -kMax : v);
        a[c] = static_cast<int32_t>((v + kRoundMagic) - kRoundMagic);
      }
      for (int j = limbs - 1; j > 0; --j) {  // least significant digit first
        int8_t* digit = rows + (i * limbs + j) * k + c0;
        for (int64_t c = 0; c < nc; ++c) {
          const int32_t low = ((a[c] + 128) & 255) - 128;  // two's complement: the balanced low byte
          digit[c] = static_cast<int8_t>(low);
          a[c] = (a[c] - low) >> 8;  // exact: the low byte is gone
        }
      }
      int8_t* leading = rows + i * limbs * k + c0;
      for (int64_t c = 0; c < nc; ++c) leading[c] = static_cast<int8_t>(a[c]);
    }
  }
  return true;
}

}  // namespace

bool split_fixed_point_rows(DType dtype, const void* x, int64_t k, int limbs, int64_t i0, int64_t i1,
                            int8_t* rows, float* scales) {
  switch (dtype) {
    case DType::kBF16: return split_rows_t(static_cast<const bf16*>(x), k, limbs, i0, i1, rows, scales);
    case DType::kF16: return split_rows_t(static_cast<const fp16*>(x), k, limbs, i0, i1, rows, scales);
    case DType::kF32: return split_rows_t(static_cast<const float*>(x), k, limbs, i0, i1, rows, scales);
  }
  return false;
}

}  // namespace effgen::cpu
