"""Build effgen_kernels._C: CPU kernels always, CUDA kernels when a toolkit is there.

EFFGEN_CUDA=0|1 forces the CUDA part off/on (1 without a toolkit is an error, never a
silent CPU-only build); EFFGEN_CUDA_ARCHS="80;90a" picks the GPU targets; MAX_JOBS is
honoured by torch's ninja builder. The decision never looks at torch.cuda.is_available():
build machines usually have no GPU.
"""

import glob
import json
import os
import platform
import shutil
from pathlib import Path

import torch
from setuptools import setup


def find_cuda_home():
    """CUDA_HOME, else /usr/local/cuda, else the toolkit of the nvcc on PATH (symlinks resolved)."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return home
    on_path = shutil.which("nvcc")
    return str(Path(on_path).resolve().parent.parent) if on_path else None


CUDA_HOME = find_cuda_home()
if CUDA_HOME:  # torch's cpp_extension reads it at import time to find the CUDA headers
    os.environ["CUDA_HOME"] = CUDA_HOME

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "80;90a"
# Sources of the AVX2 / AVX-512 / AMX kernels (x86 intrinsics), built on x86-64 only, and of
# the NEON kernels, built on aarch64 only. Every CPU also gets the portable scalar kernels of
# every family (csrc/kernels/cpu/isa.h).
X86_ONLY_SUFFIXES = ("_avx2.cpp", "_avx512.cpp", "_amx.cpp", "_vpopcntdq.cpp")
AARCH64_ONLY_SUFFIXES = ("_neon.cpp",)


def want_cuda():
    flag = os.environ.get("EFFGEN_CUDA", "").strip()
    cuda_home = CUDA_HOME
    torch_has_cuda = torch.version.cuda is not None
    if flag == "0":
        return None
    if flag == "1":
        if not torch_has_cuda:
            raise RuntimeError("EFFGEN_CUDA=1 but the installed torch is a CPU-only build")
        if cuda_home is None:
            raise RuntimeError("EFFGEN_CUDA=1 but no nvcc was found (set CUDA_HOME)")
        return cuda_home
    if flag not in ("", "auto"):
        raise RuntimeError(f"EFFGEN_CUDA must be 0 or 1, got {flag!r}")
    return cuda_home if torch_has_cuda else None


def gencode_flags(archs):
    """sm_XX SASS for each arch, plus PTX of the newest one for forward compatibility."""
    flags = []
    for arch in archs:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    newest = archs[-1]
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def extension():
    cuda_home = want_cuda()
    cpu_sources = sorted(glob.glob("csrc/registration.cpp") + glob.glob("csrc/ops/*.cpp")
                         + glob.glob("csrc/kernels/cpu/*.cpp"))
    cpu_sources = [s for s in cpu_sources if not s.endswith("_cuda.cpp")]
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        cpu_sources = [s for s in cpu_sources if not s.endswith(X86_ONLY_SUFFIXES)]
    if machine not in ("aarch64", "arm64"):
        cpu_sources = [s for s in cpu_sources if not s.endswith(AARCH64_ONLY_SUFFIXES)]
    # -ffp-contract=off: the kernels must match reference.py bit for bit, so the compiler
    # may not fuse a multiply and an add into one FMA with a different rounding.
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` (torch is built with
    # OpenMP); without the flag the pragma is dropped and every op runs on one thread.
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fvisibility=hidden", "-fopenmp"]
    # --exclude-libs,ALL: where a toolchain links libstdc++ statically (the H200 image's
    # /opt/gcc does), its copy must stay private to the extension. Exported, the process
    # binds the copy's functions to itself (Python's -Bsymbolic-functions) but its data to
    # the libstdc++.so that torch loaded, and formatting a number into an error message read
    # a facet that did not exist: a segfault there (session 44), an empty number here.
    link = ["-fopenmp", "-Wl,--exclude-libs,ALL"]
    # EFFGEN_SANITIZE=address,undefined: a checked build of the CPU kernels for `make sanitize`
    # (Python must then run with the sanitizer runtime preloaded).
    if sanitize := os.environ.get("EFFGEN_SANITIZE"):
        # -fno-wrapv: Python's CFLAGS carry -fwrapv, under which signed overflow is defined and
        # UBSan's check for it does nothing.
        checks = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-fno-wrapv"]
        cxx, link = cxx + checks, link + checks
    info = {"torch_version": torch.__version__, "cuda": False, "cuda_archs": [], "cuda_version": None}
    if cuda_home is None:
        ext = CppExtension("effgen_kernels._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=link,
                           py_limited_api=True)
    else:
        archs = [a for a in os.environ.get("EFFGEN_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(";") if a]
        cuda_sources = sorted(glob.glob("csrc/ops/*_cuda.cpp") + glob.glob("csrc/kernels/cuda/*.cu"))
        nvcc = ["-O3", "-std=c++20", "--fmad=false", "-lineinfo", *gencode_flags(archs)]
        if "90a" in archs:  # the wgmma kernels exist (int8_gemm_wgmma_supported() may say yes)
            nvcc.append("-DEFFGEN_SM90A")
        ext = CUDAExtension("effgen_kernels._C", cpu_sources + cuda_sources,
                            extra_compile_args={"cxx": cxx + ["-DEFFGEN_WITH_CUDA"], "nvcc": nvcc},
                            extra_link_args=link,
                            py_limited_api=True)
        info.update(cuda=True, cuda_archs=archs, cuda_version=torch.version.cuda)
    (ROOT / "effgen_kernels" / "_build_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return ext


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
