"""`effgen` command line: `effgen info`, `effgen bench` and `effgen demo`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import effgen_kernels as ek
from effgen_kernels.bench import BenchContext, memory_bandwidth_gbps
from effgen_kernels.bench.harness import RETAINING_MALLOC_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARK_DIR = REPO_ROOT / "benchmarks"


def build_info() -> dict:
    path = Path(__file__).with_name("_build_info.json")
    info = json.loads(path.read_text()) if path.exists() else {}
    info["cuda"] = ek.ops.built_with_cuda()  # the library itself is the final word
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def cuda_int8_kernels(build: dict) -> list[str]:
    """Our CUDA int8 tensor-core GEMMs this GPU runs (EFFGEN_CUDA_INT8_GEMM's forcing values):
    mma, plus wgmma on compute capability 9.0 with an sm_90a build; none without a GPU."""
    if not (build["cuda"] and torch.cuda.is_available()):
        return []
    wgmma = torch.cuda.get_device_capability() == (9, 0) and "90a" in build.get("cuda_archs", [])
    return ["mma", "wgmma"] if wgmma else ["mma"]


def cuda_int8_gemm(build: dict) -> str | None:
    """The CUDA int8 GEMM that products of more than 16 rows run on here (None without a GPU):
    EFFGEN_CUDA_INT8_GEMM where set, else our wgmma kernel (compute capability 9.0, sm_90a
    build) where its tiles cover most of the SMs, cuBLAS (torch._int_mm, then our epilogue)
    for the other shapes it takes and our mma.sync kernel for the rest."""
    kernels = cuda_int8_kernels(build)
    if not kernels:
        return None
    forced = os.environ.get("EFFGEN_CUDA_INT8_GEMM", "")
    if forced not in ("", "auto"):
        return forced
    return "wgmma where it fills the GPU, cublas, else mma" if "wgmma" in kernels else "cublas, else mma"


def machine_info() -> dict:
    info = {
        "effgen_kernels": ek.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_isa": ek.ops.cpu_isa(),
        "cpu_isas_available": ek.ops.supported_cpu_isas(),
        "build": build_info(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda_int8_gemm": None,
        "commit": git_commit(),
    }
    info["cuda_int8_gemm"] = cuda_int8_gemm(info["build"])
    return info


def cmd_info(args) -> int:
    info = machine_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    build = info["build"]
    cuda = f"yes (archs {', '.join(build.get('cuda_archs', [])) or '?'}, CUDA {build.get('cuda_version')})" \
        if build["cuda"] else "no"
    rows = [
        ("effgen-kernels", info["effgen_kernels"]),
        ("torch", info["torch"]),
        ("python", info["python"]),
        ("backends", "cpu" + (", cuda" if build["cuda"] else "")),
        ("CUDA kernels built", cuda),
        ("CPU", f"{info['cpu']} ({info['cpu_threads']} threads)"),
        ("CPU ISA in use", info["cpu_isa"] + (" (EFFGEN_CPU_ISA)" if os.environ.get("EFFGEN_CPU_ISA") else "")),
        ("CPU ISAs available", ", ".join(info["cpu_isas_available"])),
        ("GPU visible", info["gpu"] or "none"),
        ("CUDA int8 GEMM (M > 16)", info["cuda_int8_gemm"] or "none (no GPU)"),
        ("commit", info["commit"] or "unknown"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def discover_benchmarks() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCHMARK_DIR.glob("bench_*.py"))}


def load_benchmark(path: Path):
    spec = importlib.util.spec_from_file_location(f"effgen_benchmarks.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def print_table(results) -> None:
    header = f"{'op':<38} {'shape':<16} {'dtype':<9} {'ours ms':>9} {'peer':<22} {'peer ms':>9} {'speedup':>8} " \
             f"{'GB/s':>7} {'GOP/s':>7} {'% limit':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        gops = f"{r.achieved_gops:7.0f}" if r.ops else f"{'':>7}"
        print(f"{r.op:<38} {r.shape:<16} {r.dtype:<9} {r.ours_ms:9.3f} {r.peer:<22} {r.peer_ms:9.3f} "
              f"{r.speedup:7.2f}x {r.achieved_gbps:7.1f} {gops} {100 * r.fraction_of_limit:6.0f}%")


def plot_speedups(results, path: Path) -> None:
    """A bar per measurement: our time against the peer's from the same run (x > 1: faster)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("effgen bench: --plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
        return
    labels = [f"{r.op} {r.shape} vs {r.peer}" for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(results) + 1.5))
    ax.barh(range(len(results)), [r.speedup for r in results], color=["tab:green" if r.speedup >= 1 else "tab:red"
                                                                        for r in results])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(results)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="speedup over the peer (same run, medians)", title="effgen bench")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


# `effgen bench --cpu-isa avx2`: our kernels and every peer's library (ATen, fbgemm, MKL,
# oneDNN) held to AVX2, as on a CPU without AVX-512: that CPU's instruction set on this one's
# cores (not its microarchitecture). Each library reads its variable at start-up.
CPU_ISA_CAPS = {
    "avx2": {"EFFGEN_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def bench_environment(allocator: str, cpu_isa: str | None) -> dict[str, str]:
    """The variables `effgen bench` runs under: glibc's allocator settings (Linux, retain) and the ISA caps."""
    env = dict(RETAINING_MALLOC_ENV) if allocator == "retain" and platform.system() == "Linux" else {}
    return {**env, **CPU_ISA_CAPS.get(cpu_isa, {})}


def reexec_with(env: dict[str, str], argv: list[str]) -> None:
    """Restart this command with `env` added, unless it is set already: glibc and the libraries read it at start-up."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, "-m", "effgen_kernels.cli", *argv], {**os.environ, **env})


def writable_directory(path: Path, command: str, option: str) -> bool:
    """Creates ``path`` (a directory) and writes a file there; says why not and returns False
    where that fails, so that a long run does not lose its results at the end."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        print(f"effgen {command}: cannot write to {option} ({path}): {error.strerror or error}", file=sys.stderr)
        return False
    return True


def cmd_bench(args) -> int:
    if args.cpu_isa is not None and args.cpu_isa not in ek.ops.supported_cpu_isas():
        print(f"effgen bench: --cpu-isa {args.cpu_isa}: this CPU supports {ek.ops.supported_cpu_isas()}",
              file=sys.stderr)
        return 2
    reexec_with(bench_environment(args.allocator, args.cpu_isa), args.argv)
    for option, value in (("--json", args.json), ("--plot", args.plot)):
        if value and not writable_directory(Path(value).parent, "bench", option):
            return 2
    available = discover_benchmarks()
    if not available:
        print(f"effgen bench: no benchmarks found in {BENCHMARK_DIR} (they ship with the source tree)",
              file=sys.stderr)
        return 2
    chosen = args.only or list(available)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        print(f"effgen bench: unknown benchmark(s) {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not (torch.cuda.is_available() and ek.ops.built_with_cuda()):
        print("effgen bench: --device cuda needs a visible GPU and the CUDA kernels built", file=sys.stderr)
        return 2
    if args.cpu_isa is not None:
        caps = ", ".join(f"{k}={v}" for k, v in CPU_ISA_CAPS[args.cpu_isa].items())
        print(f"CPU ISA held to {args.cpu_isa}: {caps}", file=sys.stderr)
    print(f"measuring {device} memory bandwidth ...", file=sys.stderr, flush=True)
    # Sizes well past the last-level cache: 256 MB on a CPU, 2 GB on a GPU (60 MB of L2).
    bandwidth = memory_bandwidth_gbps(device, (2 << 30) if device.type == "cuda" else (256 << 20))
    ctx = BenchContext(device=device, quick=args.quick, limit_gbps=bandwidth["limit"])
    print(f"memory bandwidth: copy {bandwidth['copy']:.1f} GB/s (read + write), read {bandwidth['read']:.1f} GB/s;"
          " % of limit is against the higher", file=sys.stderr, flush=True)
    results = []
    for i, name in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {name}", file=sys.stderr, flush=True)
        results += load_benchmark(available[name]).run(ctx)
    print_table(results)
    if args.plot:
        plot_speedups(results, Path(args.plot))
    if args.json:
        report = {"machine": machine_info(), "device": str(device), "quick": args.quick, "allocator": args.allocator,
                  "cpu_isa_cap": args.cpu_isa,
                  "memory_gbps": bandwidth, "results": [r.as_dict() for r in results]}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effgen", description="effgen-kernels: info, benchmarks, demo")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, built backends, CPU ISA, GPU")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="run the kernel benchmarks against their peers")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    bench.add_argument("--only", nargs="+", metavar="NAME", help="benchmark families to run (e.g. quant)")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when a GPU is visible")
    bench.add_argument("--json", metavar="PATH", help="also write the results and machine as JSON")
    bench.add_argument("--plot", metavar="PNG", help="also plot every speedup over its peer (needs matplotlib)")
    bench.add_argument("--allocator", choices=["retain", "system"], default="retain",
                       help="retain (default): glibc keeps freed memory, so no op pays page faults; "
                            "system: the allocator as it comes")
    bench.add_argument("--cpu-isa", choices=sorted(CPU_ISA_CAPS),
                       help="hold our kernels and the peers' libraries (ATen, fbgemm, MKL, oneDNN) to this ISA, "
                            "as on a CPU without more")
    bench.set_defaults(func=cmd_bench)
    from effgen_kernels.demo import add_parser as add_demo_parser

    add_demo_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
