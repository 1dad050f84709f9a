"""The benchmark worker process: runs cases one at a time for :class:`attnsuite.isolation.WorkerPool`.

Started by isolation.py's boot line (the suite's own ``sys.path``, then this module as ``__main__``)
with ``REQUEST_FD REPLY_FD SUITE_PID``. Messages (dicts, see isolation.py):

* ``{"op": "init", "spec": RunSpec.to_json(), "sources": digests, "package": folder}``: check that
  attnsuite came from the suite's ``folder``, import the variants, apply the run's
  settings (CPU threads, GPU memory cap), list the cases; reply ``{"ok": True}`` or ``{"ok": False,
  "error"}``. ``sources`` are the digests of the run's external code when it started
  (journal.source_digests): a worker that finds one changed refuses to start.
* ``{"op": "run", "key": case key}``: run the case from the known torch state (torch_state.py) with
  its own seed; reply ``{"record": CaseRecord.to_extra_info(), "samples": [...], "timer", "warmup"}``.
  A case that leaves torch's global state changed is reported (outcome error, the change named)
  and the state is put back for the next case. After a failure on CUDA the context is probed;
  when it is unusable (an illegal memory access poisons it for good) the case is a ``crash`` and
  the reply carries ``fatal``: the worker exits and the pool starts a fresh one. An out-of-memory
  case while the allocator kept more memory reserved than the case asked for (memory stranded by
  earlier cases) replies ``retry_fresh`` with the reason and exits: the pool runs it once more in a
  fresh worker, so only a case that runs out of memory on a clean device is recorded ``oom``.
  After a good case the worker checks itself (the CUDA context, the random generator, memory the
  allocator cannot give back: :func:`recycle_reason`); when it is unfit for the next case the
  record says so in ``extra["worker_replaced"]`` and the reply carries ``fatal``.
* ``{"op": "device_time", "key", "record"}``: the kernel-sum device time of a case whose record
  says ``device_time_pending`` (runner.measure_deferred_device_time); reply ``{"record"}``.
* ``{"op": "calibrate"}``: the instance calibration probes (calibrate.py) of the run's device.
* ``{"op": "exit"}``.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import traceback
from typing import Any, Callable, Optional

from .exits import OsExitCalled, os_exit_raises
from .frames import own_frames
from .isolation import EXIT_POISONED, STACK_SIGNAL, recv_fd, send
from .parent_watch import exit_with_parent
from .wording import exception_text


def cuda_health(device: str) -> Optional[str]:
    """None when a small kernel still runs on ``device``; else the error it raised."""
    import torch

    try:
        torch.cuda.synchronize(device)
        x = torch.ones(16, device=device)
        float((x + 1).sum().item())
        # the generator too: a graph capture that failed while it drew random numbers (dropout) can
        # leave it in capture mode, and every later draw in the process then fails
        float(torch.rand(1, device=device).item())
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - any failure here means the context is gone
        return exception_text(exc).splitlines()[0][:300]
    return None


def stranded_bytes(device: str, collect: bool = True) -> int:
    """Bytes the CUDA caching allocator keeps reserved but unallocated after giving back what it can.

    ``collect`` first runs a full garbage collection (about 0.1 s: after a failed case, whose
    traceback holds tensors in cycles); without it only the allocator's cache is emptied (after
    every good case, whose tensors are already gone).
    """
    import torch

    from .memory import recover, release_cuda_cache

    if collect:
        recover(device)
    else:
        release_cuda_cache()
    return max(0, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


RECYCLE_STRANDED_FRACTION = 0.5


def recycle_reason(stranded: int, total: int) -> Optional[str]:
    """Why the worker should be replaced after a good case: more than half the device's memory
    stranded (reserved by the allocator, unallocated, and not given back by ``empty_cache``).

    Left alone, stranded memory made later large cases and graph captures run out of memory on an
    H200 (104-138 GiB of 140 stranded); a fresh worker costs about 7 s.
    """
    if total <= 0 or stranded <= RECYCLE_STRANDED_FRACTION * total:
        return None
    return (f"{stranded / 2**30:.1f} GiB of the device's {total / 2**30:.0f} GiB stayed reserved after the case; "
            "the next case starts in a fresh worker")


def recycle_after_good_case(stranded: Callable[[bool], int], total: int) -> Optional[str]:
    """:func:`recycle_reason` from ``stranded(collect)`` (:func:`stranded_bytes` bound to the device):
    the cheap look first (the allocator's cache emptied), a full garbage collection only when that
    look would replace the worker.

    On an H200 (2026-11-30) 13 workers were replaced after good cases that left 76-134 GiB reserved
    (materialising steps at L 16K: flex-eager, sdpa-math, einsum), 125 s of a full tier; a collection
    costs about 0.1 s and frees what reference cycles still hold.
    """
    why = recycle_reason(stranded(False), total)
    return recycle_reason(stranded(True), total) if why else None


def fresh_retry_reason(asked: Optional[int], stranded: int) -> Optional[str]:
    """Why an out-of-memory case should run again in a fresh worker, or None.

    When the allocator still holds, unallocated and impossible to give back, at least what the case
    asked for (a CUDA graph's private pool kept alive by one block, fragmentation), the memory
    earlier cases stranded would have served the request: the worker, not the case, ran out. An
    H200 run recorded 28 such cases out of memory asking 8-16 GiB with 104-128 GiB stranded.
    """
    if not asked or stranded < asked:
        return None
    return (f"out of memory asking {asked / 2**30:.2f} GiB while {stranded / 2**30:.1f} GiB stayed reserved "
            "by this worker's earlier cases; run again in a fresh worker")


def exit_call_text(exc: BaseException) -> str:
    """What a variant that tried to end the process called, as a case's detail."""
    call = f"os._exit({exc.status!r})" if isinstance(exc, OsExitCalled) else f"sys.exit({exc.code!r}) (SystemExit)"
    return f"the variant called {call}: a kernel must not end the process"


def at_own_frame(exc: BaseException) -> str:
    """`` at FILE:LINE``, the innermost frame of the variant's own code in ``exc``'s traceback, or ""."""
    own = own_frames(exc)
    return f" at {own[-1].filename}:{own[-1].lineno}" if own else ""


def failed_record(bc, detail: str):
    """An ``error`` record for a case whose runner raised (the suite's fault or a broken device)."""
    from .record import CaseRecord

    return CaseRecord(bc.workload, bc.variant_label, bc.mode, bc.problem.id, family=bc.entry.family,
                      level=bc.problem.level, outcome="error", detail=detail[:1000])


class Worker:
    """The worker's state between messages."""

    def __init__(self) -> None:
        self.spec = None
        self.settings = None
        self.cases: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.gpu_ready = False

    def init(self, message: dict[str, Any]) -> dict[str, Any]:
        import torch

        from . import journal, problem_file, registry, torch_state
        from .isolation import package_dir
        from .runner import RunSpec, bench_cases, settings_from_spec

        suites = message.get("package")
        if suites and suites != package_dir():
            # the suite passes its sys.path (isolation.worker_env); this catches what that cannot, such
            # as a .pth file or an import hook that resolves differently in a fresh process
            return {"ok": False, "error": f"the worker imported attnsuite from {package_dir()}, the suite from "
                                          f"{suites}: its results would not be the suite's code; run the suite "
                                          "with one copy of attnsuite importable"}
        self.spec = RunSpec.from_json(message["spec"])
        started_with = message.get("sources") or {}
        changed = journal.changed_sources(started_with, journal.source_digests(started_with))
        if changed:
            # a replacement worker would import the edited file: the run's results would mix two versions
            return {"ok": False, "error": f"{', '.join(changed)} changed since this run started: a worker started "
                                          "now would run the edited code beside results of the old one; run again"}
        registry.load_all(self.spec.variant_modules)
        for path in self.spec.problem_files:
            problem_file.load(path)
        self.settings = settings_from_spec(self.spec)
        if self.settings.cpu_threads:
            torch.set_num_threads(self.settings.cpu_threads)
        # Nothing on the GPU here (see _first_gpu_use): a standby worker starts while another
        # worker's case is timed on the same GPU.
        self.cases = {c.id: c for c in bench_cases(self.spec)}
        torch_state.compile_per_shape()
        self.state = torch_state.snapshot()
        return {"ok": True, "pid": os.getpid(), "cases": len(self.cases)}

    def _first_gpu_use(self) -> None:
        """The worker's GPU set-up, at its first request rather than at its start.

        Creating the CUDA context, capping the allocator and making the timer's L2-flush buffer are
        work on the GPU, and a standby worker starts while the current one times a case on the same
        GPU, so a start does none of it (records say how long before them a standby was launched,
        ``extra["standby_launched_s_before"]``, to check transients against starts). The buffer,
        made on the fresh allocator, gets its own block instead of pinning part of a large case's
        freed one; it lives as long as the worker.
        """
        if self.gpu_ready or not self.spec.on_gpu:
            return
        from . import memory, timing

        if self.spec.mem_cap is not None:
            memory.set_gpu_cap(self.spec.mem_cap, self.spec.device)
        timing.l2_flush_buffer(self.spec.device)
        self.gpu_ready = True

    def run(self, key: str) -> dict[str, Any]:
        from . import torch_state
        from .checks import traceback_text
        from .runner import run_case

        bc = self.cases.get(key)
        if bc is None:
            return {"error": f"no benchmark case {key!r} in the worker's case list (the run's options differ?)"}
        self._first_gpu_use()
        torch_state.start_case(self.state, key)
        try:
            # os._exit raises while the case runs: it had ended the worker, recorded as a crash "exit
            # code 1, last stderr line: no output", with no word of the variant's line that called it
            with os_exit_raises():
                rec, result = run_case(bc, self.settings)
        except Exception as exc:  # noqa: BLE001 - the runner's own failure still belongs to this case
            rec, result = failed_record(bc, exception_text(exc)), None
        except (SystemExit, OsExitCalled) as exc:  # the worker lives on: it had died, recorded as a crash
            rec, result = failed_record(bc, exit_call_text(exc) + at_own_frame(exc)), None
            rec.extra["traceback"] = traceback_text(exc)[:4000]
        leaked = torch_state.end_case(self.state)
        if leaked:
            what = "; ".join(leaked)
            rec.extra["state_leak"] = what
            if rec.outcome not in ("error", "numerics"):
                rec.outcome = "error"
                rec.detail = (f"variant {bc.variant_label} left torch's global state changed ({what}); "
                              "the suite restored it for the next case")
        reply: dict[str, Any] = {"record": rec.to_extra_info(), "samples": [], "timer": "", "warmup": 0}
        if result is not None:
            reply.update(samples=list(result.samples_s), timer=result.timer, warmup=result.warmup_calls)
        if self.spec.on_gpu and rec.outcome == "oom":
            why = fresh_retry_reason(rec.oom_bytes, stranded_bytes(self.spec.device))
            if why:
                reply.update(retry_fresh=why, fatal=True)
                return reply
        if self.spec.on_gpu and rec.outcome == "ok":
            why = self._after_good_case()
            if why:  # the case's figures stand; the worker that measured them is not fit for the next
                rec.extra["worker_replaced"] = why
                reply.update(record=rec.to_extra_info(), fatal=True)
                return reply
        if self.spec.on_gpu and rec.outcome not in ("ok", "skipped"):
            broken = cuda_health(self.spec.device)
            if broken:
                rec.outcome = "crash"
                rec.detail = (f"the CUDA context was unusable after the case ({broken}); first error: "
                              f"{rec.detail}")[:1000]
                reply["record"] = rec.to_extra_info()
                reply["fatal"] = True
        return reply

    def _after_good_case(self) -> Optional[str]:
        """Why this worker must be replaced after a good case (CUDA state broken, memory stranded), or None."""
        import torch

        device = self.spec.device
        broken = cuda_health(device)
        if broken:
            return f"the worker's CUDA state was unusable after the case ({broken}); replaced"
        return recycle_after_good_case(lambda collect: stranded_bytes(device, collect=collect),
                                       torch.cuda.get_device_properties(device).total_memory)

    def device_time(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        from . import memory, torch_state
        from .record import CaseRecord
        from .runner import measure_deferred_device_time

        bc = self.cases.get(key)
        if bc is None:
            return {"error": f"no benchmark case {key!r} in the worker's case list"}
        self._first_gpu_use()
        rec = CaseRecord.from_extra_info(record)
        asked: list[Optional[int]] = []  # what an out-of-memory failure asked for

        def note_oom(exc: BaseException) -> None:
            if memory.is_oom(exc):
                asked.append(memory.parse_oom_bytes(str(exc)))

        torch_state.start_case(self.state, key)
        rec = measure_deferred_device_time(bc, self.settings, rec, on_error=note_oom)
        torch_state.end_case(self.state)
        reply: dict[str, Any] = {"record": rec.to_extra_info()}
        if self.spec.on_gpu and asked:
            # as for a case (fresh_retry_reason): memory stranded by earlier cases, not the case,
            # ran out; the pool measures it again in a fresh worker, from the record as it was sent
            why = fresh_retry_reason(asked[0], stranded_bytes(self.spec.device))
            if why:
                reply.update(retry_fresh=why, fatal=True)
        return reply

    def calibrate(self) -> dict[str, Any]:
        from . import calibrate

        self._first_gpu_use()
        return {"calibration": calibrate.probe(self.spec.device)}


def main(argv: list[str]) -> int:
    """The worker's message loop; returns its exit status."""
    request_fd, reply_fd = int(argv[1]), int(argv[2])
    # the worker leads a session of its own (isolation.py); if the suite is killed, a case hanging
    # here must not keep running: a sentinel process kills the worker and any helper it started, even
    # one hung holding the GIL (its log has no name, so nothing is left behind). The suite's pid comes with the command line: os.getppid()
    # here is init's once the suite died while this process was still importing
    suite = int(argv[3]) if len(argv) > 3 else os.getppid()
    exit_with_parent(suite, whole_group=True)
    os.dup2(2, 1)  # a variant's prints go to the log, never into the reply pipe
    # a crash dumps the Python stacks into the log, and so does a timeout (it sends STACK_SIGNAL
    # before the kill): the case's record then says where it died or hung
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if STACK_SIGNAL is not None:
        faulthandler.register(STACK_SIGNAL, file=sys.stderr, all_threads=True)
    out = os.fdopen(reply_fd, "wb")
    worker = Worker()
    while True:
        message = recv_fd(request_fd)
        if message is None:
            return 0  # the pipe closed without an "exit": the suite is gone
        if message.get("op") == "exit":
            return 0
        op = message.get("op")
        try:
            if op == "init":
                reply = worker.init(message)
            elif op == "run":
                reply = worker.run(message["key"])
            elif op == "device_time":
                reply = worker.device_time(message["key"], message["record"])
            elif op == "calibrate":
                reply = worker.calibrate()
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as exc:  # noqa: BLE001 - the suite's own failure, reported to the parent
            reply = {"ok": False, "error": exception_text(exc), "traceback": traceback.format_exc()}
        for stream in (sys.stdout, sys.stderr):  # what the case printed is in the log before its answer
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # a variant closed or replaced the stream
                pass
        send(out, reply)
        if reply.get("fatal"):
            out.close()
            os._exit(EXIT_POISONED)  # skip atexit/CUDA teardown: the context is broken


if __name__ == "__main__":
    sys.exit(main(sys.argv))
