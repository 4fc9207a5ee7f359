"""Typed Python entry points of the effgen ops, with fake (meta) kernels for torch.compile
and autograd for the differentiable ones. Each op's exact semantics is in reference.py."""

from __future__ import annotations

import contextlib

import torch

_ops = torch.ops.effgen

__all__ = [
    "quantize_per_token",
    "quantize_per_group",
    "quantize_per_channel",
    "dequantize",
    "fake_quantize_per_tensor",
    "fake_quantize_per_channel",
    "fake_quantize_learnable_per_channel",
    "int8_linear",
    "int8_dynamic_linear",
    "int8_pack_weight",
    "int8_unpack_weight",
    "int8_linear_packed",
    "int8_dynamic_linear_packed",
    "int8_weight_only_linear",
    "int8_weight_only_linear_packed",
    "pack_binary",
    "unpack_binary",
    "pack_ternary",
    "unpack_ternary",
    "binarize_weight",
    "ternarize_weight",
    "binary_linear",
    "ternary_linear",
    "xnor_linear",
    "lut_tiles",
    "cpu_isa",
    "supported_cpu_isas",
    "set_cpu_isa",
    "use_cpu_isa",
    "built_with_cuda",
]


# ---------------------------------------------------------------------------------------
# quant family
# ---------------------------------------------------------------------------------------
def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim -> (q int8 like x, scale fp32 of x.shape[:-1])."""
    return _ops.quantize_per_token(x)


def quantize_per_group(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group of the last dim -> (q, scale of x.shape[:-1] + (ceil(K/G),))."""
    return _ops.quantize_per_group(x, group_size)


def quantize_per_channel(w: torch.Tensor, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per index of ``axis`` -> (q, scale of shape [w.size(axis)])."""
    return _ops.quantize_per_channel(w, axis)


def dequantize(q: torch.Tensor, scale: torch.Tensor, axis: int | None = None, group_size: int | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * scale; scale per tensor / per token (default), per channel (axis) or per group."""
    return _ops.dequantize(q, scale, axis, group_size, out_dtype)


def fake_quantize_per_tensor(x: torch.Tensor, scale: float, zero_point: int, quant_min: int,
                             quant_max: int) -> torch.Tensor:
    """Drop-in for torch.fake_quantize_per_tensor_affine (same arguments, same bits)."""
    return _ops.fake_quantize_per_tensor_cachemask(x, float(scale), int(zero_point), quant_min, quant_max)[0]


def fake_quantize_per_channel(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                              quant_min: int, quant_max: int) -> torch.Tensor:
    """Drop-in for torch.fake_quantize_per_channel_affine (same arguments, same bits)."""
    return _ops.fake_quantize_per_channel_cachemask(x, scale, zero_point, axis, quant_min, quant_max)[0]


def fake_quantize_learnable_per_channel(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                                        quant_min: int, quant_max: int, grad_factor: float = 1.0) -> torch.Tensor:
    """Drop-in for torch._fake_quantize_learnable_per_channel_affine: LSQ gradients for
    x, scale and the float zero point."""
    return _ops.fake_quantize_learnable_per_channel(x, scale, zero_point, axis, quant_min, quant_max, grad_factor)


# ---------------------------------------------------------------------------------------
# int8_gemm family
# ---------------------------------------------------------------------------------------
def int8_linear(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W8A8: int8 [..., K] x int8 [N, K]^T, int32 accumulation, fused
    ``acc * x_scale[m] * w_scale[n] + bias[n]`` epilogue in ``out_dtype``."""
    return _ops.int8_linear(xq, x_scale, wq, w_scale, bias, out_dtype)


def int8_dynamic_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None = None, smoothing: torch.Tensor | None = None) -> torch.Tensor:
    """W8A8 with per-token activation quantization in the same call; output in x's dtype.
    ``smoothing`` (fp32 [K], SmoothQuant's 1 / factors) multiplies x's channels, in fp32,
    before the quantization; the CPU kernels do it in the same pass."""
    return _ops.int8_dynamic_linear(x, wq, w_scale, bias, smoothing)


def int8_pack_weight(wq: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [N, K] -> (w_packed int8 [ceil(N/16), ceil(K/4), 64], w_sum int32) for the
    ``*_packed`` ops: blocks of 16 output channels x 4 values of K (layout in reference.py),
    so one 64-byte vector of weights feeds 16 outputs (AVX-512 VNNI), and the column sums
    that undo the kernel's unsigned shift of the activations: [N] per channel, or with
    ``group_size`` (for per-group W8A16) [ceil(K / group_size), N], each group's sums. CPU
    (the layout of the CPU kernels; CUDA takes the canonical one), one pass over the weights."""
    return _ops.int8_pack_weight(wq, group_size)


def int8_unpack_weight(w_packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The canonical int8 [N, K] weights of an int8_pack_weight layout (a new tensor)."""
    return _ops.int8_unpack_weight(w_packed, n, k)


def int8_linear_packed(xq: torch.Tensor, x_scale: torch.Tensor, w_packed: torch.Tensor, w_sum: torch.Tensor,
                       w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                       out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8_linear with weights from int8_pack_weight (CPU): the same bits."""
    return _ops.int8_linear_packed(xq, x_scale, w_packed, w_sum, w_scale, bias, out_dtype)


def int8_dynamic_linear_packed(x: torch.Tensor, w_packed: torch.Tensor, w_sum: torch.Tensor, w_scale: torch.Tensor,
                               bias: torch.Tensor | None = None, smoothing: torch.Tensor | None = None) -> torch.Tensor:
    """int8_dynamic_linear with weights from int8_pack_weight (CPU): the same result, from a
    register tile of 6 rows x 64 output channels that needs no horizontal sums."""
    return _ops.int8_dynamic_linear_packed(x, w_packed, w_sum, w_scale, bias, smoothing)


def int8_weight_only_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                            bias: torch.Tensor | None = None, group_size: int | None = None) -> torch.Tensor:
    """W8A16: 16-bit activations times int8 weights.

    fp32 activations (and bf16/fp16 ones on CUDA or with group-wise scales) multiply the
    weights dequantized in registers up to 16 rows; more rows go to torch's GEMM on
    dequantized weights (on the CPU a block of columns per thread at a time, in fp32 for
    bf16/fp16 x on CPUs without AMX). On the CPU, bf16/fp16 activations with per-channel scales run as 16-bit
    fixed point per token (absmax / 32639 steps, at least as fine as bf16 above absmax /
    2^7) on the int8 GEMM, which reads the weights once (2x bf16 ``F.linear`` at M = 8
    where the float path was 0.8x), up to 16 rows and, without AMX, at every M (on AVX2
    2-4.7x faster than dequantizing at 17-256 rows, with AVX-512 VNNI 1.2-3.3x at 64-1024)."""
    return _ops.int8_weight_only_linear(x, wq, w_scale, bias, group_size)


def int8_weight_only_linear_packed(x: torch.Tensor, w_packed: torch.Tensor, w_sum: torch.Tensor,
                                   w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                                   group_size: int | None = None) -> torch.Tensor:
    """W8A16 from int8_pack_weight's layout (CPU), per-channel scales ([N]) or, with
    ``group_size``, per-group ones ([N, groups], packed with the same group_size). Up to 16
    rows, and beyond while it pays, the activations run as fixed point per token (15 bits
    of the row's absmax for bf16/fp16, 22 for fp32) on the packed int8 GEMM, which reads the
    weights once and never dequantizes them (per group: one product per group, scaled and
    summed in fp32; group_size a multiple of 4). Without VNNI the fixed-point values go as
    int16 rows against weights widened in registers (same integers, same results). It
    pays: with AMX, at every M for fp32 x, and for bf16/fp16 x while M (K + N) <= 2 N K
    with per-channel scales, up to 320 rows with per-group ones; with AVX-512 VNNI, at every
    M but for fp32 x with per-group scales (while M (K + N) <= N K); without (AVX2), up to
    32 rows for fp32 and at every M for bf16/fp16, whose torch GEMM is slower there. Other
    batches (and batches with rows holding Inf or NaN, which fixed point cannot hold) run on
    torch's GEMM over blocks of dequantized columns, each thread's block in cache (in x's
    dtype; in fp32 for bf16/fp16 x on CPUs without AMX, whose 16-bit GEMM is slow there;
    with AMX, 16-bit x meets chunks of columns dequantized into its dtype, one GEMM a
    chunk); up to 16 rows, rows holding Inf or NaN go through the float kernel. Both
    propagate them."""
    return _ops.int8_weight_only_linear_packed(x, w_packed, w_sum, w_scale, bias, group_size)


# ---------------------------------------------------------------------------------------
# binary_gemm family (bit order and formats: reference.py)
# ---------------------------------------------------------------------------------------
def pack_binary(w: torch.Tensor) -> torch.Tensor:
    """Sign bits of w [N, K] (w >= 0 is 1) as uint8 [N, ceil(K/8)], LSB first."""
    return _ops.pack_binary(w)


def unpack_binary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, ceil(K/8)] -> int8 [N, K] of +-1."""
    return _ops.unpack_binary(packed, k)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] in {-1, 0, 1} -> uint8 [N, 2 * ceil(K/8)] (positive plane, negative plane)."""
    return _ops.pack_ternary(q)


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, 2 * ceil(K/8)] -> int8 [N, K] in {-1, 0, 1}."""
    return _ops.unpack_ternary(packed, k)


def binarize_weight(w: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float w [N, K] -> (pack_binary(w), alpha): XNOR-Net's alpha = mean |w| per row [N], or
    per group of ``group_size`` inputs [N, groups] (the last group ragged), summed in double
    and rounded once to fp32. NaN or Inf in w raises ValueError (no sign to give it)."""
    return _ops.binarize_weight(w, group_size)


def ternarize_weight(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Float w [N, K] -> (packed ternary q, s) in one pass (BitNet b1.58): s = mean |w| per row
    [N] or of the whole tensor [1] (summed in double, one fp32 rounding), q = round(clamp(w / s,
    -1, 1)) (half to even), all 0 where s is 0. NaN or Inf in w raises ValueError."""
    return _ops.ternarize_weight(w, per_channel)


def binary_linear(x: torch.Tensor, packed: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None = None,
                  group_size: int | None = None, lut: torch.Tensor | None = None) -> torch.Tensor:
    """x @ (alpha * sign(w))^T + bias with packed sign bits; alpha [N] or [N, groups].
    ``lut = lut_tiles(packed, K, 1)`` enables the CPU lookup-table kernel (per-channel alpha;
    per-group alphas of 32k inputs take ``lut_tiles(packed, K, 1, group_size)``); with AMX,
    batches of 8 rows or more with it (per-group alphas: 2 or more) run on the int8 GEMM
    instead, the weights expanded from the tiles to int8 in cache and x as W8A16's fixed
    point (2 int8 digits for bf16 x, 3 for fp32 and fp16; an x with Inf or NaN takes the
    other paths). Batches over 16 rows without it run on torch's GEMM over blocks of
    expanded weights; so do, without AVX-512 (measured on AVX2), batches over 32 rows on
    layers under 64 output columns a thread, where the AVX2 tables do not hold activation
    rows in their lanes."""
    return _ops.binary_linear(x, packed, alpha, bias, group_size, lut)


def ternary_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                   lut: torch.Tensor | None = None) -> torch.Tensor:
    """x @ (scale * q)^T + bias with packed ternary q; scale [N] or one element.
    ``lut = lut_tiles(packed, K, 2)`` enables the CPU lookup-table kernel, and with AMX the
    int8 GEMM for batches of 8 rows or more, as in binary_linear. Batches over 16
    rows without it run on torch's GEMM over blocks of expanded weights; so do, without
    AVX-512 (measured on AVX2), batches over 32 rows on layers under 64 output columns a
    thread, where the AVX2 tables do not hold activation rows in their lanes, and ternary
    batches over 64 rows on any layer."""
    return _ops.ternary_linear(x, packed, scale, bias, lut)


def lut_tiles(packed: torch.Tensor, k: int, planes: int, group_size: int | None = None) -> torch.Tensor:
    """The packed rows re-tiled for the CPU lookup-table kernel of the dispatched ISA (derived
    data: never saved). Its dtype names the layout: uint8 for 4-input groups (AVX-512, scalar),
    int32 for 3-input groups (AVX2); a lut of another ISA's layout still works, on plain C++.
    With ``group_size`` (binary weights with per-group alphas) the layout is the one the ISA's
    per-group kernel reads: 4-input groups everywhere, whose 32-input lanes end at the ends of
    groups of 32k inputs (smaller groups run without a lut)."""
    return _ops.lut_tiles(packed, k, planes, group_size)


def xnor_linear(x: torch.Tensor, packed: torch.Tensor, alpha: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """XNOR-Net: x binarized per token (sign, mean |x|) times binary weights, via popcount."""
    return _ops.xnor_linear(x, packed, alpha, bias)


def _check_same_device(op: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Each tensor given (None: an absent optional) on ref's device. With a meta tensor among
    CPU ones the dispatcher runs the fakes below, not the CPU kernels (which check devices):
    unchecked, a fake would return uninitialized CPU memory as the result."""
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == ref.device,
                         lambda name=name, t=t: f"{op}: {name} must be on {ref.device} like the input, got {t.device}")


def _row_scale_shape(x: torch.Tensor, groups: int | None) -> list[int]:
    shape = list(x.shape[:-1])
    return shape if groups is None else [*shape, groups]


@torch.library.register_fake("effgen::quantize_per_token")
def _(x):
    return torch.empty_like(x, dtype=torch.int8), x.new_empty(_row_scale_shape(x, None), dtype=torch.float32)


@torch.library.register_fake("effgen::quantize_per_group")
def _(x, group_size):
    torch._check(group_size > 0, lambda: f"quantize_per_group: group_size must be positive, got {group_size}")
    groups = -(-x.shape[-1] // group_size)
    return torch.empty_like(x, dtype=torch.int8), x.new_empty(_row_scale_shape(x, groups), dtype=torch.float32)


@torch.library.register_fake("effgen::int8_pack_weight")
def _(wq, group_size=None):
    n, k = wq.shape
    packed = wq.new_empty([-(-n // 16), -(-k // 4), 64])
    sums_shape = [n] if group_size is None else [-(-k // group_size), n]
    return packed, wq.new_empty(sums_shape, dtype=torch.int32)


@torch.library.register_fake("effgen::quantize_per_channel")
def _(w, axis):
    return torch.empty_like(w, dtype=torch.int8), w.new_empty([w.shape[axis]], dtype=torch.float32)


@torch.library.register_fake("effgen::dequantize")
def _(q, scale, axis=None, group_size=None, out_dtype=torch.float32):
    _check_same_device("dequantize", q, scale=scale)
    return torch.empty_like(q, dtype=out_dtype)


@torch.library.register_fake("effgen::fake_quantize_per_tensor_cachemask")
def _(x, scale, zero_point, quant_min, quant_max):
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


@torch.library.register_fake("effgen::fake_quantize_per_channel_cachemask")
def _(x, scale, zero_point, axis, quant_min, quant_max):
    _check_same_device("fake_quantize_per_channel", x, scale=scale, zero_point=zero_point)
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


@torch.library.register_fake("effgen::fake_quantize_mask_grad")
def _(grad, mask):
    _check_same_device("fake_quantize_mask_grad", grad, mask=mask)
    return torch.empty_like(grad)


@torch.library.register_fake("effgen::fake_quantize_learnable_per_channel")
def _(x, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0):
    _check_same_device("fake_quantize_learnable_per_channel", x, scale=scale, zero_point=zero_point)
    return torch.empty_like(x)


@torch.library.register_fake("effgen::fake_quantize_learnable_per_channel_backward")
def _(dy, x, scale, zero_point, axis, quant_min, quant_max, grad_factor):
    _check_same_device("fake_quantize_learnable_per_channel_backward", dy, x=x, scale=scale, zero_point=zero_point)
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(zero_point)


def _linear_out(op: str, x: torch.Tensor, wq: torch.Tensor, dtype: torch.dtype, **others) -> torch.Tensor:
    torch._check(x.dim() > 0, lambda: f"{op}: input must have at least 1 dimension")
    torch._check(wq.dim() == 2 and wq.shape[1] == x.shape[-1],
                 lambda: f"{op}: wq must be [N, K] with K = {x.shape[-1]}, got {tuple(wq.shape)}")
    _check_same_device(op, x, wq=wq, **others)
    return x.new_empty((*x.shape[:-1], wq.shape[0]), dtype=dtype)


@torch.library.register_fake("effgen::int8_linear")
def _(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.float32):
    return _linear_out("int8_linear", xq, wq, out_dtype, x_scale=x_scale, w_scale=w_scale, bias=bias)


@torch.library.register_fake("effgen::int8_dynamic_linear")
def _(x, wq, w_scale, bias=None, smoothing=None):
    return _linear_out("int8_dynamic_linear", x, wq, x.dtype, w_scale=w_scale, bias=bias, smoothing=smoothing)


def _packed_linear_out(op: str, x: torch.Tensor, w_packed: torch.Tensor, w_sum: torch.Tensor,
                      dtype: torch.dtype | None = None, sum_dims: int = 1, **others) -> torch.Tensor:
    torch._check(x.dim() > 0, lambda: f"{op}: input must have at least 1 dimension")
    torch._check(w_sum.dim() == sum_dims, lambda: f"{op}: w_sum must have {sum_dims} dimension(s), got "
                                                  f"{tuple(w_sum.shape)}")
    _check_same_device(op, x, w_packed=w_packed, w_sum=w_sum, **others)
    n = w_sum.shape[-1]
    expected = ((n + 15) // 16, (x.shape[-1] + 3) // 4, 64)
    torch._check(tuple(w_packed.shape) == expected,
                 lambda: f"{op}: w_packed must be {expected}, got {tuple(w_packed.shape)}")
    return x.new_empty((*x.shape[:-1], n), dtype=dtype or x.dtype)


@torch.library.register_fake("effgen::int8_linear_packed")
def _(xq, x_scale, w_packed, w_sum, w_scale, bias=None, out_dtype=torch.float32):
    return _packed_linear_out("int8_linear_packed", xq, w_packed, w_sum, out_dtype, x_scale=x_scale,
                              w_scale=w_scale, bias=bias)


@torch.library.register_fake("effgen::int8_dynamic_linear_packed")
def _(x, w_packed, w_sum, w_scale, bias=None, smoothing=None):
    return _packed_linear_out("int8_dynamic_linear_packed", x, w_packed, w_sum, w_scale=w_scale, bias=bias,
                              smoothing=smoothing)


@torch.library.register_fake("effgen::int8_weight_only_linear_packed")
def _(x, w_packed, w_sum, w_scale, bias=None, group_size=None):
    return _packed_linear_out("int8_weight_only_linear_packed", x, w_packed, w_sum,
                              sum_dims=1 if group_size is None else 2, w_scale=w_scale, bias=bias)


@torch.library.register_fake("effgen::int8_weight_only_linear")
def _(x, wq, w_scale, bias=None, group_size=None):
    return _linear_out("int8_weight_only_linear", x, wq, x.dtype, w_scale=w_scale, bias=bias)


def _packed_rows(packed: torch.Tensor, k: int, planes: int, what: str) -> None:
    torch._check(packed.dim() == 2 and packed.shape[1] == planes * ((k + 7) // 8),
                 lambda: f"{what}: packed must be [N, {planes * ((k + 7) // 8)}] for K = {k}")


@torch.library.register_fake("effgen::pack_binary")
def _(w):
    return w.new_empty((w.shape[0], (w.shape[1] + 7) // 8), dtype=torch.uint8)


@torch.library.register_fake("effgen::unpack_binary")
def _(packed, k):
    return packed.new_empty((packed.shape[0], k), dtype=torch.int8)


@torch.library.register_fake("effgen::pack_ternary")
def _(q):
    return q.new_empty((q.shape[0], 2 * ((q.shape[1] + 7) // 8)), dtype=torch.uint8)


@torch.library.register_fake("effgen::unpack_ternary")
def _(packed, k):
    return packed.new_empty((packed.shape[0], k), dtype=torch.int8)


@torch.library.register_fake("effgen::binarize_weight")
def _(w, group_size=None):
    n, k = w.shape
    alpha_shape = (n,) if group_size is None else (n, -(-k // group_size))
    return w.new_empty((n, (k + 7) // 8), dtype=torch.uint8), w.new_empty(alpha_shape, dtype=torch.float32)


@torch.library.register_fake("effgen::ternarize_weight")
def _(w, per_channel=True):
    n, k = w.shape
    return (w.new_empty((n, 2 * ((k + 7) // 8)), dtype=torch.uint8),
            w.new_empty((n if per_channel else 1,), dtype=torch.float32))


@torch.library.register_fake("effgen::lut_tiles")
def _(packed, k, planes, group_size=None):
    # LutLayout in binary_gemm.h: groups of `width` inputs, 32 // width fields per uint32 lane,
    # words of 16 lanes; width 4 tiles are uint8, width 3 tiles int32.
    width = _ops.cpu_lut_width(group_size)
    groups, fields = -(-k // width), 32 // width
    words = -(-(groups * planes) // fields)
    dtype, per_word = (torch.uint8, 64) if width == 4 else (torch.int32, 16)
    return packed.new_empty((-(-packed.shape[0] // 16), words * per_word), dtype=dtype)


@torch.library.register_fake("effgen::binary_linear")
def _(x, packed, alpha, bias=None, group_size=None, lut=None):
    _packed_rows(packed, x.shape[-1], 1, "binary_linear")
    _check_same_device("binary_linear", x, packed=packed, alpha=alpha, bias=bias, lut=lut)
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("effgen::ternary_linear")
def _(x, packed, scale, bias=None, lut=None):
    _packed_rows(packed, x.shape[-1], 2, "ternary_linear")
    _check_same_device("ternary_linear", x, packed=packed, scale=scale, bias=bias, lut=lut)
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("effgen::xnor_linear")
def _(x, packed, alpha, bias=None):
    _packed_rows(packed, x.shape[-1], 1, "xnor_linear")
    _check_same_device("xnor_linear", x, packed=packed, alpha=alpha, bias=bias)
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("effgen::ef_compress_int8")
def _(x, error, block_size):
    _check_same_device("ef_compress_int8", x, error=error)
    return torch.empty_like(x, dtype=torch.int8), x.new_empty((-(-x.numel() // block_size),), dtype=torch.float32)


@torch.library.register_fake("effgen::ef_compress_sign")
def _(x, error, block_size):
    _check_same_device("ef_compress_sign", x, error=error)
    return (x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8),
            x.new_empty((2 * -(-x.numel() // block_size),), dtype=torch.float32))  # (low, high) a block


@torch.library.register_fake("effgen::decompress_sum_int8")
def _(q, scales, block_size):
    _check_same_device("decompress_sum_int8", q, scales=scales)
    return q.new_empty((q.shape[1],), dtype=torch.float32)


@torch.library.register_fake("effgen::decompress_sum_sign")
def _(packed, levels, n, block_size):
    _check_same_device("decompress_sum_sign", packed, levels=levels)
    return packed.new_empty((n,), dtype=torch.float32)


# The codecs' _out forms write only their outputs: their fakes return nothing.
@torch.library.register_fake("effgen::ef_compress_int8_out")
def _(x, error, block_size, q, scales, estimate=False):
    _check_same_device("ef_compress_int8_out", x, error=error, q=q, scales=scales)


@torch.library.register_fake("effgen::ef_compress_sign_out")
def _(x, error, block_size, packed, levels, estimate=False):
    _check_same_device("ef_compress_sign_out", x, error=error, packed=packed, levels=levels)


@torch.library.register_fake("effgen::decompress_sum_int8_out")
def _(q, scales, block_size, total, accumulate=False):
    _check_same_device("decompress_sum_int8_out", q, scales=scales, total=total)


@torch.library.register_fake("effgen::decompress_sum_sign_out")
def _(packed, levels, n, block_size, total, accumulate=False):
    _check_same_device("decompress_sum_sign_out", packed, levels=levels, total=total)


# Autograd is registered in C++ (csrc/ops/autograd.cpp): a Python autograd.Function per call
# cost more than the kernels on small tensors. The fake-quant ops: straight-through for the
# cachemask ops, LSQ for the learnable one. The quantized linear ops (int8_dynamic_linear,
# int8_weight_only_linear, their packed forms, binary_linear, ternary_linear, xnor_linear):
# gradients of x and bias, the weights' codes and scales being constants (semantics in
# reference.py, "Gradients of the quantized linear ops"); int8_linear(_packed): the bias's.


# ---------------------------------------------------------------------------------------
# build and CPU dispatch introspection
# ---------------------------------------------------------------------------------------
def cpu_isa() -> str:
    """The CPU instruction set the kernels dispatch on now (scalar, avx2, avx512 or amx on x86-64;
    scalar or neon on aarch64)."""
    return _ops.cpu_isa()


def supported_cpu_isas() -> list[str]:
    """Every CPU instruction set this machine can run, lowest first."""
    return list(_ops.supported_cpu_isas())


def set_cpu_isa(isa: str) -> None:
    """Dispatch CPU kernels on ``isa`` from now on (process-wide; for tests and benchmarks)."""
    _ops.set_cpu_isa(isa)


@contextlib.contextmanager
def use_cpu_isa(isa: str):
    """Run the block with CPU kernels dispatched on ``isa``, then restore the previous one."""
    previous = cpu_isa()
    set_cpu_isa(isa)
    try:
        yield
    finally:
        set_cpu_isa(previous)


def built_with_cuda() -> bool:
    """Whether this build of the extension contains the CUDA kernels."""
    return bool(_ops.built_with_cuda())
