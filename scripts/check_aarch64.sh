#!/usr/bin/env bash
# What a Linux ARM user (Graviton, Ampere, Grace) gets from `pip install`, checked on an
# x86-64 Debian machine: the extension cross-built for aarch64 against PyPI's aarch64 torch
# and its tests run under qemu-user, whose default CPU has dotprod: the tests run the NEON
# kernels and the portable scalar ones (csrc/kernels/cpu/isa.h). qemu checks results, not speed.
#
# Needs g++-aarch64-linux-gnu and qemu-user-static (apt), root to add Debian's arm64
# architecture once, and the network: Debian's arm64 Python 3.11 packages, PyPI's aarch64
# wheels. setup.py runs in the emulated Python (its platform checks see aarch64) and calls
# the native cross compiler, so the build takes about as long as a native one; the tests
# run 5-20x slower than natively.
# torch 2.8.0 by default: the newest aarch64 wheel on PyPI built without CUDA (later ones
# need the CUDA libraries to import), inside pyproject's torch >= 2.6.
#
# Usage: bash scripts/check_aarch64.sh [pytest arguments]   (default: the kernel tests)
# AARCH64_DIR (default build/aarch64) keeps the sysroot and wheels between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${AARCH64_DIR:-build/aarch64}")
TORCH=${AARCH64_TORCH:-2.8.0}
HOST_PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$WORK"

for tool in aarch64-linux-gnu-g++ aarch64-linux-gnu-gcc qemu-aarch64-static; do
  command -v "$tool" > /dev/null || { echo "missing $tool: apt-get install g++-aarch64-linux-gnu qemu-user-static" >&2; exit 1; }
done

# Python 3.11 for arm64 from Debian's packages, unpacked (not installed) into a sysroot.
if [ ! -x "$WORK/sysroot/usr/bin/python3.11" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64 && apt-get update -q; }
  mkdir -p "$WORK/debs" && (cd "$WORK/debs" && apt-get download \
    python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libpython3.11:arm64 \
    libpython3.11-dev:arm64 libc6:arm64 libgcc-s1:arm64 libstdc++6:arm64 libgomp1:arm64 libexpat1:arm64 \
    zlib1g:arm64 libffi8:arm64 libssl3:arm64 libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 \
    libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libuuid1:arm64 libcrypt1:arm64 libnsl2:arm64 \
    libtirpc3:arm64 libdb5.3:arm64 libgdbm6:arm64)
  for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/sysroot"; done
fi

# torch and the test dependencies as aarch64 wheels, unpacked into a site directory (pip
# would judge torch's own dependency markers by this x86 host, hence --no-deps and a list).
if [ ! -d "$WORK/site/torch" ]; then
  "$HOST_PY" -m pip install --quiet --no-deps --target "$WORK/site" --only-binary=:all: --implementation cp \
    --python-version 3.11 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 "torch==$TORCH" numpy pytest pluggy iniconfig packaging pygments \
    safetensors scikit-learn scipy joblib threadpoolctl narwhals cloudpickle filelock typing_extensions sympy mpmath networkx \
    jinja2 markupsafe fsspec setuptools
fi

# The emulated interpreter (python3.11 ARGS...): the sysroot's loader and libraries, the
# aarch64 site, the tree; ARM_ENV holds more "-E NAME=VALUE" pairs for qemu.
ARM_ENV=()
run_arm() {
  qemu-aarch64-static -L "$WORK/sysroot" -E PYTHONPATH="$WORK/src:$WORK/site" -E HOME="$WORK" \
    -E PATH=/usr/bin:/bin -E OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "${ARM_ENV[@]}" \
    "$WORK/sysroot/usr/bin/python3.11" "$@"
}

rm -rf "$WORK/src" && mkdir -p "$WORK/src"
cp -r setup.py pyproject.toml README.md csrc effgen_kernels tests examples benchmarks scripts "$WORK/src/"
rm -f "$WORK"/src/effgen_kernels/_C*.so "$WORK/src/effgen_kernels/_build_info.json"
echo "building for aarch64 (log: $WORK/build.log)"
# CPATH: the arm64 pyconfig.h that the host's /usr/include/python3.11 refers to.
ARM_ENV=(-E CXX=/usr/bin/aarch64-linux-gnu-g++ -E CC=/usr/bin/aarch64-linux-gnu-gcc
         -E CPATH="$WORK/sysroot/usr/include" -E EFFGEN_CUDA=0 -E MAX_JOBS="${MAX_JOBS:-2}")
if ! (cd "$WORK/src" && run_arm setup.py build_ext --inplace) > "$WORK/build.log" 2>&1; then
  tail -30 "$WORK/build.log"; echo "BUILD FAILED" >&2; exit 1
fi
ARM_ENV=()
cd "$WORK/src"
run_arm -c "import effgen_kernels as ek; print('effgen_kernels on', ek.ops.supported_cpu_isas())" < /dev/null
if [ $# -eq 0 ]; then
  set -- tests/test_quant.py tests/test_int8_gemm.py tests/test_binary.py tests/test_compress.py \
    tests/test_quantized_layers.py tests/test_random_linear.py tests/test_random_quant.py
fi
run_arm -m pytest -q -p no:cacheprovider -rs "$@"
