"""DDP step time over a real, rate-limited link: each worker is its own "host".

Needs root and iproute2 (`ip`, `tc`). The script says what it does and undoes it: it
creates network namespaces effgen-bench0..N-1, links every worker's namespace to namespace
0 (the hub, which forwards between them like a switch) with a veth pair (rank 0 is
10.77.1.1; worker r is 10.77.<r>.2 on its own link), limits every link direction with a
`tbf` qdisc to --rate, runs one gloo DDP worker per namespace for each communication hook,
and deletes the namespaces at the end (also on error or Ctrl-C). Traffic only goes to
addresses on those veth links.

    sudo .venv/bin/python benchmarks/netns_allreduce.py --rate 1gbit --params 25
    sudo .venv/bin/python benchmarks/netns_allreduce.py --rate 10gbit --workers 4

Reports per hook: median step time (forward + backward, where DDP waits for the
all-reduce), bytes the hook sent per worker per step, and the speedup over plain DDP.

With --train-steps N the workers instead train an MLP of the same size on scikit-learn's
digits (ddp_digits_worker) for N steps with every hook, to compare the hooks at equal
loss: besides step times it reports the final training and test loss and how long each
hook took to reach each of some losses (--target: by default the worst hook's final loss,
which every hook reached; or a hook's final loss, e.g. powersgd; or numbers), and the
speedups at equal loss over plain DDP and PowerSGD.

    sudo .venv/bin/python benchmarks/netns_allreduce.py --rate 1gbit --train-steps 320 --target 0.2 0.1 0.05
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from effgen_kernels.bench.ddp_worker import digits_mlp

PREFIX = "effgen-bench"
# PowerSGD (rank 4) runs with one bucket (see ddp_step_worker): with several in flight, its
# callback-issued all-reduces reach gloo in a different order per rank and abort it.
HOOKS = ("plain", "fp16", "powersgd", "int8", "sign")
EXTRA_HOOKS = ("int8-ef21", "sign-ef21")  # ours with EF21 feedback, on request


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def namespace(rank: int) -> str:
    return f"{PREFIX}{rank}"


def setup(workers: int, rate: str) -> None:
    """Namespace 0 is the hub: one veth link from it to every other worker's namespace."""
    print(f"setting up {workers} network namespaces ({PREFIX}0..{workers - 1}), veth links limited to {rate} "
          f"each way", file=sys.stderr)
    for rank in range(workers):
        sh("ip", "netns", "add", namespace(rank))
        sh("ip", "-n", namespace(rank), "link", "set", "lo", "up")
    for rank in range(1, workers):
        hub, leaf = f"eb{rank}h", f"eb{rank}l"
        sh("ip", "link", "add", hub, "netns", namespace(0), "type", "veth", "peer", "name", leaf, "netns",
           namespace(rank))
        sh("ip", "-n", namespace(0), "addr", "add", f"10.77.{rank}.1/24", "dev", hub)
        sh("ip", "-n", namespace(rank), "addr", "add", f"10.77.{rank}.2/24", "dev", leaf)
        for ns, dev in ((namespace(0), hub), (namespace(rank), leaf)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "1mb",
               "latency", "100ms")
        # Workers reach each other through the hub namespace (forwarding on).
        sh("ip", "-n", namespace(rank), "route", "add", "10.77.0.0/16", "via", f"10.77.{rank}.1")
    sh("ip", "netns", "exec", namespace(0), "sysctl", "-qw", "net.ipv4.ip_forward=1")


def teardown(workers: int) -> None:
    for rank in range(workers):
        subprocess.run(["ip", "netns", "del", namespace(rank)], capture_output=True)
    print(f"removed the namespaces {PREFIX}0..{workers - 1}", file=sys.stderr)


def address(rank: int) -> str:
    return "10.77.1.1" if rank == 0 else f"10.77.{rank}.2"


def run_hook(worker: str, hook: str, workers: int, steps: int, hidden: int, layers: int, out: str,
             *extra_args) -> None:
    """Runs effgen_kernels.bench.ddp_worker.<worker> for ``hook`` in every namespace."""
    procs = []
    for rank in range(workers):
        code = (f"from effgen_kernels.bench.ddp_worker import {worker}; "
                f"{worker}({rank}, {workers}, 29611, {hook!r}, {steps}, {out!r}, {hidden}, {layers}, "
                f"{address(0)!r}{''.join(f', {a!r}' for a in extra_args)})")
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "eb1h" if rank == 0 else f"eb{rank}l"}
        procs.append(subprocess.Popen(["ip", "netns", "exec", namespace(rank), sys.executable, "-c", code], env=env))
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise RuntimeError(f"a worker for hook {hook} failed (exit {p.returncode})")


# Training losses are compared as the mean over ranks and the last SMOOTHING steps.
SMOOTHING = 20


def training_summary(ranks: list[dict]) -> dict:
    """One hook's digits run from every rank's record: rank 0's step times, the loss
    curve (mean over ranks per step, then a trailing mean), the test loss."""
    losses = torch.tensor([r["losses"] for r in ranks]).mean(0)
    smoothed = [losses[max(0, i + 1 - SMOOTHING):i + 1].mean().item() for i in range(len(losses))]
    times = ranks[0]["times_s"]
    return {"median_s": statistics.median(times[4:]), "bytes_sent": ranks[0]["bytes_sent"],
            "elapsed_s": list(itertools.accumulate(times)), "smoothed_loss": smoothed,
            "final_loss": smoothed[-1], "test_loss": ranks[0]["test_loss"],
            "test_accuracy": ranks[0]["test_accuracy"]}


def time_to_loss(summary: dict, target: float) -> float | None:
    """Seconds of training until the smoothed loss first reached ``target`` (None: never)."""
    reached = next((i for i, loss in enumerate(summary["smoothed_loss"]) if loss <= target), None)
    return None if reached is None else summary["elapsed_s"][reached]


def target_loss(results: dict, target: str) -> float:
    """--target: a loss, a hook's name (that hook's final loss), or "worst" (the highest
    final loss, which every hook reached)."""
    if target == "worst":
        return max(r["final_loss"] for r in results.values())
    if target in results:
        return results[target]["final_loss"]
    return float(target)  # main() checked it before the runs


def print_training(results: dict, rate: str, targets: list[float]) -> None:
    plain = results.get("plain")
    print(f"digits, links {rate}: training loss = mean over ranks and the last {SMOOTHING} steps")
    print(f"{'hook':<9} {'step ms':>8} {'speedup':>8} {'final loss':>11} {'test loss':>10} {'test acc':>9}")
    for hook, r in results.items():
        step_speedup = "-" if plain is None else f"{plain['median_s'] / r['median_s']:.2f}x"
        print(f"{hook:<9} {1e3 * r['median_s']:8.1f} {step_speedup:>8} {r['final_loss']:11.4f} "
              f"{r['test_loss']:10.4f} {r['test_accuracy']:9.3f}")
    peers = [peer for peer in ("plain", "powersgd") if peer in results]
    versus = f" (and {' / '.join(peers)}'s time over the hook's: the speedup at equal loss)" if peers else ""
    print(f"seconds to reach each loss{versus}")
    print(f"{'hook':<9} " + " ".join(f"{f'loss {t:.4f}':>21}" for t in targets))
    for hook in results:
        print(f"{hook:<9} " + " ".join(f"{equal_loss_cell(results, hook, t, peers):>21}" for t in targets))


def equal_loss_cell(results: dict, hook: str, target: float, peers: list[str]) -> str:
    """"seconds (peer's seconds / hook's, per peer)" to reach ``target``, or "not reached"."""
    seconds = time_to_loss(results[hook], target)
    if seconds is None:
        return "not reached"
    if not peers:
        return f"{seconds:.1f}"
    ratios = [time_to_loss(results[peer], target) for peer in peers]
    return f"{seconds:.1f} (" + ", ".join("-" if t is None else f"{t / seconds:.2f}x" for t in ratios) + ")"


def print_steps(results: dict, rate: str, workers: int, params: int) -> None:
    plain = results.get("plain", {}).get("median_s")
    fp32_ring = 2 * (workers - 1) * params * 4 // workers
    print(f"{workers} workers, links {rate}, {params / 1e6:.1f}M parameters (fp32 ring all-reduce "
          f"{fp32_ring / 1e6:.1f} MB sent per worker per step)")
    print(f"{'hook':<9} {'step ms':>9} {'MB sent/step':>13} {'speedup vs plain':>17}")
    for hook, r in results.items():
        sent = "-" if r["bytes_sent"] is None else f"{r['bytes_sent'] / 1e6:.2f}"
        speedup = "-" if plain is None else f"{plain / r['median_s']:.2f}x"
        print(f"{hook:<9} {1e3 * r['median_s']:9.1f} {sent:>13} {speedup:>17}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link direction (e.g. 1gbit, 10gbit)")
    parser.add_argument("--params", type=float, default=25.0, help="model size in millions of parameters")
    parser.add_argument("--steps", type=int, default=24, help="steps per hook; the first 4 are not timed")
    parser.add_argument("--hooks", nargs="+", default=list(HOOKS), choices=HOOKS + EXTRA_HOOKS)
    parser.add_argument("--train-steps", type=int, default=None,
                        help="train on digits for this many steps per hook instead of timing steps")
    parser.add_argument("--target", nargs="+", default=["worst"],
                        help="with --train-steps: time the hooks to these losses, each a number, a hook's final "
                             "loss (its name) or the worst final loss (default)")
    parser.add_argument("--min-compress-numel", type=int, default=None,
                        help="with --train-steps: our hooks send smaller parameters exactly (default: the state's)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="with --train-steps: our hooks' values per compression block (default: the state's)")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0,
                        help="DDP's bucket_cap_mb for every hook but PowerSGD (one bucket); on a slow link a "
                             "smaller first bucket starts a compressed hook's exchange sooner")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("netns_allreduce.py needs root (it creates network namespaces and tc qdiscs)")
    training = args.train_steps is not None
    if (args.train_steps if training else args.steps) <= 4:
        sys.exit("--steps / --train-steps: more than 4 (the first 4 steps are not timed)")
    for target in args.target if training else ():
        if target != "worst" and target not in args.hooks:
            try:
                float(target)
            except ValueError:
                sys.exit(f"--target {target!r} is neither a loss, nor 'worst', nor one of --hooks")
    layers = 4
    hidden = int(math.sqrt(args.params * 1e6 / layers))
    if training:
        worker, steps, extra_args = "ddp_digits_worker", args.train_steps, (args.min_compress_numel,
                                                                            args.bucket_cap_mb, args.block_size)
        params = sum(p.numel() for p in digits_mlp(hidden, layers).parameters())
    else:
        worker, steps, extra_args = "ddp_step_worker", args.steps, (args.bucket_cap_mb,)
        params = layers * (hidden * hidden + hidden)
    teardown(args.workers)  # leftovers of an interrupted run
    results = {}
    try:
        setup(args.workers, args.rate)
        with tempfile.TemporaryDirectory() as out:
            os.chmod(out, 0o777)
            for hook in args.hooks:
                print(f"  {hook}: {args.workers} workers, {params / 1e6:.1f}M parameters, {steps} steps ...",
                      file=sys.stderr, flush=True)
                run_hook(worker, hook, args.workers, steps, hidden, layers, out, *extra_args)
                if training:
                    ranks = [torch.load(os.path.join(out, f"{hook}-{r}.pt")) for r in range(args.workers)]
                    results[hook] = training_summary(ranks)
                else:
                    results[hook] = torch.load(os.path.join(out, f"{hook}.pt"))
    finally:
        teardown(args.workers)
    report = {"rate": args.rate, "workers": args.workers, "params": params, "bucket_cap_mb": args.bucket_cap_mb}
    if training:
        report.update(train_steps=steps, min_compress_numel=args.min_compress_numel, block_size=args.block_size,
                      target_losses=[target_loss(results, target) for target in args.target], results=results)
        print_training(results, args.rate, report["target_losses"])
    else:
        print_steps(results, args.rate, args.workers, params)
        report["results"] = {h: {"median_s": r["median_s"], "bytes_sent": r["bytes_sent"]} for h, r in results.items()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
