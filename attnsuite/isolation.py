"""Isolation of benchmark cases: each runs in a worker process that its failure cannot reach past.

The code under test is hostile: a kernel may segfault, abort, call ``os._exit``, poison the CUDA
context with an illegal memory access, or hang. So the pytest process never runs a case itself: a
:class:`WorkerPool` keeps one worker process (``python -m attnsuite.worker``) that runs cases one at
a time and answers with the record. When the worker dies, the case it was running gets outcome
``crash`` (signal or exit code, and the last lines of its stderr); when it runs past the per-case
limit, its whole process group is killed and the case gets ``timeout``. Either way the worker is
replaced and the run goes on with the next case.

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
import time
from dataclasses import dataclass
from typing import Any, Optional

_HEADER = struct.Struct("!Q")
STDERR_TAIL_LINES = 12
STDERR_TAIL_BYTES = 4096
EXIT_POISONED = 86  # the worker's exit status after a case left the CUDA context unusable


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


def tail_of(path: str, lines: int = STDERR_TAIL_LINES, max_bytes: int = STDERR_TAIL_BYTES) -> str:
    """The last lines of a log file (bounded read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class WorkerPool:
    """One worker process at a time, replaced whenever a case takes it down.

    ``init`` is the worker's first message (the run's spec); it is re-sent to every replacement.
    ``case_timeout`` (seconds, None = no limit) bounds one case; starting a worker has its own
    ``start_timeout``.
    """

    def __init__(self, init: dict[str, Any], *, case_timeout: Optional[float], start_timeout: float = 600.0,
                 env: Optional[dict[str, str]] = None, python: str = sys.executable) -> None:
        self.init = init
        self.case_timeout = case_timeout
        self.start_timeout = start_timeout
        self.env = env
        self.python = python
        self.proc: Optional[subprocess.Popen] = None
        self._to_worker = None
        self._from_worker: Optional[int] = None
        self._log_path: Optional[str] = None
        self.started = 0  # workers started, replacements included
        self.start_seconds = 0.0  # time spent starting them

    # -- life cycle

    def _spawn(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        fd, self._log_path = tempfile.mkstemp(prefix="attnsuite-worker-", suffix=".log")
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "attnsuite.worker", str(req_r), str(resp_w)],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, pass_fds=(req_r, resp_w),
                start_new_session=True,  # its own process group: a timeout kills its helpers too
                env=self.env, close_fds=True)
        finally:
            os.close(fd)
            os.close(req_r)
            os.close(resp_w)
        self._to_worker = os.fdopen(req_w, "wb")
        self._from_worker = resp_r
        self.started += 1
        reply = self._exchange({"op": "init", **self.init}, self.start_timeout)
        self.start_seconds += time.monotonic() - t0
        if isinstance(reply, Failure):
            raise WorkerStartError(f"the benchmark worker did not start: {reply.detail}"
                                   + (f"\n{reply.stderr_tail}" if reply.stderr_tail else ""))
        if not reply.get("ok"):
            self._kill()
            raise WorkerStartError(f"the benchmark worker did not start: {reply.get('error')}")

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._close_pipes()

    def _close_pipes(self) -> None:
        for closer in (lambda: self._to_worker and self._to_worker.close(),
                       lambda: self._from_worker is not None and os.close(self._from_worker)):
            try:
                closer()
            except OSError:
                pass
        self._to_worker, self._from_worker = None, None
        self.proc = None
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has."""
        if self.proc is not None and self.proc.poll() is None and self._to_worker is not None:
            try:
                send(self._to_worker, {"op": "exit"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()

    # -- requests

    def _exchange(self, message: dict[str, Any], timeout: Optional[float]) -> Any:
        """Send a message and wait for the answer; a :class:`Failure` when the worker died or hung."""
        assert self.proc is not None and self._to_worker is not None and self._from_worker is not None
        try:
            send(self._to_worker, message)
            deadline = None if timeout is None else time.monotonic() + timeout
            reply = recv_fd(self._from_worker, deadline)
        except TimeoutError:
            tail = tail_of(self._log_path) if self._log_path else ""
            self._kill()
            return Failure("timeout", f"no answer within the {timeout:g} s limit: worker killed", tail)
        except (BrokenPipeError, OSError, EOFError, pickle.UnpicklingError):
            reply = None
        if reply is None:  # the worker is gone
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rc = None
            tail = tail_of(self._log_path) if self._log_path else ""
            self._kill()
            return Failure("crash", f"worker process died: {describe_exit(rc)}", tail)
        return reply

    def request(self, message: dict[str, Any], timeout: Optional[float] = None) -> Any:
        """Send one request to a live worker (starting one if needed); its answer or a Failure.

        A reply that says the worker is going down (``fatal``) makes the pool wait for it to exit,
        so the next request starts a fresh one.
        """
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._kill()
            self._spawn()
        reply = self._exchange(message, timeout)
        if isinstance(reply, dict) and reply.get("fatal"):
            self._kill()
        return reply

    def run_case(self, key: str) -> Any:
        """Run the case ``key`` in the worker under the per-case limit: the worker's reply or a Failure.

        A reply with ``retry_fresh`` (the worker's state, not the case, may be at fault: see
        worker.py) is run once more in a fresh worker; the second record says why in
        ``extra["fresh_worker_retry"]``.
        """
        reply = self.request({"op": "run", "key": key}, self.case_timeout)
        if isinstance(reply, dict) and reply.get("retry_fresh"):
            why = str(reply["retry_fresh"])
            reply = self.request({"op": "run", "key": key}, self.case_timeout)  # the old worker is gone (fatal)
            if isinstance(reply, dict) and isinstance(reply.get("record"), dict):
                reply["record"].setdefault("extra", {})["fresh_worker_retry"] = why
        return reply


class WorkerStartError(RuntimeError):
    """A worker could not be started (its environment is broken, not the case)."""
