#!/usr/bin/env bash
# The test command: machinery tests and the correctness suite on this machine's CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed" >&2; exit 2; }
.venv/bin/python -m pytest tests test_correctness -p no:cacheprovider -q -n 2 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
