// Argument checks shared by the CPU and CUDA glue of the binary_gemm family.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "int8_gemm_common.h"

namespace effgen::ops {

inline int64_t packed_row_bytes(int64_t k) { return (k + 7) / 8; }

// packed: uint8 [N, planes * ceil(K/8)] on x's device.
inline void check_packed(const char* op, const at::Tensor& packed, int64_t k, int64_t planes, const at::Tensor& x) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, op, ": packed must be uint8, got ", packed.scalar_type());
  check_same_device(op, "packed", packed, x);
  TORCH_CHECK_VALUE(packed.dim() == 2 && packed.size(1) == planes * packed_row_bytes(k), op,
                    ": packed must be [N, ", planes * packed_row_bytes(k), "] for K = ", k, ", got shape ",
                    packed.sizes());
}

// w of binarize_weight / ternarize_weight: float [N, K] (the glue checks its device).
inline void check_weight_to_quantize(const char* op, const at::Tensor& w) {
  check_float_input(op, "w", w);
  TORCH_CHECK_VALUE(w.dim() == 2, op, ": w must be 2-D [N, K], got shape ", w.sizes());
}

// first_bad_row: the first row of w whose |w| sum is not finite (it holds NaN or Inf), or -1.
inline void check_finite_rows(const char* op, int64_t first_bad_row) {
  TORCH_CHECK_VALUE(first_bad_row < 0, op, ": w contains NaN or Inf (first in row ", first_bad_row,
                    "); it cannot be quantized");
}

// x viewed as contiguous [M, K] rows.
struct Rows {
  at::Tensor x;
  int64_t m, k;
};

// The device-independent checks of binary_linear (grouped alpha allowed), ternary_linear
// and xnor_linear (one scale per channel or per tensor); the glue checks the device first.
struct BitsProduct {
  Rows r;
  int64_t n;
  int64_t scale_stride = 1, groups = 1, group = 1;
};

inline BitsProduct check_bits_product(const char* op, const at::Tensor& x, const at::Tensor& packed, int planes,
                                      const char* scale_name, const at::Tensor& scale,
                                      const std::optional<at::Tensor>& bias, bool grouped,
                                      std::optional<int64_t> group_size = std::nullopt) {
  check_float_input(op, "x", x);
  TORCH_CHECK_INDEX(x.dim() > 0, op, ": x must have at least 1 dimension, got a scalar");
  BitsProduct p{};
  p.r.k = x.size(-1);
  p.r.m = leading_rows(x);
  check_packed(op, packed, p.r.k, planes, x);
  p.n = packed.size(0);
  check_same_device(op, scale_name, scale, x);
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, op, ": ", scale_name, " must be float32, got ",
                   scale.scalar_type());
  if (grouped) {
    std::tie(p.groups, p.group) = check_w8a16_scale(op, scale, p.n, p.r.k, group_size);
    TORCH_CHECK_VALUE(!group_size.has_value() || *group_size % 16 == 0, op,
                      ": group_size must be a multiple of 16, got ", *group_size);
  } else {
    p.scale_stride = check_channel_scale(op, scale, p.n);
  }
  check_bias(op, bias, p.n, x);
  p.r.x = x.reshape({p.r.m, p.r.k}).contiguous();
  return p;
}

}  // namespace effgen::ops
