#!/usr/bin/env bash
# The test tools a lent GPU machine lacks (it installs nothing from a registry), as wheels in the
# git-ignored .carry/test-tools, for the device tool's carry list: pytest-xdist and execnet, pure Python.
# scripts/gpu_correctness.sh installs them there when xdist does not import.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p .carry/test-tools
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .carry/test-tools \
  "pytest-xdist==3.8.0" "execnet==2.1.2"
ls -l .carry/test-tools
