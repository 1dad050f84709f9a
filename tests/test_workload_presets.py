"""The workloads of docs/benchmarks.md: present, both tiers, sane sizes, and unbuilt families skipped with the reason."""

from __future__ import annotations

import pytest

from attnsuite import runner, timing, workloads
from attnsuite.problem import Problem
from attnsuite.record import MODES

PUBLISHED_WORKLOADS = ("gpt2-mha", "video-wm", "deepseek-v3", "llama3-70b", "llama3-405b", "longnet", "fa-sweep", "decode")
FAMILIES = set(workloads.KERNEL_FAMILIES) | set(workloads.LAYER_FAMILIES)


def test_every_design_workload_is_a_preset():
    assert set(PUBLISHED_WORKLOADS) <= set(workloads.WORKLOADS)


@pytest.mark.parametrize("name", PUBLISHED_WORKLOADS)
def test_workload_has_a_full_and_a_quick_tier_of_known_families(name):
    w = workloads.get(name)
    for tier in workloads.TIERS:
        entries = w.tier(tier)
        assert entries, f"{name} has an empty {tier} tier"
        for e in entries:
            assert e.family in FAMILIES, f"{name}/{tier}: unknown family {e.family}"
            assert set(e.modes) <= set(MODES)
    assert {e.family for e in w.full} == {e.family for e in w.quick}, f"{name}: tiers cover different families"


@pytest.mark.parametrize("name", PUBLISHED_WORKLOADS)
def test_quick_tier_is_small_enough_for_two_cpu_cores(name):
    for e in workloads.get(name).quick:
        p = e.problem
        assert p.batch * p.hq * p.lq * p.lk <= 2**21, f"{name}: quick problem {p.id} is too large"
        assert p.dtype == "float32"


def test_full_tier_carries_the_published_shapes():
    gpt2 = workloads.get("gpt2-mha").full[0].problem
    assert (gpt2.batch, gpt2.lq, gpt2.hq, gpt2.dqk) == (8, 1024, 12, 64)
    video = workloads.get("video-wm").full[0].problem
    assert (video.batch, video.lq, video.hq, video.mask.kind, video.mask.block, video.dtype) == \
        (32, 1950, 6, "block_causal", 65, "bfloat16")
    mla = [e for e in workloads.get("deepseek-v3").full if e.family == "mla-layer"][0].problem
    assert (mla.arg("q_lora"), mla.arg("kv_lora"), mla.arg("nope_dim"), mla.arg("rope_dim"), mla.arg("v_dim")) == \
        (1536, 512, 128, 64, 128)
    l70 = workloads.get("llama3-70b").full[0].problem
    assert (l70.hq, l70.hkv, l70.lq) == (64, 8, 4096)
    for e in workloads.get("fa-sweep").full:
        assert e.problem.batch * e.problem.lq == 16384 and e.problem.hq == 16
    for e in workloads.get("decode").full:
        assert e.problem.mask.align == "bottom_right" and e.problem.lk >= 4096 and e.modes == ("fwd",)


def test_expand_applies_the_run_device_and_dtype_and_rejects_unknown_names():
    out = workloads.expand("quick", "cpu", "bfloat16", ("decode",))
    assert out and all(x.problem.dtype == "bfloat16" and x.workload == "decode" for x in out)
    with pytest.raises(KeyError, match="unknown workload 'nope'"):
        workloads.expand("quick", "cpu", None, ("nope",))
    with pytest.raises(ValueError, match="unknown tier"):
        workloads.get("decode").tier("medium")


def test_compiled_variants_left_out_by_the_tier_budget_say_why():
    e = workloads.Entry("attention", Problem(), compiled_modes=("fwd",), compiled_only=("flex",))
    assert e.compiled_skip_reason("flex", "fwd", "full") is None
    assert "modes fwd" in e.compiled_skip_reason("flex", "bwd", "full")
    assert "only flex" in e.compiled_skip_reason("compiled-explicit", "fwd", "full")


def test_an_unbuilt_family_is_a_case_skipped_with_that_reason():
    p = Problem(d_model=64)
    entry = workloads.Entry("no-such-layer", p, modes=("fwd",))
    bc = runner.BenchCase("w", entry, p, None, "fwd")
    settings = runner.Settings("quick", "cpu", None, (), ("fwd",), None, {}, timing.QUICK_CPU, None)
    rec, result = runner.run_case(bc, settings)
    assert result is None
    assert rec.outcome == "skipped" and rec.detail == "family no-such-layer not built yet"
    assert rec.variant == "no-such-layer/*" and rec.key == f"w/no-such-layer/*/fwd/{p.id}"


def test_a_compiled_variants_budget_skip_says_whether_another_entry_runs_it():
    # "other entries of this workload cover the rest" had been said where no entry ran it at all
    from attnsuite.problem import Problem
    from attnsuite.workloads import Entry

    small, large = Problem(lq=16, hq=2, hkv=2, dqk=16), Problem(lq=32, hq=2, hkv=2, dqk=16)
    none_compiled = Entry("attention", small, modes=("fwd",), compiled_modes=())
    runs_fwd = Entry("attention", large, modes=("fwd", "bwd"), compiled_modes=("fwd",))
    alone = none_compiled.compiled_skip_reason("flex", "fwd", "quick", [])
    assert alone.endswith("no entry of this workload's quick tier runs flex"), alone
    covered = none_compiled.compiled_skip_reason("flex", "fwd", "quick", [runs_fwd])
    assert covered.endswith("other entries of this workload cover the rest"), covered
    assert runs_fwd.compiled_skip_reason("flex", "fwd", "quick", [none_compiled]) is None
