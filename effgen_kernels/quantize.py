"""quantize_(model, config): swap nn.Linear layers (and fused MoE experts) for effgen's
quantized ones, in place."""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ._heap import HeapTrimmer
from ._modules import names_by_module, swap_module, weight_used_by_owner
from .nn import (
    BinaryLinear,
    BinaryTrainLinear,
    Int8Linear,
    Int8TrainLinear,
    Int8WeightOnlyLinear,
    TernaryLinear,
    TernaryTrainLinear,
)
from .nn._quantized import QuantizedLayer
from .nn.binary import check_binary_options
from .nn.experts import (
    DOWN_LAYERS,
    UP_LAYERS,
    dequantize_experts,
    expert_linears,
    fused_weights,
    is_fused_experts,
    is_quantized_experts,
    quantize_experts,
)
from .nn.int8 import check_smoothing_alpha, check_weight_only_group_size
from .progress import Progress

# The float dtypes every kernel takes (weights to quantize, activations).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# The int32 accumulation of int8 products is exact up to this K (K * 128^2 < 2^31).
MAX_INT8_IN_FEATURES = (1 << 17) - 1


def _empty_layer_args(linear: nn.Linear, device: torch.device) -> dict:
    """The constructor arguments every quantized layer shares, for an empty layer on
    ``device`` in the place of ``linear`` (its shape, bias and bias dtype, as from_float
    gives them)."""
    return {"in_features": linear.in_features, "out_features": linear.out_features, "bias": linear.bias is not None,
            "device": device, "dtype": None if linear.bias is None else linear.bias.dtype}


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """W8A8: int8 per-channel weights, int8 per-token activations quantized at run time.

    ``activation_absmax`` (from calibrate_activations, keyed by layer name) turns on
    SmoothQuant with strength ``smoothing_alpha`` for every layer it names."""

    activation_absmax: Mapping[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False,
                                                                              compare=False)
    smoothing_alpha: float = 0.5

    def __post_init__(self) -> None:
        check_smoothing_alpha(self.smoothing_alpha)

    def convert(self, linear: nn.Linear, name: str = "") -> nn.Module:
        absmax = None if self.activation_absmax is None else self.activation_absmax.get(name)
        return Int8Linear.from_float(linear, absmax, self.smoothing_alpha)

    def empty(self, linear: nn.Linear, device: torch.device) -> nn.Module:
        # Without smoothing: a checkpoint with SmoothQuant's input_smoothing turns it on as it loads.
        return Int8Linear(**_empty_layer_args(linear, device))

    def trainable(self, linear: nn.Linear) -> nn.Module:
        if self.activation_absmax is not None:
            raise ValueError("quantization-aware training takes an Int8Config without activation_absmax "
                             "(SmoothQuant is a post-training transform)")
        return Int8TrainLinear.from_float(linear)

    def check_targets(self, names: list[str]) -> None:
        """Calibration that names none of the layers to convert was taken on another model
        or under other names (a wrapper's prefix): an error, not a silent unsmoothed model."""
        if self.activation_absmax and names and not any(name in self.activation_absmax for name in names):
            raise ValueError(f"activation_absmax names none of the layers to convert (it holds "
                             f"{next(iter(self.activation_absmax))!r}, the model {names[0]!r}): calibrate "
                             f"the model you quantize, under the same names")

    def cannot_convert(self, linear: nn.Linear) -> str | None:
        if linear.in_features > MAX_INT8_IN_FEATURES:
            return f"in_features {linear.in_features} > {MAX_INT8_IN_FEATURES} (int32 accumulation could overflow)"
        return None


@dataclasses.dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """W8A16: int8 weights with per-channel (group_size=None) or per-group scales."""

    group_size: int | None = None

    def __post_init__(self) -> None:
        check_weight_only_group_size(self.group_size)

    def convert(self, linear: nn.Linear, name: str = "") -> nn.Module:
        return Int8WeightOnlyLinear.from_float(linear, group_size=self.group_size)

    def empty(self, linear: nn.Linear, device: torch.device) -> nn.Module:
        return Int8WeightOnlyLinear(**_empty_layer_args(linear, device), group_size=self.group_size)

    def cannot_convert(self, linear: nn.Linear) -> str | None:
        return None


@dataclasses.dataclass(frozen=True)
class BinaryConfig:
    """1-bit weights (XNOR-Net alpha per channel or per group of 16k inputs); with
    ``binary_activations`` the inputs are binarized too and products use XNOR-popcount.
    On the CPU, groups of 32k inputs (e.g. 128) run on the lookup tables as per-channel
    alphas do (AVX2 in 16-entry tables: about 1.8x its per-channel time at one row, 1.25x at
    64 rows on wide layers); other groups take masked adds."""

    group_size: int | None = None
    binary_activations: bool = False

    def __post_init__(self) -> None:
        check_binary_options(self.group_size, self.binary_activations)

    def convert(self, linear: nn.Linear, name: str = "") -> nn.Module:
        return BinaryLinear.from_float(linear, self.group_size, self.binary_activations)

    def empty(self, linear: nn.Linear, device: torch.device) -> nn.Module:
        return BinaryLinear(**_empty_layer_args(linear, device), group_size=self.group_size,
                            binary_activations=self.binary_activations)

    def trainable(self, linear: nn.Linear) -> nn.Module:
        return BinaryTrainLinear.from_float(linear, self.group_size, self.binary_activations)

    def cannot_convert(self, linear: nn.Linear) -> str | None:
        return None


@dataclasses.dataclass(frozen=True)
class TernaryConfig:
    """Ternary weights (BitNet b1.58) with a per-channel or per-tensor scale."""

    per_channel: bool = True

    def convert(self, linear: nn.Linear, name: str = "") -> nn.Module:
        return TernaryLinear.from_float(linear, self.per_channel)

    def empty(self, linear: nn.Linear, device: torch.device) -> nn.Module:
        return TernaryLinear(**_empty_layer_args(linear, device), per_channel=self.per_channel)

    def trainable(self, linear: nn.Linear) -> nn.Module:
        return TernaryTrainLinear.from_float(linear, self.per_channel)

    def cannot_convert(self, linear: nn.Linear) -> str | None:
        return None


CONFIGS = (Int8Config, Int8WeightOnlyConfig, BinaryConfig, TernaryConfig)


def check_config(config, argument: str = "config") -> None:
    """A clear error for what is not one of the configs (the class itself, a format's name)
    before a model is touched."""
    names = ", ".join(c.__name__ for c in CONFIGS)
    if isinstance(config, type) and issubclass(config, CONFIGS):
        raise TypeError(f"{argument} must be a config instance such as {config.__name__}(), got the class itself")
    if not isinstance(config, CONFIGS):
        raise TypeError(f"{argument} must be one of {names}, got {type(config).__name__} {config!r}")


@dataclasses.dataclass
class QuantizeSummary:
    """What quantize_ (or prepare, load_quantized_) did: converted layer names, skipped ones
    with the reason, and sizes."""

    config: object
    converted: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    bytes_before: int = 0  # parameters and buffers of the converted layers, before
    bytes_after: int = 0  # ... and after
    action: str = "quantize_"  # or prepare, load_quantized_
    # model_bytes of the whole model, before and after: what stays float (embeddings, norms,
    # layers left alone) shows here, not in the layers' bytes
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    def __str__(self) -> str:
        config = "" if self.config is None else f" with {self.config}"
        lines = [f"{self.action}{config}: {len(self.converted)} layers converted, "
                 f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB (the whole model "
                 f"{self.model_bytes_before / 2**20:.2f} MiB -> {self.model_bytes_after / 2**20:.2f} MiB)"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer ``model`` holds (packed weights, scales, lookup
    tables), each storage counted once (tied weights are shared)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = id(tensor) if tensor.is_meta else tensor.data_ptr()  # meta tensors have no address
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _weight_problem(weight: torch.Tensor) -> str | None:
    if weight.is_meta:
        return "weight is on the meta device (load real weights first)"
    if weight.dtype not in KERNEL_DTYPES:
        return f"weight dtype {weight.dtype} (the kernels take float32, bfloat16 and float16)"
    if weight.device.type != "cpu" and not weight.is_cuda:
        return f"device {weight.device} has no effgen kernels"
    if not _all_finite(weight):
        return "weight contains NaN or Inf"
    return None


def _all_finite(weight: torch.Tensor) -> bool:
    # A sum holding a NaN or an Inf is not finite, and takes one pass without the bool tensor
    # of isfinite(weight).all() (1/25 of its time on SmolLM2's layers; that was 60% of
    # quantize_'s); only a sum too large for fp32 needs the exact look.
    return bool(torch.isfinite(weight.sum(dtype=torch.float32))) or bool(torch.isfinite(weight).all())


def _shape_problem(target: nn.Module, config) -> str | None:
    """Why ``config`` cannot convert a target (an nn.Linear, or a fused-experts block) of its
    shapes, weights aside (known before they load)."""
    linears = [target] if isinstance(target, nn.Linear) else expert_linears(target, 0)  # every expert's shapes
    return next((problem for linear in linears if (problem := config.cannot_convert(linear))), None)


def _why_not(target: nn.Module, config) -> str | None:
    """Why a target (an nn.Linear, or a fused-experts block) stays as it is; None: convert it."""
    weights = [target.weight] if isinstance(target, nn.Linear) else fused_weights(target)
    weight_problem = next((problem for weight in weights if (problem := _weight_problem(weight))), None)
    return weight_problem or _shape_problem(target, config)


def _used_by_owner(model: nn.Module, names: list[str], target: nn.Module, config) -> str | None:
    """Why an nn.Linear target cannot be swapped although it could be converted: the model's
    code reads its weight itself or changes it in place (None where it only calls the layer)."""
    if not isinstance(target, nn.Linear):
        return None
    int8_weight = isinstance(config, (Int8Config, Int8WeightOnlyConfig))  # their layers keep an int8 weight
    return next((reason for name in names if (reason := weight_used_by_owner(model, name, int8_weight))), None)


def _convert(target: nn.Module, name: str, make: Callable[[nn.Linear, str], nn.Module]) -> nn.Module:
    """make's layer for an nn.Linear target; for a fused-experts block, the block itself with
    a layer made for each expert's projections (named "<block>.up_layers.<expert>", ...)."""
    if isinstance(target, nn.Linear):
        return make(target, name)
    return quantize_experts(target, lambda linear, sub: make(linear, f"{name}.{sub}"))


_TRAINABLE = (Int8TrainLinear, BinaryTrainLinear, TernaryTrainLinear)


def _stacked_matrices(module: nn.Module) -> list[str]:
    """The names of ``module``'s own 3-D parameters that stack matrices (experts, heads): not
    a convolution's kernel (torch.nn's Conv1d, as in Mamba) nor vectors shaped [1, 1, H]
    (RWKV's time mixing), which no linear layer could take."""
    if type(module).__module__.startswith("torch.nn."):
        return []
    return [name for name, p in module.named_parameters(recurse=False) if p.dim() == 3 and min(p.shape[1:]) > 1]


def _left_alone(module: nn.Module) -> str | None:
    """Why quantize_ / prepare leave a linear-like module that is not a plain nn.Linear as it
    is (None: not linear-like), or one holding stacked 3-D weights. Said in the summary: a
    model quantized twice, or prepared and then quantized, would otherwise report 0 layers
    without a reason, and a mixture-of-experts model its float experts without a word."""
    if isinstance(module, QuantizedLayer):
        return f"already quantized ({type(module).__name__})"
    if isinstance(module, _TRAINABLE):
        return f"{type(module).__name__} from prepare (convert() makes it its inference layer)"
    if isinstance(module, nn.Linear):  # e.g. nn.MultiheadAttention's out_proj, whose weight it reads itself
        return f"{type(module).__name__} is a subclass of nn.Linear (its owner may read the weight directly)"
    stacked = _stacked_matrices(module)
    if stacked:  # not a transformers experts block: its forward's use of them is unknown
        return (f"{type(module).__name__} holds its weights as 3-D parameters {stacked}: quantize_ converts "
                f"nn.Linear and Conv1D layers and transformers' fused-experts blocks")
    return None


def _hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is Hugging Face's Conv1D (GPT-2, OpenAI GPT, ImageGPT): a linear
    layer whose weight is stored [in, out], y = x @ W + b. Found without importing
    transformers: a model holding one has imported it already."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def mark_hf_quantized(model: nn.Module) -> None:
    """Tell a Hugging Face model it holds quantized layers, as transformers' own quantizers
    do (``config._is_quantized``, never saved with the config): its code then calls layers
    it would otherwise read the weight of (Falcon-Mamba's and Jamba's dt_proj) and takes its
    activations' dtype from the config, not from a layer's weight (GPT-Neo). And have its
    save_pretrained write the model's own names: by default it converts them back to the
    checkpoint layout the model was first published in, with ops written for float
    parameters (splits sized by a parameter's shape, transposes) that a quantized layer's
    codes, packed bits and scales cannot go through; from_pretrained reads either."""
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    pretrained = getattr(modeling_utils, "PreTrainedModel", None)
    if pretrained is None:
        return
    for module in model.modules():
        if isinstance(module, pretrained):
            module.config._is_quantized = True
            module._weight_conversions = []  # what revert_weight_conversion applies on save


def as_linear(module: nn.Module) -> nn.Linear | None:
    """The nn.Linear that quantize_ converts for ``module``: a plain nn.Linear itself; a
    Conv1D seen as an nn.Linear over its transposed weight (a view: nothing copied, and the
    converted layer computes what the Conv1D did); None for anything else."""
    if type(module) is nn.Linear:
        return module
    if not _hf_conv1d(module):
        return None
    linear = nn.Linear(module.nx, module.nf, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.detach().t(), requires_grad=module.weight.requires_grad)
    linear.bias = module.bias
    return linear


def _targets(model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None,
             summary: QuantizeSummary) -> list[tuple[list[str], nn.Module]]:
    """What to convert, with its names: nn.Linear layers (plain ones, and Hugging Face's
    Conv1D seen as one) and transformers' fused-experts blocks. The
    linear-like modules left alone and the shared ones filter_fn keeps under some names
    only go to summary.skipped."""
    targets = []
    for module, names in names_by_module(model).items():
        target = as_linear(module)
        if target is None and is_fused_experts(module):
            target = module
        shown = module if target is None else target
        kept = names
        if filter_fn is not None and (target is not None or isinstance(module, nn.Linear)):
            # filter_fn sees nn.Linear and its subclasses (it may read .weight, which the
            # quantized layers do not have, and in_features / out_features: a Conv1D's view)
            # and fused-experts blocks
            kept = [name for name in names if filter_fn(shown, name)]
            if not kept:
                continue
        left_out = [name for name in names if name not in kept]
        if target is not None and left_out:
            summary.skipped.update({name: f"the same module as {left_out[0]}, which filter_fn leaves out"
                                    for name in kept})
        elif target is not None:
            targets.append((names, target))
        elif (reason := _left_alone(module)) is not None:
            summary.skipped.update(dict.fromkeys(kept, reason))
    return targets


def _swap_converted(model: nn.Module, names: list[str], target: nn.Module,
                    make: Callable[[nn.Linear, str], nn.Module], summary: QuantizeSummary,
                    trimmer: HeapTrimmer) -> nn.Module:
    """Convert ``target`` with ``make``, swap the result in under each of its names and count
    it in ``summary``; tells ``trimmer``. Returns it."""
    summary.bytes_before += model_bytes(target)
    training = model.get_submodule(names[0]).training
    # in the mode of what it replaces: a trainable layer prepared in an eval model evaluates
    replacement = _convert(target, names[0], make).train(training)
    summary.bytes_after += model_bytes(replacement)
    swap_module(model, names, replacement)
    summary.converted += names
    trimmer.layer_done()
    return replacement


def _replace_linears(model: nn.Module, config, make: Callable[[nn.Linear, str], nn.Module],
                     filter_fn: Callable[[nn.Module, str], bool] | None, action: str,
                     progress: bool = False) -> QuantizeSummary:
    summary = QuantizeSummary(config, action=action, model_bytes_before=model_bytes(model))
    targets = _targets(model, filter_fn, summary)
    if hasattr(config, "check_targets"):
        config.check_targets([name for names, _ in targets for name in names])
    bar = Progress(len(targets), f"{action} {type(config).__name__}", enabled=progress, silent_s=2.0)
    trimmer = HeapTrimmer()
    for done, (names, target) in enumerate(targets):
        bar.update(done, detail=names[0])
        reason = _why_not(target, config) or _used_by_owner(model, names, target, config)
        if reason is not None:
            summary.skipped.update(dict.fromkeys(names, reason))
            continue
        _swap_converted(model, names, target, make, summary, trimmer)
    trimmer.done()
    bar.update(len(targets))
    if summary.converted and action == "quantize_":
        mark_hf_quantized(model)
    summary.model_bytes_after = model_bytes(model)
    return summary


def quantize_(model: nn.Module, config, filter_fn: Callable[[nn.Module, str], bool] | None = None,
              progress: bool = True) -> QuantizeSummary:
    """Replace every nn.Linear of ``model`` (for which ``filter_fn(module, name)`` is true)
    by the quantized layer of ``config``; returns a QuantizeSummary. Hugging Face's Conv1D
    (GPT-2's layers: the weight stored [in, out]) is converted as the nn.Linear it is, and
    filter_fn sees it as one; a transformers 5 fused-experts block (3-D weights, e.g.
    Mixtral's) gets a quantized layer per expert and projection (nn/experts.py), and
    filter_fn sees the block. Layers that cannot be converted (e.g. NaN or Inf weights) stay
    as they are and are listed, with the reason, in ``summary.skipped``, as are layers
    already quantized or prepared and subclasses of nn.Linear, which it leaves alone. A
    layer used at several places is converted once and swapped in under each of its names.
    A conversion that runs past 2 s (a large model) shows a progress bar on stderr unless
    ``progress`` is False."""
    check_config(config)
    return _replace_linears(model, config, config.convert, filter_fn, "quantize_", progress)


def quantized_draft(model: nn.Module, config=None, filter_fn: Callable[[nn.Module, str], bool] | None = None,
                    progress: bool = True) -> nn.Module:
    """A quantized copy of ``model`` (``config``: default Int8Config(), W8A8) to draft tokens
    for it: ``model.generate(ids, assistant_model=quantized_draft(model))`` is transformers'
    speculative decoding, where the draft proposes several tokens at its own speed and the
    model checks them all in one forward. Greedy decoding gives the model's own tokens (up
    to the rounding of its forward over several tokens at once), sampling draws from the
    model's own distribution; the speed-up grows with how often the two agree. The copy
    shares every parameter and buffer it does not quantize with ``model`` (the embeddings,
    the norms, a layer ``filter_fn`` leaves out), so it adds only its quantized layers to the
    memory; ``model`` itself is not changed."""
    config = Int8Config() if config is None else config
    check_config(config)
    # deepcopy's memo maps each tensor to itself: the copy's modules hold the very same ones
    shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    draft = copy.deepcopy(model, memo=shared)
    quantize_(draft, config, filter_fn, progress)
    return draft


@dataclasses.dataclass(eq=False)
class _AwaitedLayer:
    """A layer QuantizeOnLoad converts once its float tensors are in: its names, the module
    (the float one, or a fused-experts block) and the names of the tensors still to come."""

    names: list[str]
    module: nn.Module
    waiting: set[str]


class QuantizeOnLoad:
    """quantize_ for a model whose float weights are yet to load (on the meta device, as
    transformers' from_pretrained builds it), layer by layer as they load: hand it each
    tensor with ``take``; a layer converts, and is swapped in, as soon as its last tensor is
    in, so the float weights are never all in memory at once (the peak is the quantized
    model and one float layer). ``finish`` converts the layers a checkpoint did not hold
    whole (the model initialized the rest) and returns the QuantizeSummary.

    The layers are those quantize_ would convert (``filter_fn``, the model's code reading a
    layer's weight, the config's limits); one whose weights hold NaN or Inf stays float, with
    them. The result is quantize_'s on the loaded model, bit for bit."""

    def __init__(self, model: nn.Module, config, filter_fn: Callable[[nn.Module, str], bool] | None = None,
                 action: str = "from_pretrained") -> None:
        check_config(config)
        if getattr(config, "activation_absmax", None) is not None:
            raise ValueError("SmoothQuant calibrates on the loaded model: load it float, calibrate and quantize_ it")
        self.model, self.config = model, config
        self.summary = QuantizeSummary(config, action=action, model_bytes_before=model_bytes(model))
        self.converted: list[nn.Module] = []  # the layers swapped in as their tensors came
        # Only the layers yet to convert: a reference to a converted one's float module would
        # keep its float tensors in memory to the end.
        self._pending: set[_AwaitedLayer] = set()
        self._awaited: dict[str, tuple[_AwaitedLayer, str]] = {}  # state_dict key -> (layer, tensor name)
        self._taken: set[str] = set()
        self._trimmer = HeapTrimmer()
        for names, target in _targets(model, filter_fn, self.summary):
            reason = _shape_problem(target, config) or _used_by_owner(model, names, target, config)
            if reason is not None:
                self.summary.skipped.update(dict.fromkeys(names, reason))
                continue
            module = model.get_submodule(names[0])
            tensors = {key for key, tensor in module._parameters.items() if tensor is not None}
            layer = _AwaitedLayer(names, module, tensors)
            self._pending.add(layer)
            self._awaited.update({f"{name}.{key}": (layer, key) for name in names for key in tensors})

    def wants(self, key: str) -> bool:
        """Whether ``key`` (a state_dict key of the model) is a tensor of a layer to convert."""
        return key in self._awaited or key in self._taken

    def take(self, key: str, tensor: torch.Tensor) -> bool:
        """Give ``tensor``, the checkpoint's ``key``, to its layer, which converts once it has
        all of its tensors. False where ``key`` is not wanted or the tensor does not fit its
        layer (a float of its shape): the caller loads it as any other tensor, and the
        layer converts in finish."""
        if key in self._taken:  # a shared layer's tensor again, under another of its names
            return True
        if key not in self._awaited:
            return False
        layer, tensor_name = self._awaited[key]
        held = layer.module._parameters[tensor_name]
        if not tensor.is_floating_point() or tensor.shape != held.shape:
            self._leave_to_finish(layer)
            return False
        # in the model's dtype, as a float load would give it: quantized from the same values
        layer.module._parameters[tensor_name] = nn.Parameter(tensor.to(held.dtype), requires_grad=held.requires_grad)
        for name in layer.names:
            del self._awaited[f"{name}.{tensor_name}"]
            self._taken.add(f"{name}.{tensor_name}")
        layer.waiting.discard(tensor_name)
        if not layer.waiting:
            self._convert(layer)
        return True

    def _leave_to_finish(self, layer: _AwaitedLayer) -> None:
        for name in layer.names:
            for tensor_name in layer.waiting:
                del self._awaited[f"{name}.{tensor_name}"]

    def _convert(self, layer: _AwaitedLayer) -> None:
        self._pending.discard(layer)
        target = as_linear(layer.module) or layer.module
        reason = _why_not(target, self.config)
        if reason is not None:  # keeps the float tensors it loaded
            self.summary.skipped.update(dict.fromkeys(layer.names, reason))
            return
        replacement = _swap_converted(self.model, layer.names, target, self.config.convert, self.summary,
                                      self._trimmer)
        self.converted.append(replacement)

    def finish(self) -> QuantizeSummary:
        """Once everything loaded: quantize_ the layers that did not convert as they loaded (a
        tensor the checkpoint lacks, or one it holds in another shape); the summary."""
        rest = {name for layer in self._pending for name in layer.names}
        if rest:
            later = quantize_(self.model, self.config, lambda module, name: name in rest, progress=False)
            self.summary.converted += later.converted
            self.summary.skipped.update({name: reason for name, reason in later.skipped.items() if name in rest})
            self.summary.bytes_before += later.bytes_before
            self.summary.bytes_after += later.bytes_after
        self._trimmer.done()
        if self.summary.converted:
            mark_hf_quantized(self.model)
        # in the model's order, as quantize_ lists them, not in the checkpoint's
        order = {name: at for at, (name, _) in enumerate(self.model.named_modules(remove_duplicate=False))}
        self.summary.converted.sort(key=order.__getitem__)
        self.summary.model_bytes_after = model_bytes(self.model)
        return self.summary


def _why_not_float(module: nn.Module) -> str | None:
    """Why a quantized layer, or a block of them, stays as it is in dequantize_."""
    layers = [module] if isinstance(module, QuantizedLayer) else [*module._modules[UP_LAYERS],
                                                                   *module._modules[DOWN_LAYERS]]
    if not all(isinstance(layer, QuantizedLayer) for layer in layers):
        return "trainable layers from prepare (convert() makes them inference layers)"
    return next((reason for layer in layers if (reason := layer.cannot_dequantize())), None)


def dequantize_(model: nn.Module, dtype: torch.dtype | None = None) -> QuantizeSummary:
    """Undo quantize_ (or load_quantized_, convert) in place: each quantized layer becomes the
    nn.Linear of its dequantized weights (QuantizedLayer.to_float, in ``dtype``: default the
    layer's bias's, else float32), a fused-experts block gets its 3-D weights back. The
    weights stay as quantization rounded them; a Conv1D comes back as the nn.Linear it is.
    Layers no nn.Linear can stand for (binary activations) stay, listed in summary.skipped."""
    summary = QuantizeSummary(None, action="dequantize_", model_bytes_before=model_bytes(model))
    blocks: list[str] = []  # experts blocks seen: their layers go with them
    trimmer = HeapTrimmer()
    for module, names in names_by_module(model).items():
        if not isinstance(module, QuantizedLayer) and not is_quantized_experts(module):
            continue
        if any(name.startswith(f"{block}.") for name in names for block in blocks):
            continue
        if is_quantized_experts(module):
            blocks += names
        reason = _why_not_float(module)
        if reason is not None:
            summary.skipped.update(dict.fromkeys(names, reason))
            continue
        summary.bytes_before += model_bytes(module)
        if isinstance(module, QuantizedLayer):
            replacement = module.to_float(dtype).train(module.training)
            swap_module(model, names, replacement)
        else:
            replacement = dequantize_experts(module, lambda layer: layer.to_float(dtype))
        summary.bytes_after += model_bytes(replacement)
        summary.converted += names
        trimmer.layer_done()
    trimmer.done()
    if not any(isinstance(module, QuantizedLayer) for module in model.modules()):
        for module in model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "_is_quantized", False):  # set by mark_hf_quantized
                config._is_quantized = False
    summary.model_bytes_after = model_bytes(model)
    return summary


def _holds_quantized(checkpoint_dtypes: Mapping[str, torch.dtype], name: str) -> bool:
    """Whether a checkpoint (its keys and their dtypes) holds layer ``name`` quantized (int8
    weights or packed bits)."""
    return (f"{name}.weight_packed" in checkpoint_dtypes
            or checkpoint_dtypes.get(f"{name}.weight") == torch.int8)


def swap_for_checkpoint(model: nn.Module, checkpoint_dtypes: Mapping[str, torch.dtype], config,
                        summary: QuantizeSummary) -> list[tuple[str, nn.Module, torch.device]]:
    """load_quantized_'s first step, also the Hugging Face quantizer's (effgen_kernels.hf):
    swap each layer the checkpoint (its keys and their dtypes) holds quantized for an empty
    layer of ``config``'s format, made on the meta device for the checkpoint's tensors to be
    assigned to it. Returns (name, layer, the float layer's device) for each layer swapped;
    ``summary`` lists them, and the layers the checkpoint holds in float as skipped."""
    swapped = []
    for names, target in _targets(model, None, summary):
        is_linear = isinstance(target, nn.Linear)
        if not _holds_quantized(checkpoint_dtypes, names[0] if is_linear else f"{names[0]}.{UP_LAYERS}.0"):
            summary.skipped.update(dict.fromkeys(names, "the checkpoint holds it in float"))
            continue
        device = (target.weight if is_linear else fused_weights(target)[0]).device
        # Made on the meta device, not the CPU, where an empty int8 layer packs its zero
        # weights only for the load to replace them (over half of a 4096 x 11008 layer's load).
        build = torch.device("meta") if device.type == "cpu" else device

        def empty(linear: nn.Linear, name: str, build=build) -> nn.Module:
            layer = config.empty(linear, build)
            if isinstance(layer, Int8Linear) and f"{name}.input_smoothing" in checkpoint_dtypes:
                # quantized with SmoothQuant: without the inverse factors its weights are wrong
                layer.input_smoothing = torch.empty(linear.in_features, dtype=torch.float32, device=build)
            return layer

        summary.bytes_before += model_bytes(target)
        replacement = _convert(target, names[0], empty)
        swap_module(model, names, replacement)
        swapped.append((names[0], replacement, device))
        summary.converted += names
    return swapped


def unloaded_buffers(name: str, layer: nn.Module) -> list[str]:
    """The buffers of a layer swapped in by swap_for_checkpoint that no checkpoint tensor
    replaced (still on the meta device): a quantized layer cannot run without them."""
    return [f"{name}.{key}" for key, buffer in layer.named_buffers() if buffer.is_meta]


def load_quantized_(model: nn.Module, state_dict: Mapping[str, torch.Tensor], config,
                    strict: bool = True) -> QuantizeSummary:
    """Load a checkpoint of a quantized model without quantizing anything: ``model`` is the
    float model as it was before ``quantize_(model, config)`` (built from its configuration;
    its weights need not be loaded, and may be on the meta device, e.g. made under
    ``accelerate.init_empty_weights()``), ``state_dict`` what the quantized model saved.

    Each layer the checkpoint holds quantized is swapped for an empty layer of ``config``'s
    format (layers it holds in float stay, listed in ``summary.skipped``), then the whole
    state_dict loads (``strict`` as in load_state_dict; assigned, not copied, where the model
    holds meta tensors). The quantized layers take the checkpoint's tensors themselves where
    they can (no copy; on the CPU, int8 weights are packed from them), then move to their
    float layer's device. A group size or a ternary scale that differs from the
    checkpoint's is refused by the load; SmoothQuant's smoothing comes with the checkpoint."""
    check_config(config)
    summary = QuantizeSummary(config, action="load_quantized_", model_bytes_before=model_bytes(model))
    on_meta = any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    swapped = swap_for_checkpoint(model, {key: tensor.dtype for key, tensor in state_dict.items()}, config, summary)
    model.load_state_dict(state_dict, strict=strict, assign=on_meta)  # quantized layers on meta assign anyway
    for name, layer, device in swapped:
        unloaded = unloaded_buffers(name, layer)
        if unloaded:  # passed over by strict=False
            raise ValueError(f"the checkpoint lacks {unloaded}: a quantized layer cannot run without them")
        if device.type != "meta":  # a skeleton's layers stay where the checkpoint's tensors are
            layer.to(device)
    if swapped:
        mark_hf_quantized(model)
    summary.bytes_after = sum(model_bytes(layer) for _, layer, _ in swapped)
    summary.model_bytes_after = model_bytes(model)
    return summary


def prepare(model: nn.Module, config, filter_fn: Callable[[nn.Module, str], bool] | None = None) -> QuantizeSummary:
    """Quantization-aware training: swap nn.Linear layers (and Conv1D, as quantize_ does)
    for the trainable form of an Int8Config (fake-quant W8A8), BinaryConfig or
    TernaryConfig (latent float weights, straight-through estimator). A fused-experts block
    gets a trainable layer per expert and projection, which its experts dispatch runs and
    convert() then swaps for the quantized layers quantize_ would have made."""
    check_config(config)
    if not hasattr(config, "trainable"):
        raise TypeError(f"{type(config).__name__} has no trainable form; use Int8Config, BinaryConfig or "
                        "TernaryConfig")
    return _replace_linears(model, config, lambda linear, name: config.trainable(linear), filter_fn, "prepare")


def convert(model: nn.Module) -> list[str]:
    """After training: swap every trainable int8 / binary / ternary layer for its inference
    module (identical outputs in eval mode). Returns the names converted."""
    converted = []
    trimmer = HeapTrimmer()
    for module, names in names_by_module(model).items():
        if isinstance(module, _TRAINABLE):
            swap_module(model, names, module.to_inference())
            converted += names
            trimmer.layer_done()
    trimmer.done()
    if converted:
        mark_hf_quantized(model)
    return converted


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable, run: Callable[[nn.Module, object], object] | None = None,
                          ) -> dict[str, torch.Tensor]:
    """Largest |input| per input feature of every nn.Linear (and Hugging Face Conv1D) of
    ``model`` over ``batches``.

    ``run(model, batch)`` feeds one batch (default: ``model(batch)``). The result, keyed by
    layer name, is what Int8Config(activation_absmax=...) needs for SmoothQuant."""
    absmax: dict[str, torch.Tensor] = {}

    def observe(name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            batch_max = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            absmax[name] = torch.maximum(absmax[name], batch_max) if name in absmax else batch_max
        return hook

    handles = [module.register_forward_hook(observe(name)) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) or _hf_conv1d(module)]
    try:
        for batch in batches:
            model(batch) if run is None else run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return absmax
