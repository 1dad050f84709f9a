#!/usr/bin/env bash
# The Triton kernels on a CUDA GPU, in one run (under 10 minutes on an H200: 195 s of tests, 260 + 40 + 70 s of benchmarks at most):
#   1. the correctness suite for the triton variants (every check, every problem they declare,
#      and test_triton.py's mutants), autotuning off (one config per key: dozens of keys compile);
#   2. scripts/triton_bench.py: flash fwd/bwd TFLOP/s vs sdpa-flash and sdpa-cudnn, decode at 32K
#      keys as % of probed bandwidth, DeepSeek-V3 MLA absorbed time and peak memory (autotuned).
# Each stage runs even if the one before fails. Logs, JUnit XML and JSON go to ${OUT:-results}.
# Usage: bash scripts/gpu_triton.sh [--quick]   (--quick: a smoke run of the benchmark stage)
source "$(dirname "$0")/gpu_common.sh"
unset TRITON_INTERPRET  # compiled kernels on CUDA

echo "== stage 1: correctness (pytest -k triton on cuda)"
ATTNSUITE_TRITON_AUTOTUNE=0 timeout 195 "$PY" -m pytest test_correctness -p no:cacheprovider -q -rfE \
  --attn-device cuda -k triton --junitxml="$out/gpu_triton_correctness.xml" 2>&1 \
  | tee "$out/gpu_triton_correctness.log" | tail -40
s1=${PIPESTATUS[0]}
echo "correctness exit status: $s1"

# one process per benchmark stage, each with its own time limit: a slow or failing stage
# cannot take the others' results with it (each writes $out/triton_bench_<stage>.json as it goes)
status=0
for spec in flash:260 decode:40 mla:70; do
  stage=${spec%%:*}; limit=${spec##*:}
  echo "== stage 2/$stage: performance (scripts/triton_bench.py --stages $stage, limit ${limit}s)"
  timeout "$limit" "$PY" scripts/triton_bench.py --out "$out" --stages "$stage" "$@" 2>&1 \
    | tee "$out/gpu_triton_bench_$stage.log"
  s=${PIPESTATUS[0]}
  echo "bench $stage exit status: $s"
  [ "$s" -ne 0 ] && status=1
done
echo "{\"correctness_status\": $s1, \"bench_status\": $status}" > "$out/gpu_triton_status.json"
exit $(( s1 != 0 || status != 0 ))
