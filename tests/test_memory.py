"""Peak memory is really measured on CPU; out of memory is an outcome; the guard predicts and refuses."""

from __future__ import annotations

import contextlib

import pytest
import torch

from attnsuite import memory, registry, runner, timing, workloads
from attnsuite.problem import Mask, Problem

MIB = 2**20


def test_cpu_peak_sees_a_real_allocation_held_as_output():
    _, mem = memory.measure_peak(lambda: torch.ones(8 * MIB // 4), "cpu")
    assert mem.peak_bytes >= 8 * MIB
    assert mem.method.startswith("cpu-torch-allocator")


def test_cpu_peak_is_the_high_water_mark_not_the_sum_of_allocations():
    def sequential():
        for _ in range(4):
            t = torch.ones(8 * MIB // 4)
            del t
        return None

    def together():
        ts = [torch.ones(8 * MIB // 4) for _ in range(4)]
        return sum(float(t[0]) for t in ts)

    _, seq = memory.measure_peak(sequential, "cpu")
    _, tog = memory.measure_peak(together, "cpu")
    assert 8 * MIB <= seq.peak_bytes < 16 * MIB
    assert tog.peak_bytes >= 32 * MIB


def test_cpu_peak_excludes_what_was_live_before_the_call():
    held = torch.ones(16 * MIB // 4)
    _, mem = memory.measure_peak(lambda: held * 1.0, "cpu")
    assert 16 * MIB <= mem.peak_bytes < 17 * MIB  # only the new output, not the input


@pytest.mark.parametrize("message,expected", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB", 2 * 2**30),
    ("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 8.00 GiB total capacity)", 512 * MIB),
    ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
     "1099511627776 bytes.", 2**40),
    ("Unable to allocate 128. MiB for an array with shape (134217728,) and data type uint8", 128 * MIB),
    ("something else went wrong", None),
])
def test_the_size_asked_for_is_read_from_out_of_memory_messages(message, expected):
    assert memory.parse_oom_bytes(message) == expected


def test_byte_sizes_parse_with_binary_and_decimal_units():
    assert memory.parse_bytes("24GiB") == 24 * 2**30
    assert memory.parse_bytes("1.5 GB") == 1_500_000_000
    assert memory.parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="unknown byte unit"):
        memory.parse_bytes("3 parsecs")


def test_a_real_cpu_allocation_failure_is_recognised_as_out_of_memory():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert memory.is_oom(info.value)
    assert memory.parse_oom_bytes(str(info.value)) == 2**62
    assert not memory.is_oom(ValueError("shape mismatch"))


def test_materialisation_is_flagged_only_when_the_score_matrix_dwarfs_the_inputs():
    big = Problem(batch=1, lq=1024, lk=1024, hq=8, hkv=8, dqk=64, dv=64)
    scores, io = memory.score_matrix_bytes(big), memory.io_bytes(big)
    assert memory.materialises(scores, big) is True
    assert memory.materialises(io, big) is False  # an O(L) peak: output-sized
    assert memory.materialises(2 * io, big, "fwd+bwd") is False  # with gradients
    assert memory.materialises(2 * io + scores, big, "fwd+bwd") is True
    tiny = Problem(batch=1, lq=16, lk=16, hq=1, hkv=1, dqk=64, dv=64)
    assert memory.materialises(10**9, tiny) is None


def test_a_fused_kernel_is_not_flagged_and_the_explicit_form_is_on_a_real_cpu_run():
    import torch.nn.functional as F

    p = Problem(batch=1, lq=512, lk=512, hq=4, hkv=4, dqk=64, dv=64)
    q, k, v = (torch.randn(1, 4, 512, 64) for _ in range(3))
    _, fused = memory.measure_peak(lambda: F.scaled_dot_product_attention(q, k, v), "cpu")
    _, unfused = memory.measure_peak(lambda: torch.softmax(q @ k.transpose(-1, -2) / 8, -1) @ v, "cpu")
    assert memory.materialises(fused.peak_bytes, p) is False
    assert memory.materialises(unfused.peak_bytes, p) is True


def test_the_guard_refuses_an_unfused_case_over_budget_and_lets_a_fused_one_run():
    p = Problem(batch=4, lq=4096, lk=4096, hq=16, hkv=16, dqk=64, dv=64)
    guard = memory.CpuGuard(budget=2**30)
    refused = guard.check(p, "fwd", fused=False)
    assert refused is not None
    predicted, message = refused
    assert predicted >= 3 * 4 * 16 * 4096 * 4096 * 4
    assert "predicted" in message and "budget" in message
    assert guard.check(p, "fwd", fused=True) is None
    assert memory.predict_bytes(p, "fwd+bwd", False) > memory.predict_bytes(p, "fwd", False)


def _settings(budget: int, cap: int | None = None) -> runner.Settings:
    return runner.Settings(
        tier="quick", device="cpu", dtype=None, workloads=(), modes=("fwd",),
        mem_cap=budget if cap is None else cap, inject={},
        timer=timing.TimerConfig(warmup_s=0.0, min_warmup=1, target_s=0.0, min_samples=3, max_samples=3,
                                 flush_l2=False),
        guard=memory.CpuGuard(budget))


def _case(variant: str, problem: Problem) -> runner.BenchCase:
    entry = workloads.Entry("attention", problem, modes=("fwd",))
    return runner.BenchCase("test", entry, problem, variant, "fwd")


def test_guard_records_oom_with_the_predicted_bytes_and_the_run_goes_on():
    registry.load_builtin()
    big = Problem(batch=2, lq=2048, lk=2048, hq=8, hkv=8, dqk=32, dv=32, mask=Mask("causal"))
    settings = _settings(budget=64 * MIB)
    rec, result = runner.run_case(_case("explicit", big), settings)
    assert rec.outcome == "oom" and result is None
    assert rec.oom_bytes == memory.predict_bytes(big, "fwd", fused=False)
    assert rec.extra["oom_predicted"] is True
    small = Problem(batch=1, lq=32, lk=32, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"))
    rec2, result2 = runner.run_case(_case("explicit", small), settings)
    assert rec2.outcome == "ok", rec2.detail
    assert result2 is not None and rec2.peak_mem_bytes > 0 and rec2.median_ms > 0


def test_a_case_the_guard_lets_through_but_that_allocates_past_the_cap_is_recorded_out_of_memory():
    registry.load_builtin()
    # about 3 x 64 MiB of fp32 score matrices: over a 16 MiB cap, while the guard's budget lets it run
    p = Problem(batch=1, lq=2048, lk=2048, hq=4, hkv=4, dqk=16, dv=16, mask=Mask("causal"))
    rec, result = runner.run_case(_case("explicit", p), _settings(budget=2**40, cap=16 * MIB))
    assert rec.outcome == "oom", rec.detail
    assert result is None and "oom_predicted" not in rec.extra
    assert rec.oom_bytes is not None and rec.oom_bytes > 16 * MIB


# ------------------------------------------------------------------ the CPU cap, enforced (cpu_cap)

def _data_limit() -> tuple[int, int]:
    import resource

    return resource.getrlimit(resource.RLIMIT_DATA)


def test_a_torch_allocation_of_twice_the_cpu_cap_fails_as_out_of_memory_with_the_bytes_asked_for():
    cap = 64 * MIB
    with memory.cpu_cap(cap):
        with pytest.raises(RuntimeError) as info:
            torch.empty(2 * cap, dtype=torch.uint8)
    assert memory.is_oom(info.value), str(info.value)
    assert memory.parse_oom_bytes(str(info.value)) == 2 * cap


def test_an_allocation_within_the_cpu_cap_runs():
    with memory.cpu_cap(64 * MIB):
        t = torch.ones(16 * MIB, dtype=torch.uint8)  # written, so its pages are really in use
        assert t[-1].item() == 1


def test_a_numpy_allocation_past_the_cpu_cap_is_out_of_memory_with_its_size():
    np = pytest.importorskip("numpy")
    with memory.cpu_cap(64 * MIB):
        with pytest.raises(MemoryError) as info:
            np.empty(128 * MIB, dtype=np.uint8)
    assert memory.is_oom(info.value)
    assert memory.parse_oom_bytes(str(info.value)) == 128 * MIB


@pytest.mark.parametrize("leave_by", ["normal exit", "exception"])
def test_the_previous_data_limit_is_restored_when_the_cap_ends_by(leave_by):
    before = _data_limit()
    with pytest.raises(KeyError) if leave_by == "exception" else contextlib.nullcontext():
        with memory.cpu_cap(64 * MIB) as limit:
            assert _data_limit() == (limit, before[1])  # soft lowered, hard untouched
            if leave_by == "exception":
                raise KeyError("the case failed")
    assert _data_limit() == before
    torch.empty(256 * MIB, dtype=torch.uint8)  # the cap is gone


def test_the_cap_is_the_current_data_segment_plus_the_cap():
    before = memory.data_segment_bytes()
    with memory.cpu_cap(64 * MIB) as limit:
        # VmData moves a little between the two reads (the interpreter allocates)
        assert abs(limit - (before + 64 * MIB)) < 8 * MIB


def test_a_nested_cap_never_loosens_the_outer_one():
    with memory.cpu_cap(64 * MIB) as outer:
        with memory.cpu_cap(1024 * MIB) as inner:
            assert inner == outer
            with pytest.raises(RuntimeError):
                torch.empty(256 * MIB, dtype=torch.uint8)
        assert _data_limit()[0] == outer


@pytest.mark.parametrize("cap", [0, -1, 1.5, "1GiB", True])
def test_a_cap_that_is_not_a_positive_whole_number_of_bytes_is_refused(cap):
    before = _data_limit()
    with pytest.raises(ValueError, match="positive whole number of bytes"):
        with memory.cpu_cap(cap):
            pass
    assert _data_limit() == before


def test_the_profiled_call_reports_every_op_name_the_profilers_own_event_list_has():
    # backend detection reads these names; they come from kineto's raw events (fast), which must
    # name the same ops as torch.profiler's FunctionEvent list (slow), "[memory]" rows aside
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8, 8)

    def step():
        return torch.softmax(x @ x.T, dim=-1).sum()

    _, _, names = memory.profile_call(step, profile_memory=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    expected = {e.name for e in prof.events() if e.name != "[memory]"}
    assert set(names) == expected
    assert {"aten::mm", "aten::softmax", "aten::sum"} <= set(names)


def test_poison_fills_what_the_call_allocated_and_never_an_input_a_parameter_or_an_integer_tensor():
    from types import SimpleNamespace

    q = torch.randn(2, 3, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(3))
    module = torch.nn.Linear(3, 3)
    kept_out: list[torch.Tensor] = []

    def step():
        out = (q * weight).sum(-1)
        out.sum().backward()
        positions = torch.arange(4)
        kept_out.extend([out, positions])
        # a view of an input, an integer tensor and a view of the output gradient (shared by the
        # problem's cases) beside the output
        return out, q[0], positions, grad_out[1:]

    grads_seen: list[torch.Tensor] = []

    class FakeCase(SimpleNamespace):
        def grads(self):
            grads_seen.append(q.grad)
            return {"q": q.grad}

        def zero_grads(self):
            q.grad = None

    grad_out = torch.randn(2)
    q_before, w_before, g_before = q.detach().clone(), weight.detach().clone(), grad_out.clone()
    case = FakeCase(inputs={"q": q}, grad_out=grad_out, module=SimpleNamespace(parameters=lambda: [weight],
                                                            buffers=lambda: list(module.buffers())))
    runner._poisoned_call(case, step, None, backward=True, device="cpu")
    out, positions = kept_out
    assert torch.isnan(out).all()  # freed as NaN: an element the checked call never writes reads NaN
    assert torch.isnan(grads_seen[0]).all() and q.grad is None
    assert torch.equal(positions, torch.arange(4))
    assert torch.equal(q.detach(), q_before) and torch.equal(weight.detach(), w_before)
    assert torch.equal(grad_out, g_before)


def test_the_benchmarks_checked_call_on_cpu_gets_nan_where_it_never_writes_and_the_timed_calls_do_not(tmp_path):
    # the benchmark's checked call had been handed memory holding an earlier call's right answer: a
    # kernel that left its last query row unwritten was benchmarked `ok` after a correct variant of the
    # same problem (found by a first-time user's trial). Each call here logs whether the memory its
    # output got read NaN before it wrote; on CPU the last call of a case is the checked one.
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "calls.log"
    variants = tmp_path / "partial.py"
    variants.write_text('''
import os
import torch
from attnsuite import mask_mods
from attnsuite.registry import KernelVariant, register


@register
class Partial(KernelVariant):
    name = "t-partial"
    masks = frozenset({"none", "causal"})

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        def run(q, k, v):  # the last query row of the result is never copied out
            out = torch.empty_like(q)
            with open(os.environ["T_CALLS_LOG"], "a") as f:
                f.write(("nan" if torch.isnan(out).all() else "values") + "\\n")
            full = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                                                    scale=problem.softmax_scale)
            out[:, :, :-1] = full[:, :, :-1]
            return out
        return run
''')
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(root / "pyproject.toml"), str(root / "bench"),
                           "--benchmark-only", "-p", "no:cacheprovider", "-q", f"--attn-variants={variants}",
                           "--attn-only=t-partial", "--attn-workload=fa-sweep", "--attn-mode=fwd", "-k", "b4-q128",
                           "--attn-device=cpu",  # on a host with a GPU the benchmarks' default is cuda
                           "--attn-gate=off", f"--benchmark-json={out}"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "T_CALLS_LOG": str(log)})
    calls = log.read_text().split()
    assert calls[-1] == "nan", (calls, done.stdout[-3000:])
    assert "values" in calls[:-1]  # the NaN fill is the checked call's alone: timed calls run as they are
    data = json.loads(out.read_text())
    (case,) = data["benchmarks"] + data["attnsuite"].get("unmeasured", [])
    assert case["extra_info"]["outcome"] == "numerics", case["extra_info"]
    assert "NaN" in case["extra_info"]["detail"] or "never wrote" in case["extra_info"]["detail"], case["extra_info"]


@pytest.mark.parametrize("device, compiled, fills", [
    ("cpu", False, True),
    ("cpu", True, False),  # compiled code guards on deterministic mode: it would recompile for the check
    ("cuda", False, False),  # deterministic mode steers CUDA backend choices: the poisoned call serves there
])
def test_fresh_memory_reads_nan_only_where_it_changes_nothing_else_and_the_modes_are_put_back(device, compiled, fills):
    import torch.utils.deterministic as det

    before = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    with memory.fresh_memory_reads_nan(device, compiled):
        filled = bool(torch.isnan(torch.empty(4096)).all())
        inside = torch.are_deterministic_algorithms_enabled()
    assert inside is fills  # the fill's switch: on only where it changes nothing else
    if fills:  # (memory left unfilled may hold anything, NaN from an earlier test included)
        assert filled
    assert (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory) == before
