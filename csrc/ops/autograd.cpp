// Autograd of the fake-quant ops, in C++ on the Autograd dispatch key (device-agnostic: the
// forward and backward call the ops' CPU or CUDA kernels through the dispatcher). It was
// registered from Python (torch.library.register_autograd) before: a training step then paid
// a Python autograd.Function round trip per fake-quant call, about 1.7x PyTorch's own
// fake-quant overhead on small tensors (benchmarks/RESULTS.md, session 11).
//
// Gradients: the two cachemask ops pass the gradient where the mask is set (straight
// through, as torch.fake_quantize_per_*_affine); the mask output is not differentiable. The
// learnable op's (dx, dscale, dzero_point) come from its backward op (LSQ, as
// torch._fake_quantize_learnable_per_channel_affine).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of effgen::<name>, looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> effgen_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using CachemaskOutput = std::tuple<at::Tensor, at::Tensor>;

at::Tensor straight_through(const at::Tensor& grad_y, const at::Tensor& mask) {
  if (!grad_y.defined()) return {};
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("effgen::fake_quantize_mask_grad");
  return op.call(grad_y.contiguous(), mask);
}

// Saves the mask of a cachemask op's forward (output 1) for straight_through.
variable_list save_mask(AutogradContext* ctx, const CachemaskOutput& out) {
  const auto& [y, mask] = out;
  ctx->save_for_backward({mask});
  ctx->mark_non_differentiable({mask});
  return {y, mask};
}

struct PerTensorFakeQuant : torch::autograd::Function<PerTensorFakeQuant> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, double scale, int64_t zero_point,
                               int64_t quant_min, int64_t quant_max) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = effgen_op<CachemaskOutput(const at::Tensor&, double, int64_t, int64_t, int64_t)>(
        "effgen::fake_quantize_per_tensor_cachemask");
    return save_mask(ctx, op.call(x, scale, zero_point, quant_min, quant_max));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {straight_through(grads[0], ctx->get_saved_variables()[0]), {}, {}, {}, {}};
  }
};

struct PerChannelFakeQuant : torch::autograd::Function<PerChannelFakeQuant> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& zero_point, int64_t axis, int64_t quant_min, int64_t quant_max) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = effgen_op<CachemaskOutput(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                     int64_t, int64_t)>("effgen::fake_quantize_per_channel_cachemask");
    return save_mask(ctx, op.call(x, scale, zero_point, axis, quant_min, quant_max));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // scale and zero_point get no gradient: PyTorch's per-channel fake quant gives none either
    return {straight_through(grads[0], ctx->get_saved_variables()[0]), {}, {}, {}, {}, {}};
  }
};

struct LearnableFakeQuant : torch::autograd::Function<LearnableFakeQuant> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t axis, int64_t quant_min, int64_t quant_max,
                            double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    using Signature =
        at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double);
    static const auto op = effgen_op<Signature>("effgen::fake_quantize_learnable_per_channel");
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["grad_factor"] = grad_factor;
    return op.call(x, scale, zero_point, axis, quant_min, quant_max, grad_factor);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {{}, {}, {}, {}, {}, {}, {}};
    static const auto op =
        effgen_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, int64_t,
                                                                 int64_t, int64_t, double)>(
            "effgen::fake_quantize_learnable_per_channel_backward");
    const variable_list saved = ctx->get_saved_variables();
    const auto [dx, dscale, dzero_point] =
        op.call(grads[0].contiguous(), saved[0], saved[1], saved[2], ctx->saved_data["axis"].toInt(),
                ctx->saved_data["quant_min"].toInt(), ctx->saved_data["quant_max"].toInt(),
                ctx->saved_data["grad_factor"].toDouble());
    return {dx, dscale, dzero_point, {}, {}, {}, {}};
  }
};

CachemaskOutput per_tensor(const at::Tensor& x, double scale, int64_t zero_point, int64_t quant_min,
                           int64_t quant_max) {
  const variable_list out = PerTensorFakeQuant::apply(x, scale, zero_point, quant_min, quant_max);
  return {out[0], out[1]};
}

CachemaskOutput per_channel(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t axis,
                            int64_t quant_min, int64_t quant_max) {
  const variable_list out = PerChannelFakeQuant::apply(x, scale, zero_point, axis, quant_min, quant_max);
  return {out[0], out[1]};
}

at::Tensor learnable(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t axis,
                     int64_t quant_min, int64_t quant_max, double grad_factor) {
  return LearnableFakeQuant::apply(x, scale, zero_point, axis, quant_min, quant_max, grad_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, Autograd, m) {
  m.impl("fake_quantize_per_tensor_cachemask", &per_tensor);
  m.impl("fake_quantize_per_channel_cachemask", &per_channel);
  m.impl("fake_quantize_learnable_per_channel", &learnable);
}
