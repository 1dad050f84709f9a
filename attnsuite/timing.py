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
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch


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
FULL_GPU = TimerConfig(warmup_s=0.025, min_warmup=3, target_s=0.1, min_samples=10, max_samples=200)


@dataclass
class Timing:
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

    def __post_init__(self) -> None:
        if not self.stats and self.samples_s:
            self.stats = summarize(self.samples_s)

    @property
    def median_s(self) -> float:
        return self.stats["median"]

    @property
    def iqr_s(self) -> float:
        return self.stats["iqr"]

    def as_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


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


def flush_l2(device: str) -> None:
    """Overwrite a 256 MiB buffer so the next call starts with a cold L2 (what do_bench does)."""
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    buf.zero_()


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
    the first call apart (set False when the caller already did). ``inject_fraction`` > 0 makes each
    call really slower by that fraction of the warm-up median (for the gate's detection tests).
    ``clock``/``sync`` replace the host clock and device sync (tests); a custom clock forces the
    host-clock path even on CUDA.
    """
    use_events = is_cuda(device) and clock is None
    sync = sync or device_sync(device)
    clock = clock or time.perf_counter
    timer_name = "cuda-events" if use_events else ("perf_counter" if clock is time.perf_counter else "custom-clock")

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

    first_s = host_time_one() if first_call else None
    launch_shares.clear()  # the first call compiles: not a launch

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
