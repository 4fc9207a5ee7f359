"""The int8_gemm family (W8A8, W8A16) against reference.py, and the int8 nn layers."""

import io

import pytest
import torch
from conftest import FLOAT_DTYPES, random_input
from test_quant import assert_same_bits
from torch.library import opcheck

import effgen_kernels as ek
from effgen_kernels import reference as ref

ops = ek.ops
MNK = [(1, 1, 1), (1, 5, 7), (3, 9, 129), (17, 70, 300), (64, 130, 4099), (5, 3, 64)]


def random_int8(shape, low=-128, high=128):
    return torch.randint(low, high, shape, dtype=torch.int8)


@pytest.mark.parametrize("m,n,k", MNK)
@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_int8_linear_is_bit_exact(isa, m, n, k, out_dtype):
    xq, wq = random_int8((m, k)), random_int8((n, k))
    x_scale, w_scale, bias = torch.rand(m) + 0.01, torch.rand(n) + 0.01, torch.randn(n)
    per_tensor = (torch.tensor([0.3]), torch.tensor(0.02), bias)
    for xs, ws, b in [(x_scale, w_scale, bias), (x_scale, w_scale, None), per_tensor]:
        assert_same_bits(ops.int8_linear(xq, xs, wq, ws, b, out_dtype), ref.int8_linear(xq, xs, wq, ws, b, out_dtype))


def test_int8_linear_3d_and_non_contiguous(isa):
    xq = random_int8((2, 5, 2 * 33))[..., ::2]  # [2, 5, 33], inner stride 2
    wq = random_int8((7, 33))
    x_scale, w_scale = torch.rand(2, 5) + 0.01, torch.rand(7) + 0.01
    out = ops.int8_linear(xq, x_scale, wq, w_scale)
    assert out.shape == (2, 5, 7)
    assert_same_bits(out, ref.int8_linear(xq.contiguous(), x_scale, wq, w_scale))
    wq_t = random_int8((33, 7)).t()  # non-contiguous weight
    assert_same_bits(ops.int8_linear(xq, x_scale, wq_t, w_scale), ref.int8_linear(xq, x_scale, wq_t, w_scale))


def test_int8_linear_extremes_at_the_largest_k(isa):
    # Every product at its largest magnitude, K at the bound: int32 must not overflow.
    k = (1 << 17) - 1
    xq = torch.full((2, k), -128, dtype=torch.int8)
    wq = torch.stack([torch.full((k,), -128, dtype=torch.int8), torch.full((k,), 127, dtype=torch.int8)])
    out = ops.int8_linear(xq, torch.ones(2), wq, torch.ones(2))
    assert_same_bits(out, ref.int8_linear(xq, torch.ones(2), wq, torch.ones(2)))
    assert out[0, 1].item() == float(-128 * 127 * k)


def test_int8_linear_rejects_k_beyond_the_bound():
    k = 1 << 17
    with pytest.raises(ValueError, match="K = 131072 exceeds 131071"):
        ops.int8_linear(random_int8((1, k)), torch.ones(1), random_int8((1, k)), torch.ones(1))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", MNK)
def test_int8_dynamic_linear_is_quantize_then_gemm(isa, dtype, m, n, k):
    x = random_input((m, k), dtype)
    wq, w_scale = ops.quantize_per_channel(random_input((n, k)), 0)
    bias = torch.randn(n).to(dtype)
    assert_same_bits(ops.int8_dynamic_linear(x, wq, w_scale, bias), ref.int8_dynamic_linear(x, wq, w_scale, bias))


def w8a16_tolerance(dtype):
    return {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
            torch.float16: dict(rtol=2e-3, atol=2e-3)}[dtype]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 7, 16, 17, 64])  # both sides of the direct / dequantize-then-GEMM switch
@pytest.mark.parametrize("group_size", [None, 32, 100])
def test_int8_weight_only_linear_matches_reference(isa, dtype, m, group_size):
    n, k = 70, 300
    x = random_input((m, k), dtype, scale=1.0)
    w = random_input((n, k), scale=0.05)
    wq, w_scale = ops.quantize_per_channel(w, 0) if group_size is None else ops.quantize_per_group(w, group_size)
    bias = torch.randn(n)
    out = ops.int8_weight_only_linear(x, wq, w_scale, bias, group_size)
    torch.testing.assert_close(out, ref.int8_weight_only_linear(x, wq, w_scale, bias, group_size),
                               **w8a16_tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w8a16_fixed_point_activations_propagate_nan_and_inf(isa, dtype):
    # bf16 / fp16 rows go through 16-bit fixed point unless a row is not finite: then the
    # float kernel runs, and the bad row comes out NaN / Inf as in the reference.
    x = random_input((3, 64), dtype, scale=1.0)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    wq, w_scale = ops.quantize_per_channel(random_input((10, 64), scale=0.05), 0)
    out, expected = ops.int8_weight_only_linear(x, wq, w_scale), ref.int8_weight_only_linear(x, wq, w_scale)
    assert torch.isnan(out[1]).all() and not torch.isfinite(out[2]).any()
    torch.testing.assert_close(out, expected, **w8a16_tolerance(dtype), equal_nan=True)


def test_w8a16_fixed_point_activations_stay_within_their_error_bound(isa):
    # bf16 activations as 16-bit fixed point per token: each is off by at most half a step
    # (absmax / kSplitMax / 2), so a dot product by at most that times sum |w|; the bf16
    # output adds at most half an ulp (2^-8 relative). Checked against the exact product.
    x = random_input((5, 1000), torch.bfloat16, scale=1.0)
    wq, w_scale = ops.quantize_per_channel(random_input((64, 1000), scale=0.05), 0)
    w = wq.double() * w_scale.double()[:, None]
    exact = x.double() @ w.T
    step = x.double().abs().amax(1, keepdim=True) / (127 * 256 + 127)
    activations = step / 2 * w.abs().sum(1)[None, :]
    bound = activations * (1 + 2.0**-8) + exact.abs() * 2.0**-8  # rounding of the product
    out = ops.int8_weight_only_linear(x, wq, w_scale).double()
    assert ((out - exact).abs() <= bound * (1 + 1e-6) + 1e-12).all()


def test_int8_weight_only_linear_3d_input(isa):
    x = random_input((2, 3, 40))
    wq, w_scale = ops.quantize_per_channel(random_input((9, 40)), 0)
    out = ops.int8_weight_only_linear(x, wq, w_scale)
    assert out.shape == (2, 3, 9)
    torch.testing.assert_close(out, ref.int8_weight_only_linear(x, wq, w_scale), rtol=1e-5, atol=1e-4)


def test_empty_batches(isa):
    wq, w_scale = ops.quantize_per_channel(random_input((9, 40)), 0)
    for m_shape in [(0, 40), (2, 0, 40)]:
        x = torch.randn(m_shape)
        assert ops.int8_dynamic_linear(x, wq, w_scale).shape == (*m_shape[:-1], 9)
        assert ops.int8_weight_only_linear(x, wq, w_scale).shape == (*m_shape[:-1], 9)


@pytest.mark.parametrize("case", range(4))
def test_opcheck(case):
    x = random_input((5, 37))
    xq, x_scale = ops.quantize_per_token(x)
    wq, w_scale = ops.quantize_per_channel(random_input((6, 37)), 0)
    wg, wg_scale = ops.quantize_per_group(random_input((6, 37)), 16)
    e = torch.ops.effgen
    cases = [
        (e.int8_linear.default, (xq, x_scale, wq, w_scale, torch.randn(6), torch.bfloat16)),
        (e.int8_dynamic_linear.default, (x, wq, w_scale, None)),
        (e.int8_weight_only_linear.default, (x, wq, w_scale, torch.randn(6), None)),
        (e.int8_weight_only_linear.default, (x, wg, wg_scale, None, 16)),
    ]
    opcheck(*cases[case])


def test_bad_inputs_name_the_argument():
    x, wq, w_scale = torch.randn(3, 8), random_int8((4, 8)), torch.ones(4)
    with pytest.raises(TypeError, match="int8_linear: xq must be int8"):
        ops.int8_linear(x, torch.ones(3), wq, w_scale)
    with pytest.raises(TypeError, match="int8_dynamic_linear: wq must be int8"):
        ops.int8_dynamic_linear(x, wq.float(), w_scale)
    with pytest.raises(ValueError, match="wq has K = 8 but the input has K = 9"):
        ops.int8_dynamic_linear(torch.randn(3, 9), wq, w_scale)
    with pytest.raises(ValueError, match="bias must be 1-D with N = 4"):
        ops.int8_dynamic_linear(x, wq, w_scale, torch.ones(5))
    with pytest.raises(ValueError, match="w_scale must have one element \\(per tensor\\) or shape \\[4\\]"):
        ops.int8_dynamic_linear(x, wq, torch.ones(3))
    with pytest.raises(ValueError, match="x_scale must have one element \\(per tensor\\) or shape"):
        ops.int8_linear(random_int8((3, 8)), torch.ones(2), wq, w_scale)
    with pytest.raises(ValueError, match="with group_size 4, w_scale must have shape \\[4, 2\\]"):
        ops.int8_weight_only_linear(x, wq, w_scale, None, 4)
    with pytest.raises(TypeError, match="int8_weight_only_linear: x must be float32, bfloat16 or float16"):
        ops.int8_weight_only_linear(x.double(), wq, w_scale)
    with pytest.raises(RuntimeError, match="wq must be on cpu like the input, got meta"):
        ops.int8_dynamic_linear(x, wq.to("meta"), w_scale)


# ---------------------------------------------------------------------------------------
# nn layers and quantize_
# ---------------------------------------------------------------------------------------
def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 33, bias=False),
                               torch.nn.ReLU(), torch.nn.Linear(33, 8)).to(dtype)


@pytest.mark.parametrize("module_cls,kwargs", [(ek.nn.Int8Linear, {}), (ek.nn.Int8WeightOnlyLinear, {}),
                                                (ek.nn.Int8WeightOnlyLinear, {"group_size": 32})])
def test_from_float_is_close_to_the_float_layer(module_cls, kwargs):
    linear = torch.nn.Linear(300, 70)
    q = module_cls.from_float(linear, **kwargs)
    x = random_input((9, 300), scale=1.0)
    expected = linear(x)
    rel = (q(x) - expected).norm() / expected.norm()
    assert rel < 0.02, rel
    assert "in_features=300, out_features=70" in repr(q)


@pytest.mark.parametrize("module_cls,kwargs",
                         [(ek.nn.Int8Linear, {}), (ek.nn.Int8WeightOnlyLinear, {"group_size": 16})])
def test_state_dict_round_trip_is_exact(module_cls, kwargs):
    q = module_cls.from_float(torch.nn.Linear(48, 20), **kwargs)
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    fresh = module_cls(48, 20, **kwargs)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    for key, value in q.state_dict().items():
        assert_same_bits(fresh.state_dict()[key], value)
    x = random_input((3, 48))
    assert_same_bits(fresh(x), q(x))
    assert set(q.state_dict()) == {"weight", "weight_scale", "bias"}
    assert q.state_dict()["weight"].dtype == torch.int8


def test_state_dict_saves_with_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    q = ek.nn.Int8Linear.from_float(torch.nn.Linear(48, 20))
    safetensors.save_file(q.state_dict(), tmp_path / "q.safetensors")
    fresh = ek.nn.Int8Linear(48, 20)
    fresh.load_state_dict(safetensors.load_file(tmp_path / "q.safetensors"))
    x = random_input((3, 48))
    assert_same_bits(fresh(x), q(x))


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.Int8WeightOnlyConfig(group_size=32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_converts_every_linear_and_compiles_without_breaks(config, dtype):
    model = mlp(dtype)
    x = random_input((4, 64), dtype, scale=1.0)
    expected = model(x)
    summary = ek.quantize_(model, config)
    assert summary.converted == ["0", "2", "4"] and not summary.skipped
    # int8 weights plus fp32 scales (one per 32 weights at worst here) and the float bias
    assert summary.bytes_after < summary.bytes_before / (1.6 if dtype == torch.bfloat16 else 3.0)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    out = model(x)
    assert out.dtype == dtype
    rel = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
    assert rel < 0.05, rel
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_same_bits(compiled(x), out)


def test_quantize_filter_and_skips_are_reported():
    model = mlp()
    summary = ek.quantize_(model, ek.Int8Config(), filter_fn=lambda module, name: name != "4")
    assert summary.converted == ["0", "2"]
    assert type(model[4]) is torch.nn.Linear
    meta_model = torch.nn.Sequential(torch.nn.Linear(8, 8, device="meta"))
    summary = ek.quantize_(meta_model, ek.Int8Config())
    assert summary.skipped == {"0": "weight is on the meta device (load real weights first)"}
    assert "skipped 0" in str(summary)


def test_bad_group_size_is_rejected():
    with pytest.raises(ValueError, match="group_size must be positive"):
        ek.Int8WeightOnlyConfig(group_size=0)


# ---------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): same bits as the reference for W8A8, close for W8A16
# ---------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("m,n,k", MNK + [(300, 520, 4096)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_int8_linear_and_dynamic_are_bit_exact(m, n, k, dtype):
    xq, wq = random_int8((m, k)), random_int8((n, k))
    x_scale, w_scale, bias = torch.rand(m) + 0.01, torch.rand(n) + 0.01, torch.randn(n)
    out = ops.int8_linear(xq.cuda(), x_scale.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda(), dtype)
    assert_same_bits(out.cpu(), ref.int8_linear(xq, x_scale, wq, w_scale, bias, dtype))
    x = random_input((m, k), dtype)
    out = ops.int8_dynamic_linear(x.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda())
    assert_same_bits(out.cpu(), ref.int8_dynamic_linear(x, wq, w_scale, bias))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16, 17, 200])
@pytest.mark.parametrize("group_size", [None, 128, 100])
def test_cuda_int8_weight_only_linear(dtype, m, group_size):
    n, k = 520, 1000
    x = random_input((m, k), dtype, scale=1.0)
    w = random_input((n, k), scale=0.05)
    wq, w_scale = ops.quantize_per_channel(w, 0) if group_size is None else ops.quantize_per_group(w, group_size)
    bias = torch.randn(n)
    out = ops.int8_weight_only_linear(x.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda(), group_size)
    torch.testing.assert_close(out.cpu(), ref.int8_weight_only_linear(x, wq, w_scale, bias, group_size),
                               **w8a16_tolerance(dtype))


@pytest.mark.cuda
def test_cuda_int8_modules_and_opcheck():
    model = mlp().cuda()
    x = random_input((4, 64), scale=1.0).cuda()
    expected = model(x)
    ek.quantize_(model, ek.Int8Config())
    out = model(x)
    assert ((out - expected).norm() / expected.norm()).item() < 0.05
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), out)
    xq, x_scale = ops.quantize_per_token(x)
    wq, w_scale = ops.quantize_per_channel(random_input((6, 64)).cuda(), 0)
    opcheck(torch.ops.effgen.int8_linear.default, (xq, x_scale, wq, w_scale, None, torch.bfloat16))
    opcheck(torch.ops.effgen.int8_weight_only_linear.default, (x, wq, w_scale, None, None))


# ---------------------------------------------------------------------------------------
# SmoothQuant calibration
# ---------------------------------------------------------------------------------------
def test_calibrate_activations_records_per_feature_absmax():
    model = mlp()
    batches = [random_input((4, 64), scale=1.0) for _ in range(3)]
    absmax = ek.calibrate_activations(model, batches)
    assert set(absmax) == {"0", "2", "4"}
    expected = torch.stack([b.abs().amax(0) for b in batches]).amax(0)
    assert_same_bits(absmax["0"], expected)
    assert absmax["2"].shape == (96,) and absmax["4"].shape == (33,)
    assert not model[0]._forward_hooks  # hooks removed


def test_smoothing_helps_when_one_input_feature_is_an_outlier():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    x = torch.randn(32, 256)
    x[:, 7] *= 60.0  # an outlier channel, as after LLM norms and SwiGLU
    expected = linear(x)
    plain = ek.nn.Int8Linear.from_float(linear)
    smooth = ek.nn.Int8Linear.from_float(linear, activation_absmax=x.abs().amax(0), alpha=0.5)
    err_plain = ((plain(x) - expected).norm() / expected.norm()).item()
    err_smooth = ((smooth(x) - expected).norm() / expected.norm()).item()
    assert err_smooth < err_plain / 2, (err_smooth, err_plain)
    assert "SmoothQuant" in repr(smooth)
    fresh = ek.nn.Int8Linear(256, 64, smoothing=True)
    fresh.load_state_dict(smooth.state_dict())
    assert_same_bits(fresh(x), smooth(x))


def test_smoothing_rejects_bad_arguments():
    linear = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match="alpha must lie in \\[0, 1\\]"):
        ek.nn.Int8Linear.from_float(linear, activation_absmax=torch.ones(8), alpha=1.5)
    with pytest.raises(ValueError, match="activation_absmax must have shape \\[8\\]"):
        ek.nn.Int8Linear.from_float(linear, activation_absmax=torch.ones(7))
