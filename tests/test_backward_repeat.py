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

        def call(q, k, v):
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
    ("rounds in another order", frozenset(), False, "grad q: two identical calls differ in"),
    ("rounds in another order", frozenset({"cpu"}), True, ""),
    ("keeps a running sum", frozenset(), False, "two identical calls differ"),
    ("keeps a running sum", frozenset({"cpu"}), False, "(second of two identical calls)"),
    ("is repeatable", frozenset(), True, ""),
])
def test_two_backward_calls_are_held_to_the_declaration(monkeypatch, how, declared, passes, words):
    variant = _variant(how, declared)
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    assert checks.check_forward(variant, PROBLEM).passed  # the forward is right throughout
    result = checks.check_backward_repeat(variant, PROBLEM)
    assert result.passed == passes, result.details
    assert passes or any(words in d for d in result.details), result.details


def test_the_failure_says_how_to_declare_a_nondeterministic_backward(monkeypatch):
    variant = _variant("rounds in another order")
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    details = " ".join(checks.check_backward_repeat(variant, PROBLEM).details)
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
