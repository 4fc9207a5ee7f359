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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

PREFIX = "effgen-bench"
# PowerSGD (rank 4) runs with one bucket (see ddp_step_worker): with several in flight, its
# callback-issued all-reduces reach gloo in a different order per rank and abort it.
HOOKS = ("plain", "fp16", "powersgd", "int8", "sign")


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


def run_hook(hook: str, workers: int, steps: int, hidden: int, layers: int, out: str) -> dict:
    procs = []
    for rank in range(workers):
        code = ("from effgen_kernels.bench.ddp_worker import ddp_step_worker; "
                f"ddp_step_worker({rank}, {workers}, 29611, {hook!r}, {steps}, {out!r}, {hidden}, {layers}, "
                f"{address(0)!r})")
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "eb1h" if rank == 0 else f"eb{rank}l"}
        procs.append(subprocess.Popen(["ip", "netns", "exec", namespace(rank), sys.executable, "-c", code], env=env))
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise RuntimeError(f"a worker for hook {hook} failed (exit {p.returncode})")
    return torch.load(os.path.join(out, f"{hook}.pt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link direction (e.g. 1gbit, 10gbit)")
    parser.add_argument("--params", type=float, default=25.0, help="model size in millions of parameters")
    parser.add_argument("--steps", type=int, default=24, help="steps per hook; the first 4 are not timed")
    parser.add_argument("--hooks", nargs="+", default=list(HOOKS), choices=HOOKS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("netns_allreduce.py needs root (it creates network namespaces and tc qdiscs)")
    layers = 4
    hidden = int(math.sqrt(args.params * 1e6 / layers))
    params = layers * (hidden * hidden + hidden)
    teardown(args.workers)  # leftovers of an interrupted run
    results = {}
    try:
        setup(args.workers, args.rate)
        with tempfile.TemporaryDirectory() as out:
            os.chmod(out, 0o777)
            for hook in args.hooks:
                print(f"  {hook}: {args.workers} workers, {params / 1e6:.1f}M parameters, {args.steps} steps ...",
                      file=sys.stderr, flush=True)
                results[hook] = run_hook(hook, args.workers, args.steps, hidden, layers, out)
    finally:
        teardown(args.workers)
    plain = results.get("plain", {}).get("median_s")
    fp32_ring = 2 * (args.workers - 1) * params * 4 // args.workers
    print(f"{args.workers} workers, links {args.rate}, {params / 1e6:.1f}M parameters (fp32 ring all-reduce "
          f"{fp32_ring / 1e6:.1f} MB sent per worker per step)")
    print(f"{'hook':<9} {'step ms':>9} {'MB sent/step':>13} {'speedup vs plain':>17}")
    for hook, r in results.items():
        sent = "-" if r["bytes_sent"] is None else f"{r['bytes_sent'] / 1e6:.2f}"
        speedup = "-" if plain is None else f"{plain / r['median_s']:.2f}x"
        print(f"{hook:<9} {1e3 * r['median_s']:9.1f} {sent:>13} {speedup:>17}")
    if args.json:
        args.json.write_text(json.dumps({"rate": args.rate, "workers": args.workers, "params": params,
                                         "results": {h: {"median_s": r["median_s"], "bytes_sent": r["bytes_sent"]}
                                                     for h, r in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
