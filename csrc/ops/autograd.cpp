// Autograd of the differentiable ops, in C++ on the Autograd dispatch key (device-agnostic:
// the forward and backward call the ops' CPU or CUDA kernels through the dispatcher). It was
// registered from Python (torch.library.register_autograd) before: a training step then paid
// a Python autograd.Function round trip per fake-quant call, about 1.7x PyTorch's own
// fake-quant overhead on small tensors (benchmarks/RESULTS.md, session 11), and a decode
// step would pay one per quantized layer.
//
// Fake quant: the two cachemask ops pass the gradient where the mask is set (straight
// through, as torch.fake_quantize_per_*_affine); the mask output is not differentiable. The
// learnable op's (dx, dscale, dzero_point) come from its backward op (LSQ, as
// torch._fake_quantize_learnable_per_channel_affine).
//
// Quantized linear ops (W8A8, W8A16, binary, ternary, XNOR): gradients of the input and the
// bias, so that a model with frozen quantized layers trains what sits around them (adapters,
// a distilled head, an input); the static W8A8 ops (int8 x): the bias's. See QuantizedLinear.
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
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

// ---------------------------------------------------------------------------------------
// Quantized linear ops. y = x W^T + b, W the float weights that the stored codes and scales
// stand for: dL/dx = dL/dy W and dL/db = dL/dy summed over rows. W is rebuilt in backward
// (in the gradient's dtype) and never kept between the passes: frozen quantized layers keep
// their small memory in training. W8A8's per-token rounding of the activations passes the
// gradient straight through, as Int8TrainLinear does; XNOR's binarized activations pass it
// through BinaryTrainLinear's estimator (see through_binarized_rows). Codes and scales are
// constants: asking for a scale's gradient is an error, not a silent None.
// ---------------------------------------------------------------------------------------

// How the weights are stored: canonical int8 [N, K], int8_pack_weight's blocks, sign bits,
// ternary planes.
enum class Codes : int64_t { kInt8, kInt8Packed, kBinary, kTernary };

struct QuantizedWeights {
  Codes codes;
  const at::Tensor& stored;
  const at::Tensor& scale;
  const char* scale_name;
  std::optional<int64_t> group_size;
};

// The float weights [N, K] in dtype: the codes as int8 values, times their scales (per
// channel, per group or per tensor: dequantize's layouts).
at::Tensor dense_weights(Codes codes, const at::Tensor& stored, const at::Tensor& scale, int64_t k,
                         std::optional<int64_t> group_size, at::ScalarType dtype) {
  using Unpack = at::Tensor(const at::Tensor&, int64_t);
  static const auto unpack_binary = effgen_op<Unpack>("effgen::unpack_binary");
  static const auto unpack_ternary = effgen_op<Unpack>("effgen::unpack_ternary");
  static const auto unpack_int8 = effgen_op<at::Tensor(const at::Tensor&, int64_t, int64_t)>("effgen::int8_unpack_weight");
  static const auto dequantize = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, std::optional<int64_t>,
                                                      std::optional<int64_t>, at::ScalarType)>("effgen::dequantize");
  at::Tensor values = stored;
  switch (codes) {
    case Codes::kInt8: break;
    case Codes::kInt8Packed: values = unpack_int8.call(stored, scale.size(0), k); break;
    case Codes::kBinary: values = unpack_binary.call(stored, k); break;
    case Codes::kTernary: values = unpack_ternary.call(stored, k); break;
  }
  return dequantize.call(values, scale, std::nullopt, group_size, dtype);
}

// XNOR-Net runs on x_b = sign(x) * mean|x| per row (sign(0) = +1). Given dL/dx_b, the
// gradient BinaryTrainLinear's autograd gives: the clipped straight-through sign (pass where
// |x| <= 1) times the row's mean, plus the mean's own term, sum(dL/dx_b * sign) * sgn(x) / K
// (sgn(0) = 0, torch.abs's derivative). In fp32, returned in x's dtype.
at::Tensor through_binarized_rows(const at::Tensor& grad_binarized, const at::Tensor& x) {
  const at::Tensor xf = x.to(at::kFloat), gf = grad_binarized.to(at::kFloat);
  const int64_t k = x.size(-1);
  const at::Tensor mean = xf.abs().mean({-1}, /*keepdim=*/true);
  const at::Tensor sign = at::where(xf >= 0, 1.0, -1.0);
  const at::Tensor through_sign = gf * mean * (xf.abs() <= 1);
  const at::Tensor through_mean = (gf * sign).sum({-1}, /*keepdim=*/true) * xf.sgn() / static_cast<double>(k);
  return (through_sign + through_mean).to(x.scalar_type());
}

struct QuantizedLinear : torch::autograd::Function<QuantizedLinear> {
  // run: the op itself, called below autograd. binarized_x: the op binarizes x (XNOR).
  // smoothing: the factors the op multiplies x by before quantizing it (W8A8), if any.
  template <typename Run>
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                            const at::Tensor& stored, const at::Tensor& scale, int64_t codes,
                            std::optional<int64_t> group_size, bool binarized_x,
                            const std::optional<at::Tensor>& smoothing, const Run& run) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({stored, scale, binarized_x ? x : at::Tensor(), smoothing.value_or(at::Tensor())});
    ctx->saved_data["codes"] = codes;
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["k"] = x.size(-1);
    if (bias) ctx->saved_data["bias_dtype"] = bias->scalar_type();
    return run();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);  // one per forward argument
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const variable_list saved = ctx->get_saved_variables();
    if (ctx->needs_input_grad(0)) {
      const at::Tensor weights =
          dense_weights(static_cast<Codes>(ctx->saved_data["codes"].toInt()), saved[0], saved[1],
                        ctx->saved_data["k"].toInt(), ctx->saved_data["group_size"].toOptional<int64_t>(),
                        grad_y.scalar_type());
      at::Tensor grad_x = grad_y.matmul(weights);  // in x's dtype: the ops' outputs have it
      if (saved[3].defined()) grad_x = grad_x * saved[3].to(grad_x.scalar_type());  // d(x * smoothing)/dx
      out[0] = saved[2].defined() ? through_binarized_rows(grad_x, saved[2]) : grad_x;
    }
    if (ctx->needs_input_grad(1)) {
      // flatten, not reshape({-1, N}): N = 0 makes -1 ambiguous
      const at::Tensor rows = grad_y.dim() > 1 ? grad_y.flatten(0, -2) : grad_y.unsqueeze(0);
      out[1] = rows.sum(0).to(ctx->saved_data["bias_dtype"].toScalarType());
    }
    return out;
  }
};

void refuse_gradient(const char* op, const char* name, const at::Tensor& scale) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && scale.requires_grad()), op, ": ", name,
              " takes no gradient (quantized weights and their scales are constants); train the float "
              "layer with Int8TrainLinear, BinaryTrainLinear or TernaryTrainLinear, or pass ", name, ".detach()");
}

// The Autograd kernel of a quantized linear op: the op as is when no gradient is asked for
// (no node, no saved tensors: inference under no_grad pays only these checks), else through
// QuantizedLinear.
template <typename Run>
at::Tensor quantized_linear(const char* op, const QuantizedWeights& w, const at::Tensor& x,
                            const std::optional<at::Tensor>& bias, bool binarized_x, const Run& run,
                            const std::optional<at::Tensor>& smoothing = std::nullopt) {
  refuse_gradient(op, w.scale_name, w.scale);
  if (smoothing) refuse_gradient(op, "smoothing", *smoothing);
  const bool grad_mode = at::GradMode::is_enabled();
  if (!grad_mode || !(x.requires_grad() || (bias && bias->requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return run();
  }
  return QuantizedLinear::apply(x, bias, w.stored, w.scale, static_cast<int64_t>(w.codes), w.group_size,
                                binarized_x, smoothing, run);
}

using OptionalTensor = std::optional<at::Tensor>;

// The static W8A8 ops take x already quantized (int8: no gradient); the bias gets its own.
at::Tensor int8_linear(const at::Tensor& xq, const at::Tensor& x_scale, const at::Tensor& wq,
                       const at::Tensor& w_scale, const OptionalTensor& bias, at::ScalarType out_dtype) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const OptionalTensor&, at::ScalarType)>(
      "effgen::int8_linear");
  refuse_gradient("int8_linear", "x_scale", x_scale);
  return quantized_linear("int8_linear", {Codes::kInt8, wq, w_scale, "w_scale", std::nullopt}, xq, bias, false,
                          [&] { return op.call(xq, x_scale, wq, w_scale, bias, out_dtype); });
}

at::Tensor int8_linear_packed(const at::Tensor& xq, const at::Tensor& x_scale, const at::Tensor& w_packed,
                              const at::Tensor& w_sum, const at::Tensor& w_scale, const OptionalTensor& bias,
                              at::ScalarType out_dtype) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const at::Tensor&, const OptionalTensor&,
                                              at::ScalarType)>("effgen::int8_linear_packed");
  refuse_gradient("int8_linear_packed", "x_scale", x_scale);
  return quantized_linear("int8_linear_packed", {Codes::kInt8Packed, w_packed, w_scale, "w_scale", std::nullopt},
                          xq, bias, false,
                          [&] { return op.call(xq, x_scale, w_packed, w_sum, w_scale, bias, out_dtype); });
}

at::Tensor int8_dynamic_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                               const OptionalTensor& bias, const OptionalTensor& smoothing) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const OptionalTensor&, const OptionalTensor&)>(
      "effgen::int8_dynamic_linear");
  return quantized_linear("int8_dynamic_linear", {Codes::kInt8, wq, w_scale, "w_scale", std::nullopt}, x, bias,
                          false, [&] { return op.call(x, wq, w_scale, bias, smoothing); }, smoothing);
}

at::Tensor int8_dynamic_linear_packed(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_sum,
                                      const at::Tensor& w_scale, const OptionalTensor& bias,
                                      const OptionalTensor& smoothing) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const OptionalTensor&, const OptionalTensor&)>(
      "effgen::int8_dynamic_linear_packed");
  return quantized_linear("int8_dynamic_linear_packed", {Codes::kInt8Packed, w_packed, w_scale, "w_scale", std::nullopt},
                          x, bias, false, [&] { return op.call(x, w_packed, w_sum, w_scale, bias, smoothing); },
                          smoothing);
}

at::Tensor int8_weight_only_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                                   const OptionalTensor& bias, std::optional<int64_t> group_size) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const OptionalTensor&, std::optional<int64_t>)>(
      "effgen::int8_weight_only_linear");
  return quantized_linear("int8_weight_only_linear", {Codes::kInt8, wq, w_scale, "w_scale", group_size}, x, bias,
                          false, [&] { return op.call(x, wq, w_scale, bias, group_size); });
}

at::Tensor int8_weight_only_linear_packed(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_sum,
                                          const at::Tensor& w_scale, const OptionalTensor& bias,
                                          std::optional<int64_t> group_size) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const OptionalTensor&, std::optional<int64_t>)>(
      "effgen::int8_weight_only_linear_packed");
  return quantized_linear("int8_weight_only_linear_packed",
                          {Codes::kInt8Packed, w_packed, w_scale, "w_scale", group_size}, x, bias, false,
                          [&] { return op.call(x, w_packed, w_sum, w_scale, bias, group_size); });
}

at::Tensor binary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& alpha,
                         const OptionalTensor& bias, std::optional<int64_t> group_size, const OptionalTensor& lut) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const OptionalTensor&, std::optional<int64_t>, const OptionalTensor&)>(
      "effgen::binary_linear");
  return quantized_linear("binary_linear", {Codes::kBinary, packed, alpha, "alpha", group_size}, x, bias, false,
                          [&] { return op.call(x, packed, alpha, bias, group_size, lut); });
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const OptionalTensor& bias, const OptionalTensor& lut) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const OptionalTensor&, const OptionalTensor&)>("effgen::ternary_linear");
  return quantized_linear("ternary_linear", {Codes::kTernary, packed, scale, "scale", std::nullopt}, x, bias, false,
                          [&] { return op.call(x, packed, scale, bias, lut); });
}

at::Tensor xnor_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& alpha,
                       const OptionalTensor& bias) {
  static const auto op = effgen_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const OptionalTensor&)>("effgen::xnor_linear");
  return quantized_linear("xnor_linear", {Codes::kBinary, packed, alpha, "alpha", std::nullopt}, x, bias, true,
                          [&] { return op.call(x, packed, alpha, bias); });
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, Autograd, m) {
  m.impl("fake_quantize_per_tensor_cachemask", &per_tensor);
  m.impl("fake_quantize_per_channel_cachemask", &per_channel);
  m.impl("fake_quantize_learnable_per_channel", &learnable);
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_linear_packed", &int8_linear_packed);
  m.impl("int8_dynamic_linear", &int8_dynamic_linear);
  m.impl("int8_dynamic_linear_packed", &int8_dynamic_linear_packed);
  m.impl("int8_weight_only_linear", &int8_weight_only_linear);
  m.impl("int8_weight_only_linear_packed", &int8_weight_only_linear_packed);
  m.impl("binary_linear", &binary_linear);
  m.impl("ternary_linear", &ternary_linear);
  m.impl("xnor_linear", &xnor_linear);
}
