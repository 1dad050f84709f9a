"""Attention dropout in the explicit form: O = (P * M / (1 - p)) V with M ~ Bernoulli(1 - p) per (query, key).

``explicit-dropout`` is the explicit matmul-softmax variant with dropout on the attention
probabilities, drawn from a generator seeded by the problem (the same seed gives the same mask, so
two identical runs agree bit for bit). With ``p == 0`` no mask is drawn and no rescale happens, so
the result is bitwise the explicit variant's (checked in ``test_correctness/test_dropout.py``).
The float64 oracle has no dropout, so the suite's generic checks see this variant only on
problems with ``dropout == 0``; the statistics of ``p > 0`` are tested separately.
"""

from __future__ import annotations

from typing import Optional

import torch

from attnsuite import mask_mods
from attnsuite.problem import MASK_KINDS, Mask, Problem
from attnsuite.registry import KernelVariant, register

from .dense_kernel import dead_rows, explicit_attention


def dropout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    allowed: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    softcap: Optional[float] = None,
    p: float = 0.0,
    generator: Optional[torch.Generator] = None,
    return_keep: bool = False,
    dead: Optional[torch.Tensor] = None,
):
    """Explicit attention with dropout ``p`` on the probabilities; optionally also the keep mask.

    ``attnsuite.variant_math.explicit_attention`` with a dropout hook between softmax and the matmul
    with V, so ``p == 0`` (no hook) reproduces it bit for bit.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = None

    def drop(probs: torch.Tensor) -> torch.Tensor:
        nonlocal keep
        # uniform in [0, 1) from the caller's generator: P(u >= p) = 1 - p (to 2^-24)
        u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float32)
        keep = u >= p
        return probs * keep.to(probs.dtype) / (1.0 - p)

    out = explicit_attention(q, k, v, scale, allowed, bias, softcap, drop if p > 0.0 else None, dead=dead)
    return (out, keep) if return_keep else out


@register
class ExplicitDropout(KernelVariant):
    name = "explicit-dropout"
    description = "explicit matmul-softmax with seeded dropout on the attention probabilities"
    masks = frozenset(MASK_KINDS)
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "alibi", "softcap", "custom_scale",
                          "dropout"})
    backend = "eager-matmul+dropout"

    def build(self, problem: Problem):
        """Masks and ALiBi built once; each call reseeds its generator, so runs repeat exactly."""
        allowed = mask_mods.dense_bool_mask(problem)
        dead = dead_rows(allowed)
        bias = (mask_mods.additive_bias(problem.with_(mask=Mask(align=problem.mask.align)),
                                        getattr(torch, problem.dtype)) if problem.alibi else None)
        scale, cap, p, seed = problem.softmax_scale, problem.softcap, problem.dropout, problem.seed
        device = problem.device

        def run(q, k, v):
            gen = torch.Generator(device=device).manual_seed(seed) if p > 0 else None
            return dropout_attention(q, k, v, scale, allowed, bias, cap, p, gen, dead=dead)

        return run
