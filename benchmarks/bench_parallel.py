"""parallel family: a tensor-parallel transformer's training step with the int8 activation
all-reduce in its row-parallel layers against the fp32 all-reduce, in the same run, and
the activation bytes each rank sends per forward pass. Two gloo workers on loopback (the
machine's 2 cores), a 2-layer GPT (dim 1024, 256 tokens), median over interleaved steps.
Loopback is fast and the step is compute-bound here: the bytes are what a slow link pays."""

from __future__ import annotations

import os
import tempfile

import torch

from effgen_kernels.bench import BenchContext, BenchResult
from effgen_kernels.bench.ddp_worker import run_workers, tp_step_worker

FAMILY = "parallel"
DIM, TOKENS = 1024, 256


def run(ctx: BenchContext) -> list[BenchResult]:
    if ctx.device.type != "cpu":
        ctx.progress("  parallel: runs on gloo (CPU) only so far; skipped")
        return []
    steps = 5 if ctx.quick else 15
    with tempfile.TemporaryDirectory() as out:
        run_workers(tp_step_worker, 2, steps, out, DIM, TOKENS, what="tensor-parallel benchmark worker")
        measured = torch.load(os.path.join(out, "tp.pt"))
    median, sent = measured["median_s"], measured["bytes"]
    ctx.progress(f"  TP=2 activations sent per rank per forward: int8 {sent['int8'] / 1e6:.2f} MB, fp32 "
                 f"{sent['fp32'] / 1e6:.2f} MB ({sent['int8'] / sent['fp32']:.3f}x)")
    result = BenchResult(FAMILY, "TP=2 GPT step, int8 activation all-reduce", f"dim {DIM}, {TOKENS} tokens",
                         "float32", median["int8"] * 1e3, "fp32 activation all-reduce", median["fp32"] * 1e3,
                         sent["int8"], ctx.limit_gbps)
    ctx.progress(f"  {result.op}: {result.ours_ms:.1f} ms vs {result.peer_ms:.1f} ms (x{result.speedup:.2f})")
    return [result]


if __name__ == "__main__":
    from effgen_kernels.cli import main

    main(["bench", "--only", FAMILY])
