"""Pure-PyTorch definition of every effgen op: the spec the C++ and CUDA kernels must match.

Conventions shared by the quant family
- Inputs are float32, bfloat16 or float16; all arithmetic is done in float32.
- Symmetric int8 quantization: ``scale = absmax / 127`` (float32 division) and
  ``q = clamp(round_half_to_even(x * (1 / scale)), -127, 127)``: the kernels multiply by the
  float32 reciprocal, as PyTorch's own fake-quant does, and never produce -128, so the
  range stays symmetric.
- A run (row, group or channel) that is all zeros gets ``scale = 0`` and ``q = 0``; no NaN.
- A run containing NaN or Inf cannot be quantized: the CPU kernels raise ``ValueError``. On
  CUDA (where a check would cost a device sync) the run's scale becomes NaN and its q is 0,
  so the NaN propagates through dequantize.
- Fake quant follows ``torch.fake_quantize_per_*_affine`` bit for bit:
  ``qval = zero_point + nearbyint(x * (1/scale))`` (float32), output
  ``(clamp(qval, quant_min, quant_max) - zero_point) * scale`` rounded to the input dtype,
  and the straight-through mask ``quant_min <= qval <= quant_max`` from the unclamped value.

The int8_gemm family
- ``int8_linear``: exact integer products ``acc = xq @ wq^T`` (int32 cannot overflow for
  K < 2^17, larger K is rejected), then the fp32 epilogue, in this order and without FMA:
  ``out = float(acc) * x_scale[m] * w_scale[n] + bias[n]``, rounded to ``out_dtype``.
- ``int8_dynamic_linear``: ``quantize_per_token(x)`` then ``int8_linear`` with the output in
  x's dtype. With ``smoothing`` (SmoothQuant's 1 / factors, fp32 [K]) the rows quantized are
  ``x.float() * smoothing`` (an fp32 product, not rounded to x's dtype).
- ``int8_linear_packed``, ``int8_dynamic_linear_packed``: the same products from weights
  packed by ``int8_pack_weight``: int8 ``[ceil(N/16), ceil(K/4), 64]``, where block
  ``(jb, kq)`` holds ``wq[16 jb + c, 4 kq + r]`` at byte ``4 c + r`` (zero past N and K: 16
  output channels by 4 values of K, one VNNI operand), and the column sums
  ``w_sum = wq.sum(1)`` as int32 [N] (with a group_size: ``[groups, N]``, each group's sums).
  K is x's last dimension: the padded layout cannot tell K from K + 1 or K - 1 within a
  block (nor can packed bits within a byte), so the layers check their in_features.
- ``int8_weight_only_linear``: ``x @ (wq * w_scale)^T + bias`` accumulated in fp32 (the
  kernels sum in a different order: compare with a tolerance), output in x's dtype.
- ``int8_weight_only_linear_packed``: the same from int8_pack_weight's layout, per channel or
  per group (the CPU kernel rounds activations to fixed point per token: see ops).

Gradients of the quantized linear ops (int8_dynamic_linear, int8_weight_only_linear, their
packed forms, binary_linear, ternary_linear, xnor_linear)
- With W the float weights the codes and scales stand for (``int8_weight_only_linear``'s,
  ``binary_linear``'s and ``ternary_linear``'s own), ``dL/dx = dL/dy @ W`` and
  ``dL/dbias = dL/dy`` summed over rows: the autograd of these reference functions, except
  that the kernels multiply in the gradient's dtype (W rounded to it, as F.linear's
  backward does) where the reference multiplies in fp32.
- int8_dynamic_linear: straight through the per-token rounding of x, i.e. the gradient of
  ``int8_weight_only_linear`` on the same weights (Int8TrainLinear's estimator), times
  ``smoothing`` where given (which takes no gradient).
- xnor_linear: the gradient of ``binary_linear(sign(x) * mean|x|)`` with a clipped
  straight-through sign (gradient 1 where ``|x| <= 1``) and the mean's own term
  (BinaryTrainLinear's estimator with binary activations).
- Codes and scales are constants: a scale that requires grad is an error.
- int8_linear, int8_linear_packed (x already int8): the bias gradient only.
"""

import torch

__all__ = [
    "quantize_per_token",
    "quantize_per_group",
    "quantize_per_channel",
    "dequantize",
    "fake_quantize_per_tensor",
    "fake_quantize_per_channel",
    "fake_quantize_mask_grad",
    "fake_quantize_learnable_per_channel",
    "fake_quantize_learnable_per_channel_backward",
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
    "ef_compress_int8",
    "ef_compress_sign",
    "decompress_sign",
    "decompress_sum_int8",
    "decompress_sum_sign",
]

QMAX_INT8 = 127


def symmetric_int8(x: torch.Tensor, absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x with scale = absmax/127 broadcast against it: the codes are x times the
    scale's fp32 reciprocal, or 0 where it has none (absmax 0, or below 127 * 2^-128, about
    3.7e-37, where 1/scale overflows: x * inf would give Inf codes and NaN for zeros)."""
    scale = absmax / QMAX_INT8
    inv_scale = 1.0 / scale
    inv_scale = torch.where(torch.isfinite(inv_scale), inv_scale, torch.zeros_like(inv_scale))
    q = torch.round(x.float() * inv_scale).clamp(-QMAX_INT8, QMAX_INT8).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim: q has x's shape, scale has shape x.shape[:-1]."""
    absmax = x.float().abs().amax(dim=-1, keepdim=True) if x.shape[-1] > 0 else x.new_zeros(
        (*x.shape[:-1], 1), dtype=torch.float32)
    q, scale = symmetric_int8(x, absmax)
    return q, scale.squeeze(-1)


def quantize_per_group(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group of ``group_size`` consecutive elements of the last dim.

    The last group may be shorter. q has x's shape, scale has shape
    ``x.shape[:-1] + (ceil(K / group_size),)``.
    """
    k = x.shape[-1]
    groups = -(-k // group_size)
    pad = groups * group_size - k
    padded = torch.nn.functional.pad(x.float(), (0, pad)).reshape(*x.shape[:-1], groups, group_size)
    absmax = padded.abs().amax(dim=-1, keepdim=True) if group_size > 0 and groups > 0 else padded[..., :1]
    q, scale = symmetric_int8(padded, absmax)
    return q.reshape(*x.shape[:-1], groups * group_size)[..., :k], scale.squeeze(-1)


def quantize_per_channel(w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per index of ``axis`` (absmax over every other dim)."""
    axis = axis % w.dim()
    other = [d for d in range(w.dim()) if d != axis]
    if w.numel() == 0:
        absmax = torch.zeros([w.shape[d] if d == axis else 1 for d in range(w.dim())], device=w.device)
    elif other:
        absmax = w.float().abs().amax(dim=other, keepdim=True)
    else:  # 1-D: every element is its own channel (amax over no dims would reduce all)
        absmax = w.float().abs()
    q, scale = symmetric_int8(w, absmax)
    return q, scale.reshape(-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, axis: int | None = None, group_size: int | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` in float32, rounded to ``out_dtype``.

    Scale layouts: one element (per tensor); shape ``q.shape[:-1]`` (per token); 1-D over
    ``axis`` (per channel); ``q.shape[:-1] + (groups,)`` with ``group_size`` (per group).
    """
    qf = q.float()
    if axis is not None:
        axis = axis % q.dim()
        shape = [q.shape[d] if d == axis else 1 for d in range(q.dim())]
        return (qf * scale.reshape(shape)).to(out_dtype)
    if group_size is not None:
        k = q.shape[-1]
        expanded = scale.repeat_interleave(group_size, dim=-1)[..., :k]
        return (qf * expanded).to(out_dtype)
    if scale.numel() == 1:
        return (qf * scale.reshape(())).to(out_dtype)
    return (qf * scale.unsqueeze(-1)).to(out_dtype)


def _fake_quantize(x, scale, zero_point, quant_min, quant_max):
    """PyTorch's fake-quant arithmetic with scale/zero_point already broadcast to x (float32).
    PyTorch's CPU kernel multiplies in double (std::fmin on int64 values) and converts with
    c10's conversion from double: through float on x86 (the float product, then rounded to
    x's dtype), but straight to float16_t on aarch64, one rounding for fp16. The product
    here is exact in double and converted the same way, so y matches on both."""
    inv_scale = 1.0 / scale
    qval = zero_point + torch.round(x.float() * inv_scale)
    mask = (qval >= quant_min) & (qval <= quant_max)
    y = (qval.clamp(quant_min, quant_max) - zero_point).double() * scale.double()
    return y.to(x.dtype), mask


def fake_quantize_per_tensor(x, scale: float, zero_point: int, quant_min: int, quant_max: int):
    """Returns (y, mask); y equals torch.fake_quantize_per_tensor_affine bit for bit."""
    scale_t = torch.tensor(scale, dtype=torch.float32, device=x.device)
    zp_t = torch.tensor(float(zero_point), dtype=torch.float32, device=x.device)
    return _fake_quantize(x, scale_t, zp_t, quant_min, quant_max)


def _channel_view(p: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    axis = axis % x.dim()
    return p.float().reshape([x.shape[d] if d == axis else 1 for d in range(x.dim())])


def fake_quantize_per_channel(x, scale, zero_point, axis: int, quant_min: int, quant_max: int):
    """Returns (y, mask); y equals torch.fake_quantize_per_channel_affine bit for bit."""
    return _fake_quantize(x, _channel_view(scale, x, axis), _channel_view(zero_point, x, axis), quant_min, quant_max)


def fake_quantize_mask_grad(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Straight-through backward of fake quant: ``grad * mask`` (a multiply, so -g * 0 is -0)."""
    return grad * mask


def _rounded_zero_point(zero_point, quant_min, quant_max):
    return zero_point.float().round().clamp(quant_min, quant_max)


def fake_quantize_learnable_per_channel(x, scale, zero_point, axis, quant_min, quant_max, grad_factor=1.0):
    """torch._fake_quantize_learnable_per_channel_affine: float zero point, rounded and clamped."""
    zp = _rounded_zero_point(zero_point, quant_min, quant_max)
    return fake_quantize_per_channel(x, scale, zp, axis, quant_min, quant_max)[0]


def fake_quantize_learnable_per_channel_backward(dy, x, scale, zero_point, axis, quant_min, quant_max,
                                                 grad_factor=1.0):
    """LSQ gradients (dx, dscale, dzero_point) exactly as PyTorch defines them.

    Unlike the forward pass, PyTorch rounds ``zero_point + x / scale`` as a whole here.
    """
    s = _channel_view(scale, x, axis)
    zp = _channel_view(_rounded_zero_point(zero_point, quant_min, quant_max), x, axis)
    xf, g = x.float(), dy.float()
    inv_scale = 1.0 / s
    qval = torch.round(zp + xf * inv_scale)
    in_range = (qval >= quant_min) & (qval <= quant_max)
    dx = g * in_range.float()  # a multiply, as in PyTorch: -g * 0 gives -0
    x_fq = (qval - zp) * s
    bound = torch.where(qval < quant_min, quant_min - zp, quant_max - zp)
    dscale = torch.where(in_range, g * (x_fq - xf) * inv_scale * grad_factor, g * bound * grad_factor)
    dzp = torch.where(in_range, torch.zeros_like(g), -g * s * grad_factor)
    other = [d for d in range(x.dim()) if d != axis % x.dim()]
    reduce = (lambda t: t.sum(dim=other)) if other else (lambda t: t)
    return dx.to(x.dtype), reduce(dscale.double()).float(), reduce(dzp.double()).to(zero_point.dtype)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., K] -> [M, K] (M spelled out: -1 is ambiguous for K = 0)."""
    return t.reshape(t.shape[:-1].numel(), t.shape[-1])


def int8_linear(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.float32):
    """W8A8 GEMM with the fused epilogue; x_scale per token (x.shape[:-1]) or per tensor."""
    acc = (_rows(xq).to(torch.int64) @ wq.to(torch.int64).T).float()
    xs = x_scale.reshape(()) if x_scale.numel() == 1 else x_scale.reshape(-1, 1)
    ws = w_scale.reshape(()) if w_scale.numel() == 1 else w_scale.reshape(1, -1)
    out = acc * xs * ws
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype).reshape(*xq.shape[:-1], wq.shape[0])


def int8_dynamic_linear(x, wq, w_scale, bias=None, smoothing=None):
    q, scale = quantize_per_token(x if smoothing is None else x.float() * smoothing)
    return int8_linear(q, scale, wq, w_scale, bias, out_dtype=x.dtype)


def int8_pack_weight(wq, group_size=None):
    """wq int8 [N, K] in int8_pack_weight's layout (see the docstring above), and its sums."""
    n, k = wq.shape
    padded = wq.new_zeros(n + (-n) % 16, k + (-k) % 4)  # not F.pad: torch 2.8's rejects n = 0 here
    padded[:n, :k] = wq
    blocks = padded.reshape(padded.shape[0] // 16, 16, padded.shape[1] // 4, 4).permute(0, 2, 1, 3)
    if group_size is None:
        sums = wq.sum(1, dtype=torch.int32)
    else:
        groups = -(-k // group_size)
        grouped = torch.nn.functional.pad(wq, (0, groups * group_size - k)).reshape(n, groups, group_size)
        sums = grouped.sum(2, dtype=torch.int32).T.contiguous()
    return blocks.reshape(padded.shape[0] // 16, padded.shape[1] // 4, 64).contiguous(), sums


def int8_unpack_weight(w_packed, n, k):
    """The canonical int8 [N, K] weights of an int8_pack_weight layout (see the docstring above)."""
    groups, quads, _ = w_packed.shape
    blocks = w_packed.reshape(groups, quads, 16, 4).permute(0, 2, 1, 3)
    return blocks.reshape(groups * 16, quads * 4)[:n, :k]


def int8_linear_packed(xq, x_scale, w_packed, w_sum, w_scale, bias=None, out_dtype=torch.float32):
    wq = int8_unpack_weight(w_packed, w_sum.numel(), xq.shape[-1])
    return int8_linear(xq, x_scale, wq, w_scale, bias, out_dtype)


def int8_dynamic_linear_packed(x, w_packed, w_sum, w_scale, bias=None, smoothing=None):
    return int8_dynamic_linear(x, int8_unpack_weight(w_packed, w_sum.numel(), x.shape[-1]), w_scale, bias,
                               smoothing)


def int8_weight_only_linear(x, wq, w_scale, bias=None, group_size=None):
    """W8A16: per-channel (w_scale [N]) or per-group (w_scale [N, groups]) weight scales.
    The CPU kernel's bf16/fp16 path rounds the activations to 16-bit fixed point per token
    first (see ops.int8_weight_only_linear): within the bf16/fp16 tolerance of this."""
    if group_size is None:
        w = dequantize(wq, w_scale, axis=0)
    else:
        w = dequantize(wq, w_scale, group_size=group_size)
    out = x.float() @ w.T
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def int8_weight_only_linear_packed(x, w_packed, w_sum, w_scale, bias=None, group_size=None):
    wq = int8_unpack_weight(w_packed, w_sum.shape[-1], x.shape[-1])
    return int8_weight_only_linear(x, wq, w_scale, bias, group_size)


# ---------------------------------------------------------------------------------------
# binary_gemm family: 1-bit and ternary weights
#
# Bit order: weight k of a row lives in byte k // 8, bit k % 8 (least significant first);
# bits past K are 0. Binary: bit 1 means +1 (w >= 0, so sign(0) = +1), bit 0 means -1.
# Ternary rows hold two such bit planes, [positive plane | negative plane], each
# ceil(K / 8) bytes: +1 sets the positive bit, -1 the negative bit, 0 neither (2 bits/weight).
# binary_linear and ternary_linear are float products x @ w^T: Inf or NaN in x gives what
# IEEE arithmetic gives (Inf * 0 = NaN for a zero ternary weight), and K = 0 gives the bias.
# ---------------------------------------------------------------------------------------
def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [N, K] -> uint8 [N, ceil(K/8)], LSB first, zero padding."""
    n, k = bits.shape
    padded = torch.nn.functional.pad(bits.to(torch.uint8), (0, (-k) % 8)).reshape(n, -(-k // 8), 8)
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=bits.device)
    return (padded * weights).sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, B] -> bool [N, k]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], packed.shape[1] * 8)[:, :k].bool()


def pack_binary(w: torch.Tensor) -> torch.Tensor:
    """Signs of a [N, K] tensor (>= 0 is +1) as uint8 [N, ceil(K/8)]."""
    return _pack_bits(w >= 0)


def unpack_binary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [N, ceil(K/8)] -> int8 [N, K] of +-1."""
    return torch.where(_unpack_bits(packed, k), 1, -1).to(torch.int8)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] in {-1, 0, 1} -> uint8 [N, 2 * ceil(K/8)] (positive plane, negative plane)."""
    return torch.cat([_pack_bits(q > 0), _pack_bits(q < 0)], dim=1)


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    half = packed.shape[1] // 2
    return (_unpack_bits(packed[:, :half], k).to(torch.int8) - _unpack_bits(packed[:, half:], k).to(torch.int8))


def binarize_weight(w: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """XNOR-Net: w ~ alpha * sign(w), alpha = mean |w| per output channel (or per group of
    the input dimension, the last group ragged), summed in double and rounded once to fp32.
    Returns (packed signs, alpha [N] or [N, groups]). The ops refuse NaN and Inf in w."""
    magnitudes = w.double().abs()
    if group_size is None:
        return pack_binary(w), magnitudes.mean(dim=1).float()
    k = w.shape[1]
    groups = -(-k // group_size)
    padded = torch.nn.functional.pad(magnitudes, (0, groups * group_size - k)).reshape(w.shape[0], groups, group_size)
    counts = (k - torch.arange(groups, dtype=torch.float64, device=w.device) * group_size).clamp(max=group_size)
    return pack_binary(w), (padded.sum(-1) / counts).float()


def ternarize_weight(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58: s = mean |w| (per output channel or per tensor; summed in double, rounded
    once to fp32), q = round(clamp(w / s, -1, 1)) with w / s in fp32 and ties to even (so
    +-0.5 give 0). Returns (packed planes, s [N] or [1]). A zero s (all-zero weights, or a
    mean below fp32's range) keeps q = 0. The ops refuse NaN and Inf in w."""
    magnitudes = w.double().abs()
    s = (magnitudes.mean(dim=1) if per_channel else magnitudes.mean().reshape(1)).float()
    return pack_ternary(ternary_codes(w, s.reshape(-1, 1) if per_channel else s)), s


def ternary_codes(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """int8 q = round(clamp(w / s, -1, 1)) (fp32 quotient, ties to even), 0 where s is not > 0;
    s broadcasts against w ([N, 1] or one element)."""
    wf = w.float()
    return torch.where(s > 0, torch.round((wf / s).clamp(-1, 1)), torch.zeros_like(wf)).to(torch.int8)


def _row_alpha(alpha: torch.Tensor, k: int, group_size: int | None) -> torch.Tensor:
    """alpha expanded to one value per weight: [N, K]."""
    if group_size is None:
        return alpha.reshape(-1, 1).expand(-1, k) if alpha.numel() != 1 else alpha.reshape(1, 1).expand(1, k)
    return alpha.repeat_interleave(group_size, dim=1)[:, :k]


def binary_linear(x, packed, alpha, bias=None, group_size=None):
    """x [..., K] float times binary weights: y = x @ (alpha * sign)^T + bias, fp32 accumulation."""
    k = x.shape[-1]
    w = unpack_binary(packed, k).float() * _row_alpha(alpha.float(), k, group_size)
    y = x.float() @ w.T
    return (y if bias is None else y + bias.float()).to(x.dtype)


def ternary_linear(x, packed, scale, bias=None):
    """x [..., K] float times ternary weights: y = x @ (scale * q)^T + bias, fp32 accumulation."""
    k = x.shape[-1]
    q = unpack_ternary(packed, k).float()
    w = q * (scale.float().reshape(-1, 1) if scale.numel() != 1 else scale.float().reshape(()))
    y = x.float() @ w.T
    return (y if bias is None else y + bias.float()).to(x.dtype)


def xnor_linear(x, packed, alpha, bias=None):
    """XNOR-Net: activations binarized per token (sign, scale mean |x|), weights binary;
    y = x_scale[m] * alpha[n] * (K - 2 * popcount(signs_x XOR signs_w)) + bias (exact integer
    part; the dot product of the two sign vectors equals K - 2 * disagreements)."""
    k = x.shape[-1]
    rows = _rows(x).float()
    x_scale = rows.abs().mean(dim=1) if k else rows.new_zeros(rows.shape[0])
    sx = torch.where(rows >= 0, 1, -1).to(torch.int64)
    sw = unpack_binary(packed, k).to(torch.int64)
    dot = (sx @ sw.T).float()  # = K - 2 * popcount(xor)
    y = dot * x_scale.reshape(-1, 1) * alpha.float().reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])


# ---------------------------------------------------------------------------------------
# compress family: gradient codecs with error feedback (see effgen_kernels.distributed)
#
# A flat fp32 view v = x + error is cut into blocks of `block_size` values (the last block
# may be short); each block sends fp32 words: one scale (int8) or two levels (sign). The
# error buffer keeps what the codec lost: error <- v - decompress(compress(v)).
# - int8: the symmetric per-block quantizer of quantize_per_group (scale = absmax / 127).
# - sign: one bit per value (v >= the block's mean, packed like pack_binary) and two fp32
#   levels per block, (low, high) = mean -/+ a spread; bit 1 decompresses to high, 0 to low.
# ---------------------------------------------------------------------------------------
def _blocks(v: torch.Tensor, block_size: int) -> torch.Tensor:
    n = v.numel()
    return torch.nn.functional.pad(v, (0, (-n) % block_size)).reshape(-1, block_size)


def _drop_non_finite_blocks(v: torch.Tensor, scales: torch.Tensor, block_size: int):
    """(kept, scales): whether each value's block is all finite, and the scales with NaN
    for the other blocks, which the codecs send as NaN (the result shows it, where a
    GradScaler sees it) and leave out of the residual (where it would stay for good)."""
    finite = _blocks(v, block_size).isfinite().all(dim=1)
    nan = torch.full_like(scales, float("nan"))
    per_block = finite.reshape((-1,) + (1,) * (scales.dim() - 1))  # scales [blocks] or levels [blocks, 2]
    return finite.repeat_interleave(block_size)[:v.numel()], torch.where(per_block, scales, nan)


def ef_compress_int8(x: torch.Tensor, error: torch.Tensor, block_size: int, estimate: bool = False):
    """Returns (q int8 [n], scales fp32 [blocks]); updates `error` in place. A block holding
    Inf or NaN gets a NaN scale, q = 0 and error = 0. With ``estimate`` (EF21: error holds
    minus the worker's estimate h) the error then loses x: (v - decompressed) - x = -(h +
    decompressed), rounded twice in that order (the `_out` op's flag)."""
    v = x.float() + error
    q, scales = quantize_per_group(torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).reshape(1, -1), block_size)
    kept, scales = _drop_non_finite_blocks(v, scales.reshape(-1), block_size)
    q = q.reshape(-1).masked_fill(~kept, 0)
    error.copy_(torch.where(kept, v - dequantize(q, scales, group_size=block_size), torch.zeros_like(v)))
    if estimate:
        error.sub_(x)
    return q, scales


SIGN_SCALE_CAP = 1.5  # kSignScaleCap in csrc/kernels/cpu/compress.h (why this scale: there)


def ef_compress_sign(x: torch.Tensor, error: torch.Tensor, block_size: int, estimate: bool = False):
    """Returns (packed bits uint8 [ceil(n / 8)], levels fp32 [2 * blocks]); updates `error`
    (``estimate``: then minus x, as in ef_compress_int8).

    Per block of v = x + error: mean m = sum(v) / count in float64, rounded to float32;
    d = v - m in float32; spread s = min(rms(d), 1.5 * mean |d|) in float64, rounded to
    float32; levels (low, high) = (m - s, m + s) in float32, stored as levels[2b], levels[2b
    + 1]; bit = v >= m (LSB first, like pack_binary); error = v - (bit ? high : low).

    Why an offset: a bare sign with one scale (this codec until session 36) decodes a block
    whose values share one sign (a ReLU layer's gradient rows often do) as one constant of
    that sign, and training a 4-layer MLP ended 9x above plain DDP's loss; signs about the
    mean keep both the block's mean and its spread (benchmarks/sign_codec_study.py).

    A block holding Inf or NaN gets NaN levels, bits 0 and error 0, as in ef_compress_int8.
    The kernels sum in another order: a double sum of a block's floats is exact unless they
    span more than about 20 binades (blocks of 512), so the mean and mean |d| do not depend on
    it; the squares' sum can differ in its last bit, which changes the float spread only when
    it lands on a rounding boundary (about one block in 10^8)."""
    v = x.float() + error
    n = v.numel()
    counts = torch.full((-(-n // block_size),), float(block_size), dtype=torch.float64, device=v.device)
    if n % block_size:
        counts[-1] = n % block_size
    mean = (_blocks(v.double(), block_size).sum(dim=1) / counts).float()
    value_mean = mean.repeat_interleave(block_size)[:n]
    above = v >= value_mean
    d = _blocks((v - value_mean).double(), block_size)
    rms = (d.square().sum(dim=1) / counts).sqrt()
    spread = torch.minimum(rms, SIGN_SCALE_CAP * (d.abs().sum(dim=1) / counts)).float()
    kept, levels = _drop_non_finite_blocks(v, torch.stack([mean - spread, mean + spread], dim=1), block_size)
    packed = pack_binary(torch.where(kept & above, 1.0, -1.0).reshape(1, -1)).reshape(-1)
    error.copy_(torch.where(kept, v - decompress_sign(packed, levels, n, block_size), torch.zeros_like(v)))
    if estimate:
        error.sub_(x)
    return packed, levels.reshape(-1)


def decompress_sign(packed: torch.Tensor, levels: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Bit i of packed selects levels[2 * (i // block_size) + bit]: high for 1, low for 0."""
    bits = unpack_binary(packed.reshape(1, -1), n).reshape(-1) > 0
    pairs = levels.reshape(-1, 2).repeat_interleave(block_size, dim=0)[:n]
    return torch.where(bits, pairs[:, 1], pairs[:, 0])


def decompress_sum_int8(q: torch.Tensor, scales: torch.Tensor, block_size: int) -> torch.Tensor:
    """Sum over the chunks of dequantized int8 rows: q [W, n], scales [W, blocks] -> fp32 [n],
    accumulated in row order 0, 1, ..., W-1."""
    total = torch.zeros(q.shape[1], device=q.device)
    for row in range(q.shape[0]):
        total = total + dequantize(q[row:row + 1], scales[row:row + 1], group_size=block_size).reshape(-1)
    return total


def decompress_sum_sign(packed: torch.Tensor, levels: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Sum over rows of decompressed sign chunks: packed [W, ceil(n/8)], levels [W, 2 * blocks]."""
    total = torch.zeros(n, device=packed.device)
    for row in range(packed.shape[0]):
        total = total + decompress_sign(packed[row], levels[row], n, block_size)
    return total


def compressed_allreduce(grads: list[torch.Tensor], worker_errors: list[torch.Tensor],
                         server_errors: list[torch.Tensor], codec: str, block_size: int,
                         shared: torch.Tensor | None = None) -> torch.Tensor:
    """The two-phase compressed all-reduce of effgen_kernels.distributed, simulated for all
    ranks in one process: grads are the ranks' padded 1-D buckets (length divisible by
    world * lcm(block_size, 8)); the error lists are updated in place. Returns the average
    every rank ends up with (fp32).

    With ``shared`` (G, fp32 like a padded bucket, updated in place) it is EF21: worker r's
    buffer holds minus its estimate h_r; it sends C(g_r - h_r) and adds what it sent to h_r
    (the codecs' ``estimate``); the server's buffer is EF21's H - G, so it
    does what the classic server does; every rank adds the decoded change to G and returns G
    (see below for blocks that held Inf / NaN)."""
    world, n = len(grads), grads[0].numel()
    chunk = n // world
    compress = ef_compress_int8 if codec == "int8" else ef_compress_sign

    def decompress(payload, scales, count):
        if codec == "int8":
            return decompress_sum_int8(payload.reshape(1, -1), scales.reshape(1, -1), block_size)
        return decompress_sum_sign(payload.reshape(1, -1), scales.reshape(1, -1), count, block_size)

    sent = [compress(g, e, block_size, shared is not None) for g, e in zip(grads, worker_errors, strict=True)]
    per_byte = 1 if codec == "int8" else 8  # values per payload element
    per_block = 1 if codec == "int8" else 2  # fp32 scales (int8) or levels (sign) per block
    blocks = chunk // block_size * per_block
    pieces = []
    for r in range(world):
        total = torch.zeros(chunk, device=grads[0].device)
        for payload, scales in sent:  # rank order
            total = total + decompress(payload[r * chunk // per_byte:(r + 1) * chunk // per_byte],
                                       scales[r * blocks:(r + 1) * blocks], chunk)
        pieces.append(compress(total / world, server_errors[r], block_size))
    payload = torch.cat([p for p, _ in pieces])
    scales = torch.cat([s for _, s in pieces])
    if shared is None:
        return decompress(payload, scales, n)
    average = shared.add_(decompress(payload, scales, n)).clone()
    # A block that held Inf / NaN (an fp16 step GradScaler skips) decodes to NaN on every
    # rank: there the estimates restart at zero (h_r = H = G = 0; the server's residual of a
    # non-finite block is already 0) instead of staying NaN.
    restart = ~torch.isfinite(shared)
    shared.masked_fill_(restart, 0.0)
    for error in worker_errors:
        error.masked_fill_(restart, 0.0)
    return average
