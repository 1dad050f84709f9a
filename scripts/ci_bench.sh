#!/usr/bin/env bash
# The benchmark tier with the regression gate: the same command in CI and on a workstation.
# Usage: bash scripts/ci_bench.sh TIER GATE [extra pytest args]
#   TIER: quick (CPU-sized) or full (GPU-sized); GATE: off, report (the verdicts never fail the run; a case
#   that fails outright, an error or wrong numerics, still does) or enforce.
# Writes to ${OUT:-results}: bench.json (pytest-benchmark JSON with attnsuite records), gate.md
# (markdown diff; also appended to $GITHUB_STEP_SUMMARY when set), gate.json (the verdicts, which
# `attnsuite ab --cases-from` reads), bench.log. Finished cases are journaled beside bench.json as
# they finish: after a killed run, the same command with --attn-resume carries on.
# Exit status (docs/gate.md, "Exit statuses"): 0 passed (or report mode), 1 failed (the gate under
# enforce, a case that failed outright, a required baseline missing), 2 interrupted, 4 nothing ran
# (a usage error, a malformed file, another run writing the same folder, a Python without torch),
# 5 nothing selected.
set -uo pipefail
# It runs where it was typed: OUT and the path options given (--attn-variants, --attn-problems,
# --attn-baselines-dir, ...) are read from there, as by pytest itself (they had been read from the
# checkout, so a team's files were not found and OUT landed in the checkout); the checkout is
# pytest's rootdir, and results/ in it the default OUT.
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/ci_bench.sh quick|full off|report|enforce [pytest args]" >&2
  exit 4
fi
tier=$1
gate=$2
shift 2
case $tier in
  quick|full) ;;
  *) echo "ci_bench: tier '$tier' (ci_bench.sh's first argument) is not one of quick, full" >&2
     exit 4 ;;
esac
case $gate in
  off|report|enforce) ;;
  # bench.sh passes GATE here: pytest's "--attn-gate: invalid choice" had named an option nobody typed
  *) echo "ci_bench: gate '$gate' (GATE, or ci_bench.sh's second argument) is not one of off, report, enforce" >&2
     exit 4 ;;
esac
out=${OUT:-$ROOT/results}
case $out in -*) out=./$out ;; esac  # a folder named "-x" is no option to mkdir, rm or tee
[ -d "$out" ] || created=yes
if [ -L "$out" ] && [ ! -e "$out" ]; then
  # mkdir -p fails on it with "File exists", which had read as a folder that cannot be written
  echo "ci_bench: the output folder OUT=$out is a symbolic link to $(readlink -- "$out"), which does not exist:" \
    "create that folder, or give OUT=<a writable folder>" >&2
  exit 4
fi
if [ -e "$out" ] && [ ! -d "$out" ]; then
  # mkdir -p fails on it too: said as what it is, not as a folder that cannot be written
  echo "ci_bench: OUT=$out is a file, not a folder: give OUT=<a folder> (the run writes bench.json, gate.md," \
    "gate.json and bench.log into it)" >&2
  exit 4
fi
if ! mkdir -p -- "$out" 2> /dev/null || [ ! -w "$out" ]; then
  echo "ci_bench: the output folder OUT=$out cannot be created or written: give OUT=<a writable folder>" >&2
  exit 4
fi
# One run per output folder: a second one had truncated the first's bench.log and replaced its
# results (pytest refuses the same journal too, but only after tee has emptied the log).
[ -e "$out/.ci_bench.lock" ] || new_lock=yes
exec 9>> "$out/.ci_bench.lock"
if command -v flock > /dev/null 2>&1 && ! flock -n 9; then
  echo "ci_bench: another run is writing $out (its lock: $out/.ci_bench.lock): wait for it, or give this run OUT=<another folder>" >&2
  exit 4
fi
[ -n "${created:-}" ] && echo "ci_bench: created the output folder $out"
# A resumed run carries on the run whose outputs are in this folder (see out_folder.sh)
append=
for arg in "$@"; do [ "$arg" = --attn-resume ] && append=-a; done
# Only the last run's outputs are replaced, never a file of the user's that has an output's name.
. "$ROOT/scripts/out_folder.sh"
OUTPUTS=(bench.json gate.md gate.json bench.log)
if ! claim_outputs ci_bench "$out" "$ROOT/results" "$append" "${OUTPUTS[@]}"; then
  [ -n "${new_lock:-}" ] && rm -f "$out/.ci_bench.lock"  # a refused folder is left as it was
  exit 4
fi
seal_on_exit "$out" "$ROOT/results" "${OUTPUTS[@]}"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
# Ctrl-C, a cancelled CI job or `timeout` signal the whole process group (SIGINT, then SIGTERM):
# pytest turns either into an interrupted summary, gate.md headed INTERRUPTED and the --attn-resume
# hint. The tee must outlive that (both signals ignored: it ends when pytest closes the pipe), and so
# must this script: a trapped signal waits for the pipeline, whose status is then pytest's. Without
# that, SIGTERM had ended the script at once, left pytest running without a reader and lost the
# verdict (found by a fresh-user test). A resumed run appends to the log of the run it carries on.
# (appended to a copy: in place it had written into a hard-linked snapshot's log, or a link's target)
if [ -n "$append" ]; then
  if [ -e "$out/bench.log" ]; then
    cp -- "$out/bench.log" "$out/bench.log.tmp.$$" && mv -fT -- "$out/bench.log.tmp.$$" "$out/bench.log"
  fi
  echo "--- resumed $(date -u +%Y-%m-%dT%H:%M:%SZ) ---" >> "$out/bench.log"
fi
# A new run's outputs replace the last run's in this folder; they are removed now, not at the end: a
# run that stopped before writing any (an unknown --attn-only, a bad baseline) had left the last run's
# bench.json and gate files, and ci_report.sh then reported them as this run's PASS (a first-time
# user's trial). A resumed run keeps the run's own files: it carries that run on, and its journal holds
# its cases. The reports made from them (ci_report.sh's) go in both cases: after a resumed run had
# passed, report.html and results.md still said INTERRUPTED (another trial).
# bench.log too: tee writes it in place, through a hard link (a snapshot's copy) or a link the user made
[ -z "$append" ] && rm -f "$out/bench.json" "$out/gate.md" "$out/gate.json" "$out/bench.log"
# With the gate off pytest writes no gate files: a resumed run's would be the killed run's verdicts
# (cut short, under another gate mode), and ci_report.sh had shown them as this run's
[ "$gate" = off ] && rm -f "$out/gate.md" "$out/gate.json"
# ci_report.sh's, when they are what it wrote (a plot of a workload this run does not select had
# stayed beside the new ones); a file of the user's by those names is left alone
for name in report.html results.md plots; do
  if [ -e "$out/$name" ] && output_is_ours "$out" "$ROOT/results" "$name"; then
    rm -rf "${out:?}/$name"
  fi
done
# An interpreter without the suite's packages (a checkout where scripts/setup.sh never ran: the CPU
# workflow's benchmark step relies on the test step's set-up) is named before pytest starts. Checked
# after the removal above: a run stopped here has no outputs either.
. "$ROOT/scripts/python_check.sh"
if why=$(python_unfit "$PY" torch pytest pytest_benchmark); then
  echo "ci_bench: $PY cannot run the benchmarks: $why (run bash scripts/setup.sh first, as scripts/bench.sh does, or give PYTHON=<an interpreter that has them>)" >&2
  exit 4
fi
signalled=
trap 'signalled=SIGINT' INT
trap 'signalled=SIGTERM' TERM
trap 'signalled=SIGHUP' HUP
# -c: pytest finds its config from the common folder of its path arguments: an option naming a folder
# outside this checkout (--attn-baselines-dir /elsewhere) had left pyproject.toml's settings unread
"$PY" -m pytest -c "$ROOT/pyproject.toml" "$ROOT/bench" --rootdir "$ROOT" --benchmark-only -p no:cacheprovider -rfE \
  --attn-tier "$tier" --attn-gate "$gate" \
  --benchmark-json "$out/bench.json" --attn-markdown "$out/gate.md" --attn-gate-json "$out/gate.json" "$@" 2>&1 \
  | (trap '' INT TERM HUP; exec tee $append "$out/bench.log")
status=${PIPESTATUS[0]}
[ -n "$signalled" ] && echo "ci_bench: $signalled received: pytest wrote what it had (exit status $status)"
echo "ci_bench ($tier, gate $gate) exit status: $status; pytest's output above is also in $out/bench.log"
exit "$status"
