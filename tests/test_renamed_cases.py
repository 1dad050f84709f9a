"""Cases renamed since a file was recorded read under today's names (attnsuite.renamed_cases): the
latent-layer entries lost the q_lora arg the layer never read, and their FLOP count changed with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnsuite import baseline as bl
from attnsuite import flops, registry, workloads

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "baselines" / "cuda-nvidia-h200-132sm-140g-torch2.11-cuda13.0.json"
OLD = "b2-q2048-h128-d128-m7168-causal-tl-bf16-cuda-kv_lora512-q_lora1536"
NEW = "b2-q2048-h128-d128-m7168-causal-tl-bf16-cuda-kv_lora512"


@pytest.fixture(autouse=True)
def _families():
    registry.load_builtin()


def _entry(problem: str, mode: str = "fwd") -> dict:
    return {"workload": "deepseek-v3", "variant": "latent-expanded", "mode": mode, "problem": problem,
            "family": "latent-layer", "level": "layer", "outcome": "ok", "flops": 1.701e12, "tflops": 473.8,
            "pct_peak": 47.89, "min_ms": 3.59, "median_ms": 3.6, "iqr_ms": 0.01, "samples": 50, "timer": "cuda-events"}


def _new_problem():
    entry = next(e for e in workloads.get("deepseek-v3").full if e.family == "latent-layer")
    return entry.problem.with_(device="cuda")


def _result(*entries: dict) -> dict:
    return {"benchmarks": [{"name": f"test_workload[{i}]", "extra_info": e} for i, e in enumerate(entries)],
            "attnsuite": {"schema": 1}}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_an_old_record_reads_under_its_new_name_with_its_flops_counted_for_the_layer_it_ran(mode):
    confirm = dict(_entry(OLD, mode), min_ms=3.58)
    first = dict(_entry(OLD, mode), extra={"confirm": confirm})
    (rec,) = bl.run_from_benchmarks_json(_result(first), "old.json").records.values()
    assert rec.problem == NEW and rec.key == f"deepseek-v3/latent-expanded/{mode}/{NEW}"
    counted = flops.case_flops(_new_problem(), "latent-layer", mode)
    assert _new_problem().id == NEW and rec.flops == pytest.approx(counted, rel=1e-12)
    # the same time now does more FLOPs: the rate grows by the same factor as the count
    old_count = flops.case_flops(_new_problem().with_(args=(("kv_lora", 512), ("q_lora", 1536))), "latent-layer", mode)
    assert counted / old_count > 1.3  # a compressed query (x -> 1536 -> 16384) had been credited, not x -> 16384
    assert rec.tflops == pytest.approx(473.8 * counted / old_count, rel=1e-12)
    # its second measurement (confirmation) is renamed with it: the case's two readings stay one case
    assert rec.extra["confirm"]["problem"] == NEW and rec.extra["confirm"]["flops"] == pytest.approx(counted)


def test_a_record_under_todays_name_and_other_families_are_left_as_they_are():
    mla = dict(_entry("b2-q2048-h128-d192v128-m7168-causal-tl-bf16-cuda-kv_lora512-nope_dim128-q_lora1536-rope_dim64-"
                      "v_dim128"), family="mla-layer", variant="mla-expanded")
    records = bl.run_from_benchmarks_json(_result(_entry(NEW), mla), "new.json").records
    assert records[f"deepseek-v3/latent-expanded/fwd/{NEW}"].flops == 1.701e12
    assert records[f"deepseek-v3/mla-expanded/fwd/{mla['problem']}"].flops == 1.701e12  # MLA reads its q_lora


def test_an_old_baseline_file_loads_under_the_new_keys_and_an_entry_recorded_since_wins(tmp_path):
    data = json.loads(SHIPPED.read_text())
    new_key = f"deepseek-v3/latent-expanded/fwd/{NEW}"
    shipped = data["cases"].pop(new_key)
    data["cases"][f"deepseek-v3/latent-expanded/fwd/{OLD}"] = dict(shipped, problem=OLD, flops=1.701e12, tflops=473.8)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    loaded = bl.load_baseline(path)
    assert new_key in loaded.cases and not any("q_lora1536" in k and "latent" in k for k in loaded.cases)
    assert loaded.cases[new_key]["flops"] == shipped["flops"]  # the shipped file holds the count of today
    assert new_key in loaded.records()
    # both names in one file (an old recording, then a new one merged in): the new one is kept
    data["cases"][new_key] = dict(shipped, min_ms=1.0)
    path.write_text(json.dumps(data))
    assert bl.load_baseline(path).cases[new_key]["min_ms"] == 1.0
