"""The step tuner: a Triton kernel's config chosen by timing the whole step it runs in.

On one H200 the decode split kernel timed alone ranked BLOCK_N=64 beside 32 (36.9 against 36.6 us),
while the merge after it ran 6.0 against 4.0 us, so the step was 6% slower with 64; fresh machines
whose tuning fell either way moved the case by that much against the baseline
(docs/evidence/h200-2026-12-03-s29). The tuner runs on a GPU only; these tests give it a fake
timing and pin what it times, how it chooses and what it keeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnsuite import triton_support

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


@triton.jit
def _split(X, BLOCK: "triton.language.constexpr"):
    pass


CONFIGS = [triton.Config({"BLOCK": b}, num_warps=4, num_stages=s) for b, s in ((64, 3), (32, 4), (128, 3))]


class FakeBench:
    """Times a step as ``ms[BLOCK]`` (quantiles as graph_bench returns them); raises for BLOCKs in ``broken``."""

    def __init__(self, ms: dict, broken: tuple = ()) -> None:
        self.ms, self.broken, self.calls = ms, broken, []

    def __call__(self, call, quantiles=None):
        call()
        block = self.last
        self.calls.append(block)
        if block in self.broken:
            raise RuntimeError(f"out of resources: BLOCK={block}")
        return [self.ms[block], self.ms[block] * 0.99, self.ms[block] * 1.01]


@pytest.fixture
def tuner_env(monkeypatch, tmp_path):
    monkeypatch.setattr(triton_support, "_AUTOTUNERS", [])
    monkeypatch.delenv("ATTNSUITE_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    return tmp_path / "triton-cache"


def _tuner(bench: FakeBench) -> triton_support.StepTuner:
    return triton_support.StepTuner(_split, CONFIGS, bench=bench)


def _step(bench: FakeBench, launched: list):
    def step(cfg):
        bench.last = cfg.kwargs["BLOCK"]
        launched.append(("split", cfg.kwargs["BLOCK"]))
        launched.append(("merge", None))  # the later kernel: inside what is timed
    return step


def test_the_tuner_times_the_whole_step_per_config_and_keeps_the_fastest_step(tuner_env):
    bench, launched = FakeBench({64: 0.0434, 32: 0.0410, 128: 0.0470}), []
    tuner = _tuner(bench)
    chosen = tuner.choose(("k4096",), _step(bench, launched))
    assert chosen.kwargs["BLOCK"] == 32 and tuner.best_config is chosen
    assert bench.calls == [64, 32, 128]
    assert launched == [("split", 64), ("merge", None), ("split", 32), ("merge", None), ("split", 128),
                        ("merge", None)]
    text = triton_support.config_text
    assert triton_support.tunings() == {"_split": {text(CONFIGS[1]): 0.041, text(CONFIGS[0]): 0.0434,
                                                   text(CONFIGS[2]): 0.047}}
    assert triton_support.choices() == {"_split": "BLOCK=32 w4 s4"}
    # the same key again: no timing, the same choice, reported as this case's config
    triton_support.forget_choices()
    assert tuner.choose(("k4096",), _step(bench, launched)) is chosen and bench.calls == [64, 32, 128]
    assert triton_support.choices() == {"_split": "BLOCK=32 w4 s4"} and triton_support.tunings() == {}
    # another shape is tuned on its own
    bench.ms = {64: 0.262, 32: 0.292, 128: 0.260}
    assert tuner.choose(("k32768",), _step(bench, launched)).kwargs["BLOCK"] == 128
    assert len(bench.calls) == 6


def test_a_later_process_reads_the_tuning_from_the_cache_folder_and_times_nothing(tuner_env):
    first = FakeBench({64: 0.0434, 32: 0.0410, 128: 0.0470})
    _tuner(first).choose(("k4096",), _step(first, []))
    files = list((tuner_env / "attnsuite-step-tuning").glob("_split-*.json"))
    assert len(files) == 1
    again = FakeBench({64: 0.001, 32: 0.1, 128: 0.1})  # a tuning now would choose 64
    tuner = _tuner(again)
    assert tuner.choose(("k4096",), _step(again, [])).kwargs["BLOCK"] == 32 and again.calls == []
    assert triton_support.tunings()["_split"]["BLOCK=32 w4 s4"] == 0.041  # the kept timings are reported
    # another device, another Triton or other configs: another file, tuned again
    fewer = triton_support.StepTuner(_split, CONFIGS[:2], bench=again)
    assert fewer.choose(("k4096",), _step(again, [])).kwargs["BLOCK"] == 64 and again.calls == [64, 32]


def test_an_unreadable_kept_tuning_is_tuned_again_and_rewritten(tuner_env):
    bench = FakeBench({64: 0.0434, 32: 0.0410, 128: 0.0470})
    _tuner(bench).choose(("k4096",), _step(bench, []))
    (kept,) = (tuner_env / "attnsuite-step-tuning").glob("*.json")
    kept.write_text('{"timings": [0.1, ')
    again = FakeBench({64: 0.0434, 32: 0.0410, 128: 0.0470})
    assert _tuner(again).choose(("k4096",), _step(again, [])).kwargs["BLOCK"] == 32 and again.calls == [64, 32, 128]
    assert '"timings": [[0.041' not in kept.read_text() and kept.read_text().count("[") >= 4


def test_a_config_that_fails_is_never_chosen_and_no_config_that_runs_raises_the_steps_error(tuner_env):
    bench = FakeBench({64: 0.05, 32: 0.01, 128: 0.06}, broken=(32,))
    tuner = _tuner(bench)
    assert tuner.choose(("k",), _step(bench, [])).kwargs["BLOCK"] == 64
    assert triton_support.tunings()["_split"]["BLOCK=32 w4 s4"] is None
    broken = FakeBench({64: 0.05, 32: 0.01, 128: 0.06}, broken=(32, 64, 128))
    with pytest.raises(RuntimeError, match="out of resources: BLOCK=128"):
        _tuner(broken).choose(("other",), _step(broken, []))


def test_with_autotuning_off_the_first_config_runs_untimed(tuner_env, monkeypatch):
    monkeypatch.setenv("ATTNSUITE_TRITON_AUTOTUNE", "0")
    bench = FakeBench({64: 0.0434, 32: 0.0410, 128: 0.0470})
    assert _tuner(bench).choose(("k",), _step(bench, [])) is CONFIGS[0] and bench.calls == []
    assert not (tuner_env / "attnsuite-step-tuning").exists()


_DECODE_KEYS = r"""
import json, math, torch
from attnsuite import registry, triton_support
registry.load_builtin()
import importlib
dk = importlib.import_module(registry.BUILTIN_PACKAGE + ".attention.triton_kernels.decode")
assert dk.SPLIT_TUNER is not None, "compiled mode builds the tuner"
launched, keys = [], []

class Kernel:
    def __init__(self, name): self.name = name
    def __getitem__(self, grid):
        def launch(*args, **kw):
            launched.append([self.name, kw.get("BLOCK_N")])
        return launch

dk.decode_split, dk.decode_merge = Kernel("split"), Kernel("merge")
dk._splits = lambda lk, programs, device: (max(1, lk // 1024), 1024)
def bench(call, quantiles=None):
    call()
    return [float(launched[-2][1]), 0.0, 0.0]  # BLOCK_N as its time: the smallest wins
dk.SPLIT_TUNER.bench = bench
orig_choose = dk.SPLIT_TUNER.choose
def choose(key, step):
    keys.append(repr(key))
    return orig_choose(key, step)
dk.SPLIT_TUNER.choose = choose
for b, lq, lk in ((8, 1, 4096), (8, 1, 8192), (8, 4, 4096), (2, 1, 4096), (8, 1, 4096)):
    q = torch.zeros(b, 32, lq, 128, dtype=torch.bfloat16); k = torch.zeros(b, 8, lk, 128, dtype=torch.bfloat16)
    dk.decode(q, k, k, 1, lk - lq, 0, 0.1)
print(json.dumps({"keys": keys, "launched": launched}))
"""


def test_the_decode_step_tunes_per_shape_on_both_its_kernels(tmp_path):
    # compiled mode in a fresh interpreter: this process may run Triton in its interpreter
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ATTNSUITE_TRITON_AUTOTUNE")}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    code = "import torch; torch.cuda.get_device_name = lambda *a: 'Fake GPU'\n" + _DECODE_KEYS
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    out = json.loads(done.stdout.strip().splitlines()[-1])
    keys = out["keys"]
    assert len(set(keys)) == 4 and keys[0] == keys[4], keys  # batch, queries and cache length each tune anew
    # a tuning launches split then merge per config (5 configs), then the chosen config once
    first = out["launched"][:12]
    assert [name for name, _ in first] == ["split", "merge"] * 6
    assert first[-2] == ["split", 32], first  # the fastest (the fake's smallest BLOCK_N) runs the step
