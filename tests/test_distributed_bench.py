"""Distributed variants benchmarked like every case: the opt-in context-parallel workload on gloo.

The case runs on P ranks (fork on CPU), its time is the slowest rank's, its record carries every
rank's time, memory and bytes, and its scaling efficiency is computed against the same run's
fastest single-device variant on the same problem and mode.
"""

from __future__ import annotations

import pytest

from attnsuite import registry, runner, workloads
from attnsuite.record import CaseRecord


def _cases(mode: str = "fwd"):
    registry.load_builtin()
    spec = runner.RunSpec(tier="quick", device="cpu", workloads=("context-parallel",), modes=(mode,),
                          only=("ring-zigzag", "ulysses", "sdpa"))
    return [c for c in runner.bench_cases(spec) if "causal" in c.problem.id], runner.settings_from_spec(spec)


def test_the_context_parallel_workload_runs_only_when_named():
    assert not [e for e in workloads.expand("quick", "cpu") if e.workload == "context-parallel"]
    named = workloads.expand("quick", "cpu", None, ("context-parallel",))
    assert named and all(e.entry.world_size == 2 and e.problem.id.endswith("-p2") for e in named)


def test_a_distributed_case_gets_the_slowest_ranks_time_every_ranks_figures_and_its_efficiency():
    cases, settings = _cases()
    records = {}
    for bc in cases:
        rec, result = runner.run_case(bc, settings)
        records[bc.variant] = rec
        if bc.variant != "ulysses":  # 4 heads over P=2: runs
            assert rec.outcome == "ok", (bc.id, rec.detail)
    ring = records["ring-zigzag"]
    assert ring.extra["world_size"] == 2 and len(ring.extra["rank_median_ms"]) == 2
    assert ring.median_ms == pytest.approx(max(ring.extra["rank_median_ms"]), rel=1e-9)
    assert ring.samples >= 5 and ring.extra["sharding"] == "zigzag"
    assert all(b > 0 for b in ring.extra["bytes_sent_per_rank"]) and ring.extra["bytes_estimated"] is False
    assert "test_distributed.py" in ring.extra["numerics_check"]
    assert runner.add_scaling_efficiency(list(records.values())) >= 1
    expected = records["sdpa"].median_ms / (2 * ring.median_ms)
    assert ring.extra["scaling_efficiency"] == pytest.approx(expected)
    assert ring.extra["scaling_reference"].startswith("sdpa ")
    assert "scaling_efficiency" not in records["sdpa"].extra


def test_efficiency_is_against_the_fastest_single_device_case_of_the_same_problem_and_mode():
    def rec(variant, ms, problem="p", mode="fwd", world=None):
        r = CaseRecord("w", variant, mode, problem, median_ms=ms)
        if world:
            r.extra["world_size"] = world
        return r

    ring, other_mode = rec("ring", 1.0, world=2), rec("ring", 1.0, mode="fwd+bwd", world=2)
    records = [rec("slow", 4.0), rec("fast", 1.6), rec("other", 0.1, problem="q"), ring, other_mode]
    assert runner.add_scaling_efficiency(records) == 1
    assert ring.extra["scaling_efficiency"] == pytest.approx(0.8)  # 1.6 / (2 x 1.0)
    assert "scaling_efficiency" not in other_mode.extra  # no single-device fwd+bwd case to compare with


def test_a_distributed_entry_without_a_world_size_is_skipped_with_the_reason():
    cases, settings = _cases()
    bc = next(c for c in cases if c.variant == "ring-zigzag")
    bc = runner.BenchCase(bc.workload, workloads.Entry("attention", bc.problem, variants=("ring-zigzag",)),
                          bc.problem, "ring-zigzag", "fwd")
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "skipped" and "names no world size" in rec.detail


def test_the_workload_goes_through_the_benchmarks_json_and_the_gate_like_every_case(pytester, monkeypatch):
    import json
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(root / "bench", pytester.path / "bench")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    out, gate = pytester.path / "cp.json", pytester.path / "gate.json"
    # a baseline of this machine, whatever machine runs the test: the shipped CPU baseline's cases under
    # this machine's fingerprint (the shipped file alone matches one CPU model and core count only)
    from attnsuite import fingerprint

    shipped = json.loads((root / "baselines" / "cpu-amd-epyc-2c-torch2.13.json").read_text())
    shipped["fingerprint"] = fingerprint.machine_info("cpu")
    baselines = pytester.path / "baselines"
    baselines.mkdir()
    (baselines / f"{shipped['fingerprint']['id']}.json").write_text(json.dumps(shipped))
    result = pytester.runpytest_subprocess(
        "bench", "--benchmark-only", "-p", "no:cacheprovider", "-q", "--attn-device=cpu", "--attn-tier=quick",
        "--attn-workload=context-parallel", "--attn-mode=fwd", "--attn-only=ring-zigzag", "--attn-only=sdpa",
        "--attn-gate=report", f"--attn-baselines-dir={baselines}", f"--attn-gate-json={gate}",
        f"--benchmark-json={out}")
    assert result.ret == 0, result.stdout.str()[-2000:]
    data = json.loads(out.read_text())
    recs = {b["extra_info"]["case"]: b["extra_info"] for b in data["benchmarks"]}
    rings = [r for k, r in recs.items() if "/ring-zigzag/" in k]
    assert len(rings) == 2 and all(r["outcome"] == "ok" and r["samples"] >= 5 for r in rings)
    assert all(r["extra"]["world_size"] == 2 and r["extra"]["scaling_efficiency"] > 0 for r in rings)
    judged = json.loads(gate.read_text())
    assert judged["compared"], judged.get("reason")
    verdicts = {c["key"]: c["verdict"] for c in judged["cases"]}
    assert all(verdicts[r["case"]] == "new" for r in rings)  # judged by the gate like every case
