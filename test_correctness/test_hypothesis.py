"""Hypothesis-drawn problems: adversarial lengths, head layouts, dims and masks, for the eager variants.

Bounded by the "ci" profile (test_correctness/conftest.py); HYPOTHESIS_PROFILE=dev digs deeper.
Compiled variants are left out: each drawn shape would cost a compile. The variants are the
selection (``--attn-only``) of the attention family's eager kernel variants; without one, the
built-in set below plus every variant loaded from outside (``--attn-variants``). Draws stay within
what a variant declares (masks, dtypes, features); a drawn problem it still cannot run
(``Variant.unsupported``) is skipped for it, never failed, and one it has no backward for (a
forward-only kernel: ``backward_devices``) is checked forward only. A check the variant declares a
known defect for (``Variant.known_defects``) does not fail a draw when it fails; test_variants.py
holds such a defect to its strict expected failure.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from attnsuite import checks, registry
from attnsuite.plugin import selected_variants
from attnsuite.plugin_isolation import note_running_problem
from attnsuite.problem import Mask, Problem

from .conftest import skip_if_nothing_ran

# The built-in eager variants drawn problems go to by default (one per code path; the rest of the
# built-ins are covered by the fixed problems of test_variants.py, at a fraction of the cost).
EAGER = ["explicit", "einsum", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-boolmask", "sdpa-additive"]
LENGTHS = st.one_of(st.sampled_from([1, 2, 3, 17, 63, 64, 65, 97, 113, 128, 129]), st.integers(1, 160))


def _declared(options: list, allowed) -> list:
    """The options a variant declares (all of them when it declares none: its draws are then declined
    and the test skips, naming why)."""
    return [o for o in options if o in allowed] or options


DRAWN_DTYPES = ["float32", "float64"]


@st.composite
def problems(draw, variant: registry.Variant, dtypes: list = DRAWN_DTYPES) -> Problem:
    """A problem within what ``variant`` declares (masks, dtypes, features): a variant declaring few
    features had most draws declined and passed on the rest, one query against one key, where a
    wrong scale or mask still gives the right answer."""
    has = variant.features
    hkv = draw(st.sampled_from([1, 2, 3]))
    hq = hkv * draw(st.sampled_from([1, 2, 4] if "gqa" in has else [1]))
    dqk = draw(st.sampled_from([16, 24, 40, 64, 72, 96, 128, 256]))
    dv = draw(st.sampled_from([dqk, dqk, 16, 48] if "dv_ne_dqk" in has else [dqk]))
    lq = draw(LENGTHS)
    lk = draw(LENGTHS) if "lq_ne_lk" in has else lq
    kind = draw(st.sampled_from(_declared(["none", "causal", "window", "random"], variant.masks)))
    mask = Mask(kind, align=draw(st.sampled_from(["top_left", "bottom_right"] if "bottom_right" in has
                                                 else ["top_left"])),
                window=draw(st.integers(0, 20)) if kind == "window" else 0,
                seed=draw(st.integers(0, 9)) if kind == "random" else 0)
    scale = draw(st.sampled_from([None, None, 0.05, 0.5] if "custom_scale" in has else [None]))
    dtype = draw(st.sampled_from(_declared(dtypes, variant.dtypes)))
    return Problem(batch=draw(st.integers(1, 2)), lq=lq, lk=lk, hq=hq, hkv=hkv, dqk=dqk, dv=dv,
                   mask=mask, scale=scale, dtype=dtype, seed=draw(st.integers(0, 3)))


def hypothesis_variants(config: pytest.Config) -> list[registry.Variant]:
    """The eager kernel variants of the attention family to draw problems for (see the module doc)."""
    eager = [v for v in selected_variants(config, level="kernel") if v.family == "attention" and not v.compiled]
    if config.getoption("--attn-only"):
        return eager
    builtin = {type(registry.get(n)).__module__ for n in EAGER if n in {v.name for v in eager}}
    external = [v for v in eager if v.name not in EAGER and _loaded_from_outside(type(v).__module__, builtin)]
    return [v for v in eager if v.name in EAGER] + external


def _loaded_from_outside(module: str, builtin_modules: set) -> bool:
    # external modules load as attnsuite_external_<stem> (a .py path) or under their own top-level name
    roots = {m.split(".")[0] for m in builtin_modules} | {"attnsuite"}
    return module.split(".")[0] not in roots


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" in metafunc.fixturenames:
        chosen = hypothesis_variants(metafunc.config)
        metafunc.parametrize("variant", chosen or [pytest.param(None, marks=pytest.mark.skip(
            reason="no eager attention kernel variant selected"))], ids=lambda v: getattr(v, "name", "none"))


def test_drawn_problem_forward_and_backward_match_oracle(variant, request):
    # --attn-dtype chooses the dtypes here too: a run asking for float16 had passed on float32 draws of a
    # variant that declares no float16, and failed a bfloat16 run on a float32 draw (an outside tester's trial)
    chosen = request.config.getoption("--attn-dtype", default=None)
    if chosen is not None and chosen not in DRAWN_DTYPES:
        pytest.skip(f"--attn-dtype {chosen}: the drawn problems are {' and '.join(DRAWN_DTYPES)} "
                    "(half precision is checked on the family's fixed problems)")
    declined: Counter = Counter()
    ran = []

    @given(problem=problems(variant, [chosen] if chosen else DRAWN_DTYPES))
    def check(problem: Problem) -> None:
        # fully masked rows are checked on the family's fixed problems (test_variants.py)
        assume(checks.live_rows(problem) is None)
        reasons = variant.unsupported(problem, backward=False)
        if reasons:  # a declared limitation: this draw is skipped for the variant, with its reason
            declined.update(reasons)
            return
        ran.append(problem.id)
        # a crash or hang of the variant is then reported with this draw's shape (the test id has none)
        note_running_problem(request.config, request.node.nodeid, problem.id)
        # a forward-only variant (or one without a backward for this draw) still gets its forward drawn:
        # asking for both had skipped every draw of a forward-only kernel
        with_backward = not variant.unsupported(problem, backward=True)
        for name in ("forward", "backward") if with_backward else ("forward",):
            seen, broken = checks.guarded_skip_reason(lambda: variant.known_defect(name, problem), variant, problem,
                                                      "known_defect()")
            assert not broken, broken
            result = checks.CHECKS[name](variant, problem)
            if seen and not result.passed:
                # a declared known defect, as test_variants.py expects it (strictly, on its fixed problems):
                # it does not fail a draw either
                known[name] += 1
                continue
            assert result.passed, result.message

    known: Counter = Counter()
    check()
    skip_if_nothing_ran(len(ran), declined, variant.name)
