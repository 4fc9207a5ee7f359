// Helpers shared by the CUDA kernel files (each includes this inside its own translation
// unit; everything here has internal linkage).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "quant.cuh"  // DType

namespace effgen::cuda {
namespace {

// Whether p is a multiple of `bytes` (the vector loads' alignment).
__host__ __device__ __forceinline__ bool aligned(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// SMs of the current device.
[[maybe_unused]] int64_t multiprocessors() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms;
}

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

// What symmetric int8 quantization multiplies by: 1 / scale, or 0 where that is not finite
// (a zero or NaN scale, or one below 2^-128), so such runs quantize to 0 (the CPU's
// cpu::symmetric_inverse_scale, reference.symmetric_int8).
__device__ __forceinline__ float symmetric_inverse_scale(float scale) {
  const float inverse = __fdiv_rn(1.0f, scale);
  return isfinite(inverse) ? inverse : 0.0f;
}

// Max of v over the 32 lanes of a warp, returned to every lane.
__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  return v;
}

// Max of v over the thread block, returned to every thread. Ends with a barrier, so a
// kernel may call it again (e.g. once per item of a grid-stride loop).
__device__ uint32_t block_max(uint32_t v) {
  __shared__ uint32_t per_warp[32];
  v = warp_max(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) per_warp[warp] = v;
  __syncthreads();
  v = 0;
  for (int w = 0; w < int(blockDim.x + 31) / 32; ++w) v = max(v, per_warp[w]);
  __syncthreads();
  return v;
}

// Calls fn(std::integral_constant<int, R>{}) for the first R of Rows with R >= m (the last
// one otherwise): the row count a few-row kernel is instantiated for, so its per-row sums
// stay in registers.
template <int R, int... Rest, typename Fn>
void with_rows(int64_t m, Fn&& fn) {
  if constexpr (sizeof...(Rest) == 0) {
    fn(std::integral_constant<int, R>{});
  } else {
    if (m <= R) return fn(std::integral_constant<int, R>{});
    with_rows<Rest...>(m, fn);
  }
}

// The A operand (a0..a3) of an m16n8 mma in the few-row kernels, where a lane holds 16-byte
// pieces of rows g (lo) and g + 8 (hi): half 0 takes words 0-1 of each, half 1 words 2-3.
// a0/a2 are row g's lower and upper K words, a1/a3 row g + 8's (PTX fragment order), so
// the mma's K runs over the pieces' words in order; the B operand must take the same words.
struct AOperand {
  uint32_t regs[4];
};
__host__ __device__ __forceinline__ AOperand a_operand(const int4& lo, const int4& hi, int half) {
  return half == 0 ? AOperand{{uint32_t(lo.x), uint32_t(hi.x), uint32_t(lo.y), uint32_t(hi.y)}}
                   : AOperand{{uint32_t(lo.z), uint32_t(hi.z), uint32_t(lo.w), uint32_t(hi.w)}};
}

// The E accumulators of each lane summed over the block's WARPS warps, which hold the same
// mma output fragments for different parts of K: through shared memory, in warp order
// (deterministic). Lane `lane` of warp e % WARPS then calls finish(lane, e, total) for
// accumulator e of that lane.
template <int WARPS, int E, typename T, typename Finish>
__device__ __forceinline__ void sum_fragments_over_warps(const T (&acc)[E], Finish&& finish) {
  __shared__ T partial[WARPS][E][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int e = 0; e < E; ++e) partial[warp][e][lane] = acc[e];
  __syncthreads();
  for (int e = warp; e < E; e += WARPS) {
    T total = 0;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) total += partial[w][e][lane];
    finish(lane, e, total);
  }
}

// (a & mask) | add, one LOP3: left to itself the compiler spends two, one per constant.
__host__ __device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t add) {
#ifdef __CUDA_ARCH__
  uint32_t out;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out) : "r"(a), "r"(mask), "r"(add));  // 0xEA: (a & b) | c
  return out;
#else
  return (a & mask) | add;
#endif
}

// Sum of v over the 32 lanes of a warp, returned to every lane.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}

}  // namespace
}  // namespace effgen::cuda
