#!/usr/bin/env bash
# The main job: the benchmarks (quick tier on CPU, full tier on a CUDA machine), compared with the
# shipped baseline for this machine's fingerprint when baselines/ has one.
# Env: GATE=report|enforce|off (default report on CPU, where shared-runner noise is large;
# enforce on CUDA), OUT=results. Extra arguments go to pytest (e.g. --attn-workload fa-sweep).
set -uo pipefail
# Run from anywhere: OUT and path options are read from where it was typed (scripts/ci_bench.sh).
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  tier=full; gate=${GATE:-enforce}; export PYTHON=${PYTHON:-python3}
else
  bash "$ROOT/scripts/setup.sh" || { echo "bench.sh: scripts/setup.sh failed (its messages are above): nothing was run" >&2; exit 4; }
  tier=quick; gate=${GATE:-report}; export PYTHON=$ROOT/.venv/bin/python
fi
exec bash "$ROOT/scripts/ci_bench.sh" "$tier" "$gate" "$@"
