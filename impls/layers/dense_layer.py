"""Layer-level variants of the dense layer families: x (batch, l, d_model) to y, with projections.

Families (see :mod:`.layer_oracle`): ``mha-layer`` and the QK-norm blocks
``qknorm-ln-layer`` / ``qknorm-rms-layer``. Every variant of a family loads the family's one
canonical parameter set (nn.Linear convention, y = x W^T + b) and does equal work: q, k and v
projections with biases, one output projection, no extra bias tokens. Each module knows how its
own parameter layout maps back to the canonical names (``canonical_grads``), so fused or split
layouts are compared gradient for gradient with the oracle.

Masks come from :mod:`attnsuite.mask_mods`, where a boolean mask is True where attention is
allowed. nn.MultiheadAttention's boolean ``attn_mask`` means the opposite (True = masked out), so
its variants pass the complement.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attnsuite import mask_mods
from attnsuite.problem import Problem
from attnsuite.registry import LayerVariant, register
from attnsuite.variant_math import SDPA_NONDETERMINISTIC_BACKWARD, causal_lower_right, decode_mask

from . import layer_oracle


LAYER_MASKS = frozenset({"none", "causal"})


def _param(t: torch.Tensor) -> nn.Parameter:
    """A fresh leaf parameter holding a copy of a canonical tensor."""
    return nn.Parameter(t.detach().clone())


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    """An nn.Linear (on w's device and dtype) loaded with a canonical weight and bias."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(b, l, h*d) -> (b, h, l, d)."""
    b, l, hd = t.shape
    return t.view(b, l, h, hd // h).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """(b, h, l, d) -> (b, l, h*d)."""
    b, h, l, d = t.shape
    return t.transpose(1, 2).reshape(b, l, h * d)


def matmul_softmax(q, k, v, scale: float, allowed: Optional[torch.Tensor]) -> torch.Tensor:
    """Explicit attention: softmax(scale q k^T, masked where ``allowed`` is False) v."""
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _cat_grads(parts: list) -> Optional[torch.Tensor]:
    """Concatenate gradient pieces; None when any piece never got a gradient (reported as missing)."""
    if any(g is None for g in parts):
        return None
    return torch.cat(parts, dim=0)


class _Layer(nn.Module):
    """Base of the layer modules: ``canonical_grads`` maps the module's layout to canonical names."""

    def canonical_grads(self) -> dict[str, Optional[torch.Tensor]]:
        raise NotImplementedError


class _LayerBase(LayerVariant):
    """Common capabilities of the dense layer variants (self-attention, hq == hkv, dv == dqk).

    ``build`` makes a ``module_class(problem, params)``; variants whose module takes options override it.
    """

    family: ClassVar[str] = "mha-layer"
    masks = LAYER_MASKS
    features = frozenset({"custom_scale"})
    module_class: ClassVar[type] = _Layer  # each variant names its module class

    def build(self, problem, params):
        return self.module_class(problem, params)

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        reasons = []
        if problem.d_model is not None and problem.d_model != problem.hq * problem.dqk:
            reasons.append(f"{self.name} needs d_model == heads * head_dim, got {problem.d_model} != "
                           f"{problem.hq}*{problem.dqk}")
        return reasons

    def canonical_grads(self, module: nn.Module) -> dict[str, Optional[torch.Tensor]]:
        return module.canonical_grads()


# ---------------------------------------------------------------- modules


class PerHead(nn.Module):
    """One attention head with its own q, k, v projections (d_model -> head_dim) and explicit attention."""

    def __init__(self, params: dict[str, torch.Tensor], head: int, dh: int, scale: float,
                 allowed: Optional[torch.Tensor]):
        super().__init__()
        rows = slice(head * dh, (head + 1) * dh)
        self.q = _linear(params["wq"][rows], params["bq"][rows])
        self.k = _linear(params["wk"][rows], params["bk"][rows])
        self.v = _linear(params["wv"][rows], params["bv"][rows])
        self.scale = scale
        self.register_buffer("allowed", allowed, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return matmul_softmax(self.q(x), self.k(x), self.v(x), self.scale, self.allowed)  # (b, l, dh)


class PerHeadMultiHead(_Layer):
    """Per-head attention modules wrapped into a multi-head layer: concatenate heads, one out proj."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor]):
        super().__init__()
        allowed = mask_mods.dense_bool_mask(problem)
        self.heads = nn.ModuleList(
            PerHead(params, h, problem.dqk, problem.softmax_scale, allowed) for h in range(problem.hq)
        )
        self.out = _linear(params["wo"], params["bo"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([head(x) for head in self.heads], dim=-1))

    def canonical_grads(self):
        g = {}
        for name in ("q", "k", "v"):
            g["w" + name] = _cat_grads([getattr(hd, name).weight.grad for hd in self.heads])
            g["b" + name] = _cat_grads([getattr(hd, name).bias.grad for hd in self.heads])
        g["wo"], g["bo"] = self.out.weight.grad, self.out.bias.grad
        return g


class QKNorm(nn.Module):
    """The per-head norm applied to q or k (LayerNorm with bias, or RMSNorm), or nothing."""

    def __init__(self, kind: str, w: Optional[torch.Tensor], b: Optional[torch.Tensor]):
        super().__init__()
        self.kind = kind
        if kind == "layernorm":
            self.norm = nn.LayerNorm(w.shape[0], eps=layer_oracle.NORM_EPS, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                self.norm.weight.copy_(w)
                self.norm.bias.copy_(b)
        elif kind == "rmsnorm":
            self.norm = nn.RMSNorm(w.shape[0], eps=layer_oracle.NORM_EPS, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                self.norm.weight.copy_(w)
        elif kind != "none":
            raise ValueError(f"unknown QK norm {kind!r}")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.kind == "none" else self.norm(t)

    def grads(self, prefix: str) -> dict:
        if self.kind == "none":
            return {}
        g = {prefix + "_w": self.norm.weight.grad}
        if self.kind == "layernorm":
            g[prefix + "_b"] = self.norm.bias.grad
        return g


class SeparateQKV(_Layer):
    """Three nn.Linear projections, an optional per-head QK norm, an attention core, one out proj.

    ``core`` is "explicit" (matmul-softmax with a boolean mask), "sdpa" (is_causal),
    "sdpa-mask" (explicit boolean attn_mask) or "flex" (compiled flex_attention with a BlockMask).
    """

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor], core: str, norm: str = "none"):
        super().__init__()
        self.h = problem.hq
        self.scale = problem.softmax_scale
        self.core = core
        self.causal = problem.mask.kind == "causal"
        self.q_proj = _linear(params["wq"], params["bq"])
        self.k_proj = _linear(params["wk"], params["bk"])
        self.v_proj = _linear(params["wv"], params["bv"])
        self.o_proj = _linear(params["wo"], params["bo"])
        self.q_norm = QKNorm(norm, params.get("qn_w"), params.get("qn_b"))
        self.k_norm = QKNorm(norm, params.get("kn_w"), params.get("kn_b"))
        self.allowed = mask_mods.dense_bool_mask(problem) if core in ("explicit", "sdpa-mask") else None
        self.block_mask = None
        self.flex = None
        if core == "flex":
            from torch.nn.attention.flex_attention import flex_attention

            self.block_mask = mask_mods.block_mask(problem)  # built here, outside the timed call
            self.flex = torch.compile(flex_attention, dynamic=False)
        elif core not in ("explicit", "sdpa", "sdpa-mask"):
            raise ValueError(f"unknown attention core {core!r}")

    def attend(self, q, k, v):
        if self.core == "explicit":
            return matmul_softmax(q, k, v, self.scale, self.allowed)
        if self.core == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        if self.core == "sdpa-mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.allowed, scale=self.scale)
        return self.flex(q, k, v, block_mask=self.block_mask, scale=self.scale)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (b, h, l, d) of tokens x, the QK norm applied to q and k."""
        q = self.q_norm(_heads(self.q_proj(x), self.h))
        k = self.k_norm(_heads(self.k_proj(x), self.h))
        return q, k, _heads(self.v_proj(x), self.h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.o_proj(_merge(self.attend(q, k, v)))

    # Incremental decoding (LayerVariant.prefill/step delegate here). The cache is a
    # past_key_value-style tuple (k, v) of shape (b, h, tokens so far, d), after the QK norm.

    def decode_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """This layer's attention core for lq new queries over lk >= lq keys, causal bottom-right."""
        lq, lk = q.shape[-2], k.shape[-2]
        if self.core == "sdpa":  # SDPA's is_causal is top-left: only right when lq == lk
            kw = {"is_causal": True} if lq == lk else {"attn_mask": causal_lower_right(lq, lk)}
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale, **kw)
        allowed = decode_mask(lq, lk, q.device)
        if self.core == "sdpa-mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
        if self.core == "explicit":
            return matmul_softmax(q, k, v, self.scale, allowed)
        raise NotImplementedError(f"no incremental decoding through the {self.core!r} attention core")

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(y, cache) of the first tokens: a step from an empty cache."""
        return self.step(x, None)

    def step(self, x_new: torch.Tensor, cache: Optional[tuple]) -> tuple[torch.Tensor, tuple]:
        """(y, cache) of new tokens after the cached ones; the returned cache holds them too."""
        if not self.causal:
            raise ValueError("incremental decoding needs a causal layer (built for a causal problem)")
        q, k, v = self.project(x_new)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        return self.o_proj(_merge(self.decode_attend(q, k, v))), (k, v)

    def canonical_grads(self):
        g = {}
        for name in ("q", "k", "v", "o"):
            lin = getattr(self, name + "_proj")
            g["w" + name], g["b" + name] = lin.weight.grad, lin.bias.grad
        g.update(self.q_norm.grads("qn"))
        g.update(self.k_norm.grads("kn"))
        return g


class FusedQKV(_Layer):
    """One nn.Linear(d_model, 3 d_model) for q, k, v together, then SDPA, then one out proj."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor]):
        super().__init__()
        self.h = problem.hq
        self.scale = problem.softmax_scale
        self.causal = problem.mask.kind == "causal"
        self.qkv = _linear(torch.cat([params["wq"], params["wk"], params["wv"]]),
                           torch.cat([params["bq"], params["bk"], params["bv"]]))
        self.sizes = [params["wq"].shape[0], params["wk"].shape[0], params["wv"].shape[0]]
        self.out = _linear(params["wo"], params["bo"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, self.h) for t in self.qkv(x).split(self.sizes, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        return self.out(_merge(o))

    def canonical_grads(self):
        g = {"wo": self.out.weight.grad, "bo": self.out.bias.grad}
        w, b = self.qkv.weight.grad, self.qkv.bias.grad
        for i, name in enumerate("qkv"):
            g["w" + name] = None if w is None else w.split(self.sizes, dim=0)[i]
            g["b" + name] = None if b is None else b.split(self.sizes, dim=0)[i]
        return g


class EinsumLayer(_Layer):
    """The canonical weights held as plain parameters, every contraction an einsum."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor]):
        super().__init__()
        self.h, self.dh = problem.hq, problem.dqk
        self.scale = problem.softmax_scale
        self.allowed = mask_mods.dense_bool_mask(problem)
        for name in layer_oracle.PROJECTION_PARAMS:
            setattr(self, name, _param(params[name]))

    def _project(self, x, w, b):
        # w (h*dh, d) seen as (h, dh, d): x (b, l, d) -> (b, h, l, dh)
        return torch.einsum("bld,hed->bhle", x, w.view(self.h, -1, w.shape[1])) + b.view(self.h, 1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._project(x, self.wq, self.bq)
        k = self._project(x, self.wk, self.bk)
        v = self._project(x, self.wv, self.bv)
        s = torch.einsum("bhqe,bhke->bhqk", q, k) * self.scale
        if self.allowed is not None:
            s = s.masked_fill(~self.allowed, float("-inf"))
        o = torch.einsum("bhqk,bhke->bhqe", torch.softmax(s, dim=-1), v)
        wo = self.wo.view(self.wo.shape[0], self.h, -1)
        return torch.einsum("bhle,mhe->blm", o, wo) + self.bo

    def canonical_grads(self):
        return {name: getattr(self, name).grad for name in layer_oracle.PROJECTION_PARAMS}


class TorchMHA(_Layer):
    """torch.nn.MultiheadAttention loaded with the canonical weights (batch_first, no bias tokens)."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor], need_weights: bool):
        super().__init__()
        d = problem.d_model
        w = params["wq"]
        self.mha = nn.MultiheadAttention(d, problem.hq, dropout=0.0, bias=True, add_bias_kv=False,
                                         add_zero_attn=False, batch_first=True, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.mha.in_proj_weight.copy_(torch.cat([params["wq"], params["wk"], params["wv"]]))
            self.mha.in_proj_bias.copy_(torch.cat([params["bq"], params["bk"], params["bv"]]))
            self.mha.out_proj.weight.copy_(params["wo"])
            self.mha.out_proj.bias.copy_(params["bo"])
        allowed = mask_mods.dense_bool_mask(problem)
        # nn.MultiheadAttention's boolean mask is True where attention is NOT allowed: the complement.
        self.blocked = None if allowed is None else ~allowed
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.need_weights:
            y, weights = self.mha(x, x, x, attn_mask=self.blocked, need_weights=True, average_attn_weights=False)
            del weights  # asked for (the explicit path that materialises them), then discarded
            return y
        y, _ = self.mha(x, x, x, attn_mask=self.blocked, need_weights=False)
        return y

    def canonical_grads(self):
        d = self.mha.embed_dim
        w, b = self.mha.in_proj_weight.grad, self.mha.in_proj_bias.grad
        g = {"wo": self.mha.out_proj.weight.grad, "bo": self.mha.out_proj.bias.grad}
        for i, name in enumerate("qkv"):
            g["w" + name] = None if w is None else w[i * d:(i + 1) * d]
            g["b" + name] = None if b is None else b[i * d:(i + 1) * d]
        return g


# ---------------------------------------------------------------- mha-layer variants


class _SeparateQKVLayer(_LayerBase):
    """A :class:`SeparateQKV` layer: attention by ``core``, per-head QK ``norm`` ("none" in mha-layer)."""

    core: ClassVar[str] = ""
    norm: ClassVar[str] = "none"
    decodes = True  # SeparateQKV.prefill/step (the compiled Flex core opts out in _FlexLayer)

    def build(self, problem, params):
        return SeparateQKV(problem, params, core=self.core, norm=self.norm)


class _TorchMHALayer(_LayerBase):
    """A :class:`TorchMHA` layer, asking nn.MultiheadAttention for the weights when ``need_weights``."""

    features = frozenset()  # nn.MultiheadAttention always scales by 1/sqrt(head_dim)
    need_weights: ClassVar[bool] = False

    def build(self, problem, params):
        return TorchMHA(problem, params, need_weights=self.need_weights)


@register
class LayerPerHead(_LayerBase):
    name = "layer-perhead"
    description = "per-head modules (own q/k/v Linear slices, explicit attention) wrapped into multi-head"
    backend = "eager-matmul"
    module_class = PerHeadMultiHead


@register
class LayerSeparateQKV(_SeparateQKVLayer):
    name = "layer-separate-qkv"
    description = "three nn.Linear q/k/v projections, explicit matmul-softmax, one out proj"
    backend = "eager-matmul"
    core = "explicit"


@register
class LayerFusedQKV(_LayerBase):
    name = "layer-fused-qkv"
    description = "one nn.Linear(d, 3d) projection, SDPA, one out proj"
    backend = "sdpa:default"
    module_class = FusedQKV
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD


@register
class LayerEinsum(_LayerBase):
    name = "layer-einsum"
    description = "canonical weights as parameters, projections and attention as einsums"
    backend = "eager-einsum"
    module_class = EinsumLayer


@register
class LayerSdpa(_SeparateQKVLayer):
    name = "layer-sdpa"
    description = "three nn.Linear projections, SDPA with is_causal, one out proj"
    backend = "sdpa:default"
    core = "sdpa"
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD


@register
class LayerSdpaMask(_SeparateQKVLayer):
    name = "layer-sdpa-mask"
    description = "three nn.Linear projections, SDPA with an explicit boolean mask (True = attend)"
    backend = "sdpa:default+boolmask"
    core = "sdpa-mask"
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD


@register
class LayerMHA(_TorchMHALayer):
    name = "layer-mha"
    description = "torch.nn.MultiheadAttention, need_weights=False (inverted boolean mask convention)"
    backend = "nn.MultiheadAttention"
    # without weights nn.MultiheadAttention attends through SDPA; with them (layer-mha-weights) through
    # matmuls, whose backward repeated bit for bit on an H200
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD


@register
class LayerMHAWeights(_TorchMHALayer):
    name = "layer-mha-weights"
    description = "torch.nn.MultiheadAttention, need_weights=True per head (weights discarded)"
    backend = "nn.MultiheadAttention+weights"
    need_weights = True


class _FlexLayer(_LayerBase):
    """Shared capabilities of the layer variants whose attention core is compiled FlexAttention."""

    backward_devices = frozenset({"cuda"})  # torch has no FlexAttention backward on CPU
    compiled = True
    decodes = False  # a decode step would need a BlockMask (and a compile) per length
    fused = True

    def extra_reasons(self, problem, backward):
        reasons = super().extra_reasons(problem, backward)
        if problem.dtype == "float64":
            # inductor's CPU lowering refuses float64 ("float, float16 and bfloat16 are supported");
            # the CUDA kernels are not declared for it either
            reasons.append("compiled FlexAttention has no fp64 kernel")
        return reasons


@register
class LayerFlex(_FlexLayer, _SeparateQKVLayer):
    name = "layer-flex"
    description = "three nn.Linear projections, torch.compile(flex_attention) with a BlockMask, one out proj"
    backend = "flex:compiled"
    core = "flex"


# ---------------------------------------------------------------- QK-norm variants


class _QKNormLN(_SeparateQKVLayer):
    family = "qknorm-ln-layer"
    norm = "layernorm"
    tag: ClassVar[str] = "LN"  # in the variant's class name and (lower case) its name
    torch_norm: ClassVar[str] = "nn.LayerNorm"


class _QKNormRMS(_SeparateQKVLayer):
    family = "qknorm-rms-layer"
    norm = "rmsnorm"
    tag: ClassVar[str] = "RMS"
    torch_norm: ClassVar[str] = "nn.RMSNorm"


# attention core -> (extra base classes, backend, how the description ends, nondeterministic backward devices)
_QKNORM_CORES = {
    "explicit": ((), "eager-matmul", "explicit matmul-softmax", frozenset()),
    "sdpa": ((), "sdpa:default", "SDPA (is_causal, scale passed)", SDPA_NONDETERMINISTIC_BACKWARD),
    "flex": ((_FlexLayer,), "flex:compiled", "compiled flex_attention + BlockMask", frozenset()),
}


def _qknorm_variant(norm_base: type, core: str) -> type:
    """Register the QK-norm block with ``norm_base``'s norm and attention ``core``; returns its class.

    A QK-norm variant is projections, the per-head norm on q and k, then attention by ``core`` at
    the family's pinned scale: its name, description and backend follow from the norm and the core.
    """
    mixins, backend, how, nondeterministic = _QKNORM_CORES[core]
    cls_name = f"QKNorm{norm_base.tag}{core.capitalize()}"
    cls = type(cls_name, (*mixins, norm_base), {
        "__module__": __name__,
        "__qualname__": cls_name,
        "name": f"qknorm-{norm_base.tag.lower()}-{core}",
        "description": f"q/k/v projections, per-head {norm_base.torch_norm} on q and k, {how}",
        "core": core,
        "backend": backend,
        "nondeterministic_backward_devices": nondeterministic,
    })
    return register(cls)


QKNormLNExplicit = _qknorm_variant(_QKNormLN, "explicit")
QKNormLNSdpa = _qknorm_variant(_QKNormLN, "sdpa")
QKNormLNFlex = _qknorm_variant(_QKNormLN, "flex")
QKNormRMSExplicit = _qknorm_variant(_QKNormRMS, "explicit")
QKNormRMSSdpa = _qknorm_variant(_QKNormRMS, "sdpa")
QKNormRMSFlex = _qknorm_variant(_QKNormRMS, "flex")
