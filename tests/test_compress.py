"""The compress family's codecs against reference.py (exact), opcheck and bad inputs."""

import pytest
import torch
from conftest import FLOAT_DTYPES, load_script, random_input, run_cuda_host_check
from test_quant import assert_same_bits
from torch.library import opcheck

from effgen_kernels import reference as ref

e = torch.ops.effgen


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n,block", [(1, 4), (1000, 256), (4099, 256), (70001, 64), (1003, 7), (517, 100),
                                     (300007, 7), (200003, 100)])  # several threads' tasks, shared bytes
def test_codecs_match_reference_exactly(isa, dtype, n, block):
    x = random_input((n,), dtype)
    for op, reference in [(e.ef_compress_int8, ref.ef_compress_int8), (e.ef_compress_sign, ref.ef_compress_sign)]:
        error = random_input((n,), scale=0.01)
        expected_error = error.clone()
        payload, scales = op(x, error, block)
        expected_payload, expected_scales = reference(x, expected_error, block)
        assert_same_bits(payload, expected_payload)
        assert_same_bits(scales, expected_scales)
        assert_same_bits(error, expected_error)


@pytest.mark.parametrize("n,block", [(1, 4), (4099, 256), (70001, 64), (1003, 7), (517, 100)])
def test_decompress_sums_match_reference_exactly(isa, n, block):
    rows, blocks = 3, -(-n // block)
    q = torch.randint(-127, 128, (rows, n), dtype=torch.int8)
    packed = torch.randint(0, 256, (rows, (n + 7) // 8), dtype=torch.uint8)
    scales, levels = torch.rand(rows, blocks), torch.randn(rows, 2 * blocks)
    assert_same_bits(e.decompress_sum_int8(q, scales, block), ref.decompress_sum_int8(q, scales, block))
    assert_same_bits(e.decompress_sum_sign(packed, levels, n, block), ref.decompress_sum_sign(packed, levels, n, block))


def test_sign_levels_keep_a_blocks_mean_and_spread():
    # A block whose values share one sign (a ReLU layer's gradient rows) decodes to two
    # levels about its mean, not to one constant; bit i says v >= the mean.
    v = torch.tensor([1.0, 3.0, 2.0, 6.0, -4.0, -2.0, -4.0, -2.0])
    error = torch.zeros(8)
    packed, levels = e.ef_compress_sign(v, error, 4)
    # block 0: mean 3, |d| = 2, 0, 1, 3 -> rms sqrt(3.5), capped at 1.5 * 1.5 = 2.25
    torch.testing.assert_close(levels, torch.tensor([3 - 3.5**0.5, 3 + 3.5**0.5, -4.0, -2.0]))
    assert ref.unpack_binary(packed.reshape(1, -1), 8).reshape(-1).tolist() == [-1, 1, -1, 1, -1, 1, -1, 1]
    assert_same_bits(error, v - ref.decompress_sign(packed, levels, 8, 4))
    assert not error[4:].any()  # two values a block: exact


SENTINEL = 0x5A  # every byte of a message buffer before an op writes into its views


def message_views(rows: int, payload_width: int, payload_dtype: torch.dtype, words: int, device: str = "cpu"):
    """A payload and its blocks' words (int8 scales, sign levels) as strided rows of one
    buffer, as the DDP hook lays out its messages (payload padded to fp32 words, then
    scales), with a spare word after each part so that no row is contiguous with the next;
    every byte starts as SENTINEL."""
    payload_words = -(-payload_width // 4) + 1
    buffer = torch.empty(rows, payload_words + words + 1, device=device)
    buffer.view(torch.uint8).fill_(SENTINEL)
    payload = buffer[:, :payload_words].view(torch.uint8)[:, :payload_width].view(payload_dtype)
    return buffer, payload, buffer[:, payload_words:payload_words + words]


def assert_only_views_written(buffer: torch.Tensor, *views: torch.Tensor) -> None:
    for view in views:
        view.view(torch.uint8).fill_(SENTINEL)
    assert (buffer.view(torch.uint8) == SENTINEL).all(), "an op wrote outside its output views"


# (reference, _out op, values a payload element, payload dtype, fp32 words a block)
ENCODERS = [(ref.ef_compress_int8, e.ef_compress_int8_out, 1, torch.int8, 1),
            (ref.ef_compress_sign, e.ef_compress_sign_out, 8, torch.uint8, 2)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# One row with a short last block; several rows of whole blocks (block % 8 != 0 too).
@pytest.mark.parametrize("rows,cols,block", [(1, 1003, 7), (1, 4099, 256), (3, 1024, 64), (2, 70016, 64),
                                             (4, 1200, 12), (2, 0, 16)])
@pytest.mark.parametrize("estimate", [False, True])
def test_out_encoders_write_the_reference_results_into_strided_rows(isa, dtype, rows, cols, block, estimate):
    # estimate (EF21: error holds minus the worker's estimate): the error becomes the
    # reference's residual minus x, rounded in that order, also in a block that held Inf
    # (0 - x there).
    x = random_input((rows * cols,), dtype)
    if estimate and cols:
        x[cols // 2] = float("inf")
    start_error = random_input((rows * cols,), scale=0.01)
    for reference, op_out, per_element, payload_dtype, per_block in ENCODERS:
        expected_error, error = start_error.clone(), start_error.clone()
        expected_payload, expected_scales = reference(x, expected_error, block, estimate)
        buffer, payload, scales = message_views(rows, -(-cols // per_element), payload_dtype,
                                                -(-cols // block) * per_block)
        op_out(x, error, block, payload, scales, estimate)
        assert_same_bits(payload, expected_payload.view(rows, -1))
        assert_same_bits(scales, expected_scales.view(rows, -1))
        assert_same_bits(error, expected_error)
        assert_only_views_written(buffer, payload, scales)


@pytest.mark.parametrize("n,block", [(1, 4), (4099, 256), (70001, 64), (1003, 7), (517, 100)])
def test_decoders_read_strided_rows_in_place(isa, n, block):
    rows, blocks = 3, -(-n // block)
    _, q, q_scales = message_views(rows, n, torch.int8, blocks)
    q.copy_(torch.randint(-127, 128, (rows, n), dtype=torch.int8))
    _, packed, levels = message_views(rows, (n + 7) // 8, torch.uint8, 2 * blocks)
    packed.copy_(torch.randint(0, 256, (rows, (n + 7) // 8), dtype=torch.uint8))
    q_scales.copy_(torch.rand(rows, blocks))
    levels.copy_(torch.randn(rows, 2 * blocks))
    expected_int8 = ref.decompress_sum_int8(q.contiguous(), q_scales.contiguous(), block)
    expected_sign = ref.decompress_sum_sign(packed.contiguous(), levels.contiguous(), n, block)
    assert_same_bits(e.decompress_sum_int8(q, q_scales, block), expected_int8)
    assert_same_bits(e.decompress_sum_sign(packed, levels, n, block), expected_sign)
    for total, expected, decode in [
        (torch.full((n,), float("nan")), expected_int8, lambda t: e.decompress_sum_int8_out(q, q_scales, block, t)),
        (torch.full((n,), float("nan")), expected_sign,
         lambda t: e.decompress_sum_sign_out(packed, levels, n, block, t)),
    ]:
        decode(total)
        assert_same_bits(total, expected)
    # accumulate: the rows' sum (from 0, in row order) added to what total held (EF21's G).
    start = torch.randn(n)
    for expected, decode in [(expected_int8, lambda t: e.decompress_sum_int8_out(q, q_scales, block, t, True)),
                             (expected_sign, lambda t: e.decompress_sum_sign_out(packed, levels, n, block, t, True))]:
        total = start.clone()
        decode(total)
        assert_same_bits(total, start + expected)


def test_error_feedback_keeps_the_running_sum():
    # Compressing x + error and carrying the loss means the decompressed outputs sum to the
    # inputs' sum up to one step's residual, however many steps run.
    torch.manual_seed(0)
    for codec, block in [("int8", 64), ("sign", 64)]:
        error = torch.zeros(4096)
        true_sum, sent_sum = torch.zeros(4096), torch.zeros(4096)
        for _ in range(50):
            x = torch.randn(4096)
            if codec == "int8":
                q, s = e.ef_compress_int8(x, error, block)
                sent = e.decompress_sum_int8(q.reshape(1, -1), s.reshape(1, -1), block)
            else:
                p, s = e.ef_compress_sign(x, error, block)
                sent = e.decompress_sum_sign(p.reshape(1, -1), s.reshape(1, -1), 4096, block)
            true_sum += x
            sent_sum += sent
        torch.testing.assert_close(sent_sum + error, true_sum, rtol=0, atol=1e-3)
        assert error.abs().max() < 10.0  # bounded residual


@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_non_finite_blocks_give_nan_scales_and_clear_the_error(isa, codec):
    op, reference = getattr(e, f"ef_compress_{codec}"), getattr(ref, f"ef_compress_{codec}")
    x = torch.randn(600)
    x[100] = float("inf")
    x[550] = float("nan")
    error = torch.full((600,), 0.5)
    expected_error = error.clone()
    payload, scales = op(x, error, 256)
    expected_payload, expected_scales = reference(x, expected_error, 256)
    per_block = scales.reshape(3, -1)  # int8: a scale, sign: two levels
    assert per_block[0].isnan().all() and per_block[1].isfinite().all() and per_block[2].isnan().all()
    assert not error[:256].any() and not error[512:].any()
    codes = payload if codec == "int8" else ref.unpack_binary(payload.reshape(1, -1), 600).reshape(-1)
    assert (codes[:256] == (0 if codec == "int8" else -1)).all()
    assert_same_bits(payload, expected_payload)
    assert_same_bits(scales, expected_scales)
    assert_same_bits(error, expected_error)


@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_a_non_finite_step_does_not_stay_in_the_residual(isa, codec):
    # One overflowing step (what a GradScaler skips under fp16 AMP) must leave the next
    # steps finite; the sign codec's residual used to keep the NaN for good.
    op = getattr(e, f"ef_compress_{codec}")
    error = torch.zeros(1024)
    x = torch.randn(1024)
    x[7] = float("inf")
    assert torch.isnan(op(x, error, 256)[1][0])
    for _ in range(3):
        _, scales = op(torch.randn(1024), error, 256)
        assert torch.isfinite(scales).all() and torch.isfinite(error).all()


def test_blocks_too_small_for_a_reciprocal_send_zeros_and_keep_their_values(isa):
    # A block's absmax below 127 * 2^-128 makes 1/scale overflow (reference.symmetric_int8):
    # it sends zeros and the error keeps all of v, zeros included (they were NaN codes).
    v = torch.randn(3 * 64, generator=torch.Generator().manual_seed(0))
    v[:64] *= 127 * 2.0**-127 / v[:64].abs().max()  # just above the bound: quantized as usual
    v[64:128] *= 127 * 2.0**-129 / v[64:128].abs().max()
    v[128::3] = 0.0
    v[128:] *= 2.0**-135
    for x, error in [(v, torch.zeros_like(v)), (torch.zeros_like(v), v.clone())]:
        expected_error = error.clone()
        q, scales = e.ef_compress_int8(x, error, 64)
        expected_q, expected_scales = ref.ef_compress_int8(x, expected_error, 64)
        assert_same_bits(q, expected_q)
        assert_same_bits(scales, expected_scales)
        assert_same_bits(error, expected_error)
        assert q[:64].abs().max() == 127 and not q[64:].any()
        assert_same_bits(error[64:], v[64:])


@pytest.mark.parametrize("case", range(12))
def test_opcheck(case):
    x, error = random_input((1024,)), random_input((1024,), scale=0.01)
    scales, levels = torch.rand(2, 8), torch.randn(2, 16)
    q = torch.randint(-127, 128, (2, 1024), dtype=torch.int8)
    packed = torch.randint(0, 256, (2, 128), dtype=torch.uint8)
    cases = [
        (e.ef_compress_int8.default, (x, error.clone(), 128)),
        (e.ef_compress_sign.default, (x, error.clone(), 128)),
        (e.decompress_sum_int8.default, (q, scales, 128)),
        (e.decompress_sum_sign.default, (packed, levels, 1024, 128)),
        (e.ef_compress_int8_out.default, (x, error.clone(), 128, torch.empty(2, 512, dtype=torch.int8),
                                          torch.empty(2, 4))),
        (e.ef_compress_sign_out.default, (x, error.clone(), 128, torch.empty(2, 64, dtype=torch.uint8),
                                          torch.empty(2, 8))),
        (e.decompress_sum_int8_out.default, (q, scales, 128, torch.empty(1024))),
        (e.decompress_sum_sign_out.default, (packed, levels, 1024, 128, torch.empty(1024))),
        (e.ef_compress_int8_out.default, (x, error.clone(), 128, torch.empty(2, 512, dtype=torch.int8),
                                          torch.empty(2, 4), True)),
        (e.ef_compress_sign_out.default, (x, error.clone(), 128, torch.empty(2, 64, dtype=torch.uint8),
                                          torch.empty(2, 8), True)),
        (e.decompress_sum_int8_out.default, (q, scales, 128, torch.randn(1024), True)),
        (e.decompress_sum_sign_out.default, (packed, levels, 1024, 128, torch.randn(1024), True)),
    ]
    opcheck(*cases[case])


def test_bad_inputs_name_the_argument():
    x = torch.randn(100)
    with pytest.raises(ValueError, match="ef_compress_int8: error must be a contiguous float32 tensor shaped like x"):
        e.ef_compress_int8(x, torch.zeros(99), 16)
    with pytest.raises(TypeError, match="ef_compress_sign: error must be float32"):
        e.ef_compress_sign(x, torch.zeros(100, dtype=torch.float64), 16)
    with pytest.raises(ValueError, match="block_size must be positive"):
        e.ef_compress_int8(x, torch.zeros(100), 0)
    with pytest.raises(ValueError, match="x must be 1-D"):
        e.ef_compress_int8(x.reshape(10, 10), torch.zeros(10, 10), 16)
    with pytest.raises(ValueError, match="scales must be \\[2, 7\\]"):
        e.decompress_sum_int8(torch.zeros(2, 100, dtype=torch.int8), torch.ones(2, 6), 16)


def test_bad_outputs_name_the_argument():
    x, error = torch.randn(96), torch.zeros(96)
    q, scales = torch.empty(2, 48, dtype=torch.int8), torch.empty(2, 3)
    with pytest.raises(TypeError, match="ef_compress_int8_out: q must be int8, got Float"):
        e.ef_compress_int8_out(x, error, 16, q.float(), scales)
    with pytest.raises(TypeError, match="ef_compress_sign_out: packed must be uint8"):
        e.ef_compress_sign_out(x, error, 16, q, scales)
    with pytest.raises(ValueError, match="q must be \\[rows, ...\\] with rows dividing x's 96 values"):
        e.ef_compress_int8_out(x, error, 16, torch.empty(5, 20, dtype=torch.int8), scales)
    with pytest.raises(ValueError, match="2 rows of 48 values must each hold whole blocks of block_size 32"):
        e.ef_compress_int8_out(x, error, 32, q, torch.empty(2, 2))
    with pytest.raises(ValueError, match="whole blocks of block_size 3 and whole bytes of bits"):
        e.ef_compress_sign_out(torch.randn(12), torch.zeros(12), 3, torch.empty(2, 1, dtype=torch.uint8),
                               torch.empty(2, 2))
    with pytest.raises(ValueError, match="q must be \\[2, 48\\] with rows of unit stride"):
        e.ef_compress_int8_out(x, error, 16, torch.empty(48, 2, dtype=torch.int8).t(), scales)
    with pytest.raises(ValueError, match="scales must be \\[2, 3\\] with rows of unit stride"):
        e.ef_compress_int8_out(x, error, 16, q, torch.empty(2, 4))
    q_rows, row_scales = torch.zeros(2, 96, dtype=torch.int8), torch.ones(2, 6)
    with pytest.raises(TypeError, match="decompress_sum_int8_out: total must be float32"):
        e.decompress_sum_int8_out(q_rows, row_scales, 16, torch.empty(96, dtype=torch.float64))
    packed_rows, row_levels = torch.zeros(2, 12, dtype=torch.uint8), torch.ones(2, 12)
    with pytest.raises(ValueError, match="decompress_sum_sign_out: total must be a contiguous \\[96\\]"):
        e.decompress_sum_sign_out(packed_rows, row_levels, 96, 16, torch.empty(192)[::2])
    with pytest.raises(ValueError, match="decompress_sum_sign: levels must be \\[2, 12\\], got \\[2, 6\\]"):
        e.decompress_sum_sign(packed_rows, row_scales, 96, 16)  # one word a block: int8's scales
    with pytest.raises(ValueError, match="ef_compress_sign_out: levels must be \\[2, 6\\] with rows of unit stride"):
        e.ef_compress_sign_out(x, error, 16, torch.empty(2, 6, dtype=torch.uint8), scales)


def test_state_dict_restores_residuals_and_keeps_the_callers_group():
    from effgen_kernels.distributed import CompressionState

    dp_group = object()  # stands for a data-parallel sub-group of a 2-D mesh
    saved = CompressionState(process_group=dp_group, codec="sign", block_size=64)
    saved.step, saved.worker_errors[0] = 7, torch.randn(128)
    restored = CompressionState(process_group=dp_group, codec="sign", block_size=64)
    restored.load_state_dict(saved.state_dict())
    assert restored.process_group is dp_group and restored.step == 7
    assert torch.equal(restored.worker_errors[0], saved.worker_errors[0])
    with pytest.raises(ValueError, match="codec='sign', block_size=64"):
        CompressionState(process_group=dp_group, codec="int8").load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match="feedback='classic'; this state has .* feedback='ef21'"):
        CompressionState(process_group=dp_group, codec="sign", block_size=64,
                         feedback="ef21").load_state_dict(saved.state_dict())
    for bad, message in [({"codec": "fp8"}, "codec must be one of"), ({"block_size": 0}, "block_size must be positive"),
                         ({"part_numel": 0}, "part_numel must be positive"),
                         ({"warmup_steps": -1}, "warmup_steps and min_compress_numel must be >= 0, got -1 and 128"),
                         ({"min_compress_numel": -5}, "must be >= 0, got 2 and -5"),
                         ({"feedback": "ef14"}, "feedback must be one of"),
                         ({"feedback": "ef21", "error_feedback": False}, "needs error_feedback=True")]:
        with pytest.raises(ValueError, match=message):
            CompressionState(process_group=dp_group, **bad)


@pytest.mark.parametrize("feedback", ["classic", "ef21"])
def test_residuals_move_with_their_parameters_when_buckets_change(feedback):
    from effgen_kernels.distributed.compression import _SAVED_BUFFERS, CompressionState, _Layout

    def buffers(state, index):
        return [getattr(state, name).get(index) for name in _SAVED_BUFFERS]

    state = CompressionState(process_group=object(), block_size=64, feedback=feedback)
    before = _Layout(((0, 0, 600), (1, 600, 10)), 2, 64)  # parameters 0 and 1 in one bucket
    state._regroup(0, before, "cpu")
    for buffer in buffers(state, 0):
        if buffer is not None:
            buffer.normal_()
    assert (buffers(state, 0)[2] is not None) == (feedback == "ef21")  # EF21's shared estimates
    pieces = before.split(*buffers(state, 0))
    saved = state.state_dict()

    restored = CompressionState(process_group=object(), block_size=64, feedback=feedback)
    restored.load_state_dict(saved)
    # A restarted DDP: parameter 1 now travels alone in bucket 0, parameter 0 in bucket 1,
    # each at another offset; a new parameter 2 has no residual yet.
    after = [_Layout(((1, 0, 10),), 2, 64), _Layout(((2, 0, 100), (0, 100, 600)), 2, 64)]
    for index, layout in enumerate(after):
        restored._regroup(index, layout, "cpu")
    moved = {**after[0].split(*buffers(restored, 0)), **after[1].split(*buffers(restored, 1))}
    for key in (0, 1):
        for mine, original in zip(moved[key], pieces[key], strict=True):
            assert (mine is None and original is None) or torch.equal(mine, original)
    assert not moved[2][0].any() and restored.residuals_dropped == 1
    # A parameter that no bucket claims in a step (frozen since, say) loses its residual, counted.
    partial = CompressionState(process_group=object(), block_size=64, feedback=feedback)
    partial.load_state_dict(saved)
    partial._regroup(0, after[0], "cpu")  # parameter 1 only
    assert partial.residuals_dropped == 0
    partial._end_step()
    assert partial.residuals_dropped == 1 and partial.step == saved["step"] + 1


# ---------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# 16-byte pieces where block % 4 (int8) or % 8 (sign) == 0, with and without a short last
# block; single values otherwise.
@pytest.mark.parametrize("n,block", [(1, 4), (4099, 256), (70001, 64), (1003, 7), (4096, 256), (1000, 12)])
@pytest.mark.parametrize("special", [False, True])
def test_cuda_codecs_match_the_cpu_kernels(dtype, n, block, special):
    x = random_input((n,), dtype)
    start_error = random_input((n,), scale=0.01)
    if special:  # blocks holding Inf / NaN, a -0, a last block too small for 1/scale
        x[0], x[n // 2], x[n - 1] = float("inf"), float("nan"), -0.0
        tail = slice(max(1, n - block), n)
        x[tail] = (x[tail].float() * 2.0**-135).to(dtype)
        start_error[tail] = 0.0
    for op in (e.ef_compress_int8, e.ef_compress_sign):
        error = start_error.clone()
        error_gpu = error.cuda()
        payload, scales = op(x, error, block)
        payload_gpu, scales_gpu = op(x.cuda(), error_gpu, block)
        assert_same_bits(payload_gpu.cpu(), payload)
        assert_same_bits(scales_gpu.cpu(), scales)  # sign: exact double sums, any order
        assert_same_bits(error_gpu.cpu(), error)


def test_cuda_decoders_on_the_host(tmp_path):
    # Every thread's work of the CUDA decoders (decompress_sum_int8 / _sign), vector and
    # value-by-value paths, run on the CPU against the plain sums (tests/cuda_host/decoders.cu).
    run_cuda_host_check("decoders", tmp_path)


def test_cuda_sign_encoders_on_the_host(tmp_path):
    # Every lane's work of the fused CUDA sign encoder with the warp's sums emulated, and
    # every byte of the packer for other block sizes, against the codec written out plainly:
    # levels, bits and residuals bit for bit (tests/cuda_host/sign_encoder.cu).
    run_cuda_host_check("sign_encoder", tmp_path)


@pytest.mark.cuda
# The decoders' vector paths: 16 int8 codes (n, block % 16 == 0) or a 32-bit word of signs
# (% 32) per thread; value by value otherwise (4112 is a multiple of 16, not of 32).
@pytest.mark.parametrize("n,block", [(1, 4), (4099, 256), (70001, 64), (4096, 256), (1000, 12), (4112, 16),
                                     (8192, 32)])
def test_cuda_decompress_sums_match_the_cpu_kernels(n, block):
    rows, blocks = 3, -(-n // block)
    q = torch.randint(-127, 128, (rows, n), dtype=torch.int8)
    packed = torch.randint(0, 256, (rows, (n + 7) // 8), dtype=torch.uint8)
    scales, levels = torch.rand(rows, blocks), torch.randn(rows, 2 * blocks)
    assert_same_bits(e.decompress_sum_int8(q.cuda(), scales.cuda(), block).cpu(),
                     e.decompress_sum_int8(q, scales, block))
    assert_same_bits(e.decompress_sum_sign(packed.cuda(), levels.cuda(), n, block).cpu(),
                     e.decompress_sum_sign(packed, levels, n, block))


@pytest.mark.cuda
@pytest.mark.parametrize("rows,cols,block", [(1, 1003, 7), (3, 1024, 64), (4, 1200, 12)])
@pytest.mark.parametrize("ef21", [False, True])  # the encoders' estimate, the decoders' accumulate
def test_cuda_out_forms_match_the_cpu_ones(rows, cols, block, ef21):
    # Encoders into strided message rows, then the decoders reading those rows in place.
    x, start_error = random_input((rows * cols,)), random_input((rows * cols,), scale=0.01)
    start_total = torch.randn(cols)
    for _, op_out, per_element, payload_dtype, per_block in ENCODERS:
        results = {}
        for device in ("cpu", "cuda"):  # copies: .to("cpu") of a CPU tensor is the tensor itself
            error, total = start_error.to(device, copy=True), start_total.to(device, copy=True)
            buffer, payload, scales = message_views(rows, -(-cols // per_element), payload_dtype,
                                                    -(-cols // block) * per_block, device)
            op_out(x.to(device), error, block, payload, scales, ef21)
            if per_element == 1:
                e.decompress_sum_int8_out(payload, scales, block, total, ef21)
            else:
                e.decompress_sum_sign_out(payload, scales, cols, block, total, ef21)
            results[device] = [t.cpu() for t in (payload.clone(), scales.clone(), error, total)]
            assert_only_views_written(buffer, payload, scales)
        for gpu_result, cpu_result in zip(results["cuda"], results["cpu"], strict=True):
            assert_same_bits(gpu_result, cpu_result)


@pytest.mark.cuda
def test_cuda_codecs_opcheck_and_device_errors():
    x, error = torch.randn(1000, device="cuda"), torch.zeros(1000, device="cuda")
    opcheck(e.ef_compress_int8, (x, error.clone(), 64))
    opcheck(e.ef_compress_sign, (x, error.clone(), 64))
    with pytest.raises(RuntimeError, match="error must be on"):
        e.ef_compress_int8(x, torch.zeros(1000), 64)


def test_the_codec_study_simulates_our_sign_codec():
    # benchmarks/sign_codec_study.py: its "ours" must be the shipped codec's round trip, and
    # its simulated hook must train with every variant.
    pytest.importorskip("sklearn")
    study = load_script("benchmarks", "sign_codec_study")
    v = random_input((4099,), scale=0.01)
    padded = torch.nn.functional.pad(v, (0, 253))  # the hook's last block counts its padding's zeros too
    packed, levels = ref.ef_compress_sign(padded, torch.zeros_like(padded), 256)
    expected = ref.decompress_sign(packed, levels, padded.numel(), 256)[:v.numel()]
    torch.testing.assert_close(study.roundtrip(study.ours, v, 256), expected, rtol=1e-5, atol=1e-8)
    blocks = study._blocks(v, 256)
    for name, codec in study.CODECS.items():
        if codec is not None:
            assert codec(blocks).shape == blocks.shape, name
    assert all(len(row.unique()) <= 2 for row in study.ours(blocks))  # two values a block
    one_signed = torch.rand(4, 256, generator=torch.Generator().manual_seed(0)) + 0.1  # what a bare sign loses
    assert (study.ours(one_signed) - one_signed).norm() < 0.7 * (study.bare_sign(one_signed) - one_signed).norm()
    for name, codec in study.CODECS.items():
        losses = study.simulate(study.DigitsTask(32, 1, 2, 1.0), codec, 40, 64)
        assert sum(losses[-5:]) / 5 < losses[0], name
    assert_feedbacks_reduce_like_the_hook(study)


def assert_feedbacks_reduce_like_the_hook(study):
    """The study's two error feedbacks: exact with a lossless codec; with the sign codec the
    classic one's residuals keep what the decoded average lost, EF21's server estimate is the
    mean of the workers' estimates and the optimizer gets the shared estimate."""
    params = [torch.zeros(1000)]
    grads = [[random_input((1000,), scale=0.01) for _ in range(2)] for _ in range(3)]
    for feedback in study.FEEDBACKS.values():
        lossless = feedback(params, 2, lambda blocks: blocks, 64, False)
        for step in grads:
            torch.testing.assert_close(lossless.reduce(0, step), (step[0] + step[1]) / 2, rtol=0, atol=1e-7)
    classic, ef21 = (feedback(params, 2, study.ours, 64, False) for feedback in study.FEEDBACKS.values())
    sent = torch.zeros(1000)
    for step in grads:
        sent += classic.reduce(0, step)
        assert not torch.equal(ef21.reduce(0, step), sum(step) / 2)  # lossy
        torch.testing.assert_close(ef21.server[0], (ef21.workers[0][0] + ef21.workers[1][0]) / 2)
    true_sum = sum(g for step in grads for g in step) / 2
    residuals = (classic.workers[0][0] + classic.workers[1][0]) / 2 + classic.server[0]
    torch.testing.assert_close(sent + residuals, true_sum, rtol=0, atol=1e-6)
    losses = study.simulate(study.DigitsTask(32, 1, 2, 1.0), study.ours, 40, 64, feedback="ef21")
    assert sum(losses[-5:]) / 5 < losses[0]
