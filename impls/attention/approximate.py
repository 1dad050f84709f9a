"""Reference approximate kernels: 8-bit "fake-quant" attention that declares its accuracy class.

These are the yardsticks of the approximate accuracy classes (attnsuite/tolerance.py,
``APPROXIMATE_BUDGET``; docs/approximate.md): what an FP8 or INT8 attention kernel loses, computed
in torch on any device so the budgets can be measured on a CPU. Quantisation is simulated: values
are rounded to the 8-bit format and scaled back, and the arithmetic runs in float32.

- ``fp8-fakequant`` (accuracy ``fp8``): Q, K and V rounded to float8 e4m3 with one scale per token
  (amax / 448 over the head dim), P = exp(s - rowmax) rounded to e4m3 at the fixed scale 448 (P is
  in [0, 1]), the row sum taken before P is rounded: the recipe of FP8 flash-attention forwards.
- ``int8-fakequant`` (accuracy ``int8``): Q and K rounded to int8 with one scale per token
  (amax / 127), P and V rounded to float16: the SageAttention recipe (8-bit QK^T, 16-bit PV).

Scales are per token on purpose: a per-tensor or per-block scale over keys lets a future key change
the rounding of a visible key, which the causality check would rightly see as a (tiny) future leak.
Gradients pass straight through the rounding (the straight-through estimator), so backward is the
exact backward of the quantised forward's graph; real FP8/INT8 kernels are mostly forward only.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from attnsuite import mask_mods
from attnsuite.problem import MASK_KINDS, Problem
from attnsuite.registry import KernelVariant, register

E4M3_MAX = 448.0  # largest finite float8 e4m3fn value
INT8_MAX = 127.0

Quantiser = Callable[[torch.Tensor], torch.Tensor]


def straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded`` in the forward, identity in the backward (gradients pass through the rounding)."""
    return x + (rounded - x).detach()


def _per_token_scale(x: torch.Tensor, top: float) -> torch.Tensor:
    """One scale per vector along the last axis: amax / top (1 for an all-zero vector)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True)
    return torch.where(amax > 0, amax / top, torch.ones_like(amax))


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Round to float8 e4m3 with one scale per token (last axis), back in x's dtype."""
    scale = _per_token_scale(x, E4M3_MAX)
    return straight_through(x, (x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale)


def int8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Round to symmetric int8 with one scale per token (last axis), back in x's dtype."""
    scale = _per_token_scale(x, INT8_MAX)
    return straight_through(x, torch.round(x / scale).clamp(-INT8_MAX, INT8_MAX) * scale)


def fp8_probabilities(p: torch.Tensor) -> torch.Tensor:
    """Round probabilities in [0, 1] to e4m3 at the fixed scale 448 (1.0 maps to e4m3's largest value)."""
    return straight_through(p, (p * E4M3_MAX).to(torch.float8_e4m3fn).to(p.dtype) / E4M3_MAX)


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to float16 (the 16-bit PV product of SageAttention)."""
    return straight_through(x, x.to(torch.float16).to(x.dtype))


def quantised_attention(q, k, v, scale: float, allowed, qk: Quantiser, pv: Quantiser, p_round: Quantiser):
    """Attention with Q, K rounded by ``qk``, V by ``pv`` and the unnormalised P by ``p_round``;
    float32 arithmetic, output in q's dtype. Rows with no allowed key give zeros (the oracle's rule)."""
    dtype = q.dtype
    q, k, v = (t.float() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    q, k, v = qk(q), qk(k), pv(v)
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()  # dead rows: exp(-inf) = 0
    p = torch.exp(s - m)
    rowsum = p.sum(dim=-1, keepdim=True)  # before P is rounded, as flash kernels accumulate it
    o = torch.matmul(p_round(p), v) / torch.where(rowsum > 0, rowsum, torch.ones_like(rowsum))
    return o.to(dtype)


class _FakeQuant(KernelVariant):
    masks = frozenset(MASK_KINDS)
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    backend = "eager-fakequant"
    qk: ClassVar[Quantiser]
    pv: ClassVar[Quantiser]
    p_round: ClassVar[Quantiser]

    def build(self, problem: Problem):
        allowed = mask_mods.dense_bool_mask(problem, device=problem.device)
        scale = problem.softmax_scale
        qk, pv, p_round = type(self).qk, type(self).pv, type(self).p_round

        def run(q, k, v):
            return quantised_attention(q, k, v, scale, allowed, qk, pv, p_round)

        return run


@register
class Fp8FakeQuant(_FakeQuant):
    name = "fp8-fakequant"
    accuracy = "fp8"
    description = "FP8 e4m3 fake-quant attention (Q, K, V per token; P at scale 448): the fp8 class's yardstick"
    qk = staticmethod(fp8_per_token)
    pv = staticmethod(fp8_per_token)
    p_round = staticmethod(fp8_probabilities)


@register
class Int8FakeQuant(_FakeQuant):
    name = "int8-fakequant"
    accuracy = "int8"
    description = "INT8 QK^T (per token) with fp16 P and V, SageAttention's recipe: the int8 class's yardstick"
    qk = staticmethod(int8_per_token)
    pv = staticmethod(fp16)
    p_round = staticmethod(fp16)
