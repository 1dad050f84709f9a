"""Benchmark cases spread over the GPUs of a host: one worker pool per GPU, cases taken in run order.

A :class:`Dispatcher` owns one backend per device (a :class:`attnsuite.isolation.WorkerPool` whose
worker sees only its GPU) and, when it has more than one, one thread per backend. Each thread takes
the next job from a shared queue, runs it in its backend and files the reply under the job's key;
whoever needs a reply waits for it. Jobs are queued in the run's order, so the case the current
pytest item waits for is usually the next one finished, and with P GPUs about P cases are in
flight at once.

With a single backend there are no threads: a job runs when its reply is asked for, in the calling
thread, exactly as the sequential runner did (``--attn-isolation none`` needs that: its backend is
the pytest process itself).

Each GPU has its own worker, so a case that crashes or hangs takes down only its GPU's worker, which
is replaced; the other GPUs go on.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .wording import exception_text

Job = Callable[[Any], Any]  # backend -> reply


@dataclass
class Reply:
    """A job's answer and the index of the backend (GPU slot) that produced it."""

    value: Any
    slot: int


def visible_gpus(count: int, env: Optional[dict[str, str]] = None) -> list[str]:
    """The first ``count`` GPU identifiers this process may use, as CUDA_VISIBLE_DEVICES entries.

    Honours an existing CUDA_VISIBLE_DEVICES (indices or UUIDs), so a worker pinned to slot i sees
    the same physical GPU the parent calls ``cuda:i``.
    """
    env = os.environ if env is None else env
    listed = [part.strip() for part in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    ids = listed if "CUDA_VISIBLE_DEVICES" in env else [str(i) for i in range(count)]
    if count > len(ids):
        raise ValueError(f"{count} GPUs asked for, {len(ids)} visible ({', '.join(ids) or 'none'})")
    return ids[:count]


class Dispatcher:
    """Runs jobs on several backends at once (one thread each), or on one backend inline."""

    def __init__(self, backends: Sequence[Any]) -> None:
        if not backends:
            raise ValueError("a dispatcher needs at least one backend")
        self.backends = list(backends)
        self._queue: deque[tuple[str, Job]] = deque()
        self._queued: set[str] = set()
        self._replies: dict[str, Reply] = {}
        self._running: dict[str, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # exceptions raised by a job (a bug, not a case outcome)

    @property
    def parallel(self) -> bool:
        """True when jobs run in threads, one per backend."""
        return len(self.backends) > 1

    # -- queueing

    def submit(self, jobs: Sequence[tuple[str, Job]], *, front: bool = False) -> None:
        """Queue jobs (key, job) not queued yet; ``front`` puts them before the waiting ones, in order.
        With one backend nothing is queued: each job runs when its reply is asked for."""
        if not self.parallel:
            return
        with self._cond:
            fresh = [(k, j) for k, j in jobs if k not in self._queued]
            self._queued.update(k for k, _ in fresh)
            if front:
                self._queue.extendleft(reversed(fresh))
            else:
                self._queue.extend(fresh)
            self._cond.notify_all()
        if not self._threads:
            for slot in range(len(self.backends)):
                thread = threading.Thread(target=self._serve, args=(slot,), name=f"attnsuite-gpu{slot}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)

    def result(self, key: str, job: Job) -> Reply:
        """The reply of ``key``: queued at the front first if it is not queued yet; waits for it.

        With one backend there are no threads: the job runs here, now.
        """
        if not self.parallel:
            return Reply(job(self.backends[0]), 0)
        self.submit([(key, job)], front=True)
        with self._cond:
            while key not in self._replies:
                if self._closed:
                    raise RuntimeError(f"the dispatcher was closed before {key!r} ran")
                self._cond.wait()
            self._queued.discard(key)
            return self._replies.pop(key)

    def run_all(self, jobs: Sequence[tuple[str, Job]]) -> dict[str, Reply]:
        """Run these jobs (spread over the backends when parallel) and return every reply by key."""
        if not self.parallel:
            return {key: Reply(job(self.backends[0]), 0) for key, job in jobs}
        self.submit(jobs, front=True)
        return {key: self.result(key, job) for key, job in jobs}

    def in_flight(self) -> dict[str, int]:
        """Keys being run now, with their backend slot."""
        with self._cond:
            return dict(self._running)

    # -- the threads

    def _serve(self, slot: int) -> None:
        backend = self.backends[slot]
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key, job = self._queue.popleft()
                self._running[key] = slot
            try:
                value = job(backend)
            except Exception as exc:  # noqa: BLE001  a job's own bug must not end the thread silently
                value = {"error": exception_text(exc)}
                with self._cond:
                    self.errors.append(f"{key}: {value['error']}")
            with self._cond:
                self._running.pop(key, None)
                self._replies[key] = Reply(value, slot)
                self._cond.notify_all()

    def close(self, close_backend: Callable[[Any], None]) -> None:
        """Stop taking jobs, close every backend (which ends a job under way) and join the threads."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        for backend in self.backends:
            close_backend(backend)
        for thread in self._threads:
            thread.join(timeout=60)
