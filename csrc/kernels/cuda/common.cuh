// Helpers shared by the CUDA kernel files (each includes this inside its own translation
// unit; everything here has internal linkage).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "quant.cuh"  // DType

namespace effgen::cuda {
namespace {

// Calls fn with a value of the element type of `dtype`; returns the launch status.
template <typename Fn>
cudaError_t with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kBF16: fn(__nv_bfloat16{}); break;
    case DType::kF16: fn(__half{}); break;
    case DType::kF32: fn(float{}); break;
  }
  return cudaGetLastError();
}

// Max of v over the thread block, returned to every thread. Ends with a barrier, so a
// kernel may call it again (e.g. once per item of a grid-stride loop).
__device__ uint32_t block_max(uint32_t v) {
  __shared__ uint32_t warp_max[32];
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_max[warp] = v;
  __syncthreads();
  v = 0;
  for (int w = 0; w < int(blockDim.x + 31) / 32; ++w) v = max(v, warp_max[w]);
  __syncthreads();
  return v;
}

}  // namespace
}  // namespace effgen::cuda
