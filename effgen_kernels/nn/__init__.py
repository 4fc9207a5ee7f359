"""Drop-in replacements for nn.Linear backed by the effgen kernels."""

from .int8 import Int8Linear, Int8WeightOnlyLinear

__all__ = ["Int8Linear", "Int8WeightOnlyLinear"]
