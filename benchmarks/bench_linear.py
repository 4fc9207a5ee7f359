"""int8_gemm family: Int8Linear (W8A8, quantization + GEMM + epilogue) and
Int8WeightOnlyLinear (W8A16) against fp32 / bf16 F.linear, fbgemm's dynamic int8 Linear and
raw torch._int_mm (which does no quantization or scaling).

Decode shapes (M <= 16) rotate through copies of the weights totalling more than 512 MB,
so they measure memory, not the last-level cache. The int8 arithmetic limit is measured at
the start of the run: the best of the int8 engines on a large square product.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import effgen_kernels as ek
from effgen_kernels.bench import BenchContext, BenchResult, Rotation, time_interleaved, with_env
from effgen_kernels.bench.peers import fbgemm_dynamic_linear, fbgemm_from_float, resident_blocks_peer
from effgen_kernels.cli import build_info, cuda_int8_kernels

FAMILY = "linear"
DECODE_M = 16
# Square shapes from the issue, the Llama-7B MLP shapes, and SmolLM2-135M's real layers
# (hidden 576, MLP 1536, 3 key/value heads of 64).
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (576, 576), (576, 1536), (1536, 576), (576, 192)]
QUICK_SHAPES = [(4096, 4096), (576, 1536)]
CPU_M, QUICK_CPU_M = [1, 8, 64, 256, 1024], [1, 8, 64]
GPU_SHAPES = [(8192, 8192), (4096, 11008), (11008, 4096)]
GPU_M = [1, 16, 512, 2048]
W8A16_GROUP = 128  # the per-group W8A16 layer measured beside the per-channel one
KERNEL_NAMES = {"mma": "mma.sync", "wgmma": "wgmma"}


def timed_cuda_kernels() -> list[str]:
    """Our CUDA int8 GEMMs this GPU runs, less those EFFGEN_BENCH_KERNELS (a comma list) leaves
    out: scripts/gpu_check.sh drops a kernel whose tests failed, so that it cannot take the
    rest of the run down with it."""
    kernels = cuda_int8_kernels(build_info())
    chosen = os.environ.get("EFFGEN_BENCH_KERNELS")
    return kernels if chosen is None else [k for k in kernels if k in chosen.split(",")]


def int8_peak_gops(ctx: BenchContext) -> float:
    """The machine's int8 GEMM limit: the best rate on a large square product among the int8
    engines at hand (torch._int_mm, fbgemm on the CPU, our Int8Linear), measured in one
    interleaved loop. Without VNNI, torch._int_mm on the CPU is a plain loop, so taking it
    alone would put every int8 kernel far above "100% of limit"."""
    device = ctx.device
    size = 8192 if device.type == "cuda" else 2048
    torch.manual_seed(0)
    linear = torch.nn.Linear(size, size, bias=False).to(device)
    x = torch.randn(size, size, device=device)
    xq, _ = ek.ops.quantize_per_token(x)
    wq_t = ek.ops.quantize_per_channel(linear.weight.detach(), 0)[0].t()
    ours = ek.nn.Int8Linear.from_float(linear)
    engines = {"torch._int_mm": lambda: torch._int_mm(xq, wq_t), "our Int8Linear": lambda: ours(x)}
    if device.type == "cpu":
        fbgemm = fbgemm_dynamic_linear(linear)
        engines["fbgemm dynamic int8"] = lambda: fbgemm(x)
    seconds = time_interleaved(engines, reps=3, warmup=1, device=device)
    rates = {name: 2 * size**3 / s / 1e9 for name, s in seconds.items()}
    best = max(rates, key=rates.get)
    ctx.progress(f"  int8 limit: {rates[best]:.0f} GOP/s ({best} on {size}^3; "
                 + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items()) + ")")
    return rates[best]


def make_peers(linear: torch.nn.Linear, rotate: bool) -> dict[str, Rotation]:
    """Every format of one layer, each rotating through more than 512 MB of its own bytes.
    SmoothQuant's W8A8 takes calibrated activation maxima: here positive random ones."""
    n, k = linear.weight.shape
    w, b = linear.weight.detach(), linear.bias.detach()
    absmax = torch.rand(k, generator=torch.Generator().manual_seed(1)) * 8 + 0.1
    formats = {
        "int8": Rotation(lambda: ek.nn.Int8Linear.from_float(linear), n * k, rotate=rotate),
        "int8 smoothquant": Rotation(lambda: ek.nn.Int8Linear.from_float(linear, activation_absmax=absmax), n * k,
                                     rotate=rotate),
        "w8a16": Rotation(lambda: ek.nn.Int8WeightOnlyLinear.from_float(linear), n * k, rotate=rotate),
        "w8a16 g128": Rotation(lambda: ek.nn.Int8WeightOnlyLinear.from_float(linear, group_size=W8A16_GROUP), n * k,
                               rotate=rotate),
        "bf16": Rotation(lambda: (w.bfloat16(), b.bfloat16()), 2 * n * k, rotate=rotate),
    }
    if w.device.type == "cpu":
        formats["fp32"] = Rotation(lambda: (w.clone(), b.clone()), 4 * n * k, rotate=rotate)
        formats["fbgemm"] = Rotation(lambda: fbgemm_dynamic_linear(linear), n * k, rotate=rotate)
    return formats


def run(ctx: BenchContext) -> list[BenchResult]:
    peak = int8_peak_gops(ctx)
    if ctx.device.type == "cuda":
        plan = [(k, n, m) for k, n in GPU_SHAPES[:1 if ctx.quick else None] for m in GPU_M]
    else:
        plan = [(k, n, m) for k, n in (QUICK_SHAPES if ctx.quick else SHAPES)
                for m in (QUICK_CPU_M if ctx.quick else CPU_M)]
    results = [result for k, n, m in plan for result in run_shape(ctx, m, k, n, peak)]
    if ctx.device.type == "cpu":
        shapes = QUICK_SHAPES if ctx.quick else SHAPES[:2]
        results += [result for k, n in shapes for result in run_conversion(ctx, k, n)]
    return results


def run_conversion(ctx: BenchContext, k: int, n: int) -> list[BenchResult]:
    """What quantize_ costs a layer on the CPU: Int8Linear.from_float (quantize per channel,
    pack into the kernel's blocks) against fbgemm's conversion (quantize, prepack)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n)
    linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    return ctx.measure_peers(FAMILY, "Int8Linear.from_float (conversion)", f"{k}x{n}", torch.float32,
                             lambda: ek.nn.Int8Linear.from_float(linear),
                             {"fbgemm from_float": lambda: fbgemm_from_float(linear)},
                             bytes_moved=4 * n * k + n * k, reps=max(7, ctx.reps // 2))


def run_shape(ctx: BenchContext, m: int, k: int, n: int, peak: float) -> list[BenchResult]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n).to(ctx.device)
    rot = make_peers(linear, rotate=m <= DECODE_M)
    x = torch.randn(m, k, device=ctx.device)
    x_bf16 = x.bfloat16()
    # Int8Linear's input: a bf16 model's activations on a GPU (like the bf16 peer there),
    # fp32 on the CPU (the fp32 and fbgemm peers' input).
    x_int8 = x_bf16 if ctx.device.type == "cuda" else x
    shape = f"{m}x{k}x{n}"

    def int8_linear():
        return rot["int8"].next()(x_int8)

    # Fewer repetitions for products that take long on this device.
    rate = 1e14 if ctx.device.type == "cuda" else 1e9
    reps = max(3, min(ctx.reps, int(2 * rate // (2 * m * k * n) + 3)))
    peers = {"bf16 F.linear": lambda: F.linear(x_bf16, *rot["bf16"].next())}
    if "fp32" in rot:
        peers["fp32 F.linear"] = lambda: F.linear(x, *rot["fp32"].next())
    if "fbgemm" in rot:
        peers["fbgemm dynamic int8"] = lambda: rot["fbgemm"].next()(x)
    if m > 16:  # torch._int_mm needs M > 16; no rotation at these sizes
        xq, _ = ek.ops.quantize_per_token(x)
        wq_t = ek.ops.quantize_per_channel(linear.weight.detach(), 0)[0].t()
        peers["torch._int_mm (raw)"] = lambda: torch._int_mm(xq, wq_t)
    if m > 16 and ctx.device.type == "cuda":
        # Int8Linear forced onto each of our own tensor-core GEMMs (the default runs wgmma where
        # its tiles fill the GPU, else cuBLAS's int32 sums through our epilogue), for the A/B
        for kernel in timed_cuda_kernels():
            peers[f"Int8Linear, our {KERNEL_NAMES[kernel]}"] = with_env("EFFGEN_CUDA_INT8_GEMM", kernel, int8_linear)
    weight_bytes = n * k
    # Every rotated copy is used once before timing (first use costs extra for every format).
    copies = max(len(r) for r in rot.values())
    warmup, graph_calls = (copies + 1, copies) if m <= DECODE_M else (2, 1)
    element = x_int8.element_size()
    results = ctx.measure_peers(FAMILY, "Int8Linear (W8A8 dynamic)", shape, x_int8.dtype,
                                int8_linear, peers,
                                bytes_moved=weight_bytes + m * k * element + m * n * element, ops=2 * m * k * n,
                                peak_gops=peak, reps=reps, warmup=warmup, graph_calls=graph_calls)
    if m <= DECODE_M:
        # SmoothQuant's factors ride in the quantization pass: what do they cost a decode call?
        def smoothquant():
            return rot["int8 smoothquant"].next()(x_int8)

        results += ctx.measure_peers(FAMILY, "Int8Linear (W8A8 + SmoothQuant)", shape, x_int8.dtype, smoothquant,
                                     {"Int8Linear, no smoothing": int8_linear},
                                     bytes_moved=weight_bytes + 4 * k + m * k * element + m * n * element,
                                     ops=2 * m * k * n, peak_gops=peak, reps=reps, warmup=warmup,
                                     graph_calls=graph_calls)
        for name, layers in [("Int8WeightOnlyLinear (W8A16)", "w8a16"),
                             (f"Int8WeightOnlyLinear (W8A16, group {W8A16_GROUP})", "w8a16 g128")]:
            def w8a16(layers=layers):
                return rot[layers].next()(x_bf16)

            w8a16_peers = {"bf16 F.linear": peers["bf16 F.linear"], **resident_blocks_peer(ctx.device, "W8A16", w8a16)}
            results += ctx.measure_peers(FAMILY, name, shape, torch.bfloat16, w8a16, w8a16_peers,
                                         bytes_moved=weight_bytes + m * k * 2 + m * n * 2, reps=reps, warmup=warmup,
                                         graph_calls=graph_calls)
    elif "fp32" in rot:
        # An fp32 or bf16 model's batches (the demo's prefill): fixed point, or torch's GEMM over
        # blocks of dequantized weights, against the float layer of x's dtype; per channel and
        # per group.
        for x_batch, dtype_name in [(x, "fp32"), (x_bf16, "bf16")]:
            peer = f"{dtype_name} F.linear"
            for name, layers in [(f"Int8WeightOnlyLinear (W8A16, {dtype_name} x)", "w8a16"),
                                 (f"Int8WeightOnlyLinear (W8A16, group {W8A16_GROUP}, {dtype_name} x)",
                                  "w8a16 g128")]:
                def w8a16_batch(layers=layers, x_batch=x_batch):
                    return rot[layers].next()(x_batch)

                element = x_batch.element_size()
                results += ctx.measure_peers(FAMILY, name, shape, x_batch.dtype, w8a16_batch, {peer: peers[peer]},
                                             bytes_moved=weight_bytes + m * k * element + m * n * element, reps=reps,
                                             warmup=warmup, graph_calls=graph_calls)
    return results


if __name__ == "__main__":
    from effgen_kernels.cli import main

    main(["bench", "--only", FAMILY])
