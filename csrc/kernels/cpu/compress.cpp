// Plain C++ (the compiler vectorises the inner loops): the codecs move a few bytes per value
// and are bound by memory, so they need one pass, not hand-written intrinsics.
#include "compress.h"

#include <cmath>
#include <cstring>

namespace effgen::cpu {
namespace {

constexpr uint32_t kMaxFiniteBits = 0x7F7FFFFFu;

template <typename T>
void ef_int8_blocks(const T* x, float* error, int64_t n, int64_t block, int64_t b0, int64_t b1, int8_t* q,
                    float* scales) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * block, end = start + block < n ? start + block : n;
    uint32_t absmax = 0;
    for (int64_t i = start; i < end; ++i) {
      const float v = to_f32(x[i]) + error[i];
      const uint32_t bits = f32_bits(v) & 0x7FFFFFFFu;
      absmax = bits > absmax ? bits : absmax;
    }
    if (absmax > kMaxFiniteBits) {
      scales[b] = std::nanf("");
      std::memset(q + start, 0, static_cast<size_t>(end - start));
      std::memset(error + start, 0, static_cast<size_t>(end - start) * sizeof(float));
      continue;
    }
    const float scale = f32_from_bits(absmax) / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    scales[b] = scale;
    for (int64_t i = start; i < end; ++i) {
      const float v = to_f32(x[i]) + error[i];
      const float code = std::fmin(std::fmax(std::nearbyint(v * inv), -127.0f), 127.0f);
      q[i] = static_cast<int8_t>(code);
      error[i] = v - code * scale;
    }
  }
}

}  // namespace

void ef_compress_int8_blocks(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                             int64_t b1, int8_t* q, float* scales) {
  switch (dtype) {
    case DType::kBF16: return ef_int8_blocks(static_cast<const bf16*>(x), error, n, block, b0, b1, q, scales);
    case DType::kF16: return ef_int8_blocks(static_cast<const fp16*>(x), error, n, block, b0, b1, q, scales);
    case DType::kF32: return ef_int8_blocks(static_cast<const float*>(x), error, n, block, b0, b1, q, scales);
  }
}

void decompress_sum_int8(const int8_t* q, const float* scales, int64_t rows, int64_t n, int64_t block, int64_t i0,
                         int64_t i1, float* total) {
  const int64_t blocks = (n + block - 1) / block;
  for (int64_t i = i0; i < i1; ++i) total[i] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = i0; i < i1; ++i) total[i] += static_cast<float>(q[r * n + i]) * scales[r * blocks + i / block];
  }
}

void decompress_sum_sign(const uint8_t* packed, const float* scales, int64_t rows, int64_t n, int64_t block,
                         int64_t i0, int64_t i1, float* total) {
  const int64_t blocks = (n + block - 1) / block, row_bytes = (n + 7) / 8;
  for (int64_t i = i0; i < i1; ++i) total[i] = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* bits = packed + r * row_bytes;
    for (int64_t i = i0; i < i1; ++i) {
      const float sign = (bits[i / 8] >> (i % 8)) & 1u ? 1.0f : -1.0f;
      total[i] += sign * scales[r * blocks + i / block];
    }
  }
}

void sign_pack_update(const float* v, const float* scales, int64_t n, int64_t block, uint8_t* packed,
                      float* error) {
  std::memset(packed, 0, static_cast<size_t>((n + 7) / 8));
  for (int64_t i = 0; i < n; ++i) {
    const bool positive = v[i] >= 0.0f;
    if (positive) packed[i / 8] = static_cast<uint8_t>(packed[i / 8] | (1u << (i % 8)));
    error[i] = v[i] - (positive ? 1.0f : -1.0f) * scales[i / block];
  }
}

}  // namespace effgen::cpu
