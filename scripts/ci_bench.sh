#!/usr/bin/env bash
# The benchmark tier with the regression gate: the same command in CI and on a workstation.
# Usage: bash scripts/ci_bench.sh TIER GATE [extra pytest args]
#   TIER: quick (CPU-sized) or full (GPU-sized); GATE: off, report (never fails) or enforce.
# Writes to ${OUT:-results}: bench.json (pytest-benchmark JSON with attnsuite records), gate.md
# (markdown diff; also appended to $GITHUB_STEP_SUMMARY when set), gate.json (the verdicts, which
# `attnsuite ab --cases-from` reads), bench.log. Finished cases are journaled beside bench.json as
# they finish: after a killed run, the same command with --attn-resume carries on.
# Exit status: pytest's (1 when the gate fails under enforce, 2 interrupted, 4 for a malformed baseline
# or another run writing the same folder).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/ci_bench.sh quick|full off|report|enforce [pytest args]" >&2
  exit 2
fi
tier=$1
gate=$2
shift 2
out=${OUT:-results}
mkdir -p "$out"
# One run per output folder: a second one had truncated the first's bench.log and replaced its
# results (pytest refuses the same journal too, but only after tee has emptied the log).
exec 9>> "$out/.ci_bench.lock"
if command -v flock > /dev/null 2>&1 && ! flock -n 9; then
  echo "ci_bench: another run is writing $out (its lock: $out/.ci_bench.lock): wait for it, or give this run OUT=<another folder>" >&2
  exit 4
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
# tee -i: Ctrl-C (or a cancelled job's SIGINT to the whole process group) must not end the tee
# before pytest has written its interrupted summary and the --attn-resume hint; a resumed run
# appends to the log of the run it carries on.
append=
for arg in "$@"; do [ "$arg" = --attn-resume ] && append=-a; done
[ -n "$append" ] && echo "--- resumed $(date -u +%Y-%m-%dT%H:%M:%SZ) ---" >> "$out/bench.log"
"$PY" -m pytest bench --benchmark-only -p no:cacheprovider -q -rfE \
  --attn-tier "$tier" --attn-gate "$gate" \
  --benchmark-json "$out/bench.json" --attn-markdown "$out/gate.md" --attn-gate-json "$out/gate.json" "$@" 2>&1 \
  | tee -i $append "$out/bench.log"
status=${PIPESTATUS[0]}
echo "ci_bench ($tier, gate $gate) exit status: $status"
exit "$status"
