"""The quant and compress families against reference.py, bit for bit, on randomly drawn
cases: shapes around the kernels' vector and block edges (and 0), leading dims, input
layouts (transposed, strided, offset by one element), dtypes, and values from subnormal
to near the dtype's largest, integers and halves (rounding ties), zeros, and now and then
an Inf or NaN (which the quantizers refuse by name and the codecs carry as a NaN scale).
The codecs are drawn in both forms: returning new tensors, and the DDP hook's `_out` forms
writing strided message rows, with EF21's flags (the encoders' estimate, the decoders'
accumulate) drawn too.
Each case is seeded, so a failure names the case that reproduces it."""

import math
import random

import pytest
import torch
from conftest import FLOAT_DTYPES
from test_compress import ENCODERS, assert_only_views_written, message_views
from test_quant import assert_same_bits
from test_random_linear import with_layout

import effgen_kernels as ek
from effgen_kernels import reference as ref

ops, e = ek.ops, torch.ops.effgen
ROWS = [0, 1, 2, 3, 7, 17, 64]
INPUTS = [0, 1, 3, 7, 8, 15, 16, 31, 33, 64, 65, 127, 129, 257, 1000, 4099]
GROUPS = [1, 2, 3, 7, 16, 32, 64, 100, 128, 5000]
BLOCKS = [8, 16, 24, 64, 256, 1000]
QUANT_RANGES = [(-128, 127), (0, 255), (0, 15), (-8, 7), (0, 1)]


def draw_values(shape: tuple[int, ...], dtype: torch.dtype, rng: random.Random, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen)
    kind = rng.choice(["normal", "scaled", "tiny", "subnormal", "largest", "ties", "zeros"])
    if kind == "scaled":
        x = x * 10 ** rng.uniform(-6, 6)
    elif kind == "tiny":  # around 127 * 2^-128, where 1/scale stops being finite
        x = x * 2.0 ** rng.uniform(-130, -120)
    elif kind == "subnormal":
        x = x * 2.0**-140
    elif kind == "largest":
        x = x * torch.finfo(dtype).max / 8
    elif kind == "ties":
        x = torch.randint(-300, 300, shape, generator=gen) / rng.choice([1.0, 2.0, 254.0])
    elif kind == "zeros":
        x = torch.zeros(shape)
    if x.numel() and rng.random() < 0.15:
        x.view(-1)[rng.randrange(x.numel())] = rng.choice([float("inf"), float("-inf"), float("nan")])
    return x.to(dtype)


def assert_all_same_bits(ours, expected) -> None:
    for actual, wanted in zip(ours, expected, strict=True):
        assert_same_bits(actual, wanted)


def check_quantizer(x: torch.Tensor, rng: random.Random) -> None:
    group, axis = rng.choice(GROUPS), rng.randrange(-x.dim(), x.dim())
    view = with_layout(x, rng)
    # (ours, the reference, their arguments after x, the scale layout for dequantize)
    ours, reference, args, layout = rng.choice([
        (ops.quantize_per_token, ref.quantize_per_token, (), {}),
        (ops.quantize_per_group, ref.quantize_per_group, (group,), {"group_size": group}),
        (ops.quantize_per_channel, ref.quantize_per_channel, (axis,), {"axis": axis})])
    if not torch.isfinite(x).all():
        with pytest.raises(ValueError, match=r"(x|w) contains NaN or Inf"):
            ours(view, *args)
        return
    q, scale = reference(x, *args)
    assert_all_same_bits(ours(view, *args), (q, scale))
    out_dtype = rng.choice(FLOAT_DTYPES)
    assert_same_bits(ops.dequantize(with_layout(q, rng), scale, out_dtype=out_dtype, **layout),
                     ref.dequantize(q, scale, out_dtype=out_dtype, **layout))


def check_fake_quantizer(x: torch.Tensor, rng: random.Random, gen: torch.Generator) -> None:
    quant_min, quant_max = rng.choice(QUANT_RANGES)
    view = with_layout(x, rng)
    if x.numel() == 0 or rng.random() < 0.4:
        ours, reference = ops.fake_quantize_per_tensor, ref.fake_quantize_per_tensor
        args = (10 ** rng.uniform(-4, 2), rng.randint(quant_min, quant_max), quant_min, quant_max)
    else:
        axis = rng.randrange(x.dim())
        scale = torch.rand(x.shape[axis], generator=gen) * 0.1 + 1e-3
        zero_point = torch.randint(quant_min, quant_max + 1, (x.shape[axis],), generator=gen, dtype=torch.int32)
        ours, reference = ops.fake_quantize_per_channel, ref.fake_quantize_per_channel
        if rng.random() < 0.5:  # LSQ's float zero point, rounded and clamped by the op
            zero_point = zero_point.float() + torch.rand(zero_point.shape, generator=gen) - 0.5
            ours, reference = ops.fake_quantize_learnable_per_channel, ref.fake_quantize_learnable_per_channel
        args = (scale, zero_point, axis, quant_min, quant_max)
    if not torch.isfinite(x).all():
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            ours(view, *args)
        return
    expected = reference(x, *args)
    assert_same_bits(ours(view, *args), expected[0] if isinstance(expected, tuple) else expected)


def check_codecs(x: torch.Tensor, rng: random.Random, gen: torch.Generator) -> None:
    flat, block = x.reshape(-1), rng.choice(BLOCKS)
    n = flat.numel()
    view = with_layout(flat.unsqueeze(0), rng).squeeze(0)
    error = torch.randn(n, generator=gen) * rng.choice([0.0, 1e-3, 1.0])
    for ours, reference in [(e.ef_compress_int8, ref.ef_compress_int8), (e.ef_compress_sign, ref.ef_compress_sign)]:
        ours_error, expected_error = error.clone(), error.clone()
        assert_all_same_bits(ours(view, ours_error, block), reference(flat, expected_error, block))
        assert_same_bits(ours_error, expected_error)
    check_out_encoders(view, flat, error, block, rng)
    if n == 0:
        return
    workers = rng.choice([1, 2, 3, 5])
    int8 = [ref.ef_compress_int8(torch.randn(n, generator=gen), torch.zeros(n), block) for _ in range(workers)]
    q, scales = torch.stack([c[0] for c in int8]), torch.stack([c[1] for c in int8])
    expected = ref.decompress_sum_int8(q, scales, block)
    assert_same_bits(e.decompress_sum_int8(q, scales, block), expected)
    check_out_decoder(lambda total, accumulate: e.decompress_sum_int8_out(q, scales, block, total, accumulate),
                      expected, rng, gen)
    sign = [ref.ef_compress_sign(torch.randn(n, generator=gen), torch.zeros(n), block) for _ in range(workers)]
    packed, scales = torch.stack([c[0] for c in sign]), torch.stack([c[1] for c in sign])
    expected = ref.decompress_sum_sign(packed, scales, n, block)
    assert_same_bits(e.decompress_sum_sign(packed, scales, n, block), expected)
    check_out_decoder(lambda total, accumulate: e.decompress_sum_sign_out(packed, scales, n, block, total, accumulate),
                      expected, rng, gen)


def check_out_encoders(view: torch.Tensor, flat: torch.Tensor, error: torch.Tensor, block: int,
                       rng: random.Random) -> None:
    """The hook's `_out` encoders, EF21's ``estimate`` flag drawn, writing strided message
    rows (two when the values split into whole grains of lcm(block, 8), as the hook's do)."""
    n, estimate = flat.numel(), rng.random() < 0.5
    rows = 2 if n and n % (2 * math.lcm(block, 8)) == 0 else 1
    for reference, op_out, per_element, payload_dtype, per_block in ENCODERS:
        ours_error, expected_error = error.clone(), error.clone()
        expected_payload, expected_scales = reference(flat, expected_error, block, estimate)
        buffer, payload, scales = message_views(rows, -(-(n // rows) // per_element), payload_dtype,
                                                -(-(n // rows) // block) * per_block)
        op_out(view, ours_error, block, payload, scales, estimate)
        assert_same_bits(payload, expected_payload.view(rows, -1))
        assert_same_bits(scales, expected_scales.view(rows, -1))
        # A NaN in x leaves error = 0 - x there, a NaN whose payload the reference takes from
        # torch's half -> float conversion, which differs between its vector body and its
        # scalar tail (the hook zeroes these values: EF21 restarts non-finite blocks).
        assert_same_bits(with_one_nan(ours_error), with_one_nan(expected_error))
        assert_only_views_written(buffer, payload, scales)


def with_one_nan(t: torch.Tensor) -> torch.Tensor:
    return t.masked_fill(t.isnan(), float("nan"))


def check_out_decoder(decode_out, expected: torch.Tensor, rng: random.Random, gen: torch.Generator) -> None:
    """A `_out` decoder into a total (contiguous, at an offset or not): the sum, or with
    ``accumulate`` (EF21's G) the sum added to what the total held."""
    accumulate = rng.random() < 0.5
    start = torch.randn(expected.numel(), generator=gen)
    total = torch.zeros(expected.numel() + 1)[rng.randrange(2):][:expected.numel()]
    total.copy_(start)
    decode_out(total, accumulate)
    assert_same_bits(total, start + expected if accumulate else expected)


@pytest.mark.parametrize("seed", range(150))
def test_random_case_matches_reference(isa, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    rows, k = rng.choice(ROWS), rng.choice(INPUTS)
    shape = rng.choice([(rows, k), (2, rows, k), (k,)])
    x = draw_values(shape, rng.choice(FLOAT_DTYPES), rng, gen)
    family = rng.choice(["quantize", "fake_quantize", "codecs"])
    if family == "quantize":
        check_quantizer(x, rng)
    elif family == "fake_quantize":
        check_fake_quantizer(x, rng, gen)
    else:
        check_codecs(x, rng, gen)
