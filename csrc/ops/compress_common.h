// Argument checks shared by the CPU (compress.cpp) and CUDA (compress_cuda.cpp) glue of the
// compress family: both devices reject the same inputs with the same words.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "quant_common.h"

namespace effgen::ops {

inline int64_t blocks_of(int64_t n, int64_t block) { return (n + block - 1) / block; }

// x and error of the encoders (the caller checks the device).
inline void check_codec_args(const char* op, const at::Tensor& x, const at::Tensor& error, int64_t block) {
  check_float_input(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 1, op, ": x must be 1-D (a flat gradient bucket), got shape ", x.sizes());
  TORCH_CHECK_TYPE(error.scalar_type() == at::kFloat, op, ": error must be float32, got ", error.scalar_type());
  TORCH_CHECK_VALUE(error.sizes() == x.sizes() && error.is_contiguous(), op,
                    ": error must be a contiguous float32 tensor shaped like x ", x.sizes(), ", got ", error.sizes());
  check_same_device(op, "error", error, x);
  TORCH_CHECK_VALUE(block > 0, op, ": block_size must be positive, got ", block);
}

// The received chunks and their scales of the decoders (the caller checks the device).
inline void check_chunks(const char* op, const at::Tensor& data, const at::Tensor& scales, int64_t n, int64_t block) {
  TORCH_CHECK_VALUE(block > 0, op, ": block_size must be positive, got ", block);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": scales must be float32, got ", scales.scalar_type());
  check_same_device(op, "scales", scales, data);
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == data.size(0) && scales.size(1) == blocks_of(n, block), op,
                    ": scales must be [", data.size(0), ", ", blocks_of(n, block), "], got ", scales.sizes());
}

// q [chunks, n] int8 and its scales; returns n.
inline int64_t check_int8_chunks(const char* op, const at::Tensor& q, const at::Tensor& scales, int64_t block) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kChar, op, ": q must be int8, got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.dim() == 2, op, ": q must be [chunks, n], got shape ", q.sizes());
  check_chunks(op, q, scales, q.size(1), block);
  return q.size(1);
}

// packed [chunks, ceil(n / 8)] uint8 and its scales.
inline void check_sign_chunks(const char* op, const at::Tensor& packed, const at::Tensor& scales, int64_t n,
                              int64_t block) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, op, ": packed must be uint8, got ", packed.scalar_type());
  TORCH_CHECK_VALUE(n >= 0 && packed.dim() == 2 && packed.size(1) == (n + 7) / 8, op,
                    ": packed must be [chunks, ceil(n / 8)] for n = ", n, ", got shape ", packed.sizes());
  check_chunks(op, packed, scales, n, block);
}

}  // namespace effgen::ops
