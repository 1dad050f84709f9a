#!/usr/bin/env bash
# The correctness suite on a CUDA GPU (fp16, bf16, fp32 with TF32 off; every SDPA backend; compiled Flex).
# Usage: bash scripts/gpu_correctness.sh [extra pytest args]. Logs and JUnit XML go to ${OUT:-results}.
# PATHS (default "test_correctness tests") narrows what is collected, e.g. to one file for a probe.
# Each failure is appended to gpu_correctness.failures as it happens, so a run stopped by a time limit
# still says what failed (stop it with SIGINT and pytest also writes its summary and the XML).
#
# Two passes, each under pytest-xdist, so that a kernel that crashes, hangs or breaks its CUDA context
# fails its own test and a fresh worker runs the rest (docs/isolation.md):
#   1. every test not marked `gpu`, in WORKERS workers that share the GPU (default: half the cores, at
#      most 6). These tests compare numbers and time nothing, and most of their time is the host's
#      (compiling, building inputs, the oracle): in one worker the whole suite reached 42% in 555 s on
#      an H200 host (docs/evidence/h200-2026-12-01-s12) -> gpu_correctness.{log,xml}
#   2. the tests marked `gpu` (timer agreement, device time, a real illegal address), in one worker
#      with the GPU to themselves -> gpu_correctness_alone.{log,xml}
# A machine without pytest-xdist gets it from wheels carried in .carry/test-tools (bash
# scripts/carry_download.sh test-tools); with neither, each pass runs in one process and says that a
# crash would end it.
source "$(dirname "$0")/gpu_common.sh"
ensure_xdist
# The distributed variants on NCCL, one rank per GPU (P = 2; skipped with the reason on a one-GPU
# runner); CI checks them on gloo with P = 2, 3 and 4 already.
export ATTNSUITE_DIST_DEVICE=${ATTNSUITE_DIST_DEVICE:-cuda} ATTNSUITE_DIST_DTYPES=${ATTNSUITE_DIST_DTYPES:-bfloat16,float16}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
cores=$(nproc 2> /dev/null || echo 2)
default_workers=$(( cores / 2 )); [ "$default_workers" -gt 6 ] && default_workers=6; [ "$default_workers" -lt 1 ] && default_workers=1
workers=${WORKERS:-$default_workers}
if [ "$xdist" = no ]; then
  echo "gpu_correctness: pytest-xdist is not installed: the tests run in one process, and a kernel that crashes" \
    "or breaks its CUDA context ends the job (pip install pytest-xdist, or carry the wheels of: bash scripts/carry_download.sh test-tools)"
fi

# --attn-compiled-problems is test_correctness's own option (its conftest.py): given to a run that
# collects none of it (PATHS=tests, or one file of tests/ for a probe), pytest had refused it as unknown
compiled=()
for p in ${PATHS:-test_correctness tests}; do
  case "$p" in test_correctness|test_correctness/*|./test_correctness*) compiled=(--attn-compiled-problems "${COMPILED_PROBLEMS:-2}") ;; esac
done

run_pass() {  # run_pass NAME N_WORKERS MARK_EXPR [extra pytest args]: sets $pass_status
  local name=$1 n=$2 marks=$3
  shift 3
  local par=()
  # worksteal: an idle worker takes queued tests from a busy one (xdist's default had left one idle
  # through another's long tail: the CPU test command took 830 s under it, 712 s under worksteal).
  [ "$xdist" = yes ] && par=(-n "$n" --dist worksteal)
  # each worker's torch and BLAS threads get its share of the host's cores (the oracle and the inputs
  # are float64 NumPy and torch on the CPU): a caller's OMP_NUM_THREADS is kept
  local threads=$(( cores / n > 1 ? cores / n : 1 ))
  echo "== gpu_correctness pass $name: -m '$marks', ${par[*]:-one process}, ${OMP_NUM_THREADS:-$threads} threads each" \
    | tee "$out/$name.log"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} "$PY" -m pytest ${PATHS:-test_correctness tests} -p no:cacheprovider -q -rfE "${par[@]}" -m "$marks" \
    --attn-device cuda "${compiled[@]}" \
    --junitxml="$out/$name.xml" --attn-failures-log="$out/gpu_correctness.failures" --durations=15 \
    "$@" 2>&1 | tee -a "$out/$name.log"
  pass_status=${PIPESTATUS[0]}
}

# A time limit's SIGINT (timeout -s INT signals the whole process group) reaches pytest and this
# shell: pytest writes its summary and exits 2; the trap keeps the second pass from starting after it.
interrupted=no
trap 'interrupted=yes' INT
run_pass gpu_correctness "$workers" "not gpu" "$@"
shared=$pass_status
echo "gpu_correctness pass 1 (not gpu, $workers workers) exit status: $shared"
if [ "$interrupted" = yes ] || [ "$shared" -eq 2 ] || [ "$shared" -eq 130 ]; then
  echo "gpu_correctness: interrupted in pass 1; pass 2 (the tests marked gpu) not run"
  exit "$shared"
fi
run_pass gpu_correctness_alone 1 "gpu" "$@"
alone=$pass_status
if [ "$alone" -eq 5 ]; then
  # nothing marked gpu under PATHS (or under the -k given): a narrowed run, not a silent pass of the whole suite
  echo "gpu_correctness pass 2: no test marked gpu was selected (PATHS=${PATHS:-test_correctness tests})"
  alone=0
fi
echo "gpu_correctness pass 2 (gpu, 1 worker) exit status: $alone"
status=$shared; [ "$status" -eq 0 ] && status=$alone
echo "gpu_correctness exit status: $status"
exit "$status"
