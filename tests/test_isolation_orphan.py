"""A worker that dies while a process it started lives on (attnsuite/plugin_isolation.py, DeadWorkerWatch).

xdist learns that a worker died from the end of its pipe. A process the worker forked (a compile
server, a helper a variant started) inherits that pipe and keeps it open: a variant that had started
one, followed by a variant that SIGKILLs its own process, stalled the run until the helper exited
(one that never exits: for ever), and the crash was then worded as having run past
--attn-test-timeout. The controller now watches the worker processes themselves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from attnsuite import plugin_isolation
from variant_sources import CORRECT_RUN

ROOT = Path(__file__).resolve().parents[1]

HELPER_S = 300  # the helper's life: a run that waits for it ends past RUN_LIMIT_S
RUN_LIMIT_S = 200  # generous for a run of six small tests (about 35 s on a loaded 2-core machine)

FORKY = CORRECT_RUN + '''
import os, signal, time
from attnsuite.registry import KernelVariant, register

STARTED = []


def start_helper_once():
    """Fork a helper that outlives the test (as a compile server would): it holds a copy of every
    file descriptor of the xdist worker, its pipe to the controller among them."""
    if STARTED:
        return
    STARTED.append(1)
    if os.fork() == 0:
        with open(os.environ["ORPHAN_PID_FILE"], "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ["ORPHAN_HELPER_S"]))
        os._exit(0)


class Base(KernelVariant):
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "lq_ne_lk"})
    devices = frozenset({"cpu"})
    dtypes = frozenset({"float32"})


@register
class Daemon(Base):
    name = "orphan-daemon"
    description = "starts a helper process that outlives it, then computes plain attention"

    def build(self, problem):
        start_helper_once()
        return correct_run(problem)


@register
class Kill(Base):
    name = "orphan-kill"
    description = "kills its own process with SIGKILL"

    def build(self, problem):
        start_helper_once()  # as well: whichever variant's test runs first, the worker has a helper when it dies

        def run(q, k, v):
            os.kill(os.getpid(), signal.SIGKILL)
        return run
'''


def _env(pid_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNSUITE_VARIANTS", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["ORPHAN_PID_FILE"] = str(pid_file)
    env["ORPHAN_HELPER_S"] = str(HELPER_S)
    return env


def _kill_helpers(pid_file: Path) -> None:
    for pid in (pid_file.read_text().split() if pid_file.exists() else []):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_a_worker_killed_while_its_helper_lives_on_is_a_crash_and_the_run_goes_on(tmp_path):
    pytest.importorskip("xdist")
    variants = tmp_path / "forky.py"
    variants.write_text(FORKY)
    pid_file = tmp_path / "helpers"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_variants.py"), f"--rootdir={ROOT}",
           "-p", "no:cacheprovider", "-p", "no:randomly", "-n", "1", "-rsfE", "--tb=short", "--attn-test-timeout", "15",
           f"--attn-variants={variants}", "--attn-only=orphan-daemon", "--attn-only=orphan-kill",
           "--attn-only=explicit", "-k", "(forward or backward) and b2-q3-h2-d32-causal-tl-fp32"]
    log = tmp_path / "run.log"
    try:
        # the output goes to a file, not a pipe: the helper inherits the run's stdout and stderr too, and
        # reading a pipe to its end would wait for the helper whatever the suite did
        with open(log, "w") as out:
            try:
                done = subprocess.run(cmd, cwd=tmp_path, env=_env(pid_file), stdout=out, stderr=subprocess.STDOUT,
                                      timeout=RUN_LIMIT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the run was still going after {RUN_LIMIT_S} s: it waited for the helper "
                            f"({HELPER_S} s) that holds the dead worker's pipe\n" + log.read_text()[-3000:])
        text = log.read_text()
        assert pid_file.exists(), text[-3000:]  # the helper was started: the case this test is about
        assert done.returncode == pytest.ExitCode.TESTS_FAILED, text[-3000:]
        assert re.search(r"variant orphan-kill took the test process down \(a crash, an abort or an exit\) in "
                         r"\S+test_forward_matches_oracle\[orphan-kill@[^\]]+\]: the process died \(killed by "
                         r"SIGKILL\); xdist worker gw\d+ was replaced and the run went on", text), text[-3000:]
        assert "ran past the" not in text, text[-3000:]
        assert re.search(r"SKIPPED \[1\] .*variant orphan-kill took the test process down", text), text[-3000:]
        failed = re.findall(r"^FAILED \S+\[([\w-]+)@", text, re.M)
        assert failed == ["orphan-kill"], text[-3000:]
        assert re.search(r"\b4 passed\b", text), text[-3000:]  # explicit's and orphan-daemon's, forward and backward
    finally:
        _kill_helpers(pid_file)


# The wording of a death, from pytest_handlecrashitem alone: a worker process that ended (a real child,
# already reaped), the note its worker wrote when the test started, and when the watch saw it dead.

def _ended_process(how: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", f"import sys, time; time.sleep({0 if how != 'kill' else 60}); "
                             f"sys.exit({1 if how == 'watchdog' else 0})"])
    if how == "kill":
        proc.kill()
    proc.wait(timeout=60)
    return proc


def _worded(tmp_path: Path, proc: subprocess.Popen, started_ago: float, died_after: float | None) -> str:
    controller = plugin_isolation.CrashController()
    controller.folder = tmp_path
    nodeid = "test_correctness/test_variants.py::test_forward_matches_oracle[v@p]"
    started = time.time() - started_ago
    (tmp_path / "running-gw7.json").write_text(json.dumps(
        {"nodeid": nodeid, "variant": "v", "started": started, "timeout": 15}))
    if died_after is not None:
        controller.watch.died_at["gw7"] = started + died_after
    node = types.SimpleNamespace(gateway=types.SimpleNamespace(id="gw7", _io=types.SimpleNamespace(popen=proc)))
    report = types.SimpleNamespace(node=node, longrepr="xdist's own words")
    controller.pytest_handlecrashitem(crashitem=nodeid, report=report, sched=None)
    return str(report.longrepr)


def test_a_process_killed_by_a_signal_did_not_run_past_the_limit_however_late_xdist_heard_of_it(tmp_path):
    # xdist heard of it 100 s after the test began (a helper held the pipe); SIGKILL is no time limit
    message = _worded(tmp_path, _ended_process("kill"), started_ago=100, died_after=None)
    assert message.startswith("variant v took the test process down (a crash, an abort or an exit) in "), message
    assert "the process died (killed by SIGKILL)" in message and "ran past" not in message, message


def test_a_process_dead_before_the_limit_did_not_run_past_it(tmp_path):
    # it ended with a status, 2 s into the test; xdist heard of it 100 s in
    message = _worded(tmp_path, _ended_process("exit"), started_ago=100, died_after=2)
    assert "took the test process down (a crash, an abort or an exit)" in message, message
    assert "the process died (exit status 0)" in message and "ran past" not in message, message


def test_a_worker_ended_by_the_limits_watchdog_still_ran_past_it(tmp_path):
    # faulthandler's watchdog exits with status 1 at the limit: that is still a test that ran past it
    message = _worded(tmp_path, _ended_process("watchdog"), started_ago=16, died_after=15.1)
    assert "variant v ran past the 15 s limit (--attn-test-timeout)" in message, message


# The watch alone, on fake xdist nodes around real processes: a node is ended once, whoever comes first.

def _watched_node(proc: subprocess.Popen, events: list) -> types.SimpleNamespace:
    return types.SimpleNamespace(gateway=types.SimpleNamespace(id="gw3", _io=types.SimpleNamespace(popen=proc)),
                                 putevent=events.append, _down=False)


def _fast_watch() -> plugin_isolation.DeadWorkerWatch:
    watch = plugin_isolation.DeadWorkerWatch()
    watch.POLL_S, watch.GRACE_S = 0.05, 0.2
    return watch


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_watch_ends_a_dead_workers_node_once_and_drops_the_late_end_of_its_pipe():
    watch, events = _fast_watch(), []
    node = _watched_node(_ended_process("kill"), events)
    try:
        watch.add(node)
        _wait_for(lambda: events)
        assert [name for name, _ in events] == ["errordown"] and events[0][1]["node"] is node, events
        assert "died (killed by SIGKILL) but its pipe stayed open" in events[0][1]["error"]
        assert node._down and "gw3" in watch.died_at
        node.putevent(("errordown", {"node": node, "error": "Not properly terminated"}))  # the helper exited
        time.sleep(0.5)
        assert len(events) == 1, events
    finally:
        watch.stop.set()


def test_the_watch_leaves_a_node_that_xdist_ended_first_and_a_live_worker_alone():
    watch, dead_events, live_events = _fast_watch(), [], []
    watch.GRACE_S = 1.0  # xdist's event below comes well within it
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _watched_node(_ended_process("exit"), dead_events)
        watch.add(dead)
        watch.add(_watched_node(live, live_events))
        dead.putevent(("errordown", {"node": dead, "error": "Not properly terminated"}))  # xdist's reader, first
        time.sleep(2.0)
        assert [name for name, _ in dead_events] == ["errordown"] and live_events == [], (dead_events, live_events)
    finally:
        watch.stop.set()
        live.kill()
        live.wait()
