"""The Triton kernels' autotune key: a case's config is chosen on that case's own shape.

Keyed on head dim and mask only, the first shape of a key tuned it for every later shape: on one
H200 the DeepSeek-V3 forward (d 56, padded to 64) ran 23% slower in a run where GPT-2's d 64 shape
had tuned the key first, and the gate flagged it against a baseline recorded in another order.
The autotuner itself runs on a GPU only; these tests pin the key that :func:`autotuned` builds and
the keys the built-in kernels declare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnsuite import triton_support

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
ROOT = Path(__file__).resolve().parents[1]


@triton.jit(do_not_specialize=["BATCH"])
def _kernel(X, BATCH, LQ, LK, MASK: tl.constexpr, BLOCK: tl.constexpr):
    pass


def _configs():
    return [triton.Config({"BLOCK": b}) for b in (16, 32, 64)]


@pytest.fixture
def compiled_mode(monkeypatch):
    """As on a GPU: the decorator wraps the kernel instead of returning it (interpreter off)."""
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)


def _drop_smallest(configs, named_args, **kwargs):
    return [c for c in configs if c.kwargs["BLOCK"] > 16]


def test_autotuning_keys_on_the_code_key_and_the_shape_and_times_every_config_the_prune_keeps(
        compiled_mode, monkeypatch):
    monkeypatch.delenv("ATTNSUITE_TRITON_AUTOTUNE", raising=False)
    tuned = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"), prune=_drop_smallest)(_kernel)
    assert list(tuned.keys) == ["MASK", "BATCH", "LQ", "LK"]
    assert [c.kwargs["BLOCK"] for c in tuned.early_config_prune(tuned.configs, {})] == [32, 64]


def test_autotuning_off_keeps_the_first_config_the_prune_allows_and_drops_the_shape_from_the_key(
        compiled_mode, monkeypatch):
    monkeypatch.setenv("ATTNSUITE_TRITON_AUTOTUNE", "0")
    tuned = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"), prune=_drop_smallest)(_kernel)
    assert list(tuned.keys) == ["MASK"]
    kept = tuned.early_config_prune(tuned.configs, {})
    assert [c.kwargs["BLOCK"] for c in kept] == [32]


def test_tuning_keeps_its_timings_in_tritons_disk_cache_so_a_warm_run_and_both_trees_of_an_ab_run_reuse_them(
        compiled_mode, monkeypatch):
    monkeypatch.delenv("ATTNSUITE_TRITON_AUTOTUNE", raising=False)
    monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    tuned = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_kernel)
    assert tuned.cache_results is True
    monkeypatch.setenv("ATTNSUITE_TRITON_AUTOTUNE", "0")
    untuned = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_kernel)
    assert untuned.cache_results is False  # one config: nothing is timed, nothing to keep


def test_configs_are_timed_on_the_device_from_a_cuda_graph_not_with_host_bracketed_events(compiled_mode, monkeypatch):
    # event timing of a 40 us kernel times the host's launch too: the decode split kernel's choice
    # (and its case's device time, by 6%) followed the machine's host
    monkeypatch.delenv("ATTNSUITE_TRITON_AUTOTUNE", raising=False)
    tuned = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_kernel)
    assert tuned.do_bench is triton_support.graph_bench


def _fake_benchers(monkeypatch, graph_error=None):
    import triton.testing

    calls = []

    def graph(fn, rep, quantiles=None, **kw):
        calls.append(f"graph rep={rep}")
        if graph_error is not None:
            raise graph_error
        return [1.0, 0.9, 1.1]

    def events(fn, quantiles=None, **kw):
        calls.append("events")
        return [2.0, 1.9, 2.1]

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", graph)
    monkeypatch.setattr(triton.testing, "do_bench", events)
    return calls


def test_graph_bench_launches_once_outside_the_graph_then_replays_one(monkeypatch):
    calls = _fake_benchers(monkeypatch)
    got = triton_support.graph_bench(lambda: calls.append("launch"), quantiles=(0.5, 0.2, 0.8))
    assert got == [1.0, 0.9, 1.1]
    assert calls == ["launch", f"graph rep={triton_support.GRAPH_BENCH_REP_MS}"]


def test_a_config_that_fails_on_its_own_raises_for_the_autotuner_to_skip_it(monkeypatch):
    calls = _fake_benchers(monkeypatch)

    def does_not_fit():
        raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")

    with pytest.raises(triton.runtime.errors.OutOfResources):
        triton_support.graph_bench(does_not_fit, quantiles=(0.5, 0.2, 0.8))
    assert calls == []  # neither timed from a graph nor with events


def test_a_graph_this_process_cannot_capture_falls_back_to_event_timing_and_says_so(monkeypatch):
    calls = _fake_benchers(monkeypatch, graph_error=RuntimeError("operation not permitted when stream is capturing"))
    with pytest.warns(RuntimeWarning, match="could not be timed from a CUDA graph .*operation not permitted"):
        got = triton_support.graph_bench(lambda: None, quantiles=(0.5, 0.2, 0.8))
    assert got == [2.0, 1.9, 2.1] and calls == [f"graph rep={triton_support.GRAPH_BENCH_REP_MS}", "events"]


def test_a_key_name_that_is_not_an_argument_of_the_kernel_is_refused_naming_the_kernel_and_the_name():
    with pytest.raises(ValueError, match=r"_kernel: no argument named LENGTH"):
        triton_support.autotuned(_configs(), ("MASK",), ("LENGTH",))(_kernel)


_SHOW_KEYS = """
import importlib, json
from attnsuite import registry
registry.load_builtin()
out = {}
for module, names in (("attention.triton_kernels.flash", ("flash_fwd", "flash_bwd_dkdv", "flash_bwd_fused",
                                                          "flash_bwd_dq")),
                      ("mla.triton_kernels.mla", ("mla_fwd",))):
    m = importlib.import_module(registry.BUILTIN_PACKAGE + "." + module)
    for name in names:
        out[name] = list(getattr(m, name).keys)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def builtin_keys() -> dict:
    """The autotune keys of the built-in kernels as compiled mode builds them (a fresh interpreter:
    kernels are decorated at import, and this process may have imported triton in interpreter mode)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ATTNSUITE_TRITON_AUTOTUNE")}
    done = subprocess.run([sys.executable, "-c", _SHOW_KEYS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel, sizes", [
    ("flash_fwd", ["BATCH", "HQ", "GROUP", "LQ", "LK", "OFF", "WIN"]),
    ("flash_bwd_dq", ["BATCH", "HQ", "GROUP", "LQ", "LK", "OFF", "WIN"]),
    ("flash_bwd_dkdv", ["BATCH", "HKV", "GROUP", "LQ", "LK", "OFF", "WIN"]),
    ("flash_bwd_fused", ["BATCH", "HKV", "GROUP", "LQ", "LK", "OFF", "WIN"]),
    ("mla_fwd", ["BATCH", "H", "LQ", "LK"]),
])
def test_builtin_triton_kernel_is_tuned_per_shape(builtin_keys, kernel, sizes):
    # (the decode split kernel is tuned on its whole step: tests/test_step_tuner.py)
    missing = [s for s in sizes if s not in builtin_keys[kernel]]
    assert not missing, f"{kernel}: autotune key {builtin_keys[kernel]} lacks {missing}"


@triton.jit(do_not_specialize=["BATCH"])
def _other_kernel(X, BATCH, LQ, LK, MASK: tl.constexpr, BLOCK: tl.constexpr):
    pass


def test_choices_are_the_configs_kernels_ran_since_they_were_forgotten(compiled_mode, monkeypatch):
    monkeypatch.setattr(triton_support, "_AUTOTUNERS", [])
    monkeypatch.delenv("ATTNSUITE_TRITON_AUTOTUNE", raising=False)
    first = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_kernel)
    other = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_other_kernel)
    assert triton_support._AUTOTUNERS == [first, other]
    first.best_config, other.best_config = first.configs[0], other.configs[1]  # an earlier case's choices
    triton_support.forget_choices()
    assert triton_support.choices() == {}
    first.best_config = first.configs[2]  # what Triton's Autotuner.run sets when this case launches it
    expected = f"BLOCK=64 w{first.configs[2].num_warps} s{first.configs[2].num_stages}"
    assert triton_support.choices() == {"_kernel": expected}


def test_tunings_are_each_tuned_kernels_config_times_fastest_first_since_they_were_forgotten(compiled_mode,
                                                                                           monkeypatch):
    monkeypatch.setattr(triton_support, "_AUTOTUNERS", [])
    monkeypatch.delenv("ATTNSUITE_TRITON_AUTOTUNE", raising=False)
    first = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_kernel)
    other = triton_support.autotuned(_configs(), ("MASK",), ("BATCH", "LQ", "LK"))(_other_kernel)
    a, b, c = first.configs[:3]
    first.configs_timings = {a: [0.05, 0.04, 0.06]}  # an earlier case's tuning
    triton_support.forget_choices()
    assert triton_support.tunings() == {}
    # what Autotuner.run leaves after tuning this case's key: the quantiles graph_bench returned per
    # config (the median ranks them), inf for a config that failed to compile
    first.configs_timings = {a: [0.0437123, 0.043, 0.044], b: float("inf"), c: [0.0408888, 0.0405, 0.041]}
    text = triton_support.config_text
    assert triton_support.tunings() == {"_kernel": {text(c): 0.04089, text(a): 0.04371, text(b): None}}
    assert list(triton_support.tunings()["_kernel"]) == [text(c), text(a), text(b)]  # fastest first
    assert other.configs_timings is None


def test_a_case_record_keeps_the_autotune_choices_its_timing_made(monkeypatch):
    from attnsuite import runner, workloads

    made = []
    monkeypatch.setattr(triton_support, "forget_choices", lambda: made.clear())
    monkeypatch.setattr(triton_support, "choices", lambda: {"flash_fwd": "BLOCK_M=128 BLOCK_N=64 w8 s3"} if made
                        else {})
    timings = {"flash_fwd": {"BLOCK_M=128 BLOCK_N=64 w8 s3": 1.2, "BLOCK_M=64 BLOCK_N=64 w4 s3": 1.3}}
    monkeypatch.setattr(triton_support, "tunings", lambda: timings if made else {})
    real_measure = runner.timing.measure

    def measure(*args, **kwargs):  # the case's kernels run (and would tune) inside the timing
        made.append(1)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(runner.timing, "measure", measure)
    entry = workloads.WORKLOADS["fa-sweep"].quick[0]
    bc = runner.BenchCase("fa-sweep", entry, entry.problem, "sdpa", "fwd")
    settings = runner.Settings("quick", "cpu", None, (), ("fwd",), None, {}, runner.timing.QUICK_CPU, None)
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "ok", rec.error
    assert rec.extra["triton_configs"] == {"flash_fwd": "BLOCK_M=128 BLOCK_N=64 w8 s3"}
    assert rec.extra["triton_tuning"] == timings
