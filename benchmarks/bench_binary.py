"""binary_gemm family: BinaryLinear (1-bit weights), TernaryLinear (2-bit) and the XNOR
mode against fp32 / bf16 F.linear, fbgemm's dynamic int8 Linear and our Int8WeightOnlyLinear.

Decode shapes (M <= 16) rotate every format through more than 512 MB of its own bytes, so
even 1-bit weights are read from memory, not from the last-level cache. Throughput is
reported as weight bytes per second against the memory bandwidth measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import effgen_kernels as ek
from effgen_kernels.bench import BenchContext, BenchResult, Rotation
from effgen_kernels.bench.peers import fbgemm_dynamic_linear, fbgemm_from_float, resident_blocks_peer

FAMILY = "binary"
DECODE_M = 16
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (576, 1536), (1536, 576)]
QUICK_SHAPES = [(4096, 4096), (576, 1536)]  # a large layer and one of SmolLM2's
CPU_M, QUICK_M = [1, 8, 64, 256, 1024], [1, 64]
GPU_SHAPES, GPU_M = [(8192, 8192)], [1, 16, 512]
GROUP_SIZE = 128  # the per-group BinaryLinear rows (CPU)


def run(ctx: BenchContext) -> list[BenchResult]:
    if ctx.device.type == "cuda":
        plan = [(k, n, m) for k, n in GPU_SHAPES for m in GPU_M]
    else:
        shapes, ms = (QUICK_SHAPES, QUICK_M) if ctx.quick else (SHAPES, CPU_M)
        plan = [(k, n, m) for k, n in shapes for m in ms]
    results = [result for k, n, m in plan for result in run_shape(ctx, m, k, n)]
    if ctx.device.type == "cpu":
        shapes = QUICK_SHAPES if ctx.quick else SHAPES[:2]
        results += [result for k, n in shapes for result in run_conversion(ctx, k, n)]
    return results


def run_conversion(ctx: BenchContext, k: int, n: int) -> list[BenchResult]:
    """What quantize_ costs a layer on the CPU: BinaryLinear / TernaryLinear.from_float
    (scales, packed bits, lookup-table tiles) against fbgemm's int8 conversion (quantize,
    prepack), the conversion a user would otherwise run to shrink the layer."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n)
    linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    peers = {"fbgemm from_float": lambda: fbgemm_from_float(linear)}
    reps = max(7, ctx.reps // 2)
    return [result for name, layer in [("BinaryLinear", ek.nn.BinaryLinear), ("TernaryLinear", ek.nn.TernaryLinear)]
            for result in ctx.measure_peers(FAMILY, f"{name}.from_float (conversion)", f"{k}x{n}", torch.float32,
                                            lambda layer=layer: layer.from_float(linear), peers,
                                            bytes_moved=4 * n * k, reps=reps)]


def run_shape(ctx: BenchContext, m: int, k: int, n: int) -> list[BenchResult]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n).to(ctx.device)
    rotate = m <= DECODE_M
    w, b = linear.weight.detach(), linear.bias.detach()
    binary = Rotation(lambda: ek.nn.BinaryLinear.from_float(linear), n * k // 8, rotate=rotate)
    ternary = Rotation(lambda: ek.nn.TernaryLinear.from_float(linear), n * k // 4, rotate=rotate)
    xnor = Rotation(lambda: ek.nn.BinaryLinear.from_float(linear, binary_activations=True), n * k // 8, rotate=rotate)
    bf16 = Rotation(lambda: (w.bfloat16(), b.bfloat16()), 2 * n * k, rotate=rotate)
    peers: dict[str, object] = {}
    x = torch.randn(m, k, device=ctx.device)
    x_bf16 = x.bfloat16()
    peers["bf16 F.linear"] = lambda: F.linear(x_bf16, *bf16.next())
    if ctx.device.type == "cpu":
        fp32 = Rotation(lambda: (w.clone(), b.clone()), 4 * n * k, rotate=rotate)
        fbgemm = Rotation(lambda: fbgemm_dynamic_linear(linear), n * k, rotate=rotate)
        w8a16 = Rotation(lambda: ek.nn.Int8WeightOnlyLinear.from_float(linear), n * k, rotate=rotate)
        peers["fp32 F.linear"] = lambda: F.linear(x, *fp32.next())
        peers["fbgemm dynamic int8"] = lambda: fbgemm.next()(x)
        peers["ours W8A16 (bf16 x)"] = lambda: w8a16.next()(x_bf16)
    # On a GPU the activations are bf16 (what a CUDA model runs, and the tensor-core path);
    # on the CPU fp32, against fp32 and bf16 peers.
    x_ours, x_bytes = (x_bf16, 2) if ctx.device.type == "cuda" else (x, 4)
    dtype = x_ours.dtype
    float_peer = "fp32 F.linear" if "fp32 F.linear" in peers else "bf16 F.linear"
    shape = f"{m}x{k}x{n}"
    reps = max(3, min(ctx.reps, int((2e14 if ctx.device.type == "cuda" else 2e9) // (2 * m * k * n) + 3)))
    # Every rotated copy is used once before timing (first use costs extra for every format).
    copies = max(len(binary), len(bf16), len(fp32) if ctx.device.type == "cpu" else 0)
    warmup, graph_calls = (copies + 1, copies) if rotate else (2, 1)
    timing = {"reps": reps, "warmup": warmup, "graph_calls": graph_calls}
    def binary_call():
        return binary.next()(x_ours)

    def ternary_call():
        return ternary.next()(x_ours)

    def grid_peer(layer, call):  # the few-row kernels' other grid, at decode sizes
        return resident_blocks_peer(ctx.device, layer, call) if rotate else {}

    results = ctx.measure_peers(FAMILY, "BinaryLinear (1-bit weights)", shape, dtype, binary_call,
                                {**peers, **grid_peer("BinaryLinear", binary_call)},
                                bytes_moved=n * k // 8 + m * k * x_bytes + m * n * x_bytes, **timing)
    results += ctx.measure_peers(FAMILY, "TernaryLinear (2-bit weights)", shape, dtype, ternary_call,
                                 {float_peer: peers[float_peer],
                                  **grid_peer("TernaryLinear", ternary_call)},
                                 bytes_moved=n * k // 4 + m * k * x_bytes + m * n * x_bytes, **timing)
    if ctx.device.type == "cpu":  # per-group alphas: the tables at one row, the int8 GEMM from 2 with AMX
        grouped = Rotation(lambda: ek.nn.BinaryLinear.from_float(linear, group_size=GROUP_SIZE),
                           n * k // 8 + 4 * n * (k // GROUP_SIZE), rotate=rotate)
        results += ctx.measure_peers(FAMILY, f"BinaryLinear (1-bit, alpha per {GROUP_SIZE} inputs)", shape, dtype,
                                     lambda: grouped.next()(x_ours),
                                     {name: peers[name] for name in ("fp32 F.linear", "fbgemm dynamic int8")},
                                     bytes_moved=n * k // 8 + 4 * n * (k // GROUP_SIZE) + m * k * x_bytes
                                     + m * n * x_bytes, **timing)
    if m <= DECODE_M:
        results += ctx.measure_peers(FAMILY, "BinaryLinear XNOR (1-bit x and w)", shape, dtype,
                                     lambda: xnor.next()(x_ours), {"bf16 F.linear": peers["bf16 F.linear"]},
                                     bytes_moved=n * k // 8 + m * k * x_bytes + m * n * x_bytes,
                                     **timing)
    return results


if __name__ == "__main__":
    from effgen_kernels.cli import main

    main(["bench", "--only", FAMILY])
