"""Attention dropout, checked statistically: kept fraction and expected value, and p = 0 is no dropout.

Bounds come from the binomial / sampling variance, at Z = 5 standard deviations (a false alarm
probability of about 6e-7 per check under the normal approximation), never from a tuned guess.
Every random draw is seeded, so the outcome is reproducible run to run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnsuite import mask_mods, oracle, registry, tolerance
from attnsuite.inputs import kernel_inputs, kernel_inputs_np
from attnsuite.problem import Mask, Problem
from attnsuite_impls.attention.dense_kernel import explicit_attention
from attnsuite_impls.attention.dropout import dropout_attention

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("explicit-dropout", "explicit", "sdpa")

Z = 5.0


def binomial_bound(n: int, p_keep: float) -> float:
    """Z standard deviations of a Binomial(n, p_keep) count."""
    return Z * math.sqrt(n * p_keep * (1.0 - p_keep))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_sdpa_dropout_keeps_the_expected_fraction_and_rescales_by_one_over_keep(p):
    # q = 0 makes every probability 1/lk; v = identity makes the output the dropped probabilities
    torch.manual_seed(1)
    b, h, l = 2, 4, 64
    q = torch.zeros(b, h, l, 16)
    k = torch.randn(b, h, l, 16)
    v = torch.eye(l).expand(b, h, l, l).contiguous()
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    kept = out != 0
    n, count = kept.numel(), int(kept.sum())
    assert abs(count - n * (1 - p)) <= binomial_bound(n, 1 - p), (
        f"SDPA dropout p={p}: kept {count} of {n} probabilities, expected {n * (1 - p):.0f} "
        f"+- {binomial_bound(n, 1 - p):.0f}")
    # a kept probability is 1/lk scaled by 1/(1-p): fp32 rounding only
    np.testing.assert_allclose(out[kept].numpy(), 1.0 / (l * (1 - p)), rtol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_explicit_dropout_keeps_the_expected_fraction(p):
    problem = Problem(batch=2, lq=64, lk=48, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("none"))
    q, k, v, _ = kernel_inputs(problem)
    gen = torch.Generator().manual_seed(3)
    _, keep = dropout_attention(q, k, v, problem.softmax_scale, p=p, generator=gen, return_keep=True)
    n, count = keep.numel(), int(keep.sum())
    assert abs(count - n * (1 - p)) <= binomial_bound(n, 1 - p), (
        f"explicit dropout p={p}: kept {count} of {n}, expected {n * (1 - p):.0f} +- {binomial_bound(n, 1 - p):.0f}")
    # the mask is per (query, key), not per row: almost every row (1 - (1-p)^48 >= 99%) is mixed,
    # while a per-row dropout would leave no mixed row at all
    per_row = keep.float().mean(dim=-1)
    mixed = float(((per_row > 0) & (per_row < 1)).float().mean())
    assert mixed > 0.5, f"only {mixed:.2f} of the rows mix kept and dropped keys: dropout is not per element"


def _mean_statistic(draws: np.ndarray, expected: np.ndarray, variance: np.ndarray) -> tuple[float, int]:
    """sum of squared standardised errors of the draw mean: ~ chi^2(n) when the elements are independent."""
    n_draws = draws.shape[0]
    z = (draws.mean(axis=0) - expected) / np.sqrt(variance / n_draws)
    return float(np.sum(z**2)), z.size


def _dropout_setup(p: float):
    """A causal problem with one value column (dv = 1), so output elements use independent masks."""
    problem = Problem(batch=1, lq=32, lk=32, hq=4, hkv=4, dqk=16, dv=1, mask=Mask("causal"))
    qn, kn, vn, _ = kernel_inputs_np(problem)
    out, _, probs, _ = oracle.forward(problem, qn, kn, vn)
    # O_drop = sum_j P_ij m_ij v_j / (1-p), m ~ Bernoulli(1-p): Var = p/(1-p) * sum_j P_ij^2 v_j^2
    variance = p / (1 - p) * np.einsum("bhqk,bhkd->bhqd", probs**2, vn**2)
    return problem, out, variance


@pytest.mark.parametrize("form", ["sdpa", "explicit"])
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_output_has_the_no_dropout_output_as_expected_value(form, p):
    problem, expected, variance = _dropout_setup(p)
    q, k, v, _ = kernel_inputs(problem)
    n_draws = 400
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    allowed = mask_mods.dense_bool_mask(problem)
    draws = []
    for _ in range(n_draws):
        if form == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            o = dropout_attention(q, k, v, problem.softmax_scale, allowed, p=p, generator=gen)
        draws.append(o.double().numpy())
    stat, n = _mean_statistic(np.stack(draws), expected, variance)
    # row 0 sees one key: its variance is p/(1-p) v_0^2 > 0, so every element is a real test
    assert np.all(variance > 0)
    bound = Z * math.sqrt(2 * n)  # chi^2(n): mean n, standard deviation sqrt(2n)
    assert abs(stat - n) <= bound, (
        f"{form} dropout p={p}: mean of {n_draws} draws is off the no-dropout output: "
        f"sum z^2 = {stat:.1f} over {n} elements (expected {n} +- {bound:.1f})")
    # a wrong rescale (no 1/(1-p)) would fail the same statistic: show the test has that power
    scaled_wrong = np.stack(draws) * (1 - p)
    wrong, _ = _mean_statistic(scaled_wrong, expected, variance)
    assert abs(wrong - n) > bound, f"{form} p={p}: the statistic cannot tell a missing 1/(1-p) rescale"


@pytest.mark.parametrize("mask", [Mask("none"), Mask("causal"), Mask("causal", align="bottom_right")], ids=lambda m: m.id)
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_sdpa_dropout_zero_is_bitwise_no_dropout(mask, hq, hkv):
    problem = Problem(lq=17, lk=33, hq=hq, hkv=hkv, dqk=16, dv=16, mask=mask)
    q, k, v, _ = kernel_inputs(problem)
    kw = {"attn_mask": mask_mods.dense_bool_mask(problem), "enable_gqa": hkv != hq}
    assert torch.equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, **kw),
                       F.scaled_dot_product_attention(q, k, v, **kw))


@pytest.mark.parametrize(
    "problem",
    [
        Problem(lq=17, lk=33, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("causal", align="bottom_right")),
        Problem(lq=33, lk=33, hq=2, hkv=2, dqk=16, dv=16, alibi=True, softcap=3.0, mask=Mask("window", window=5)),
    ],
    ids=lambda p: p.id,
)
def test_explicit_dropout_zero_is_bitwise_the_explicit_variant(problem):
    q, k, v, _ = kernel_inputs(problem)
    with_dropout = registry.get("explicit-dropout").build(problem)(q, k, v)
    plain = registry.get("explicit").build(problem)(q, k, v)
    assert torch.equal(with_dropout, plain), "explicit-dropout with p=0 differs from explicit"
    allowed = mask_mods.dense_bool_mask(problem)
    assert torch.equal(dropout_attention(q, k, v, problem.softmax_scale, allowed, None, problem.softcap if not problem.alibi else None, 0.0),
                       explicit_attention(q, k, v, problem.softmax_scale, allowed, None, problem.softcap if not problem.alibi else None))


def test_explicit_dropout_variant_is_seeded_and_equals_the_math_given_its_mask():
    problem = Problem(lq=17, lk=33, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("causal", align="bottom_right"),
                      dropout=0.3, seed=5)
    variant = registry.get("explicit-dropout")
    assert not variant.unsupported(problem)
    assert any("dropout" in r for r in registry.get("explicit").unsupported(problem)), \
        "a variant without dropout must refuse a dropout problem with a reason"
    fn = variant.build(problem)
    q, k, v, _ = kernel_inputs(problem)
    first, second = fn(q, k, v), fn(q, k, v)
    assert torch.equal(first, second), "same seed, different dropout masks"
    # recover its mask with the same seeded generator and redo the math in float64
    allowed = mask_mods.dense_bool_mask(problem)
    _, keep = dropout_attention(q, k, v, problem.softmax_scale, allowed, p=0.3,
                                generator=torch.Generator().manual_seed(5), return_keep=True)
    qn, kn, vn, _ = kernel_inputs_np(problem)
    _, _, probs, _ = oracle.forward(problem, qn, kn, vn)
    idx = oracle.kv_head_index(problem.hq, problem.hkv)
    ref = np.einsum("bhqk,bhkd->bhqd", probs * keep.numpy() / 0.7, vn[:, idx])
    # plain fp32 math with the same mask: the noise level of the tolerance rule
    kr, vr = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    s = (q @ kr.transpose(-2, -1) * problem.softmax_scale).masked_fill(~allowed, float("-inf"))
    base = (torch.softmax(s, -1) * keep / 0.7) @ vr
    c = tolerance.compare("explicit-dropout output", first, ref, base, problem.dtype)
    assert c.passed, c.describe()
    assert not np.allclose(ref, oracle.solve(problem.with_(dropout=0.0), with_grad=False).out), \
        "dropout 0.3 did not change the output"
