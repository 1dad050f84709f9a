"""Running the suite's own test files in a fresh pytest process, for tests that check what a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_suite_tests(tests: list[str], cwd: Path, *args: str, timeout: float = 300) -> str:
    """Run ``tests`` (paths relative to the repository) from ``cwd`` with the repository importable and
    no outer xdist or ATTNSUITE_VARIANTS settings; returns stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNSUITE_VARIANTS", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *[str(ROOT / t) for t in tests], f"--rootdir={ROOT}",
         "-p", "no:cacheprovider", "-p", "no:xdist", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr
