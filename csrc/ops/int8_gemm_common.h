// Argument checks and shapes shared by the CPU and CUDA glue of the int8_gemm family.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <tuple>
#include <utility>
#include <vector>

#include "../kernels/cpu/int8_gemm.h"
#include "quant_common.h"

namespace effgen::ops {

// Largest K whose int32 accumulation of int8 products cannot overflow: K * 128^2 < 2^31.
constexpr int64_t kMaxInt8K = (int64_t{1} << 17) - 1;

// Weight [N, K] int8 with scale [N] (per channel) or one element (per tensor); returns N.
inline int64_t check_int8_weight(const char* op, const at::Tensor& wq, const at::Tensor& w_scale, int64_t k,
                                 const at::Tensor& x) {
  TORCH_CHECK_TYPE(wq.scalar_type() == at::kChar, op, ": wq must be int8, got ", wq.scalar_type());
  TORCH_CHECK_VALUE(wq.dim() == 2, op, ": wq must be 2-D [N, K], got shape ", wq.sizes());
  TORCH_CHECK_VALUE(wq.size(1) == k, op, ": wq has K = ", wq.size(1), " but the input has K = ", k);
  check_same_device(op, "wq", wq, x);
  check_same_device(op, "w_scale", w_scale, x);
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, op, ": w_scale must be float32, got ", w_scale.scalar_type());
  return wq.size(0);
}

inline void check_k_bound(const char* op, int64_t k) {
  TORCH_CHECK_VALUE(k <= kMaxInt8K, op, ": K = ", k, " exceeds ", kMaxInt8K,
                    ", the largest K whose int32 accumulation of int8 products cannot overflow");
}

inline void check_bias(const char* op, const std::optional<at::Tensor>& bias, int64_t n, const at::Tensor& x) {
  if (!bias.has_value()) return;
  check_same_device(op, "bias", *bias, x);
  TORCH_CHECK_TYPE(bias->is_floating_point(), op, ": bias must be a float tensor, got ", bias->scalar_type());
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, op, ": bias must be 1-D with N = ", n,
                    " entries, got shape ", bias->sizes());
}

// Per-row (x.shape[:-1]) or single-element scale of the activations; returns its stride.
inline int64_t check_row_scale(const char* op, const char* name, const at::Tensor& scale, const at::Tensor& x) {
  check_same_device(op, name, scale, x);
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", scale.scalar_type());
  if (scale.numel() == 1) return 0;
  const auto expected = row_scale_shape(x, -1);
  TORCH_CHECK_VALUE(scale.sizes() == at::IntArrayRef(expected), op, ": ", name,
                    " must have one element (per tensor) or shape ", expected, " (per token), got ", scale.sizes());
  return 1;
}

// Per-channel ([N] or one element) weight scale; returns its stride.
inline int64_t check_channel_scale(const char* op, const at::Tensor& w_scale, int64_t n) {
  if (w_scale.numel() == 1) return 0;
  TORCH_CHECK_VALUE(w_scale.dim() == 1 && w_scale.size(0) == n, op,
                    ": w_scale must have one element (per tensor) or shape [", n, "] (per channel), got ",
                    w_scale.sizes());
  return 1;
}

// Returns the number of groups and the group size of a W8A16 weight scale.
inline std::pair<int64_t, int64_t> check_w8a16_scale(const char* op, const at::Tensor& w_scale, int64_t n,
                                                     int64_t k, std::optional<int64_t> group_size) {
  if (!group_size.has_value()) {
    TORCH_CHECK_VALUE(w_scale.dim() == 1 && w_scale.size(0) == n, op,
                      ": without group_size, w_scale must have shape [", n, "] (per channel), got ", w_scale.sizes());
    return {1, std::max<int64_t>(k, 1)};
  }
  check_group_size(op, *group_size);
  const int64_t groups = num_groups(k, *group_size);
  TORCH_CHECK_VALUE(w_scale.dim() == 2 && w_scale.size(0) == n && w_scale.size(1) == groups, op,
                    ": with group_size ", *group_size, ", w_scale must have shape [", n, ", ", groups,
                    "], got ", w_scale.sizes());
  return {groups, *group_size};
}

inline std::vector<int64_t> linear_out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(n);
  return shape;
}

// The bias as a contiguous fp32 tensor for the epilogues (undefined when there is none).
inline at::Tensor float_bias(const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
}

inline int64_t check_activation_rows(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_INDEX(x.dim() > 0, op, ": ", name, " must have at least 1 dimension, got a scalar");
  return x.size(-1);
}

// The rows of x [..., K]: M, the product of the leading dims, and x as [M, K] (reshape with
// -1 cannot say how many rows of K = 0 values there are).
inline int64_t leading_rows(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  return m;
}
inline at::Tensor as_rows(const at::Tensor& x) { return x.reshape({leading_rows(x), x.size(-1)}); }

// K = 0: every product is an empty sum, so the output (of x's leading dims by n, with
// `options`) is the bias, 0 without one, whatever the scales (the reference multiplies them
// into products that do not exist).
inline at::Tensor empty_sum_product(const at::Tensor& x, int64_t n, const at::TensorOptions& options,
                                    const std::optional<at::Tensor>& bias) {
  at::Tensor out = at::empty(linear_out_shape(x, n), options);
  return bias.has_value() ? out.copy_(bias->to(at::kFloat).expand(out.sizes())) : out.zero_();
}

// The device-independent checks of each op (the glue checks the device first).
struct Int8LinearShape {
  int64_t k, n, x_stride, w_stride;
};

// The W8A8 checks around a weight check: weight(k) returns {N, stride of w_scale}.
template <typename WeightCheck>
Int8LinearShape check_w8a8(const char* op, const at::Tensor& xq, const at::Tensor& x_scale,
                           const std::optional<at::Tensor>& bias, at::ScalarType out_dtype, const WeightCheck& weight) {
  TORCH_CHECK_TYPE(xq.scalar_type() == at::kChar, op, ": xq must be int8, got ", xq.scalar_type());
  check_out_dtype(op, out_dtype);
  Int8LinearShape s{};
  s.k = check_activation_rows(op, "xq", xq);
  s.x_stride = check_row_scale(op, "x_scale", x_scale, xq);
  std::tie(s.n, s.w_stride) = weight(s.k);
  check_bias(op, bias, s.n, xq);
  check_k_bound(op, s.k);
  return s;
}

// SmoothQuant's factors that multiply x's channels before it is quantized: fp32 [K].
inline void check_smoothing(const char* op, const std::optional<at::Tensor>& smoothing, int64_t k,
                            const at::Tensor& x) {
  if (!smoothing.has_value()) return;
  check_same_device(op, "smoothing", *smoothing, x);
  TORCH_CHECK_TYPE(smoothing->scalar_type() == at::kFloat, op, ": smoothing must be float32, got ",
                   smoothing->scalar_type());
  TORCH_CHECK_VALUE(smoothing->dim() == 1 && smoothing->size(0) == k, op, ": smoothing must have shape [", k,
                    "] (one factor per input feature), got ", smoothing->sizes());
}

// ... and with float activations (times the optional smoothing) quantized per token inside
// the op.
template <typename WeightCheck>
Int8LinearShape check_dynamic_w8a8(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& smoothing, const WeightCheck& weight) {
  check_float_input(op, "x", x);
  Int8LinearShape s{};
  s.k = check_activation_rows(op, "x", x);
  s.x_stride = 1;
  std::tie(s.n, s.w_stride) = weight(s.k);
  check_bias(op, bias, s.n, x);
  check_smoothing(op, smoothing, s.k, x);
  check_k_bound(op, s.k);
  return s;
}

// Canonical weights: {N, stride of w_scale}.
inline std::pair<int64_t, int64_t> check_canonical_weight(const char* op, const at::Tensor& wq,
                                                          const at::Tensor& w_scale, int64_t k, const at::Tensor& x) {
  const int64_t n = check_int8_weight(op, wq, w_scale, k, x);
  return {n, check_channel_scale(op, w_scale, n)};
}

inline Int8LinearShape check_int8_linear(const at::Tensor& xq, const at::Tensor& x_scale, const at::Tensor& wq,
                                         const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                         at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear";
  return check_w8a8(op, xq, x_scale, bias, out_dtype,
                    [&](int64_t k) { return check_canonical_weight(op, wq, w_scale, k, xq); });
}

inline Int8LinearShape check_int8_dynamic_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                                                 const std::optional<at::Tensor>& bias,
                                                 const std::optional<at::Tensor>& smoothing) {
  constexpr const char* op = "int8_dynamic_linear";
  return check_dynamic_w8a8(op, x, bias, smoothing,
                            [&](int64_t k) { return check_canonical_weight(op, wq, w_scale, k, x); });
}

// Packed weights as cpu::kPackCols x cpu::kPackDepth blocks ([ceil(N/16), ceil(K/4), 64]
// int8, layout in kernels/cpu/int8_gemm.h) for N output channels.
inline void check_packed_layout(const char* op, const at::Tensor& w_packed, int64_t n, int64_t k, const at::Tensor& x) {
  check_same_device(op, "w_packed", w_packed, x);
  TORCH_CHECK_TYPE(w_packed.scalar_type() == at::kChar, op, ": w_packed must be int8, got ", w_packed.scalar_type());
  const std::vector<int64_t> packed_shape{(n + cpu::kPackCols - 1) / cpu::kPackCols,
                                          (k + cpu::kPackDepth - 1) / cpu::kPackDepth, cpu::kPackBlock};
  TORCH_CHECK_VALUE(w_packed.sizes() == at::IntArrayRef(packed_shape), op, ": w_packed must have shape ",
                    at::IntArrayRef(packed_shape), " (from N = ", n, " and K = ", k,
                    "; see int8_pack_weight), got ", w_packed.sizes());
}

// The column sums of packed weights: int32 of `dims` dimensions, the last one N (returned).
inline int64_t check_weight_sums(const char* op, const at::Tensor& w_sum, int64_t dims, const at::Tensor& x) {
  check_same_device(op, "w_sum", w_sum, x);
  TORCH_CHECK_TYPE(w_sum.scalar_type() == at::kInt, op, ": w_sum must be int32, got ", w_sum.scalar_type());
  TORCH_CHECK_VALUE(w_sum.dim() == dims, op, ": w_sum must be ", dims == 1 ? "1-D [N]" : "2-D [groups, N]",
                    " (see int8_pack_weight), got shape ", w_sum.sizes());
  return w_sum.size(-1);
}

inline void check_float_scale(const char* op, const at::Tensor& w_scale, const at::Tensor& x) {
  check_same_device(op, "w_scale", w_scale, x);
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, op, ": w_scale must be float32, got ", w_scale.scalar_type());
}

// Packed weights with their column sums ([N] int32, which give N) and a per-channel or
// per-tensor scale; returns N and the scale's stride.
inline std::pair<int64_t, int64_t> check_packed_weight(const char* op, const at::Tensor& w_packed,
                                                       const at::Tensor& w_sum, const at::Tensor& w_scale, int64_t k,
                                                       const at::Tensor& x) {
  const int64_t n = check_weight_sums(op, w_sum, 1, x);
  check_packed_layout(op, w_packed, n, k, x);
  check_float_scale(op, w_scale, x);
  return {n, check_channel_scale(op, w_scale, n)};
}

inline Int8LinearShape check_int8_linear_packed(const at::Tensor& xq, const at::Tensor& x_scale,
                                                const at::Tensor& w_packed, const at::Tensor& w_sum,
                                                const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                                at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear_packed";
  return check_w8a8(op, xq, x_scale, bias, out_dtype,
                    [&](int64_t k) { return check_packed_weight(op, w_packed, w_sum, w_scale, k, xq); });
}

inline Int8LinearShape check_int8_dynamic_linear_packed(const at::Tensor& x, const at::Tensor& w_packed,
                                                        const at::Tensor& w_sum, const at::Tensor& w_scale,
                                                        const std::optional<at::Tensor>& bias,
                                                        const std::optional<at::Tensor>& smoothing) {
  constexpr const char* op = "int8_dynamic_linear_packed";
  return check_dynamic_w8a8(op, x, bias, smoothing,
                            [&](int64_t k) { return check_packed_weight(op, w_packed, w_sum, w_scale, k, x); });
}

struct W8A16Shape {
  int64_t k, n, m, groups, group;
};

// The W8A16 argument checks around a weight check (K -> N), as check_w8a8 does for W8A8.
template <typename WeightCheck>
W8A16Shape check_w8a16(const char* op, const at::Tensor& x, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, std::optional<int64_t> group_size,
                       const WeightCheck& check_weight) {
  check_float_input(op, "x", x);
  W8A16Shape s{};
  s.k = check_activation_rows(op, "x", x);
  s.n = check_weight(s.k);
  std::tie(s.groups, s.group) = check_w8a16_scale(op, w_scale, s.n, s.k, group_size);
  check_bias(op, bias, s.n, x);
  s.m = leading_rows(x);
  return s;
}

// Per channel, w_sum is [N]; with group_size, [groups, N]: the sums of each group's values.
inline W8A16Shape check_int8_weight_only_linear_packed(const at::Tensor& x, const at::Tensor& w_packed,
                                                       const at::Tensor& w_sum, const at::Tensor& w_scale,
                                                       const std::optional<at::Tensor>& bias,
                                                       std::optional<int64_t> group_size) {
  constexpr const char* op = "int8_weight_only_linear_packed";
  const W8A16Shape s = check_w8a16(op, x, w_scale, bias, group_size, [&](int64_t k) {
    const int64_t n = check_weight_sums(op, w_sum, group_size.has_value() ? 2 : 1, x);
    check_packed_layout(op, w_packed, n, k, x);
    check_float_scale(op, w_scale, x);
    check_k_bound(op, k);
    return n;
  });
  TORCH_CHECK_VALUE(!group_size.has_value() || w_sum.size(0) == s.groups, op, ": w_sum must have shape [", s.groups,
                    ", ", s.n, "] (one row of sums per group), got ", w_sum.sizes());
  return s;
}

inline W8A16Shape check_int8_weight_only_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                                                const std::optional<at::Tensor>& bias,
                                                std::optional<int64_t> group_size) {
  constexpr const char* op = "int8_weight_only_linear";
  return check_w8a16(op, x, w_scale, bias, group_size,
                     [&](int64_t k) { return check_int8_weight(op, wq, w_scale, k, x); });
}

}  // namespace effgen::ops
