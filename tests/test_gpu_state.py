"""attnsuite.gpu_state: the GPU's clock, power and temperature around a case, read through
torch.cuda's NVML helpers (stand-ins here: this machine has no GPU and no NVML)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from attnsuite import gpu_state


def test_without_nvml_there_is_no_sample_and_no_error(monkeypatch):
    # what torch.cuda's NVML helpers do without pynvml or a driver (on a GPU host too: they are replaced)
    def no_nvml(device=None):
        raise ModuleNotFoundError("pynvml does not seem to be installed or it can't be imported.")

    for helper in ("clock_rate", "power_draw", "temperature", "_get_pynvml_handler"):
        monkeypatch.setattr(torch.cuda, helper, no_nvml, raising=False)
    assert gpu_state.sample("cuda:0") is None
    assert gpu_state.describe(None) == ""


def test_a_sample_has_clock_power_temperature_and_the_named_slowdown_reasons(monkeypatch):
    monkeypatch.setattr(torch.cuda, "clock_rate", lambda device=None: 1755)
    monkeypatch.setattr(torch.cuda, "power_draw", lambda device=None: 699_512)  # milliwatts
    monkeypatch.setattr(torch.cuda, "temperature", lambda device=None: 58)
    monkeypatch.setattr(torch.cuda, "_get_pynvml_handler", lambda device=None: "handle", raising=False)
    fake = types.ModuleType("pynvml")
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: 0x1 | 0x4 | 0x40  # idle bit: not named
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    state = gpu_state.sample("cuda:0")
    assert state == {"sm_mhz": 1755, "power_w": 699.5, "temp_c": 58,
                     "reasons": ["software power cap", "hardware thermal slowdown"]}
    assert gpu_state.describe(state) == "1755 MHz, 699.5 W, 58 C (software power cap, hardware thermal slowdown)"


def test_bindings_without_the_reasons_query_still_give_clock_power_and_temperature(monkeypatch):
    monkeypatch.setattr(torch.cuda, "clock_rate", lambda device=None: 1980)
    monkeypatch.setattr(torch.cuda, "power_draw", lambda device=None: 120_000)
    monkeypatch.setattr(torch.cuda, "temperature", lambda device=None: 35)
    monkeypatch.setitem(sys.modules, "pynvml", types.ModuleType("pynvml"))
    assert gpu_state.sample(None) == {"sm_mhz": 1980, "power_w": 120.0, "temp_c": 35}


@pytest.mark.parametrize("mask,names", [(0, []), (0x1, []), (0x8, ["hardware slowdown"]),
                                        (0x80 | 0x20, ["software thermal slowdown", "hardware power brake"])])
def test_reason_bits_are_named_and_idle_is_not_a_slowdown(mask, names):
    assert gpu_state.reasons_text(mask) == names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the clock of a real GPU")
def test_a_cuda_case_records_the_gpus_clock_and_power_around_its_measurement():
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed: no NVML to read")
    from attnsuite import registry, runner, timing, workloads
    from attnsuite.problem import Mask, Problem

    registry.load_builtin()
    problem = Problem(batch=2, lq=1024, lk=1024, hq=8, hkv=8, dqk=64, dv=64, dtype="bfloat16", device="cuda",
                      mask=Mask("causal"))
    entry = workloads.Entry(family="attention", problem=problem, modes=("fwd",))
    bc = runner.BenchCase("unit", entry, problem, "sdpa", "fwd")
    settings = runner.Settings("quick", "cuda", None, (), ("fwd",), None, {}, timing.FULL_GPU, None)
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "ok", rec.detail
    states = rec.extra["gpu_state"]
    assert set(states) == {"start", "timed", "device-timed"}, states
    for where, state in states.items():
        assert 0 < state["sm_mhz"] < 5000 and state["power_w"] > 0 and 0 < state["temp_c"] < 120, (where, state)
    print(f"gpu_state of {rec.key}: " + "; ".join(f"{k}: {gpu_state.describe(v)}" for k, v in states.items()))
