"""Peer implementations the benchmarks compare against."""

import warnings
from collections.abc import Callable

import torch

from .harness import with_env


def fbgemm_dynamic_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """torch.ao's dynamic int8 Linear (fbgemm, per-channel weights) for the same weights."""
    clone = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    clone.load_state_dict(linear.state_dict())
    clone.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    return fbgemm_from_float(clone)


def fbgemm_from_float(linear: torch.nn.Linear) -> torch.nn.Module:
    """torch.ao's conversion (quantize, prepack for fbgemm) of a Linear whose qconfig is set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantized tensors are deprecated
        return torch.ao.nn.quantized.dynamic.Linear.from_float(linear)


def resident_blocks_peer(device: torch.device, layer: str, fn: Callable[[], object]) -> dict[str, Callable[[], object]]:
    """On a GPU, the few-row layer call fn with as many blocks as the SMs hold at once, each
    taking its share of the channel tiles in turn (EFFGEN_CUDA_SKINNY_BLOCKS=resident; the
    default launches a block per tile: the row's ratio is what the default gains over it;
    benchmarks/skinny_blocks_study.py times more grids); nothing elsewhere."""
    if device.type != "cuda":
        return {}
    return {f"{layer}, blocks resident on the SMs": with_env("EFFGEN_CUDA_SKINNY_BLOCKS", "resident", fn)}
