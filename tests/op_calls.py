"""A working call of every op that takes tensors, for the tests that change one argument of
it at a time (test_mixed_devices: the ops taking several tensors; test_argument_fuzz)."""

import torch

ops = torch.ops.effgen
M, K, N, GROUP = 3, 64, 5, 32


def valid_calls() -> dict[str, list]:
    """Call name (the op's, "/variant" for a second call of it) -> positional arguments of
    a call that works (CPU tensors)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
    xq, x_scale = ops.quantize_per_token(x)
    wq, w_scale = ops.quantize_per_channel(w, 0)
    w_packed, w_sum = ops.int8_pack_weight(wq, None)
    group_packed, group_sum = ops.int8_pack_weight(wq, GROUP)
    group_scale = ops.quantize_per_group(w, GROUP)[1]
    bits, alpha = ops.binarize_weight(w, None)
    group_bits, group_alpha = ops.binarize_weight(w, GROUP)
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
        # which ISAs read the lut differs with groups (AVX2 has no per-group tables)
        "binary_linear/groups": [x, group_bits, group_alpha, bias, GROUP, ops.lut_tiles(group_bits, K, 1, GROUP)],
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


def single_tensor_calls() -> dict[str, list]:
    """The same for the ops that take one tensor."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
    wq = ops.quantize_per_channel(w, 0)[0]
    bits, ternary = ops.pack_binary(w), ops.pack_ternary(torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=gen))
    return {
        "quantize_per_token": [x],
        "quantize_per_group": [x, GROUP],
        "quantize_per_channel": [w, 0],
        "fake_quantize_per_tensor_cachemask": [x, 0.1, 3, -128, 127],
        "int8_pack_weight": [wq, GROUP],
        "int8_unpack_weight": [ops.int8_pack_weight(wq, None)[0], N, K],
        "pack_binary": [w],
        "unpack_binary": [bits, K],
        "pack_ternary": [ops.unpack_ternary(ternary, K)],
        "unpack_ternary": [ternary, K],
        "binarize_weight": [w, GROUP],
        "ternarize_weight": [w, True],
        "lut_tiles": [ternary, K, 2, None],
        "lut_tiles/groups": [bits, K, 1, GROUP],
    }


CALLS = valid_calls()
SINGLE_TENSOR_CALLS = single_tensor_calls()


def op_of(call: str):
    """The op of a call's name: "binary_linear/groups" is a call of binary_linear."""
    return getattr(ops, call.split("/")[0])


def tensor_arguments(call: str) -> list[tuple[int, str]]:
    """(position, schema name) of each tensor in CALLS[call]."""
    names = [a.name for a in op_of(call).default._schema.arguments]
    return [(i, names[i]) for i, a in enumerate(CALLS[call]) if isinstance(a, torch.Tensor)]


def fresh(args: list) -> list:
    """The arguments with each tensor cloned (calls may write to theirs)."""
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
