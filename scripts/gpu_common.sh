# Sourced by the scripts/gpu_*.sh runs: the repository root as working folder, ${OUT:-results} as
# $out, $PY, unbuffered output, and stage(), which runs one pytest stage under a time limit, keeps
# its log and JUnit XML under $out, and records a failure in $status without stopping the run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-results}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# as the GPU workflow does: a Triton autotuning choice is kept on disk, so later workers (other GPUs,
# replacements) and later runs on the machine reuse it instead of benchmarking every config again
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
status=0

stage() {  # stage PREFIX_NAME LIMIT_S PYTEST_ARGS...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$PY" -m pytest -p no:cacheprovider -q -rfEs --junitxml="$out/$name.xml" \
    --attn-failures-log="$out/$name.failures" "$@" 2>&1 \
    | tee "$out/$name.log" | tail -30
  local s=${PIPESTATUS[0]}
  echo "$name exit status: $s"
  [ "$s" -eq 0 ] || status=1
}
