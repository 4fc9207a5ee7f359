"""Hybrid data x tensor parallel training of a small GPT on real text, with compressed
gradient all-reduce on the data-parallel groups.

    torchrun --nproc_per_node 4 examples/hybrid_train.py --dp 2 --tp 2 --codec int8

Ranks (r, r+1) form a tensor-parallel pair: attention heads and MLP columns are split
between them (effgen_kernels.distributed.parallelize). Ranks with the same tp index form a
data-parallel group: DDP on that group with effgen's compressed hook. Each dp rank reads
its own windows of the Python standard library's source. Rank 0 prints progress, the
validation perplexity, and the bytes the hook sent per step; the full (unsharded) model is
saved with --save.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from effgen_kernels.distributed import (
    CompressionState,
    compressed_allreduce_hook,
    full_state_dict,
    init_hybrid,
    parallelize,
    shutdown,
    sync_replicated_grads,
)
from effgen_kernels.gpt import GPT, GPTConfig, evaluate_perplexity, lm_batch, stdlib_source_bytes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dp", type=int, default=2)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--codec", choices=["int8", "sign", "none"], default="int8")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8, help="per data-parallel rank")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--save", type=str, default=None, help="write the full model's state dict here (rank 0)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    mesh = init_hybrid(args.dp, args.tp, device.type)
    dp_rank = mesh.get_local_rank("dp")

    torch.manual_seed(0)  # the same initial model on every rank before it is cut
    model = GPT(GPTConfig(context=args.context, dim=args.dim, layers=args.layers, heads=4)).to(device)
    parallelize(model, mesh)
    ddp = nn.parallel.DistributedDataParallel(model, process_group=mesh.get_group("dp"))
    state = None
    if args.codec != "none":
        state = CompressionState(process_group=mesh.get_group("dp"), codec=args.codec)
        ddp.register_comm_hook(state, compressed_allreduce_hook)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr)
    train, validation = stdlib_source_bytes()

    started = time.monotonic()
    for step in range(args.steps):
        # Every dp rank draws a different batch (seeded by its rank); tp partners share it.
        inputs, labels = lm_batch(train, step, args.batch_size, args.context, seed=1000 + dp_rank)
        logits = ddp(inputs.to(device)).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(device).reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if state is not None:
            sync_replicated_grads(model, mesh)
        optimizer.step()
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            sent = f", hook sent {state.last_step.bytes_sent / 2**20:.2f} MiB" if state else ""
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s{sent})",
                  flush=True)

    ppl = evaluate_perplexity(model, validation, args.context, max_windows=64)
    full = full_state_dict(model)  # collective: every rank takes part
    if rank == 0:
        print(f"validation perplexity {ppl:.3f} after {args.steps} steps (dp={args.dp}, tp={args.tp}, "
              f"codec={args.codec})", flush=True)
        if args.save:
            torch.save(full, args.save)
    shutdown()  # not dist.destroy_process_group(), which can hang on torch < 2.8


if __name__ == "__main__":
    main()
