"""Hypothesis-drawn problems: adversarial lengths, head layouts, dims and masks, for the eager variants.

Bounded by the "ci" profile (test_correctness/conftest.py); HYPOTHESIS_PROFILE=dev digs deeper.
Compiled variants are left out: each drawn shape would cost a compile.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from attnsuite import checks, registry
from attnsuite.problem import Mask, Problem

EAGER = ["explicit", "einsum", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-boolmask", "sdpa-additive"]
LENGTHS = st.one_of(st.sampled_from([1, 2, 3, 17, 63, 64, 65, 97, 113, 128, 129]), st.integers(1, 160))


@st.composite
def problems(draw) -> Problem:
    hkv = draw(st.sampled_from([1, 2, 3]))
    hq = hkv * draw(st.sampled_from([1, 2, 4]))
    dqk = draw(st.sampled_from([16, 24, 40, 64, 72, 96, 128, 256]))
    dv = draw(st.sampled_from([dqk, dqk, 16, 48]))
    lq, lk = draw(LENGTHS), draw(LENGTHS)
    kind = draw(st.sampled_from(["none", "causal", "window", "random"]))
    mask = Mask(kind, align=draw(st.sampled_from(["top_left", "bottom_right"])),
                window=draw(st.integers(0, 20)), seed=draw(st.integers(0, 9)))
    scale = draw(st.sampled_from([None, None, 0.05, 0.5]))
    return Problem(batch=draw(st.integers(1, 2)), lq=lq, lk=lk, hq=hq, hkv=hkv, dqk=dqk, dv=dv,
                   mask=mask, scale=scale, dtype=draw(st.sampled_from(["float32", "float64"])),
                   seed=draw(st.integers(0, 3)))


@pytest.mark.parametrize("variant_name", EAGER)
@given(problem=problems())
def test_drawn_problem_forward_and_backward_match_oracle(variant_name, problem):
    variant = registry.get(variant_name)
    assume(not variant.unsupported(problem, backward=True))
    assume(checks.live_rows(problem) is None)  # fully masked rows are reported, not compared
    for check in ("forward", "backward"):
        result = checks.CHECKS[check](variant, problem)
        assert result.passed, result.message
