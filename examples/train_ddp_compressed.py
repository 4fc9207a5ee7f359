"""Data-parallel training with compressed gradient all-reduce, the standard way.

    torchrun --nproc_per_node 2 examples/train_ddp_compressed.py --codec int8 --steps 300
    torchrun --nproc_per_node 2 examples/train_ddp_compressed.py --codec int8 --steps 600 --resume
    torchrun --nproc_per_node 2 examples/train_ddp_compressed.py --codec sign --feedback ef21 --block-size 64

torchrun starts the workers (add --nnodes/--rdzv-endpoint for several machines; NCCL on
GPUs, gloo on CPUs). Each worker reads its own shard of fixed windows of the Python
standard library's source through a DistributedSampler and trains the example GPT under
DistributedDataParallel with effgen's compressed hook (int8 or 1-bit signs with error
feedback). Every --checkpoint-every steps rank 0 writes the model and optimizer, and every
rank its hook state (its error-feedback residuals are its own); --resume continues from
there (the residuals follow their parameters into whatever buckets DDP forms after the
restart; tests/test_distributed.py checks that a restarted run repeats an uninterrupted
one bit for bit). The optimizer is AdamW, under which the 1-bit codec keeps closer to plain
DDP with EF21 feedback and smaller blocks (the third line; benchmarks/RESULTS.md, session 38).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from effgen_kernels.distributed import CompressionState, compressed_allreduce_hook, shutdown
from effgen_kernels.gpt import GPT, GPTConfig, evaluate_perplexity, stdlib_source_bytes


class Windows(Dataset):
    """Non-overlapping (input, next-token target) windows of a byte stream."""

    def __init__(self, stream: torch.Tensor, length: int) -> None:
        self.stream, self.length = stream, length

    def __len__(self) -> int:
        return (self.stream.numel() - 1) // self.length

    def __getitem__(self, index: int):
        window = self.stream[index * self.length:(index + 1) * self.length + 1].long()
        return window[:-1], window[1:]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", choices=["int8", "sign", "none"], default="int8")
    parser.add_argument("--feedback", choices=["classic", "ef21"], default="classic",
                        help="the hook's error feedback (CompressionState's feedback)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="values per compression block (default: 256 for int8, 512 for sign)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="per worker")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("ddp-checkpoint"))
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args()


def save(args, step: int, model: nn.Module, optimizer, state: CompressionState | None) -> None:
    rank = dist.get_rank()
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   args.checkpoint_dir / "model.pt")
    if state is not None:
        torch.save(state.state_dict(), args.checkpoint_dir / f"hook_rank{rank}.pt")
    dist.barrier()  # nobody resumes from a half-written checkpoint


def main() -> None:
    args = parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    torch.manual_seed(0)
    model = GPT(GPTConfig(context=args.context, dim=args.dim, layers=args.layers, heads=4)).to(device)
    ddp = nn.parallel.DistributedDataParallel(model)
    state = None
    if args.codec != "none":
        state = CompressionState(codec=args.codec, block_size=args.block_size, feedback=args.feedback)
        ddp.register_comm_hook(state, compressed_allreduce_hook)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr)

    step = 0
    if args.resume:
        checkpoint = torch.load(args.checkpoint_dir / "model.pt", map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
        if state is not None:
            state.load_state_dict(torch.load(args.checkpoint_dir / f"hook_rank{rank}.pt"))
        if rank == 0:
            print(f"resumed at step {step}", flush=True)

    train, validation = stdlib_source_bytes()
    dataset = Windows(train, args.context)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    batches_per_epoch = len(loader)
    started = time.monotonic()
    while step < args.steps:
        epoch, skip = divmod(step, batches_per_epoch)
        sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every rank
        for index, (inputs, labels) in enumerate(loader):
            if index < skip:
                continue  # resuming mid-epoch: these batches were already seen
            logits = ddp(inputs.to(device)).logits
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(device).reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0 and (step % 20 == 0 or step == args.steps):
                sent = f", {state.last_step.bytes_sent / 2**20:.2f} MiB sent by the hook" if state else ""
                print(f"step {step}/{args.steps} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s{sent})",
                      flush=True)
            if step % args.checkpoint_every == 0 or step == args.steps:
                save(args, step, model, optimizer, state)
            if step == args.steps:
                break
    if rank == 0:
        ppl = evaluate_perplexity(model, validation, args.context, max_windows=64)
        print(f"validation perplexity {ppl:.3f} after {step} steps ({world} workers, codec {args.codec})", flush=True)
    shutdown()  # not dist.destroy_process_group(), which can hang on torch < 2.8


if __name__ == "__main__":
    main()
