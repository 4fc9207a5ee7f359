"""What the quantized inference layers share: scales that stay float32, an input check."""

import torch
from torch import nn


class QuantizedLayer(nn.Module):
    """Base of the quantized inference layers (which set ``in_features``).

    Keeps the buffers named in ``_float32_buffers`` in float32 through dtype casts
    (``model.half()``, ``.bfloat16()``, ``.to(dtype)``): the kernels take fp32 scales, and a
    scale rounded to bf16 would keep 8 of its 24 bits. Other buffers (the bias) follow the
    cast as nn.Linear's do; device moves apply to every buffer."""

    _float32_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers[name] for name in self._float32_buffers if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            if self._buffers[name].dtype != torch.float32:  # cast by fn: take the device, not the rounding
                self._buffers[name] = original.to(self._buffers[name].device)
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        """The ops cannot tell K from packed weights padded to whole bytes or blocks (a 63-wide
        input passes as a 64-wide layer's): the layer checks it, as nn.Linear would."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{type(self).__name__}: x must have in_features = {self.in_features} values in its "
                             f"last dimension, got shape {tuple(x.shape)}")
