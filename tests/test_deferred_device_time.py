"""Kernel-sum device time is deferred to the end of the run, and then filled in everywhere.

The profiler that kernel-sum needs leaves CUPTI's callbacks in the worker, which slowed every later
launch on an H200 (host-bound event times 2-3x, the memory probe 5x). So a case whose step cannot
be graph-captured is only marked ``device_time_pending`` when it runs; after every case ran, the
runner measures those, and the record, the JSON's extra_info and the journal all get the figure.
The CUDA measurement itself is checked on a GPU (tests/test_gpu_timing.py); here it is a fake.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from attnsuite import journal, registry, runner, timing, workloads
from attnsuite.dispatch import Dispatcher
from attnsuite.plugin_bench import BenchRunner, Landed
from attnsuite.record import CaseRecord


def _timed(ms: float) -> timing.Timing:
    return timing.Timing(samples_s=[ms / 1e3] * 5, timer="cuda-events")


def _case(mode: str, variant: str = "explicit"):
    registry.load_builtin()
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("llama3-70b",)) if e.entry.family == "attention")
    return runner.prepare(registry.get(variant), entry.problem, requires_grad=mode != "fwd")


def test_a_step_that_cannot_be_captured_is_marked_pending_not_profiled(monkeypatch):
    seen = {}

    def fake_device_time(call, device, *, setup=None, config=None, allow_graph=True, defer_kernel_sum=False):
        seen.update(defer=defer_kernel_sum, setup=setup)
        raise timing.KernelSumDeferred("graph capture failed: X")

    monkeypatch.setattr(runner.timing, "device_time", fake_device_time)
    rec = CaseRecord("w", "v", "bwd", "p", median_ms=2.0)
    runner._measure_device_time(rec, _case("bwd"), "cpu", _timed(2.0), "bwd")
    assert seen == {"defer": True, "setup": None}  # a backward is capturable: no per-call setup
    assert rec.extra["device_time_pending"] == "graph capture failed: X" and rec.device_ms is None


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
def test_a_variant_declaring_no_graph_capture_is_marked_pending_without_an_attempt(monkeypatch, mode):
    # flex-eager's capture failed on every case of a full tier (13 s of an H200's run): the declaration
    # sends it to the deferred kernel-sum at once, with its reason in the record
    def attempted(*a, **k):
        raise AssertionError("device_time was called: a capture was attempted despite the declaration")

    monkeypatch.setattr(runner.timing, "device_time", attempted)
    case = _case(mode)
    monkeypatch.setattr(type(case.variant), "no_graph_capture", "copies to the host inside each call")
    rec = CaseRecord("w", "explicit", mode, "p", median_ms=2.0)
    runner._measure_device_time(rec, case, "cpu", _timed(2.0), mode)
    assert rec.extra["device_time_pending"] == (
        "graph capture not tried (the variant's no_graph_capture): copies to the host inside each call")
    assert rec.device_ms is None and not rec.device_method


def test_flex_eager_declares_no_graph_capture_and_the_others_do_not():
    registry.load_builtin()
    assert "Cannot copy between CPU and CUDA tensors" in registry.get("flex-eager").no_graph_capture
    assert [v.name for v in registry.variants() if v.no_graph_capture] == ["flex-eager"]


@pytest.mark.parametrize("mode", ["bwd", "fwd+bwd"])
def test_the_device_call_repeats_the_timed_steps_work_without_accumulating_gradients(mode):
    # captured into a graph and replayed, the call must launch what one timed step launches: the
    # gradients after any number of calls are those of one backward from None, never a sum
    case = _case(mode)
    fwd_bwd, setup = runner._step(case, mode)
    setup()
    fwd_bwd()
    once = {k: v.detach().clone() for k, v in case.grads().items()}
    call, setup = runner._device_call(case, "cpu", 0.0, mode)
    assert setup is None  # capturable: nothing untimed between calls
    for _ in range(3):
        call()
    for name, grad in case.grads().items():
        assert torch.equal(grad, once[name]), f"{mode}: d{name} after three device-time calls differs from one backward"


def test_a_captured_step_gets_its_device_time_and_host_overhead_at_once(monkeypatch):
    monkeypatch.setattr(runner.timing, "device_time",
                        lambda *a, **k: timing.DeviceTiming([0.0015] * 5, "cuda-graph"))
    rec = CaseRecord("w", "v", "fwd", "p", median_ms=2.0)
    runner._measure_device_time(rec, _case("fwd"), "cpu", _timed(2.0), "fwd")
    assert rec.device_method == "cuda-graph" and rec.device_ms == pytest.approx(1.5)
    assert rec.host_overhead_ms == pytest.approx(0.5) and "device_time_pending" not in rec.extra


def test_the_deferred_measurement_profiles_the_rebuilt_case_and_fills_the_record(monkeypatch):
    registry.load_builtin()
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("llama3-70b",)) if e.entry.family == "attention")
    bc = runner.BenchCase("llama3-70b", entry, entry.problem, "explicit", "bwd")
    calls = {}

    def fake_device_time(call, device, *, setup=None, config=None, allow_graph=True, defer_kernel_sum=False):
        calls.update(allow_graph=allow_graph, setup=setup is not None, estimate=config.estimate_s)
        call()  # the rebuilt case really runs
        return timing.DeviceTiming([0.003, 0.004, 0.005], "kernel-sum")

    monkeypatch.setattr(runner.timing, "device_time", fake_device_time)
    settings = runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu"))
    rec = CaseRecord(bc.workload, "explicit", "bwd", bc.problem.id, median_ms=6.0)
    rec.extra["device_time_pending"] = "per-call setup"
    out = runner.measure_deferred_device_time(bc, settings, rec)
    assert calls == {"allow_graph": False, "setup": False, "estimate": pytest.approx(0.006)}
    assert (out.device_method, out.device_ms, out.device_min_ms) == ("kernel-sum", pytest.approx(4.0), pytest.approx(3.0))
    assert out.host_overhead_ms == pytest.approx(2.0)
    assert out.extra["device_time_note"] == "per-call setup" and "device_time_pending" not in out.extra
    assert out.extra["suite_s"]["deferred-device-time"] > 0, "the deferred pass's cost per case is its own phase"


def test_the_deferred_pass_collects_garbage_when_the_problem_changes_and_after_a_failure_not_after_every_case(
        monkeypatch):
    # a full garbage collection costs 0.1-0.35 s with torch loaded: once per case it was likely most of the
    # deferred pass's cost for short steps (37 cases under 5 ms took 19.4 s on an H200)
    registry.load_builtin()
    entries = [e for e in workloads.expand("quick", "cpu", None, ("fa-sweep",)) if e.entry.family == "attention"]
    first, other = entries[0].entry, next(e.entry for e in entries if e.entry.problem != entries[0].entry.problem)
    recovered = []
    monkeypatch.setattr(runner, "_recover", lambda device: recovered.append(device))
    outcome = {"fail": False}

    def fake_device_time(call, device, *, setup=None, config=None, allow_graph=True, defer_kernel_sum=False):
        if outcome["fail"]:
            raise timing.DeviceTimeError("the profiler recorded no device activity")
        return timing.DeviceTiming([0.001] * 3, "kernel-sum")

    monkeypatch.setattr(runner.timing, "device_time", fake_device_time)
    settings = runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu"))

    def deferred(entry, mode):
        bc = runner.BenchCase("fa-sweep", entry, entry.problem, "explicit", mode)
        rec = CaseRecord(bc.workload, "explicit", mode, bc.problem.id, median_ms=1.0)
        rec.extra["device_time_pending"] = "per-call setup"
        return runner.measure_deferred_device_time(bc, settings, rec)

    deferred(first, "fwd")
    deferred(first, "fwd+bwd")
    assert len(recovered) == 1, "two cases of one problem: one collection, on entering it"
    deferred(other, "fwd")
    assert len(recovered) == 2, "another problem: collected on entering it"
    outcome["fail"] = True
    assert deferred(other, "fwd+bwd").device_ms is None
    assert len(recovered) == 3, "a failed measurement may leave cycles: collected after it"


def test_a_failed_deferred_measurement_leaves_a_note_and_the_outcome(monkeypatch):
    def broken(*a, **k):
        raise timing.DeviceTimeError("the profiler recorded no device activity")

    monkeypatch.setattr(runner.timing, "device_time", broken)
    registry.load_builtin()
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("llama3-70b",)) if e.entry.family == "attention")
    bc = runner.BenchCase("llama3-70b", entry, entry.problem, "explicit", "fwd")
    settings = runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu"))
    rec = CaseRecord(bc.workload, "explicit", "fwd", bc.problem.id, median_ms=1.0)
    rec.extra["device_time_pending"] = "graph capture failed: X"
    out = runner.measure_deferred_device_time(bc, settings, rec)
    assert out.outcome == "ok" and out.device_ms is None
    assert "not measured (graph capture failed: X)" in out.extra["device_time_note"]
    assert "deferred-device-time" in out.extra["suite_s"]


class _Backend:
    def __init__(self):
        self.asked = []

    def request_retrying_fresh(self, message, timeout=None):  # what the runner sends deferred device times by
        self.asked.append(message["key"])
        rec = CaseRecord.from_extra_info(message["record"])
        rec.device_ms, rec.device_method = 1.0, "kernel-sum"
        rec.extra.pop("device_time_pending")
        return {"record": rec.to_extra_info()}


def test_the_runner_completes_pending_device_times_in_the_record_json_and_journal(tmp_path):
    run = BenchRunner.__new__(BenchRunner)
    backend = _Backend()
    run._dispatch = Dispatcher([backend])
    run._journal_lock = threading.Lock()
    run.config = type("Cfg", (), {"getoption": staticmethod(lambda name: "300")})()
    run.deferred_seconds = 0.0
    path = tmp_path / "j.jsonl"
    run.journal = journal.Journal(path, {"tier": "quick"}, "fp")
    landed = []
    for i, pending in enumerate((True, False, True)):
        rec = CaseRecord("w", f"v{i}", "bwd", "p", median_ms=2.0, samples=5)
        if pending:
            rec.extra["device_time_pending"] = "per-call setup"
        case = type("C", (), {"id": rec.key})()
        run.journal.append(rec.key, {"record": rec.to_extra_info(), "samples": [0.002] * 5, "timer": "t", "warmup": 3})
        landed.append(Landed(f"n{i}", f"n{i}", None, "g", rec, True, rec.to_extra_info(), case))
    run.landed = landed
    assert run.complete_device_times() == 2
    assert backend.asked == ["w/v0/bwd/p", "w/v2/bwd/p"]
    for i in (0, 2):
        assert run.landed[i].record.device_ms == 1.0 and run.landed[i].extra_info["device_ms"] == 1.0
    assert run.landed[1].record.device_ms is None
    run.journal.close()
    entries = journal.read(path, {"tier": "quick"}, "fp")
    assert entries["w/v0/bwd/p"]["record"]["device_ms"] == 1.0
    assert entries["w/v0/bwd/p"]["samples"] == [0.002] * 5  # the update kept the case's samples
    assert json.loads(path.read_text().splitlines()[-1])["update"] is True


def test_a_backward_that_refuses_a_retained_graph_is_deferred_to_kernel_sum_with_a_forward_before_each_call(
        monkeypatch):
    # torch.compile's donated buffers refuse retain_graph=True; the case's timed backward ran, so the
    # device time falls back to the timed step itself (a forward as its setup), measured by kernel-sum
    calls = {}

    def refuses(call, device, *, setup=None, config=None, allow_graph=True, defer_kernel_sum=False):
        raise RuntimeError("This backward function was compiled with non-empty donated buffers which "
                           "requires create_graph=False and retain_graph=False")

    monkeypatch.setattr(runner.timing, "device_time", refuses)
    rec = CaseRecord("w", "v", "bwd", "p", median_ms=2.0)
    runner._measure_device_time(rec, _case("bwd"), "cpu", _timed(2.0), "bwd")
    assert rec.extra["device_time_pending"].startswith(runner.BACKWARD_ONCE + " (RuntimeError: This backward")
    assert "device_time_note" not in rec.extra

    def profiles(call, device, *, setup=None, config=None, allow_graph=True, defer_kernel_sum=False):
        calls.update(setup=setup is not None, allow_graph=allow_graph)
        setup()
        call()
        return timing.DeviceTiming([0.001] * 3, "kernel-sum")

    monkeypatch.setattr(runner.timing, "device_time", profiles)
    registry.load_builtin()
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("llama3-70b",)) if e.entry.family == "attention")
    bc = runner.BenchCase("llama3-70b", entry, entry.problem, "explicit", "bwd")
    settings = runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu"))
    out = runner.measure_deferred_device_time(bc, settings, rec)
    assert calls == {"setup": True, "allow_graph": False}  # a forward before each profiled backward
    assert out.device_method == "kernel-sum" and out.extra["device_time_note"].startswith(runner.BACKWARD_ONCE)


def test_a_forward_whose_device_time_fails_is_noted_not_deferred(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner.timing, "device_time", broken)
    rec = CaseRecord("w", "v", "fwd", "p", median_ms=2.0)
    runner._measure_device_time(rec, _case("fwd"), "cpu", _timed(2.0), "fwd")
    assert rec.extra["device_time_note"] == "not measured: RuntimeError: boom"
    assert "device_time_pending" not in rec.extra


def test_a_forward_whose_device_time_runs_out_of_memory_is_deferred_to_kernel_sum(monkeypatch):
    # a graph's private pool on top of the case's own memory: the profiler needs no second copy
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")

    monkeypatch.setattr(runner.timing, "device_time", oom)
    rec = CaseRecord("w", "v", "fwd", "p", median_ms=2.0)
    runner._measure_device_time(rec, _case("fwd"), "cpu", _timed(2.0), "fwd")
    assert rec.extra["device_time_pending"].startswith("out of memory measuring it with the case (OutOfMemoryError")
    assert "device_time_note" not in rec.extra


@pytest.mark.parametrize("error, stranded_gib, retried", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB."), 113, True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB."), 2, False),
    (timing.DeviceTimeError("the profiler recorded no device activity"), 113, False),
], ids=["out of memory with memory stranded: measured again fresh", "out of memory on a clean device: noted",
        "another failure: noted"])
def test_a_deferred_device_time_out_of_memory_in_a_worker_with_stranded_memory_is_retried_fresh(
        monkeypatch, error, stranded_gib, retried):
    # a fresh H200 run lost 19 device times this way: 25 GiB allocated, 138 GiB held by the worker
    from attnsuite import worker as worker_mod

    def fails(bc, settings, rec, on_error=None):
        on_error(error)
        rec.extra["device_time_note"] = f"not measured: {type(error).__name__}: {error}"
        return rec

    monkeypatch.setattr(runner, "measure_deferred_device_time", fails)
    monkeypatch.setattr(worker_mod, "stranded_bytes", lambda device, collect=True: stranded_gib << 30)
    monkeypatch.setattr("attnsuite.torch_state.start_case", lambda *a: None)
    monkeypatch.setattr("attnsuite.torch_state.end_case", lambda *a: [])
    w = worker_mod.Worker()
    w.spec = runner.RunSpec(tier="full", device="cuda")
    w.gpu_ready = True  # its GPU set-up (context, L2 buffer) is not what this test is about
    w.cases = {"k": object()}
    rec = CaseRecord("w", "v", "fwd", "p", median_ms=2.0)
    reply = w.device_time("k", rec.to_extra_info())
    assert bool(reply.get("retry_fresh")) == retried and bool(reply.get("fatal")) == retried
    if retried:
        assert "out of memory asking 8.00 GiB while 113.0 GiB stayed reserved" in reply["retry_fresh"]


def test_a_kernel_sum_reading_keeps_its_fastest_calls_kernels_in_the_record(monkeypatch):
    # a deferred reading and its confirmation once differed by 5% on an H200 with the same event
    # time: the record says which kernels or copies each reading was made of
    registry.load_builtin()
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("llama3-70b",)) if e.entry.family == "attention")
    bc = runner.BenchCase("llama3-70b", entry, entry.problem, "explicit", "fwd")
    table = {"kernels": [{"name": "softmax", "calls": 1, "ms": 0.4}], "busy_ms": 0.4}
    monkeypatch.setattr(runner.timing, "device_time",
                        lambda *a, **k: timing.DeviceTiming([4e-4] * 3, "kernel-sum", breakdown=table))
    settings = runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu"))
    rec = CaseRecord(bc.workload, "explicit", "fwd", bc.problem.id, median_ms=0.5)
    rec.extra["device_time_pending"] = "per-call setup"
    out = runner.measure_deferred_device_time(bc, settings, rec)
    assert out.extra["device_kernels"] == table and out.device_method == "kernel-sum"
    # and what dynamo did meanwhile (an eager step here: nothing compiled, no recompile limit hit)
    assert out.extra["deferred_dynamo"]["unique_graphs"] == 0
    assert set(out.extra["deferred_dynamo"]) >= {"frames_total", "recompile_limit_hits"}
