// Activations as int8 digits of a fixed-point value (see split_fixed_point_rows in
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
    for (int64_t c = 0; c < k; ++c) {
      // Round half to even by adding and subtracting 1.5 * 2^23 (exact for |v| < 2^22, in
      // the default rounding mode; nearbyint is a libm call on the baseline ISA). The clamp
      // absorbs |x| * inv exceeding split_max by a rounding.
      float v = to_f32(row[c]) * inv;
      v = v > kMax ? kMax : (v < -kMax ? -kMax : v);
      int32_t a = static_cast<int32_t>((v + kRoundMagic) - kRoundMagic);
      for (int j = limbs - 1; j > 0; --j) {  // least significant digit first
        const int32_t low = ((a + 128) & 255) - 128;  // two's complement: the balanced low byte
        rows[(i * limbs + j) * k + c] = static_cast<int8_t>(low);
        a = (a - low) / 256;
      }
      rows[i * limbs * k + c] = static_cast<int8_t>(a);
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
