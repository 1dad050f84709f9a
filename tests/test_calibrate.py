"""The instance calibration probes: real figures, no side effects on torch, buffers given back."""

from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attnsuite import calibrate, memory

MIB = 2**20
SMALL = dict(copy_bytes=16 * MIB, matmul_n=256, reps=3)  # the probe's code paths at test cost
KEYS = {"mem_bandwidth_gbs", "matmul_tflops", "matmul_dtype", "device", "method", "probe_s"}


def test_the_default_cpu_probe_reports_finite_positive_figures_under_every_key():
    result = calibrate.probe("cpu")
    assert set(result) == KEYS
    for key in ("mem_bandwidth_gbs", "matmul_tflops", "probe_s"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["matmul_dtype"] == "float32" and result["device"] == "cpu"
    assert "256 MiB" in result["method"] and "1024^3" in result["method"]


@pytest.mark.parametrize("copied_bytes,seconds,gbs", [(10**9, 1.0, 2.0), (5 * 10**8, 0.5, 2.0), (10**6, 1e-3, 2.0)])
def test_bandwidth_counts_each_copied_byte_read_and_written(copied_bytes, seconds, gbs):
    assert calibrate.bandwidth_gbs(copied_bytes, seconds) == pytest.approx(gbs)


@pytest.mark.parametrize("n,seconds,tflops", [(1000, 2e-3, 1.0), (8192, 1.0, 2 * 8192**3 / 1e12)])
def test_matmul_rate_is_two_n_cubed_flops_over_the_time(n, seconds, tflops):
    assert calibrate.matmul_tflops(n, seconds) == pytest.approx(tflops)


@pytest.mark.parametrize("state", ["defaults", "grad off, float64 default, 1 thread"])
def test_the_probe_leaves_torch_global_state_as_it_found_it(state):
    saved = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads())
    try:
        if state != "defaults":
            torch.set_grad_enabled(False)
            torch.set_default_dtype(torch.float64)
            torch.set_num_threads(1)
        before = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads(),
                  torch.get_rng_state())
        result = calibrate.probe("cpu", **SMALL)
        after = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads(),
                 torch.get_rng_state())
        assert before[:3] == after[:3]
        assert torch.equal(before[3], after[3]), "the probe advanced the global RNG"
        assert f"{before[2]} torch threads" in result["method"]  # measured under the caller's threads
    finally:
        torch.set_grad_enabled(saved[0])
        torch.set_default_dtype(saved[1])
        torch.set_num_threads(saved[2])


def test_the_probe_frees_every_buffer_it_allocates():
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        calibrate.probe("cpu", **SMALL)
    events = memory._cpu_allocation_events(prof)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    assert peak >= 2 * SMALL["copy_bytes"]  # source and destination were really allocated...
    assert live == 0  # ...and nothing the probe allocated outlives it


@pytest.mark.parametrize("device,message", [
    ("cpu:abc", "not a device"),
    ("meta", "neither cpu nor cuda"),
    pytest.param("cuda", "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")),
])
def test_a_device_the_probe_cannot_measure_is_a_clear_error(device, message):
    with pytest.raises(ValueError, match=message):
        calibrate.probe(device)


@pytest.mark.parametrize("sizes", [dict(reps=0), dict(copy_bytes=-1), dict(matmul_n=-5)])
def test_sizes_that_are_not_positive_are_refused(sizes):
    with pytest.raises(ValueError, match="must be positive"):
        calibrate.probe("cpu", **sizes)
