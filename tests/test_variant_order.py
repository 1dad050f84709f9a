"""test_variants.py's tests run grouped: by variant, then problem, then check (test_correctness/conftest.py,
``group_variant_checks``).

Collected check by check (every forward test, then every backward one, ...), the checks of one variant on
one problem had been spread over both xdist workers of the CPU run, and each worker built, and compiled,
what the other had already built: flex-eager, compiled-explicit and layer-flex took 337 s of test time
(sum of durations) against 129 s grouped, on the 2-core CPU machine, with the same tests and outcomes.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from test_correctness import test_variants
from test_correctness.conftest import group_variant_checks

CHECKS = list(test_variants.CHECK_OF_TEST)
ID = re.compile(r"test_variants\.py::(?P<check>\w+)\[(?P<variant>[^@\]]+)@(?P<problem>[^\]]+)\]$")


def _item(check: str, variant: str, problem: str):
    return SimpleNamespace(originalname=check, name=f"{check}[{variant}@{problem}]",
                           callspec=SimpleNamespace(params={"variant": SimpleNamespace(name=variant),
                                                           "problem": SimpleNamespace(id=problem)}))


def test_grouping_permutes_only_the_variant_checks_keeping_the_other_tests_in_place():
    other = SimpleNamespace(originalname="test_something_else", name="test_something_else")
    placeholder = SimpleNamespace(originalname=CHECKS[0], name=f"{CHECKS[0]}[nothing-selected]",
                                  callspec=SimpleNamespace(params={"variant": None, "problem": None}))
    collected = [other, placeholder]
    for check in CHECKS[:3]:  # as collected: check by check, then variant, then problem
        collected += [_item(check, v, p) for v in ("a", "b") for p in ("p1", "p2")]
    collected.append(other)
    items = list(collected)
    group_variant_checks(items)
    assert items[0] is other and items[1] is placeholder and items[-1] is other
    assert sorted(map(id, items)) == sorted(map(id, collected))  # nothing added, nothing dropped
    assert [i.name for i in items[2:-1]] == [f"{c}[{v}@{p}]" for v in ("a", "b") for p in ("p1", "p2")
                                             for c in CHECKS[:3]]


def test_the_collected_checks_of_one_variant_on_one_problem_stand_together_in_check_order(tmp_path):
    from tests.suiterun import run_suite_tests

    out = run_suite_tests(["test_correctness/test_variants.py"], tmp_path, "--collect-only", "-q",
                          "--attn-only=flex-eager", "--attn-only=sdpa")
    rows = [m.groupdict() for line in out.splitlines() for m in [ID.search(line)] if m]
    assert {r["variant"] for r in rows} == {"flex-eager", "sdpa"}, out[-2000:]
    # one run of tests per variant, and per problem of it, each run in the checks' order
    pairs = [(r["variant"], r["problem"]) for r in rows]
    runs = [pair for i, pair in enumerate(pairs) if i == 0 or pairs[i - 1] != pair]
    assert len(runs) == len(set(runs)), "a variant's checks on one problem are split"
    variants = [v for i, (v, _) in enumerate(runs) if i == 0 or runs[i - 1][0] != v]
    assert len(variants) == len(set(variants)), "a variant's tests are split"
    for pair in set(pairs):
        order = [CHECKS.index(r["check"]) for r in rows if (r["variant"], r["problem"]) == pair]
        assert order == sorted(order) and len(order) == len(set(order)), pair
    # the problems keep the catalogue's order (that of the forward tests), and every check still collects
    forward = [(r["variant"], r["problem"]) for r in rows if r["check"] == CHECKS[0]]
    assert [p for p in runs if p in forward] == forward
    assert {r["check"] for r in rows} == set(CHECKS)
