"""Decode-step benchmark cases (mode ``decode``, workload ``layer-decode``): what is timed, what is
counted, what is compared, and which variants are skipped and why."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from attnsuite import flops, registry, runner, workloads
from attnsuite.flops import allowed_pairs, projection_flops
from attnsuite.problem import Mask
from attnsuite.record import DECODE_STEP_ARG
from attnsuite_impls.layers import dense_layer

QUICK = {(e.family, e.problem.arg(DECODE_STEP_ARG)): e for e in workloads.WORKLOADS["layer-decode"].quick}


def _run(variant: str, family: str = "mha-layer", step: int = 4, monkeypatch=None, instance=None):
    if instance is not None:
        monkeypatch.setitem(registry._REGISTRY, instance.name, instance)
    entry = QUICK[(family, step)]
    bc = runner.BenchCase("layer-decode", entry, entry.problem, variant, "decode")
    settings = runner.Settings("quick", "cpu", None, (), ("decode",), None, {}, runner.timing.QUICK_CPU, None)
    return runner.run_case(bc, settings)


@pytest.mark.parametrize("step", [1, 4])
def test_decode_step_flops_are_the_steps_rows_against_every_key_plus_its_own_projections(step):
    p = QUICK[("gqa-layer", step)].problem
    # the same rows as a kernel problem: step rows against all L keys, causal corner bottom-right
    rows = p.with_(lq=step, lk=p.lq, d_model=None, args=(), mask=Mask("causal", align="bottom_right"))
    attn = 2.0 * p.batch * p.hq * allowed_pairs(rows) * (p.dqk + p.dv)
    expected = attn + projection_flops(p, "gqa-layer") * step / p.lq
    assert flops.case_flops(p, "gqa-layer", "decode") == pytest.approx(expected, rel=1e-12)
    assert flops.case_flops(p, "gqa-layer", "decode") < flops.case_flops(p, "gqa-layer", "fwd") / 4


def test_a_decode_problem_without_its_step_size_is_refused_by_the_flop_count():
    p = QUICK[("mha-layer", 1)].problem.with_(args=())
    with pytest.raises(ValueError, match="decode_step"):
        flops.case_flops(p, "mha-layer", "decode")


@pytest.mark.parametrize("variant,family", [("layer-sdpa", "mha-layer"), ("gqa-layer-repeat", "gqa-layer"),
                                            ("mla-absorbed", "mla-layer"), ("latent-expanded", "latent-layer")])
@pytest.mark.parametrize("step", [1, 4])
def test_a_decoding_variant_times_one_step_and_matches_the_full_forwards_last_rows(variant, family, step):
    rec, result = _run(variant, family, step)
    assert rec.outcome == "ok", rec.detail
    assert rec.extra["numerics_check"] == "oracle"
    assert rec.flops == pytest.approx(flops.case_flops(QUICK[(family, step)].problem, family, "decode"))
    assert rec.samples >= 5 and result.median_s > 0
    assert rec.materialises is None  # a step's scores are step x L: never judged as an L x L matrix


class TopLeftStep(dense_layer.LayerSdpa):
    """A step that aligns its causal mask top-left: wrong as soon as a step has more than one token."""

    name = "bench-mutant-top-left-step"

    def build(self, problem, params):
        module = super().build(problem, params)
        module.decode_attend = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                              scale=module.scale)
        return module


class StepGrowsItsCacheInPlace(dense_layer.LayerSdpa):
    """A correct step whose cache is a list it extends in place: every timed call must start from
    the prefilled cache, not from what the calls before left."""

    name = "bench-in-place-cache"

    def prefill(self, module, x):
        y, (k, v) = super().prefill(module, x)
        return y, [k, v]

    def step(self, module, x_new, cache):
        y, (k, v) = super().step(module, x_new, tuple(cache))
        cache[:] = [k, v]
        return y, cache


def test_a_step_with_the_wrong_causal_corner_is_a_numerics_outcome(monkeypatch):
    rec, _ = _run(TopLeftStep.name, step=4, monkeypatch=monkeypatch, instance=TopLeftStep())
    assert rec.outcome == "numerics", rec.detail


def test_a_cache_grown_in_place_still_gives_the_right_step_after_every_timed_call(monkeypatch):
    rec, _ = _run(StepGrowsItsCacheInPlace.name, step=1, monkeypatch=monkeypatch, instance=StepGrowsItsCacheInPlace())
    assert rec.outcome == "ok", rec.detail
    assert rec.samples >= 5  # many calls ran before the numerics call: each on a fresh copy


@pytest.mark.parametrize("variant", ["layer-perhead", "layer-flex"])
def test_a_variant_without_decoding_is_skipped_with_its_reason(variant):
    rec, _ = _run(variant)
    assert rec.outcome == "skipped"
    assert rec.detail == f"{variant} declares no incremental decoding (LayerVariant.decodes is False)"


def test_every_layer_family_with_decoding_variants_has_decode_cases_in_both_tiers():
    decoding = {v.family for v in registry.variants(level="layer") if getattr(v, "decodes", False)}
    for tier in ("full", "quick"):
        covered = {e.family for e in workloads.WORKLOADS["layer-decode"].tier(tier)}
        assert decoding <= covered, f"{tier}: no decode case for {sorted(decoding - covered)}"


@pytest.mark.parametrize("variant, family, mode, workload", [("triton-mla-absorbed", "mla-layer", "decode", None),
                                                             ("triton-flash", None, "fwd", "gpt2-mha"),
                                                             ("triton-decode", None, "fwd", "decode")])
def test_a_triton_variant_on_cpu_is_not_timed_under_the_interpreter(variant, family, mode, workload, monkeypatch):
    # with TRITON_INTERPRET=1 exported (as for the CPU checks) its NumPy emulation had been timed and
    # recorded as the kernel's figure; triton-decode declares "triton:split-kv", which the rule had missed
    from attnsuite import triton_support

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if mode == "decode":
        rec, result = _run(variant, family, step=1)
    else:
        entry = next(e for e in workloads.WORKLOADS[workload].quick if e.family == "attention")
        bc = runner.BenchCase(workload, entry, entry.problem, variant, mode)
        settings = runner.Settings("quick", "cpu", None, (), (mode,), None, {}, runner.timing.QUICK_CPU, None)
        rec, result = runner.run_case(bc, settings)
    assert rec.outcome == "skipped" and result is None, (rec.outcome, rec.detail)
    assert rec.detail == triton_support.INTERPRETER_TIMING


@pytest.mark.parametrize("backend, triton", [("triton", True), ("triton:split-kv", True), ("triton+kvcache", True),
                                             ("Triton", True), ("tritonx", False), ("sdpa:triton", False),
                                             ("sageattention", False), ("eager-matmul", False)])
def test_a_backend_is_triton_when_its_name_before_any_qualifier_is_triton(backend, triton):
    from attnsuite import triton_support

    assert triton_support.is_triton_backend(backend) is triton
    assert (triton_support.benchmark_reason(backend, "cpu") is not None) is triton
    assert triton_support.benchmark_reason(backend, "cuda:0") is None


def test_without_the_interpreter_the_benchmark_skip_does_not_tell_to_set_it(monkeypatch):
    from attnsuite import triton_support

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rec, _ = _run("triton-mla-absorbed", "mla-layer", step=1)
    assert rec.outcome == "skipped" and rec.detail == triton_support.INTERPRETER_TIMING, rec.detail
