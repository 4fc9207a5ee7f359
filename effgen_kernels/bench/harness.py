"""Timing on shared, noisy machines: the op and its peer run interleaved in one loop (so
both see the same neighbours), every call is timed on its own, and we report medians.
Throughput is put against the machine's memory bandwidth measured in the same run."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch

# glibc returns big freed blocks to the OS, so every large output of every op (ours and the
# peers alike) would pay first-touch page faults that dwarf the kernels on a small VM. The
# benchmark process keeps freed memory instead (`effgen bench --allocator system` measures
# the default); glibc reads these at start-up, so `effgen bench` restarts itself with them.
RETAINING_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


@dataclasses.dataclass(frozen=True)
class EnvCall:
    """fn, run with the environment variable `name` set to `value`, restored afterwards.
    time_interleaved sets the variable outside the timed region and times fn alone. (In
    session 45, with the variable set inside, Int8Linear forced onto the wgmma kernel ran 3-7
    us slower than the default that takes the same kernel.)"""

    name: str
    value: str
    fn: Callable[[], object]

    @contextlib.contextmanager
    def env(self):
        previous = os.environ.get(self.name)
        os.environ[self.name] = self.value
        try:
            yield
        finally:
            if previous is None:
                del os.environ[self.name]
            else:
                os.environ[self.name] = previous

    def __call__(self):
        with self.env():
            return self.fn()


def with_env(name: str, value: str, fn: Callable[[], object]) -> EnvCall:
    """fn with `name` set to `value` for its calls, for the ops that read a kernel choice at
    each call (e.g. EFFGEN_CUDA_INT8_GEMM)."""
    return EnvCall(name, value, fn)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call: CUDA events on a GPU, perf_counter around a sync on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def _cuda_graph(fn: Callable[[], object], calls: int) -> Callable[[], object]:
    """A replay of `calls` calls of fn captured in one CUDA graph (a rotating fn visits a new
    copy of its weights in each), so a sample times the GPU, not the CPU's launches: at
    decode sizes launching a few small kernels from Python takes longer than running them."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2,
                     device: torch.device | str = "cpu", graph_calls: int = 1, prime: bool = False) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round.

    Each round runs the functions in a fresh random order (seeded: runs repeat), so none
    always runs right after the same other one: what ran before a call (caches it evicted,
    time the cores idled) changes its time. Rotating the order did not do that: a cyclic
    shift keeps every function's predecessor. With `prime` (CPU only) each timed call comes
    right after an untimed call of the same function, so every function is timed in the
    cache state its own kind leaves, as in a model built of such layers: after a peer that
    streams 64 MB of fp32 weights through the caches, the Python and torch state of any
    following call is cold (a 16-float torch add: 13 us back to back, 135 us after such a
    stream, on the Xeon VM of session 30), which charged a small op for its peer's bytes.
    Rotated weights stay rotated: the priming call uses the copy before the timed one's.
    On a GPU with graph_calls > 1 each sample replays a CUDA graph of that many calls
    (after the warm-up, which also runs first-use set-up outside the capture) and counts
    its time over the calls.
    """
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    calls = graph_calls if device.type == "cuda" else 1
    runners = {name: _cuda_graph(fn, calls) for name, fn in fns.items()} if calls > 1 else fns
    prime_calls = prime and device.type == "cpu"
    samples: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(reps):
        for name in order.sample(names, len(names)):
            runner = runners[name]
            if prime_calls:
                runner()
            # an EnvCall's variable is set outside the timed region
            forced = isinstance(runner, EnvCall)
            with runner.env() if forced else contextlib.nullcontext():
                samples[name].append(_time_call(runner.fn if forced else runner, device) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def memory_bandwidth_gbps(device: torch.device | str = "cpu", nbytes: int = 256 << 20,
                          reps: int = 9) -> dict[str, float]:
    """Bytes per second through memory, on a tensor bigger than the last-level cache: "copy"
    (read + written by a plain copy), "read" (read by a sum, which writes nothing), and
    "limit", the higher of the two. Streams that only read, like a decode GEMV's weights,
    can go faster than a copy's mix; the limit is the fastest stream measured."""
    device = torch.device(device)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_interleaved({"copy": lambda: dst.copy_(src), "read": lambda: src.sum()}, reps=reps, warmup=2,
                               device=device)
    rates = {"copy": 2 * nbytes / seconds["copy"] / 1e9, "read": nbytes / seconds["read"] / 1e9}
    return {**rates, "limit": max(rates.values())}


class Rotation:
    """Cycles through copies of an operand so that, at decode sizes, each call finds its
    weights in memory rather than in the last-level cache: `copies` is chosen so that they
    add up to more than `total_bytes` (one copy when `rotate` is false)."""

    def __init__(self, make_copy: Callable[[], object], bytes_per_copy: int, total_bytes: int = 600 << 20,
                 rotate: bool = True) -> None:
        count = max(1, -(-total_bytes // max(1, bytes_per_copy))) if rotate else 1
        first = make_copy()
        # Deep copies, not repeated conversions: a conversion's float temporaries between
        # long-lived buffers would fragment the (retaining) heap by gigabytes.
        self.items = [first] + [copy.deepcopy(first) for _ in range(count - 1)]
        self.step = 0

    def __len__(self) -> int:
        return len(self.items)

    def next(self):
        self.step += 1
        return self.items[self.step % len(self.items)]


@dataclasses.dataclass
class BenchResult:
    """One op against one peer, measured in the same interleaved loop."""

    family: str
    op: str
    shape: str
    dtype: str
    ours_ms: float
    peer: str
    peer_ms: float
    bytes_moved: int  # bytes our op must read + write at least
    limit_gbps: float  # the machine's memory bandwidth from the same run (memory_bandwidth_gbps)
    ops: int = 0  # arithmetic operations (2 per multiply-add), for compute-bound ops
    peak_gops: float = 0.0  # the machine's measured rate for that arithmetic, same run

    @property
    def speedup(self) -> float:
        return self.peer_ms / self.ours_ms

    @property
    def achieved_gbps(self) -> float:
        return self.bytes_moved / (self.ours_ms / 1e3) / 1e9

    @property
    def achieved_gops(self) -> float:
        return self.ops / (self.ours_ms / 1e3) / 1e9

    @property
    def fraction_of_limit(self) -> float:
        """Of the binding limit: memory bandwidth, or arithmetic rate where that is closer."""
        memory = self.achieved_gbps / self.limit_gbps
        compute = self.achieved_gops / self.peak_gops if self.ops and self.peak_gops else 0.0
        return max(memory, compute)

    def as_dict(self) -> dict:
        row = dataclasses.asdict(self)
        row.update(speedup=self.speedup, achieved_gbps=self.achieved_gbps, achieved_gops=self.achieved_gops,
                   fraction_of_limit=self.fraction_of_limit)
        return row


@dataclasses.dataclass
class BenchContext:
    """What a benchmark module gets: where to run, how long, and the measured limits."""

    device: torch.device
    quick: bool
    limit_gbps: float  # memory_bandwidth_gbps()["limit"]
    progress: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)

    @property
    def reps(self) -> int:
        return 5 if self.quick else 21

    def measure(self, family: str, op: str, shape: str, dtype: torch.dtype, ours: Callable[[], object],
                peer_name: str, peer: Callable[[], object], bytes_moved: int) -> BenchResult:
        return self.measure_peers(family, op, shape, dtype, ours, {peer_name: peer}, bytes_moved)[0]

    def measure_peers(self, family: str, op: str, shape: str, dtype: torch.dtype, ours: Callable[[], object],
                      peers: dict[str, Callable[[], object]], bytes_moved: int, ops: int = 0, peak_gops: float = 0.0,
                      reps: int | None = None, warmup: int = 2, graph_calls: int = 1) -> list[BenchResult]:
        """Our op and every peer interleaved in one loop, each timed call primed by one of its
        own (time_interleaved); one result per peer. With rotated weights, `warmup` should
        cover every copy once (first use costs extra everywhere) and `graph_calls` (CUDA
        only: calls per timed graph) should too."""
        medians = time_interleaved({"ours": ours, **peers}, reps=reps or self.reps, warmup=warmup, device=self.device,
                                   graph_calls=graph_calls, prime=True)
        results = []
        for peer_name in peers:
            result = BenchResult(family, op, shape, str(dtype).removeprefix("torch."), medians["ours"] * 1e3,
                                 peer_name, medians[peer_name] * 1e3, bytes_moved, self.limit_gbps, ops, peak_gops)
            self.progress(f"  {op:<38} {shape:<16} ours {result.ours_ms:9.3f} ms  {peer_name:<22}"
                          f" {result.peer_ms:9.3f} ms  x{result.speedup:6.2f}  {100 * result.fraction_of_limit:4.0f}%"
                          " of limit")
            results.append(result)
        return results
