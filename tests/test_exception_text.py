"""A variant's exception is reported as itself, whatever its ``__str__`` does.

A fresh-user trial raised an exception class whose ``__str__`` raised: the benchmark record read
"error: ValueError: str of my exception fails", the variant's own type and line lost (no traceback)."""

from __future__ import annotations

import pytest

from attnsuite import registry, runner, workloads
from attnsuite.problem import Problem
from attnsuite.registry import KernelVariant
from attnsuite.wording import exception_text


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise ValueError("str of my exception fails")


class RaisesBrokenStr(KernelVariant):
    name = "test-raises-broken-str"

    def build(self, problem):
        def run(q, k, v):
            raise BrokenStr()
        return run


@pytest.mark.parametrize("exc, text", [(BrokenStr(), "BrokenStr: <its str() raised ValueError>"),
                                       (KeyError("k"), "KeyError: 'k'"), (RuntimeError(), "RuntimeError: ")])
def test_exception_text_names_the_exception_whatever_its_str_does(exc, text):
    assert exception_text(exc) == text


def test_a_benchmark_case_whose_exception_cannot_be_printed_is_its_error_with_its_own_line(monkeypatch):
    variant = RaisesBrokenStr()
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    problem = Problem(batch=1, lq=16, lk=16, hq=2, hkv=2, dqk=16, dv=16, dtype="float32")
    entry = workloads.Entry(family="attention", problem=problem, modes=("fwd",))
    settings = runner.Settings("quick", "cpu", None, (), ("fwd",), None, {}, runner.timing.QUICK_CPU, None)
    rec = runner.run_case(runner.BenchCase("unit", entry, problem, variant.name, "fwd"), settings)[0]
    assert rec.outcome == "error" and rec.detail == "BrokenStr: <its str() raised ValueError>", rec.detail
    assert "test_exception_text.py" in rec.extra["traceback"] and "raise BrokenStr()" in rec.extra["traceback"]
