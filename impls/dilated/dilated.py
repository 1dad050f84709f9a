"""Dilated attention (LongNet) kernel variants: q, k, v (b, h, L, d) to o, family ``dilated``.

The semantics and the float64 oracle live in :mod:`.dilated_oracle`. Each group
(segment w, dilation r) attends inside its sparsified segments (head h keeps rows h % r, h % r + r,
... of each segment) and returns per-row outputs and log-sum-exps; the groups are mixed per row by
their softmax denominators (:func:`mix_groups`).

- ``dilated-explicit``: a plain loop over groups, heads and segments, one small softmax each;
- ``dilated-gather``: per group, one gather of every head's kept rows into a
  (b, h, segments, slots, d) tensor, one batched masked attention, one gather back to positions.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from attnsuite.problem import Problem
from attnsuite.registry import KernelVariant, register

from . import dilated_oracle


def mix_groups(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Mix group outputs (b, h, L, dv) by exp(lse) (b, h, L); -inf lse means "does not cover".

    Rows no group covers come out as zero. The shift by the running max is detached: the mixture
    does not depend on it mathematically, and a -inf max must not put NaN into the gradient.
    """
    lse = torch.stack(lses)  # (G, b, h, L)
    top = lse.detach().amax(dim=0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lse - top)  # exp(-inf) = 0 for groups that do not cover a row
    denom = w.sum(dim=0)
    covered = denom > 0
    w = w / torch.where(covered, denom, torch.ones_like(denom))
    return (w.unsqueeze(-1) * torch.stack(outs)).sum(dim=0)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics in float32, or float64 for float64 inputs (never a silent downcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _segment_attention(qs, ks, vs, scale: float, causal: bool):
    """(out, lse) of one sparsified segment; q/k/v (b, n, d)."""
    s = torch.matmul(qs, ks.transpose(-2, -1)).to(acc_dtype(qs.dtype)) * scale
    if causal:
        n = s.shape[-1]
        keep = torch.ones(n, n, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))  # kept rows are in order: causal by original position
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1)).to(vs.dtype)
    return torch.matmul(p, vs), lse


class _DilatedVariant(KernelVariant):
    """Shared capabilities of the ``dilated`` variants; a problem without a valid config is refused."""

    family = "dilated"
    masks = frozenset({"none", "causal"})
    features = frozenset({"dv_ne_dqk"})

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        try:
            dilated_oracle.config(problem)
        except ValueError as exc:
            return [str(exc)]
        return []


@register
class DilatedExplicit(_DilatedVariant):
    name = "dilated-explicit"
    description = "LongNet dilated attention, Python loop over groups, heads and segments"
    backend = "eager-loop"

    def build(self, problem: Problem):
        segments, dilations = dilated_oracle.config(problem)
        scale, causal = problem.softmax_scale, problem.mask.kind == "causal"
        L, H = problem.lq, problem.hq
        plan = []  # per group, per head: (all kept rows, [rows of each segment])
        for w, r in zip(segments, dilations):
            per_head = []
            for h in range(H):
                segs = [torch.as_tensor(rows, device=problem.device)
                        for rows in dilated_oracle.segment_rows(L, w, r, h % r)]
                per_head.append((torch.cat(segs) if segs else None, segs))
            plan.append(per_head)

        def run(q, k, v):
            b, dv = q.shape[0], v.shape[-1]
            outs, lses = [], []
            for per_head in plan:
                o_heads, l_heads = [], []
                for h, (all_rows, segs) in enumerate(per_head):
                    o_h = q.new_zeros(b, L, dv)
                    l_h = torch.full((b, L), float("-inf"), device=q.device, dtype=acc_dtype(q.dtype))
                    if all_rows is not None:
                        parts = [_segment_attention(q[:, h, rows], k[:, h, rows], v[:, h, rows], scale, causal)
                                 for rows in segs]
                        o_h = o_h.index_copy(1, all_rows, torch.cat([p[0] for p in parts], dim=1))
                        l_h = l_h.index_copy(1, all_rows, torch.cat([p[1] for p in parts], dim=1))
                    o_heads.append(o_h)
                    l_heads.append(l_h)
                outs.append(torch.stack(o_heads, dim=1))
                lses.append(torch.stack(l_heads, dim=1))
            return mix_groups(outs, lses).to(q.dtype)

        return run


def gather_plan(L: int, H: int, w: int, r: int, device, offsets: Optional[Sequence[int]] = None) -> dict:
    """Index tensors of one group for the gather variant.

    ``offsets`` (one per head) overrides the head offsets h % r; only the mutation tests use it.

    ``slot_pos`` (H, S, m): the position each (segment, slot) of each head reads (clamped to 0 where
    the slot is padding), ``slot_ok`` (H, S, m): True for real slots; ``row_slot`` (H, L): for every
    position the flat slot s * m + t holding it, ``row_ok`` (H, L): True where this group covers
    the position for that head.
    """
    w = min(w, L)  # a sequence shorter than a segment is one segment
    S, m = math.ceil(L / w), math.ceil(w / r)
    if offsets is None:
        off = (torch.arange(H, device=device) % r)[:, None, None]
    else:
        off = torch.as_tensor(list(offsets), device=device)[:, None, None]
    seg = torch.arange(S, device=device)[None, :, None]
    t = torch.arange(m, device=device)[None, None, :]
    within = off + t * r
    pos = seg * w + within
    slot_ok = (within < w) & (pos < L)
    i = torch.arange(L, device=device)[None, :]
    inside = i % w
    rel = inside - off[:, :, 0]
    row_ok = (rel >= 0) & (rel % r == 0)
    row_slot = (i // w) * m + torch.div(rel, r, rounding_mode="floor").clamp(min=0)
    return {"slot_pos": torch.where(slot_ok, pos, torch.zeros_like(pos)), "slot_ok": slot_ok,
            "row_slot": torch.where(row_ok, row_slot, torch.zeros_like(row_slot)), "row_ok": row_ok, "m": m}


def gathered_group_attention(q, k, v, plan: dict, scale: float, causal: bool):
    """(out (b, h, L, dv), lse (b, h, L) with -inf off the group) of one group, batched over segments."""
    b, H, L, _ = q.shape
    heads = torch.arange(H, device=q.device)[:, None, None]
    pos = plan["slot_pos"]
    qg, kg, vg = q[:, heads, pos], k[:, heads, pos], v[:, heads, pos]  # (b, H, S, m, d)
    m = plan["m"]
    allowed = plan["slot_ok"][:, :, None, :].expand(H, pos.shape[1], m, m)
    if causal:
        allowed = allowed & torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
    # padding query slots may have no key at all: let them see everything (their rows are discarded)
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    s = torch.matmul(qg, kg.transpose(-2, -1)).to(acc_dtype(q.dtype)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.exp(s - lse.unsqueeze(-1)).to(v.dtype), vg)  # (b, H, S, m, dv)
    flat_o, flat_l = o.flatten(2, 3), lse.flatten(2, 3)
    idx = plan["row_slot"]  # (H, L)
    h2 = torch.arange(H, device=q.device)[:, None]
    out = flat_o[:, h2, idx]  # (b, H, L, dv)
    row_ok = plan["row_ok"]
    out = torch.where(row_ok[None, :, :, None], out, torch.zeros_like(out))
    lse_rows = torch.where(row_ok[None], flat_l[:, h2, idx], torch.full_like(flat_l[:, h2, idx], float("-inf")))
    return out, lse_rows


@register
class DilatedGather(_DilatedVariant):
    name = "dilated-gather"
    description = "LongNet dilated attention: per group one gather, one batched masked attention, one gather back"
    backend = "eager-gather"

    def build(self, problem: Problem):
        segments, dilations = dilated_oracle.config(problem)
        plans = [gather_plan(problem.lq, problem.hq, w, r, problem.device) for w, r in zip(segments, dilations)]
        scale, causal = problem.softmax_scale, problem.mask.kind == "causal"

        def run(q, k, v):
            parts = [gathered_group_attention(q, k, v, plan, scale, causal) for plan in plans]
            return mix_groups([p[0] for p in parts], [p[1] for p in parts]).to(q.dtype)

        return run
