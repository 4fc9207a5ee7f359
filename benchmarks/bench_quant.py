"""quant family: our fused kernels against PyTorch's own fake quant and an eager quantizer.

Run through `effgen bench --only quant` (or `python benchmarks/bench_quant.py`). Inputs are
larger than the last-level cache (64 MB on the CPU, 256 MB on a GPU), freshly random.
"""

from __future__ import annotations

import torch

import effgen_kernels as ek
from effgen_kernels import reference as ref
from effgen_kernels.bench import BenchContext, BenchResult

FAMILY = "quant"


def shapes_for(device: torch.device) -> tuple[int, int]:
    return (8192, 8192) if device.type == "cuda" else (4096, 4096)


def eager_quantize_per_token(x: torch.Tensor):
    """What a user writes without us: the reference, op by op in eager PyTorch."""
    return ref.quantize_per_token(x)


def run(ctx: BenchContext) -> list[BenchResult]:
    dtypes = [torch.float32, torch.bfloat16] if ctx.device.type == "cuda" else [torch.float32]
    results = [result for dtype in dtypes for result in run_dtype(ctx, dtype)]
    if ctx.device.type == "cpu" and not ctx.quick:
        results += run_cpu_isas(ctx)
    return results


def run_cpu_isas(ctx: BenchContext) -> list[BenchResult]:
    """The lower ISA paths of the two headline ops, for the record (the best one runs above)."""
    rows, cols = shapes_for(ctx.device)
    x = torch.randn(rows, cols)
    scale, zp = torch.rand(rows) * 0.05 + 0.01, torch.randint(-8, 8, (rows,), dtype=torch.int32)
    n = x.numel()
    results = []
    for isa in ek.ops.supported_cpu_isas()[:-1]:
        with ek.ops.use_cpu_isa(isa):
            results.append(ctx.measure(
                FAMILY, f"quantize_per_token [{isa}]", f"{rows}x{cols}", x.dtype,
                lambda: ek.ops.quantize_per_token(x), "eager reference", lambda: eager_quantize_per_token(x),
                bytes_moved=n * 4 + n + rows * 4))
            results.append(ctx.measure(
                FAMILY, f"fake_quantize_per_channel fwd [{isa}]", f"{rows}x{cols}", x.dtype,
                lambda: ek.ops.fake_quantize_per_channel(x, scale, zp, 0, -128, 127),
                "torch fake_quant", lambda: torch.fake_quantize_per_channel_affine(x, scale, zp, 0, -128, 127),
                bytes_moved=n * 4 * 2 + n))
    return results


def run_dtype(ctx: BenchContext, dtype: torch.dtype) -> list[BenchResult]:
    rows, cols = shapes_for(ctx.device)
    results = []
    x = torch.randn(rows, cols, device=ctx.device).to(dtype)
    n, elem = x.numel(), x.element_size()
    shape = f"{rows}x{cols}"
    scale = torch.rand(rows, device=ctx.device) * 0.05 + 0.01
    zp = torch.randint(-8, 8, (rows,), device=ctx.device, dtype=torch.int32)

    results.append(ctx.measure(
        FAMILY, "quantize_per_token", shape, dtype, lambda: ek.ops.quantize_per_token(x),
        "eager reference", lambda: eager_quantize_per_token(x), bytes_moved=n * elem + n + rows * 4))

    q, q_scale = ek.ops.quantize_per_token(x)
    results.append(ctx.measure(
        FAMILY, "dequantize (per token)", shape, dtype,
        lambda: ek.ops.dequantize(q, q_scale, out_dtype=dtype),
        "eager q*scale", lambda: (q.to(torch.float32) * q_scale[:, None]).to(dtype),
        bytes_moved=n + n * elem + rows * 4))

    results.append(ctx.measure(
        FAMILY, "fake_quantize_per_tensor fwd", shape, dtype,
        lambda: ek.ops.fake_quantize_per_tensor(x, 0.02, 3, -128, 127),
        "torch fake_quant", lambda: torch.fake_quantize_per_tensor_affine(x, 0.02, 3, -128, 127),
        bytes_moved=n * elem * 2 + n))

    results.append(ctx.measure(
        FAMILY, "fake_quantize_per_channel fwd", shape, dtype,
        lambda: ek.ops.fake_quantize_per_channel(x, scale, zp, 0, -128, 127),
        "torch fake_quant", lambda: torch.fake_quantize_per_channel_affine(x, scale, zp, 0, -128, 127),
        bytes_moved=n * elem * 2 + n))

    # Forward reads x, writes y and the mask; backward reads grad and mask, writes dx.
    results.append(ctx.measure(
        FAMILY, "fake_quantize_per_channel fwd+bwd", shape, dtype,
        *fwd_bwd_pair(x, lambda fn, t: fn(t, scale, zp, 0, -128, 127), ek.ops.fake_quantize_per_channel,
                      torch.fake_quantize_per_channel_affine),
        bytes_moved=(n * elem * 2 + n) + (n * elem * 2 + n)))

    # One QAT layer's call on a small activation: the kernels take microseconds, so this times
    # what a training step pays per fake-quant call (launches and the autograd round trip).
    small = torch.randn(64, 64, device=ctx.device).to(dtype)
    results.append(ctx.measure(
        FAMILY, "fake_quantize_per_tensor fwd+bwd (per-call cost)", "64x64", dtype,
        *fwd_bwd_pair(small, lambda fn, t: fn(t, 0.02, 3, -128, 127), ek.ops.fake_quantize_per_tensor,
                      torch.fake_quantize_per_tensor_affine),
        bytes_moved=small.numel() * (small.element_size() * 4 + 2)))
    return results


def fwd_bwd_pair(x: torch.Tensor, call, ours, peer):
    """(ours step, peer name, peer step): forward through call(fn, leaf), then backward, each
    on its own leaf copy of x with the same upstream gradient."""
    grad = torch.randn_like(x)

    def step_of(fn):
        leaf = x.clone().requires_grad_()

        def step():
            leaf.grad = None
            call(fn, leaf).backward(grad)
        return step

    return step_of(ours), "torch fake_quant", step_of(peer)


if __name__ == "__main__":
    from effgen_kernels.cli import main

    main(["bench", "--only", FAMILY])
