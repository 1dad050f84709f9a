"""Dilated attention (LongNet) variants: coverage, no zero heads, drawn shapes, and caught mutations.

The generic checks (test_variants.py) run every ``dilated`` variant on the family's problems
(forward, backward, causality by perturbation, repeat). These tests add partial coverage (rows no
group covers must be zero, the rest must match), a per-head nonzero-norm assertion, explicit ==
gather on drawn shapes, and deliberately wrong variants that must fail.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnsuite import checks, registry
from attnsuite.inputs import kernel_inputs
from attnsuite.tolerance import compare
from attnsuite_impls.dilated import dilated, dilated_oracle as dil

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("dilated-explicit", "dilated-gather")

VARIANTS = ["dilated-explicit", "dilated-gather"]


def _out(name_or_variant, problem, grad: bool = False):
    variant = registry.get(name_or_variant) if isinstance(name_or_variant, str) else name_or_variant
    q, k, v, do = kernel_inputs(problem, requires_grad=grad)
    out = variant.build(problem)(q, k, v)
    if grad:
        out.backward(do)
        return out.detach(), {"q": q.grad, "k": k.grad, "v": v.grad}
    return out, None


@pytest.mark.parametrize("variant_name", VARIANTS)
@pytest.mark.parametrize("problem", dil.dilated_problems("cpu", ("float32",)), ids=lambda p: p.id)
def test_every_head_of_the_dilated_output_has_nonzero_norm(variant_name, problem):
    out, _ = _out(variant_name, problem)
    norms = out.double().pow(2).sum(dim=(2, 3)).sqrt()  # (batch, head)
    zero = (norms == 0).nonzero().tolist()
    assert not zero, f"{variant_name} on {problem.id}: (batch, head) pairs with an all-zero output: {zero}"


PARTIAL = [
    dil.dilated_problem(1, 23, 3, 16, (8, 16), (2, 4), causal=False, dtype="float64"),
    dil.dilated_problem(2, 19, 2, 16, (6,), (3,), causal=True, dtype="float64"),  # head offsets 0, 1: offset 2 rows uncovered
    dil.dilated_problem(1, 3, 4, 16, (8,), (4,), causal=True, dtype="float64"),  # L < w and head 3's offset is past L
]


@pytest.mark.parametrize("variant_name", VARIANTS)
@pytest.mark.parametrize("problem", PARTIAL, ids=lambda p: p.id)
def test_rows_no_group_covers_are_zero_and_the_rest_match_the_oracle(variant_name, problem):
    ref_out, ref_grads = dil.solve(problem)
    covered = torch.from_numpy((dil.multiplicity(problem) > 0).any(axis=-1))  # (h, L)
    assert not bool(covered.all()), "the problem must leave rows uncovered"
    out, grads = _out(variant_name, problem, grad=True)
    assert bool((out[:, ~covered] == 0).all()), "uncovered rows must be exactly zero"
    base_out, base_grads = checks.base("dilated", problem)
    comps = [compare("output", out, ref_out, base_out, problem.dtype)]
    comps += [compare(f"grad {n}", grads[n], ref_grads[n], base_grads[n], problem.dtype, "grad") for n in "qkv"]
    failed = [c.describe() for c in comps if not c.passed]
    assert not failed, f"{variant_name} on {problem.id}:\n" + "\n".join(failed)


@given(
    seq=st.integers(1, 70), heads=st.integers(1, 5), causal=st.booleans(),
    groups=st.lists(st.tuples(st.integers(1, 40), st.sampled_from([1, 2, 3, 4])), min_size=1, max_size=3),
)
def test_explicit_and_gather_equal_the_oracle_on_drawn_shapes(seq, heads, causal, groups):
    problem = dil.dilated_problem(1, seq, heads, 8, tuple(g[0] for g in groups), tuple(g[1] for g in groups),
                                  causal=causal, dtype="float64")
    ref_out, _ = dil.solve(problem)
    base_out, _ = checks.base("dilated", problem)
    for name in VARIANTS:
        verdict = compare("output", _out(name, problem)[0], ref_out, base_out, "float64")
        assert verdict.passed, f"{name} on {problem.id}: {verdict.describe()}"


class _GatherWithOffsets(dilated.DilatedGather):
    """A gather variant whose head offsets are replaced (the mutations below)."""

    offsets_of = staticmethod(lambda H, r: [h % r for h in range(H)])

    def build(self, problem):
        segments, dilations = dil.config(problem)
        plans = [dilated.gather_plan(problem.lq, problem.hq, w, r, problem.device, self.offsets_of(problem.hq, r))
                 for w, r in zip(segments, dilations)]
        scale, causal = problem.softmax_scale, problem.mask.kind == "causal"

        def run(q, k, v):
            parts = [dilated.gathered_group_attention(q, k, v, p, scale, causal) for p in plans]
            return dilated.mix_groups([p[0] for p in parts], [p[1] for p in parts]).to(q.dtype)

        return run


class _AllOffsetsZero(_GatherWithOffsets):
    name = "dilated-mutant-offsets-all-zero"
    offsets_of = staticmethod(lambda H, r: [0] * H)


class _HeadsPastTheDilationDropped(_GatherWithOffsets):
    """Heads h >= r get an offset past every segment, so they are left out (a known LongNet port bug)."""

    name = "dilated-mutant-heads-past-r-dropped"
    offsets_of = staticmethod(lambda H, r: [h if h < r else 10**6 for h in range(H)])


class _NoCausalMask(dilated.DilatedGather):
    name = "dilated-mutant-ignores-causal"

    def build(self, problem):
        return super().build(problem.with_(mask=type(problem.mask)()))


def test_the_unmutated_offset_hook_is_correct():
    problem = dil.dilated_problem(1, 45, 4, 16, (8, 16), (1, 2), causal=True)
    assert checks.check_forward(_GatherWithOffsets(), problem).passed


def test_all_head_offsets_zero_is_caught_by_the_tolerance_rule():
    problem = dil.dilated_problem(1, 45, 4, 16, (8, 16), (1, 2), causal=True)
    result = checks.check_forward(_AllOffsetsZero(), problem)
    assert not result.passed and "output: max error" in result.message


def test_heads_left_at_zero_are_caught_and_named():
    problem = dil.dilated_problem(1, 32, 4, 16, (8, 16), (2, 2), causal=False)
    out, _ = _out(_HeadsPastTheDilationDropped(), problem)
    assert (out[0, 2:] == 0).all(), "the mutation should zero heads 2 and 3"
    result = checks.check_forward(_HeadsPastTheDilationDropped(), problem)
    assert not result.passed
    assert "head 2 of batch 0 is all zeros" in result.message and "head 3 of batch 0" in result.message


def test_a_dilated_variant_that_ignores_the_causal_mask_is_caught_by_perturbation():
    problem = dil.dilated_problem(1, 40, 2, 16, (8, 16), (1, 2), causal=True)
    result = checks.check_causality(_NoCausalMask(), problem)
    assert not result.passed and "future leak" in result.message


def test_longnet_workload_problems_have_the_published_structure():
    full = dil.longnet_problem(16384)
    assert (full.hq, full.dqk, dil.config(full)) == (8, 64, ((1024, 2048, 4096), (1, 2, 4)))
    quick = dil.longnet_problem(quick=True, dtype="float32", device="cpu")
    for name in VARIANTS:
        result = checks.check_forward(registry.get(name), quick)
        assert result.passed, result.message


def test_variants_decline_problems_they_cannot_run_and_say_why():
    problem = dil.dilated_problem(1, 16, 2, 16, (8,), (1,))
    for name in VARIANTS:
        reasons = registry.get(name).unsupported(problem.with_(args=()))
        assert any("needs args 'segments' and 'dilations'" in r for r in reasons), reasons
        reasons = registry.get(name).unsupported(problem.with_(hkv=1))
        assert any("does not support gqa" in r for r in reasons), reasons
