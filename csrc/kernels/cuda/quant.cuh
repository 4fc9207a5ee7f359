// Torch-free CUDA kernels of the quant family and their launchers. Every launcher runs on
// the stream it is given and returns the cudaError_t of its launch; the glue layer
// (csrc/ops/quant_cuda.cpp) checks it. Element types mirror csrc/kernels/cpu/dtypes.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace effgen::cuda {

enum class DType { kF32, kBF16, kF16 };

// How the few-row tensor-core GEMVs (W8A16, binary, ternary; skinny_mma.cuh) run, chosen by
// EFFGEN_CUDA_SKINNY_X and EFFGEN_CUDA_SKINNY_BLOCKS (csrc/ops/cuda_glue.h).
struct SkinnyOptions {
  bool stage_x = false;  // x copied into shared memory where it fits
  // Blocks launched: 0, one per channel tile; kSkinnyResidentBlocks, as many as the SMs hold
  // at once; N > 0, at most N. Fewer blocks than tiles share them evenly, in turns.
  int64_t blocks = 0;
};
constexpr int64_t kSkinnyResidentBlocks = -1;

// Where element i of a flat contiguous tensor finds its scale / zero point:
//   grouped == false: channel (i / inner) % channels  (per tensor: channels = 1)
//   grouped == true : row-wise groups of the last dim, (i / k) * groups + (i % k) / group
struct ParamIndex {
  int64_t inner = 1, channels = 1;
  bool grouped = false;
  int64_t k = 1, group = 1, groups = 1;
};

// Symmetric int8 per (row, group) of a [rows, k] tensor: scale = absmax / 127,
// q = clamp(rint(x * (1/scale)), -127, 127). A group holding Inf/NaN gets scale NaN, q 0.
cudaError_t quantize_rows(DType dtype, const void* x, int64_t rows, int64_t k, int64_t group, int8_t* q,
                          float* scale, cudaStream_t stream);

// Per-channel absmax over [outer, channels, inner] as IEEE bits (atomicMax), then scale.
// `absmax_bits` must hold `channels` zeros on entry.
cudaError_t channel_scales(DType dtype, const void* x, int64_t outer, int64_t channels, int64_t inner,
                           uint32_t* absmax_bits, float* scale, cudaStream_t stream);

// q[i] = clamp(rint(x[i] / scale[idx(i)]), -127, 127) with the reciprocal taken in fp32.
cudaError_t quantize_with_scales(DType dtype, const void* x, int64_t n, const float* scale, ParamIndex idx,
                                 int8_t* q, cudaStream_t stream);

// y[i] = q[i] * scale[idx(i)] rounded to the output type.
cudaError_t dequantize(DType out_dtype, const int8_t* q, int64_t n, const float* scale, ParamIndex idx, void* y,
                       cudaStream_t stream);

// PyTorch's fake quant (see effgen_kernels/reference.py). scale/zero_point are per
// channel arrays on the device, or nullptr to use scale_value/zero_point_value.
struct FakeQuantArgs {
  const float* scale = nullptr;
  const float* zero_point = nullptr;
  float scale_value = 1.0f, zero_point_value = 0.0f;
  float quant_min = 0.0f, quant_max = 0.0f;
};
cudaError_t fake_quantize(DType dtype, const void* x, int64_t n, FakeQuantArgs args, ParamIndex idx, void* y,
                          bool* mask, cudaStream_t stream);

// dx[i] = grad[i] * mask[i] (a multiply: a negative gradient masked off gives -0).
cudaError_t mask_grad(DType dtype, const void* grad, const bool* mask, int64_t n, void* dx, cudaStream_t stream);

// Element-wise LSQ gradients of the learnable per-channel fake quant: dx in x's dtype and
// fp32 per-element dscale / dzero_point that the caller reduces per channel.
cudaError_t fake_quantize_learnable_grad(DType dtype, const void* dy, const void* x, int64_t n, FakeQuantArgs args,
                                         float grad_factor, ParamIndex idx, void* dx, float* dscale,
                                         float* dzero_point, cudaStream_t stream);

}  // namespace effgen::cuda
