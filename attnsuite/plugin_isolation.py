"""The correctness tests' defence against hostile variants: leaked state, crashes and hangs.

Benchmark cases run in worker processes of their own (:mod:`attnsuite.isolation`). Correctness
tests run in pytest's own processes; this plugin gives them the same promises, as far as pytest
allows (docs/isolation.md, "Correctness tests"):

* **State.** After each test of a variant (every fixture torn down), torch's tracked global state
  (:mod:`attnsuite.torch_state`) is compared with what it was before that test's setup. A change
  is undone and fails that test's teardown, naming the variant and what changed, so the variants
  after it are unaffected and the blame stays where it belongs.
* **Crashes and hangs, with pytest-xdist** (``-n N``; ``scripts/test.sh`` uses ``-n 2``). xdist
  runs the tests in worker processes and replaces one that dies, failing the test it was running.
  Before each test a worker notes which test of which variant it runs, since when and under what
  limit (one small file per worker); a test that runs past ``--attn-test-timeout`` makes the
  worker dump its stacks and exit (:func:`faulthandler.dump_traceback_later`). Told of the death,
  the controller words the failure (the variant, and whether it crashed or ran past the limit) and
  adds the variant to the run's crash ledger; each later test of that variant is skipped with a
  reason naming the test that took the worker down. The rest of the run goes on, and xdist's
  restart limit (4 per worker) is not spent on one variant's problems. The controller also watches
  the worker processes (:class:`DeadWorkerWatch`): a worker that died while a process it forked
  holds its pipe open is ended at once, not when that process exits.
* **A poisoned CUDA context.** A kernel that trips a device-side assert or an illegal address
  leaves its process's CUDA context unusable: every later CUDA call raises, and every later test
  would fail with an error that is not its own. After a test fails, the context is probed (a
  synchronize and a one-element op; nothing runs when CUDA was never initialised). A broken one
  fails that test's teardown, naming the variant (or the test) and the error. Under xdist the worker
  then exits, the controller words it as this variant's doing, its other tests are skipped and a
  fresh worker with a fresh context runs the rest. Without xdist the later variant tests of this
  process are skipped with a reason naming the culprit.
* **An exit call.** A variant that calls ``os._exit`` or ``sys.exit`` fails its test, naming
  itself and the status, and the run goes on (:class:`ExitGuard`). ``os._exit`` ends a process with
  no clean-up: without xdist the run had stopped mid-way with the kernel's status, 0 included, so a
  CI job read a partial run as a pass.
* **Without xdist** a crash ends the run, as it would without the suite; the run header says so
  when external variants are loaded.
"""

from __future__ import annotations

import faulthandler
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from . import frames, isolation, registry, torch_state
from .exits import REAL_EXIT, OsExitCalled, os_exit_raises
from .parent_watch import process_alive

LEDGER_KEY = "attnsuite_crash_ledger"  # the controller's folder, handed to each worker in workerinput
CRASHED = "crashed.jsonl"  # one JSON line per variant that took a worker down
FAULTS_PREFIX = "faults-"  # faults-<worker id>.log: that worker's faulthandler dump, if it died with one
DEFAULT_TEST_TIMEOUT_S = 900.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnsuite")
    group.addoption("--attn-test-timeout", type=float, default=DEFAULT_TEST_TIMEOUT_S, metavar="SECONDS",
                    help="with pytest-xdist (-n N): a test that runs longer ends its worker, fails as having run "
                         "past the limit, and its variant's other tests are skipped; without xdist it ends the "
                         "run, naming the test "
                         f"(default {DEFAULT_TEST_TIMEOUT_S:g}; 0 = no limit)")


# The plugin's own deliberate exits (a hung test's timer, a worker with a broken CUDA context) use the
# real function: ExitGuard replaces os._exit while a variant's test runs.


def variant_name(item: pytest.Item) -> Optional[str]:
    """The name of the variant a test checks (its ``variant`` parameter), or None for other tests."""
    variant = getattr(getattr(item, "callspec", None), "params", {}).get("variant")
    name = getattr(variant, "name", None)
    return name if isinstance(name, str) else None


def pytest_configure(config: pytest.Config) -> None:
    timeout = config.getoption("--attn-test-timeout")
    if timeout is None or timeout < 0:
        raise pytest.UsageError(f"--attn-test-timeout: {timeout!r} is not a number of seconds >= 0")
    config.pluginmanager.register(StateGuard(), "attnsuite-state-guard")
    workerinput = getattr(config, "workerinput", None)
    worker = None
    if workerinput is None:
        config.pluginmanager.register(CrashController(), "attnsuite-crash-controller")
        if not getattr(config.option, "numprocesses", None) and timeout and math.isfinite(timeout):
            config.pluginmanager.register(InProcessLimit(timeout), "attnsuite-in-process-limit")
    elif workerinput.get(LEDGER_KEY):
        worker = CrashWorker(Path(workerinput[LEDGER_KEY]), str(workerinput.get("workerid")), timeout)
        config.pluginmanager.register(worker, "attnsuite-crash-worker")
    config.pluginmanager.register(ContextGuard(worker), "attnsuite-context-guard")
    config.pluginmanager.register(RaisedInterrupt(), "attnsuite-raised-interrupt")
    config.pluginmanager.register(ExitGuard(), "attnsuite-exit-guard")


class ExitGuard:
    """A variant that calls ``os._exit(n)`` or ``sys.exit(n)`` in its test fails that test, naming itself
    and ``n``, and the run goes on.

    During a variant's test ``os._exit`` raises instead of ending the process (:mod:`attnsuite.exits`).
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        name = variant_name(item)
        if name is None:
            return (yield)
        try:
            with os_exit_raises():
                return (yield)
        except OsExitCalled as exc:
            failure = (f"variant {name} called os._exit({exc.status!r}), which would have ended the test run "
                       "(with that status, without pytest-xdist): it fails this test and the run goes on")
        except SystemExit as exc:
            failure = (f"variant {name} called sys.exit({exc.code!r}) (SystemExit): a kernel must not end the "
                       "process; it fails this test and the run goes on")
        # failed outside the handler: inside it, the report had begun with the caught exception ("1")
        # and "During handling of the above exception, another exception occurred"
        pytest.fail(failure, pytrace=False)


class RaisedInterrupt:
    """A ``KeyboardInterrupt`` that a test's code raised itself fails that test and the run goes on;
    one from a real Ctrl-C (SIGINT reached this process) still ends the run.

    pytest ends the session on any KeyboardInterrupt: a variant raising one had stopped the run
    after its first test (under xdist, every worker's), leaving the other variants unchecked. A
    SIGINT handler that notes the signal and then does what the previous one did tells the two apart.

    SIGTERM (a cancelled CI job: GitHub, GitLab, Jenkins and Kubernetes send it) ends the session as
    Ctrl-C does, in the process that runs the session (not in xdist workers, which their controller
    ends): the interrupted summary, gate.md and the --attn-resume hint are written, where the default
    had killed the process with none of them. A second SIGTERM kills at once.
    """

    def __init__(self) -> None:
        self.signalled = False
        self.installed = False
        self.previous: Any = None
        self.previous_term: Any = None
        self.summarising: Optional[pytest.Config] = None  # set once the run's files are written

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        # pytest prints the summary after every pytest_sessionfinish hook has run: the benchmark
        # JSON, the gate's files and a recorded baseline are written by now; only the screen is left.
        # Not in an xdist worker: its summary goes nowhere, and its SIGINT then is execnet's own way of
        # ending a worker still busy 5 s after the controller's shutdown (it signals itself). Armed
        # there, a run whose every test had passed ended on the shared stderr with "interrupted while
        # the summary was printed" (seen twice under -n 2, a worker slow to tear down).
        if not hasattr(config, "workerinput"):
            self.summarising = config

    def _after_the_run(self) -> None:
        """A Ctrl-C while the summary prints: the run had finished, so say what it wrote and stop
        (pytest's interrupted status) instead of a traceback from wherever the summary was. It had
        shown a 60-line traceback with no word that the baseline had been recorded."""
        from . import plugin_gate  # imported by now (a sibling plugin): no import at signal time

        written = plugin_gate.written_lines(self.summarising) if self.summarising is not None else []
        pytest.exit("attnsuite: interrupted while the summary was printed; the run itself had finished"
                    + "".join(f"\n  {line}" for line in written), returncode=pytest.ExitCode.INTERRUPTED)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.signalled = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("SIGTERM")

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.signalled = True
        if self.previous is signal.SIG_IGN:
            return
        if self.summarising is not None:
            self._after_the_run()
        if callable(self.previous):
            self.previous(signum, frame)
        raise KeyboardInterrupt

    def pytest_configure(self, config: pytest.Config) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
            self.installed = True
            if not hasattr(config, "workerinput") and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                self.previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: no handler can be set, every interrupt ends the run
            pass

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.installed and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)
        if self.previous_term is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self.previous_term)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        try:
            return (yield)
        except KeyboardInterrupt:
            if self.signalled or not self.installed:
                raise
            name = variant_name(item)
            who = f"variant {name}" if name is not None else "this test"
            pytest.fail(f"{who} raised KeyboardInterrupt itself (no Ctrl-C reached the run): it fails this "
                        "test and the run goes on", pytrace=False)


def in_process_warning(config: pytest.Config) -> Optional[str]:
    """What a run of outside code's correctness tests in this process should know, or None."""
    # code from outside the repository: named on the command line or in the environment, or loaded
    # from an installed package's entry point (the registry keeps each variant's origin)
    external = (config.getoption("--attn-variants", default=None) or os.environ.get("ATTNSUITE_VARIANTS")
                or registry.external_variants())
    under_xdist = bool(getattr(config.option, "numprocesses", None))
    if not external or under_xdist or hasattr(config, "workerinput") or config.getoption("benchmark_only", False):
        return None
    return ("attnsuite: correctness tests run in this process: a variant that crashes or hangs ends the run; "
            "with -n 1 or more (pytest-xdist) it fails its test, its other tests are skipped and the run goes on")


def pytest_report_header(config: pytest.Config) -> Optional[list[str]]:
    warning = in_process_warning(config)
    return [warning] if warning else None


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # -q hides the header, and a segfaulting variant then ended the run with Python's fatal-error dump
    # alone (a first-time user's trial): under -q the warning is its own line
    config = session.config
    warning = in_process_warning(config) if config.get_verbosity() < 0 else None
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if warning and reporter is not None:
        reporter.write_line(warning)


class InProcessLimit:
    """``--attn-test-timeout`` without pytest-xdist: a variant test that runs past it ends the run.

    Without a worker process a hung test cannot be stopped alone (the header says so), but a run that
    hangs for ever names nothing: this prints which test ran past the limit and every thread's stack,
    then exits (status 1), as a crash would end such a run."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
        if variant_name(item) is None:
            return (yield)
        timer = threading.Timer(self.timeout, self._expire, args=(item.config, item.nodeid))
        timer.daemon = True
        timer.start()
        try:
            return (yield)
        finally:
            timer.cancel()

    def _expire(self, config: pytest.Config, nodeid: str) -> None:
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is not None:  # the test's output capture holds fd 2: the message must reach the terminal
            capman.suspend_global_capture(in_=False)
        sys.stderr.write(f"\nattnsuite: {nodeid} ran past the {self.timeout:g} s limit (--attn-test-timeout); "
                         "without pytest-xdist a hung test cannot be stopped alone, so the run ends here "
                         "(with -n 1 or more it fails alone and the run goes on). Every thread's stack:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        REAL_EXIT(1)


class StateGuard:
    """Undo and report a change of torch's global state that a variant's test leaves behind."""

    def __init__(self) -> None:
        self.state: Optional[torch_state.State] = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # The state includes TorchDynamo's settings, and reading them imports it (the built-in variants
        # no longer do): read once here, outside every test's --attn-test-timeout, which the import
        # had run past on a loaded 2-core machine (5 s limit; "ran past the limit ... in torch/_dynamo")
        if any(variant_name(item) is not None for item in session.items):
            torch_state.snapshot()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # taken before each variant test, not once: a machinery test in the same process may change
        # the state on purpose, and only what happens during a variant's own test is its doing
        self.state = torch_state.snapshot() if variant_name(item) is not None else None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
        result = yield  # every fixture is torn down first: a fixture that restores what it set is fine
        name = variant_name(item)
        if name is not None and self.state is not None:
            changed = torch_state.end_case(self.state)
            if changed:
                pytest.fail(f"variant {name} left torch's global state changed ({'; '.join(changed)}); it was "
                            "put back for the tests after it", pytrace=False)
        return result


def cuda_context_error() -> Optional[str]:
    """None while this process's CUDA context works (or was never started), else the error that a
    synchronize and a one-element op raise: after a device-side assert or an illegal address, every
    CUDA call of the process fails the same way."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises is the finding
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


class ContextGuard:
    """After a test fails, make sure it did not leave the process's CUDA context broken.

    Every failed test is probed, not only a variant's: a machinery test that breaks the context
    would otherwise have the next failing variant test blamed for it."""

    def __init__(self, worker: Optional["CrashWorker"]) -> None:
        self.worker = worker  # set under xdist: the worker is ended and replaced instead
        self.poisoned: Optional[str] = None  # who broke it, where and how (the skip reason's core)
        self._failed: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        report = yield
        if report.failed and report.when in ("setup", "call"):
            self._failed.add(item.nodeid)
            if self.worker is not None and self.poisoned is None:
                self._end_worker_if_poisoned(item, report)
        return report

    def _end_worker_if_poisoned(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Under xdist: a broken context ends the worker before this failure is reported, and the
        controller's one report of the test carries both the check's failure and the broken context
        (a report now and the worker's death after it would list the test as failed twice)."""
        error = cuda_context_error()
        if error is None:
            return
        crash = getattr(report.longrepr, "reprcrash", None)  # an exception's own message, when there is one
        text = (crash.message if crash is not None else getattr(report, "longreprtext", "")) or ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # a check's message (pytest.fail without a traceback) heads with "<variant> on <problem>: <check>
        # FAILED" and says what was wrong on the next line
        failure = "; ".join(lines[:1] if crash is not None else lines[:2])
        what = f"left this process's CUDA context unusable ({error})"
        if failure:
            what += f" after failing its {report.when}: {failure[:300]}"
        self._exit_worker(item, what)

    def _exit_worker(self, item: pytest.Item, what: str) -> None:
        """End this xdist worker on purpose; the controller reads the note when the worker dies and
        words the test's failure from it (the variant, ``what``), and a fresh worker runs the rest."""
        self.worker.amend_note(item.nodeid, what=what, how="the worker exited so that the tests after it get "
                               "a fresh CUDA context")
        sys.stdout.flush()
        sys.stderr.flush()
        REAL_EXIT(70)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.poisoned is not None and variant_name(item) is not None:
            pytest.skip(f"{isolation.NOT_RUN_PREFIX}{self.poisoned}; run with -n 1 or more (pytest-xdist) and "
                        "only its worker is replaced")

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
        result = yield
        if item.nodeid not in self._failed or self.poisoned is not None:
            return result
        error = cuda_context_error()
        if error is None:
            return result
        name = variant_name(item)
        subject = f"variant {name}" if name is not None else "this test"
        what = f"left this process's CUDA context unusable ({error})"
        if self.worker is not None:  # broken after its failure was reported (a fixture's teardown)
            self._exit_worker(item, what)
        who = f"variant {name}" if name is not None else "a test"
        self.poisoned = f"{who} left this process's CUDA context unusable in {item.nodeid} ({error})"
        pytest.fail(f"{subject} {what}: the later variant tests of this process are skipped", pytrace=False)
        return result


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class CrashWorker:
    """In an xdist worker: skip a variant that took a worker down, note each test, arm the time limit."""

    def __init__(self, folder: Path, worker_id: str, timeout: float) -> None:
        self.folder = folder
        self.note_path = folder / f"running-{worker_id}.json"
        self.fault_path = folder / f"{FAULTS_PREFIX}{worker_id}.log"
        self.timeout = timeout
        self._seen: tuple[int, int] = (-1, -1)
        self._crashed: dict[str, dict[str, Any]] = {}
        self._faults: Optional[Any] = None

    def _fault_file(self) -> Any:
        """The file faulthandler writes a fatal signal's or a time limit's stack dump to, where the
        controller reads it to word the failure (the signal, the variant's frame). Armed at the first
        test, after pytest's own faulthandler set-up, which would otherwise take stderr back."""
        if self._faults is None:
            self._faults = open(self.fault_path, "w", encoding="utf-8")
            faulthandler.enable(file=self._faults, all_threads=True)
        return self._faults

    def _write_note(self, note: dict[str, Any]) -> None:
        tmp = self.note_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(note), encoding="utf-8")
        os.replace(tmp, self.note_path)  # the controller never reads half a note

    def amend_note(self, nodeid: str, **fields: str) -> None:
        """Add ``what`` happened (and ``how`` the worker ended) to the running test's note, before the
        worker ends itself on purpose."""
        note = _read_json(self.note_path) or {"nodeid": nodeid}
        note.update(fields)
        self._write_note(note)

    def crashed(self) -> dict[str, dict[str, Any]]:
        """The crash ledger, by variant name (read again only when the file changed)."""
        path = self.folder / CRASHED
        try:
            st = path.stat()
        except OSError:
            return self._crashed
        if (st.st_mtime_ns, st.st_size) != self._seen:
            self._seen = (st.st_mtime_ns, st.st_size)
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line being written now; read in full next time
                self._crashed.setdefault(entry.get("variant"), entry)
        return self._crashed

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
        self._write_note({"nodeid": item.nodeid, "variant": variant_name(item), "started": time.time(),
                          "timeout": self.timeout})
        faults = self._fault_file()
        if self.timeout:
            faulthandler.dump_traceback_later(self.timeout, exit=True, file=faults)
        try:
            return (yield)
        finally:
            if self.timeout:
                faulthandler.cancel_dump_traceback_later()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        name = variant_name(item)
        entry = self.crashed().get(name) if name is not None else None
        if entry is not None:
            pytest.skip(f"variant {name} {entry.get('what', 'took a test worker down')} in "
                        f"{entry.get('nodeid')}: {isolation.OTHERS_NOT_RUN} (that test's failure says more)")


LEDGER_PREFIX = "attnsuite-crashes-"  # + the controller's pid + "-": a folder whose controller died is found


def sweep_stale_ledgers(tmp: Path) -> list[Path]:
    """Remove the crash-ledger folders under ``tmp`` whose controller process is gone (a killed run
    could not remove its own: one per SIGKILLed run had stayed); the ones removed."""
    removed = []
    for folder in tmp.glob(f"{LEDGER_PREFIX}*-*"):
        pid = folder.name[len(LEDGER_PREFIX):].split("-")[0]
        if folder.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _worker_popen(node: Any) -> Any:
    """The ``subprocess.Popen`` of an xdist worker started on this machine (execnet's popen
    gateway), or None (another kind of gateway, or an xdist/execnet that keeps it elsewhere)."""
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    return popen if callable(getattr(popen, "poll", None)) else None


def exit_wording(status: Optional[int]) -> str:
    """``killed by SIGKILL`` / ``exit status 3`` / "" (not known) for a process's exit status."""
    if status is None:
        return ""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class DeadWorkerWatch:
    """In the xdist controller: end the node of a worker whose process died while its pipe stayed open.

    xdist learns that a worker died from the end of its pipe (execnet's channel reads EOF). A process
    the worker forked (a compile server, a helper a variant started) inherits that pipe, and while it
    lives the pipe never ends: the controller waited for the helper (one that never exits: for ever),
    and the crash was then worded by its elapsed time as having run past --attn-test-timeout. So this
    looks at the worker processes themselves (the controller's children: their state, not their pipe)
    every POLL_S, and a node whose process has been dead for GRACE_S and that xdist has not ended is
    ended as xdist ends one whose pipe closed: an "errordown" event, so xdist fails the test it was
    running (pytest_handlecrashitem words it), replaces the worker and the run goes on.
    """

    POLL_S = 0.5
    GRACE_S = 2.0  # an ordinary death's EOF reaches xdist within milliseconds: that path is left to it

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: list[tuple[Any, Any, Any]] = []  # (node, its Popen, xdist's own putevent)
        self.ended: set[int] = set()  # id() of the nodes whose "errordown" was queued (by xdist or this watch)
        self.died_at: dict[str, float] = {}  # worker id -> when its process was first seen dead
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def add(self, node: Any) -> None:
        popen = _worker_popen(node)
        putevent = getattr(node, "putevent", None)
        if popen is None or not callable(putevent):
            return  # nothing to watch: xdist's own detection stands
        # Every event of the node passes this filter, so that a node is ended once: by xdist's reader
        # thread (its pipe closed) or by this watch, whichever comes first under the lock. The late
        # EOF of a pipe the helper held (minutes later) is then dropped, not a second "errordown".
        def filtered(event: Any, _node_id: int = id(node), _put: Any = putevent) -> None:
            with self.lock:
                if _node_id in self.ended:
                    return
                if event[0] == "errordown":
                    self.ended.add(_node_id)
                _put(event)
        node.putevent = filtered
        with self.lock:
            self.watched.append((node, popen, putevent))
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="attnsuite-dead-worker-watch", daemon=True)
            self.thread.start()

    def exit_status(self, node: Any, wait_s: float = 0.0) -> Optional[int]:
        """The worker's exit status, waiting up to ``wait_s`` for it to end (None: alive or unknown)."""
        popen = _worker_popen(node)
        if popen is None:
            return None
        try:
            return popen.wait(timeout=wait_s) if wait_s > 0 else popen.poll()
        except Exception:  # noqa: BLE001 - still running (TimeoutExpired), or not ours to wait for
            return None

    def _run(self) -> None:
        while not self.stop.wait(self.POLL_S):
            with self.lock:
                watched = list(self.watched)
            for node, popen, putevent in watched:
                worker = str(getattr(getattr(node, "gateway", None), "id", "?"))
                try:
                    status = popen.poll()  # reaps it; execnet's own wait() later gets the same status
                except Exception:  # noqa: BLE001
                    status = None
                if status is None:
                    continue
                died_at = self.died_at.setdefault(worker, time.time())
                if time.time() - died_at < self.GRACE_S:
                    continue
                with self.lock:
                    self.watched = [w for w in self.watched if w[0] is not node]
                    if id(node) in self.ended or getattr(node, "_down", False):  # xdist saw it end already
                        continue
                    node._down = True  # as xdist's reader does on EOF (a shutdown is then not sent to it)
                    self.ended.add(id(node))
                    how = exit_wording(status)
                    putevent(("errordown", {"node": node, "error": (
                        f"attnsuite: worker process {popen.pid} died ({how}) but its pipe stayed open (a "
                        "process it started still holds it); the node was ended without waiting for it")}))


class CrashController:
    """In the xdist controller: the crash ledger's folder, and the wording of a worker's death."""

    def __init__(self) -> None:
        self.folder: Optional[Path] = None
        self.watch = DeadWorkerWatch()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.folder is None:
            sweep_stale_ledgers(Path(tempfile.gettempdir()))
            self.folder = Path(tempfile.mkdtemp(prefix=f"{LEDGER_PREFIX}{os.getpid()}-"))
        node.workerinput[LEDGER_KEY] = str(self.folder)
        self.watch.add(node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        if self.folder is None:
            return None
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", "?")
        note = _read_json(self.folder / f"running-{worker}.json")
        if note is None or note.get("nodeid") != crashitem:
            return None  # not a test this plugin noted: xdist's own message stands
        timeout = note.get("timeout") or 0
        # how long the test ran: up to the worker's death when the watch saw it (xdist may hear of a
        # death late), else up to now (the pipe's EOF comes with the death)
        status = self.watch.exit_status(getattr(report, "node", None), wait_s=1.0)
        died_at = self.watch.died_at.get(worker, time.time())
        lived = died_at - float(note.get("started") or 0)
        dump, where = isolation.stack_in(isolation.tail_of(str(self.folder / f"{FAULTS_PREFIX}{worker}.log"), 1000, 256 * 1024),
                                         frames.library_roots())
        fatal = dump.splitlines()[0] if dump.startswith("Fatal Python error") else ""
        if note.get("what"):  # the worker ended itself and said why
            what, how = str(note["what"]), str(note.get("how", "the worker exited"))
        elif timeout and lived >= timeout - 1 and not (status is not None and status < 0):
            # the limit's watchdog (faulthandler) exits with status 1; a process killed by a signal, or
            # dead before the limit, did not run past it, however late xdist heard of it
            what = f"ran past the {timeout:g} s limit (--attn-test-timeout)"
            how = "the worker dumped its threads' stacks (below) and exited"
        elif fatal:  # faulthandler names the signal: "Fatal Python error: Segmentation fault"
            what = f"crashed the test process ({fatal})"
            how = "the process died"
        else:
            what = "took the test process down (a crash, an abort or an exit)"
            how = "the process died" + (f" ({exit_wording(status)})" if status is not None else "")
        if where:
            how += f", at {where}"
        variant = note.get("variant")
        subject = f"variant {variant}" if variant else "this test"
        drawn = f" on problem {note['problem']}" if note.get("problem") else ""
        message = (f"{subject} {what} in {crashitem}{drawn}: {how}; xdist worker {worker} was replaced and the run "
                   "went on")
        if variant:
            message += f"; the other tests of {variant} are skipped"
            with open(self.folder / CRASHED, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"variant": variant, "nodeid": crashitem, "what": what}) + "\n")
        if dump:
            message += "\n\nthe worker's stack dump (faulthandler):\n" + dump
        report.longrepr = message
        return None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.watch.stop.set()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def note_running_problem(config: pytest.Config, nodeid: str, problem_id: str) -> None:
    """Tell the crash report which problem the running test is on (a test that draws its problems,
    e.g. with Hypothesis): a variant that crashed or hung there had been reported on a test id that
    named no shape. Does nothing outside an xdist worker of this plugin."""
    worker = config.pluginmanager.get_plugin("attnsuite-crash-worker")
    if worker is not None:
        worker.amend_note(nodeid, problem=problem_id)
