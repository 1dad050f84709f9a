"""Ring attention's merge step, simulated in one process with P virtual ranks.

The query sequence is split into P chunks (as even as possible, or the sizes given), and so is the
key/value sequence. Rank r keeps its query chunk; at step s it holds key/value block (r - s) mod P,
as if the blocks were passed one hop around the ring per step. Each rank folds every block into its
running online-softmax state (running max m, running denominator l, unnormalised accumulator) and
divides once at the end. Masks and score modifiers are evaluated at GLOBAL positions (the block's
offsets added), so causality, sliding windows, documents, ALiBi etc. mean the same as in one piece;
a block the mask hides entirely is skipped, as a real ring implementation skips it.

Registered as kernel variants of the ``attention`` family, so the generic checks compare them with
the float64 oracle: ``ring-sim`` (P from ``problem.arg("ranks", 2)``) and ``ring-sim-p3`` (three
ranks, uneven chunks for most lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch

from attnsuite import mask_mods
from attnsuite.problem import MASK_KINDS, Problem
from attnsuite.registry import KernelVariant, register


def chunk_sizes(length: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous chunks covering ``length`` (first ones one longer; some may be 0)."""
    base, extra = divmod(length, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _starts(sizes: Sequence[int]) -> list[int]:
    out, at = [], 0
    for n in sizes:
        out.append(at)
        at += n
    return out


class RingState:
    """One rank's online-softmax state over the blocks seen so far."""

    def __init__(self, q: torch.Tensor, dv: int, acc: torch.dtype) -> None:
        b, h, n, _ = q.shape
        self.m = torch.full((b, h, n), float("-inf"), dtype=acc, device=q.device)  # running max
        self.l = torch.zeros((b, h, n), dtype=acc, device=q.device)  # running denominator
        self.acc = torch.zeros((b, h, n, dv), dtype=acc, device=q.device)  # running sum of p v

    def update(self, s: torch.Tensor, v: torch.Tensor, rescale: bool = True) -> None:
        """Fold one block of masked scores s (b, h, nq, nk; -inf = hidden) and values v in.

        The old state is rescaled by exp(m_old - m_new); ``rescale=False`` exists only for the
        mutation test that shows a merge without it is caught.
        """
        m_new = torch.maximum(self.m, s.detach().amax(dim=-1))  # a shift: detached, the result is independent of it
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        p = torch.exp(s - m_safe.unsqueeze(-1))  # hidden scores give exp(-inf) = 0
        alpha = torch.exp(self.m - m_safe) if rescale else torch.ones_like(self.m)
        self.l = alpha * self.l + p.sum(dim=-1)
        self.acc = alpha.unsqueeze(-1) * self.acc + torch.matmul(p, v.to(p.dtype))
        self.m = m_new

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised output, log-sum-exp); rows that saw no key come out as 0 and -inf."""
        live = self.l > 0
        out = self.acc / torch.where(live, self.l, torch.ones_like(self.l)).unsqueeze(-1)
        out = torch.where(live.unsqueeze(-1), out, torch.zeros_like(out))
        lse = torch.where(live, self.m + torch.log(torch.where(live, self.l, torch.ones_like(self.l))),
                          torch.full_like(self.l, float("-inf")))
        return out, lse


# The GEMM returning fp32 from half inputs (CUDA, torch 2.8 and later; it has no autograd formula).
_HALF_GEMM_TO_FP32 = hasattr(torch.ops.aten.bmm, "dtype")


class _HalfScores(torch.autograd.Function):
    """q k^T of (n, nq, d) and (n, nk, d) half-precision stacks with an fp32 result.

    The backward is the half GEMM's own: the score gradient rounded once to the inputs' dtype, then
    two GEMMs in it, as a fused kernel's backward does (and as autograd did for the half matmul).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k)
        if q.is_cuda and _HALF_GEMM_TO_FP32:
            return torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)
        return torch.bmm(q.float(), k.float().transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = ctx.saved_tensors
        grad = grad.to(q.dtype)
        return torch.bmm(grad, k), torch.bmm(grad.transpose(1, 2), q)


def block_scores(q: torch.Tensor, k: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """q k^T of one block, (b, h, nq, nk), summed and returned in ``acc`` precision.

    A fused attention kernel keeps its scores in fp32; a plain half-precision matmul rounds them to
    the input dtype first, and at logits of a few hundred that rounding alone moves them by a
    quarter and the softmax weights by a quarter too: ring-sim failed the large-logits problem in
    fp16 for it, on CUDA and on CPU alike. On CUDA the GEMM itself returns fp32 from half inputs
    (no slower than the half GEMM); elsewhere both sides are upcast first.
    """
    if q.dtype not in (torch.float16, torch.bfloat16):
        return torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1))
    b, h, nq, d = q.shape
    nk = k.shape[2]
    s = _HalfScores.apply(q.reshape(b * h, nq, d), k.reshape(b * h, nk, d))
    return s.view(b, h, nq, nk).to(acc)


@dataclass
class RingPlan:
    """What every call of one ring simulation shares, worked out once per problem and device.

    ``live[r]`` lists the source blocks rank r folds in, in ring order: the blocks the mask hides
    entirely are left out here rather than tested in each call, where the test would read a device
    value back to the host every call (a synchronisation, and what kept CUDA graphs from capturing
    the step: its device time then needed the profiler).
    """

    q_sizes: list[int]
    kv_sizes: list[int]
    q_starts: list[int]
    kv_starts: list[int]
    mmod: Optional[mask_mods.MaskMod]
    smod: Optional[mask_mods.ScoreMod]
    heads: torch.Tensor  # (1, hq, 1, 1) head indices for score modifiers
    zero: torch.Tensor  # the batch index the modifiers see
    live: list[list[int]]


def ring_plan(problem: Problem, ranks: int, device: str, q_sizes: Optional[Sequence[int]] = None,
              kv_sizes: Optional[Sequence[int]] = None) -> RingPlan:
    """The :class:`RingPlan` of ``problem`` on ``ranks`` simulated ranks (even chunks unless sizes are given).

    ``q_sizes`` / ``kv_sizes`` must each have ``ranks`` entries summing to lq / lk.
    """
    if ranks < 1:
        raise ValueError(f"ring attention needs at least 1 rank, got {ranks}")
    q_sizes = list(q_sizes) if q_sizes is not None else chunk_sizes(problem.lq, ranks)
    kv_sizes = list(kv_sizes) if kv_sizes is not None else chunk_sizes(problem.lk, ranks)
    for what, sizes, total in (("q_sizes", q_sizes, problem.lq), ("kv_sizes", kv_sizes, problem.lk)):
        if len(sizes) != ranks or sum(sizes) != total or min(sizes) < 0:
            raise ValueError(f"ring attention: {what}={sizes} must be {ranks} non-negative sizes summing to {total}")
    q_starts, kv_starts = _starts(q_sizes), _starts(kv_sizes)
    mmod = mask_mods.mask_mod(problem, device)
    zero = torch.zeros((), dtype=torch.long, device=device)
    live = []
    for r in range(ranks):
        blocks = []
        qi = torch.arange(q_starts[r], q_starts[r] + q_sizes[r], device=device)[:, None]
        for step in range(ranks):
            src = (r - step) % ranks  # the block that reached rank r after `step` hops
            if q_sizes[r] == 0 or kv_sizes[src] == 0:
                continue
            kj = torch.arange(kv_starts[src], kv_starts[src] + kv_sizes[src], device=device)[None, :]
            if mmod is not None and not bool(mmod(zero, zero, qi, kj).any()):
                continue  # the mask hides the whole block: nothing to compute or merge
            blocks.append(src)
        live.append(blocks)
    return RingPlan(q_sizes, kv_sizes, q_starts, kv_starts, mmod, mask_mods.score_mod(problem, device),
                    torch.arange(problem.hq, device=device)[None, :, None, None], zero, live)


def ring_attention(
    problem: Problem,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranks: int,
    q_sizes: Optional[Sequence[int]] = None,
    kv_sizes: Optional[Sequence[int]] = None,
    rescale: bool = True,
    plan: Optional[RingPlan] = None,
) -> torch.Tensor:
    """Attention of the problem computed by ``ranks`` simulated ring ranks; same contract as the oracle.

    ``q_sizes`` / ``kv_sizes`` override the even split (each must have ``ranks`` entries summing to
    lq / lk). ``plan`` (from :func:`ring_plan`, for q's device) is made here when not given.
    Returns (b, hq, lq, dv) in q's dtype.
    """
    if plan is None:
        plan = ring_plan(problem, ranks, str(q.device), q_sizes, kv_sizes)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = problem.hq // problem.hkv
    if group > 1:  # GQA: every query head reads its key/value head h * hkv // hq
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mmod, smod, zero = plan.mmod, plan.smod, plan.zero
    outs = []
    for r, blocks in enumerate(plan.live):
        nq, q0 = plan.q_sizes[r], plan.q_starts[r]
        if nq == 0:
            continue
        q_r = q[:, :, q0 : q0 + nq]
        qi = torch.arange(q0, q0 + nq, device=q.device)[:, None]  # global query positions
        state = RingState(q_r, v.shape[-1], acc)
        for src in blocks:
            nk, k0 = plan.kv_sizes[src], plan.kv_starts[src]
            kj = torch.arange(k0, k0 + nk, device=q.device)[None, :]
            k_b = k[:, :, k0 : k0 + nk]
            v_b = v[:, :, k0 : k0 + nk]
            s = block_scores(q_r, k_b, acc) * problem.softmax_scale
            if smod is not None:
                s = smod(s, zero, plan.heads, qi, kj)
            if mmod is not None:
                s = s.masked_fill(~torch.broadcast_to(mmod(zero, zero, qi, kj), (nq, nk)), float("-inf"))
            state.update(s, v_b, rescale=rescale)
        outs.append(state.result()[0])
    return torch.cat(outs, dim=2).to(q.dtype)


class _RingSim(KernelVariant):
    family = "attention"
    masks = frozenset(MASK_KINDS)
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "alibi", "softcap", "custom_scale"})
    backend = "ring-sim"
    fixed_ranks: ClassVar[Optional[int]] = None
    args = frozenset({"ranks"})  # how many ranks are simulated: how it computes, not what

    def ranks(self, problem: Problem) -> int:
        """How many virtual ranks this variant uses on ``problem``."""
        return self.fixed_ranks if self.fixed_ranks is not None else problem.arg("ranks", 2)

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        p = self.ranks(problem)
        if not isinstance(p, int) or p < 1:
            return [f"{self.name}: problem arg ranks={p!r} is not a positive int"]
        return []

    def build(self, problem: Problem):
        ranks = self.ranks(problem)
        plan = ring_plan(problem, ranks, problem.device)

        def run(q, k, v):
            return ring_attention(problem, q, k, v, ranks, plan=plan)

        return run


@register
class RingSim(_RingSim):
    name = "ring-sim"
    description = "ring attention simulated in one process: P ranks (problem arg 'ranks', default 2), online-softmax merge"


@register
class RingSimP3(_RingSim):
    name = "ring-sim-p3"
    description = "ring attention simulated with 3 ranks (uneven chunks), online-softmax merge at global positions"
    fixed_ranks = 3
