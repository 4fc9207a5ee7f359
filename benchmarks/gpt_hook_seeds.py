"""How far a compressed hook's loss ends from plain DDP's, over several seeds: `effgen
demo` stage 2's GPT (AdamW, lr 2e-3, the standard library's source) on 2 gloo workers,
each hook against plain all-reduce with the same seed (initial model and batches), loss =
mean of 20 steps before each checkpoint. One seed's gap swings by several percent
(RESULTS.md, session 40), so compare hooks by their mean over seeds.

A hook is CompressionState's options after the codec, comma separated:

    python benchmarks/gpt_hook_seeds.py --steps 600 --seeds 0,1,2,3,4 \\
        int8 sign sign,feedback=ef21,block_size=64 sign,feedback=ef21,block_size=64,warmup_steps=20

About 20 s a run of 600 steps on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

from effgen_kernels.bench.ddp_worker import demo_train_worker, run_workers

WINDOW = 20  # steps averaged before each checkpoint


def hook_options(spec: str) -> dict:
    """"sign,feedback=ef21,block_size=64" -> CompressionState's keyword arguments."""
    codec, *pairs = spec.split(",")
    options = {"codec": codec}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"hook {spec!r}: expected key=value after the codec, got {pair!r}")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return options


def train(spec: str, steps: int, seed: int) -> list[float]:
    """Rank 0's loss at every step of one run."""
    with tempfile.TemporaryDirectory() as out:
        options = None if spec == "plain" else hook_options(spec)
        run_workers(demo_train_worker, 2, out, spec, steps, seed, options, "   ", timeout=3600,
                    what=f"GPT worker ({spec})")
        return torch.load(f"{out}/{spec}.pt")["losses"]


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",")]


def windowed(losses: list[float], checkpoints: list[int]) -> list[float]:
    return [statistics.fmean(losses[k - WINDOW:k]) for k in checkpoints]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hooks", nargs="+", help="codec[,key=value...] (plain DDP runs as the reference)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2, 3, 4], help="comma separated")
    parser.add_argument("--checkpoints", type=int_list, help="steps to compare at, comma separated (default: thirds)")
    parser.add_argument("--json", help="write every run's windowed losses here")
    args = parser.parse_args()
    for spec in args.hooks:
        hook_options(spec)  # a typo fails before the first run
    checkpoints = args.checkpoints or [args.steps // 3, 2 * args.steps // 3, args.steps]
    if min(checkpoints) < WINDOW or max(checkpoints) > args.steps:
        parser.error(f"checkpoints must lie in [{WINDOW}, --steps]")
    results = {spec: {seed: windowed(train(spec, args.steps, seed), checkpoints) for seed in args.seeds}
               for spec in ("plain", *args.hooks)}
    plain = results.pop("plain")
    print(f"plain DDP's loss, mean over seeds {args.seeds}: "
          + ", ".join(f"step {k} {statistics.fmean(plain[s][i] for s in args.seeds):.4f}"
                      for i, k in enumerate(checkpoints)))
    print("each hook's loss over plain DDP's with the same seed: mean [min, max] over the seeds")
    print(f"{'hook':<56}" + "".join(f"{'step ' + str(k):>24}" for k in checkpoints))
    for spec, by_seed in results.items():
        cells = []
        for i in range(len(checkpoints)):
            gaps = [100 * (by_seed[s][i] / plain[s][i] - 1) for s in args.seeds]
            cells.append(f"{statistics.fmean(gaps):+.1f}% [{min(gaps):+.1f}, {max(gaps):+.1f}]")
        print(f"{spec:<56}" + "".join(f"{c:>24}" for c in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "checkpoints": checkpoints, "losses": {"plain": plain, **results}}, f,
                      indent=1)


if __name__ == "__main__":
    main()
