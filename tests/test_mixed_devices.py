"""Every op's tensor arguments on one device. A meta tensor among CPU ones sends the call to
the op's fake (the dispatcher prefers Meta), not to the CPU kernel that checks devices; the
fake must refuse it, naming the argument, rather than return uninitialized CPU memory."""

import pytest
import torch

import effgen_kernels as ek

ops = torch.ops.effgen
M, K, N, GROUP = 3, 64, 5, 32


def valid_calls() -> dict[str, list]:
    """A working call of each op taking more than one tensor: op name -> arguments."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
    xq, x_scale = ops.quantize_per_token(x)
    wq, w_scale = ops.quantize_per_channel(w, 0)
    w_packed, w_sum = ops.int8_pack_weight(wq, None)
    group_packed, group_sum = ops.int8_pack_weight(wq, GROUP)
    group_scale = ops.quantize_per_group(w, GROUP)[1]
    bits, alpha = ops.binarize_weight(w, None)
    ternary, ternary_scale = ops.ternarize_weight(w, True)
    bias, channel_scale, zero_point = torch.randn(N, generator=gen), torch.rand(N, generator=gen) + 0.1, torch.zeros(N)
    grad = torch.randn(1000, generator=gen)
    q, q_scales = ops.ef_compress_int8(grad, torch.zeros(1000), 256)
    signs, levels = ops.ef_compress_sign(grad, torch.zeros(1000), 256)
    return {
        "dequantize": [wq, w_scale, 0, None, torch.float32],
        "fake_quantize_per_channel_cachemask": [w, channel_scale, zero_point.int(), 0, -128, 127],
        "fake_quantize_mask_grad": [w, w > 0],
        "fake_quantize_learnable_per_channel": [w, channel_scale, zero_point, 0, -128, 127, 1.0],
        "fake_quantize_learnable_per_channel_backward": [w, w, channel_scale, zero_point, 0, -128, 127, 1.0],
        "int8_linear": [xq, x_scale, wq, w_scale, bias, torch.float32],
        "int8_dynamic_linear": [x, wq, w_scale, bias, torch.ones(K)],
        "int8_linear_packed": [xq, x_scale, w_packed, w_sum, w_scale, bias, torch.float32],
        "int8_dynamic_linear_packed": [x, w_packed, w_sum, w_scale, bias, torch.ones(K)],
        "int8_weight_only_linear": [x, wq, group_scale, bias, GROUP],
        "int8_weight_only_linear_packed": [x, group_packed, group_sum, group_scale, bias, GROUP],
        "binary_linear": [x, bits, alpha, bias, None, ops.lut_tiles(bits, K, 1)],
        "ternary_linear": [x, ternary, ternary_scale, bias, ops.lut_tiles(ternary, K, 2)],
        "xnor_linear": [x, bits, alpha, bias],
        "ef_compress_int8": [grad, torch.zeros(1000), 256],
        "ef_compress_sign": [grad, torch.zeros(1000), 256],
        "decompress_sum_int8": [q[None], q_scales[None], 256],
        "decompress_sum_sign": [signs[None], levels[None], 1000, 256],
        "ef_compress_int8_out": [grad, torch.zeros(1000), 256, q[None].clone(), q_scales[None].clone(), False],
        "ef_compress_sign_out": [grad, torch.zeros(1000), 256, signs[None].clone(), levels[None].clone(), False],
        "decompress_sum_int8_out": [q[None], q_scales[None], 256, torch.zeros(1000), False],
        "decompress_sum_sign_out": [signs[None], levels[None], 1000, 256, torch.zeros(1000), False],
    }


CALLS = valid_calls()


def tensor_arguments(op: str) -> list[tuple[int, str]]:
    names = [a.name for a in getattr(ops, op).default._schema.arguments]
    return [(i, names[i]) for i, a in enumerate(CALLS[op]) if isinstance(a, torch.Tensor)]


CASES = [(op, i) for op in CALLS for i, _ in tensor_arguments(op)]


def test_every_op_taking_several_tensors_is_covered():
    several = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("effgen::") and
               sum("Tensor" in str(a.type) for a in s.arguments) > 1}
    assert several == set(CALLS)


@pytest.mark.parametrize("op,index", CASES, ids=[f"{op}-{i}" for op, i in CASES])
def test_a_meta_argument_among_cpu_ones_is_refused_by_name(op, index):
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in CALLS[op]]
    getattr(ops, op)(*args)  # the call works with every tensor on the CPU
    args[index] = args[index].to("meta")
    named = tensor_arguments(op)
    public = op.removesuffix("_cachemask")  # ops.fake_quantize_per_channel calls it
    if index == named[0][0]:  # the input itself on meta: any other tensor is the odd one out
        others = "|".join(name for _, name in named[1:])
        expected = f"{public}: ({others}) must be on meta like the input, got cpu"
    else:
        expected = f"{public}: {dict(named)[index]} must be on cpu like the input, got meta"
    with pytest.raises(RuntimeError, match=expected):
        getattr(ops, op)(*args)


def test_the_layers_refuse_a_meta_input():
    layer = ek.nn.Int8Linear.from_float(torch.nn.Linear(K, N))
    with pytest.raises(RuntimeError, match="must be on meta like the input, got cpu"):
        layer(torch.randn(M, K, device="meta"))
