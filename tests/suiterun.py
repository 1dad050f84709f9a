"""Running the suite's own test files in a fresh pytest process, for tests that check what a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the pytest processes and in-process runs these tests make are given in PYTEST_ADDOPTS
# (tests/conftest.py). Hypothesis's pytest plugin imports all of hypothesis in every session's terminal
# summary: a one-test session took 1.46 s with it, 0.35 s without (2-core CPU machine, 2026-12-02); an
# in-process judged run 3.6 s against 2.1 s, a --collect-only one 1.3 s against 0.15 s (2026-12-04).
# None of them asserts on its output, and @given tests run without it (test_correctness/conftest.py
# loads the profile itself).
INNER_ADDOPTS = "-p no:hypothesispytest"


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


def once_per_session(tmp_path_factory, config, name: str, make):
    """``make()`` (a JSON-able value) once per test session, under pytest-xdist too: a module-scoped
    fixture runs once in each worker that runs a test using it, and worksteal may hand those tests to
    both workers. The first worker to ask makes the value and keeps it in the session's temporary
    folder (shared by its workers); the others wait for it and read it. A ``make()`` that raises
    keeps nothing: the next worker to ask tries again, and fails the same way."""
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    if hasattr(config, "workerinput"):  # an xdist worker: its basetemp is <session's folder>/popen-gwN
        root = root.parent
    kept = root / f"once-{name}.json"
    with open(root / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if kept.exists():
            return json.loads(kept.read_text())
        value = make()
        kept.write_text(json.dumps(value))
        return value
