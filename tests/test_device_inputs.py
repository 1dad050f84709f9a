"""Benchmark inputs drawn on the device follow each family's float64 recipe: names, shapes, dtype, scale.

Problems too large for the float64 oracle get their inputs from ``Family.device_inputs`` (the same
recipe run on a torch generator). A recipe that drifts (a missing parameter, a transposed weight, a
scale off by sqrt(d)) would benchmark a different computation than the one the correctness suite
checks, so each family's two paths are compared here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite import registry, runner, workloads
from attnsuite.case import DeviceInputs
from attnsuite.inputs import torch_dtype

FAMILIES = sorted(f.name for f in registry.families() if f.device_inputs is not None)


def _first_problem(family: registry.Family):
    problems = [p for p in family.problems("cpu", ("float32",))
                if p.batch * p.hq * p.lq * max(p.dqk, 1) >= 2048]  # enough values for a scale estimate
    return problems[0] if problems else family.problems("cpu", ("float32",))[0]


def test_every_built_in_family_draws_its_benchmark_inputs_on_the_device():
    assert {"attention", "dilated", "mha-layer", "gqa-layer", "mla-layer", "latent-layer"} <= set(FAMILIES)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_device_recipe_of_family_matches_its_float64_recipe_in_names_shapes_dtype_and_scale(family_name):
    family = registry.family(family_name)
    p = _first_problem(family)
    arrays, grad_out = family.inputs(p)
    params = family.params(p) if family.params is not None else {}
    d_inputs, d_grad, d_params = family.device_inputs(p)
    host = {**arrays, "<grad_out>": grad_out, **{f"param {k}": v for k, v in params.items()}}
    dev = {**d_inputs, "<grad_out>": d_grad, **{f"param {k}": v for k, v in d_params.items()}}
    assert list(dev) == list(host), f"{family_name} on {p.id}: device recipe gives {list(dev)}, float64 gives {list(host)}"
    for name, a in host.items():
        t = dev[name]
        assert tuple(t.shape) == a.shape, f"{family_name} {name}: shape {tuple(t.shape)} on the device, {a.shape} in float64"
        assert t.dtype == torch_dtype(p.dtype) and t.device.type == "cpu", f"{family_name} {name}: {t.dtype} {t.device}"
        if a.size >= 64:
            want, got = float(np.std(a)), float(t.double().std())
            assert 0.7 < got / want < 1.4, f"{family_name} {name}: std {got:.4g} on the device vs {want:.4g} in float64"
            want_mean, got_mean = float(np.mean(a)), float(t.double().mean())
            assert abs(got_mean - want_mean) < 0.3 * want + 0.05, f"{family_name} {name}: mean {got_mean:.3g} vs {want_mean:.3g}"


def test_device_draws_are_seeded_by_the_problem():
    family = registry.family("attention")
    p = _first_problem(family)
    a, _, _ = family.device_inputs(p)
    b, _, _ = family.device_inputs(p)
    c, _, _ = family.device_inputs(p.with_(seed=p.seed + 1))
    assert torch.equal(a["q"], b["q"])
    assert not torch.equal(a["q"], c["q"])


def test_device_inputs_holder_uses_the_device_recipe_only_where_asked():
    family = registry.family("attention")
    p = _first_problem(family)
    holder = DeviceInputs(on_device=lambda problem: problem.lq > 1)
    inputs, _, _ = holder.get(family, p)
    assert holder.drawn_on_device
    assert torch.equal(inputs["q"], family.device_inputs(p)[0]["q"])
    plain = DeviceInputs()
    inputs, _, _ = plain.get(family, p)
    assert not plain.drawn_on_device
    assert np.array_equal(inputs["q"].double().numpy(), family.inputs(p)[0]["q"])


def _bench_case(variant: str, oracle_limit: int):
    entry = workloads.Entry(family="attention", problem=_first_problem(registry.family("attention")), modes=("fwd+bwd",))
    bc = runner.BenchCase("unit", entry, entry.problem, variant, "fwd+bwd")
    settings = runner.Settings("quick", "cpu", None, (), ("fwd+bwd",), None, {}, runner.timing.QUICK_CPU,
                                     None, oracle_limit=oracle_limit)
    return bc, settings


@pytest.mark.parametrize("oracle_limit, inputs, check", [
    (1 << 30, "float64 recipe", "oracle"),
    (1, "drawn on the device", "spot: "),
])
def test_a_benchmark_case_says_how_its_inputs_were_made_and_where_its_time_went(oracle_limit, inputs, check):
    bc, settings = _bench_case("sdpa", oracle_limit)
    rec, result = runner.run_case(bc, settings)
    assert rec.outcome == "ok", rec.detail
    assert rec.extra["inputs"] == inputs
    # below the limit the whole oracle; above it a spot check of the output and of the whole gradients
    assert rec.extra["numerics_check"] == check or (check == "spot: " and rec.extra["numerics_check"].startswith(check)
                                                    and "; gradients of those rows' output gradient alone" in
                                                    rec.extra["numerics_check"])
    phases = rec.extra["suite_s"]
    assert {"recover", "prepare", "timing", "memory+backend", "numerics"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    # one extra call served memory, the backend and the numerics: the gradients it made were checked
    assert rec.peak_mem_bytes > 0 and rec.backend.startswith("sdpa:")


def test_a_nan_gradient_in_the_measured_call_is_a_numerics_outcome(monkeypatch):
    bc, settings = _bench_case("sdpa", 1)
    real_prepare = runner.prepare
    calls = {"n": 0}

    def poisoned_prepare(*args, **kwargs):
        case = real_prepare(*args, **kwargs)
        forward = case.call

        def call():
            calls["n"] += 1
            out = forward()
            return out * float("nan") if out.requires_grad else out  # poisons gradients of grad-mode calls
        case.call = call
        return case
    monkeypatch.setattr(runner, "prepare", poisoned_prepare)
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "numerics"
    assert "NaN/Inf" in rec.detail, rec.detail


@pytest.mark.parametrize("write", ["scale", "shift"])
def test_a_kernel_that_writes_its_inputs_is_an_error_saying_so_not_a_numerics_failure(monkeypatch, write):
    # each timed call doubled k: the last output, right for the inputs it got, had been reported as
    # "numerics: max error 3.59 (94338x the bound)" against the oracle of the original inputs
    bc, settings = _bench_case("sdpa", 1 << 30)
    real_prepare = runner.prepare

    def writing_prepare(*args, **kwargs):
        case = real_prepare(*args, **kwargs)
        forward = case.call

        def call():
            with torch.no_grad():
                k = case.inputs["k"]
                k.mul_(2.0) if write == "scale" else k.sub_(k.mean(dim=2, keepdim=True))
            return forward()
        case.call = call
        return case
    monkeypatch.setattr(runner, "prepare", writing_prepare)
    rec, result = runner.run_case(bc, settings)
    assert rec.outcome == "error" and result is None, (rec.outcome, rec.detail)
    assert "sdpa changed its input k in place during the timed calls" in rec.detail, rec.detail


def test_an_honest_kernel_leaves_every_input_mark_as_it_was():
    bc, settings = _bench_case("explicit", 1 << 30)
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "ok", rec.detail
    marks = {"a": (1.0, 2.0, 0.5)}
    assert runner.changed_inputs(marks, {"a": (1.0 + 1e-13, 2.0, 0.5)}) == []
    assert runner.changed_inputs(marks, {"a": (2.0, 4.0, 1.0)}) == ["a"]


def test_a_kernel_that_raises_keeps_where_it_raised_in_its_record(monkeypatch):
    # the record had only "RuntimeError: ...": the worker's log, with the traceback, is removed
    bc, settings = _bench_case("sdpa", 1 << 30)
    real_prepare = runner.prepare

    def raising_prepare(*args, **kwargs):
        case = real_prepare(*args, **kwargs)

        def call():
            raise RuntimeError("my kernel blew up: bad tile size 17")
        case.call = call
        return case
    monkeypatch.setattr(runner, "prepare", raising_prepare)
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "error" and rec.detail == "RuntimeError: my kernel blew up: bad tile size 17"
    text = rec.extra["traceback"]
    assert text.startswith("Traceback (the innermost 3 frames, the last where it was raised):"), text
    assert 'test_device_inputs.py", line' in text.splitlines()[-3] and "bad tile size 17" in text.splitlines()[-1], text


class _AliasingVariant(type(registry.get("sdpa"))):
    """sdpa's declarations; ``how``: "view of q" returns q itself reshaped (its dq is then the output
    gradient, passed through), "writes grad_out" halves the output gradient in place in its backward."""

    how = ""

    def build(self, problem):
        run = super().build(problem)
        how = self.how

        class HalveGradOut(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, go):
                return go.mul_(0.5)

        def call(q, k, v):
            if how == "view of q":
                return q.view(q.shape)
            out = run(q, k, v)
            return HalveGradOut.apply(out) if out.requires_grad else out
        return call


def _aliasing(monkeypatch, how: str) -> str:
    variant = _AliasingVariant()
    variant.name, variant.how = f"t-{how.replace(' ', '-')}", how
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    return variant.name


@pytest.mark.parametrize("how", ["view of q", "writes grad_out"])
def test_a_variant_aliasing_or_writing_the_output_gradient_leaves_the_next_variants_case_ok(monkeypatch, how):
    # the output gradient is shared by every case of a problem in a worker: a dq aliasing it was filled
    # with NaN after the timed calls, and the correct variant after it failed "gradient q has NaN/Inf
    # values" (an outside tester's trial); a backward writing it in place went unnoticed
    name = _aliasing(monkeypatch, how)
    bc, settings = _bench_case(name, 1 << 30)
    rec, _ = runner.run_case(bc, settings)
    if how == "view of q":  # its own fault, said as such: k and v never reach the output
        assert rec.outcome == "numerics" and "no gradient reached input k" in rec.detail, (rec.outcome, rec.detail)
    else:
        assert rec.outcome == "error", (rec.outcome, rec.detail)
        assert f"{name} changed the output gradient it was given in place during the timed calls" in rec.detail
    after, _ = runner.run_case(runner.BenchCase(bc.workload, bc.entry, bc.problem, "sdpa", bc.mode), settings)
    assert after.outcome == "ok", after.detail
