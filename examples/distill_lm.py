"""Knowledge distillation on real text: does a teacher help small and low-bit students?

1. Train a small GPT-style byte-level teacher on the Python standard library's source.
2. Train three students for the same number of steps, each with and without distillation:
   (a) a half-width fp32 student from scratch,
   (b) a ternary student (a copy of the teacher, prepared with TernaryConfig, trained, then
       converted to packed 2-bit TernaryLinear layers),
   (c) a binary student (the same with BinaryConfig: 1-bit weights).
   "Without" trains on the labels only (alpha=0); "with" uses DistillationLoss.
3. Report validation perplexity (bytes) of every model, the converted students measured
   with the packed kernels.

    python examples/distill_lm.py                 # the recorded experiment (~30 min on 2 cores)
    python examples/distill_lm.py --quick         # a minute, for a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import effgen_kernels as ek
from effgen_kernels.distill import DistillationLoss, Distiller
from effgen_kernels.gpt import GPT, GPTConfig, evaluate_perplexity, lm_batch, stdlib_source_bytes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term")
    parser.add_argument("--eval-windows", type=int, default=400, help="validation windows of --context bytes")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--out", type=Path, default=Path("distill_lm_results.json"))
    return parser.parse_args()


def train(teacher, student, data, steps: int, lr: float, alpha: float, temperature: float, args, seed: int) -> None:
    """Train ``student`` for ``steps``; alpha=0 is plain next-token training."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss = DistillationLoss(temperature=temperature, alpha=alpha)
    distiller = Distiller(teacher, student, loss, optimizer, scheduler=scheduler, max_grad_norm=1.0)
    distiller.fit(lambda i: lm_batch(data, i, args.batch_size, args.context, seed=seed), steps)


def main() -> None:
    args = parse_args()
    if args.quick:
        args.teacher_steps, args.student_steps, args.dim, args.layers, args.eval_windows = 40, 20, 64, 2, 20
    torch.manual_seed(0)
    train_bytes, val_bytes = stdlib_source_bytes()
    config = GPTConfig(context=args.context, dim=args.dim, layers=args.layers, heads=4)

    def ppl(model) -> float:
        return evaluate_perplexity(model, val_bytes, args.context, max_windows=args.eval_windows)

    results, started = {"config": vars(args) | {"out": str(args.out)}}, time.monotonic()
    teacher = GPT(config)
    train(None, teacher, train_bytes, args.teacher_steps, 2e-3, 0.0, 1.0, args, seed=1)  # labels only
    teacher.eval()
    results["teacher"] = ppl(teacher)
    print(f"teacher ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M params): "
          f"val ppl {results['teacher']:.3f}", flush=True)

    def half_width():
        torch.manual_seed(2)
        return GPT(config.scaled(dim=args.dim // 2))

    def quantized(qconfig):
        def make():
            student = copy.deepcopy(teacher).train()
            ek.prepare(student, qconfig, filter_fn=lambda module, name: name != "lm_head")
            return student
        return make

    students = {"half_width_fp32": (half_width, 3e-3), "ternary": (quantized(ek.TernaryConfig()), 5e-4),
                "binary": (quantized(ek.BinaryConfig()), 5e-4)}
    for name, (make, lr) in students.items():
        for mode, alpha in (("labels_only", 0.0), ("distilled", args.alpha)):
            student = make()
            train(teacher if alpha > 0 else None, student, train_bytes, args.student_steps, lr, alpha,
                  args.temperature, args, seed=2)
            student.eval()
            converted = ek.convert(student)  # packed 2-bit / 1-bit kernels from here on
            results[f"{name}/{mode}"] = ppl(student)
            print(f"{name:16s} {mode:12s} val ppl {results[f'{name}/{mode}']:.3f}"
                  f"{f' ({len(converted)} layers packed)' if converted else ''}", flush=True)
    results["minutes"] = (time.monotonic() - started) / 60
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
