"""Multi-head latent attention layers (DeepSeek-V3 MLA) and plain latent attention layers.

Two forms of the same function each (families ``mla-layer`` and ``latent-layer``, references in
:mod:`.mla_oracle`):

- *expanded*: decompress K and V per head from the latent (``wkv_b``), then ordinary multi-head
  attention through SDPA;
- *absorbed* (the decode form of DeepSeek-V3's inference code): fold the key half of ``wkv_b`` into
  the query, attend against the compressed latent itself (plus the shared RoPE key for MLA): that is
  multi-query attention with one K/V head of width kv_lora (+ rope), so SDPA runs it with
  ``enable_gqa``; the value half of ``wkv_b`` is applied to the attended latent afterwards.
  Its KV cache is the latent (kv_lora + rope per token) instead of H * (dqk + dv).

Both forms load the family's canonical parameters under their canonical names, so the default
``canonical_grads`` hands the gradients back unchanged.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attnsuite.problem import Problem
from attnsuite.registry import LayerVariant, register
from attnsuite.variant_math import SDPA_NONDETERMINISTIC_BACKWARD, causal_lower_right

from . import mla_oracle


def _rope_cos_sin(length: int, rope_dim: int, device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (cos, sin) of shape (length, rope_dim // 2) for positions offset .. offset + length - 1."""
    inv = mla_oracle.ROPE_BASE ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64, device=device) / rope_dim)
    ang = torch.arange(offset, offset + length, dtype=torch.float64, device=device)[:, None] * inv[None]
    return ang.cos(), ang.sin()


def apply_rope(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of z's last axis as complex numbers (DeepSeek-V3's way).

    Half types rotate in float32 and round once at the end; float64 stays float64 (no silent downcast).
    """
    work = torch.float64 if z.dtype == torch.float64 else torch.float32
    zc = torch.view_as_complex(z.to(work).unflatten(-1, (-1, 2)).contiguous())
    rot = torch.view_as_real(zc * torch.complex(cos.to(work), sin.to(work))).flatten(-2)
    return rot.to(z.dtype)


def _sdpa_mask_kwargs(causal: bool, lq: int, lk: int) -> dict:
    if not causal:
        return {}
    if lq == lk:
        return {"is_causal": True}
    return {"attn_mask": causal_lower_right(lq, lk)}  # new queries sit at the end of the cache


class MLA(nn.Module):
    """DeepSeek-V3 multi-head latent attention; ``absorbed`` picks the decode form."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor], absorbed: bool) -> None:
        super().__init__()
        d = mla_oracle.mla_dims(problem)
        self.h, self.dn, self.dr, self.dv = problem.hq, d["nope_dim"], d["rope_dim"], d["v_dim"]
        self.kv_lora = d["kv_lora"]
        self.scale = 1.0 / math.sqrt(self.dn + self.dr)
        self.causal = problem.mask.kind == "causal"
        self.absorbed = absorbed
        for name in mla_oracle.MLA_PARAM_NAMES:
            setattr(self, name, nn.Parameter(params[name].detach().clone()))

    def _project(self, x: torch.Tensor, offset: int = 0):
        """(q_nope, q_pe, c_kv, k_pe) for tokens x at positions offset.., RoPE applied."""
        b, L, _ = x.shape
        cos, sin = _rope_cos_sin(L, self.dr, x.device, offset)
        cq = F.rms_norm(F.linear(x, self.wq_a), (self.wq_a.shape[0],), self.q_norm, mla_oracle.RMS_EPS)
        q = F.linear(cq, self.wq_b).view(b, L, self.h, self.dn + self.dr)
        q_nope, q_pe = q.split([self.dn, self.dr], dim=-1)
        q_pe = apply_rope(q_pe, cos[:, None], sin[:, None])
        c_kv, k_pe = F.linear(x, self.wkv_a).split([self.kv_lora, self.dr], dim=-1)
        c_kv = F.rms_norm(c_kv, (self.kv_lora,), self.kv_norm, mla_oracle.RMS_EPS)
        return q_nope, q_pe, c_kv, apply_rope(k_pe, cos, sin)

    def _attend_expanded(self, q_nope, q_pe, c_kv, k_pe) -> torch.Tensor:
        b, lq, lk = q_nope.shape[0], q_nope.shape[1], c_kv.shape[1]
        kvb = F.linear(c_kv, self.wkv_b).view(b, lk, self.h, self.dn + self.dv)
        k_nope, v = kvb.split([self.dn, self.dv], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_pe[:, :, None, :].expand(b, lk, self.h, self.dr)], dim=-1).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), scale=self.scale,
                                           **_sdpa_mask_kwargs(self.causal, lq, lk))
        return o.transpose(1, 2).reshape(b, lq, self.h * self.dv)

    def _attend_absorbed(self, q_nope, q_pe, c_kv, k_pe) -> torch.Tensor:
        b, lq, lk = q_nope.shape[0], q_nope.shape[1], c_kv.shape[1]
        w = self.wkv_b.view(self.h, self.dn + self.dv, self.kv_lora)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn :]
        q_lat = torch.einsum("blhn,hnc->bhlc", q_nope, w_uk)  # the key up-projection, folded into q
        q = torch.cat([q_lat, q_pe.transpose(1, 2)], dim=-1)  # (b, h, lq, kv_lora + rope)
        k = torch.cat([c_kv, k_pe], dim=-1)[:, None]  # (b, 1, lk, kv_lora + rope): one shared head
        o_lat = F.scaled_dot_product_attention(q, k, c_kv[:, None], scale=self.scale, enable_gqa=True,
                                               **_sdpa_mask_kwargs(self.causal, lq, lk))
        o = torch.einsum("bhlc,hvc->blhv", o_lat, w_uv)  # the value up-projection, after attention
        return o.reshape(b, lq, self.h * self.dv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = MLA(x), self-attention over the whole sequence."""
        q_nope, q_pe, c_kv, k_pe = self._project(x)
        attend = self._attend_absorbed if self.absorbed else self._attend_expanded
        return F.linear(attend(q_nope, q_pe, c_kv, k_pe), self.wo)

    def latent_cache(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decode cache of tokens x: (normalised c_kv, roped k_pe), kv_lora + rope numbers per token."""
        _, _, c_kv, k_pe = self._project(x)
        return c_kv, k_pe

    def decode(self, x_new: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Outputs for new tokens that follow the cached ones (bottom-right causal), growing nothing."""
        return self.step(x_new, cache)[0]

    # Incremental decoding (LayerVariant.prefill/step delegate here): the cache is the latent,
    # (c_kv (b, t, kv_lora), k_pe (b, t, rope)), RoPE applied at each token's own position.

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(y, latent cache) of the first tokens (positions 0 ..)."""
        q_nope, q_pe, c_kv, k_pe = self._project(x)
        attend = self._attend_absorbed if self.absorbed else self._attend_expanded
        return F.linear(attend(q_nope, q_pe, c_kv, k_pe), self.wo), (c_kv, k_pe)

    def step(self, x_new: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        """(y, grown latent cache) of new tokens at the positions after the cached ones."""
        c_old, pe_old = cache
        q_nope, q_pe, c_new, pe_new = self._project(x_new, offset=c_old.shape[1])
        c_kv, k_pe = torch.cat([c_old, c_new], dim=1), torch.cat([pe_old, pe_new], dim=1)
        attend = self._attend_absorbed if self.absorbed else self._attend_expanded
        return F.linear(attend(q_nope, q_pe, c_kv, k_pe), self.wo), (c_kv, k_pe)


class LatentAttention(nn.Module):
    """Plain low-rank latent attention: K and V decompressed from one kv_lora latent per token."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor], absorbed: bool) -> None:
        super().__init__()
        self.r = mla_oracle.latent_rank(problem)
        self.h, self.dqk, self.dv = problem.hq, problem.dqk, problem.dv
        self.scale = problem.softmax_scale
        self.causal = problem.mask.kind == "causal"
        self.absorbed = absorbed
        for name in mla_oracle.LATENT_PARAM_NAMES:
            setattr(self, name, nn.Parameter(params[name].detach().clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(*self._project(x))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (b, h, L, dqk) and the latent c (b, L, kv_lora) of tokens x (no positions: no RoPE)."""
        b, L, _ = x.shape
        return F.linear(x, self.wq).view(b, L, self.h, self.dqk).transpose(1, 2), F.linear(x, self.wkv_a)

    def _attend(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """y of lq queries over the lk >= lq latents c; causal corner bottom-right (top-left = same when lq == lk)."""
        b, _, lq, _ = q.shape
        L = c.shape[1]
        mask_kw = _sdpa_mask_kwargs(self.causal, lq, L)
        if self.absorbed:
            w = self.wkv_b.view(self.h, self.dqk + self.dv, self.r)
            q_lat = torch.einsum("bhld,hdc->bhlc", q, w[:, : self.dqk])
            o_lat = F.scaled_dot_product_attention(q_lat, c[:, None], c[:, None], scale=self.scale,
                                                   enable_gqa=True, **mask_kw)
            o = torch.einsum("bhlc,hvc->blhv", o_lat, w[:, self.dqk :])
        else:
            kvb = F.linear(c, self.wkv_b).view(b, L, self.h, self.dqk + self.dv)
            k, v = kvb.split([self.dqk, self.dv], dim=-1)
            o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), scale=self.scale,
                                               **mask_kw).transpose(1, 2)
        return F.linear(o.reshape(b, lq, self.h * self.dv), self.wo)

    # Incremental decoding (LayerVariant.prefill/step delegate here): the cache is the latent c
    # (b, tokens so far, kv_lora), one vector per token shared by every head.

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, latent cache) of the first tokens."""
        q, c = self._project(x)
        return self._attend(q, c), c

    def step(self, x_new: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, grown latent cache) of new tokens after the cached ones."""
        q, c_new = self._project(x_new)
        c = torch.cat([cache, c_new], dim=1)
        return self._attend(q, c), c


class _LatentVariant(LayerVariant):
    masks = frozenset({"none", "causal"})
    features = frozenset({"dv_ne_dqk"})
    module: ClassVar[type] = MLA
    absorbed: ClassVar[bool] = False
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD  # every form attends through SDPA

    def build(self, problem: Problem, params: dict[str, torch.Tensor]) -> nn.Module:
        """The layer with the canonical parameters copied in."""
        return self.module(problem, params, self.absorbed).to(problem.device)

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        try:
            if self.family == "mla-layer":
                mla_oracle.mla_dims(problem)
            else:
                mla_oracle.latent_rank(problem)
        except ValueError as exc:
            return [str(exc)]
        return []


@register
class MLAExpanded(_LatentVariant):
    name = "mla-expanded"
    family = "mla-layer"
    description = "DeepSeek-V3 MLA, K/V decompressed per head from the latent, SDPA over H heads"
    backend = "sdpa:default"
    decodes = True  # the module's prefill/step over its latent cache


@register
class MLAAbsorbed(_LatentVariant):
    name = "mla-absorbed"
    family = "mla-layer"
    description = "DeepSeek-V3 MLA, absorbed decode form: wkv_b folded into q/out, SDPA MQA over the latent"
    backend = "sdpa:default+gqa"
    decodes = True  # the module's prefill/step over its latent cache
    absorbed = True


@register
class LatentExpanded(_LatentVariant):
    name = "latent-expanded"
    family = "latent-layer"
    description = "plain latent attention, K/V decompressed per head, SDPA"
    backend = "sdpa:default"
    decodes = True  # the module's prefill/step over its latent cache
    module = LatentAttention


@register
class LatentAbsorbed(_LatentVariant):
    name = "latent-absorbed"
    family = "latent-layer"
    description = "plain latent attention, up-projections absorbed, SDPA MQA over the latent"
    backend = "sdpa:default+gqa"
    decodes = True  # the module's prefill/step over its latent cache
    module = LatentAttention
    absorbed = True


def build_module(variant_name: str, problem: Problem, params: Optional[dict] = None) -> nn.Module:
    """Convenience for tests and benchmarks: a built layer of a registered latent variant."""
    from attnsuite import registry
    from attnsuite.inputs import to_torch

    variant = registry.get(variant_name)
    if params is None:
        family = registry.family_of(variant)
        params = {name: to_torch(a, problem) for name, a in family.params(problem).items()}
    return variant.build(problem, params)
