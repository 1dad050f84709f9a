"""The per-case measurement record: the contract between the benchmarks, the baselines and the gate.

One :class:`CaseRecord` per (workload, variant, mode, problem). The benchmarks store it in the
pytest-benchmark JSON under each benchmark's ``extra_info`` (``CaseRecord.to_extra_info``); the
baseline store and the verdict rule read it back with :meth:`CaseRecord.from_extra_info`. Cases
that did not produce a time (out of memory, numerics failure, error, skip) are records too, so they
never vanish from a report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

# crash: the worker process running the case died (signal, abort, exit() from C, a poisoned CUDA
# context); timeout: it ran past the per-case limit and was killed. Both are failures of the case.
OUTCOMES = ("ok", "skipped", "oom", "numerics", "error", "crash", "timeout")
FAILING_OUTCOMES = ("numerics", "error", "crash", "timeout")
# extra[NOT_RUN_AFTER]: the case was skipped, not run, because an earlier case of its variant hung
# (the key of that case): a consequence of a failure, not a limit of this machine or this case
NOT_RUN_AFTER = "not_run_after"
# decode: one incremental-decoding step of a layer variant that declares decoding (docs/decode.md):
# the problem's last ``decode_step`` tokens after a prefill of the rest, inference only.
MODES = ("fwd", "bwd", "fwd+bwd", "decode")
# how a record's times were taken (timing.measure): CUDA events on CUDA, the host clock elsewhere,
# "custom-clock" when a caller supplied its own clock; "" when the case has no samples
TIMERS = ("cuda-events", "perf_counter", "custom-clock")
# how its device time was taken (timing.device_time): graph replay, else the profiler's kernel sum
GRAPH_REPLAY, KERNEL_SUM = "cuda-graph", "kernel-sum"
DEVICE_METHODS = (GRAPH_REPLAY, KERNEL_SUM)
DECODE_STEP_ARG = "decode_step"  # the problem argument that says how many tokens one decode step adds


def failed_or_left_by_a_failure(rec: "CaseRecord") -> bool:
    """Whether ``rec`` is a failure, or a case its variant's failure left unrun (:data:`NOT_RUN_AFTER`):
    neither says what the case measures, so neither replaces a measured baseline entry."""
    return rec.outcome in FAILING_OUTCOMES or bool(rec.extra.get(NOT_RUN_AFTER))


def has_backward(mode: str) -> bool:
    """Does a call in ``mode`` run a backward (so inputs need gradients)?"""
    return mode in ("bwd", "fwd+bwd")
SCHEMA_VERSION = 1


# Set by the gate on a baseline's calibration when that baseline (a fallback) was recorded on another
# CPU model than the run compared with it: the CPU it names. % of peak never reads such a probe.
CALIBRATION_OTHER_CPU = "other_cpu"


def case_key(workload: str, variant: str, mode: str, problem_id: str) -> str:
    """The stable key of a case across runs: ``workload/variant/mode/problem-id``."""
    return f"{workload}/{variant}/{mode}/{problem_id}"


@dataclass
class CaseRecord:
    """Everything measured (or not) about one case."""

    workload: str
    variant: str
    mode: str  # one of MODES
    problem: str  # Problem.id
    outcome: str = "ok"  # one of OUTCOMES
    detail: str = ""  # skip reason, exception text, numerics message, OOM message
    family: str = ""
    level: str = ""
    # time, milliseconds of device time per call
    median_ms: Optional[float] = None
    iqr_ms: Optional[float] = None  # spread: interquartile range of the samples
    min_ms: Optional[float] = None
    samples: int = 0
    timer: str = ""  # one of TIMERS, or "" without samples
    first_call_ms: Optional[float] = None  # compile / autotune / lazy init, outside the timed region
    mask_build_ms: Optional[float] = None  # outside the timed region
    # CUDA: share of a call's time before it returned to Python (timing.Timing.launch_fraction);
    # near 1 = host-bound: the GPU waited on the launches, so the time measures the host
    launch_fraction: Optional[float] = None
    # CUDA device time per call, independent of the host: replay of a captured CUDA graph
    # (device_method "cuda-graph") or the sum of the call's kernel durations from the profiler
    # ("kernel-sum"). None on CPU, where median_ms already is the device's time.
    device_ms: Optional[float] = None
    device_iqr_ms: Optional[float] = None
    device_min_ms: Optional[float] = None
    device_method: str = ""  # one of DEVICE_METHODS, or "" without device time
    # event-bracketed median minus device median: what the host adds to a call (launches, Python)
    host_overhead_ms: Optional[float] = None
    # work
    flops: Optional[float] = None  # FLOPs of one call (mask-aware; backward = 2.5x forward)
    tflops: Optional[float] = None
    pct_peak: Optional[float] = None  # % of the device's dense peak for the dtype
    # memory
    peak_mem_bytes: Optional[int] = None  # peak above what the inputs hold
    mem_method: str = ""  # "cuda-allocator", "cpu-rss", ...
    oom_bytes: Optional[int] = None  # bytes asked for when out of memory
    materialises: Optional[bool] = None  # a fused variant whose peak grows like L^2
    # which kernel ran
    backend: str = ""  # e.g. "sdpa:flash", "flex:compiled", "math", "compiled->eager fallback"
    # free-form facts; keys with a contract:
    #   "confirm": the re-measurement of a case first judged slower/memory-growth (a to_extra_info
    #              dict of the second record, without its own "confirm"), see verdict.py
    #   "state_leak": the torch global state the variant left changed (text), see torch_state.py
    #   "device_time_note": why device time is missing or came from the profiler (not captured)
    #   "device_kernels": a kernel-sum device time's fastest call by kernel (timing.kernel_breakdown):
    #              where two readings of one step differ (a first measurement against its confirmation)
    #   "stderr_tail": last lines of a crashed or timed-out worker's stderr
    #   "triton_configs": kernel name -> the tile config its autotuner chose for this case
    #              (triton_support.choices): one machine's choice can differ from another's
    #   "triton_tuning": kernel name -> {config: its autotune time in ms}, fastest first, for the kernels
    #              this case tuned or read from Triton's cache (triton_support.tunings): how close the
    #              chosen config's rivals timed
    #   "gpu_state": CUDA: the GPU's SM clock, power, temperature and slowdown reasons before the
    #              measurement ("start"), after the timed samples ("timed") and after device time
    #              ("device-timed") (gpu_state.sample): a reading taken at a lower clock shows there
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return case_key(self.workload, self.variant, self.mode, self.problem)

    def rate(self) -> Optional[float]:
        """TFLOP/s as every report shows it: by the device time where the record has one (CUDA: the
        kernels' own rate, and the time the gate judges there), else ``tflops``, by the event-timed
        median (on CPU that is the device's time). On an H200 (2026-12-01, machine I) triton-flash's
        backward read 0.92x of sdpa-flash by the median, which included its host launches, and 1.33x by
        device time."""
        if self.flops and self.device_ms and self.device_ms > 0:
            return self.flops / (self.device_ms * 1e-3) / 1e12
        return self.tflops

    def rate_pct_peak(self) -> Optional[float]:
        """``pct_peak`` (the run's own peak for the case) at the rate :meth:`rate` shows."""
        rate = self.rate()
        return self.pct_peak * rate / self.tflops if self.pct_peak is not None and self.tflops and rate else None

    def to_extra_info(self) -> dict[str, Any]:
        """A JSON-ready dict for pytest-benchmark's ``extra_info`` (with the case key)."""
        d = asdict(self)
        d["case"] = self.key
        d["schema"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_extra_info(cls, data: dict[str, Any]) -> "CaseRecord":
        """Rebuild a record; unknown keys are kept in ``extra``, missing required keys raise ValueError."""
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("workload", "variant", "mode", "problem") if n not in data]
        if missing:
            raise ValueError(f"record lacks required fields {missing}")
        known = {k: v for k, v in data.items() if k in names}
        rest = {k: v for k, v in data.items() if k not in names and k not in ("case", "schema")}
        rec = cls(**known)
        rec.extra.update(rest)
        if rec.outcome not in OUTCOMES:
            raise ValueError(f"record {rec.key}: unknown outcome {rec.outcome!r}")
        return rec


def failed_counts(records: Mapping[str, CaseRecord]) -> dict[str, int]:
    """How many of a run's cases ended in each failing outcome (crash, error, ...), in a fixed order."""
    counts = Counter(r.outcome for r in records.values())
    return {k: counts[k] for k in FAILING_OUTCOMES if counts.get(k)}
