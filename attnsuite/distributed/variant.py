"""The distributed variant kind: a variant that computes attention on P ranks of a process group.

A :class:`DistributedVariant` is registered like any other variant (``@register``, family and
capabilities declared the same way) but is never called in one process: the suite starts P ranks
(:mod:`attnsuite.distributed.launch`), gives each rank its shard of q, k and v under the layout
the variant asks for (:meth:`DistributedVariant.layout`), and calls the per-rank function that
:meth:`DistributedVariant.build_rank` returns. Called in one process (the generic checks and the
single-process benchmark runner) it declines every problem with a reason that says where it runs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, ContextManager, Optional

import torch

from ..problem import Problem
from ..registry import Variant
from .shard import Layout, layout

# fn(q_shard, k_shard, v_shard) -> (o_shard, lse_shard or None)
RankFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Optional[torch.Tensor]]]


def not_in_process_reason(name: str) -> str:
    """Why a distributed variant is not run by the single-process checks and benchmarks."""
    return (f"{name} is a distributed variant: it runs on P ranks through attnsuite.distributed "
            "(test_correctness/test_distributed.py, attnsuite.distributed.bench), not in one process")


class Refused(RuntimeError):
    """Raised on a rank when the variant finds at run time that it cannot do the call (reported as a skip)."""


REFUSED_TAG = "Refused: "


def refusal(message: str) -> Optional[str]:
    """The reason of a :class:`Refused` raised on a rank, found in a failure message; None if there is none."""
    at = message.find(REFUSED_TAG)
    if at < 0:
        return None
    return message[at + len(REFUSED_TAG):].splitlines()[0].strip()


@dataclass
class RankContext:
    """What one rank knows: its rank, the group, its device, the layout, and a count of bytes it sent."""

    rank: int
    world_size: int
    device: torch.device
    layout: Optional[Layout] = None  # set by the task for the variant it runs
    group: object = None  # the torch.distributed process group (None: the default group)
    bytes_sent: int = 0  # point-to-point and collective payload this rank sent (variants count their own)
    notes: dict = field(default_factory=dict)  # variant facts reported with the result (e.g. "bytes estimated")


class DistributedVariant(Variant):
    """Base of the variants that run on P ranks. Subclasses implement :meth:`build_rank`."""

    level: ClassVar[str] = "kernel"
    family: ClassVar[str] = "attention"
    sharding: ClassVar[str] = "contiguous"  # the layout of q/k/v shards and of the output shard
    returns_lse: ClassVar[bool] = False  # the rank function returns its rows' log-sum-exp

    def layout(self, problem: Problem, world_size: int) -> Layout:
        """The positions each rank holds (default: the class's ``sharding`` for lq and lk)."""
        return layout(self.sharding, problem.lq, problem.lk, world_size)

    def world_reasons(self, problem: Problem, world_size: int, device: str) -> list[str]:
        """Reasons the variant cannot run ``problem`` on ``world_size`` ranks of ``device`` (empty if it can)."""
        return []

    def unsupported(self, problem: Problem, backward: bool = False, world_size: Optional[int] = None) -> list[str]:
        """The declared-capability reasons, plus: no world size (one process) or the world's own reasons."""
        reasons = super().unsupported(problem, backward)
        if world_size is None:
            reasons.append(not_in_process_reason(self.name))
        else:
            if world_size < 1:
                reasons.append(f"{self.name}: world size must be >= 1, got {world_size}")
            else:
                reasons.extend(self.world_reasons(problem, world_size, problem.device.split(":")[0]))
        return reasons

    def rank_scope(self, problem: Problem, ctx: RankContext) -> ContextManager:
        """A context the suite holds open around the calls AND their backward on each rank (default: none).

        For variants that work by patching (PyTorch's context_parallel), whose backward must also
        run while the patch is in place. Benchmarks hold it open around the whole timing loop.
        """
        return contextlib.nullcontext()

    def build_rank(self, problem: Problem, ctx: RankContext) -> RankFn:
        """Prepare on one rank and return ``fn(q, k, v) -> (o, lse or None)`` over that rank's shards.

        The shards are leaf tensors on ``ctx.device`` in the problem's dtype (requiring grad when a
        backward follows); ``o`` must be differentiable with respect to them. ``lse`` (float32 or
        float64, shape (b, hq, rows)) is compared with the oracle's when ``returns_lse`` is set.
        """
        raise NotImplementedError
