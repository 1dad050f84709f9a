#!/usr/bin/env bash
# The correctness suite on a CUDA GPU (fp16, bf16, fp32 with TF32 off; every SDPA backend; compiled Flex).
# Usage: bash scripts/gpu_correctness.sh [extra pytest args]. Logs and JUnit XML go to ${OUT:-results}.
# PATHS (default "test_correctness tests") narrows what is collected, e.g. to one file for a probe.
# Each failure is appended to gpu_correctness.failures as it happens, so a run stopped by a time limit
# still says what failed (stop it with SIGINT and pytest also writes its summary and the XML).
# It runs under pytest-xdist with one worker (-n 1) so that a kernel that crashes, hangs or breaks its
# CUDA context fails its own test and a fresh worker runs the rest (docs/isolation.md). A machine
# without pytest-xdist gets it from wheels carried in .carry/test-tools (bash scripts/carry_download.sh test-tools);
# with neither, the job runs in one process and says that a crash would end it.
source "$(dirname "$0")/gpu_common.sh"
ensure_xdist
# The distributed variants on NCCL, one rank per GPU (P = 2; skipped with the reason on a one-GPU
# runner); CI checks them on gloo with P = 2, 3 and 4 already.
export ATTNSUITE_DIST_DEVICE=${ATTNSUITE_DIST_DEVICE:-cuda} ATTNSUITE_DIST_DTYPES=${ATTNSUITE_DIST_DTYPES:-bfloat16,float16}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
isolate=()
if [ "$xdist" = yes ]; then
  isolate=(-n 1)
else
  echo "gpu_correctness: pytest-xdist is not installed: the tests run in one process, and a kernel that crashes" \
    "or breaks its CUDA context ends the job (pip install pytest-xdist, or carry the wheels of: bash scripts/carry_download.sh test-tools)"
fi
# shellcheck disable=SC2086
"$PY" -m pytest ${PATHS:-test_correctness tests} -p no:cacheprovider -q -rfE "${isolate[@]}" \
  --attn-device cuda --attn-compiled-problems "${COMPILED_PROBLEMS:-2}" \
  --junitxml="$out/gpu_correctness.xml" --attn-failures-log="$out/gpu_correctness.failures" --durations=15 \
  "$@" 2>&1 | tee "$out/gpu_correctness.log"
status=${PIPESTATUS[0]}
echo "gpu_correctness exit status: $status"
exit "$status"
