#!/usr/bin/env bash
# The run's report, from the result JSON that scripts/ci_bench.sh wrote: one self-contained HTML file
# (report.html: the summary, plots of every workload, sortable tables, the gate's change per case
# against its band), its top appended to $GITHUB_STEP_SUMMARY when set, PNG plots of TFLOP/s and peak
# memory against sequence length for every workload (plots/), and the markdown table (results.md).
# Never fails the job for a missing plotting library (the HTML needs none).
# Usage: bash scripts/ci_report.sh [RESULTS_DIR]   (default ${OUT:-results})
set -uo pipefail
# RESULTS_DIR and OUT are read from where the command was typed, as scripts/ci_bench.sh reads OUT
# (a relative one had been looked for inside the checkout); the default is the checkout's results/
here=$(pwd)
CDPATH= cd -- "$(dirname -- "$0")/.."
out=${1:-${OUT:-results}}
if [ -n "${1:-}${OUT:-}" ] && [ "${out#/}" = "$out" ] && [ "$here" != "$(pwd)" ]; then out="$here/$out"; fi
case $out in -*) out=./$out ;; esac  # a folder named "-x" is no option to the commands below
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ ! -f "$out/bench.json" ]; then
  echo "ci_report: no $out/bench.json (the benchmark step did not write one)" >&2
  exit 1
fi
. scripts/out_folder.sh  # what it writes replaces only a run's own report, never a file of the user's
claim_outputs ci_report "$out" results "" report.html results.md plots || exit 1
seal_on_exit "$out" results report.html results.md plots
gate=()
if [ -f "$out/gate.json" ]; then gate=(--gate-json "$out/gate.json"); fi
"$PY" -m attnsuite report "$out/bench.json" --markdown "$out/results.md" --plots "$out/plots" \
  --html "$out/report.html" "${gate[@]}" --step-summary-top
exit $?
