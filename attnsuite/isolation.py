"""Isolation of benchmark cases: each runs in a worker process that its failure cannot reach past.

The code under test is hostile: a kernel may segfault, abort, call ``os._exit``, poison the CUDA
context with an illegal memory access, or hang. So the pytest process never runs a case itself: a
:class:`WorkerPool` keeps one worker process (:mod:`attnsuite.worker`, importing what the suite
imported) that runs cases one at a time and answers with the record. When the worker dies, the case
it was running gets outcome ``crash`` (signal or exit code, and the last lines of its stderr); when
it runs past the per-case limit, its whole process group is killed and the case gets ``timeout``.
Either way the worker is replaced and the run goes on with the next case. With ``spare=True`` (CUDA
runs) the pool also keeps a standby worker started in the background, so a replacement costs little
more than handing over to it (docs/isolation.md, "The standby worker").

The protocol is length-prefixed pickles over two pipes that only the two processes hold; the
worker's stdout and stderr go to a log file, so a variant that prints cannot corrupt it.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

_HEADER = struct.Struct("!Q")
STDERR_TAIL_LINES = 12
STDERR_TAIL_BYTES = 4096
# a crash or a hang leaves a Python stack dump in the worker's log (faulthandler: on a fatal signal,
# and on STACK_SIGNAL, which a timeout sends before the kill): read that much of it
STACK_TAIL_LINES = 80
STACK_TAIL_BYTES = 16384
STACK_SIGNAL = getattr(signal, "SIGUSR1", None)
STACK_MARK = "(most recent call first):"
EXIT_POISONED = 86  # the worker's exit status after a case left the CUDA context unusable
WORKER_LOG_PREFIX = "attnsuite-worker-"  # a worker log's name, where the OS cannot make it without one
# A worker imports what the suite imported. Started as `python -m attnsuite.worker` it had put the
# folder the run was started from first on sys.path, so a project folder holding its own attnsuite/
# (a working copy, another version) ran the cases with that code while the suite reported them as
# its own (fresh-user trial: 4x apart). The worker is started with `-c`, which puts only "" first:
# the boot line drops it before anything imports, takes the suite's sys.path from the environment
# (one entry a line: a path holds no newline in practice, and PYTHONPATH's ":" can be inside one),
# and only then imports the worker. `os` and `sys` are loaded before any path is searched.
WORKER_PATH_ENV = "ATTNSUITE_WORKER_SYS_PATH"
_WORKER_BOOT = ("import os, sys; p = os.environ.pop(%r, None); "
                "sys.path[:] = [e for e in sys.path if e] if p is None else p.split('\\n'); "
                "import runpy; runpy.run_module('attnsuite.worker', run_name='__main__')"
                "  # attnsuite.worker" % WORKER_PATH_ENV)  # what ps and pgrep -f show before the worker's arguments


def worker_env(env: Optional[dict[str, str]]) -> dict[str, str]:
    """``env`` (or this process's environment) with this process's import path for the worker."""
    # "" means the folder the suite was started from; a non-text entry (a Path a conftest appended) is
    # one Python's import ignores, and it had stopped every worker from starting
    path = [entry or os.getcwd() for entry in sys.path if isinstance(entry, str)]
    return {**(os.environ if env is None else env), WORKER_PATH_ENV: "\n".join(path)}


def package_dir() -> str:
    """The folder this process imported attnsuite from (a worker must have imported the same)."""
    return os.path.dirname(os.path.realpath(__file__))


# The skip reasons of tests not run because their variant crashed, hung or broke the process before them
# (plugin_isolation): the end-of-run notes tell such a variant apart from one whose problems never
# reached a dtype
NOT_RUN_PREFIX = "not run: "
OTHERS_NOT_RUN = "its other tests are not run"


# --------------------------------------------------------------------------- framing


def send(fh, obj: Any) -> None:
    """Write one message (a pickle with its length in front) and flush."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)) + data)
    fh.flush()


def _read_exact(fd: int, n: int, deadline: Optional[float]) -> Optional[bytes]:
    """``n`` bytes from ``fd``; None at end of file; TimeoutError past ``deadline`` (monotonic)."""
    chunks = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_fd(fd: int, deadline: Optional[float] = None) -> Any:
    """Read one message from a file descriptor; None when the other side closed it."""
    head = _read_exact(fd, _HEADER.size, deadline)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    body = _read_exact(fd, size, deadline)
    return None if body is None else pickle.loads(body)


# --------------------------------------------------------------------------- parent side


@dataclass
class Failure:
    """A case that ended its worker: ``outcome`` is "crash" or "timeout"."""

    outcome: str
    detail: str
    stderr_tail: str


def describe_exit(returncode: Optional[int]) -> str:
    """An exit status in words: ``killed by SIGSEGV (signal 11)`` or ``exit code 1``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-returncode})"
    if returncode == EXIT_POISONED:
        return "the CUDA context was unusable after the case (worker replaced)"
    return f"exit code {returncode}"


def tail_of(source: Union[str, int], lines: int = STDERR_TAIL_LINES, max_bytes: int = STDERR_TAIL_BYTES,
            start: int = 0) -> str:
    """The last lines of a log written at or after byte ``start`` (bounded read). ``source``: a path,
    or an open file descriptor (read in place: its offset, shared with the writer, is not moved)."""
    try:
        if isinstance(source, int):
            size = os.fstat(source).st_size
            begin = max(start, size - max_bytes)
            data = os.pread(source, max(0, size - begin), begin)
        else:
            with open(source, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(start, size - max_bytes))
                data = fh.read()
    except OSError:
        return ""
    # NUL bytes: the hole a write racing the log's emptying (_WorkerProcess._empty_log) can leave
    return "\n".join(data.replace(b"\0", b"").decode("utf-8", errors="replace").rstrip().splitlines()[-lines:])


def stack_in(tail: str, library_roots: tuple[str, ...] = ()) -> tuple[str, str]:
    """(the stack dump faulthandler wrote into a worker's log tail, where the thread it was written for
    was); ("", "") when the tail holds none. That thread is the one that crashed or took the signal
    ("Current thread"); a timer's dump has none, and there it is the main thread, which runs the
    variant's call (listed last: faulthandler goes newest first; a helper thread such as xdist's
    execnet reader lies outside the library roots too, so "not library code" cannot tell). Where:
    its innermost frame, and when that lies under ``library_roots`` (the suite, torch, the standard
    library) the innermost frame of the variant's own code first."""
    lines = tail.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("Fatal Python error") or STACK_MARK in line), None)
    if start is None:
        return "", ""
    dump = lines[start:]
    threads: list[tuple[str, list[str]]] = []  # (header, frames innermost first)
    for line in dump:
        if STACK_MARK in line:
            threads.append((line, []))
        elif threads and line.strip().startswith("File "):
            threads[-1][1].append(line.strip())

    def path_of(frame: str) -> str:
        return os.path.abspath(frame.split('"')[1]) if frame.count('"') >= 2 else ""

    def own_frame(frames: list[str]) -> Optional[str]:
        return next((f for f in frames if not path_of(f).startswith(library_roots)), None) if library_roots else None
    current = next((t for t in threads if t[0].startswith("Current thread")), threads[-1] if threads else None)
    frames = current[1] if current else []
    if not frames:
        return "\n".join(dump), ""
    own = own_frame(frames)
    where = frames[0] if own in (None, frames[0]) else f"{own} (innermost: {frames[0]})"
    return "\n".join(dump), where


def _log_size(fd: Optional[int]) -> int:
    try:
        return os.fstat(fd).st_size if fd is not None else 0
    except OSError:
        return 0


class _WorkerProcess:
    """One worker process and what the pool keeps for it: the process (in its own process group),
    the two pipe ends, its log file and when it was launched.

    Launching sends the ``init`` message at once and does not wait: :meth:`ready` reads the answer
    when it is needed, so a standby worker starts in the background while the current one works.
    """

    def __init__(self, python: str, env: Optional[dict[str, str]], init: dict[str, Any]) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        # The log has no name (O_TMPFILE, or removed the moment it is made): whatever kills the suite
        # or the worker, and whenever, there is no file left behind; the suite reads it through its fd
        self.log: Optional[Any] = tempfile.TemporaryFile(prefix=WORKER_LOG_PREFIX, suffix=".log")
        self.launched = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                # the suite's pid: a worker still importing when the suite died must not take init for it
                [python, "-c", _WORKER_BOOT, str(req_r), str(resp_w), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, pass_fds=(req_r, resp_w),
                start_new_session=True,  # its own process group: a timeout kills its helpers too
                env=worker_env(env), close_fds=True)
        except BaseException:
            os.close(req_w)
            os.close(resp_r)
            self.log.close()
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.to_worker: Optional[Any] = os.fdopen(req_w, "wb")
        self.from_worker: Optional[int] = resp_r
        self._unsent = not self._post(init)
        self._init_reply: Any = _PENDING

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _log_fd(self) -> Optional[int]:
        return None if self.log is None else self.log.fileno()

    def _log_tail(self, start: int) -> str:
        """The end of what the worker wrote at or after byte ``start`` of its log ("" once it is closed)."""
        fd = self._log_fd()
        return "" if fd is None else tail_of(fd, STACK_TAIL_LINES, STACK_TAIL_BYTES, start)

    def alive(self) -> bool:
        """Whether the process is still running (its pipes may still be open after it died)."""
        return self.proc.poll() is None and self.from_worker is not None

    def _post(self, message: dict[str, Any]) -> bool:
        """Send without waiting for the answer; False when the worker cannot be written to."""
        if self.to_worker is None:
            return False
        try:
            send(self.to_worker, message)
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def ready(self, limit: float) -> Any:
        """The answer to ``init`` (read once, then kept), or a :class:`Failure`; ``limit`` counts from the launch."""
        if self._init_reply is _PENDING:
            # a standby that finished its start long ago has its answer waiting in the pipe: reading it
            # must not count as running past the limit
            deadline = max(self.launched + limit, time.monotonic() + _READY_GRACE_S)
            self._init_reply = self._receive(limit, deadline, sent=not self._unsent)
        return self._init_reply

    def exchange(self, message: dict[str, Any], timeout: Optional[float]) -> Any:
        """Send a message and wait for the answer; a :class:`Failure` when the worker died or hung.

        A failure's stderr tail holds only what the worker wrote after this message was sent: an
        earlier case's output (a profiler's log line, say) must not read as this case's last words."""
        log_start = _log_size(self._log_fd())
        sent = self._post(message)
        deadline = None if timeout is None else time.monotonic() + timeout
        reply = self._receive(timeout, deadline, sent=sent, log_start=log_start)
        if isinstance(reply, dict):
            printed = _log_size(self._log_fd()) - log_start
            if printed > 0 and isinstance(reply.get("record"), dict):
                reply["record"].setdefault("extra", {})["printed_bytes"] = printed
            self._empty_log()
        return reply

    def _empty_log(self) -> None:
        """Empty the log once a request is answered: only what the worker writes after the next one is
        sent can be a failure's last words, and a variant that prints megabytes per call had grown it
        (a file in the temporary folder, often memory) for as long as the worker lived. The worker's
        stdout and stderr share this open file, and so its offset: it writes at the start again. The
        offset goes back first: a line a thread of the worker writes in between then lands before the
        cut, or after it at the offset the file's size then tells, never past a size that the next
        request's tail would start from."""
        fd = self._log_fd()
        if fd is None:
            return
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
        except OSError:
            pass

    def _receive(self, limit: Optional[float], deadline: Optional[float], *, sent: bool, log_start: int = 0) -> Any:
        reply = None
        if sent and self.from_worker is not None:
            try:
                reply = recv_fd(self.from_worker, deadline)
            except TimeoutError:
                self._dump_stacks(log_start)
                tail = self._log_tail(log_start)
                self.kill()
                return Failure("timeout", f"no answer within the {limit:g} s limit: worker killed", tail)
            except (OSError, EOFError, pickle.UnpicklingError):
                reply = None
        if reply is None:  # the worker is gone
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = None
            tail = self._log_tail(log_start)
            self.kill()
            return Failure("crash", f"worker process died: {describe_exit(rc)}", tail)
        return reply

    def _dump_stacks(self, log_start: int, wait_s: float = 2.0) -> None:
        """Ask a hung worker for its threads' stacks (faulthandler, on STACK_SIGNAL) before it is killed,
        so the timeout can say where the case hung; waits up to ``wait_s`` for the dump to land."""
        if STACK_SIGNAL is None or self.proc.poll() is not None or self.log is None:
            return
        try:
            os.kill(self.proc.pid, STACK_SIGNAL)
        except OSError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if STACK_MARK in self._log_tail(log_start):
                time.sleep(0.1)  # the other threads' stacks follow the first
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Ask the worker to exit, then make sure it has."""
        if self.alive() and self._post({"op": "exit"}):
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Kill the process group (if still running), reap it, close the pipes, remove the log (idempotent)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if self.to_worker is not None:
            try:
                self.to_worker.close()
            except OSError:
                pass
            self.to_worker = None
        if self.from_worker is not None:
            try:
                os.close(self.from_worker)
            except OSError:
                pass
            self.from_worker = None
        if self.log is not None:
            self.log.close()
            self.log = None


_PENDING = object()  # an init answer not read yet
_READY_GRACE_S = 1.0


class WorkerPool:
    """One worker process at a time, replaced whenever a case takes it down.

    ``init`` is the worker's first message (the run's spec); it is re-sent to every replacement.
    ``case_timeout`` (seconds, None = no limit) bounds one case; starting a worker has its own
    ``start_timeout``.

    With ``spare=True`` the pool also keeps a standby worker: a second process launched in the
    background and sent ``init``, whose answer is read only when it is needed. When the current
    worker goes down (crash, timeout, ``fatal``, ``retry_fresh``) the next request promotes the
    standby, waiting only for what is left of its start, and launches the next standby at once. The
    first worker's standby is launched after the first request is answered, so that request (the
    run's calibration probes) runs with nothing starting beside it. A standby whose start failed
    (``init`` answered not ok, or the process died or hung) is never promoted: the pool starts a
    worker in the foreground instead, and raises :class:`WorkerStartError` if that fails. A
    timeout kills only the current worker's process group; the standby has its own.

    Counters: ``started`` (worker processes launched, replacements and standbys included),
    ``start_seconds`` (time the pool's caller was blocked launching workers and waiting for one to
    become ready: a foreground start in full, a standby's launch and whatever remained of its start
    when it was promoted; a standby's start in the background is not counted) and ``spares_used``
    (replacements served by an already-started standby).
    """

    def __init__(self, init: dict[str, Any], *, case_timeout: Optional[float], start_timeout: float = 600.0,
                 env: Optional[dict[str, str]] = None, python: str = sys.executable, spare: bool = False) -> None:
        self.init = init
        self.case_timeout = case_timeout
        self.start_timeout = start_timeout
        self.env = env
        self.python = python
        self.spare = spare
        self._current: Optional[_WorkerProcess] = None
        self._standby: Optional[_WorkerProcess] = None
        self._answered = False  # a request has been answered: standbys may start beside the current worker
        # close() may run in another thread while a request is under way (dispatch.Dispatcher.close):
        # the lock and the flag keep that request from launching a standby nobody would end
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0  # worker processes launched, replacements and standbys included
        self.start_seconds = 0.0  # time the caller was blocked waiting for a worker to become ready
        self.spares_used = 0  # replacements served by an already-started standby
        self._standby_launched_at: Optional[float] = None  # monotonic time of the latest standby launch

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        """The current worker's process (None before the first request and after it went down)."""
        return None if self._current is None else self._current.proc

    @property
    def spare_proc(self) -> Optional[subprocess.Popen]:
        """The standby worker's process (None when there is none)."""
        return None if self._standby is None else self._standby.proc

    # -- life cycle

    def _launch(self) -> _WorkerProcess:
        handle = _WorkerProcess(self.python, self.env, {"op": "init", "package": package_dir(), **self.init})
        self.started += 1
        return handle

    def _start_in_foreground(self) -> None:
        t0 = time.monotonic()
        # current while it starts, so that close() from another thread ends it
        handle = self._current = self._launch()
        reply = handle.ready(self.start_timeout)
        self.start_seconds += time.monotonic() - t0
        if isinstance(reply, Failure):
            self._drop(handle)
            raise WorkerStartError(f"the benchmark worker did not start: {reply.detail}"
                                   + (f"\n{reply.stderr_tail}" if reply.stderr_tail else ""))
        if not reply.get("ok"):
            self._drop(handle)
            raise WorkerStartError(f"the benchmark worker did not start: {reply.get('error')}")

    def _promote_standby(self) -> bool:
        """Make the standby the current worker once its start is over; False (standby discarded) when it failed."""
        with self._lock:
            standby, self._standby = self._standby, None
            self._current = standby  # current while it finishes its start, so that close() ends it
        if standby is None:
            return False
        t0 = time.monotonic()
        reply = standby.ready(self.start_timeout)
        self.start_seconds += time.monotonic() - t0
        if isinstance(reply, dict) and reply.get("ok") and standby.alive():
            self.spares_used += 1
            return True
        self._drop(standby)
        return False

    def _launch_standby(self) -> None:
        with self._lock:
            if not self.spare or self._closed or self._standby is not None:
                return
            t0 = time.monotonic()
            try:
                self._standby = self._launch()
                self._standby_launched_at = t0
            except OSError:
                # no standby this time (out of processes or memory): the next replacement starts in
                # the foreground, where the same error is raised as without a standby
                self._standby = None
            self.start_seconds += time.monotonic() - t0

    def _ensure_worker(self) -> _WorkerProcess:
        current = self._current
        if current is not None and current.alive():
            return current
        if current is not None:
            current.kill()
            self._current = None
        if not self._promote_standby():
            self._start_in_foreground()
        if self._answered:
            self._launch_standby()
        assert self._current is not None
        return self._current

    def _drop(self, handle: _WorkerProcess) -> None:
        handle.kill()
        if self._current is handle:
            self._current = None

    def close(self) -> None:
        """Ask the current worker to exit, kill the standby (it has run nothing), and make sure both have ended.

        A closed pool launches no more standbys; a request after ``close`` still starts a worker.
        """
        with self._lock:
            self._closed = True
            current, standby = self._current, self._standby
            self._current = self._standby = None
        try:
            if standby is not None:
                standby.kill()
        finally:
            if current is not None:
                current.stop()

    # -- requests

    def request(self, message: dict[str, Any], timeout: Optional[float] = None) -> Any:
        """Send one request to a live worker (starting one if needed); its answer or a Failure.

        A reply that says the worker is going down (``fatal``) makes the pool wait for it to exit,
        so the next request starts a fresh one (or promotes the standby).
        """
        worker = self._ensure_worker()
        launched, sent = self._standby_launched_at, time.monotonic()
        reply = worker.exchange(message, timeout)
        if launched is not None and isinstance(reply, dict) and isinstance(reply.get("record"), dict):
            # a standby starts beside the current worker's cases: each record says how long before
            # its request the latest one was launched, so a transient can be checked against starts
            reply["record"].setdefault("extra", {})["standby_launched_s_before"] = round(sent - launched, 3)
        if isinstance(reply, Failure) or (isinstance(reply, dict) and reply.get("fatal")):
            self._drop(worker)
        self._answered = True
        self._launch_standby()
        return reply

    def run_case(self, key: str) -> Any:
        """Run the case ``key`` in the worker under the per-case limit: the worker's reply or a Failure.

        A reply with ``retry_fresh`` (the worker's state, not the case, may be at fault: see
        worker.py) is run once more in a fresh worker; the second record says why in
        ``extra["fresh_worker_retry"]``.
        """
        return self.request_retrying_fresh({"op": "run", "key": key}, self.case_timeout)

    def request_retrying_fresh(self, message: dict[str, Any], timeout: Optional[float]) -> Any:
        """:meth:`request`, sent once more to a fresh worker when the reply says ``retry_fresh``
        (the old worker is gone: such a reply is ``fatal``); the second reply's record says why in
        ``extra["fresh_worker_retry"]``. Cases and deferred device times go through here."""
        reply = self.request(message, timeout)
        if isinstance(reply, dict) and reply.get("retry_fresh"):
            why = str(reply["retry_fresh"])
            reply = self.request(message, timeout)
            if isinstance(reply, dict) and isinstance(reply.get("record"), dict):
                reply["record"].setdefault("extra", {})["fresh_worker_retry"] = why
        return reply


class WorkerStartError(RuntimeError):
    """A worker could not be started (its environment is broken, not the case)."""
