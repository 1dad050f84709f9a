"""scripts/gate_eval.py's bookkeeping, on synthetic runs (no benchmark is run here)."""

from __future__ import annotations

import argparse
import importlib.util
import random

import pytest
from pathlib import Path

from attnsuite import baseline as bl
from gatehelp import FP_H100, by_key, rec

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gate_eval", ROOT / "scripts" / "gate_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(**kw):
    base = dict(thresholds=None, variants="", runs=3, single=False, ref_runs=1, baseline=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_gate_eval_counts_false_alarms_and_detections_per_injected_fraction(tmp_path, monkeypatch):
    mod = _module()
    rng = random.Random(0)
    variants = ["flash", "flex", "math"]
    problems = [f"b1-q{L}-h16-d128-causal-bf16-cuda0" for L in (1024, 2048, 4096)]
    calls = []

    def fake_run_once(args, name, inject):
        calls.append((name, dict(inject)))
        recs = []
        for v in variants:
            for p in problems:
                noise = 1.0 + rng.uniform(-0.004, 0.004)
                recs.append(rec(v, problem=p, median_ms=1.0 * noise * (1 + inject.get(v, 0.0)), iqr_ms=0.005))
        return bl.Run(records=by_key(recs), fingerprint=FP_H100, path=name), {"name": name, "inject": inject}

    monkeypatch.setattr(mod, "run_once", fake_run_once)
    args = _args(fractions="0.05,0.1,0.2", variants="", runs=3, single=False, ref_runs=3)
    s = mod.evaluate(args)
    assert [c[0] for c in calls] == ["ref", "ref1", "ref2", "aa0", "aa1", "aa2", "inj0", "inj1", "inj2"]
    # rotation: each variant gets each fraction once over the 3 injection runs
    for v in variants:
        assert sorted(c[1][v] for c in calls if c[0].startswith("inj")) == [0.05, 0.1, 0.2]
    assert s["aa"]["cases_judged"] == 27 and s["aa"]["false_alarms"] == 0 and s["aa"]["rate"] == 0.0
    for frac in ("0.05", "0.1", "0.2"):
        assert s["injection"][frac]["trials"] == 9 and s["injection"][frac]["rate"] == 1.0
    md = mod.markdown(s)
    assert "| A/A false alarms (unchanged code) | 27 | 0 | 0.00% |" in md
    assert "injected 5% slowdown detected" in md


def test_gate_eval_single_mode_slows_one_variant_per_run(monkeypatch):
    mod = _module()
    plans = []

    def fake_run_once(args, name, inject):
        plans.append(dict(inject))
        recs = [rec(v, median_ms=1.0 + inject.get(v, 0.0)) for v in ("a", "b")]
        return bl.Run(records=by_key(recs), fingerprint=FP_H100), {"name": name, "inject": inject}

    monkeypatch.setattr(mod, "run_once", fake_run_once)
    args = _args(fractions="0.02,0.2", variants="a,b", runs=2, single=True)
    s = mod.evaluate(args)
    assert all(len(p) <= 1 for p in plans)
    # a 2% slowdown is inside the 3% floor: missed, and reported as missed
    assert s["injection"]["0.02"]["rate"] == 0.0 and s["injection"]["0.02"]["missed"]
    assert s["injection"]["0.2"]["rate"] == 1.0


def _lucky_then_steady(mod, monkeypatch, calls):
    """Reference run 'ref' is 6% faster than every other unchanged run (a lucky process)."""
    def fake_run_once(args, name, inject):
        calls.append(name)
        ms = 0.94 if name == "ref" else 1.0
        recs = [rec(v, median_ms=ms * (1 + inject.get(v, 0.0)), min_ms=ms * (1 + inject.get(v, 0.0)) - 0.01)
                for v in ("a", "b")]
        return bl.Run(records=by_key(recs), fingerprint=FP_H100, path=name), {"name": name, "inject": inject}
    monkeypatch.setattr(mod, "run_once", fake_run_once)


def test_one_lucky_reference_run_is_outvoted_when_the_baseline_combines_three(monkeypatch):
    mod = _module()
    calls = []
    _lucky_then_steady(mod, monkeypatch, calls)
    single = mod.evaluate(_args(fractions="0.2", runs=2, ref_runs=1))
    assert single["aa"]["false_alarms"] == 4  # both variants, both A/A runs
    combined = mod.evaluate(_args(fractions="0.2", runs=2, ref_runs=3))
    assert combined["aa"]["false_alarms"] == 0
    assert "3 reference run(s) combined" in mod.markdown(combined)


def test_gate_eval_can_judge_against_an_existing_baseline_file_without_reference_runs(tmp_path, monkeypatch):
    mod = _module()
    calls = []
    _lucky_then_steady(mod, monkeypatch, calls)
    path = tmp_path / "committed.json"
    baseline, _ = bl.merge_into(None, by_key([rec(v, median_ms=1.0, min_ms=0.99) for v in ("a", "b", "c")]), FP_H100)
    bl.save_baseline(baseline, path)
    s = mod.evaluate(_args(fractions="0.1", runs=2, baseline=str(path)))
    assert not any(c.startswith("ref") for c in calls)
    assert s["aa"]["cases_judged"] == 4 and s["aa"]["false_alarms"] == 0
    assert s["variants"] == ["a", "b"]  # "c" is in the baseline but not measured: nothing to inject into
    assert s["injection"]["0.1"]["trials"] == 4 and s["injection"]["0.1"]["rate"] == 1.0
    assert f"baseline file {path}" in mod.markdown(s)


def test_gate_eval_refuses_a_baseline_file_of_another_machine(tmp_path, monkeypatch):
    mod = _module()
    calls = []
    _lucky_then_steady(mod, monkeypatch, calls)  # runs carry the H100 fingerprint
    path = tmp_path / "h200.json"
    other = dict(FP_H100, id="h200", gpu_name="NVIDIA H200")
    baseline, _ = bl.merge_into(None, by_key([rec("a"), rec("b")]), other)
    bl.save_baseline(baseline, path)
    with pytest.raises(bl.FingerprintMismatch):
        mod.evaluate(_args(fractions="0.1", runs=1, baseline=str(path)))
