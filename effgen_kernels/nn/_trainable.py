"""What the trainable (quantization-aware) layers share."""

from torch import nn


def trainable_copy(cls, linear: nn.Linear, *options):
    """A ``cls`` layer (an nn.Linear subclass taking ``(in, out, bias, *options, device=,
    dtype=)``) that starts from a copy of ``linear``'s weight and bias."""
    module = cls(linear.in_features, linear.out_features, linear.bias is not None, *options,
                 device=linear.weight.device, dtype=linear.weight.dtype)
    module.load_state_dict(linear.state_dict())
    return module
