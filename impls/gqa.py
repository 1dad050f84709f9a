"""The ``gqa-layer`` family: a llama-style grouped-query attention layer, and its variants.

x (batch, l, d_model) -> y (batch, l, d_model), self-attention, no biases (Llama convention):

    q = x Wq^T  (hq heads of dqk),  k = x Wk^T,  v = x Wv^T  (hkv heads; dqk and dv)
    o_h = Attn(q_h, k_g, v_g) with g = floor(h * hkv / hq)        (MQA: hkv = 1)
    y = concat_h(o_h) Wo^T

Canonical parameters (nn.Linear convention, heads contiguous along the output axis): ``wq``
(hq*dqk, d_model), ``wk`` (hkv*dqk, d_model), ``wv`` (hkv*dv, d_model), ``wo`` (d_model, hq*dv).
``hq * dqk`` need not equal ``d_model``. The reference is NumPy float64 built on the kernel oracle
(:func:`attnsuite.oracle.forward` / :func:`attnsuite.oracle.backward`) plus the projections'
chain rule; the base is the same plain math in torch in the problem's dtype.

Variants: ``gqa-layer-repeat`` (K/V heads repeated to hq, explicit matmul-softmax),
``gqa-layer-sdpa`` (SDPA with ``enable_gqa=True``, no repeat), ``gqa-layer-flex`` (compiled
FlexAttention with ``enable_gqa=True``, BlockMask and score_mod).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from attnsuite import mask_mods, oracle, reference_math
from attnsuite.family_glue import autograd_base, device_layer_inputs, layer_family_inputs
from attnsuite.inputs import finish, layer_inputs_np, rng_for
from attnsuite.layer_oracle import merge_heads, split_heads
from attnsuite.problem import MASK_KINDS, Mask, Problem
from attnsuite.registry import Family, LayerVariant, register, register_family

from .dense_kernel import explicit_attention
from .dense_layer import decode_mask

PARAM_NAMES = ("wq", "wk", "wv", "wo")
ALL_MASKS = frozenset(MASK_KINDS)

torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 512)
torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)


def _check(problem: Problem) -> None:
    if problem.d_model is None:
        raise ValueError(f"problem {problem.id} is not a layer problem (d_model is None)")


def draw_params(rng, problem: Problem) -> dict:
    """The GQA layer's parameter recipe (unrounded; NumPy or device draws)."""
    _check(problem)
    d, hq, hkv, dqk, dv = problem.d_model, problem.hq, problem.hkv, problem.dqk, problem.dv
    std = 1.0 / np.sqrt(d)  # unit-variance x gives unit-variance q, k, v
    return {
        "wq": rng.normal(0.0, std, (hq * dqk, d)),
        "wk": rng.normal(0.0, std, (hkv * dqk, d)),
        "wv": rng.normal(0.0, std, (hkv * dv, d)),
        "wo": rng.normal(0.0, 1.0 / np.sqrt(hq * dv), (d, hq * dv)),
    }


PARAMS_STREAM = "gqa-params"


@lru_cache(maxsize=64)
def _params_np(problem: Problem) -> dict[str, np.ndarray]:
    return finish(draw_params(rng_for(problem, PARAMS_STREAM), problem), problem)


def params_np(problem: Problem) -> dict[str, np.ndarray]:
    """Canonical float64 weights for ``problem`` (seeded by its shapes, representable in its dtype)."""
    return _params_np(problem)


def reference_forward_backward(problem: Problem, x, params, dy):
    """Float64 y and the gradients of sum(y * dy) w.r.t. x and every canonical parameter."""
    wq, wk, wv, wo = (np.asarray(params[n], dtype=np.float64) for n in PARAM_NAMES)
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    q = split_heads(x @ wq.T, problem.hq)
    k = split_heads(x @ wk.T, problem.hkv)
    v = split_heads(x @ wv.T, problem.hkv)
    o, _, _, _ = oracle.forward(problem, q, k, v)
    om = merge_heads(o)
    y = om @ wo.T
    # y = om Wo^T: d(om) = dy Wo, dWo = sum_tokens dy^T om
    dom = dy @ wo
    dwo = np.einsum("blo,bli->oi", dy, om)
    dq, dk, dv = oracle.backward(problem, q, k, v, split_heads(dom, problem.hq))
    dqm, dkm, dvm = merge_heads(dq), merge_heads(dk), merge_heads(dv)
    dx = dqm @ wq + dkm @ wk + dvm @ wv
    grads = {
        "x": dx,
        "wq": np.einsum("blo,bli->oi", dqm, x),
        "wk": np.einsum("blo,bli->oi", dkm, x),
        "wv": np.einsum("blo,bli->oi", dvm, x),
        "wo": dwo,
    }
    return y, grads


@lru_cache(maxsize=32)
def _reference(problem: Problem):
    x, dy = layer_inputs_np(problem)
    return reference_forward_backward(problem, x, params_np(problem), dy)


def _torch_layer(problem: Problem, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain math in x's dtype and device (projections, repeat-free reference attention)."""
    b, l, _ = x.shape
    q = (x @ w["wq"].T).view(b, l, problem.hq, problem.dqk).transpose(1, 2)
    k = (x @ w["wk"].T).view(b, l, problem.hkv, problem.dqk).transpose(1, 2)
    v = (x @ w["wv"].T).view(b, l, problem.hkv, problem.dv).transpose(1, 2)
    o = reference_math.attention(problem, q, k, v)
    return o.transpose(1, 2).reshape(b, l, problem.hq * problem.dv) @ w["wo"].T


def _base(problem: Problem):
    """The base: :func:`_torch_layer` in the problem's dtype and device, gradients by autograd."""
    return autograd_base(problem, partial(_torch_layer, problem), *layer_family_inputs(problem),
                         params=params_np(problem))


def gqa_layer_problems(device: str, dtypes: tuple) -> list[Problem]:
    """Small CPU-sized GQA layer problems: ratios 1, 2, 4 and MQA, hq*dqk != d_model, masks."""
    P, M = Problem, Mask
    base = [
        P(batch=2, lq=17, lk=17, hq=4, hkv=2, dqk=16, dv=16, d_model=48, mask=M("causal")),
        P(batch=1, lq=33, lk=33, hq=4, hkv=1, dqk=16, dv=16, d_model=40, mask=M("none"), tag="mqa"),
        P(batch=1, lq=97, lk=97, hq=8, hkv=2, dqk=16, dv=16, d_model=64, mask=M("causal")),
        P(batch=1, lq=40, lk=40, hq=6, hkv=2, dqk=16, dv=24, d_model=48, mask=M("window", window=8)),
        P(batch=1, lq=3, lk=3, hq=2, hkv=2, dqk=16, dv=16, d_model=32, mask=M("causal"), tag="mha"),
    ]
    return [p.with_(device=device, dtype=dtype) for dtype in dtypes for p in base]


GQA_LAYER = register_family(
    Family(
        name="gqa-layer",
        level="layer",
        inputs=layer_family_inputs,
        reference=_reference,
        base=_base,
        params=params_np,
        device_inputs=device_layer_inputs(draw_params, lambda p: PARAMS_STREAM),
        problems=gqa_layer_problems,
        description="llama-style GQA layer, no biases: y = Attn(x Wq^T, x Wk^T, x Wv^T) Wo^T, "
        "query head h reads kv head h*hkv//hq",
    )
)


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
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        mmod = mask_mods.mask_mod(problem)
        self.block_mask = (None if mmod is None else
                           create_block_mask(mmod, None, None, problem.lq, problem.lk, device=problem.device))
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
