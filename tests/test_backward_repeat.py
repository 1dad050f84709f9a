"""Two identical backward calls (attnsuite/checks.py check_backward_repeat): bit for bit where the
variant declares its backward deterministic on the device, each within the oracle's tolerance where
it declares ``nondeterministic_backward_devices``. A backward that varied between calls had passed
every check of a variant declaring ``deterministic = True`` (test_two_runs_agree holds the forward only)."""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, registry
from attnsuite.problem import Mask, Problem

PROBLEM = Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")
registry.load_builtin()
SDPA = type(registry.get("sdpa"))


class _Backward(SDPA):
    """The built-in sdpa with a backward that differs between calls in one way (``how``)."""

    how = ""

    def build(self, problem):
        run = super().build(problem)
        # held by the variant, not the build: each check call may build the function afresh
        how, calls, kept = self.how, self.calls, self.kept

        class Hook(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, go):
                calls[0] += 1
                if how == "rounds in another order":  # one ulp of noise on every other call, as atomics give
                    return go * (1 + 2.0 ** -23) if calls[0] % 2 == 0 else go
                if how == "keeps a running sum":  # a buffer it adds into and never clears
                    kept["sum"] = kept.get("sum", torch.zeros_like(go)) + go
                    return kept["sum"]
                return go

        class DropV(torch.autograd.Function):  # v's gradient left out on every other call
            @staticmethod
            def forward(ctx, v):
                return v.view_as(v)

            @staticmethod
            def backward(ctx, go):
                kept["drops"] = kept.get("drops", 0) + 1
                return None if kept["drops"] % 2 == 0 else go

        def call(q, k, v):
            if how == "leaves out grad v on every other call" and torch.is_grad_enabled() and v.requires_grad:
                v = DropV.apply(v)
            out = run(q, k, v)
            return Hook.apply(out) if torch.is_grad_enabled() and out.requires_grad else out

        return call


def _variant(how: str, nondeterministic_on: frozenset = frozenset()):
    v = _Backward()
    v.name, v.how = f"backward-{how.replace(' ', '-')}", how
    v.nondeterministic_backward_devices = nondeterministic_on
    v.calls, v.kept = [0], {}
    return v


@pytest.mark.parametrize("how, declared, passes, words", [
    ("rounds in another order", frozenset(), False, "both calls are within the oracle's tolerance"),
    ("rounds in another order", frozenset({"cpu"}), True, ""),
    # told as state, not atomics: declaring the device nondeterministic would not fix it
    ("keeps a running sum", frozenset(), False, "the backward depends on earlier calls"),
    ("keeps a running sum", frozenset({"cpu"}), False, "(second of two identical calls)"),
    # each call alone passes the backward check, which makes one
    ("leaves out grad v on every other call", frozenset(), False,
     "grad v: the second of two identical calls gave none"),
    ("leaves out grad v on every other call", frozenset({"cpu"}), False, "gave none"),
    ("is repeatable", frozenset(), True, ""),
])
def test_two_backward_calls_are_held_to_the_declaration(monkeypatch, how, declared, passes, words):
    variant = _variant(how, declared)
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    assert checks.check_forward(variant, PROBLEM).passed  # the forward is right throughout
    result = checks.check_backward_repeat(variant, PROBLEM)
    assert result.passed == passes, result.details
    assert passes or any(words in d for d in result.details), result.details


def test_a_backward_wrong_only_after_an_earlier_call_is_told_as_state_not_as_within_tolerance(monkeypatch):
    # in the correctness suite the backward check's call comes first: this check's first call is then a
    # second one, already wrong, and the failure had said "both calls are within the oracle's tolerance"
    variant = _variant("keeps a running sum")
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    assert checks.check_backward(variant, PROBLEM).passed  # its first call is right
    result = checks.check_backward_repeat(variant, PROBLEM)
    details = " ".join(result.details)
    assert not result.passed and "the first of the two calls is already wrong (grad q: max error" in details, details
    assert "the backward depends on earlier calls" in details and "within the oracle's tolerance" not in details


def test_the_failure_says_how_to_declare_a_nondeterministic_backward(monkeypatch):
    variant = _variant("rounds in another order")
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    details = " ".join(checks.check_backward_repeat(variant, PROBLEM).details)
    assert "grad q: two identical calls differ in" in details
    assert "declares its backward deterministic on cpu" in details
    assert "nondeterministic_backward_devices = frozenset({'cpu'})" in details


def test_a_variant_declaring_nondeterminism_is_not_held_to_bits_anywhere():
    variant = _variant("rounds in another order")
    variant.deterministic = False
    assert not checks.backward_bitwise(variant, PROBLEM)


def test_sdpa_fused_backends_declare_cuda_and_math_does_not():
    fused = {"sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-boolmask", "sdpa-additive"}
    for name in fused:
        assert registry.get(name).nondeterministic_backward_devices == frozenset({"cuda"}), name
    assert registry.get("sdpa-math").nondeterministic_backward_devices == frozenset()


@pytest.mark.parametrize("declared, kept", [
    ({"backward-repeat": "seen on ..."}, True),  # its own defect: run as a strict expected failure
    ({"forward": "seen on ..."}, True),  # another check's: the gradients' repeat does not depend on it
    ({"backward": "seen on ..."}, False),  # a wrong backward fails the comparison with the oracle
])
def test_which_declared_defects_leave_a_problem_out_of_the_backward_repeat_check(declared, kept):
    # every declared defect had dropped the check's problems without a word, its own included
    from test_correctness import test_variants

    variant = _variant("is repeatable")
    variant.known_defects = declared
    problems = [PROBLEM, PROBLEM.with_(dtype="float64")]
    chosen = test_variants._per_dtype("backward-repeat", variant, problems, 2, ("backward",), largest=True)
    assert chosen == (problems if kept else [])


@pytest.mark.parametrize("check", ["repeat", "backward-repeat"])
def test_a_second_identical_call_that_raises_is_named_as_the_second(monkeypatch, check):
    # the failure had shown the exception alone, not that the first call of the same inputs had worked
    variant = _variant("is repeatable")
    variant.name = f"t-raises-second-{check}"
    built = SDPA.build

    def build(self, problem):
        run, calls = built(self, problem), []

        def call(q, k, v):
            calls.append(1)
            if len(calls) == (3 if check == "repeat" else 2):  # repeat calls once on other values between
                raise RuntimeError("workspace already released")
            return run(q, k, v)
        return call

    monkeypatch.setattr(type(variant), "build", build)
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.CHECKS[check](variant, PROBLEM, cache={})
    what = "forward" if check == "repeat" else "forward and backward"
    assert not result.passed
    assert (f"the second of two identical {what} calls raised where the first had returned: the variant depends on "
            "earlier calls") in result.message, result.message
    assert "raised RuntimeError: workspace already released" in result.message
