import contextlib
import importlib.util
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import effgen_kernels as ek

CPU_ISAS = ek.ops.supported_cpu_isas()
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Runs the test once per CPU instruction set this machine supports."""
    with ek.ops.use_cpu_isa(request.param):
        yield request.param


@pytest.fixture(params=[("shared", "tile"), ("global", "tile"), ("shared", "2")], ids=lambda p: "-".join(p))
def skinny(request, monkeypatch):
    """Runs the test once per setting of the few-row 16-bit CUDA kernels: x read from shared
    memory where it fits (EFFGEN_CUDA_SKINNY_X) with a block per channel tile
    (EFFGEN_CUDA_SKINNY_BLOCKS), the defaults; x from global memory; and a grid of two blocks,
    each taking several tiles in turn."""
    x_place, blocks = request.param
    monkeypatch.setenv("EFFGEN_CUDA_SKINNY_X", x_place)
    monkeypatch.setenv("EFFGEN_CUDA_SKINNY_BLOCKS", blocks)
    return request.param


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def random_input(shape, dtype=torch.float32, seed=None, scale=3.0):
    """Fresh random data (never zeros), float32 draws rounded to `dtype`."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def assert_products_match(cases, k: int, atol: float) -> None:
    """(ours, reference) pairs of linear outputs: same shape and dtype, and close (exactly
    the bias when K = 0, where no product is summed)."""
    for out, expected in cases:
        assert out.shape == expected.shape and out.dtype == expected.dtype
        torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0 if k == 0 else atol)


def load_script(folder: str, name: str):
    """<folder>/<name>.py (examples, benchmarks: scripts, not packages) as a module."""
    path = Path(__file__).resolve().parent.parent / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name: str):
    return load_script("examples", name)


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to count for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def env_without_preload() -> dict[str, str]:
    """The environment for a compiler and a program built apart from the extension: `make
    sanitize` preloads the ASan runtime, which such programs are not built against (and
    under which nvcc itself crashes)."""
    return {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}


def build_kernel_bench(name: str, kernel_sources: list[str], out_dir: Path,
                       extra_flags: tuple[str, ...] = ()) -> tuple[Path, dict[str, str]]:
    """benchmarks/kernels/<name>.cpp with csrc/kernels/cpu's kernel_sources, built with the
    extension's flags (the kernels are torch-free) and extra_flags; the binary and the
    environment to run it in. Skipped where there is no C++ compiler."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the kernel benchmarks time the x86 kernels")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        pytest.skip("no C++ compiler")
    root = Path(__file__).resolve().parents[1]
    kernels = root / "csrc" / "kernels" / "cpu"
    sources = [root / "benchmarks" / "kernels" / f"{name}.cpp", *(kernels / source for source in kernel_sources)]
    binary = out_dir / name
    env = env_without_preload()
    subprocess.run([compiler, "-O2", "-std=c++20", "-ffp-contract=off", "-fopenmp", *extra_flags, f"-I{kernels}",
                    *map(str, sources), "-o", str(binary)], check=True, capture_output=True, timeout=600, env=env)
    return binary, env


def check_kernel_bench_on_every_isa(bench: tuple[Path, dict[str, str]], args: tuple, expected, bad_args: tuple) -> None:
    """Runs a build_kernel_bench binary with `args` under EFFGEN_CPU_ISA = every ISA this
    CPU supports: it must exit 0 (its own check against the portable kernel passed) and
    print expected(isa); with bad_args it must print its usage and exit 2."""
    binary, env = bench
    for isa in CPU_ISAS:
        result = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120,
                                env={**env, "EFFGEN_CPU_ISA": isa})
        assert result.returncode == 0 and expected(isa) in result.stdout, result.stdout
    usage = subprocess.run([str(binary), *map(str, bad_args)], capture_output=True, text=True, timeout=60, env=env)
    assert usage.returncode == 2 and "usage" in usage.stderr


def run_cuda_host_check(name: str, tmp_path: Path) -> None:
    """Builds tests/cuda_host/<name>.cu with nvcc and runs it on the CPU: index math of the
    CUDA kernels checked without a GPU (skipped where there is no nvcc)."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = str(Path(home) / "bin" / "nvcc") if (Path(home) / "bin" / "nvcc").exists() else shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc (set CUDA_HOME)")
    source = Path(__file__).resolve().parent / "cuda_host" / f"{name}.cu"
    binary = tmp_path / name
    env = env_without_preload()
    # torch's extension build defines these (no implicit 16-bit float conversions or
    # operators): the kernels' sources must compile under them here too.
    torch_defines = [f"-D__CUDA_NO_{what}__" for what in ("HALF_OPERATORS", "HALF_CONVERSIONS",
                                                         "BFLOAT16_CONVERSIONS", "HALF2_OPERATORS")]
    subprocess.run([nvcc, "-std=c++20", "-O2", "-arch=sm_80", "--expt-relaxed-constexpr", *torch_defines, str(source),
                    "-o", str(binary)], check=True, capture_output=True, timeout=300, env=env)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout
