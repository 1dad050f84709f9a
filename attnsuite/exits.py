"""How the suite's own process ends, whatever a variant's code does to it.

``os._exit`` ends the process at once: no ``finally``, no report, the run's exit status the
variant's. Called by a variant module while it is imported, by a variant's ``extra_reasons``
while the correctness tests are collected, or by a kernel during its test, it had ended whole runs,
with status 0 where it passed 0, silently. Inside :func:`os_exit_raises` it raises
:class:`OsExitCalled` instead, which the caller turns into a failure naming the variant.

After the run (the session's verdict known) two more ways remained (an outside tester's trials):
an ``atexit`` handler of a variants module that calls ``os._exit(0)`` turned a failing run into
exit status 0 (:func:`keep_exit_status`), and a thread a variants module started and never ended
(not a daemon) held the finished run for ever, as Python waits for such threads before it exits
(:func:`end_if_held`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterable, Iterator, Optional

REAL_EXIT = os._exit  # the suite's own exits (a hung test's timer, a killed worker) use this one


class OsExitCalled(BaseException):
    """Raised instead of ending the process when ``os._exit(status)`` is called (a BaseException: a
    kernel's ``except Exception`` must not swallow what was meant to end everything)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@contextlib.contextmanager
def os_exit_raises() -> Iterator[None]:
    """While inside, ``os._exit`` in this process raises :class:`OsExitCalled`; a process forked
    meanwhile keeps the real one (its pid differs), so its children still end as they mean to."""
    pid, previous = os.getpid(), os._exit

    def guarded(status: int) -> None:
        if os.getpid() != pid:
            REAL_EXIT(status)
        raise OsExitCalled(status)

    os._exit = guarded
    try:
        yield
    finally:
        os._exit = previous


def _say(line: str) -> None:
    try:
        sys.stderr.write(f"attnsuite: {line}\n")
        sys.stderr.flush()
    except Exception:  # a closed or replaced stream: the exit status still stands
        pass


def keep_exit_status(status: int) -> None:
    """From now until this process ends, ``os._exit`` ends it with ``status`` (the finished run's),
    saying where it was called from and with what, when that differs. Processes forked meanwhile keep
    the real function. Called once the run's verdict is known: what runs after it (``atexit``
    handlers) may not change the verdict a CI job reads."""
    pid = os.getpid()

    def at_end(code: int) -> None:
        if os.getpid() == pid and code != status:
            caller = sys._getframe(1)
            _say(f"os._exit({code!r}) called at {caller.f_code.co_filename}:{caller.f_lineno} after the run had "
                 f"ended (an atexit handler of a variants module?): the run's exit status {status} stands")
            REAL_EXIT(status)
        REAL_EXIT(code)

    os._exit = at_end


def _started_by(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    code = getattr(target, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    return getattr(target, "__module__", None) or type(thread).__module__


def waiting_on(threads: Iterable[threading.Thread]) -> list[threading.Thread]:
    """Of ``threads``, those Python waits for before it exits: alive, not daemons, not the main thread."""
    return [t for t in threads if t.is_alive() and not t.daemon and t is not threading.main_thread()]


def end_if_held(status: int, grace_s: float) -> Optional[threading.Thread]:
    """Make sure this process ends: when Python starts waiting for its threads at exit, a daemon watcher
    starts too, and ends the process with ``status`` after ``grace_s`` seconds, naming the threads that
    still hold it (a thread a variant's module started and never ended had held a finished run for
    ever). A process that ends in time never hears of it. Returns the watcher thread, not yet started
    (None where this Python offers no hook at that point: then nothing changes)."""
    register = getattr(threading, "_register_atexit", None)  # run as threading starts waiting, before it joins
    if register is None:
        return None

    def watch() -> None:
        threading.Event().wait(grace_s)
        held = waiting_on(threading.enumerate())
        names = "; ".join(f"{t.name!r} (its function at {_started_by(t)})" for t in held) or "none left alive"
        _say(f"the run had ended {grace_s:g} s ago and this process was still waiting for {len(held)} thread(s) "
             f"that are not daemons: {names}. It ends without them, exit status {status} (a variant's module or "
             "kernel should start such a thread as a daemon, or end it)")
        REAL_EXIT(status)

    watcher = threading.Thread(target=watch, name="attnsuite-exit-watch", daemon=True)

    def start() -> None:
        try:
            watcher.start()
        except RuntimeError:  # a Python that starts no thread once it shuts down: its wait is as it was
            pass

    try:
        register(start)
    except RuntimeError:  # the interpreter is already shutting down
        return None
    return watcher
