"""Progress of a long benchmark run: which case of how many, the time so far, an estimate of the rest.

Pure pieces (:func:`estimate_remaining`, :func:`format_duration`, :func:`format_line`) and a small
:class:`Progress` fed one event per finished case that says when a line is due. In a terminal a
line is due often (every :data:`TTY_EVERY_S` seconds); in a CI log (not a terminal, or ``CI`` set)
it stays compact: a line every :data:`LOG_EVERY_N` cases or :data:`LOG_EVERY_S` seconds, whichever
comes first. The pytest side (where the lines are written) is in :mod:`attnsuite.plugin_bench`.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional

TTY_EVERY_S = 2.0
LOG_EVERY_N = 50
LOG_EVERY_S = 30.0


def interactive(isatty: bool, env: Mapping[str, str]) -> bool:
    """Whether the output is a person's terminal: a tty and no ``CI`` variable (GitHub sets ``CI=true``)."""
    ci = env.get("CI", "").strip().lower()
    return bool(isatty) and ci in ("", "0", "false", "no")


def estimate_remaining(done: int, total: int, elapsed_s: float) -> Optional[float]:
    """Seconds left if the remaining cases take as long, on average, as the finished ones (None before the first)."""
    if done <= 0 or total <= 0 or elapsed_s < 0:
        return None
    return elapsed_s / done * max(total - done, 0)


def format_duration(seconds: Optional[float]) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_line(done: int, total: int, elapsed_s: float, remaining_s: Optional[float], current: str = "",
                counts: Optional[Mapping[str, int]] = None) -> str:
    """``attnsuite [ 120/602 20%] 1:05 elapsed, about 4:21 left (98 ok, 22 skipped) last: <case>``."""
    width = len(str(total))
    pct = f"{100 * done / total:3.0f}%" if total else "  ?%"
    left = "done" if done >= total > 0 else f"about {format_duration(remaining_s)} left"
    line = f"attnsuite [{done:>{width}}/{total} {pct}] {format_duration(elapsed_s)} elapsed, {left}"
    if counts:
        line += " (" + ", ".join(f"{n} {k}" for k, n in counts.items()) + ")"
    if current:
        line += f" last: {current}"
    return line


class Progress:
    """Counts finished cases and says when a progress line is due.

    ``interactive``: a person's terminal (a line every ``tty_every_s``); otherwise a log (a line every
    ``log_every_n`` cases or ``log_every_s`` seconds). The last case always gets a line.
    """

    def __init__(self, total: int, *, interactive: bool, clock: Callable[[], float] = time.monotonic,
                 tty_every_s: float = TTY_EVERY_S, log_every_n: int = LOG_EVERY_N,
                 log_every_s: float = LOG_EVERY_S) -> None:
        self.total = total
        self.interactive = interactive
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.first_done_at: Optional[float] = None  # the first case also pays for starting the worker
        self.counts: dict[str, int] = {}
        self._last_line_at = self.start
        self._last_line_done = 0
        self.tty_every_s, self.log_every_n, self.log_every_s = tty_every_s, log_every_n, log_every_s

    def due(self, now: float) -> bool:
        """Whether a line is due now, after ``self.done`` cases."""
        if self.total and self.done >= self.total:
            return True
        if self._last_line_done == 0:  # the first case: the run has started, and how many cases it has
            return True
        since = now - self._last_line_at
        if self.interactive:
            return since >= self.tty_every_s
        return since >= self.log_every_s or self.done % self.log_every_n == 0

    def case_done(self, key: str, outcome: str) -> Optional[str]:
        """Count a finished case; the progress line when one is due, else None."""
        self.done += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        now = self.clock()
        if self.first_done_at is None:
            self.first_done_at = now
        if not self.due(now):
            return None
        self._last_line_at, self._last_line_done = now, self.done
        # the rate comes from the cases after the first, whose time includes starting the worker and
        # probing the device (13 s of a 2-minute CPU run: it made the first estimate 2.5 hours)
        left = estimate_remaining(self.done - 1, self.total - 1, now - self.first_done_at) if self.done > 1 else None
        return format_line(self.done, self.total, now - self.start, left, key if self.interactive else "", self.counts)
