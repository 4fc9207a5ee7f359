// The sign codec's packing and decoding, plain C++ (its payload is 1 bit per value). The
// int8 codec is written over the SIMD abstraction in compress_impl.h.
#include "compress.h"

#include <algorithm>
#include <cmath>

namespace effgen::cpu {

// kSigns.v[byte][k] = bit k of byte ? 1 : -1 (least significant bit first, as packed).
struct SignTable {
  float v[256][8];
  constexpr SignTable() : v() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int k = 0; k < 8; ++k) v[byte][k] = (byte >> k) & 1 ? 1.0f : -1.0f;
    }
  }
};
constexpr SignTable kSigns{};

// Both loops walk one block at a time (the scale is hoisted) and find bits by shifts: a
// division per value made them about 30x slower than the int8 codec.
void decompress_sum_sign(const uint8_t* packed, const float* scales, int64_t rows, int64_t n, int64_t block,
                         int64_t i0, int64_t i1, float* total) {
  const int64_t blocks = (n + block - 1) / block, row_bytes = (n + 7) / 8;
  for (int64_t i = i0; i < i1; ++i) total[i] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* bits = packed + r * row_bytes;
    for (int64_t start = i0; start < i1;) {
      const int64_t b = start / block, end = std::min(i1, (b + 1) * block);
      const float scale = scales[r * blocks + b], negative = -scale;
      int64_t i = start;
      for (; i < end && (i & 7); ++i) total[i] += (bits[i >> 3] >> (i & 7)) & 1u ? scale : negative;
      for (; i + 8 <= end; i += 8) {  // whole bytes: eight signs from the table, exact products
        const float* signs = kSigns.v[bits[i >> 3]];
        for (int k = 0; k < 8; ++k) total[i + k] += signs[k] * scale;
      }
      for (; i < end; ++i) total[i] += (bits[i >> 3] >> (i & 7)) & 1u ? scale : negative;
      start = end;
    }
  }
}

namespace {

// The bits and residual of values [0, n) once their blocks' scales are known: v is x + error
// and may be `error` itself (updated in place).
void sign_pack_update(const float* v, const float* scales, int64_t n, int64_t block, uint8_t* packed,
                      float* error) {
  // Bits first: v may be the error buffer itself, which the second loop overwrites.
  for (int64_t byte = 0; byte < (n + 7) / 8; ++byte) {
    uint32_t bits = 0;
    for (int64_t k = 0; k < 8 && byte * 8 + k < n; ++k) bits |= static_cast<uint32_t>(v[byte * 8 + k] >= 0.0f) << k;
    packed[byte] = static_cast<uint8_t>(bits);
  }
  for (int64_t start = 0; start < n; start += block) {
    const int64_t end = std::min(n, start + block);
    const float scale = scales[start / block];
    for (int64_t i = start; i < end; ++i) error[i] = v[i] - (v[i] >= 0.0f ? 1.0f : -1.0f) * scale;
  }
}

// error[i] = x[i] + error[i] over [0, count); returns the block's scale (see compress.h),
// with the sums taken in double over 8 lanes. A double holds the exact sum of a block's
// magnitudes whenever they span fewer than 53 - 24 - log2(count) binades (21 for blocks of
// 256), so that sum's order does not matter; the squares (48-bit products) are rounded, so
// another summation order (the reference's: torch's) can differ in the last bit of the
// double, which changes the float scale only when it falls on a rounding boundary.
template <typename T>
float add_then_scale(const T* x, float* error, int64_t count) {
  constexpr int kLanes = 8;
  double magnitude[kLanes] = {}, square[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      error[i + k] += to_f32(x[i + k]);
      const double v = error[i + k];
      magnitude[k] += std::fabs(v);
      square[k] += v * v;
    }
  }
  double magnitudes = 0.0, squares = 0.0;
  for (; i < count; ++i) {
    error[i] += to_f32(x[i]);
    const double v = error[i];
    magnitudes += std::fabs(v);
    squares += v * v;
  }
  for (int k = 0; k < kLanes; ++k) {
    magnitudes += magnitude[k];
    squares += square[k];
  }
  const double n = static_cast<double>(count), rms = std::sqrt(squares / n), capped = kSignScaleCap * (magnitudes / n);
  return static_cast<float>(rms < capped || std::isnan(rms) ? rms : capped);  // NaN: both are
}

template <typename T>
void ef_compress_sign_t(const T* x, float* error, int64_t n, int64_t block, int64_t b0, int64_t b1, uint8_t* packed,
                        float* scales) {
  const int64_t v0 = b0 * block, v1 = std::min(n, b1 * block);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * block;
    scales[b] = add_then_scale(x + start, error + start, std::min(block, n - start));
  }
  sign_pack_update(error + v0, scales + b0, v1 - v0, block, packed + v0 / 8, error + v0);
}

}  // namespace

void ef_compress_sign_blocks(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                             int64_t b1, uint8_t* packed, float* scales) {
  switch (dtype) {
    case DType::kBF16:
      return ef_compress_sign_t(static_cast<const bf16*>(x), error, n, block, b0, b1, packed, scales);
    case DType::kF16:
      return ef_compress_sign_t(static_cast<const fp16*>(x), error, n, block, b0, b1, packed, scales);
    case DType::kF32:
      return ef_compress_sign_t(static_cast<const float*>(x), error, n, block, b0, b1, packed, scales);
  }
}

}  // namespace effgen::cpu
