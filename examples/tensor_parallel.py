"""Tensor parallelism with quantized weight shards: every rank holds 1/p of each projection.

    torchrun --nproc_per_node 2 examples/tensor_parallel.py --model gpt --quant w8a16
    torchrun --nproc_per_node 3 examples/tensor_parallel.py --model smollm2 --quant w8a8

(SmolLM2-135M has 9 attention heads and 3 KV heads, so its tensor-parallel size must
divide 3.) Each rank builds the same model, keeps the single-process (quantized) model's
output for comparison, then cuts the q/k/v/o and MLP projections with parallelize(). It
prints the largest difference between the tensor-parallel and single-process logits and
the weight bytes each rank holds.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import time

import torch
import torch.distributed as dist

import effgen_kernels as ek
from effgen_kernels.distributed import TRANSFORMER_PLAN, full_state_dict, parallelize, shutdown
from effgen_kernels.gpt import GPT, GPTConfig

QUANT = {"none": None, "w8a16": ek.Int8WeightOnlyConfig(), "w8a8": ek.Int8Config(), "ternary": ek.TernaryConfig(),
         "binary": ek.BinaryConfig()}


def build(name: str):
    """(model, input ids) the same on every rank."""
    torch.manual_seed(0)
    if name == "gpt":
        model = GPT(GPTConfig(context=128, dim=256, layers=4, heads=8)).eval()
        return model, torch.randint(0, 256, (2, 128), generator=torch.Generator().manual_seed(1))
    from effgen_kernels.models import lee_token_ids, load_smollm2

    model, tokenizer = load_smollm2()
    return model, lee_token_ids(tokenizer, 128)[:128].unsqueeze(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt", "smollm2"], default="gpt")
    parser.add_argument("--quant", choices=sorted(QUANT), default="w8a16")
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model, ids = build(args.model)
    config = QUANT[args.quant]

    single = copy.deepcopy(model)
    if config is not None:
        ek.quantize_(single, config, filter_fn=lambda module, name: name.rsplit(".", 1)[-1] in TRANSFORMER_PLAN)
    with torch.no_grad():
        expected = single(ids).logits
    full_bytes = ek.model_bytes(single)
    del single

    sharded = parallelize(model, quant=config)
    with torch.no_grad():
        begin = time.perf_counter()
        logits = model(ids).logits
        seconds = time.perf_counter() - begin
    difference = (logits - expected).abs().max().item()
    rank_bytes = ek.model_bytes(model)
    gathered = full_state_dict(model)  # collective: every rank takes part
    if rank == 0:
        print(f"{args.model}, tp={world}, {args.quant}: {len(sharded)} layers sharded; max |logits difference| vs the "
              f"single-process model {difference:.2e} (largest logit {expected.abs().max():.1f})")
        print(f"weights per rank {rank_bytes / 2**20:.1f} MiB (single process {full_bytes / 2**20:.1f} MiB); forward "
              f"of {ids.numel()} tokens {seconds * 1e3:.0f} ms; full state dict reassembled: {len(gathered)} tensors")
    shutdown()  # not dist.destroy_process_group(), which can hang on torch < 2.8


if __name__ == "__main__":
    main()
