// Torch-free backward of PyTorch's learnable (LSQ) per-channel fake quant. Plain C++: it is
// a training-time op dominated by the reductions, so it has one portable path.
#pragma once
#include <cstdint>

#include "dtypes.h"

namespace effgen::cpu {

struct LearnableRun {
  const float* scale;       // params[i * stride]
  const float* zero_point;  // already rounded and clamped to [quant_min, quant_max]
  int64_t stride;           // 0: one channel for the run, 1: one channel per element
  float quant_min, quant_max, grad_factor;
};

// For one run of n elements: writes dx (dtype of x), and adds each element's scale and
// zero-point gradient to dscale_acc / dzero_point_acc at [i * stride] (double accumulators).
void fake_quantize_learnable_grad(DType dtype, const void* dy, const void* x, int64_t n, const LearnableRun& run,
                                  void* dx, double* dscale_acc, double* dzero_point_acc);

}  // namespace effgen::cpu
