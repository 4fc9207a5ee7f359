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
  x's dtype.
- ``int8_weight_only_linear``: ``x @ (wq * w_scale)^T + bias`` accumulated in fp32 (the
  kernels sum in a different order: compare with a tolerance), output in x's dtype.
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
    "int8_weight_only_linear",
]

QMAX_INT8 = 127


def _symmetric(x: torch.Tensor, absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x with scale = absmax/127 broadcast against it; scale 0 where absmax is 0."""
    scale = absmax / QMAX_INT8
    inv_scale = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(x.float() * inv_scale).clamp(-QMAX_INT8, QMAX_INT8).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim: q has x's shape, scale has shape x.shape[:-1]."""
    absmax = x.float().abs().amax(dim=-1, keepdim=True) if x.shape[-1] > 0 else x.new_zeros(
        (*x.shape[:-1], 1), dtype=torch.float32)
    q, scale = _symmetric(x, absmax)
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
    q, scale = _symmetric(padded, absmax)
    return q.reshape(*x.shape[:-1], groups * group_size)[..., :k], scale.squeeze(-1)


def quantize_per_channel(w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per index of ``axis`` (absmax over every other dim)."""
    axis = axis % w.dim()
    other = [d for d in range(w.dim()) if d != axis]
    if w.numel() == 0:
        absmax = torch.zeros([w.shape[d] if d == axis else 1 for d in range(w.dim())])
    elif other:
        absmax = w.float().abs().amax(dim=other, keepdim=True)
    else:  # 1-D: every element is its own channel (amax over no dims would reduce all)
        absmax = w.float().abs()
    q, scale = _symmetric(w, absmax)
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
    """PyTorch's fake-quant arithmetic with scale/zero_point already broadcast to x (float32)."""
    inv_scale = 1.0 / scale
    qval = zero_point + torch.round(x.float() * inv_scale)
    mask = (qval >= quant_min) & (qval <= quant_max)
    y = (qval.clamp(quant_min, quant_max) - zero_point) * scale
    return y.to(x.dtype), mask


def fake_quantize_per_tensor(x, scale: float, zero_point: int, quant_min: int, quant_max: int):
    """Returns (y, mask); y equals torch.fake_quantize_per_tensor_affine bit for bit."""
    scale_t = torch.tensor(scale, dtype=torch.float32)
    zp_t = torch.tensor(float(zero_point), dtype=torch.float32)
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
    return t.reshape(-1, t.shape[-1])


def int8_linear(xq, x_scale, wq, w_scale, bias=None, out_dtype=torch.float32):
    """W8A8 GEMM with the fused epilogue; x_scale per token (x.shape[:-1]) or per tensor."""
    acc = (_rows(xq).to(torch.int64) @ wq.to(torch.int64).T).float()
    xs = x_scale.reshape(()) if x_scale.numel() == 1 else x_scale.reshape(-1, 1)
    ws = w_scale.reshape(()) if w_scale.numel() == 1 else w_scale.reshape(1, -1)
    out = acc * xs * ws
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype).reshape(*xq.shape[:-1], wq.shape[0])


def int8_dynamic_linear(x, wq, w_scale, bias=None):
    q, scale = quantize_per_token(x)
    return int8_linear(q, scale, wq, w_scale, bias, out_dtype=x.dtype)


def int8_weight_only_linear(x, wq, w_scale, bias=None, group_size=None):
    """W8A16: per-channel (w_scale [N]) or per-group (w_scale [N, groups]) weight scales."""
    if group_size is None:
        w = dequantize(wq, w_scale, axis=0)
    else:
        w = dequantize(wq, w_scale, group_size=group_size)
    out = x.float() @ w.T
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
