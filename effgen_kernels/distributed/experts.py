"""Expert parallelism for the mixture-of-experts blocks of transformers 5 models.

A block's experts (its 3-D ``gate_up_proj`` / ``down_proj`` weights, or the per-expert
layers effgen's ``quantize_`` made of them) are split over the group: rank r of p holds
experts [r E/p, (r + 1) E/p). The activations and the router stay whole on every rank (as
with the tensor-parallel attention around them): each rank runs the tokens routed to its
own experts, the others' ids become the "not mine" sentinel that transformers' experts
implementations skip (E/p, ``_is_expert_parallel``), and the partial sums are all-reduced.
Weights per rank fall by p; the router's and the activations' gradients are summed across
the group in the backward pass.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..nn.experts import (
    DOWN_LAYERS,
    UP_LAYERS,
    fused_weight_names,
    is_fused_experts,
    is_quantized_experts,
    quantize_experts,
)
from .tensor_parallel import (
    _quantized,
    copy_to_tensor_parallel_region,
    group_size_and_rank,
    reduce_from_tensor_parallel_region,
)


def is_experts_block(module: nn.Module) -> bool:
    """A transformers 5 experts block, float (3-D weights) or quantized by effgen."""
    return is_fused_experts(module) or is_quantized_experts(module)


def _expert_count(block: nn.Module) -> int:
    return len(block._modules[UP_LAYERS]) if is_quantized_experts(block) else block._parameters["down_proj"].shape[0]


def _expert_tensor_names(block: nn.Module) -> list[str]:
    """The names of a float block's per-expert parameters, whose first dimension is the
    expert (none in a quantized block: its experts are layers)."""
    if is_quantized_experts(block):
        return []
    names = fused_weight_names(block)
    return names + [f"{name}_bias" for name in names if f"{name}_bias" in block._parameters]


def _keep_experts(block: nn.Module, first: int, count: int) -> None:
    """Cut ``block`` in place down to experts [first, first + count), renumbered from 0."""
    if is_quantized_experts(block):
        for layers in (UP_LAYERS, DOWN_LAYERS):
            block._modules[layers] = nn.ModuleList(list(block._modules[layers])[first:first + count])
    for name in _expert_tensor_names(block):
        weight = block._parameters[name]
        block._parameters[name] = nn.Parameter(weight.detach()[first:first + count].clone(),
                                               requires_grad=weight.requires_grad)
    # transformers' implementations (also a quantized block's, once dequantized) count the
    # experts here and skip the ids >= num_experts: the other ranks' experts
    block.num_experts = count
    block._is_expert_parallel = True


class ExpertParallel(nn.Module):
    """A mixture-of-experts block's experts, this rank's share of them in ``local`` (the
    block itself, cut down); called as the block is, (hidden_states, top_k_index,
    top_k_weights) with the router's global expert ids."""

    def __init__(self, block: nn.Module, group=None, quant=None) -> None:
        super().__init__()
        world, rank = group_size_and_rank(group)
        experts = _expert_count(block)
        if experts % world:
            raise ValueError(f"{type(block).__name__} has {experts} experts, not divisible by the parallel size "
                             f"{world}: each rank holds an equal share")
        if quant is not None and is_quantized_experts(block):
            raise ValueError(f"quant= applies to float experts; {type(block).__name__} is already quantized")
        self.group, self.num_experts, self.local_experts = group, experts, experts // world
        self.first = rank * self.local_experts
        _keep_experts(block, self.first, self.local_experts)
        if quant is not None:  # each expert's layers quantized alone: as in the single-process model
            quantize_experts(block, lambda linear, _name: _quantized(linear, quant))
        self.local = block

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        hidden_states = copy_to_tensor_parallel_region(hidden_states, self.group)
        top_k_weights = copy_to_tensor_parallel_region(top_k_weights, self.group)
        local_index = top_k_index - self.first
        mine = (local_index >= 0) & (local_index < self.local_experts)
        local_index = torch.where(mine, local_index, self.local_experts)
        return reduce_from_tensor_parallel_region(self.local(hidden_states, local_index, top_k_weights), self.group)

    def extra_repr(self) -> str:
        return f"experts {self.first}..{self.first + self.local_experts - 1} of {self.num_experts}"


_QUANTIZED_EXPERT = re.compile(rf"^({UP_LAYERS}|{DOWN_LAYERS})\.(\d+)\.(.+)$")


def full_expert_tensors(layer: ExpertParallel, local_name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unsharded tensors, by their names in the block, that ``tensor`` (``local_name``
    of this rank's block) is a piece of, gathered from every rank."""
    world, _ = group_size_and_rank(layer.group)
    if local_name not in _expert_tensor_names(layer.local) and not _QUANTIZED_EXPERT.match(local_name):
        return {local_name: tensor}  # not per expert: the same on every rank
    parts = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(parts, tensor.contiguous(), group=layer.group)
    match = _QUANTIZED_EXPERT.match(local_name)
    if match is None:
        return {local_name: torch.cat(parts, dim=0)}
    layers, expert, rest = match.groups()
    return {f"{layers}.{rank * layer.local_experts + int(expert)}.{rest}": part for rank, part in enumerate(parts)}


def local_expert_tensor(layer: ExpertParallel, local_name: str, full: dict[str, torch.Tensor],
                        prefix: str) -> torch.Tensor:
    """This rank's piece of tensor ``local_name`` of its block from the unsharded state dict
    ``full``, whose names for the block begin with ``prefix``."""
    match = _QUANTIZED_EXPERT.match(local_name)
    if match is not None:
        layers, expert, rest = match.groups()
        return full[f"{prefix}{layers}.{layer.first + int(expert)}.{rest}"]
    tensor = full[prefix + local_name]
    if local_name in _expert_tensor_names(layer.local):
        return tensor[layer.first:layer.first + layer.local_experts]
    return tensor
