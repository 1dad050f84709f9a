"""Start P rank processes once, run tasks on all of them, gather their results; never hang.

:class:`RankPool` starts the ranks (:func:`start_method`: from a fork server on a CPU-only host,
which costs milliseconds instead of a torch import per rank; spawn otherwise), with the rendezvous on a TCPStore
the parent opens on port 0, so the operating system picks a free port and no other process can
take it between choosing and binding. Every wait has a deadline: a rank that dies, raises, or does not answer in time ends the pool (its processes are stopped) and
raises :class:`RankError` naming the task, the rank and the world size. The next task starts a
fresh pool.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import registry
from .worker import STOP, rank_main

HOST = "127.0.0.1"
ERROR_GRACE_S = 5.0  # after one rank raised, how long its peers get to answer before the pool is ended


def accelerator_present() -> bool:
    """Whether this host has a device other than the CPU that torch can use (CUDA, ROCm, XPU, MPS...)."""
    try:
        acc = getattr(torch, "accelerator", None)
        if acc is not None and hasattr(acc, "is_available"):
            return bool(acc.is_available())
        return torch.cuda.is_available()
    except Exception:  # a broken driver is no accelerator for this purpose
        return False


START_ENV = "ATTNSUITE_RANK_START"  # overrides the rule below (tests, a host it misjudges)
START_METHODS = ("spawn", "forkserver", "fork")
FORKSERVER_PRELOAD = "attnsuite.distributed.forkserver_preload"


def start_method(device: str) -> str:
    """How rank processes start: "spawn", "forkserver" or "fork" (``$ATTNSUITE_RANK_START`` when set).

    From a fork server only on a host without an accelerator; spawned otherwise. On a host with any
    accelerator, the first backward of a process (even on CPU tensors) starts the autograd engine's
    device threads, after which every backward in a forked child raises "Unable to handle
    autograd's threading in combination with fork-based multiprocessing": on an H200 machine the
    correctness suite's gloo ranks, forked after other tests' backward passes, failed every
    backward check (docs/distributed.md). Not forked from the pool's own process either: a process
    with threads (``torch.compile``'s, xdist's) can hand a child a lock that no thread will release,
    and 1 of 150 starts of 4 ranks hung so after a compile (0 of 450 from the server). The fork server is a clean interpreter
    (:mod:`attnsuite.distributed.forkserver_preload`). Spawned and fork-server ranks load the
    parent's external variants again (:func:`attnsuite.registry.load_like`); ``fork`` stays as an
    override for a host where neither works.
    """
    forced = os.environ.get(START_ENV, "").strip()
    if forced:
        if forced not in START_METHODS:
            raise ValueError(f"{START_ENV}={forced!r}: must be one of {', '.join(START_METHODS)}")
        if forced != "spawn" and device == "cuda":
            raise ValueError(f"{START_ENV}={forced}: ranks on cuda must be spawned (a forked child cannot use CUDA)")
        return forced
    if device == "cuda" or accelerator_present():
        return "spawn"
    return "forkserver"


def _context(method: str):
    """The multiprocessing context for ``method``; a fork server imports torch and the variants once."""
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload([FORKSERVER_PRELOAD])  # no effect once this process's server runs
    return ctx


def default_start_timeout(method: str, timeout_s: float) -> float:
    """Seconds the ranks may take to join the group: at least ``timeout_s``, and 120 s unless forked.

    A spawned rank is a new interpreter that imports torch and loads the variants again: on an
    H200 host running the CPU test command under 12 xdist workers, two spawned gloo ranks did not
    join within 30 s (docs/distributed.md). A process's first fork server does the same once. A
    forked rank has all of that already.
    """
    return max(timeout_s, 30.0 if method == "fork" else 120.0)


class RankError(RuntimeError):
    """A rank died, hung or raised; the message names the task, the rank and the world size."""


# how a RankError says the ranks hung (the correctness tests skip a variant's other tests on it)
HUNG = "(hung); the ranks were stopped"


class RankPool:
    """P ranks of one process group on ``device`` ('cpu': gloo, 'cuda': NCCL, rank r on GPU r)."""

    def __init__(self, world_size: int, device: str = "cpu", timeout_s: float = 60.0,
                 start_timeout_s: Optional[float] = None) -> None:
        if world_size < 1:
            raise ValueError(f"RankPool: world size must be >= 1, got {world_size}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"RankPool: device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and torch.cuda.device_count() < world_size:
            raise ValueError(f"RankPool: {world_size} ranks need {world_size} GPUs; "
                             f"this host has {torch.cuda.device_count()}")
        self.world_size = world_size
        self.device = device
        self.timeout_s = timeout_s
        self.start_method = start_method(device)
        self.start_timeout_s = start_timeout_s if start_timeout_s is not None else default_start_timeout(
            self.start_method, timeout_s)
        self._procs: list = []
        self._commands: list = []
        self._results = None
        self._store = None
        self._ids = itertools.count()
        self.starts = 0  # how many times the ranks were started (a pool restarts after a failure)

    # ---- lifetime -------------------------------------------------------------------------------
    def __enter__(self) -> "RankPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> None:
        """Start the ranks and wait until every one has joined the group."""
        if self.alive:
            return
        self.close()
        ctx = _context(self.start_method)
        self._store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False,
                                    timeout=timedelta(seconds=self.start_timeout_s))
        self._results = ctx.Queue()
        self._commands = [ctx.Queue() for _ in range(self.world_size)]
        for rank in range(self.world_size):
            proc = ctx.Process(
                target=rank_main,
                args=(rank, self.world_size, self.device, HOST, self._store.port, self.timeout_s,
                      self._commands[rank], self._results, os.getpid(),
                      # a forked rank has the parent's variants already; the others load them
                      registry.external_sources() if self.start_method != "fork" else None),
                daemon=True,
                name=f"attnsuite-rank{rank}-of-{self.world_size}",
            )
            proc.start()
            self._procs.append(proc)
        self.starts += 1
        self._collect(None, f"starting P={self.world_size} ranks on {self.device}", self.start_timeout_s)

    def close(self) -> None:
        """Stop the ranks (politely, then by terminating the processes this pool started)."""
        for q in self._commands:
            try:
                q.put(STOP)
            except Exception:
                pass
        deadline = time.monotonic() + 2.0
        for p in self._procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)
        self._procs, self._commands, self._results, self._store = [], [], None, None

    # ---- running tasks ----------------------------------------------------------------------------
    def run(self, task: Callable[[Any, Any], Any], payload: Any, what: str,
            timeout_s: Optional[float] = None) -> list:
        """Run ``task(ctx, payload)`` on every rank; the ranks' results in rank order.

        ``what`` names the work in errors (e.g. the variant and problem). Raises RankError when a
        rank raises, dies or does not answer within ``timeout_s`` (default the pool's).
        """
        self.start()
        task_id = next(self._ids)
        for q in self._commands:
            q.put((task_id, task, payload))
        return self._collect(task_id, what, timeout_s or self.timeout_s)

    def _collect(self, task_id: Optional[int], what: str, timeout_s: float) -> list:
        P = self.world_size
        got: dict[int, Any] = {}
        errors: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) + len(errors) < P:
            now = time.monotonic()
            if now > deadline:
                missing = sorted(set(range(P)) - set(got) - set(errors))
                self.close()
                if errors:
                    raise RankError(self._error_text(what, errors, missing))
                raise RankError(f"{what}: rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                                f"of P={P} did not answer within {timeout_s:g} s {HUNG}")
            try:
                kind, rank, tid, body = self._results.get(timeout=min(0.2, max(deadline - now, 0.01)))
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self._procs)
                        if not p.is_alive() and r not in got and r not in errors]
                if dead:
                    self.close()
                    r, code = dead[0]
                    raise RankError(f"{what}: rank {r} of P={P} died (exit code {code}); the ranks were stopped"
                                    + (self._start_hint() if task_id is None else ""))
                continue
            if tid != task_id and kind != "error":
                continue  # a late answer to an earlier task
            if kind == "error":
                errors[rank] = body
                deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)  # peers may be stuck waiting for it
            else:
                got[rank] = body
        if errors:
            # a rank that raised may have left sends or receives posted: a fresh group for the next task
            self.close()
            raise RankError(self._error_text(what, errors, []))
        return [got[r] for r in range(P)]

    def _start_hint(self) -> str:
        """Why a rank may die before it joins, where the rank's own error went (its stderr)."""
        if self.start_method == "fork":
            return ". Its own error, if it printed one, is above in this process's stderr"
        how = {"spawn": "spawned rank", "forkserver": "rank from the fork server"}[self.start_method]
        return (f". Its own error is above in this process's stderr. A {how} imports "
                "the main module again: a script that starts ranks must keep its top level under "
                "if __name__ == '__main__':, and a task or variant must be importable by name (defined "
                "at a module's top level, not in python -c or on stdin)")

    def _error_text(self, what: str, errors: dict[int, str], missing: list[int]) -> str:
        rank = min(errors)
        last = errors[rank].strip().splitlines()[-1] if errors[rank].strip() else "?"
        tail = f"; rank(s) {missing} then hung and the ranks were stopped" if missing else ""
        return (f"{what}: rank {rank} of P={self.world_size} raised {last}{tail}\n"
                + errors[rank].strip())
