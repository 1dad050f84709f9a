"""Run from a kernel author's own folder, the correctness suite leaves no .hypothesis/ there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_drawn_problems_leave_no_hypothesis_folder_where_the_run_was_started(tmp_path):
    # Hypothesis writes its example database and constants cache under the current folder by default
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_hypothesis.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-q", "-k", "explicit"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (tmp_path / ".hypothesis").exists(), sorted(p.name for p in tmp_path.iterdir())
