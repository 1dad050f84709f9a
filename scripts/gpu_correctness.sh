#!/usr/bin/env bash
# The correctness suite on a CUDA GPU (fp16, bf16, fp32 with TF32 off; every SDPA backend; compiled Flex).
# Usage: bash scripts/gpu_correctness.sh [extra pytest args]. Logs and JUnit XML go to ${OUT:-results}.
source "$(dirname "$0")/gpu_common.sh"
"$PY" -m pytest test_correctness tests -p no:cacheprovider -q -rfE \
  --attn-device cuda --attn-compiled-problems "${COMPILED_PROBLEMS:-2}" \
  --junitxml="$out/gpu_correctness.xml" "$@" 2>&1 | tee "$out/gpu_correctness.log"
status=${PIPESTATUS[0]}
echo "gpu_correctness exit status: $status"
exit "$status"
