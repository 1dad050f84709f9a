"""The standby worker of :class:`attnsuite.isolation.WorkerPool` (``spare=True``).

The pools here run a stub in place of the worker's interpreter: a small script that speaks the
same protocol (attnsuite.isolation's framing) without importing torch, so a start takes a fraction
of a second. Each stub process numbers itself in launch order (a file per start in the test's
folder), which lets a test make exactly the standby's start fail, and answers with its pid, which
shows which process served a request.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
from pathlib import Path

import pytest

from attnsuite.isolation import Failure, WorkerPool, WorkerStartError

ROOT = Path(__file__).resolve().parents[1]

STUB = '''#!{python}
"""A stand-in worker: invoked as `STUB -c BOOT REQUEST_FD REPLY_FD SUITE_PID`."""
import os, signal, sys, time
from attnsuite.isolation import recv_fd, send

folder = os.environ["STUB_DIR"]
n = 1
while True:  # this process's place in launch order: the first free number
    try:
        os.close(os.open(os.path.join(folder, f"start-{{n}}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        break
    except FileExistsError:
        n += 1
fail = {{int(x) for x in os.environ.get("STUB_FAIL_STARTS", "").split(",") if x}}
out = os.fdopen(int(sys.argv[4]), "wb")
while True:
    msg = recv_fd(int(sys.argv[3]))
    if msg is None or msg["op"] == "exit":
        sys.exit(0)
    if msg["op"] == "init":
        send(out, {{"ok": False, "error": f"stub start {{n}} told to fail"}} if n in fail else {{"ok": True}})
        continue
    if msg["op"] == "starts":  # how many workers were launched while this request ran (1 s)
        end = time.monotonic() + 1
        while len(os.listdir(folder)) == 1 and time.monotonic() < end:
            time.sleep(0.02)
        send(out, {{"starts": len(os.listdir(folder)), "pid": os.getpid()}})
        continue
    key = msg["key"]
    if key.startswith("say:"):  # a case that writes a line to stderr (and then does what the rest says)
        line, _, key = key[4:].partition(":")
        print(line, file=sys.stderr, flush=True)
    if key == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if key == "hang":
        time.sleep(600)
    reply = {{"record": {{"outcome": "ok", "extra": {{}}}}, "pid": os.getpid()}}
    if key == "fatal":
        reply["fatal"] = True
    if key == "retry-once":
        try:
            os.close(os.open(os.path.join(folder, "..", "retried"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            reply.update(retry_fresh="stranded", fatal=True)
            reply["record"]["outcome"] = "oom"
        except FileExistsError:
            pass
    send(out, reply)
    if reply.get("fatal"):
        out.close()
        os._exit(86)
'''


@pytest.fixture
def make_pool(tmp_path: Path):
    """``make_pool(spare, fail_starts=(), case_timeout=10)``: a pool of stub workers, closed after the test."""
    script = tmp_path / "stub-python"
    script.write_text(STUB.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    starts = tmp_path / "starts"
    starts.mkdir()
    pools: list[WorkerPool] = []

    def make(spare: bool, fail_starts: tuple[int, ...] = (), case_timeout: float = 10) -> WorkerPool:
        env = {**os.environ, "STUB_DIR": str(starts), "STUB_FAIL_STARTS": ",".join(map(str, fail_starts)),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        pool = WorkerPool({}, case_timeout=case_timeout, start_timeout=60, env=env, python=str(script), spare=spare)
        pools.append(pool)
        return pool

    make.starts = lambda: len(list(starts.iterdir()))  # type: ignore[attr-defined]
    yield make
    for pool in pools:
        pool.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _answering_pid(pool: WorkerPool) -> int:
    reply = pool.run_case("ok")
    assert isinstance(reply, dict), reply
    return reply["pid"]


def test_the_first_request_runs_with_no_standby_starting_and_the_standby_is_launched_after_its_answer(make_pool):
    pool = make_pool(spare=True)
    assert pool.proc is None and pool.spare_proc is None  # nothing starts before it is needed
    reply = pool.request({"op": "starts"})
    assert reply["starts"] == 1  # only the worker answering it was running
    assert pool.spare_proc is not None and pool.spare_proc.pid != reply["pid"]
    assert pool.started == 2 and pool.spares_used == 0


@pytest.mark.parametrize("how", [
    pytest.param("segfault", id="it crashed"),
    pytest.param("hang", id="it was killed past the case limit"),
    pytest.param("fatal", id="it replied fatal"),
    pytest.param("retry-once", id="it asked for a fresh worker"),
])
def test_after_a_case_takes_the_worker_down_the_next_case_is_served_by_the_standby_when(make_pool, how):
    pool = make_pool(spare=True, case_timeout=1 if how == "hang" else 10)
    first = _answering_pid(pool)
    standby = pool.spare_proc.pid
    reply = pool.run_case(how)
    if how == "retry-once":  # run_case ran it again at once: the standby answered the second attempt
        assert reply["pid"] == standby and reply["record"]["extra"]["fresh_worker_retry"] == "stranded"
        served = reply["pid"]
    else:
        if how in ("segfault", "hang"):
            assert isinstance(reply, Failure) and reply.outcome == ("timeout" if how == "hang" else "crash")
        served = _answering_pid(pool)
    assert served == standby  # the standby took over (a timeout killed the worker, never the standby)
    assert _gone(first)
    assert pool.spares_used == 1
    assert pool.spare_proc is not None and pool.spare_proc.pid not in (first, standby)  # the next standby
    assert pool.started == 3


def _wait_for_the_standbys_answer(pool: WorkerPool) -> None:
    """Until the standby's init answer waits in its pipe (unread)."""
    assert select.select([pool._standby.from_worker], [], [], 30)[0]


@pytest.mark.parametrize("how", ["its init was answered not ok", "it died after answering ok"])
def test_a_standby_is_not_promoted_and_a_worker_starts_in_the_foreground_when(make_pool, how):
    # start 1 is the first worker, start 2 its standby
    pool = make_pool(spare=True, fail_starts=(2,) if how.startswith("its init") else ())
    first = _answering_pid(pool)
    standby = pool.spare_proc.pid
    if how.startswith("it died"):
        _wait_for_the_standbys_answer(pool)
        os.kill(standby, signal.SIGKILL)
        # dead before the pool looks: SIGKILL lands asynchronously, and on a loaded machine a standby
        # still being killed when it is promoted took the next case down with it (seen once in CI)
        pool.spare_proc.wait(timeout=30)
    assert isinstance(pool.run_case("segfault"), Failure)
    served = _answering_pid(pool)
    assert served not in (first, standby)
    assert pool.spares_used == 0
    assert pool.started == 4 and pool.spare_proc is not None  # the foreground start, then the next standby
    assert _gone(standby)


def test_when_the_standby_and_the_foreground_start_both_fail_the_pool_raises_worker_start_error(make_pool):
    pool = make_pool(spare=True, fail_starts=(2, 3))
    _answering_pid(pool)
    pool.run_case("segfault")
    with pytest.raises(WorkerStartError, match=r"^the benchmark worker did not start: stub start 3 told to fail$"):
        pool.run_case("ok")
    assert pool.spares_used == 0


def test_a_standby_that_finished_its_start_longer_ago_than_the_start_limit_is_still_promoted(make_pool):
    pool = make_pool(spare=True)
    _answering_pid(pool)
    standby = pool.spare_proc.pid
    _wait_for_the_standbys_answer(pool)
    pool._standby.launched -= 10 * pool.start_timeout  # as if launched long ago; its answer waits in the pipe
    pool.run_case("segfault")
    assert _answering_pid(pool) == standby and pool.spares_used == 1


@pytest.mark.parametrize("spare", [True, False], ids=["with a standby", "without one"])
@pytest.mark.parametrize("after", ["a case", "a crash"])
def test_close_leaves_no_worker_process_alive(make_pool, spare, after):
    pool = make_pool(spare=spare)
    _answering_pid(pool)
    if after == "a crash":
        pool.run_case("segfault")
        _answering_pid(pool)
    procs = [p for p in (pool.proc, pool.spare_proc) if p is not None]
    handles = [h for h in (pool._current, pool._standby) if h is not None]
    assert len(procs) == (2 if spare else 1)
    pool.close()
    assert all(p.poll() is not None and _gone(p.pid) for p in procs)
    assert all(h.log is None for h in handles)  # the suite's descriptors of their logs closed
    assert pool.proc is None and pool.spare_proc is None
    _answering_pid(pool)
    assert pool.spare_proc is None  # a closed pool launches no standby
    pool.close()


def test_without_spare_the_pool_keeps_one_process_and_replaces_it_in_the_foreground(make_pool):
    pool = make_pool(spare=False)
    first = _answering_pid(pool)
    assert pool.spare_proc is None and make_pool.starts() == 1
    pool.run_case("segfault")
    assert make_pool.starts() == 1  # nothing started until the next case asks for a worker
    second = _answering_pid(pool)
    assert second != first and pool.spare_proc is None
    assert pool.started == 2 and make_pool.starts() == 2 and pool.spares_used == 0


@pytest.mark.parametrize("from_standby, words", [
    (0, "worker processes started: 5 (12.3 s starting them) on GPUs 0, 1"),
    (1, "worker processes started: 5 (12.3 s starting them) (1 replacement served by a standby worker) on GPUs 0, 1"),
    (3, "worker processes started: 5 (12.3 s starting them) (3 replacements served by a standby worker) on GPUs 0, 1"),
])
def test_the_summary_names_replacements_served_by_a_standby_only_when_there_were_some(from_standby, words):
    from attnsuite.plugin_bench import workers_line

    assert workers_line(5, 12.34, from_standby, ["0", "1"]) == words


def test_each_record_says_how_long_before_its_request_the_latest_standby_was_launched(make_pool):
    pool = make_pool(spare=True)
    first = pool.run_case("ok")
    assert "standby_launched_s_before" not in first["record"]["extra"], "no standby had been launched yet"
    second = pool.run_case("ok")  # the standby was launched right after the first answer
    since = second["record"]["extra"]["standby_launched_s_before"]
    assert 0 <= since < 5
    assert make_pool(spare=False).run_case("ok")["record"]["extra"] == {}, "no standby, no field"


@pytest.mark.parametrize("last_case, outcome, own_words", [
    ("segfault", "crash", None),
    ("say:dying words:segfault", "crash", "dying words"),
    ("say:still thinking:hang", "timeout", "still thinking"),
])
def test_a_failed_cases_stderr_tail_holds_only_what_it_wrote(make_pool, last_case, outcome, own_words):
    pool = make_pool(spare=False, case_timeout=3)
    assert isinstance(pool.run_case("say:profiler chatter from the case before:ok"), dict)
    reply = pool.run_case(last_case)
    assert isinstance(reply, Failure) and reply.outcome == outcome, reply
    assert "profiler chatter" not in reply.stderr_tail
    assert reply.stderr_tail == (own_words or "")


def test_what_a_case_printed_is_counted_in_its_record_and_the_log_emptied_after_it(make_pool):
    # a variant printing megabytes per call had grown the worker's log (a temporary file, often in memory)
    # for as long as the worker lived, with no word in its record
    pool = make_pool(spare=False)
    line = "x" * 5000
    reply = pool.run_case(f"say:{line}:ok")
    assert reply["record"]["extra"]["printed_bytes"] == len(line) + 1
    assert os.fstat(pool._current._log_fd()).st_size == 0
    assert "printed_bytes" not in pool.run_case("ok")["record"]["extra"]  # nothing printed, nothing said
    failure = pool.run_case("say:last words:segfault")  # written from the start of the emptied log
    assert isinstance(failure, Failure) and failure.stderr_tail == "last words", failure


def test_a_log_tail_leaves_out_the_hole_a_write_racing_its_emptying_can_leave(tmp_path):
    # the log's offset is reset before it is cut: a line written between the two lands past a hole of NULs
    from attnsuite.isolation import tail_of

    log = tmp_path / "worker.log"
    log.write_bytes(b"\0" * 64 + b"Fatal Python error: Segmentation fault\n")
    fd = os.open(log, os.O_RDONLY)
    try:
        assert tail_of(fd) == "Fatal Python error: Segmentation fault"
    finally:
        os.close(fd)


def test_a_path_object_on_sys_path_does_not_stop_the_workers(monkeypatch, tmp_path):
    # Python's import ignores a non-text sys.path entry (a Path a conftest appended); joining it had raised
    # in the worker's launch, and no case ran
    from attnsuite import isolation

    monkeypatch.setattr(sys, "path", [*sys.path, tmp_path])
    env = isolation.worker_env(None)
    assert str(tmp_path) not in env[isolation.WORKER_PATH_ENV].split("\n")
    assert env[isolation.WORKER_PATH_ENV].split("\n")[: len(sys.path) - 1] == \
        [e or os.getcwd() for e in sys.path[:-1]]
