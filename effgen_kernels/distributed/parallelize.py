"""parallelize(model, mesh): tensor-parallel plans for transformer blocks, the 2-D data x
tensor mesh for hybrid training, and leaving torch.distributed cleanly."""

from __future__ import annotations

import copy
import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .._modules import names_by_module, swap_module
from ..quantize import as_linear
from .experts import ExpertParallel, is_experts_block
from .tensor_parallel import (
    QUANTIZED_LAYERS,
    ColumnParallelLinear,
    HeadParallel,
    ParallelRMSNorm,
    RowParallelLinear,
    _all_reduce,
    group_size_and_rank,
)

# Llama / GPT naming (Hugging Face and effgen_kernels.gpt): the projections into the heads
# and the MLP's hidden layer are cut by output feature, the projections back by input
# feature, so each attention or MLP sub-block needs a single all-reduce; a mixture-of-experts
# block's experts (Mixtral's, Qwen-MoE's) are shared out whole, a share a rank ("experts").
TRANSFORMER_PLAN = {"q_proj": "column", "k_proj": "column", "v_proj": "column", "gate_proj": "column",
                    "up_proj": "column", "o_proj": "row", "down_proj": "row", "experts": "experts"}
# Hugging Face's GPT-2 (decoder only): Conv1D layers, c_attn one GEMM for q, k and v (three
# equal parts, each cut by heads); c_proj is the attention's and the MLP's way back.
GPT2_PLAN = {"c_attn": ("column", 3), "c_fc": "column", "c_proj": "row"}
# GPT-NeoX (Pythia): query_key_value's outputs are grouped by head ([heads, 3, head_dim]),
# so a plain column cut gives each rank whole heads of q, k and v.
GPT_NEOX_PLAN = {"query_key_value": "column", "dense": "row", "dense_h_to_4h": "column", "dense_4h_to_h": "row"}
# Phi-3: qkv_proj is one GEMM for q, k and v of unequal widths (grouped KV heads), cut part
# by part ("qkv": each rank its heads of q, of k and of v); its attention finds that split in
# the model's config, so the attention gets a copy of the config with the rank's head
# counts. The MLP's fused gate_up_proj is cut in two parts, each rank's half of gate and up.
PHI3_PLAN = {"qkv_proj": "qkv", "o_proj": "row", "gate_up_proj": ("column", 2), "down_proj": "row"}
# OLMo 2: q_norm and k_norm are RMSNorms over all heads of q and of k together: each rank
# normalizes its heads' slice with the sum of squares taken over the group ("norm").
OLMO2_PLAN = {**TRANSFORMER_PLAN, "q_norm": "norm", "k_norm": "norm"}
_PLANS_BY_MODEL_TYPE = {"gpt2": GPT2_PLAN, "gpt_neox": GPT_NEOX_PLAN, "phi3": PHI3_PLAN, "olmo2": OLMO2_PLAN}
_STYLES = ("column", "row", "column_gather", "row_split_input", "qkv", "experts", "norm")


def default_plan(model: nn.Module) -> dict:
    """The plan for a Hugging Face model's architecture (GPT2_PLAN, GPT_NEOX_PLAN,
    PHI3_PLAN, OLMO2_PLAN), by its config's model_type; TRANSFORMER_PLAN (Llama's and most
    others' names) otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _PLANS_BY_MODEL_TYPE.get(model_type, TRANSFORMER_PLAN)


def _check_plan(plan: dict) -> None:
    def known(style) -> bool:
        fused = isinstance(style, tuple) and len(style) == 2 and style[0] == "column"
        return style in _STYLES or (fused and isinstance(style[1], int) and style[1] >= 2)

    unknown = sorted({str(style) for style in plan.values() if not known(style)})
    if unknown:
        raise ValueError(f"plan styles must be one of {list(_STYLES)} or ('column', parts) for a fused layer of that "
                         f"many equal parts, got {unknown}")


def tensor_parallel_group(mesh_or_group=None):
    """The process group of the "tp" dimension of a DeviceMesh (or of a 1-D mesh); a
    ProcessGroup or None (the default group) is returned as is."""
    if isinstance(mesh_or_group, DeviceMesh):
        names = mesh_or_group.mesh_dim_names or ()
        if "tp" in names:
            return mesh_or_group.get_group("tp")
        if mesh_or_group.ndim != 1:
            raise ValueError(f"a {mesh_or_group.ndim}-D DeviceMesh needs a dimension named 'tp', got {names}")
        return mesh_or_group.get_group()
    return mesh_or_group


def _check_heads(model: nn.Module, world: int) -> None:
    config = getattr(model, "config", None)
    for field in ("num_attention_heads", "num_key_value_heads", "heads"):
        heads = getattr(config, field, None)
        if isinstance(heads, int) and heads % world:
            raise ValueError(f"{field} ({heads}) is not divisible by the tensor-parallel size {world}: attention "
                             f"heads are split across the tensor-parallel group")


def parallelize(model: nn.Module, mesh_or_group=None, plan: dict | None = None, quant=None,
                compress_block_size: int | None = None) -> list[str]:
    """Shard ``model`` in place for tensor parallelism over the mesh's "tp" group.

    ``plan`` maps the last component of a layer's name to "column", "row" or ("column", n)
    for a fused layer of n equal parts (default: ``default_plan(model)``); "qkv" for a fused
    q/k/v projection of the model config's head counts (num_attention_heads and, twice,
    num_key_value_heads); "column_gather" (the output gathered whole on every rank) and
    "row_split_input" (a whole input, split here) shard the weights of a block whose heads
    cannot be split; "experts" gives each rank an equal share of a transformers 5
    mixture-of-experts block's experts (ExpertParallel); "norm", an RMSNorm over a column
    layer's split output (ParallelRMSNorm). Layers are nn.Linear, Hugging Face's Conv1D or
    effgen quantized layers. Attention heads are split with their q/k/v rows, so the head
    counts must divide by the tp size. ``quant`` (an Int8Config, Int8WeightOnlyConfig,
    BinaryConfig or TernaryConfig) quantizes each planned layer before cutting it;
    ``compress_block_size`` turns on the int8 activation all-reduce in row layers.
    Embeddings, other norms, routers and the LM head stay replicated. Returns the names
    sharded."""
    group = tensor_parallel_group(mesh_or_group)
    world, _ = group_size_and_rank(group)
    plan = default_plan(model) if plan is None else plan
    _check_plan(plan)
    _check_heads(model, world)
    sharded = []
    for module, names in names_by_module(model).items():
        styles = {plan.get(name.rsplit(".", 1)[-1]) for name in names}
        if styles == {None} or not _shardable(module, styles):
            continue
        if len(styles) > 1:  # one module cannot be cut two ways, nor left whole at some places
            raise ValueError(f"the layer at {names} is one module, which the plan gives several styles: "
                             f"{sorted(map(str, styles))}")
        replacement = _parallel_layer(module, names, styles.pop(), group, quant, compress_block_size,
                                      getattr(model, "config", None))
        swap_module(model, names, replacement)
        sharded += names
    _local_heads(model, group)
    if not sharded:
        raise ValueError(f"no layer of the model matched the plan {sorted(plan)}")
    return sharded


def _shardable(module: nn.Module, styles: set) -> bool:
    """Whether parallelize cuts ``module`` (a plan's name may also match modules of other kinds,
    which stay whole): a linear layer, an experts block, or an RMSNorm planned as "norm"."""
    is_norm = styles == {"norm"} and _is_rms_norm(module)
    return as_linear(module) is not None or isinstance(module, QUANTIZED_LAYERS) or is_experts_block(module) or is_norm


def _is_rms_norm(module: nn.Module) -> bool:
    return hasattr(module, "variance_epsilon") and isinstance(getattr(module, "weight", None), nn.Parameter)


def _parallel_layer(module: nn.Module, names: list[str], style, group, quant, compress_block_size,
                    config) -> nn.Module:
    if style == "norm":
        if not _is_rms_norm(module):
            raise ValueError(f"the layer at {names} is not an RMSNorm; the plan gives it the style 'norm'")
        return ParallelRMSNorm(module, group)
    if is_experts_block(module) != (style == "experts"):
        raise ValueError(f"the layer at {names} is {'a' if is_experts_block(module) else 'not a'} "
                         f"mixture-of-experts block; the plan gives it the style {style!r}")
    if style == "experts":
        return ExpertParallel(module, group, quant)
    if style in ("row", "row_split_input"):
        return RowParallelLinear.from_linear(module, group, input_is_parallel=style == "row", quant=quant,
                                             compress_block_size=compress_block_size)
    if style in ("column", "column_gather"):
        return ColumnParallelLinear.from_linear(module, group, gather_output=style == "column_gather", quant=quant)
    out_features = (as_linear(module) or module).out_features
    if style == "qkv":
        parts = _qkv_sizes(config)
        if sum(parts) != out_features:
            raise ValueError(f"the layer at {names} has {out_features} outputs, not the q, k, v widths {parts} of "
                             f"the config's head counts")
    elif out_features % style[1]:
        raise ValueError(f"the layer at {names} has {out_features} outputs, not {style[1]} equal parts")
    else:
        parts = (out_features // style[1],) * style[1]
    return ColumnParallelLinear.from_linear(module, group, quant=quant, output_sizes=parts)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _qkv_sizes(config) -> tuple[int, int, int]:
    """The widths of q, k and v in a fused projection, by the model config's head counts."""
    if config is None or not hasattr(config, "num_attention_heads"):
        raise ValueError("the 'qkv' style takes the q/k/v widths from model.config's num_attention_heads and "
                         "num_key_value_heads; this model has no such config")
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return (config.num_attention_heads * _head_dim(config),) + (kv_heads * _head_dim(config),) * 2


def _local_heads(model: nn.Module, group) -> None:
    """Attention modules that keep their head counts (the example GPT's, StableLM's), read
    them from their config (Phi-3's: it gets a copy of its own) or keep the width of each
    fused q/k/v part (GPT-2's split_size) now hold a 1/world share of the heads. What they
    apply to every head alike (Qwen3's q_norm / k_norm over head_dim) stays whole, but sees
    only this rank's heads: its gradients are summed over the group. What they hold a copy
    of per head (StableLM's qk_layernorm) is cut to this rank's heads (HeadParallel)."""
    world, _ = group_size_and_rank(group)
    for module in model.modules():
        fused = getattr(module, "c_attn", None)
        if hasattr(module, "split_size") and isinstance(fused, ColumnParallelLinear):
            if fused.output_sizes is None or set(fused.output_sizes) != {module.split_size}:
                raise ValueError(f"{type(module).__name__} splits c_attn's output into parts of {module.split_size}, "
                                 f"the plan into {fused.output_sizes}")
            module.split_size //= world
        elif _splits_heads(getattr(module, "qkv_proj", None)) and hasattr(module, "config"):
            module.config = _local_config(module.config, world)
        elif not _splits_heads(getattr(module, "q_proj", None)):
            continue
        if getattr(module, "qk_layernorm", False):  # StableLM's layer norm per head: each rank its heads'
            module.q_layernorm = HeadParallel(module.q_layernorm, group)
            module.k_layernorm = HeadParallel(module.k_layernorm, group)
        for field in ("num_heads", "num_key_value_heads"):
            heads = getattr(module, field, None)
            if isinstance(heads, int):
                if heads % world:
                    raise ValueError(f"{field} ({heads}) is not divisible by the tensor-parallel size {world}")
                setattr(module, field, heads // world)
        _sum_head_shared_gradients(module, group)


def _sum_head_shared_gradients(attention: nn.Module, group) -> None:
    for child in attention.children():
        if isinstance(child, (ColumnParallelLinear, RowParallelLinear, ParallelRMSNorm, HeadParallel)):
            continue
        for parameter in child.parameters():
            if parameter.requires_grad:
                parameter.register_hook(functools.partial(_all_reduce, group=group))


def _local_config(config, world: int):
    """A shallow copy of an attention's config with a 1/world share of its heads (the model
    keeps the whole counts; head_dim stays as it was). Being a copy, it does not follow
    later changes to the model's config, such as another attention implementation."""
    local = copy.copy(config)
    local.head_dim = _head_dim(config)
    local.num_attention_heads = config.num_attention_heads // world
    local.num_key_value_heads = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) // world
    return local


def _splits_heads(layer) -> bool:
    """Whether a q projection now gives this rank only its share of the heads."""
    return isinstance(layer, ColumnParallelLinear) and not layer.gather_output


def init_hybrid(dp: int, tp: int, device_type: str = "cpu") -> DeviceMesh:
    """A 2-D ("dp", "tp") DeviceMesh over the default group (init_process_group first):
    ranks r and r + 1 ... r + tp - 1 form a tensor-parallel group (neighbours, the fast
    links), and ranks with the same tp index form a data-parallel group."""
    world = dist.get_world_size()
    if dp * tp != world:
        raise ValueError(f"dp ({dp}) x tp ({tp}) must equal the world size ({world})")
    return init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"))


def shutdown() -> None:
    """Leave torch.distributed: a barrier on every group this rank belongs to, the groups
    destroyed (``dist.destroy_process_group()``), then the barriers freed.

    Before torch 2.8 destroying a gloo group holds the GIL while it joins the group's
    worker threads, and a worker still finishing a collective (freeing the last references
    to its tensors, e.g. an all_gather's outputs, or a future's Python callback) needs the
    GIL to do so: the process hangs (4 of 6 runs of examples/tensor_parallel.py on torch
    2.6; fixed upstream by pytorch#154976). A barrier alone does not help: it keeps the
    collectives still in flight when it was queued, and a worker frees it just the same
    (4 of 26 runs hung). Holding the barriers' handles until the groups are gone makes this
    thread, which holds the GIL, the one that frees them; a barrier per group, because a
    barrier covers its own group's collectives only (a compressed hook runs its own)."""
    # torch lists its groups publicly nowhere; _world.pg_map holds the ones this rank is in (2.6-2.14).
    groups = [group for group in dist.distributed_c10d._world.pg_map if group is not dist.GroupMember.NON_GROUP_MEMBER]
    barriers = [dist.barrier(group=group, async_op=True) for group in groups]  # all queued, then waited
    for barrier in barriers:
        barrier.wait()
    dist.destroy_process_group()
    del barriers  # the last collectives' tensors are freed here (see above)


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters every tensor-parallel rank holds whole (embeddings, norms,
    row-parallel biases, routers, the LM head): all but the shards of the parallel layers
    and norms and the expert-parallel blocks' experts."""
    sharded = (ColumnParallelLinear, RowParallelLinear, ParallelRMSNorm, HeadParallel, ExpertParallel)
    shards = {id(p) for module in model.modules() if isinstance(module, sharded) for p in module.local.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in shards]


def sync_replicated_grads(model: nn.Module, mesh_or_group=None) -> None:
    """Average the replicated parameters' gradients over the tensor-parallel group.

    Exact data-parallel all-reduces give every tp rank the same gradients for them, but a
    lossy compressed hook on the dp groups does not: its blocks mix replicated values with
    the rank's own shard values, so the tp ranks quantize them differently and their copies
    drift apart. Call this after backward (before the optimizer step) when the dp hook
    compresses; it costs one all-reduce of the replicated gradients on the tp group."""
    group = tensor_parallel_group(mesh_or_group)
    world, _ = group_size_and_rank(group)
    grads = [p.grad for p in replicated_parameters(model) if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
