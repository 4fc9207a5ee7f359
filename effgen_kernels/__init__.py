"""effgen-kernels: int8 / 1-bit kernels and training tools for generative models."""

from importlib.metadata import PackageNotFoundError, version

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import (
    _C,  # noqa: F401  (loads the extension: registers torch.ops.effgen.*)
    distill,
    distributed,
    nn,
    ops,
    reference,
)
from .quantize import (
    BinaryConfig,
    Int8Config,
    Int8WeightOnlyConfig,
    QuantizeSummary,
    TernaryConfig,
    calibrate_activations,
    convert,
    dequantize_,
    load_quantized_,
    model_bytes,
    prepare,
    quantize_,
    quantized_draft,
)

try:
    __version__ = version("effgen-kernels")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["BinaryConfig", "Int8Config", "Int8WeightOnlyConfig", "QuantizeSummary", "TernaryConfig", "__version__",
           "calibrate_activations", "convert", "dequantize_", "distill", "distributed", "load_quantized_",
           "model_bytes", "nn", "ops", "prepare", "quantize_", "quantized_draft", "reference"]
