"""Benchmark options, the isolated case runner's pytest side, and the pytest-benchmark integration.

Every benchmark case is (workload, variant, mode, problem), one pytest item with the id
``workload/variant/mode/problem``. The case itself runs in a worker process
(:mod:`attnsuite.isolation`, :mod:`attnsuite.worker`) through the pytest-free case runner
(:mod:`attnsuite.runner`), so a case that segfaults, aborts, poisons the CUDA context or hangs
becomes a ``crash`` or ``timeout`` record and the run goes on. Each finished case is appended to
the run journal (:mod:`attnsuite.journal`) before the next starts; ``--attn-resume`` carries a
killed run on from there.

pytest-benchmark integration: the stats pytest-benchmark reports and writes are fed from the
suite's own device-correct samples (its stock clock would time only the launch on a GPU); the
record goes in ``extra_info``; cases without samples (skipped, out of memory, error, crash) are
written by :func:`pytest_benchmark_update_json` beside that list, in ``attnsuite.unmeasured`` (same
entry form, zero rounds), so they never vanish from the results and pytest-benchmark's own
``compare`` does not show them as 0 ns results. The machine fingerprint goes in ``machine_info`` and at top
level, with the instance calibration probes (:mod:`attnsuite.calibrate`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest
import torch

from . import baseline, filelock, fingerprint, frames, journal, memory, progress, registry, summary, timing, workloads
from .dispatch import Dispatcher, visible_gpus
from .isolation import STDERR_TAIL_LINES, Failure, WorkerPool, WorkerStartError, stack_in
from .output_paths import output_problem
from .plugin import PROBLEM_FILES
from .record import FAILING_OUTCOMES, MODES, NOT_RUN_AFTER, CaseRecord
from .runner import BenchCase, RunSpec, add_scaling_efficiency, bench_cases
from .session_failure import fail_session
from .wording import none_of
from .worker import Worker

DEFAULT_TIMEOUT_S = 300.0  # per case; compiling FlexAttention's backward on 2 CPU cores takes about a minute
MAX_CPU_THREADS = 1024


# ----------------------------------------------------------------------------------------- options

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnsuite-bench", "attention suite benchmarks")
    group.addoption("--attn-tier", choices=workloads.TIERS, default=None,
                    help="workload tier: quick (default on CPU) or full (default when CUDA is present)")
    group.addoption("--attn-device", default=None,
                    help="device to benchmark on: cpu or cuda[:i] (default: cuda when present, else cpu)")
    group.addoption("--attn-dtype", default=None, choices=("float32", "bfloat16", "float16", "float64"),
                    help="run every workload in this dtype (default: each entry's own; bf16 full, fp32 quick)")
    group.addoption("--attn-workload", action="append", default=[], metavar="NAME",
                    help=f"benchmark only these workloads (repeatable, or comma-separated): "
                         f"{', '.join(workloads.WORKLOADS)}")
    group.addoption("--attn-mode", action="append", default=[], metavar="MODE",
                    help="benchmark only these modes (repeatable, or comma-separated): fwd, bwd, fwd+bwd, decode "
                         "(the layers that declare incremental decoding)")
    group.addoption("--attn-mem-cap", default=None, metavar="BYTES",
                    help="memory cap, e.g. 24GiB: on CUDA the allocator is capped so a large GPU stands in "
                         "for a smaller one; on CPU each case's allocations are limited to it (and the "
                         "out-of-memory guard predicts against it; default: half of the available memory)")
    group.addoption("--attn-inject-slowdown", action="append", default=[], metavar="VARIANT=FRACTION",
                    help="make VARIANT really slower by FRACTION inside the timed region (GPU spin kernel / "
                         "CPU busy-wait); for measuring the gate's detection rate. Off by default")
    group.addoption("--attn-cpu-threads", default="1", metavar="N",
                    help="torch CPU threads while benchmarking on CPU (default 1: OpenMP threads spinning on a "
                         "shared or oversubscribed machine make CPU timings swing, docs/benchmarks.md; 0 keeps "
                         "torch's default)")
    group.addoption("--attn-isolation", choices=("process", "none"), default="process",
                    help="process (default): every case runs in a worker process, so a crash, abort or hang "
                         "is that case's outcome; none: in the pytest process (for debuggers)")
    group.addoption("--attn-timeout", default=str(DEFAULT_TIMEOUT_S), metavar="SECONDS",
                    help=f"per-case time limit with process isolation (default {DEFAULT_TIMEOUT_S:g}; 0: none); "
                         "a case past it is killed and recorded as 'timeout'")
    group.addoption("--attn-journal", default=None, metavar="PATH",
                    help="where finished cases are written as they finish (default: <--benchmark-json>.journal."
                         "jsonl, else .attnsuite/journal.jsonl under the rootdir); removed when the run ends")
    group.addoption("--attn-resume", action="store_true", default=False,
                    help="carry on a killed run: cases already in the journal are not run again")
    group.addoption("--attn-gpus", default="all", metavar="N",
                    help="with --attn-device cuda: spread the cases over N GPUs of this host, one worker "
                         "process each (default all visible; 1: one GPU). cuda:N and cpu use one device")
    group.addoption("--attn-device-time", choices=("on", "off"), default="on",
                    help="on CUDA, also measure host-independent device time (CUDA graph replay or kernel "
                         "sum); default on")


def _fail_usage(message: str) -> None:
    raise pytest.UsageError(f"attnsuite: {message}")


def _number(option: str, text: str, kind: type, low: float, high: float) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        _fail_usage(f"{option} expects a {'whole ' if kind is int else ''}number, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
        _fail_usage(f"{option} must be between {low:g} and {high:g}, got {text!r}")
    return value


def _device(text: Optional[str]) -> str:
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        _fail_usage(f"--attn-device must be cpu, cuda or cuda:N, got {text!r}")
    if m.group(1) == "cuda":
        if not torch.cuda.is_available():
            _fail_usage(f"--attn-device {text}: no CUDA device on this machine")
        index = int(m.group(2) or 0)
        if index >= torch.cuda.device_count():
            _fail_usage(f"--attn-device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def spec_from_config(config: pytest.Config) -> RunSpec:
    """Read and validate the benchmark options (errors name the option and the value at fault)."""
    device = _device(config.getoption("--attn-device"))
    on_gpu = device.startswith("cuda")
    tier = config.getoption("--attn-tier") or ("full" if on_gpu else "quick")
    names = tuple(config.getoption("--attn-workload"))
    for name in names:
        if name not in workloads.WORKLOADS:
            _fail_usage(f"--attn-workload {name!r} is unknown; known: {', '.join(workloads.WORKLOADS)}")
    for mode in config.getoption("--attn-mode"):
        if mode not in MODES:
            _fail_usage(f"--attn-mode {mode!r} is unknown; known: {', '.join(MODES)}")
    modes = tuple(dict.fromkeys(config.getoption("--attn-mode"))) or MODES
    cap = None
    if config.getoption("--attn-mem-cap") is not None:
        try:
            cap = memory.parse_bytes(config.getoption("--attn-mem-cap"))
        except ValueError as exc:
            _fail_usage(f"--attn-mem-cap: {exc}")
        if cap <= 0:
            _fail_usage(f"--attn-mem-cap must be more than 0 bytes, got {config.getoption('--attn-mem-cap')!r}")
    inject: dict[str, float] = {}
    for spec in config.getoption("--attn-inject-slowdown"):
        name, sep, frac = spec.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name or not 0 < value < 100:
            _fail_usage(f"--attn-inject-slowdown expects VARIANT=FRACTION with 0 < FRACTION < 100, got {spec!r}")
        try:
            registry.get(name)
        except registry.UnknownVariantError as exc:
            _fail_usage(f"--attn-inject-slowdown: {exc}")
        inject[name] = value
    threads = _number("--attn-cpu-threads", config.getoption("--attn-cpu-threads"), int, 0, MAX_CPU_THREADS)
    return RunSpec(tier=tier, device=device, dtype=config.getoption("--attn-dtype"), workloads=names, modes=modes,
                   mem_cap=cap, inject=tuple(sorted(inject.items())), cpu_threads=0 if on_gpu else threads,
                   variant_modules=registry.named_sources(config.getoption("--attn-variants")),
                   problem_files=tuple(config.stash.get(PROBLEM_FILES, [])),
                   only=tuple(config.getoption("--attn-only")),
                   device_time=config.getoption("--attn-device-time") == "on")


def _timeout(config: pytest.Config) -> Optional[float]:
    value = _number("--attn-timeout", config.getoption("--attn-timeout"), float, 0, 7 * 24 * 3600)
    return value or None


def gpu_count(config: pytest.Config) -> int:
    """How many GPUs the run spreads its cases over (validated ``--attn-gpus``)."""
    text = str(config.getoption("--attn-gpus"))
    device = get_spec(config).device
    if device != "cuda":  # cpu, or one named GPU
        if text not in ("all", "1"):
            _fail_usage(f"--attn-gpus {text}: only with --attn-device cuda (this run uses {device})")
        return 1
    visible = torch.cuda.device_count()
    if text == "all":
        return max(1, visible)
    return _number("--attn-gpus", text, int, 1, visible)


def benchmark_json_path(config: pytest.Config) -> Optional[Path]:
    """The file ``--benchmark-json`` names, or None. pytest-benchmark versions hand the option over as a
    path (``Path`` or string) or as an open file (argparse.FileType, whose ``name`` is the path given):
    each comes back as the path. (A ``Path``'s own ``name`` is only its last part: not used.)"""
    value = config.getoption("benchmark_json", default=None)
    if value is None or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    return Path(value.name)


def _sources(spec: RunSpec) -> dict[str, str]:
    """Digests of the code and problem files this run's cases come from (see
    journal.source_digests): the files named by options, the package or file of every module
    that registered variants from outside (entry points, ATTNSUITE_VARIANTS, --attn-variants, by
    module name or by path), the modules imported from beside them, and the suite's own package (its
    timing and checks: a resume had mixed two versions of them)."""
    external = [*registry.entry_point_modules(), *(name or spec for spec, name in registry.external_sources())]
    return journal.source_digests([*spec.variant_modules, *spec.problem_files,
                                   *journal.code_locations(["attnsuite", *external]), *journal.code_beside(external)])


def _journal_path(config: pytest.Config) -> Path:
    named = config.getoption("--attn-journal")
    if named:
        return Path(named)
    json_path = benchmark_json_path(config)
    if json_path is not None:
        return Path(f"{json_path}.journal.jsonl")
    return Path(config.rootpath) / ".attnsuite" / "journal.jsonl"


_SPEC = pytest.StashKey[RunSpec]()
_RUNNER = pytest.StashKey["BenchRunner"]()
_RESUMED = pytest.StashKey[dict]()
_RUN_ID = pytest.StashKey[str]()


def run_id(config: pytest.Config) -> str:
    """This session's identity, written in its benchmark JSON and its gate JSON: `attnsuite report
    --gate-json` refuses a gate JSON of another run (one that judged no case had nothing else to tell
    it by, and its "not compared" was shown as the result's verdict)."""
    if _RUN_ID not in config.stash:
        import uuid

        config.stash[_RUN_ID] = uuid.uuid4().hex
    return config.stash[_RUN_ID]


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # Every option is validated here, before collection: a bad one is a usage error that names it
    # before any benchmark time is spent. (trylast: the variants are loaded by then.)
    config.stash[_SPEC] = spec_from_config(config)
    _timeout(config)
    gpu_count(config)
    named = config.getoption("--attn-journal")
    if named and Path(named).is_dir():
        _fail_usage(f"--attn-journal {named}: is a directory")
    json_path = benchmark_json_path(config)
    if json_path is not None:
        why = output_problem(json_path)
        if why:
            _fail_usage(f"--benchmark-json {json_path}: {why}")
        # pytest-benchmark writes it after every case has run, into a folder that must exist by then
        json_path.parent.mkdir(parents=True, exist_ok=True)
    if benchmarks_requested(config) and not config.getoption("collectonly"):
        _lock_outputs(config)  # before the journal is read: never one that a running run is writing
    if config.getoption("--attn-resume") and benchmarks_requested(config):
        try:
            config.stash[_RESUMED] = journal.read(_journal_path(config), config.stash[_SPEC].to_json(),
                                                  fingerprint_of(config)["id"], _sources(config.stash[_SPEC]),
                                                  case_timeout=_timeout(config))
        except journal.JournalError as exc:
            _fail_usage(f"--attn-resume: {exc}")


_RUN_LOCK = pytest.StashKey[tuple[int, Path]]()


def _lock_outputs(config: pytest.Config) -> None:
    """Refuse a second benchmark run into the files a running one writes (its journal, and the
    benchmark JSON beside it): two runs into one folder had each exited 0, one run's results lost
    and the journal shared. The lock is a file beside the journal, held while the run lasts."""
    path = Path(f"{_journal_path(config)}.lock")
    owner = f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}, {' '.join(sys.argv)[:300]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = filelock.hold_exclusive_file(path, owner)
    except OSError as exc:  # a journal folder that cannot be made or written
        _fail_usage(f"--attn-journal {_journal_path(config)}: cannot write beside it ({exc.strerror or exc})")
    except filelock.HeldElsewhere as exc:
        _fail_usage(f"another benchmark run is writing {benchmark_json_path(config) or _journal_path(config)} "
                    f"and its journal ({exc}): wait for it, or give this run its own output (--benchmark-json, "
                    f"OUT= for scripts/bench.sh; {path} is its lock)")
    config.stash[_RUN_LOCK] = (fd, path)


def pytest_unconfigure(config: pytest.Config) -> None:
    held = config.stash.get(_RUN_LOCK, None)
    if held is not None and held[0] >= 0:
        held[1].unlink(missing_ok=True)  # unlinked while still held: no run can take a stale one
        os.close(held[0])


def benchmarks_requested(config: pytest.Config) -> bool:
    """Whether this session runs the benchmarks: ``--benchmark-only``, or a path under
    ``<rootdir>/bench`` named on the command line."""
    if config.getoption("benchmark_only", False):
        return True
    bench = (Path(config.rootpath) / "bench").resolve()
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == bench or bench in path.parents:
            return True
    return False


def get_spec(config: pytest.Config) -> RunSpec:
    """The run's validated benchmark options."""
    if _SPEC not in config.stash:
        config.stash[_SPEC] = spec_from_config(config)
    return config.stash[_SPEC]


_PARAMETRISED = pytest.StashKey[frozenset]()


def case_list(config: pytest.Config) -> list[BenchCase]:
    """Every benchmark case this session's options select, in run order (the benchmark module is
    parametrised with them; :func:`parametrised_keys` keeps their keys)."""
    cases = bench_cases(get_spec(config))
    config.stash[_PARAMETRISED] = frozenset(c.id for c in cases)
    return cases


def parametrised_keys(config: pytest.Config) -> Optional[frozenset[str]]:
    """The case keys the options selected (None when no benchmark module was parametrised). Items
    collected from fewer of them were picked by something else: node ids, ``--lf``, a plugin."""
    return config.stash.get(_PARAMETRISED, None)


# ------------------------------------------------------------------------ pytest-benchmark bridge

def feed_benchmark(benchmark, result: timing.Timing) -> None:
    """Put the suite's device-correct samples into pytest-benchmark's stats (one call per sample).

    pytest-benchmark 5.x has no public way to add externally timed samples; this uses the fixture's
    ``_make_stats`` (the same call its ``pedantic`` mode makes) and records the timer used.
    """
    if not hasattr(benchmark, "_make_stats"):
        raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._make_stats; attnsuite needs 5.x")
    benchmark._mode = "attnsuite device timer"
    stats = benchmark._make_stats(1)
    stats.options["timer"] = result.timer
    stats.options["warmup"] = result.warmup_calls
    for sample in result.samples_s:
        stats.update(sample)


def mark_unmeasured(benchmark) -> None:
    """Register a case without samples so pytest-benchmark writes its JSON even if no case had any.

    The stats entry stays empty and is flagged ``has_error`` so pytest-benchmark itself neither
    shows nor serialises it; :func:`pytest_benchmark_update_json` writes the record instead.
    """
    benchmark._mode = "attnsuite (no samples)"
    benchmark._make_stats(1)
    benchmark.has_error = True


# ------------------------------------------------------------------------------------------ runner

@dataclass
class Landed:
    """A record and where it came from in the pytest run."""

    nodeid: str
    name: str
    param: Optional[str]
    group: str
    record: CaseRecord
    measured: bool
    extra_info: Optional[dict] = None  # the benchmark fixture's own dict (the JSON reads it at the end)
    case: Optional[BenchCase] = None


class _InProcess:
    """``--attn-isolation none``: the worker's logic in the pytest process (no crash protection)."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.worker = Worker()
        reply = self.worker.init(init)
        if not reply.get("ok"):
            raise WorkerStartError(str(reply.get("error")))
        self.started, self.start_seconds = 0, 0.0

    def run_case(self, key: str) -> Any:
        return self.worker.run(key)

    def request_retrying_fresh(self, message: dict[str, Any], timeout: Optional[float] = None) -> Any:
        return self.request(message, timeout)  # in-process: there is no fresh worker to retry in

    def request(self, message: dict[str, Any], timeout: Optional[float] = None) -> Any:
        if message.get("op") == "calibrate":
            return self.worker.calibrate()
        if message.get("op") == "device_time":
            return self.worker.device_time(message["key"], message["record"])
        return {"error": f"unsupported request {message.get('op')!r}"}

    def close(self) -> None:
        pass


def record_from_reply(bc: BenchCase, reply: Any) -> tuple[CaseRecord, Optional[timing.Timing]]:
    """A case's record (and samples) from the worker's reply, or from the failure that ended it."""
    if isinstance(reply, Failure):
        rec = CaseRecord(bc.workload, bc.variant_label, bc.mode, bc.problem.id, family=bc.entry.family,
                         level=bc.problem.level, outcome=reply.outcome)
        tail = reply.stderr_tail.strip()
        dump, frame = stack_in(tail, frames.library_roots())
        if frame:  # faulthandler's dump: where it crashed or hung, not the dump's last (outermost) line
            rec.detail = f"{reply.detail}; in {frame}"[:1000]
            rec.extra["stack"] = dump[-4000:]
            tail = tail[: len(tail) - len(dump)].rstrip()  # the output before the dump
        else:
            last = tail.splitlines()[-1] if tail else "no output"
            rec.detail = f"{reply.detail}; last stderr line: {last}"[:1000]
        rec.extra["stderr_tail"] = "\n".join(tail.splitlines()[-STDERR_TAIL_LINES:])[-2000:]
        return rec, None
    if not isinstance(reply, dict) or "record" not in reply:
        rec = CaseRecord(bc.workload, bc.variant_label, bc.mode, bc.problem.id, family=bc.entry.family,
                         level=bc.problem.level, outcome="error")
        rec.detail = f"the benchmark worker failed on this case: {reply.get('error') if isinstance(reply, dict) else reply}"
        return rec, None
    rec = CaseRecord.from_extra_info(reply["record"])
    result = None
    if reply.get("samples"):
        result = timing.Timing(samples_s=list(reply["samples"]), timer=reply.get("timer", ""),
                               warmup_calls=int(reply.get("warmup", 0)))
    return rec, result


class BenchRunner:
    """Session object behind the ``attn_bench`` fixture: runs cases in workers and keeps every record.

    The workers (one per GPU with ``--attn-gpus``, see :mod:`attnsuite.dispatch`) run cases in the
    session's order ahead of the pytest items that report them; every finished case is journalled
    as it finishes, whichever item is running.
    """

    def __init__(self, config: pytest.Config):
        self.config = config
        self.spec = get_spec(config)
        self.landed: list[Landed] = []
        self._cases: Optional[dict[str, BenchCase]] = None
        self._dispatch: Optional[Dispatcher] = None
        self.gpu_ids: list[str] = []  # CUDA_VISIBLE_DEVICES of each worker slot, when spread over GPUs
        self.calibration: Optional[dict[str, Any]] = None
        self.journal: Optional[journal.Journal] = None
        self._journal_lock = threading.Lock()
        # variant name -> (the case it hung in, ran past --attn-timeout; why its later cases are not run)
        self.hung: dict[str, tuple[str, str]] = {}
        self.resumed: dict[str, dict[str, Any]] = {}
        self.confirm_seconds = 0.0  # the gate's second measurements of flagged cases
        self.deferred_seconds = 0.0  # kernel-sum device times measured after the other cases
        self.loop_seconds: Optional[float] = None  # wall time of the test loop (every case once)

    def case(self, key: str) -> BenchCase:
        """The benchmark case with this key (the pytest parameter)."""
        if self._cases is None:
            self._cases = {c.id: c for c in case_list(self.config)}
        try:
            return self._cases[key]
        except KeyError:
            raise KeyError(f"no benchmark case {key!r} in this run's tier and filters") from None

    @property
    def started(self) -> bool:
        """Whether the workers were started (a case, a calibration or a prefetch asked for them)."""
        return self._dispatch is not None

    def workers_started(self) -> tuple[int, float, int]:
        """(worker processes started, replacements and standby workers included; seconds the run
        waited for them; replacements a standby worker served)."""
        if self._dispatch is None:
            return 0, 0.0, 0
        backends = self._dispatch.backends
        return (sum(b.started for b in backends), sum(b.start_seconds for b in backends),
                sum(getattr(b, "spares_used", 0) for b in backends))

    def _start(self) -> None:
        """Start the workers, probe the instance, open the journal (once, before the first case)."""
        if self._dispatch is not None:
            return
        # the code as the run found it: a worker started later (after a crash or a timeout) checks it is unchanged
        self.sources = _sources(self.spec)
        init = {"spec": self.spec.to_json(), "sources": self.sources}
        if self.config.getoption("--attn-isolation") == "none":
            backends: list[Any] = [_InProcess(init)]
        else:
            gpus = gpu_count(self.config)
            if gpus > 1:
                self.gpu_ids = visible_gpus(gpus)
                envs = [{**os.environ, "CUDA_VISIBLE_DEVICES": gpu} for gpu in self.gpu_ids]
            else:
                envs = [None]
            # a standby worker per GPU makes a replaced worker cost almost nothing; only on CUDA, where
            # the judged time is device time: on CPU its start would take cores from the timed case
            backends = [WorkerPool(init, case_timeout=_timeout(self.config), env=env, spare=self.spec.on_gpu)
                        for env in envs]
        self._dispatch = Dispatcher(backends)
        # before any case: the probes read an idle device (the first GPU's when spread over several)
        reply = backends[0].request({"op": "calibrate"}, timeout=600)
        if isinstance(reply, dict) and isinstance(reply.get("calibration"), dict):
            self.calibration = reply["calibration"]
        else:
            why = reply.detail if isinstance(reply, Failure) else (reply or {}).get("error")
            self.calibration = {"error": f"calibration probes failed: {why}"}
        if self.gpu_ids:
            # text, as the baseline store keeps calibration entries (numbers or text)
            self.calibration = {**self.calibration, "gpus": ",".join(self.gpu_ids), "probed_gpu": self.gpu_ids[0]}
        fp = fingerprint_of(self.config)
        self.resumed = dict(self.config.stash.get(_RESUMED, {}))  # read and checked in pytest_configure
        self.journal = journal.Journal(_journal_path(self.config), self.spec.to_json(), fp["id"],
                                       resume=bool(self.config.getoption("--attn-resume")),
                                       sources=self.sources, case_timeout=_timeout(self.config))
        if self.journal.kept_previous is not None and self.journal.kept_what == journal.UNFINISHED:
            _say(self.config, f"attnsuite: an unfinished run's journal was kept as {self.journal.kept_previous} "
                              f"(this run, without --attn-resume, starts {self.journal.path} afresh; to carry the "
                              f"old one on, move it back and add --attn-resume)")
        elif self.journal.kept_previous is not None:
            _say(self.config, f"attnsuite: {self.journal.path} held {self.journal.kept_what}: it was kept as "
                              f"{self.journal.kept_previous}, and this run's journal written in its place")

    def _run_job(self, bc: BenchCase):
        """The job that runs ``bc`` in a backend and journals its record at once (any thread)."""
        def job(backend: Any) -> Any:
            hung = self.hung.get(bc.variant or "")
            if hung is not None:  # as the correctness tests skip a variant's tests after it hung
                reply: Any = {"record": CaseRecord(bc.workload, bc.variant_label, bc.mode, bc.problem.id,
                                                   family=bc.entry.family, level=bc.problem.level,
                                                   outcome="skipped", detail=hung[1],
                                                   extra={NOT_RUN_AFTER: hung[0]}).to_extra_info(), "samples": []}
            else:
                try:
                    reply = backend.run_case(bc.id)
                except WorkerStartError as exc:  # e.g. its code changed since the run started: this case's error
                    reply = {"ok": False, "error": str(exc)}
            rec, result = record_from_reply(bc, reply)
            if rec.outcome == "timeout" and bc.variant:
                self.hung.setdefault(bc.variant, (bc.id, f"not run: variant {bc.variant} ran past the per-case "
                                                 f"limit (--attn-timeout) in {bc.id}: its other cases are skipped, as "
                                                 "each would likely cost the whole limit again"))
            if self.journal is not None:
                with self._journal_lock:
                    self.journal.append(bc.id, {"record": rec.to_extra_info(),
                                                "samples": list(result.samples_s) if result else [],
                                                "timer": result.timer if result else "",
                                                "warmup": result.warmup_calls if result else 0})
            return reply
        return job

    def prefetch(self, keys: Sequence[str]) -> None:
        """Queue these cases (in this order) to run ahead of their pytest items when spread over GPUs."""
        if self.config.getoption("--attn-isolation") == "none" or gpu_count(self.config) < 2:
            return  # one device: each case runs when its item asks, as it always did
        self._start()
        cases = [self.case(key) for key in keys if key not in self.resumed]
        self._dispatch.submit([("run:" + bc.id, self._run_job(bc)) for bc in cases])

    def _with_slot(self, rec: CaseRecord, slot: int) -> CaseRecord:
        if self.gpu_ids:
            rec.extra["gpu"] = self.gpu_ids[slot]  # which physical GPU ran it (CUDA_VISIBLE_DEVICES id)
        return rec

    def execute(self, bc: BenchCase) -> tuple[CaseRecord, Optional[timing.Timing]]:
        """Run one case (or take it from the resumed journal); it is journalled as it finishes."""
        self._start()
        entry = self.resumed.pop(bc.id, None)
        if entry is not None:
            rec, result = record_from_reply(bc, entry)
            rec.extra["resumed"] = True
            return rec, result
        reply = self._dispatch.result("run:" + bc.id, self._run_job(bc))
        rec, result = record_from_reply(bc, reply.value)
        return self._with_slot(rec, reply.slot), result

    def run(self, bc: BenchCase, benchmark, request: pytest.FixtureRequest) -> CaseRecord:
        """Run a case, hand its samples and record to pytest-benchmark, and end the test accordingly."""
        tracker = _progress_tracker(request.session)
        try:
            rec, result = self.execute(bc)
        except KeyboardInterrupt:
            # stopped inside the case (Ctrl-C, a CI job's SIGINT): nothing to hand pytest-benchmark, whose
            # "Benchmark fixture was not used at all in this test!" warning had been the interrupted
            # run's last word on the case; the session's summary says what was left unrun
            benchmark.skipped = True
            raise
        due = tracker.case_done(rec.key, rec.outcome)
        if due:  # written once pytest has shown this test's own status (pytest_runtest_protocol below)
            request.config.stash[_PROGRESS_DUE] = due
        benchmark.group = bc.group
        benchmark.extra_info.update(rec.to_extra_info())
        # a failing case's samples stay out of pytest-benchmark's table and list: its table had ranked a
        # variant returning None (numerics) as the fastest of its group; its record keeps its figures
        measured = result is not None and bool(result.samples_s) and rec.outcome not in FAILING_OUTCOMES
        if benchmark.enabled:
            if measured:
                feed_benchmark(benchmark, result)
            else:
                mark_unmeasured(benchmark)
        self.landed.append(Landed(request.node.nodeid, request.node.name, getattr(benchmark, "param", None),
                                  bc.group, rec, measured and benchmark.enabled, benchmark.extra_info, bc))
        if rec.outcome == "skipped":
            pytest.skip(rec.detail)
        if rec.outcome == "oom":
            asked = f"{rec.oom_bytes / 2**30:.2f} GiB" if rec.oom_bytes else "unknown size"
            pytest.skip(f"out of memory (asked for {asked}): {rec.detail}")
        if rec.outcome in FAILING_OUTCOMES:
            where = rec.extra.get("traceback") or rec.extra.get("stack")
            pytest.fail(f"{bc.id}: {rec.outcome}: {rec.detail}" + (f"\n{where}" if where else ""), pytrace=False)
        return rec

    def confirm(self, keys: Sequence[str]) -> dict[str, CaseRecord]:
        """Measure these cases again (fresh build, warm-up and samples) and attach each second record
        to the first as ``extra["confirm"]``, in the record and in the JSON's extra_info."""
        t0 = time.perf_counter()
        by_key = {landed.record.key: landed for landed in self.landed}
        chosen = [by_key[key] for key in keys if key in by_key and by_key[key].case is not None]
        out: dict[str, CaseRecord] = {}
        if chosen:
            self._start()
            replies = self._dispatch.run_all(
                [("confirm:" + landed.case.id, (lambda bc: lambda backend: backend.run_case(bc.id))(landed.case))
                 for landed in chosen])
            seconds = {}
            for landed in chosen:
                reply = replies["confirm:" + landed.case.id]
                second, _ = record_from_reply(landed.case, reply.value)
                seconds[landed.record.key] = (landed, self._with_slot(second, reply.slot))
            pending = [(landed.case, second) for landed, second in seconds.values()
                       if second.extra.get("device_time_pending")]
            for rec in self._deferred_device_times(pending, prefix="confirm-device-time:"):
                landed, _ = seconds[rec.key]
                seconds[rec.key] = (landed, rec)
            for key, (landed, second) in seconds.items():
                info = second.to_extra_info()
                info.get("extra", {}).pop("confirm", None)
                landed.record.extra["confirm"] = info
                if landed.extra_info is not None:
                    landed.extra_info.setdefault("extra", {})["confirm"] = info
                out[key] = second
        self.confirm_seconds += time.perf_counter() - t0
        return out

    def _deferred_device_times(self, items: Sequence[tuple[BenchCase, CaseRecord]],
                               prefix: str = "device-time:") -> list[CaseRecord]:
        """Each record with its kernel-sum device time measured now (or a note saying why not)."""
        if not items:
            return []
        timeout = _timeout(self.config)

        def job(bc: BenchCase, rec: CaseRecord):
            message = {"op": "device_time", "key": bc.id, "record": rec.to_extra_info()}
            return lambda backend: backend.request_retrying_fresh(message, timeout)

        replies = self._dispatch.run_all([(prefix + bc.id, job(bc, rec)) for bc, rec in items])
        out = []
        for bc, rec in items:
            reply = replies[prefix + bc.id].value
            if isinstance(reply, dict) and isinstance(reply.get("record"), dict):
                out.append(CaseRecord.from_extra_info(reply["record"]))
                continue
            why = reply.detail if isinstance(reply, Failure) else (reply or {}).get("error")
            rec.extra.pop("device_time_pending", None)
            rec.extra["device_time_note"] = f"not measured: the worker failed measuring it: {why}"[:300]
            out.append(rec)
        return out

    def complete_device_times(self) -> int:
        """Measure every pending (kernel-sum) device time, after all other cases ran; returns how many.

        The profiler that kernel-sum needs slows every later launch in the worker, so these run
        last, when no event time or memory probe is left to disturb (spread over the GPUs like the
        cases). Each record is updated in place, in the JSON's extra_info and in the journal.
        """
        t0 = time.perf_counter()
        pending = [landed for landed in self.landed
                   if landed.record.extra.get("device_time_pending") and landed.case is not None]
        done = self._deferred_device_times([(landed.case, landed.record) for landed in pending])
        for landed, rec in zip(pending, done):
            landed.record = rec
            if landed.extra_info is not None:
                landed.extra_info.update(rec.to_extra_info())
            if self.journal is not None:
                with self._journal_lock:
                    self.journal.append(landed.case.id, {"record": rec.to_extra_info(), "samples": [], "timer": "",
                                                         "warmup": 0, "update": True})
        self.deferred_seconds += time.perf_counter() - t0
        return len(pending)

    def add_scaling_efficiency(self) -> int:
        """Distributed cases get their scaling efficiency against this run's best single device
        (runner.add_scaling_efficiency), in the record and in the JSON's extra_info."""
        done = add_scaling_efficiency([landed.record for landed in self.landed])
        for landed in self.landed:
            if "scaling_efficiency" in landed.record.extra and landed.extra_info is not None:
                landed.extra_info.setdefault("extra", {}).update(
                    {k: landed.record.extra[k] for k in ("scaling_efficiency", "scaling_reference")})
        return done

    def close(self, *, finished: bool) -> None:
        """Stop the workers; remove the journal when the run finished (its results are written)."""
        if self._dispatch is not None:
            self._dispatch.close(lambda backend: backend.close())
        if self.journal is not None:
            self.journal.close(remove=finished)


def confirm_cases(config: pytest.Config, keys: Sequence[str]) -> dict[str, CaseRecord]:
    """Re-measure the named cases of this session (see :meth:`BenchRunner.confirm`); {} when none ran."""
    runner = config.stash.get(_RUNNER, None)
    if runner is None or not keys:
        return {}
    return runner.confirm(list(keys))


_PROGRESS = pytest.StashKey[progress.Progress]()


def _progress_tracker(session: pytest.Session) -> progress.Progress:
    """The session's progress counter (made at the first case: its clock starts there)."""
    if _PROGRESS not in session.config.stash:
        total = sum(1 for item in session.items if bench_key(item) is not None)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        tty = bool(getattr(tr, "isatty", False))
        session.config.stash[_PROGRESS] = progress.Progress(total, interactive=progress.interactive(tty, os.environ))
    return session.config.stash[_PROGRESS]


_PROGRESS_DUE = pytest.StashKey[str]()  # a progress line waiting for its test's status character


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
    """Write a progress line due in the test that just ended once pytest has shown its "." or "s":
    written inside the test, its status character had followed alone on the next line."""
    try:
        return (yield)
    finally:
        line = item.config.stash.get(_PROGRESS_DUE, "")
        if line:
            item.config.stash[_PROGRESS_DUE] = ""
            _write_progress(item.config, line)


def _write_progress(config: pytest.Config, line: Optional[str]) -> None:
    """A due progress line, on a line of its own in pytest's output (written past output capture)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if not line or tr is None:
        return
    capman = config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        # mid-way through a line of dots, pytest's write_line ends it first (ensure_newline); after the
        # next test's status, pytest starts a fresh line with the file's name
        mid_line = getattr(getattr(tr, "_tw", None), "width_of_current_line", 0)
        if mid_line and not getattr(tr, "currentfspath", None):
            tr.write("\n")
        tr.write_line(line)


def _runner(config: pytest.Config) -> BenchRunner:
    if _RUNNER not in config.stash:
        config.stash[_RUNNER] = BenchRunner(config)
    return config.stash[_RUNNER]


@pytest.fixture(scope="session")
def attn_bench(request: pytest.FixtureRequest) -> BenchRunner:
    """The session's benchmark runner."""
    return _runner(request.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session: pytest.Session):
    # Before the loop, when the cases are spread over several GPUs: every selected case is queued in
    # the items' order, so the workers run ahead of the items that report them.
    keys = [key for key in map(bench_key, session.items) if key is not None]
    loop_start = time.perf_counter()
    if keys and not session.config.option.collectonly:
        _runner(session.config).prefetch(keys)
    # After every case ran (and before the gate's confirmation, whose wrapper is outside this one,
    # and before pytest-benchmark writes the JSON): the deferred kernel-sum device times.
    outcome = yield
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None:
        runner.loop_seconds = time.perf_counter() - loop_start
    if outcome.excinfo is not None:  # interrupted: the journal keeps what finished; measure nothing more
        return
    if runner is not None and runner.started and not session.shouldstop:
        runner.complete_device_times()
        runner.add_scaling_efficiency()


# ------------------------------------------------------------------------ an empty selection

_NOTHING_SELECTED = pytest.StashKey[str]()
_BENCH_DESELECTED = pytest.StashKey[int]()
_SELECTION_OPTIONS = ("--attn-only", "--attn-workload", "--attn-mode", "--attn-tier", "--attn-dtype", "--attn-device")


def _is_bench_item(item: Any) -> bool:
    return "bench_case" in getattr(item, "fixturenames", ())


def bench_key(item: Any) -> Optional[str]:
    """The case key of a benchmark item; None for another test, and for the placeholder item pytest
    makes of an empty parameter set (a selection with no case)."""
    key = getattr(getattr(item, "callspec", None), "params", {}).get("bench_case")
    return key if isinstance(key, str) else None


def pytest_deselected(items: list) -> None:
    bench = [i for i in items if _is_bench_item(i)]
    if bench:
        cfg = bench[0].config
        cfg.stash[_BENCH_DESELECTED] = cfg.stash.get(_BENCH_DESELECTED, 0) + len(bench)


def nothing_selected(config: pytest.Config, items: Sequence[Any], deselected: int) -> Optional[str]:
    """Why a session that collected the benchmark module selected none of its cases (None when it did).

    Such a run must not pass quietly: a CI gate whose selection matches nothing would judge nothing.
    pytest itself exits 0 there when the options leave an empty parameter set (one skipped item).
    """
    bench = [i for i in items if _is_bench_item(i)]
    if not bench and not deselected:
        return None  # the benchmark module was not part of this session
    if any(bench_key(i) is not None for i in bench):
        return None
    if not bench:
        given = [f"{flag} {config.getoption(name)!r}" for flag, name in (("-k", "keyword"), ("-m", "markexpr"))
                 if config.getoption(name, default=None)]
        return f"{' and '.join(given) or 'a deselection'} left {none_of(deselected, 'benchmark case')}"
    given = []
    for name in _SELECTION_OPTIONS:
        value = config.getoption(name, default=None)
        for v in (value if isinstance(value, list) else [value] if value else []):
            given.append(f"{name} {v}")
    spec = get_spec(config)
    # a workload with no entry in this tier (e.g. a problems file's entries all `"tier": "full"`,
    # run on CPU, whose default tier is quick): say so, and which tier has its entries
    other = [t for t in workloads.TIERS if t != spec.tier]
    hints = [f"workload {name!r} has no entry in the {spec.tier} tier"
             + (f" (its entries are in the {other[0]} tier: add --attn-tier {other[0]})"
                if workloads.WORKLOADS[name].tier(other[0]) else "")
             for name in spec.workloads if name in workloads.WORKLOADS and not workloads.WORKLOADS[name].tier(spec.tier)]
    return (f"{' '.join(given) or 'these options'} select no case of the {spec.tier} tier on {spec.device}"
            + "".join(f"; {h}" for h in hints)
            + " (pytest bench --benchmark-only --collect-only -q lists what a selection holds)")


def _say(config: pytest.Config, line: str) -> None:
    """One line on the terminal now (pytest's reporter where there is one), also from inside a
    fixture, where pytest's output capture had swallowed it."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        if tr is not None:
            tr.write_line(line)
        else:
            print(line, flush=True)


# options only the benchmarks read: in a session without a benchmark (the correctness suite) they do nothing
BENCH_ONLY_OPTIONS = ("--attn-tier", "--attn-workload", "--attn-mode", "--attn-mem-cap", "--attn-inject-slowdown",
                      "--attn-cpu-threads", "--attn-isolation", "--attn-timeout", "--attn-journal", "--attn-resume",
                      "--attn-gpus", "--attn-device-time")


def unused_bench_options(args: Sequence[str], items: Sequence[Any]) -> list[str]:
    """The benchmark-only options given on the command line (``args``) of a session whose ``items``
    hold no benchmark, in the order given: ``pytest test_correctness --attn-mem-cap 1G`` had run
    without a word that the cap applied to nothing."""
    if not items or any(_is_bench_item(i) for i in items):
        return []
    given = [a.split("=", 1)[0] for a in args if isinstance(a, str)]
    return list(dict.fromkeys(a for a in given if a in BENCH_ONLY_OPTIONS))


def unused_bench_options_text(unused: Sequence[str]) -> str:
    """What the terminal says of benchmark-only options given to a session without benchmarks."""
    one = len(unused) == 1
    text = (f"attnsuite: {', '.join(unused)} {'applies' if one else 'apply'} to the benchmarks (pytest bench "
            "--benchmark-only) only: this session collected no benchmark, so "
            f"{'it changes' if one else 'they change'} nothing here")
    if "--attn-timeout" in unused:  # the README's hostile-kernel section names both limits
        text += "; the correctness tests' time limit is --attn-test-timeout"
    return text


def pytest_collection_finish(session: pytest.Session) -> None:
    unused = unused_bench_options(session.config.invocation_params.args, session.items)
    if unused:
        workerinput = getattr(session.config, "workerinput", None)
        if workerinput is None:
            _say(session.config, unused_bench_options_text(unused))
        elif workerinput.get("workerid") == "gw0":
            # an xdist worker's terminal is not shown and the controller collects nothing: its warning
            # reaches the controller's summary (the line had never appeared under -n)
            warnings.warn(pytest.PytestWarning(unused_bench_options_text(unused)))
    why = nothing_selected(session.config, session.items, session.config.stash.get(_BENCH_DESELECTED, 0))
    if why:
        session.config.stash[_NOTHING_SELECTED] = why
    resumed = session.config.stash.get(_RESUMED, None)
    if resumed:
        # Cases the journal holds but this session does not select would be dropped with the journal at
        # the end (-k and other deselection are not in the run spec the journal checks).
        selected = {bench_key(item) for item in session.items}
        outside = sorted(k for k in resumed if k not in selected)
        if outside:
            where = _journal_path(session.config)
            _fail_usage(f"--attn-resume: the journal {where} holds {len(outside)} finished case(s) that this "
                        f"selection does not include (e.g. {', '.join(outside[:3])}): resume with the "
                        "interrupted run's selection (the same -k and --attn-* options), or run without "
                        f"--attn-resume to start over (the journal is then kept as {journal.previous_path(where)})")


@pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_through_one_sigint(session: pytest.Session, exitstatus: int) -> Any:
    """The end of the session (writing the benchmark JSON, the gate's files and summary, stopping the
    workers) runs to its end through one Ctrl-C: a SIGINT there had stopped it half way, after every
    case had run, with a traceback from the worker shutdown, exit status 130 and no gate.md or
    summary (a fresh-user trial). A second SIGINT still stops it."""
    if not _benchmarking(session) or threading.current_thread() is not threading.main_thread():
        return (yield)
    received: list[float] = []

    def defer(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(time.monotonic())

    previous = signal.signal(signal.SIGINT, defer)
    try:
        result = yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        line = ("attnsuite: SIGINT while the session was ending: it finished writing its results first (a "
                "second SIGINT stops it at once)")
        if tr is not None:
            tr.write_line(line, yellow=True)
        else:
            sys.stderr.write(line + "\n")
    return result


def _benchmarking(session: pytest.Session) -> bool:
    return session.config.stash.get(_RUNNER, None) is not None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(_NOTHING_SELECTED, None) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED  # pytest's own "nothing ran", said below
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None:
        # The journal goes only when every selected case landed: an interrupt, a broken output pipe
        # or an internal error that ends the session early keeps it for --attn-resume.
        selected = sum(1 for item in session.items if bench_key(item) is not None)
        finished = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) \
            and not session.shouldstop and len(runner.landed) >= selected
        runner.close(finished=finished)
        if finished and runner.landed:
            records = [landed.record for landed in runner.landed]
            named = session.config.getoption("--attn-only", default=None) or []  # None: the main plugin is not loaded
            for name, line in summary.unmeasured_named(records, named).items():
                fail_session(session, f"attnsuite-selection::{name}", line)


# ---------------------------------------------------------------------------------------- JSON

def _empty_stats() -> dict[str, Any]:
    fields = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "ops", "total")
    stats: dict[str, Any] = {name: 0.0 for name in fields}
    stats.update({"rounds": 0, "iterations": 1, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0", "data": []})
    return stats


def fingerprint_of(config: pytest.Config) -> dict[str, Any]:
    """This run's machine fingerprint: ``{"id": ..., "info": {...}}`` (computed once)."""
    key = "_attnsuite_fingerprint"
    cached = getattr(config, key, None)
    if cached is None:
        # the gate asks too (its header), also in a session where only it is loaded
        device = config.stash[_SPEC].device if _SPEC in config.stash else \
            _device(config.getoption("--attn-device", default=None))
        info = fingerprint.machine_info(device)
        cached = {"id": info["id"], "info": info}
        setattr(config, key, cached)
    return cached


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    fp = fingerprint_of(config)
    machine_info["attnsuite_fingerprint_id"] = fp["id"]
    machine_info["attnsuite_fingerprint"] = fp["info"]


def _peaks(records: Sequence[CaseRecord], device: str) -> dict[str, Any]:
    peaks: dict[str, Any] = {}
    for r in records:
        value = r.extra.get("peak_tflops")
        if value is not None:
            peaks.setdefault(f"{device}/{r.extra.get('peak_dtype')}", {"value": value, "source": r.extra.get("peak_source")})
    return peaks


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    runner = config.stash.get(_RUNNER, None)
    spec = get_spec(config)
    fp = fingerprint_of(config)
    records = [landed.record for landed in runner.landed] if runner else []
    output_json["attnsuite"] = {
        "schema": 1,
        "run_id": run_id(config),
        "fingerprint_id": fp["id"],
        "fingerprint": fp["info"],
        "tier": spec.tier,
        "device": spec.device,
        "torch_threads": spec.cpu_threads or torch.get_num_threads(),
        "mem_cap_bytes": spec.mem_cap,
        "inject_slowdown": dict(spec.inject),
        "isolation": config.getoption("--attn-isolation"),
        "peaks_tflops": _peaks(records, spec.device),
        "calibration": runner.calibration if runner else None,
        "outcomes": {},
    }
    if runner is None:
        return
    present = {b.get("fullname") for b in output_json.get("benchmarks", [])}
    # Cases without samples go beside pytest-benchmark's list, not in it: its own `compare` would
    # show them as 0 ns results. The suite's readers take both (baseline.run_from_benchmarks_json).
    unmeasured = output_json["attnsuite"].setdefault(baseline.UNMEASURED_KEY, [])
    for landed in runner.landed:
        if landed.nodeid in present:
            continue
        unmeasured.append({
            "group": landed.group,
            "name": landed.name,
            "fullname": landed.nodeid,
            "params": {"bench_case": landed.record.key},
            "param": landed.param,
            "extra_info": landed.record.to_extra_info(),
            "options": {"timer": "none (no samples: " + landed.record.outcome + ")" if landed.record.outcome
                        not in FAILING_OUTCOMES else f"none (a failed case, {landed.record.outcome}: its samples "
                        "are left out of pytest-benchmark's table; its record keeps its figures)"},
            "stats": _empty_stats(),
        })
    counts: dict[str, int] = {}
    for landed in runner.landed:
        counts[landed.record.outcome] = counts.get(landed.record.outcome, 0) + 1
    output_json["attnsuite"]["outcomes"] = counts
    if runner.started:
        started, start_s, from_standby = runner.workers_started()
        output_json["attnsuite"]["workers_started"] = started
        output_json["attnsuite"]["worker_start_s"] = round(start_s, 3)
        output_json["attnsuite"]["workers_from_standby"] = from_standby
        output_json["attnsuite"]["gpus"] = list(runner.gpu_ids) or None
    # what the run spent after its cases, so the cost of confirmation and of deferral is on record
    output_json["attnsuite"]["loop_s"] = None if runner.loop_seconds is None else round(runner.loop_seconds, 3)
    output_json["attnsuite"]["confirm_s"] = round(runner.confirm_seconds, 3)
    output_json["attnsuite"]["deferred_device_time_s"] = round(runner.deferred_seconds, 3)


# ------------------------------------------------------------------------------- terminal summary

def _fmt(value: Optional[float], spec: str) -> str:
    """``value`` by ``spec``; a missing one as "-" in the same width, so the table's columns stay put."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = spec.split(".")[0]
        return format("-", f">{width}") if width.isdigit() else "-"
    return format(value, spec)


NO_DATASHEET_PEAK = ("%peak is against the device's datasheet peak, and this device has none (a CPU): "
                     "the summary below shows % of the calibration probe stored with the baseline instead, "
                     "where that baseline was recorded on this CPU model")


def summary_lines(records: list[CaseRecord]) -> list[str]:
    """A compact table per workload: variant, mode, problem, outcome, ms, TFLOP/s, % peak, MiB, backend
    (TFLOP/s and % peak by device time where a case has one, as every report shows them: CaseRecord.rate)."""
    lines = []
    header = f"{'variant':<22} {'mode':<8} {'outcome':<8} {'median ms':>10} {'iqr ms':>8} {'TFLOP/s':>8} " \
             f"{'%peak':>6} {'peak MiB':>9} {'fused L^2?':>10}  backend"
    by_workload: dict[str, list[CaseRecord]] = {}
    for rec in records:
        by_workload.setdefault(rec.workload, []).append(rec)
    for name, recs in by_workload.items():
        problems = sorted({r.problem for r in recs})
        for problem in problems:
            lines.append(f"{name}  {problem}")
            lines.append("  " + header)
            for r in sorted((r for r in recs if r.problem == problem), key=lambda r: (r.mode, r.variant)):
                mib = None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20
                mat = "-" if r.materialises is None else ("YES" if r.materialises else "no")
                lines.append(
                    f"  {r.variant:<22} {r.mode:<8} {r.outcome:<8} {_fmt(r.median_ms, '10.4f')} "
                    f"{_fmt(r.iqr_ms, '8.4f')} {_fmt(r.rate(), '8.4f')} {_fmt(r.rate_pct_peak(), '6.1f')} "
                    f"{_fmt(mib, '9.2f')} {mat:>10}  {r.backend}"
                )
    if any(r.rate() and r.rate_pct_peak() is None for r in records):
        lines.append(NO_DATASHEET_PEAK)
    return lines


def workers_line(started: int, start_s: float, from_standby: int, gpu_ids: Sequence[str]) -> str:
    """The summary's line on worker processes: how many started, how long the run waited for them,
    and how many replacements a standby worker served (:class:`attnsuite.isolation.WorkerPool`)."""
    return (f"worker processes started: {started} ({start_s:.1f} s starting them)"
            + (f" ({from_standby} replacement{'s' if from_standby > 1 else ''} served by a standby worker)"
               if from_standby else "")
            + (f" on GPUs {', '.join(gpu_ids)}" if gpu_ids else ""))


def nothing_selected_line(config: pytest.Config) -> Optional[str]:
    """Why this session selected no benchmark case, as one sentence (the terminal, gate.md and the gate
    JSON say the same), or None when it selected some."""
    why = config.stash.get(_NOTHING_SELECTED, None)
    if not why:
        return None
    return (f"no benchmark case selected: {why}; nothing was measured or judged "
            f"(exit status {int(pytest.ExitCode.NO_TESTS_COLLECTED)})")


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    nothing = nothing_selected_line(config)
    if nothing:
        terminalreporter.write_line(f"attnsuite: {nothing}", red=True)
    runner = config.stash.get(_RUNNER, None)
    if runner is None or not runner.landed:
        return
    terminalreporter.section("attnsuite measurements")
    for line in summary_lines([landed.record for landed in runner.landed]):
        terminalreporter.write_line(line)
    hostile = [landed.record for landed in runner.landed
               if landed.record.outcome in ("crash", "timeout") or landed.record.extra.get("state_leak")]
    if hostile:
        terminalreporter.section("attnsuite: cases that crashed, hung or changed global state")
        for r in hostile:
            what = r.outcome if r.outcome in ("crash", "timeout") else "state changed"
            terminalreporter.write_line(f"{what:<14} {r.variant} on {r.key}: {r.detail}", red=True)
    started, start_s, from_standby = runner.workers_started()
    if started:
        terminalreporter.write_line(workers_line(started, start_s, from_standby, runner.gpu_ids))
    if runner.loop_seconds is not None:
        terminalreporter.write_line(
            f"wall time: every case {runner.loop_seconds:.1f} s, deferred device times "
            f"{runner.deferred_seconds:.1f} s, confirmation {runner.confirm_seconds:.1f} s")
