#!/usr/bin/env bash
# The test command: machinery tests and the correctness suite on this machine's CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed" >&2; exit 2; }
# The HTML report is opened in a headless Chromium by a test: find one, else try to install one.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
  echo "test.sh: no Chromium on PATH: trying playwright's download, then the system's package manager" >&2
  timeout 300 .venv/bin/python -m playwright install chromium >/dev/null 2>&1 \
    || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && timeout 300 apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "test.sh: no headless Chromium could be installed: the HTML report's browser test skips, saying so" >&2
fi
.venv/bin/python -m pytest tests test_correctness -p no:cacheprovider -q -n 2 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$status"
