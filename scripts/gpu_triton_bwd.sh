#!/usr/bin/env bash
# triton-flash's two backward paths on a CUDA GPU, in one run (about 6 minutes on an H200):
#   1. the backward-path tests compiled on CUDA (test_triton_bwd.py: the fused path against the
#      oracle, path selection; test_triton.py: the mutants on both paths), autotuning off;
#   2. scripts/triton_bench.py's flash stage (autotuned): fwd/bwd of triton-flash (the rule's
#      backward path) and triton-flash[fused] against sdpa-flash and sdpa-cudnn, CUDA-event and
#      device time, in two processes (d 64, then d 128) so neither runs into the time limit.
# Logs, JUnit XML and JSON go to ${OUT:-results}: triton_bench_flash_d64.json, triton_bench_flash_d128.json.
# Usage: OUT=results/bwd bash scripts/gpu_triton_bwd.sh [--quick]   (--quick: L 1K and 4K only)
source "$(dirname "$0")/gpu_common.sh"
unset TRITON_INTERPRET  # compiled kernels on CUDA

# test_correctness/conftest.py turns autotuning off for the tests (ATTNSUITE_TRITON_AUTOTUNE=0)
stage gpu_triton_bwd_tests 150 \
  test_correctness/test_triton_bwd.py test_correctness/test_triton.py --attn-device cuda

for d in 64 128; do
  echo "== flash stage, d $d (scripts/triton_bench.py --stages flash --flash-dims $d, limit 200 s)"
  timeout 200 "$PY" scripts/triton_bench.py --out "$out" --stages flash --flash-dims "$d" "$@" 2>&1 \
    | tee "$out/gpu_triton_bwd_flash_d$d.log"
  s=${PIPESTATUS[0]}
  echo "flash d$d exit status: $s"
  [ "$s" -eq 0 ] || status=1
done
echo "{\"status\": $status}" > "$out/gpu_triton_bwd_status.json"
exit $status
