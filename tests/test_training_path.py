"""The backward check holds the training path to what the forward check holds inference to
(attnsuite/checks.py check_backward): the output computed with inputs that require grad is judged
against the oracle, and neither pass may write into the inputs or the output gradient. Each wrong
variant below passed every check before (an outside tester's trials)."""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, registry
from attnsuite.problem import Mask, Problem

PROBLEM = Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")
registry.load_builtin()
SDPA = type(registry.get("sdpa"))


class _Training(SDPA):
    """The built-in sdpa, wrong only on the training path (inputs that require grad) in one way."""

    how = ""

    def build(self, problem):
        run = super().build(problem)
        how = self.how

        class Hook(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, v):
                ctx.v = v
                return x.view_as(x)

            @staticmethod
            def backward(ctx, go):
                if how == "writes grad out":
                    go.mul_(0.5)  # after the gradients below were formed from it: they are right
                    return go * 2, None
                if how == "writes v":
                    ctx.v.data.mul_(2.0)
                return go, None

        def call(q, k, v):
            if not torch.is_grad_enabled() or not q.requires_grad:
                return run(q, k, v)
            if how == "scale on the training path":
                return run(q * 1.05, k, v)
            return Hook.apply(run(q, k, v), v)

        return call


def _variant(how):
    v = _Training()
    v.name, v.how = f"training-{how.replace(' ', '-')}", how
    return v


@pytest.mark.parametrize("how, words", [
    ("scale on the training path", "output (inputs requiring grad): max error"),
    ("writes grad out", "the backward changed the output gradient it was given in place"),
    ("writes v", "the call changed its input v in place"),
])
def test_the_backward_check_judges_the_training_path(monkeypatch, how, words):
    variant = _variant(how)
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    assert checks.check_forward(variant, PROBLEM).passed  # inference is right: only training is wrong
    result = checks.check_backward(variant, PROBLEM)
    assert not result.passed and any(words in d for d in result.details), result.details


def test_a_right_training_path_passes(monkeypatch):
    variant = _variant("right")
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.check_backward(variant, PROBLEM)
    assert result.passed, result.details
