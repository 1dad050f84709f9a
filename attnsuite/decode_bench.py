"""Decode-step benchmarks: the timed call of a case in mode ``decode`` (docs/decode.md).

A ``decode`` case times one incremental-decoding step of a layer variant that declares decoding
(:class:`attnsuite.registry.LayerVariant` ``decodes``): the problem is the whole causal sequence of
L tokens, ``decode_step`` = s (a problem argument, :data:`attnsuite.record.DECODE_STEP_ARG`) says how
many tokens the step adds. The variant's ``prefill`` runs once on the first L - s tokens, untimed;
each timed call is ``step`` on the last s tokens with a fresh copy of that cache (the copy is the
call's untimed setup), so every call does the same work even when a step grows its cache in place.
The step's output is rows L - s .. L - 1 of the full forward, which is what the numerics check
compares it with (:func:`reference_rows`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch

from .case import Case
from .problem import Problem
from .record import DECODE_STEP_ARG
from .registry import LayerVariant, Variant


def step_size(problem: Problem) -> Optional[int]:
    """The problem's ``decode_step`` (tokens one step adds), or None when it names none."""
    s = problem.arg(DECODE_STEP_ARG)
    return s if isinstance(s, int) else None


def problem_reason(problem: Problem) -> Optional[str]:
    """Why ``problem`` can have no decode case (for any variant), or None: a problems file's decode
    entry is refused with it at load (it had loaded, and every one of its cases was skipped)."""
    s = step_size(problem)
    if problem.level == "layer" and problem.mask.kind == "causal" and s is not None and 1 <= s < problem.lq:
        return None
    what = [w for w, bad in (("a layer problem (d_model)", problem.level != "layer"),
                             (f"a causal mask (not {problem.mask.kind!r})", problem.mask.kind != "causal"),
                             (f"an int arg {DECODE_STEP_ARG} (the tokens one step adds)", s is None),
                             (f"1 <= {DECODE_STEP_ARG} < L (it is {s!r}, L {problem.lq})",
                              s is not None and not 1 <= s < problem.lq)) if bad]
    return (f"decode cases need a causal layer problem with 1 <= {DECODE_STEP_ARG} < L; {problem.id} lacks "
            + " and ".join(what))


def skip_reason(variant: Variant, problem: Problem) -> Optional[str]:
    """Why ``variant`` has no decode case on ``problem`` (a declared limitation), or None."""
    if not isinstance(variant, LayerVariant) or not variant.decodes:
        return f"{variant.name} declares no incremental decoding (LayerVariant.decodes is False)"
    why = problem_reason(problem)
    if why:
        return why
    reasons = variant.unsupported(problem)
    return "; ".join(reasons) if reasons else None


def timed_step(case: Case) -> tuple[Callable[[], torch.Tensor], Callable[[], None]]:
    """(the timed step, its untimed per-call setup) of a decode case; the prefill runs here, once."""
    variant, problem = case.variant, case.problem
    assert isinstance(variant, LayerVariant) and case.module is not None
    s = step_size(problem)
    x = case.inputs["x"]
    module = case.module
    if case.reset is not None:
        case.reset()
    with torch.no_grad():
        _, prefilled = variant.prefill(module, x[:, : problem.lq - s])
    x_new = x[:, problem.lq - s:]
    state: dict[str, Any] = {}

    def setup() -> None:
        state["cache"] = copy.deepcopy(prefilled)  # tensors inside are cloned: the prefill stays as it was

    def step() -> torch.Tensor:
        with torch.no_grad():
            out, _ = variant.step(module, x_new, state.pop("cache"))
        return out

    return step, setup


def output_shape(problem: Problem) -> tuple[int, ...]:
    """The output contract of one step: (batch, decode_step, d_model)."""
    return (problem.batch, step_size(problem), problem.d_model)


def reference_rows(problem: Problem) -> slice:
    """The rows of the full forward that one step's output must equal."""
    return slice(problem.lq - step_size(problem), problem.lq)
