"""The NumPy float64 oracle agrees with torch float64 autograd, mask by mask and mod by mod."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite import oracle, oracle_mask
from attnsuite.inputs import kernel_inputs_np
from attnsuite.problem import Mask, Problem

PROBLEMS = [
    Problem(batch=2, lq=17, lk=17, hq=2, hkv=2, dqk=16, dv=16, dtype="float64"),
    Problem(batch=1, lq=13, lk=29, hq=4, hkv=2, dqk=8, dv=12, mask=Mask("causal", align="bottom_right"), dtype="float64"),
    Problem(batch=1, lq=29, lk=13, hq=3, hkv=1, dqk=8, dv=8, mask=Mask("causal"), dtype="float64"),
    Problem(batch=1, lq=31, lk=31, hq=2, hkv=2, dqk=8, dv=8, mask=Mask("window", window=4), alibi=True, softcap=3.0, dtype="float64"),
    Problem(batch=1, lq=19, lk=23, hq=2, hkv=2, dqk=8, dv=8, mask=Mask("random", seed=2), scale=0.7, dtype="float64"),
    Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=8, dv=8, mask=Mask("document", doc_lens=(5, 11, 8), causal=True), dtype="float64"),
]


def torch_float64_attention(problem: Problem, q, k, v):
    """Attention in torch float64 via autograd-able ops, built from the oracle's own mask definition."""
    g = problem.hq // problem.hkv
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    t = problem.softmax_scale * q @ k.transpose(-1, -2)
    if problem.alibi:
        t = t + torch.from_numpy(oracle_mask.alibi_bias(problem))
    s = problem.softcap * torch.tanh(t / problem.softcap) if problem.softcap else t
    allowed = torch.from_numpy(oracle_mask.allowed(problem))
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
def test_numpy_oracle_matches_torch_float64_autograd(problem):
    q, k, v, do = (torch.from_numpy(np.array(a)) for a in kernel_inputs_np(problem))
    for t in (q, k, v):
        t.requires_grad_(True)
    out = torch_float64_attention(problem, q, k, v)
    out.backward(do)
    result = oracle.solve(problem)
    for name, mine, theirs in [("out", result.out, out), ("dq", result.dq, q.grad), ("dk", result.dk, k.grad), ("dv", result.dv, v.grad)]:
        err = np.abs(mine - theirs.detach().numpy()).max()
        assert err < 1e-12 * max(1.0, np.abs(mine).max()), f"oracle {name} differs from torch float64 autograd by {err:.3g}"


def test_fully_masked_rows_are_zero_in_the_oracle():
    p = Problem(lq=20, lk=8, mask=Mask("causal", align="bottom_right"), dtype="float64")
    r = oracle.solve(p)
    dead = oracle_mask.fully_masked_rows(p)
    assert list(dead) == list(range(12)), f"expected rows 0..11 fully masked, got {dead}"
    assert np.all(r.out[..., dead, :] == 0) and np.all(np.isneginf(r.lse[..., dead]))
    assert np.all(r.dq[..., dead, :] == 0)


def test_causal_corners_differ_as_documented():
    tl = oracle_mask.allowed(Problem(lq=2, lk=4, mask=Mask("causal")))
    br = oracle_mask.allowed(Problem(lq=2, lk=4, mask=Mask("causal", align="bottom_right")))
    assert tl.tolist() == [[True, False, False, False], [True, True, False, False]]
    assert br.tolist() == [[True, True, True, False], [True, True, True, True]]
