// Torch-free CPU kernels of the `quant` op family. Each function works on one contiguous
// run of n elements; the glue layer (csrc/ops/quant.cpp) splits tensors into runs and
// threads. Per-run parameters (scales, zero points) are read at params[i * stride] with
// stride 0 (one value for the whole run) or 1 (one value per element).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>  // quant_impl.h

#include "dtypes.h"
#include "isa.h"

namespace effgen::cpu {

struct FakeQuantParams {
  const float* scale;       // per channel
  const float* inv_scale;   // 1.0f / scale, as PyTorch computes it
  const float* zero_point;  // integral values
  float quant_min;
  float quant_max;
};

// What symmetric int8 quantization multiplies by: the fp32 reciprocal of scale = absmax /
// 127, or 0 where there is none (absmax 0, or below 127 * 2^-128, about 3.7e-37, where
// 1/scale overflows and x * inf would give Inf codes and NaN for zeros); such runs
// quantize to zeros, as reference.symmetric_int8 defines.
inline float symmetric_inverse_scale(float scale) {
  const float inverse = 1.0f / scale;
  return std::isfinite(inverse) ? inverse : 0.0f;
}

struct QuantKernels {
  // max |x[i]| as IEEE-754 bits: non-negative floats order like their bit patterns, so an
  // integer max is exact and any result above kMaxFiniteBits flags Inf/NaN in the run.
  uint32_t (*absmax_bits)(DType dtype, const void* x, int64_t n);
  // acc[i] = max(acc[i], |x[i]| bits): column-wise absmax over several rows.
  void (*absmax_bits_accumulate)(DType dtype, const void* x, int64_t n, uint32_t* acc);
  // y[i] = x[i] * factors[i] in fp32 (SmoothQuant's per-channel smoothing of activations).
  void (*scale_channels)(DType dtype, const void* x, int64_t n, const float* factors, float* y);
  // q[i] = clamp(round_half_even(x[i] * inv_scale[i * stride]), -127, 127), where each
  // inv_scale is symmetric_inverse_scale(absmax / 127) of an absmax >= |x[i]| (every caller's
  // case), which keeps the product within the clamp before it (quant_impl.h); runs holding
  // Inf or NaN (which callers reject) get unspecified codes.
  void (*quantize_symmetric)(DType dtype, const void* x, int64_t n, const float* inv_scale, int64_t stride,
                             int8_t* q);
  // y[i] = q[i] * scale[i * stride], computed in fp32 and rounded to the output type.
  void (*dequantize)(DType out_dtype, const int8_t* q, int64_t n, const float* scale, int64_t stride, void* y);
  // PyTorch's fake quant (see reference.fake_quantize_per_tensor); mask[i] is true where the
  // unclamped quantized value lies in [quant_min, quant_max]. Returns the absmax bits of x
  // so the caller can reject Inf/NaN inputs.
  uint32_t (*fake_quantize)(DType dtype, const void* x, int64_t n, const FakeQuantParams& params, int64_t stride,
                            void* y, bool* mask);
  // dx[i] = grad[i] * mask[i] (a multiply, so a negative gradient masked off gives -0).
  void (*mask_grad)(DType dtype, const void* grad, const bool* mask, int64_t n, void* dx);
};

const QuantKernels& quant_kernels_scalar();
const QuantKernels& quant_kernels_avx2();
const QuantKernels& quant_kernels_neon();  // aarch64 builds only
const QuantKernels& quant_kernels_avx512();
// The table for the active ISA (AMX has no quant-specific code: it uses AVX-512).
const QuantKernels& quant_kernels();

}  // namespace effgen::cpu
