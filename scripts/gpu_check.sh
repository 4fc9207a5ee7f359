#!/usr/bin/env bash
# One prepared run on a GPU machine (an H200 image: torch + CUDA + nvcc, no network, nothing
# to install): build in place for sm_90a, run the `cuda` tests, compute-sanitizer on every
# kernel, the GPU benchmarks; logs and a results JSON go to OUTDIR, a short table last.
# Budget: well inside 8 minutes. Usage: bash scripts/gpu_check.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export EFFGEN_CUDA=1 EFFGEN_CUDA_ARCHS=${EFFGEN_CUDA_ARCHS:-90a} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*"; }

{ nvidia-smi; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } > "$OUT/machine.txt" 2>&1
stamp "building (log: build.log)"
if ! timeout 300 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  stamp "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
$PY -m effgen_kernels.cli info >> "$OUT/machine.txt" 2>&1

stamp "pytest -m cuda (log: pytest-cuda.log)"
timeout 240 $PY -m pytest -m cuda -q -p no:cacheprovider tests > "$OUT/pytest-cuda.log" 2>&1
tests_rc=$?

stamp "compute-sanitizer memcheck + racecheck (log: sanitizer.log)"
: > "$OUT/sanitizer.log"
for tool in memcheck racecheck; do
  echo "=== $tool" >> "$OUT/sanitizer.log"
  timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 $PY scripts/cuda_smoke.py >> "$OUT/sanitizer.log" 2>&1
  echo "=== $tool exit code $?" >> "$OUT/sanitizer.log"
done

stamp "benchmarks (log: bench-cuda.log, json: bench-cuda.json)"
timeout 200 $PY -m effgen_kernels.cli bench --device cuda --json "$OUT/bench-cuda.json" > "$OUT/bench-cuda.log" 2>&1
bench_rc=$?

stamp "done: tests rc=$tests_rc, bench rc=$bench_rc"
echo "--- pytest -m cuda"; tail -15 "$OUT/pytest-cuda.log"
echo "--- compute-sanitizer"; grep -E "^===|ERROR SUMMARY" "$OUT/sanitizer.log"
echo "--- benchmarks"; grep -v '^\[' "$OUT/bench-cuda.log" | grep -v '^  ' | tail -25
exit $(( tests_rc != 0 || bench_rc != 0 ))
