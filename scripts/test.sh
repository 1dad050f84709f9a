#!/usr/bin/env bash
# The test command: machinery tests and the correctness suite on this machine's CPU.
set -uo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
# ATTNSUITE_TEST_PYTHON: an interpreter that has the test tools already (a GPU host whose image has
# them and no package index); the set-up is then skipped. Else the project's .venv, made here.
if [ -n "${ATTNSUITE_TEST_PYTHON:-}" ]; then
  PY=$ATTNSUITE_TEST_PYTHON
  . scripts/python_check.sh
  if why=$(python_unfit "$PY" torch numpy pytest xdist pytest_benchmark hypothesis); then
    echo "test.sh: ATTNSUITE_TEST_PYTHON=$PY cannot run the tests: $why (unset it to let test.sh make .venv)" >&2
    exit 4
  fi
else
  bash scripts/setup.sh || { echo "test.sh: scripts/setup.sh failed (its messages are above): no test was run" >&2; exit 4; }
  PY=.venv/bin/python
fi
# The tests write runs, journals and reports under TMPDIR: on a disk that is nearly full, use memory.
. scripts/space.sh
if [ "$(space_free_mb "${TMPDIR:-/tmp}")" -lt 1024 ] && spare=$(space_spare_dir 1024) && [ -n "$spare" ]; then
  export TMPDIR="$spare/attnsuite-tmp-$(pwd | sha256sum | cut -c1-12)" && mkdir -p "$TMPDIR"
  echo "test.sh: less than 1 GB free under /tmp: the tests write under $TMPDIR instead" >&2
fi
# The HTML report is opened in a headless Chromium by a test: find one, else try to install one.
if [ -z "${ATTNSUITE_CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null; then
  echo "test.sh: no Chromium on PATH: trying playwright's download, then the system's package manager" >&2
  timeout 300 "$PY" -m playwright install chromium >/dev/null 2>&1 \
    || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && timeout 300 apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "test.sh: no headless Chromium could be installed: the HTML report's browser test skips, saying so" >&2
fi
# The tests start hundreds of Python processes, each importing this package, the variants and the test
# modules: compiled once to bytecode (in __pycache__, ignored by git) rather than in every process
# where the environment forbids writing it (PYTHONDONTWRITEBYTECODE=1 on this project's CPU machines).
unset PYTHONDONTWRITEBYTECODE
# One xdist worker per core, 2 to 8: CI's 2 cores get 2; a 16-core workstation had run the same
# two workers and taken as long as CI. ATTNSUITE_TEST_WORKERS sets the count.
cores=$(nproc 2> /dev/null || echo 2)
workers=${ATTNSUITE_TEST_WORKERS:-$(( cores < 2 ? 2 : (cores > 8 ? 8 : cores) ))}
# The cores are shared out among the workers: each worker's torch and BLAS thread pools had taken every
# core, and 2 workers x 2 threads on 2 cores ran the correctness checks at half speed (spinning
# OpenMP threads contending: ring-sim-p3 and sdpa-flash's tests took 28.6 s, 15.8 s with one
# thread each; 2-core CPU machine, 2026-12-02). OMP_NUM_THREADS set by the caller is kept.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / workers > 1 ? cores / workers : 1 ))}
# worksteal: an idle worker takes queued tests from a busy one. Under xdist's default (load) one
# worker sat idle through the other's tail: 830 s against 712 s (2-core CPU machine, cold caches,
# 2026-12-02). The one run under worksteal that failed had met a rank forked from a process with
# threads, hung before it joined; CPU ranks now start from a fork server (docs/distributed.md).
# Ctrl-C (or a time limit's SIGINT) reaches pytest, which reports what it had and exits 2: no second pass then
interrupted=no
trap 'interrupted=yes' INT
# -c: pytest finds its config from the common folder of its path arguments, and a user's option naming
# a file outside this checkout (--attn-variants /elsewhere/v.py) had left pyproject.toml's settings unread
"$PY" -m pytest -c pyproject.toml tests test_correctness -p no:cacheprovider -q -n "$workers" --dist worksteal -m "not gpu" "$@"
first=$?
if [ "$interrupted" = yes ] || [ "$first" -eq 2 ]; then
  exit "$first"
fi
# The tests marked gpu time the GPU and run compiled Triton: on a host with a GPU they run after the
# others, alone in one process. Among 8 busy workers on an H200 host a host-bound step's graph time
# moved 31% with the host's speed, and a worker that had run the CPU checks (Triton's interpreter on)
# failed the compiled Flex ones (2026-12-02). Without a GPU they would only skip.
second=5
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; then
  echo "test.sh: a CUDA GPU is present: the tests marked gpu now run alone" >&2
  "$PY" -m pytest -c pyproject.toml tests -p no:cacheprovider -q -m gpu "$@"
  second=$?
fi
if [ "$first" -eq 5 ] && [ "$second" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
# a pass that selected nothing (no GPU, or a -k that names only tests of the other pass) is no failure
[ "$first" -eq 5 ] && first=0
[ "$second" -eq 5 ] && second=0
[ "$first" -ne 0 ] && exit "$first"
exit "$second"
