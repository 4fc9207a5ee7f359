"""`effgen demo`: what the library does for a generative model, measured on this machine.

1. quantize: SmolLM2-135M in fp32 (bf16 on a GPU) and after quantize_ with W8A16, W8A8
   (SmoothQuant) and ternary weights: prefill and decode tokens/s, weight bytes, peak memory,
   perplexity on news text, and the text each generates from the same prompt; with --compile
   also decode with the forward torch.compile'd over a static KV cache. Then the unquantized
   model's own greedy text at the speed of speculative decoding, drafted by its W8A8 copy.
2. ddp: a small GPT trained on real text by 2 DDP workers (gloo, on the CPU whatever
   --device says) with plain all-reduce, the int8 and sign hooks, and the sign hook as set
   for AdamW (EF21 feedback, blocks of 64): bytes per step and loss curves.
3. distill: stage 2's model as teacher, a ternary student trained with and without
   distillation: perplexity recovered.
4. a summary table, ``<out>/report.json`` and PNG plots (with matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import effgen_kernels as ek
from effgen_kernels.bench.ddp_worker import DEMO_GPT, DEMO_HOOKS, demo_train_worker, run_workers
from effgen_kernels.cli import writable_directory
from effgen_kernels.distill import DistillationLoss, Distiller
from effgen_kernels.gpt import GPT, evaluate_perplexity, lm_batch, model_device, stdlib_source_bytes
from effgen_kernels.models import MissingModelError
from effgen_kernels.progress import Progress
from effgen_kernels.quantize import model_bytes

STAGES = ("quantize", "ddp", "distill")
PROMPT = "The history of the city of Sydney began"
# Each quantized format's config from a calibration (a function returning the per-layer input
# absmax): W8A8 is SmoothQuant's, which on SmolLM2 keeps perplexity within 1.2% of fp32's where
# plain per-token activations lose 3.6% (benchmarks/RESULTS.md, session 39).
QUANTIZED = {"W8A16": lambda calibrate: ek.Int8WeightOnlyConfig(),
             "W8A8": lambda calibrate: ek.Int8Config(activation_absmax=calibrate(), smoothing_alpha=0.5),
             "ternary": lambda calibrate: ek.TernaryConfig()}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pick_device(requested: str) -> torch.device | None:
    """The device the stages run on (``auto``: the GPU when one is visible and the CUDA
    kernels are built), or None after saying why the requested one cannot be used."""
    usable = torch.cuda.is_available() and ek.ops.built_with_cuda()
    if requested == "auto":
        return torch.device("cuda" if usable else "cpu")
    if requested == "cuda" and not usable:
        say("effgen demo: --device cuda needs a visible GPU and the CUDA kernels built "
            f"(GPU visible: {torch.cuda.is_available()}, CUDA kernels built: {ek.ops.built_with_cuda()})")
        return None
    return torch.device(requested)


def elapsed_since(begin: float, device: torch.device) -> float:
    """Seconds since `begin` (perf_counter) once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - begin


class PeakMemory:
    """Peak memory while a `with` block runs, in MiB (`.mib`): the GPU's peak allocation, or
    on the CPU the process's resident memory sampled every millisecond by a thread (the
    kernel's own peak, ru_maxrss, only ever grows over the whole process)."""

    def __init__(self, device: torch.device, interval_s: float = 0.001) -> None:
        self.device, self.interval_s, self.mib = device, interval_s, 0.0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.mib = max(self.mib, rss_mib())
            if self._done.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._done.set()
            self._sampler.join()
            self.mib = max(self.mib, rss_mib())


@torch.no_grad()
def time_prefill(model, ids: torch.Tensor, reps: int) -> float:
    times = []
    for _ in range(reps):
        begin = time.perf_counter()
        model(ids)
        times.append(elapsed_since(begin, ids.device))
    return statistics.median(times)


@torch.no_grad()
def greedy(model, ids: torch.Tensor, new_tokens: int, pad_token_id: int, **generate_options) -> tuple:
    """(tokens, seconds) of a greedy continuation of ``ids`` by exactly ``new_tokens``."""
    begin = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=pad_token_id, **generate_options)
    return out, elapsed_since(begin, ids.device)


def generate(model, tokenizer, new_tokens: int, **generate_options) -> tuple[str, float, float]:
    """Greedy continuation of PROMPT: (text, decode tokens/s, seconds)."""
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(model_device(model))
    prompt_s = time_prefill(model, ids, 1)
    out, total_s = greedy(model, ids, new_tokens, tokenizer.eos_token_id, **generate_options)
    decode_rate = (new_tokens - 1) / max(total_s - prompt_s, 1e-9)  # the first token comes from the prefill
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), decode_rate, total_s


def generate_compiled(model, tokenizer, new_tokens: int) -> tuple[str, float]:
    """generate() with the model's forward compiled (torch.compile: inductor, whole graphs,
    static shapes) over a static KV cache of one length, so that one graph serves the prefill
    and one every decode step; the first call compiles them. Decode tokens/s: the time of
    ``new_tokens`` less that of one (the prefill's), as eager runs also pay a prefill each.
    Returns (text, decode tokens/s)."""
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(model_device(model))
    static = {"cache_implementation": "static", "cache_config": {"max_cache_len": ids.shape[1] + new_tokens}}
    eager_forward = model.forward
    model.forward = torch.compile(eager_forward, fullgraph=True, dynamic=False)
    try:
        greedy(model, ids, new_tokens, tokenizer.eos_token_id, **static)
        _, first_s = greedy(model, ids, 1, tokenizer.eos_token_id, **static)
        out, total_s = greedy(model, ids, new_tokens, tokenizer.eos_token_id, **static)
    finally:
        model.forward = eager_forward
        # Every model's graphs are cached on the one LlamaForCausalLM.forward code object, guarded
        # by the instance: without a reset the next format's would reach the recompile limit.
        torch._dynamo.reset()
    decode_rate = (new_tokens - 1) / max(total_s - first_s, 1e-9)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), decode_rate


def drafted_decode(model, tokenizer, new_tokens: int) -> dict:
    """generate() of ``model`` with its W8A8 copy (quantized_draft) as the assistant:
    speculative decoding, which keeps the model's own greedy tokens. The decode rate and
    text, and how many tokens the model took a forward."""
    draft = ek.quantized_draft(model, ek.Int8Config(), progress=False)
    # transformers' notes on how it calls the draft's generate held back
    with forwards_counted(model) as forwards, transformers_errors_only():
        text, decode_rate, _ = generate(model, tokenizer, new_tokens, assistant_model=draft)
    # generate() runs the prompt once alone to time the prefill; the first token is the prefill's
    return {"draft": "W8A8", "decode_tokens_per_s": decode_rate, "text": text,
            "tokens_per_forward": new_tokens / (len(forwards) - 1)}


@contextlib.contextmanager
def forwards_counted(model):
    """A list that gets an entry at each forward of ``model`` inside the block."""
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        yield forwards
    finally:
        handle.remove()


@contextlib.contextmanager
def transformers_errors_only():
    """transformers' logging held to errors inside the block."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def formats(device: torch.device) -> dict:
    """Baseline first: fp32 on the CPU, bf16 on a GPU (what each is normally served in)."""
    return {"fp32" if device.type == "cpu" else "bf16": None, **QUANTIZED}


def stage_quantize(args, device: torch.device) -> dict:
    from effgen_kernels.models import lee_token_ids, load_smollm2

    say(f"[1/3] quantize: loading SmolLM2-135M (offline) for {device} ...")
    base, tokenizer = load_smollm2(torch.float32 if device.type == "cpu" else torch.bfloat16)
    text_ids = lee_token_ids(tokenizer, 600 if args.quick else 2600)
    return compare_formats(base, tokenizer, text_ids, device, args.quick, args.compile)


def compare_formats(base, tokenizer, text_ids: torch.Tensor, device: torch.device, quick: bool,
                    compile_decode: bool = False) -> dict:
    """Stage 1's measurements of a Hugging Face causal LM (``base``, in the baseline's dtype)
    in every format of ``formats(device)``: the first 256 of ``text_ids`` timed as a prefill,
    the rest scored for perplexity in windows of 256, and a greedy continuation of PROMPT
    (with ``compile_decode``, also with the forward compiled: generate_compiled). W8A8's
    SmoothQuant calibrates on the prefill tokens, which are not scored."""
    prefill_ids = text_ids[:256].unsqueeze(0).to(device)
    eval_ids = text_ids[256:]
    chosen = formats(device)
    results = {"device": str(device), "baseline": next(iter(chosen)),
               "memory": "peak GPU memory allocated" if device.type == "cuda" else
               "peak process resident memory (the fp32 original stays loaded)", "formats": {}}
    bar = Progress((4 if compile_decode else 3) * len(chosen) + 1, "[1/3] quantize")
    for name, make_config in chosen.items():
        with PeakMemory(device) as peak:
            model = copy.deepcopy(base).to(device)
            if make_config is not None:
                config = make_config(functools.partial(ek.calibrate_activations, model, [prefill_ids]))
                ek.quantize_(model, config, progress=False)  # inside this stage's own bar
            bar.update(bar.done, f"{name}: prefill")
            time_prefill(model, prefill_ids, 1)  # warm-up: first-call costs (CUDA context, cuBLAS handles, caches)
            prefill_s = time_prefill(model, prefill_ids, 2 if quick else 3)
            bar.update(detail=f"{name}: decode")
            text, decode_rate, _ = generate(model, tokenizer, 12 if quick else 32)
            compiled = {}
            if compile_decode:
                bar.update(detail=f"{name}: compiling the decode")
                compiled_text, compiled_rate = generate_compiled(model, tokenizer, 12 if quick else 32)
                compiled = {"compiled_decode_tokens_per_s": compiled_rate, "compiled_text": compiled_text}
            bar.update(detail=f"{name}: perplexity")
            ppl = evaluate_perplexity(model, eval_ids, 256, batch_size=1)
        bar.update(detail=f"{name} done")
        row = {"prefill_tokens_per_s": prefill_ids.shape[1] / prefill_s, "decode_tokens_per_s": decode_rate,
               "weight_bytes": model_bytes(model), "peak_memory_mib": peak.mib, "perplexity": ppl, "text": text,
               **compiled}
        results["formats"][name] = row
        say(f"      {name}: {row['prefill_tokens_per_s']:.0f} tok/s prefill, {decode_rate:.1f} tok/s decode"
            + (f" ({compiled['compiled_decode_tokens_per_s']:.1f} compiled)" if compiled else "")
            + f", {row['weight_bytes'] / 2**20:.0f} MiB weights, ppl {ppl:.2f}")
        del model
        gc.collect()
    bar.update(bar.done, f"{results['baseline']}, drafted by its W8A8 copy: decode")
    baseline = results["formats"][results["baseline"]]
    drafted = drafted_decode(copy.deepcopy(base).to(device), tokenizer, 12 if quick else 32)
    results["speculative"] = {**drafted, "same_text": drafted["text"] == baseline["text"],
                              "speedup": drafted["decode_tokens_per_s"] / baseline["decode_tokens_per_s"]}
    bar.update(detail="speculative decoding done")
    say(f"      {results['baseline']} drafted by W8A8: {drafted['decode_tokens_per_s']:.1f} tok/s decode, "
        f"{drafted['tokens_per_forward']:.1f} tokens a forward")
    results["peak_rss_mib"] = peak_rss_mib()
    results["perplexity_tokens"] = int(eval_ids.numel())
    return results


def stage_ddp(args, workdir: Path) -> dict:
    steps = 30 if args.quick else 120
    results = {}
    runs = ("plain", *DEMO_HOOKS)
    for i, codec in enumerate(runs, 1):
        say(f"[2/3] ddp: 2 gloo workers on the CPU, {codec} all-reduce, {steps} steps ({i}/{len(runs)}) ...")
        run_workers(demo_train_worker, 2, str(workdir), codec, steps, timeout=900, what=f"demo DDP worker ({codec})")
        run = torch.load(workdir / f"{codec}.pt")
        results[codec] = {"losses": run["losses"], "bytes_per_step": run["bytes_per_step"][-1]}
        say(f"      final loss {run['losses'][-1]:.4f}, {run['bytes_per_step'][-1] / 2**20:.2f} MiB sent per step")
    return results


def lm_batches(stream: torch.Tensor, seed: int, device: torch.device):
    """Batch function for Distiller.fit: batch i of 16 windows of the demo GPT's context, on `device`."""
    return lambda i: tuple(t.to(device) for t in lm_batch(stream, i, 16, DEMO_GPT.context, seed=seed))


def _train_teacher(teacher: GPT, train: torch.Tensor, steps: int, device: torch.device) -> GPT:
    """Trains the teacher further on its own (labels only): distilling from a model that is
    still far from converged would teach the student the teacher's mistakes."""
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    Distiller(None, teacher, DistillationLoss(alpha=0.0), optimizer, scheduler=scheduler).fit(
        lm_batches(train, 3, device), steps)
    return teacher


def stage_distill(args, workdir: Path, device: torch.device) -> dict:
    train, validation = stdlib_source_bytes()
    teacher = GPT(DEMO_GPT)
    saved = workdir / "plain.pt"
    if saved.exists():  # stage 2's plain-DDP model
        teacher.load_state_dict(torch.load(saved)["model"])
    teacher.to(device)
    teacher_steps = 300 if args.quick else 600
    say(f"[3/3] distill: training the teacher {teacher_steps} more steps on {device} ...")
    _train_teacher(teacher, train, teacher_steps, device)
    teacher.eval()
    steps = 30 if args.quick else 150

    def ppl(model) -> float:
        return evaluate_perplexity(model, validation, DEMO_GPT.context, max_windows=64 if args.quick else 256)

    results = {"device": str(device), "teacher": ppl(teacher), "steps": steps}
    ternary = copy.deepcopy(teacher)
    ek.quantize_(ternary, ek.TernaryConfig(), filter_fn=lambda module, name: name != "lm_head")
    results["ternary_no_training"] = ppl(ternary)
    for mode, alpha in (("labels_only", 0.0), ("distilled", 0.5)):
        say(f"[3/3] distill: ternary student, {mode.replace('_', ' ')}, {steps} steps ...")
        student = copy.deepcopy(teacher).train()
        ek.prepare(student, ek.TernaryConfig(), filter_fn=lambda module, name: name != "lm_head")
        optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4)
        Distiller(teacher if alpha else None, student, DistillationLoss(2.0, alpha), optimizer,
                  max_grad_norm=1.0).fit(lm_batches(train, 7, device), steps)
        ek.convert(student.eval())
        results[f"ternary_{mode}"] = ppl(student)
    say(f"      teacher ppl {results['teacher']:.3f}; ternary: untrained {results['ternary_no_training']:.3f}, "
        f"labels only {results['ternary_labels_only']:.3f}, distilled {results['ternary_distilled']:.3f}")
    return results


def summary(report: dict) -> str:
    lines = []
    if "quantize" in report:
        q = report["quantize"]
        compiled = all("compiled_decode_tokens_per_s" in r for r in q["formats"].values())
        lines += [f"SmolLM2-135M on this machine ({q['device']}):",
                  f"  {'format':<8} {'prefill tok/s':>13} {'decode tok/s':>12}" + (" compiled" if compiled else "")
                  + f" {'weights MiB':>11} {'peak MiB':>9} {'ppl':>8}"]
        for name, r in q["formats"].items():
            lines.append(f"  {name:<8} {r['prefill_tokens_per_s']:13.0f} {r['decode_tokens_per_s']:12.1f}"
                         + (f" {r['compiled_decode_tokens_per_s']:8.1f}" if compiled else "")
                         + f" {r['weight_bytes'] / 2**20:11.0f} {r['peak_memory_mib']:9.0f} {r['perplexity']:8.2f}")
        lines.append(f"  peak MiB: {q['memory']}; W8A8: SmoothQuant (alpha 0.5) calibrated on the prefill's tokens")
        if compiled:
            lines.append("  compiled: decode with the forward torch.compile'd over a static KV cache")
            changed = [name for name, r in q["formats"].items() if r["compiled_text"] != r["text"]]
            if changed:
                lines.append(f"  (compiled text differs from eager for {', '.join(changed)}: the compiled graph rounds "
                             "some fp32 sums differently, and greedy decoding follows any change; W8A8's per-token "
                             "int8 activations turn such changes into other codes)")
        lines.append(f"  perplexity on {q['perplexity_tokens']} tokens of the Lee news corpus; greedy text from "
                     f"{PROMPT!r}:")
        lines += [f"  {name:<8} {r['text'][:100]!r}" for name, r in q["formats"].items()]
        drafted = q["speculative"]
        lines.append(f"  {q['baseline']} drafted by its {drafted['draft']} copy (speculative decoding): "
                     f"{drafted['decode_tokens_per_s']:.1f} tok/s decode, {drafted['speedup']:.2f}x "
                     f"{q['baseline']}'s, {drafted['tokens_per_forward']:.1f} tokens a forward, the same text: "
                     + ("yes" if drafted["same_text"] else "no (its forward over several tokens rounds otherwise "
                        "than over one, and greedy decoding follows)"))
    if "ddp" in report:
        d = report["ddp"]
        plain, plain_loss = d["plain"]["bytes_per_step"], d["plain"]["losses"][-1]
        lines.append("DDP, 2 workers, AdamW: final loss (change over plain DDP's), bytes sent per worker per step")
        for codec, run in d.items():
            loss, sent = run["losses"][-1], run["bytes_per_step"]
            lines.append(f"  {codec:<9} loss {loss:.4f} ({loss / plain_loss - 1:+6.1%})  {sent / 2**20:7.3f} MiB "
                         f"({sent / plain:.3f}x of plain)")
        lines.append("  (under Adam the default sign hook's gap grows with training; int8, or sign-adam,")
        lines.append("   CompressionState(codec='sign', feedback='ef21', block_size=64), stay within a few percent)")
    if "distill" in report:
        r = report["distill"]
        lines.append(f"Ternary student ({r['steps']} steps), validation perplexity: teacher {r['teacher']:.3f}, "
                     f"untrained {r['ternary_no_training']:.3f}, labels only {r['ternary_labels_only']:.3f}, "
                     f"distilled {r['ternary_distilled']:.3f}")
    return "\n".join(lines)


def plots(report: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("  (matplotlib is not installed: no plots; pip install matplotlib)")
        return []
    written = []
    if "quantize" in report:
        fig, ax = plt.subplots(figsize=(6, 4))
        q = report["quantize"]
        for i, (name, r) in enumerate(q["formats"].items()):  # labels staggered: the int8 formats overlap
            ax.scatter(r["decode_tokens_per_s"], r["perplexity"], s=60)
            ax.annotate(name, (r["decode_tokens_per_s"], r["perplexity"]), textcoords="offset points",
                        xytext=(6, 6 + 12 * (i % 2)))
        ax.set(xlabel="decode tokens/s", ylabel="perplexity (lower is better)", yscale="log",
               title=f"SmolLM2-135M on {q['device']}: speed vs quality per format")
        fig.tight_layout()
        fig.savefig(out / "speed_vs_quality.png", dpi=120)
        written.append("speed_vs_quality.png")
    if "ddp" in report:
        fig, ax = plt.subplots(figsize=(6, 4))
        for codec, run in report["ddp"].items():
            ax.plot(run["losses"], label=f"{codec} ({run['bytes_per_step'] / 2**20:.2f} MiB/step)")
        ax.set(xlabel="step", ylabel="training loss", title="DDP with compressed all-reduce, 2 workers")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "ddp_loss.png", dpi=120)
        written.append("ddp_loss.png")
    return written


def run_demo(args) -> int:
    skip = set(args.skip or [])  # names checked by the parser's choices
    device = pick_device(args.device)
    if device is None:
        return 2
    out = Path(args.out)
    if not writable_directory(out, "demo", "--out"):
        return 2
    report = {"machine": {"cpu_isa": ek.ops.cpu_isa(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
              "device": str(device), "quick": args.quick}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            if "quantize" not in skip:
                report["quantize"] = stage_quantize(args, device)
        except MissingModelError as error:
            say(f"effgen demo: skipping stage 1 (quantize): {error}")
        if "ddp" not in skip:
            report["ddp"] = stage_ddp(args, workdir)
        if "distill" not in skip:
            report["distill"] = stage_distill(args, workdir, device)
    report["minutes"] = (time.monotonic() - started) / 60
    report["plots"] = plots(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(summary(report))
    say(f"wrote {out / 'report.json'}" + "".join(f", {out / p}" for p in report["plots"]) +
        f" ({report['minutes']:.1f} min)")
    return 0


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="quantize, train with compressed DDP and distil a real model, end to end")
    demo.add_argument("--quick", action="store_true", help="shorter runs (about a minute or two)")
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="where stages 1 and 3 run (auto: the GPU when one is visible); stage 2's workers use gloo "
                           "on the CPU")
    demo.add_argument("--out", default="effgen-demo", help="folder for report.json and the plots")
    demo.add_argument("--skip", nargs="+", choices=STAGES, metavar="STAGE", help=f"stages to skip: {', '.join(STAGES)}")
    demo.add_argument("--compile", action="store_true",
                      help="stage 1 also times decode with the model's forward torch.compile'd over a static KV cache "
                           "(compiling takes about a minute a format on 2 cores)")
    demo.set_defaults(func=run_demo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="effgen")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
