"""Fine-tuning a causal LM cut into pipeline stages, with no rank ever holding the whole
model: each rank reads only its own stages from a checkpoint (load_stage), trains them under
a schedule of torch.distributed.pipelining (GPipe or 1F1B with a stage a rank; interleaved
1F1B or looped BFS with --stages-per-rank 2 or more, rank r holding stages r, r + ranks,
...), scores held-out text through the stages (pipeline_forward), and writes a shard a stage
of the trained checkpoint (save_stage).

    torchrun --nproc_per_node 2 examples/pipeline_train.py --model smollm2 --steps 20
    torchrun --nproc_per_node 3 examples/pipeline_train.py --model tiny --schedule 1f1b --check
    torchrun --nproc_per_node 2 examples/pipeline_train.py --model tiny --stages-per-rank 2 \
        --schedule interleaved-1f1b --check

--model smollm2: SmolLM2-135M (the `models` extra) on the Lee news corpus (gensim's test
data); --model tiny: a small random Llama on the Python standard library's source, a byte a
token. Without --checkpoint, rank 0 first writes the model to <out>/initial (save_pretrained),
the checkpoint a real run would start from. The trained model is written to <out>/trained,
which from_pretrained (or load_stage, cut any other way) reads; --check loads it whole on
the last rank and scores the same text, which must give the pipeline's perplexity.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os

import torch
import torch.distributed as dist
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B, ScheduleLoopedBFS

from effgen_kernels.distributed import (
    load_stage,
    next_token_loss_fn,
    pipeline_forward,
    pipeline_schedule,
    pipeline_stages,
    save_stage,
    shutdown,
    sync_tied_grads,
)
from effgen_kernels.gpt import lm_batch, stdlib_source_bytes
from effgen_kernels.progress import Progress

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}  # a stage a rank
LOOPED_SCHEDULES = {"interleaved-1f1b": ScheduleInterleaved1F1B, "looped-bfs": ScheduleLoopedBFS}  # several


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="tiny")
    parser.add_argument("--checkpoint", metavar="DIR", help="a Hugging Face checkpoint to start from")
    parser.add_argument("--out", default="pipeline-train", help="where initial/ and trained/ go")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES) + sorted(LOOPED_SCHEDULES), default=None,
                        help="default: gpipe, or interleaved-1f1b with several stages a rank")
    parser.add_argument("--stages-per-rank", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="tokens a training window predicts")
    parser.add_argument("--lr", type=float, default=None, help="AdamW's (default: 3e-5 smollm2, 3e-3 tiny)")
    parser.add_argument("--check", action="store_true", help="score the trained checkpoint loaded whole")
    args = parser.parse_args()
    if args.batch_size % args.microbatches:
        parser.error(f"--batch-size ({args.batch_size}) must be a multiple of --microbatches ({args.microbatches})")
    if args.stages_per_rank < 1:
        parser.error(f"--stages-per-rank must be >= 1, got {args.stages_per_rank}")
    looped = args.stages_per_rank > 1
    args.schedule = args.schedule or ("interleaved-1f1b" if looped else "gpipe")
    if looped != (args.schedule in LOOPED_SCHEDULES):
        parser.error(f"--schedule {args.schedule} runs " + ("one stage a rank: give --stages-per-rank 1, or one of "
                     f"{', '.join(LOOPED_SCHEDULES)}" if looped else "several stages a rank: give --stages-per-rank 2 "
                     "or more"))
    return args


def token_streams(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) 1-D token streams: the Lee corpus through SmolLM2's tokenizer
    (the last tenth held out), or the standard library's source bytes."""
    if name == "smollm2":
        from effgen_kernels.models import lee_token_ids, load_smollm2_tokenizer

        ids = lee_token_ids(load_smollm2_tokenizer(), 30_000)
        cut = ids.numel() * 9 // 10
        return ids[:cut], ids[cut:]
    train, validation = stdlib_source_bytes(max_bytes=400_000)
    return train.long(), validation.long()


def save_initial_model(name: str, path: str) -> None:
    """The checkpoint a run without --checkpoint starts from (written by rank 0 alone)."""
    if name == "smollm2":
        from effgen_kernels.models import save_smollm2

        save_smollm2(path)
        return
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)).save_pretrained(path)


def validation_windows(stream: torch.Tensor, length: int, count: int = 16) -> torch.Tensor:
    """``count`` consecutive windows of ``length`` + 1 tokens (each predicts ``length``)."""
    starts = range(0, stream.numel() - length - 1, length)[:count]
    return torch.stack([stream[s:s + length + 1] for s in starts])


def pipeline_perplexity(stages, windows: torch.Tensor, batch_size: int) -> float | None:
    """Perplexity of the next tokens of ``windows`` through the pipeline: on the last
    stage's rank (every rank runs its stages), None on the others."""
    total = 0.0
    for batch in windows.split(batch_size):
        logits = pipeline_forward(stages, batch[:, :-1].contiguous())
        if logits is not None:
            total += next_token_loss_fn(logits, batch).item() * batch[:, 1:].numel()
    return math.exp(total / windows[:, 1:].numel()) if stages[-1].last else None


def whole_model_perplexity(path: str, windows: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return math.exp(next_token_loss_fn(model(windows[:, :-1]).logits, windows).item())


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    checkpoint = args.checkpoint or os.path.join(args.out, "initial")
    if args.checkpoint is None:
        if rank == 0:
            save_initial_model(args.model, checkpoint)
        dist.barrier()
    num_stages = world * args.stages_per_rank
    # this rank's layers only, read from the checkpoint: stages rank, rank + world, ...
    stages = [load_stage(checkpoint, rank + k * world, num_stages) for k in range(args.stages_per_rank)]
    first, last = stages[0].first, stages[-1].last
    train, validation = token_streams(args.model)
    windows = validation_windows(validation, args.length)
    before = pipeline_perplexity(stages, windows, args.batch_size)

    for stage in stages:
        stage.train()
    piped = pipeline_stages(stages, rank, world, args.stages_per_rank)
    schedule_class = {**SCHEDULES, **LOOPED_SCHEDULES}[args.schedule]
    schedule = pipeline_schedule(piped if args.stages_per_rank > 1 else piped[0], args.microbatches,
                                 next_token_loss_fn, schedule=schedule_class)
    optimizer = torch.optim.AdamW([p for stage in stages for p in stage.parameters()],
                                  lr=args.lr or (3e-5 if args.model == "smollm2" else 3e-3))
    progress = Progress(args.steps, f"pipeline training ({num_stages} stages, {args.schedule})", enabled=last)
    for step in range(args.steps):
        inputs, labels = lm_batch(train, step, args.batch_size, args.length)
        window = torch.cat([inputs, labels[:, -1:]], dim=1)
        optimizer.zero_grad()
        losses = []
        # the first stage's rank feeds the tokens (torch 2.11 refuses a strided view), the last's the targets
        tokens_in = (window[:, :-1].contiguous(),) if first else ()
        schedule.step(*tokens_in, **{"target": window, "losses": losses} if last else {})
        sync_tied_grads(piped)  # the first and last stages' copies of a tied head stay one weight
        optimizer.step()
        progress.update(detail=f"loss {torch.stack(losses).mean().item():.3f}" if losses else "")

    for stage in stages:
        stage.eval()
    after = pipeline_perplexity(stages, windows, args.batch_size)
    trained = os.path.join(args.out, "trained")
    save_stage(stages, trained)
    if last:
        print(f"{args.model}, {num_stages} stages on {world} ranks, {args.schedule}, {args.steps} steps: validation "
              f"perplexity {before:.2f} -> {after:.2f} ({windows[:, 1:].numel()} tokens); trained model in {trained}")
        if args.check:
            print(f"the trained checkpoint loaded whole: perplexity {whole_model_perplexity(trained, windows):.2f}")
    shutdown()


if __name__ == "__main__":
    main()
