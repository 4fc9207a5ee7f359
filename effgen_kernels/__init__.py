"""effgen-kernels: int8 / 1-bit kernels and training tools for generative models."""

from importlib.metadata import PackageNotFoundError, version

import torch

from . import (  # noqa: F401
    _C,  # noqa: F401  (loads the extension: registers torch.ops.effgen.*)
    ops,
    reference,
)

try:
    __version__ = version("effgen-kernels")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["ops", "reference", "__version__", "torch"]
