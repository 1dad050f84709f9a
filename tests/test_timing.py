"""The timer's statistics and its order of work, on a synthetic clock (no wall-clock assertions)."""

from __future__ import annotations

import pytest

from attnsuite import timing


class FakeDevice:
    """A clock that advances only when the fake work runs: each call costs the next duration."""

    def __init__(self, durations, setup_cost=0.0):
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0
        self.setup_cost = setup_cost

    def clock(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1

    def setup(self) -> None:
        self.now += self.setup_cost


def test_summary_statistics_are_median_quartiles_and_iqr_of_the_samples():
    stats = timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["median"] == 3.0
    assert stats["q1"] == 2.0 and stats["q3"] == 4.0 and stats["iqr"] == 2.0
    assert stats["min"] == 1.0 and stats["max"] == 5.0 and stats["mean"] == 3.0


def test_median_ignores_a_few_outlier_samples():
    stats = timing.summarize([1.0] * 9 + [1000.0])
    assert stats["median"] == 1.0 and stats["iqr"] == 0.0


def test_first_call_is_timed_apart_and_warmup_is_excluded_from_the_samples():
    # first call: 100 s (compilation); two warm-up calls at 9 s; then every call 1 s
    dev = FakeDevice([100.0, 9.0, 9.0] + [1.0] * 1000)
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=2, target_s=20.0, min_samples=5, max_samples=50)
    result = timing.measure(dev.work, "cpu", cfg, clock=dev.clock)
    assert result.first_call_s == 100.0
    assert result.warmup_calls == 2
    assert result.samples_s == [1.0] * len(result.samples_s)
    assert result.median_s == 1.0 and result.iqr_s == 0.0
    # sample count sized from the warm-up estimate (9 s per call): target 20 s -> 2, clamped to min 5
    assert len(result.samples_s) == 5
    assert result.timer == "custom-clock"


def test_sample_count_follows_the_time_budget_within_its_bounds():
    dev = FakeDevice([1.0])
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=30.0, min_samples=5, max_samples=50)
    assert len(timing.measure(dev.work, "cpu", cfg, clock=dev.clock).samples_s) == 30
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=1e6, min_samples=5, max_samples=50)
    assert len(timing.measure(dev.work, "cpu", cfg, clock=dev.clock).samples_s) == 50


def test_per_sample_setup_stays_outside_the_timed_region():
    dev = FakeDevice([2.0], setup_cost=50.0)
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=10.0, min_samples=5, max_samples=10)
    result = timing.measure(dev.work, "cpu", cfg, setup=dev.setup, clock=dev.clock)
    assert result.samples_s == [2.0] * 5
    assert result.first_call_s == 52.0, "the first call's figure includes its setup"
    assert result.iters_per_sample == 1  # a setup forces one call per sample


def test_what_the_first_setup_compiles_shows_in_the_first_call_and_nowhere_in_the_samples():
    # a timed backward whose setup (the forward) compiles and autotunes on its first run: 40 s once
    dev = FakeDevice([3.0])
    costs = iter([40.0])
    setup = lambda: setattr(dev, "now", dev.now + next(costs, 0.5))  # noqa: E731
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=10.0, min_samples=5, max_samples=10)
    result = timing.measure(dev.work, "cpu", cfg, setup=setup, clock=dev.clock)
    assert result.first_call_s == 43.0
    assert result.samples_s == [3.0] * 5


def test_calls_shorter_than_the_minimum_sample_are_batched_and_reported_per_call():
    dev = FakeDevice([0.001])
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=1.0, min_samples=5, max_samples=10,
                             min_sample_s=0.1)
    result = timing.measure(dev.work, "cpu", cfg, clock=dev.clock)
    assert result.iters_per_sample == 100
    assert result.median_s == pytest.approx(0.001)


def test_synchronise_runs_around_every_host_timed_sample():
    dev = FakeDevice([1.0])
    syncs = []
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=5.0, min_samples=5, max_samples=5)
    timing.measure(dev.work, "cpu", cfg, clock=dev.clock, sync=lambda: syncs.append(dev.calls))
    # first call + 1 warm-up + 5 samples, each bracketed by two syncs
    assert len(syncs) == 2 * 7


def test_cpu_slowdown_injection_really_costs_the_asked_time():
    import time

    delay = timing.make_delay("cpu", 0.002)
    start = time.perf_counter()
    delay()
    assert time.perf_counter() - start >= 0.002
    assert timing.make_delay("cpu", 0.0) is None


def test_injected_slowdown_is_sized_from_the_warmup_median_and_recorded():
    dev = FakeDevice([0.004])
    cfg = timing.TimerConfig(warmup_s=0.0, min_warmup=3, target_s=0.02, min_samples=5, max_samples=5)
    result = timing.measure(dev.work, "cpu", cfg, clock=dev.clock, inject_fraction=0.25)
    assert result.injected_s == pytest.approx(0.001)


def test_quantile_of_no_samples_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        timing.quantile([], 0.5)


def test_launch_fraction_is_the_share_of_a_call_spent_before_it_returned_on_cuda():
    # fake clock: the call itself takes 1 unit on the host, waiting for the device 3 more
    now = [0.0]

    def call():
        now[0] += 1.0

    def sync():
        now[0] += 3.0

    t = timing.measure(call, "cuda", timing.TimerConfig(warmup_s=0.0, min_warmup=3, target_s=0.0, min_samples=2),
                       clock=lambda: now[0], sync=sync)
    # sync before t0 adds 3, so t0 sits after it: launch 1, total 1 + 3
    assert t.launch_fraction == pytest.approx(0.25)
    cpu = timing.measure(call, "cpu", timing.TimerConfig(warmup_s=0.0, min_warmup=3, target_s=0.0, min_samples=2),
                         clock=lambda: now[0], sync=sync)
    assert cpu.launch_fraction is None
