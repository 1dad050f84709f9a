"""The strided check (attnsuite/checks.py, check_strided): inputs and output gradient that are not
contiguous, as a model's projections give them. A fresh-user test had a kernel whose backward read
q and the output gradient by assumed contiguous strides: it passed every other check (they pass
contiguous tensors) while its gradients in a model were off by 1 to 3."""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, mask_mods, registry
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant

PROBLEM = Problem(batch=1, lq=17, lk=17, hq=2, hkv=2, dqk=32, dv=32, mask=Mask("causal"), dtype="float32")


def _math(problem, allowed, q, k, v):
    s = (q @ k.transpose(-1, -2)) * problem.softmax_scale
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v


class _ContiguousOnly(torch.autograd.Function):
    """Right forward; the backward reads q and the output gradient as if they were contiguous."""

    @staticmethod
    def forward(ctx, q, k, v, problem, allowed):
        ctx.save_for_backward(q, k, v)
        ctx.problem, ctx.allowed = problem, allowed
        return _math(problem, allowed, q, k, v)

    @staticmethod
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        q = q.as_strided(q.shape, torch.empty(q.shape).stride())  # the bug: strides assumed
        do = do.as_strided(do.shape, torch.empty(do.shape).stride())
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]
            grads = torch.autograd.grad(_math(ctx.problem, ctx.allowed, *leaves), leaves, do)
        return (*grads, None, None)


class ContiguousOnly(KernelVariant):
    name = "test-contiguous-only-backward"
    masks = frozenset({"causal"})

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        return lambda q, k, v: _ContiguousOnly.apply(q, k, v, problem, allowed)


class Plain(KernelVariant):
    name = "test-plain-strided"
    masks = frozenset({"causal"})

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        return lambda q, k, v: _math(problem, allowed, q, k, v)


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    registry.load_builtin()
    for v in (ContiguousOnly(), Plain()):
        monkeypatch.setitem(registry._REGISTRY, v.name, v)


def test_a_backward_that_assumes_contiguous_inputs_fails_the_strided_check_and_only_it():
    bad = ContiguousOnly()
    assert checks.check_backward(bad, PROBLEM).passed  # every contiguous check passes it
    result = checks.check_strided(bad, PROBLEM)
    assert not result.passed
    assert "grad q (strided inputs): max error" in result.message and "x the bound" in result.message, result.message


def test_a_plain_kernel_passes_the_strided_check():
    result = checks.check_strided(Plain(), PROBLEM)
    assert result.passed, result.message


def test_the_strided_check_is_a_check_a_known_defect_may_name():
    assert "strided" in registry.CHECK_NAMES and checks.CHECKS["strided"] is checks.check_strided
    assert checks.skip_reason("strided", Plain(), PROBLEM) is None


@pytest.mark.parametrize("declared, kept", [
    ({"strided": "seen on ..."}, True),  # its own defect: run as a strict expected failure
    ({"forward": "seen on ..."}, False),  # a wrong forward fails the strided comparison too
    ({"backward": "seen on ..."}, False),
])
def test_which_declared_defects_leave_a_problem_out_of_the_strided_check(monkeypatch, declared, kept):
    # every declared defect had dropped the check's problems without a word, its own included
    from test_correctness import test_variants

    variant = Plain()
    monkeypatch.setattr(variant, "known_defects", declared)
    problems = [PROBLEM, PROBLEM.with_(dtype="float64")]
    chosen = test_variants._per_dtype("strided", variant, problems, test_variants.STRIDED_PER_DTYPE,
                                      test_variants.STRIDED_EXCLUDED_BY)
    assert chosen == (problems if kept else [])
