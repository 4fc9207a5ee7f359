"""Fine-tuning a causal LM cut into pipeline stages, with no rank ever holding the whole
model: each rank reads only its own stages from a checkpoint (load_stage), trains them under
a schedule of torch.distributed.pipelining (GPipe or 1F1B with a stage a rank; interleaved
1F1B or looped BFS with --stages-per-rank 2 or more, rank r holding stages r, r + ranks,
...), scores held-out text through the stages (pipeline_forward), and writes a shard a stage
of the trained checkpoint (save_stage). With --dp 2 or more the ranks form a ("dp", "pp")
mesh: that many pipelines, each on its own share of every batch, each stage in DDP over its
data-parallel ranks with effgen's compressed gradient all-reduce (--codec).

    torchrun --nproc_per_node 2 examples/pipeline_train.py --model smollm2 --steps 20
    torchrun --nproc_per_node 3 examples/pipeline_train.py --model tiny --schedule 1f1b --check
    torchrun --nproc_per_node 2 examples/pipeline_train.py --model tiny --stages-per-rank 2 \
        --schedule interleaved-1f1b --check
    torchrun --nproc_per_node 4 examples/pipeline_train.py --model tiny --dp 2 --codec int8 --check

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
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B, ScheduleLoopedBFS

from effgen_kernels.distributed import (
    CompressionState,
    compressed_allreduce_hook,
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
    parser.add_argument("--dp", type=int, default=1, help="pipelines side by side (data parallel)")
    parser.add_argument("--codec", choices=["int8", "sign", "none"], default="int8",
                        help="the data-parallel gradient all-reduce's compression (with --dp 2 or more)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="tokens a training window predicts")
    parser.add_argument("--lr", type=float, default=None, help="AdamW's (default: 3e-5 smollm2, 3e-3 tiny)")
    parser.add_argument("--check", action="store_true", help="score the trained checkpoint loaded whole")
    args = parser.parse_args()
    if args.dp < 1 or args.batch_size % (args.dp * args.microbatches):
        parser.error(f"--batch-size ({args.batch_size}) must be a multiple of --dp ({args.dp}) x --microbatches "
                     f"({args.microbatches})")
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


def pipeline_perplexity(stages, windows: torch.Tensor, batch_size: int, group) -> float | None:
    """Perplexity of the next tokens of ``windows`` through the pipeline of ``group``: on the
    last stage's rank (every rank runs its stages), None on the others."""
    total = 0.0
    for batch in windows.split(batch_size):
        logits = pipeline_forward(stages, batch[:, :-1].contiguous(), group)
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
    if world % args.dp:
        raise SystemExit(f"--dp ({args.dp}) must divide the number of ranks ({world})")
    mesh = init_device_mesh("cpu", (args.dp, world // args.dp), mesh_dim_names=("dp", "pp"))
    dp_rank, pp_rank, pp = mesh.get_local_rank("dp"), mesh.get_local_rank("pp"), world // args.dp
    pipeline_group, data_parallel_group = mesh.get_group("pp"), mesh.get_group("dp") if args.dp > 1 else None
    checkpoint = args.checkpoint or os.path.join(args.out, "initial")
    if args.checkpoint is None:
        if rank == 0:
            save_initial_model(args.model, checkpoint)
        dist.barrier()
    num_stages = pp * args.stages_per_rank
    # this rank's layers only, read from the checkpoint: stages pp_rank, pp_rank + pp, ...
    stages = [load_stage(checkpoint, pp_rank + k * pp, num_stages) for k in range(args.stages_per_rank)]
    first, last = stages[0].first, stages[-1].last
    reports = last and dp_rank == 0
    train, validation = token_streams(args.model)
    windows = validation_windows(validation, args.length)
    before = pipeline_perplexity(stages, windows, args.batch_size, pipeline_group)

    for stage in stages:
        stage.train()
    piped = pipeline_stages(stages, pp_rank, pp, args.stages_per_rank, group=pipeline_group,
                            data_parallel_group=data_parallel_group)
    hooks = []
    for stage in piped if data_parallel_group is not None and args.codec != "none" else []:  # a state a DDP module
        hooks.append(CompressionState(process_group=data_parallel_group, codec=args.codec))
        stage.submod.register_comm_hook(hooks[-1], compressed_allreduce_hook)
    schedule_class = {**SCHEDULES, **LOOPED_SCHEDULES}[args.schedule]
    schedule = pipeline_schedule(piped if args.stages_per_rank > 1 else piped[0], args.microbatches,
                                 next_token_loss_fn, schedule=schedule_class)
    optimizer = torch.optim.AdamW([p for stage in stages for p in stage.parameters()],
                                  lr=args.lr or (3e-5 if args.model == "smollm2" else 3e-3))
    progress = Progress(args.steps, f"pipeline training ({args.dp} x {num_stages} stages, {args.schedule})",
                        enabled=reports)
    share = args.batch_size // args.dp
    for step in range(args.steps):
        inputs, labels = lm_batch(train, step, args.batch_size, args.length)
        window = torch.cat([inputs, labels[:, -1:]], dim=1)[dp_rank * share:(dp_rank + 1) * share]  # this pipeline's
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
    after = pipeline_perplexity(stages, windows, args.batch_size, pipeline_group)
    trained = os.path.join(args.out, "trained")
    if dp_rank == 0:  # the pipelines hold the same weights: one writes
        save_stage(stages, trained, group=pipeline_group)
    dist.barrier()
    if reports:
        print(f"{args.model}, {num_stages} stages on {pp} ranks, {args.schedule}, {args.steps} steps: validation "
              f"perplexity {before:.2f} -> {after:.2f} ({windows[:, 1:].numel()} tokens); trained model in {trained}")
        if hooks:
            sent = sum(hook.last_step.bytes_sent for hook in hooks)
            ratio = sum(hook.last_step.bytes_uncompressed for hook in hooks) / sent
            print(f"{args.dp} pipelines, {args.codec} gradient all-reduce: this rank sent {sent / 2**10:.1f} KiB "
                  f"in the last step, {ratio:.1f}x less than fp32")
        if args.check:
            print(f"the trained checkpoint loaded whole: perplexity {whole_model_perplexity(trained, windows):.2f}")
    shutdown()


if __name__ == "__main__":
    main()
