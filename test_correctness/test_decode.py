"""KV-cache decoding equals the full forward's last rows, and a top-left-aligned decode is caught.

The full forward is the float64 oracle on the whole sequence (causal, lq == lk, where both corners
coincide); a decode step of ``n`` tokens ending at position ``t`` must reproduce rows
``[t - n, t)`` of it. Every comparison goes through :func:`attnsuite.tolerance.compare`, with the
plain-math base computed on the same rows.
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import oracle, reference_math, registry, tolerance
from attnsuite.case import prepare
from attnsuite.inputs import kernel_inputs
from attnsuite.problem import Mask, Problem
from attnsuite_impls.attention.decode import (KVCache, _KVCacheVariant, cache_capacity, decode_problems, explicit_attend,
                                              sdpa_attend)

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("kvcache-sdpa", "kvcache-explicit")

VARIANTS = ("kvcache-sdpa", "kvcache-explicit")
ATTENDS = {"kvcache-sdpa": sdpa_attend, "kvcache-explicit": explicit_attend}


def full_sequence(hq: int, hkv: int, length: int = 97, mask: Mask = Mask("causal")) -> Problem:
    return Problem(batch=2, lq=length, lk=length, hq=hq, hkv=hkv, dqk=32, dv=16, mask=mask)


def rows_base(problem: Problem, start: int, stop: int) -> torch.Tensor:
    """Plain math in the problem's dtype for query rows [start, stop) of the full forward."""
    q, k, v, _ = kernel_inputs(problem)
    return reference_math.attention(problem, q, k, v)[:, :, start:stop]


def assert_rows_match(what: str, out: torch.Tensor, problem: Problem, start: int, stop: int) -> None:
    ref = oracle.solve(problem, with_grad=False).out[:, :, start:stop]
    c = tolerance.compare(what, out, ref, rows_base(problem, start, stop), problem.dtype)
    assert c.passed, c.describe()


@pytest.mark.parametrize("variant_name", VARIANTS)
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (4, 1)], ids=["mha", "gqa4:1", "mqa"])
@pytest.mark.parametrize("mask", [Mask("causal"), Mask("window", window=9)], ids=["causal", "window9"])
def test_prefill_then_single_and_multi_token_steps_equal_the_full_forward(variant_name, hq, hkv, mask):
    problem = full_sequence(hq, hkv, mask=mask)
    q, k, v, _ = kernel_inputs(problem)
    cache = KVCache(problem.batch, hkv, cache_capacity(problem.lk), problem.dqk, problem.dv, torch.float32,
                    "cpu", ATTENDS[variant_name](problem))
    prompt = 60
    out = cache.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])
    assert_rows_match(f"{variant_name} prefill rows [0, {prompt})", out, problem, 0, prompt)
    t = prompt
    for n in (1, 1, 1, 4, 4, 1, 3, 4, 1, 1, 4, 4, 1, 1, 1, 4, 1):  # 37 tokens: single-token and multi-token steps
        n = min(n, problem.lk - t)
        if n == 0:
            break
        out = cache.step(q[:, :, t:t + n], k[:, :, t:t + n], v[:, :, t:t + n])
        assert cache.length == t + n
        assert_rows_match(f"{variant_name} step of {n} at rows [{t}, {t + n})", out, problem, t, t + n)
        t += n
    assert t == problem.lk


@pytest.mark.parametrize("variant_name", VARIANTS)
@pytest.mark.parametrize("problem", decode_problems("cpu", ("float32", "bfloat16")), ids=lambda p: p.id)
def test_decode_variant_matches_the_oracle_on_decode_problems(variant_name, problem):
    variant = registry.get(variant_name)
    assert not variant.unsupported(problem), variant.unsupported(problem)
    ref_out, _ = registry.family_of(variant).reference(problem)
    base_out, _ = registry.family_of(variant).base(problem)
    case = prepare(variant, problem, requires_grad=False)
    out = case.forward()
    assert out.dtype == getattr(torch, problem.dtype) and tuple(out.shape) == ref_out.shape
    c = tolerance.compare(f"{variant_name} output", out, ref_out, base_out, problem.dtype)
    assert c.passed, c.describe()
    # a second step on the same cached prompt (no re-prefill) gives the same bits
    assert torch.equal(case.forward(), out)


def test_the_cache_is_preallocated_poisoned_and_refilled_when_keys_change():
    problem = decode_problems("cpu", ("float32",))[1]  # 4 new queries, 300 cached keys, GQA
    fn = registry.get("kvcache-sdpa").build(problem)
    cache = fn.cache
    assert cache.capacity == cache_capacity(problem.lk) > problem.lk
    storage = cache.k.data_ptr()
    q, k, v, _ = kernel_inputs(problem)
    first = fn(q, k, v)
    assert cache.k.data_ptr() == storage, "the cache was reallocated instead of written in place"
    assert torch.isnan(cache.k[:, :, problem.lk:]).all(), "the unused tail lost its NaN poison"
    # in-place change of a cached key: the version counter makes the next call prefill again
    with torch.no_grad():
        k[:, :, 0] += 1.0
    second = fn(q, k, v)
    assert not torch.equal(first, second), "a changed prompt key was served from the stale cache"
    fresh = registry.get("kvcache-sdpa").build(problem)(q, k, v)
    assert torch.equal(second, fresh)


def test_decode_variants_declare_no_backward_and_refuse_top_left_decoding():
    variant = registry.get("kvcache-sdpa")
    problem = decode_problems("cpu", ("float32",))[0]
    assert any("no backward" in r for r in variant.unsupported(problem, backward=True))
    top_left = problem.with_(mask=Mask("causal"))
    assert any("bottom-right" in r for r in variant.unsupported(top_left))


class TopLeftDecode(_KVCacheVariant):
    """Deliberately wrong: the cache is right, the causal mask is aligned top-left (query r sees j <= r)."""

    name = "mutant-kvcache-top-left"

    def extra_reasons(self, problem, backward):
        return []

    def make_attend(self, problem):
        scale, gqa = problem.softmax_scale, problem.hkv != problem.hq

        def attend(q, k, v, q_pos0):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                    enable_gqa=gqa)

        return attend


class WholeCapacity(_KVCacheVariant):
    """Deliberately wrong: attends to the whole preallocated cache, not its valid prefix."""

    name = "mutant-kvcache-whole-capacity"

    def make_attend(self, problem):
        inner = sdpa_attend(problem.with_(mask=Mask("none")))

        def attend(q, k, v, q_pos0):
            full_k = k.as_strided((k.shape[0], k.shape[1], cache_capacity(problem.lk), k.shape[3]), k.stride())
            full_v = v.as_strided((v.shape[0], v.shape[1], cache_capacity(problem.lk), v.shape[3]), v.stride())
            return inner(q, full_k, full_v, q_pos0)

        return attend


@pytest.mark.parametrize("lq", [4, 1])
def test_a_top_left_aligned_decode_is_caught(lq):
    problem = Problem(batch=2, lq=lq, lk=300, hq=8, hkv=2, dqk=32, dv=32, mask=Mask("causal", align="bottom_right"))
    family = registry._FAMILIES["attention"]
    ref_out, _ = family.reference(problem)
    base_out, _ = family.base(problem)
    out = prepare(TopLeftDecode(), problem, requires_grad=False).forward()
    c = tolerance.compare("output", out, ref_out, base_out, problem.dtype)
    assert not c.passed, f"a top-left decode passed the check: {c.describe()}"
    assert c.err > 100 * c.bound, c.describe()
    assert "output: max error" in c.describe()
    if lq == 1:
        # query 0 aligned top-left sees key 0 only: the error must be on the one new row
        assert c.where[2] == 0


def test_reading_past_the_valid_prefix_is_caught_as_nan():
    problem = Problem(batch=1, lq=1, lk=300, hq=4, hkv=2, dqk=32, dv=32, mask=Mask("causal", align="bottom_right"))
    family = registry._FAMILIES["attention"]
    ref_out, _ = family.reference(problem)
    base_out, _ = family.base(problem)
    out = prepare(WholeCapacity(), problem, requires_grad=False).forward()
    c = tolerance.compare("output", out, ref_out, base_out, problem.dtype)
    assert not c.passed and not c.finite, c.describe()
    assert "NaN or Inf" in c.describe()
