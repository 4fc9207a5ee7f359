"""Speculative decoding of SmolLM2-135M with a quantized copy of itself as the draft
(``quantized_draft``): greedy generate, plain against ``assistant_model=draft``, for each
draft format, the runs interleaved round by round over a few prompts. Prints per format the
median decode tokens/s, its ratio to the plain model's from the same rounds, the tokens the
model accepted per forward it ran (plain: 1), whether the tokens equal the plain model's,
and the memory the draft adds (what it does not share with the model). Needs the models extra.

    python benchmarks/speculative_study.py --new-tokens 64 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import effgen_kernels as ek
from effgen_kernels.demo import forwards_counted
from effgen_kernels.models import lee_sentences, load_smollm2

DRAFTS = {"w8a8": ek.Int8Config, "w8a16": ek.Int8WeightOnlyConfig, "ternary": ek.TernaryConfig}


def added_bytes(draft: torch.nn.Module, model: torch.nn.Module) -> int:
    """Bytes of the draft's tensors that are not the model's own."""
    shared = {id(t) for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in (*draft.parameters(), *draft.buffers()) if id(t) not in shared)


@torch.inference_mode()
def decode(model, ids: torch.Tensor, new_tokens: int, pad: int, **options) -> tuple[torch.Tensor, float]:
    begin = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=pad, **options)
    return out, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=3, help="Lee corpus sentences' first words as prompts")
    parser.add_argument("--drafts", default="w8a8,w8a16", help=f"of {', '.join(DRAFTS)}")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    drafts = {name: ek.quantized_draft(model, DRAFTS[name](), progress=False) for name in args.drafts.split(",")}
    prompts = [tokenizer(" ".join(s.split()[:8]), return_tensors="pt").input_ids
               for s in lee_sentences(args.prompts)]
    pad = tokenizer.eos_token_id
    decode(model, prompts[0], 4, pad)  # warm-up
    times = {name: [] for name in ("plain", *drafts)}
    forwards, same = dict.fromkeys(drafts, 0), dict.fromkeys(drafts, True)
    for _ in range(args.rounds):
        for ids in prompts:
            reference, seconds = decode(model, ids, args.new_tokens, pad)
            times["plain"].append(seconds)
            for name, draft in drafts.items():
                with forwards_counted(model) as counted:
                    out, seconds = decode(model, ids, args.new_tokens, pad, assistant_model=draft)
                times[name].append(seconds)
                forwards[name] += len(counted)
                same[name] &= torch.equal(out, reference)
    runs = args.rounds * len(prompts)
    plain_rate = args.new_tokens / statistics.median(times["plain"])
    print(f"SmolLM2-135M fp32, greedy, {args.new_tokens} new tokens, {len(prompts)} prompts x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"  plain: {plain_rate:.1f} tok/s")
    for name, draft in drafts.items():
        rate = args.new_tokens / statistics.median(times[name])
        print(f"  draft {name}: {rate:.1f} tok/s ({rate / plain_rate:.2f}x), "
              f"{args.new_tokens * runs / forwards[name]:.2f} tokens a model forward, "
              f"same tokens: {'yes' if same[name] else 'NO'}, draft adds {added_bytes(draft, model) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
