// CUDA glue of the quant family: the same checks as the CPU glue (quant_common.h), then
// launches on the current stream. Parameter values that live on the GPU (per-channel
// scales) are not inspected here: that would cost a device sync per call.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/round.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda_glue.h"
#include "../kernels/cuda/quant.cuh"
#include "quant.h"
#include "quant_common.h"

namespace effgen::ops {
namespace {

using cuda::ParamIndex;

ParamIndex channel_index(const ChannelLayout& l) {
  ParamIndex idx;
  idx.inner = l.inner;
  idx.channels = l.channels;
  return idx;
}

ParamIndex group_index(int64_t k, int64_t group) {
  ParamIndex idx;
  idx.grouped = true;
  idx.k = std::max<int64_t>(k, 1);
  idx.group = group;
  idx.groups = num_groups(k, group);
  return idx;
}

// group_size 0 means one group per row (per token).
std::tuple<at::Tensor, at::Tensor> quantize_rows(const char* op, const at::Tensor& x_in, int64_t group_size) {
  check_float_input(op, "x", x_in);
  check_cuda(op, "x", x_in);
  TORCH_CHECK_INDEX(x_in.dim() > 0, op, ": x must have at least 1 dimension, got a scalar");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t k = x.size(-1), rows = k == 0 ? 0 : x.numel() / k;
  auto [q, scale] = allocate_row_quantized(x, group_size);
  const int64_t group = group_size > 0 ? group_size : std::max<int64_t>(k, 1);
  check_launch(op, cuda::quantize_rows(cuda_dtype(x.scalar_type()), x.data_ptr(), rows, k, group, q.data_ptr<int8_t>(),
                                       scale.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return {q, scale};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x) {
  return quantize_rows("quantize_per_token", x, /*group_size=*/0);
}

namespace {

std::tuple<at::Tensor, at::Tensor> quantize_per_group(const at::Tensor& x, int64_t group_size) {
  check_group_size("quantize_per_group", group_size);
  return quantize_rows("quantize_per_group", x, group_size);
}

std::tuple<at::Tensor, at::Tensor> quantize_per_channel(const at::Tensor& w_in, int64_t axis) {
  constexpr const char* op = "quantize_per_channel";
  check_float_input(op, "w", w_in);
  check_cuda(op, "w", w_in);
  axis = normalize_axis(op, axis, w_in.dim());
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const ChannelLayout layout = channel_layout(w, axis);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor bits = at::zeros({layout.channels}, w.options().dtype(at::kInt));
  at::Tensor scale = at::empty({layout.channels}, w.options().dtype(at::kFloat));
  check_launch(op, cuda::channel_scales(cuda_dtype(w.scalar_type()), w.data_ptr(), layout.outer, layout.channels, layout.inner,
                                        reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>()),
                                        scale.data_ptr<float>(), stream));
  at::Tensor q = at::empty(w.sizes(), w.options().dtype(at::kChar));
  check_launch(op, cuda::quantize_with_scales(cuda_dtype(w.scalar_type()), w.data_ptr(), w.numel(), scale.data_ptr<float>(),
                                              channel_index(layout), q.data_ptr<int8_t>(), stream));
  return {q, scale};
}

}  // namespace

at::Tensor dequantize_cuda(const at::Tensor& q_in, const at::Tensor& scale_in, std::optional<int64_t> axis,
                           std::optional<int64_t> group_size, at::ScalarType out_dtype) {
  check_cuda("dequantize", "q", q_in);
  check_out_dtype("dequantize", out_dtype);
  const DequantPlan plan = plan_dequantize(q_in, scale_in, axis, group_size);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor y = at::empty(q.sizes(), q.options().dtype(out_dtype));
  const ParamIndex idx = plan.group_size > 0 ? group_index(q.size(-1), plan.group_size) : channel_index(plan.layout);
  check_launch("dequantize", cuda::dequantize(cuda_dtype(y.scalar_type()), q.data_ptr<int8_t>(), q.numel(), scale.data_ptr<float>(),
                                              idx, y.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return y;
}

namespace {

std::tuple<at::Tensor, at::Tensor> run_fake_quantize(const char* op, const at::Tensor& x_in,
                                                     const cuda::FakeQuantArgs& args, const ParamIndex& idx) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mask = at::empty(x.sizes(), x.options().dtype(at::kBool));
  check_launch(op, cuda::fake_quantize(cuda_dtype(x.scalar_type()), x.data_ptr(), x.numel(), args, idx, y.data_ptr(),
                                       mask.data_ptr<bool>(), c10::cuda::getCurrentCUDAStream()));
  return {y, mask};
}

void check_fake_quant_input(const char* op, const at::Tensor& x, int64_t quant_min, int64_t quant_max) {
  check_float_input(op, "x", x);
  check_cuda(op, "x", x);
  check_quant_range(op, quant_min, quant_max);
}

cuda::FakeQuantArgs range_args(int64_t quant_min, int64_t quant_max) {
  cuda::FakeQuantArgs args;
  args.quant_min = static_cast<float>(quant_min);
  args.quant_max = static_cast<float>(quant_max);
  return args;
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_per_tensor_cachemask(const at::Tensor& x, double scale_d,
                                                                      int64_t zero_point, int64_t quant_min,
                                                                      int64_t quant_max) {
  constexpr const char* op = "fake_quantize_per_tensor";
  check_fake_quant_input(op, x, quant_min, quant_max);
  const float scale = static_cast<float>(scale_d);
  check_scale_value(op, scale);
  check_zero_point_value(op, zero_point, quant_min, quant_max);
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::FakeQuantArgs args = range_args(quant_min, quant_max);
  args.scale_value = scale;
  args.zero_point_value = static_cast<float>(zero_point);
  return run_fake_quantize(op, x, args, ParamIndex{});
}

// Per-channel parameters as contiguous fp32 device tensors (kept alive by the caller).
struct DeviceChannelParams {
  at::Tensor scale, zero_point;
  cuda::FakeQuantArgs args(int64_t quant_min, int64_t quant_max) const {
    cuda::FakeQuantArgs a = range_args(quant_min, quant_max);
    a.scale = scale.data_ptr<float>();
    a.zero_point = zero_point.data_ptr<float>();
    return a;
  }
};

DeviceChannelParams device_params(const at::Tensor& scale, const at::Tensor& zero_point) {
  return {scale.contiguous(), zero_point.to(at::kFloat).contiguous()};
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_per_channel_cachemask(const at::Tensor& x, const at::Tensor& scale,
                                                                       const at::Tensor& zero_point, int64_t axis,
                                                                       int64_t quant_min, int64_t quant_max) {
  constexpr const char* op = "fake_quantize_per_channel";
  check_fake_quant_input(op, x, quant_min, quant_max);
  const ChannelLayout layout = check_fake_quant_channels(op, x, scale, zero_point, axis, /*float_zero_point=*/false);
  const c10::cuda::CUDAGuard guard(x.device());
  const DeviceChannelParams p = device_params(scale, zero_point);
  return run_fake_quantize(op, x, p.args(quant_min, quant_max), channel_index(layout));
}

at::Tensor fake_quantize_mask_grad(const at::Tensor& grad_in, const at::Tensor& mask_in) {
  constexpr const char* op = "fake_quantize_mask_grad";
  check_mask_grad_args(op, grad_in, mask_in);
  check_cuda(op, "grad", grad_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous(), mask = mask_in.contiguous();
  at::Tensor dx = at::empty(grad.sizes(), grad.options());
  check_launch(op, cuda::mask_grad(cuda_dtype(grad.scalar_type()), grad.data_ptr(), mask.data_ptr<bool>(), grad.numel(),
                                   dx.data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return dx;
}

// Like PyTorch: the learned zero point is rounded half to even and clamped before use.
at::Tensor rounded_zero_point(const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max) {
  return at::clamp(at::round(zero_point.to(at::kFloat)), static_cast<double>(quant_min), static_cast<double>(quant_max));
}

at::Tensor fake_quantize_learnable_per_channel(const at::Tensor& x, const at::Tensor& scale,
                                               const at::Tensor& zero_point, int64_t axis, int64_t quant_min,
                                               int64_t quant_max, double /*grad_factor: backward only*/) {
  constexpr const char* op = "fake_quantize_learnable_per_channel";
  check_fake_quant_input(op, x, quant_min, quant_max);
  const ChannelLayout layout = check_fake_quant_channels(op, x, scale, zero_point, axis, /*float_zero_point=*/true);
  const c10::cuda::CUDAGuard guard(x.device());
  const DeviceChannelParams p = device_params(scale, rounded_zero_point(zero_point, quant_min, quant_max));
  return std::get<0>(run_fake_quantize(op, x, p.args(quant_min, quant_max), channel_index(layout)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_per_channel_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t axis, int64_t quant_min, int64_t quant_max, double grad_factor) {
  constexpr const char* op = "fake_quantize_learnable_per_channel_backward";
  check_fake_quant_input(op, x_in, quant_min, quant_max);
  const ChannelLayout layout = check_fake_quant_channels(op, x_in, scale, zero_point, axis, /*float_zero_point=*/true);
  TORCH_CHECK_VALUE(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(), op,
                    ": dy must match x in shape and dtype, got ", dy_in.sizes(), " ", dy_in.scalar_type(), " vs ",
                    x_in.sizes(), " ", x_in.scalar_type());
  check_same_device(op, "dy", dy_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const DeviceChannelParams p = device_params(scale, rounded_zero_point(zero_point, quant_min, quant_max));
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dscale = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  at::Tensor dzp = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  check_launch(op, cuda::fake_quantize_learnable_grad(cuda_dtype(x.scalar_type()), dy.data_ptr(), x.data_ptr(), x.numel(),
                                                      p.args(quant_min, quant_max), static_cast<float>(grad_factor),
                                                      channel_index(layout), dx.data_ptr(), dscale.data_ptr<float>(),
                                                      dzp.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  // Per-element gradients summed per channel: [outer, C, inner] -> [C]. (The dims spelled as
  // an IntArrayRef: a braced list is ambiguous with the Dimname overload in torch 2.11.)
  const auto per_channel = [&](const at::Tensor& t) {
    const int64_t outer_and_inner[] = {0, 2};
    return t.reshape({layout.outer, layout.channels, layout.inner})
        .sum(at::IntArrayRef(outer_and_inner), false, at::kDouble)
        .to(at::kFloat);
  };
  return {dx, per_channel(dscale), per_channel(dzp).to(zero_point.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CUDA, m) {
  m.impl("quantize_per_token", &quantize_per_token_cuda);
  m.impl("quantize_per_group", &quantize_per_group);
  m.impl("quantize_per_channel", &quantize_per_channel);
  m.impl("dequantize", &dequantize_cuda);
  m.impl("fake_quantize_per_tensor_cachemask", &fake_quantize_per_tensor_cachemask);
  m.impl("fake_quantize_per_channel_cachemask", &fake_quantize_per_channel_cachemask);
  m.impl("fake_quantize_mask_grad", &fake_quantize_mask_grad);
  m.impl("fake_quantize_learnable_per_channel", &fake_quantize_learnable_per_channel);
  m.impl("fake_quantize_learnable_per_channel_backward", &fake_quantize_learnable_per_channel_backward);
}

}  // namespace effgen::ops
