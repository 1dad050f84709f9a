"""The decode check: a layer's incremental decoding equals the rows of its full causal forward.

A layer variant that declares ``decodes = True`` (:class:`attnsuite.registry.LayerVariant`,
docs/decode.md) runs a causal self-attention problem of length L in pieces: ``prefill`` on the
first P tokens, then ``step`` after step through the rest, the step sizes taken in turn from a
:class:`DecodePlan` (1, then 3, then 1, ... by default), each step handed the cache the previous
call returned. Row i of a causal layer depends only on tokens 0..i, so the concatenated outputs
must equal the full forward's: new query r of a step of s tokens after t cached ones sits at
position t + r and sees keys 0..t + r (the causal corner bottom-right).

The comparison is the forward check's (:func:`attnsuite.tolerance.compare`): the float64 oracle's
output is the reference and the family's same-dtype base the noise level, over all L rows at once.
A failure names the pieces (prefill or step n, their rows) whose error is above the bound, so a
step that aligns its mask top-left, a cache that drops its oldest token or a step that does not
append to the cache reads as where it goes wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from . import checks, registry
from .case import prepare
from .problem import Mask, Problem
from .registry import LayerVariant, Variant
from .tolerance import as_float64, compare


@dataclass(frozen=True)
class DecodePlan:
    """How a sequence is decoded: ``prefill`` tokens at once, then steps of ``steps`` tokens in turn.

    The step sizes repeat until the sequence ends; the last step takes what is left.
    """

    prefill: int = 7
    steps: tuple[int, ...] = (1, 3, 1)

    def __post_init__(self) -> None:
        if self.prefill < 1 or not self.steps or any(s < 1 for s in self.steps):
            raise ValueError(f"decode plan: prefill and every step must be >= 1 token, got {self!r}")

    @property
    def id(self) -> str:
        """e.g. ``decode-prefill7-steps1,3,1``."""
        return f"decode-prefill{self.prefill}-steps{','.join(map(str, self.steps))}"

    def pieces(self, length: int) -> list[tuple[int, int]]:
        """(start, stop) token ranges of the prefill and of every step over a sequence of ``length``."""
        if length <= self.prefill:
            raise ValueError(f"{self.id}: a sequence of {length} tokens leaves nothing to step through")
        out, start, n = [(0, self.prefill)], self.prefill, 0
        while start < length:
            stop = min(start + self.steps[n % len(self.steps)], length)
            out.append((start, stop))
            start, n = stop, n + 1
        return out


DEFAULT_PLAN = DecodePlan()


def as_decode_problem(problem: Problem) -> Optional[Problem]:
    """The causal form of a self-attention layer problem (mask none or causal), or None when it has none.

    Decoding is causal by definition; an unmasked problem of a family gives a causal one of the
    same shapes (so MQA or another head ratio of the family is decoded too).
    """
    if problem.level != "layer" or problem.mask.kind not in ("none", "causal") or problem.dropout:
        return None
    return problem.with_(mask=Mask("causal"))


def decode_problems(family: registry.Family, device: str, dtypes: tuple, plan: DecodePlan = DEFAULT_PLAN,
                    max_length: Optional[int] = None) -> list[Problem]:
    """The family's problems (its own and added ones) in causal form, longer than the plan's prefill."""
    out, seen = [], set()
    for problem in registry.problems_of(family, device, dtypes):
        causal = as_decode_problem(problem)
        if causal is None or causal.lq <= plan.prefill or (max_length is not None and causal.lq > max_length):
            continue
        if causal.id not in seen:
            seen.add(causal.id)
            out.append(causal)
    return out


def skip_reason(variant: Variant, problem: Problem, plan: DecodePlan = DEFAULT_PLAN) -> Optional[str]:
    """Why ``variant`` is not decode-checked on ``problem`` (a declared limitation), or None."""
    if not isinstance(variant, LayerVariant) or not variant.decodes:
        return f"{variant.name} declares no incremental decoding (LayerVariant.decodes is False)"
    if problem.mask.kind != "causal" or problem.level != "layer":
        return f"decoding is checked on causal layer problems; {problem.id} is not one"
    if problem.lq <= plan.prefill:
        return f"{problem.id} has {problem.lq} tokens: nothing left after a prefill of {plan.prefill}"
    reasons = variant.unsupported(problem)
    return "; ".join(reasons) if reasons else None


def _run_plan(variant: LayerVariant, module: torch.nn.Module, x: torch.Tensor,
              pieces: list[tuple[int, int]]) -> Iterator[tuple[int, torch.Tensor]]:
    """(piece index, output) of the prefill and each step, every call handed the last returned cache."""
    cache: Any = None
    for n, (start, stop) in enumerate(pieces):
        chunk = x[:, start:stop]
        y, cache = variant.prefill(module, chunk) if n == 0 else variant.step(module, chunk, cache)
        yield n, y


def describe_piece(n: int, start: int, stop: int) -> str:
    """'prefill (rows 0..6)' or 'step 2 of 3 tokens (rows 8..10)'."""
    rows = f"rows {start}..{stop - 1}"
    if n == 0:
        return f"prefill ({rows})"
    return f"step {n} of {stop - start} token{'s' if stop - start > 1 else ''} ({rows})"


def _offenders(out: np.ndarray, ref: np.ndarray, bound: float, pieces: list[tuple[int, int]]) -> list[str]:
    """The pieces whose largest error is above ``bound``, in order, with that error."""
    found = []
    for n, (start, stop) in enumerate(pieces):
        err = float(np.max(np.abs(out[:, start:stop] - ref[:, start:stop])))
        if not err <= bound:
            found.append(f"{describe_piece(n, start, stop)}: max error {err:.3g}")
    return found


def _compare(variant: Variant, what: str, out, ref_out, base_out, dtype: str):
    """The forward check's rule: exact variants by ``compare``; an approximate accuracy class (where
    the suite has them, ``Variant.accuracy``) by that class's budget."""
    accuracy = getattr(variant, "accuracy", "exact")
    if accuracy == "exact":
        return compare(what, out, ref_out, base_out, dtype, "output")
    from .tolerance import compare_as

    return compare_as(accuracy, what, out, ref_out, base_out, dtype, "output")


def check_decode(variant: Variant, problem: Problem, plan: DecodePlan = DEFAULT_PLAN,
                 cache: Optional[dict] = None) -> checks.CheckResult:
    """Prefill and steps (``plan``) concatenated against the float64 oracle's full-forward rows.

    Each piece's output must meet the output contract (shape (batch, piece, d_model), the problem's
    dtype and device); the concatenation is compared by the forward check's rule. ``cache`` is the
    build cache of :func:`attnsuite.case.prepare` (the module built for the full problem is reused).
    A pair :func:`skip_reason` declines is a failed result saying why (callers skip it beforehand).
    """

    reason = skip_reason(variant, problem, plan)
    if reason is not None:  # a declared limitation or a wrong problem: a plain sentence, no traceback
        return checks.CheckResult("decode", variant.name, problem.id, False, [f"cannot decode-check: {reason}"])

    def body(result: checks.CheckResult) -> None:
        ref_out, _ = checks.reference(variant.family, problem)
        base_out, _ = checks.base(variant.family, problem)
        case = prepare(variant, problem, requires_grad=False, cache=cache)
        if case.reset is not None:
            case.reset()
        pieces = plan.pieces(problem.lq)
        outs = []
        with torch.no_grad():
            for n, y in _run_plan(variant, case.module, case.inputs["x"], pieces):
                start, stop = pieces[n]
                if not checks._contract(result, variant, problem, y, ref_out[:, start:stop]):
                    result.details.insert(0, f"{plan.id}: {describe_piece(n, start, stop)} broke the output contract")
                    return
                outs.append(y)
        out = torch.cat(outs, dim=1)
        c = _compare(variant, f"{plan.id} output", out, ref_out, base_out, problem.dtype)
        checks._add(result, [c])
        if not c.finite and c.where is not None:  # name the piece that wrote the first NaN/Inf
            n = next(i for i, (start, stop) in enumerate(pieces) if start <= c.where[1] < stop)
            result.details.append(f"the first NaN/Inf is in {describe_piece(n, *pieces[n])}")
        elif not c.passed:
            wrong = _offenders(as_float64(out), as_float64(ref_out), c.bound, pieces)
            shown = "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
            result.details.append(f"above the bound: {shown} (of {len(pieces)} pieces; the full forward's "
                                  "rows are the reference, causal corner bottom-right)")

    return checks._guarded("decode", variant, problem, body)
