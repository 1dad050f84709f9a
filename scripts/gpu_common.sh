# Sourced by the scripts/gpu_*.sh runs: the repository root as working folder, ${OUT:-results} as
# $out, $PY, unbuffered output, and stage(), which runs one pytest stage under a time limit, keeps
# its log and JUnit XML under $out, and records a failure in $status without stopping the run.
set -uo pipefail
CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
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

# A --target directory is not a site directory: on PYTHONPATH alone its .pth files never run, and
# nvidia-cutlass-dsl (FlashAttention 4's compiler) reaches its `cutlass` package only through one.
# site.addsitedir runs them; what it adds to sys.path goes on PYTHONPATH for every later python.
use_site_dir() {  # use_site_dir DIR
  local added
  added=$("$PY" -c "import site, sys; before = list(sys.path); site.addsitedir(sys.argv[1]); \
print(':'.join(p for p in sys.path if p not in before))" "$1") || return 1
  export PYTHONPATH=$added${PYTHONPATH:+:$PYTHONPATH}
  echo "site dir $1 on PYTHONPATH: $added"
}

# Wheels carried to a machine that installs nothing from a registry: installed into DIR, apart and
# without dependencies, so nothing of the machine's own torch changes. Call it in this shell (not in a
# pipeline or $(...)), so that PYTHONPATH reaches the python runs after it.
install_carried() {  # install_carried DIR WHEEL...
  local dir=$1
  shift
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$dir" "$@" \
    && use_site_dir "$dir"
}

# pytest-xdist for crash isolation: the machine's own, else wheels carried in .carry/test-tools
# (bash scripts/carry_download.sh test-tools). Sets $xdist to "yes" or "no".
ensure_xdist() {
  if ! "$PY" -c "import xdist" 2> /dev/null && ls .carry/test-tools/*.whl > /dev/null 2>&1; then
    install_carried /tmp/attnsuite-test-tools .carry/test-tools/*.whl > "$out/test-tools.log" 2>&1
  fi
  xdist=no
  if "$PY" -c "import xdist" 2> /dev/null; then xdist=yes; fi
}
