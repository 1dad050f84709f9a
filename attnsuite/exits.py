"""``os._exit`` turned into an exception while a variant's code runs in the suite's own process.

``os._exit`` ends the process at once: no ``finally``, no report, the run's exit status the
variant's. Called by a variant module while it is imported, by a variant's ``extra_reasons``
while the correctness tests are collected, or by a kernel during its test, it had ended whole runs,
with status 0 where it passed 0, silently. Inside :func:`os_exit_raises` it raises
:class:`OsExitCalled` instead, which the caller turns into a failure naming the variant.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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
