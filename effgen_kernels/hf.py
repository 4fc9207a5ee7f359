"""effgen's formats as a Hugging Face transformers ``quantization_config``.

Importing this module registers the quantization method ``"effgen"`` with transformers::

    import effgen_kernels as ek
    from effgen_kernels.hf import EffgenConfig

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=EffgenConfig(ek.Int8WeightOnlyConfig()))
    model.save_pretrained(out)  # int8 weights; config.json names the format
    model = AutoModelForCausalLM.from_pretrained(out)  # with effgen_kernels.hf imported: quantizes nothing
    model.dequantize()  # float again (ek.dequantize_), and saves as a float model

    ek.quantize_(model, config)  # or by hand, SmoothQuant too: then
    set_quantization_config(model, config)  # and model.save_pretrained(out) as above

Quantizing as the model loads converts each layer as soon as its float tensors are in (the
float model is never whole in memory); a checkpoint saved quantized loads straight into
empty quantized layers. Needs transformers (the ``models`` extra) and safetensors
checkpoints.
"""

from __future__ import annotations

import dataclasses

import torch
from safetensors import safe_open
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    ConversionOps,
    WeightConverter,
    WeightRenaming,
    dot_natural_key,
    rename_source_key,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.pytorch_utils import Conv1D
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.quantizers_utils import should_convert_module
from transformers.utils.quantization_config import QuantizationConfigMixin

from ._heap import HeapTrimmer
from ._modules import swap_module
from .nn._quantized import finish_hf_loading, hf_loading
from .quantize import (
    BinaryConfig,
    Int8Config,
    Int8WeightOnlyConfig,
    QuantizeOnLoad,
    QuantizeSummary,
    TernaryConfig,
    check_config,
    dequantize_,
    mark_hf_quantized,
    model_bytes,
    swap_for_checkpoint,
    unloaded_buffers,
)

QUANT_METHOD = "effgen"
# The names config.json gives the formats.
FORMATS = {"int8": Int8Config, "int8_weight_only": Int8WeightOnlyConfig, "binary": BinaryConfig,
           "ternary": TernaryConfig}


@register_quantization_config(QUANT_METHOD)
class EffgenConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of ``from_pretrained``: ``EffgenConfig(config)`` with one of
    effgen's configs (Int8Config(), Int8WeightOnlyConfig(group_size=128), BinaryConfig(),
    TernaryConfig()), or as config.json holds it, ``EffgenConfig("int8_weight_only",
    {"group_size": 128})``.

    ``modules_to_not_convert`` names layers to leave float, as transformers' quantizers take
    them (a name, a prefix ending at a module, a regex, or a suffix); None leaves the output
    embeddings (the LM head) and the last layer float, as they do. Layers tied to another
    module's weights always stay float."""

    def __init__(self, format, options: dict | None = None, modules_to_not_convert: list[str] | None = None,
                 quant_method: str = QUANT_METHOD) -> None:
        if quant_method != QUANT_METHOD:
            raise ValueError(f"quant_method must be {QUANT_METHOD!r}, got {quant_method!r}")
        if not isinstance(format, str):
            format, options = _format_and_options(format, options)
        if format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
        self.quant_method = QUANT_METHOD
        self.format = format
        self.options = dict(options or {})
        self.modules_to_not_convert = modules_to_not_convert
        self.effgen_config()  # the options' errors here, not at load time

    def effgen_config(self):
        """The effgen config this one names (Int8Config(), ...)."""
        return FORMATS[self.format](**self.options)


def set_quantization_config(model, config) -> None:
    """Have a Hugging Face model quantized by hand (quantize_, convert, load_quantized_ with
    ``config``) save as from_pretrained with EffgenConfig(config) would have it save: its
    config names the format, and its quantizer is ours. This replaces the quantizer of a
    model transformers dequantized as it loaded it (a GGUF file's: SmolLM2's), which
    refuses to save."""
    quantization_config = EffgenConfig(config) if not isinstance(config, EffgenConfig) else config
    model.config.quantization_config = quantization_config
    model.hf_quantizer = EffgenHfQuantizer(quantization_config, pre_quantized=True)
    model.is_quantized = True


def _format_and_options(config, options: dict | None) -> tuple[str, dict]:
    check_config(config, "format")
    if options:
        raise ValueError("options come with a format's name; an effgen config holds its own")
    if getattr(config, "activation_absmax", None) is not None:
        raise ValueError("SmoothQuant needs calibration on the loaded model: quantize_ it with Int8Config("
                         "activation_absmax=...) after from_pretrained and save_pretrained it; from_pretrained "
                         "then loads the checkpoint")
    name = next(name for name, cls in FORMATS.items() if type(config) is cls)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "activation_absmax"}
    return name, fields


def _checkpoint_dtypes(checkpoint_files: list[str] | None) -> dict[str, torch.dtype]:
    """Every key of a safetensors checkpoint with its dtype, read from the files' headers."""
    if not checkpoint_files or not all(str(f).endswith(".safetensors") for f in checkpoint_files):
        raise ValueError(f"an effgen-quantized checkpoint loads from safetensors files, got {checkpoint_files}")
    dtypes = {}
    for file in checkpoint_files:
        with safe_open(file, "pt") as f:
            dtypes.update({key: f.get_slice(key).get_dtype() for key in f.keys()})
    names = {"I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64, "F32": torch.float32,
             "F16": torch.float16, "BF16": torch.bfloat16}
    return {key: names.get(dtype) for key, dtype in dtypes.items()}


def _model_names(model, keys) -> dict[str, str]:
    """The checkpoint key of each of the model's names, as from_pretrained maps them: a
    checkpoint of the model with or without its head (the base model's prefix), or in the
    layout the model was first published in (Mixtral's "block_sparse_moe" for "mlp")."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    modules = {name for name, _ in model.named_modules()}
    prefix = model.base_model_prefix

    def own_name(key: str) -> str:
        # by module, not by key as transformers decides: a quantized layer's keys are not
        # the float model's, its module is. A name of the model stays (the loader keeps it
        # too: Laguna's renaming of "mlp.shared_expert." would make "shared_experts..")
        if key.rpartition(".")[0] in modules:
            return key
        name = rename_source_key(key, renamings, converters)[0]
        module = name.rpartition(".")[0]
        if module in modules or not prefix:
            return name
        stripped = name.removeprefix(f"{prefix}.")
        if stripped != name and stripped.rpartition(".")[0] in modules:
            return stripped
        return f"{prefix}.{name}" if f"{prefix}.{module}" in modules else name

    return {own_name(key): key for key in sorted(keys, key=dot_natural_key)}


def _checkpoint_group_sizes(checkpoint_files: list[str], keys: set[str]) -> dict[str, int]:
    sizes = {}
    for file in checkpoint_files:
        with safe_open(file, "pt") as f:
            sizes.update({key: f.get_tensor(key).item() for key in f.keys() if key in keys})
    return sizes


def _untie(model, layers: list[str]) -> None:
    """Keep the loader from tying a quantized layer to another module's weight: quantize_
    converts a tied LM head (the embeddings stay float), whose checkpoint then holds its
    own tensors, while the model's config still says tie_word_embeddings (which T5's
    forward also reads, to rescale: it stays as it is)."""
    def swapped(name: str) -> bool:
        return any(name.startswith(f"{layer}.") for layer in layers)

    for prefix, module in model.named_modules():
        if isinstance(module, PreTrainedModel):
            at = f"{prefix}." if prefix else ""
            module.all_tied_weights_keys = {
                target: source for target, source in module.all_tied_weights_keys.items()
                if not swapped(at + target) and not swapped(at + source)}


class _QuantizeAsLoaded(ConversionOps):
    """The loader's op on the float tensors of the layers to quantize: hands them to
    QuantizeOnLoad, which converts each layer once it has its tensors and swaps it in."""

    def __init__(self, on_load: QuantizeOnLoad) -> None:
        self.on_load = on_load

    def convert(self, input_dict: dict, model: nn.Module, missing_keys: set[str] | None = None, **kwargs) -> dict:
        left = {}
        converted = len(self.on_load.converted)
        with hf_loading():  # the layers made here keep the canonical layout until finish_hf_loading
            for key, value in input_dict.items():
                if not self.on_load.take(key, value[0] if isinstance(value, list) else value):
                    left[key] = value  # the loader loads it into the float layer
                    continue
                if missing_keys is not None:
                    missing_keys.discard(key)
                module, _, name = key.rpartition(".")
                held = model.get_submodule(module)._parameters.get(name)
                if held is not None:  # in a layer waiting for its other tensors, or left float (NaN)
                    held._is_hf_initialized = True  # as the loader marks what it assigns: no init
        for layer in self.on_load.converted[converted:]:
            _mark_loaded(layer)
        return left


def _mark_loaded(layer: nn.Module) -> None:
    """Keep the model's weight init off a layer whose tensors are loaded, as the loader marks
    those it assigns: init functions skip marked tensors, and the model's init of a parent
    module reads some layers' weights by name (GPT-2's c_proj; init.normal_ would overwrite
    int8 codes)."""
    layer._is_hf_initialized = True  # as swapped in for a checkpoint (see _swap_for_checkpoint)
    for tensor in [*layer.parameters(), *layer.buffers()]:
        tensor._is_hf_initialized = True


def _conv1d_again(model: PreTrainedModel) -> None:
    """Each nn.Linear of ``model`` where its architecture has a Conv1D (weight [in, out]), as
    quantize_ then dequantize_ leave GPT-2's layers: the Conv1D of its weight again."""
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    for name, module in skeleton.named_modules():
        linear = model.get_submodule(name) if isinstance(module, Conv1D) else None
        if type(linear) is nn.Linear:
            conv1d = Conv1D(linear.out_features, linear.in_features)
            conv1d.weight = nn.Parameter(linear.weight.detach().t().contiguous())
            conv1d.bias = linear.bias
            swap_module(model, [name], conv1d)


@register_quantizer(QUANT_METHOD)
class EffgenHfQuantizer(HfQuantizer):
    """Runs EffgenConfig in from_pretrained: each layer quantize_ would convert is quantized
    as soon as the loader has its float tensors (QuantizeOnLoad), or, for a checkpoint saved
    quantized, empty quantized layers are swapped in before its tensors load (transformers'
    loader assigns each tensor to its layer). ``model.hf_quantizer.summary``
    is the QuantizeSummary of what it converted and left float."""

    requires_calibration = False
    quantization_config: EffgenConfig

    def validate_environment(self, *args, device_map=None, **kwargs) -> None:
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("effgen's quantized layers cannot be offloaded to disk: give device_map no 'disk'")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs) -> None:
        if self.pre_quantized:
            self._swap_for_checkpoint(model, checkpoint_files)
        else:
            self._on_load = QuantizeOnLoad(model, self.quantization_config.effgen_config(), self._filter(model))

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        return not self.pre_quantized and self._on_load.wants(param_name)

    def get_quantize_ops(self) -> ConversionOps:
        return _QuantizeAsLoaded(self._on_load)

    def _swap_for_checkpoint(self, model, checkpoint_files: list[str] | None) -> None:
        config = self.quantization_config.effgen_config()
        files_dtypes = _checkpoint_dtypes(checkpoint_files)
        file_keys = _model_names(model, files_dtypes)
        dtypes = {name: files_dtypes[key] for name, key in file_keys.items()}
        self.summary = QuantizeSummary(config, action="from_pretrained", model_bytes_before=model_bytes(model))
        with hf_loading():
            self._swapped = swap_for_checkpoint(model, dtypes, config, self.summary)
        for name, layer, _ in self._swapped:
            # The model's weight init of a fused-experts block reads its 3-D weights, which a
            # quantized block does not have: it loads from the checkpoint and needs no init.
            layer._is_hf_initialized = True
            lacking = sorted(f"{name}.{key}" for key in layer.state_dict() if f"{name}.{key}" not in dtypes)
            if lacking:
                raise ValueError(f"the checkpoint lacks {lacking}: a quantized layer cannot run without them")
        _untie(model, [name for name, _, _ in self._swapped])
        self._check_group_sizes(checkpoint_files, file_keys, config)
        # Each layer's group size, checked above, is a state_dict entry but not a tensor the loader can assign.
        model._keys_to_ignore_on_load_unexpected = {*(model._keys_to_ignore_on_load_unexpected or ()),
                                                    r"\.group_size$"}

    def _check_group_sizes(self, checkpoint_files: list[str], file_keys: dict[str, str], config) -> None:
        """Each swapped layer's group size in the checkpoint must be the config's."""
        expected = getattr(config, "group_size", None)
        layers = {f"{name}.{sub}" if sub else name
                  for name, layer, _ in self._swapped for sub, _ in layer.named_modules()}
        keys = {key for name, key in file_keys.items()
                if name.endswith(".group_size") and name.removesuffix(".group_size") in layers}
        for key, size in _checkpoint_group_sizes(checkpoint_files, keys).items():
            if size != expected:
                raise ValueError(f"{key}: the checkpoint's weights are scaled in groups of {size}, the "
                                 f"quantization_config says {expected}")

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            trimmer = HeapTrimmer()  # each layer packs its codes and frees the canonical copy (see _heap)
            for layer in self._on_load.converted:
                finish_hf_loading(layer)
                trimmer.layer_done()
            trimmer.done()
            self.summary = self._on_load.finish()
            del self._on_load
            return model
        for name, layer, _ in self._swapped:
            unloaded = unloaded_buffers(name, layer)
            if unloaded:
                raise ValueError(f"the checkpoint did not fill {unloaded}")
            finish_hf_loading(layer)
        mark_hf_quantized(model)
        self.summary.bytes_after = sum(model_bytes(layer) for _, layer, _ in self._swapped)
        self.summary.model_bytes_after = model_bytes(model)
        del self._swapped
        return model

    def _filter(self, model):
        skips = self.get_modules_to_not_convert(model, self.quantization_config.modules_to_not_convert,
                                                model._keep_in_fp32_modules)
        # A layer sharing its weight with another module (an LM head tied to the embeddings)
        # stays float: the tie would give the quantized layer float weights again.
        tied = {*model.all_tied_weights_keys.keys(), *model.all_tied_weights_keys.values()}
        skips = [*skips, *(key.removesuffix(".weight") for key in tied)]
        return lambda module, name: should_convert_module(name, skips)

    def _dequantize(self, model, dtype=None):
        """model.dequantize(): dequantize_, then the model's Conv1D layers (GPT-2's) made
        Conv1D again, so that its save_pretrained writes what the float model's does."""
        self.summary = dequantize_(model, dtype)
        _conv1d_again(model)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False
