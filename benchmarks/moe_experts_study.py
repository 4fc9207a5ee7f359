"""Time a transformers 5 mixture-of-experts block with its experts quantized by quantize_
(a layer per expert and projection, effgen_kernels/nn/experts.py) against the same block
in fp32 and bf16, as transformers runs it (its default experts implementation).

Several blocks with random weights (a Mixtral experts block each) are called in turn, each
call routing its tokens to other experts than the call before, so that the weights read
come from memory, not the cache (--blocks x experts x 3 matrices: well past the L3 here).
Our layers and the peers alternate in one loop; medians over --reps calls.

    python benchmarks/moe_experts_study.py --tokens 1 8 --json moe.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

import effgen_kernels as ek


def experts_blocks(hidden: int, intermediate: int, experts: int, blocks: int) -> list[torch.nn.Module]:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    config = MixtralConfig(hidden_size=hidden, intermediate_size=intermediate, num_local_experts=experts)
    config._experts_implementation = "eager"
    made = []
    for seed in range(blocks):
        block = MixtralExperts(config).eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in block.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        made.append(block)
    return made


def routings(calls: int, tokens: int, experts: int, top_k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per call, top_k distinct experts a token, starting where the last call's left off."""
    generator = torch.Generator().manual_seed(0)
    out, start = [], 0
    for _ in range(calls):
        index = torch.stack([(start + torch.randperm(experts, generator=generator)[:top_k]) % experts
                             for _ in range(tokens)])
        start += top_k
        out.append((index, torch.rand(tokens, top_k, generator=generator).softmax(-1)))
    return out


def time_variants(variants: dict[str, list[torch.nn.Module]], hidden: int, tokens: int, experts: int, top_k: int,
                  reps: int) -> dict[str, float]:
    """Median seconds a call of each variant, interleaved: variant after variant, call by call."""
    routes = routings(reps, tokens, experts, top_k)
    x = torch.randn(tokens, hidden)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for call, (index, weights) in enumerate(routes):
            for name, blocks in variants.items():
                block = blocks[call % len(blocks)]
                inputs = x.bfloat16() if name.endswith("bf16") else x
                begin = time.perf_counter()
                block(inputs, index, weights)
                times[name].append(time.perf_counter() - begin)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    fp32 = experts_blocks(args.hidden, args.intermediate, args.experts, args.blocks)
    variants = {"fp32": fp32, "bf16": [copy.deepcopy(b).bfloat16() for b in fp32]}
    for name in ("W8A16", "W8A16 bf16"):  # bf16: the quantized blocks cast, x in bf16
        blocks = [copy.deepcopy(b) for b in fp32]
        for block in blocks:
            ek.quantize_(torch.nn.ModuleDict({"experts": block}), ek.Int8WeightOnlyConfig(), progress=False)
        variants[name] = [b.bfloat16() for b in blocks] if name.endswith("bf16") else blocks
    weight_bytes = 3 * args.hidden * args.intermediate * args.experts * args.blocks * 4
    print(f"{args.blocks} blocks x {args.experts} experts, hidden {args.hidden}, intermediate {args.intermediate}, "
          f"top-{args.top_k}: {weight_bytes / 2**20:.0f} MiB of fp32 weights, {torch.get_num_threads()} threads")
    results = {}
    for tokens in args.tokens:
        medians = time_variants(variants, args.hidden, tokens, args.experts, args.top_k, args.reps)
        results[tokens] = medians
        print(f"{tokens} tokens: " + ", ".join(f"{name} {seconds * 1e3:.3f} ms" for name, seconds in medians.items())
              + f" | W8A16 / fp32 {medians['fp32'] / medians['W8A16']:.2f}x, W8A16 bf16 / bf16 "
              f"{medians['bf16'] / medians['W8A16 bf16']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "median_s": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
