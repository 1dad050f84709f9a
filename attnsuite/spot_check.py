"""The benchmarks' accuracy check of outputs too large for the whole float64 oracle: a few rows, exactly.

Up to ``runner.ORACLE_LIMIT`` score elements a benchmarked output is compared whole with the
float64 oracle. Above it the oracle's lq x lk matrices do not fit, and a check of finiteness alone
had let a kernel that returned ``v`` for long sequences read `ok` and head the "fastest" table
(found by a fresh-user test). An output row of attention depends only on its own query row and on
all keys and values, so a few rows can be computed exactly at any length: for the first and the
last (batch, query head) slice, a middle one and query head 1 (:func:`sample`), a few dozen query
positions spread over the sequence (both ends included) are computed by the float64 oracle (:func:`attnsuite.oracle.forward_rows`, NumPy,
the oracle's own masks) and by plain math in the problem's dtype on the device
(:func:`attnsuite.reference_math.attention`, the noise level), and judged by the suite's one
rule (:func:`attnsuite.tolerance.compare_as`), as the whole output is below the limit.

Scope: the kernel-level attention family (q, k, v to o), every mode but decode, variants of exact
accuracy. Layer families, MLA, decode steps and approximate classes (fp8, int8: their budgets
were measured on the whole oracle's problem sizes) keep the finiteness check above the limit;
problems with dropout have no oracle at all.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from . import oracle, oracle_mask, reference_math, tolerance
from .problem import Problem
from .wording import count

SPOT_ROWS = 16  # evenly spaced query positions per slice: a skipped key block or a wrong corner shows in any
RANDOM_ROWS = 8  # and drawn ones (seeded by the problem's shape)
# The float64 keys and values of one slice go to the host: at most this many elements each
# (lk * d), 2**25 = 256 MiB in float64; beyond it the output is only checked to be finite.
MAX_SLICE_ELEMENTS = 1 << 25
FAMILY = "attention"


def applies(family: str, problem: Problem, mode: str, out: torch.Tensor, accuracy: str = "exact") -> Optional[str]:
    """None when the spot check can judge this output, else why not (recorded in ``numerics_check``)."""
    if accuracy != "exact":
        # an approximate class's budget was measured on problems the whole oracle checks, not at these lengths
        return f"the {accuracy} class's budget is measured on the whole oracle's problem sizes only"
    if family != FAMILY:
        return f"the {family} family has no row-wise oracle"
    if mode == "decode":
        return "decode steps have no row-wise oracle"
    if problem.dropout:
        return "dropout has no oracle"
    if tuple(out.shape) != (problem.batch, problem.hq, problem.lq, problem.dv):
        return f"output shape {tuple(out.shape)} is not (b, hq, lq, dv)"
    if problem.lk * max(problem.dqk, problem.dv) > MAX_SLICE_ELEMENTS:
        return f"lk x d = {problem.lk * max(problem.dqk, problem.dv)} is over the spot check's {MAX_SLICE_ELEMENTS}"
    return None


def sample(problem: Problem) -> tuple[list[tuple[int, int]], np.ndarray]:
    """((batch, query head) slices, query positions) the spot check computes.

    Slices: the first and the last, one in the middle, and query head 1 of the first batch: with
    GQA, heads 0 and the last read the same key/value head under either mapping (h * hkv // hq and
    the tiled h % hkv), head 1 does not. Rows: :data:`SPOT_ROWS` from the first to the last, and
    :data:`RANDOM_ROWS` more drawn with a seed of the problem's shape, so a defect confined to rows
    between the evenly spaced ones is not always missed."""
    b, h = problem.batch, problem.hq
    slices = list(dict.fromkeys([(0, 0), (0, min(1, h - 1)), (b // 2, h // 2), (b - 1, h - 1)]))
    spaced = np.linspace(0, problem.lq - 1, min(SPOT_ROWS, problem.lq)).round().astype(np.int64)
    drawn = np.random.default_rng([problem.lq, problem.lk, problem.seed]).integers(0, problem.lq, RANDOM_ROWS)
    return slices, np.unique(np.concatenate([spaced, drawn]))


class SpotReference:
    """The float64 rows and the same-dtype base rows of one problem's inputs (computed once per
    problem: every variant and mode of a problem runs on the same input tensors)."""

    def __init__(self, problem: Problem, inputs: dict[str, torch.Tensor]) -> None:
        self.problem = problem
        self.slices, self.rows = sample(problem)
        q, k, v = inputs["q"].detach(), inputs["k"].detach(), inputs["v"].detach()
        kv_of = oracle.kv_head_index(problem.hq, problem.hkv)
        b = torch.tensor([s[0] for s in self.slices], device=q.device)
        h = torch.tensor([s[1] for s in self.slices], device=q.device)
        g = torch.as_tensor(kv_of[[s[1] for s in self.slices]], device=q.device)
        rows = torch.as_tensor(self.rows, device=q.device)
        q_rows = q[b, h][:, rows]  # (n, r, d)
        k_sl, v_sl = k[b, g], v[b, g]  # (n, lk, d): the key/value head each query head reads
        heads = np.array([s[1] for s in self.slices])
        self.ref = oracle.forward_rows(problem, *(tolerance.as_float64(t) for t in (q_rows, k_sl, v_sl)),
                                       self.rows, heads)
        with torch.no_grad():
            base = reference_math.attention(problem, q_rows[None], k_sl[None], v_sl[None], rows=rows, heads=h)[0]
        self.base = tolerance.as_float64(base)
        # a sampled row that may see no key is not compared, as in the whole-output check
        self.live = oracle_mask.live_among(problem, self.rows)

    def judge(self, out: torch.Tensor, accuracy: str) -> tolerance.Comparison:
        """The output's sampled rows against the oracle's, by the suite's rule for ``accuracy``."""
        b = torch.tensor([s[0] for s in self.slices], device=out.device)
        h = torch.tensor([s[1] for s in self.slices], device=out.device)
        got = out.detach()[b, h][:, torch.as_tensor(self.rows, device=out.device)]
        what = f"output (spot rows {describe_rows(self.rows)})"  # the location below names batch and head
        comp = tolerance.compare_as(accuracy, what, got, self.ref, self.base, self.problem.dtype, "output",
                                    rows=self.live if not self.live.all() else None)
        if comp.where is not None and len(comp.where) == 3:  # (slice, compared row, column) -> the output's index
            i, r, c = comp.where
            comp = dataclasses.replace(comp, where=(*self.slices[i], int(self.rows[self.live][r]), c))
        return comp

    def label(self, gradients: bool = False) -> str:
        """What ``numerics_check`` records for a judged output (and, with ``gradients``, that those
        were checked to be finite only: a gradient row depends on every row)."""
        return (f"spot: {count(len(self.rows), 'row')} of {count(len(self.slices), '(batch, head) slice')} against "
                "the float64 oracle (too large for the whole oracle)" + ("; gradients finite" if gradients else ""))


def describe_rows(rows: np.ndarray) -> str:
    """Rows as "0, 34, ..., 511" (the first two and the last)."""
    shown = [str(int(r)) for r in rows]
    return ", ".join(shown) if len(shown) <= 4 else f"{shown[0]}, {shown[1]}, ..., {shown[-1]}"
