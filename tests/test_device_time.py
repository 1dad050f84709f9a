"""Device time's rules on CPU: unrolling, attribution of device work to calls, the choice of method.

The CUDA measurements themselves (graph replay, the profiler's device activity) are checked on a GPU
in tests/test_gpu_timing.py; here their pure parts run on synthetic event lists, the profiling
protocol runs on the real profiler with CPU ops standing in for kernels, and the choice between the
two methods runs with fake samplers.
"""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch
from torch.profiler import ProfilerActivity

from attnsuite import timing
from attnsuite.timing import CALL_TAG, ProfEvent

# ------------------------------------------------------------------------------ unrolling, counts


@pytest.mark.parametrize("estimate_s,expected", [
    (0.0004, 3),  # ceil(1 ms / 0.4 ms)
    (0.001, 1),
    (0.005, 1),  # a call longer than the target: one per replay, never zero
    (1e-6, 100),  # capped
    (0.0, 100),  # the clock did not resolve the call
    (math.nan, 100),
])
def test_a_graph_unrolls_enough_calls_for_a_replay_of_the_target_length_up_to_the_cap(estimate_s, expected):
    assert timing.unroll_count(estimate_s, target_s=0.001, cap=100) == expected


def test_an_unroll_cap_below_one_is_refused():
    with pytest.raises(ValueError, match="max_unroll"):
        timing.unroll_count(0.001, 0.001, 0)


@pytest.mark.parametrize("estimate_s,expected", [(0.01, 5), (0.0001, 20), (1.0, 2), (0.0, 20)])
def test_the_sample_count_is_the_budget_over_the_estimate_within_bounds(estimate_s, expected):
    assert timing.sample_count(estimate_s, target_s=0.05, lo=2, hi=20) == expected


# ------------------------------------------------------------------------ busy time, attribution


@pytest.mark.parametrize("intervals,busy", [
    ([], 0),
    ([(0, 10), (20, 25)], 15),  # one stream: the sum of durations
    ([(0, 10), (5, 15)], 15),  # overlapping streams: the wall time they covered, once
    ([(0, 30), (5, 10), (12, 20)], 30),  # nested
    ([(20, 25), (0, 10)], 15),  # order does not matter
])
def test_busy_time_is_the_length_of_the_union_of_intervals(intervals, busy):
    assert timing.busy_time(intervals) == busy


WINDOWS = [(100, 200), (400, 500)]


@pytest.mark.parametrize("interval,call", [
    ((120, 150), 0),  # inside the first call
    ((205, 240), 0),  # starts just after the window closes: clock offset within the margin
    ((360, 380), 1),  # starts just before the second window opens: the same, the other side
    ((10, 60), None),  # before any call: the setup's work
    ((300, 310), None),  # between the calls, beyond both margins: the next setup's work
    ((600, 700), None),  # after the last call
])
def test_device_work_goes_to_the_call_whose_window_holds_its_start(interval, call):
    per_call = timing.attribute(WINDOWS, [interval], margin=50)
    owners = [i for i, got in enumerate(per_call) if got]
    assert owners == ([] if call is None else [call])


def test_call_windows_that_overlap_once_widened_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        timing.attribute([(100, 200), (260, 300)], [], margin=50)


def _ev(name, activity, start, end, on_host=False):
    return ProfEvent(name, activity, on_host, start, end)


def _session(n_calls=2, unit=1):
    """A synthetic trace: per call a setup kernel, the call's range, two kernels and a memset.

    Times in ``unit`` ns: per call 1600 units of device work belong to it, 10000 units apart.
    """
    events = []
    for i in range(n_calls):
        base = i * 10_000

        def ev(name, activity, start, end, on_host=False):
            return _ev(name, activity, (base + start) * unit, (base + end) * unit, on_host)

        events += [
            ev("setup_kernel", "kernel", 100, 900),
            ev(f"{CALL_TAG}{i}", "user_annotation", 2_000, 6_000, on_host=True),
            ev(f"{CALL_TAG}{i}", "gpu_user_annotation", 2_100, 5_000),  # a span, not work
            ev("cudaLaunchKernel", "cuda_runtime", 2_010, 2_020, on_host=True),
            ev("attn_fwd", "kernel", 2_100, 3_100),
            ev("zero_acc", "gpu_memset", 3_100, 3_200),
            ev("epilogue", "kernel", 3_500, 4_000),
        ]
    return events


def test_kernel_sum_adds_the_calls_kernels_and_memsets_and_nothing_else():
    samples = timing.kernel_sum_samples(_session(2), 2, margin_ns=500)
    # 1000 + 100 + 500 ns per call; the setup kernel, the annotation span and the runtime call do not count
    assert samples == [pytest.approx(1.6e-6), pytest.approx(1.6e-6)]


def test_a_kernel_sum_breakdown_is_the_fastest_calls_work_by_kernel():
    events = _session(3)  # per call: attn_fwd 1000, zero_acc 100, epilogue 500 ns
    epilogues = [i for i, e in enumerate(events) if e.name == "epilogue"]
    for call, length in ((1, 800), (2, 450)):  # call 1 slower, call 2 the fastest
        e = events[epilogues[call]]
        events[epilogues[call]] = dataclasses.replace(e, end_ns=e.start_ns + length)
    samples = timing.kernel_sum_samples(events, 3, margin_ns=500)
    assert samples == [pytest.approx(1.6e-6), pytest.approx(1.9e-6), pytest.approx(1.55e-6)]
    table = timing.fastest_call_breakdown(events, 3, samples, margin_ns=500)
    assert [(k["name"], k["calls"], k["ms"]) for k in table["kernels"]] == [
        ("attn_fwd", 1, 0.001), ("epilogue", 1, 0.0004), ("zero_acc", 1, 0.0001)]  # 450 ns rounds to 0.0004 ms
    assert table["busy_ms"] == pytest.approx(0.00155, abs=6e-5)  # the fastest call (1550 ns), not the first


def test_kernel_sum_without_device_activity_is_an_error_not_a_zero_time():
    host_only = [e for e in _session(2) if e.on_host]
    with pytest.raises(timing.DeviceTimeError, match="no device activity"):
        timing.kernel_sum_samples(host_only, 2, margin_ns=500)


def test_kernel_sum_with_a_call_left_without_device_work_is_an_error():
    events = [e for e in _session(2) if not (e.start_ns >= 10_000 and e.activity in ("kernel", "gpu_memset")
                                             and e.name != "setup_kernel")]
    with pytest.raises(timing.DeviceTimeError, match="1 of 2"):
        timing.kernel_sum_samples(events, 2, margin_ns=500)


@pytest.mark.parametrize("damage,message", [("drop", "lost the ranges"), ("repeat", "appears twice")])
def test_a_call_range_missing_or_repeated_in_the_trace_is_an_error(damage, message):
    events = _session(2)
    ranges = [e for e in events if e.activity == "user_annotation"]
    events = [e for e in events if e is not ranges[1]] if damage == "drop" else events + [ranges[0]]
    with pytest.raises(timing.DeviceTimeError, match=message):
        timing.kernel_sum_samples(events, 2, margin_ns=500)


def test_the_profiling_protocol_keeps_the_setup_out_of_every_call_on_the_real_profiler():
    # CPU ops stand in for kernels: the setup runs aten::add, the call aten::mm
    a = torch.randn(64, 64)
    calls = 3
    events = timing.profiled_calls(lambda: a @ a, lambda: a + a, calls, gap_s=0.002, sync=lambda: None,
                                   activities=[ProfilerActivity.CPU])

    def stand_in(e: ProfEvent) -> bool:
        return e.on_host and e.activity == "cpu_op" and e.name in ("aten::add", "aten::mm")

    windows, work = timing.split_events(events, calls, stand_in)
    per_call = timing.attribute(windows, work, margin=1e6)
    names = {(e.start_ns, e.end_ns): e.name for e in events if stand_in(e)}
    assert [[names[iv] for iv in got] for got in per_call] == [["aten::mm"]] * calls
    # one untimed call first (profiler start-up) plus one per timed call; a setup before each
    assert sorted(names.values()).count("aten::mm") == calls + 1
    assert sorted(names.values()).count("aten::add") == calls + 1


def test_the_cuda_kernel_sum_profiles_a_budgeted_number_of_calls_in_one_session(monkeypatch):
    sessions = []

    def fake_profiled_calls(fn, setup, count, gap_s, sync, activities):
        sessions.append((count, gap_s))
        return _session(count, unit=1000)  # 1.6 ms of device work per call, calls 10 ms apart

    monkeypatch.setattr(timing, "event_median_s", lambda fn, setup, calls: 0.01)
    monkeypatch.setattr(timing, "profiled_calls", fake_profiled_calls)
    cfg = timing.DeviceTimerConfig(profile_target_s=0.05, min_profiled_calls=5, max_profiled_calls=20,
                                   gap_s=0.001)
    samples, breakdown = timing._cuda_kernel_sum(lambda: None, None, cfg)
    assert sessions == [(5, 0.001)]  # 50 ms / 10 ms per call, in one session
    assert samples == [pytest.approx(1.6e-3)] * 5
    # the fastest call's kernels (one call's worth: its setup's kernel lies outside the window)
    assert [(k["name"], k["calls"]) for k in breakdown["kernels"]] == [("attn_fwd", 1), ("epilogue", 1),
                                                                        ("zero_acc", 1)]
    assert breakdown["busy_ms"] == pytest.approx(1.6)


# ----------------------------------------------------------------------------- choice of method


class Samplers:
    """Fake graph and kernel-sum samplers that record which ran."""

    def __init__(self, graph_raises=None):
        self.ran = []
        self.graph_raises = graph_raises

    def graph(self, fn, config):
        self.ran.append("graph")
        if self.graph_raises is not None:
            raise self.graph_raises
        return [2e-3, 1e-3, 3e-3], 7

    def kernels(self, fn, setup, config):
        self.ran.append("kernel-sum")
        return [5e-3, 4e-3, 6e-3], {"kernels": [{"name": "k", "calls": 1, "ms": 4.0}]}

    def choose(self, setup=None, allow_graph=True):
        return timing.choose_device_time(lambda: None, setup, timing.DEVICE_DEFAULT, allow_graph,
                                         self.graph, self.kernels)


def test_a_step_without_setup_is_timed_by_graph_replay():
    s = Samplers()
    t = s.choose()
    assert s.ran == ["graph"]
    assert (t.method, t.note, t.calls_per_sample) == ("cuda-graph", "", 7)
    assert (t.median_s, t.min_s) == (2e-3, 1e-3) and t.iqr_s == pytest.approx(1e-3)


@pytest.mark.parametrize("setup,allow_graph,note", [
    (lambda: None, True, "per-call setup"),
    (None, False, "graph capture not allowed by the caller"),
])
def test_a_step_with_setup_or_without_leave_to_capture_is_timed_by_kernel_sum(setup, allow_graph, note):
    s = Samplers()
    t = s.choose(setup, allow_graph)
    assert s.ran == ["kernel-sum"]  # no capture attempted
    assert (t.method, t.note, t.median_s) == ("kernel-sum", note, 5e-3)


def test_a_failed_capture_falls_back_to_kernel_sum_and_says_why():
    s = Samplers(graph_raises=timing.CaptureFailed("RuntimeError: operation not permitted when stream is capturing"))
    t = s.choose()
    assert s.ran == ["graph", "kernel-sum"]
    assert t.method == "kernel-sum"
    assert t.note == "graph capture failed: RuntimeError: operation not permitted when stream is capturing"


def test_an_error_of_the_step_itself_outside_capture_is_the_cases_error_not_a_fallback():
    s = Samplers(graph_raises=RuntimeError("illegal memory access"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        s.choose()
    assert s.ran == ["graph"]


def test_device_time_is_refused_for_a_cpu_device():
    with pytest.raises(ValueError, match="CUDA devices"):
        timing.device_time(lambda: None, "cpu")


@pytest.mark.parametrize("exc,line", [
    (RuntimeError("CUDA error: operation not permitted\nCUDA kernel errors might be reported..."),
     "RuntimeError: CUDA error: operation not permitted"),
    (MemoryError(), "MemoryError"),
])
def test_a_reason_is_the_exception_type_and_first_line(exc, line):
    assert timing.first_line(exc) == line


# ------------------------------------------------- the CUDA orchestration, on a fake CUDA (no GPU here)


class FakeCuda:
    """Just enough of torch.cuda for timing's graph path: a device clock that the step advances.

    Each call of the step costs ``call_s`` of device time; a replay costs the calls captured into it.
    ``fail`` makes capture fail at "begin", in the "body" (the step raises while capturing) or at "end".
    """

    def __init__(self, call_s=1e-4, fail=None):
        self.now = 0.0
        self.call_s = call_s
        self.fail = fail
        self.capturing = False
        self.log = []
        world = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = world.now

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3

        class Graph:
            def __init__(self):
                self.calls = 0

            def capture_begin(self):
                world.log.append("begin")
                if world.fail == "begin":
                    raise RuntimeError("another capture is under way")
                world.capturing, world.graph = True, self

            def capture_end(self):
                world.log.append("end")
                world.capturing = False
                if world.fail in ("body", "end"):
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

            def replay(self):
                world.log.append("replay")
                world.now += self.calls * world.call_s

            def reset(self):
                world.log.append("reset")

        self.Event, self.Graph = Event, Graph

    def step(self):
        if self.capturing:
            if self.fail == "body":
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore text")
            self.graph.calls += 1
        else:
            self.now += self.call_s

    def install(self, monkeypatch):
        import contextlib

        class Stream:
            def wait_stream(self, other):
                pass

        monkeypatch.setattr(torch.cuda, "CUDAGraph", self.Graph)
        monkeypatch.setattr(torch.cuda, "Event", self.Event)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: self.log.append("empty_cache"))
        monkeypatch.setattr(timing, "_side_stream", lambda: Stream())
        monkeypatch.setattr(timing, "make_delay", lambda device, s: (lambda: self.log.append("guard")))


def test_the_graph_path_sizes_the_unroll_by_one_call_then_unrolls_times_replays_and_frees_the_graph(monkeypatch):
    cuda = FakeCuda(call_s=4e-4)
    cuda.install(monkeypatch)
    cfg = timing.DeviceTimerConfig(replay_s=0.002, max_unroll=100, replay_target_s=0.05, min_replays=10,
                                   max_replays=50)
    samples, calls = timing._cuda_graph_samples(cuda.step, cfg)
    assert calls == 5  # ceil(2 ms / 0.4 ms)
    assert samples == [pytest.approx(4e-4)] * 25  # 50 ms of replays of 2 ms, per call
    # a one-call graph: captured, uploaded, one guarded timed replay that sizes the unroll, freed
    assert cuda.log[:7] == ["begin", "end", "replay", "guard", "replay", "reset", "empty_cache"]
    # the unrolled graph: captured, one untimed replay, a guard kernel before every timed replay, freed
    assert cuda.log[7:10] == ["begin", "end", "replay"]
    assert cuda.log[10:-2] == ["guard", "replay"] * 25
    assert cuda.log[-2:] == ["reset", "empty_cache"]


@pytest.mark.parametrize("host_estimate_s", [None, 4e-4, 0.02, 5.0])
def test_the_unroll_follows_the_device_time_of_a_call_not_the_hosts_estimate(monkeypatch, host_estimate_s):
    # a host-bound step's event-timed estimate depends on the host's speed; were the unroll sized by
    # it, the replay length (and the graph launch's share of it) would move with the host
    cuda = FakeCuda(call_s=4e-4)
    cuda.install(monkeypatch)
    cfg = timing.DeviceTimerConfig(replay_s=0.002, max_unroll=100, estimate_s=host_estimate_s)
    _, calls = timing._cuda_graph_samples(cuda.step, cfg)
    assert calls == 5


def test_a_call_long_enough_for_one_per_replay_keeps_its_sizing_replay_as_the_first_sample(monkeypatch):
    cuda = FakeCuda(call_s=0.03)
    cuda.install(monkeypatch)
    cfg = timing.DeviceTimerConfig(replay_s=0.01, replay_target_s=0.05, min_replays=3, max_replays=50)
    samples, calls = timing._cuda_graph_samples(cuda.step, cfg)
    assert calls == 1
    assert samples == [pytest.approx(0.03)] * 3  # round(50 ms / 30 ms) = 2, raised to min_replays
    assert cuda.log.count("begin") == 1  # one capture: the one-call graph serves
    assert cuda.log.count("replay") == 1 + 3  # upload, then three timed replays in all


@pytest.mark.parametrize("fail,reason", [
    ("begin", "RuntimeError: another capture is under way"),
    ("body", "RuntimeError: CUDA error: operation not permitted when stream is capturing"),
    ("end", "RuntimeError: CUDA error: operation failed due to a previous error during capture"),
])
def test_a_failed_capture_ends_the_capture_frees_the_graph_and_names_the_first_error(monkeypatch, fail, reason):
    cuda = FakeCuda(fail=fail)
    cuda.install(monkeypatch)
    with pytest.raises(timing.CaptureFailed) as info:
        timing._capture(cuda.step, 3, stream=None)
    assert str(info.value) == reason  # the step's own error, not capture_end's consequence of it
    capture = ["begin"] if fail == "begin" else ["begin", "end"]
    # the failed graph is freed, then an empty capture takes the random generator out of capture mode
    # (timing._end_generator_capture; the fake fails it the same way) and is freed too
    assert cuda.log == capture + ["reset", "empty_cache"] + capture + ["reset"]
    assert not cuda.capturing


def test_the_graph_is_freed_even_when_a_replay_fails(monkeypatch):
    cuda = FakeCuda()
    cuda.install(monkeypatch)

    def broken_replay(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cuda.Graph, "replay", broken_replay)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        timing._cuda_graph_samples(cuda.step, timing.DEVICE_DEFAULT)
    assert cuda.log[-2:] == ["reset", "empty_cache"]


@pytest.mark.parametrize("fail,method,note", [
    (None, "cuda-graph", ""),
    ("body", "kernel-sum", "graph capture failed: RuntimeError: CUDA error: operation not permitted when stream is "
                           "capturing"),
])
def test_device_time_on_a_fake_cuda_replays_a_graph_or_falls_back_with_the_reason(monkeypatch, fail, method, note):
    import contextlib

    cuda = FakeCuda(call_s=1e-3, fail=fail)
    cuda.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(timing, "_cuda_kernel_sum", lambda fn, setup, config: ([7e-4] * 5, {"kernels": []}))
    result = timing.device_time(cuda.step, "cuda:0")
    assert (result.method, result.note) == (method, note)
    assert result.median_s == pytest.approx(1e-3 if method == "cuda-graph" else 7e-4)


def test_kernel_breakdown_ranks_device_work_by_name_and_sums_the_rest():
    events = [e for e in _session(2)]  # per call: attn_fwd 1000, epilogue 500, zero_acc 100, setup 800 (ns)
    table = timing.kernel_breakdown(events, top=2)
    assert [(r["name"], r["calls"]) for r in table["kernels"]] == [("attn_fwd", 2), ("setup_kernel", 2)]
    assert table["kernels"][0]["ms"] == pytest.approx(2 * 1000 / 1e6)
    # annotations and runtime calls are not device work; the names past the top two are summed
    assert table["other"] == {"names": 2, "calls": 4, "ms": pytest.approx(2 * 600 / 1e6)}
    assert table["total_ms"] == pytest.approx(2 * 2400 / 1e6)
    assert table["busy_ms"] == pytest.approx(table["total_ms"])  # one stream: nothing overlaps
