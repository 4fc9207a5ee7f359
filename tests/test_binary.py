"""The binary_gemm family (1-bit and ternary weights) against reference.py, and the layers."""

import subprocess

import pytest
import torch
from conftest import (
    FLOAT_DTYPES,
    assert_products_match,
    build_kernel_bench,
    check_kernel_bench_on_every_isa,
    load_example,
    random_input,
    run_cuda_host_check,
    torch_threads,
)
from test_quant import assert_same_bits
from torch.library import opcheck

import effgen_kernels as ek
from effgen_kernels import reference as ref

ops = ek.ops
ODD_K = [1, 7, 33, 4097]


def tolerance(dtype, k):
    # fp32 sums in a different order than the reference's GEMM; bf16/fp16 round the output.
    return {torch.float32: dict(rtol=1e-4, atol=1e-4 * max(1.0, k ** 0.5)),
            torch.bfloat16: dict(rtol=2e-2, atol=5e-2), torch.float16: dict(rtol=2e-3, atol=5e-3)}[dtype]


@pytest.mark.parametrize("k", ODD_K)
def test_pack_unpack_round_trips(isa, k):
    w = random_input((5, k))
    packed = ops.pack_binary(w)
    assert packed.shape == (5, (k + 7) // 8) and packed.dtype == torch.uint8
    assert_same_bits(packed, ref.pack_binary(w))
    assert_same_bits(ops.unpack_binary(packed, k), torch.where(w >= 0, 1, -1).to(torch.int8))
    q = torch.randint(-1, 2, (5, k), dtype=torch.int8)
    packed = ops.pack_ternary(q)
    assert packed.shape == (5, 2 * ((k + 7) // 8))
    assert_same_bits(packed, ref.pack_ternary(q))
    assert_same_bits(ops.unpack_ternary(packed, k), q)


def test_conversions_split_over_threads_match_the_reference(two_threads):
    # Enough weights that pack / unpack split the rows into several tasks (2^16 weights each)
    w = random_input((1000, 4099))
    packed = ops.pack_binary(w)
    assert_same_bits(packed, ref.pack_binary(w))
    assert_same_bits(ops.unpack_binary(packed, 4099), ref.unpack_binary(packed, 4099))
    q = torch.randint(-1, 2, (1000, 4099), dtype=torch.int8)
    packed = ops.pack_ternary(q)
    assert_same_bits(packed, ref.pack_ternary(q))
    assert_same_bits(ops.unpack_ternary(packed, 4099), q)
    q[-1, -1] = 2  # in the last task
    with pytest.raises(ValueError, match="pack_ternary: q must hold only -1, 0 and 1"):
        ops.pack_ternary(q)


def test_bit_order_is_lsb_first():
    w = torch.tensor([[1.0, -1.0, -1.0, 0.0, -2.0, -2.0, -2.0, -2.0, 5.0]])  # sign(0) = +1
    assert ops.pack_binary(w).tolist() == [[0b00001001, 0b00000001]]
    q = torch.tensor([[1, -1, 0, 1]], dtype=torch.int8)
    assert ops.pack_ternary(q).tolist() == [[0b1001, 0b0010]]


def weights_to_quantize(shape, dtype, layout):
    """Random weights with the rows whose scale is an edge case (all zero: s = 0; all
    subnormal in fp32: s subnormal, not 0), contiguous or as a transposed / offset view."""
    n, k = shape
    w = random_input((n, k), dtype)
    if n >= 3 and k > 0:
        w[1] = 0.0
        if dtype == torch.float32:
            w[2] = torch.tensor([2e-40, -3e-40]).repeat(k)[:k]
    if layout == "transposed":
        return w.t().contiguous().t()
    if layout == "offset":
        return torch.cat([torch.zeros(n, 3, dtype=dtype), w], dim=1)[:, 3:]
    return w


def assert_alpha_like_reference(alpha, expected):
    # Both sum |w| in double (in other orders) and round once to fp32: equal but in the odd
    # last bit of a mean that lies within the double sums' error of an fp32 rounding tie.
    torch.testing.assert_close(alpha, expected, rtol=2**-23, atol=0, equal_nan=True)


def assert_ternarized_like_reference(packed, scale, w, per_channel):
    assert_alpha_like_reference(scale, ref.ternarize_weight(w, per_channel)[1])
    s = scale.reshape(-1, 1) if per_channel else scale
    assert_same_bits(packed, ref.pack_ternary(ref.ternary_codes(w, s.to(w.device))))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(5, 1), (7, 33), (3, 4097), (0, 9), (4, 0), (300, 700)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "offset"])
def test_binarize_and_ternarize_weight_match_the_reference(two_threads, dtype, shape, layout):
    # (300, 700): rows over both threads' tasks
    w = weights_to_quantize(shape, dtype, layout)
    for group_size in (None, 16, 7, 5000):  # 7 leaves a ragged last group, 5000 > K
        packed, alpha = ops.binarize_weight(w, group_size)
        expected_packed, expected_alpha = ref.binarize_weight(w, group_size)
        assert_same_bits(packed, expected_packed)
        assert alpha.dtype == torch.float32 and alpha.shape == expected_alpha.shape
        assert_alpha_like_reference(alpha, expected_alpha)
    for per_channel in (True, False):
        packed, scale = ops.ternarize_weight(w, per_channel)
        assert scale.shape == ((shape[0],) if per_channel else (1,))
        assert_ternarized_like_reference(packed, scale, w, per_channel)


def test_ternarize_weight_rounds_ties_to_even_and_clamps():
    # s = mean |w| = 2: w / s = 0.5 and -0.5 round to 0 (ties to even), 1.5 and -1.5 clamp to +-1
    w = torch.tensor([[1.0, 3.0, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0]])
    packed, scale = ops.ternarize_weight(w)
    assert scale.tolist() == [2.0, 0.0]
    assert ops.unpack_ternary(packed, 4).tolist() == [[0, 1, 0, -1], [0, 0, 0, 0]]
    # A mean below fp32's range rounds to s = 0: the row is all 0, not +-1 from w / 0
    tiny = torch.zeros(1, 4096)
    tiny[0, 7] = 1e-45  # the smallest subnormal; its mean over 4096 weights rounds to 0
    packed, scale = ops.ternarize_weight(tiny)
    assert scale.item() == 0.0 and ops.unpack_ternary(packed, 4096).abs().sum() == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_binarize_and_ternarize_weight_refuse_nan_and_inf(two_threads, value):
    w = random_input((300, 700))
    w[217, 5] = value
    w[250, 0] = value  # the first bad row is the one named
    for op, option in [("binarize_weight", None), ("binarize_weight", 64),
                       ("ternarize_weight", True), ("ternarize_weight", False)]:
        with pytest.raises(ValueError, match=f"{op}: w contains NaN or Inf \\(first in row 217\\)"):
            getattr(ops, op)(w, option)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16, 17, 40])  # both sides of the bits / dequantize switch
@pytest.mark.parametrize("k", ODD_K)
def test_binary_and_ternary_linear_match_reference(isa, dtype, m, k):
    n = 37
    x, w = random_input((m, k), dtype, scale=1.0), random_input((n, k))
    bias = torch.randn(n)
    packed, alpha = ref.binarize_weight(w)
    torch.testing.assert_close(ops.binary_linear(x, packed, alpha, bias), ref.binary_linear(x, packed, alpha, bias),
                               **tolerance(dtype, k))
    tpacked, scale = ref.ternarize_weight(w)
    torch.testing.assert_close(ops.ternary_linear(x, tpacked, scale, bias), ref.ternary_linear(x, tpacked, scale, bias),
                               **tolerance(dtype, k))
    tpacked, scale = ref.ternarize_weight(w, per_channel=False)
    torch.testing.assert_close(ops.ternary_linear(x, tpacked, scale), ref.ternary_linear(x, tpacked, scale),
                               **tolerance(dtype, k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16, 40])
@pytest.mark.parametrize("with_lut", [False, True])
def test_inf_and_nan_in_x_give_what_float_products_give(isa, dtype, m, with_lut):
    # The bit kernels skip zero weights and take binary products from row totals; a row
    # with Inf or NaN must still give the reference's float products: Inf * 0 = NaN for
    # ternary weights, +-Inf (not Inf - Inf) for binary ones.
    n, k = 70, 300
    x, w = random_input((m, k), dtype, scale=1.0), random_input((n, k))
    bad = {0: float("inf"), m // 2: float("-inf"), m - 1: float("nan")}
    for row, value in bad.items():
        x[row, 3 * row + 1] = value
    for planes, (packed, scale) in [(1, ref.binarize_weight(w)), (2, ref.ternarize_weight(w))]:
        linear, reference = (ops.binary_linear, ref.binary_linear) if planes == 1 else (ops.ternary_linear,
                                                                                       ref.ternary_linear)
        expected = reference(x, packed, scale)
        assert (~torch.isfinite(expected[m - 1])).all()  # the test means something
        lut = [ops.lut_tiles(packed, k, planes)] if with_lut else []
        out = linear(x, packed, scale, None, *([None] if planes == 1 else []), *lut)
        torch.testing.assert_close(out, expected, equal_nan=True, **tolerance(dtype, k))


@pytest.mark.parametrize("x_shape,n", [((0, 40), 9), ((3, 40), 0), ((3, 0), 9), ((2, 3, 0), 9), ((0, 0), 0)])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # nn.Linear(0, n)
def test_empty_dimensions_match_reference(isa, x_shape, n):
    # No rows, no output features, or no input features (K = 0: every product is the bias).
    k = x_shape[-1]
    x, w, bias = torch.randn(x_shape), random_input((n, k)), torch.randn(n)
    packed, alpha = ref.pack_binary(w), torch.rand(n) + 0.5  # (mean |w| over K = 0 values is NaN)
    tpacked, scale = ref.ternarize_weight(w)
    cases = [(ops.binary_linear(x, packed, alpha, bias), ref.binary_linear(x, packed, alpha, bias)),
             (ops.binary_linear(x, packed, alpha, bias, None, ops.lut_tiles(packed, k, 1)),
              ref.binary_linear(x, packed, alpha, bias)),
             (ops.ternary_linear(x, tpacked, scale, bias), ref.ternary_linear(x, tpacked, scale, bias)),
             (ops.ternary_linear(x, tpacked, scale, bias, ops.lut_tiles(tpacked, k, 2)),
              ref.ternary_linear(x, tpacked, scale, bias)),
             (ops.xnor_linear(x, packed, alpha, bias), ref.xnor_linear(x, packed, alpha, bias))]
    linear = torch.nn.Linear(k, n)
    binary, ternary = ek.nn.BinaryLinear.from_float(linear), ek.nn.TernaryLinear.from_float(linear)
    cases += [(binary(x), ref.binary_linear(x, binary.weight_packed, binary.alpha, binary.bias)),
              (ternary(x), ref.ternary_linear(x, ternary.weight_packed, ternary.weight_scale, ternary.bias))]
    assert_products_match(cases, k, atol=1e-4)


def test_layers_quantize_their_weights_as_the_reference_does():
    # Rows the scale's edge cases cover: all zero (s = 0), all subnormal (s subnormal, not 0)
    w = random_input((6, 40), scale=1.0)
    w[1] = 0.0
    w[2] = torch.tensor([2e-40, -2e-40] * 20)
    linear = torch.nn.Linear(40, 6)
    with torch.no_grad():
        linear.weight.copy_(w)
    for per_channel in (True, False):
        ternary = ek.nn.TernaryLinear.from_float(linear, per_channel=per_channel)
        assert_ternarized_like_reference(ternary.weight_packed, ternary.weight_scale, w, per_channel)
    assert ref.unpack_ternary(ek.nn.TernaryLinear.from_float(linear).weight_packed, 40)[2].abs().sum() == 40
    for group_size in (None, 16):
        binary = ek.nn.BinaryLinear.from_float(linear, group_size=group_size)
        packed, alpha = ref.binarize_weight(w, group_size)
        assert_same_bits(binary.weight_packed, packed)
        assert_alpha_like_reference(binary.alpha, alpha)


@pytest.mark.parametrize("layer,op", [(ek.nn.BinaryLinear, "binarize_weight"),
                                      (ek.nn.TernaryLinear, "ternarize_weight")])
def test_from_float_fills_every_buffer_of_the_layer_it_builds_on_meta(monkeypatch, layer, op):
    linear = torch.nn.Linear(40, 6)
    made = layer.from_float(linear)
    assert not any(buffer.is_meta for buffer in made.buffers()) and torch.equal(made.bias, linear.bias.detach())
    real = getattr(ops, op)
    # an op that left the scales unset (as a change to from_float could): caught, named
    monkeypatch.setattr(ops, op, lambda w, *args: (real(w, *args)[0], torch.empty(6, device="meta")))
    with pytest.raises(RuntimeError, match=r"from_float left \['(alpha|weight_scale)'\] unset"):
        layer.from_float(linear)


@pytest.mark.parametrize("m", [3, 40])  # bits, then torch's GEMM over expanded weights
@pytest.mark.parametrize("group_size,k", [(16, 48), (64, 200), (128, 4097)])
def test_binary_linear_per_group_alpha(isa, m, group_size, k):
    x, w = random_input((m, k), scale=1.0), random_input((20, k))
    packed, alpha = ref.binarize_weight(w, group_size)
    expected = ref.binary_linear(x, packed, alpha, group_size=group_size)
    torch.testing.assert_close(ops.binary_linear(x, packed, alpha, None, group_size), expected,
                               **tolerance(torch.float32, k))


# Batches without a lut run on torch's GEMM over expanded weights; with AMX, 16-bit x stays
# 16-bit and the weights expand in chunks of at most 15 x 2^20 (gemm_over_weight_chunks), of
# one width but the last: 4101 x 4096 of them are a chunk of 2051 columns and one of 2050.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_batches_over_more_than_one_chunk_of_expanded_weights(isa, two_threads, dtype):
    m, n, k = 20, 4101, 4096
    x, w = random_input((m, k), dtype, scale=1.0), random_input((n, k))
    packed, alpha = ref.binarize_weight(w)
    bias = torch.randn(n).to(dtype)
    torch.testing.assert_close(ops.binary_linear(x, packed, alpha, bias), ref.binary_linear(x, packed, alpha, bias),
                               **tolerance(dtype, k))


# With AMX, 16-bit x holding an Inf or NaN is widened to fp32 for torch's GEMM, whose bf16
# kernel let this NaN spoil the row before its own too. The NaN is found by a scan of x's
# bits that two threads share (84000 values): row 3 is in the first's half, row 30 in the
# second's.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("row", [3, 30])
def test_a_nan_anywhere_in_16bit_x_spoils_only_its_own_row(isa, two_threads, dtype, row):
    m, n, k = 40, 1000, 2100
    x, w = random_input((m, k), dtype, scale=1.0), random_input((n, k))
    x[row, 11] = float("nan")
    packed, alpha = ref.binarize_weight(w)
    out = ops.binary_linear(x, packed, alpha)
    assert (~torch.isfinite(out)).any(1).nonzero().flatten().tolist() == [row]
    torch.testing.assert_close(out, ref.binary_linear(x, packed, alpha), equal_nan=True, **tolerance(dtype, k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,k", [(1, 1), (3, 7), (5, 33), (2, 4097), (20, 300)])
def test_xnor_linear_is_exact(isa, dtype, m, k):
    x, w = random_input((m, k), dtype), random_input((29, k))
    packed, alpha = ref.binarize_weight(w)
    bias = torch.randn(29)
    assert_same_bits(ops.xnor_linear(x, packed, alpha, bias), ref.xnor_linear(x, packed, alpha, bias))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_xnor_linear_is_exact_at_every_tile_edge(isa, dtype):
    # Rows 1-5 by outputs 1-9: every remainder of the popcount tiles (up to 2 x 4), which the
    # shapes above (29 outputs) left out.
    for m in range(1, 6):
        for n in range(1, 10):
            x, w = random_input((m, 100), dtype), random_input((n, 100))
            packed, alpha = ref.binarize_weight(w)
            bias = torch.randn(n)
            assert_same_bits(ops.xnor_linear(x, packed, alpha, bias), ref.xnor_linear(x, packed, alpha, bias))


def with_pad_bits_set(packed: torch.Tensor, k: int, planes: int) -> torch.Tensor:
    """packed with every bit past K set in each plane's last byte: K comes from x, so those
    bits hold no weights and every product must ignore them (reference.py unpacks K of them)."""
    out, plane = packed.clone(), (k + 7) // 8
    for p in range(planes):
        out[:, (p + 1) * plane - 1] |= (0xFF << (k % 8)) & 0xFF
    return out


def check_bits_past_k_hold_no_weights(m: int, k: int, device: str) -> None:
    x, w = random_input((m, k), torch.bfloat16, scale=1.0), random_input((70, k))
    on = {"device": device}
    packed, alpha = ref.binarize_weight(w)
    dirty = with_pad_bits_set(packed, k, 1)
    expected = ref.binary_linear(x, packed, alpha)
    luts = (None, ops.lut_tiles(dirty, k, 1)) if device == "cpu" else (None,)  # CUDA reads the rows
    for lut in luts:
        torch.testing.assert_close(ops.binary_linear(x.to(**on), dirty.to(**on), alpha.to(**on), None, None, lut).cpu(),
                                   expected, **tolerance(torch.bfloat16, k))
    group_alpha = ref.binarize_weight(w, 32)[1]
    group_lut = ops.lut_tiles(dirty, k, 1) if device == "cpu" else None
    torch.testing.assert_close(
        ops.binary_linear(x.to(**on), dirty.to(**on), group_alpha.to(**on), None, 32, group_lut).cpu(),
        ref.binary_linear(x, packed, group_alpha, None, 32), **tolerance(torch.bfloat16, k))
    xnor = ops.xnor_linear(x.to(**on), dirty.to(**on), alpha.to(**on)).cpu()
    if device == "cpu":
        assert_same_bits(xnor, ref.xnor_linear(x, packed, alpha))
    else:  # the device's fp32 mean |x| may move the last bit (test_cuda_binary_family_matches_reference)
        torch.testing.assert_close(xnor, ref.xnor_linear(x, packed, alpha), rtol=torch.finfo(torch.bfloat16).eps,
                                   atol=1e-5)
    tpacked, scale = ref.ternarize_weight(w)
    tdirty = with_pad_bits_set(tpacked, k, 2)
    expected = ref.ternary_linear(x, tpacked, scale)
    for lut in ((None, ops.lut_tiles(tdirty, k, 2)) if device == "cpu" else (None,)):
        torch.testing.assert_close(ops.ternary_linear(x.to(**on), tdirty.to(**on), scale.to(**on), None, lut).cpu(),
                                   expected, **tolerance(torch.bfloat16, k))


@pytest.mark.parametrize("m", [1, 8, 17, 40])  # the tables, lanes, the int8 GEMM, the expanded GEMM
@pytest.mark.parametrize("k", [1, 7, 33, 250])
def test_bits_past_k_hold_no_weights(isa, two_threads, m, k):
    check_bits_past_k_hold_no_weights(m, k, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 16, 40])  # the GEMV, then the expanded GEMM
@pytest.mark.parametrize("k", [7, 33, 250])
def test_cuda_bits_past_k_hold_no_weights(m, k):
    check_bits_past_k_hold_no_weights(m, k, "cuda")


def test_3d_and_non_contiguous_inputs(isa):
    x = random_input((2, 3, 2 * 40))[..., ::2]
    packed, alpha = ref.binarize_weight(random_input((9, 40)))
    out = ops.binary_linear(x, packed, alpha)
    assert out.shape == (2, 3, 9)
    torch.testing.assert_close(out, ref.binary_linear(x.contiguous(), packed, alpha), rtol=1e-4, atol=1e-4)
    assert_same_bits(ops.xnor_linear(x, packed, alpha), ref.xnor_linear(x.contiguous(), packed, alpha))


@pytest.mark.parametrize("case", range(18))
def test_opcheck(case):
    x, w = random_input((5, 37)), random_input((6, 37))
    packed, alpha = ref.binarize_weight(w)
    group_alpha = ref.binarize_weight(w, 16)[1]
    tpacked, scale = ref.ternarize_weight(w)
    batch = random_input((9, 37))  # with a lut: on the int8 GEMM where there is AMX
    e = torch.ops.effgen
    cases = [
        (e.pack_binary.default, (w,)),
        (e.unpack_binary.default, (packed, 37)),
        (e.pack_ternary.default, (torch.randint(-1, 2, (6, 37), dtype=torch.int8),)),
        (e.unpack_ternary.default, (tpacked, 37)),
        (e.binary_linear.default, (x, packed, alpha, torch.randn(6), None)),
        (e.ternary_linear.default, (x, tpacked, scale, None)),
        (e.xnor_linear.default, (x, packed, alpha, None)),
        (e.binarize_weight.default, (w, None)),
        (e.binarize_weight.default, (w, 16)),
        (e.ternarize_weight.default, (w, True)),
        (e.ternarize_weight.default, (w, False)),
        (e.binary_linear.default, (batch, packed, alpha, torch.randn(6), None, ops.lut_tiles(packed, 37, 1))),
        (e.ternary_linear.default, (batch, tpacked, scale, None, ops.lut_tiles(tpacked, 37, 2))),
        (e.binary_linear.default, (batch, packed, group_alpha, None, 16, ops.lut_tiles(packed, 37, 1))),
        # groups of 32: on the tables with per-group alphas
        (e.binary_linear.default, (x, packed, ref.binarize_weight(w, 32)[1], torch.randn(6), 32,
                                   ops.lut_tiles(packed, 37, 1, 32))),
        (e.lut_tiles.default, (packed, 37, 1)),
        (e.lut_tiles.default, (tpacked, 37, 2)),
        (e.lut_tiles.default, (packed, 37, 1, 32)),
    ]
    opcheck(*cases[case])


def test_bad_inputs_name_the_argument():
    x = torch.randn(3, 20)
    packed, alpha = ref.binarize_weight(torch.randn(4, 20))
    with pytest.raises(ValueError, match="binary_linear: packed must be \\[N, 3\\] for K = 20"):
        ops.binary_linear(x, packed[:, :2], alpha)
    with pytest.raises(TypeError, match="packed must be uint8"):
        ops.binary_linear(x, packed.to(torch.int8), alpha)
    with pytest.raises(ValueError, match="group_size must be a multiple of 16"):
        ops.binary_linear(torch.randn(3, 24), ops.pack_binary(torch.randn(4, 24)), torch.ones(4, 3), None, 8)
    with pytest.raises(ValueError, match="pack_ternary: q must hold only -1, 0 and 1"):
        ops.pack_ternary(torch.tensor([[0, 2]], dtype=torch.int8))
    with pytest.raises(TypeError, match="xnor_linear: x must be float32"):
        ops.xnor_linear(x.double(), packed, alpha)
    with pytest.raises(ValueError, match="group_size must be a positive multiple of 16"):
        ek.BinaryConfig(group_size=10)
    with pytest.raises(TypeError, match="binarize_weight: w must be float32"):
        ops.binarize_weight(torch.ones(4, 20, dtype=torch.int8))
    with pytest.raises(ValueError, match="ternarize_weight: w must be 2-D \\[N, K\\], got shape \\[20\\]"):
        ops.ternarize_weight(torch.randn(20))
    with pytest.raises(ValueError, match="binarize_weight: group_size must be positive, got 0"):
        ops.binarize_weight(torch.randn(4, 20), 0)
    with pytest.raises(ValueError, match="lut_tiles: group_size is for binary weights' per-group alphas"):
        ops.lut_tiles(ref.ternarize_weight(torch.randn(4, 20))[0], 20, 2, 32)
    with pytest.raises(ValueError, match="lut_tiles: group_size must be positive, got 0"):
        ops.lut_tiles(packed, 20, 1, 0)


@pytest.mark.parametrize("make", [lambda **kw: ek.BinaryConfig(**kw), lambda **kw: ek.nn.BinaryLinear(32, 4, **kw),
                                  lambda **kw: ek.nn.BinaryTrainLinear(32, 4, **kw)],
                         ids=["config", "layer", "trainable layer"])
def test_every_binary_layer_refuses_options_it_cannot_pack_when_made(make):
    # The trainable layer took per-group alphas with binary activations and failed only when
    # packed for inference, after the training.
    with pytest.raises(ValueError, match="binary_activations uses one alpha per output channel: group_size must be"):
        make(group_size=16, binary_activations=True)
    for bad in (0, -16, 10):
        with pytest.raises(ValueError, match=f"group_size must be a positive multiple of 16 or None, got {bad}"):
            make(group_size=bad)
    make(group_size=16)
    make(binary_activations=True)


@pytest.mark.parametrize("make", [lambda **kw: ek.Int8WeightOnlyConfig(**kw),
                                  lambda **kw: ek.nn.Int8WeightOnlyLinear(32, 4, **kw)], ids=["config", "layer"])
def test_weight_only_int8_refuses_a_group_size_below_one(make):
    for bad in (0, -128):
        with pytest.raises(ValueError, match=f"group_size must be positive or None, got {bad}"):
            make(group_size=bad)
    make(group_size=3)


def test_binary_and_ternary_layers_describe_their_formats():
    binary = ek.nn.BinaryLinear.from_float(torch.nn.Linear(48, 5))
    assert repr(binary) == ("BinaryLinear(in_features=48, out_features=5, bias=True, weights=1-bit per-channel alpha, "
                            "activations=float)")
    grouped = ek.nn.BinaryLinear(48, 5, bias=False, group_size=16)
    assert "bias=False, weights=1-bit per-group (group_size=16) alpha" in repr(grouped)
    assert "activations=binary (XNOR-popcount)" in repr(ek.nn.BinaryLinear(48, 5, binary_activations=True))
    ternary = ek.nn.TernaryLinear.from_float(torch.nn.Linear(48, 5, bias=False), per_channel=False)
    assert repr(ternary) == ("TernaryLinear(in_features=48, out_features=5, bias=False, weights=ternary (2-bit) "
                             "per-tensor scale)")
    assert "per-channel scale" in repr(ek.nn.TernaryLinear(48, 5))


# ---------------------------------------------------------------------------------------
# layers, quantize_, prepare / convert, training
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [lambda lin: ek.nn.BinaryLinear.from_float(lin),
                                    lambda lin: ek.nn.BinaryLinear.from_float(lin, group_size=32),
                                    lambda lin: ek.nn.BinaryLinear.from_float(lin, binary_activations=True),
                                    lambda lin: ek.nn.TernaryLinear.from_float(lin),
                                    lambda lin: ek.nn.TernaryLinear.from_float(lin, per_channel=False)])
def test_layers_state_dict_and_compile(module):
    linear = torch.nn.Linear(96, 24)
    layer = module(linear)
    x = random_input((4, 96), scale=1.0)
    fresh = type(layer)(96, 24, True, *([layer.group_size, layer.binary_activations]
                                        if isinstance(layer, ek.nn.BinaryLinear) else [layer.per_channel]))
    fresh.load_state_dict(layer.state_dict())
    assert_same_bits(fresh(x), layer(x))
    assert all(t.dtype in (torch.uint8, torch.float32) for key, t in layer.state_dict().items() if key != "group_size")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert_same_bits(compiled(x), layer(x))


@pytest.mark.parametrize("config", [ek.BinaryConfig(), ek.BinaryConfig(group_size=32),
                                    ek.BinaryConfig(binary_activations=True), ek.TernaryConfig()])
def test_prepare_train_convert_gives_identical_outputs(config):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10))
    ek.prepare(model, config)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = random_input((16, 64), scale=1.0), torch.randint(0, 10, (16,))
    before = model[0].weight.detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(model[0].weight, before)
    model.eval()
    expected = model(x)
    assert ek.convert(model) == ["0", "2"]
    assert_same_bits(model(x), expected)
    assert type(model[0]).__name__ in ("BinaryLinear", "TernaryLinear")


def test_sign_ste_clips_the_gradient():
    layer = ek.nn.BinaryTrainLinear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2, 1.5, -3.0]]))
    layer(torch.ones(1, 4)).sum().backward()
    # y = alpha * sum(sign(w)) = 0 here, so alpha contributes no gradient and only the
    # straight-through part remains: alpha (= mean |w| = 1.3) where |w| <= 1, else 0.
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[1.3, 1.3, 0.0, 0.0]]))


def test_quantize_reports_binary_and_ternary_sizes():
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    summary = ek.quantize_(model, ek.BinaryConfig(), filter_fn=lambda module, name: name != "2")
    # In memory: the packed bits plus their lookup-table copy (2 bits per weight) and fp32 alpha/bias.
    assert summary.converted == ["0"] and summary.bytes_after < summary.bytes_before / 12
    summary = ek.quantize_(model, ek.TernaryConfig())
    assert summary.converted == ["2"]


def test_binary_mlp_learns_digits():
    """examples/binary_mnist_like.py: 1-bit hidden layers trained with the STE, converted to
    packed BinaryLinear modules."""
    pytest.importorskip("sklearn.datasets")
    result = load_example("binary_mnist_like").run(epochs=40)
    model = result["binary_model"]
    assert isinstance(model[0], ek.nn.BinaryLinear) and isinstance(model[3], ek.nn.BinaryLinear)
    print(f"binary-weight MLP on digits: test accuracy {result['binary_accuracy']:.3f} (fp32 "
          f"{result['fp32_accuracy']:.3f}, chance 0.1)")
    assert result["binary_accuracy"] == result["binary_accuracy_before_convert"]
    assert result["binary_accuracy"] >= 0.85
    assert result["binary_hidden_bytes"] < result["fp32_hidden_bytes"] / 4


# ---------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------
def test_cuda_bits_decode_on_the_host(tmp_path):
    # The tensor-core bit GEMV's decode of packed signs / ternary planes into bf16 and fp16
    # +1 / -1 / 0 pairs, run on the CPU (tests/cuda_host/bits_pairs.cu).
    run_cuda_host_check("bits_pairs", tmp_path)


def test_cuda_expand_bits_on_the_host(tmp_path):
    # The CUDA expansion of packed weights into int8 / fp32 / bf16 / fp16 codes (unpack_* and
    # the many-row products' weights), 8 a thread, run on the CPU against a plain decode,
    # nothing written past the rows (tests/cuda_host/expand_bits.cu).
    run_cuda_host_check("expand_bits", tmp_path)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 9, 16, 17, 64])  # the tensor-core GEMV's one and two mmas of 8 rows, then not
@pytest.mark.parametrize("k", ODD_K + [64, 4096])  # k % 32 == 0: the GEMV's word loads and 16-byte x loads
def test_cuda_binary_family_matches_reference(skinny, dtype, m, k):
    x, w = random_input((m, k), dtype, scale=1.0), random_input((45, k))
    bias = torch.randn(45)
    packed, alpha = ref.binarize_weight(w)
    tpacked, scale = ref.ternarize_weight(w)
    assert_same_bits(ops.pack_binary(w.cuda()).cpu(), packed)
    assert_same_bits(ops.unpack_binary(packed.cuda(), k).cpu(), ref.unpack_binary(packed, k))
    assert_same_bits(ops.unpack_ternary(tpacked.cuda(), k).cpu(), ref.unpack_ternary(tpacked, k))
    assert_same_bits(ops.pack_ternary(ops.unpack_ternary(tpacked.cuda(), k)).cpu(), tpacked)
    tol = tolerance(dtype, k)
    torch.testing.assert_close(ops.binary_linear(x.cuda(), packed.cuda(), alpha.cuda(), bias.cuda()).cpu(),
                               ref.binary_linear(x, packed, alpha, bias), **tol)
    torch.testing.assert_close(ops.ternary_linear(x.cuda(), tpacked.cuda(), scale.cuda(), bias.cuda()).cpu(),
                               ref.ternary_linear(x, tpacked, scale, bias), **tol)
    # Exact but for the fp32 mean |x| (summed in the device's order), whose last bit can move
    # a bf16/fp16 result by one unit in the last place.
    xnor_rtol = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(ops.xnor_linear(x.cuda(), packed.cuda(), alpha.cuda(), bias.cuda()).cpu(),
                               ref.xnor_linear(x, packed, alpha, bias), rtol=xnor_rtol, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(5, 1), (7, 33), (3, 4097), (0, 9), (4, 0)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_cuda_binarize_and_ternarize_weight_match_the_reference(dtype, shape, layout):
    w = weights_to_quantize(shape, dtype, layout)
    for group_size in (None, 16, 7, 5000):
        packed, alpha = ops.binarize_weight(w.cuda(), group_size)
        expected_packed, expected_alpha = ref.binarize_weight(w, group_size)
        assert_same_bits(packed.cpu(), expected_packed)
        assert_alpha_like_reference(alpha.cpu(), expected_alpha)
    for per_channel in (True, False):
        packed, scale = ops.ternarize_weight(w.cuda(), per_channel)
        assert_ternarized_like_reference(packed.cpu(), scale.cpu(), w, per_channel)
    w = random_input((40, 64)).cuda()
    w[9, 3] = float("nan")
    with pytest.raises(ValueError, match="ternarize_weight: w contains NaN or Inf \\(first in row 9\\)"):
        ops.ternarize_weight(w)
    opcheck(torch.ops.effgen.binarize_weight.default, (w[:8], 16))
    opcheck(torch.ops.effgen.ternarize_weight.default, (w[:8], False))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [33, 64, 4097])  # expanded codes stored 8 at a time where k % 8 == 0
def test_cuda_many_row_bits_products_are_the_expanded_gemm(dtype, k):
    # Past the GEMVs' rows the codes are expanded in x's dtype and multiplied on cuBLAS with
    # fp32 sums, scaled and biased in one pass: bit for bit the ATen composite of the same
    # steps (codes, mm with fp32 sums, mul, add, to) on the same device.
    m, n = 40, 45
    x, w = random_input((m, k), dtype, scale=1.0).cuda(), random_input((n, k))
    bias = torch.randn(n).cuda()
    packed, alpha = ref.binarize_weight(w)
    tpacked, scale = ref.ternarize_weight(w, per_channel=False)
    cases = [(ops.binary_linear(x, packed.cuda(), alpha.cuda(), bias), ref.unpack_binary(packed, k), alpha),
             (ops.ternary_linear(x, tpacked.cuda(), scale.cuda(), bias), ref.unpack_ternary(tpacked, k), scale)]
    for out, codes, channel_scale in cases:
        w_codes = codes.cuda().to(dtype).t()
        sums = torch.mm(x, w_codes) if dtype == torch.float32 else torch.ops.aten.mm.dtype(x, w_codes, torch.float32)
        assert_same_bits(out, (sums * channel_scale.cuda() + bias).to(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16, 40])  # kernels of 1, 4 and 16 rows a block, then several blocks
@pytest.mark.parametrize("k", [33, 64, 576, 4096])  # bytes, words (8 and 72 bytes a row), 16-byte pieces
def test_cuda_xnor_linear_is_its_composite_bit_for_bit(dtype, m, k):
    # One kernel counts the disagreements and applies reference.xnor_linear's epilogue: the
    # same bits as those steps in ATen on the device, given the same mean |x| (ATen's).
    n = 45
    x, w = random_input((m, k), dtype, scale=1.0).cuda(), random_input((n, k))
    packed, alpha = ref.binarize_weight(w)
    signs_x = torch.where(x.cpu() >= 0, 1, -1).to(torch.int64)
    dot = (signs_x @ ref.unpack_binary(packed, k).to(torch.int64).T).float().cuda()
    x_scale = x.float().abs().mean(1, keepdim=True)
    for channel_alpha, bias in [(alpha, torch.randn(n)), (alpha[:1], None)]:
        a = channel_alpha.cuda()
        expected = dot * x_scale * a.reshape(1, -1)
        if bias is not None:
            expected = expected + bias.cuda()
        got = ops.xnor_linear(x, packed.cuda(), a, None if bias is None else bias.cuda())
        assert_same_bits(got, expected.to(dtype))
    # Bits past K hold no weights (with_pad_bits_set): the same result with them all set.
    got = ops.xnor_linear(x, with_pad_bits_set(packed, k, 1).cuda(), alpha.cuda())
    assert_same_bits(got, (dot * x_scale * alpha.cuda().reshape(1, -1)).to(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 3, 16, 40])  # each register-row count of the GEMV, then cuBLAS
# Groups of 16 split the GEMV's 32-bit words; 64 and 128 hold whole words.
@pytest.mark.parametrize("group_size,k", [(16, 48), (16, 203), (64, 200), (128, 4097), (16, 64), (64, 256)])
def test_cuda_binary_linear_per_group_alpha(m, group_size, k):
    x, w = random_input((m, k), scale=1.0), random_input((45, k))
    packed, alpha = ref.binarize_weight(w, group_size)
    out = ops.binary_linear(x.cuda(), packed.cuda(), alpha.cuda(), None, group_size)
    torch.testing.assert_close(out.cpu(), ref.binary_linear(x, packed, alpha, group_size=group_size),
                               **tolerance(torch.float32, k))


@pytest.mark.cuda
@pytest.mark.parametrize("x_shape,n", [((0, 40), 9), ((3, 40), 0), ((3, 0), 9), ((2, 3, 0), 9)])
def test_cuda_empty_dimensions_match_reference(x_shape, n):
    k = x_shape[-1]
    x, w, bias = torch.randn(x_shape), random_input((n, k)), torch.randn(n)
    packed, alpha = ref.pack_binary(w), torch.rand(n) + 0.5
    tpacked, scale = ref.ternarize_weight(w)
    cases = [(ops.binary_linear(x.cuda(), packed.cuda(), alpha.cuda(), bias.cuda()),
              ref.binary_linear(x, packed, alpha, bias)),
             (ops.ternary_linear(x.cuda(), tpacked.cuda(), scale.cuda(), bias.cuda()),
              ref.ternary_linear(x, tpacked, scale, bias)),
             (ops.xnor_linear(x.cuda(), packed.cuda(), alpha.cuda(), bias.cuda()),
              ref.xnor_linear(x, packed, alpha, bias))]
    assert_products_match(cases, k, atol=1e-4)


@pytest.mark.cuda
def test_cuda_binary_opcheck_and_layers():
    x, w = random_input((5, 37)).cuda(), random_input((6, 37)).cuda()
    packed, alpha = ops.pack_binary(w), w.abs().mean(1)
    opcheck(torch.ops.effgen.binary_linear.default, (x, packed, alpha, None, None))
    opcheck(torch.ops.effgen.xnor_linear.default, (x, packed, alpha, None))
    model = torch.nn.Sequential(torch.nn.Linear(37, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).cuda()
    ek.quantize_(model, ek.TernaryConfig())
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


def lut_width(isa):
    """Inputs per lookup in the layout lut_tiles makes on `isa` (LutLayout in binary_gemm.h)."""
    return 3 if isa == "avx2" else 4


def ceil_div(a, b):
    return -(-a // b)


def decode_lut(lut, n, k, planes, width):
    """int8 [n, k] weights (ternary: positive minus negative) read back from a lut tensor as
    binary_gemm.h documents its layout: per tile of 16 rows, words of 16 uint32 lanes, lane r
    holding 32 // width fields of `width` bits of row r; slot s = group * planes + plane."""
    fields = 32 // width
    lanes = lut.contiguous().view(torch.int32).view(lut.shape[0], -1, 16).to(torch.int64) & 0xFFFFFFFF
    groups = ceil_div(k, width)
    out = torch.zeros(lanes.shape[0] * 16, groups * width, dtype=torch.int8)
    for g in range(groups):
        for plane in range(planes):
            slot = g * planes + plane
            field = (lanes[:, slot // fields, :] >> (width * (slot % fields))).reshape(-1)
            for t in range(width):
                bit = ((field >> t) & 1).to(torch.int8)
                out[:, g * width + t] += -bit if plane == 1 else bit
    return out[:n, :k]


@pytest.mark.parametrize("n,k", [(5, 1), (20, 7), (33, 64), (17, 100), (200, 4099)])
def test_lut_tiles_hold_the_documented_layout(isa, n, k, two_threads):  # (200, 4099): several tasks of tiles
    w = random_input((n, k))
    packed, _ = ref.binarize_weight(w)
    tpacked, _ = ref.ternarize_weight(w)
    width = lut_width(isa)
    lut, tlut = ops.lut_tiles(packed, k, 1), ops.lut_tiles(tpacked, k, 2)
    assert lut.dtype == (torch.uint8 if width == 4 else torch.int32)
    # For per-group alphas: 4-input fields on every ISA.
    assert torch.equal(decode_lut(ops.lut_tiles(packed, k, 1, 32), n, k, 1, 4),
                       (ops.unpack_binary(packed, k) > 0).to(torch.int8))
    elements_per_word, groups, fields_per_lane = 64 // lut.element_size(), ceil_div(k, width), 32 // width
    assert lut.shape == (ceil_div(n, 16), ceil_div(groups, fields_per_lane) * elements_per_word)
    assert tlut.shape == (ceil_div(n, 16), ceil_div(2 * groups, fields_per_lane) * elements_per_word)
    # Binary fields hold the +1 bits.
    assert torch.equal(decode_lut(lut, n, k, 1, width), (ops.unpack_binary(packed, k) > 0).to(torch.int8))
    assert torch.equal(decode_lut(tlut, n, k, 2, width), ops.unpack_ternary(tpacked, k))


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


@pytest.mark.parametrize("m,n,k", [(1, 5, 1), (1, 37, 7), (3, 40, 33), (8, 100, 4097), (2, 16, 64),
                                   (4, 17, 31), (5, 40, 95), (9, 33, 70), (70, 20, 129), (1, 20, 3000),
                                   (2, 33, 2500), (5, 2100, 95), (6, 2100, 200), (8, 2100, 400),
                                   (64, 2100, 129), (70, 2100, 129), (5, 400, 300), (6, 400, 300),
                                   (7, 100, 300), (13, 400, 1000), (40, 100, 129), (40, 128, 129),
                                   (70, 400, 129)])
# Row blocks of 8, table chunks of 64 rows; AVX2 also takes K in chunks whose tables fit L1
# (about 1500 inputs at 1 row, 750 at 2, 180 at 5-8 rows), and rows in lanes from 4 tiles a
# thread: 7-8 rows (binary 6; n = 400: 12 and 13 tiles over 2 threads; n = 100: 4 and 3, the
# second on the permutes; 13 rows: a block of 8 in lanes, one of 5 on the permutes), and
# binary 5 / ternary 6 rows from 64 tiles (n = 2100: 66 each). Without AVX-512, batches over
# 32 rows go to torch's GEMM over expanded weights instead, unless AVX2 holds them in lanes
# (n = 128 on 2 threads does, n = 100 does not): binary weights stay on its tables at 70
# rows, ternary ones up to 64 (the scalar and NEON kernels have no lanes).
def test_lookup_table_kernel_matches_reference(isa, two_threads, m, n, k):
    x, w = random_input((m, k), scale=1.0), random_input((n, k))
    packed, alpha = ref.binarize_weight(w)
    expected = ref.binary_linear(x, packed, alpha)
    torch.testing.assert_close(ops.binary_linear(x, packed, alpha, None, None, ops.lut_tiles(packed, k, 1)),
                               expected, **tolerance(torch.float32, k))
    tpacked, scale = ref.ternarize_weight(w)
    torch.testing.assert_close(ops.ternary_linear(x, tpacked, scale, None, ops.lut_tiles(tpacked, k, 2)),
                               ref.ternary_linear(x, tpacked, scale), **tolerance(torch.float32, k))
    opcheck(torch.ops.effgen.lut_tiles.default, (packed, k, 1))


@pytest.mark.parametrize("planes", [1, 2])
def test_batches_without_a_lanes_kernel_take_the_expanded_gemm_at_any_width(isa, two_threads, planes):
    # Only AVX2 holds activation rows in its table lanes (and AVX-512's tables win batches):
    # on the scalar and NEON kernels, which look up one row at a time, 40 rows over 2100
    # columns take torch's GEMM over expanded weights with a lut as without one.
    if isa not in ("scalar", "neon"):
        pytest.skip("this ISA's tables take the batch")
    m, n, k = 40, 2100, 64
    x, w = random_input((m, k), scale=1.0), random_input((n, k))
    if planes == 1:
        packed, alpha = ref.binarize_weight(w)
        assert_same_bits(ops.binary_linear(x, packed, alpha, None, None, ops.lut_tiles(packed, k, 1)),
                         ops.binary_linear(x, packed, alpha))
    else:
        packed, scale = ref.ternarize_weight(w)
        assert_same_bits(ops.ternary_linear(x, packed, scale, None, ops.lut_tiles(packed, k, 2)),
                         ops.ternary_linear(x, packed, scale))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", [(8, 37, 33), (9, 16, 7), (17, 100, 4097), (40, 70, 1), (200, 33, 250)])
# From 8 rows with AMX (with AVX-512: ternary from 16 rows, 8 for bf16 x; binary with bf16 x
# from 32), a product with a lut runs on the int8 GEMM: fixed-point activations times int8
# panels expanded from the tiles (binary_gemm.cpp, bits_on_int8_gemm). 200 rows are three
# row blocks on each panel; odd K leave the last quad partly past K.
def test_batches_with_a_lut_match_reference_on_every_isa(isa, two_threads, dtype, m, n, k):
    x, w = random_input((m, k), dtype, scale=1.0), random_input((n, k))
    bias = torch.randn(n)
    packed, alpha = ref.binarize_weight(w)
    torch.testing.assert_close(ops.binary_linear(x, packed, alpha, bias, None, ops.lut_tiles(packed, k, 1)),
                               ref.binary_linear(x, packed, alpha, bias), **tolerance(dtype, k))
    for per_channel in (True, False):
        tpacked, scale = ref.ternarize_weight(w, per_channel=per_channel)
        torch.testing.assert_close(ops.ternary_linear(x, tpacked, scale, bias, ops.lut_tiles(tpacked, k, 2)),
                                   ref.ternary_linear(x, tpacked, scale, bias), **tolerance(dtype, k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("group_size", [16, 128, 5008])  # 5008 >= K: alpha [N, 1]
@pytest.mark.parametrize("m,k", [(1, 33), (2, 33), (8, 4097), (200, 250)])
# Per-group alphas take the lut (lut_tiles with group_size) on the tables where groups are
# whole 32-input lanes and with AMX on the way to the int8 GEMM, where each K group's
# products are scaled on their own (from 2 rows for groups the tables cannot take, as 16);
# elsewhere it is ignored, as is a lut without group_size on AVX2 (30-input lanes).
def test_batches_with_a_lut_and_per_group_alpha_match_reference(isa, two_threads, dtype, group_size, m, k):
    x, w = random_input((m, k), dtype, scale=1.0), random_input((37, k))
    bias = torch.randn(37)
    packed, alpha = ref.binarize_weight(w, group_size)
    expected = ref.binary_linear(x, packed, alpha, bias, group_size)
    for lut in (ops.lut_tiles(packed, k, 1, group_size), ops.lut_tiles(packed, k, 1)):
        torch.testing.assert_close(ops.binary_linear(x, packed, alpha, bias, group_size, lut), expected,
                                   **tolerance(dtype, k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("group_size", [32, 96, 128])
@pytest.mark.parametrize("m,n,k", [(1, 70, 4097), (1, 37, 300), (3, 70, 256), (5, 16, 1000), (17, 37, 4097),
                                   (7, 2100, 4097), (17, 2100, 1000), (40, 2100, 300), (7, 400, 1000),
                                   (8, 128, 1000), (8, 100, 1000), (6, 400, 1000), (5, 400, 1000),
                                   (5, 2100, 300)])
# The tables with per-group alphas (lut_alpha_sums: scalar, AVX2, AVX-512 and NEON kernels,
# and AMX's below the rows it sends to the int8 GEMM) scale each group's sums as the group ends.
# 70 rows are a pass of 4 tiles and one of 1 (the last partly past N; AVX2: halves of 8
# rows), 17 rows three blocks of table rows; K = 4097 ends its last group inside a word.
# AVX2 holds 6-8 rows in lanes from 4 tiles a thread (n = 400: 12 and 13; 5 rows from 64 tiles,
# n = 2100: 66 each), its tables in
# chunks of 4 words, across which groups of 96 carry their sums; there batches over 32 rows
# stay on the tables too (40 rows: five blocks of 8; n = 128: 4 tiles each, n = 100: 4 and 3,
# the second on the permutes, as n = 37 on both).
def test_per_group_alpha_on_the_tables_matches_reference(isa, two_threads, dtype, group_size, m, n, k):
    x, w = random_input((m, k), dtype, scale=1.0), random_input((n, k))
    bias = torch.randn(n)
    packed, alpha = ref.binarize_weight(w, group_size)
    lut = ops.lut_tiles(packed, k, 1, group_size)
    torch.testing.assert_close(ops.binary_linear(x, packed, alpha, bias, group_size, lut),
                               ref.binary_linear(x, packed, alpha, bias, group_size), **tolerance(dtype, k))


@pytest.mark.parametrize("m,n,k,group_size", [(32, 96, 4096, 128), (40, 50, 1000, 64), (17, 37, 4097, 128),
                                              (24, 70, 2048, 512), (20, 40, 2048, 1024)])
def test_per_group_batches_on_the_int8_gemm_equal_w8a16_bit_for_bit(m, n, k, group_size):
    # fp32 x on the int8 route takes 3 digits a token. With +-1 weights a group's digit sums
    # combine in int32 (groups up to 512, int8_digits.h), with int8 weights in double: both
    # round the same integer once, so a binary layer equals W8A16 on its +-1 weights exactly.
    if "amx" not in ops.supported_cpu_isas():
        pytest.skip("the route runs on AMX tiles")
    x, w, bias = random_input((m, k), scale=1.0), random_input((n, k)), torch.randn(n)
    packed, alpha = ref.binarize_weight(w, group_size)
    w_packed, w_sum = ops.int8_pack_weight(ops.unpack_binary(packed, k), group_size)
    with ops.use_cpu_isa("amx"):
        assert_same_bits(ops.binary_linear(x, packed, alpha, bias, group_size, ops.lut_tiles(packed, k, 1, group_size)),
                         ops.int8_weight_only_linear_packed(x, w_packed, w_sum, alpha, bias, group_size))


@pytest.mark.parametrize("planes,dtype,rows,per_channel", [(2, torch.float32, 16, True), (2, torch.float32, 16, False),
                                                         (2, torch.bfloat16, 8, True), (2, torch.bfloat16, 8, False),
                                                         (1, torch.bfloat16, 32, True)])
def test_vnni_batches_on_the_int8_gemm_equal_w8a16_bit_for_bit(isa, two_threads, planes, dtype, rows, per_channel):
    # With AVX-512 (VNNI) too, not only AMX, ternary batches from 16 rows (8 for bf16 x, whose
    # tokens are 2 digit rows) and binary ones with bf16 x from 32 run on the int8 GEMM
    # (binary_gemm.cpp, int8_gemm_min_m): they then equal W8A16 on the weights' codes exactly,
    # which the tables' sums need not.
    if isa not in ("avx512", "amx"):
        pytest.skip("the tables take every batch here")
    k, n = 300, 70
    x, w, bias = random_input((rows, k), dtype, scale=1.0), random_input((n, k)), torch.randn(n).to(dtype)
    if planes == 2:
        packed, scale = ref.ternarize_weight(w, per_channel=per_channel)
        codes = ops.unpack_ternary(packed, k)
        product = ops.ternary_linear(x, packed, scale, bias, ops.lut_tiles(packed, k, 2))
    else:
        packed, scale = ref.binarize_weight(w)  # alpha per channel, binary_linear's only form without groups
        codes = ops.unpack_binary(packed, k)
        product = ops.binary_linear(x, packed, scale, bias, None, ops.lut_tiles(packed, k, 1))
    w_packed, w_sum = ops.int8_pack_weight(codes)
    assert_same_bits(product, ops.int8_weight_only_linear_packed(x, w_packed, w_sum,
                                                                 scale.reshape(-1).expand(n).contiguous(), bias))


def test_batches_with_a_lut_take_3d_and_non_contiguous_inputs(isa):
    x = random_input((2, 5, 2 * 40))[..., ::2]
    w = random_input((9, 40))
    packed, alpha = ref.binarize_weight(w)
    tpacked, scale = ref.ternarize_weight(w)
    out = ops.binary_linear(x, packed, alpha, None, None, ops.lut_tiles(packed, 40, 1))
    assert out.shape == (2, 5, 9)
    torch.testing.assert_close(out, ref.binary_linear(x.contiguous(), packed, alpha), **tolerance(torch.float32, 40))
    torch.testing.assert_close(ops.ternary_linear(x, tpacked, scale, None, ops.lut_tiles(tpacked, 40, 2)),
                               ref.ternary_linear(x.contiguous(), tpacked, scale), **tolerance(torch.float32, 40))


def test_a_lut_made_on_one_isa_runs_on_every_other():
    # A module keeps the lut of the ISA it was converted under; set_cpu_isa afterwards must
    # not break it (a foreign layout runs on the portable kernel).
    m, n, k = 3, 37, 101
    x, w = random_input((m, k), scale=1.0), random_input((n, k))
    packed, alpha = ref.binarize_weight(w)
    tpacked, scale = ref.ternarize_weight(w)
    gpacked, galpha = ref.binarize_weight(w, 32)
    luts = {}
    for isa in ops.supported_cpu_isas():
        with ops.use_cpu_isa(isa):
            luts[isa] = ops.lut_tiles(packed, k, 1), ops.lut_tiles(tpacked, k, 2), ops.lut_tiles(gpacked, k, 1, 32)
    for made_on, (lut, tlut, glut) in luts.items():
        for run_on in ops.supported_cpu_isas():
            def context(error, where=f"lut of {made_on} on {run_on}"):
                return f"{where}: {error}"
            with ops.use_cpu_isa(run_on):
                torch.testing.assert_close(ops.binary_linear(x, packed, alpha, None, None, lut),
                                           ref.binary_linear(x, packed, alpha), **tolerance(torch.float32, k),
                                           msg=context)
                torch.testing.assert_close(ops.ternary_linear(x, tpacked, scale, None, tlut),
                                           ref.ternary_linear(x, tpacked, scale), **tolerance(torch.float32, k),
                                           msg=context)
                torch.testing.assert_close(ops.binary_linear(x, gpacked, galpha, None, 32, glut),
                                           ref.binary_linear(x, gpacked, galpha, None, 32),
                                           **tolerance(torch.float32, k), msg=context)


@pytest.fixture(scope="module")
def lut_sums_bench(tmp_path_factory):
    """benchmarks/kernels/lut_sums_bench.cpp, built."""
    sources = [*(f"binary_gemm_{isa}.cpp" for isa in ("avx2", "avx512", "vpopcntdq", "scalar")), "binary_pack.cpp",
               "isa.cpp"]
    return build_kernel_bench("lut_sums_bench", sources, tmp_path_factory.mktemp("lut_sums_bench"))


@pytest.mark.parametrize("m, planes, n, k, threads", [(1, 1, 100, 77, 1), (2, 2, 1030, 301, 2), (8, 1, 1030, 4099, 2),
                                                      (5, 2, 33, 4099, 1)])
def test_the_kernel_benchmark_matches_the_portable_kernel(lut_sums_bench, m, planes, n, k, threads):
    # The standalone timing tool of RESULTS.md "Session 20" builds, checks the dispatched
    # kernel against lut_sums_portable on its own data (exit 1 on a mismatch) and times it.
    check_kernel_bench_on_every_isa(lut_sums_bench, (m, planes, 2, n, k, threads, 3),
                                    lambda isa: f"isa {isa}, m {m}, planes {planes}", (9,))


@pytest.fixture(scope="module")
def xnor_popcount_bench(tmp_path_factory):
    """benchmarks/kernels/xnor_popcount_bench.cpp, built (skipped without AVX2)."""
    if "avx2" not in ops.supported_cpu_isas():
        pytest.skip("no AVX2 on this CPU")
    sources = [*(f"binary_gemm_{isa}.cpp" for isa in ("avx2", "avx512", "vpopcntdq", "scalar")), "binary_pack.cpp",
               "isa.cpp"]
    return build_kernel_bench("xnor_popcount_bench", sources, tmp_path_factory.mktemp("xnor_popcount_bench"))


@pytest.mark.parametrize("m, n, k, threads", [(1, 100, 77, 1), (2, 1030, 301, 2), (8, 1030, 4099, 2), (5, 33, 4096, 1),
                                              (16, 64, 512, 2)])
def test_every_xnor_popcount_matches_the_scalar_kernel(xnor_popcount_bench, m, n, k, threads):
    # The timing tool checks every XNOR kernel this CPU runs (AVX2; AVX-512 by byte lookup;
    # vpopcntq with VPOPCNTDQ) bit for bit against the scalar kernel on its own data (exit 1
    # on a mismatch): the dispatched AVX-512 table holds only one of the last two.
    binary, env = xnor_popcount_bench
    result = subprocess.run([str(binary), *map(str, (m, 2, n, k, threads, 3))], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0 and f"{m} x {n} x {k} bits" in result.stdout and " avx2 " in result.stdout, (
        result.stdout)
    assert ("avx512 byte lookup" in result.stdout) == ("avx512" in ops.supported_cpu_isas())


def test_per_group_layers_keep_a_lut_where_a_route_takes_it(isa):
    # Groups of whole 32-input lanes run on the tables (in 4-input fields on every ISA, AVX2's
    # per-channel 30-input lanes aside); with AMX any group runs from the lut on the int8 GEMM.
    linear = torch.nn.Linear(256, 20)
    x = random_input((2, 256), scale=1.0)
    for group_size, keeps in [(16, isa == "amx"), (64, True), (96, True)]:
        layer = ek.nn.BinaryLinear.from_float(linear, group_size=group_size)
        assert (layer.weight_lut is not None) == keeps, group_size
        assert not keeps or layer.weight_lut.dtype == torch.uint8
        expected = ref.binary_linear(x, layer.weight_packed, layer.alpha, layer.bias, group_size)
        torch.testing.assert_close(layer(x), expected, **tolerance(torch.float32, 256))


def test_lookup_table_is_rebuilt_after_loading_and_never_saved():
    layer = ek.nn.BinaryLinear.from_float(torch.nn.Linear(64, 20))
    assert layer.weight_lut is not None and "weight_lut" not in layer.state_dict()
    fresh = ek.nn.BinaryLinear(64, 20)
    fresh.load_state_dict(layer.state_dict())
    assert_same_bits(fresh.weight_lut, layer.weight_lut)
    x = random_input((1, 64))
    assert_same_bits(fresh(x), layer(x))
    with pytest.raises(ValueError, match="lut must come from lut_tiles"):
        ops.binary_linear(x, layer.weight_packed, layer.alpha, None, None, layer.weight_lut[:, :8])
    with pytest.raises(ValueError, match="lut must come from lut_tiles"):  # tiles of fewer rows
        ops.binary_linear(x, layer.weight_packed, layer.alpha, None, None, layer.weight_lut[:1])
    nibble_shape = (2, ceil_div(ceil_div(64, 4), 8) * 64)  # a width-4 lut's shape, in a dtype of no layout
    with pytest.raises(ValueError, match="lut must come from lut_tiles"):
        ops.binary_linear(x, layer.weight_packed, layer.alpha, None, None, torch.zeros(nibble_shape, dtype=torch.int16))


@pytest.mark.parametrize("m", [1, 8, 40, 200])  # the tables, the int8 GEMM, the expanded GEMM
@pytest.mark.parametrize("group_size", [None, 32, 48])  # 48: no route reads a lut
def test_a_lut_of_another_weight_is_refused_on_every_route(isa, m, group_size):
    # Whether a call reads its lut depends on the rows, the CPU and the groups; a wrong one
    # is refused on all of them, not only where it would be read.
    x, w = random_input((m, 96)), random_input((20, 96))
    packed, alpha = ref.binarize_weight(w, group_size)
    other = ops.lut_tiles(ref.binarize_weight(random_input((40, 96)))[0], 96, 1)
    with pytest.raises(ValueError, match="binary_linear: lut must come from lut_tiles"):
        ops.binary_linear(x, packed, alpha, None, group_size, other)
    tpacked, scale = ref.ternarize_weight(w)
    with pytest.raises(ValueError, match="ternary_linear: lut must come from lut_tiles"):
        ops.ternary_linear(x, tpacked, scale, None, ops.lut_tiles(packed, 96, 1))
