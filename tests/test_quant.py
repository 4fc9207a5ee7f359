"""The quant op family against reference.py, PyTorch's own fake quant, and bad inputs."""

import functools

import pytest
import torch
from conftest import FLOAT_DTYPES, random_input, run_cuda_host_check
from torch.library import opcheck

import effgen_kernels as ek
from effgen_kernels import reference as ref

ops = ek.ops
SHAPES = [(1,), (7,), (3, 129), (2, 5, 33), (4, 4099), (1, 1)]


def assert_same_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.is_floating_point():
        # Equal bit patterns, so -0.0 vs 0.0 or a wrong NaN payload would show up too.
        view = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[actual.dtype]
        assert torch.equal(actual.contiguous().view(view), expected.contiguous().view(view))
    else:
        assert torch.equal(actual, expected)


def non_contiguous(x):
    """Same values, every other column of a wider tensor (inner stride 2)."""
    wide = torch.stack([x, torch.full_like(x, 9.0)], dim=-1).reshape(*x.shape[:-1], 2 * x.shape[-1])
    view = wide[..., ::2]
    assert not view.is_contiguous()
    return view


# ---------------------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_per_token_matches_reference(isa, dtype, shape):
    x = random_input(shape, dtype)
    q, scale = ops.quantize_per_token(x)
    rq, rscale = ref.quantize_per_token(x)
    assert_same_bits(scale, rscale)
    assert_same_bits(q, rq)
    assert q.abs().max() == 127  # the absmax element of every row hits the top code


def test_quantize_per_token_non_contiguous_and_zero_rows(isa):
    x = random_input((6, 70))
    x[2] = 0.0
    view = non_contiguous(x)
    q, scale = ops.quantize_per_token(view)
    rq, rscale = ref.quantize_per_token(view.contiguous())
    assert_same_bits(q, rq)
    assert_same_bits(scale, rscale)
    assert scale[2] == 0 and not q[2].any()
    assert torch.isfinite(scale).all()


def rows_around_the_reciprocal_bound(dtype: torch.dtype) -> torch.Tensor:
    """Row 0's absmax just above 127 * 2^-128 (about 3.7e-37, below which 1/scale overflows),
    row 1's just below, row 2 subnormal with zeros."""
    x = torch.randn(3, 37, generator=torch.Generator().manual_seed(0))
    x = x / x.abs().amax(dim=1, keepdim=True)
    x[0] *= 127 * 2.0**-127
    x[1] *= 127 * 2.0**-129
    x[2] *= 2.0**-130
    x[2, ::3] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fp16 has no values this small
def test_runs_too_small_for_a_reciprocal_quantize_to_zeros(isa, dtype):
    # Multiplying by an overflowed 1/scale made +-127 of every nonzero value and NaN of
    # zeros (-127 in the AVX2 clamp).
    x = rows_around_the_reciprocal_bound(dtype)
    for quantize, expected in [(ops.quantize_per_token, ref.quantize_per_token(x)),
                               (lambda t: ops.quantize_per_group(t, 16), ref.quantize_per_group(x, 16)),
                               (lambda t: ops.quantize_per_channel(t, 0), ref.quantize_per_channel(x, 0))]:
        q, scale = quantize(x)
        assert_same_bits(q, expected[0])
        assert_same_bits(scale, expected[1])
    q, scale = ops.quantize_per_token(x)
    assert q[0].abs().max() == 127 and not q[1:].any()
    assert (scale > 0).all()


def test_quantize_rounds_half_to_even(isa):
    # absmax 127 gives scale exactly 1, so x * (1/scale) keeps the .5 ties.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]])
    q, scale = ops.quantize_per_token(x)
    assert scale.item() == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126]]


def test_absmax_times_its_reciprocal_above_127_still_gives_127(isa):
    # The kernels do not clamp x * (1 / scale) before rounding: for these absmax values the
    # fp32 product is 127.00002 or 127.00003 (the largest over every fp32 absmax, at
    # 3.7322114e-37), which must round to +-127, not carry past it.
    absmax = torch.tensor([3.7322114e-37, 1.0000018, 1.9999989, 127.0005, 2.9e38])
    inverse = (1.0 / (absmax / 127)).float()
    assert (absmax * inverse > 127).all()
    x = torch.randn(len(absmax), 200, generator=torch.Generator().manual_seed(1)).clamp(-0.9, 0.9)
    x *= absmax[:, None]
    x[:, 70] = absmax  # inside the 4-vector body of every ISA, and in its tail
    x[:, 131] = -absmax
    x[:, 198] = -absmax
    q, scale = ops.quantize_per_token(x)
    rq, rscale = ref.quantize_per_token(x)
    assert_same_bits(q, rq)
    assert_same_bits(scale, rscale)
    assert (q[:, 70] == 127).all() and (q[:, [131, 198]] == -127).all()
    qc, _ = ops.quantize_per_channel(x, 0)
    assert_same_bits(qc, ref.quantize_per_channel(x, 0)[0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k,group", [(128, 128), (256, 128), (129, 64), (7, 3), (4099, 128), (5, 1)])
def test_quantize_per_group_matches_reference(isa, dtype, k, group):
    x = random_input((3, k), dtype)
    q, scale = ops.quantize_per_group(x, group)
    rq, rscale = ref.quantize_per_group(x, group)
    assert scale.shape == (3, -(-k // group))
    assert_same_bits(scale, rscale)
    assert_same_bits(q, rq)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,axis", [((7, 129), 0), ((7, 129), 1), ((3, 5, 33), 1), ((3, 5, 33), -1),
                                        ((4, 6, 2), 0), ((4099,), 0)])
def test_quantize_per_channel_matches_reference(isa, dtype, shape, axis):
    w = random_input(shape, dtype)
    q, scale = ops.quantize_per_channel(w, axis)
    rq, rscale = ref.quantize_per_channel(w, axis)
    assert_same_bits(scale, rscale)
    assert_same_bits(q, rq)


def test_quantize_per_channel_non_contiguous(isa):
    w = random_input((40, 33)).t()  # [33, 40], transposed strides
    q, scale = ops.quantize_per_channel(w, 1)
    rq, rscale = ref.quantize_per_channel(w.contiguous(), 1)
    assert_same_bits(q, rq)
    assert_same_bits(scale, rscale)


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_dequantize_every_layout_matches_reference(isa, out_dtype):
    x = random_input((5, 3, 131))
    q, s_token = ops.quantize_per_token(x)
    assert_same_bits(ops.dequantize(q, s_token, out_dtype=out_dtype), ref.dequantize(q, s_token, out_dtype=out_dtype))
    q, s_group = ops.quantize_per_group(x, 64)
    assert_same_bits(ops.dequantize(q, s_group, group_size=64, out_dtype=out_dtype),
                     ref.dequantize(q, s_group, group_size=64, out_dtype=out_dtype))
    for axis in (0, 1, 2):
        q, s_chan = ops.quantize_per_channel(x, axis)
        assert_same_bits(ops.dequantize(q, s_chan, axis=axis, out_dtype=out_dtype),
                         ref.dequantize(q, s_chan, axis=axis, out_dtype=out_dtype))
    s_tensor = torch.tensor(0.0173)
    assert_same_bits(ops.dequantize(q, s_tensor, out_dtype=out_dtype), ref.dequantize(q, s_tensor, out_dtype=out_dtype))


def test_round_trip_error_is_within_half_a_step(isa):
    # Half a step, plus the fp32 roundings on the way (unit roundoff u = 2^-24, |x| / scale
    # <= 127): x times the rounded reciprocal of the scale is off x / scale by up to 2u * 127
    # steps, so a value that close to a tie may round to the farther code; dequantizing and
    # the difference add u * 127 more. The bound was (1 + 1e-6) x half a step, which the
    # reference itself broke in about 1 of 100 draws (by up to 8.4e-6 steps).
    x = random_input((16, 1000))
    q, scale = ops.quantize_per_token(x)
    err = (ops.dequantize(q, scale) - x).abs()
    assert (err <= scale[:, None] * (0.5 + 3 * 127 * 2.0**-24)).all()


def test_empty_inputs_give_empty_outputs(isa):
    for shape in [(0, 16), (4, 0), (0,)]:
        x = torch.randn(shape)
        q, scale = ops.quantize_per_token(x)
        assert q.shape == x.shape and scale.shape == x.shape[:-1]
        assert_same_bits(scale, ref.quantize_per_token(x)[1])  # K = 0: each row's scale is 0
        assert ops.dequantize(q, scale).shape == x.shape
    y = ops.fake_quantize_per_tensor(torch.randn(0, 3), 0.1, 0, -128, 127)
    assert y.shape == (0, 3)


# ---------------------------------------------------------------------------------------
# fake quant: bit-exact with PyTorch
# ---------------------------------------------------------------------------------------
def tie_values(scale, zero_point, n):
    """Values whose x * (1/scale) lands exactly on .5 (scale a power of two)."""
    k = torch.arange(-n // 2, n // 2, dtype=torch.float32) + 0.5
    return k * scale


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (17,), (3, 129), (2, 3, 4099)])
def test_fake_quantize_per_tensor_is_bit_exact_with_pytorch(isa, dtype, shape):
    gen = torch.Generator().manual_seed(hash((isa, str(dtype), shape)) % 2**31)
    for _ in range(4):
        x = random_input(shape, dtype)
        scale = float(torch.rand(1, generator=gen) * 0.2 + 1e-3)
        qmin, qmax = [(-128, 127), (0, 255), (-8, 7), (0, 1)][int(torch.randint(4, (1,), generator=gen))]
        zp = int(torch.randint(qmin, qmax + 1, (1,), generator=gen))
        y = ops.fake_quantize_per_tensor(x, scale, zp, qmin, qmax)
        assert_same_bits(y, torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax))
        ry, rmask = ref.fake_quantize_per_tensor(x, scale, zp, qmin, qmax)
        assert_same_bits(y, ry)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fake_quantize_ties_match_pytorch(isa, dtype):
    for scale in (0.25, 0.0625, 2.0):
        x = tie_values(scale, 0, 300).to(dtype)
        for zp in (0, 3, -5):
            y = ops.fake_quantize_per_tensor(x, scale, zp, -128, 127)
            assert_same_bits(y, torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,axis", [((7, 129), 0), ((7, 129), 1), ((3, 5, 33), 1), ((2, 3, 4, 5), 3),
                                        ((4099,), 0)])
def test_fake_quantize_per_channel_is_bit_exact_with_pytorch(isa, dtype, shape, axis):
    x = random_input(shape, dtype)
    channels = shape[axis]
    scale = torch.rand(channels) * 0.2 + 1e-3
    scale[0] = 0.25  # a power of two: some values land on ties
    zp = torch.randint(-20, 20, (channels,), dtype=torch.int32)
    y = ops.fake_quantize_per_channel(x, scale, zp, axis, -128, 127)
    assert_same_bits(y, torch.fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127))
    y64 = ops.fake_quantize_per_channel(x, scale, zp.long(), axis, -128, 127)
    assert_same_bits(y64, y)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_runs_longer_than_a_thread_task_are_split_exactly(isa, dtype):
    # 70001 elements per run: the glue cuts runs into 32768-element pieces across threads.
    x = random_input((2, 70001), dtype)
    assert_same_bits(ops.fake_quantize_per_tensor(x, 0.03, 1, -128, 127),
                     torch.fake_quantize_per_tensor_affine(x, 0.03, 1, -128, 127))
    for axis in (0, 1):  # inner = 70001 with one scale per run, and inner = 1 with 70001 channels
        scale = torch.rand(x.shape[axis]) * 0.1 + 0.01
        zp = torch.randint(-3, 3, (x.shape[axis],), dtype=torch.int32)
        assert_same_bits(ops.fake_quantize_per_channel(x, scale, zp, axis, -128, 127),
                         torch.fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127))
        q, s = ops.quantize_per_channel(x, axis)
        assert_same_bits(ops.dequantize(q, s, axis=axis, out_dtype=dtype),
                         ref.dequantize(q, s, axis=axis, out_dtype=dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 17, 70001])
def test_mask_grad_matches_reference(isa, dtype, n):
    grad = random_input((n,), dtype)
    mask = torch.rand(n) > 0.3
    assert_same_bits(torch.ops.effgen.fake_quantize_mask_grad(grad, mask), ref.fake_quantize_mask_grad(grad, mask))


def test_fake_quantize_non_contiguous_input(isa):
    x = non_contiguous(random_input((9, 65)))
    y = ops.fake_quantize_per_tensor(x, 0.03, 1, -128, 127)
    assert_same_bits(y, torch.fake_quantize_per_tensor_affine(x.contiguous(), 0.03, 1, -128, 127))
    scale, zp = torch.rand(65) * 0.1 + 0.01, torch.zeros(65, dtype=torch.int32)
    y = ops.fake_quantize_per_channel(x, scale, zp, 1, -128, 127)
    assert_same_bits(y, torch.fake_quantize_per_channel_affine(x.contiguous(), scale, zp, 1, -128, 127))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fake_quantize_gradient_is_pytorchs_straight_through_mask(isa, dtype):
    x = random_input((6, 77), dtype)
    grad = random_input((6, 77), dtype)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    ops.fake_quantize_per_tensor(ours, 0.02, 5, -128, 127).backward(grad)
    torch.fake_quantize_per_tensor_affine(theirs, 0.02, 5, -128, 127).backward(grad)
    assert_same_bits(ours.grad, theirs.grad)
    assert (ours.grad == 0).any() and (ours.grad != 0).any()  # both sides of the mask exercised

    scale, zp = torch.rand(77) * 0.02 + 0.005, torch.randint(-3, 3, (77,), dtype=torch.int32)
    ours.grad = theirs.grad = None
    ops.fake_quantize_per_channel(ours, scale, zp, 1, -128, 127).backward(grad)
    torch.fake_quantize_per_channel_affine(theirs, scale, zp, 1, -128, 127).backward(grad)
    assert_same_bits(ours.grad, theirs.grad)


def test_fake_quantize_gradcheck(isa):
    # Away from rounding steps the function is piecewise constant in x (derivative 0 under
    # the true gradient), so compare our STE against the reference mask instead.
    x = random_input((5, 9)).double().float().requires_grad_()
    y = ops.fake_quantize_per_tensor(x, 0.1, 0, -8, 7)
    y.sum().backward()
    _, mask = ref.fake_quantize_per_tensor(x.detach(), 0.1, 0, -8, 7)
    assert torch.equal(x.grad, mask.float())


@functools.cache
def pytorch_learnable_backward_takes(dtype: torch.dtype) -> bool:
    """Whether this torch's backward of its learnable per-channel fake quantization takes
    gradients of ``dtype`` (it raises on the others)."""
    x = torch.zeros(1, 1, dtype=dtype, requires_grad=True)
    scale, zp = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    y = torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, 0, -8, 7, 1.0)
    try:
        y.backward(torch.ones_like(y))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,axis", [((6, 40), 0), ((6, 40), 1), ((3, 4, 17), 1)])
def test_learnable_fake_quant_matches_pytorch(isa, dtype, shape, axis):
    # PyTorch's backward takes fp32 and bf16 gradients only (torch 2.6's fp32 alone): the
    # others are checked against the reference alone (their forward against PyTorch's too).
    x = random_input(shape, dtype)
    channels = shape[axis]
    scale = (torch.rand(channels) * 0.1 + 0.02).requires_grad_()
    zp = (torch.rand(channels) * 10 - 5).requires_grad_()
    grad = random_input(shape, dtype)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    scales = [scale.detach().clone().requires_grad_() for _ in range(2)]
    zps = [zp.detach().clone().requires_grad_() for _ in range(2)]
    ours = ops.fake_quantize_learnable_per_channel(xs[0], scales[0], zps[0], axis, -8, 7, 0.5)
    theirs = torch._fake_quantize_learnable_per_channel_affine(xs[1], scales[1], zps[1], axis, -8, 7, 0.5)
    assert_same_bits(ours, theirs)
    ours.backward(grad)
    if pytorch_learnable_backward_takes(dtype):
        theirs.backward(grad)
        assert_same_bits(xs[0].grad, xs[1].grad)
        torch.testing.assert_close(scales[0].grad, scales[1].grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(zps[0].grad, zps[1].grad, rtol=1e-5, atol=1e-5)
    rdx, rdscale, rdzp = ref.fake_quantize_learnable_per_channel_backward(grad, x, scale.detach(), zp.detach(),
                                                                          axis, -8, 7, 0.5)
    assert_same_bits(xs[0].grad, rdx)
    torch.testing.assert_close(scales[0].grad, rdscale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zps[0].grad, rdzp, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# torch.library contracts and torch.compile
# ---------------------------------------------------------------------------------------
def opcheck_cases():
    x = random_input((5, 37))
    q, s = ops.quantize_per_token(x)
    scale, zp = torch.rand(37) * 0.1 + 0.01, torch.randint(-3, 3, (37,), dtype=torch.int32)
    e = torch.ops.effgen
    return [
        (e.quantize_per_token.default, (x,)),
        (e.quantize_per_group.default, (x, 8)),
        (e.quantize_per_channel.default, (x, 1)),
        (e.dequantize.default, (q, s, None, None, torch.bfloat16)),
        (e.fake_quantize_per_tensor_cachemask.default, (x.clone().requires_grad_(), 0.05, 2, -128, 127)),
        (e.fake_quantize_per_channel_cachemask.default, (x.clone().requires_grad_(), scale, zp, 1, -128, 127)),
        (e.fake_quantize_learnable_per_channel.default,
         (x.clone().requires_grad_(), scale.clone().requires_grad_(), zp.float().requires_grad_(), 1, -8, 7, 1.0)),
        (e.fake_quantize_learnable_per_channel_backward.default, (x, x, scale, zp.float(), 1, -8, 7, 1.0)),
        (e.fake_quantize_mask_grad.default, (x, x > 0)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    opcheck(op, args)


def test_torch_compile_fullgraph():
    def qat_step(x, scale, zp):
        y = ops.fake_quantize_per_channel(x, scale, zp, 1, -128, 127)
        q, s = ops.quantize_per_token(y)
        return ops.dequantize(q, s)

    x = random_input((8, 64))
    scale, zp = torch.rand(64) * 0.1 + 0.01, torch.zeros(64, dtype=torch.int32)
    compiled = torch.compile(qat_step, fullgraph=True, backend="aot_eager")
    assert_same_bits(compiled(x, scale, zp), qat_step(x, scale, zp))


def test_torch_compile_fullgraph_trains_through_the_autograd():
    # The C++ autograd of the fake-quant ops (csrc/ops/autograd.cpp) traced by
    # AOTAutograd: compiled gradients are the eager ones bit for bit, straight-through and LSQ.
    def loss(x, scale, zp, learn_scale, learn_zp):
        y = ops.fake_quantize_per_tensor(x, 0.05, 1, -128, 127) * ops.fake_quantize_per_channel(x, scale, zp, 1,
                                                                                                 -128, 127)
        return (y * ops.fake_quantize_learnable_per_channel(x, learn_scale, learn_zp, 1, -8, 7, 0.5)).sum()

    x = random_input((8, 64))
    scale, zp = torch.rand(64) * 0.1 + 0.01, torch.zeros(64, dtype=torch.int32)
    learn_scale, learn_zp = torch.rand(64) * 0.1 + 0.02, torch.rand(64) * 4 - 2
    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (x, learn_scale, learn_zp)]
        fn(leaves[0], scale, zp, leaves[1], leaves[2]).backward()
        grads.append([leaf.grad for leaf in leaves])
    assert all(g is not None and (g != 0).any() for g in grads[0])
    for eager, compiled in zip(*grads, strict=True):
        assert_same_bits(compiled, eager)


# ---------------------------------------------------------------------------------------
# bad inputs: clear errors that name the argument, never a crash
# ---------------------------------------------------------------------------------------
def test_wrong_dtype_is_rejected():
    with pytest.raises(TypeError, match="quantize_per_token: x must be float32, bfloat16 or float16"):
        ops.quantize_per_token(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="dequantize: q must be int8"):
        ops.dequantize(torch.ones(3, 4), torch.ones(3))
    with pytest.raises(TypeError, match="scale must be float32"):
        ops.dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="zero_point must be int32 or int64"):
        ops.fake_quantize_per_channel(torch.ones(3, 4), torch.ones(4), torch.zeros(4), 1, 0, 255)
    with pytest.raises(TypeError, match="fake_quantize_mask_grad: mask must be bool"):
        torch.ops.effgen.fake_quantize_mask_grad(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="fake_quantize_mask_grad: mask must have grad's shape"):
        torch.ops.effgen.fake_quantize_mask_grad(torch.ones(3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="out_dtype"):
        ops.dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3), out_dtype=torch.int32)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), 1e-45])
def test_bad_scale_is_rejected(scale):
    with pytest.raises(ValueError, match="fake_quantize_per_tensor: scale"):
        ops.fake_quantize_per_tensor(torch.ones(4), scale, 0, -128, 127)
    with pytest.raises(ValueError, match="fake_quantize_per_channel: scale"):
        ops.fake_quantize_per_channel(torch.ones(2, 4), torch.tensor([0.1, 0.1, scale, 0.1]),
                                      torch.zeros(4, dtype=torch.int32), 1, -128, 127)


def test_bad_ranges_and_zero_points_are_rejected():
    with pytest.raises(ValueError, match="quant_min \\(10\\) must be <= quant_max \\(5\\)"):
        ops.fake_quantize_per_tensor(torch.ones(4), 0.1, 0, 10, 5)
    with pytest.raises(ValueError, match="zero_point 300 must lie within"):
        ops.fake_quantize_per_tensor(torch.ones(4), 0.1, 300, 0, 255)
    with pytest.raises(ValueError, match="zero_point -1 must lie within"):
        ops.fake_quantize_per_channel(torch.ones(2, 3), torch.ones(3), torch.tensor([0, -1, 0], dtype=torch.int32),
                                      1, 0, 255)


def test_bad_axis_shape_and_group_are_rejected():
    with pytest.raises(IndexError, match="axis 2 is out of range for a 2-D input"):
        ops.quantize_per_channel(torch.ones(3, 4), 2)
    with pytest.raises(ValueError, match="scale must be 1-D with 4 entries"):
        ops.fake_quantize_per_channel(torch.ones(3, 4), torch.ones(3), torch.zeros(3, dtype=torch.int32), 1, 0, 9)
    with pytest.raises(ValueError, match="group_size must be positive"):
        ops.quantize_per_group(torch.ones(3, 4), 0)
    with pytest.raises(ValueError, match="per-group scale must have shape"):
        ops.dequantize(torch.ones(3, 8, dtype=torch.int8), torch.ones(3, 3), group_size=4)
    with pytest.raises(ValueError, match="scale must have one element \\(per tensor\\) or shape"):
        ops.dequantize(torch.ones(3, 8, dtype=torch.int8), torch.ones(8))
    with pytest.raises(IndexError, match="at least 1 dimension"):
        ops.quantize_per_token(torch.tensor(1.0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_rejected_on_cpu(isa, bad):
    x = random_input((4, 50))
    x[2, 31] = bad
    with pytest.raises(ValueError, match="quantize_per_token: x contains NaN or Inf \\(first in row 2\\)"):
        ops.quantize_per_token(x)
    with pytest.raises(ValueError, match="quantize_per_channel: w contains NaN or Inf \\(first in channel 31\\)"):
        ops.quantize_per_channel(x, 1)
    with pytest.raises(ValueError, match="fake_quantize_per_tensor: x contains NaN or Inf"):
        ops.fake_quantize_per_tensor(x, 0.1, 0, -128, 127)


def test_unknown_isa_is_rejected():
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        ops.set_cpu_isa("sse9")
    assert ops.cpu_isa() in ops.supported_cpu_isas()


def test_cuda_scale_index_cursor_on_the_host(tmp_path):
    # The CUDA quant kernels walk per-channel / per-group scale indices with a counter
    # (ParamCursor); its host build is checked here against the closed form, GPU or not.
    run_cuda_host_check("param_cursor", tmp_path)


def test_cuda_lane_items_on_the_host(tmp_path):
    # The per-token CUDA quantizer keeps 16-bit values two to a 32-bit word and takes the
    # absmax on their own bits; both checked on the host against to_f32 and a plain absmax,
    # every bf16 / fp16 pattern included (tests/cuda_host/lane_items.cu).
    run_cuda_host_check("lane_items", tmp_path)


# ---------------------------------------------------------------------------------------
# CUDA: same answers as the CPU kernels and the reference (skipped without a GPU)
# ---------------------------------------------------------------------------------------
def assert_cuda_quantizers_match_cpu(x: torch.Tensor, group_size: int) -> None:
    """Per token, per group and per channel (axis 0): the CUDA kernels' codes and scales equal
    the CPU kernels' bit for bit."""
    for quantize in (ops.quantize_per_token, lambda t: ops.quantize_per_group(t, group_size),
                     lambda t: ops.quantize_per_channel(t, 0)):
        q, scale = quantize(x)
        q_cuda, scale_cuda = quantize(x.cuda())
        assert_same_bits(q_cuda.cpu(), q)
        assert_same_bits(scale_cuda.cpu(), scale)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# Rows of 1, 129, 4096, 4099, 8192, 12289 and 20000: the per-token kernel holds a row in
# registers as 1, 2 or 4 chunks a warp (the last one partial; 16-bit rows up to 8192 in
# blocks of 128 threads, the four chunks in their own kernel), or streams it twice beyond that.
@pytest.mark.parametrize("shape", [(1,), (7, 129), (2, 5, 4099), (64, 4096), (2, 8192), (3, 12289), (2, 20000)])
def test_cuda_quantize_matches_cpu(dtype, shape):
    x = random_input(shape, dtype)
    assert_cuda_quantizers_match_cpu(x, group_size=128)
    # per token, per group of 128 and per channel of axis 0: a block per run of one scale
    # where runs have 128 elements or more, 16 consecutive elements a thread otherwise
    q, s = ops.quantize_per_token(x)
    assert_same_bits(ops.dequantize(q.cuda(), s.cuda(), out_dtype=dtype).cpu(), ops.dequantize(q, s, out_dtype=dtype))
    q, s = ops.quantize_per_group(x, 128)
    assert_same_bits(ops.dequantize(q.cuda(), s.cuda(), group_size=128, out_dtype=dtype).cpu(),
                     ops.dequantize(q, s, group_size=128, out_dtype=dtype))
    q, s = ops.quantize_per_channel(x, 0)
    assert_same_bits(ops.dequantize(q.cuda(), s.cuda(), axis=0, out_dtype=dtype).cpu(),
                     ops.dequantize(q, s, axis=0, out_dtype=dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_long_runs_are_cut_over_blocks(dtype):
    # 3 channels of 70001 elements and one scale for all 210003: runs longer than a block's
    # piece (32768 elements), the last piece of each shorter
    x = random_input((3, 70001), dtype)
    q, s = ops.quantize_per_channel(x, 0)
    qc, sc = ops.quantize_per_channel(x.cuda(), 0)
    assert_same_bits(qc.cpu(), q)
    assert_same_bits(sc.cpu(), s)
    assert_same_bits(ops.dequantize(qc, sc, axis=0, out_dtype=dtype).cpu(),
                     ops.dequantize(q, s, axis=0, out_dtype=dtype))
    tensor_scale = torch.tensor([0.02])
    assert_same_bits(ops.dequantize(qc, tensor_scale.cuda(), out_dtype=dtype).cpu(),
                     ops.dequantize(q, tensor_scale, out_dtype=dtype))
    scale, zp = torch.rand(3) * 0.1 + 0.01, torch.randint(-4, 4, (3,), dtype=torch.int32)
    assert_same_bits(ops.fake_quantize_per_channel(x.cuda(), scale.cuda(), zp.cuda(), 0, -128, 127).cpu(),
                     torch.fake_quantize_per_channel_affine(x, scale, zp, 0, -128, 127))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_fake_quantize_matches_pytorch(dtype):
    x = random_input((33, 4099), dtype)
    xc = x.cuda()
    assert_same_bits(ops.fake_quantize_per_tensor(xc, 0.03, 3, -128, 127).cpu(),
                     torch.fake_quantize_per_tensor_affine(x, 0.03, 3, -128, 127))
    for axis in (1, 0):  # channels of one element (a cursor), of 4099 (a block per channel)
        scale = torch.rand(x.shape[axis]) * 0.1 + 0.01
        zp = torch.randint(-4, 4, (x.shape[axis],), dtype=torch.int32)
        assert_same_bits(ops.fake_quantize_per_channel(xc, scale.cuda(), zp.cuda(), axis, -128, 127).cpu(),
                         torch.fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127))
    non_contig = non_contiguous(x).cuda()
    assert_same_bits(ops.fake_quantize_per_tensor(non_contig, 0.03, 3, -128, 127).cpu(),
                     torch.fake_quantize_per_tensor_affine(non_contiguous(x).contiguous(), 0.03, 3, -128, 127))


@pytest.mark.cuda
def test_cuda_learnable_and_opcheck():
    x = random_input((6, 40)).cuda()
    scale = (torch.rand(40) * 0.1 + 0.02).cuda().requires_grad_()
    zp = (torch.rand(40) * 10 - 5).cuda().requires_grad_()
    xr = x.clone().requires_grad_()
    y = ops.fake_quantize_learnable_per_channel(xr, scale, zp, 1, -8, 7, 1.0)
    y.sum().backward()
    xt, st, zt = (t.detach().cpu().clone().requires_grad_() for t in (x, scale, zp))
    torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, 1, -8, 7, 1.0).sum().backward()
    assert_same_bits(y.detach().cpu(), torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, 1, -8, 7, 1.0)
                     .detach())
    torch.testing.assert_close(scale.grad.cpu(), st.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zp.grad.cpu(), zt.grad, rtol=1e-5, atol=1e-5)
    for op, args in opcheck_cases():
        cuda_args = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                          for a in args)
        opcheck(op, cuda_args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_runs_too_small_for_a_reciprocal_match_the_cpu(dtype):
    assert_cuda_quantizers_match_cpu(rows_around_the_reciprocal_bound(dtype), group_size=16)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [50, 8192])  # one chunk a warp; four (16-bit: compared on their own bits)
def test_cuda_non_finite_gives_nan_scale(dtype, k):
    x = random_input((4, k), dtype)
    x[1, 3], x[2, k - 1], x[3, 0] = float("nan"), float("-inf"), torch.finfo(dtype).max
    q, s = ops.quantize_per_token(x.cuda())
    assert torch.isnan(s[1]) and torch.isnan(s[2]) and not q[1:3].any()
    # the finite rows as the CPU quantizes them (which rejects the others with an error)
    q_finite, s_finite = ops.quantize_per_token(x[[0, 3]])
    assert_same_bits(q[[0, 3]].cpu(), q_finite)
    assert_same_bits(s[[0, 3]].cpu(), s_finite)


def test_the_reference_makes_its_tensors_where_its_inputs_are():
    # The cuda tests run reference.py on GPU tensors, where a tensor it made without a device
    # would be a CPU one. With meta as the default device such a tensor is a meta one, and
    # mixing it with these CPU inputs fails the same way.
    w, x = random_input((6, 40)), random_input((3, 40))
    grads, errors = [random_input((64,)) for _ in range(2)], [random_input((64,), scale=0.01) for _ in range(4)]
    codes, bits = torch.randint(-127, 128, (2, 64), dtype=torch.int8), torch.randint(0, 256, (2, 8), dtype=torch.uint8)
    code_scales, levels = torch.rand(2, 4), torch.randn(2, 8)
    with torch.device("meta"):
        packed, alpha = ref.binarize_weight(w, 16)
        trits, scale = ref.ternarize_weight(w, per_channel=False)
        results = [ref.binary_linear(x, packed, alpha, group_size=16), ref.ternary_linear(x, trits, scale),
                   ref.xnor_linear(x, *ref.binarize_weight(w)), *ref.quantize_per_channel(w[:0], 0),
                   *ref.fake_quantize_per_tensor(x, 0.1, 3, -128, 127),
                   ref.decompress_sum_int8(codes, code_scales, 16), ref.decompress_sum_sign(bits, levels, 64, 16)]
        for codec in ("int8", "sign"):
            results.append(ref.compressed_allreduce(grads, [e.clone() for e in errors[:2]],
                                                    [e[:32].clone() for e in errors[2:]], codec, 16))
    assert all(t.device.type == "cpu" for t in results)
