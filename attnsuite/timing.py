"""Device-correct timing: the one timer every benchmark goes through.

Device work is asynchronous, so a host clock read right after a launch measures the launch, not
the work. On CUDA each sample is bracketed by CUDA events recorded on the current stream (the
method of ``triton.testing.do_bench``), with the L2 cache flushed before each sample so repeated
calls over one buffer do not measure the cache. On CPU the host clock (``time.perf_counter``) is
the device clock.

Order of work for one case: the first call (compilation, autotuning, lazy initialisation) is timed
on its own with a synchronising host clock and reported apart; warm-up calls follow, untimed, and
give the per-call estimate that sizes the sample count; then the samples. Statistics are the median
and the interquartile range, which a few outliers (a preempted sample, a clock step) cannot move.

``measure`` takes an injectable ``clock`` and ``sync`` so its statistics can be tested with a
synthetic clock.

:func:`device_time` (CUDA) is the second figure of a case: the device's own time for one call, with
the host taken out. The event timer above measures what a caller waits for, which for small,
launch-bound steps is the host CPU's speed; device time replays the call from a captured CUDA graph
(no host in the loop) or, where the step cannot be captured, sums the durations of the kernels the
call ran as the profiler saw them on the device.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

from .record import GRAPH_REPLAY, KERNEL_SUM, TIMERS


@dataclass(frozen=True)
class TimerConfig:
    """How long to warm up and how many samples to take.

    ``warmup_s`` and ``target_s`` are budgets in seconds of estimated device time; the sample
    count is ``target_s / estimate`` clamped to ``[min_samples, max_samples]``. ``min_sample_s``
    batches calls into one sample when a single call is shorter than the clock can resolve well
    (only when no per-sample setup is needed).
    """

    warmup_s: float = 0.025
    min_warmup: int = 2
    target_s: float = 0.1
    min_samples: int = 10
    max_samples: int = 200
    min_sample_s: float = 0.0
    flush_l2: bool = True


QUICK_CPU = TimerConfig(warmup_s=0.01, min_warmup=1, target_s=0.05, min_samples=5, max_samples=50,
                        min_sample_s=0.0005, flush_l2=False)
# On CUDA the gate judges device time (device_time below); the event time is what a caller waits for,
# reported beside it, so it gets a smaller budget than when it was the gated figure. The minimums bind
# only on long steps (one call over the warm-up or sample budget), where the first call has already
# warmed the step and three samples give a median: 3 warm-up calls and 5 samples there were 57 s of a
# warm full tier on one H200 that 1 and 3 save. With these budgets (0.05 s of samples after 0.025 s of
# warm-up before s37) the full tier's timing phase took 148.7 s on one fresh H200 against 173.6 s on
# another (docs/gate.md, "What the full tier costs"); device time, measured after, warms its own way.
FULL_GPU = TimerConfig(warmup_s=0.015, min_warmup=1, target_s=0.025, min_samples=3, max_samples=200)


class SampleStats:
    """The summary of ``samples_s`` (seconds per call), shared by the event timer's and device time's
    results: ``stats`` is filled from the samples, with median, IQR and minimum as properties."""

    samples_s: list[float]
    stats: dict[str, float]

    def __post_init__(self) -> None:
        if not self.stats and self.samples_s:
            self.stats = summarize(self.samples_s)

    @property
    def median_s(self) -> float:
        return self.stats["median"]

    @property
    def iqr_s(self) -> float:
        return self.stats["iqr"]

    @property
    def min_s(self) -> float:
        return self.stats["min"]

    def as_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class Timing(SampleStats):
    """Samples (seconds per call) and their summary."""

    samples_s: list[float]
    timer: str  # "cuda-events" or "perf_counter"
    first_call_s: Optional[float] = None
    warmup_calls: int = 0
    iters_per_sample: int = 1
    injected_s: float = 0.0  # per-call delay added on purpose (slowdown injection), 0 when off
    # CUDA: the share of a warm-up call's time the host spent before the call returned (median over
    # warm-up calls). Near 1 the GPU waited on Python and the launches (or the call synchronised):
    # the time measures the host, which differs between machine instances. None on CPU.
    launch_fraction: Optional[float] = None
    stats: dict[str, float] = field(default_factory=dict)


def quantile(sorted_data: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted data (numpy's default 'linear' method)."""
    if not sorted_data:
        raise ValueError("quantile of no samples")
    pos = (len(sorted_data) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_data) - 1)
    return sorted_data[lo] + (sorted_data[hi] - sorted_data[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """median, q1, q3, iqr, min, max, mean and count of the samples."""
    data = sorted(samples)
    q1, q3 = quantile(data, 0.25), quantile(data, 0.75)
    return {
        "median": quantile(data, 0.5),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": data[0],
        "max": data[-1],
        "mean": statistics.fmean(data),
        "count": float(len(data)),
    }


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def device_sync(device: str) -> Callable[[], None]:
    """The synchronise function for a device (a no-op on CPU)."""
    if is_cuda(device):
        return torch.cuda.synchronize
    return lambda: None


_L2_FLUSH: dict[str, torch.Tensor] = {}


def l2_flush_buffer(device: str) -> torch.Tensor:
    """The 256 MiB buffer :func:`flush_l2` overwrites, made on first use (an allocation, no kernel)."""
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    return buf


def flush_l2(device: str) -> None:
    """Overwrite a 256 MiB buffer so the next call starts with a cold L2 (what do_bench does)."""
    l2_flush_buffer(device).zero_()


_SLEEP_CYCLES_PER_S: dict[str, float] = {}


def _gpu_cycles_per_second(device: str) -> float:
    """Calibrate ``torch.cuda._sleep``: how many spin cycles make one second on this GPU."""
    if device not in _SLEEP_CYCLES_PER_S:
        cycles = 10_000_000
        torch.cuda._sleep(cycles)  # first launch pays lazy init
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _SLEEP_CYCLES_PER_S[device] = cycles / (start.elapsed_time(end) / 1e3)
    return _SLEEP_CYCLES_PER_S[device]


def make_delay(device: str, seconds: float) -> Optional[Callable[[], None]]:
    """A call that really costs ``seconds`` of device time: a GPU spin kernel, or a CPU busy-wait.

    Used by slowdown injection (``--attn-inject-slowdown``): the delay runs inside the timed region,
    after the variant's call, so the measured time grows by that much.
    """
    if seconds <= 0:
        return None
    if is_cuda(device):
        cycles = int(round(seconds * _gpu_cycles_per_second(device)))
        return lambda: torch.cuda._sleep(cycles)

    def busy_wait() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return busy_wait


def measure(
    fn: Callable[[], object],
    device: str = "cpu",
    config: TimerConfig = TimerConfig(),
    setup: Optional[Callable[[], None]] = None,
    first_call: bool = True,
    inject_fraction: float = 0.0,
    clock: Optional[Callable[[], float]] = None,
    sync: Optional[Callable[[], None]] = None,
) -> Timing:
    """Time ``fn`` correctly for ``device`` and return its samples and summary.

    ``setup`` runs before each call outside the timed region (e.g. a forward pass before a timed
    backward, or zeroing gradients); with a setup every sample is one call. ``first_call`` times
    the first call apart, its setup included (set False when the caller already did).
    ``inject_fraction`` > 0 makes each call really slower by that fraction of the warm-up median
    (for the gate's detection tests).
    ``clock``/``sync`` replace the host clock and device sync (tests); a custom clock forces the
    host-clock path even on CUDA.
    """
    use_events = is_cuda(device) and clock is None
    sync = sync or device_sync(device)
    clock = clock or time.perf_counter
    events, host_clock, custom = TIMERS
    timer_name = events if use_events else (host_clock if clock is time.perf_counter else custom)

    launch_shares: list[float] = []

    def host_time_one() -> float:
        if setup is not None:
            setup()
        sync()
        t0 = clock()
        fn()
        t_launched = clock()
        sync()
        total = clock() - t0
        if total > 0:
            launch_shares.append((t_launched - t0) / total)
        return total

    def first_time() -> float:
        # the first call with its setup: a timed backward's setup is the forward, whose first call
        # compiles and autotunes the forward's kernels; timed apart, that cost would show nowhere
        sync()
        t0 = clock()
        if setup is not None:
            setup()
        fn()
        sync()
        return clock() - t0

    first_s = first_time() if first_call else None

    # Warm-up: at least min_warmup calls and about warmup_s of work; their median sizes the run.
    warm: list[float] = []
    warm_start = clock()
    while len(warm) < config.min_warmup or (clock() - warm_start < config.warmup_s and len(warm) < 1000):
        warm.append(host_time_one())
    estimate = max(statistics.median(warm), 1e-9)

    delay = make_delay(device, inject_fraction * estimate) if inject_fraction > 0 else None
    iters = 1
    if setup is None and config.min_sample_s > 0 and estimate < config.min_sample_s:
        iters = min(1000, math.ceil(config.min_sample_s / estimate))
    n_samples = int(min(config.max_samples, max(config.min_samples, round(config.target_s / (estimate * iters)))))

    def body() -> None:
        for _ in range(iters):
            fn()
            if delay is not None:
                delay()

    samples: list[float] = []
    if use_events:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_samples)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_samples)]
        for s, e in zip(starts, ends):
            if setup is not None:
                setup()
            if config.flush_l2:
                flush_l2(device)
            s.record()
            body()
            e.record()
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) / 1e3 / iters for s, e in zip(starts, ends)]
    else:
        for _ in range(n_samples):
            if setup is not None:
                setup()
            sync()
            t0 = clock()
            body()
            sync()
            samples.append((clock() - t0) / iters)
    return Timing(
        samples_s=samples,
        timer=timer_name,
        first_call_s=first_s,
        warmup_calls=len(warm),
        iters_per_sample=iters,
        injected_s=inject_fraction * estimate if delay is not None else 0.0,
        launch_fraction=statistics.median(launch_shares) if is_cuda(device) and launch_shares else None,
    )


# ------------------------------------------------------------------------------------ device time
#
# Two methods, one result type. A step without per-call setup is captured into a CUDA graph and the
# graph is replayed (the method of triton.testing.do_bench_cudagraph): nothing of the host remains
# between the kernels, so the figure is the same on a fast and on a slow host CPU. A step with a
# per-call setup cannot be replayed without its setup (the runner avoids those: a backward runs over
# a retained autograd graph), and some steps cannot be captured at all (they synchronise, allocate
# on the host, or copy from pageable memory); for those, the profiler's device activity gives each
# kernel's start and end on the device and the call's time is the time the device was busy with the
# call's kernels.

DEVICE_ACTIVITY = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})  # kineto activity types of device work
CALL_TAG = "attnsuite.device_time.call#"  # record_function name of a profiled call (index appended)


@dataclass(frozen=True)
class DeviceTimerConfig:
    """How :func:`device_time` warms up, unrolls and samples.

    Graph: ``warmup_calls`` on the capture stream, then one replay of a one-call graph gives the
    call's device time; the graph holds ``unroll_count(that, replay_s, max_unroll)`` calls; the
    sample count is ``replay_target_s`` over the replay's device time, in ``[min_replays,
    max_replays]``; a ``guard_s`` spin kernel queued before each timed replay keeps the host's
    launch of the replay out of the measured interval. Kernel-sum: the same warm-up, then
    ``profile_target_s`` over the estimate calls, in ``[min_profiled_calls, max_profiled_calls]``,
    in one profiler session, each call isolated by a synchronisation and ``gap_s`` of idle host
    time on both sides.
    """

    warmup_calls: int = 3
    estimate_calls: int = 3
    replay_s: float = 0.01  # long replays: do_bench_cudagraph's are 20 ms (2 ms ones read ~2% fast on an H200)
    max_unroll: int = 100
    replay_target_s: float = 0.05
    min_replays: int = 3
    max_replays: int = 50
    guard_s: float = 0.0002
    profile_target_s: float = 0.05
    min_profiled_calls: int = 3
    max_profiled_calls: int = 20
    gap_s: float = 0.001
    # seconds per call already known (the event timer's median of the same, warm step): the warm-up
    # and estimate calls are skipped, which halves device time's cost on slow cases
    estimate_s: Optional[float] = None


DEVICE_DEFAULT = DeviceTimerConfig()


@dataclass
class DeviceTiming(SampleStats):
    """Device time of one call per sample (seconds), how it was measured, and why not by graph."""

    samples_s: list[float]
    method: str  # one of record.DEVICE_METHODS
    note: str = ""  # why there is no graph replay: "per-call setup", or the capture's error (first line)
    calls_per_sample: int = 1  # graph: calls unrolled in one replay; kernel-sum: 1
    stats: dict[str, float] = field(default_factory=dict)
    # kernel-sum: the fastest profiled call's device work by kernel (kernel_breakdown), so a reading
    # that differs between two measurements of one step can be traced to the kernels or copies
    breakdown: Optional[dict[str, Any]] = None


class DeviceTimeError(RuntimeError):
    """Device time could not be measured (e.g. the profiler saw no device activity)."""


class CaptureFailed(Exception):
    """The step could not be captured into a CUDA graph; the message is the reason, one line."""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: a reason short enough for a record."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def unroll_count(estimate_s: float, target_s: float, cap: int) -> int:
    """Calls to unroll in one graph so a replay lasts about ``target_s``: ceil(target / estimate) in [1, cap].

    Device time sizes it (see ``_cuda_graph_samples``); the guard kernel keeps the host out of every
    replay's interval whatever its length.
    """
    if cap < 1:
        raise ValueError(f"max_unroll must be at least 1, got {cap}")
    if not estimate_s > 0:  # zero or NaN: the clock did not resolve the call
        return cap
    return int(min(cap, max(1, math.ceil(target_s / estimate_s - 1e-9))))  # 2 ms / 0.4 ms is 5, not 6


def sample_count(estimate_s: float, target_s: float, lo: int, hi: int) -> int:
    """round(target / estimate) clamped to ``[lo, hi]`` (``hi`` when the estimate is not positive)."""
    if not estimate_s > 0:
        return hi
    return int(min(hi, max(lo, round(target_s / estimate_s))))


def busy_time(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time the device was busy.

    Equal to the sum of the durations when kernels run one after another (one stream); kernels that
    overlap on several streams count once, as the wall time they occupied.
    """
    total = 0.0
    cur_start = cur_end = None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def attribute(windows: Sequence[tuple[float, float]], intervals: Iterable[tuple[float, float]],
              margin: float) -> list[list[tuple[float, float]]]:
    """Assign each device interval to the call window that contains its start (widened by ``margin``).

    ``windows`` are the host time ranges of the timed calls, in call order and disjoint; a call
    synchronises before its window closes, so all its device work starts (and ends) inside it.
    Intervals starting in no window (the per-call setup, warm-up, the profiler's own work) belong to
    no call and are dropped. ``margin`` absorbs the offset between the device and host clocks.
    """
    order = sorted(range(len(windows)), key=lambda i: windows[i][0])
    starts = [windows[i][0] - margin for i in order]
    for a, b in zip(order, order[1:]):
        if windows[a][1] + margin >= windows[b][0] - margin:
            raise ValueError(f"call windows {a} and {b} overlap once widened by the margin {margin}")
    per_call: list[list[tuple[float, float]]] = [[] for _ in windows]
    for start, end in intervals:
        pos = bisect.bisect_right(starts, start) - 1
        if pos < 0:
            continue
        i = order[pos]
        if start <= windows[i][1] + margin:
            per_call[i].append((start, end))
    return per_call


@dataclass(frozen=True)
class ProfEvent:
    """One profiler event, reduced to what attribution needs (times in ns on the host's clock)."""

    name: str
    activity: str  # kineto activity type: "user_annotation", "cpu_op", "kernel", "gpu_memset", ...
    on_host: bool
    start_ns: int
    end_ns: int


def prof_events(prof) -> list[ProfEvent]:
    """The events of a finished ``torch.profiler.profile`` session as :class:`ProfEvent`."""
    from torch.autograd import DeviceType

    out = []
    for e in prof.profiler.kineto_results.events():
        out.append(ProfEvent(e.name(), _activity(e), e.device_type() == DeviceType.CPU,
                             int(e.start_ns()), int(e.start_ns() + e.duration_ns())))
    return out


def _activity(e) -> str:
    """The kineto activity type of an event. torch 2.11's ``_KinetoEvent`` has no ``activity_type()``,
    so it is derived: a range we named is an annotation (on the host, and mirrored on the device
    timeline, where it must not count as work); other device events are kernels, copies or memsets."""
    from torch.autograd import DeviceType

    if hasattr(e, "activity_type"):
        return str(e.activity_type())
    name = e.name()
    on_host = e.device_type() == DeviceType.CPU
    if name.startswith(CALL_TAG):
        return "user_annotation" if on_host else "gpu_user_annotation"
    if on_host:
        return "cpu_op"
    lowered = name.lower()
    if lowered.startswith("memcpy"):
        return "gpu_memcpy"
    if lowered.startswith("memset"):
        return "gpu_memset"
    return "kernel"


def is_device_work(event: ProfEvent) -> bool:
    """Kernels, memsets and memcopies: work the device did (not annotations, not runtime calls).

    Memsets and copies count: a call that zeroes an accumulator or copies a buffer does that work on
    every call, and a captured graph replays those nodes too.
    """
    return not event.on_host and event.activity in DEVICE_ACTIVITY


def split_events(events: Sequence[ProfEvent], count: int,
                 is_work: Callable[[ProfEvent], bool] = is_device_work,
                 ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(host windows of calls 0..count-1, device-work intervals) from one profiled session.

    Raises :class:`DeviceTimeError` when a call's window is missing or repeated.
    """
    windows: dict[int, tuple[int, int]] = {}
    for e in events:
        if e.on_host and e.activity == "user_annotation" and e.name.startswith(CALL_TAG):
            index = int(e.name[len(CALL_TAG):])
            if index in windows:
                raise DeviceTimeError(f"profiled call {index} appears twice in the trace")
            windows[index] = (e.start_ns, e.end_ns)
    missing = [i for i in range(count) if i not in windows]
    if missing:
        raise DeviceTimeError(f"the profiler lost the ranges of profiled calls {missing}")
    intervals = [(e.start_ns, e.end_ns) for e in events if is_work(e)]
    return [windows[i] for i in range(count)], intervals


def profiled_calls(fn: Callable[[], object], setup: Optional[Callable[[], None]], count: int, gap_s: float,
                   sync: Callable[[], None], activities: Sequence[Any]) -> list[ProfEvent]:
    """Run ``count`` calls of ``fn`` in ONE profiler session, each in its own named range.

    Per call: setup, synchronise, ``gap_s`` idle, [range: the call, synchronise], ``gap_s`` idle.
    The synchronisations end every piece of device work before the next one starts on the host, and
    the idle gaps put ``gap_s`` of host time between the call's window and anything else, which is
    what lets :func:`attribute` tell the call's kernels from its setup's by time alone. One untimed
    call comes first: the profiler's start-up cost lands there.
    """
    from torch.profiler import profile, record_function

    with profile(activities=list(activities)) as prof:
        for index in range(-1, count):
            if setup is not None:
                setup()
            sync()
            time.sleep(gap_s)
            if index < 0:
                fn()
                sync()
            else:
                with record_function(f"{CALL_TAG}{index}"):
                    fn()
                    sync()
            time.sleep(gap_s)
    return prof_events(prof)


def kernel_sum_samples(events: Sequence[ProfEvent], count: int, margin_ns: float,
                       is_work: Callable[[ProfEvent], bool] = is_device_work) -> list[float]:
    """Seconds of device work per profiled call, from the session's events.

    Raises :class:`DeviceTimeError` when a call got no device work: either the profiler saw no device
    activity (CUPTI unavailable) or attribution failed; a zero would be a wrong time, not a fast one.
    """
    windows, intervals = split_events(events, count, is_work)
    per_call = attribute(windows, intervals, margin_ns)
    empty = [i for i, iv in enumerate(per_call) if not iv]
    if empty:
        why = ("the profiler recorded no device activity" if not intervals
               else "device work could not be attributed to every call")
        raise DeviceTimeError(f"kernel-sum: no device work in {len(empty)} of {count} profiled calls ({why})")
    return [busy_time(iv) / 1e9 for iv in per_call]


def event_median_s(fn: Callable[[], object], setup: Optional[Callable[[], None]], calls: int) -> float:
    """Median CUDA-event-timed seconds of ``calls`` calls of ``fn`` (``setup`` before each, outside the
    events), on the current stream; no warm-up of its own."""
    times = []
    for _ in range(max(1, calls)):
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


BREAKDOWN_TOP = 8  # kernels named in a kernel-sum record's breakdown (the rest are summed)


def fastest_call_breakdown(events: Sequence[ProfEvent], count: int, samples: Sequence[float], margin_ns: float,
                           top: int = BREAKDOWN_TOP) -> dict[str, Any]:
    """:func:`kernel_breakdown` of the profiled call with the least device work (the device min)."""
    windows, _ = split_events(events, count)
    start, end = windows[min(range(count), key=lambda i: samples[i])]
    return kernel_breakdown([e for e in events if start - margin_ns <= e.start_ns <= end + margin_ns], top)


def _cuda_kernel_sum(fn: Callable[[], object], setup: Optional[Callable[[], None]],
                     config: DeviceTimerConfig) -> tuple[list[float], dict[str, Any]]:
    """Kernel-sum samples of ``fn`` on the current CUDA device, and the fastest call's breakdown."""
    from torch.profiler import ProfilerActivity

    if config.estimate_s is not None:  # the caller's event timer already warmed the step and timed it
        estimate = config.estimate_s
    else:
        event_median_s(fn, setup, config.warmup_calls)
        estimate = event_median_s(fn, setup, config.estimate_calls)
    count = sample_count(estimate, config.profile_target_s, config.min_profiled_calls, config.max_profiled_calls)
    events = profiled_calls(fn, setup, count, config.gap_s, torch.cuda.synchronize,
                            (ProfilerActivity.CPU, ProfilerActivity.CUDA))
    margin = config.gap_s * 1e9 / 2
    samples = kernel_sum_samples(events, count, margin_ns=margin)
    return samples, fastest_call_breakdown(events, count, samples, margin)


def kernel_breakdown(events: Sequence[ProfEvent], top: int = 15,
                     is_work: Callable[[ProfEvent], bool] = is_device_work) -> dict[str, Any]:
    """Device work of a profiled session by kernel name: the ``top`` names by total device time
    (name, calls, ms), the rest summed, and the session's total and busy device milliseconds.

    Where a step's time goes, for a diagnosis (e.g. a distributed step's compute against its
    copies and merges); busy time counts overlapping work once, the total does not.
    """
    per: dict[str, list[float]] = {}
    intervals = []
    for e in events:
        if is_work(e):
            row = per.setdefault(e.name, [0, 0.0])
            row[0] += 1
            row[1] += (e.end_ns - e.start_ns) / 1e6
            intervals.append((e.start_ns, e.end_ns))
    ranked = sorted(per.items(), key=lambda kv: kv[1][1], reverse=True)
    rows = [{"name": name[:160], "calls": int(n), "ms": round(ms, 4)} for name, (n, ms) in ranked[:top]]
    rest = ranked[top:]
    return {"kernels": rows,
            "other": {"names": len(rest), "calls": int(sum(n for _, (n, _) in rest)),
                      "ms": round(sum(ms for _, (_, ms) in rest), 4)},
            "total_ms": round(sum(ms for _, (_, ms) in ranked), 4),
            "busy_ms": round(busy_time(intervals) / 1e6, 4)}


def profile_step(fn: Callable[[], object], device: str, top: int = 15) -> dict[str, Any]:
    """One profiled call of ``fn`` on a CUDA ``device``: :func:`kernel_breakdown` of its device work."""
    from torch.profiler import ProfilerActivity

    with torch.cuda.device(torch.device(device)):
        events = profiled_calls(fn, None, 1, 0.001, torch.cuda.synchronize,
                                (ProfilerActivity.CPU, ProfilerActivity.CUDA))
    (start, end), = split_events(events, 1)[0]  # the profiled call's window (the untimed first call is outside)
    return kernel_breakdown([e for e in events if start <= e.start_ns <= end], top)


_SIDE_STREAMS: dict[int, Any] = {}


def _side_stream() -> Any:
    """One capture stream per device: capture cannot run on the legacy default stream."""
    index = torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream()
    return _SIDE_STREAMS[index]


@contextlib.contextmanager
def capture_stream(device: str) -> Iterator[None]:
    """Run the body on the stream device time captures on (a no-op off CUDA).

    Autograd runs a backward's kernels on the streams its forward ran on, so a backward that
    device time will capture needs its forward run here: one run on the default stream made every
    such capture fail on an H200 ("operation would make the legacy stream depend on a capturing
    blocking stream").
    """
    if not is_cuda(device):
        yield
        return
    with torch.cuda.device(torch.device(device)):
        stream = _side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)


def _release_graph(graph: Any) -> None:
    """Drop a graph's executable and its private memory pool, and give the memory back to the device."""
    torch.cuda.synchronize()
    graph.reset()
    torch.cuda.empty_cache()


def _capture(fn: Callable[[], object], calls: int, stream: Any) -> Any:
    """A CUDA graph of ``calls`` unrolled calls of ``fn``, or :class:`CaptureFailed` (process left usable).

    capture_begin/capture_end are called directly rather than through ``torch.cuda.graph``: when the
    body fails, the context manager's exit raises capture_end's own error ("operation failed due to
    a previous error during capture") over the body's, and the body's is the reason worth recording.
    """
    graph = torch.cuda.CUDAGraph()
    failure: Optional[BaseException] = None
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        try:
            graph.capture_begin()
        except Exception as exc:  # e.g. another capture under way: nothing was captured
            failure = exc
        else:
            try:
                for _ in range(calls):
                    fn()
            except Exception as exc:  # the step is not capturable: its error is the reason
                failure = exc
            try:
                graph.capture_end()  # ends the capture on the stream, also after a failed body
            except Exception as exc:
                failure = failure or exc
    if failure is None:
        return graph
    reason = first_line(failure)
    failure = None  # its traceback holds frames whose tensors live in the graph's pool
    gc.collect()
    _release_graph(graph)
    _end_generator_capture(stream)
    raise CaptureFailed(reason)


def _end_generator_capture(stream: Any) -> None:
    """Take the CUDA random generator out of capture mode after a failed capture.

    capture_end checks the stream's capture before it ends the generator's capture, so after a body
    that broke the capture the generator stays in capture mode and every later random draw raises
    "Offset increment outside graph capture encountered unexpectedly". On an H200 every ring-sim
    case (not capturable) left its worker so, and 32 replacement workers cost 260 s of a full tier.
    An empty capture that succeeds runs the generator's capture prologue and epilogue, which ends it.
    """
    empty = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(stream):
            empty.capture_begin()
            empty.capture_end()
    except Exception:  # nothing more to do here: the worker's health check after the case decides
        pass
    finally:
        empty.reset()


def _timed_replays(graph: Any, count: int, guard: Optional[Callable[[], None]]) -> list[float]:
    """Seconds of each of ``count`` event-timed replays of ``graph`` (a guard kernel before each)."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    for start, end in zip(starts, ends):
        if guard is not None:
            guard()  # the device spins while the host queues the start event and the replay
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def _cuda_graph_samples(fn: Callable[[], object], config: DeviceTimerConfig) -> tuple[list[float], int]:
    """(seconds per call for each timed replay, calls per replay) on the current CUDA device.

    How many calls one replay unrolls is sized by the device time of one call (a one-call graph,
    replayed once), never by the event-timed estimate: that includes the host, and a replay length
    that followed the host's speed moved a host-bound step's device time by 3% between a fast and a
    slow host on an H200 (the graph launch's share of each replay changed with it).
    """
    stream = _side_stream()
    current = torch.cuda.current_stream()
    stream.wait_stream(current)  # the inputs were written on the caller's stream
    with torch.cuda.stream(stream):  # warm up where the capture runs (per-stream handles, workspaces)
        for _ in range(1 if config.estimate_s is not None else config.warmup_calls):
            fn()  # with an estimate the caller's event timer already warmed the step: one call here
    current.wait_stream(stream)
    guard = make_delay(f"cuda:{torch.cuda.current_device()}", config.guard_s)
    graph = _capture(fn, 1, stream)
    samples: list[float] = []
    try:
        current.wait_stream(stream)
        graph.replay()  # the first replay uploads the graph: untimed
        one_call = _timed_replays(graph, 1, guard)[0]
        calls = unroll_count(one_call, config.replay_s, config.max_unroll)
        if calls == 1:
            samples.append(one_call)  # the sizing replay is a sample like the others
        else:
            _release_graph(graph)
            graph = None
            graph = _capture(fn, calls, stream)
            current.wait_stream(stream)
            graph.replay()
        replays = sample_count(one_call * calls, config.replay_target_s, config.min_replays, config.max_replays)
        samples += [t / calls for t in _timed_replays(graph, replays - len(samples), guard)]
    finally:
        if graph is not None:
            _release_graph(graph)
        graph = None
    return samples, calls


GraphSampler = Callable[[Callable[[], object], DeviceTimerConfig], tuple[list[float], int]]
KernelSampler = Callable[[Callable[[], object], Optional[Callable[[], None]], DeviceTimerConfig],
                         tuple[list[float], Optional[dict[str, Any]]]]


class KernelSumDeferred(Exception):
    """The step needs the profiler (kernel-sum) and the caller asked to be told rather than profile now.

    The profiler leaves CUPTI's callbacks in the process after it stops, and they slow every later
    kernel launch (seen on an H200: host-bound cases' event times 2-3x, the memory probe 5x), so the
    runner measures these steps after every other measurement of the run. ``str(exc)`` says why no
    graph could be used.
    """


def choose_device_time(fn: Callable[[], object], setup: Optional[Callable[[], None]], config: DeviceTimerConfig,
                       allow_graph: bool, graph_sampler: GraphSampler, kernel_sampler: KernelSampler,
                       defer_kernel_sum: bool = False) -> DeviceTiming:
    """The rule of :func:`device_time`, with the two measurements injected (tests use fakes).

    Graph replay when there is no per-call setup, the caller allows it and capture succeeds;
    otherwise kernel-sum, with the reason in ``note``.
    """
    if setup is not None:
        note = "per-call setup"
    elif not allow_graph:
        note = "graph capture not allowed by the caller"
    else:
        try:
            samples, calls = graph_sampler(fn, config)
            return DeviceTiming(samples, GRAPH_REPLAY, calls_per_sample=calls)
        except CaptureFailed as exc:
            note = f"graph capture failed: {exc}"
    if defer_kernel_sum:
        raise KernelSumDeferred(note)
    samples, breakdown = kernel_sampler(fn, setup, config)
    return DeviceTiming(samples, KERNEL_SUM, note=note, breakdown=breakdown)


def device_time(fn: Callable[[], object], device: str, *, setup: Optional[Callable[[], None]] = None,
                config: DeviceTimerConfig = DEVICE_DEFAULT, allow_graph: bool = True,
                defer_kernel_sum: bool = False) -> DeviceTiming:
    """Device time of one call of ``fn`` on a CUDA ``device``, independent of the host's speed.

    ``setup`` runs before each call, untimed (e.g. the forward before a timed backward); a step with
    a setup is measured by kernel-sum. Errors of ``fn`` itself outside capture propagate (they are the
    case's); a failed capture falls back to kernel-sum and says why in ``note``. Raises ValueError
    for a non-CUDA device (there the event timer's host clock already is the device's clock) and
    :class:`DeviceTimeError` when kernel-sum sees no device work. With ``defer_kernel_sum``, a step
    that would need kernel-sum raises :class:`KernelSumDeferred` instead of starting the profiler.
    """
    if not is_cuda(device):
        raise ValueError(f"device_time measures CUDA devices, not {device!r}: on CPU timing.measure's "
                         "perf_counter time already is the device time")
    with torch.cuda.device(torch.device(device)):
        return choose_device_time(fn, setup, config, allow_graph, _cuda_graph_samples, _cuda_kernel_sum,
                                  defer_kernel_sum)
