#!/usr/bin/env bash
# One prepared run on a GPU machine (an H200 image: torch + CUDA + nvcc, no network, nothing
# to install): build in place for sm_90a, run the `cuda` tests, the GPU benchmarks and
# compute-sanitizer on every kernel; logs and a results JSON go to OUTDIR, a short table last.
# Every stage is cut to what is left of GPU_CHECK_BUDGET seconds (default 540, inside the
# device tool's 600 s call limit), most valuable first: build, tests, benchmarks, then the
# sanitizer (which gVisor machines may refuse), then the skinny GEMV grid study.
# GPU_CHECK_SKIP="bench sanitizer study" leaves those out (a rerun after a fix to tests
# alone). Usage: bash scripts/gpu_check.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export EFFGEN_CUDA=1 EFFGEN_CUDA_ARCHS=${EFFGEN_CUDA_ARCHS:-90a} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s) budget=${GPU_CHECK_BUDGET:-540}
stamp() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*"; }
# limit CAP: seconds a stage may take, CAP at most and never past the budget (at least 1).
limit() { local left=$(( budget - ($(date +%s) - start) )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
# A hung test fails alone instead of eating the stage, where pytest-timeout is installed.
per_test=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout 90")

{ nvidia-smi; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } > "$OUT/machine.txt" 2>&1
# The build's log stays out of OUTDIR unless the build fails: the device tool returns 8 files.
stamp "building (log: /tmp/effgen-build.log, copied to OUTDIR/build.log if it fails)"
if ! timeout "$(limit 300)" $PY setup.py build_ext --inplace > /tmp/effgen-build.log 2>&1; then
  cp /tmp/effgen-build.log "$OUT/build.log"; stamp "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
$PY -m effgen_kernels.cli info >> "$OUT/machine.txt" 2>&1

# The wgmma GEMM's tests (session 11's TMA kernel; right on its first run, session 44) run in
# a process of their own after the rest: a kernel fault poisons the process's CUDA context, so
# it must not take the other tests, or the benchmarks, down with it. If they fail, the
# benchmarks leave it out.
# A test that crashes the process (a signal, e.g. a segfault: rc 139) would take the tests
# after it down too: the faulthandler's traceback names it, and the run starts again without
# it (three times at most, logs appended); the crash still fails the stage.
run_cuda_tests() {  # LOG K_EXPRESSION CAP_SECONDS
  local log=$1 expr=$2 cap=$3 rc crashed
  : > "$log"
  for attempt in 1 2 3 4; do
    timeout "$(limit "$cap")" $PY -m pytest -m cuda -k "$expr" -q -p no:cacheprovider $per_test tests >> "$log" 2>&1
    rc=$?
    (( rc > 128 && rc != 137 && attempt < 4 )) || break  # 137: killed by timeout
    crashed=$(grep -oE 'tests/test_[a-z0-9_]+\.py", line [0-9]+ in test_[A-Za-z0-9_]+' "$log" | tail -1 | sed 's/.* in //')
    [[ -n $crashed ]] || break
    echo "=== $crashed crashed the process (rc $rc): again without it" >> "$log"
    stamp "$crashed crashed the process (rc $rc): again without it"
    expr="$expr and not $crashed"
  done
  grep -q "crashed the process" "$log" && (( rc == 0 )) && rc=1
  return "$rc"
}

stamp "pytest -m cuda (logs: pytest-cuda.log, pytest-cuda-wgmma.log)"
run_cuda_tests "$OUT/pytest-cuda.log" "not wgmma" 240
tests_rc=$?
run_cuda_tests "$OUT/pytest-cuda-wgmma.log" wgmma 90
wgmma_rc=$?
(( wgmma_rc == 0 || wgmma_rc == 5 )) || export EFFGEN_BENCH_KERNELS=mma  # 5: no test ran (no sm_90a)

skipped() { [[ " ${GPU_CHECK_SKIP:-} " == *" $1 "* ]] && stamp "$1 skipped (GPU_CHECK_SKIP)"; }
# The GPU's SM clock and power every 200 ms while the benchmarks run, summarized into
# machine.txt: whether a kernel waits on memory or on arithmetic depends on the clock it ran
# at, which under a long tensor-core load may be far below the boost clock.
clock_summary() {  # SAMPLES_CSV: "sm MHz, W" lines
  $PY - "$1" <<'SUMMARY'
import statistics, sys
rows = [line.split(",") for line in open(sys.argv[1]) if line.count(",") == 1]
for name, column in (("SM clock, MHz", 0), ("power, W", 1)):
    values = sorted(float(row[column]) for row in rows if row[column].strip().replace(".", "").isdigit())
    if values:
        print(f"benchmarks' {name}: median {statistics.median(values):.0f}, min {values[0]:.0f}, max {values[-1]:.0f}"
              f" ({len(values)} samples)")
SUMMARY
}
bench_rc=0
if ! skipped bench; then
  stamp "benchmarks (log: bench-cuda.log, json: bench-cuda.json)"
  nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 200 > /tmp/gpu_clocks.csv 2>/dev/null &
  sampler=$!
  timeout "$(limit 200)" $PY -m effgen_kernels.cli bench --device cuda --json "$OUT/bench-cuda.json" > "$OUT/bench-cuda.log" 2>&1
  bench_rc=$?
  kill "$sampler" 2>/dev/null
  clock_summary /tmp/gpu_clocks.csv >> "$OUT/machine.txt"
fi

: > "$OUT/sanitizer.log"
if ! skipped sanitizer; then
  stamp "compute-sanitizer memcheck + racecheck (log: sanitizer.log)"
  for tool in memcheck racecheck; do
    echo "=== $tool" >> "$OUT/sanitizer.log"
    timeout "$(limit 120)" compute-sanitizer --tool "$tool" --error-exitcode 9 $PY scripts/cuda_smoke.py >> "$OUT/sanitizer.log" 2>&1
    echo "=== $tool exit code $?" >> "$OUT/sanitizer.log"
  done
fi

# The few-row GEMVs' grids (benchmarks/skinny_blocks_study.py): an experiment, last.
if ! skipped study; then
  stamp "skinny GEMV grid study (log: skinny-study.log, json: skinny-study.json)"
  timeout "$(limit 90)" $PY benchmarks/skinny_blocks_study.py --json "$OUT/skinny-study.json" > "$OUT/skinny-study.log" 2>&1
fi

stamp "done: tests rc=$tests_rc, wgmma tests rc=$wgmma_rc, bench rc=$bench_rc"
echo "--- pytest -m cuda"; grep "crashed the process" "$OUT/pytest-cuda.log"; tail -15 "$OUT/pytest-cuda.log"
echo "--- pytest -m cuda -k wgmma"; tail -5 "$OUT/pytest-cuda-wgmma.log"
echo "--- compute-sanitizer"; grep -E "^===|ERROR SUMMARY" "$OUT/sanitizer.log"
[[ -f $OUT/bench-cuda.log ]] && { echo "--- benchmarks"; grep -v '^\[' "$OUT/bench-cuda.log" | grep -v '^  ' | tail -25; }
[[ -f $OUT/skinny-study.log ]] && { echo "--- skinny GEMV grids"; tail -12 "$OUT/skinny-study.log"; }
grep "^benchmarks'" "$OUT/machine.txt"
exit $(( tests_rc != 0 || (wgmma_rc != 0 && wgmma_rc != 5) || bench_rc != 0 ))
