"""The ``gqa-layer`` family's variants: llama-style grouped-query attention layers.

The family (canonical parameters, problems, float64 oracle, base) is :mod:`.gqa_oracle`. Every
variant holds the canonical weights ``wq``, ``wk``, ``wv``, ``wo`` under their canonical names.

Variants: ``gqa-layer-repeat`` (K/V heads repeated to hq, explicit matmul-softmax),
``gqa-layer-sdpa`` (SDPA with ``enable_gqa=True``, no repeat), ``gqa-layer-flex`` (compiled
FlexAttention with ``enable_gqa=True``, BlockMask and score_mod).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attnsuite import mask_mods
from attnsuite.problem import MASK_KINDS, Mask, Problem
from attnsuite.registry import LayerVariant, register
from attnsuite.variant_math import SDPA_NONDETERMINISTIC_BACKWARD, causal_lower_right, decode_mask, explicit_attention

from .gqa_oracle import PARAM_NAMES

ALL_MASKS = frozenset(MASK_KINDS)


class GqaModule(nn.Module):
    """Holds the canonical weights under their canonical names; subclasses define the attention core."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor]):
        super().__init__()
        self.problem = problem
        for name in PARAM_NAMES:
            setattr(self, name, nn.Parameter(params[name].detach().clone()))

    def project(self, x: torch.Tensor):
        """q (b, hq, l, dqk), k (b, hkv, l, dqk), v (b, hkv, l, dv)."""
        p = self.problem
        b, l, _ = x.shape
        q = F.linear(x, self.wq).view(b, l, p.hq, p.dqk).transpose(1, 2)
        k = F.linear(x, self.wk).view(b, l, p.hkv, p.dqk).transpose(1, 2)
        v = F.linear(x, self.wv).view(b, l, p.hkv, p.dv).transpose(1, 2)
        return q, k, v

    def attend(self, q, k, v) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        o = self.attend(q, k, v)
        b, h, l, dv = o.shape
        return F.linear(o.transpose(1, 2).reshape(b, l, h * dv), self.wo)

    # Incremental decoding (LayerVariant.prefill/step delegate here). The cache is a
    # past_key_value-style tuple (k, v) of the hkv heads, (b, hkv, tokens so far, d): a GQA cache
    # holds hkv heads, not hq (MQA: one).

    def decode_attend(self, q, k, v) -> torch.Tensor:
        """The attention core for lq new queries over lk >= lq keys, causal corner bottom-right."""
        raise NotImplementedError(f"{type(self).__name__} has no incremental decoding")

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(y, cache) of the first tokens: a step from an empty cache."""
        return self.step(x, None)

    def step(self, x_new: torch.Tensor, cache) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(y, cache) of new tokens after the cached ones; the returned cache holds them too."""
        if self.problem.mask.kind != "causal":
            raise ValueError(f"incremental decoding needs a causal layer, not mask {self.problem.mask.kind!r}")
        q, k, v = self.project(x_new)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        o = self.decode_attend(q, k, v)
        b, h, l, dv = o.shape
        return F.linear(o.transpose(1, 2).reshape(b, l, h * dv), self.wo), (k, v)


class _RepeatModule(GqaModule):
    def __init__(self, problem, params):
        super().__init__(problem, params)
        self.allowed = mask_mods.dense_bool_mask(problem)
        # ALiBi without the mask (the mask is applied by masked_fill below), in the problem dtype
        self.alibi = (mask_mods.additive_bias(problem.with_(mask=Mask(align=problem.mask.align)),
                                              getattr(torch, problem.dtype)) if problem.alibi else None)

    def attend(self, q, k, v):
        # explicit_attention repeats each K/V head g to query heads g*group .. (g+1)*group - 1,
        # i.e. h -> h // group = h*hkv//hq, then runs matmul-softmax with ALiBi, softcap and mask
        p = self.problem
        return explicit_attention(q, k, v, p.softmax_scale, self.allowed, self.alibi, p.softcap)

    def decode_attend(self, q, k, v):
        p = self.problem
        lq, lk = q.shape[-2], k.shape[-2]
        alibi = None
        if p.alibi:  # the same bias as __init__'s, for new queries at positions lk - lq ..
            step = p.with_(lq=lq, lk=lk, d_model=None, mask=Mask(align="bottom_right"))
            alibi = mask_mods.additive_bias(step, q.dtype)
        return explicit_attention(q, k, v, p.softmax_scale, decode_mask(lq, lk, q.device), alibi, p.softcap)


class _SdpaModule(GqaModule):
    def __init__(self, problem, params):
        super().__init__(problem, params)
        self.kw = {"scale": problem.softmax_scale, "enable_gqa": problem.hkv != problem.hq}
        if problem.mask.kind == "causal":
            self.kw["is_causal"] = True  # self-attention: both corners coincide
        elif problem.mask.kind != "none":
            self.kw["attn_mask"] = mask_mods.dense_bool_mask(problem)

    def attend(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **self.kw)

    def decode_attend(self, q, k, v):
        lq, lk = q.shape[-2], k.shape[-2]
        # SDPA's is_causal is top-left: right only when lq == lk; else the lower-right bias
        kw = {"is_causal": True} if lq == lk else {"attn_mask": causal_lower_right(lq, lk)}
        return F.scaled_dot_product_attention(q, k, v, scale=self.kw["scale"],
                                              enable_gqa=self.kw["enable_gqa"], **kw)


class _FlexModule(GqaModule):
    def __init__(self, problem, params):
        super().__init__(problem, params)
        from torch.nn.attention.flex_attention import flex_attention

        self.block_mask = mask_mods.block_mask(problem)
        self.score_mod = mask_mods.score_mod(problem)
        self.flex = torch.compile(flex_attention, dynamic=False)

    def attend(self, q, k, v):
        return self.flex(q, k, v, score_mod=self.score_mod, block_mask=self.block_mask,
                         scale=self.problem.softmax_scale, enable_gqa=self.problem.hkv != self.problem.hq)


class _GqaLayer(LayerVariant):
    family = "gqa-layer"
    masks = ALL_MASKS
    features = frozenset({"gqa", "dv_ne_dqk", "alibi", "softcap", "custom_scale"})
    module_class: ClassVar[type] = GqaModule

    def build(self, problem: Problem, params: dict[str, torch.Tensor]) -> nn.Module:
        """The layer module, its weights copied from the canonical parameters."""
        return self.module_class(problem, params)

    def canonical_grads(self, module: nn.Module) -> dict:
        """The weights carry the canonical names and shapes, so their grads map one to one."""
        return {name: getattr(module, name).grad for name in PARAM_NAMES}


@register
class GqaLayerRepeat(_GqaLayer):
    name = "gqa-layer-repeat"
    description = "GQA layer: K/V heads repeated to hq (repeat_interleave), explicit matmul-softmax"
    backend = "eager-matmul"
    module_class = _RepeatModule
    decodes = True  # GqaModule.prefill/step, a (k, v) cache of hkv heads


@register
class GqaLayerSdpa(_GqaLayer):
    name = "gqa-layer-sdpa"
    description = "GQA layer: SDPA with enable_gqa=True (no K/V repeat); is_causal or a boolean mask"
    features = frozenset({"gqa", "dv_ne_dqk", "custom_scale"})  # no ALiBi or softcap through SDPA
    backend = "sdpa:default"
    module_class = _SdpaModule
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD
    decodes = True  # GqaModule.prefill/step, a (k, v) cache of hkv heads


@register
class GqaLayerFlex(_GqaLayer):
    name = "gqa-layer-flex"
    description = "GQA layer: compiled flex_attention with enable_gqa=True, BlockMask and score_mod"
    dtypes = frozenset({"float32", "bfloat16", "float16"})  # compiled Flex has no fp64 kernel
    backward_devices = frozenset({"cuda"})  # no FlexAttention backward on CPU in this torch
    compiled = True
    fused = True
    backend = "flex:compiled"
    module_class = _FlexModule

    def extra_reasons(self, problem, backward):
        if problem.device == "cpu" and problem.dtype == "float16":
            return ["FlexAttention on CPU has no fp16 kernel"]
        return []
