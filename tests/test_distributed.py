"""Compressed all-reduce and the DDP hook, in real multi-process runs (gloo on loopback)."""

import json
import math
import statistics
import time

import distributed_workers as workers
import pytest
import torch
from conftest import load_script

from effgen_kernels import reference as ref
from effgen_kernels.bench.ddp_worker import ddp_digits_worker, demo_train_worker, digits_mlp, run_workers

pytestmark = pytest.mark.distributed


def run(fn, world: int, out, *args, timeout: float = 180.0) -> None:
    """Starts `world` processes of fn(rank, world, port, out, *args); fails, never hangs."""
    run_workers(fn, world, str(out), *args, timeout=timeout, what=fn.__name__)


def test_run_workers_reports_a_failing_worker(tmp_path):
    with pytest.raises(RuntimeError, match=r"broken failed or did not finish within 60 s \(exit codes \[1, 1\]\)"):
        run_workers(workers.fails, 2, str(tmp_path), timeout=60, what="broken")


def test_run_workers_kills_workers_past_one_deadline(tmp_path):
    begin = time.monotonic()
    with pytest.raises(RuntimeError, match=r"stuck failed or did not finish within 4 s \(exit codes \[-9, -9, -9\]\)"):
        run_workers(workers.hangs, 3, str(tmp_path), timeout=4, what="stuck")
    assert time.monotonic() - begin < 8  # the deadline is shared: not 4 s per worker


def reference_steps(world: int, n: int, steps: int, block: int, codec: str, overflow_step: int | None = None,
                    warmup_average: torch.Tensor | None = None):
    """What ref.compressed_allreduce gives for workers.allreduce_steps' gradients: each
    step's padded result and true mean, and the workers' and servers' residuals after.
    With ``warmup_average`` it is EF21 after one plain warm-up step, which gave that
    average (gloo's, whose order of sums the reference cannot know): the estimates start
    at the first step's gradients (workers: h_r = g_r, G = the average)."""
    unit = world * math.lcm(block, 8)
    padded = -(-n // unit) * unit
    worker_errors = [torch.zeros(padded) for _ in range(world)]
    server_errors = [torch.zeros(padded // world) for _ in range(world)]
    shared = None
    results, true_means = [], []
    for step in range(steps):
        grads = [torch.nn.functional.pad(workers.step_grads(r, step, n), (0, padded - n)) for r in range(world)]
        if step == overflow_step:
            grads[0][workers.OVERFLOW_INDEX] = float("inf")
        if warmup_average is not None and step == 0:
            worker_errors = [-g for g in grads]
            shared = torch.nn.functional.pad(warmup_average, (0, padded - n))
            results.append(shared.clone())
        else:
            results.append(ref.compressed_allreduce(grads, worker_errors, server_errors, codec, block, shared))
        true_means.append(torch.stack(grads).mean(0))
    return results, true_means, worker_errors, server_errors


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_compressed_allreduce_equals_the_reference_algorithm(tmp_path, world, codec):
    n, steps, block = 5000, 3, 64
    run(workers.allreduce_steps, world, tmp_path, codec, n, steps, block)
    outputs = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(world)]
    expected, true_means, worker_errors, server_errors = reference_steps(world, n, steps, block, codec)
    for step in range(steps):
        for out in outputs:
            assert torch.equal(out["results"][step], expected[step][:n]), (codec, world, step)
    # The right quantity: error feedback telescopes, so what was sent plus what is still
    # held back (the workers' mean residual, the servers' residual chunks) is the sum of the
    # true means, up to float rounding.
    held_back = torch.stack(worker_errors).mean(0) + torch.cat(server_errors)
    torch.testing.assert_close(sum(expected) + held_back, sum(true_means), rtol=0, atol=1e-5)
    traffic = outputs[0]["traffic"]
    # blocks of 64: int8 8 + 32 / 64 bits a value (3.76x), sign 1 + 2 * 32 / 64 (16x), less padding
    assert traffic.compression_ratio > (3.5 if codec == "int8" else 15)


STEPS_N, STEPS, STEPS_BLOCK = 5000, 4, 64  # run_steps' gradients: values, steps, block size


def run_steps(tmp_path, world: int, codec: str, feedback: str, overflow_step: int | None = None,
              device: str = "cpu"):
    """Every rank's workers.allreduce_steps output (EF21: after one plain warm-up step, which
    starts its estimates) and what reference_steps gives for them."""
    warmup = 1 if feedback == "ef21" else 0
    run(workers.allreduce_steps, world, tmp_path, codec, STEPS_N, STEPS, STEPS_BLOCK, overflow_step, None,
        torch.float32, 1 << 22, feedback, warmup, device)
    outputs = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(world)]
    warmup_average = outputs[0]["results"][0] if warmup else None
    return outputs, reference_steps(world, STEPS_N, STEPS, STEPS_BLOCK, codec, overflow_step, warmup_average)


@pytest.mark.parametrize("exchange", ["plain warm-up", "small parameters gathered", "compressed"])
def test_traffic_counters_count_what_a_rank_sends_and_receives(tmp_path, exchange):
    # A bucket of a 300- and a 4700-value parameter, int8 in blocks of 64, 3 ranks.
    world, n, sizes = 3, 5000, (300, 4700)
    warmup_steps, min_compress_numel = {"plain warm-up": (2, 0), "small parameters gathered": (0, 1000),
                                        "compressed": (0, 0)}[exchange]
    run(workers.allreduce_steps, world, tmp_path, "int8", n, 2, STEPS_BLOCK, None, sizes, torch.float32, 1 << 22,
        "classic", warmup_steps, "cpu", min_compress_numel)
    traffic = torch.load(tmp_path / "0.pt", weights_only=False)["traffic"]
    fp32_ring = 2 * (world - 1) * n * 4 // world  # what a plain all-reduce moves each way
    # each exchange (ring all-reduce, all_to_all of equal chunks, all_gather) is symmetric
    assert traffic.bytes_received == traffic.bytes_sent > 0
    assert traffic.bytes_uncompressed == fp32_ring
    if exchange == "plain warm-up":
        assert traffic.bytes_sent == fp32_ring
    elif exchange == "small parameters gathered":  # 300 fp32 values to each other rank, the rest in int8
        assert (world - 1) * 300 * 4 < traffic.bytes_sent < (world - 1) * 300 * 4 + 0.3 * fp32_ring
    else:
        assert traffic.bytes_sent < 0.3 * fp32_ring


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_ef21_allreduce_equals_the_reference_algorithm(tmp_path, world, codec):
    # One plain warm-up step starts the estimates at the exact gradients, then EF21 steps.
    n, steps, block = STEPS_N, STEPS, STEPS_BLOCK
    outputs, (expected, true_means, _, _) = run_steps(tmp_path, world, codec, "ef21")
    warmup_average = outputs[0]["results"][0]
    torch.testing.assert_close(warmup_average, true_means[0][:n], rtol=0, atol=1e-6)
    for step in range(steps):
        for out in outputs:
            assert torch.equal(out["results"][step], expected[step][:n]), (codec, world, step)
    # Not the classic results: the estimates change what is sent (same bytes, other bits).
    classic = reference_steps(world, n, steps, block, codec)[0]
    assert not torch.equal(classic[2], expected[2])
    assert outputs[0]["traffic"].compression_ratio > (3.5 if codec == "int8" else 15)


@pytest.mark.cuda
@pytest.mark.parametrize("codec,feedback", [("int8", "classic"), ("sign", "ef21")])  # each codec, each feedback
def test_the_compressed_allreduce_of_cuda_gradients_equals_the_reference(tmp_path, codec, feedback):
    # Two processes share the one GPU over gloo (NCCL wants a GPU a rank): the hook's CUDA
    # path (codecs, _out forms, EF21's flags, buffers on the gradients' device) against the
    # CPU reference, bit for bit, as the CUDA codecs match the CPU kernels.
    outputs, (expected, *_) = run_steps(tmp_path, 2, codec, feedback, device="cuda")
    for step in range(STEPS):
        for out in outputs:
            assert torch.equal(out["results"][step], expected[step][:STEPS_N]), (codec, feedback, step)


@pytest.mark.parametrize("feedback", ["classic", "ef21"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_a_bucket_of_parameters_equals_the_reference_per_parameter(tmp_path, codec, dtype, feedback):
    # Each parameter is padded and averaged on its own, whatever shares its bucket or part:
    # five of them in two parts, one too small to reach every rank (pieces of no values).
    # (EF21 without warm-up: its estimates start at zero.)
    world, sizes, steps, block = 3, (5000, 5, 130, 4099, 777), 3, 64
    n = sum(sizes)
    run(workers.allreduce_steps, world, tmp_path, codec, n, steps, block, None, sizes, dtype, 4000, feedback)
    outputs = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(world)]
    unit = world * math.lcm(block, 8)
    residuals = [([torch.zeros(-(-size // unit) * unit) for _ in range(world)],
                  [torch.zeros(-(-size // unit) * unit // world) for _ in range(world)],
                  torch.zeros(-(-size // unit) * unit) if feedback == "ef21" else None) for size in sizes]
    for step in range(steps):
        grads = [workers.step_grads(r, step, n).to(dtype) for r in range(world)]
        expected, at = torch.empty(n, dtype=dtype), 0
        for size, (worker_errors, server_errors, shared) in zip(sizes, residuals, strict=True):
            padded = [torch.nn.functional.pad(g[at:at + size], (0, len(worker_errors[0]) - size)) for g in grads]
            average = ref.compressed_allreduce(padded, worker_errors, server_errors, codec, block, shared)
            expected[at:at + size] = average[:size].to(dtype)
            at += size
        for out in outputs:
            assert torch.equal(out["results"][step], expected), (codec, dtype, step)


@pytest.mark.parametrize("feedback", ["classic", "ef21"])
@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_an_overflowing_step_reaches_the_result_and_no_later_step(tmp_path, codec, feedback):
    # Under fp16 AMP a step whose gradients overflow must come out non-finite on every rank
    # (GradScaler then skips it) and must not stay in the residuals (or EF21's estimates):
    # the next steps are finite and still the reference algorithm's, bit for bit.
    outputs, (expected, *_) = run_steps(tmp_path, 2, codec, feedback, overflow_step=2)
    for out in outputs:
        for step, result in enumerate(out["results"]):
            torch.testing.assert_close(result, expected[step][:STEPS_N], rtol=0, atol=0, equal_nan=True)
            if step == 2:
                assert result.isnan().any(), codec
            else:
                assert torch.isfinite(result).all(), (codec, step)


def train_digits(tmp_path, codec, steps=60, feedback="classic"):
    """Both ranks' results of DDP training on digits with ``codec`` (None: plain DDP)."""
    pytest.importorskip("sklearn")
    out = tmp_path / f"{codec}-{feedback}"
    out.mkdir()
    run(workers.train_ddp, 2, out, codec, steps, None, 25.0, 1 << 22, feedback)
    return [torch.load(out / f"{r}.pt", weights_only=False) for r in range(2)]


def train_both(tmp_path, codec, steps=60, feedback="classic"):
    """Final losses of plain DDP and of DDP with the hook (same seed, data, steps)."""
    plain = train_digits(tmp_path, None, steps)[0]
    ours = train_digits(tmp_path, codec, steps, feedback)
    for a, b in zip(ours[0]["params"], ours[1]["params"], strict=True):
        assert torch.equal(a, b)  # every rank applied the same averaged gradient
    assert ours[0]["traffic"].compression_ratio > (3.5 if codec == "int8" else 20)
    print(f"digits, 2 workers, {steps} steps: plain DDP loss {plain['losses'][-1]:.4f}, "
          f"{codec} hook {ours[0]['losses'][-1]:.4f} (first {ours[0]['losses'][0]:.4f})")
    return plain["losses"], ours[0]["losses"]


def test_ddp_training_with_the_int8_hook_matches_plain_ddp(tmp_path):
    plain, ours = train_both(tmp_path, "int8")
    assert ours[-1] <= plain[-1] * 1.02


def test_ddp_training_with_the_sign_hook_converges(tmp_path):
    plain, ours = train_both(tmp_path, "sign")
    assert ours[-1] < ours[0] / 10


def test_int8_hook_trains_at_least_as_well_as_powersgd(tmp_path):
    # PyTorch's PowerSGD (rank 4, error feedback, one bucket) is the peer: same data and steps.
    powersgd = train_digits(tmp_path, "powersgd")[0]["losses"][-1]
    int8 = train_digits(tmp_path, "int8")[0]["losses"][-1]
    print(f"digits, 2 workers, 60 steps: PowerSGD rank 4 loss {powersgd:.4f}, int8 hook {int8:.4f}")
    assert int8 <= powersgd


def test_ddp_training_with_the_sign_hook_is_within_5_percent(tmp_path):
    plain, ours = train_both(tmp_path, "sign")
    assert ours[-1] <= plain[-1] * 1.05


def test_under_adamw_the_demo_gpt_with_sign_adam_is_within_5_percent_and_int8_within_2(tmp_path):
    # The demo's GPT on real text (AdamW, 120 steps), last 20 steps' mean loss, each hook
    # against plain DDP with the same seed, averaged over seeds 0-4 as README and
    # benchmarks/gpt_hook_seeds.py state it: one seed's gap swings by several percent (EF21
    # with blocks of 64: -0.3% to +7.1% at 120 steps, mean +4.3%; RESULTS.md, sessions 40
    # and 57), so a single seed passed or failed by its luck. Under AdamW the default sign
    # hook drifts (+7%); EF21 with blocks of 64 holds it.
    gaps = {"int8": [], "sign-adam": []}
    for seed in range(5):
        final = {}
        for name in ("plain", *gaps):
            run_workers(demo_train_worker, 2, str(tmp_path), name, 120, seed, timeout=300, what=f"{name} seed {seed}")
            losses = torch.load(tmp_path / f"{name}.pt", weights_only=False)["losses"]
            assert statistics.fmean(losses[-20:]) < 0.7 * losses[0], (name, seed)  # every run trains
            final[name] = statistics.fmean(losses[-20:])
        for name, gap in gaps.items():
            gap.append(final[name] / final["plain"] - 1)
    print(f"demo GPT, AdamW, 120 steps, gap to plain DDP per seed: {gaps}")
    assert statistics.fmean(gaps["int8"]) <= 0.02
    assert statistics.fmean(gaps["sign-adam"]) <= 0.05


def test_ddp_training_with_ef21_feedback_trains(tmp_path):
    # On this full-batch problem (slowly changing gradients, momentum 0.9 at lr 0.1) EF21's
    # estimates lag: it ends near 0.27 against plain's 0.099 and classic feedback's 0.099
    # (the same in a one-process simulation), so only training is asserted here; where it
    # helps (minibatches, AdamW) is measured in benchmarks/RESULTS.md.
    _, ours = train_both(tmp_path, "sign", feedback="ef21")
    assert ours[-1] < ours[0] / 5


def test_bucket_parts_change_no_bit(tmp_path):
    # The digits MLP's one bucket in a part per parameter (part_numel=1) against one part.
    pytest.importorskip("sklearn")
    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    run(workers.train_ddp, 2, tmp_path / "whole", "int8", 6)
    run(workers.train_ddp, 2, tmp_path / "parts", "int8", 6, None, 25.0, 1)
    whole, parts = (torch.load(tmp_path / name / "0.pt", weights_only=False) for name in ("whole", "parts"))
    assert whole["losses"] == parts["losses"]
    for a, b in zip(whole["params"], parts["params"], strict=True):
        assert torch.equal(a, b)
    assert whole["traffic"].bytes_sent == parts["traffic"].bytes_sent


@pytest.mark.parametrize("codec,bucket_cap_mb,feedback", [("sign", 25.0, "classic"), ("int8", 0.01, "classic"),
                                                          ("sign", 0.01, "ef21")])
def test_checkpoint_restore_continues_identically(tmp_path, codec, bucket_cap_mb, feedback):
    # The restarted DDP runs its first step with its initial bucket layout (registration
    # order), the saved residuals come from the rebuilt one (gradient order; with tiny
    # buckets, other parameters per bucket too): they must follow their parameters (EF21's
    # shared estimates too).
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    run(workers.train_ddp, 2, tmp_path / "straight", codec, 12, None, bucket_cap_mb, 1 << 22, feedback)
    run(workers.train_ddp, 2, tmp_path / "resumed", codec, 12, 6, bucket_cap_mb, 1 << 22, feedback)
    a = torch.load(tmp_path / "straight" / "0.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "0.pt", weights_only=False)
    assert a["losses"][:7] == b["losses"][:7]  # the step at the restart uses the restored state
    assert a["losses"] == b["losses"]
    for p, q in zip(a["params"], b["params"], strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("codec", ["int8", "sign"])
def test_many_buckets_in_flight_keep_the_collectives_in_order(tmp_path, codec):
    # Tiny buckets: several compressed all-reduces are in flight at once; their collectives
    # must reach gloo in the same order on every rank, or the run deadlocks.
    run(workers.train_ddp, 2, tmp_path, codec, 6, None, 0.01, timeout=120.0)
    a, b = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2))
    for p, q in zip(a["params"], b["params"], strict=True):
        assert torch.equal(p, q)
    assert a["losses"][-1] < a["losses"][0]


def test_a_missing_peer_gives_an_error_not_a_hang(tmp_path):
    run(workers.missing_peer, 2, tmp_path, timeout=60.0)
    messages = (tmp_path / "0.txt").read_text().splitlines()
    assert len(messages) == 2 and all(m and m != "no error" for m in messages), messages


def test_distillation_with_a_ddp_student_and_the_compressed_hook(tmp_path):
    run(workers.distill_ddp, 2, tmp_path, 10)
    a, b = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2))
    for p, q in zip(a["params"], b["params"], strict=True):
        assert torch.equal(p, q)  # the hook averaged the same gradients on both ranks
    assert a["sent"] > 0
    assert a["losses"][-1] < a["losses"][0] - 0.1  # measured 2.78 -> 2.53 in 10 steps


@pytest.mark.parametrize("variant", ["bf16", "fp16", "no_sync", "find_unused", "static_graph", "bucket_view",
                                     "compiled"])
def test_int8_hook_under_ddp_variants_matches_plain_ddp(tmp_path, variant):
    pytest.importorskip("sklearn")
    steps, final = 30, {}
    for codec in (None, "int8"):
        folder = tmp_path / str(codec)
        folder.mkdir()
        run(workers.ddp_variant, 2, folder, codec, variant, steps)
        a, b = (torch.load(folder / f"{r}.pt", weights_only=False) for r in range(2))
        for p, q in zip(a["params"], b["params"], strict=True):
            assert torch.equal(p, q)
        final[codec] = a["losses"][-1]
        assert a["losses"][-1] < a["losses"][0] / 3
        if codec is not None:  # the hook compressed the last step's exchange
            assert a["traffic"].compression_ratio > 3.5
        assert (a["graphs"] > 0) == (variant == "compiled")
    print(f"{variant}: plain DDP loss {final[None]:.4f}, int8 hook {final['int8']:.4f}")
    assert final["int8"] <= final[None] * 1.02


@pytest.mark.parametrize("variant", ["fp16", "no_sync", "find_unused", "bucket_view"])
def test_ef21_feedback_under_ddp_variants_trains(tmp_path, variant):
    # EF21 keeps G in fp32 beside 16-bit buckets, estimates for parameters a step leaves
    # unused, and writes G into buckets that are the gradients themselves.
    pytest.importorskip("sklearn")
    run(workers.ddp_variant, 2, tmp_path, "int8", variant, 30, "ef21")
    a, b = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2))
    for p, q in zip(a["params"], b["params"], strict=True):
        assert torch.equal(p, q)
    assert a["losses"][-1] < a["losses"][0] / 3


def test_the_benchmarks_give_ddp_their_bucket_cap(tmp_path):
    # netns_allreduce.py --bucket-cap-mb: for our hooks, not for PowerSGD (one bucket, or gloo aborts).
    run(workers.bucket_caps, 1, tmp_path)
    caps = torch.load(tmp_path / "0.pt")
    params = sum(p.numel() for p in workers.make_model().parameters())
    assert caps["int8"] == int(0.5 * 2**20) and caps["powersgd"] > 4 * params


def test_the_digits_benchmark_trains_and_times_each_hook_to_a_loss(tmp_path):
    # netns_allreduce.py --train-steps: its worker (here on loopback, a small MLP) and the
    # summary that compares hooks at equal loss.
    pytest.importorskip("sklearn")
    netns, steps, world, hidden = load_script("benchmarks", "netns_allreduce"), 100, 2, 128
    params = sum(p.numel() for p in digits_mlp(hidden, 1).parameters())
    summaries = {}
    for hook in ("plain", "int8"):
        run_workers(ddp_digits_worker, world, hook, steps, str(tmp_path), hidden, 1, timeout=180, what=hook)
        ranks = [torch.load(tmp_path / f"{hook}-{r}.pt") for r in range(world)]
        assert all(len(r["times_s"]) == len(r["losses"]) == steps for r in ranks)
        assert 0 < ranks[0]["test_accuracy"] <= 1 and math.isfinite(ranks[0]["test_loss"])
        summary = summaries[hook] = netns.training_summary(ranks)
        last = [loss for r in ranks for loss in r["losses"][-netns.SMOOTHING:]]
        assert summary["final_loss"] == pytest.approx(sum(last) / len(last))
        assert summary["elapsed_s"][-1] == pytest.approx(sum(ranks[0]["times_s"]))
        first = sum(r["losses"][0] for r in ranks) / world
        assert summary["final_loss"] < 0.5 * first, (summary["final_loss"], first)  # it trains
    assert summaries["plain"]["bytes_sent"] is None
    fp32_ring = 2 * (world - 1) * params * 4 // world
    assert 0 < summaries["int8"]["bytes_sent"] < 0.3 * fp32_ring
    target = netns.target_loss(summaries, "worst")
    assert target == max(s["final_loss"] for s in summaries.values())
    for summary in summaries.values():
        seconds = netns.time_to_loss(summary, target)
        reached = summary["elapsed_s"].index(seconds)
        assert summary["smoothed_loss"][reached] <= target < min(summary["smoothed_loss"][:reached], default=math.inf)
    assert netns.time_to_loss(summaries["plain"], -1.0) is None
    int8_seconds = netns.time_to_loss(summaries["int8"], target)
    ratio = netns.time_to_loss(summaries["plain"], target) / int8_seconds
    assert netns.equal_loss_cell(summaries, "int8", target, ["plain"]) == f"{int8_seconds:.1f} ({ratio:.2f}x)"
    assert netns.equal_loss_cell(summaries, "plain", -1.0, ["plain"]) == "not reached"
    assert netns.equal_loss_cell(summaries, "int8", target, []) == f"{int8_seconds:.1f}"  # no peer ran
    assert netns.target_loss(summaries, "int8") == summaries["int8"]["final_loss"]
    assert netns.target_loss(summaries, "0.5") == 0.5
    # min_compress_numel reaches the hook: above every parameter's size, all go exact (gathered).
    run_workers(ddp_digits_worker, world, "int8", 3, str(tmp_path), hidden, 1, "127.0.0.1", 10**9, timeout=180)
    assert torch.load(tmp_path / "int8-0.pt")["bytes_sent"] == (world - 1) * params * 4
    # --block-size too: the sign codec's blocks of 64 send 2 bits a value (its default 512: 1.125).
    run_workers(ddp_digits_worker, world, "sign", 3, str(tmp_path), hidden, 1, "127.0.0.1", None, 25.0, 64,
                timeout=180)
    assert 0.0625 <= torch.load(tmp_path / "sign-0.pt")["bytes_sent"] / fp32_ring < 0.07


def test_the_gpt_seeds_benchmark_compares_each_hook_with_plain_on_the_same_seed(tmp_path, capsys, monkeypatch):
    # benchmarks/gpt_hook_seeds.py: hook specs, per-seed runs of the demo's GPT, the table.
    seeds_script = load_script("benchmarks", "gpt_hook_seeds")
    assert seeds_script.hook_options("sign,feedback=ef21,block_size=64") == {
        "codec": "sign", "feedback": "ef21", "block_size": 64}
    with pytest.raises(ValueError, match="key=value"):
        seeds_script.hook_options("sign,feedback")
    out = tmp_path / "seeds.json"
    spec = "sign,block_size=64,warmup_steps=3"
    monkeypatch.setattr("sys.argv", ["gpt_hook_seeds.py", "--steps", "22", "--seeds", "0,1", "--checkpoints",
                                     "20,22", "--json", str(out), spec])
    seeds_script.main()
    losses = json.loads(out.read_text())["losses"]
    assert set(losses) == {"plain", spec} and set(losses["plain"]) == {"0", "1"}
    assert losses["plain"]["0"] != losses["plain"]["1"]  # the seed draws the model and the batches
    assert losses["plain"]["0"] != losses[spec]["0"]
    gaps = [100 * (losses[spec][s][1] / losses["plain"][s][1] - 1) for s in ("0", "1")]
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(spec))
    assert f"{sum(gaps) / 2:+.1f}% [{min(gaps):+.1f}, {max(gaps):+.1f}]" in row
    # seed 0 is the demo's run: the same losses as demo_train_worker's defaults
    run_workers(demo_train_worker, 2, str(tmp_path), "plain", 22, timeout=180)
    demo = torch.load(tmp_path / "plain.pt", weights_only=False)["losses"]
    assert losses["plain"]["0"] == [statistics.fmean(demo[:20]), statistics.fmean(demo[2:22])]
