"""Int8 linear layers: W8A8 with dynamic per-token activations, and W8A16 weight-only.

Both save the canonical layout only: ``weight`` int8 [out, in] row-major, ``weight_scale``
fp32 (per output channel, or per channel and group), and an optional ``bias``, so a
checkpoint moves between machines and devices as is, and plain tensors save with
safetensors. On the CPU, Int8Linear and Int8WeightOnlyLinear hold their weights in the
packed layout of ``ops.int8_pack_weight`` instead (the same bytes plus one int32 per output
channel and scale group): ``weight``, ``state_dict`` and ``load_state_dict`` rebuild or
take the canonical layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._quantized import QuantizedLayer
from ._trainable import trainable_copy


class _QuantizedLinearBase(QuantizedLayer):
    """Shared state: int8 weight, fp32 scales and an optional bias, all plain tensors.
    Subclasses end __init__ with ``self.weight = self._buffers["weight"]`` (the layout of
    the device) and say in _pack how they pack it. forward reads its
    buffers from ``self._buffers``: nn.Module.__getattr__ costs about 0.7 us a buffer,
    which was a third of a small decode layer's call (4 us of 12 at 1x576x192)."""

    _float32_buffers = ("weight_scale", "input_smoothing")

    def __init__(self, in_features: int, out_features: int, bias: bool, scale_shape: tuple[int, ...],
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        bias_dtype = dtype or torch.get_default_dtype()
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        self.register_buffer("weight_packed", None, persistent=False)
        self.register_buffer("weight_sum", None, persistent=False)

    # On the CPU the weights live only in the packed layout (the register tile reads 16
    # output channels per vector; see ops.int8_pack_weight); elsewhere, and in every
    # state_dict, in the canonical one (also on the CPU while transformers loads the layer).
    def _packs_on(self, device: torch.device) -> bool:
        return device.type == "cpu" and not self._hf_loading

    def _pack(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.int8_pack_weight(weight)

    @property
    def weight(self) -> torch.Tensor:
        """The canonical int8 [out, in] weights (rebuilt from the packed layout where packed)."""
        if "weight" not in self._buffers:  # during __init__: lets register_buffer create it
            raise AttributeError("weight")
        packed = self._buffers.get("weight_packed")
        if packed is None:
            return self._buffers["weight"]
        return ops.int8_unpack_weight(packed, self.out_features, self.in_features)

    def __setattr__(self, name: str, value) -> None:
        if name != "weight":
            return super().__setattr__(name, value)
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int8:
            # e.g. Hugging Face's tie_weights() giving a quantized LM head the float embeddings
            raise TypeError(f"{type(self).__name__}.weight holds int8 codes, got "
                            f"{getattr(value, 'dtype', type(value).__name__)}: quantize float weights with "
                            f"from_float (to keep an LM head tied to its embeddings, leave it out of quantize_)")
        if self._packs_on(value.device):
            self._buffers["weight"] = None
            self._buffers["weight_packed"], self._buffers["weight_sum"] = self._pack(value)
        else:
            self._buffers["weight"], self._buffers["weight_packed"], self._buffers["weight_sum"] = value, None, None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.rebuild_derived()  # moved to a device of the other layout: take it
        return self

    def rebuild_derived(self) -> None:
        held = self.weight_packed if self.weight_packed is not None else self._buffers["weight"]
        if (self.weight_packed is not None) != self._packs_on(held.device):
            self.weight = self.weight

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if self.weight_packed is not None:
            destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "weight"
        if self.weight_packed is not None:  # "weight" is not a buffer while packed: load it here
            if key not in state_dict:
                missing_keys.append(key)
            else:
                weight = state_dict.pop(key)
                expected = (self.out_features, self.in_features)
                if tuple(weight.shape) != expected or weight.dtype != torch.int8:
                    error_msgs.append(f"size mismatch for {key}: the model takes int8 of shape {expected}, the "
                                      f"checkpoint holds {weight.dtype} of shape {tuple(weight.shape)}.")
                else:
                    self.weight = weight.to(self.weight_packed.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _copy_bias(self, linear: nn.Linear) -> None:
        if linear.bias is not None:
            self.bias = linear.bias.detach().clone()

    @staticmethod
    def _float_weight(linear: nn.Linear) -> torch.Tensor:
        weight = linear.weight.detach()
        if not weight.is_floating_point():
            raise TypeError(f"expected a float nn.Linear weight, got {weight.dtype}")
        return weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def check_smoothing_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")


def smoothing_factors(activation_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors s = max|x|^alpha / max|w|^(1 - alpha).

    Multiplying weight column j by s[j] and the activation channel j by 1 / s[j] leaves the
    product unchanged but moves activation outliers (which per-token int8 cannot represent
    well) into the weights (which per-channel int8 represents well)."""
    check_smoothing_alpha(alpha)
    if activation_absmax.shape != weight.shape[1:]:
        raise ValueError(f"activation_absmax must have shape [{weight.shape[1]}] (one per input feature), "
                         f"got {tuple(activation_absmax.shape)}")
    if not torch.isfinite(activation_absmax).all():
        raise ValueError("activation_absmax holds NaN or Inf (the calibration batches reached non-finite "
                         "activations): recalibrate on batches the float model handles")
    tiny = torch.finfo(torch.float32).tiny
    act = activation_absmax.float().clamp(min=1e-5)
    wmax = weight.float().abs().amax(dim=0).clamp(min=1e-5)
    return (act.pow(alpha) / wmax.pow(1.0 - alpha)).clamp(min=tiny)


class Int8Linear(_QuantizedLinearBase):
    """W8A8: int8 weights (per-channel scales) times activations quantized per token at run
    time; int32 accumulation; the output has the input's dtype.

    With ``smoothing=True`` the layer holds ``input_smoothing`` (1 / SmoothQuant's factors,
    one per input feature), by which the op multiplies its input (in fp32) before quantizing."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smoothing: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, (out_features,), device, dtype)
        self.register_buffer("input_smoothing",
                             torch.ones(in_features, dtype=torch.float32, device=device) if smoothing else None)
        self.weight = self._buffers["weight"]  # in the layout of this device

    @classmethod
    def from_float(cls, linear: nn.Linear, activation_absmax: torch.Tensor | None = None,
                   alpha: float = 0.5) -> Int8Linear:
        """Quantize ``linear``; with the calibrated per-input-feature ``activation_absmax``
        (see effgen_kernels.calibrate_activations) apply SmoothQuant with strength ``alpha``."""
        weight = cls._float_weight(linear)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     smoothing=activation_absmax is not None, device="meta",
                     dtype=linear.bias.dtype if linear.bias is not None else weight.dtype)
        if activation_absmax is not None:
            factors = smoothing_factors(activation_absmax.to(weight.device), weight, alpha)
            weight = weight.float() * factors
            module.input_smoothing = 1.0 / factors
        module.weight, module.weight_scale = ops.quantize_per_channel(weight, axis=0)
        module._copy_bias(linear)
        module._check_filled(weight.device)
        return module

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # Whether the input is smoothed is the checkpoint's to say: its weights were scaled
        # by SmoothQuant's factors when it was quantized, and are wrong without their inverse.
        # A layer made without smoothing (Int8Config() to load into) takes it.
        if prefix + "input_smoothing" in state_dict and self.input_smoothing is None:
            self.input_smoothing = torch.ones(self.in_features, dtype=torch.float32, device=self.weight_scale.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers  # see _QuantizedLinearBase: one lookup, not one per buffer
        if b["weight_packed"] is not None:
            return ops.int8_dynamic_linear_packed(x, b["weight_packed"], b["weight_sum"], b["weight_scale"], b["bias"],
                                                  b["input_smoothing"])
        return ops.int8_dynamic_linear(x, b["weight"], b["weight_scale"], b["bias"], b["input_smoothing"])

    def dequantized_weight(self) -> torch.Tensor:
        weight = ops.dequantize(self.weight, self.weight_scale, axis=0)
        # SmoothQuant scales x by input_smoothing before the product: fold it into the columns
        return weight if self.input_smoothing is None else weight * self.input_smoothing

    def extra_repr(self) -> str:
        smooth = ", SmoothQuant input smoothing" if self.input_smoothing is not None else ""
        return super().extra_repr() + f", weights=int8 per-channel, activations=int8 per-token (dynamic){smooth}"


def check_weight_only_group_size(group_size: int | None) -> None:
    if group_size is not None and group_size <= 0:
        raise ValueError(f"group_size must be positive or None, got {group_size}")


class Int8WeightOnlyLinear(_QuantizedLinearBase):
    """W8A16: int8 weights with per-channel or per-group scales, dequantized in registers;
    activations and output stay in the input's float dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 device=None, dtype=None) -> None:
        check_weight_only_group_size(group_size)
        groups = None if group_size is None else -(-in_features // group_size)
        scale_shape = (out_features,) if groups is None else (out_features, groups)
        super().__init__(in_features, out_features, bias, scale_shape, device, dtype)
        self.group_size = group_size
        self.weight = self._buffers["weight"]  # in the layout of this device

    def _pack(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.int8_pack_weight(weight, self.group_size)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int | None = None) -> Int8WeightOnlyLinear:
        weight = cls._float_weight(linear)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size,
                     device="meta", dtype=linear.bias.dtype if linear.bias is not None else weight.dtype)
        if group_size is None:
            module.weight, module.weight_scale = ops.quantize_per_channel(weight, axis=0)
        else:
            module.weight, module.weight_scale = ops.quantize_per_group(weight, group_size)
        module._copy_bias(linear)
        module._check_filled(weight.device)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers  # see _QuantizedLinearBase: one lookup, not one per buffer
        if b["weight_packed"] is not None:
            return ops.int8_weight_only_linear_packed(x, b["weight_packed"], b["weight_sum"], b["weight_scale"],
                                                      b["bias"], self.group_size)
        return ops.int8_weight_only_linear(x, b["weight"], b["weight_scale"], b["bias"], self.group_size)

    def dequantized_weight(self) -> torch.Tensor:
        per_channel = self.group_size is None
        return ops.dequantize(self.weight, self.weight_scale, axis=0 if per_channel else None,
                              group_size=self.group_size)

    def extra_repr(self) -> str:
        scales = "per-channel" if self.group_size is None else f"per-group (group_size={self.group_size})"
        return super().extra_repr() + f", weights=int8 {scales}, activations=float"


def _fake_int8(t: torch.Tensor, quantize, axis: int | None) -> torch.Tensor:
    """t rounded through int8 with our quant kernels in the forward pass; identity gradient
    (straight-through estimator)."""
    q, scale = quantize(t.detach())
    return t + (ops.dequantize(q, scale, axis=axis, out_dtype=t.dtype) - t).detach()


class Int8TrainLinear(nn.Linear):
    """Quantization-aware training for W8A8: in training, weights are fake-quantized per
    output channel and activations per token, exactly as Int8Linear quantizes them, with a
    straight-through gradient. In eval mode it runs the int8 kernel itself on weights
    quantized afresh each call (nothing cached that a change to the weights could leave
    stale; no packing, which would cost ten times the product), so ``to_inference()`` (and
    ``effgen_kernels.convert``) changes nothing in its outputs: the canonical and packed
    kernels agree bit for bit."""

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8TrainLinear:
        return trainable_copy(cls, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            wq, w_scale = ops.quantize_per_channel(self.weight.detach(), axis=0)
            return ops.int8_dynamic_linear(x, wq, w_scale, self.bias)
        weight = _fake_int8(self.weight, lambda w: ops.quantize_per_channel(w, axis=0), axis=0)
        return nn.functional.linear(_fake_int8(x, ops.quantize_per_token, axis=None), weight, self.bias)

    def to_inference(self) -> Int8Linear:
        return Int8Linear.from_float(self)
