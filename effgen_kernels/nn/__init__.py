"""Drop-in replacements for nn.Linear backed by the effgen kernels."""

from .binary import BinaryLinear, BinaryTrainLinear, TernaryLinear, TernaryTrainLinear
from .int8 import Int8Linear, Int8TrainLinear, Int8WeightOnlyLinear

__all__ = ["BinaryLinear", "BinaryTrainLinear", "Int8Linear", "Int8TrainLinear", "Int8WeightOnlyLinear",
           "TernaryLinear", "TernaryTrainLinear"]
