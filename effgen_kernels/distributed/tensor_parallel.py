"""Tensor parallelism (Megatron-LM style) on torch.distributed, with quantized weight shards.

A column-parallel layer holds rows ``[out/p, in]`` of the weight: every rank sees the whole
input and computes its slice of the output features. A row-parallel layer holds columns
``[out, in/p]``: every rank sees its slice of the input features, the partial products are
summed across the group, and the bias is added once, after the sum. Column -> row pairs
(q/k/v -> o_proj, up -> down) therefore need one all-reduce in the forward pass and one in
the backward pass, made explicit by the four autograd mappings below.

Quantized shards are cut from the quantized full layer (``from_linear``), so a
tensor-parallel quantized layer computes what the single-process quantized layer computes,
up to the order of the fp32 sum of the partial products: per-output-channel scales travel
with their rows; in a row-parallel W8A8 layer the per-token activation scale is agreed on
across the group (an all-reduce of the per-token |x| maxima, [tokens] floats) so that every
shard quantizes with the full row's scale. Across a W8A8 model, that last-bit difference
can move a later layer's activation across an int8 rounding boundary, so whole-model
outputs agree to int8 quantization noise, not bit for bit (W8A16 / 1-bit / ternary keep
float activations and agree to fp32 rounding).
"""

from __future__ import annotations

import copy
import re

import torch
import torch.distributed as dist
from torch import nn

from .. import ops, reference
from ..nn import BinaryLinear, Int8Linear, Int8WeightOnlyLinear, TernaryLinear
from ..quantize import as_linear, check_config

QUANTIZED_LAYERS = (Int8Linear, Int8WeightOnlyLinear, BinaryLinear, TernaryLinear)


def group_size_and_rank(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("tensor parallelism needs torch.distributed: call dist.init_process_group first "
                           "(torchrun sets up the environment)")
    return dist.get_world_size(group), dist.get_rank(group)


def _split_last(x: torch.Tensor, group) -> torch.Tensor:
    world, rank = group_size_and_rank(group)
    if x.shape[-1] % world:
        raise ValueError(f"the last dimension ({x.shape[-1]}) is not divisible by the tensor-parallel size {world}")
    return x.chunk(world, dim=-1)[rank].contiguous()


def _gather_last(x: torch.Tensor, group) -> torch.Tensor:
    world, _ = group_size_and_rank(group)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


class _CopyToRegion(torch.autograd.Function):
    """Forward: identity (every rank has the full input). Backward: sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    """Forward: sum of the ranks' partial outputs. Backward: identity."""

    @staticmethod
    def forward(ctx, x, group, block_size):
        return _all_reduce(x, group) if block_size is None else _int8_all_reduce(x, group, block_size)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class _ScatterToRegion(torch.autograd.Function):
    """Forward: this rank's slice of the last dimension. Backward: gather the slices."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last(grad, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    """Forward: concatenate the ranks' slices of the last dimension. Backward: take ours."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last(grad, ctx.group), None


class _RowShardW8A8(torch.autograd.Function):
    """A row shard of Int8Linear. Forward: every token (times the shard's SmoothQuant factors,
    in fp32, where the layer has them) quantized with the absmax of its whole row (all shards),
    as the single-process layer does, so the shards' int32 products add up exactly. Backward:
    the layer's input gradient, dL/dy W straight through the rounding (times the factors)."""

    @staticmethod
    def forward(ctx, x, layer, group):
        ctx.layer = layer
        rows = x.detach().float()
        if layer.input_smoothing is not None:
            rows = rows * layer.input_smoothing
        absmax = rows.abs().amax(dim=-1, keepdim=True)
        dist.all_reduce(absmax, op=dist.ReduceOp.MAX, group=group)
        xq, x_scale = reference.symmetric_int8(rows, absmax)
        xq, x_scale = xq.reshape(-1, xq.shape[-1]), x_scale.reshape(-1)
        if layer.weight_packed is not None:
            y = ops.int8_linear_packed(xq, x_scale, layer.weight_packed, layer.weight_sum, layer.weight_scale, None,
                                       x.dtype)
        else:
            y = ops.int8_linear(xq, x_scale, layer.weight, layer.weight_scale, None, x.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        weight = ops.dequantize(ctx.layer.weight, ctx.layer.weight_scale, axis=0, out_dtype=grad.dtype)
        grad_x = grad @ weight
        if ctx.layer.input_smoothing is not None:
            grad_x = grad_x * ctx.layer.input_smoothing.to(grad_x.dtype)
        return grad_x, None, None


def copy_to_tensor_parallel_region(x: torch.Tensor, group=None) -> torch.Tensor:
    return _CopyToRegion.apply(x, group)


def reduce_from_tensor_parallel_region(x: torch.Tensor, group=None, compress_block_size: int | None = None):
    """Sum over the group; with ``compress_block_size`` each rank sends its part as int8
    with one scale per block of that many values (about 4x fewer bytes, lossy)."""
    return _ReduceFromRegion.apply(x, group, compress_block_size)


def scatter_to_tensor_parallel_region(x: torch.Tensor, group=None) -> torch.Tensor:
    return _ScatterToRegion.apply(x, group)


def gather_from_tensor_parallel_region(x: torch.Tensor, group=None) -> torch.Tensor:
    return _GatherFromRegion.apply(x, group)


def _int8_all_reduce(x: torch.Tensor, group, block_size: int) -> torch.Tensor:
    """All-gather of int8 blocks + scales, then every rank dequantizes and sums the parts in
    rank order (so all ranks get the same bits). The quantize and dequantize are our kernels."""
    world, _ = group_size_and_rank(group)
    q, scales = ops.quantize_per_group(x.detach().float().contiguous(), block_size)
    q_parts = [torch.empty_like(q) for _ in range(world)]
    scale_parts = [torch.empty_like(scales) for _ in range(world)]
    dist.all_gather(q_parts, q, group=group)
    dist.all_gather(scale_parts, scales, group=group)
    total = torch.zeros_like(x, dtype=torch.float32)
    for q_part, scale_part in zip(q_parts, scale_parts, strict=True):
        total += ops.dequantize(q_part, scale_part, group_size=block_size)
    return total.to(x.dtype)


# Which dimension of each tensor of a layer follows the output / input features. "packed"
# tensors hold the input dimension in bits: 8 inputs per byte (binary), or two bit planes of
# K/8 bytes each (ternary, positive plane then negative plane).
_OUT, _IN, _WHOLE = "out", "in", "whole"


def _layout(module: nn.Module, name: str, shard: str) -> str:
    """How tensor ``name`` of ``module`` is cut when the layer is sharded along ``shard``
    ("out" for column parallel, "in" for row parallel): "out"/"in" = along that dimension,
    "whole" = every rank keeps all of it."""
    per_group_scale = name in ("weight_scale", "alpha") and getattr(module, "group_size", None) is not None
    if name in ("weight", "weight_packed"):
        return shard
    if name == "bias":
        return _OUT if shard == _OUT else _WHOLE
    if name == "group_size":
        return _WHOLE
    if name == "input_smoothing":
        return _IN if shard == _IN else _WHOLE
    if name in ("weight_scale", "alpha"):
        if isinstance(module, TernaryLinear) and not module.per_channel:
            return _WHOLE
        if shard == _OUT:
            return _OUT
        return _IN if per_group_scale else _WHOLE
    raise ValueError(f"no tensor-parallel layout for {type(module).__name__}.{name}")


def _input_unit(module: nn.Module) -> int:
    """The input features one shard must hold a multiple of, for the layout to cut cleanly."""
    if isinstance(module, (BinaryLinear, TernaryLinear)):
        unit = 8  # a packed byte holds 8 inputs
    else:
        unit = 1
    group = getattr(module, "group_size", None)
    return unit if group is None else max(unit, group)


def _cut(tensor: torch.Tensor, module: nn.Module, name: str, how: str, world: int, rank: int,
         output_sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """This rank's piece of one tensor of a layer (see _layout). A fused column layer's
    output features (``output_sizes``: q, k and v one after another) are cut part by part,
    so that every rank holds its slice of each part (its heads of q, of k and of v)."""
    if how == _WHOLE:
        return tensor.clone()
    if how == _OUT and output_sizes is not None:
        pieces = [part.chunk(world, dim=0)[rank] for part in tensor.split(list(output_sizes), dim=0)]
        return torch.cat(pieces, dim=0)
    axis = 0 if how == _OUT or tensor.dim() == 1 else 1
    if axis == 1 and name == "weight_packed" and isinstance(module, TernaryLinear):
        return torch.cat([plane.chunk(world, dim=1)[rank] for plane in tensor.chunk(2, dim=1)], dim=1).contiguous()
    return tensor.chunk(world, dim=axis)[rank].contiguous().clone()


def _join(parts: list[torch.Tensor], module: nn.Module, name: str, how: str,
          output_sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """The inverse of _cut: the full tensor from every rank's piece, in rank order."""
    if how == _WHOLE:
        return parts[0]
    if how == _OUT and output_sizes is not None:
        local_sizes = [size // len(parts) for size in output_sizes]
        by_rank = [part.split(local_sizes, dim=0) for part in parts]
        return torch.cat([torch.cat([pieces[i] for pieces in by_rank], dim=0) for i in range(len(output_sizes))])
    axis = 0 if how == _OUT or parts[0].dim() == 1 else 1
    if axis == 1 and name == "weight_packed" and isinstance(module, TernaryLinear):
        planes = [part.chunk(2, dim=1) for part in parts]
        return torch.cat([torch.cat([p[0] for p in planes], dim=1), torch.cat([p[1] for p in planes], dim=1)], dim=1)
    return torch.cat(parts, dim=axis)


def _check_output_sizes(output_sizes, out_features: int, world: int) -> tuple[int, ...] | None:
    if output_sizes is None:
        return None
    sizes = tuple(output_sizes)
    if not sizes or any(not isinstance(size, int) or size <= 0 for size in sizes):
        raise ValueError(f"output_sizes must be positive ints, got {output_sizes}")
    if sum(sizes) != out_features:
        raise ValueError(f"output_sizes {list(sizes)} must add up to out_features ({out_features})")
    if any(size % world for size in sizes):
        raise ValueError(f"every part of output_sizes {list(sizes)} must be divisible by the tensor-parallel "
                         f"size {world}: each rank takes its slice of each part")
    return sizes


def _shard_layer(module: nn.Module, shard: str, world: int, rank: int,
                 output_sizes: tuple[int, ...] | None = None) -> nn.Module:
    """A copy of ``module`` (nn.Linear or an effgen quantized layer) holding this rank's
    slice. Row-parallel shards drop the bias (the parallel layer adds it after the sum)."""
    out_features, in_features = module.out_features, module.in_features
    if shard == _OUT and out_features % world:
        raise ValueError(f"out_features ({out_features}) is not divisible by the tensor-parallel size {world}")
    if shard == _IN:
        unit = _input_unit(module)
        if in_features % (world * unit):
            raise ValueError(f"in_features ({in_features}) must be a multiple of tensor-parallel size {world} x "
                             f"{unit} for {type(module).__name__} (packed bytes / scale groups must not straddle "
                             f"shards)")
        if getattr(module, "binary_activations", False):
            raise ValueError("row-parallel BinaryLinear with binary_activations is not supported (the per-token "
                             "activation scale spans all input features)")
    local_out = out_features // world if shard == _OUT else out_features
    local_in = in_features // world if shard == _IN else in_features
    has_bias = module.bias is not None and shard == _OUT
    local = _empty_like_layer(module, local_in, local_out, has_bias)
    state = {name: _cut(tensor, module, name, _layout(module, name, shard), world, rank, output_sizes)
             for name, tensor in module.state_dict().items() if tensor is not None and (name != "bias" or has_bias)}
    local.load_state_dict(state)
    return local


def _empty_like_layer(module: nn.Module, in_features: int, out_features: int, bias: bool) -> nn.Module:
    device = next(iter(module.state_dict().values())).device
    dtype = module.bias.dtype if module.bias is not None else None
    if type(module) is nn.Linear:
        return nn.Linear(in_features, out_features, bias, device=device, dtype=module.weight.dtype)
    if isinstance(module, Int8Linear):
        return Int8Linear(in_features, out_features, bias, module.input_smoothing is not None, device, dtype)
    if isinstance(module, Int8WeightOnlyLinear):
        return Int8WeightOnlyLinear(in_features, out_features, bias, module.group_size, device, dtype)
    if isinstance(module, BinaryLinear):
        return BinaryLinear(in_features, out_features, bias, module.group_size, module.binary_activations, device,
                            dtype)
    if isinstance(module, TernaryLinear):
        return TernaryLinear(in_features, out_features, bias, module.per_channel, device, dtype)
    raise TypeError(f"cannot shard {type(module).__name__}: expected nn.Linear or one of "
                    f"{[t.__name__ for t in QUANTIZED_LAYERS]}")


def _source_layer(module: nn.Module, quant) -> tuple[nn.Module, bool]:
    """The layer to cut: ``module`` quantized with ``quant`` if given, a Hugging Face Conv1D
    (weight stored [in, out]) seen as the nn.Linear over its transposed weight; and whether
    the cut layer holds that transposed weight as a float (the full state dict then stores
    it [in, out] again, as the Conv1D does)."""
    linear = as_linear(module)
    transposed = linear is not None and linear is not module
    layer = _quantized(module if linear is None else linear, quant)
    return layer, transposed and type(layer) is nn.Linear


def _quantized(linear: nn.Module, quant) -> nn.Module:
    if quant is None:
        return linear
    check_config(quant, "quant")
    if type(linear) is not nn.Linear:
        raise ValueError(f"quant= applies to an nn.Linear; {type(linear).__name__} is already quantized")
    return quant.convert(linear)


class ColumnParallelLinear(nn.Module):
    """y = x W^T + b with W's rows (output features) split over the group. The output stays
    split (``[..., out/p]``) unless ``gather_output``. A fused layer (one GEMM for q, k and
    v, or for gate and up) names its parts' widths in ``output_sizes``: each rank then holds
    its slice of every part, and its output is those slices one after another."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group=None,
                 gather_output: bool = False, quant=None, output_sizes=None, device=None, dtype=None) -> None:
        super().__init__()
        world, _ = group_size_and_rank(group)
        if out_features % world:
            raise ValueError(f"out_features ({out_features}) is not divisible by the tensor-parallel size {world}")
        output_sizes = _check_output_sizes(output_sizes, out_features, world)
        full = nn.Linear(in_features, out_features // world, bias, device=device, dtype=dtype)
        self._setup(_quantized(full, quant), in_features, out_features, group, gather_output, output_sizes, False)

    def _setup(self, local: nn.Module, in_features: int, out_features: int, group, gather_output: bool,
               output_sizes: tuple[int, ...] | None, weight_transposed: bool) -> None:
        self.local, self.group, self.gather_output = local, group, gather_output
        self.in_features, self.out_features = in_features, out_features
        self.output_sizes, self.weight_transposed = output_sizes, weight_transposed

    @classmethod
    def from_linear(cls, linear: nn.Module, group=None, gather_output: bool = False,
                    quant=None, output_sizes=None) -> ColumnParallelLinear:
        """This rank's shard of ``linear`` (nn.Linear, Hugging Face's Conv1D or an effgen
        quantized layer); with ``quant`` (e.g. Int8Config()) the full layer is quantized
        first, then cut. ``output_sizes``: the widths of a fused layer's parts."""
        world, rank = group_size_and_rank(group)
        linear, transposed = _source_layer(linear, quant)
        output_sizes = _check_output_sizes(output_sizes, linear.out_features, world)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._setup(_shard_layer(linear, _OUT, world, rank, output_sizes), linear.in_features,
                      linear.out_features, group, gather_output, output_sizes, transposed)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(copy_to_tensor_parallel_region(x, self.group))
        if not self.gather_output:
            return y
        y = gather_from_tensor_parallel_region(y, self.group)
        return y if self.output_sizes is None else self._parts_in_order(y)

    def _parts_in_order(self, gathered: torch.Tensor) -> torch.Tensor:
        """The gathered output is rank 0's slices of every part, then rank 1's ...: put each
        part's slices back together, parts in order."""
        world = gathered.shape[-1] // self.local.out_features
        by_rank = gathered.unflatten(-1, (world, self.local.out_features))
        local_sizes = [size // world for size in self.output_sizes]
        return torch.cat([part.flatten(-2) for part in by_rank.split(local_sizes, dim=-1)], dim=-1)

    def extra_repr(self) -> str:
        parts = "" if self.output_sizes is None else f", parts={list(self.output_sizes)}"
        return (f"in_features={self.in_features}, out_features={self.out_features} (this rank: "
                f"{self.local.out_features}){parts}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """y = x W^T + b with W's columns (input features) split over the group; partial products
    are summed across the group and the bias added once. The input is expected already split
    (``input_is_parallel``, the output of a ColumnParallelLinear) or is split here.
    ``compress_block_size`` turns on the int8 activation all-reduce (lossy; off by default)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group=None,
                 input_is_parallel: bool = True, quant=None, compress_block_size: int | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        world, _ = group_size_and_rank(group)
        if in_features % world:
            raise ValueError(f"in_features ({in_features}) is not divisible by the tensor-parallel size {world}")
        local = _quantized(nn.Linear(in_features // world, out_features, False, device=device, dtype=dtype), quant)
        bias_tensor = torch.zeros(out_features, device=device, dtype=dtype) if bias else None
        self._setup(local, bias_tensor, in_features, out_features, group, input_is_parallel, compress_block_size,
                    False)

    def _setup(self, local, bias, in_features, out_features, group, input_is_parallel, compress_block_size,
               weight_transposed: bool) -> None:
        if compress_block_size is not None and compress_block_size <= 0:
            raise ValueError(f"compress_block_size must be positive or None, got {compress_block_size}")
        self.local, self.group, self.weight_transposed = local, group, weight_transposed
        self.output_sizes = None
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel, self.compress_block_size = input_is_parallel, compress_block_size
        trainable = type(local) is nn.Linear
        if bias is None:
            self.register_parameter("bias", None)
        elif trainable:
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Module, group=None, input_is_parallel: bool = True, quant=None,
                    compress_block_size: int | None = None) -> RowParallelLinear:
        world, rank = group_size_and_rank(group)
        linear, transposed = _source_layer(linear, quant)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        module._setup(_shard_layer(linear, _IN, world, rank), bias, linear.in_features, linear.out_features, group,
                      input_is_parallel, compress_block_size, transposed)
        return module

    def _local_product(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.local, Int8Linear):
            return self.local(x)
        self.local._check_input(x)
        return _RowShardW8A8.apply(x, self.local, self.group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tensor_parallel_region(x, self.group)
        y = reduce_from_tensor_parallel_region(self._local_product(x), self.group, self.compress_block_size)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        compress = "" if self.compress_block_size is None else f", int8 all-reduce (block {self.compress_block_size})"
        return (f"in_features={self.in_features} (this rank: {self.local.in_features}), "
                f"out_features={self.out_features}, bias={self.bias is not None}{compress}")


class ParallelRMSNorm(nn.Module):
    """An RMSNorm over features that a column-parallel layer split across the group (OLMo 2's
    q_norm / k_norm, over all heads of q / of k): each rank holds its slice of the weight, and
    the sum of squares is summed over the group, so every rank normalizes its slice as the
    whole norm would. As OLMo 2's RMSNorm: in fp32, the weight times the normalized value,
    then cast back to x's dtype."""

    def __init__(self, norm: nn.Module, group=None) -> None:
        super().__init__()
        world, rank = group_size_and_rank(group)
        self.features = norm.weight.shape[0]
        if self.features % world:
            raise ValueError(f"the norm's {self.features} features are not divisible by the tensor-parallel size "
                             f"{world}")
        self.local = copy.deepcopy(norm)
        self.local.weight = nn.Parameter(_cut(norm.weight.detach(), norm, "weight", _OUT, world, rank),
                                         requires_grad=norm.weight.requires_grad)
        self.eps, self.group = norm.variance_epsilon, group
        self.output_sizes, self.weight_transposed = None, False  # as a column layer's, for the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float()
        # summed over the group forward, and (every rank's output depending on the sum) backward
        squares = copy_to_tensor_parallel_region(reduce_from_tensor_parallel_region(rows.pow(2).sum(-1, keepdim=True),
                                                                                    self.group), self.group)
        return (self.local.weight * (rows * torch.rsqrt(squares / self.features + self.eps))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={self.features} (this rank: {self.local.weight.shape[0]}), eps={self.eps}"


class HeadParallel(nn.Module):
    """A module with a submodule per attention head in ``norms`` (StableLM's per-head q / k
    layer norms, each applied to one slice of dim 1 of [batch, heads, ...]), cut down in
    place to this rank's heads [r h/p, (r + 1) h/p) and held in ``local``: called as the
    module is, on this rank's heads (what a column-parallel q / k projection gives it)."""

    def __init__(self, module: nn.Module, group=None) -> None:
        super().__init__()
        world, rank = group_size_and_rank(group)
        heads = len(module.norms)
        if heads % world:
            raise ValueError(f"{type(module).__name__} has {heads} heads, not divisible by the tensor-parallel size "
                             f"{world}")
        self.group, self.count = group, heads // world
        self.first = rank * self.count
        module.norms = nn.ModuleList(list(module.norms)[self.first:self.first + self.count])
        module.num_heads = self.count
        self.local = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(x)

    def extra_repr(self) -> str:
        return f"heads {self.first}..{self.first + self.count - 1}"


def gather_numbered(tensor: torch.Tensor, group, layers: str, index: int, rest: str,
                    per_rank: int) -> dict[str, torch.Tensor]:
    """``tensor`` (``rest`` of the ``index``-th of this rank's ``per_rank`` numbered
    submodules ``layers``: a quantized expert, a head's norm) and its peers on the other
    ranks, each under its number in the unsharded module (rank r's i-th is r per_rank + i)."""
    world, _ = group_size_and_rank(group)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return {f"{layers}.{rank * per_rank + index}.{rest}": part for rank, part in enumerate(parts)}


_HEAD_TENSOR = re.compile(r"^norms\.(\d+)\.(.+)$")  # a HeadParallel's local tensors: norms.<head>.<name>


def _parallel_layers(model: nn.Module):
    # Every name of a shared layer: state_dict holds its tensors under each of them.
    from .experts import ExpertParallel

    kinds = (ColumnParallelLinear, RowParallelLinear, ParallelRMSNorm, ExpertParallel, HeadParallel)
    return [(name, module) for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, kinds)]


def _shard_kind(module: nn.Module) -> str:
    return _OUT if isinstance(module, (ColumnParallelLinear, ParallelRMSNorm)) else _IN


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the unsharded model on every rank: each tensor-parallel layer's
    shards are all-gathered and stored under the plain layer's names (``x.q_proj.weight``,
    not ``x.q_proj.local.weight``), and so are the experts of an expert-parallel block, so
    it loads into the single-process model."""
    from .experts import ExpertParallel, full_expert_tensors

    state = {}
    parallel = dict(_parallel_layers(model))
    for name, tensor in model.state_dict().items():
        owner = next((p for p in parallel if name.startswith(p + ".")), None)
        if owner is None:
            state[name] = tensor
            continue
        layer, rest = parallel[owner], name[len(owner) + 1:]
        if not rest.startswith("local."):  # a row-parallel bias: whole on every rank
            state[name] = tensor
            continue
        local_name = rest[len("local."):]
        if isinstance(layer, HeadParallel):
            head, tensor_name = _HEAD_TENSOR.match(local_name).groups()
            state.update({f"{owner}.{key}": value for key, value in gather_numbered(
                tensor, layer.group, "norms", int(head), tensor_name, layer.count).items()})
            continue
        if isinstance(layer, ExpertParallel):
            state.update({f"{owner}.{key}": value for key, value in full_expert_tensors(layer, local_name,
                                                                                          tensor).items()})
            continue
        how = _layout(layer.local, local_name, _shard_kind(layer))
        world, _ = group_size_and_rank(layer.group)
        parts = [tensor] if how == _WHOLE else [torch.empty_like(tensor) for _ in range(world)]
        if how != _WHOLE:
            dist.all_gather(parts, tensor.contiguous(), group=layer.group)
        full = _join(parts, layer.local, local_name, how, layer.output_sizes)
        state[f"{owner}.{local_name}"] = _stored_weight(layer, local_name, full)
    return state


def _stored_weight(layer: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A Conv1D source's float weight as that Conv1D stores it, [in, out] (and back: the
    transpose is its own inverse); any other tensor as it is."""
    return tensor.t().contiguous() if layer.weight_transposed and name == "weight" else tensor


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (from full_state_dict or the single-process model) into
    a parallelized model: every rank keeps its own pieces."""
    from .experts import ExpertParallel, local_expert_tensor

    parallel = dict(_parallel_layers(model))
    local_state = {}
    for name in model.state_dict():
        owner = next((p for p in parallel if name.startswith(p + ".")), None)
        if owner is None or not name[len(owner) + 1:].startswith("local."):
            local_state[name] = state[name]
            continue
        layer, local_name = parallel[owner], name[len(owner) + 1 + len("local."):]
        if isinstance(layer, HeadParallel):
            head, tensor_name = _HEAD_TENSOR.match(local_name).groups()
            local_state[name] = state[f"{owner}.norms.{layer.first + int(head)}.{tensor_name}"]
            continue
        if isinstance(layer, ExpertParallel):
            local_state[name] = local_expert_tensor(layer, local_name, state, f"{owner}.")
            continue
        world, rank = group_size_and_rank(layer.group)
        how = _layout(layer.local, local_name, _shard_kind(layer))
        full = _stored_weight(layer, local_name, state[f"{owner}.{local_name}"])
        local_state[name] = _cut(full, layer.local, local_name, how, world, rank, layer.output_sizes)
    model.load_state_dict(local_state)
