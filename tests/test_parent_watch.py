"""attnsuite.parent_watch: a child ends once the process that started it is gone.

A rank started from a fork server is the server's child; the process that owns its pool is
``owner_pid``. Either one's end must end the rank, or a rank stuck in a kernel outlives the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys, time
from attnsuite.parent_watch import exit_with_parent
owner = int(sys.argv[1]) if sys.argv[1] != "none" else None
exit_with_parent(os.getppid(), poll_s=0.05, owner_pid=owner)
print("watching", flush=True)
time.sleep(60)
sys.exit(0)
"""


def _start_child(owner: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, owner], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "watching"
    return child


def _wait(proc: subprocess.Popen, seconds: float):
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("owner_ends", [True, False], ids=["owner gone: the child exits", "owner alive: the child lives on"])
def test_a_child_started_through_an_intermediary_ends_with_the_owner(owner_ends):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = _start_child(str(owner.pid))
    try:
        if owner_ends:
            owner.kill()  # not reaped yet: a dead owner's zombie must not count as alive
            assert _wait(child, 30) == -9, "the child outlived its owner"  # killed by its sentinel
            owner.wait()
        else:
            # its parent (this test) and its owner both alive: 20 polls later it still runs
            assert _wait(child, 1.0) is None, f"the child exited ({child.returncode}) while its owner lived"
    finally:
        for p in (owner, child):
            if p.poll() is None:
                p.kill()
                p.wait()


GIL_HOLDER = """
import ctypes, os, subprocess, sys
from attnsuite.parent_watch import exit_with_parent
exit_with_parent(os.getppid(), poll_s=0.05)
print("watching", flush=True)
ctypes.PyDLL(None).sleep(120)  # hung in C code that keeps the GIL: no thread of this process runs
"""


def test_a_child_hung_holding_the_gil_still_ends_with_its_parent(tmp_path):
    # a watching thread never ran in such a child: a SIGKILLed suite had left its worker hanging
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    script = tmp_path / "parent.py"
    script.write_text("import subprocess, sys\n"
                      f"child = subprocess.Popen([sys.executable, '-c', {GIL_HOLDER!r}], stdout=subprocess.PIPE, text=True)\n"
                      "assert child.stdout.readline().strip() == 'watching'\n"
                      "print(child.pid, flush=True)\n"
                      "import time; time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the child hung holding the GIL outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, 9)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def test_without_an_owner_only_the_parent_is_watched():
    child = _start_child("none")
    try:
        assert _wait(child, 1.0) is None, f"the child exited ({child.returncode}) while its parent lived"
    finally:
        child.kill()
        child.wait()


def test_a_crash_ledger_is_swept_only_once_its_controller_is_gone(tmp_path):
    # a SIGKILLed correctness run could not remove its /tmp/attnsuite-crashes-* folder (one per run stayed)
    from attnsuite.plugin_isolation import LEDGER_PREFIX, sweep_stale_ledgers

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{LEDGER_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{LEDGER_PREFIX}{os.getpid()}-def"
    unnamed = tmp_path / f"{LEDGER_PREFIX}xyz"  # an older run's folder: no pid to tell by, left alone
    for folder in (stale, live, unnamed):
        folder.mkdir()
        (folder / "faults-gw0.log").write_text("x")
    assert sweep_stale_ledgers(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and unnamed.exists()
