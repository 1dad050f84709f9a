"""Masks and score modifiers in torch, for the variants.

Every mask kind is one FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool`` function;
the dense boolean mask, the additive mask and the BlockMask are all built from it, so the three
forms cannot disagree with each other. The oracle has its own NumPy definition
(:mod:`attnsuite.oracle_mask`), and a test checks the two agree.
Convention everywhere in this suite: a boolean mask is True where attention is *allowed*.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

from .problem import Problem

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def block_mask(problem: Problem, device: Optional[str] = None) -> Any:
    """FlexAttention's BlockMask of the problem's mask (None when nothing is masked), for every batch and head.

    It depends only on the mask, the two lengths and the device, so one is built per process for
    each (the last few kept): the fwd, bwd and fwd+bwd cases of a FlexAttention variant, and the
    other Flex variants of the problem, reuse it. Building one at L 16K took 2.5-2.9 s on an H200,
    14.6 s of a full tier's 21 compiled-Flex cases; a case that reuses one shows the saving in its
    build time (``mask_build_ms``), never in its timed calls, which the BlockMask is outside of.
    """
    # the mask depends on the mask, the lengths and the device alone: key the cache on just those
    shape = Problem(lq=problem.lq, lk=problem.lk, hq=1, hkv=1, mask=problem.mask, device=device or problem.device)
    return _block_mask(shape)


@functools.lru_cache(maxsize=8)
def _block_mask(shape: Problem) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    mmod = mask_mod(shape)
    return None if mmod is None else create_block_mask(mmod, None, None, shape.lq, shape.lk, device=shape.device)


def mask_mod(problem: Problem, device: Optional[str] = None) -> Optional[MaskMod]:
    """The problem's mask as a mask_mod, or None when nothing is masked."""
    m = problem.mask
    off = problem.align_offset
    device = device or problem.device
    if m.kind == "none":
        return None
    if m.kind == "causal":
        return lambda b, h, qi, kj: kj <= qi + off
    if m.kind == "window":
        w = m.window
        return lambda b, h, qi, kj: (kj <= qi + off) & (qi + off - kj <= w)
    if m.kind == "block_causal":
        f = m.block
        return lambda b, h, qi, kj: torch.div(kj, f, rounding_mode="floor") <= torch.div(qi + off, f, rounding_mode="floor")
    if m.kind == "block_sparse":
        blk, seed = m.block, m.seed
        def sparse(b, h, qi, kj):
            qb, kb = qi // blk, kj // blk
            return (qb == kb) | ((qb * 7 + kb * 13 + seed) % 3 == 0)
        return sparse
    if m.kind == "document":
        lens = torch.tensor(m.doc_lens, device=device)
        doc = torch.repeat_interleave(torch.arange(len(m.doc_lens), device=device), lens)
        lk = problem.lk
        causal = m.causal
        def document(b, h, qi, kj):
            pos = qi + off
            inside = (pos >= 0) & (pos < lk)
            same = inside & (doc[pos.clamp(0, lk - 1)] == doc[kj])
            return same & (kj <= pos) if causal else same
        return document
    if m.kind == "prefix":
        pre = m.prefix
        return lambda b, h, qi, kj: (kj < pre) | (kj <= qi + off)
    if m.kind == "random":
        seed, lk = m.seed, problem.lk
        prime = 9973  # = oracle_mask.RANDOM_PRIME; keeps every product inside int32 (Triton indices)
        def random(b, h, qi, kj):
            x = (qi * 37 + (seed % prime) * 101 + 1) % prime
            y = (kj * 53 + 17) % prime
            hashed = (x * y + 3 * x + 5 * y) % 97
            return (hashed < 48) | (kj == (qi * 7 + seed % lk) % lk)
        return random
    raise AssertionError(m.kind)


def dense_bool_mask(problem: Problem, device: Optional[str] = None) -> Optional[torch.Tensor]:
    """(lq, lk) boolean mask, True = allowed; None when nothing is masked."""
    device = device or problem.device
    mod = mask_mod(problem, device)
    if mod is None:
        return None
    qi = torch.arange(problem.lq, device=device)[:, None]
    kj = torch.arange(problem.lk, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return torch.broadcast_to(mod(zero, zero, qi, kj), (problem.lq, problem.lk)).contiguous()


def alibi_slopes(hq: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ALiBi slopes 2^(-8 (h+1) / H), computed in float64 and rounded once to ``dtype``.

    (Computing them in float32 and widening later gave fp64 problems slopes off by ~1e-8
    relative, which the fp64 pass rule rightly calls an error.)
    """
    exps = -8.0 * (torch.arange(hq, device=device, dtype=torch.float64) + 1.0) / hq
    return torch.exp2(exps).to(dtype)


def additive_bias(problem: Problem, dtype: torch.dtype, device: Optional[str] = None) -> Optional[torch.Tensor]:
    """Additive float mask: 0 allowed / -inf masked, plus ALiBi when set.

    Shape (lq, lk), or (hq, lq, lk) with ALiBi. None when there is neither mask nor ALiBi.
    """
    device = device or problem.device
    allowed = dense_bool_mask(problem, device)
    bias = None
    if problem.alibi:
        qi = torch.arange(problem.lq, device=device)[:, None] + problem.align_offset
        kj = torch.arange(problem.lk, device=device)[None, :]
        # float64 then one rounding to ``dtype`` (the product m_h * |i - j| is not exact in fp32)
        dist = (qi - kj).abs().to(torch.float64)
        bias = -alibi_slopes(problem.hq, device, torch.float64)[:, None, None] * dist[None]
    if allowed is not None:
        neg = torch.zeros(allowed.shape, dtype=torch.float64, device=device).masked_fill(~allowed, float("-inf"))
        bias = neg if bias is None else bias + neg
    return None if bias is None else bias.to(dtype)


def score_mod(problem: Problem, device: Optional[str] = None) -> Optional[ScoreMod]:
    """FlexAttention score_mod for ALiBi then softcap; None when the problem has neither."""
    device = device or problem.device
    off = problem.align_offset
    # fp64 problems get fp64 slopes; every other dtype scores in fp32 inside the kernels
    slope_dtype = torch.float64 if problem.dtype == "float64" else torch.float32
    slopes = alibi_slopes(problem.hq, device, slope_dtype) if problem.alibi else None
    cap = problem.softcap
    if slopes is None and cap is None:
        return None

    def mod(score, b, h, qi, kj):
        if slopes is not None:
            score = score - slopes[h] * (qi + off - kj).abs()
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        return score

    return mod
