// fp32 <-> element conversions shared by the CUDA kernels (round to nearest even).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace effgen::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(int8_t v) { return static_cast<float>(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void store_value(T* p, float v) {
  *p = from_f32<T>(v);
}

// N consecutive elements (N a multiple of 8, x 16-byte aligned) as floats, in 16-byte loads.
template <int N, typename T>
__device__ __forceinline__ void load_floats(const T* x, float (&out)[N]) {
  static_assert(N * sizeof(T) % 16 == 0, "whole 16-byte loads");
  constexpr int kLoads = N * sizeof(T) / 16;
  union {
    int4 pieces[kLoads];
    T values[N];
  } buffer;
#pragma unroll
  for (int q = 0; q < kLoads; ++q) buffer.pieces[q] = reinterpret_cast<const int4*>(x)[q];
#pragma unroll
  for (int t = 0; t < N; ++t) out[t] = to_f32(buffer.values[t]);
}

}  // namespace effgen::cuda
