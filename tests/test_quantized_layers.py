"""What every quantized linear layer does alike: dtype casts that keep the scales in float32,
whole-module pickling."""

import copy
import io

import pytest
import torch
from conftest import random_input
from test_quant import assert_same_bits

import effgen_kernels as ek

N, K = 37, 80  # N odd (a partial block of 16 channels), K a multiple of the group size 16


def smoothed_int8(linear):
    return ek.nn.Int8Linear.from_float(linear, activation_absmax=random_input((K,), seed=5).abs() + 0.1)


LAYERS = {
    "Int8Linear": ek.nn.Int8Linear.from_float,
    "Int8Linear SmoothQuant": smoothed_int8,
    "Int8WeightOnlyLinear": ek.nn.Int8WeightOnlyLinear.from_float,
    "Int8WeightOnlyLinear group 16": lambda linear: ek.nn.Int8WeightOnlyLinear.from_float(linear, group_size=16),
    "BinaryLinear": ek.nn.BinaryLinear.from_float,
    "BinaryLinear group 16": lambda linear: ek.nn.BinaryLinear.from_float(linear, group_size=16),
    "BinaryLinear XNOR": lambda linear: ek.nn.BinaryLinear.from_float(linear, binary_activations=True),
    "TernaryLinear": ek.nn.TernaryLinear.from_float,
    "TernaryLinear per tensor": lambda linear: ek.nn.TernaryLinear.from_float(linear, per_channel=False),
}


def layer(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return LAYERS[name](torch.nn.Linear(K, N))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LAYERS))
def test_dtype_casts_keep_the_scales_in_float32(name, dtype):
    original = layer(name)
    scales = {key: t.clone() for key, t in original.named_buffers() if key in original._float32_buffers}
    assert scales
    cast = copy.deepcopy(original).to(dtype)
    for key, value in scales.items():
        assert_same_bits(getattr(cast, key), value)
    assert cast.bias.dtype == dtype
    expected = copy.deepcopy(original)
    expected.bias = original.bias.to(dtype)  # what the cast must change, and nothing else
    x = random_input((3, K), dtype, scale=1.0)
    assert_same_bits(cast(x), expected(x))
    half_cast = copy.deepcopy(original).half() if dtype == torch.float16 else copy.deepcopy(original).bfloat16()
    assert_same_bits(half_cast(x), expected(x))


@pytest.mark.parametrize("name", list(LAYERS))
def test_whole_layers_pickle(name):
    original = torch.nn.Sequential(layer(name), torch.nn.ReLU())
    buffer = io.BytesIO()
    torch.save(original, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    x = random_input((2, K))
    assert_same_bits(loaded(x), original(x))
