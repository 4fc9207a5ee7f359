"""Expert parallelism for the mixture-of-experts blocks of transformers 5 models.

A block's experts (its 3-D ``gate_up_proj`` / ``down_proj`` weights, or the per-expert
layers effgen's ``quantize_`` made of them) are split over the group: rank r of p holds
experts [r E/p, (r + 1) E/p). Weights per rank fall by p. Two ways to bring the tokens to
their experts:

- "all_reduce" (tensor parallelism's: ``parallelize``'s "experts" style): the activations
  and the router are the same on every rank, as around tensor-parallel attention; each
  rank runs the tokens routed to its own experts, the others' ids become the "not mine"
  sentinel that transformers' experts implementations skip (E/p, ``_is_expert_parallel``),
  and the partial sums are all-reduced (the router's and the activations' gradients summed
  across the group in the backward pass).
- "all_to_all" (data parallelism's: ``shard_experts``): each rank has tokens of its own;
  each (token, chosen expert) pair is sent to the expert's rank, run there, and sent back
  (two all-to-alls forward, two backward), so a rank computes only what its experts were
  chosen for. The rest of the model is a data-parallel replica (DDP): the experts' own
  gradients, which sum every rank's tokens, are divided by p, as DDP averages the rest.
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
    gather_numbered,
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


DISPATCHES = ("all_reduce", "all_to_all")


class ExpertParallel(nn.Module):
    """A mixture-of-experts block's experts, this rank's share of them in ``local`` (the
    block itself, cut down); called as the block is, (hidden_states, top_k_index,
    top_k_weights) with the router's global expert ids. ``dispatch``: "all_reduce" where
    every rank of the group holds the same tokens, "all_to_all" where each holds its own
    (see the module's docstring)."""

    def __init__(self, block: nn.Module, group=None, quant=None, dispatch: str = "all_reduce") -> None:
        super().__init__()
        if dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {', '.join(DISPATCHES)}, got {dispatch!r}")
        world, rank = group_size_and_rank(group)
        experts = _expert_count(block)
        if experts % world:
            raise ValueError(f"{type(block).__name__} has {experts} experts, not divisible by the parallel size "
                             f"{world}: each rank holds an equal share")
        if quant is not None and is_quantized_experts(block):
            raise ValueError(f"quant= applies to float experts; {type(block).__name__} is already quantized")
        self.group, self.num_experts, self.local_experts = group, experts, experts // world
        self.first, self.world, self.dispatch = rank * self.local_experts, world, dispatch
        _keep_experts(block, self.first, self.local_experts)
        if quant is not None:  # each expert's layers quantized alone: as in the single-process model
            quantize_experts(block, lambda linear, _name: _quantized(linear, quant))
        self.local = block
        if dispatch == "all_to_all":
            for parameter in block.parameters():  # DDP averages the replicas' gradients; these sum the world's
                if parameter.requires_grad:
                    parameter.register_hook(lambda grad: grad / world)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        if self.dispatch == "all_to_all":
            return self._all_to_all(hidden_states, top_k_index, top_k_weights)
        hidden_states = copy_to_tensor_parallel_region(hidden_states, self.group)
        top_k_weights = copy_to_tensor_parallel_region(top_k_weights, self.group)
        local_index = top_k_index - self.first
        mine = (local_index >= 0) & (local_index < self.local_experts)
        local_index = torch.where(mine, local_index, self.local_experts)
        return reduce_from_tensor_parallel_region(self.local(hidden_states, local_index, top_k_weights), self.group)

    def _all_to_all(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
        """Each (token, expert) pair of this rank's tokens to the expert's rank and back."""
        top_k = top_k_index.shape[1]
        experts = top_k_index.reshape(-1)
        owner = torch.div(experts, self.local_experts, rounding_mode="floor")
        order = torch.argsort(owner, stable=True)  # pairs grouped by the rank they go to
        send_counts = torch.bincount(owner, minlength=self.world)
        recv_counts = torch.empty_like(send_counts)
        torch.distributed.all_to_all_single(recv_counts, send_counts, group=self.group)
        send, recv = send_counts.tolist(), recv_counts.tolist()
        token_of_pair = order // top_k
        received = _exchange(hidden_states[token_of_pair], recv, send, self.group)
        received_experts = _all_to_all(experts[order] - owner[order] * self.local_experts, recv, send, self.group)
        # each received pair is one token with one expert of weight 1: the block's own forward
        ones = torch.ones(len(received_experts), 1, dtype=top_k_weights.dtype, device=top_k_weights.device)
        outputs = self.local(received, received_experts[:, None], ones)
        returned = _exchange(outputs, send, recv, self.group)  # in ``order``, back where the pairs came from
        weighted = returned * top_k_weights.reshape(-1)[order, None].to(returned.dtype)
        return torch.zeros_like(hidden_states).index_add(0, token_of_pair, weighted.to(hidden_states.dtype))

    def extra_repr(self) -> str:
        return (f"experts {self.first}..{self.first + self.local_experts - 1} of {self.num_experts}, "
                f"{self.dispatch}")


class _Exchange(torch.autograd.Function):
    """All-to-all of rows: send[r] of them to rank r, recv[r] from it; the gradient goes
    back the same way reversed."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, recv: list[int], send: list[int], group) -> torch.Tensor:
        ctx.recv, ctx.send, ctx.group = recv, send, group
        return _all_to_all(rows, recv, send, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.send, ctx.recv, ctx.group), None, None, None


def _all_to_all(rows: torch.Tensor, recv: list[int], send: list[int], group) -> torch.Tensor:
    out = rows.new_empty(sum(recv), *rows.shape[1:])
    torch.distributed.all_to_all_single(out, rows.contiguous(), recv, send, group=group)
    return out


def _exchange(rows: torch.Tensor, recv: list[int], send: list[int], group) -> torch.Tensor:
    return _Exchange.apply(rows, recv, send, group)


def shard_experts(model: nn.Module, group=None, quant=None) -> list[str]:
    """Expert parallelism over ``group`` for a data-parallel model: every mixture-of-experts
    block's experts split over the ranks (ExpertParallel, dispatch "all_to_all"), each rank
    keeping its own tokens. The rest of the model stays whole: wrap it in DDP over the same
    group, which leaves the sharded experts alone (they are marked to be ignored). Every
    block's forward exchanges tokens with every rank, so the ranks run the model in step
    (the same number of forward passes, any number of tokens each), as DDP training does;
    generation that may stop early on one rank does not. ``quant`` quantizes each kept
    expert. Returns the names of the blocks sharded."""
    names = [name for name, module in model.named_modules() if is_experts_block(module)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no mixture-of-experts block (transformers 5 experts) to shard")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, ExpertParallel(getattr(owner, child), group, quant, dispatch="all_to_all"))
    ignored = [f"{name}.local.{tensor}" for name in names
               for tensor, _ in model.get_submodule(name).local.named_parameters()]
    # DDP reads this attribute: averaging different experts across ranks would be wrong
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return names


_QUANTIZED_EXPERT = re.compile(rf"^({UP_LAYERS}|{DOWN_LAYERS})\.(\d+)\.(.+)$")


def full_expert_tensors(layer: ExpertParallel, local_name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """The unsharded tensors, by their names in the block, that ``tensor`` (``local_name``
    of this rank's block) is a piece of, gathered from every rank."""
    match = _QUANTIZED_EXPERT.match(local_name)
    if match is not None:
        layers, expert, rest = match.groups()
        return gather_numbered(tensor, layer.group, layers, int(expert), rest, layer.local_experts)
    if local_name not in _expert_tensor_names(layer.local):
        return {local_name: tensor}  # not per expert: the same on every rank
    world, _ = group_size_and_rank(layer.group)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(parts, tensor.contiguous(), group=layer.group)
    return {local_name: torch.cat(parts, dim=0)}


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
