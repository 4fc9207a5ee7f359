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

// What a codec sends: a payload of `values_per_element` values an element, and per block
// `per_block` fp32 words (int8: a scale; sign: two levels).
struct CodecFormat {
  const char* payload_name;
  at::ScalarType payload_type;
  int64_t values_per_element;
  const char* scales_name;
  int64_t per_block;
};
constexpr CodecFormat kInt8Format{"q", at::kChar, 1, "scales", 1};
constexpr CodecFormat kSignFormat{"packed", at::kByte, 8, "levels", 2};

// The encoders' `_out` forms write x's n values as `rows` rows of n / rows values: payload
// [rows, values a row / values_per_element] and scales (or levels) [rows, blocks a row x
// per_block], each row of unit stride (rows may be strided: views of the messages about to
// be sent). With several rows, a row holds whole blocks (and whole bytes of bits), so that
// row r equals that part of the flat op's output. Returns the values a row.
inline int64_t check_encoder_outputs(const char* op, const at::Tensor& x, int64_t block, const CodecFormat& format,
                                     const at::Tensor& payload, const at::Tensor& scales) {
  TORCH_CHECK_TYPE(payload.scalar_type() == format.payload_type, op, ": ", format.payload_name, " must be ",
                   format.payload_type == at::kChar ? "int8" : "uint8", ", got ", payload.scalar_type());
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": ", format.scales_name, " must be float32, got ",
                   scales.scalar_type());
  check_same_device(op, format.payload_name, payload, x);
  check_same_device(op, format.scales_name, scales, x);
  const int64_t n = x.numel(), per_element = format.values_per_element;
  TORCH_CHECK_VALUE(payload.dim() == 2 && payload.size(0) >= 1 && n % payload.size(0) == 0, op, ": ",
                    format.payload_name, " must be [rows, ...] with rows dividing x's ", n, " values, got shape ",
                    payload.sizes());
  const int64_t rows = payload.size(0), cols = n / rows;
  TORCH_CHECK_VALUE(rows == 1 || (cols % block == 0 && cols % per_element == 0), op, ": ", rows, " rows of ", cols,
                    " values must each hold whole blocks of block_size ", block,
                    per_element > 1 ? " and whole bytes of bits" : "");
  const int64_t width = (cols + per_element - 1) / per_element, words = blocks_of(cols, block) * format.per_block;
  TORCH_CHECK_VALUE(payload.size(1) == width && (payload.stride(1) == 1 || width <= 1), op, ": ", format.payload_name,
                    " must be [", rows, ", ", width, "] with rows of unit stride, got shape ", payload.sizes(),
                    " and strides ", payload.strides());
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == rows && scales.size(1) == words &&
                        (scales.stride(1) == 1 || scales.size(1) <= 1),
                    op, ": ", format.scales_name, " must be [", rows, ", ", words,
                    "] with rows of unit stride, got shape ", scales.sizes(), " and strides ", scales.strides());
  return cols;
}

// The `total` of the decoders' `_out` forms: a contiguous float32 [n] on the inputs' device.
inline void check_total_out(const char* op, const at::Tensor& total, int64_t n, const at::Tensor& data) {
  TORCH_CHECK_TYPE(total.scalar_type() == at::kFloat, op, ": total must be float32, got ", total.scalar_type());
  check_same_device(op, "total", total, data);
  TORCH_CHECK_VALUE(total.dim() == 1 && total.size(0) == n && total.is_contiguous(), op,
                    ": total must be a contiguous [", n, "], got shape ", total.sizes(), " and strides ",
                    total.strides());
}

// The received chunks and their scales (or levels) of the decoders (the caller checks the device).
inline void check_chunks(const char* op, const at::Tensor& data, const at::Tensor& scales, int64_t n, int64_t block,
                         const CodecFormat& format) {
  TORCH_CHECK_VALUE(block > 0, op, ": block_size must be positive, got ", block);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": ", format.scales_name, " must be float32, got ",
                   scales.scalar_type());
  check_same_device(op, format.scales_name, scales, data);
  const int64_t words = blocks_of(n, block) * format.per_block;
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == data.size(0) && scales.size(1) == words, op, ": ",
                    format.scales_name, " must be [", data.size(0), ", ", words, "], got ", scales.sizes());
}

// q [chunks, n] int8 and its scales; returns n.
inline int64_t check_int8_chunks(const char* op, const at::Tensor& q, const at::Tensor& scales, int64_t block) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kChar, op, ": q must be int8, got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.dim() == 2, op, ": q must be [chunks, n], got shape ", q.sizes());
  check_chunks(op, q, scales, q.size(1), block, kInt8Format);
  return q.size(1);
}

// packed [chunks, ceil(n / 8)] uint8 and its levels [chunks, 2 * blocks].
inline void check_sign_chunks(const char* op, const at::Tensor& packed, const at::Tensor& levels, int64_t n,
                              int64_t block) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, op, ": packed must be uint8, got ", packed.scalar_type());
  TORCH_CHECK_VALUE(n >= 0 && packed.dim() == 2 && packed.size(1) == (n + 7) / 8, op,
                    ": packed must be [chunks, ceil(n / 8)] for n = ", n, ", got shape ", packed.sizes());
  check_chunks(op, packed, levels, n, block, kSignFormat);
}

}  // namespace effgen::ops
