"""Every CPU linear op against reference.py on randomly drawn cases: shapes around the
kernels' tile and block edges (and 0), input layouts (transposed, strided, offset by one
element), dtypes, scales from 1e-3 to 1e3, biases, group sizes, and now and then an Inf or
NaN. Each case is seeded, so a failure names the case that reproduces it.

The bound each output must meet is the accumulated rounding the op's spec allows:
With SmoothQuant factors, x below is x * smoothing (what the W8A8 ops quantize).
  |out - expected| <= 2^-14 * absmax_row(x) * sum_k |w[j, k]|   (W8A16 fixed point on the CPU:
                                                                 15 bits of each token's absmax)
                     + k * 2^-22 * (|x| @ |w|^T)[i, j]          (fp32 sums in another order)
                     + 2 u |expected| + 2 s                      (rounding of the output: unit
                                                                 roundoff u, subnormal spacing s)
                     + u_x * (|x| @ |w|^T)[i, j]                 (W8A16, binary and ternary
                                                                 batches of 16-bit x on an AMX
                                                                 CPU only: torch's GEMM there
                                                                 multiplies the weights (scales
                                                                 included) rounded to x's dtype,
                                                                 unit roundoff u_x per product)
and Inf / NaN where the reference has them."""

import random

import pytest
import torch
from conftest import FLOAT_DTYPES

import effgen_kernels as ek
from effgen_kernels import reference as ref

ops = ek.ops
ROWS = [0, 1, 2, 3, 5, 8, 16, 17, 33, 64]
INPUTS = [0, 1, 3, 4, 7, 31, 64, 100, 257, 1000]
OUTPUTS = [0, 1, 5, 16, 17, 63, 70, 129]
OPS = ["int8_linear", "int8_dynamic", "int8_dynamic_packed", "w8a16", "w8a16_packed", "binary", "ternary"]


def with_layout(t: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """t's values in one of four storage layouts."""
    choice = rng.randrange(4)
    if choice == 1 and t.dim() >= 2:  # column-major
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if choice == 2:  # every other element of a wider buffer
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., 1::2] = t
        return wide[..., 1::2]
    if choice == 3:  # storage offset by one element
        flat = torch.zeros(t.numel() + 1, dtype=t.dtype)
        view = flat[1:].view(t.shape)
        view.copy_(t)
        return view
    return t


def draw_case(seed: int) -> dict:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    m, k, n = rng.choice(ROWS), rng.choice(INPUTS), rng.choice(OUTPUTS)
    dtype = rng.choice(FLOAT_DTYPES)
    x = torch.randn(m, k, generator=gen) * rng.choice([1e-3, 1.0, 1e3])
    if m * k > 0 and rng.random() < 0.15:
        x[rng.randrange(m), rng.randrange(k)] = rng.choice([float("inf"), float("-inf"), float("nan")])
    x = x.to(dtype)
    if m > 0 and rng.random() < 0.2:
        x = x.reshape(1, m, k)
    return dict(op=rng.choice(OPS), x=with_layout(x, rng), w=torch.randn(n, k, generator=gen) * 0.05,
                bias=torch.randn(n, generator=gen).to(rng.choice(FLOAT_DTYPES)) if rng.random() < 0.5 else None,
                group=rng.choice([None, None, 4, 6, 32, 50, 128]), out_dtype=rng.choice(FLOAT_DTYPES), rng=rng,
                gen=gen)


def run_case(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ours, the reference's, the dense weights the bound is taken over)."""
    op, x, w, bias, group, rng = case["op"], case["x"], case["w"], case["bias"], case["group"], case["rng"]
    if op == "binary":
        group = rng.choice([None, 16, 32, 48, 64, 128])  # multiples of 16: what binary groups take
        packed, alpha = ref.binarize_weight(w, group)
        expected = ref.binary_linear(x, packed, alpha, bias, group)
        lut = ops.lut_tiles(packed, x.shape[-1], 1, rng.choice([None, group])) if rng.random() < 0.5 else None
        dense = ref.unpack_binary(packed, x.shape[-1]).float() * ref._row_alpha(alpha, x.shape[-1], group)
        return ops.binary_linear(x, with_layout(packed, rng), alpha, bias, group, lut), expected, dense
    if op == "ternary":
        packed, scale = ref.ternarize_weight(w, rng.random() < 0.8)
        expected = ref.ternary_linear(x, packed, scale, bias)
        lut = ops.lut_tiles(packed, x.shape[-1], 2) if rng.random() < 0.5 else None
        dense = ref.unpack_ternary(packed, x.shape[-1]).float() * scale.reshape(-1, 1)
        return ops.ternary_linear(x, packed, scale, bias, lut), expected, dense
    if op.startswith("w8a16"):
        wq, w_scale = ops.quantize_per_channel(w, 0) if group is None else ops.quantize_per_group(w, group)
        dense = ref.dequantize(wq, w_scale, axis=0 if group is None else None, group_size=group)
        expected = ref.int8_weight_only_linear(x, wq, w_scale, bias, group)
        if op == "w8a16":
            return ops.int8_weight_only_linear(x, with_layout(wq, rng), w_scale, bias, group), expected, dense
        packed = ops.int8_pack_weight(wq, group)
        return ops.int8_weight_only_linear_packed(x, *packed, w_scale, bias, group), expected, dense
    # W8A8: the reference quantizes x the same way, so the integer products are exact.
    if not torch.isfinite(x).all():
        pytest.skip("W8A8 rejects Inf / NaN activations (tested in test_int8_gemm.py)")
    wq, w_scale = ops.quantize_per_channel(w, 0)
    dense = ref.dequantize(wq, w_scale, axis=0)
    if op == "int8_linear":
        xq, x_scale = ops.quantize_per_token(x)
        expected = ref.int8_linear(xq, x_scale, wq, w_scale, bias, case["out_dtype"])
        return ops.int8_linear(with_layout(xq, rng), x_scale, with_layout(wq, rng), w_scale, bias,
                               case["out_dtype"]), expected, dense
    smoothing = None
    if rng.random() < 0.4:  # positive factors from 0.1 to 10, as SmoothQuant's alpha gives
        smoothing = with_layout(torch.exp(torch.empty(x.shape[-1]).uniform_(-2.3, 2.3, generator=case["gen"])), rng)
        case["quantized_x"] = x.float() * smoothing
    expected = ref.int8_dynamic_linear(x, wq, w_scale, bias, smoothing)
    if op == "int8_dynamic":
        return ops.int8_dynamic_linear(x, with_layout(wq, rng), w_scale, bias, smoothing), expected, dense
    return (ops.int8_dynamic_linear_packed(x, *ops.int8_pack_weight(wq), w_scale, bias, smoothing), expected,
            dense)


def edge_case(op: str, m: int, n: int, dtype: torch.dtype, seed: int) -> dict:
    """A case of ``op`` with m rows and n outputs, K = 72 (a tail past 64): finite values, a
    bias, layouts and group sizes drawn from the seed."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, 72, generator=gen)).to(dtype)
    return dict(op=op, x=with_layout(x, rng), w=torch.randn(n, 72, generator=gen) * 0.05,
                bias=torch.randn(n, generator=gen).to(dtype), group=rng.choice([None, 32]), out_dtype=dtype, rng=rng,
                gen=gen)


@pytest.mark.parametrize("seed", range(120))
def test_random_case_matches_reference(isa, seed):
    check_case(draw_case(seed), isa)


# Rows 1-13 and outputs around multiples of 16 up to 112: every remainder of the register
# tiles (up to 6 rows by 4 x 16 outputs on AVX-512) with every dtype. Coverage of the kernels
# (gcov) showed edge tiles that the random cases had never drawn.
EDGE_ROWS = range(1, 14)
EDGE_OUTPUTS = [1, 3, 16, 17, 32, 35, 48, 50, 64, 80, 96, 112]


@pytest.mark.parametrize("op", OPS)
def test_every_tile_edge_matches_reference(isa, op):
    for i, (m, n, dtype) in enumerate((m, n, dtype) for m in EDGE_ROWS for n in EDGE_OUTPUTS
                                      for dtype in FLOAT_DTYPES):
        check_case(edge_case(op, m, n, dtype, seed=i), isa)


def check_case(case: dict, isa: str) -> None:
    """Runs the case and holds each output to the bound of the module docstring."""
    out, expected, dense = run_case(case)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    if expected.numel() == 0:
        return
    k = dense.shape[1]
    x = case.get("quantized_x", case["x"]).float().reshape(case["x"].shape[:-1].numel(), k)
    out, expected = out.float().reshape(x.shape[0], -1), expected.float().reshape(x.shape[0], -1)
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isnan(out), torch.isnan(expected)), f"{case['op']}: NaN not where the reference has it"
    infinite = ~finite & ~torch.isnan(expected)
    assert torch.equal(out[infinite], expected[infinite]), f"{case['op']}: Inf not where the reference has it"
    x_abs = torch.where(torch.isfinite(x), x.abs(), 0.0)
    out_info = torch.finfo(case["out_dtype"] if case["op"] == "int8_linear" else case["x"].dtype)
    u, s = out_info.eps, out_info.tiny * out_info.eps
    row_absmax = x_abs.amax(1, keepdim=True) if k else torch.zeros(x.shape[0], 1)
    bound = (2.0**-14 * row_absmax * dense.abs().sum(1) + k * 2.0**-22 * (x_abs @ dense.abs().T)
             + 2 * u * expected.abs() + 2 * s)
    weight_only = case["op"].startswith("w8a16") or case["op"] in ("binary", "ternary")
    if isa == "amx" and weight_only and case["x"].dtype != torch.float32 and x.shape[0] > 16:
        # torch's 16-bit GEMM: the weights (times their per-group scales) and the bias rounded
        # to x's dtype
        bias_abs = 0.0 if case["bias"] is None else case["bias"].float().abs()
        bound = bound + torch.finfo(case["x"].dtype).eps / 2 * (x_abs @ dense.abs().T + bias_abs)
    excess = torch.where(finite, (out - expected).abs() / bound, 0.0)
    worst = excess.argmax()
    assert excess.max() <= 1, (f"{case['op']}: out {out.flatten()[worst].item():.6g}, reference "
                               f"{expected.flatten()[worst].item():.6g}, bound {bound.flatten()[worst].item():.3g}")
