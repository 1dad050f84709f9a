"""The dilated-attention oracle: its segment semantics, and its NumPy backward against torch autograd.

The cross-check uses a second formulation written here in torch float64: dense attention with the
log of the multiplicity matrix C (how many groups let query i see key j) added to the scores,
which equals the per-group mixing by softmax denominators. Its autograd gradients must equal the
oracle's hand-written backward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite_impls.dilated import dilated_oracle as dil
from attnsuite.inputs import kernel_inputs_np
from attnsuite.problem import ProblemError


def test_segment_rows_split_the_sequence_with_a_short_last_segment_and_head_offsets():
    rows = [list(r) for r in dil.segment_rows(17, 8, 2, 1)]
    assert rows == [[1, 3, 5, 7], [9, 11, 13, 15]]  # segment [16, 17) has no row at offset 1
    assert [list(r) for r in dil.segment_rows(17, 8, 2, 0)] == [[0, 2, 4, 6], [8, 10, 12, 14], [16]]


def test_a_sequence_shorter_than_the_segment_is_one_segment():
    assert [list(r) for r in dil.segment_rows(5, 16, 2, 1)] == [[1, 3]]
    assert [list(r) for r in dil.segment_rows(5, 16, 1, 0)] == [[0, 1, 2, 3, 4]]


def test_config_rejects_mismatched_segments_and_dilations_with_a_clear_message():
    p = dil.dilated_problem(1, 8, 2, 16, (4, 8), (1, 2))
    bad = p.with_(args=(("dilations", (1,)), ("segments", (4, 8))))
    with pytest.raises(ProblemError, match="2 segments but 1 dilations"):
        dil.config(bad)


def _safe_multiplicity_torch(problem, q, k, v):
    """softmax(scale q k^T + log C) v in float64; rows with no key come out as exact zeros."""
    counts = torch.from_numpy(dil.multiplicity(problem))
    covered = (counts > 0).any(dim=-1, keepdim=True)  # (h, L, 1)
    bias = torch.where(counts > 0, counts.double().log(), torch.tensor(float("-inf"), dtype=torch.float64))
    bias = torch.where(covered, bias, torch.zeros_like(bias))  # uncovered rows: any finite softmax, zeroed below
    s = q @ k.transpose(-2, -1) * problem.softmax_scale + bias
    return (torch.softmax(s, dim=-1) @ v) * covered


CASES = [
    dict(batch=1, seq=17, heads=2, dim=8, segments=(8, 16), dilations=(1, 2), causal=True),
    dict(batch=2, seq=5, heads=3, dim=8, segments=(8, 16), dilations=(1, 2), causal=False),
    dict(batch=1, seq=29, heads=4, dim=8, segments=(4, 8, 16), dilations=(1, 2, 4), causal=True, dv=12),
    dict(batch=1, seq=23, heads=3, dim=8, segments=(8, 16), dilations=(2, 4), causal=False),  # partial coverage
    dict(batch=1, seq=23, heads=5, dim=8, segments=(6,), dilations=(3,), causal=True),  # one group, offsets wrap
]


def _case_id(s: dict) -> str:
    join = lambda t: "x".join(map(str, t))
    return f"L{s['seq']}-h{s['heads']}-w{join(s['segments'])}-r{join(s['dilations'])}-{'causal' if s['causal'] else 'full'}"


@pytest.mark.parametrize("spec", CASES, ids=_case_id)
def test_numpy_forward_and_backward_equal_torch_float64_autograd_of_the_multiplicity_form(spec):
    problem = dil.dilated_problem(dtype="float64", **spec)
    q_np, k_np, v_np, do_np = kernel_inputs_np(problem)
    out, _, weights = dil.forward(problem, q_np, k_np, v_np)
    dq, dk, dv = dil.backward(problem, q_np, k_np, v_np, do_np)
    q, k, v = (torch.from_numpy(np.array(a)).requires_grad_(True) for a in (q_np, k_np, v_np))
    out_t = _safe_multiplicity_torch(problem, q, k, v)
    out_t.backward(torch.from_numpy(np.array(do_np)))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-11, atol=1e-12, err_msg="forward")
    for name, mine, ref in (("dq", dq, q.grad), ("dk", dk, k.grad), ("dv", dv, v.grad)):
        np.testing.assert_allclose(mine, ref.numpy(), rtol=1e-10, atol=1e-11, err_msg=name)
    # mixing weights: a distribution over the covering groups, zero where a group does not cover
    total = weights.sum(axis=0)
    covered = (dil.multiplicity(problem) > 0).any(axis=-1)[None]  # (1, h, L)
    np.testing.assert_allclose(total, np.broadcast_to(np.where(covered, 1.0, 0.0), total.shape), atol=1e-12)


def test_uncovered_rows_are_zero_and_covered_rows_are_not():
    problem = dil.dilated_problem(1, 23, 3, 8, (8, 16), (2, 4), causal=False, dtype="float64")
    q, k, v, _ = kernel_inputs_np(problem)
    out, _, _ = dil.forward(problem, q, k, v)
    covered = (dil.multiplicity(problem) > 0).any(axis=-1)
    assert (~covered).any(), "this problem was chosen to leave some rows uncovered"
    norms = np.abs(out[0]).sum(axis=-1)
    assert (norms[~covered] == 0).all()
    assert (norms[covered] > 0).all()


def test_the_oracle_is_not_plain_attention_when_dilation_groups_overlap():
    # mixing by denominators double-counts keys seen by two groups: a defect that "simplifies" the
    # mixture to plain attention over the union of keys must not pass as the oracle
    problem = dil.dilated_problem(1, 16, 2, 8, (8, 16), (1, 2), causal=False, dtype="float64")
    q, k, v, _ = kernel_inputs_np(problem)
    out, _, _ = dil.forward(problem, q, k, v)
    union = dil.multiplicity(problem) > 0
    s = np.einsum("bhqd,bhkd->bhqk", q, k) * problem.softmax_scale
    s = np.where(union[None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    plain = np.einsum("bhqk,bhkd->bhqd", p / p.sum(axis=-1, keepdims=True), v)
    assert np.abs(out - plain).max() > 1e-3
