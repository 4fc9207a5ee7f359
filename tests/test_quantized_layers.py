"""What every quantized linear op and layer does alike: input and bias gradients (frozen
quantized weights), dtype casts that keep the scales in float32, whole-module pickling, the
group size kept in the state_dict, the input width checked, torch.export, calls from several
threads at once."""

import copy
import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from conftest import FLOAT_DTYPES, random_input, torch_threads
from test_quant import assert_same_bits
from torch.library import opcheck

import effgen_kernels as ek
from effgen_kernels import ops
from effgen_kernels import reference as ref
from effgen_kernels.demo import forwards_counted

N, K = 37, 80  # N odd (a partial block of 16 channels), K a multiple of the group size 16


def straight_through_binarized(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's activations sign(x) * mean |x| per row, with BinaryTrainLinear's clipped
    straight-through sign (gradient 1 where |x| <= 1, 0 elsewhere)."""
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    clipped = x * (x.abs() <= 1)
    return (clipped + (sign - clipped).detach()) * x.abs().mean(dim=-1, keepdim=True)


class Case(NamedTuple):
    """An op called as op(x, *weights, bias, *options), and its float twin in reference.py,
    twin(x, bias=bias), whose autograd defines the gradients (W8A8 passes them straight through
    its activation rounding, XNOR through straight_through_binarized)."""
    op: torch._ops.OpOverload
    weights: tuple
    options: tuple
    twin: Callable

    def __call__(self, x, bias):
        return self.op(x, *self.weights, bias, *self.options)


def weight_cases(device: str, n: int = N) -> dict[str, Case]:
    w = random_input((n, K), scale=0.1, seed=1).to(device)
    wq, w_scale = ops.quantize_per_channel(w, 0)
    gq, g_scale = ops.quantize_per_group(w, 16)
    bits, alpha = ref.binarize_weight(w)
    group_bits, group_alpha = ref.binarize_weight(w, 16)
    trits, t_scale = ref.ternarize_weight(w)
    tensor_trits, tensor_scale = ref.ternarize_weight(w, per_channel=False)
    e = torch.ops.effgen
    per_channel = partial(ref.int8_weight_only_linear, wq=wq, w_scale=w_scale)
    per_group = partial(ref.int8_weight_only_linear, wq=gq, w_scale=g_scale, group_size=16)
    binary = partial(ref.binary_linear, packed=bits, alpha=alpha)
    smoothing = (torch.rand(K, generator=torch.Generator().manual_seed(5)) * 2 + 0.25).to(device)

    def smoothed(x, bias):  # straight through the rounding of x * smoothing
        return per_channel(x * smoothing.to(x.dtype), bias=bias)

    cases = {
        "int8_dynamic_linear": Case(e.int8_dynamic_linear.default, (wq, w_scale), (), per_channel),
        "int8_dynamic_linear smoothing": Case(e.int8_dynamic_linear.default, (wq, w_scale), (smoothing,), smoothed),
        "int8_weight_only_linear": Case(e.int8_weight_only_linear.default, (wq, w_scale), (None,), per_channel),
        "int8_weight_only_linear group 16": Case(e.int8_weight_only_linear.default, (gq, g_scale), (16,), per_group),
        "binary_linear": Case(e.binary_linear.default, (bits, alpha), (None, None), binary),
        "binary_linear group 16": Case(e.binary_linear.default, (group_bits, group_alpha), (16, None),
                                       partial(ref.binary_linear, packed=group_bits, alpha=group_alpha, group_size=16)),
        "ternary_linear": Case(e.ternary_linear.default, (trits, t_scale), (None,),
                               partial(ref.ternary_linear, packed=trits, scale=t_scale)),
        "ternary_linear per tensor": Case(e.ternary_linear.default, (tensor_trits, tensor_scale), (None,),
                                          partial(ref.ternary_linear, packed=tensor_trits, scale=tensor_scale)),
        "xnor_linear": Case(e.xnor_linear.default, (bits, alpha), (),
                            lambda x, bias: binary(straight_through_binarized(x), bias=bias)),
    }
    if device == "cpu":  # the packed int8 layout and the lookup tables are CPU-only
        packed, sums = ops.int8_pack_weight(wq)
        group_packed, group_sums = ops.int8_pack_weight(gq, 16)
        cases.update({
            "int8_dynamic_linear_packed": Case(e.int8_dynamic_linear_packed.default, (packed, sums, w_scale), (),
                                               per_channel),
            "int8_dynamic_linear_packed smoothing": Case(e.int8_dynamic_linear_packed.default,
                                                         (packed, sums, w_scale), (smoothing,), smoothed),
            "int8_weight_only_linear_packed": Case(e.int8_weight_only_linear_packed.default, (packed, sums, w_scale),
                                                   (None,), per_channel),
            "int8_weight_only_linear_packed group 16": Case(e.int8_weight_only_linear_packed.default,
                                                            (group_packed, group_sums, g_scale), (16,), per_group),
            "binary_linear lookup table": Case(e.binary_linear.default, (bits, alpha),
                                               (None, ops.lut_tiles(bits, K, 1)), binary),
        })
    return cases


def assert_gradients_close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32: as close as two summation orders; 16-bit: our backward multiplies in x's dtype
    (weights rounded to it, as F.linear's backward does), the reference in fp32 rounded once,
    so within a few units of 2^-8 relative to the gradient's size."""
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    if ours.dtype == torch.float32:
        torch.testing.assert_close(ours, expected)
    else:
        error = (ours.float() - expected.float()).norm() / expected.float().norm()
        assert error < 2.0 ** -7, error


CPU_CASES = list(weight_cases("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CPU_CASES)
# 6 rows, and 200: batches some ops run on torch's GEMM over blocks of expanded weights, in
# threads that do not inherit the forward's dispatch state (addmm_out refused x there).
@pytest.mark.parametrize("rows", [3, 100])
def test_input_and_bias_gradients_match_the_reference(case, dtype, rows):
    case = weight_cases("cpu")[case]
    base = random_input((2, rows, 2 * K), dtype, scale=1.0, seed=2).requires_grad_()
    x = base[..., ::2]  # 3-D and non-contiguous; |x| on both sides of 1 (XNOR's clip)
    bias = random_input((N,), dtype, seed=3).requires_grad_()
    with torch_threads(2):
        y = case(x, bias)
    grad_y = random_input(y.shape, dtype, seed=4)
    grads = torch.autograd.grad(y, (x, bias), grad_y)
    expected = torch.autograd.grad(case.twin(x, bias=bias), (x, bias), grad_y)
    for ours, reference_grad in zip(grads, expected, strict=True):
        assert_gradients_close(ours, reference_grad)


@pytest.mark.parametrize("case", CPU_CASES)
def test_zero_output_features_give_empty_gradients(case):
    # N = 0: the bias gradient's rows were reshaped to [-1, 0], which is ambiguous.
    case = weight_cases("cpu", n=0)[case]
    x = random_input((2, 3, K), seed=2).requires_grad_()
    bias = torch.zeros(0, requires_grad=True)
    y = case(x, bias)
    assert y.shape == (2, 3, 0)
    grad_x, grad_bias = torch.autograd.grad(y, (x, bias), torch.ones_like(y))
    assert grad_x.shape == x.shape and not grad_x.any()
    assert grad_bias.shape == (0,)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [c for c in CPU_CASES if "packed" not in c and "lookup" not in c])
def test_cuda_input_and_bias_gradients_match_the_reference(case, dtype):
    case = weight_cases("cuda")[case]
    x = random_input((2, 3, K), dtype, scale=1.0, seed=2).cuda().requires_grad_()
    bias = random_input((N,), dtype, seed=3).cuda().requires_grad_()
    y = case(x, bias)
    grad_y = random_input(y.shape, dtype, seed=4).cuda()
    grads = torch.autograd.grad(y, (x, bias), grad_y)
    expected = torch.autograd.grad(case.twin(x, bias=bias), (x, bias), grad_y)
    for ours, reference_grad in zip(grads, expected, strict=True):
        assert_gradients_close(ours, reference_grad)


@pytest.mark.parametrize("case", ["int8_dynamic_linear_packed", "int8_weight_only_linear group 16", "binary_linear",
                                  "ternary_linear", "xnor_linear"])
def test_only_the_asked_gradients_are_computed(case):
    case = weight_cases("cpu")[case]
    x, bias = random_input((5, K), scale=1.0), random_input((N,))
    x_only = case(x.requires_grad_(), bias)
    (grad_x,) = torch.autograd.grad(x_only.sum(), (x,))
    torch.testing.assert_close(grad_x, torch.autograd.grad(case.twin(x, bias=bias).sum(), (x,))[0])
    bias_only = case(x.detach(), bias.requires_grad_())
    (grad_bias,) = torch.autograd.grad(bias_only.sum(), (bias,))
    assert_same_bits(grad_bias, torch.full((N,), 5.0))
    with torch.no_grad():  # nothing recorded: the inference path
        assert not case(x, bias).requires_grad


def test_static_int8_ops_give_the_bias_its_gradient():
    xq, x_scale = ops.quantize_per_token(random_input((5, K)))
    wq, w_scale = ops.quantize_per_channel(random_input((N, K)), 0)
    packed, sums = ops.int8_pack_weight(wq)
    grad_y = random_input((5, N))
    for run in (lambda bias: ops.int8_linear(xq, x_scale, wq, w_scale, bias),
                lambda bias: ops.int8_linear_packed(xq, x_scale, packed, sums, w_scale, bias)):
        bias = random_input((N,)).requires_grad_()
        torch.testing.assert_close(torch.autograd.grad(run(bias), (bias,), grad_y)[0], grad_y.sum(0))
    opcheck(torch.ops.effgen.int8_linear_packed.default, (xq, x_scale, packed, sums, w_scale, bias))
    with pytest.raises(RuntimeError, match="int8_linear_packed: x_scale takes no gradient"):
        ops.int8_linear_packed(xq, x_scale.requires_grad_(), packed, sums, w_scale)


def test_scales_asking_for_a_gradient_are_refused_by_name():
    x = random_input((3, K)).requires_grad_()
    bits, alpha = ref.binarize_weight(random_input((N, K)))
    wq, w_scale = ops.quantize_per_channel(random_input((N, K)), 0)
    with pytest.raises(RuntimeError, match="binary_linear: alpha takes no gradient"):
        ops.binary_linear(x, bits, alpha.requires_grad_())
    with pytest.raises(RuntimeError, match="int8_weight_only_linear: w_scale takes no gradient"):
        ops.int8_weight_only_linear(x.detach(), wq, w_scale.requires_grad_())
    with pytest.raises(RuntimeError, match="int8_dynamic_linear: smoothing takes no gradient"):
        ops.int8_dynamic_linear(x, wq, w_scale.detach(), None, torch.ones(K, requires_grad=True))
    with torch.no_grad():  # nothing to differentiate: runs
        ops.int8_weight_only_linear(x, wq, w_scale)


@pytest.mark.parametrize("case", CPU_CASES)
def test_opcheck_with_gradients(case):
    # autograd registration, and AOT dispatch of the backward, with x and bias asking for gradients
    case = weight_cases("cpu")[case]
    x, bias = random_input((4, K), scale=1.0).requires_grad_(), random_input((N,)).requires_grad_()
    opcheck(case.op, (x, *case.weights, bias, *case.options))


# ---------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("cls", [ek.nn.Int8Linear, ek.nn.Int8WeightOnlyLinear, ek.nn.BinaryLinear,
                                 ek.nn.TernaryLinear])
def test_a_new_layer_keeps_float32_scales_under_another_default_dtype(cls):
    # transformers builds a bf16 model, and the quantized layers it loads into, under a bf16 default
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        new = cls(K, N)
    finally:
        torch.set_default_dtype(default)
    scales = {key: t.dtype for key, t in new.named_buffers() if key in new._float32_buffers}
    assert scales and set(scales.values()) == {torch.float32}
    assert new.bias.dtype == torch.bfloat16


@pytest.mark.parametrize("name", list(LAYERS))
def test_an_input_of_another_width_is_refused_by_name(name):
    # K +- 1 fits the same packed bytes and blocks: only the layer knows its in_features
    for width in (K - 1, K + 1):
        with pytest.raises(ValueError, match=f"x must have in_features = {K} values in its last dimension, "
                                             f"got shape \\(2, 3, {width}\\)"):
            layer(name)(random_input((2, 3, width)))


@pytest.mark.parametrize("name", list(LAYERS))
def test_whole_layers_pickle(name):
    original = torch.nn.Sequential(layer(name), torch.nn.ReLU())
    buffer = io.BytesIO()
    torch.save(original, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    x = random_input((2, K))
    assert_same_bits(loaded(x), original(x))


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_export_with_a_dynamic_batch(name):
    model = torch.nn.Sequential(layer(name), torch.nn.GELU())
    # strict=False, torch's default from 2.8 on: strict export (2.6-2.7's default) traces with
    # dynamo, which in a process that exported eight models sharing Sequential.forward stops
    # at its cache limit.
    exported = torch.export.export(model, (random_input((5, K)),), dynamic_shapes=({0: torch.export.Dim("rows")},),
                                   strict=False)
    for rows in (1, 17):
        x = random_input((rows, K), seed=rows)
        assert_same_bits(exported.module()(x), model(x))


@pytest.mark.parametrize("name", list(LAYERS))
def test_threads_sharing_a_layer_get_what_one_thread_gets(name):
    # A server calls one model from several threads: each call's results must be its own
    # (per-thread scratch in the kernels, no state written by forward).
    shared = layer(name)
    inputs = [random_input((rows, K), dtype, seed=rows) for rows in (1, 17, 64) for dtype in FLOAT_DTYPES]
    with torch.no_grad():
        expected = [shared(x) for x in inputs]
    mismatches = []

    def serve() -> None:
        for _ in range(5):
            with torch.no_grad():
                mismatches.extend(x.shape for x, e in zip(inputs, expected, strict=True)
                                  if not torch.equal(shared(x), e))

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads) and not mismatches


# Two group sizes each that cut 576 columns into as many groups (5 and 6), so the scales
# have the same shape either way.
SAME_GROUP_COUNT = {ek.nn.Int8WeightOnlyLinear: (120, 128), ek.nn.BinaryLinear: (96, 112)}


@pytest.mark.parametrize("layer_cls", list(SAME_GROUP_COUNT), ids=lambda cls: cls.__name__)
def test_state_dicts_carry_the_group_size_and_refuse_another(layer_cls):
    saved_size, other_size = SAME_GROUP_COUNT[layer_cls]
    linear = torch.nn.Linear(576, 20)
    saved = layer_cls.from_float(linear, group_size=saved_size).state_dict()
    assert saved["group_size"].item() == saved_size and "group_size" not in layer_cls(576, 20).state_dict()
    other = layer_cls(576, 20, group_size=other_size)
    assert len(other.state_dict()) == len(saved) and all(
        other.state_dict()[key].shape == value.shape for key, value in saved.items())
    with pytest.raises(RuntimeError, match=f"group_size mismatch for group_size: the model scales its weights in "
                                           f"groups of {other_size}, the checkpoint in groups of {saved_size}"):
        other.load_state_dict(saved)
    with pytest.raises(RuntimeError, match="the model scales its weights per channel, the checkpoint in groups"):
        layer_cls(576, 20).load_state_dict(saved, strict=False)  # not strict: the scales' shape differs too
    older = {key: value for key, value in saved.items() if key != "group_size"}  # written before the key existed
    loaded = layer_cls(576, 20, group_size=saved_size)
    loaded.load_state_dict(older)
    x = random_input((3, 576))
    assert_same_bits(loaded(x), layer_cls.from_float(linear, group_size=saved_size)(x))


TRAINABLE = {
    "Int8TrainLinear": lambda linear: ek.nn.Int8TrainLinear.from_float(linear),
    "BinaryTrainLinear": lambda linear: ek.nn.BinaryTrainLinear.from_float(linear),
    "BinaryTrainLinear group 16": lambda linear: ek.nn.BinaryTrainLinear.from_float(linear, group_size=16),
    "BinaryTrainLinear XNOR": lambda linear: ek.nn.BinaryTrainLinear.from_float(linear, binary_activations=True),
    "TernaryTrainLinear": lambda linear: ek.nn.TernaryTrainLinear.from_float(linear),
    "TernaryTrainLinear per tensor": lambda linear: ek.nn.TernaryTrainLinear.from_float(linear, per_channel=False),
}


@pytest.mark.parametrize("name", list(TRAINABLE))
def test_trainable_layers_in_eval_follow_every_change_to_their_weights(name):
    torch.manual_seed(0)
    trainable = TRAINABLE[name](torch.nn.Linear(K, N)).eval()
    x = random_input((3, K), scale=1.0)
    before = trainable(x)
    trainable.weight.data.mul_(-1)  # through .data, as an EMA update does: no version bump a cache could see
    after = trainable(x)
    assert_same_bits(after, trainable.to_inference()(x))
    assert not torch.equal(after, before)


@pytest.mark.parametrize("name", list(TRAINABLE))
def test_inference_layers_pass_the_input_gradients_of_their_training_forms(name):
    # The trainable layer's straight-through estimators (nn/binary.py, nn/int8.py), in
    # training mode, against the packed layer it converts to: the same input gradients.
    torch.manual_seed(0)
    trainable = TRAINABLE[name](torch.nn.Linear(K, N))
    inference = trainable.to_inference()
    x = random_input((5, K), scale=1.0, seed=6).requires_grad_()
    grad_y = random_input((5, N), seed=7)
    expected = torch.autograd.grad(trainable(x), (x, trainable.bias), grad_y)
    ours = torch.autograd.grad(inference(x), (x,), grad_y)[0]
    torch.testing.assert_close(ours, expected[0])
    inference.bias.requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(inference(x), (inference.bias,), grad_y)[0], expected[1])


@pytest.mark.parametrize("name", ["Int8Linear", "Int8WeightOnlyLinear group 16", "BinaryLinear", "BinaryLinear XNOR",
                                  "TernaryLinear"])
def test_a_frozen_quantized_layer_trains_the_adapter_before_it_compiled(name):
    # An adapter in front of a frozen quantized layer, as in QLoRA: torch.compile traces the
    # backward through the C++ autograd, with the same gradients as eager.
    adapter = torch.nn.Linear(K, K)
    model = torch.nn.Sequential(adapter, layer(name))
    x, target = random_input((6, K), scale=0.3, seed=8), random_input((6, N), seed=9)

    def adapter_grads(run):
        adapter.zero_grad()
        torch.nn.functional.mse_loss(run(x), target).backward()
        return [p.grad.clone() for p in adapter.parameters()]

    eager = adapter_grads(model)
    assert all(g.abs().sum() > 0 for g in eager)
    torch._dynamo.reset()  # nn.Sequential.forward's graphs from other tests count against the recompile limit
    compiled = adapter_grads(torch.compile(model, fullgraph=True, backend="aot_eager"))
    for ours, expected in zip(compiled, eager, strict=True):
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.BinaryConfig(), ek.TernaryConfig()])
def test_quantize_skips_layers_the_kernels_cannot_take_and_converts_the_rest(config):
    model = torch.nn.Sequential(torch.nn.Linear(K, N).double(), torch.nn.Linear(N, 8).half(), torch.nn.Linear(8, 4))
    summary = ek.quantize_(model, config)
    assert summary.skipped == {"0": "weight dtype torch.float64 (the kernels take float32, bfloat16 and float16)"}
    assert summary.converted == ["1", "2"] and type(model[0]) is torch.nn.Linear



def test_model_bytes_counts_memory_two_tensors_share_once():
    # Parameters and buffers that are distinct tensors over one storage (a weight tied by
    # wrapping the other's data, as some checkpoints load) hold its bytes once.
    first, second = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8, bias=False)
    second.weight = torch.nn.Parameter(first.weight.data)
    model = torch.nn.Sequential(first, second)
    model.register_buffer("scale", torch.ones(3))
    assert second.weight is not first.weight
    assert ek.model_bytes(model) == (8 * 16 + 8 + 3) * 4
    second.weight = torch.nn.Parameter(first.weight.data.clone())
    assert ek.model_bytes(model) == (2 * 8 * 16 + 8 + 3) * 4
    with torch.device("meta"):  # a skeleton: tensors without addresses, a tied weight still once
        skeleton = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(16, 8, bias=False))
    skeleton[1].weight = skeleton[0].weight
    assert ek.model_bytes(skeleton) == (8 * 16 + 8) * 4


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.BinaryConfig(), ek.TernaryConfig()])
def test_a_shared_layer_is_converted_once_and_swapped_in_at_every_place(config):
    shared = torch.nn.Linear(K, K)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    x = random_input((3, K))
    layer = config.convert(shared)
    expected = layer(torch.relu(layer(x)))
    summary = ek.quantize_(model, config)
    assert summary.converted == ["0", "2"] and model[0] is model[2] and type(model[0]) is type(layer)
    assert summary.bytes_before == (K * K + K) * 4  # the module's parameters, counted once
    assert summary.model_bytes_before == (K * K + K) * 4 and summary.model_bytes_after == ek.model_bytes(model)
    assert_same_bits(model(x), expected)
    if hasattr(config, "trainable"):  # quantization-aware training's two swaps
        model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
        assert ek.prepare(model, config).converted == ["0", "2"] and model[0] is model[2]
        assert ek.convert(model) == ["0", "2"] and model[0] is model[2] and type(model[0]) is type(layer)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    summary = ek.quantize_(model, config, filter_fn=lambda module, name: name != "2")
    assert summary.converted == [] and summary.skipped == {"0": "the same module as 2, which filter_fn leaves out"}
    assert model[0] is shared and model[2] is shared


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.BinaryConfig(), ek.TernaryConfig()])
def test_quantize_skips_a_layer_with_nan_or_inf_weights_and_converts_the_rest(config, dtype, bad):
    model = torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.Linear(N, N), torch.nn.Linear(N, 4)).to(dtype)
    model[1].weight.data[2, 1] = bad
    summary = ek.quantize_(model, config)
    assert summary.converted == ["0", "2"] and summary.skipped == {"1": "weight contains NaN or Inf"}
    assert type(model[1]) is torch.nn.Linear


def test_quantize_converts_finite_weights_whose_sum_is_past_float32():
    linear = torch.nn.Linear(K, N, bias=False)
    linear.weight.data.fill_(3e38)  # each finite, their sum infinite
    model = torch.nn.Sequential(linear)
    assert ek.quantize_(model, ek.Int8WeightOnlyConfig()).converted == ["0"]
    assert torch.equal(model[0].weight, torch.full((N, K), 127, dtype=torch.int8))


def test_w8a8_skips_a_layer_too_wide_for_int32_accumulation():
    from effgen_kernels.quantize import MAX_INT8_IN_FEATURES

    model = torch.nn.Sequential(torch.nn.Linear(MAX_INT8_IN_FEATURES + 1, 2), torch.nn.Linear(2, 2))
    summary = ek.quantize_(model, ek.Int8Config())
    assert summary.converted == ["1"] and summary.skipped == {
        "0": "in_features 131072 > 131071 (int32 accumulation could overflow)"}


@pytest.mark.parametrize("call", [ek.quantize_, ek.prepare, partial(ek.load_quantized_, state_dict={})])
@pytest.mark.parametrize("config,message", [
    (ek.Int8Config, "config must be a config instance such as Int8Config(), got the class itself"),
    ("int8", "config must be one of Int8Config, Int8WeightOnlyConfig, BinaryConfig, TernaryConfig, got str 'int8'"),
    (ek.nn.Int8Linear, "config must be one of Int8Config, Int8WeightOnlyConfig, BinaryConfig, TernaryConfig, got type"),
])
def test_what_is_not_a_config_is_refused_before_the_model_changes(call, config, message):
    model = torch.nn.Sequential(torch.nn.Linear(K, N))
    with pytest.raises(TypeError, match=re.escape(message)):
        call(model, config=config)
    assert type(model[0]) is torch.nn.Linear


def test_a_config_without_a_trainable_form_is_refused_by_prepare():
    model = torch.nn.Sequential(torch.nn.Linear(K, N))
    with pytest.raises(TypeError, match="Int8WeightOnlyConfig has no trainable form; use Int8Config, BinaryConfig"):
        ek.prepare(model, ek.Int8WeightOnlyConfig())
    assert type(model[0]) is torch.nn.Linear


@pytest.mark.parametrize("layer_cls", [ek.nn.Int8Linear, ek.nn.Int8WeightOnlyLinear])
def test_int8_layers_refuse_integer_weights_by_name(layer_cls):
    linear = torch.nn.Linear(K, N)
    linear.weight = torch.nn.Parameter(torch.ones(N, K, dtype=torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match="expected a float nn.Linear weight, got torch.int8"):
        layer_cls.from_float(linear)


@pytest.mark.parametrize("layer_cls", [ek.nn.Int8Linear, ek.nn.Int8WeightOnlyLinear])
def test_int8_layers_refuse_float_weights_assigned_by_name(layer_cls):
    layer = layer_cls.from_float(torch.nn.Linear(K, N))
    before = layer.weight.clone()
    with pytest.raises(TypeError, match=f"{layer_cls.__name__}.weight holds int8 codes, got torch.float32: quantize"):
        layer.weight = torch.nn.Parameter(torch.randn(N, K))
    assert torch.equal(layer.weight, before)


def test_tying_a_quantized_lm_head_to_float_embeddings_says_how_to_keep_them_tied():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    assert "lm_head" in ek.quantize_(model, ek.Int8WeightOnlyConfig()).converted
    with pytest.raises(TypeError, match="to keep an LM head tied to its embeddings, leave it out of quantize_"):
        model.tie_weights()  # what resize_token_embeddings does, for one


def test_smoothquant_refuses_a_calibration_that_reached_nan_or_inf():
    absmax = torch.ones(K)
    absmax[3] = float("nan")
    with pytest.raises(ValueError, match="activation_absmax holds NaN or Inf \\(the calibration batches reached"):
        ek.nn.Int8Linear.from_float(torch.nn.Linear(K, N), activation_absmax=absmax)


def test_quantize_says_why_it_leaves_linear_like_modules_alone():
    subclass = "NonDynamicallyQuantizableLinear is a subclass of nn.Linear (its owner may read the weight directly)"
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(K, K), "attention": torch.nn.MultiheadAttention(K, 4),
                                 "head": torch.nn.Linear(K, N)})
    first = ek.quantize_(model, ek.Int8Config(), filter_fn=lambda module, name: name != "head")
    assert first.converted == ["proj"] and first.skipped == {"attention.out_proj": subclass}
    ek.prepare(model, ek.TernaryConfig())
    second = ek.quantize_(model, ek.Int8WeightOnlyConfig(), filter_fn=lambda module, name: module.weight.dim() == 2)
    assert second.converted == [] and second.skipped == {
        "proj": "already quantized (Int8Linear)", "attention.out_proj": subclass,
        "head": "TernaryTrainLinear from prepare (convert() makes it its inference layer)"}
    assert "skipped proj: already quantized (Int8Linear)" in str(second)
    x = random_input((2, 3, K))
    assert model["attention"](x, x, x)[0].shape == (2, 3, K)  # left as it was, and working


def conv1d_and_twin(seed: int = 3) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """Hugging Face's Conv1D (GPT-2's layer: weight [in, out], y = x @ W + b) from K to N, and
    the nn.Linear holding the same weight transposed (contiguous) and the same bias."""
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    conv = pytorch_utils.Conv1D(N, K)
    with torch.no_grad():
        conv.weight.copy_(random_input((K, N), scale=0.1, seed=seed))
        conv.bias.copy_(random_input((N,), seed=seed + 1))
    twin = torch.nn.Linear(K, N)
    twin.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous())
    twin.bias = torch.nn.Parameter(conv.bias.detach().clone())
    return conv, twin


def assert_same_state(module: torch.nn.Module, expected: torch.nn.Module) -> None:
    assert type(module) is type(expected)
    state, expected_state = module.state_dict(), expected.state_dict()
    assert list(state) == list(expected_state)
    for name, tensor in state.items():
        assert_same_bits(tensor, expected_state[name])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.Int8WeightOnlyConfig(group_size=16),
                                    ek.BinaryConfig(), ek.BinaryConfig(group_size=16), ek.TernaryConfig()])
def test_hugging_face_conv1d_is_converted_as_the_linear_it_is(config, device):
    conv, twin = (layer.to(device) for layer in conv1d_and_twin())
    weight_before = conv.weight.detach().clone()
    model = torch.nn.Sequential(conv, torch.nn.ReLU())
    seen = []
    summary = ek.quantize_(model, config, filter_fn=lambda module, name: seen.append(
        (type(module), module.in_features, module.out_features, tuple(module.weight.shape))) or True)
    assert seen == [(torch.nn.Linear, K, N, (N, K))]  # filter_fn sees an nn.Linear, [out, in]
    assert summary.converted == ["0"] and not summary.skipped and summary.bytes_before == (K * N + N) * 4
    expected = config.convert(twin)
    assert_same_state(model[0], expected)
    x = random_input((5, 2, K)).to(device)
    assert_same_bits(model[0](x), expected(x))
    assert torch.equal(conv.weight, weight_before)  # converted from a view of it: nothing written back


def test_smoothquant_calibrates_and_converts_a_conv1d():
    conv, twin = conv1d_and_twin()
    batches = [random_input((4, K), seed=7), random_input((3, K), seed=8)]
    model = torch.nn.Sequential(conv)
    absmax = ek.calibrate_activations(model, batches)
    assert list(absmax) == ["0"]
    assert_same_bits(absmax["0"], torch.cat(batches).abs().amax(dim=0))
    assert ek.quantize_(model, ek.Int8Config(activation_absmax=absmax)).converted == ["0"]
    assert_same_state(model[0], ek.nn.Int8Linear.from_float(twin, absmax["0"]))


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.BinaryConfig(), ek.TernaryConfig()])
def test_a_conv1d_trains_as_its_linear_twin_after_prepare(config):
    conv, twin = conv1d_and_twin()
    model, twin_model = torch.nn.Sequential(conv), torch.nn.Sequential(twin)
    assert ek.prepare(model, config).converted == ["0"] and ek.prepare(twin_model, config).converted == ["0"]
    assert_same_state(model[0], twin_model[0])
    assert model[0].weight.is_contiguous()  # a weight of its own, not a view of the Conv1D's
    assert model[0].weight.untyped_storage().data_ptr() != conv.weight.untyped_storage().data_ptr()
    x = random_input((6, K))
    for m in (model, twin_model):
        m(x).square().sum().backward()
    assert_same_bits(model[0].weight.grad, twin_model[0].weight.grad)
    assert ek.convert(model) == ["0"]
    assert_same_state(model[0], twin_model[0].to_inference())


def test_quantize_converts_every_layer_of_a_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=96, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits
        summary = ek.quantize_(model, ek.Int8WeightOnlyConfig())
        logits = model(ids).logits
    blocks = [f"transformer.h.{i}.{layer}" for i in range(2)
              for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert summary.converted == blocks + ["lm_head"] and not summary.skipped
    assert all(type(model.get_submodule(name)) is ek.nn.Int8WeightOnlyLinear for name in summary.converted)
    error = (logits - expected).norm() / expected.norm()
    assert error < 0.01, f"W8A16 GPT-2 logits off by {error:.4f} of their norm"
    accelerate = pytest.importorskip("accelerate")
    with accelerate.init_empty_weights():  # parameters on the meta device, lm_head tied to wte
        skeleton = transformers.GPT2LMHeadModel(config).eval()
    loaded = ek.load_quantized_(skeleton, saved_and_loaded(model.state_dict()), ek.Int8WeightOnlyConfig())
    assert loaded.converted == summary.converted
    with torch.no_grad():
        assert_same_bits(skeleton(ids).logits, logits)


class ReadsItsLayers(torch.nn.Module):
    """Model code that reads its layers' weights instead of calling them, the ways Hugging Face
    models do: Mamba's ``self.dt_proj.weight @ x``, a dtype taken from a grandchild's weight,
    T5's cast guarded for int8 quantizers, reads only in a branch not taken, and reads in the
    methods that initialize and tie weights (run before quantize_)."""

    def __init__(self, slow_path: bool = False) -> None:
        super().__init__()
        self.dt_proj, self.wo, self.branch = torch.nn.Linear(K, K), torch.nn.Linear(K, K), torch.nn.Linear(K, K)
        self.block = torch.nn.ModuleDict({"out": torch.nn.Linear(K, N)})
        self.slow_path = slow_path
        self.branch.weight.data.mul_(self.branch.weight.shape[1] ** 0.5 / self.branch.weight.norm())

    def _init_weights(self) -> None:
        torch.nn.init.normal_(self.wo.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (self.dt_proj.weight @ x.t()).t()
        if self.wo.weight.dtype != x.dtype and self.wo.weight.dtype != torch.int8:
            x = x.to(self.wo.weight.dtype)
        x = self.wo(x)
        if self.slow_path:  # Bloom's pretraining_tp > 1
            x = torch.nn.functional.linear(x, self.branch.weight)
        else:
            x = self.branch(x)
        return self.block["out"](x.to(self.block.out.weight.dtype))


@pytest.mark.parametrize("config", [ek.Int8WeightOnlyConfig(), ek.TernaryConfig()])
def test_layers_whose_weight_the_model_code_reads_stay_float_and_say_where(config):
    model = ReadsItsLayers()
    x = random_input((3, K))
    summary = ek.quantize_(model, config)
    reads = "reads self.{}.weight itself (a quantized layer has no float weight)"
    skipped = {"dt_proj": f"ReadsItsLayers.forward {reads.format('dt_proj')}",
               "block.out": f"ReadsItsLayers.forward {reads.format('block.out')}"}
    if isinstance(config, ek.TernaryConfig):  # no int8 weight to satisfy the guard: the read fails
        skipped["wo"] = f"ReadsItsLayers.forward {reads.format('wo')}"
    assert summary.skipped == skipped
    assert sorted(summary.converted) == sorted({"dt_proj", "wo", "branch", "block.out"} - set(skipped))
    model(x)  # runs: every layer it reads is float


def test_prepare_leaves_float_what_convert_could_not_swap():
    model = ReadsItsLayers()
    summary = ek.prepare(model, ek.Int8Config())
    assert sorted(summary.converted) == ["branch", "wo"]
    assert sorted(summary.skipped) == ["block.out", "dt_proj"]
    ek.convert(model)
    model(random_input((3, K)))


def test_a_model_that_reads_a_layer_only_in_another_branch_still_converts_it():
    model = ReadsItsLayers(slow_path=True)
    assert "branch" in ek.quantize_(model, ek.Int8WeightOnlyConfig()).converted
    model.slow_path = False  # the branch it converts for
    model(random_input((3, K)))
    model.slow_path = True
    with pytest.raises(RuntimeError):  # a run-time branch no reading of the source can rule out
        model(random_input((3, K)))


class ReadsFromAHelper(torch.nn.Module):
    """Reads its layer's weight in a method whose name holds "init" but that runs at forward."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(K, K)

    def _forward_from_initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_from_initial_state(x)


def test_a_method_is_passed_over_only_if_it_initializes_or_ties_weights():
    model = ReadsFromAHelper()
    summary = ek.quantize_(model, ek.Int8WeightOnlyConfig())
    assert summary.skipped == {"proj": "ReadsFromAHelper._forward_from_initial_state reads self.proj.weight itself "
                                       "(a quantized layer has no float weight)"}
    model(random_input((2, K)))


class RescalesInPlace(torch.nn.Module):
    """Changes its layers' weights in place when it runs, as RWKV rescales its blocks'
    output layers at its first eval forward: through a loop over its blocks, in a branch,
    and on its own layer."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({"out": torch.nn.Linear(K, K),
                                                               "gate": torch.nn.Linear(K, K)}) for _ in range(2))
        self.head = torch.nn.Linear(K, N)
        self.rescaled = False

    def _rescale(self) -> None:
        with torch.no_grad():
            for index, block in enumerate(self.blocks):
                if not self.rescaled:
                    block.out.weight.div_(2 ** index)
            self.head.weight.mul_(1.0)
        self.rescaled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._rescale()
        for block in self.blocks:
            x = block["out"](x) * block["gate"](x).sigmoid()
        return self.head(x)


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.BinaryConfig()])
def test_layers_whose_weight_the_model_changes_in_place_stay_float(config):
    model = RescalesInPlace()
    summary = ek.quantize_(model, config)
    in_place = "RescalesInPlace._rescale changes {}.weight in place (a quantized layer has no float weight)"
    assert summary.skipped == {"blocks.0.out": in_place.format("block.out"),
                               "blocks.1.out": in_place.format("block.out"), "head": in_place.format("self.head")}
    assert sorted(summary.converted) == ["blocks.0.gate", "blocks.1.gate"]
    model(random_input((2, K)))


def tiny_hf_model(kind: str) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config_class = {"mamba": transformers.MambaConfig, "falcon_mamba": transformers.FalconMambaConfig,
                    "gpt_neo": transformers.GPTNeoConfig, "rwkv": transformers.RwkvConfig}[kind]
    sizes = {"gpt_neo": dict(num_layers=2, attention_types=[[["global", "local"], 1]], num_heads=4),
             "rwkv": dict(num_hidden_layers=4, attention_hidden_size=64, intermediate_size=128, rescale_every=2)}.get(
        kind, dict(num_hidden_layers=2, state_size=8))
    config = config_class(vocab_size=96, hidden_size=64, **sizes)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def dequantized_twin(model: torch.nn.Module, quantized: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each weight that ``quantized`` holds in int8 replaced by its codes x
    scales (a new parameter: a tied head's embeddings stay as they were)."""
    twin = copy.deepcopy(model)
    for name, layer in quantized.named_modules():
        if isinstance(layer, ek.nn.Int8WeightOnlyLinear):
            twin.get_submodule(name).weight = torch.nn.Parameter(layer.weight.float() * layer.weight_scale[:, None])
    return twin


@pytest.mark.parametrize("kind, skipped", [
    ("mamba", {"lm_head": "MambaForCausalLM.forward reads self.lm_head.weight",
               "dt_proj": "MambaMixer.forward reads self.dt_proj.weight"}),
    ("falcon_mamba", {"lm_head": "FalconMambaForCausalLM.forward reads self.lm_head.weight"}),  # dt_proj: called
    ("gpt_neo", {}),
    # rescales its blocks' output layers in place at its first eval forward (after quantize_ here)
    ("rwkv", {"output": "RwkvModel._rescale_layers changes block.attention.output.weight in place",
              "value": "RwkvModel._rescale_layers changes block.feed_forward.value.weight in place"}),
])
def test_hugging_face_models_that_read_layer_weights_run_quantized(kind, skipped):
    model = tiny_hf_model(kind)
    quantized = copy.deepcopy(model)
    summary = ek.quantize_(quantized, ek.Int8WeightOnlyConfig())
    for name, reason in summary.skipped.items():  # not Mamba's depthwise nn.Conv1d: no linear layer
        assert reason.startswith(skipped[name.split(".")[-1]]), (name, reason)
    assert len(summary.skipped) == {"mamba": 3, "falcon_mamba": 1, "gpt_neo": 0, "rwkv": 8}[kind]
    assert len(summary.converted) > 4 and quantized.config._is_quantized
    assert "_is_quantized" not in quantized.config.to_dict()  # transformers never saves it
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, expected = quantized(ids).logits, dequantized_twin(model, quantized)(ids).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [ek.Int8WeightOnlyConfig(), ek.TernaryConfig()])
def test_t5_keeps_its_output_layers_float_only_for_formats_without_an_int8_weight(config):
    """T5 reads ``self.wo.weight`` in a test written for int8 quantizers (``!= torch.int8``):
    an int8 layer satisfies it, a ternary one has no weight to read."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=96, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0)).eval()
    summary = ek.quantize_(model, config)
    outputs = {name for name in summary.skipped if name.endswith(".wo")}
    assert len(outputs) == (0 if isinstance(config, ek.Int8WeightOnlyConfig) else 4)
    assert set(summary.skipped) == outputs
    assert all(summary.skipped[name].startswith("T5DenseActDense.forward reads self.wo.weight") for name in outputs)
    ids = torch.randint(1, 96, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, decoder_input_ids=ids).logits).all()


def test_the_architecture_sweep_runs_quantize_over_transformers_models(tmp_path):
    pytest.importorskip("transformers")
    script = Path(__file__).resolve().parent.parent / "scripts" / "hf_architecture_sweep.py"
    command = [sys.executable, str(script), "llama", "mamba", "gpt2", "hrm_text", "--json", str(tmp_path / "rows.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "4 architectures, 4 built small, 4 of them run quantized as they should" in done.stdout
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert rows["mamba"]["w8a16"]["skipped"] == 3  # lm_head and each layer's dt_proj: read by the model's code
    assert all(row["w8a16"]["w8a16_error"] < 1e-4 and row["w8a16"]["generation_error"] < 1e-4
               and row["w8a8"]["cosine"] > 0.99 for row in rows.values())
    assert all(result["reloaded_same"] and result["generated_finite"] for row in rows.values()
               for result in row.values())
    # through from_pretrained / save_pretrained too (effgen_kernels.hf), the LM head left float;
    # HRM's published layout holds q, k, v and gate as one tensor, which save_pretrained would
    # write back but for a quantized model
    assert all(result["hf_reloaded_same"] and result["hf_as_quantize_"] and result["hf_dequantized_reloads"]
               and result["hf_converted"] == result["converted"] - 1
               for model_type in ("llama", "gpt2", "hrm_text") for result in rows[model_type].values())


def test_a_hugging_face_model_is_told_it_is_quantized_only_once_it_is():
    model = tiny_hf_model("gpt_neo")
    ek.prepare(model, ek.Int8Config())
    assert not hasattr(model.config, "_is_quantized")  # trainable layers keep float weights
    ek.convert(model)
    assert model.config._is_quantized
    skeleton = tiny_hf_model("gpt_neo")
    ek.load_quantized_(skeleton, model.state_dict(), ek.Int8Config())
    assert skeleton.config._is_quantized
    untouched = tiny_hf_model("gpt_neo")
    ek.quantize_(untouched, ek.Int8Config(), filter_fn=lambda module, name: False)
    assert not hasattr(untouched.config, "_is_quantized")


def saved_and_loaded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict through safetensors' bytes, as a checkpoint file gives it back."""
    safetensors = pytest.importorskip("safetensors.torch")
    return safetensors.load(safetensors.save({name: t.contiguous() for name, t in state.items()}))


def float_model(device: str | torch.device = "cpu") -> torch.nn.Sequential:
    """Three linear layers from a fixed seed: the same model each call, or its skeleton on
    the meta device."""
    torch.manual_seed(11)
    with torch.device(device):
        return torch.nn.Sequential(torch.nn.Linear(K, N), torch.nn.ReLU(), torch.nn.Linear(N, N),
                                   torch.nn.Linear(N, 8, bias=False))


LOADABLE_CONFIGS = [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.Int8WeightOnlyConfig(group_size=16),
                    ek.BinaryConfig(), ek.BinaryConfig(group_size=32), ek.BinaryConfig(binary_activations=True),
                    ek.TernaryConfig(), ek.TernaryConfig(per_channel=False)]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("config", LOADABLE_CONFIGS)
def test_a_quantized_checkpoint_loads_into_the_float_model_without_quantizing(config, device):
    quantized = float_model()
    ek.quantize_(quantized, config, filter_fn=lambda module, name: name != "2")  # "2" stays float
    checkpoint = saved_and_loaded(quantized.state_dict())
    model = float_model(device)  # other weights on the CPU: the checkpoint's replace them
    if device == "cpu":
        torch.nn.init.normal_(model[0].weight)
    summary = ek.load_quantized_(model, checkpoint, config)
    assert summary.converted == ["0", "3"] and summary.skipped == {"2": "the checkpoint holds it in float"}
    assert summary.bytes_before == (K * N + N + N * 8) * 4 and str(summary).startswith("load_quantized_ with")
    float_bytes = (K * N + N + N * N + N + N * 8) * 4  # the meta skeleton's too: it has sizes, not addresses
    assert summary.model_bytes_before == float_bytes and summary.model_bytes_after == ek.model_bytes(quantized)
    assert f"(the whole model {float_bytes / 2**20:.2f} MiB -> " in str(summary)
    for name in ("0", "2", "3"):
        assert_same_state(model.get_submodule(name), quantized.get_submodule(name))
    assert {t.device.type for t in list(model.parameters()) + list(model.buffers())} == {"cpu"}
    # a model with real weights copies into them (load_state_dict's default); a skeleton takes the tensors
    assert (model[2].weight.data_ptr() == checkpoint["2.weight"].data_ptr()) == (device == "meta")
    x = random_input((3, K))
    assert_same_bits(model(x), quantized(x))


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(group_size=16), ek.BinaryConfig(),
                                    ek.TernaryConfig()])
def test_quantize_on_load_converts_each_layer_once_its_tensors_are_in(config):
    from effgen_kernels.quantize import QuantizeOnLoad

    def keep_2_float(module, name):
        return name != "2"

    expected = float_model()
    ek.quantize_(expected, config, filter_fn=keep_2_float)
    checkpoint = float_model().state_dict()
    model = float_model("meta")
    on_load = QuantizeOnLoad(model, config, keep_2_float)
    assert on_load.wants("0.weight") and on_load.wants("3.weight") and not on_load.wants("2.weight")
    assert not on_load.take("2.weight", checkpoint["2.weight"])  # the caller loads it
    model.load_state_dict({key: checkpoint[key] for key in ("2.weight", "2.bias")}, strict=False, assign=True)
    assert on_load.take("0.bias", checkpoint["0.bias"]) and type(model[0]) is torch.nn.Linear  # waits for its weight
    assert on_load.take("0.weight", checkpoint["0.weight"]) and type(model[0]) is type(expected[0])
    assert not on_load.take("3.weight", checkpoint["3.weight"][:, 1:])  # not the layer's shape: left to finish
    model.load_state_dict({"3.weight": checkpoint["3.weight"]}, strict=False, assign=True)
    summary = on_load.finish()
    assert summary.converted == ["0", "3"] and summary.bytes_after == ek.model_bytes(expected[0]) + ek.model_bytes(
        expected[3]) and summary.model_bytes_after == ek.model_bytes(expected)
    for name in ("0", "2", "3"):
        assert_same_state(model.get_submodule(name), expected.get_submodule(name))
    x = random_input((3, K))
    assert_same_bits(model(x), expected(x))


def test_quantize_on_load_refuses_smoothquant_which_calibrates_on_the_loaded_model():
    from effgen_kernels.quantize import QuantizeOnLoad
    with pytest.raises(ValueError, match="SmoothQuant calibrates on the loaded model"):
        QuantizeOnLoad(float_model("meta"), ek.Int8Config(activation_absmax={"0": torch.ones(K)}))


def reference_dequantized_weight(layer: torch.nn.Module) -> torch.Tensor:
    if isinstance(layer, (ek.nn.Int8Linear, ek.nn.Int8WeightOnlyLinear)):
        group_size = getattr(layer, "group_size", None)
        weight = ref.dequantize(layer.weight, layer.weight_scale, axis=None if group_size else 0,
                                group_size=group_size)
        smoothing = getattr(layer, "input_smoothing", None)
        return weight if smoothing is None else weight * smoothing
    if isinstance(layer, ek.nn.BinaryLinear):
        signs = ref.unpack_binary(layer.weight_packed, K)
        return ref.dequantize(signs, layer.alpha, axis=None if layer.group_size else 0, group_size=layer.group_size)
    codes = ref.unpack_ternary(layer.weight_packed, K)
    return ref.dequantize(codes, layer.weight_scale, axis=0 if layer.per_channel else None)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("name", [name for name in LAYERS if name != "BinaryLinear XNOR"])
def test_to_float_makes_the_linear_of_the_dequantized_weights(name, dtype):
    quantized = layer(name)
    linear = quantized.to_float(dtype)
    assert type(linear) is torch.nn.Linear and linear.weight.dtype == (dtype or torch.float32)
    assert torch.equal(linear.weight, reference_dequantized_weight(quantized).to(dtype or torch.float32))
    assert torch.equal(linear.bias, quantized.bias.to(dtype or torch.float32))
    assert linear.bias.data_ptr() != quantized.bias.data_ptr()  # the float layer's own, to train
    x = random_input((3, K))
    if not isinstance(quantized, ek.nn.Int8Linear) and dtype is None:  # W8A8 also quantizes x
        torch.testing.assert_close(linear(x), quantized(x), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("name", [name for name in LAYERS if name != "BinaryLinear XNOR"])
def test_cuda_to_float_gives_the_weights_it_gives_on_the_cpu(name):
    on_cpu = layer(name)
    linear = layer(name).cuda().to_float()
    assert linear.weight.is_cuda and torch.equal(linear.weight.cpu(), on_cpu.to_float().weight)


def test_a_layer_no_linear_stands_for_is_refused_by_to_float_and_left_by_dequantize_():
    with pytest.raises(ValueError, match="BinaryLinear cannot become an nn.Linear: its binary_activations"):
        layer("BinaryLinear XNOR").to_float()
    model = float_model()
    ek.quantize_(model, ek.BinaryConfig(binary_activations=True))
    summary = ek.dequantize_(model)
    assert not summary.converted and list(summary.skipped) == ["0", "2", "3"]
    assert all(isinstance(model[i], ek.nn.BinaryLinear) for i in (0, 2, 3))


@pytest.mark.parametrize("config", [ek.Int8WeightOnlyConfig(group_size=16), ek.TernaryConfig()], ids=str)
def test_dequantize_undoes_quantize_with_the_rounded_weights(config):
    quantized = float_model()
    ek.quantize_(quantized, config, filter_fn=lambda module, name: name != "2")
    model = copy.deepcopy(quantized)
    summary = ek.dequantize_(model)
    assert summary.converted == ["0", "3"] and str(summary).startswith("dequantize_: 2 layers converted")
    assert summary.model_bytes_after == ek.model_bytes(float_model())
    assert model.state_dict().keys() == float_model().state_dict().keys()
    assert all(type(module) is torch.nn.Linear for module in (model[0], model[2], model[3]))
    assert torch.equal(model[2].weight, quantized[2].weight)  # float all along
    x = random_input((3, K))
    torch.testing.assert_close(model(x), quantized(x), rtol=1e-5, atol=1e-5)


def test_dequantize_swaps_a_shared_layer_in_at_every_place():
    shared = torch.nn.Linear(K, K)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    ek.quantize_(model, ek.Int8Config())
    assert ek.dequantize_(model).converted == ["0", "2"] and model[0] is model[2]


def test_dequantize_tells_a_hugging_face_model_it_is_float_again():
    hf_model = tiny_hf_model("gpt_neo")
    ek.quantize_(hf_model, ek.Int8Config())
    assert hf_model.config._is_quantized
    ek.dequantize_(hf_model)
    assert not hf_model.config._is_quantized


def test_a_checkpoint_without_a_quantized_layers_tensor_is_refused_even_when_not_strict():
    quantized = float_model()
    ek.quantize_(quantized, ek.Int8WeightOnlyConfig(), filter_fn=lambda module, name: name != "2")
    checkpoint = quantized.state_dict()
    del checkpoint["2.bias"]  # a float layer's: not strict, it keeps what the model made
    model = float_model()
    ek.load_quantized_(model, checkpoint, ek.Int8WeightOnlyConfig(), strict=False)
    assert torch.equal(model[2].bias, float_model()[2].bias)
    del checkpoint["3.weight_scale"]  # a quantized layer's
    with pytest.raises(ValueError, match=re.escape("the checkpoint lacks ['3.weight_scale']: a quantized layer")):
        ek.load_quantized_(float_model(), checkpoint, ek.Int8WeightOnlyConfig(), strict=False)
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "2.bias", "3.weight_scale"'):
        ek.load_quantized_(float_model(), checkpoint, ek.Int8WeightOnlyConfig())


@pytest.mark.cuda
@pytest.mark.parametrize("config", LOADABLE_CONFIGS)
def test_cuda_a_checkpoint_quantized_on_the_cpu_serves_on_the_gpu(config):
    quantized = float_model()
    ek.quantize_(quantized, config, filter_fn=lambda module, name: name != "2")
    buffer = io.BytesIO()  # torch's format: the GPU image may lack safetensors
    torch.save(quantized.state_dict(), buffer)
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    model = float_model("cuda")
    assert ek.load_quantized_(model, checkpoint, config).converted == ["0", "3"]
    x = random_input((3, K)).cuda()
    assert_same_bits(model(x), quantized.cuda()(x))


def tiny_tied_llama(seed: int = 0, initializer_range: float = 0.02) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                      initializer_range=initializer_range)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("config,layer_cls", [(None, ek.nn.Int8Linear),
                                              (ek.Int8WeightOnlyConfig(group_size=16), ek.nn.Int8WeightOnlyLinear),
                                              (ek.TernaryConfig(), ek.nn.TernaryLinear)])
def test_a_quantized_draft_shares_what_it_does_not_quantize_and_leaves_the_model_alone(config, layer_cls):
    model = tiny_tied_llama()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    draft = ek.quantized_draft(model, config, filter_fn=lambda module, name: name != "model.layers.1.mlp.down_proj",
                               progress=False)
    # the model: its layers, tensors and config as they were
    assert all(type(module) is torch.nn.Linear for name, module in model.named_modules() if name.endswith("proj"))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    assert not getattr(model.config, "_is_quantized", False) and draft.config._is_quantized
    # the draft: quantized layers, with the model's very tensors everywhere else
    assert isinstance(draft.model.layers[0].self_attn.q_proj, layer_cls) and isinstance(draft.lm_head, layer_cls)
    assert draft.model.layers[1].mlp.down_proj.weight is model.model.layers[1].mlp.down_proj.weight  # left out
    shared = {id(tensor) for tensor in (*model.parameters(), *model.buffers())}
    own = {name for name, tensor in (*draft.named_parameters(), *draft.named_buffers()) if id(tensor) not in shared}
    assert own and all(type(draft.get_submodule(name.rsplit(".", 1)[0])) is layer_cls for name in own)
    assert draft.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert draft.model.norm.weight is model.model.norm.weight
    assert draft.model.rotary_emb.inv_freq is model.model.rotary_emb.inv_freq


def test_a_quantized_draft_refuses_what_is_not_a_quantization_config():
    with pytest.raises(TypeError, match="config must be"):
        ek.quantized_draft(torch.nn.Sequential(torch.nn.Linear(K, N)), "int8")


@pytest.mark.parametrize("config", [None, ek.Int8WeightOnlyConfig()])
def test_speculative_greedy_decoding_with_a_quantized_draft_gives_the_models_tokens(config):
    # weights 25 times the default's spread: the tokens vary, and each is likely enough that
    # generate's draft goes on past its first (it stops at a token of probability < 0.4)
    model = tiny_tied_llama(seed=3, initializer_range=0.5)
    prompt = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(4))
    options = {"max_new_tokens": 24, "min_new_tokens": 24, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        expected = model.generate(prompt, **options)
        draft = ek.quantized_draft(model, config, progress=False)
        with forwards_counted(model) as forwards:
            assisted = model.generate(prompt, assistant_model=draft, **options)
    assert torch.equal(assisted, expected), (assisted[0, 7:], expected[0, 7:])
    assert len(forwards) < 24 / 2  # the draft's tokens taken more than two to a forward of the model


def test_speculative_sampling_with_a_quantized_draft_draws_from_the_models_distribution():
    # A ternary draft of a tiny Llama proposes from a distribution far from the model's
    # (total variation 0.66); the tokens drawn with it follow the model's.
    model = tiny_tied_llama(seed=3, initializer_range=0.5)
    prompt = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(4))
    draft = ek.quantized_draft(model, ek.TernaryConfig(), progress=False)
    draws = 400
    with torch.no_grad():
        model_probs = torch.softmax(model(prompt).logits[0, -1].double(), dim=-1)
        draft_probs = torch.softmax(draft(prompt).logits[0, -1].double(), dim=-1)
        torch.manual_seed(0)
        first_tokens = [int(model.generate(prompt, assistant_model=draft, do_sample=True, max_new_tokens=2,
                                           pad_token_id=0)[0, 7]) for _ in range(draws)]
    drawn = torch.bincount(torch.tensor(first_tokens), minlength=96).double() / draws
    distance = {name: float((drawn - probs).abs().sum() / 2)
                for name, probs in (("model", model_probs), ("draft", draft_probs))}
    # 400 draws from the model's own distribution lie about 0.1 from it in total variation
    assert distance["model"] < 0.2 and distance["draft"] > 0.5, distance


def test_save_pretrained_writes_what_load_quantized_reads(tmp_path):
    # The Hugging Face round trip: save_pretrained of a quantized model (tied embeddings,
    # which it may write once), load_quantized_ of its file into the architecture's skeleton.
    transformers = pytest.importorskip("transformers")
    accelerate = pytest.importorskip("accelerate")
    safetensors = pytest.importorskip("safetensors.torch")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    summary = ek.quantize_(model, ek.Int8WeightOnlyConfig(group_size=16))
    model.save_pretrained(tmp_path)
    with accelerate.init_empty_weights():
        skeleton = transformers.LlamaForCausalLM(config).eval()
    loaded = ek.load_quantized_(skeleton, safetensors.load_file(tmp_path / "model.safetensors"),
                                ek.Int8WeightOnlyConfig(group_size=16))
    assert loaded.converted == summary.converted and len(summary.converted) == 15  # 2 x 7 + lm_head
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_same_bits(skeleton(ids).logits, model(ids).logits)


def test_a_smoothquant_checkpoint_loads_its_smoothing():
    linear = torch.nn.Linear(K, N)
    absmax = random_input((K,), seed=4).abs()
    smoothed = ek.nn.Int8Linear.from_float(linear, absmax)
    model = torch.nn.Sequential(torch.nn.Linear(K, N))
    ek.load_quantized_(model, saved_and_loaded(torch.nn.Sequential(smoothed).state_dict()), ek.Int8Config())
    assert_same_state(model[0], smoothed)
    x = random_input((3, K))
    assert_same_bits(model[0](x), smoothed(x))
    plain = ek.nn.Int8Linear.from_float(linear).state_dict()
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "input_smoothing"'):
        smoothed.load_state_dict(plain)  # a smoothed layer's weights are wrong without it


@pytest.mark.parametrize("saved,loading,error", [
    (ek.Int8WeightOnlyConfig(group_size=16), ek.Int8WeightOnlyConfig(group_size=32),
     "group_size mismatch for 0.group_size: the model scales its weights in groups of 32, the checkpoint in groups "
     "of 16"),
    (ek.Int8WeightOnlyConfig(group_size=16), ek.Int8WeightOnlyConfig(), "the model scales its weights per channel"),
    (ek.TernaryConfig(per_channel=False), ek.TernaryConfig(), "size mismatch for 0.weight_scale"),
    (ek.BinaryConfig(), ek.TernaryConfig(), "size mismatch for 0.weight_packed"),
    (ek.TernaryConfig(), ek.Int8Config(), 'Missing key\\(s\\) in state_dict: "0.weight"'),
])
def test_a_checkpoint_of_another_format_is_refused_by_name(saved, loading, error):
    quantized = float_model()
    ek.quantize_(quantized, saved)
    with pytest.raises(RuntimeError, match=error):
        ek.load_quantized_(float_model(), quantized.state_dict(), loading)


class StackedWeights(torch.nn.Module):
    """Weights of 4 matrices in one 3-D parameter, in a module that is not a transformers
    experts block (whose fused experts quantize_ converts: tests/test_experts.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.down_proj = torch.nn.Parameter(torch.randn(4, 8, K))
        self.scale = torch.nn.Parameter(torch.ones(8))


class TimeMixing(torch.nn.Module):
    """RWKV's mixing vectors, shaped [1, 1, H]: 3-D, but no stack of matrices."""

    def __init__(self) -> None:
        super().__init__()
        self.time_mix_key = torch.nn.Parameter(torch.rand(1, 1, K))


def test_quantize_names_the_3d_weights_it_leaves_float():
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(K, K), "stacked": StackedWeights(),
                                 "conv": torch.nn.Conv1d(K, K, 4, groups=K), "mix": TimeMixing()})
    summary = ek.quantize_(model, ek.Int8WeightOnlyConfig())
    assert summary.converted == ["proj"] and summary.skipped == {
        "stacked": "StackedWeights holds its weights as 3-D parameters ['down_proj']: quantize_ converts nn.Linear "
                   "and Conv1D layers and transformers' fused-experts blocks"}


def test_a_long_quantize_shows_progress_and_a_short_one_stays_silent(capsys, monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(K, K), torch.nn.Linear(K, N))
    ek.quantize_(copy.deepcopy(model), ek.Int8Config())
    assert capsys.readouterr().err == ""  # well under the 2 s before a bar
    clock = iter(range(0, 1000, 5))  # 5 s a reading: past the silence at once
    monkeypatch.setattr(ek.progress.time, "monotonic", lambda: next(clock))
    ek.quantize_(copy.deepcopy(model), ek.Int8Config())
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("quantize_ Int8Config [") and lines[0].endswith("0/2 5s, eta 0s | 0")
    assert " 2/2 " in lines[-1]
    ek.quantize_(copy.deepcopy(model), ek.Int8Config(), progress=False)
    assert capsys.readouterr().err == ""
