"""compress family: DDP step time and bytes on the wire per worker with our compressed
all-reduce hooks (int8, sign, and sign with EF21 feedback) against plain all-reduce,
PyTorch's fp16_compress_hook and PowerSGD (rank 4, one bucket: with several it aborts gloo);
EF21's extra passes also against the sign hook's classic feedback. Two gloo workers on loopback
(this machine's 2 cores), a 4M-parameter MLP, median step time over the timed steps.
Loopback is fast, so these times show the codecs' cost; what compression buys on a real
link is measured by benchmarks/netns_allreduce.py (rate-limited veth links, root)."""

from __future__ import annotations

import os
import tempfile

import torch

from effgen_kernels.bench import BenchContext, BenchResult
from effgen_kernels.bench.ddp_worker import HIDDEN, ddp_step_worker, run_workers

FAMILY = "allreduce"
PEER_NAMES = {"plain": "plain all-reduce", "fp16": "fp16", "powersgd": "PowerSGD rank 4",
              "sign": "sign hook, classic feedback"}
# Our hooks and the peers each is compared with.
OURS = {"int8": ("plain", "fp16", "powersgd"), "sign": ("plain", "fp16", "powersgd"),
        "sign-ef21": ("plain", "powersgd", "sign")}


def _run(hook: str, steps: int, out: str) -> dict:
    run_workers(ddp_step_worker, 2, hook, steps, out, timeout=300, what=f"allreduce benchmark worker for {hook}")
    return torch.load(os.path.join(out, f"{hook}.pt"), weights_only=False)


def run(ctx: BenchContext) -> list[BenchResult]:
    if ctx.device.type != "cpu":
        ctx.progress("  allreduce: the NCCL variant of this benchmark is not written yet; skipped")
        return []
    steps = 12 if ctx.quick else 30
    params = 4 * (HIDDEN * HIDDEN + HIDDEN)
    fp32_ring_bytes = 2 * (2 - 1) * params * 4 // 2
    with tempfile.TemporaryDirectory() as out:
        measured = {hook: _run(hook, steps, out) for hook in ("plain", "fp16", "powersgd", *OURS)}
    results = []
    for ours, peers in OURS.items():
        for peer in peers:
            result = BenchResult(FAMILY, f"DDP step, {ours} hook", f"2 workers, {params / 1e6:.1f}M params", "float32",
                                 measured[ours]["median_s"] * 1e3, PEER_NAMES[peer],
                                 measured[peer]["median_s"] * 1e3, measured[ours]["bytes_sent"], ctx.limit_gbps)
            results.append(result)
        ctx.progress(f"  {ours}: {measured[ours]['bytes_sent'] / 1e6:.2f} MB sent per worker per step, "
                     f"{measured[ours]['bytes_sent'] / fp32_ring_bytes:.3f}x of the fp32 ring all-reduce")
    return results


if __name__ == "__main__":
    from effgen_kernels.cli import main

    main(["bench", "--only", FAMILY])
