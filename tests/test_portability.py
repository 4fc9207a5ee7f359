"""Builds off x86-64: what setup.py compiles on aarch64 (scripts/check_aarch64.sh runs the
tests there under qemu; this checks the build wherever a cross compiler is installed); and
x86-64 CPUs below the development one: the kernel dispatch never runs a level the CPU lacks."""

import ast
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CPU_ISAS, env_without_preload

ROOT = Path(__file__).resolve().parents[1]
CROSS_CXX = "aarch64-linux-gnu-g++"


def setup_suffixes(name: str) -> tuple[str, ...]:
    """A tuple of setup.py (X86_ONLY_SUFFIXES, AARCH64_ONLY_SUFFIXES), read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py defines no {name}")


def aarch64_kernel_sources() -> list[Path]:
    """The kernel sources setup.py builds on aarch64: all but the x86-only ones."""
    x86_only = setup_suffixes("X86_ONLY_SUFFIXES")
    return [p for p in sorted((ROOT / "csrc" / "kernels" / "cpu").glob("*.cpp")) if not p.name.endswith(x86_only)]


def test_each_architectures_sources_are_the_ones_with_its_code():
    # Every source with x86 intrinsics is left out off x86-64 and every one with NEON
    # intrinsics off aarch64, and every source left out is one of them (else a CPU would
    # lose a kernel for nothing).
    x86_only, aarch64_only = setup_suffixes("X86_ONLY_SUFFIXES"), setup_suffixes("AARCH64_ONLY_SUFFIXES")
    for source in sorted((ROOT / "csrc" / "kernels" / "cpu").glob("*.cpp")):
        text = source.read_text()
        arm = "arm_neon.h" in text
        x86 = not arm and ("immintrin.h" in text or "#pragma GCC target" in text)  # amx: its intrinsics via a header
        assert x86 == source.name.endswith(x86_only), source.name
        assert arm == source.name.endswith(aarch64_only), source.name


@pytest.mark.skipif(shutil.which(CROSS_CXX) is None, reason=f"no {CROSS_CXX} (apt install g++-aarch64-linux-gnu)")
def test_the_cpu_kernels_build_and_link_for_aarch64(tmp_path):
    # The torch-free kernels setup.py builds on aarch64 (the NEON ones too), with the
    # extension's flags, linked into a shared library that may leave no symbol undefined: a
    # portable file that called an x86 kernel table (the ISA dispatch) would fail here, not
    # on a user's machine.
    flags = ["-O1", "-std=c++20", "-ffp-contract=off", "-fopenmp", "-fPIC", "-Wall", "-Werror=return-type"]
    def cross(*args: str) -> None:
        result = subprocess.run([CROSS_CXX, *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr

    sources = aarch64_kernel_sources()
    objects = [str(tmp_path / f"{source.stem}.o") for source in sources]
    for source, obj in zip(sources, objects, strict=True):
        cross(*flags, "-c", str(source), "-o", obj)
    cross("-shared", "-fopenmp", "-Wl,--no-undefined", *objects, "-o", str(tmp_path / "kernels.so"))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the x86-64 levels' dispatch")
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
def test_the_dispatch_calls_only_the_active_levels_tables(tmp_path):
    # dispatch.cpp against stand-in table getters (tests/cpu_host/dispatch_calls.cpp), with
    # each level this CPU runs made active in turn. Calling every level's getter and choosing
    # afterwards crashed int8_linear with an illegal instruction on AVX2-only CPUs (a Zen 3):
    # the AMX getter's static table was built with AVX-512 moves. On a CPU with AVX-512 the
    # stray call runs fine, so only the count of calls tells.
    kernels = ROOT / "csrc" / "kernels" / "cpu"
    binary, env = tmp_path / "dispatch_calls", env_without_preload()
    subprocess.run([shutil.which(os.environ.get("CXX", "g++")), "-std=c++20", "-O1", f"-I{kernels}",
                    str(ROOT / "tests" / "cpu_host" / "dispatch_calls.cpp"), str(kernels / "dispatch.cpp"),
                    str(kernels / "isa.cpp"), "-o", str(binary)], check=True, capture_output=True, timeout=300, env=env)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("own table's getter, once") == len(CPU_ISAS), result.stdout
