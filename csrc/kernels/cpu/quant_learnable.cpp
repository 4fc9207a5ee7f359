#include "quant_learnable.h"

#include <cmath>

namespace effgen::cpu {
namespace {

// Element-wise LSQ gradients with PyTorch's arithmetic: note that here the zero point is
// added before rounding (nearbyint(zp + x/s)), unlike the forward pass.
template <typename T>
void grad_run(const T* dy, const T* x, int64_t n, const LearnableRun& r, T* dx, double* dscale, double* dzp) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = i * r.stride;
    const float scale = r.scale[p], zp = r.zero_point[p], inv_scale = 1.0f / scale;
    const float xv = to_f32(x[i]), g = to_f32(dy[i]);
    const float qval = std::nearbyint(zp + xv * inv_scale);
    const bool in_range = qval >= r.quant_min && qval <= r.quant_max;
    dx[i] = from_f32<T>(g * (in_range ? 1.0f : 0.0f));  // PyTorch multiplies: -g * 0 is -0
    if (in_range) {
      const float x_fq = (qval - zp) * scale;
      dscale[p] += static_cast<double>(g * (x_fq - xv) * inv_scale * r.grad_factor);
    } else {
      const float bound = qval < r.quant_min ? r.quant_min : r.quant_max;
      dscale[p] += static_cast<double>(g * (bound - zp) * r.grad_factor);
      dzp[p] += static_cast<double>(-g * scale * r.grad_factor);
    }
  }
}

}  // namespace

void fake_quantize_learnable_grad(DType dtype, const void* dy, const void* x, int64_t n, const LearnableRun& run,
                                  void* dx, double* dscale_acc, double* dzero_point_acc) {
  switch (dtype) {
    case DType::kBF16:
      return grad_run(static_cast<const bf16*>(dy), static_cast<const bf16*>(x), n, run, static_cast<bf16*>(dx),
                      dscale_acc, dzero_point_acc);
    case DType::kF16:
      return grad_run(static_cast<const fp16*>(dy), static_cast<const fp16*>(x), n, run, static_cast<fp16*>(dx),
                      dscale_acc, dzero_point_acc);
    case DType::kF32:
      return grad_run(static_cast<const float*>(dy), static_cast<const float*>(x), n, run, static_cast<float*>(dx),
                      dscale_acc, dzero_point_acc);
  }
}

}  // namespace effgen::cpu
