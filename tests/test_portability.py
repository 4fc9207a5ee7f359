"""Builds off x86-64: what setup.py compiles on aarch64 (scripts/check_aarch64.sh runs the
tests there under qemu; this checks the build wherever a cross compiler is installed)."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CROSS_CXX = "aarch64-linux-gnu-g++"


def x86_only_suffixes() -> tuple[str, ...]:
    """setup.py's X86_ONLY_SUFFIXES, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "X86_ONLY_SUFFIXES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no X86_ONLY_SUFFIXES")


def portable_kernel_sources() -> list[Path]:
    suffixes = x86_only_suffixes()
    return [p for p in sorted((ROOT / "csrc" / "kernels" / "cpu").glob("*.cpp")) if not p.name.endswith(suffixes)]


def test_the_x86_only_sources_are_the_ones_with_x86_code():
    # Every source with x86 intrinsics or target pragmas is left out off x86-64, and every
    # source left out is one of them (else aarch64 would lose a kernel for nothing).
    kernels = ROOT / "csrc" / "kernels" / "cpu"
    portable = set(portable_kernel_sources())
    for source in sorted(kernels.glob("*.cpp")):
        text = source.read_text()
        x86 = "immintrin.h" in text or "#pragma GCC target" in text
        assert x86 == (source not in portable), source.name


@pytest.mark.skipif(shutil.which(CROSS_CXX) is None, reason=f"no {CROSS_CXX} (apt install g++-aarch64-linux-gnu)")
def test_the_cpu_kernels_build_and_link_for_aarch64(tmp_path):
    # The torch-free kernels setup.py builds on aarch64, with the extension's flags, linked
    # into a shared library that may leave no symbol undefined: a portable file that called
    # an x86 kernel table (the ISA dispatch) would fail here, not on a user's machine.
    flags = ["-O1", "-std=c++20", "-ffp-contract=off", "-fopenmp", "-fPIC", "-Wall", "-Werror=return-type"]
    def cross(*args: str) -> None:
        result = subprocess.run([CROSS_CXX, *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr

    objects = [str(tmp_path / f"{source.stem}.o") for source in portable_kernel_sources()]
    for source, obj in zip(portable_kernel_sources(), objects, strict=True):
        cross(*flags, "-c", str(source), "-o", obj)
    cross("-shared", "-fopenmp", "-Wl,--no-undefined", *objects, "-o", str(tmp_path / "kernels.so"))
