"""A time limit on importing a variants module: a module that hangs while imported stops the run
with a message naming it and where it hangs, instead of hanging the run for ever.

Every other place a variant's code runs has a limit (a case's ``--attn-timeout``, a test's
``--attn-test-timeout``); an import had none, and a module that waited on a lock, a server or an
endless loop at import held a CI job until the job's own limit (hours), with no word of which
module. The limit is generous by default (``--attn-import-timeout``, 600 s): an import may build a
CUDA extension or compile kernels.

Two watchers: a Python thread, which writes the message, every thread's stack and ends the process
with :data:`EXIT_STATUS`; and, for a module that hangs in C while holding the GIL (where no Python
thread can run), faulthandler's own watchdog a little later, which writes the stacks and exits 1.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import sys
import threading
from typing import Iterator, Optional

from .exits import REAL_EXIT

DEFAULT_S = 600.0
EXIT_STATUS = 4  # pytest's usage-error status: the run's input (a variants module) is at fault
FALLBACK_GRACE_S = 30.0  # faulthandler's watchdog waits this long past the limit (at most the limit again)


def parse(value: object, option: str = "--attn-import-timeout") -> float:
    """Seconds from an option's value: 0 (or inf) for no limit; ``ValueError`` naming ``option`` otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{option} {value!r}: expected a number of seconds (0 for no limit)") from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{option} {value!r}: expected a number of seconds >= 0 (0 for no limit)")
    return seconds


@contextlib.contextmanager
def limited(what: str, seconds: Optional[float]) -> Iterator[None]:
    """Run the body (an import of ``what``, named as the user named it) within ``seconds``; past it
    the process ends with the message ``attnsuite: <what> was still importing after N s ...`` and
    every thread's stack. None, 0 or inf: no limit."""
    if not seconds or not math.isfinite(seconds):
        yield
        return
    done = threading.Event()

    def expire() -> None:
        if done.wait(seconds):
            return
        sys.stderr.write(f"\nattnsuite: {what} was still importing after {seconds:g} s (--attn-import-timeout): "
                         "a module that hangs while imported stops the run. Where each thread was:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=_stderr_fd(), all_threads=True)
        sys.stderr.write(f"attnsuite: stopped: {what} hung while imported (exit status {EXIT_STATUS})\n")
        sys.stderr.flush()
        REAL_EXIT(EXIT_STATUS)

    watcher = threading.Thread(target=expire, name="attnsuite-import-limit", daemon=True)
    try:  # everything started inside: whatever fails, the finally stands the watchers down
        watcher.start()
        faulthandler.dump_traceback_later(seconds + min(seconds, FALLBACK_GRACE_S), exit=True, file=_stderr_fd())
        yield
    finally:
        done.set()
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def crash_traced() -> Iterator[None]:
    """While inside, a fatal signal (a segfault in a C extension the module loads) writes Python's stack
    to stderr before the process dies, so the module and line at fault are named: such an import had
    ended every command with status 139 and no output at all (an outside tester's trial; pytest's own
    faulthandler starts only after the variants are loaded). Left as it was found on the way out."""
    was_on = faulthandler.is_enabled()
    if not was_on:
        faulthandler.enable(file=_stderr_fd(), all_threads=False)
    try:
        yield
    finally:
        if not was_on:
            faulthandler.disable()


def _stderr_fd() -> int:
    """The descriptor faulthandler writes to: sys.stderr's, or the process's own 2 where sys.stderr has
    none (a captured stream in an in-process pytest run, an IDE's console): faulthandler needs a real one."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return 2
