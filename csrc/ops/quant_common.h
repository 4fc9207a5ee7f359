// Argument checks and shape logic shared by the CPU (quant.cpp) and CUDA (quant_cuda.cpp)
// glue of the quant family, so both devices reject the same inputs with the same words.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace effgen::ops {

inline bool is_float_input(const at::Tensor& t) {
  const auto dt = t.scalar_type();
  return dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf;
}

inline void check_float_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float_input(t), op, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), " like the input, got ",
              t.device());
}

inline int64_t normalize_axis(const char* op, int64_t axis, int64_t dim) {
  TORCH_CHECK_INDEX(dim > 0, op, ": input must have at least 1 dimension, got a scalar");
  TORCH_CHECK_INDEX(axis >= -dim && axis < dim, op, ": axis ", axis, " is out of range for a ", dim, "-D input");
  return axis < 0 ? axis + dim : axis;
}

inline void check_quant_range(const char* op, int64_t quant_min, int64_t quant_max) {
  TORCH_CHECK_VALUE(quant_min <= quant_max, op, ": quant_min (", quant_min, ") must be <= quant_max (", quant_max,
                    ")");
  // fp32 holds every integer up to 2^24 exactly; the kernels clamp in fp32.
  TORCH_CHECK_VALUE(quant_min >= -(1 << 24) && quant_max <= (1 << 24), op,
                    ": quant_min/quant_max must lie within [-2^24, 2^24], got [", quant_min, ", ", quant_max, "]");
}

inline void check_scale_value(const char* op, float scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0.0f, op, ": scale must be positive and finite, got ", scale);
  TORCH_CHECK_VALUE(std::isfinite(1.0f / scale), op, ": scale ", scale, " is too small: 1/scale overflows float32");
}

inline void check_zero_point_value(const char* op, int64_t zero_point, int64_t quant_min, int64_t quant_max) {
  TORCH_CHECK_VALUE(zero_point >= quant_min && zero_point <= quant_max, op, ": zero_point ", zero_point,
                    " must lie within [quant_min, quant_max] = [", quant_min, ", ", quant_max, "]");
}

inline void check_mask_grad_args(const char* op, const at::Tensor& grad, const at::Tensor& mask) {
  check_float_input(op, "grad", grad);
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == grad.sizes(), op, ": mask must have grad's shape ", grad.sizes(), ", got ",
                    mask.sizes());
  check_same_device(op, "mask", mask, grad);
}

// A tensor seen as [outer, channels, inner] around dimension `axis` (contiguous layout).
struct ChannelLayout {
  int64_t outer = 1, channels = 1, inner = 1;
};

inline ChannelLayout channel_layout(const at::Tensor& t, int64_t axis) {
  ChannelLayout layout;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d < axis) layout.outer *= t.size(d);
    if (d > axis) layout.inner *= t.size(d);
  }
  layout.channels = t.size(axis);
  return layout;
}

// Scale (and zero point) of a per-channel op: 1-D with one entry per channel.
inline void check_channel_param(const char* op, const char* name, const at::Tensor& p, int64_t channels,
                                const at::Tensor& x) {
  check_same_device(op, name, p, x);
  TORCH_CHECK_VALUE(p.dim() == 1 && p.size(0) == channels, op, ": ", name, " must be 1-D with ", channels,
                    " entries (the size of the axis), got shape ", p.sizes());
}

// Checks of a per-channel fake quant's parameter tensors that need no look at their values.
inline ChannelLayout check_fake_quant_channels(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                               const at::Tensor& zero_point, int64_t& axis, bool float_zero_point) {
  axis = normalize_axis(op, axis, x.dim());
  const ChannelLayout layout = channel_layout(x, axis);
  check_channel_param(op, "scale", scale, layout.channels, x);
  check_channel_param(op, "zero_point", zero_point, layout.channels, x);
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ", scale.scalar_type());
  if (float_zero_point) {
    TORCH_CHECK_TYPE(zero_point.is_floating_point(), op, ": zero_point must be a float tensor (it is learned), got ",
                     zero_point.scalar_type());
  } else {
    TORCH_CHECK_TYPE(zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kLong, op,
                     ": zero_point must be int32 or int64, got ", zero_point.scalar_type());
  }
  return layout;
}

inline int64_t num_groups(int64_t k, int64_t group_size) { return k == 0 ? 0 : (k + group_size - 1) / group_size; }

inline void check_group_size(const char* op, int64_t group_size) {
  TORCH_CHECK_VALUE(group_size > 0, op, ": group_size must be positive, got ", group_size);
}

// Output shapes of the per-row quantizers: scale drops the last dim (per token) or
// replaces it by the number of groups.
inline std::vector<int64_t> row_scale_shape(const at::Tensor& x, int64_t groups_or_minus1) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  if (groups_or_minus1 >= 0) shape.push_back(groups_or_minus1);
  return shape;
}

// Outputs of the per-row quantizers for a contiguous x: q like x, and the scale per group
// (group_size > 0) or per row (group_size 0; zero-filled where K = 0, whose rows have no
// group to write their scale 0; only then: the fill cost a decode layer call 0.3 us of 7).
inline std::tuple<at::Tensor, at::Tensor> allocate_row_quantized(const at::Tensor& x, int64_t group_size) {
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  const auto scale_options = x.options().dtype(at::kFloat);
  if (group_size == 0) {
    const auto shape = row_scale_shape(x, -1);
    return {q, x.size(-1) == 0 ? at::zeros(shape, scale_options) : at::empty(shape, scale_options)};
  }
  return {q, at::empty(row_scale_shape(x, num_groups(x.size(-1), group_size)), scale_options)};
}

// How dequantize maps scale entries onto q, decided from the arguments alone.
struct DequantPlan {
  ChannelLayout layout;     // runs of `inner` share one scale (stride 0), or
  int64_t group_size = 0;   // > 0: row-wise groups along the last dim
};

inline DequantPlan plan_dequantize(const at::Tensor& q, const at::Tensor& scale, std::optional<int64_t> axis,
                                   std::optional<int64_t> group_size) {
  constexpr const char* op = "dequantize";
  TORCH_CHECK_TYPE(q.scalar_type() == at::kChar, op, ": q must be int8, got ", q.scalar_type());
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ", scale.scalar_type());
  check_same_device(op, "scale", scale, q);
  TORCH_CHECK_VALUE(!(axis.has_value() && group_size.has_value()), op,
                    ": pass axis (per channel) or group_size (per group), not both");
  DequantPlan plan;
  if (axis.has_value()) {
    const int64_t a = normalize_axis(op, *axis, q.dim());
    check_channel_param(op, "scale", scale, q.size(a), q);
    plan.layout = channel_layout(q, a);
    return plan;
  }
  TORCH_CHECK_INDEX(q.dim() > 0, op, ": q must have at least 1 dimension, got a scalar");
  const int64_t k = q.size(-1);
  if (group_size.has_value()) {
    check_group_size(op, *group_size);
    const auto expected = row_scale_shape(q, num_groups(k, *group_size));
    TORCH_CHECK_VALUE(scale.sizes() == at::IntArrayRef(expected), op, ": per-group scale must have shape ", expected,
                      " for q of shape ", q.sizes(), " and group_size ", *group_size, ", got ", scale.sizes());
    plan.group_size = *group_size;
    return plan;
  }
  if (scale.numel() == 1) {  // per tensor: one run of everything
    plan.layout.inner = q.numel();
    return plan;
  }
  const auto expected = row_scale_shape(q, -1);
  TORCH_CHECK_VALUE(scale.sizes() == at::IntArrayRef(expected), op,
                    ": scale must have one element (per tensor) or shape ", expected,
                    " (per token) for q of shape ", q.sizes(), "; pass axis= or group_size= for other layouts, got ",
                    scale.sizes());
  plan.group_size = k;  // per token = one group per row
  return plan;
}

inline void check_out_dtype(const char* op, at::ScalarType dt) {
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                   ": out_dtype must be float32, bfloat16 or float16, got ", dt);
}

}  // namespace effgen::ops
