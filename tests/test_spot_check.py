"""The benchmarks' spot check (attnsuite/spot_check.py): outputs too large for the whole float64
oracle are still judged, on a few rows of a few heads, by the suite's one rule.

A fresh-user test had a kernel return ``v`` for every sequence longer than 256, and a scale 2% off
and a causal mask one key off: each read `ok` in the benchmarks above the oracle's limit, and the
first headed the "fastest" table at 13186% of peak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite import oracle, reference_math, registry, runner, spot_check, workloads
from attnsuite.inputs import kernel_inputs_np, to_torch
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant

ATTENTION_FP32 = [p for p in registry.family("attention").problems("cpu", ("float32",)) if not p.dropout]


def _rows_and_heads(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(np.linspace(0, p.lq - 1, 5).round().astype(np.int64)), np.array(sorted({0, p.hq - 1}))


@pytest.mark.parametrize("p", ATTENTION_FP32, ids=lambda p: p.id)
def test_the_oracles_rows_equal_the_same_rows_of_the_whole_oracle(p):
    """Every mask kind, alignment, ALiBi, softcap and GQA mapping of the family, row by row."""
    q, k, v, _ = kernel_inputs_np(p)
    whole, _, _, _ = oracle.forward(p, q, k, v)
    rows, heads = _rows_and_heads(p)
    kv = oracle.kv_head_index(p.hq, p.hkv)[heads]
    got = oracle.forward_rows(p, q[-1][heads][:, rows], k[-1][kv], v[-1][kv], rows, heads)
    np.testing.assert_allclose(got, whole[-1][heads][:, rows], rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", ATTENTION_FP32, ids=lambda p: p.id)
def test_the_bases_rows_equal_the_same_rows_of_the_whole_base(p):
    q, k, v, _ = (to_torch(a, p) for a in kernel_inputs_np(p))
    whole = reference_math.attention(p, q, k, v)
    rows, heads = _rows_and_heads(p)
    kv = torch.as_tensor(oracle.kv_head_index(p.hq, p.hkv)[heads])
    h = torch.as_tensor(heads)
    got = reference_math.attention(p, q[-1:, h][:, :, rows], k[-1:, kv], v[-1:, kv], rows=torch.as_tensor(rows), heads=h)
    torch.testing.assert_close(got, whole[-1:, h][:, :, rows], rtol=1e-5, atol=1e-6)


def test_the_sample_reaches_both_ends_of_the_sequence_and_of_the_batch_and_heads():
    p = Problem(batch=3, lq=1000, lk=1000, hq=8, hkv=2, dqk=16, dv=16)
    slices, rows = spot_check.sample(p)
    assert slices == [(0, 0), (0, 1), (1, 4), (2, 7)]
    # head 1 reads another key/value head under the tiled mapping (h % hkv) than under h * hkv // hq
    assert 1 * p.hkv // p.hq != 1 % p.hkv
    spaced = np.linspace(0, 999, spot_check.SPOT_ROWS).round().astype(int)
    assert rows[0] == 0 and rows[-1] == 999 and set(spaced) <= set(rows.tolist())
    assert len(set(rows.tolist()) - set(spaced.tolist())) >= spot_check.RANDOM_ROWS - 1  # drawn rows besides
    assert np.array_equal(spot_check.sample(p)[1], rows)  # the same rows every time for one problem
    assert spot_check.sample(Problem(lq=1, lk=9))[1].tolist() == [0]
    assert spot_check.sample(Problem(batch=1, hq=1, hkv=1, lq=9, lk=9))[0] == [(0, 0)]


# ------------------------------------------------------------------ wrong kernels on long problems

LONG = Problem(batch=2, lq=384, lk=384, hq=4, hkv=2, dqk=32, dv=32, mask=Mask("causal"), dtype="float32")


def _math(q, k, v, scale, allowed):
    # query head h reads key/value head h // group (repeat_interleave's mapping): a group's query heads
    # are neighbours, so their rows stacked are one (group * lq)-row query of their key/value head, and
    # no copy of k or v (nor of its gradient) is made per call
    b, hq, lq, _ = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    s = (q.reshape(b, hkv, group * lq, q.shape[-1]) @ k.transpose(-2, -1)) * scale
    p = torch.softmax(s.masked_fill(~allowed.repeat(group, 1), float("-inf")), dim=-1)
    return (p @ v).reshape(b, hq, lq, v.shape[-1])


class Mutant(KernelVariant):
    """A plain causal kernel with one bug, by name."""

    features = frozenset({"gqa", "lq_ne_lk", "bottom_right"})
    masks = frozenset({"causal"})

    def __init__(self, name: str, bug: str) -> None:
        self.name, self.bug = name, bug

    def build(self, problem):
        i = torch.arange(problem.lq)[:, None] + problem.align_offset
        j = torch.arange(problem.lk)[None, :]
        scale = problem.softmax_scale * (1.02 if self.bug == "scale-2pct" else 1.0)
        allowed = j <= i + (1 if self.bug == "causal-one-key-late" else 0)
        group = problem.hq // problem.hkv

        def run(q, k, v):
            if self.bug == "returns-v-when-long" and problem.lq > 256:
                return v.repeat_interleave(group, dim=1).clone()
            if self.bug == "gqa-tiled-heads":  # query head h reads key/value head h % hkv
                return _math(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1), scale, allowed)
            out = _math(q, k, v, scale, allowed)
            if self.bug == "second-half-zero":
                out[:, :, problem.lq // 2:] = 0
            if self.bug == "middle-heads-zero":
                out[:, 1:problem.hq - 1] = 0
            if self.bug == "dead-rows-nan":  # plain softmax over no key: NaN, as many kernels give
                return out
            return torch.nan_to_num(out, nan=0.0)
        return run


BUGS = ["returns-v-when-long", "scale-2pct", "causal-one-key-late", "second-half-zero", "gqa-tiled-heads",
        "middle-heads-zero"]


def _bench(variant: KernelVariant, monkeypatch, oracle_limit: int = 1, problem: Problem = LONG, mode: str = "fwd"):
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    entry = workloads.Entry(family="attention", problem=problem, modes=(mode,))
    bc = runner.BenchCase("unit", entry, problem, variant.name, mode)
    settings = runner.Settings("quick", "cpu", None, (), (mode,), None, {}, runner.timing.QUICK_CPU, None,
                               oracle_limit=oracle_limit)
    return runner.run_case(bc, settings)[0]


@pytest.mark.parametrize("bug", BUGS)
def test_a_wrong_kernel_on_a_problem_too_large_for_the_whole_oracle_is_numerics(bug, monkeypatch):
    rec = _bench(Mutant(f"test-spot-{bug}", bug), monkeypatch)
    assert rec.outcome == "numerics", (bug, rec.outcome, rec.detail)
    assert rec.detail.startswith("output (spot rows 0, "), rec.detail
    assert ", 383): max error" in rec.detail and "x the bound" in rec.detail, rec.detail
    n_rows = len(spot_check.sample(LONG)[1])
    assert rec.extra["numerics_check"].startswith(f"spot: {n_rows} rows of 4 (batch, head) slices against")


def test_the_same_kernel_without_the_bug_is_ok_and_says_it_was_spot_checked(monkeypatch):
    rec = _bench(Mutant("test-spot-correct", "none"), monkeypatch)
    assert rec.outcome == "ok", rec.detail
    assert rec.extra["numerics_check"].startswith("spot: ")


def test_without_the_spot_check_the_wrong_kernels_read_ok(monkeypatch):
    """Mutation: the outcomes above come from the spot check, not from the whole oracle or elsewhere."""
    monkeypatch.setattr(spot_check, "applies", lambda *a, **k: "switched off by the test")
    for bug in BUGS:
        rec = _bench(Mutant(f"test-spot-off-{bug}", bug), monkeypatch)
        assert rec.outcome == "ok" and rec.extra["numerics_check"].endswith("no spot check: switched off by the test)")


DEAD_ROWS = Problem(batch=1, lq=384, lk=128, hq=2, hkv=2, dqk=32, dv=32, mask=Mask("causal", align="bottom_right"),
                   dtype="float32")


def test_nan_in_rows_that_may_see_no_key_is_not_a_failure_above_the_limit_either(monkeypatch):
    # below the limit such rows were left out of the finiteness check; above it they had failed it
    rec = _bench(Mutant("test-spot-dead-rows", "dead-rows-nan"), monkeypatch, problem=DEAD_ROWS)
    assert rec.outcome == "ok", rec.detail
    assert rec.extra["numerics_check"].startswith("spot: ")


def test_a_gate_message_of_a_spot_failure_keeps_how_far_off_it_is(monkeypatch):
    from attnsuite.verdict import Thresholds, judge

    bad = _bench(Mutant("test-spot-msg", "scale-2pct"), monkeypatch)
    good = _bench(Mutant("test-spot-msg-good", "none"), monkeypatch)
    good.variant = bad.variant
    verdict = judge(good, bad, Thresholds(), device="cpu")
    assert verdict.verdict == "newly-failing" and "x the bound" in verdict.message, verdict.message


def test_the_error_is_located_in_the_output_not_in_the_sample(monkeypatch):
    rec = _bench(Mutant("test-spot-where", "second-half-zero"), monkeypatch)
    # (batch, head, row, column) of the output: a row of the second half
    where = rec.detail.split(" at (", 1)[1].split(")", 1)[0]
    b, h, row, _ = (int(x) for x in where.split(", "))
    assert (b, h) in spot_check.sample(LONG)[0] and row >= LONG.lq // 2, rec.detail


@pytest.mark.parametrize("problem, mode, why", [
    (Problem(lq=8, lk=8, dropout=0.1), "fwd", "dropout has no oracle"),
    (Problem(lq=8, lk=8), "decode", "decode steps have no row-wise oracle"),
    (Problem(lq=8, lk=1 << 21, dqk=32, dv=32), "fwd", "lk x d = 67108864 is over the spot check's 33554432"),
])
def test_what_the_spot_check_cannot_judge_says_why(problem, mode, why):
    out = torch.zeros(problem.batch, problem.hq, problem.lq, problem.dv)
    assert spot_check.applies("attention", problem, mode, out) == why
    assert spot_check.applies("mla", problem, "fwd", out) == "the mla family has no row-wise oracle (Family.rows)"
    # a family that brings its own rows: judged wherever its output has the query positions on axis -2
    small = Problem(lq=8, lk=8)
    assert spot_check.applies("rope", small, "fwd", torch.zeros(1, 2, 8, 32), own_rows=True) is None
    assert spot_check.applies("rope", small, "fwd", torch.zeros(1, 8, 2, 32), own_rows=True) == \
        "output shape (1, 8, 2, 32) has no query positions (lq=8) on its axis -2"
    assert spot_check.applies("rope", small, "decode", torch.zeros(1, 2, 8, 32), own_rows=True) == \
        "decode steps have no row-wise oracle"
    assert spot_check.applies("attention", Problem(lq=8, lk=8), "fwd", torch.zeros(1, 2, 8, 32), "fp8") == \
        "the fp8 class's budget is measured on the whole oracle's problem sizes only"
    assert spot_check.applies("attention", Problem(lq=8, lk=8), "fwd", torch.zeros(1, 2, 8, 32)) is None


class _DoubleDv(torch.autograd.Function):
    """The identity forward; backward doubles the gradient (as a kernel whose dV is twice too large)."""

    @staticmethod
    def forward(ctx, v):
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class BadBackward(KernelVariant):
    """A right forward with a wrong backward (dv doubled)."""

    name = "test-bench-bad-backward"
    features = frozenset({"gqa"})
    masks = frozenset({"causal"})

    def build(self, problem):
        i, j = torch.arange(problem.lq)[:, None], torch.arange(problem.lk)[None, :]
        return lambda q, k, v: _math(q, k, _DoubleDv.apply(v), problem.softmax_scale, j <= i)


@pytest.mark.parametrize("mode", ["bwd", "fwd+bwd"])
def test_a_wrong_backward_on_a_problem_the_whole_oracle_checks_is_numerics(mode, monkeypatch):
    # the benchmarks had compared the output only, and labelled the check "oracle"
    small = Problem(batch=1, lq=64, lk=64, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")
    rec = _bench(BadBackward(), monkeypatch, oracle_limit=1 << 30, problem=small, mode=mode)
    assert rec.outcome == "numerics" and rec.extra["numerics_check"] == "oracle", rec.detail
    assert rec.detail.startswith("grad v: max error"), rec.detail
    right = _bench(Mutant("test-bench-right-backward", "none"), monkeypatch, oracle_limit=1 << 30, problem=small,
                   mode=mode)
    assert right.outcome == "ok", right.detail
    # above the limit too (the spot check's gradients): a right forward with a wrong dV had read ok there
    above = _bench(BadBackward(), monkeypatch, problem=small, mode=mode)
    assert above.outcome == "numerics", above.detail
    assert above.detail.startswith("grad v (from the spot rows' output gradient): max error"), above.detail


@pytest.mark.parametrize("p", ATTENTION_FP32, ids=lambda p: p.id)
def test_the_oracles_row_gradients_are_the_whole_gradients_of_an_output_gradient_on_those_rows_alone(p):
    """dq of the rows, and dk and dv of the key/value heads they read, from the rows alone: every
    mask kind, alignment, ALiBi, softcap and GQA mapping of the family."""
    q, k, v, do = kernel_inputs_np(p)
    rows, heads = _rows_and_heads(p)
    sparse = np.zeros_like(do)
    sparse[-1][np.ix_(heads, rows)] = do[-1][np.ix_(heads, rows)]
    dq, dk, dv = oracle.backward(p, q, k, v, sparse)
    kv = oracle.kv_head_index(p.hq, p.hkv)[heads]
    got_q, got_k, got_v = oracle.backward_rows(p, q[-1][heads][:, rows], k[-1][kv], v[-1][kv],
                                               sparse[-1][heads][:, rows], rows, heads)
    # float64 rounding only: the large-logits problem's gradients reach 25 in magnitude
    np.testing.assert_allclose(got_q, dq[-1][heads][:, rows], rtol=1e-12, atol=1e-12)
    for got, whole in ((got_k, dk), (got_v, dv)):
        folded = np.zeros_like(whole[-1])
        np.add.at(folded, kv, got)
        np.testing.assert_allclose(folded, whole[-1], rtol=1e-12, atol=1e-12)  # every other head's stays zero
        assert not np.any(whole[:-1])  # and every other batch's


class _Grad(torch.autograd.Function):
    """The identity forward; backward changes the gradient by ``how`` (a backward-only bug)."""

    @staticmethod
    def forward(ctx, x, how):
        ctx.how = how
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if ctx.how == "5pct":
            return grad * 1.05, None
        if ctx.how == "next-head":  # the gradient reaches the neighbouring head
            return grad.roll(1, dims=1), None
        return grad.roll(1, dims=2), None  # "next-row": one position later


class BackwardMutant(KernelVariant):
    """A right causal forward whose gradient of one input is wrong (``which``, ``how``)."""

    features = frozenset({"gqa"})
    masks = frozenset({"causal"})

    def __init__(self, which: str, how: str) -> None:
        self.name, self.which, self.how = f"test-spot-grad-{which}-{how}", which, how

    def build(self, problem):
        i, j = torch.arange(problem.lq)[:, None], torch.arange(problem.lk)[None, :]

        def run(q, k, v):
            t = {"q": q, "k": k, "v": v}
            t[self.which] = _Grad.apply(t[self.which], self.how)
            return torch.nan_to_num(_math(t["q"], t["k"], t["v"], problem.softmax_scale, j <= i))
        return run


GRAD_BUGS = [("v", "5pct"), ("k", "5pct"), ("q", "5pct"), ("k", "next-head"), ("v", "next-head"), ("q", "next-row")]


# every bug in the bwd mode; fwd+bwd reaches the same check (one bug there keeps it honest)
GRAD_CASES = [(w, h, "bwd") for w, h in GRAD_BUGS] + [("v", "5pct", "fwd+bwd")]


@pytest.mark.parametrize("which, how, mode", GRAD_CASES, ids=[f"grad {w} {h} {m}" for w, h, m in GRAD_CASES])
def test_a_wrong_gradient_on_a_problem_too_large_for_the_whole_oracle_is_numerics(which, how, mode, monkeypatch):
    rec = _bench(BackwardMutant(which, how), monkeypatch, mode=mode)
    assert rec.outcome == "numerics", (which, how, rec.detail)
    assert rec.detail.startswith(f"grad {which}") or f"; grad {which}" in rec.detail, rec.detail
    assert "x the bound" in rec.detail, rec.detail


@pytest.mark.parametrize("mode", ["bwd", "fwd+bwd"])
def test_a_right_backward_above_the_limit_is_ok_and_says_its_gradients_were_compared(mode, monkeypatch):
    rec = _bench(Mutant("test-spot-grad-right", "none"), monkeypatch, mode=mode)
    assert rec.outcome == "ok", rec.detail
    label = rec.extra["numerics_check"]
    assert label.startswith("spot: ") and "; gradients of those rows' output gradient alone against the float64 " \
        "oracle, every element of dq, dk, dv (2 (batch, key/value head) slices reached)" in label, label


def test_a_gradient_sent_to_the_wrong_head_is_found_outside_what_the_rows_reach(monkeypatch):
    rec = _bench(BackwardMutant("v", "next-head"), monkeypatch, mode="bwd")
    assert "grad v outside what the spot rows reach (must be 0): max error" in rec.detail, rec.detail


def test_without_the_gradient_spot_check_the_wrong_backwards_read_ok(monkeypatch):
    """Mutation: the outcomes above come from the gradients' spot check."""
    monkeypatch.setattr(spot_check.SpotReference, "judge_gradients", lambda self, case, acc: (None, "switched off"))
    for which, how in GRAD_BUGS:
        rec = _bench(BackwardMutant(which, how), monkeypatch, mode="bwd")
        assert rec.outcome == "ok" and rec.extra["numerics_check"].endswith("; switched off"), rec.detail


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_live_rows_a_chunk_at_a_time_agree_with_the_whole_mask(chunk):
    p = DEAD_ROWS
    rows = np.arange(p.lq)
    from attnsuite import oracle_mask

    assert np.array_equal(oracle_mask.live_among(p, rows, chunk), oracle_mask.allowed(p).any(axis=1))
    assert oracle_mask.live_among(p, rows[:0], chunk).shape == (0,)


def test_out_of_memory_in_the_gradient_spot_check_leaves_the_case_ok_and_says_why(monkeypatch):
    # the timed calls fitted; one more call could not: that is the suite's own call, not the kernel's failure
    real = Mutant("test-spot-grad-oom", "none")
    calls = {"n": 0}

    class OomOnLastCall(Mutant):
        def build(self, problem):
            run = real.build(problem)

            def counted(q, k, v):
                calls["n"] += 1
                if calls.get("fail"):
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return run(q, k, v)
            return counted

    def judge_then_fail(self, case, accuracy, _real=spot_check.SpotReference.judge_gradients):
        calls["fail"] = True
        return _real(self, case, accuracy)
    monkeypatch.setattr(spot_check.SpotReference, "judge_gradients", judge_then_fail)
    rec = _bench(OomOnLastCall("test-spot-grad-oom", "none"), monkeypatch, mode="bwd")
    assert rec.outcome == "ok", rec.detail
    assert rec.extra["numerics_check"].endswith("; gradients finite (no spot check: out of memory for one more call: "
                                                "OutOfMemoryError)"), rec.extra["numerics_check"]


def test_a_family_rows_hook_of_the_wrong_shape_is_an_error_naming_the_family_not_a_verdict_on_the_variant():
    from types import SimpleNamespace

    problem = Problem(lq=64, lk=64, hq=2, hkv=2, dqk=16, dv=16, dtype="float32")
    family = SimpleNamespace(name="my-family", rows=lambda p, inputs, positions: (np.zeros((2, 3)), np.zeros((2, 3))))
    rows = spot_check.FamilyRows(family, problem, {})
    with pytest.raises(ValueError, match=r"family my-family: Family.rows gave float64 rows of shape \(2, 3\) for "
                                         r"\d+ query positions of an output \(1, 2, 64, 16\): expected \(1, 2, \d+, 16\)"):
        rows.judge(torch.zeros(1, 2, 64, 16), "exact")
