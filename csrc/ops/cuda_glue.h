// Small helpers every CUDA glue file needs: element type, device check, launch check.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../kernels/cuda/quant.cuh"

namespace effgen::ops {

inline cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return cuda::DType::kBF16;
    case at::kHalf: return cuda::DType::kF16;
    default: return cuda::DType::kF32;
  }
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cuda(), op, ": ", name, " must be a CUDA tensor here, got ", t.device());
}

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace effgen::ops
