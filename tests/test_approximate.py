"""Approximate accuracy classes (attnsuite/tolerance.py APPROXIMATE_BUDGET, impls/attention/approximate.py), pinned.

- The budgets are the documented ones (docs/approximate.md): loosening or tightening one breaks a test.
- The FP8/INT8 reference kernels pass their class's budget, forward and backward, through the
  suite's checks, and the same kernel judged as exact fails: the class is needed.
- Real bugs in an approximate kernel fail even its budget: a dropped key block (fp8), the softmax
  scale 5% off (int8; inside fp8's own error, see the docs).
- The exact rule never loosens: "exact" goes to tolerance.compare unchanged, and a variant declaring
  an unknown class is refused at registration.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite import checks, registry, tolerance
from attnsuite.problem import LARGE_LOGITS, Mask, Problem

registry.load_builtin()
from attnsuite_impls.attention import approximate  # noqa: E402  (after the families exist)

DOCUMENTED_BUDGET = {"fp8": {"output": 0.25, "grad": 0.30}, "int8": {"output": 0.06, "grad": 0.06}}

# The fp8 reference's worst CPU problem (scripts/measure_approximate.py): sharp softmax (scale 0.3).
SHARP = Problem(batch=1, lq=29, lk=29, hq=2, hkv=2, dqk=32, dv=32, scale=0.3, mask=Mask("causal"))
DECODE_GQA = Problem(batch=1, lq=1, lk=113, hq=4, hkv=1, dqk=32, dv=32, mask=Mask("causal", align="bottom_right"))
RECTANGLE = Problem(batch=1, lq=17, lk=97, hq=2, hkv=2, dqk=24, dv=24, mask=Mask("causal", align="bottom_right"))
REFERENCE_CASES = [("fp8-fakequant", SHARP), ("fp8-fakequant", RECTANGLE), ("int8-fakequant", SHARP),
                   ("int8-fakequant", DECODE_GQA)]


class _AsExact(approximate.Fp8FakeQuant):
    """The fp8 reference kernel claiming to be exact (never registered)."""

    name = "fp8-fakequant-claiming-exact"
    accuracy = "exact"


class _DroppedBlock(approximate.Fp8FakeQuant):
    """An fp8 kernel that loses the P.V product of key block 16..31 (a skipped tile)."""

    name = "fp8-dropped-block"

    def build(self, problem):
        run = super().build(problem)

        def dropped(q, k, v):
            keep = torch.ones(k.shape[2], dtype=v.dtype)
            keep[16:32] = 0
            return run(q, k, v * keep[:, None])

        return dropped


class _ScaleBug(approximate.Int8FakeQuant):
    """An int8 kernel whose softmax scale is 5% high."""

    name = "int8-scale-5pct-high"

    def build(self, problem):
        return super().build(problem.with_(scale=problem.softmax_scale * 1.05))


class _NoRowMax(approximate.Fp8FakeQuant):
    """An fp8 kernel whose softmax leaves out the row maximum: exp() overflows at large logits."""

    name = "fp8-no-row-max"

    def build(self, problem):
        scale = problem.softmax_scale

        def run(q, k, v):
            e = torch.exp((q.float() @ k.float().transpose(-1, -2)) * scale)
            return ((e / e.sum(-1, keepdim=True)) @ v.float()).to(q.dtype)

        return run


class _OutOfRange(approximate.Fp8FakeQuant):
    """An fp8 kernel that adds 0.5 x max|v| to its output: no softmax average of the values gives that."""

    name = "fp8-out-of-range"

    def build(self, problem):
        run = super().build(problem)
        return lambda q, k, v: run(q, k, v) + 0.5 * v.abs().max()


LARGE = Problem(batch=1, lq=29, lk=29, hq=2, hkv=2, dqk=32, dv=32, mask=Mask("causal"), tag=LARGE_LOGITS,
                dtype="float32")
LARGE_GQA = LARGE.with_(hq=4, hkv=1, mask=Mask("none"))


@pytest.mark.parametrize("problem", [LARGE, LARGE_GQA], ids=["causal", "gqa-nomask"])
def test_an_approximate_kernel_on_large_logits_is_held_to_the_values_range(problem):
    # its budget does not apply there and the problems were skipped: a softmax without the row maximum,
    # NaN at these logits, passed green under accuracy = "fp8"
    assert checks.skip_reason("forward", _NoRowMax(), problem) is None
    assert checks.skip_reason("backward", _NoRowMax(), problem) is not None  # no budget for its gradients there
    assert checks.skip_reason("repeat", _NoRowMax(), problem) is None  # bitwise: no budget involved
    overflow = checks.check_forward(_NoRowMax(), problem)
    assert not overflow.passed and "contains NaN or Inf" in overflow.message, overflow.message
    assert "exp() without the row maximum overflows" in overflow.message
    outside = checks.check_forward(_OutOfRange(), problem)
    assert not outside.passed and "outside the range of the values it averages" in outside.message, outside.message
    for name in ("fp8-fakequant", "int8-fakequant"):  # the classes' reference kernels stay inside it
        result = checks.check_forward(registry.get(name), problem)
        assert result.passed, result.message


def test_the_value_range_rule_allows_the_class_budget_and_no_more():
    v = np.zeros((1, 1, 4, 2))
    v[..., 0] = [-1.0, 0.0, 0.5, 1.0]
    x = np.zeros((1, 2, 3, 2))
    x[..., 0] = 0.5
    x[0, 1, 2, 0] = 1.0 + 0.25 - 1e-9  # within fp8's slack of 0.25 x max|v|
    assert tolerance.compare_within_values("fp8", "output", x, v, hq=2).passed
    x[0, 1, 2, 0] = 1.0 + 0.25 + 1e-6
    over = tolerance.compare_within_values("fp8", "output", x, v, hq=2)
    assert not over.passed and over.where == (0, 1, 2, 0), over.describe()
    x[0, 1, 2, 0] = 1.07  # past int8's slack of 0.06
    assert not tolerance.compare_within_values("int8", "output", x, v, hq=2).passed


def test_budgets_are_the_documented_ones():
    assert tolerance.APPROXIMATE_BUDGET == DOCUMENTED_BUDGET
    assert tolerance.ACCURACY_CLASSES == ("exact", "fp8", "int8")


@pytest.mark.parametrize("check", ["forward", "backward"])
@pytest.mark.parametrize(("name", "problem"), REFERENCE_CASES, ids=lambda x: getattr(x, "id", x))
def test_reference_kernel_passes_its_class_budget(name, problem, check):
    result = checks.CHECKS[check](registry.get(name), problem)
    assert result.passed, result.message


def test_reference_kernel_uses_a_real_share_of_its_budget():
    """The fp8 output budget is 2.2x the reference kernel's error on its worst problem: a budget
    tightened 2.5x would fail it (and the table's values are pinned above)."""
    comp = tolerance.compare_approximate("output", *_output_and_ref("fp8-fakequant", SHARP), "fp8")
    assert comp.passed and comp.err > comp.bound / 2.5, comp.describe()


@pytest.mark.parametrize("check", ["forward", "backward"])
def test_fp8_kernel_judged_as_exact_fails_so_the_class_is_needed(check):
    result = checks.CHECKS[check](_AsExact(), SHARP)
    assert not result.passed
    assert "budget" not in result.message  # judged by the exact rule, not a budget


@pytest.mark.parametrize(("variant", "problem", "check"), [
    (_DroppedBlock(), RECTANGLE, "forward"),
    (_DroppedBlock(), RECTANGLE, "backward"),
    (_ScaleBug(), DECODE_GQA, "forward"),
], ids=["fp8-dropped-block-forward", "fp8-dropped-block-backward", "int8-scale-5pct-forward"])
def test_approximate_kernel_with_a_real_bug_fails_its_budget(variant, problem, check):
    result = checks.CHECKS[check](variant, problem)
    assert not result.passed
    assert f"{variant.accuracy} budget" in result.message, result.message


def test_unknown_accuracy_class_is_refused_at_registration():
    class Vague(approximate.Fp8FakeQuant):
        name = "vague-kernel"
        accuracy = "approximately-right"

    with pytest.raises(ValueError, match="unknown accuracy class 'approximately-right'"):
        registry.register(Vague)
    with pytest.raises(registry.UnknownVariantError):
        registry.get("vague-kernel")


def test_exact_class_is_the_unchanged_rule():
    ref, base = np.linspace(-1, 1, 64).reshape(8, 8), np.linspace(-1, 1, 64).reshape(8, 8) * (1 + 1e-3)
    x = ref + 0.05
    exact = tolerance.compare_as("exact", "output", x, ref, base, "bfloat16")
    assert exact == tolerance.compare("output", x, ref, base, "bfloat16")
    assert not exact.passed and tolerance.compare_as("fp8", "output", x, ref, base, "bfloat16").passed


def test_nan_never_passes_a_budget():
    x = np.zeros((4, 4))
    x[1, 2] = np.nan
    comp = tolerance.compare_approximate("output", x, np.ones((4, 4)), "fp8")
    assert not comp.passed and "NaN" in comp.describe()


def _output_and_ref(name: str, problem: Problem):
    from attnsuite.case import prepare

    with torch.no_grad():
        out = prepare(registry.get(name), problem, requires_grad=False).forward()
    return out, checks.reference("attention", problem)[0]
