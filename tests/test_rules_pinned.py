"""The pass rule and the checks that apply it, pinned: a change to any of them breaks a test here.

- The rule's factors (attnsuite/tolerance.py: rtol 2 for outputs, 3 for gradients, a floor per
  dtype): a softmax-scale bug sized to 1.1x the documented bound must be rejected and one sized to
  0.9x accepted, for every dtype and both kinds. The mutation tests change one factor 2x either
  way and show a verdict flips, so loosening or tightening any factor 2x fails a test.
- Correct kernels (SDPA, the explicit matmul-softmax) pass: a rule tightened past their error fails.
- The benchmarks' numerics check: a benchmark case of a wrong external variant, through
  ``runner.run_case`` on CPU (quick tier), has outcome "numerics"; with the check switched off it
  would be "ok" (shown by a mutation).
- Backward on fully masked query rows: checked, against the float64 oracle's convention (zero
  output and zero gradient there); NaN gradients fail.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from attnsuite import checks, oracle, registry, runner, tolerance, workloads
from attnsuite.inputs import kernel_inputs_np
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant

# The rule as documented (README, tolerance.py's docstring), written here independently of the code.
DOCUMENTED_RTOL = {"output": 2.0, "grad": 3.0}
DOCUMENTED_FLOOR = {"bfloat16": 2 * 2.0**-7, "float16": 2 * 2.0**-10, "float32": 1e-5, "float64": 1e-10}
DTYPES = tuple(DOCUMENTED_FLOOR)
KINDS = tuple(DOCUMENTED_RTOL)
TOO_BIG, WITHIN = 1.1, 0.9  # bug sizes, in units of the documented bound


def _problem(dtype: str) -> Problem:
    return Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype=dtype)


@lru_cache(maxsize=None)
def _scale_bug(dtype: str, kind: str):
    """(reference, same-dtype base, unit error direction of a softmax-scale bug, floor magnitude).

    The direction is what a kernel with its softmax scale a little off adds to the output (or to dq):
    the float64 oracle at scale * (1 + 1e-3) minus the oracle, normalised to max |.| = 1.
    """
    problem = _problem(dtype)
    q, k, v, do = kernel_inputs_np(problem)
    ref_out, ref_grads = checks.reference("attention", problem)
    base_out, base_grads = checks.base("attention", problem)
    buggy = problem.with_(scale=problem.softmax_scale * (1 + 1e-3))
    if kind == "output":
        ref, base, wrong, magnitude = ref_out, base_out, oracle.forward(buggy, q, k, v)[0], 0.0
    else:
        ref, base, wrong = ref_grads["q"], base_grads["q"], oracle.backward(buggy, q, k, v, do)[0]
        magnitude = max(float(np.max(np.abs(g))) for g in ref_grads.values())
    direction = wrong - ref
    return ref, tolerance.as_float64(base), direction / np.max(np.abs(direction)), magnitude


def documented_bound(dtype: str, kind: str) -> float:
    """The bound of the documented rule for the pinned problem: rtol * err_base + floor * magnitude."""
    ref, base, _, magnitude = _scale_bug(dtype, kind)
    err_base = float(np.max(np.abs(base - ref)))
    return DOCUMENTED_RTOL[kind] * err_base + DOCUMENTED_FLOOR[dtype] * max(float(np.max(np.abs(ref))), magnitude)


def verdict(dtype: str, kind: str, size: float) -> tolerance.Comparison:
    """The rule's verdict on a scale bug whose error is ``size`` times the documented bound."""
    ref, base, direction, magnitude = _scale_bug(dtype, kind)
    wrong = ref + direction * size * documented_bound(dtype, kind)
    return tolerance.compare(f"{kind} with a scale bug of {size}x the bound", wrong, ref, base, dtype, kind,
                             magnitude=magnitude)


PINS = [(d, k, s) for d in DTYPES for k in KINDS for s in (TOO_BIG, WITHIN)]


@pytest.mark.parametrize("dtype, kind, size", PINS, ids=[f"{d}-{k}-{s}x" for d, k, s in PINS])
def test_a_scale_bug_is_rejected_just_past_the_documented_bound_and_accepted_just_inside(dtype, kind, size):
    result = verdict(dtype, kind, size)
    assert result.passed == (size < 1), result.describe()


FACTORS = [("RTOL", k) for k in KINDS] + [("FLOOR", d) for d in DTYPES]


@pytest.mark.parametrize("factor, key", FACTORS, ids=[f"{f}-{k}" for f, k in FACTORS])
@pytest.mark.parametrize("change", [2.0, 0.5], ids=["loosened-2x", "tightened-2x"])
def test_changing_one_factor_2x_flips_a_pinned_verdict(factor, key, change, monkeypatch):
    """Mutation: the pins above are tight for every factor, in both directions."""
    table = getattr(tolerance, factor)
    monkeypatch.setitem(table, key, table[key] * change)
    flipped = [f"{d} {k} at {s}x" for d, k, s in PINS if verdict(d, k, s).passed != (s < 1)]
    assert flipped, f"{factor}[{key!r}] x{change}: no pinned verdict changed, so the pin does not hold it"


# Correct kernels on problems of the attention family where their error is largest against the bound
# (about 0.45x of it on CPU: the rule leaves a correct kernel a bit over 2x headroom).
CORRECT = [("explicit", "b2-q39-h2-d32-frame13-bf16-cpu-video-wm"), ("sdpa", "b1-q113-h4:1-d48-causal-tl-bf16-cpu"),
           ("explicit", "b1-q17k113-h2-d32v16-prefix50-br-bf16-cpu"), ("sdpa", "b2-q4k300-h8:2-d32-causal-br-fp32-cpu-decode")]


def _family_problem(problem_id: str) -> Problem:
    problems = registry.family("attention").problems("cpu", ("float32", "bfloat16"))
    return next(p for p in problems if p.id == problem_id)


def _correct_kernel_passes(name: str, problem_id: str) -> list[str]:
    """Failure messages of forward and backward of a correct kernel (empty when both pass)."""
    results = [checks.CHECKS[c](registry.get(name), _family_problem(problem_id)) for c in ("forward", "backward")]
    return [r.message for r in results if not r.passed]


@pytest.mark.parametrize("name, problem_id", CORRECT, ids=[f"{n}@{p}" for n, p in CORRECT])
def test_a_correct_kernel_passes_forward_and_backward(name, problem_id):
    failures = _correct_kernel_passes(name, problem_id)
    assert not failures, "\n".join(failures)


def test_tightening_the_whole_rule_3x_fails_a_correct_kernel(monkeypatch):
    """Mutation: the correct-kernel test above does guard the rule from below."""
    for table in (tolerance.RTOL, tolerance.FLOOR):
        for key in list(table):
            monkeypatch.setitem(table, key, table[key] / 3)
    failed = [f"{n}@{p}" for n, p in CORRECT if _correct_kernel_passes(n, p)]
    assert failed, "a 3x tighter rule still passes every correct kernel: the test guards nothing"


# ---------------------------------------------------------------------- the benchmarks' numerics check

class ScaleOffBy5Percent(KernelVariant):
    """External variant with a real bug: SDPA with its softmax scale 5% too large."""

    name = "test-pinned-sdpa-scale-off-5pct"
    features = frozenset({"lq_ne_lk", "custom_scale"})

    def build(self, problem):
        scale = problem.softmax_scale * 1.05
        return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=problem.mask.kind == "causal", scale=scale)


def _run_bench_case(variant: str, monkeypatch) -> runner.CaseRecord:
    monkeypatch.setitem(registry._REGISTRY, ScaleOffBy5Percent.name, ScaleOffBy5Percent())
    problem = _problem("float32")
    entry = workloads.Entry(family="attention", problem=problem, modes=("fwd",))
    case = runner.BenchCase("unit", entry, problem, variant, "fwd")
    settings = runner.Settings("quick", "cpu", None, (), ("fwd",), None, {}, runner.timing.QUICK_CPU, None)
    record, _ = runner.run_case(case, settings)
    return record


def test_a_benchmark_case_of_a_wrong_variant_has_outcome_numerics(monkeypatch):
    record = _run_bench_case(ScaleOffBy5Percent.name, monkeypatch)
    assert record.outcome == "numerics", (record.outcome, record.detail)
    assert "output: max error" in record.detail and record.extra["numerics_check"] == "oracle", record.detail


def test_a_benchmark_case_of_a_correct_variant_is_ok(monkeypatch):
    record = _run_bench_case("sdpa", monkeypatch)
    assert record.outcome == "ok", record.detail


def test_switching_the_numerics_check_off_lets_the_wrong_variant_through(monkeypatch):
    """Mutation: the outcome above comes from run_case's numerics check and from nothing else."""
    monkeypatch.setattr(runner, "check_numerics", lambda case, mode, out, limit: (None, "off"))
    assert _run_bench_case(ScaleOffBy5Percent.name, monkeypatch).outcome == "ok"


# ------------------------------------------------------------------------ backward on fully masked rows

DEAD_ROWS = Problem(batch=1, lq=20, lk=8, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal", align="bottom_right"),
                    dtype="float32")


class NanRowsExplicit(KernelVariant):
    """External variant: masked_fill(-inf) then softmax, so a row with no key is NaN (as many kernels do)."""

    name = "test-pinned-nan-rows"
    masks = frozenset({"causal"})
    features = frozenset({"lq_ne_lk", "bottom_right"})

    def build(self, problem):
        allowed = torch.as_tensor(checks.oracle_mask.allowed(problem))

        def run(q, k, v):
            s = (q @ k.transpose(-2, -1)) * problem.softmax_scale
            return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v
        return run


class ZeroRowsExplicit(NanRowsExplicit):
    """External variant: the same, with rows that may attend to nothing set to zero probability."""

    name = "test-pinned-zero-rows"

    def build(self, problem):
        allowed = torch.as_tensor(checks.oracle_mask.allowed(problem))
        live = allowed.any(dim=-1, keepdim=True)

        def run(q, k, v):
            s = (q @ k.transpose(-2, -1)) * problem.softmax_scale
            s = s.masked_fill(~allowed, float("-inf")).masked_fill(~live, 0.0)
            return torch.softmax(s, dim=-1).masked_fill(~live, 0.0) @ v
        return run


def test_the_pinned_problem_has_fully_masked_rows_and_backward_is_checked_on_it():
    assert checks.live_rows(DEAD_ROWS) is not None
    assert checks.skip_reason("backward", registry.get("sdpa-boolmask"), DEAD_ROWS) is None


def test_the_oracle_gives_fully_masked_rows_zero_output_and_zero_gradient():
    dead = ~checks.live_rows(DEAD_ROWS)
    q, k, v, do = kernel_inputs_np(DEAD_ROWS)
    out = oracle.forward(DEAD_ROWS, q, k, v)[0]
    dq, dk, dv = oracle.backward(DEAD_ROWS, q, k, v, do)
    assert np.all(out[..., dead, :] == 0) and np.all(dq[..., dead, :] == 0)
    do_live = do.copy()
    do_live[..., dead, :] = 7.0  # what the output gradient holds in a dead row cannot matter
    _, dk2, dv2 = oracle.backward(DEAD_ROWS, q, k, v, do_live)
    assert np.array_equal(dk, dk2) and np.array_equal(dv, dv2)


def test_nan_in_fully_masked_rows_fails_backward_and_says_why():
    variant = NanRowsExplicit()
    assert checks.check_forward(variant, DEAD_ROWS).passed  # forward only reports such rows
    result = checks.check_backward(variant, DEAD_ROWS)
    assert not result.passed and "NaN" in result.message and "fully masked query rows" in result.message, \
        result.message


@pytest.mark.parametrize("variant", [ZeroRowsExplicit(), registry.get("sdpa-boolmask")], ids=lambda v: v.name)
def test_zero_probability_in_fully_masked_rows_passes_backward(variant):
    result = checks.check_backward(variant, DEAD_ROWS)
    assert result.passed, result.message


def test_the_largest_error_and_the_first_nan_are_located_in_the_whole_tensor_when_rows_are_left_out():
    # rows 0-11 fully masked and left out: the error in row 16 had been reported at row 4
    import numpy as np

    from attnsuite.tolerance import compare

    ref = np.zeros((1, 1, 20, 4))
    rows = np.arange(20) >= 12
    out = ref.copy()
    out[0, 0, 16, 3] = 1.0
    assert compare("output", out, ref, ref, "float32", rows=rows).where == (0, 0, 16, 3)
    out[0, 0, 13, 1] = np.nan
    nan = compare("output", out, ref, ref, "float32", rows=rows)
    assert not nan.finite and nan.where == (0, 0, 13, 1)
    whole = np.zeros((1, 1, 8, 4))
    whole[0, 0, 4, 2] = 1.0
    assert compare("output", whole, np.zeros_like(whole), np.zeros_like(whole), "float32").where == (0, 0, 4, 2)


def test_an_approximate_class_locates_errors_in_the_whole_tensor_too():
    import numpy as np

    from attnsuite.tolerance import compare_approximate

    ref = np.zeros((1, 1, 20, 4))
    rows = np.arange(20) >= 12
    out = ref.copy()
    out[0, 0, 16, 3] = 1.0
    assert compare_approximate("output", out, ref, "fp8", rows=rows).where == (0, 0, 16, 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("share, refused", [(0.9, False), (1.1, True)], ids=["just inside", "just past"])
def test_a_base_further_from_the_oracle_than_rounding_is_refused_just_past_the_limit(dtype, share, refused):
    # a family whose oracle and base disagree had made the bound as large as the outputs (every variant passed)
    from attnsuite.tolerance import BASE_LIMIT, BaseDisagrees, compare

    ref = np.ones((2, 3))
    base = ref + share * BASE_LIMIT[dtype]
    if refused:
        with pytest.raises(BaseDisagrees, match="the family's oracle and base compute different functions"):
            compare("output", ref, ref, base, dtype)
    else:
        assert compare("output", ref, ref, base, dtype).passed
    # gradients and half types are not held to it (an analytically zero gradient, coarse rounding at large logits)
    assert compare("grad q", ref, ref, ref + 1.0, dtype, "grad").passed
    assert compare("output", ref, ref, ref + 0.5, "bfloat16").passed


def test_a_variant_replacing_softmax_in_its_calls_does_not_set_the_base_later_checks_judge_by(monkeypatch):
    # the repeat check had computed the base of its other values after calling the variant: a variant that
    # replaced torch.softmax left that base (torch math) poisoned in the cache, and the next variant checked
    # on those values failed with "the family's oracle and base compute different functions"
    import dataclasses

    real = torch.softmax

    class ReplacesSoftmax(KernelVariant):
        name = "t-replaces-softmax"
        masks = frozenset({"causal"})

        def build(self, problem):
            def run(q, k, v):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                torch.softmax = lambda x, dim=-1, **kw: real(2 * x, dim=dim, **kw)  # left replaced
                return out
            return run

    monkeypatch.setattr(torch, "softmax", real)  # put back after the test, whatever the variant left
    problem = Problem(batch=1, lq=12, lk=12, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32",
                      seed=4242)  # a problem no other test caches
    checks.check_repeat(ReplacesSoftmax(), problem, cache={})
    torch.softmax = real  # as the suite's isolation puts it back between tests
    other = dataclasses.replace(problem, seed=problem.seed + 1)  # the repeat check's other values
    result = checks.check_forward(registry.get("explicit"), other)
    assert result.passed, result.message


def test_the_base_is_computed_with_tf32_off_and_the_sessions_setting_is_put_back(monkeypatch):
    # a TF32 base (a session that switched TF32 on) would sit at the fp32 base limit from the oracle
    import dataclasses

    seen = []
    family = dataclasses.replace(registry.family("attention"), base=lambda p: seen.append(
        (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())) or (np.zeros(1), {}))
    monkeypatch.setattr(registry, "family", lambda name: family)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    try:
        problem = Problem(batch=1, lq=8, lk=8, hq=2, hkv=2, dqk=8, dv=8, dtype="float32", seed=9191)
        checks.base("attention", problem)
        runner.oracle_reference(family, dataclasses.replace(problem, seed=9192))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    assert seen == [(False, "highest"), (False, "highest")], seen
