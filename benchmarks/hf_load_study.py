"""SmolLM2-135M through transformers' from_pretrained, four ways, for time and peak memory:
float; with EffgenConfig (each layer quantized as its tensors load); float, then quantize_
(what from_pretrained with EffgenConfig did before it quantized on load); and from the
quantized checkpoint that save_pretrained wrote (nothing quantized).

The float checkpoint is SmolLM2's GGUF dequantized and saved as fp32 safetensors; every way
loads it in --dtype (float32: the loader's tensors are views of the memory-mapped file;
bfloat16: each is a converted copy). The quantized checkpoint is EffgenConfig's at --dtype.
Peak memory: each way in fresh processes that load and run one forward, beside processes
that import the same and load nothing: the medians of their peak resident memory (VmHWM,
which counts the checkpoint's memory-mapped pages) and peak anonymous memory (sampled every
2 ms), and of the time of that load (a fresh process's first, which faults in its pages).
Time: also medians of --reps warm loads in one process, the ways interleaved. ``--no-heap-trim``
stops the library giving the C heap's free pages back as layers convert (effgen_kernels/
_heap.py), to measure what that saves and costs. Needs the models extra.

    python benchmarks/hf_load_study.py --reps 7 --json hf_load.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

import effgen_kernels as ek

WAYS = ("nothing", "float", "effgen_config", "float_then_quantize_", "quantized_checkpoint")
CONFIG = ek.Int8WeightOnlyConfig()


def load(way: str, directory: str, dtype: torch.dtype):
    """The model loaded ``way`` from the checkpoints in ``directory`` (None for "nothing")."""
    from transformers import AutoModelForCausalLM

    from effgen_kernels.hf import EffgenConfig, EffgenHfQuantizer

    if way == "nothing":
        return None
    if way == "quantized_checkpoint":
        return AutoModelForCausalLM.from_pretrained(f"{directory}/w8a16", dtype=dtype)
    if way == "effgen_config":
        return AutoModelForCausalLM.from_pretrained(f"{directory}/float", dtype=dtype,
                                                    quantization_config=EffgenConfig(CONFIG))
    model = AutoModelForCausalLM.from_pretrained(f"{directory}/float", dtype=dtype)
    if way == "float_then_quantize_":  # under the skip rules from_pretrained applies (the LM head float)
        skip_rules = EffgenHfQuantizer(EffgenConfig(CONFIG), pre_quantized=False)._filter(model)
        ek.quantize_(model, CONFIG, skip_rules, progress=False)
    return model


def run_once(model) -> torch.Tensor | None:
    if model is None:
        return None
    with torch.no_grad():
        return model(torch.arange(1, 17).unsqueeze(0)).logits


def write_checkpoints(directory: str, dtype: torch.dtype) -> None:
    from effgen_kernels.models import load_smollm2

    model, _ = load_smollm2(torch.float32)
    # transformers dequantized the GGUF as it loaded it, and its GGUF quantizer refuses to save
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(f"{directory}/float")
    load("effgen_config", directory, dtype).save_pretrained(f"{directory}/w8a16")


def memory_mb(field: str) -> float:
    """A memory field of this process's /proc/self/status (VmHWM: peak resident, which a
    child does not inherit as it does ru_maxrss; RssAnon: resident now, but file pages)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


class AnonymousPeak:
    """The largest RssAnon seen every 2 ms while it runs: the memory the process needs, where
    VmHWM also counts the checkpoint's memory-mapped file pages (page cache, which the kernel
    drops under pressure)."""

    def __enter__(self) -> AnonymousPeak:
        self.peak, self._done = memory_mb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, memory_mb("RssAnon"))

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, memory_mb("RssAnon"))


def peak_memory_mb(way: str, directory: str, dtype_name: str, processes: int,
                   no_heap_trim: bool) -> dict[str, float]:
    """Peak resident and peak anonymous memory of a fresh process that loads ``way`` and runs
    one forward: medians over ``processes`` of them (the sampled peak varies)."""
    command = [sys.executable, __file__, "--one", way, "--dir", directory, "--dtype", dtype_name,
               *(["--no-heap-trim"] if no_heap_trim else [])]
    runs = [json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            for _ in range(processes)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per way for the memory")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-heap-trim", action="store_true", help="keep freed heap pages (see _heap.py)")
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)  # the fresh process of peak_memory_mb
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.no_heap_trim:
        from effgen_kernels import _heap
        _heap.release_free_heap = lambda: None
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.one:
        with AnonymousPeak() as anonymous:
            start = time.perf_counter()
            model = load(args.one, args.dir, dtype)
            first_load_s = time.perf_counter() - start
            run_once(model)
        print(json.dumps({"peak_rss_mb": memory_mb("VmHWM"), "peak_anonymous_mb": anonymous.peak,
                          "first_load_s": first_load_s}))
        return 0
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoints(directory, dtype)
        memory = {way: peak_memory_mb(way, directory, args.dtype, args.processes, args.no_heap_trim)
                  for way in WAYS}
        logits = {way: run_once(load(way, directory, dtype)) for way in WAYS[1:]}  # warm, and the outputs
        seconds = {way: [] for way in WAYS[1:]}
        for _ in range(args.reps):
            for way in WAYS[1:]:
                start = time.perf_counter()
                load(way, directory, dtype)
                seconds[way].append(time.perf_counter() - start)
    quantized = WAYS[2:]
    same = all(torch.equal(logits[way], logits[quantized[0]]) for way in quantized)
    rows = {way: {**{key: round(value, 3) if key.endswith("_s") else round(value)
                     for key, value in memory[way].items()},
                  "median_s": None if way == "nothing" else round(statistics.median(seconds[way]), 3)}
            for way in WAYS}
    for way, row in rows.items():
        print(f"{way:22s} peak RSS {row['peak_rss_mb']:6d} MB   peak anonymous {row['peak_anonymous_mb']:6d} MB   "
              f"load {row['median_s']} s (warm), {row['first_load_s']} s (a fresh process's)")
    print(f"the three quantized ways give the same logits bit for bit: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtype": args.dtype, "heap_trim": not args.no_heap_trim, "reps": args.reps,
                       "processes": args.processes, "rows": rows, "quantized_logits_same": same,
                       "torch": torch.__version__, "transformers": transformers.__version__}, f, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
