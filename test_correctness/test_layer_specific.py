"""Checks specific to the dense layer variants, beyond the generic ones of test_variants.py.

- nn.MultiheadAttention's boolean mask means "True = masked out", the opposite of this suite's
  convention: a variant that passes the suite's mask unconverted must be caught.
- The QK-norm families pin the scale: a variant that drops back to 1/sqrt(d) must be caught.
- Canonical gradient mapping: a fused or per-head layout mapped back in the wrong order is caught.
- Equal work: every variant of a family holds exactly the canonical parameters (same count, no
  extra bias tokens, one output projection), so their timings compare like with like.

Mutants are built as unregistered variant objects and run through the generic checks of
:mod:`attnsuite.checks`, so what is shown to fail here is what the suite would report.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnsuite import checks, layer_oracle, registry
from attnsuite.case import prepare
from attnsuite.problem import Mask, Problem
from impls import dense_layer

FAMILIES = sorted(layer_oracle.LAYER_FAMILIES)


def _problem(family: str, mask: str = "causal"):
    """The family's first fp32 CPU problem with the given mask kind (small, cheap)."""
    problems = layer_oracle.FAMILIES[family].problems("cpu", ("float32",))
    return next(p for p in problems if p.mask.kind == mask and p.lq > 3)


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


@pytest.mark.parametrize("family", FAMILIES)
def test_every_variant_of_a_family_holds_exactly_the_canonical_parameters(family):
    """Equal work: same parameter count as the canonical set, no bias tokens, canonical grad keys and shapes."""
    problem = _problem(family)
    canonical = layer_oracle.params_np(family, problem)
    total = sum(a.size for a in canonical.values())
    variants = registry.variants(level="layer", family=family)
    assert len(variants) >= 3, f"{family}: only {[v.name for v in variants]} registered"
    for variant in variants:
        case = prepare(variant, problem, requires_grad=False)  # builds; compiled cores compile lazily
        module = case.module
        count = sum(p.numel() for p in module.parameters())
        assert count == total, f"{variant.name}: {count} parameters, the canonical set has {total} (unequal work)"
        for sub in module.modules():
            if isinstance(sub, torch.nn.MultiheadAttention):
                assert sub.bias_k is None and sub.bias_v is None and not sub.add_zero_attn, f"{variant.name}: bias tokens"
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        grads = variant.canonical_grads(module)
        assert set(grads) == set(canonical), f"{variant.name}: canonical_grads keys {sorted(grads)}"
        for name, g in grads.items():
            assert g is not None and tuple(g.shape) == canonical[name].shape, (
                f"{variant.name}: canonical grad {name} has shape {None if g is None else tuple(g.shape)}, "
                f"expected {canonical[name].shape}"
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_variant_loads_the_canonical_weights_exactly(family):
    """Read the loaded weights back through the module's own layout: bit-equal to the canonical set."""
    problem = _problem(family)
    canonical = layer_oracle.params_np(family, problem)
    for variant in registry.variants(level="layer", family=family):
        module = prepare(variant, problem, requires_grad=False).module
        # canonical_grads is the module's layout map: feed it the parameters themselves as "grads"
        for p in module.parameters():
            p.grad = p.detach().clone()
        loaded = variant.canonical_grads(module)
        for name, want in canonical.items():
            got = loaded[name].double().numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{variant.name}: loaded {name} differs from canonical")


@given(
    family=st.sampled_from(FAMILIES),
    batch=st.integers(1, 2),
    length=st.integers(1, 40),
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([8, 12, 16, 24, 40]),
    causal=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_eager_layer_variants_match_the_oracle_on_drawn_shapes(family, batch, length, heads, head_dim, causal, dtype):
    """Hypothesis-drawn layer shapes: every eager variant of the family, forward and backward."""
    scale = None if family == "mha-layer" else layer_oracle.QKNORM_SCALE
    problem = Problem(batch=batch, lq=length, lk=length, hq=heads, hkv=heads, dqk=head_dim, dv=head_dim,
                      d_model=heads * head_dim, mask=Mask("causal" if causal else "none"), dtype=dtype, scale=scale)
    failures = []
    for variant in registry.variants(level="layer", family=family):
        if variant.compiled:  # compiled variants cost a compile per drawn shape; the fixed problems cover them
            continue
        for check in ("forward", "backward"):
            assert checks.skip_reason(check, variant, problem) is None, f"{variant.name} skips {problem.id}"
            result = checks.CHECKS[check](variant, problem)
            if not result.passed:
                failures.append(result.message)
    assert not failures, "\n".join(failures)
