#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch 2.13.0 and the suite's dependencies.
# Pinning torch first matters: an unpinned torch would pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.attnsuite-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,plots]" "pytest-xdist>=3"
  echo "$want" > "$stamp"
fi
