// Torch-free CUDA kernels of the int8_gemm family and their launchers. Each launcher runs on
// the given stream and returns the launch's cudaError_t for the glue (csrc/ops/int8_gemm_cuda.cpp).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "quant.cuh"

namespace effgen::cuda {

// out[i][j] = (float(sum_k a[i][k] * b[j][k]) * a_scale[i * a_stride]) * b_scale[j * b_stride]
//             (+ bias[j]), rounded to out_dtype. a [m, k], b [n, k] row-major int8.
struct Int8GemmArgs {
  const int8_t* a;
  const int8_t* b;
  int64_t m, n, k;
  const float* a_scale;
  int64_t a_stride;
  const float* b_scale;
  int64_t b_stride;
  const float* bias;  // fp32, nullptr: none
  DType out_dtype;
  void* out;
};
// The tensor-core kernel of products with more than a few rows: kAuto and kMma take
// mma.sync (session 8 measured it faster than the first wgmma kernel on an H200); kWgmma
// the TMA + wgmma kernel where the shape allows (tests run both).
enum class GemmKernel { kAuto, kMma, kWgmma };
// Products of at most this many rows (in 16-byte pieces) take the GEMV whatever the kernel.
constexpr int64_t kGemvMaxRows = 16;
// This build has the sm_90a kernels and the current device is compute capability 9.0.
bool int8_gemm_wgmma_supported();
// The wgmma kernel takes the product and has tiles for more than half the SMs: where it beat cuBLAS
// (the glue's default for these shapes) on an H200; see int8_gemm_wgmma.cu.
bool int8_gemm_wgmma_pays(const Int8GemmArgs& args);
cudaError_t int8_gemm(const Int8GemmArgs& args, GemmKernel kernel, cudaStream_t stream);
// The epilogue alone, for int32 sums computed elsewhere (cuBLAS): out = the same scaled,
// biased, rounded acc [m, n] as int8_gemm's (args.a and args.b unused).
cudaError_t int8_scale_accumulators(const Int8GemmArgs& args, const int32_t* acc, cudaStream_t stream);

// out[i][j] = sums[i][j] * scale[j * scale_stride] + bias[j], the multiply and the add each
// rounded to fp32 (no fma) and the result to out_dtype: ATen's mul, add and to in one pass,
// for the fp32 sums of many-row products on cuBLAS (W8A16, binary, ternary). scale, bias:
// nullptr for none; scale_stride 0 for one scale.
struct FloatSumsArgs {
  const float* sums;
  int64_t m, n;
  const float* scale;
  int64_t scale_stride;
  const float* bias;
  DType out_dtype;
  void* out;
};
cudaError_t scale_float_sums(const FloatSumsArgs& args, cudaStream_t stream);

// W8A16 for few rows (m <= kW8A16MaxM): out[i][j] = sum_k x[i][k] * w[j][k] * scale[j][k / group]
// (+ bias[j]); x and out in `dtype`, fp32 accumulation. groups = 1, group = k: per channel.
constexpr int64_t kW8A16MaxM = 16;
struct W8A16Args {
  DType dtype;
  const void* x;
  const int8_t* w;
  int64_t m, n, k;
  const float* scale;
  int64_t groups, group;
  const float* bias;
  void* out;
  SkinnyOptions skinny;
};
cudaError_t w8a16_gemv(const W8A16Args& args, cudaStream_t stream);

}  // namespace effgen::cuda
