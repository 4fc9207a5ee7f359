#!/usr/bin/env bash
# Nsight Compute counters of our kernels on a GPU machine: builds in place as gpu_check.sh does,
# then runs scripts/cuda_profile.py's TARGETS (default: all) under ncu and writes one CSV row
# per kernel launch to OUTDIR/ncu.csv: time, DRAM / L2 / L1 / SM throughput against peak,
# instructions, occupancy, global sectors per request (32 bytes each: 4 for a coalesced
# 16-byte-per-lane access) and the main warp stall reasons. With GPU_PROFILE_FULL=REGEX it
# instead collects every section (--set full) of the first GPU_PROFILE_LAUNCHES (default 1)
# launches of kernels whose name matches REGEX and writes ncu's details page, the rules'
# advice included, to OUTDIR/ncu-details.txt.
# Usage: bash scripts/gpu_profile.sh OUTDIR [TARGET...]
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_profile.sh OUTDIR [TARGET...]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export EFFGEN_CUDA=1 EFFGEN_CUDA_ARCHS=${EFFGEN_CUDA_ARCHS:-90a} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
targets=("$@")
(( ${#targets[@]} )) || targets=(int8 binary w8a16 quant codecs)
timeout 300 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
if [[ -n ${GPU_PROFILE_FULL:-} ]]; then
  timeout 400 ncu --set full --kernel-name "regex:$GPU_PROFILE_FULL" --launch-count "${GPU_PROFILE_LAUNCHES:-1}" \
    -f -o "$OUT/ncu-full" $PY scripts/cuda_profile.py "${targets[@]}" > "$OUT/ncu.err" 2>&1 || { tail -20 "$OUT/ncu.err"; exit 1; }
  ncu --import "$OUT/ncu-full.ncu-rep" --page details > "$OUT/ncu-details.txt"
  exit
fi
stall=smsp__average_warps_issue_stalled
metrics=(
  gpu__time_duration.sum
  dram__throughput.avg.pct_of_peak_sustained_elapsed
  lts__throughput.avg.pct_of_peak_sustained_elapsed
  l1tex__throughput.avg.pct_of_peak_sustained_elapsed
  sm__throughput.avg.pct_of_peak_sustained_elapsed
  sm__inst_executed.sum
  sm__warps_active.avg.pct_of_peak_sustained_active
  launch__registers_per_thread
  l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum
  l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum
  l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum
  l1tex__t_requests_pipe_lsu_mem_global_op_st.sum
  ${stall}_long_scoreboard_per_issue_active.ratio
  ${stall}_lg_throttle_per_issue_active.ratio
  ${stall}_wait_per_issue_active.ratio
  ${stall}_short_scoreboard_per_issue_active.ratio
  ${stall}_math_pipe_throttle_per_issue_active.ratio
  ${stall}_mio_throttle_per_issue_active.ratio
  ${stall}_barrier_per_issue_active.ratio
  ${stall}_drain_per_issue_active.ratio
)
IFS=, joined="${metrics[*]}"
timeout 400 ncu --csv --kernel-name-base mangled --kernel-name regex:effgen --metrics "$joined" \
  $PY scripts/cuda_profile.py "${targets[@]}" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
rc=$?
grep -c '"gpu__time_duration.sum"' "$OUT/ncu.csv" | sed 's/^/kernel launches measured: /'
exit $rc
