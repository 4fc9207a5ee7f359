"""Worker functions for tests/test_distributed.py: each runs in its own process on gloo."""

import datetime
import os
import time

import torch
import torch.distributed as dist
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from effgen_kernels.bench.ddp_worker import finish_worker
from effgen_kernels.distributed import CompressionState, compressed_allreduce, compressed_allreduce_hook


def init(rank: int, world: int, port: int, timeout_s: float = 60.0) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))


def fails(rank, world, port, out):
    raise ValueError(f"rank {rank} fails on purpose")


def hangs(rank, world, port, out):
    time.sleep(600)


OVERFLOW_INDEX = 123


def step_grads(rank: int, step: int, n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(1000 * step + rank))


def allreduce_steps(rank, world, port, out, codec, n, steps, block, overflow_step=None, sizes=None,
                    dtype=torch.float32, part_numel=1 << 22, feedback="classic", warmup_steps=0, device="cpu",
                    min_compress_numel=0):
    """Averages step_grads (cast to dtype, on ``device``) for several steps; with ``sizes``,
    the tensor is a bucket of parameters of those sizes (keys 0, 1, ...)."""
    init(rank, world, port)
    state = CompressionState(codec=codec, block_size=block, warmup_steps=warmup_steps,
                             min_compress_numel=min_compress_numel, part_numel=part_numel, feedback=feedback)
    layout = None if sizes is None else tuple((i, sum(sizes[:i]), size) for i, size in enumerate(sizes))
    results = []
    for step in range(steps):
        grads = step_grads(rank, step, n).to(dtype).to(device)
        if step == overflow_step and rank == 0:  # what an fp16 step that overflows hands the hook
            grads[OVERFLOW_INDEX] = float("inf")
        results.append(compressed_allreduce(state, grads, 0, layout).wait().cpu().clone())
        state._end_step()
    torch.save({"results": results, "traffic": state.last_step}, os.path.join(out, f"{rank}.pt"))
    del state
    finish_worker()


def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


LR = 0.1


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def train_ddp(rank, world, port, out, codec, steps, resume_at=None, bucket_cap_mb=25.0, part_numel=1 << 22,
              feedback="classic"):
    """Full-batch-per-rank SGD on digits; codec None is plain DDP. With resume_at, the run
    checkpoints there, rebuilds everything from the checkpoint, and continues."""
    init(rank, world, port)
    x, y = digits_data()
    shard = torch.arange(rank, 1600, world)  # data sharded by rank
    x, y = x[shard], y[shard]

    def build():
        model = torch.nn.parallel.DistributedDataParallel(make_model(), bucket_cap_mb=bucket_cap_mb)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        state = None
        if codec == "powersgd":  # PyTorch's PowerSGD, rank 4: the peer (one bucket here)
            model.register_comm_hook(powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=4,
                                                                 start_powerSGD_iter=2), powerSGD_hook.powerSGD_hook)
        elif codec is not None:
            state = CompressionState(codec=codec, warmup_steps=2, part_numel=part_numel, feedback=feedback)
            model.register_comm_hook(state, compressed_allreduce_hook)
        return model, opt, state

    model, opt, state = build()
    losses = []
    for step in range(steps):
        if step == resume_at:
            checkpoint = {"model": model.state_dict(), "opt": opt.state_dict(),
                          "hook": state.state_dict() if state else None}
            model, opt, state = build()
            model.load_state_dict(checkpoint["model"])
            opt.load_state_dict(checkpoint["opt"])
            if state is not None:
                state.load_state_dict(checkpoint["hook"])
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = [p.detach().clone() for p in model.parameters()]
    traffic = state.last_step if state else None
    torch.save({"losses": losses, "params": params, "traffic": traffic}, os.path.join(out, f"{rank}.pt"))
    del model, opt, state
    finish_worker()


def missing_peer(rank, world, port, out):
    """Rank 1 leaves at once; on rank 0 both the compressed all-reduce and the creation of a
    state's own group must fail within the timeout, not hang."""
    init(rank, world, port, timeout_s=5.0)
    if rank == 1:
        os._exit(0)
    messages = []
    for make_state in (lambda: CompressionState(dist.group.WORLD, codec="int8", warmup_steps=0, min_compress_numel=0),
                       lambda: CompressionState(codec="int8")):
        try:
            compressed_allreduce(make_state(), torch.randn(10000), 0).wait()
            messages.append("no error")
        except Exception as error:  # what the user sees
            messages.append(f"{type(error).__name__}: {error}")
    with open(os.path.join(out, "0.txt"), "w") as f:
        f.write("\n".join(messages))
    os._exit(0)


def distill_ddp(rank, world, port, out, steps):
    """A Distiller whose student is DDP-wrapped with the int8 hook; accumulation of two
    micro-batches exercises no_sync. Each rank distills on its own batches."""
    from effgen_kernels.distill import DistillationLoss, Distiller
    from effgen_kernels.gpt import GPT, GPTConfig, lm_batch, stdlib_source_bytes

    init(rank, world, port)
    text = stdlib_source_bytes(max_bytes=100_000)[0]
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(context=32, dim=32, layers=2, heads=2))
    torch.manual_seed(1)
    student = torch.nn.parallel.DistributedDataParallel(GPT(GPTConfig(context=32, dim=16, layers=1, heads=2)))
    state = CompressionState(codec="int8", warmup_steps=1, min_compress_numel=0)
    student.register_comm_hook(state, compressed_allreduce_hook)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    distiller = Distiller(teacher, student, DistillationLoss(2.0, 0.5), opt, grad_accum_steps=2, progress=False)
    history = distiller.fit(lambda i: lm_batch(text, i, 4, 32, seed=rank), steps)
    params = [p.detach().clone() for p in student.module.parameters()]
    torch.save({"losses": [h["loss"] for h in history], "params": params, "sent": state.last_step.bytes_sent},
               os.path.join(out, f"{rank}.pt"))
    del student, distiller, state
    finish_worker()


class TwoBranch(torch.nn.Module):
    """The digits MLP with a branch that only some steps use (for find_unused_parameters)."""

    def __init__(self):
        super().__init__()
        self.body, self.spare = make_model(), torch.nn.Linear(64, 10)

    def forward(self, x, use_spare=False):
        return self.body(x) + (self.spare(x) if use_spare else 0)


def ddp_variant(rank, world, port, out, codec, variant, steps, feedback="classic"):
    """Digits training under one DDP setting: "bf16" / "fp16" gradients, "no_sync"
    accumulation of two micro-batches, "find_unused" parameters, "static_graph",
    "bucket_view" (gradients as views of DDP's buckets, which the hook averages in place),
    "compiled" (DDP over a torch.compile'd module: the reducer, hook included, runs as in
    eager; torch.compile of the DDP model itself compiled no graph in torch 2.14, breaking in
    DDP's forward and running the module eagerly)."""
    init(rank, world, port)
    x, y = digits_data()
    shard = torch.arange(rank, 1600, world)
    x, y = x[shard], y[shard]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant, torch.float32)
    module = TwoBranch() if variant == "find_unused" else make_model()
    module = module.to(dtype)
    compiler = CompileCounterWithBackend("inductor")  # counts the graphs Dynamo hands inductor
    if variant == "compiled":
        module = torch.compile(module, backend=compiler)
    model = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=variant == "find_unused",
                                                      static_graph=variant == "static_graph",
                                                      gradient_as_bucket_view=variant == "bucket_view")
    state = None
    if codec is not None:
        state = CompressionState(codec=codec, warmup_steps=2, min_compress_numel=0, feedback=feedback)
        model.register_comm_hook(state, compressed_allreduce_hook)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        if variant == "no_sync":
            half = x.shape[0] // 2
            with model.no_sync():
                torch.nn.functional.cross_entropy(model(x[:half].to(dtype)).float(), y[:half]).backward()
            loss = torch.nn.functional.cross_entropy(model(x[half:].to(dtype)).float(), y[half:])
        elif variant == "find_unused":
            loss = torch.nn.functional.cross_entropy(model(x, use_spare=step % 2 == 1).float(), y)
        else:
            loss = torch.nn.functional.cross_entropy(model(x.to(dtype)).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    params = [p.detach().float().clone() for p in model.parameters()]
    traffic = state.last_step if state else None
    torch.save({"losses": losses, "params": params, "traffic": traffic, "graphs": compiler.frame_count},
               os.path.join(out, f"{rank}.pt"))
    del model, state
    finish_worker()


def bucket_caps(rank, world, port, out):
    """The bucket size DDP gets from the benchmarks' with_hook, per hook (PowerSGD: one bucket)."""
    from effgen_kernels.bench.ddp_worker import with_hook

    init(rank, world, port)
    caps = {hook: with_hook(make_model(), hook, bucket_cap_mb=0.5)[0].bucket_bytes_cap for hook in ("int8", "powersgd")}
    torch.save(caps, os.path.join(out, f"{rank}.pt"))
    finish_worker()
