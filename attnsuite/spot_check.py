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

Gradients (the ``bwd`` and ``fwd+bwd`` modes) are checked the same way, every element of them: the
variant runs once more with an output gradient that is zero except on the sampled rows. A row
reaches dk and dv only through its own probabilities, so the whole dq, dk and dv of that call are
the sampled rows' alone, computed exactly from those rows (:func:`attnsuite.oracle.backward_rows`,
and the same math in the problem's dtype by autograd for the noise level): the sampled rows' dq
and the key/value heads they read are judged by the backward check's own rule
(:func:`attnsuite.checks.compare_gradients`), and everything else must stay within that rule's
floor of zero (a gradient sent to the wrong head or row). A kernel with a right forward and a
wrong dV had read `ok` above the limit, whose gradients were only checked to be finite.

Scope: the kernel-level attention family (q, k, v to o), every mode but decode, variants of exact
accuracy. A family that brings its own row-wise oracle (``Family.rows``: an outside family's
float64 rows of its output at given query positions) gets the same output check at those
positions (:class:`FamilyRows`), its gradients checked for finiteness. Other families (the built-in
layer families, MLA), decode steps and approximate classes (fp8, int8: their budgets were measured
on the whole oracle's problem sizes) keep the finiteness check above the limit; problems with
dropout have no oracle at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import torch

from . import memory, oracle, oracle_mask, reference_math, tolerance
from .problem import Problem
from .wording import count

GRADIENTS = ("q", "k", "v")  # what an attention kernel's backward must give, all of it checked

SPOT_ROWS = 16  # evenly spaced query positions per slice: a skipped key block or a wrong corner shows in any
RANDOM_ROWS = 8  # and drawn ones (seeded by the problem's shape)
# The float64 keys and values of one slice go to the host: at most this many elements each
# (lk * d), 2**25 = 256 MiB in float64; beyond it the output is only checked to be finite.
MAX_SLICE_ELEMENTS = 1 << 25
FAMILY = "attention"


def applies(family: str, problem: Problem, mode: str, out: torch.Tensor, accuracy: str = "exact",
            own_rows: bool = False) -> Optional[str]:
    """None when the spot check can judge this output, else why not (recorded in ``numerics_check``).
    ``own_rows``: the family brings its own row-wise oracle (``Family.rows``)."""
    if accuracy != "exact":
        # an approximate class's budget was measured on problems the whole oracle checks, not at these lengths
        return f"the {accuracy} class's budget is measured on the whole oracle's problem sizes only"
    if family != FAMILY and not own_rows:
        return f"the {family} family has no row-wise oracle (Family.rows)"
    if mode == "decode":
        return "decode steps have no row-wise oracle"
    if problem.dropout:
        return "dropout has no oracle"
    if own_rows:
        if out.dim() < 2 or out.shape[-2] != problem.lq:
            return f"output shape {tuple(out.shape)} has no query positions (lq={problem.lq}) on its axis -2"
        return None
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
        self.heads = np.array([s[1] for s in self.slices])  # the query head of each slice
        q_rows, k_sl, v_sl = self.sampled(inputs)
        rows, h = torch.as_tensor(self.rows, device=q_rows.device), self._slice_index(q_rows.device)[1]
        self.ref = oracle.forward_rows(problem, *(tolerance.as_float64(t) for t in (q_rows, k_sl, v_sl)),
                                       self.rows, self.heads)
        with torch.no_grad():
            base = reference_math.attention(problem, q_rows[None], k_sl[None], v_sl[None], rows=rows, heads=h)[0]
        self.base = tolerance.as_float64(base)
        # a sampled row that may see no key is not compared, as in the whole-output check
        self.live = oracle_mask.live_among(problem, self.rows)

    def _slice_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, query head, key/value head) of every sampled slice, as index tensors on ``device``."""
        kv_of = oracle.kv_head_index(self.problem.hq, self.problem.hkv)
        return (torch.tensor([s[0] for s in self.slices], device=device), torch.as_tensor(self.heads, device=device),
                torch.as_tensor(kv_of[self.heads], device=device))

    def rows_of(self, t: torch.Tensor) -> torch.Tensor:
        """The sampled rows of a (b, hq, l, d) tensor (q, the output, its gradient): (n, r, d)."""
        b, h, _ = self._slice_index(t.device)
        return t.detach()[b, h][:, torch.as_tensor(self.rows, device=t.device)]

    def sampled(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the sampled rows of q, the key and the value head each slice reads): (n, r, d), (n, lk, d) x 2."""
        b, _, g = self._slice_index(inputs["k"].device)
        return self.rows_of(inputs["q"]), inputs["k"].detach()[b, g], inputs["v"].detach()[b, g]

    def judge(self, out: torch.Tensor, accuracy: str) -> tolerance.Comparison:
        """The output's sampled rows against the oracle's, by the suite's rule for ``accuracy``."""
        got = self.rows_of(out)
        what = f"output (spot rows {describe_rows(self.rows)})"  # the location below names batch and head
        comp = tolerance.compare_as(accuracy, what, got, self.ref, self.base, self.problem.dtype, "output",
                                    rows=self.live if not self.live.all() else None)
        if comp.where is not None and len(comp.where) == 3:  # (slice, sampled row, column) -> the output's index
            i, r, c = comp.where
            comp = dataclasses.replace(comp, where=(*self.slices[i], int(self.rows[r]), c))
        return comp

    def label(self, gradients: Optional[str] = None) -> str:
        """What ``numerics_check`` records for a judged output, and how its gradients were checked
        (``gradients``: None for a forward-only mode)."""
        return (f"spot: {count(len(self.rows), 'row')} of {count(len(self.slices), '(batch, head) slice')} against "
                "the float64 oracle (too large for the whole oracle)" + (f"; {gradients}" if gradients else ""))

    def _index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, head, live row) index tensors that pick the sampled live rows of every slice."""
        b, h, _ = self._slice_index(device)
        return b[:, None], h[:, None], torch.as_tensor(self.rows[self.live], device=device)[None, :]

    def judge_gradients(self, case, accuracy: str) -> tuple[Optional[str], str]:
        """(failure or None, label) for the gradients of ``case`` (a built attention variant whose
        inputs require grad): one more call with the output gradient on the sampled rows alone,
        every element of dq, dk and dv judged (see the module docstring)."""
        names = sorted(n for n, g in case.grads().items() if g is not None or n in case.inputs)
        if names != sorted(GRADIENTS):
            return None, f"gradients finite (no spot check: gradients of {', '.join(names)}, not of q, k and v)"
        if not self.live.any():
            return None, "gradients finite (no spot check: no sampled row may see a key)"
        do = torch.zeros_like(case.grad_out)
        idx = self._index(do.device)
        do[idx] = case.grad_out[idx]
        case.zero_grads()
        try:
            with torch.enable_grad():
                out = case.forward()
                broken = case.output_problem(out)
                if broken:
                    return broken, "contract"
                out.backward(do)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is memory
            if not memory.is_oom(exc):
                raise
            # the timed calls fitted; one more beside the measured output may not: the case stays as it was
            case.zero_grads()
            return None, f"gradients finite (no spot check: out of memory for one more call: {type(exc).__name__})"
        del out
        grads = {n: case.grads()[n] for n in GRADIENTS}
        case.zero_grads()
        missing = [f"grad {n}: missing (None): the input is detached" for n, g in grads.items() if g is None]
        if missing:
            return "; ".join(missing), "spot gradients"
        ref, base, kv = _gradient_reference(self, case.inputs, do)
        kb = torch.tensor([b for b, _ in kv], device=do.device)
        kg = torch.tensor([g for _, g in kv], device=do.device)
        b, h = idx[0][:, 0], idx[1][:, 0]
        rows = torch.as_tensor(self.rows, device=do.device)
        got = {"q": grads["q"][b, h][:, rows], "k": grads["k"][kb, kg], "v": grads["v"][kb, kg]}
        from .checks import compare_gradients  # checks imports the runner's neighbours; no cycle at import time

        comps, broken = compare_gradients(accuracy, got, ref, base, self.problem.dtype)
        comps = [self._located(c, kv) for c in comps]
        magnitude = max(float(np.max(np.abs(r))) for r in ref.values())
        comps += [_outside(n, grads[n], region, self.problem.dtype, magnitude)
                  for n, region in (("q", (b[:, None], h[:, None], rows[None, :])), ("k", (kb, kg)), ("v", (kb, kg)))]
        failed = broken + [c.describe() for c in comps if not c.passed]
        label = (f"gradients of those rows' output gradient alone against the float64 oracle, every element of "
                 f"dq, dk, dv ({count(len(kv), '(batch, key/value head) slice')} reached)")
        return ("; ".join(failed) if failed else None), label

    def _located(self, comp: tolerance.Comparison, kv: list[tuple[int, int]]) -> tolerance.Comparison:
        """A sampled gradient's comparison with its index in the whole gradient, and saying what was sampled."""
        name = comp.what.split()[-1]
        where = comp.where
        if where is not None and len(where) == 3:
            i, r, c = where
            where = (*self.slices[i], int(self.rows[r]), c) if name == "q" else (*kv[i], r, c)
        what = (f"grad q (spot rows {describe_rows(self.rows)})" if name == "q"
                else f"grad {name} (from the spot rows' output gradient)")
        return dataclasses.replace(comp, what=what, where=where)


class FamilyRows:
    """The spot check of a family that brings its own row-wise oracle (``Family.rows``): the query
    positions of :func:`sample` in every slice of the output, computed once per problem from the
    case's inputs by the family, judged by the suite's one rule. Forward only: the gradients of
    such a family are checked for finiteness above the oracle limit."""

    def __init__(self, family: Any, problem: Problem, inputs: dict[str, torch.Tensor]) -> None:
        self.problem, self.family = problem, family.name
        self.rows = sample(problem)[1]
        ref, base = family.rows(problem, inputs, self.rows.copy())
        self.ref, self.base = tolerance.as_float64(ref), tolerance.as_float64(base)

    def judge(self, out: torch.Tensor, accuracy: str) -> tolerance.Comparison:
        """The output's sampled rows against the family's float64 rows, by the rule for ``accuracy``."""
        got = out.detach()[..., torch.as_tensor(self.rows, device=out.device), :]
        for name, rows in (("float64 rows", self.ref), ("base rows", self.base)):
            if tuple(rows.shape) != tuple(got.shape):
                # the family's hook, not the variant, is at fault: said as such (the case's error)
                raise ValueError(f"family {self.family}: Family.rows gave {name} of shape {tuple(rows.shape)} for "
                                 f"{len(self.rows)} query positions of an output {tuple(out.shape)}: expected "
                                 f"{tuple(got.shape)} (the output's axis -2 cut to the positions)")
        what = f"output (spot rows {describe_rows(self.rows)})"
        comp = tolerance.compare_as(accuracy, what, got, self.ref, self.base, self.problem.dtype, "output")
        if comp.where is not None and len(comp.where) >= 2:  # the sampled row -> the output's query position
            where = list(comp.where)
            where[-2] = int(self.rows[where[-2]])
            comp = dataclasses.replace(comp, where=tuple(where))
        return comp

    def label(self, backward: bool = False) -> str:
        """What ``numerics_check`` records for a judged output."""
        return (f"spot: {count(len(self.rows), 'row')} of every slice against the {self.family} family's float64 "
                "rows (Family.rows; too large for the whole oracle)"
                + ("; gradients finite only (Family.rows is forward only)" if backward else ""))


# The last problem's gradient reference: every variant and mode of a problem runs before the next,
# and one holds dk and dv of whole key/value heads (up to hundreds of MiB in float64).
_LAST_GRADIENTS: dict = {}


def _gradient_reference(spot: SpotReference, inputs: dict[str, torch.Tensor], do: torch.Tensor
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[tuple[int, int]]]:
    """(float64 oracle gradients, same-dtype base gradients, the (batch, key/value head) slices of dk
    and dv) of the sampled rows with output gradient ``do``: dq (n, r, d) of the sampled rows, dk and
    dv (m, lk, d) of each key/value slice they read, the slices' shares added up."""
    problem = spot.problem
    if problem in _LAST_GRADIENTS:
        return _LAST_GRADIENTS[problem]
    kv_of = oracle.kv_head_index(problem.hq, problem.hkv)
    pairs = [(bi, int(kv_of[hi])) for bi, hi in spot.slices]
    kv = list(dict.fromkeys(pairs))
    q_rows, k_sl, v_sl = spot.sampled(inputs)
    do_rows = spot.rows_of(do)
    rows, h = torch.as_tensor(spot.rows, device=do.device), spot._slice_index(do.device)[1]
    dq, dk, dv = oracle.backward_rows(problem, *(tolerance.as_float64(t) for t in (q_rows, k_sl, v_sl, do_rows)),
                                      spot.rows, spot.heads)
    leaves = [t.clone().requires_grad_() for t in (q_rows, k_sl, v_sl)]
    with torch.enable_grad():
        out = reference_math.attention(problem, *(t[None] for t in leaves), rows=rows, heads=h)[0]
        out.backward(do_rows)
    base_q, base_k, base_v = (tolerance.as_float64(t.grad) for t in leaves)

    def fold(shares: np.ndarray) -> np.ndarray:
        out = np.zeros((len(kv), *shares.shape[1:]))
        for i, pair in enumerate(pairs):
            out[kv.index(pair)] += shares[i]
        return out
    result = ({"q": dq, "k": fold(dk), "v": fold(dv)}, {"q": base_q, "k": fold(base_k), "v": fold(base_v)}, kv)
    _LAST_GRADIENTS.clear()
    _LAST_GRADIENTS[problem] = result
    return result


def _outside(name: str, grad: torch.Tensor, region: tuple, dtype: str, magnitude: float) -> tolerance.Comparison:
    """Everything of ``grad`` outside ``region`` (what the sampled rows reach) against zero, by the
    rule's floor at the sampled gradients' scale: the base there is exactly zero."""
    rest = grad.detach().clone()
    rest[region] = 0
    flat = int(rest.abs().argmax())
    value = float(rest.reshape(-1)[flat].abs().double())
    comp = tolerance.compare(f"grad {name} outside what the spot rows reach (must be 0)", np.array([value]),
                             np.zeros(1), np.zeros(1), dtype, "grad", magnitude=magnitude)
    return dataclasses.replace(comp, where=tuple(int(i) for i in np.unravel_index(flat, tuple(rest.shape))))


def describe_rows(rows: np.ndarray) -> str:
    """Rows as "0, 34, ..., 511" (the first two and the last)."""
    shown = [str(int(r)) for r in rows]
    return ", ".join(shown) if len(shown) <= 4 else f"{shown[0]}, {shown[1]}, ..., {shown[-1]}"
