"""Dilated attention (LongNet): the float64 NumPy oracle, forward and backward, and its family.

Semantics (LongNet's dilated attention, as this suite defines it). A problem carries ``args`` ``segments`` (w_1..w_G) and ``dilations``
(r_1..r_G). Self-attention only (lq == lk == L), one key/value head per query head. For each group
g = (w, r):

1. split 0..L-1 into segments of length w (the last one shorter when w does not divide L; a
   sequence shorter than w is a single segment);
2. inside each segment keep every r-th row, head h starting at offset h % r (so different heads
   cover different rows and, over the heads, every row of the segment is covered when H >= r);
3. attend within those kept rows only (causal in the original positions when the problem's mask is
   causal), giving o_g and its log-sum-exp lse_g at the kept rows;
4. rows a group does not keep get nothing from that group.

The groups are mixed per (head, position) with weights proportional to each covering group's
softmax denominator: out = sum_g exp(lse_g) o_g / sum_g exp(lse_g) over the groups covering that
position; a position no group covers is zero. Equivalently out_i = sum_j C_ij e^{s_ij} v_j /
sum_j C_ij e^{s_ij} with C_ij the number of groups in which key j is attended by query i: the
dense "multiplicity" form used for the base (:func:`multiplicity`) and for cross-checks.

Backward with w_g = exp(lse_g - log sum_g' exp(lse_g')) and D = rowsum(dO * out): inside a segment
dO_g = w_g dO, and the mixing derivative d lse_g = w_g (dO.o_g - dO.out) folds into the softmax
backward as dS = P * (dP_g - w_g D) with dP_g = dO_g V^T; then dQ = scale dS K, dK = scale dS^T Q,
dV = P^T dO_g, scattered back and summed over segments, heads' rows and groups.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Iterator

import numpy as np
import torch

from attnsuite import oracle
from attnsuite.family_glue import autograd_base, device_kernel_inputs, kernel_family_inputs
from attnsuite.inputs import kernel_inputs_np
from attnsuite.problem import Mask, Problem, ProblemError
from attnsuite.registry import Family, register_family


def config(problem: Problem) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(segments, dilations) of a dilated problem, validated with messages naming the fault."""
    segments, dilations = problem.arg("segments"), problem.arg("dilations")
    if segments is None or dilations is None:
        raise ProblemError(f"dilated problem {problem.id} needs args 'segments' and 'dilations'")
    segments, dilations = tuple(int(w) for w in segments), tuple(int(r) for r in dilations)
    if len(segments) != len(dilations) or not segments:
        raise ProblemError(
            f"dilated problem {problem.id}: {len(segments)} segments but {len(dilations)} dilations "
            "(need one dilation per segment length, at least one group)"
        )
    if min(segments) < 1 or min(dilations) < 1:
        raise ProblemError(f"dilated problem {problem.id}: segments and dilations must be >= 1")
    if problem.lq != problem.lk:
        raise ProblemError(f"dilated problem {problem.id}: self-attention only, lq={problem.lq} != lk={problem.lk}")
    if problem.hq != problem.hkv:
        raise ProblemError(f"dilated problem {problem.id}: one K/V head per query head (hq != hkv)")
    if problem.mask.kind not in ("none", "causal"):
        raise ProblemError(f"dilated problem {problem.id}: mask must be none or causal, got {problem.mask.kind}")
    return segments, dilations


def dilated_problem(batch: int, seq: int, heads: int, dim: int, segments: tuple[int, ...],
                    dilations: tuple[int, ...], causal: bool = False, dtype: str = "float32",
                    device: str = "cpu", dv: int | None = None, tag: str = "") -> Problem:
    """A problem of the ``dilated`` family (validated)."""
    p = Problem(batch=batch, lq=seq, lk=seq, hq=heads, hkv=heads, dqk=dim, dv=dv or dim,
                mask=Mask("causal") if causal else Mask(), dtype=dtype, device=device, tag=tag,
                args=(("dilations", tuple(dilations)), ("segments", tuple(segments))))
    config(p)
    return p


def segment_rows(length: int, w: int, r: int, offset: int) -> Iterator[np.ndarray]:
    """Rows kept in each segment of length w (last one shorter) at dilation r and head offset."""
    for start in range(0, length, w):
        end = min(start + w, length)
        rows = np.arange(start + offset, end, r)
        if rows.size:
            yield rows


def multiplicity(problem: Problem) -> np.ndarray:
    """(hq, L, L) counts C[h, i, j]: in how many groups query i attends key j (causal applied)."""
    segments, dilations = config(problem)
    L = problem.lq
    counts = np.zeros((problem.hq, L, L), dtype=np.int64)
    for w, r in zip(segments, dilations):
        for h in range(problem.hq):
            for rows in segment_rows(L, w, r, h % r):
                counts[h][np.ix_(rows, rows)] += 1
    if problem.mask.kind == "causal":
        counts = counts * np.tril(np.ones((L, L), dtype=np.int64))[None]
    return counts


def _sub_problem(problem: Problem, n: int) -> Problem:
    """The kernel problem of one (segment, head): n kept rows, one head, the parent's scale and mask."""
    return Problem(batch=problem.batch, lq=n, lk=n, hq=1, hkv=1, dqk=problem.dqk, dv=problem.dv,
                   scale=problem.softmax_scale, mask=Mask("causal") if problem.mask.kind == "causal" else Mask())


def _segments(problem: Problem):
    """Every (group index, head, kept rows) of the problem, in a fixed order."""
    segments, dilations = config(problem)
    for g, (w, r) in enumerate(zip(segments, dilations)):
        for h in range(problem.hq):
            for rows in segment_rows(problem.lq, w, r, h % r):
                yield g, h, rows


def forward(problem: Problem, q, k, v):
    """Float64 forward. Returns (out (b, h, L, dv), lse_groups (G, b, h, L), weights (G, b, h, L)).

    ``lse_groups`` is -inf where a group does not cover a row; ``weights`` are the mixing weights
    (zero where not covering; rows no group covers have all-zero weights and a zero output).
    """
    segments, _ = config(problem)
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    b, h, L, dv = v.shape[0], problem.hq, problem.lq, problem.dv
    G = len(segments)
    o_g = np.zeros((G, b, h, L, dv))
    lse_g = np.full((G, b, h, L), -np.inf)
    for g, head, rows in _segments(problem):
        sub = _sub_problem(problem, rows.size)
        o, lse, _, _ = oracle.forward(sub, q[:, head : head + 1, rows], k[:, head : head + 1, rows],
                                      v[:, head : head + 1, rows])
        o_g[g, :, head, rows] = o[:, 0].transpose(1, 0, 2)
        lse_g[g, :, head, rows] = lse[:, 0].T
    top = lse_g.max(axis=0)
    covered = np.isfinite(top)
    e = np.where(np.isfinite(lse_g), np.exp(lse_g - np.where(covered, top, 0.0)), 0.0)
    weights = e / np.where(covered, e.sum(axis=0), 1.0)
    out = np.einsum("gbhl,gbhld->bhld", weights, o_g)
    return out, lse_g, weights


def backward(problem: Problem, q, k, v, do):
    """Float64 gradients (dq, dk, dv) of sum(out * do), written out segment by segment."""
    out, _, weights = forward(problem, q, k, v)
    q, k, v, do = (np.asarray(a, dtype=np.float64) for a in (q, k, v, do))
    scale = problem.softmax_scale
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    delta = np.sum(do * out, axis=-1)  # (b, h, L): rowsum(dO * out) of the mixed output
    for g, head, rows in _segments(problem):
        sub = _sub_problem(problem, rows.size)
        qs, ks, vs = q[:, head, rows], k[:, head, rows], v[:, head, rows]  # (b, n, d)
        _, _, p, _ = oracle.forward(sub, qs[:, None], ks[:, None], vs[:, None])
        p = p[:, 0]  # (b, n, n)
        wgt = weights[g, :, head, rows].T  # (b, n)
        dog = wgt[..., None] * do[:, head, rows]
        dp = np.einsum("bqd,bkd->bqk", dog, vs)
        ds = p * (dp - (wgt * delta[:, head, rows])[..., None])
        dq[:, head, rows] += scale * np.einsum("bqk,bkd->bqd", ds, ks)
        dk[:, head, rows] += scale * np.einsum("bqk,bqd->bkd", ds, qs)
        dv[:, head, rows] += np.einsum("bqk,bqd->bkd", p, dog)
    return dq, dk, dv


@lru_cache(maxsize=64)
def solve(problem: Problem):
    """(out, {"q": dq, "k": dk, "v": dv}) for the seeded inputs of ``problem`` (cached)."""
    q, k, v, do = kernel_inputs_np(problem)
    out, _, _ = forward(problem, q, k, v)
    dq, dk, dv = backward(problem, q, k, v, do)
    return out, {"q": dq, "k": dk, "v": dv}


def multiplicity_attention(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense plain math in q's dtype: softmax(scale q k^T + log C) v, zero rows where C is all zero.

    The tolerance rule's base for the ``dilated`` family; independent of impls/dilated/dilated.py (which
    gathers segments) and of the NumPy oracle above (which loops over segments).
    """
    counts = torch.from_numpy(multiplicity(problem)).to(q.device)
    covered = (counts > 0).any(dim=-1, keepdim=True)  # (h, L, 1): rows some group covers
    bias = torch.log(counts.to(torch.float32)).to(q.dtype)  # log 0 = -inf: not attended
    # an uncovered row gets a finite dummy softmax and is zeroed after: finite gradients everywhere
    bias = torch.where(covered, bias, torch.zeros_like(bias))
    s = (q @ k.transpose(-2, -1)) * problem.softmax_scale + bias
    return (torch.softmax(s, dim=-1) @ v) * covered.to(q.dtype)


def _base(problem: Problem):
    return autograd_base(problem, partial(multiplicity_attention, problem), *kernel_family_inputs(problem))


def longnet_problem(seq: int = 8192, batch: int = 1, dtype: str = "bfloat16", device: str = "cuda",
                    causal: bool = True, quick: bool = False) -> Problem:
    """The longnet workload: 8 heads, d 64, segments up to 4K with dilations 1/2/4.

    ``quick`` keeps the structure (three groups, doubling segments and dilations) at CPU size.
    """
    if quick:
        return dilated_problem(batch, 96, 8, 16, (16, 32, 64), (1, 2, 4), causal, dtype, device, tag="longnet-quick")
    return dilated_problem(batch, seq, 8, 64, (1024, 2048, 4096), (1, 2, 4), causal, dtype, device, tag="longnet")


def dilated_problems(device: str, dtypes: tuple) -> list[Problem]:
    """Correctness problems: L not a multiple of w, L shorter than every segment, heads < and > r.

    Every problem has a dilation-1 group, so every row is covered (partial coverage is tested apart,
    in test_correctness/test_dilated.py, where zero rows are the expected answer).
    """
    if device.startswith("cuda"):
        shapes = [
            dict(batch=2, seq=1000, heads=4, dim=64, segments=(128, 256, 512), dilations=(1, 2, 4), causal=True),
            dict(batch=1, seq=777, heads=8, dim=64, segments=(256, 1024), dilations=(1, 2), causal=False),
            dict(batch=1, seq=100, heads=3, dim=128, segments=(256, 512), dilations=(1, 2), causal=True),
        ]
    else:
        shapes = [
            dict(batch=1, seq=17, heads=2, dim=16, segments=(8, 16), dilations=(1, 2), causal=True),
            dict(batch=2, seq=5, heads=3, dim=16, segments=(8, 16), dilations=(1, 2), causal=False),
            dict(batch=1, seq=130, heads=4, dim=16, segments=(16, 32, 64), dilations=(1, 2, 4), causal=True),
            dict(batch=2, seq=45, heads=3, dim=16, segments=(4, 8, 16), dilations=(1, 2, 4), causal=False,
                 dv=24),
            dict(batch=1, seq=33, heads=4, dim=16, segments=(8, 16), dilations=(1, 2), causal=False),
        ]
    out = []
    for n, dtype in enumerate(dtypes):
        chosen = shapes if n == 0 else shapes[n % 2 :: 2]
        out.extend(dilated_problem(dtype=dtype, device=device, **s) for s in chosen)
    return out


DILATED = register_family(
    Family(
        name="dilated",
        level="kernel",
        inputs=kernel_family_inputs,
        device_inputs=device_kernel_inputs,
        reference=solve,
        base=_base,
        problems=dilated_problems,
        check=config,
        args=frozenset({"segments", "dilations"}),
        description="LongNet dilated attention: per (segment, dilation) group, per-head offsets, "
        "groups mixed by their softmax denominators",
    )
)
