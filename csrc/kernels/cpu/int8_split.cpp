// Activations as two int8 halves of a 16-bit fixed-point value (see split_int16_rows in
// int8_gemm.h): conversion at O(M K), next to an O(N K) product, so plain C++.
#include <cmath>
#include <limits>

#include "int8_gemm.h"

namespace effgen::cpu {
namespace {

constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23

// Plain comparisons, not std::fmax / std::fmin: those honour NaN and were libm calls on
// the baseline ISA (5 ns per value); NaN and Inf are caught by the finiteness test instead.
template <typename T>
bool split_rows_t(const T* x, int64_t m, int64_t k, int64_t i0, int64_t i1, int8_t* rows, float* scales) {
  constexpr float kMax = static_cast<float>(kSplitMax);
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
    int8_t* hi = rows + i * k;
    int8_t* lo = rows + (m + i) * k;
    for (int64_t c = 0; c < k; ++c) {
      // Round half to even by adding and subtracting 1.5 * 2^23 (exact for |v| < 2^22, in
      // the default rounding mode; nearbyint is a libm call on the baseline ISA). The clamp
      // absorbs |x| * inv exceeding kSplitMax by a rounding.
      float v = to_f32(row[c]) * inv;
      v = v > kMax ? kMax : (v < -kMax ? -kMax : v);
      const int32_t a = static_cast<int32_t>((v + kRoundMagic) - kRoundMagic);
      const int32_t low = ((a + 128) & 255) - 128;  // two's complement: the balanced low byte
      lo[c] = static_cast<int8_t>(low);
      hi[c] = static_cast<int8_t>((a - low) / 256);
    }
  }
  return true;
}

}  // namespace

bool split_int16_rows(DType dtype, const void* x, int64_t m, int64_t k, int64_t i0, int64_t i1, int8_t* rows,
                      float* scales) {
  switch (dtype) {
    case DType::kBF16: return split_rows_t(static_cast<const bf16*>(x), m, k, i0, i1, rows, scales);
    case DType::kF16: return split_rows_t(static_cast<const fp16*>(x), m, k, i0, i1, rows, scales);
    case DType::kF32: return split_rows_t(static_cast<const float*>(x), m, k, i0, i1, rows, scales);
  }
  return false;
}

}  // namespace effgen::cpu
