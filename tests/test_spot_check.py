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
    assert slices == [(0, 0), (2, 7)]
    assert rows[0] == 0 and rows[-1] == 999 and len(rows) == spot_check.SPOT_ROWS
    assert spot_check.sample(Problem(lq=1, lk=9))[1].tolist() == [0]


# ------------------------------------------------------------------ wrong kernels on long problems

LONG = Problem(batch=2, lq=384, lk=384, hq=4, hkv=2, dqk=32, dv=32, mask=Mask("causal"), dtype="float32")


def _math(q, k, v, scale, allowed):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    s = (q @ k.transpose(-2, -1)) * scale
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v


class Mutant(KernelVariant):
    """A plain causal kernel with one bug, by name."""

    features = frozenset({"gqa"})
    masks = frozenset({"causal"})

    def __init__(self, name: str, bug: str) -> None:
        self.name, self.bug = name, bug

    def build(self, problem):
        i = torch.arange(problem.lq)[:, None]
        j = torch.arange(problem.lk)[None, :]
        scale = problem.softmax_scale * (1.02 if self.bug == "scale-2pct" else 1.0)
        allowed = j <= i + (1 if self.bug == "causal-one-key-late" else 0)

        def run(q, k, v):
            if self.bug == "returns-v-when-long" and problem.lq > 256:
                return v.repeat_interleave(problem.hq // problem.hkv, dim=1).clone()
            out = _math(q, k, v, scale, allowed)
            if self.bug == "second-half-zero":
                out[:, :, problem.lq // 2:] = 0
            return out
        return run


BUGS = ["returns-v-when-long", "scale-2pct", "causal-one-key-late", "second-half-zero"]


def _bench(variant: KernelVariant, monkeypatch, oracle_limit: int = 1):
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    entry = workloads.Entry(family="attention", problem=LONG, modes=("fwd",))
    bc = runner.BenchCase("unit", entry, LONG, variant.name, "fwd")
    settings = runner.Settings("quick", "cpu", None, (), ("fwd",), None, {}, runner.timing.QUICK_CPU, None,
                               oracle_limit=oracle_limit)
    return runner.run_case(bc, settings)[0]


@pytest.mark.parametrize("bug", BUGS)
def test_a_wrong_kernel_on_a_problem_too_large_for_the_whole_oracle_is_numerics(bug, monkeypatch):
    rec = _bench(Mutant(f"test-spot-{bug}", bug), monkeypatch)
    assert rec.outcome == "numerics", (bug, rec.outcome, rec.detail)
    assert rec.detail.startswith("output rows 0, 26, ..., 383 of (batch, head) (0, 0), (1, 3): max error"), rec.detail
    assert rec.extra["numerics_check"].startswith("spot: 16 rows of 2 (batch, head) slices against")


def test_the_same_kernel_without_the_bug_is_ok_and_says_it_was_spot_checked(monkeypatch):
    rec = _bench(Mutant("test-spot-correct", "none"), monkeypatch)
    assert rec.outcome == "ok", rec.detail
    assert rec.extra["numerics_check"].startswith("spot: ")


def test_without_the_spot_check_the_wrong_kernels_read_ok(monkeypatch):
    """Mutation: the outcomes above come from the spot check, not from the whole oracle or elsewhere."""
    monkeypatch.setattr(spot_check, "applies", lambda *a: "switched off by the test")
    for bug in BUGS:
        rec = _bench(Mutant(f"test-spot-off-{bug}", bug), monkeypatch)
        assert rec.outcome == "ok" and rec.extra["numerics_check"].endswith("no spot check: switched off by the test)")


def test_the_error_is_located_in_the_output_not_in_the_sample(monkeypatch):
    rec = _bench(Mutant("test-spot-where", "second-half-zero"), monkeypatch)
    # (batch, head, row, column) of the output: a row of the second half
    where = rec.detail.split(" at (", 1)[1].split(")", 1)[0]
    b, h, row, _ = (int(x) for x in where.split(", "))
    assert (b, h) in [(0, 0), (1, 3)] and row >= LONG.lq // 2, rec.detail


@pytest.mark.parametrize("problem, mode, why", [
    (Problem(lq=8, lk=8, dropout=0.1), "fwd", "dropout has no oracle"),
    (Problem(lq=8, lk=8), "decode", "decode steps have no row-wise oracle"),
    (Problem(lq=8, lk=1 << 21, dqk=32, dv=32), "fwd", "lk x d = 67108864 is over the spot check's 33554432"),
])
def test_what_the_spot_check_cannot_judge_says_why(problem, mode, why):
    out = torch.zeros(problem.batch, problem.hq, problem.lq, problem.dv)
    assert spot_check.applies("attention", problem, mode, out) == why
    assert spot_check.applies("mla", problem, "fwd", out) == "the mla family has no row-wise oracle"
    assert spot_check.applies("attention", Problem(lq=8, lk=8), "fwd", torch.zeros(1, 2, 8, 32), "fp8") == \
        "the fp8 class's budget is measured on the whole oracle's problem sizes only"
    assert spot_check.applies("attention", Problem(lq=8, lk=8), "fwd", torch.zeros(1, 2, 8, 32)) is None
