"""Checks specific to the dense layer variants, beyond the generic ones of test_variants.py.

- nn.MultiheadAttention's boolean mask means "True = masked out", the opposite of this suite's
  convention: a variant that passes the suite's mask unconverted must be caught.
- The QK-norm families pin the scale: a variant that drops back to 1/sqrt(d) must be caught.
- Canonical gradient mapping: a fused or per-head layout mapped back in the wrong order is caught.
- Equal work: every variant of every layer family (built-in or loaded from outside) holds exactly
  the canonical parameters (same count, no extra bias tokens, one output projection), so their
  timings compare like with like; a failure names every offender.

The generic tests (equal work, weight loading, drawn shapes) run the selected variants only
(``--attn-only``, through :func:`attnsuite.plugin.selected_variants`), and a variant that declares a
drawn problem unsupported is skipped there with its reason, never failed.

Mutants are built as unregistered variant objects and run through the generic checks of
:mod:`attnsuite.checks`, so what is shown to fail here is what the suite would report.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnsuite import checks, registry
from attnsuite.case import prepare
from attnsuite.plugin import selected_variants
from attnsuite.problem import Mask, Problem
from attnsuite_impls.layers import dense_layer, layer_oracle

from .conftest import skip_if_nothing_ran

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("layer-mha", "layer-fused-qkv", "layer-perhead", "qknorm-ln-sdpa", "qknorm-rms-explicit")

FAMILIES = sorted(layer_oracle.LAYER_FAMILIES)  # the dense layer families drawn shapes are built for
# every registered layer family with problems, external ones included (loaded before collection)
LAYER_FAMILIES = sorted(f.name for f in registry.families() if f.level == "layer" and f.problems is not None)


def _problem(family: str, mask: str = "causal"):
    """The family's first fp32 CPU problem with the given mask kind (small, cheap); else its first."""
    problems = registry.family(family).problems("cpu", ("float32",))
    return next((p for p in problems if p.mask.kind == mask and p.lq > 3), problems[0])


def _selected(config: pytest.Config, family: str) -> list[registry.Variant]:
    """The selected (``--attn-only``) layer variants of ``family``; skips the test when there are none."""
    chosen = [v for v in selected_variants(config, level="layer") if v.family == family]
    if not chosen:
        pytest.skip(f"no selected variant of {family} (--attn-only)")
    return chosen


class UninvertedMaskMHA(dense_layer.LayerMHA):
    """Mutant: hands nn.MultiheadAttention the suite's allowed-mask as if it meant 'masked out'."""

    name = "mutant-layer-mha-uninverted-mask"

    def build(self, problem, params):
        module = super().build(problem, params)
        if module.blocked is not None:  # True = allowed, which nn.MultiheadAttention reads as blocked
            module.blocked = ~module.blocked
        return module


def test_nn_multihead_attention_with_the_suites_mask_unconverted_leaks_the_future():
    problem = _problem("mha-layer")
    good = registry.get("layer-mha")
    assert checks.check_causality(good, problem).passed, "the real layer-mha leaks the future"
    mutant = UninvertedMaskMHA()
    causality = checks.check_causality(mutant, problem)
    forward = checks.check_forward(mutant, problem)
    assert not causality.passed and "future leak" in causality.message, causality.message
    assert not forward.passed and "output: max error" in forward.message, forward.message


def test_layer_mha_passes_the_complement_of_the_allowed_mask():
    problem = _problem("mha-layer")
    case = prepare(registry.get("layer-mha"), problem, requires_grad=False)
    blocked = case.module.blocked
    allowed = torch.ones(problem.lq, problem.lq, dtype=torch.bool).tril()
    assert torch.equal(blocked, ~allowed), "nn.MultiheadAttention must get True where attention is NOT allowed"


class DefaultScaleQKNorm(dense_layer.QKNormLNSdpa):
    """Mutant: ignores the pinned scale (SDPA's default 1/sqrt(d) instead)."""

    name = "mutant-qknorm-ln-sdpa-default-scale"

    def build(self, problem, params):
        module = super().build(problem, params)
        module.scale = None
        return module


class DroppedNormWeightQKNorm(dense_layer.QKNormRMSExplicit):
    """Mutant: the RMSNorm weight is left at its default of ones instead of the canonical one."""

    name = "mutant-qknorm-rms-explicit-unit-weight"

    def build(self, problem, params):
        module = super().build(problem, params)
        with torch.no_grad():
            module.q_norm.norm.weight.fill_(1.0)
        return module


@pytest.mark.parametrize("mutant", [DefaultScaleQKNorm(), DroppedNormWeightQKNorm()], ids=lambda v: v.name)
def test_qknorm_mutants_fail_the_forward_check(mutant):
    problem = _problem(mutant.family)
    result = checks.check_forward(mutant, problem)
    assert not result.passed and "output: max error" in result.message, result.message


class SwappedHeadGradsPerHead(dense_layer.LayerPerHead):
    """Mutant: maps the per-head gradients back to the canonical layout in reverse head order."""

    name = "mutant-layer-perhead-reversed-grads"

    def canonical_grads(self, module):
        grads = super().canonical_grads(module)
        h = len(module.heads)
        return {k: (v.unflatten(0, (h, -1)).flip(0).flatten(0, 1) if k[0] in "wb" and k[1] in "qkv" else v)
                for k, v in grads.items()}


class FusedGradsOffByOne(dense_layer.LayerFusedQKV):
    """Mutant: splits the fused qkv gradient at the wrong rows (k and v swapped)."""

    name = "mutant-layer-fused-qkv-swapped-kv-grads"

    def canonical_grads(self, module):
        grads = super().canonical_grads(module)
        grads["wk"], grads["wv"] = grads["wv"], grads["wk"]
        return grads


@pytest.mark.parametrize("mutant", [SwappedHeadGradsPerHead(), FusedGradsOffByOne()], ids=lambda v: v.name)
def test_a_wrong_canonical_gradient_layout_fails_the_backward_check(mutant):
    problem = _problem("mha-layer")
    result = checks.check_backward(mutant, problem)
    assert not result.passed and "grad w" in result.message, result.message


@pytest.mark.attn_selection
@pytest.mark.parametrize("family", FAMILIES)
def test_each_dense_layer_family_has_at_least_three_variants(family, pytestconfig):
    if pytestconfig.getoption("--attn-only"):
        pytest.skip("a selection (--attn-only) need not hold three variants of a family")
    names = [v.name for v in registry.variants(level="layer", family=family)]
    assert len(names) >= 3, f"{family}: only {names} registered"


def _runnable(variants, problem, declined: Counter):
    """The variants that can run ``problem``; the others' declared reasons go into ``declined``."""
    for variant in variants:
        reasons = variant.unsupported(problem)
        if reasons:
            declined.update(reasons)
        else:
            yield variant


@pytest.mark.attn_selection
@pytest.mark.parametrize("family", LAYER_FAMILIES)
def test_every_variant_of_a_layer_family_does_equal_work(family, pytestconfig, build_cache):
    """Equal work: same parameter count as the canonical set, no bias tokens, canonical grad keys and
    shapes; every offender is named, not only the first."""
    problem = _problem(family)
    declined: Counter = Counter()
    results = [checks.check_equal_work(v, problem, cache=build_cache)
               for v in _runnable(_selected(pytestconfig, family), problem, declined)]
    offenders = [r.message for r in results if not r.passed]
    assert not offenders, f"{len(offenders)} variant(s) of {family} do unequal work:\n" + "\n".join(offenders)
    skip_if_nothing_ran(len(results), declined, f"equal work of {family}")


@pytest.mark.attn_selection
@pytest.mark.parametrize("family", LAYER_FAMILIES)
def test_every_variant_loads_the_canonical_weights_exactly(family, pytestconfig):
    """Read the loaded weights back through the module's own layout: bit-equal to the canonical set."""
    problem = _problem(family)
    declined: Counter = Counter()
    results = [checks.check_loaded_weights(v, problem)
               for v in _runnable(_selected(pytestconfig, family), problem, declined)]
    wrong = [r.message for r in results if not r.passed]
    assert not wrong, "\n".join(wrong)
    skip_if_nothing_ran(len(results), declined, f"weights of {family}")


@pytest.mark.attn_selection
@pytest.mark.parametrize("family", FAMILIES)
def test_eager_layer_variants_match_the_oracle_on_drawn_shapes(family, pytestconfig):
    """Hypothesis-drawn layer shapes: every selected eager variant of the family, forward and backward.
    A shape a variant declares unsupported is skipped for it with its reason."""
    # compiled variants cost a compile per drawn shape; the fixed problems cover them
    eager = [v for v in _selected(pytestconfig, family) if not v.compiled]
    if not eager:
        pytest.skip(f"no eager variant of {family} selected")
    scale = None if family == "mha-layer" else layer_oracle.QKNORM_SCALE
    declined: Counter = Counter()
    ran = []

    @given(
        batch=st.integers(1, 2),
        length=st.integers(1, 40),
        heads=st.integers(1, 4),
        head_dim=st.sampled_from([8, 12, 16, 24, 40]),
        causal=st.booleans(),
        dtype=st.sampled_from(["float32", "float64"]),
    )
    def check(batch, length, heads, head_dim, causal, dtype):
        problem = Problem(batch=batch, lq=length, lk=length, hq=heads, hkv=heads, dqk=head_dim, dv=head_dim,
                          d_model=heads * head_dim, mask=Mask("causal" if causal else "none"), dtype=dtype,
                          scale=scale)
        failures = []
        for variant in eager:
            for name in ("forward", "backward"):
                reason = checks.skip_reason(name, variant, problem)
                if reason:  # a declared limitation: skipped for this variant, with its reason
                    declined[reason] += 1
                    continue
                ran.append((variant.name, name))
                result = checks.CHECKS[name](variant, problem)
                if not result.passed:
                    failures.append(result.message)
        assert not failures, "\n".join(failures)

    check()
    skip_if_nothing_ran(len(ran), declined, f"drawn shapes of {family}")
