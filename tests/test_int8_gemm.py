"""The int8_gemm family (W8A8, W8A16) against reference.py, and the int8 nn layers."""

import copy
import io
import subprocess

import pytest
import torch
from conftest import (
    CPU_ISAS,
    FLOAT_DTYPES,
    assert_products_match,
    build_kernel_bench,
    check_kernel_bench_on_every_isa,
    random_input,
    run_cuda_host_check,
    torch_threads,
)
from test_quant import assert_same_bits
from torch.library import opcheck

import effgen_kernels as ek
from effgen_kernels import reference as ref
from effgen_kernels.cli import build_info, cuda_int8_kernels

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
    packed, w_sum = ops.int8_pack_weight(wq)
    for xs, ws, b in [(x_scale, w_scale, bias), (x_scale, w_scale, None), per_tensor]:
        expected = ref.int8_linear(xq, xs, wq, ws, b, out_dtype)
        assert_same_bits(ops.int8_linear(xq, xs, wq, ws, b, out_dtype), expected)
        assert_same_bits(ops.int8_linear_packed(xq, xs, packed, w_sum, ws, b, out_dtype), expected)
        assert_same_bits(ref.int8_linear_packed(xq, xs, packed, w_sum, ws, b, out_dtype), expected)


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


# AVX2 multiplies packed weights for a few rows with the sign trick (|x| times x's sign moved
# onto w), exact unless a weight is -128; a 16-column group holding one takes the widening
# tile instead. Column 20's -128 puts group 1 on that path while group 0 and group 2 keep the
# fast one. From 12 rows AVX2 widens rows and weights to int16 first (exact for -128 too):
# 14 and 33 rows end in 2- and 1-row edges of its 4-row tiles.
@pytest.mark.parametrize("m,k", [(1, 7), (2, 64), (5, 131), (14, 77), (33, 1000)])
def test_int8_linear_packed_weights_with_and_without_int8_min(isa, m, k):
    xq = random_int8((m, k))
    xq[0, : min(k, 5)] = -128
    wq = random_int8((40, k), low=-127)
    wq[3, 0] = wq[37, -1] = 127
    for minimum_at in [None, (20, k // 2)]:
        if minimum_at is not None:
            wq[minimum_at] = -128
        x_scale, w_scale = torch.rand(m) + 0.01, torch.rand(40) + 0.01
        out = ops.int8_linear_packed(xq, x_scale, *ops.int8_pack_weight(wq), w_scale)
        assert_same_bits(out, ref.int8_linear(xq, x_scale, wq, w_scale))


def test_int8_linear_packed_between_other_tile_users_on_the_same_threads(isa):
    # AMX's gemm_packed leaves its threads' tiles configured for their next call and
    # configures them only where they hold another configuration; in between, torch's own
    # AMX kernels (oneDNN: _int_mm, bf16 matmul) configure the same tiles their way. Shapes
    # whose blocks need different tile shapes (row and column tails, 1 or 2 tile rows)
    # alternate with them, every result against the reference. 108 x 520: each column
    # block's 96 rows follow the previous one's 12-row tail on the same thread, so tiles
    # left configured for 12 rows would leave rows of the output unwritten.
    shapes = [(108, 64, 520), (48, 576, 192), (40, 100, 70), (64, 576, 1536), (19, 64, 17), (96, 200, 33)]
    others = [lambda: torch._int_mm(random_int8((64, 256)), random_int8((256, 96))),
              lambda: torch.randn(50, 300, dtype=torch.bfloat16) @ torch.randn(300, 70, dtype=torch.bfloat16)]
    for step in range(12):
        m, k, n = shapes[step % len(shapes)]
        xq, wq = random_int8((m, k)), random_int8((n, k))
        x_scale, w_scale = torch.rand(m) + 0.01, torch.rand(n) + 0.01
        out = ops.int8_linear_packed(xq, x_scale, *ops.int8_pack_weight(wq), w_scale)
        assert_same_bits(out, ref.int8_linear(xq, x_scale, wq, w_scale))
        others[step % len(others)]()


def test_int8_linear_packed_sign_trick_extremes_at_the_largest_k(isa):
    # |x| = 128 against |w| = 127 in every pair: vpmaddubsw's int16 pair sums reach 32512,
    # just inside int16, and the int32 totals reach 128 * 127 * K.
    k = (1 << 17) - 1
    xq = torch.full((2, k), -128, dtype=torch.int8)
    xq[1, 1::2] = 127
    wq = torch.stack([torch.full((k,), -127, dtype=torch.int8), torch.full((k,), 127, dtype=torch.int8)])
    out = ops.int8_linear_packed(xq, torch.ones(2), *ops.int8_pack_weight(wq), torch.ones(2))
    assert_same_bits(out, ref.int8_linear(xq, torch.ones(2), wq, torch.ones(2)))
    assert out[0, 0].item() == float(128 * 127 * k)


def test_int8_linear_packed_batch_extremes_at_the_largest_k(isa):
    # 13 rows (AVX2's int16 batch path: three 4-row tiles and a 1-row one) by 17 columns (a
    # group and one column): every product +-128 * 128 or 127 * 128 over the largest K, so
    # each column's int32 lane nears 2^31.
    k = (1 << 17) - 1
    xq = torch.full((13, k), -128, dtype=torch.int8)
    xq[1::2, 1::2] = 127
    wq = torch.full((17, k), -128, dtype=torch.int8)
    wq[1::3] = 127
    wq[16, ::2] = -127
    out = ops.int8_linear_packed(xq, torch.ones(13), *ops.int8_pack_weight(wq), torch.ones(17))
    assert_same_bits(out, ref.int8_linear(xq, torch.ones(13), wq, torch.ones(17)))
    assert out[0, 0].item() == float(128 * 128 * k)


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


def test_int8_pack_weight_layout_and_round_trip():
    n, k = 37, 70
    wq = random_int8((n, k))
    packed, w_sum = ops.int8_pack_weight(wq)
    assert packed.shape == (3, 18, 64) and packed.dtype == torch.int8 and w_sum.dtype == torch.int32
    # block (jb, kq) holds wq[16 jb + c, 4 kq + r] at byte 4 c + r, zero past N and K
    jb, kq, c, r = torch.meshgrid(*(torch.arange(d) for d in (3, 18, 16, 4)), indexing="ij")
    rows, cols = 16 * jb + c, 4 * kq + r
    inside = (rows < n) & (cols < k)
    expected = torch.zeros(3, 18, 16, 4, dtype=torch.int8)
    expected[inside] = wq[rows[inside], cols[inside]]
    assert torch.equal(packed, expected.reshape(3, 18, 64))
    assert torch.equal(w_sum, wq.to(torch.int64).sum(1).to(torch.int32))
    assert torch.equal(ops.int8_unpack_weight(packed, n, k), wq)
    assert torch.equal(ref.int8_unpack_weight(packed, n, k), wq)
    opcheck(torch.ops.effgen.int8_unpack_weight.default, (packed, n, k))
    with pytest.raises(TypeError, match="int8_pack_weight: wq must be int8, got Float"):
        ops.int8_pack_weight(wq.float())
    with pytest.raises(ValueError, match="int8_pack_weight: wq must be 2-D \\[N, K\\], got shape \\[2, 37, 70\\]"):
        ops.int8_pack_weight(wq.expand(2, n, k))
    with pytest.raises(ValueError, match="int8_pack_weight: group_size must be positive or None, got 0"):
        ops.int8_pack_weight(wq, 0)
    with pytest.raises(ValueError, match="int8_unpack_weight: w_packed must have shape \\[3, 19, 64\\] \\(from "
                                         "N = 37 and K = 74"):
        ops.int8_unpack_weight(packed, n, k + 4)
    with pytest.raises(TypeError, match="int8_unpack_weight: w_packed must be int8"):
        ops.int8_unpack_weight(packed.float(), n, k)
    with pytest.raises(ValueError, match="int8_unpack_weight: n and k must be >= 0"):
        ops.int8_unpack_weight(packed, -1, k)


# N and K around the 16 x 4 blocks, K over several groups and a ragged last one, empties
@pytest.mark.parametrize("n,k", [(1, 1), (16, 4), (17, 5), (37, 70), (300, 1031), (0, 9), (5, 0)])
@pytest.mark.parametrize("group_size", [None, 1, 6, 64, 4096])
def test_int8_pack_weight_matches_the_reference(n, k, group_size):
    wq = random_int8((n, k), low=-127)
    for weights in (wq, random_int8((k, n), low=-127).T, torch.cat([wq, wq], 1)[:, k:]):  # and non-contiguous
        packed, w_sum = ops.int8_pack_weight(weights, group_size)
        expected = ref.int8_pack_weight(weights, group_size)
        assert torch.equal(packed, expected[0]) and torch.equal(w_sum, expected[1])  # shapes included
        assert torch.equal(ops.int8_unpack_weight(packed, n, k), weights)
    opcheck(torch.ops.effgen.int8_pack_weight.default, (wq, group_size))


def test_int8_pack_weight_splits_a_large_layer_over_threads():
    wq = random_int8((1000, 700), low=-127)  # 63 column groups of 11200 weights: several tasks a thread
    for threads in (1, 2):
        with torch_threads(threads):
            packed, w_sum = ops.int8_pack_weight(wq, 128)
        expected = ref.int8_pack_weight(wq, 128)
        assert torch.equal(packed, expected[0]) and torch.equal(w_sum, expected[1])


@pytest.fixture(scope="module")
def int8_gemm_bench(tmp_path_factory):
    """benchmarks/kernels/int8_gemm_bench.cpp, built."""
    sources = [*(f"int8_gemm_{isa}.cpp" for isa in ("amx", "avx2", "avx512", "scalar")), "int8_pack.cpp", "isa.cpp"]
    return build_kernel_bench("int8_gemm_bench", sources, tmp_path_factory.mktemp("int8_gemm_bench"))


@pytest.mark.parametrize("m, copies, n, k, threads, group", [(1, 1, 100, 77, 1, 0), (1, 2, 70, 4099, 2, 0),
                                                             (7, 2, 1030, 301, 2, 0),
                                                             (13, 2, 33, 4099, 2, 0), (3, 2, 1030, 300, 2, 128),
                                                             (9, 1, 33, 4099, 1, 64)])
def test_the_int8_gemm_benchmark_matches_the_scalar_kernel(int8_gemm_bench, m, copies, n, k, threads, group):
    # The standalone timing tool of RESULTS.md "Session 23" builds, checks the dispatched
    # gemm_packed or w8a16_packed_grouped (with and without the next block prefetched)
    # against the scalar kernels on its own data (exit 1 on a mismatch) and times it.
    check_kernel_bench_on_every_isa(int8_gemm_bench, (m, copies, n, k, threads, 3, group),
                                    lambda isa: f"isa {isa}, {m} x {n} x {k}", (0,))


@pytest.fixture(scope="module")
def amx_emulated_bench(tmp_path_factory):
    """int8_gemm_bench with the AMX kernel on emulated tiles, under ASan and UBSan."""
    sources = ["int8_gemm_amx.cpp", "int8_gemm_scalar.cpp", "int8_pack.cpp", "isa.cpp"]
    flags = ("-DEFFGEN_AMX_EMULATE", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
    return build_kernel_bench("int8_gemm_bench", sources, tmp_path_factory.mktemp("amx_emulated"), flags)


@pytest.mark.parametrize("m, n, k, threads, group", [(16, 33, 64, 1, 0), (37, 1030, 301, 2, 0), (50, 100, 4099, 2, 0),
                                                     (20, 64, 3, 1, 0), (96, 200, 576, 2, 0), (33, 17, 1000, 1, 0),
                                                     (15, 70, 90, 1, 0), (8, 70, 90, 1, 0), (7, 70, 90, 1, 0),
                                                     (4, 70, 1000, 1, 128), (9, 129, 4100, 2, 64),
                                                     (3, 40, 300, 1, 128)])
def test_the_amx_kernel_matches_the_scalar_kernel_on_emulated_tiles(amx_emulated_bench, m, n, k, threads, group):
    # The AMX gemm_packed on a scalar model of the tiles that aborts where the hardware
    # would fault (amx_tiles.h), on any CPU: row, column and K tails (K % 64 and K % 4),
    # 1 or 2 tile rows and columns, per-thread tile state; under ASan and UBSan, so a tile
    # row read or written past its buffer fails too. 15 rows fill one row tile in part, 8
    # (the fewest on tiles) half of one; 7 take the few-rows kernel. With a group, W8A16's
    # per-group kernel on m tokens of 2 digit rows: 4 tokens are the fewest on tiles, 9 fill
    # 2 row tiles in part (the last group 4 values: no whole chunk), 3 take the few-rows
    # kernel.
    binary, env = amx_emulated_bench
    result = subprocess.run([str(binary), *map(str, (m, 1, n, k, threads, 1, group))], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0 and f"isa amx (emulated tiles), {m} x {n} x {k}" in result.stdout, (
        result.stdout + result.stderr)


def test_the_amx_tile_peak_probe_measures_every_thread(tmp_path):
    # benchmarks/kernels/amx_tile_peak.cpp, the tiles' arithmetic limit (RESULTS.md, session
    # 66), built as the kernel benchmarks are (-O2: where GCC had dropped the tile
    # configuration's stores, it crashed) and run briefly; a rate per data type it measures.
    binary, env = build_kernel_bench("amx_tile_peak", ["isa.cpp"], tmp_path)
    usage = subprocess.run([str(binary), "0"], capture_output=True, text=True, timeout=60, env=env)
    assert usage.returncode == 2 and "usage" in usage.stderr
    result = subprocess.run([str(binary), "2", "20000"], capture_output=True, text=True, timeout=120, env=env)
    if result.returncode == 3:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("amx int8 tile peak, 2 threads: ") and len(lines) in (1, 2), result.stdout
    for line in lines:
        total, per_thread = (float(part.split()[0]) for part in line.split(": ")[1].split(" GOP/s (", 1))
        assert total > 0 and total == pytest.approx(2 * per_thread, rel=0.01), line


# Tile edges of every ISA (6 x 64, 2 x 16, 1 x 16 register tiles; 96 x 64 output blocks).
# W8A16's choice between fixed point and dequantizing for torch's GEMM depends on M, the
# shape, the dtype and (VNNI or not) the ISA: 97 and 150 rows take either on some ISA.
# One row at K = 2054: the AVX-512 decode tile's two halves of K (256 quads each, enough
# to read ahead), an odd quad and a partial one after them.
PACKED_MNK = MNK + [(6, 64, 64), (13, 65, 33), (7, 17, 4), (97, 130, 131), (1, 200, 1000), (150, 70, 200),
                    (1, 70, 2054)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", PACKED_MNK)
def test_int8_dynamic_linear_packed_is_bit_exact(isa, dtype, m, n, k):
    x = random_input((m, k), dtype)
    wq, w_scale = ops.quantize_per_channel(random_input((n, k)), 0)
    packed, w_sum = ops.int8_pack_weight(wq)
    bias = torch.randn(n).to(dtype)
    for ws, b in [(w_scale, bias), (torch.tensor(0.02), None)]:
        out = ops.int8_dynamic_linear_packed(x, packed, w_sum, ws, b)
        assert_same_bits(out, ref.int8_dynamic_linear_packed(x, packed, w_sum, ws, b))
        assert_same_bits(out, ops.int8_dynamic_linear(x, wq, ws, b))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", PACKED_MNK)
def test_smoothing_multiplies_x_in_fp32_before_the_quantization(isa, dtype, m, n, k):
    x = random_input((m, k), dtype)
    smoothing = torch.rand(k) * 4 + 0.05
    wq, w_scale = ops.quantize_per_channel(random_input((n, k)), 0)
    packed, w_sum = ops.int8_pack_weight(wq)
    bias = torch.randn(n).to(dtype)
    expected = ref.int8_dynamic_linear(x, wq, w_scale, bias, smoothing)
    assert_same_bits(ops.int8_dynamic_linear(x, wq, w_scale, bias, smoothing), expected)
    assert_same_bits(ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale, bias, smoothing), expected)
    q, scale = ops.quantize_per_token(x.float() * smoothing)  # the spec, spelled out
    assert_same_bits(expected, ref.int8_linear(q, scale, wq, w_scale, bias, dtype))


# Small layers (int8 weights up to 1 MiB) with 24+ rows per thread split their rows between
# threads, each quantizing its own (split_rows in csrc/ops/int8_gemm.cpp); others, like the
# last shape, split the output blocks after one quantization pass.
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m,n,k", [(23, 70, 300), (24, 70, 300), (48, 65, 33), (150, 130, 131), (200, 40, 4100),
                                   (50, 1500, 200), (64, 1100, 1000)])
def test_int8_dynamic_linear_over_row_ranges_is_bit_exact(isa, threads, m, n, k, dtype):
    x = random_input((2, m, 2 * k), dtype)[..., ::2]  # 3-D, not contiguous
    wq, w_scale = ops.quantize_per_channel(random_input((n, k)), 0)
    packed, w_sum = ops.int8_pack_weight(wq)
    bias = torch.randn(n).to(dtype)
    smoothing = torch.rand(k) * 4 + 0.05
    expected = ref.int8_dynamic_linear(x.contiguous(), wq, w_scale, bias)
    smoothed = ref.int8_dynamic_linear(x.contiguous(), wq, w_scale, bias, smoothing)
    with torch_threads(threads):
        assert_same_bits(ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale, bias), expected)
        assert_same_bits(ops.int8_dynamic_linear(x, wq, w_scale, bias), expected)
        assert_same_bits(ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale, bias, smoothing), smoothed)
        assert_same_bits(ops.int8_dynamic_linear(x, wq, w_scale, bias, smoothing), smoothed)
        x[1, m // 2 + 3, 7] = float("nan")  # rows of the second thread's range: the first one is named
        x[1, m // 2 + 1, 0] = float("inf")
        first = m + m // 2 + 1
        with pytest.raises(ValueError, match=f"quantize_per_token: x contains NaN or Inf \\(first in row {first}\\)"):
            ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale, bias)
        with pytest.raises(ValueError, match=f"x \\* smoothing contains NaN or Inf \\(first in row {first}\\)"):
            ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale, bias, smoothing)


def test_int8_dynamic_linear_packed_3d_non_contiguous_and_empty(isa):
    x = random_input((2, 5, 2 * 33))[..., ::2]
    wq, w_scale = ops.quantize_per_channel(random_input((19, 33)), 0)
    packed, w_sum = ops.int8_pack_weight(wq)
    out = ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale)
    assert out.shape == (2, 5, 19)
    assert_same_bits(out, ref.int8_dynamic_linear(x.contiguous(), wq, w_scale))
    strided_packed = torch.empty(2, 9, 128, dtype=torch.int8)[..., ::2]
    strided_packed.copy_(packed)
    assert_same_bits(ops.int8_dynamic_linear_packed(x, strided_packed, w_sum, w_scale), out)
    assert ops.int8_dynamic_linear_packed(torch.randn(0, 33), packed, w_sum, w_scale).shape == (0, 19)


def test_int8_dynamic_linear_packed_extremes_at_the_largest_k(isa):
    # Activations quantize to 127 (255 once shifted to unsigned), weights at -128 and 127:
    # the kernel's shifted sums wrap int32; the result (127 * -128 * K) must still be exact.
    k = (1 << 17) - 1
    x = torch.ones(2, k)
    wq = torch.stack([torch.full((k,), -128, dtype=torch.int8), torch.full((k,), 127, dtype=torch.int8)])
    packed, w_sum = ops.int8_pack_weight(wq)
    out = ops.int8_dynamic_linear_packed(x, packed, w_sum, torch.ones(2))
    assert_same_bits(out, ref.int8_dynamic_linear(x, wq, torch.ones(2)))
    assert out[0, 0].item() == float(127 * -128 * k) * (1 / 127)


def test_int8_dynamic_linear_packed_bad_inputs_name_the_argument():
    x, (packed, w_sum), w_scale = torch.randn(3, 8), ops.int8_pack_weight(random_int8((4, 8))), torch.ones(4)
    with pytest.raises(ValueError, match="w_packed must have shape \\[1, 2, 64\\] \\(from N = 4 and K = 8"):
        ops.int8_dynamic_linear_packed(x, packed[:, :1], w_sum, w_scale)
    with pytest.raises(TypeError, match="int8_dynamic_linear_packed: w_sum must be int32"):
        ops.int8_dynamic_linear_packed(x, packed, w_sum.long(), w_scale)
    with pytest.raises(TypeError, match="int8_dynamic_linear_packed: w_packed must be int8"):
        ops.int8_dynamic_linear_packed(x, packed.float(), w_sum, w_scale)
    with pytest.raises(ValueError, match="w_scale must have one element \\(per tensor\\) or shape \\[4\\]"):
        ops.int8_dynamic_linear_packed(x, packed, w_sum, torch.ones(3))
    with pytest.raises(TypeError, match="int8_dynamic_linear_packed: x must be float32"):
        ops.int8_dynamic_linear_packed(x.double(), packed, w_sum, w_scale)
    with pytest.raises(TypeError, match="int8_dynamic_linear_packed: smoothing must be float32, got Double"):
        ops.int8_dynamic_linear_packed(x, packed, w_sum, w_scale, None, torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="int8_dynamic_linear: smoothing must have shape \\[8\\] \\(one factor per "
                                         "input feature\\), got \\[1, 8\\]"):
        ops.int8_dynamic_linear(x, random_int8((4, 8)), w_scale, None, torch.ones(1, 8))
    overflowing = torch.ones(8)
    overflowing[3] = 3e38  # finite, but x * smoothing is not
    with pytest.raises(ValueError, match="x \\* smoothing contains NaN or Inf \\(first in row 0\\)"):
        ops.int8_dynamic_linear_packed(x.abs() + 2, packed, w_sum, w_scale, None, overflowing)
    with pytest.raises(TypeError, match="int8_linear_packed: xq must be int8"):
        ops.int8_linear_packed(x, torch.ones(3), packed, w_sum, w_scale)
    with pytest.raises(ValueError, match="int8_linear_packed: x_scale must have one element"):
        ops.int8_linear_packed(random_int8((3, 8)), torch.ones(2), packed, w_sum, w_scale)
    with pytest.raises(ValueError, match="int8_weight_only_linear_packed: without group_size, w_scale must have "
                                         "shape \\[4\\] \\(per "):
        ops.int8_weight_only_linear_packed(x, packed, w_sum, torch.ones(1))
    with pytest.raises(ValueError, match="int8_weight_only_linear_packed: w_packed must have shape"):
        ops.int8_weight_only_linear_packed(torch.randn(3, 9), packed, w_sum, w_scale)
    group_sums = ops.int8_pack_weight(random_int8((4, 8)), group_size=4)[1]
    with pytest.raises(ValueError, match="w_sum must be 2-D \\[groups, N\\]"):
        ops.int8_weight_only_linear_packed(x, packed, w_sum, torch.ones(4, 2), group_size=4)
    with pytest.raises(ValueError, match="w_sum must have shape \\[1, 4\\] \\(one row of sums per group\\)"):
        ops.int8_weight_only_linear_packed(x, packed, group_sums, torch.ones(4, 1), group_size=8)
    with pytest.raises(ValueError, match="with group_size 4, w_scale must have shape \\[4, 2\\]"):
        ops.int8_weight_only_linear_packed(x, packed, group_sums, w_scale, group_size=4)


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


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", PACKED_MNK)
def test_int8_weight_only_linear_packed_matches_reference(isa, dtype, m, n, k):
    x = random_input((m, k), dtype, scale=1.0)
    wq, w_scale = ops.quantize_per_channel(random_input((n, k), scale=0.05), 0)
    packed, w_sum = ops.int8_pack_weight(wq)
    bias = torch.randn(n)
    out = ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias)
    expected = ref.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias)
    torch.testing.assert_close(out, expected, **w8a16_tolerance(dtype))
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 7, 16, 17, 64])  # fixed point up to 16 rows, then float on some ISAs
# Groups on packed blocks (multiples of 4; K not a multiple of the group), one group for all
# of K, and sizes that are not multiples of 4 (the float kernel takes those).
@pytest.mark.parametrize("group_size,k", [(32, 300), (12, 37), (64, 300), (512, 300), (100, 300), (6, 37)])
def test_int8_weight_only_linear_packed_per_group_matches_reference(isa, dtype, m, group_size, k):
    n = 70
    x = random_input((m, k), dtype, scale=1.0)
    wq, w_scale = ops.quantize_per_group(random_input((n, k), scale=0.05), group_size)
    packed, w_sum = ops.int8_pack_weight(wq, group_size)
    assert w_sum.shape == (-(-k // group_size), n)
    bias = torch.randn(n)
    out = ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias, group_size)
    expected = ref.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias, group_size)
    torch.testing.assert_close(out, expected, **w8a16_tolerance(dtype))
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)  # 2 digits per token (3-token tiles), 3 for fp32 (2-token tiles)
# Token counts around the register tiles, columns around their 64, groups up to 1020 values
# (2 digits combined in float) and beyond (in double).
# With AMX, groups of whole 64-value chunks from 8 digit rows on take the tiles: 4 x 1024
# (beyond 1020: in double), 9 tokens of 128-value groups (2 row tiles, a last group of 1
# chunk and 40 values), 20 tokens in blocks of 16 (2 digits) or 10 (3), a last group of 4.
@pytest.mark.parametrize("m,n,k,group_size", [(1, 70, 300, 32), (7, 129, 1000, 96), (5, 33, 37, 12),
                                              (17, 64, 2048, 1020), (4, 48, 2100, 1024), (16, 200, 1024, 32),
                                              (9, 129, 1000, 128), (20, 70, 4100, 64)])
@pytest.mark.parametrize("weight_at_int8_min", [False, True])
def test_w8a16_per_group_register_tiles_match_the_composition_bit_for_bit(dtype, m, n, k, group_size,
                                                                          weight_at_int8_min):
    # AVX-512 (and AVX2 for 16-bit activations) folds each group's partial products in
    # registers; the scalar ISA stores them and accumulates in a second pass. Both promise the
    # same float operations in the same order. A -128 weight sends AVX2's sign-trick products
    # of its column group to the widening path.
    x = random_input((m, k), dtype, scale=1.0)
    wq, w_scale = ops.quantize_per_group(random_input((n, k), scale=0.05), group_size)
    if weight_at_int8_min:
        wq[n // 2, k // 3] = -128
    packed, w_sum = ops.int8_pack_weight(wq, group_size)
    outs = {}
    for isa in CPU_ISAS:
        with ops.use_cpu_isa(isa):
            outs[isa] = ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, None, group_size)
    for out in outs.values():
        assert_same_bits(out, outs["scalar"])


def w8a16_batch_takes_fixed_point(isa, dtype, m, n, k, grouped):
    """Whether the packed W8A16 op runs a batch (more than 16 rows) in fixed point on this
    ISA: w8a16_fixed_point_pays in csrc/ops/int8_gemm.cpp, rather than torch's GEMM."""
    if isa == "amx":
        return dtype == torch.float32 or (m <= 320 if grouped else m * (k + n) <= 2 * n * k)
    if isa == "avx512":
        return dtype != torch.float32 or not grouped or m * (k + n) <= n * k
    return dtype != torch.float32 or m <= 32


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# Token counts around AVX2's 4-row int16 tiles and across its 48-row blocks (30 fp32 tokens
# are 60 rows, 50 bf16 / fp16 ones 50, with columns enough that the op keeps them in one
# call; shapes every ISA takes in fixed point), K across its 512-value int32 chunks and not a
# multiple of 4, columns not a multiple of 16. 100 x 40 x 300: activations outnumbering the
# weights, which only AMX sends to torch's GEMM (16-bit ones; w8a16_fixed_point_pays).
@pytest.mark.parametrize("m,n,k", [(1, 70, 300), (2, 33, 37), (3, 129, 1030), (5, 16, 4100), (17, 40, 2049),
                                   (30, 40, 1030), (50, 1030, 600), (100, 40, 300)])
@pytest.mark.parametrize("weight_at_int8_min", [False, True])
def test_w8a16_per_channel_int16_rows_match_across_isas_bit_for_bit(dtype, m, n, k, weight_at_int8_min):
    # AVX2 multiplies fixed-point activations as int16 rows (gemm_packed_i16: one per token
    # for 16-bit activations, two of base 2^15 for fp32), the other ISAs as int8 digit rows
    # (2 or 3); both sum the same integers exactly and round once. So does the canonical op
    # on unpacked weights, for 16-bit activations.
    if dtype == torch.float32 and m > 32:
        pytest.skip("without AVX-512, fp32 batches above 32 tokens take the float GEMM")
    x = random_input((m, k), dtype, scale=1.0)
    wq, w_scale = ops.quantize_per_channel(random_input((n, k), scale=0.05), 0)
    if weight_at_int8_min:
        wq[n // 2, k // 3] = -128
    packed, w_sum = ops.int8_pack_weight(wq)
    bias = torch.randn(n)
    outs = {}
    for isa in CPU_ISAS:
        if m > 16 and not w8a16_batch_takes_fixed_point(isa, dtype, m, n, k, grouped=False):
            continue  # this ISA sends the batch to torch's GEMM
        with ops.use_cpu_isa(isa):
            outs[isa] = ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias)
            if dtype != torch.float32 and isa != "amx":
                outs[isa + " canonical"] = ops.int8_weight_only_linear(x, wq, w_scale, bias)
    for out in outs.values():
        assert_same_bits(out, outs["scalar"])


# In fixed point each token's result is its own exact sum rounded once, so a batch's rows
# equal the rows computed one at a time (which always take fixed point). 100 tokens of 300
# values onto 40 outputs outnumber the weights; fixed point takes such batches (see
# w8a16_fixed_point_pays) for 16-bit activations on every ISA but AMX (there only with
# group scales, up to 320 rows: session 66), for fp32 ones with AMX, and with per-channel
# scales on AVX-512 without AMX, where torch's GEMM over dequantized weights took up to 2.5x
# as long (RESULTS.md, session 55; with AMX up to 6x, session 65).
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("group_size", [None, 128])
def test_w8a16_batches_in_fixed_point_equal_their_rows_one_at_a_time(isa, dtype, group_size):
    m, n, k = 100, 40, 300
    if not w8a16_batch_takes_fixed_point(isa, dtype, m, n, k, grouped=group_size is not None):
        pytest.skip("this batch takes torch's GEMM over dequantized weights on this ISA")
    x = random_input((m, k), dtype, scale=1.0)
    w = random_input((n, k), scale=0.05)
    wq, w_scale = ops.quantize_per_channel(w, 0) if group_size is None else ops.quantize_per_group(w, group_size)
    packed, w_sum = ops.int8_pack_weight(wq, group_size)
    bias = torch.randn(n)
    batch = ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias, group_size)
    rows = [ops.int8_weight_only_linear_packed(x[i:i + 1], packed, w_sum, w_scale, bias, group_size) for i in range(m)]
    assert_same_bits(batch, torch.cat(rows))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("group_size", [None, 512, 1020])
def test_w8a16_int16_rows_at_the_largest_products_stay_exact(dtype, group_size):
    # Every activation at its row's absmax (fixed point 32639) against weights of -128: each
    # product is as large as 16-bit fixed point allows, so AVX2's int32 lanes reach their
    # bound at the end of every 512-value chunk (per channel), where they must hand over to
    # int64 sums, and two lanes' sum reaches it at the end of a 512-value group (longer
    # groups take the digit rows).
    k, n = 5000, 20
    x = torch.full((3, k), 1.5, dtype=dtype)
    x[1] *= -1
    wq = torch.full((n, k), -128, dtype=torch.int8)
    w_scale = torch.full((n,) if group_size is None else (n, -(-k // group_size)), 2.0**-10)
    packed, w_sum = ops.int8_pack_weight(wq, group_size)
    outs = {}
    for isa in CPU_ISAS:
        with ops.use_cpu_isa(isa):
            outs[isa] = ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, None, group_size)
    expected = ref.int8_weight_only_linear(x, wq, w_scale, None, group_size)
    torch.testing.assert_close(outs["scalar"], expected, **w8a16_tolerance(dtype))
    for out in outs.values():
        assert_same_bits(out, outs["scalar"])


def test_w8a16_per_group_sums_round_each_product(isa):
    # Two groups whose products cancel exactly (the second group's weights are the first's
    # negated, the activations repeat) must sum to exactly 0: each group's scaled product is
    # rounded to fp32 and then added. A fused multiply-add would leave the rounding error of
    # the first product behind (bf16 keeps fp32's range, so it would show).
    x = random_input((5, 64), torch.bfloat16, scale=1.0).repeat(1, 2)
    w = random_input((40, 64), scale=0.05)
    wq, w_scale = ops.quantize_per_group(torch.cat([w, -w], dim=1), 64)
    out = ops.int8_weight_only_linear_packed(x, *ops.int8_pack_weight(wq, 64), w_scale, None, 64)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("threads", [1, 2])  # the column blocks follow the thread count
# Batches, and decode sizes (at most 16 rows) that take the W8A16 kernel.
@pytest.mark.parametrize("dtype,m", [(torch.float32, 40), (torch.bfloat16, 20), (torch.float16, 20),
                                     (torch.float32, 5), (torch.bfloat16, 9)])
# Long K with groups across vectors and packed blocks, and groups that do not start on
# packed blocks.
@pytest.mark.parametrize("group_size,k", [(None, 2100), (100, 2100), (6, 37)])
def test_w8a16_over_column_blocks_matches_reference(isa, dtype, m, group_size, k, threads):
    # What fixed point does not take (fp32 batches beyond 32 rows without VNNI, packed
    # groups that do not start on packed blocks, any input with a row that is not finite)
    # runs over blocks of columns: batches on torch's GEMM, dequantized; decode sizes on the
    # W8A16 kernel, from packed weights unpacked into cache. n = 1000 makes several blocks
    # and a ragged last one.
    n = 1000
    x = random_input((m, k), dtype, scale=1.0)
    w = random_input((n, k), scale=0.05)
    wq, w_scale = ops.quantize_per_channel(w, 0) if group_size is None else ops.quantize_per_group(w, group_size)
    packed, w_sum = ops.int8_pack_weight(wq, group_size)
    bias = torch.randn(n)
    with torch_threads(threads):
        for bad_row in (None, 3):
            xb = x.clone()
            if bad_row is not None:
                xb[bad_row, 11] = float("nan")
            outs = [ops.int8_weight_only_linear_packed(xb, packed, w_sum, w_scale, bias, group_size),
                    ops.int8_weight_only_linear(xb, wq, w_scale, bias, group_size)]
            for out in outs:
                check_w8a16_batch(out, xb, wq, w_scale, bias, group_size, bad_row)


@pytest.mark.skipif("amx" not in CPU_ISAS, reason="16-bit batches stay 16-bit on torch's GEMM only with AMX")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size,k", [(None, 300), (128, 256)])
def test_w8a16_16bit_batches_on_torch_gemm_equal_f_linear_over_the_dequantized_weights(dtype, group_size, k):
    # With AMX, 16-bit batches beyond w8a16_fixed_point_pays (600 rows onto 1030 outputs)
    # multiply weights dequantized straight into x's dtype (weight_blocks_gemm.h): rounded once
    # from their fp32 values as dequantize rounds them, so the product is F.linear's over
    # dequantize(...).to(dtype) bit for bit (one chunk of columns: one GEMM, as F.linear's).
    m, n = 600, 1030
    assert not w8a16_batch_takes_fixed_point("amx", dtype, m, n, k, grouped=group_size is not None)
    x = random_input((m, k), dtype, scale=1.0)
    w = random_input((n, k), scale=0.05)
    wq, w_scale = ops.quantize_per_channel(w, 0) if group_size is None else ops.quantize_per_group(w, group_size)
    packed, w_sum = ops.int8_pack_weight(wq, group_size)
    bias = torch.randn(n)
    w_rounded = ref.dequantize(wq, w_scale, axis=0 if group_size is None else None, group_size=group_size).to(dtype)
    expected = torch.nn.functional.linear(x, w_rounded, bias.to(dtype))
    with ops.use_cpu_isa("amx"):
        assert_same_bits(ops.int8_weight_only_linear_packed(x, packed, w_sum, w_scale, bias, group_size), expected)
        assert_same_bits(ops.int8_weight_only_linear(x, wq, w_scale, bias, group_size), expected)


def check_w8a16_batch(out, x, wq, w_scale, bias, group_size, bad_row):
    """out against the reference; a row with a NaN (bad_row) must come out all NaN."""
    m, k = x.shape
    dtype = x.dtype
    expected = ref.int8_weight_only_linear(x, wq, w_scale, bias, group_size)
    if bad_row is not None:
        assert torch.isnan(out[bad_row]).all() and torch.isfinite(out[bad_row + 1:]).all()
        out, expected, x = (t[torch.arange(m) != bad_row] for t in (out, expected, x))
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, **w8a16_tolerance(dtype))
    else:
        # 16-bit batches on torch's GEMM multiply weights rounded to x's dtype where the CPU
        # has AMX (unit roundoff u per product; elsewhere they run in fp32), add the bias
        # rounded to x's dtype too (u |bias|: with a large bias and a small output, several
        # of the output's ulps), sum in fp32 and round the output; the reference rounds its
        # output too. At K = 2100 that can exceed the fixed tolerance: the bound of those
        # roundings must hold.
        u = torch.finfo(dtype).eps / 2
        w_float = ref.dequantize(wq, w_scale, axis=0 if group_size is None else None, group_size=group_size)
        magnitude = x.float().abs() @ w_float.abs().T
        bound = (u + k * 2.0**-24) * magnitude + 2 * u * expected.float().abs()
        if bias is not None:
            bound = bound + u * bias.float().abs()
        assert ((out.float() - expected.float()).abs() <= bound).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_w8a16_fixed_point_activations_propagate_nan_and_inf(isa, dtype):
    # bf16 / fp16 rows go through 16-bit fixed point unless a row is not finite: then the
    # float kernel runs, and the bad row comes out NaN / Inf as in the reference.
    x = random_input((3, 64), dtype, scale=1.0)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    wq, w_scale = ops.quantize_per_channel(random_input((10, 64), scale=0.05), 0)
    expected = ref.int8_weight_only_linear(x, wq, w_scale)
    for out in [ops.int8_weight_only_linear(x, wq, w_scale),
                ops.int8_weight_only_linear_packed(x, *ops.int8_pack_weight(wq), w_scale)]:
        assert torch.isnan(out[1]).all() and not torch.isfinite(out[2]).any()
        torch.testing.assert_close(out, expected, **w8a16_tolerance(dtype), equal_nan=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_w8a16_tiny_rows_keep_their_precision(isa, dtype):
    # A row whose absmax is tiny (here ~1e-35) would need a fixed-point step below the
    # normal floats and a reciprocal past the largest one: such rows must still come out
    # right (relative to their own size), next to ordinary rows and zero rows. (fp16 has no
    # such values: its smallest rows are checked the same way; their outputs are fp16
    # subnormals, where a product within rounding of a tie may round either way: one
    # subnormal step, 2^-24, is 2-3% of a 1e-6 row, so that step is allowed on top.)
    tiny = [1e-35, 1e-30] if dtype != torch.float16 else [1e-6, 1e-4]
    x = (random_input((4, 48), scale=1.0) * torch.tensor([1.0, tiny[0], 0.0, tiny[1]])[:, None]).to(dtype)
    wq, w_scale = ops.quantize_per_channel(random_input((24, 48), scale=0.05), 0)
    expected = ref.int8_weight_only_linear(x, wq, w_scale).double()
    size = x.double().abs().amax(1, keepdim=True).clamp_min(1e-300)
    for out in [ops.int8_weight_only_linear(x, wq, w_scale),
                ops.int8_weight_only_linear_packed(x, *ops.int8_pack_weight(wq), w_scale)]:
        assert out[2].eq(0).all()
        tolerance = w8a16_tolerance(dtype)
        output_step = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # the smallest subnormal
        bound = tolerance["atol"] * size + tolerance["rtol"] * expected.abs() + output_step
        assert ((out.double() - expected).abs() <= bound).all(), (out, expected)



@pytest.mark.parametrize("dtype,packed", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, True)])
def test_w8a16_fixed_point_activations_stay_within_their_error_bound(isa, dtype, packed):
    # Activations as fixed point per token (bf16: 2 int8 digits, largest value 32639; fp32
    # on packed weights: 3 digits, 2^22 - 1), step = absmax / largest. Each digit value is
    # x / step rounded to an integer (half a step) after float32 roundings of the reciprocal,
    # the product and the stored scale (2^-24 relative each, of values up to `largest`
    # steps): a dot product is off by at most that times sum |w|. The output's roundings
    # add at most 2^-8 relative in bf16, and in fp32 2^-22 (the digits' combined product,
    # the two scales). Checked against the exact product.
    x = random_input((20 if packed else 5, 1000), dtype, scale=1.0)
    wq, w_scale = ops.quantize_per_channel(random_input((64, 1000), scale=0.05), 0)
    w = wq.double() * w_scale.double()[:, None]
    exact = x.double() @ w.T
    largest, ulp = (2**22 - 1, 2.0**-22) if dtype == torch.float32 else (127 * 256 + 127, 2.0**-8)
    step = x.double().abs().amax(1, keepdim=True) / largest
    activations = step * (0.5 + 3 * largest * 2.0**-24) * w.abs().sum(1)[None, :]
    bound = activations * (1 + ulp) + exact.abs() * ulp
    if packed:
        out = ops.int8_weight_only_linear_packed(x, *ops.int8_pack_weight(wq), w_scale)
    else:
        out = ops.int8_weight_only_linear(x, wq, w_scale)
    assert ((out.double() - exact).abs() <= bound * (1 + 1e-6) + 1e-12).all()


def test_int8_weight_only_linear_3d_input(isa):
    x = random_input((2, 3, 40))
    wq, w_scale = ops.quantize_per_channel(random_input((9, 40)), 0)
    out = ops.int8_weight_only_linear(x, wq, w_scale)
    assert out.shape == (2, 3, 9)
    torch.testing.assert_close(out, ref.int8_weight_only_linear(x, wq, w_scale), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("x_shape,n", [((0, 40), 9), ((2, 0, 40), 9), ((3, 40), 0), ((3, 0), 9), ((2, 3, 0), 9),
                                       ((100, 0), 9), ((0, 0), 0)])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # nn.Linear(0, n)
def test_empty_dimensions_match_reference(isa, x_shape, n):
    # No rows, no output features, or no input features (K = 0: every product is the bias;
    # 100 rows: enough for int8_dynamic_linear's row split, which has nothing to quantize).
    k = x_shape[-1]
    x, bias = torch.randn(x_shape), torch.randn(n)
    wq, w_scale = ops.quantize_per_channel(random_input((n, k)), 0)
    wg, wg_scale = ops.quantize_per_group(random_input((n, k)), 16)
    xq, x_scale = ops.quantize_per_token(x)
    cases = [(ops.int8_linear(xq, x_scale, wq, w_scale, bias), ref.int8_linear(xq, x_scale, wq, w_scale, bias)),
             (ops.int8_linear_packed(xq, x_scale, *ops.int8_pack_weight(wq), w_scale, bias),
              ref.int8_linear(xq, x_scale, wq, w_scale, bias)),
             (ops.int8_dynamic_linear(x, wq, w_scale, bias), ref.int8_dynamic_linear(x, wq, w_scale, bias)),
             (ops.int8_dynamic_linear_packed(x, *ops.int8_pack_weight(wq), w_scale, bias),
              ref.int8_dynamic_linear(x, wq, w_scale, bias))]
    for dtype in FLOAT_DTYPES:
        xd = x.to(dtype)
        for w, s, group in [(wq, w_scale, None), (wg, wg_scale, 16)]:
            expected = ref.int8_weight_only_linear(xd, w, s, bias, group)
            packed = ops.int8_pack_weight(w, group)
            cases += [(ops.int8_weight_only_linear(xd, w, s, bias, group), expected),
                      (ops.int8_weight_only_linear_packed(xd, *packed, s, bias, group), expected)]
    linear = torch.nn.Linear(k, n)
    for layer in [ek.nn.Int8Linear, ek.nn.Int8WeightOnlyLinear]:
        cases.append((layer.from_float(linear)(x), linear(x).detach()))
    assert_products_match(cases, k, atol=0.05)


@pytest.mark.cuda
@pytest.mark.parametrize("x_shape,n", [((0, 40), 9), ((3, 40), 0), ((3, 0), 9), ((2, 3, 0), 9)])
def test_cuda_empty_dimensions_match_reference(x_shape, n):
    k = x_shape[-1]
    x, bias = torch.randn(x_shape), torch.randn(n)
    wq, w_scale = ops.quantize_per_channel(random_input((n, k)), 0)
    xq, x_scale = ops.quantize_per_token(x)
    cases = [(ops.int8_linear(xq.cuda(), x_scale.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda()),
              ref.int8_linear(xq, x_scale, wq, w_scale, bias)),
             (ops.int8_dynamic_linear(x.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda()),
              ref.int8_dynamic_linear(x, wq, w_scale, bias)),
             (ops.int8_weight_only_linear(x.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda()),
              ref.int8_weight_only_linear(x, wq, w_scale, bias))]
    assert_products_match(cases, k, atol=0.05)


@pytest.mark.parametrize("case", range(10))
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
        (e.int8_dynamic_linear_packed.default, (x, *ops.int8_pack_weight(wq), w_scale, torch.randn(6))),
        (e.int8_weight_only_linear_packed.default, (x.bfloat16(), *ops.int8_pack_weight(wq), w_scale, None)),
        (e.int8_linear_packed.default, (xq, x_scale, *ops.int8_pack_weight(wq), w_scale, None, torch.float16)),
        (e.int8_weight_only_linear_packed.default,
         (x.bfloat16(), *ops.int8_pack_weight(wg, 16), wg_scale, torch.randn(6), 16)),
        (e.int8_dynamic_linear.default, (x.bfloat16(), wq, w_scale, None, torch.rand(37) + 0.5)),
        (e.int8_dynamic_linear_packed.default, (x, *ops.int8_pack_weight(wq), w_scale, None, torch.rand(37) + 0.5)),
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
    grouped = {"group_size"} if kwargs else set()
    assert set(q.state_dict()) == {"weight", "weight_scale", "bias"} | grouped
    assert q.state_dict()["weight"].dtype == torch.int8


def test_int8_linear_holds_packed_weights_on_the_cpu_only():
    linear = torch.nn.Linear(40, 21)
    q = ek.nn.Int8Linear.from_float(linear)
    assert q._buffers["weight"] is None and q.weight_packed.shape == (2, 10, 64)
    assert ek.model_bytes(q) == 32 * 40 + 4 * 21 + 4 * 21 + 4 * 21  # packed, sums, scales, bias
    wq, w_scale = ops.quantize_per_channel(linear.weight.detach(), 0)
    assert torch.equal(q.weight, wq)
    x = random_input((3, 40))
    assert_same_bits(q(x), ops.int8_dynamic_linear(x, wq, w_scale, q.bias))
    q.weight = torch.flip(wq, [0])  # assignment re-packs
    assert_same_bits(q(x), ops.int8_dynamic_linear(x, torch.flip(wq, [0]), w_scale, q.bias))
    on_meta = q.to("meta")  # off the CPU: canonical layout, nothing packed
    assert on_meta.weight_packed is None and on_meta._buffers["weight"].shape == (21, 40)
    back = on_meta.to_empty(device="cpu")
    assert back._buffers["weight"] is None and back.weight_packed.shape == (2, 10, 64)
    with pytest.raises(RuntimeError, match="size mismatch for weight: the model takes int8 of shape \\(22, 40\\)"):
        ek.nn.Int8Linear(40, 22).load_state_dict(q.state_dict(), strict=False)
    without_weight = {k: v for k, v in q.state_dict().items() if k != "weight"}
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "weight"'):
        ek.nn.Int8Linear(40, 21).load_state_dict(without_weight)
    missing = ek.nn.Int8Linear(40, 21).load_state_dict(without_weight, strict=False).missing_keys
    assert missing == ["weight"]


def test_weight_only_linear_packs_its_weights_on_the_cpu():
    linear = torch.nn.Linear(40, 21)
    x = random_input((3, 40), torch.bfloat16, scale=1.0)
    for group_size, quantize, sums_shape in [(None, lambda w: ops.quantize_per_channel(w, 0), (21,)),
                                             (16, lambda w: ops.quantize_per_group(w, 16), (3, 21))]:
        layer = ek.nn.Int8WeightOnlyLinear.from_float(linear, group_size=group_size)
        assert layer._buffers["weight"] is None and layer.weight_packed.shape == (2, 10, 64)
        assert layer.weight_sum.shape == sums_shape
        wq, w_scale = quantize(linear.weight.detach())
        assert torch.equal(layer.weight, wq)
        expected = ops.int8_weight_only_linear_packed(x, *ops.int8_pack_weight(wq, group_size), w_scale, layer.bias,
                                                      group_size)
        assert_same_bits(layer(x), expected)


def test_state_dict_saves_with_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    q = ek.nn.Int8Linear.from_float(torch.nn.Linear(48, 20))
    safetensors.save_file(q.state_dict(), tmp_path / "q.safetensors")
    fresh = ek.nn.Int8Linear(48, 20)
    fresh.load_state_dict(safetensors.load_file(tmp_path / "q.safetensors"))
    x = random_input((3, 48))
    assert_same_bits(fresh(x), q(x))


def quantized_layer_bytes(layer, config) -> int:
    """int8 weights (on the CPU packed, N padded to 16 and K to 4, plus an int32 sum per
    channel and group), fp32 scales and the float bias."""
    n, k = layer.out_features, layer.in_features
    group_size = getattr(config, "group_size", None)
    groups = 1 if group_size is None else -(-k // group_size)
    weights = -(-n // 16) * 16 * -(-k // 4) * 4 + 4 * n * groups
    bias = 0 if layer.bias is None else layer.bias.numel() * layer.bias.element_size()
    return weights + 4 * layer.weight_scale.numel() + bias


@pytest.mark.parametrize("config", [ek.Int8Config(), ek.Int8WeightOnlyConfig(), ek.Int8WeightOnlyConfig(group_size=32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_converts_every_linear_and_compiles_without_breaks(config, dtype):
    model = mlp(dtype)
    x = random_input((4, 64), dtype, scale=1.0)
    expected = model(x)
    summary = ek.quantize_(model, config)
    assert summary.converted == ["0", "2", "4"] and not summary.skipped
    assert summary.bytes_after == sum(quantized_layer_bytes(m, config) for m in model.modules()
                                      if isinstance(m, (ek.nn.Int8Linear, ek.nn.Int8WeightOnlyLinear)))
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    out = model(x)
    assert out.dtype == dtype
    rel = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
    assert rel < 0.05, rel
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_same_bits(compiled(x), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_smoothquant_model_compiles_without_breaks(dtype):
    model = mlp(dtype)
    x = random_input((4, 64), dtype, scale=1.0)
    ek.quantize_(model, ek.Int8Config(activation_absmax=ek.calibrate_activations(model, [x])))
    assert all(model[i].input_smoothing is not None for i in (0, 2, 4))
    out = model(x)
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
@pytest.mark.parametrize("kernel", ["general_tile", "mma_tile", "wgmma_tile", "gemv_tile"])
def test_cuda_gemm_tile_index_math_on_the_host(kernel, tmp_path):
    # One block of each CUDA tensor-core GEMM (one warp step of the few-row kernels: W8A8
    # and the 16-bit skeleton of W8A16 and bits) emulated on the CPU with the kernel's own
    # index functions and the PTX fragment / descriptor rules: a @ b^T, every output once.
    run_cuda_host_check(kernel, tmp_path)


def test_cuda_skinny_walk_on_the_host(tmp_path):
    # The few-row 16-bit kernels' order of work (W8A16, binary, ternary): grids capped by
    # EFFGEN_CUDA_SKINNY_BLOCKS and the rolling register slots over a block's tiles, emulated
    # warp by warp on the CPU (tests/cuda_host/skinny_walk.cu): every K step once, from the
    # slot it was loaded into, and the block's barriers reached by all warps together.
    run_cuda_host_check("skinny_walk", tmp_path)


def test_cuda_w8a16_bf16_decode_on_the_host(tmp_path):
    # The W8A16 GEMV's int8 -> bf16 pair (two bf16 parts, one exact fma) for every pair of
    # byte values, run on the CPU (tests/cuda_host/int8_pairs.cu).
    run_cuda_host_check("int8_pairs", tmp_path)


@pytest.fixture(params=["auto", "mma", "wgmma"])
def cuda_gemm(request, monkeypatch):
    """Runs the test once per CUDA int8 GEMM (EFFGEN_CUDA_INT8_GEMM) this GPU runs: auto
    (our wgmma kernel where it pays, else cuBLAS's sums through our epilogue where
    torch._int_mm takes the shape), then ours."""
    monkeypatch.delenv("EFFGEN_CUDA_INT8_GEMM", raising=False)
    if request.param == "wgmma" and "wgmma" not in cuda_int8_kernels(build_info()):
        pytest.skip("wgmma needs a compute capability 9.0 GPU and a build for sm_90a")
    monkeypatch.setenv("EFFGEN_CUDA_INT8_GEMM", request.param)
    return request.param


# Each CUDA int8 kernel: the few-row GEMV (m <= 16) in 16-byte pieces (k % 16 == 0) or
# bytes, the pipelined GEMMs (k % 16 == 0: partial row, column and K tiles) or the general one,
# and cuBLAS's sums through our epilogue (m > 16, n and k multiples of 8, under auto), except
# where the wgmma kernel's 128x256 tiles cover most of the SMs: auto takes it for 520x8200
# (165 tiles on an H200's 132 SMs, ragged in both).
CUDA_MNK = MNK + [(16, 70, 4096), (2, 33, 48), (9, 40, 1024), (300, 520, 4096), (129, 257, 1040), (17, 8, 16),
                  (200, 130, 64), (33, 24, 40), (257, 136, 264), (520, 8200, 48)]


@pytest.mark.cuda
@pytest.mark.parametrize("m,n,k", CUDA_MNK)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_int8_linear_and_dynamic_are_bit_exact(cuda_gemm, m, n, k, dtype):
    xq, wq = random_int8((m, k)), random_int8((n, k))
    x_scale, w_scale, bias = torch.rand(m) + 0.01, torch.rand(n) + 0.01, torch.randn(n)
    out = ops.int8_linear(xq.cuda(), x_scale.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda(), dtype)
    assert_same_bits(out.cpu(), ref.int8_linear(xq, x_scale, wq, w_scale, bias, dtype))
    x = random_input((m, k), dtype)
    out = ops.int8_dynamic_linear(x.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda())
    assert_same_bits(out.cpu(), ref.int8_dynamic_linear(x, wq, w_scale, bias))
    smoothing = torch.rand(k) * 4 + 0.05
    out = ops.int8_dynamic_linear(x.cuda(), wq.cuda(), w_scale.cuda(), bias.cuda(), smoothing.cuda())
    assert_same_bits(out.cpu(), ref.int8_dynamic_linear(x, wq, w_scale, bias, smoothing))


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [1, 4, 16])
@pytest.mark.parametrize("m", [5, 33])
def test_cuda_int8_linear_on_unaligned_storage(cuda_gemm, offset, m):
    # Contiguous tensors that start `offset` bytes into their storage: the GEMV and the GEMMs
    # load 16-byte pieces only from 16-byte aligned rows, bytes otherwise; cuBLAS (auto, m > 16)
    # gets aligned operands only.
    n, k = 72, 256

    def at_offset(t):
        flat = torch.empty(t.numel() + offset, dtype=torch.int8, device="cuda")
        view = flat[offset:].view(t.shape)
        view.copy_(t)
        return view

    xq, wq = random_int8((m, k)), random_int8((n, k))
    x_scale, w_scale = torch.rand(m) + 0.01, torch.rand(n) + 0.01
    out = ops.int8_linear(at_offset(xq.cuda()), x_scale.cuda(), at_offset(wq.cuda()), w_scale.cuda(), None,
                          torch.float32)
    assert_same_bits(out.cpu(), ref.int8_linear(xq, x_scale, wq, w_scale, None, torch.float32))


@pytest.mark.cuda
def test_cuda_int8_gemm_choice_is_checked(monkeypatch):
    xq, wq = random_int8((32, 64)).cuda(), random_int8((8, 64)).cuda()
    x_scale, w_scale = torch.rand(32).cuda(), torch.rand(8).cuda()
    monkeypatch.setenv("EFFGEN_CUDA_INT8_GEMM", "fastest")
    with pytest.raises(ValueError, match="EFFGEN_CUDA_INT8_GEMM must be auto, mma or wgmma, got 'fastest'"):
        ops.int8_linear(xq, x_scale, wq, w_scale, None, torch.float32)


@pytest.mark.cuda
def test_cuda_skinny_choices_are_checked(monkeypatch):
    x, wq, w_scale = random_input((1, 64), torch.bfloat16).cuda(), random_int8((8, 64)).cuda(), torch.rand(8).cuda()
    monkeypatch.setenv("EFFGEN_CUDA_SKINNY_X", "registers")
    with pytest.raises(ValueError, match="EFFGEN_CUDA_SKINNY_X must be global or shared, got 'registers'"):
        ops.int8_weight_only_linear(x, wq, w_scale, None, None)
    monkeypatch.delenv("EFFGEN_CUDA_SKINNY_X")
    for blocks in ["0", "-1", "many", "4x", str(1 << 31)]:
        monkeypatch.setenv("EFFGEN_CUDA_SKINNY_BLOCKS", blocks)
        with pytest.raises(ValueError, match=f"EFFGEN_CUDA_SKINNY_BLOCKS must be tile, resident or a positive "
                                             f"block count, got '{blocks}'"):
            ops.int8_weight_only_linear(x, wq, w_scale, None, None)


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 9])  # one and two channel tiles a block
def test_cuda_skinny_grids_give_the_same_bits(monkeypatch, m):
    # Blocks that take several tiles in turn (EFFGEN_CUDA_SKINNY_BLOCKS) sum each output in
    # the same order as a block per tile: the same bits, here with 16400 channels (1025 tiles
    # of 16 at one row, 513 of 32 at 9), more than the SMs hold at once.
    n, k = 16400, 1024
    x = random_input((m, k), torch.bfloat16, scale=1.0).cuda()
    w = random_input((n, k), scale=0.05).cuda()
    wq, w_scale = ops.quantize_per_channel(w, 0)
    packed, alpha = ops.binarize_weight(w)
    tpacked, scale = ops.ternarize_weight(w, True)
    bias = torch.randn(n, device="cuda")

    def products():
        return [ops.int8_weight_only_linear(x, wq, w_scale, bias, None), ops.binary_linear(x, packed, alpha, bias),
                ops.ternary_linear(x, tpacked, scale, bias)]

    monkeypatch.setenv("EFFGEN_CUDA_SKINNY_BLOCKS", "tile")
    expected = products()
    for blocks in ["resident", "7", "1"]:
        monkeypatch.setenv("EFFGEN_CUDA_SKINNY_BLOCKS", blocks)
        for got, want in zip(products(), expected, strict=True):
            assert_same_bits(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 9, 16, 17, 200])  # each register-row count of the GEMVs, then cuBLAS
@pytest.mark.parametrize("group_size", [None, 128, 100])
@pytest.mark.parametrize("k", [1000, 1024])  # 16-byte pieces when k and the group are multiples of 16
def test_cuda_int8_weight_only_linear(skinny, dtype, m, group_size, k):
    n = 523  # a partial 16-channel block for the tensor-core GEMV
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
    on_cpu = ek.nn.Int8Linear.from_float(torch.nn.Linear(64, 24))  # packed on the CPU
    moved = copy.deepcopy(on_cpu).cuda()
    assert moved.weight_packed is None and torch.equal(moved.weight.cpu(), on_cpu.weight)
    assert_same_bits(moved(x).cpu(), on_cpu(x.cpu()))
    assert moved.cpu().weight_packed is not None


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
    x16 = x.bfloat16()  # the op multiplies by the smoothing in fp32, not in x's dtype
    assert_same_bits(smooth.bfloat16()(x16), ref.int8_dynamic_linear(x16, smooth.weight, smooth.weight_scale,
                                                                      smooth.bias, smooth.input_smoothing))


def test_calibration_of_other_layer_names_is_refused():
    model = mlp()
    absmax = ek.calibrate_activations(torch.nn.Sequential(model), [random_input((4, 64))])  # names "0.0", ...
    with pytest.raises(ValueError, match="activation_absmax names none of the layers to convert \\(it holds "
                                         "'0.0', the model '0'\\)"):
        ek.quantize_(model, ek.Int8Config(activation_absmax=absmax))
    assert type(model[0]) is torch.nn.Linear  # nothing converted
    summary = ek.quantize_(model, ek.Int8Config(activation_absmax={"2": absmax["0.2"]}))  # some layers: fine
    assert summary.converted == ["0", "2", "4"] and model[2].input_smoothing is not None


def test_smoothing_rejects_bad_arguments():
    linear = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match="alpha must lie in \\[0, 1\\]"):
        ek.nn.Int8Linear.from_float(linear, activation_absmax=torch.ones(8), alpha=1.5)
    for alpha in (-0.1, 2.0, float("nan")):  # said by the config, before any layer is converted
        with pytest.raises(ValueError, match=f"alpha must lie in \\[0, 1\\], got {alpha}"):
            ek.Int8Config(smoothing_alpha=alpha)
    with pytest.raises(ValueError, match="activation_absmax must have shape \\[8\\]"):
        ek.nn.Int8Linear.from_float(linear, activation_absmax=torch.ones(7))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="activation_absmax holds NaN or Inf"):
            ek.nn.Int8Linear.from_float(linear, activation_absmax=torch.tensor([1.0] * 7 + [bad]))
