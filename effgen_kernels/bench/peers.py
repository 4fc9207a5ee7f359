"""Peer implementations the benchmarks compare against."""

import warnings

import torch


def fbgemm_dynamic_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """torch.ao's dynamic int8 Linear (fbgemm, per-channel weights) for the same weights."""
    clone = torch.nn.Linear(linear.in_features, linear.out_features)
    clone.load_state_dict(linear.state_dict())
    clone.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao quantized tensors are deprecated
        return torch.ao.nn.quantized.dynamic.Linear.from_float(clone)
