"""Compressed all-reduce with error feedback, O(size) bytes per worker.

Two phases (as in 1-bit Adam / Deep Gradient Compression style reducers):
1. every worker compresses ``bucket + worker_error`` blockwise and keeps what was lost;
2. ``all_to_all``: rank r receives chunk r from every worker, sums the decompressed chunks
   in fp32 (in rank order, so every rank computes the same bits), averages, adds its
   ``server_error``, recompresses and keeps that loss too;
3. ``all_gather`` of the compressed averaged chunks; every worker decompresses the whole.
Bytes per worker: about 2 * (W - 1) / W * n * bits / 8, plus per block one fp32 scale
(int8) or two fp32 levels (sign: bits say whether a value is above its block's mean).

``feedback="ef21"`` (EF21, Richtarik et al. 2021) sends the same bits but keeps estimates
instead of residuals: worker r sends C(g_r - h_r) and adds what it sent to its estimate h_r;
the server sends C(H - G), where H is the mean of the h_r, and every rank adds the decoded
change to its copy of G, the average the optimizer gets. The server's state H - G is exactly
the classic server residual; a worker keeps -h_r where the classic one keeps its residual.

Use::

    state = CompressionState(process_group=dp_group, codec="int8")   # or "sign"
    ddp.register_comm_hook(state, compressed_allreduce_hook)

The chain of collectives is asynchronous: each stage is a callback on the previous
collective's future, and nothing waits inside a callback. Collectives pair up across ranks
by the order they are issued in on a group, so the two phases use two groups: phase 1 (and
the exact exchanges) is issued by the hook itself, in DDP's bucket order, which is the same
on every rank; phase 2 is issued from callbacks, on a companion group of the same ranks,
bucket after bucket. So bucket b + 1's phase 1 travels while bucket b is decoded and
re-encoded, and callbacks finishing in a different order per rank cannot mispair anything.
"""


# No `from __future__ import annotations` here: DDP checks the hook's `bucket` annotation
# at registration and needs the real dist.GradBucket, not a string.
import dataclasses
import math

import torch
import torch.distributed as dist

from .. import ops as _ops_module  # noqa: F401  (registers the effgen ops)

_ops = torch.ops.effgen
CODECS = ("int8", "sign")
FEEDBACKS = ("classic", "ef21")
# Block sizes unless the caller gives one: the sign codec's two fp32 levels a block cost 1/8
# bit a value at 512 values (0.035x of fp32 in all), as int8's one scale does at 256.
DEFAULT_BLOCK_SIZE = {"int8": 256, "sign": 512}
WORDS_PER_BLOCK = {"int8": 1, "sign": 2}  # fp32 scales (int8) or levels (sign) a block sends
# all_gather into one flat tensor: all_gather_single from torch 2.14 on (its predecessor
# all_gather_into_tensor is deprecated there), all_gather_into_tensor before.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclasses.dataclass
class TrafficCounters:
    """Payload bytes of the last step for this worker, and the fp32 ring all-reduce's."""

    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_uncompressed: int = 0

    @property
    def compression_ratio(self) -> float:
        return self.bytes_uncompressed / self.bytes_sent if self.bytes_sent else 1.0

    def add(self, payload: int, uncompressed: int) -> None:
        """One exchange of the hook's: a ring all-reduce, an all_to_all of equal chunks or an
        all_gather, in each of which a rank receives as many bytes as it sends."""
        self.bytes_sent += payload
        self.bytes_received += payload
        self.bytes_uncompressed += uncompressed


class CompressionState:
    """State of compressed_allreduce_hook for one DDP model: codec settings, the per-bucket
    error-feedback buffers of this rank, the step, and traffic counters.

    ``block_size`` (values a compression block; default 256 for int8, 512 for sign, see
    DEFAULT_BLOCK_SIZE) sets the bytes of scales sent and how local they are. Choose the
    codec by optimizer: under SGD with momentum "sign" lags plain DDP early in training
    and then catches up (a deep MLP on digits: 3.3x plain's loss at step 200, even by
    step 240); under Adam(W) it falls behind more the longer it trains, as its 1-bit noise
    disturbs Adam's per-value step sizes (the demo's GPT, mean of 5 seeds: +14% over plain's
    loss after 600 steps, +22% after 1200; benchmarks/RESULTS.md, sessions 37 and 40); "int8"
    is within about 1% of plain DDP under both. ``feedback="ef21"`` (module docstring) with
    ``block_size=64`` holds the sign codec's gap under AdamW at +3-5% (+4.6% / +2.9% after
    600 / 1200 steps; with ``warmup_steps=20`` +3.0% / +1.3%), but does not help under SGD
    with momentum (the deep digits MLP: even; on full
    batches, where its estimates trail slowly changing gradients, 2.7x plain's loss against
    1.0x); it keeps one more fp32 copy of the compressed gradients a rank (G), which the
    decoders add into and the bucket is copied from (the 25M MLP: 237 against 213 ms a step
    at 1 Gbit/s, RESULTS.md session 38). Its estimates start at the exact gradients of the last
    warm-up step (at zero without one, which trains worse), so keep ``warmup_steps`` >= 1.

    ``warmup_steps`` steps run plain all-reduce first (DDP rebuilds its buckets after the
    first iterations); parameters with fewer than ``min_compress_numel`` values are always
    averaged exactly (each compressed parameter is padded to world x lcm(block, 8) values,
    so below about 128 values the exact fp32 exchange is the smaller one), decided per
    parameter so that DDP's grouping of parameters into buckets never changes a result.
    A bucket's compressed parameters travel in parts of at least ``part_numel`` values
    (whole parameters): one part's phase 2 overlaps the next part's phase 1, where a bucket
    in one piece would idle the link while it is decoded and re-encoded; as every parameter
    is compressed on its own, the parts change no bit of the result. Nor does DDP's
    ``bucket_cap_mb``; but DDP hands a bucket to the hook once all its gradients are ready, so
    on a slow link smaller ones start the exchange sooner (int8, 25M parameters, 1 Gbit/s: 331 ms a
    step with 8 MB buckets, 348 ms with DDP's default 25).
    Create it on every rank after init_process_group: without a ``process_group`` it makes
    its own copy of the world group (a collective call)."""

    def __init__(self, process_group: dist.ProcessGroup | None = None, codec: str = "int8",
                 block_size: int | None = None,
                 warmup_steps: int = 2, error_feedback: bool = True, min_compress_numel: int = 128,
                 part_numel: int = 1 << 22, feedback: str = "classic") -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
        if feedback == "ef21" and not error_feedback:
            raise ValueError("feedback='ef21' needs error_feedback=True (its estimates are its feedback)")
        block_size = DEFAULT_BLOCK_SIZE[codec] if block_size is None else block_size
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if part_numel <= 0:
            raise ValueError(f"part_numel must be positive, got {part_numel}")
        if warmup_steps < 0 or min_compress_numel < 0:
            raise ValueError(f"warmup_steps and min_compress_numel must be >= 0, got {warmup_steps} and "
                             f"{min_compress_numel}")
        self.process_group = process_group
        # Phase 1 goes to the caller's group (or, without one, a copy of the world group) from
        # the hook, in step with anything else the rank issues there; phase 2, issued from
        # callbacks, goes to a companion group of the same ranks that carries nothing else
        # (on a shared group it would interleave with DDP's own collectives, e.g. the
        # unused-parameter map, in a different order per rank: gloo size mismatch).
        self._dedicated_group = self._gather_group = None
        if dist.is_initialized():
            if process_group is None:
                self._dedicated_group = dist.new_group(timeout=_world_timeout())
                self._gather_group = dist.new_group(timeout=_world_timeout())
            else:  # only the members create it: other ranks may build their own sub-groups
                self._gather_group = dist.new_group(dist.get_process_group_ranks(process_group),
                                                    timeout=_world_timeout(), use_local_synchronization=True)
        self.codec, self.block_size, self.feedback = codec, block_size, feedback
        self.warmup_steps, self.error_feedback = warmup_steps, error_feedback
        self.min_compress_numel = min_compress_numel
        self.part_numel = part_numel
        self.step = 0
        # Residuals per part of a bucket (key: see _MAX_PARTS), laid out like the part's
        # compressed payload (see _Layout); with EF21 the workers' hold -h_r, and
        # shared_estimates every rank's copy of G.
        self.worker_errors: dict[int, torch.Tensor] = {}
        self.server_errors: dict[int, torch.Tensor] = {}
        self.shared_estimates: dict[int, torch.Tensor] = {}
        # Per bucket, the (parameter key, offset, numel) segments its residuals belong to. A
        # bucket index holds other parameters after DDP rebuilds its buckets (after its first
        # step, and again after a restart, which begins from the initial layout): residuals
        # then move with their parameters to wherever those now are.
        self.layouts: dict[int, tuple] = {}
        self.residuals_dropped = 0  # parameters whose residuals had nowhere to go (counted)
        self._param_keys: dict[int, int] = {}  # id(parameter) -> key, in first-seen order
        self._loose: dict | None = None  # residuals being moved between bucket layouts
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}  # work buffers, never saved
        self.last_step = TrafficCounters()
        self._current = TrafficCounters()
        self._gathers_issued = _done_future()  # completes once the previous bucket's phase 2 is issued

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Per-rank error buffers (with EF21 also the estimates, G included) and the step
        (the process group is not saved: the caller's stays in place on load)."""
        return {"step": self.step, "codec": self.codec, "block_size": self.block_size, "feedback": self.feedback,
                **{name: {k: v.clone() for k, v in getattr(self, name).items()} for name in _SAVED_BUFFERS},
                "layouts": dict(self.layouts)}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["codec"], state["block_size"], state.get("feedback", "classic"))
        if saved != (self.codec, self.block_size, self.feedback):
            raise ValueError(f"checkpoint was written with codec={saved[0]!r}, block_size={saved[1]}, "
                             f"feedback={saved[2]!r}; this state has codec={self.codec!r}, "
                             f"block_size={self.block_size}, feedback={self.feedback!r}")
        self.step = state["step"]
        for name in _SAVED_BUFFERS:
            setattr(self, name, {int(k): v.clone() for k, v in state.get(name, {}).items()})
        self.layouts = {int(k): tuple(tuple(seg) for seg in v) for k, v in state.get("layouts", {}).items()}

    # -- internals -------------------------------------------------------------------------
    def _key(self, parameter: torch.Tensor) -> int:
        """A parameter's key: the order in which the state first saw it. DDP's first step
        runs its initial bucket layout, the same in every process and after a restart, so
        a restarted run gives every parameter the key it had before."""
        return self._param_keys.setdefault(id(parameter), len(self._param_keys))

    def _regroup(self, index: int, layout: "_Layout", device) -> None:
        """Make bucket ``index``'s residuals follow ``layout``: on the first bucket whose
        parameters changed, every bucket's residuals are split per parameter; each bucket
        then takes its parameters' pieces back (zeros for a parameter never seen)."""
        if self.layouts.get(index) == layout.segments:
            return
        if self._loose is None:
            self._loose = {}
            for old_index, segments in self.layouts.items():
                old = _Layout(segments, layout.world, self.block_size)
                self._loose.update(old.split(*(getattr(self, name).get(old_index) for name in _SAVED_BUFFERS)))
            self.worker_errors, self.server_errors, self.shared_estimates, self.layouts = {}, {}, {}, {}
        worker, server, shared, missing = layout.join(self._loose, device, self.feedback == "ef21")
        self.residuals_dropped += missing
        self.worker_errors[index], self.server_errors[index] = worker, server
        if shared is not None:
            self.shared_estimates[index] = shared
        self.layouts[index] = layout.segments

    def _scratch(self, index: int, name: str, numel: int, dtype: torch.dtype, device) -> torch.Tensor:
        """A per-bucket work buffer kept across steps (replaced when the bucket changes)."""
        buffer = self._buffers.get((index, name))
        if buffer is None or buffer.numel() != numel or buffer.dtype != dtype or buffer.device != device:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[(index, name)] = buffer
        return buffer

    def _end_step(self) -> None:
        if self._loose:  # residuals of parameters that no bucket claimed this step
            self.residuals_dropped += len(self._loose)
        self._loose = None
        self.step += 1
        self.last_step, self._current = self._current, TrafficCounters()


# The per-part buffers a checkpoint holds and a relayout moves: the workers' (rank-major
# [world, chunk]), the server's ([chunk]) and, with EF21, every rank's G (rank-major).
_SAVED_BUFFERS = ("worker_errors", "server_errors", "shared_estimates")


def _world_timeout():
    """The default group's timeout (new_group would otherwise wait 30 minutes for a missing
    rank); None, i.e. PyTorch's default, where this private lookup is unavailable."""
    try:
        group = dist.distributed_c10d._get_default_group()
        return group._get_backend(torch.device("cpu")).options._timeout
    except (AttributeError, RuntimeError):
        return None


def _done_future() -> torch.futures.Future:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(None)
    return future


def _future_on(device: torch.device) -> torch.futures.Future:
    """A Future for a tensor on ``device``. On CUDA, setting its result records an event on
    the current stream, and whoever waits on it makes their stream wait for that event: the
    kernels of the callback that finished the tensor (on a stream of its own) are done
    before the caller reads it. Without devices a waiter could read the tensor too early."""
    return torch.futures.Future(devices=[device]) if device.type == "cuda" else torch.futures.Future()


def _after_previous_gathers(state: CompressionState, ready: torch.futures.Future, launch) -> None:
    """Runs launch(issued) once ``ready`` is done and the previous bucket's phase 2 was
    issued; launch must call issued() once it has issued its own (or failed), to let the
    next bucket go."""
    previous, mine = state._gathers_issued, torch.futures.Future()
    state._gathers_issued = mine

    def issued() -> None:
        if not mine.done():
            mine.set_result(None)

    torch.futures.collect_all([previous, ready]).then(lambda _: launch(issued))


def _compress_into(state: CompressionState, x: torch.Tensor, error: torch.Tensor, payload: torch.Tensor,
                   scales: torch.Tensor, estimate: bool = False) -> None:
    """estimate: ``error`` holds minus an EF21 estimate, which takes what is sent."""
    if state.codec == "int8":
        _ops.ef_compress_int8_out(x, error, state.block_size, payload, scales, estimate)
    else:
        _ops.ef_compress_sign_out(x, error, state.block_size, payload, scales, estimate)


def _decompress_sum_into(state: CompressionState, payload: torch.Tensor, scales: torch.Tensor,
                         total: torch.Tensor, accumulate: bool = False) -> None:
    """accumulate: add the decoded sum to ``total`` instead of writing it there."""
    if state.codec == "int8":
        _ops.decompress_sum_int8_out(payload, scales, state.block_size, total, accumulate)
    else:
        _ops.decompress_sum_sign_out(payload, scales, total.numel(), state.block_size, total, accumulate)


def _group(state: CompressionState):
    """The group of phase 1, looked up when a collective is issued. Callbacks must not keep
    a group in a closure: the last reference could then die on gloo's own thread after the
    user destroyed the group, and its destructor would try to join that very thread."""
    if state.process_group is not None:
        return state.process_group
    return state._dedicated_group if state._dedicated_group is not None else dist.group.WORLD


def _gather_group(state: CompressionState):
    """The group of phase 2 (see _group)."""
    return state._gather_group if state._gather_group is not None else _group(state)


def _plain_allreduce(state: CompressionState, tensor: torch.Tensor, world: int) -> torch.futures.Future:
    work = dist.all_reduce(tensor, group=_group(state), async_op=True)
    return work.get_future().then(lambda f: f.value()[0].div_(world))


class _Layout:
    """Where each parameter of a bucket goes in the compressed payload.

    Every parameter (segment) is padded on its own to a multiple of world x lcm(block, 8)
    values and cut into ``world`` equal chunks; the payload holds rank 0's chunk of every
    parameter, then rank 1's, and so on. So blocks never straddle two parameters, rank r
    always owns chunk r of every parameter, and a parameter's compressed average depends on
    nothing but its own values and residuals: whichever bucket it travels in (DDP's initial
    or rebuilt layout, before or after a restart), the bits are the same."""

    def __init__(self, segments: tuple, world: int, block: int) -> None:
        self.segments, self.world = segments, world
        unit = world * math.lcm(block, 8)
        self.chunks = [-(-numel // unit) * unit // world for _, _, numel in segments]
        self.chunk_offsets = [sum(self.chunks[:i]) for i in range(len(self.chunks))]
        self.chunk = sum(self.chunks)  # values each rank owns
        self.padded = self.chunk * world

    def pieces(self, rank: int):
        """Rank ``rank``'s part of every segment: (start in the bucket, start in the rank's
        row, values, values with padding) per segment; the row holds the bucket's values
        [start, start + values) followed by zeros up to the segment's chunk."""
        for (_, offset, numel), chunk, at in zip(self.segments, self.chunks, self.chunk_offsets, strict=True):
            lo, hi = min(numel, rank * chunk), min(numel, (rank + 1) * chunk)
            yield offset + lo, at, hi - lo, chunk

    def split(self, worker: torch.Tensor | None, server: torch.Tensor | None,
              shared: torch.Tensor | None = None) -> dict:
        """{key: (worker residual [world, chunk], server residual [chunk], shared estimate
        [world, chunk] or None)} per segment."""
        def rank_major(buffer, at, chunk):
            return None if buffer is None else buffer.view(self.world, self.chunk)[:, at:at + chunk].clone()

        pieces = {}
        for (key, _, _), chunk, at in zip(self.segments, self.chunks, self.chunk_offsets, strict=True):
            v = None if server is None else server[at:at + chunk].clone()
            pieces[key] = (rank_major(worker, at, chunk), v, rank_major(shared, at, chunk))
        return pieces

    def join(self, loose: dict, device, with_shared: bool = False) -> tuple:
        """Buffers for this layout from per-parameter pieces (taken out of ``loose``):
        worker residuals, server residuals, shared estimates (None unless ``with_shared``),
        and how many parameters had no piece."""
        worker = torch.zeros(self.padded, dtype=torch.float32, device=device)
        server = torch.zeros(self.chunk, dtype=torch.float32, device=device)
        shared = torch.zeros(self.padded, dtype=torch.float32, device=device) if with_shared else None
        missing = 0
        for (key, _, _), chunk, at in zip(self.segments, self.chunks, self.chunk_offsets, strict=True):
            w, v, g = loose.pop(key, (None, None, None))
            if w is None or w.shape != (self.world, chunk):
                missing += key >= 0  # negative keys: plain tensors, not parameters
                continue
            worker.view(self.world, self.chunk)[:, at:at + chunk].copy_(w)
            if v is not None:
                server[at:at + chunk].copy_(v)
            if shared is not None and g is not None:
                shared.view(self.world, self.chunk)[:, at:at + chunk].copy_(g)
        return worker, server, shared, missing


def compressed_allreduce(state: CompressionState, tensor: torch.Tensor, bucket_index: int = 0,
                         layout: tuple | None = None) -> torch.futures.Future:
    """Average ``tensor`` (1-D) over the state's process group with the two-phase compressed
    all-reduce; returns a Future that completes with ``tensor`` holding the average.
    ``layout``: the (parameter key, offset, numel) segments of a DDP bucket (see _Layout);
    None treats the tensor as one segment. Segments smaller than ``min_compress_numel`` are
    averaged exactly (gathered, summed in rank order), the rest compressed: the choice is
    made per parameter, so it does not depend on how DDP groups parameters into buckets."""
    world = dist.get_world_size(_group(state))
    n = tensor.numel()
    segments = layout if layout is not None else ((-1 - bucket_index, 0, n),)
    small = tuple(seg for seg in segments if seg[2] < state.min_compress_numel)
    parts = _compressed_parts(state, segments, bucket_index)
    if world == 1 or state.step < state.warmup_steps:
        state._current.add(2 * (world - 1) * n * tensor.element_size() // max(world, 1),
                           2 * (world - 1) * n * 4 // max(world, 1))
        if world > 1 and state.feedback == "ef21" and state.step == state.warmup_steps - 1:
            start = _start_estimates(state, tensor, parts, world)
            return _plain_allreduce(state, tensor, world).then(lambda f: start(f.value()))
        return _plain_allreduce(state, tensor, world)
    futures = []
    if small:
        futures.append(_gathered_mean(state, tensor, small, bucket_index, world))
    for key, segments_of_part in parts:
        futures.append(_two_phase(state, tensor, segments_of_part, key, world))
    if len(futures) == 1:
        return futures[0]
    result = _future_on(tensor.device)

    def finish(done: torch.futures.Future) -> None:
        try:
            for part in done.value():
                part.wait()  # re-raises a part's failure; on CUDA, this stream waits for its kernels
            result.set_result(tensor)
        except BaseException as error:
            result.set_exception(error)

    torch.futures.collect_all(futures).then(finish)
    return result


# A part's residuals and buffers are keyed by bucket index * _MAX_PARTS + part.
_MAX_PARTS = 1 << 16


def _compressed_parts(state: CompressionState, segments: tuple, bucket_index: int) -> list[tuple[int, tuple]]:
    """(key, segments) of each part of the segments that are compressed (see _parts)."""
    large = tuple(seg for seg in segments if seg[2] >= state.min_compress_numel)
    return [(bucket_index * _MAX_PARTS + part, segments_of_part)
            for part, segments_of_part in enumerate(_parts(large, state.part_numel))]


def _to_rank_major(plan: "_Layout", tensor: torch.Tensor, out: torch.Tensor) -> None:
    """``out`` ([world * chunk] fp32) = the plan's rank-major layout of ``tensor``'s
    segments, zeros in the padding."""
    rows = out.view(plan.world, plan.chunk)
    rows.zero_()
    for r in range(plan.world):
        for start, at, count, _ in plan.pieces(r):
            rows[r, at:at + count].copy_(tensor[start:start + count])


def _start_estimates(state: CompressionState, tensor: torch.Tensor, parts: list, world: int):
    """EF21's estimates from the last warm-up step's exact gradients (started at zero they
    train worse than classic feedback): each worker's h_r = its gradient, so its buffer
    holds -g_r, taken now, before the all-reduce overwrites ``tensor``; G = H = the average,
    so the server's H - G is 0. Returns what sets G from the averaged tensor."""
    plans = []
    for key, segments in parts:
        plan = _Layout(segments, world, state.block_size)
        state._regroup(key, plan, tensor.device)
        _to_rank_major(plan, tensor, state.worker_errors[key])
        state.worker_errors[key].neg_()
        state.server_errors[key].zero_()
        plans.append((key, plan))

    def start(average: torch.Tensor) -> torch.Tensor:
        for key, plan in plans:
            _to_rank_major(plan, average, state.shared_estimates[key])
        return average

    return start


def _parts(segments: tuple, part_numel: int) -> list[tuple]:
    """Whole segments in order, cut into parts of at least ``part_numel`` values (a smaller
    remainder joins the last part)."""
    parts, current, size = [], [], 0
    for segment in segments:
        current.append(segment)
        size += segment[2]
        if size >= part_numel:
            parts.append(tuple(current))
            current, size = [], 0
    if current and parts:
        parts[-1] += tuple(current)
    elif current:
        parts.append(tuple(current))
    return parts


def _gathered_mean(state: CompressionState, tensor: torch.Tensor, segments: tuple, bucket_index: int,
                   world: int) -> torch.futures.Future:
    """Exact mean of small segments: all-gather them and add the ranks' values in rank
    order (an all-reduce's summation order depends on where a value sits in the buffer)."""
    numel = sum(seg[2] for seg in segments)
    mine = state._scratch(bucket_index, "small", numel, tensor.dtype, tensor.device)
    at = 0
    for _, offset, size in segments:
        mine[at:at + size].copy_(tensor[offset:offset + size])
        at += size
    gathered = state._scratch(bucket_index, "small_gathered", world * numel, tensor.dtype, tensor.device)
    state._current.add((world - 1) * numel * tensor.element_size(), 2 * (world - 1) * numel * 4 // world)

    def average() -> torch.Tensor:
        rows = gathered.view(world, numel)
        total = rows[0].float()
        for r in range(1, world):
            total = total + rows[r].float()
        total = total.div_(world).to(tensor.dtype)
        at = 0
        for _, offset, size in segments:
            tensor[offset:offset + size].copy_(total[at:at + size])
            at += size
        return tensor

    work = _all_gather_flat(gathered, mine, group=_group(state), async_op=True)
    return work.get_future().then(lambda f: f.value() and average())


class _Messages:
    """A buffer of ``rows`` messages, one per rank and phase: a chunk's payload (padded to
    whole fp32 words), then its blocks' scales (int8) or levels (sign). The encoders write
    into it and the decoders read from it in place, so one collective carries both (two
    would double the round trips) and no pass packs or unpacks them."""

    def __init__(self, state: CompressionState, key: int, name: str, rows: int, chunk: int, device) -> None:
        self.block = state.block_size
        self.per_element = 1 if state.codec == "int8" else 8  # values a payload element holds
        self.per_block = WORDS_PER_BLOCK[state.codec]
        payload_bytes = chunk // self.per_element  # chunk: whole bytes of bits
        payload_words = -(-payload_bytes // 4)
        self.buffer = state._scratch(key, name, rows * (payload_words + chunk // self.block * self.per_block),
                                     torch.float32, device)
        words = self.buffer.view(rows, -1)
        self.payload = words[:, :payload_words].view(torch.uint8)[:, :payload_bytes]
        if state.codec == "int8":
            self.payload = self.payload.view(torch.int8)
        self.scales = words[:, payload_words:]

    def piece(self, row: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Payload and scales ([1, ...] each) of values [start, start + count) of a row;
        start is a multiple of lcm(block, 8), as every segment's place in a row is."""
        first, first_word = start // self.per_element, start // self.block * self.per_block
        return (self.payload[row:row + 1, first:first + -(-count // self.per_element)],
                self.scales[row:row + 1, first_word:first_word + -(-count // self.block) * self.per_block])

    @property
    def bytes_per_row(self) -> int:
        return self.buffer.numel() * 4 // self.payload.shape[0]


def _encode_rank_major(state: CompressionState, plan: _Layout, tensor: torch.Tensor, error: torch.Tensor,
                       outgoing: _Messages, key: int) -> None:
    """Phase 1's encoding of ``tensor`` in the plan's rank-major layout, into ``outgoing``.
    A rank's piece of a parameter is encoded straight from the bucket up to its last whole
    grain of lcm(block, 8) values (whole blocks, whole bytes of bits); the rest of it and its
    padding go through a small zero-padded copy, so every block sees the padded layout's
    values (the sign codec's means and levels count the padding's zeros)."""
    grain = math.lcm(state.block_size, 8)
    rows = error.view(plan.world, plan.chunk)
    estimate = state.feedback == "ef21"
    # A parameter's padding is under world grains, so no tail is longer than world + 1.
    tails = state._scratch(key, "tail", (plan.world + 1) * grain, tensor.dtype, tensor.device)
    for r in range(plan.world):
        for start, at, count, chunk in plan.pieces(r):
            direct = count // grain * grain
            if direct:
                _compress_into(state, tensor[start:start + direct], rows[r, at:at + direct],
                               *outgoing.piece(r, at, direct), estimate)
            if direct < chunk:
                tail = tails[:chunk - direct]
                tail[:count - direct].copy_(tensor[start + direct:start + count])
                tail[count - direct:].zero_()
                _compress_into(state, tail, rows[r, at + direct:at + chunk],
                               *outgoing.piece(r, at + direct, chunk - direct), estimate)


def _decode_into_bucket(state: CompressionState, plan: _Layout, gathered: _Messages, tensor: torch.Tensor,
                        decoded: torch.Tensor, shared: torch.Tensor | None) -> None:
    """The averaged chunks of every rank, decoded into their places in ``tensor``: an fp32
    bucket piece by piece in place, a 16-bit one through ``decoded`` (the decoders sum in
    fp32). With EF21 (``shared``: G) the chunks are changes: G takes them, the bucket G."""
    for r in range(plan.world):
        if shared is None and tensor.dtype == torch.float32:
            for start, at, count, _ in plan.pieces(r):
                if count:
                    _decompress_sum_into(state, *gathered.piece(r, at, count), tensor[start:start + count])
            continue
        source = decoded if shared is None else shared.view(plan.world, plan.chunk)[r]
        _decompress_sum_into(state, *gathered.piece(r, 0, plan.chunk), source, accumulate=shared is not None)
        for start, at, count, _ in plan.pieces(r):
            tensor[start:start + count].copy_(source[at:at + count])


def _restart_non_finite_estimates(state: CompressionState, key: int) -> None:
    """EF21 after a step with Inf / NaN gradients (an fp16 step GradScaler skips): their
    blocks came back with NaN scales, so every rank's G is NaN there; the estimates of those
    blocks restart at zero on every rank (h_r = H = G = 0; the server's residual of a
    non-finite block is already 0) instead of staying NaN."""
    shared = state.shared_estimates[key]
    restart = ~torch.isfinite(shared)
    shared.masked_fill_(restart, 0.0)
    state.worker_errors[key].masked_fill_(restart, 0.0)


def _two_phase(state: CompressionState, tensor: torch.Tensor, segments: tuple, key: int,
               world: int) -> torch.futures.Future:
    """The compressed all-reduce of the module docstring over ``segments`` of ``tensor``;
    ``key`` names the part's residuals and buffers."""
    plan = _Layout(segments, world, state.block_size)
    state._regroup(key, plan, tensor.device)
    chunk = plan.chunk
    worker_error = state.worker_errors[key]
    if not state.error_feedback:
        worker_error.zero_()
    # Messages as sent and received in phase 1 (one per rank), this rank's averaged chunk and
    # every rank's as gathered in phase 2; the sum of a phase's chunks, decoded.
    outgoing = _Messages(state, key, "outgoing", world, chunk, tensor.device)
    incoming = _Messages(state, key, "incoming", world, chunk, tensor.device)
    mine = _Messages(state, key, "mine", 1, chunk, tensor.device)
    gathered = _Messages(state, key, "gathered", world, chunk, tensor.device)
    decoded = state._scratch(key, "decoded", chunk, torch.float32, tensor.device)
    _encode_rank_major(state, plan, tensor, worker_error, outgoing, key)
    state._current.add(2 * (world - 1) * outgoing.bytes_per_row,
                       2 * (world - 1) * sum(seg[2] for seg in segments) * 4 // world)
    result = _future_on(tensor.device)

    def fail(error: BaseException) -> None:
        if not result.done():
            result.set_exception(error)

    def finish(done: torch.futures.Future) -> None:
        try:
            done.value()
            _decode_into_bucket(state, plan, gathered, tensor, decoded, state.shared_estimates.get(key))
            if state.feedback == "ef21" and not torch.isfinite(gathered.scales).all():
                _restart_non_finite_estimates(state, key)
            result.set_result(tensor)
        except BaseException as error:  # a failed collective must reach the caller, not hang it
            fail(error)

    def reduce_chunk(issued) -> None:
        try:
            exchanged.wait()  # not this callback's own future: on CUDA, the stream must wait for it
            _decompress_sum_into(state, incoming.payload, incoming.scales, decoded)
            server_error = state.server_errors[key]
            if not state.error_feedback:
                server_error.zero_()
            _compress_into(state, decoded.div_(world), server_error, mine.payload, mine.scales)
            work = _all_gather_flat(gathered.buffer, mine.buffer, group=_gather_group(state), async_op=True)
            issued()
            work.get_future().then(finish)
        except BaseException as error:
            issued()
            fail(error)

    # Phase 1 now, from the hook (bucket order); phase 2 once it has arrived and the previous
    # bucket's phase 2 is out (a callback, never blocking).
    exchanged = dist.all_to_all_single(incoming.buffer, outgoing.buffer, group=_group(state),
                                       async_op=True).get_future()
    _after_previous_gathers(state, exchanged, reduce_chunk)
    return result


def compressed_allreduce_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: ``ddp.register_comm_hook(state, compressed_allreduce_hook)``."""
    buffer = bucket.buffer()
    layout = tuple((state._key(p), (g.data_ptr() - buffer.data_ptr()) // g.element_size(), g.numel())
                   for p, g in zip(bucket.parameters(), bucket.gradients(), strict=True))
    future = compressed_allreduce(state, buffer, bucket.index(), layout)
    if bucket.is_last():
        state._end_step()
    return future
