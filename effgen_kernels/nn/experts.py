"""Mixture-of-experts blocks whose experts are quantized layers.

transformers 5 holds a block's experts as 3-D parameters: ``gate_up_proj`` (or ``up_proj``
where the experts have no gate) and ``down_proj``, one [out, in] matrix per expert ([in, out]
where ``is_transposed``), with optional ``*_bias`` rows, and marks the block with the flags
of its ``use_experts_implementation`` decorator (``has_gate``, ``has_bias``,
``is_transposed``, ``has_post_expert_norm``). ``quantize_experts`` turns such a block into
one whose experts are a quantized layer per expert and projection: the block keeps its
gate (``_apply_gate``, which knows the concatenated or interleaved layout), activation,
post-expert norm and forward (a subclass may wrap the experts dispatch, as Ergo's applies a
norm per route), and its dispatch runs transformers' ``batched_mm`` algorithm over those
layers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

# The quantized layers of each projection, in the block, by expert: "<name>.<expert>".
UP_LAYERS, DOWN_LAYERS = "up_layers", "down_layers"


def _up_name(block: nn.Module) -> str:
    return "gate_up_proj" if block.has_gate else "up_proj"


def is_fused_experts(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers 5 experts block with its 3-D weights."""
    flags = ("has_gate", "has_bias", "is_transposed", "has_post_expert_norm")
    if not all(isinstance(getattr(module, flag, None), bool) for flag in flags):
        return False
    weights = (module._parameters.get(_up_name(module)), module._parameters.get("down_proj"))
    return all(w is not None and w.dim() == 3 for w in weights)


def fused_weight_names(block: nn.Module) -> list[str]:
    """The names of the block's 3-D weights: the up (or gate and up) and down projections'."""
    return [_up_name(block), "down_proj"]


def fused_weights(block: nn.Module) -> list[torch.Tensor]:
    """The block's 3-D weights (biases apart): the up (or gate and up) and down projections'."""
    return [block._parameters[name] for name in fused_weight_names(block)]


def expert_linears(block: nn.Module, expert: int) -> tuple[nn.Linear, nn.Linear]:
    """Expert ``expert``'s two projections as nn.Linear layers over views of the block's
    weights (nothing copied), [out, in] whatever the block's layout."""

    def linear(name: str) -> nn.Linear:
        weight = block._parameters[name][expert].detach()
        weight = weight.t() if block.is_transposed else weight
        bias = block._parameters[f"{name}_bias"][expert].detach() if block.has_bias else None
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        layer.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias, requires_grad=False)
        return layer

    return linear(_up_name(block)), linear("down_proj")


# The name under which transformers' experts dispatch finds quantized_experts_forward.
IMPLEMENTATION = "effgen_quantized"


def quantized_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    """A block's per-expert layers (quantized, or their trainable forms after prepare), as
    transformers' batched_mm implementation routes them: each token's k (expert, weight)
    pairs, each expert's rows through its own layers, the products weighted and summed in
    fp32. Called by the block's experts dispatch (its config says IMPLEMENTATION), so a
    subclass's forward around the dispatch still runs."""
    num_tokens, top_k = top_k_index.shape
    expert_ids = top_k_index.reshape(-1)
    rows = hidden_states.repeat_interleave(top_k, dim=0)
    out = rows.new_zeros(rows.shape[0], hidden_states.shape[-1], dtype=torch.float32)
    up_layers, down_layers = self._modules[UP_LAYERS], self._modules[DOWN_LAYERS]
    # Ids past the last expert are expert parallelism's sentinels, with zero weight.
    for expert in torch.unique(expert_ids[expert_ids < len(up_layers)]).tolist():
        picked = (expert_ids == expert).nonzero().squeeze(1)
        h = up_layers[expert](rows[picked])
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        h = down_layers[expert](h)
        if self.has_post_expert_norm:
            h = self.post_expert_norm(h)
        out[picked] = h.float()
    out = out * top_k_weights.reshape(-1, 1).float()
    return out.view(num_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)


class QuantizedExpertsConfig:
    """A quantized block's config: the model's, read through, but for the experts
    implementation its dispatch asks for (the model's config is shared by every block)."""

    _experts_implementation = IMPLEMENTATION

    def __init__(self, config) -> None:
        _register_implementation()
        self.model_config = config

    def __setstate__(self, state: dict) -> None:  # unpickled, maybe where nothing registered it yet
        _register_implementation()
        self.__dict__.update(state)

    def __getattr__(self, name: str):
        if name == "model_config":  # not set yet (unpickling): not the model config's either
            raise AttributeError(name)
        return getattr(self.model_config, name)


def _register_implementation() -> None:
    moe = importlib.import_module("transformers.integrations.moe")  # the blocks' own dispatch
    if IMPLEMENTATION not in moe.ALL_EXPERTS_FUNCTIONS:
        moe.ExpertsInterface.register(IMPLEMENTATION, quantized_experts_forward)


def quantize_experts(block: nn.Module, make: Callable[[nn.Linear, str], nn.Module]) -> nn.Module:
    """Replace the 3-D weights of ``block`` (a transformers 5 experts block) by one layer
    ``make(linear, "<up_layers|down_layers>.<expert>")`` per expert and projection, in
    place, and point its experts dispatch at quantized_experts_forward; returns the block."""
    experts = block._parameters["down_proj"].shape[0]
    ups, downs = zip(*(expert_linears(block, e) for e in range(experts)), strict=True)
    up_layers = nn.ModuleList(make(linear, f"{UP_LAYERS}.{e}") for e, linear in enumerate(ups))
    down_layers = nn.ModuleList(make(linear, f"{DOWN_LAYERS}.{e}") for e, linear in enumerate(downs))
    for name in (_up_name(block), "down_proj"):
        del block._parameters[name]
        block._parameters.pop(f"{name}_bias", None)
    block.add_module(UP_LAYERS, up_layers)
    block.add_module(DOWN_LAYERS, down_layers)
    block.config = QuantizedExpertsConfig(block.config)
    return block


def is_quantized_experts(module: nn.Module) -> bool:
    """Whether ``module`` is an experts block that quantize_experts turned into layers."""
    return isinstance(module._modules.get(UP_LAYERS), nn.ModuleList) and DOWN_LAYERS in module._modules


def dequantize_experts(block: nn.Module, to_float: Callable[[nn.Module], nn.Linear]) -> nn.Module:
    """Undo quantize_experts in place: the block's 3-D weights (and bias rows) again, in its
    layout, stacked from each expert's layers as ``to_float`` gives them, and its own experts
    dispatch; returns the block."""
    for name, layers in ((_up_name(block), UP_LAYERS), ("down_proj", DOWN_LAYERS)):
        linears = [to_float(layer) for layer in block._modules[layers]]
        weight = torch.stack([linear.weight.detach() for linear in linears])  # [experts, out, in]
        block.register_parameter(name, nn.Parameter(weight.transpose(1, 2).contiguous() if block.is_transposed
                                                    else weight))
        if block.has_bias:
            block.register_parameter(f"{name}_bias", nn.Parameter(torch.stack([linear.bias.detach()
                                                                               for linear in linears])))
        del block._modules[layers]
    block.config = block.config.model_config
    return block
