"""What the quantized inference layers share: scales that stay float32, a group size that
travels with the state_dict, an input check, the canonical layout while transformers loads."""

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

# Set by hf_loading(): layers made meanwhile start in the canonical layout (see _hf_loading).
_MADE_FOR_HF_LOADER = contextvars.ContextVar("effgen_made_for_hf_loader", default=False)


@contextlib.contextmanager
def hf_loading() -> Iterator[None]:
    """Quantized layers made inside (empty ones, from_float's) are made for transformers'
    loader: they keep the canonical layout, and build no derived data, until
    finish_hf_loading."""
    token = _MADE_FOR_HF_LOADER.set(True)
    try:
        yield
    finally:
        _MADE_FOR_HF_LOADER.reset(token)


def finish_hf_loading(layer: nn.Module) -> None:
    """After transformers' loader is done with ``layer`` (a quantized layer, or a block of
    them): each takes its device's layout and rebuilds what it derives."""
    for module in layer.modules():
        if isinstance(module, QuantizedLayer) and module.__dict__.pop("_hf_loading", False):
            module.rebuild_derived()


class QuantizedLayer(nn.Module):
    """Base of the quantized inference layers (which set ``in_features``).

    Keeps the buffers named in ``_float32_buffers`` in float32 through dtype casts
    (``model.half()``, ``.bfloat16()``, ``.to(dtype)``): the kernels take fp32 scales, and a
    scale rounded to bf16 would keep 8 of its 24 bits. Other buffers (the bias) follow the
    cast as nn.Linear's do; device moves apply to every buffer."""

    _float32_buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        if _MADE_FOR_HF_LOADER.get():
            self._hf_loading = True

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers[name] for name in self._float32_buffers if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            if self._buffers[name].dtype != torch.float32:  # cast by fn: take the device, not the rounding
                self._buffers[name] = original.to(self._buffers[name].device)
        return self

    # True while effgen_kernels.hf has transformers' loader fill the layer (or swap it in,
    # quantized as its float tensors load). That loader assigns every state_dict entry to a
    # parameter or buffer (the group size is neither: it leaves the state_dict then), and
    # afterwards replaces every non-persistent buffer with an empty tensor (the CPU's packed
    # int8 layout, the binary lookup tables: they are built by rebuild_derived once it is
    # done, in finish_hf_loading).
    _hf_loading = False

    # from_float builds its layer on the meta device and then sets every buffer: on the CPU,
    # zero weights written (and packed) only to be replaced took 73 ms of a 4096 x 11008 int8
    # layer's 165, and they are transients among the buffers that stay (see _heap.py). The
    # check catches a buffer that a change leaves unset.
    def _check_filled(self, device: torch.device) -> None:
        unset = [name for name, buffer in self.named_buffers() if buffer.is_meta]
        if device.type != "meta" and unset:
            raise RuntimeError(f"{type(self).__name__}.from_float left {unset} unset (a bug in effgen_kernels)")

    def rebuild_derived(self) -> None:
        """Rebuild what the layer derives from the tensors it saves (the CPU's packed int8
        layout, the binary lookup tables) after those were assigned to it."""

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 [out, in] weight the layer multiplies by (codes times scales), as an
        nn.Linear would hold it."""
        raise NotImplementedError

    def cannot_dequantize(self) -> str | None:
        """Why no nn.Linear computes what this layer does (None: one does)."""
        return None

    def to_float(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """The nn.Linear of dequantized_weight() and the bias, in ``dtype`` (default: the
        bias's, else float32), on the layer's device. Its weights are the quantized ones:
        what quantization rounded stays rounded (W8A8's activations are no longer quantized)."""
        reason = self.cannot_dequantize()
        if reason is not None:
            raise ValueError(f"{type(self).__name__} cannot become an nn.Linear: {reason}")
        bias = self._buffers["bias"]
        dtype = dtype or (bias.dtype if bias is not None else torch.float32)
        weight = self.dequantized_weight()
        linear = nn.Linear(self.in_features, weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight.to(dtype))
        if bias is not None:
            linear.bias = nn.Parameter(bias.to(dtype, copy=True))
        return linear

    # A per-group layer's state_dict also says its group size: the scales' shape gives only
    # the group count, which two sizes can share (576 columns make 5 groups of 120 or of
    # 128), and loading one as the other would scale most weights wrongly without a word.
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if getattr(self, "group_size", None) is not None and not self._hf_loading:
            destination[prefix + "group_size"] = torch.tensor(self.group_size)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if any(buffer.is_meta for buffer in self._buffers.values() if buffer is not None):
            # A layer on the meta device (load_quantized_ makes them there) takes the
            # checkpoint's tensors themselves: copying into meta tensors would do nothing.
            local_metadata = {**local_metadata, "assign_to_params_buffers": True}
        saved = state_dict.pop(prefix + "group_size", None)  # absent from per-channel and older checkpoints
        ours = getattr(self, "group_size", None)
        if saved is not None and saved.item() != ours:
            model = "per channel" if ours is None else f"in groups of {ours}"
            error_msgs.append(f"group_size mismatch for {prefix}group_size: the model scales its weights {model}, "
                              f"the checkpoint in groups of {saved.item()}.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_input(self, x: torch.Tensor) -> None:
        """The ops cannot tell K from packed weights padded to whole bytes or blocks (a 63-wide
        input passes as a 64-wide layer's): the layer checks it, as nn.Linear would."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{type(self).__name__}: x must have in_features = {self.in_features} values in its "
                             f"last dimension, got shape {tuple(x.shape)}")
