// Entry points of the quant family that other op families' CPU glue reuses directly.
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace effgen::ops {

// The CPU kernel of effgen::quantize_per_token (same checks, same results).
std::tuple<at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x);
// The CPU kernel of effgen::dequantize.
at::Tensor dequantize_cpu(const at::Tensor& q, const at::Tensor& scale, std::optional<int64_t> axis,
                          std::optional<int64_t> group_size, at::ScalarType out_dtype);

#ifdef EFFGEN_WITH_CUDA
// The CUDA kernels of the same two ops.
std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x);
at::Tensor dequantize_cuda(const at::Tensor& q, const at::Tensor& scale, std::optional<int64_t> axis,
                           std::optional<int64_t> group_size, at::ScalarType out_dtype);
#endif

}  // namespace effgen::ops
