#include <cstring>

#include "binary_gemm.h"

namespace effgen::cpu {
namespace {

template <typename T>
void pack_signs_t(const T* x, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t row_bytes = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = out + r * row_bytes;
    std::memset(dst, 0, static_cast<size_t>(row_bytes));
    for (int64_t i = 0; i < k; ++i) {
      if (to_f32(x[r * k + i]) >= 0.0f) dst[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  }
}

bool bit(const uint8_t* row, int64_t i) { return (row[i / 8] >> (i % 8)) & 1u; }

}  // namespace

void pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out) {
  switch (dtype) {
    case DType::kBF16: return pack_signs_t(static_cast<const bf16*>(x), rows, k, out);
    case DType::kF16: return pack_signs_t(static_cast<const fp16*>(x), rows, k, out);
    case DType::kF32: return pack_signs_t(static_cast<const float*>(x), rows, k, out);
  }
}

bool pack_ternary_rows(const int8_t* q, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  std::memset(out, 0, static_cast<size_t>(rows * 2 * plane));
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* positive = out + r * 2 * plane;
    uint8_t* negative = positive + plane;
    for (int64_t i = 0; i < k; ++i) {
      const int8_t v = q[r * k + i];
      if (v < -1 || v > 1) return false;
      if (v != 0) (v > 0 ? positive : negative)[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  }
  return true;
}

void unpack_binary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out) {
  const int64_t row_bytes = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < k; ++i) out[r * k + i] = bit(packed + r * row_bytes, i) ? 1 : -1;
  }
}

void unpack_ternary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* positive = packed + r * 2 * plane;
    for (int64_t i = 0; i < k; ++i) {
      out[r * k + i] = static_cast<int8_t>(int{bit(positive, i)} - int{bit(positive + plane, i)});
    }
  }
}

}  // namespace effgen::cpu
