#!/usr/bin/env bash
# Plots (TFLOP/s and peak memory against sequence length) and the run's markdown table, from the
# result JSON that scripts/ci_bench.sh wrote. Never fails the job for a missing plotting library.
# Usage: bash scripts/ci_report.sh [RESULTS_DIR]   (default ${OUT:-results})
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-results}}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ ! -f "$out/bench.json" ]; then
  echo "ci_report: no $out/bench.json (the benchmark step did not write one)" >&2
  exit 1
fi
"$PY" -m attnsuite.cli report "$out/bench.json" --markdown "$out/results.md" --plots "$out/plots"
