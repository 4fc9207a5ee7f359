// Torch-free CUDA kernels of the binary_gemm family (bit order: csrc/kernels/cpu/binary_gemm.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "quant.cuh"

namespace effgen::cuda {

// Sign bits of x [rows, k] (x >= 0 is 1) into out [rows, ceil(k/8)].
cudaError_t pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out, cudaStream_t stream);
// Ternary q [rows, k] in {-1, 0, 1} into two planes per row; values outside give 0 bits.
cudaError_t pack_ternary(const int8_t* q, int64_t rows, int64_t k, uint8_t* out, cudaStream_t stream);
// planes = 1: +-1 from binary bits; planes = 2: positive minus negative plane.
cudaError_t unpack_bits(const uint8_t* packed, int64_t rows, int64_t k, int planes, int8_t* out,
                        cudaStream_t stream);
// The same codes as fp32 / bf16 / fp16 (exact), for many-row products on cuBLAS.
cudaError_t expand_bits(const uint8_t* packed, int64_t rows, int64_t k, int planes, DType dtype, void* out,
                        cudaStream_t stream);

// Few-row (m <= kBitsMaxM) products streaming the weight bits. Binary (planes = 1):
// y = sum_k alpha[j][k / group] * (bit ? x : -x); ternary (planes = 2):
// y = scale[j * scale_stride] * sum_k (pos - neg) * x. Plus bias, in x's dtype.
constexpr int64_t kBitsMaxM = 16;
struct BitsGemvArgs {
  DType dtype;
  const void* x;
  const uint8_t* packed;
  int64_t m, n, k;
  int planes;
  const float* scale;  // alpha [n, groups] or ternary scale
  int64_t scale_stride, groups, group;
  const float* bias;
  void* out;
  SkinnyOptions skinny;
};
cudaError_t bits_gemv(const BitsGemvArgs& args, cudaStream_t stream);

// XNOR-Net: out[i][j] = (k - 2 * popcount(x_bits_i XOR w_bits_j)) * x_scale[i] *
// alpha[j * alpha_stride] (+ bias[j]), each product rounded to fp32, then to dtype; x_bits
// [m, nbytes] and w_bits [n, nbytes] packed signs, x's zero past k (w's bits past k hold no
// weights: not counted). Rows in blocks of up to kXnorMaxRows, each weight row read once
// per block.
constexpr int64_t kXnorMaxRows = 16;
struct XnorArgs {
  const uint8_t* x_bits;
  const uint8_t* w_bits;
  int64_t m, n, nbytes, k;
  const float* x_scale;  // [m]
  const float* alpha;
  int64_t alpha_stride;
  const float* bias;  // nullptr: none
  DType dtype;
  void* out;
};
cudaError_t xnor_gemm(const XnorArgs& args, cudaStream_t stream);

}  // namespace effgen::cuda
