"""The suite's checks (attnsuite/checks.py), unchanged, applied to a distributed variant on P ranks.

:class:`OnRanks` presents a distributed variant on a :class:`RankPool` as an ordinary kernel
variant: its function sends q, k, v to the ranks and returns the gathered output; its backward
sends the output gradient and returns the gathered dq, dk, dv. So ``checks.check_forward``,
``check_backward``, ``check_causality``, ``check_repeat`` and ``check_backward_repeat`` run exactly
as for every other variant (same oracle, same tolerance rule, the contract's every-element-written
check on the gathered output).
:func:`check_lse` adds the one thing only a distributed variant returns: its log-sum-exp.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import checks, mask_mods, oracle, registry
from ..case import prepare
from ..inputs import to_torch
from ..checks import CheckResult
from ..problem import Problem
from ..registry import KernelVariant
from ..tolerance import compare
from .launch import RankPool
from .run import Gathered, call
from .variant import DistributedVariant

# repeat and backward-repeat as for every variant: state a rank keeps between calls (a receive buffer
# never refilled, gradients added into a buffer never cleared) shows only in a second call
CHECKS = ("forward", "lse", "backward", "causality", "repeat", "backward-repeat")


class _OnRanksCall(torch.autograd.Function):
    """Forward on the ranks; backward on the ranks again (forward recomputed there with the output gradient)."""

    @staticmethod
    def forward(ctx, runner: "OnRanks", problem: Problem, q, k, v):
        ctx.runner, ctx.problem = runner, problem
        ctx.save_for_backward(q, k, v)
        got = runner.run(problem, q, k, v)
        return got.out.to(q.device)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        got = ctx.runner.run(ctx.problem, q, k, v, grad_out)
        grads = [None if got.grads[n] is None else got.grads[n].to(q.device) for n in ("q", "k", "v")]
        return (None, None, *grads)


class OnRanks(KernelVariant):
    """A distributed variant on ``pool``'s P ranks, seen by the checks as a kernel variant named ``name[P=n]``."""

    def __init__(self, variant: DistributedVariant, pool: RankPool) -> None:
        self.inner, self.pool = variant, pool
        self.name = f"{variant.name}[P={pool.world_size}]"
        for attr in ("family", "devices", "dtypes", "masks", "features", "backward_devices", "deterministic",
                     "nondeterministic_backward_devices", "backend", "description"):
            setattr(self, attr, getattr(variant, attr))
        self.last: Optional[Gathered] = None  # the most recent gathered result (lse, bytes sent)

    def unsupported(self, problem: Problem, backward: bool = False) -> list[str]:
        return self.inner.unsupported(problem, backward, world_size=self.pool.world_size)

    def run(self, problem: Problem, q, k, v, grad_out=None) -> Gathered:
        """One call on the ranks (with backward when ``grad_out`` is given)."""
        self.last = call(self.pool, self.inner, problem, {"q": q, "k": k, "v": v}, grad_out)
        return self.last

    def build(self, problem: Problem):
        def fn(q, k, v):
            return _OnRanksCall.apply(self, problem, q, k, v)

        return fn


def _base_lse(problem: Problem) -> torch.Tensor:
    """log-sum-exp of the scores computed plainly in the problem's dtype: the noise level for the lse."""
    inputs = registry.family("attention").inputs(problem)[0]
    q, k = to_torch(inputs["q"], problem), to_torch(inputs["k"], problem)
    k = k.repeat_interleave(problem.hq // problem.hkv, dim=1)
    s = (q * problem.softmax_scale) @ k.transpose(-2, -1)
    allowed = mask_mods.dense_bool_mask(problem, str(q.device))
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.logsumexp(s, dim=-1)


def check_lse(variant: OnRanks, problem: Problem) -> CheckResult:
    """The gathered log-sum-exp against the oracle's, by the tolerance rule (rows that see a key)."""

    def body(result: CheckResult) -> None:
        prepare(variant, problem, requires_grad=False).forward()
        lse = variant.last.lse
        if lse is None:
            result.passed = False
            result.details.append(f"{variant.inner.name} declares returns_lse but returned none" if
                                  variant.inner.returns_lse else
                                  f"{variant.inner.name} does not declare returns_lse: there is no log-sum-exp "
                                  "to check (skip_reason('lse', ...) says so before a check is run)")
            return
        ref = oracle.solve(problem, with_grad=False).lse
        rows = checks.live_rows(problem)
        # compare() selects rows on the second-to-last axis: give the lse a trailing axis
        c = compare("lse", lse[..., None], np.asarray(ref)[..., None], _base_lse(problem)[..., None],
                    problem.dtype, "output", rows)
        if not c.passed:
            result.passed = False
            result.details.append(c.describe())

    return checks._guarded("lse", variant, problem, body)


def skip_reason(check: str, variant: OnRanks, problem: Problem) -> Optional[str]:
    """Why ``check`` does not apply (None when it does); 'lse' needs a variant that returns one."""
    if check == "lse":
        if not variant.inner.returns_lse:
            return f"{variant.inner.name} does not return a log-sum-exp"
        return checks.skip_reason("forward", variant, problem)
    return checks.skip_reason(check, variant, problem)


def run_check(check: str, variant: OnRanks, problem: Problem) -> CheckResult:
    """Run one of :data:`CHECKS` on the ranks."""
    if check == "lse":
        return check_lse(variant, problem)
    return checks.CHECKS[check](variant, problem)
