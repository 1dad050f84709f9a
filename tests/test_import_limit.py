"""A variants module that hangs while imported stops the run within --attn-import-timeout, naming
the module and where it hung; a module that imports in time is untouched.

It had hung the run for ever (no limit covers an import), a CI job held until its own limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnsuite import import_limit

ROOT = Path(__file__).resolve().parents[1]

HANGS = {
    "sleeps": "import time\ntime.sleep(600)\n",
    "spins in Python": "while True:\n    pass\n",
    # a C call that holds the GIL: no Python thread runs, faulthandler's own watchdog ends it
    "holds the GIL in C": "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n",
}


@pytest.mark.parametrize("how", list(HANGS))
def test_a_variants_module_that_hangs_while_imported_stops_the_run_naming_it(tmp_path, how):
    module = tmp_path / "hangs_at_import.py"
    module.write_text(HANGS[how])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench"), "--rootdir", str(ROOT),
                           "--benchmark-only", "-p", "no:cacheprovider", "--attn-gate=off",
                           f"--attn-variants={module}", "--attn-import-timeout=2"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    took = time.monotonic() - start
    assert took < 60, f"took {took:.0f} s"
    assert str(module) in done.stderr and "hangs_at_import.py" in done.stderr, done.stderr[-2000:]
    if how == "holds the GIL in C":
        assert done.returncode == 1 and "Timeout" in done.stderr  # faulthandler's words and stacks
    else:
        assert done.returncode == import_limit.EXIT_STATUS
        assert f"attnsuite: --attn-variants '{module}' was still importing after 2 s (--attn-import-timeout)" \
            in done.stderr
        assert f"attnsuite: stopped: --attn-variants '{module}' hung while imported" in done.stderr


def test_an_import_within_the_limit_leaves_no_watcher_behind():
    with import_limit.limited("a quick module", 5.0):
        pass
    time.sleep(0.1)
    import threading
    assert not [t for t in threading.enumerate() if t.name == "attnsuite-import-limit"]


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("inf", float("inf")), ("2.5", 2.5)])
def test_the_limit_reads_seconds_and_zero_for_none(value, seconds):
    assert import_limit.parse(value) == seconds


@pytest.mark.parametrize("value", ["-1", "nan", "ten"])
def test_a_limit_that_is_not_a_number_of_seconds_is_refused_naming_the_option(value):
    with pytest.raises(ValueError, match=f"--attn-import-timeout '{value}': expected a number of seconds"):
        import_limit.parse(value)


def test_the_limit_works_where_sys_stderr_has_no_descriptor(monkeypatch):
    # an in-process pytest run (pytester) captures sys.stderr in a stream without fileno(): the limit
    # had made every variant load there fail with "UnsupportedOperation: fileno"
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with import_limit.limited("a module", 5.0):
        pass


def test_a_limit_that_fails_to_start_leaves_no_watcher_to_end_the_process_later(monkeypatch):
    # faulthandler failing after the watcher thread started had left the thread running: 600 s later
    # it ended the process (an xdist worker, in the suite's own tests)
    import faulthandler
    import threading

    def refuse(*args, **kwargs):
        raise ValueError("no descriptor")

    monkeypatch.setattr(faulthandler, "dump_traceback_later", refuse)
    with pytest.raises(ValueError, match="no descriptor"):
        with import_limit.limited("a module", 0.5):
            pass
    time.sleep(1.0)  # past the limit: a watcher left running would have ended this process by now
    assert not [t for t in threading.enumerate() if t.name == "attnsuite-import-limit"]
