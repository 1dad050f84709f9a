"""Every registered variant, on every problem of its family, through every check of README's "Correctness" section.

Test ids read as ``test_<check>[<variant>@<problem id>]``; a failure message names the variant,
the problem, the check and how far off the result is against which bound.
"""

from __future__ import annotations

import warnings
from typing import Optional

import pytest

from attnsuite import checks, registry
from attnsuite.problem import LARGE_LOGITS
from attnsuite.runner import is_distributed
from attnsuite.plugin import nothing_selected, selected_variants

from .conftest import correctness_device, correctness_dtypes

CHECK_OF_TEST = {
    "test_forward_matches_oracle": "forward",
    "test_backward_matches_oracle": "backward",
    "test_causal_rows_ignore_future_keys": "causality",
    "test_two_runs_agree": "repeat",
    "test_two_backward_runs_agree": "backward-repeat",
    "test_strided_inputs_match_oracle": "strided",
}
# The strided check runs on this many problems per dtype of each variant (the first it supports,
# without a declared defect): the layout is what it checks, and every problem is already checked contiguous.
STRIDED_PER_DTYPE = 2
# A problem on which another check's defect is declared is left to that check (a wrong forward fails the
# strided comparison too); its own defect keeps the problem, run as a strict expected failure (any declared
# defect had dropped the check's problems without a word, its own included).
STRIDED_EXCLUDED_BY = tuple(c for c in registry.CHECK_NAMES if c != "strided")
# The backward-repeat check runs on this many problems per dtype of each variant, the largest it supports
# (most blocks, where gradients added up with atomics change order: on an H200 SDPA's fused backwards
# differed between identical calls on the catalogue's largest problems and on none of its small ones,
# docs/evidence/h200-2026-12-04-s36): on every problem it had doubled the backward tests' time on CPU.
BACKWARD_REPEAT_PER_DTYPE = 2


def _cases(config: pytest.Config, check: str):
    device = correctness_device(config)
    dtypes = correctness_dtypes(config, device)
    limit = config.getoption("--attn-compiled-problems")
    if limit is None:
        limit = None if device.startswith("cuda") else 2
    problems_of: dict[str, list] = {}
    own_ids: dict[str, set] = {}
    for variant in selected_variants(config):
        if is_distributed(variant):
            continue  # checked on P ranks by test_distributed.py
        family = registry.family_of(variant)
        if family.name not in problems_of:  # the family's own problems and those added from outside
            problems_of[family.name] = registry.problems_of(family, device, dtypes)
            own_ids[family.name] = {p.id for p in (family.problems(device, dtypes) if family.problems else [])}
        problems = problems_of[family.name]
        if variant.compiled and limit is not None:
            # the limit thins the family's own catalogue; problems added from outside (--attn-problems)
            # are few and asked for, and had never been reached by a compiled variant on CPU
            own = [q for q in problems if q.id in own_ids[family.name]]
            # ... and keeps the large-logits problems of the first dtype: they come last in the
            # catalogue, and a compiled variant had met none of them on CPU or on an H200 (s20)
            firsts = [p for d in dtypes for p in [q for q in own if q.dtype == d][:limit]]
            large = [q for q in own if q.tag == LARGE_LOGITS and q.dtype == dtypes[0] and q not in firsts]
            problems = firsts + large + [q for q in problems if q.id not in own_ids[family.name]]
        if check == "strided":
            problems = _per_dtype(check, variant, problems, STRIDED_PER_DTYPE, STRIDED_EXCLUDED_BY)
        elif check == "backward-repeat":
            # a wrong backward (a declared "backward" defect) fails its calls' comparison with the oracle;
            # a defect of its own stays, as a strict expected failure, and one of the forward changes
            # nothing here (it had dropped the check without a word: an outside tester's trial)
            problems = _per_dtype(check, variant, problems, BACKWARD_REPEAT_PER_DTYPE, ("backward",), largest=True)
        for problem in problems:
            reason = _collected_skip_reason(check, variant, problem)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            seen, _ = checks.guarded_skip_reason(lambda: variant.known_defect(check, problem), variant, problem,
                                                 "known_defect()")  # a raise fails the test (_applies)
            if seen:
                # strict: shown as XPASS(strict) when the check passes, with the way to narrow the entry
                marks.append(pytest.mark.xfail(strict=True, reason=f"known defect of {variant.name}: {seen} (if "
                                               "this check passes here, the defect does not show on this problem: "
                                               "narrow the entry with known_defect(check, problem))"))
            yield pytest.param(variant, problem, id=f"{variant.name}@{problem.id}", marks=marks)


def _per_dtype(check: str, variant, problems: list, n: int, excluded_by: tuple, largest: bool = False) -> list:
    """``n`` problems per dtype that ``check`` applies to for ``variant`` and on which it declares no
    defect of the checks ``excluded_by`` (those are left to the checks that declare them): the first in
    the catalogue's order, or the ``largest`` (scores per call, b * hq * lq * lk), kept in the catalogue's
    order."""
    usable = []
    for problem in problems:
        if _collected_skip_reason(check, variant, problem) is not None:
            continue
        declared, broken = checks.guarded_skip_reason(
            lambda: next((d for c in excluded_by if (d := variant.known_defect(c, problem))), None),
            variant, problem, "known_defect()")
        if declared is None and broken is None:
            usable.append(problem)
    chosen = []
    for dtype in dict.fromkeys(p.dtype for p in usable):
        of_dtype = [p for p in usable if p.dtype == dtype]
        if largest:
            of_dtype = sorted(of_dtype, key=lambda p: p.batch * p.hq * p.lq * p.lk, reverse=True)
        chosen += of_dtype[:n]
    return [p for p in usable if p in chosen]


def _collected_skip_reason(check: str, variant, problem) -> Optional[str]:
    """Why the test is skipped, read at collection; None when the variant's own hook raised: that
    test then runs and fails naming it (:func:`_applies`)."""
    reason, _ = checks.guarded_skip_reason(lambda: checks.skip_reason(check, variant, problem), variant, problem)
    return reason


def _applies(check: str, variant, problem) -> None:
    """Skip the test when the check does not apply; fail it when the variant's own hook raises."""
    reason, failure = checks.guarded_skip_reason(lambda: checks.skip_reason(check, variant, problem),
                                                 variant, problem)
    _, broken = checks.guarded_skip_reason(lambda: variant.known_defect(check, problem), variant, problem,
                                           "known_defect()")
    if failure or broken:
        pytest.fail(failure or broken, pytrace=False)
    if reason:
        pytest.skip(reason)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    check = CHECK_OF_TEST.get(metafunc.function.__name__)
    if check is not None:
        params = list(_cases(metafunc.config, check))
        metafunc.parametrize(("variant", "problem"), params or [nothing_selected(metafunc.config, 2)])


def _run(check: str, variant, problem, build_cache, record_property) -> None:
    _applies(check, variant, problem)
    result = checks.CHECKS[check](variant, problem, cache=build_cache)
    for note in result.notes:
        warnings.warn(f"{variant.name} on {problem.id}: {note}", stacklevel=2)
        record_property("reported", note)
    if not result.passed:
        # kept in the JUnit XML too, where an expected failure (a known defect) otherwise shows only
        # its declared reason: what the check saw is what tells whether it is still that defect
        record_property("check failed", result.message)
        pytest.fail(result.message, pytrace=False)


def test_forward_matches_oracle(variant, problem, build_cache, record_property):
    _run("forward", variant, problem, build_cache, record_property)


def test_backward_matches_oracle(variant, problem, build_cache, record_property):
    _run("backward", variant, problem, build_cache, record_property)


def test_causal_rows_ignore_future_keys(variant, problem, build_cache, record_property):
    _run("causality", variant, problem, build_cache, record_property)


def test_two_runs_agree(variant, problem, build_cache, record_property):
    _run("repeat", variant, problem, build_cache, record_property)


def test_two_backward_runs_agree(variant, problem, build_cache, record_property):
    _run("backward-repeat", variant, problem, build_cache, record_property)


def test_strided_inputs_match_oracle(variant, problem, build_cache, record_property):
    _run("strided", variant, problem, build_cache, record_property)
