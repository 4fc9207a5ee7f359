"""1-bit and ternary linear layers: packed inference modules and their trainable forms.

Inference modules store only packed bits and fp32 scales (plus bias); trainable modules
keep latent float weights and binarize / ternarize them in the forward pass with a
straight-through estimator. ``convert`` turns a trained module into the packed one; in
eval mode the trainable module already computes through the packed kernels, so outputs
before and after conversion are identical.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._quantized import QuantizedLayer
from ._trainable import trainable_copy


def _alpha(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """XNOR-Net scale in the training forward (differentiable): mean |w| per output channel, or
    per group of the input dimension. Conversion uses ops.binarize_weight."""
    w = weight.float().abs()
    if group_size is None:
        return w.mean(dim=1)
    k = w.shape[1]
    groups = -(-k // group_size)
    sums = nn.functional.pad(w, (0, groups * group_size - k)).reshape(w.shape[0], groups, group_size).sum(-1)
    counts = torch.full((groups,), float(group_size), device=w.device)
    counts[-1] = k - (groups - 1) * group_size
    return sums / counts


def _rebuild_lut(module: _PackedLinear, incompatible_keys) -> None:
    """load_state_dict post-hook (a module-level function, so that the module pickles)."""
    module.refresh_lut()


class _PackedLinear(QuantizedLayer):
    """Keeps ``weight_lut``, the CPU lookup-table layout of ``weight_packed``: derived data,
    built by from_float, after every load and by refresh_lut, never saved (non-persistent
    buffer). It doubles the weight bytes held in memory, but a decode step reads only it.
    A new layer has none (its zero weights run without it) until it gets weights."""

    _lut_planes = 1
    _float32_buffers = ("alpha", "weight_scale")

    def _init_lut(self) -> None:
        self.register_buffer("weight_lut", None, persistent=False)
        self.register_load_state_dict_post_hook(_rebuild_lut)

    def __getattr__(self, name: str):
        # transformers' weight init reads the weight of layers it knows by name (GPT-2's
        # c_proj) while it loads a checkpoint into them; it passes over the tensors the
        # checkpoint filled, as it did weight_packed.
        if name == "weight" and self.__dict__.get("_hf_loading"):
            return self._buffers["weight_packed"]
        return super().__getattr__(name)

    def _uses_lut(self) -> bool:
        return True

    def _lut_group_size(self) -> int | None:
        """The group size of per-group alphas, whose kernel reads a layout of its own."""
        return None

    def rebuild_derived(self) -> None:
        self.refresh_lut()

    def _finish_from_float(self, linear: nn.Linear) -> None:
        """from_float's last steps, once it set the packed weights and scales of a layer it
        built on the meta device: the bias, the check that nothing stayed on meta, the tables."""
        if linear.bias is not None:
            self.bias = linear.bias.detach().clone()
        self._check_filled(linear.weight.device)
        self.refresh_lut()

    def refresh_lut(self) -> None:
        """Rebuild weight_lut from weight_packed (after changing the packed weights by hand)."""
        # none while transformers loads the layer (its loader would empty them; see QuantizedLayer)
        use = self._uses_lut() and self.weight_packed.device.type == "cpu" and not self._hf_loading
        self.weight_lut = (ops.lut_tiles(self.weight_packed, self.in_features, self._lut_planes,
                                         self._lut_group_size()) if use else None)


def check_binary_options(group_size: int | None, binary_activations: bool) -> None:
    """The options every binary layer and BinaryConfig take, checked where they are given (a
    trainable layer must not train for hours only to fail when it is packed)."""
    if group_size is not None and (group_size <= 0 or group_size % 16):
        raise ValueError(f"group_size must be a positive multiple of 16 or None, got {group_size}")
    if binary_activations and group_size is not None:
        raise ValueError("binary_activations uses one alpha per output channel: group_size must be None")


class BinaryLinear(_PackedLinear):
    """1-bit weights: y = x @ (alpha * sign(w))^T + b, signs packed 8 per byte.

    With ``binary_activations=True`` (XNOR-Net) the input is binarized per token too and the
    product runs as XNOR + popcount (per-channel alpha only)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 binary_activations: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        check_binary_options(group_size, binary_activations)
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.binary_activations = group_size, binary_activations
        groups = None if group_size is None else -(-in_features // group_size)
        self.register_buffer("weight_packed",
                             torch.zeros(out_features, (in_features + 7) // 8, dtype=torch.uint8, device=device))
        # float32 whatever the default dtype (transformers loads a bf16 model under a bf16 one)
        self.register_buffer("alpha", torch.ones((out_features,) if groups is None else (out_features, groups),
                                                 dtype=torch.float32, device=device))
        bias_dtype = dtype or torch.get_default_dtype()
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        self._init_lut()

    # Per-group alphas on the tables need groups of whole lanes: 32 inputs (the 4-bit fields
    # of ops.lut_tiles with group_size, on every ISA).
    _ALPHA_TABLE_GROUP_MULTIPLE = 32

    def _uses_lut(self) -> bool:
        # Per-group layers use a lut on the tables where their groups fit (above) and, with
        # AMX, on the way from the tiles to the int8 GEMM (ops.binary_linear).
        if self.binary_activations:
            return False
        if self.group_size is None:
            return True
        return ops.cpu_isa() == "amx" or self.group_size % self._ALPHA_TABLE_GROUP_MULTIPLE == 0

    def _lut_group_size(self) -> int | None:
        return self.group_size

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int | None = None,
                   binary_activations: bool = False) -> BinaryLinear:
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, binary_activations,
                     device="meta", dtype=None if linear.bias is None else linear.bias.dtype)
        module.weight_packed, module.alpha = ops.binarize_weight(weight, group_size)
        module._finish_from_float(linear)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers  # one lookup, not nn.Module.__getattr__ per buffer (see nn/int8.py)
        if self.binary_activations:
            return ops.xnor_linear(x, b["weight_packed"], b["alpha"], b["bias"])
        return ops.binary_linear(x, b["weight_packed"], b["alpha"], b["bias"], self.group_size, b["weight_lut"])

    def dequantized_weight(self) -> torch.Tensor:
        signs = ops.unpack_binary(self.weight_packed, self.in_features)
        per_channel = self.group_size is None
        return ops.dequantize(signs, self.alpha, axis=0 if per_channel else None, group_size=self.group_size)

    def cannot_dequantize(self) -> str | None:
        return "its binary_activations binarize the input too" if self.binary_activations else None

    def extra_repr(self) -> str:
        alpha = "per-channel" if self.group_size is None else f"per-group (group_size={self.group_size})"
        acts = "binary (XNOR-popcount)" if self.binary_activations else "float"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights=1-bit {alpha} alpha, activations={acts}")


class TernaryLinear(_PackedLinear):
    """Ternary weights (BitNet b1.58): y = x @ (s * q)^T + b, q in {-1, 0, 1}, 2 bits each."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, per_channel: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.per_channel = in_features, out_features, per_channel
        self.register_buffer("weight_packed",
                             torch.zeros(out_features, 2 * ((in_features + 7) // 8), dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features if per_channel else 1, dtype=torch.float32,
                                                        device=device))
        bias_dtype = dtype or torch.get_default_dtype()
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        self._init_lut()

    _lut_planes = 2

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool = True) -> TernaryLinear:
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, per_channel,
                     device="meta", dtype=None if linear.bias is None else linear.bias.dtype)
        module.weight_packed, module.weight_scale = ops.ternarize_weight(weight, per_channel)
        module._finish_from_float(linear)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers  # one lookup, not nn.Module.__getattr__ per buffer (see nn/int8.py)
        return ops.ternary_linear(x, b["weight_packed"], b["weight_scale"], b["bias"], b["weight_lut"])

    def dequantized_weight(self) -> torch.Tensor:
        codes = ops.unpack_ternary(self.weight_packed, self.in_features)
        return ops.dequantize(codes, self.weight_scale, axis=0 if self.per_channel else None)  # else one scale

    def extra_repr(self) -> str:
        scale = "per-channel" if self.per_channel else "per-tensor"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights=ternary (2-bit) {scale} scale")


class _SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; backward passes the gradient where |input| <= 1 (clipped STE)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def _ste_round_clamp(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """round(clamp(w / s, -1, 1)) * s in the forward pass, identity gradient (BitNet's STE)."""
    q = torch.round((w / scale).clamp(-1, 1)) * scale
    return w + (q - w).detach()


class BinaryTrainLinear(nn.Linear):
    """Trainable 1-bit layer: latent float weights, alpha * sign(w) in the forward pass with a
    clipped straight-through estimator. In eval mode it runs the packed inference kernel, so
    ``to_inference()`` changes nothing in its outputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None,
                 binary_activations: bool = False, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        check_binary_options(group_size, binary_activations)
        self.group_size, self.binary_activations = group_size, binary_activations

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int | None = None,
                   binary_activations: bool = False) -> BinaryTrainLinear:
        return trainable_copy(cls, linear, group_size, binary_activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.to_inference()(x)
        alpha = _alpha(self.weight, self.group_size)
        alpha_full = alpha.reshape(-1, 1) if self.group_size is None else \
            alpha.repeat_interleave(self.group_size, dim=1)[:, :self.in_features]
        weight = _SignSTE.apply(self.weight) * alpha_full.to(self.weight.dtype)
        if self.binary_activations:
            x = _SignSTE.apply(x) * x.abs().mean(dim=-1, keepdim=True)
        return nn.functional.linear(x, weight, self.bias)

    def to_inference(self) -> BinaryLinear:
        return BinaryLinear.from_float(self, self.group_size, self.binary_activations)


class TernaryTrainLinear(nn.Linear):
    """Trainable ternary layer (BitNet b1.58): latent float weights, ternarized in the forward
    pass with a straight-through estimator; eval mode runs the packed kernel."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, per_channel: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.per_channel = per_channel

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool = True) -> TernaryTrainLinear:
        return trainable_copy(cls, linear, per_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.to_inference()(x)
        w = self.weight
        scale = w.abs().mean(dim=1, keepdim=True) if self.per_channel else w.abs().mean()
        weight = _ste_round_clamp(w, scale.clamp(min=torch.finfo(w.dtype).tiny).detach())
        return nn.functional.linear(x, weight, self.bias)

    def to_inference(self) -> TernaryLinear:
        return TernaryLinear.from_float(self, self.per_channel)
