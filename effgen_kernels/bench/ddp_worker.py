"""Per-process bodies of the distributed benchmarks (an importable module, so that spawned
workers can find it): bench_allreduce's DDP step with one of the communication hooks, and
bench_parallel's tensor-parallel transformer step."""

import contextlib
import datetime
import gc
import multiprocessing
import os
import socket
import statistics
import sys
import time

import torch

from effgen_kernels.bench.harness import RETAINING_MALLOC_ENV
from effgen_kernels.gpt import GPTConfig
from effgen_kernels.progress import Progress

HIDDEN = 1024


DEMO_GPT = GPTConfig(context=64, dim=128, layers=2, heads=4)  # `effgen demo` trains (stage 2), distils (3)
# `effgen demo` stage 2's compressed hooks: CompressionState's options per name. The last is
# the sign codec's setting for AdamW (benchmarks/RESULTS.md, sessions 38 and 40; 20 warm-up
# steps lower its gap further, but would be a sixth of the demo's 120 uncompressed).
DEMO_HOOKS = {"int8": {"codec": "int8"}, "sign": {"codec": "sign"},
              "sign-adam": {"codec": "sign", "feedback": "ef21", "block_size": 64}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def default_allocator():
    """Workers stand for a user's training processes, so they start with glibc's default
    allocator even under `effgen bench`, whose retaining settings (RETAINING_MALLOC_ENV)
    they would inherit. With those, the int8 hook's DDP step spent its time zeroing fresh
    pages (in the gloo thread and the main one): 114-137 ms against 47 ms per step, the sign
    hook's 43-47 either way (RESULTS.md, session 32). Settings of other values are kept."""
    ours = {k: os.environ.pop(k) for k, v in RETAINING_MALLOC_ENV.items() if os.environ.get(k) == v}
    try:
        yield
    finally:
        os.environ.update(ours)


def run_workers(fn, world: int, *args, timeout: float = 600.0, what: str = "worker") -> None:
    """Starts ``world`` spawned processes of fn(rank, world, port, *args) on a free port and
    waits; a worker that fails or outlives ``timeout`` (one deadline for all of them) is an
    error, and one still running then is killed (exit code -9)."""
    spawn = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [spawn.Process(target=fn, args=(rank, world, port, *args)) for rank in range(world)]
    with default_allocator():
        for p in procs:
            p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()  # reaped: its exit code is known
    codes = [p.exitcode for p in procs]
    if any(code != 0 for code in codes):
        raise RuntimeError(f"{what} failed or did not finish within {timeout:.0f} s (exit codes {codes})")


def finish_worker() -> None:
    """Leave the default group and end a spawned worker without interpreter finalization.

    Plain DDP on gloo (no hook involved) aborted one worker in about 1 of 20 runs with
    "terminate called without an active exception" after the worker's Python code had
    returned, i.e. while the interpreter and C++ statics were torn down with gloo's threads
    still alive (50 runs with this ending: none). So: collect the objects that hold the
    group while Python is alive, wait for the peers, destroy the group, exit at once
    (call it after the results are on disk)."""
    from effgen_kernels.distributed import shutdown

    gc.collect()
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def with_hook(model: torch.nn.Module, hook: str, bucket_cap_mb: float = 25.0, **state_options):
    """``model`` in DDP with one of the benchmarks' communication hooks ("plain", "fp16",
    "powersgd", "int8", "sign", or ours with EF21 feedback: "int8-ef21", "sign-ef21") and
    DDP's ``bucket_cap_mb`` (not PowerSGD's); returns the DDP model and our hooks' state
    (else None), made with CompressionState's ``state_options``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    from effgen_kernels.distributed import CompressionState, compressed_allreduce_hook

    # PowerSGD issues all-reduces from future callbacks: with several buckets in flight they
    # reach gloo in a different order per rank and abort it, so it gets one bucket.
    params = sum(p.numel() for p in model.parameters())
    if hook == "powersgd":
        bucket_cap_mb = 4 * params / 2**20 + 1
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
    state = None
    codec, _, feedback = hook.partition("-")
    if codec in ("int8", "sign"):
        state = CompressionState(codec=codec, warmup_steps=2, feedback=feedback or "classic", **state_options)
        ddp.register_comm_hook(state, compressed_allreduce_hook)
    elif hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "powersgd":
        ddp.register_comm_hook(powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=4,
                                                           start_powerSGD_iter=2), powerSGD_hook.powerSGD_hook)
    return ddp, state


def init_gloo(rank: int, world: int, port: int, address: str = "127.0.0.1", timeout_s: float = 300) -> None:
    """Joins the workers' gloo group; one thread per worker (they share the machine)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))


def ddp_step_worker(rank: int, world: int, port: int, hook: str, steps: int, out: str, hidden: int = HIDDEN,
                    layers: int = 4, address: str = "127.0.0.1", bucket_cap_mb: float = 25.0) -> None:
    init_gloo(rank, world, port, address)
    torch.manual_seed(0)
    ddp, state = with_hook(torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)]), hook,
                           bucket_cap_mb)
    x = torch.randn(32, hidden)
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        ddp(x).square().mean().backward()
        times.append(time.perf_counter() - begin)
    if rank == 0:
        sent = state.last_step.bytes_sent if state else None
        torch.save({"median_s": statistics.median(times[4:]), "bytes_sent": sent}, os.path.join(out, f"{hook}.pt"))
    del ddp, state
    finish_worker()


DIGITS_TRAIN = 1500  # scikit-learn's digits: the first 1500 images train, the other 297 test
DIGITS_BATCH, DIGITS_LR = 32, 0.03  # per rank; SGD with momentum 0.9


def digits_mlp(hidden: int, layers: int) -> torch.nn.Sequential:
    """64 pixels -> ``layers`` ReLU layers of hidden x hidden -> 10 classes (seeded)."""
    torch.manual_seed(0)
    blocks = [torch.nn.Linear(64, hidden), torch.nn.ReLU()]
    for _ in range(layers):
        blocks += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(hidden, 10))


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: images scaled to [0, 1] (fp32 [1797, 64]) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target)


class DigitsBatches:
    """A rank's batches: its shard of the training images, reshuffled every epoch from a
    generator seeded with the rank. Call it with the steps in order: batch -> image indices."""

    def __init__(self, rank: int, world: int) -> None:
        self.shard = torch.arange(rank, DIGITS_TRAIN, world)
        self.order = torch.Generator().manual_seed(rank)
        self.per_epoch = len(self.shard) // DIGITS_BATCH

    def __call__(self, step: int) -> torch.Tensor:
        if step % self.per_epoch == 0:
            shuffled = self.shard[torch.randperm(len(self.shard), generator=self.order)]
            self.epoch = shuffled[:self.per_epoch * DIGITS_BATCH].view(self.per_epoch, -1)
        return self.epoch[step % self.per_epoch]


def ddp_digits_worker(rank: int, world: int, port: int, hook: str, steps: int, out: str, hidden: int, layers: int,
                      address: str = "127.0.0.1", min_compress_numel: int | None = None,
                      bucket_cap_mb: float = 25.0, block_size: int | None = None) -> None:
    """Trains digits_mlp on scikit-learn's digits with one hook (batches: DigitsBatches); a
    step is forward, backward (where DDP waits for the all-reduce) and the optimizer step.
    Every rank saves each step's time and batch loss; rank 0 also the test loss and accuracy."""
    init_gloo(rank, world, port, address)
    images, labels = digits_data()
    batches = DigitsBatches(rank, world)
    options = {name: value for name, value in (("min_compress_numel", min_compress_numel), ("block_size", block_size))
               if value is not None}
    ddp, state = with_hook(digits_mlp(hidden, layers), hook, bucket_cap_mb, **options)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=DIGITS_LR, momentum=0.9)
    times, losses = [], []
    bar = Progress(steps, f"    {hook}", enabled=rank == 0, silent_s=5.0)  # a run on a slow link takes minutes
    for step in range(steps):
        batch = batches(step)
        begin = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(ddp(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - begin)
        losses.append(loss.item())
        bar.update(step + 1, f"loss {losses[-1]:.4f}")
    result = {"times_s": times, "losses": losses, "bytes_sent": state.last_step.bytes_sent if state else None}
    if rank == 0:
        with torch.no_grad():
            logits = ddp.module(images[DIGITS_TRAIN:])
        result["test_loss"] = torch.nn.functional.cross_entropy(logits, labels[DIGITS_TRAIN:]).item()
        result["test_accuracy"] = (logits.argmax(1) == labels[DIGITS_TRAIN:]).float().mean().item()
    torch.save(result, os.path.join(out, f"{hook}-{rank}.pt"))
    del ddp, state
    finish_worker()


def activation_reduce_bytes(numel: int, world: int, block_size: int | None) -> int:
    """Bytes one rank sends to reduce ``numel`` fp32 activations over ``world`` ranks: a
    ring all-reduce sends 2 (p - 1) / p of the data; the int8 path all-gathers int8 values
    plus one fp32 scale per block, (p - 1) times its own part."""
    if block_size is None:
        return 2 * (world - 1) * numel * 4 // world
    return (world - 1) * (numel + 4 * -(-numel // block_size))


def tp_step_worker(rank: int, world: int, port: int, steps: int, out: str, dim: int, tokens: int) -> None:
    """Times a training step (forward + backward) of a tensor-parallel GPT with the fp32
    activation all-reduce and with the int8 one, interleaved; rank 0 saves the medians."""

    from effgen_kernels.bench import time_interleaved
    from effgen_kernels.distributed import parallelize
    from effgen_kernels.gpt import GPT, GPTConfig

    init_gloo(rank, world, port, timeout_s=120)
    config = GPTConfig(context=tokens, dim=dim, layers=2, heads=8)
    models = {}
    for name, block in (("fp32", None), ("int8", 256)):
        torch.manual_seed(0)
        models[name] = GPT(config)
        parallelize(models[name], compress_block_size=block)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))

    def step(model):
        return lambda: model(ids).logits.square().mean().backward()

    medians = time_interleaved({name: step(model) for name, model in models.items()}, reps=steps)
    if rank == 0:
        numel = tokens * dim * 2 * config.layers  # two row-parallel reductions per block
        torch.save({"median_s": medians, "bytes": {"fp32": activation_reduce_bytes(numel, world, None),
                                                   "int8": activation_reduce_bytes(numel, world, 256)}},
                   os.path.join(out, "tp.pt"))
    del models
    finish_worker()


def demo_train_worker(rank: int, world: int, port: int, out: str, codec: str, steps: int, seed: int = 0,
                      options: dict | None = None, progress: str = "[2/3] ddp") -> None:
    """`effgen demo` stage 2: DDP training of the example GPT on the standard library's
    source with plain all-reduce ("plain") or a compressed hook (a name in DEMO_HOOKS, or
    any name with CompressionState's ``options``); rank 0 saves the loss curve, the bytes it
    sent per step, and (plain) the trained model. ``seed`` draws the initial model and the
    batches (seed 0: the demo's); ``progress`` begins the progress bar's label."""

    from effgen_kernels.distributed import CompressionState, compressed_allreduce_hook
    from effgen_kernels.gpt import GPT, lm_batch, stdlib_source_bytes

    init_gloo(rank, world, port, timeout_s=120)
    torch.manual_seed(seed)
    model = GPT(DEMO_GPT)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = None
    if codec != "plain":
        state = CompressionState(**(DEMO_HOOKS[codec] if options is None else options))
        ddp.register_comm_hook(state, compressed_allreduce_hook)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=2e-3)
    train = stdlib_source_bytes()[0]
    params = sum(p.numel() for p in model.parameters())
    losses, sent = [], []
    bar = Progress(steps, f"{progress} {codec}", enabled=rank == 0)
    for step in range(steps):
        inputs, labels = lm_batch(train, step, 8, DEMO_GPT.context, seed=rank + 1000 * seed)
        logits = ddp(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        sent.append(state.last_step.bytes_sent if state else 2 * (world - 1) * params * 4 // world)
        bar.update(step + 1, f"loss {losses[-1]:.4f}")
    if rank == 0:
        trained = model.state_dict() if codec == "plain" else None
        torch.save({"losses": losses, "bytes_per_step": sent, "model": trained}, os.path.join(out, f"{codec}.pt"))
    del ddp, state
    finish_worker()
