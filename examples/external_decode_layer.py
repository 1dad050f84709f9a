"""A layer variant that lives outside the suite's repository, with its own weights and its own KV cache.

Check it without editing the suite (the decode check, then the generic checks):

    pytest test_correctness/test_decode_layers.py --attn-variants examples/external_decode_layer.py \
        --attn-only external-gqa-kvcache
    pytest test_correctness/test_variants.py --attn-variants examples/external_decode_layer.py \
        --attn-only external-gqa-kvcache

It computes the suite's ``gqa-layer`` family (llama-style grouped-query attention, no biases; MQA is
its hkv=1 problem) in its own layout: q, k and v come from one fused weight, loaded from the family's
canonical ``wq``, ``wk``, ``wv`` (and ``canonical_grads`` splits the gradient back). It declares
``decodes = True`` and implements ``prefill``/``step`` (docs/decode.md) over its own cache object,
:class:`GrowingKVCache`: preallocated buffers of the hkv key/value heads that double when full.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attnsuite.problem import Problem
from attnsuite.registry import LayerVariant, register


class GrowingKVCache:
    """Keys and values of the tokens seen so far, (batch, hkv, length, d), in buffers that double when full."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        capacity = max(16, 2 * k.shape[2])
        self.k = k.new_empty(*k.shape[:2], capacity, k.shape[3])
        self.v = v.new_empty(*v.shape[:2], capacity, v.shape[3])
        self.length = 0
        self.append(k, v)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new tokens after the cached ones; return views of every cached token's k and v."""
        new_length = self.length + k.shape[2]
        if new_length > self.k.shape[2]:  # grow: copy into buffers twice as long
            grown_k = self.k.new_empty(*self.k.shape[:2], 2 * new_length, self.k.shape[3])
            grown_v = self.v.new_empty(*self.v.shape[:2], 2 * new_length, self.v.shape[3])
            grown_k[:, :, : self.length] = self.k[:, :, : self.length]
            grown_v[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = grown_k, grown_v
        self.k[:, :, self.length : new_length] = k
        self.v[:, :, self.length : new_length] = v
        self.length = new_length
        return self.k[:, :, :new_length], self.v[:, :, :new_length]


class FusedGqaLayer(nn.Module):
    """x -> q, k, v through one fused weight; explicit GQA attention; one output projection."""

    def __init__(self, problem: Problem, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.hq, self.hkv, self.dqk, self.dv = problem.hq, problem.hkv, problem.dqk, problem.dv
        self.scale = problem.softmax_scale
        self.causal = problem.mask.kind == "causal"
        self.wqkv = nn.Parameter(torch.cat([params["wq"], params["wk"], params["wv"]]).detach().clone())
        self.wo = nn.Parameter(params["wo"].detach().clone())
        self.sizes = [params["wq"].shape[0], params["wk"].shape[0], params["wv"].shape[0]]

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (b, hq, l, dqk), k (b, hkv, l, dqk), v (b, hkv, l, dv)."""
        b, l, _ = x.shape
        q, k, v = F.linear(x, self.wqkv).split(self.sizes, dim=-1)
        return (q.view(b, l, self.hq, self.dqk).transpose(1, 2), k.view(b, l, self.hkv, self.dqk).transpose(1, 2),
                v.view(b, l, self.hkv, self.dv).transpose(1, 2))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Queries are the last lq of the lk tokens: query r sits at position lk - lq + r."""
        group = self.hq // self.hkv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        s = q @ k.transpose(-1, -2) * self.scale
        if self.causal:
            lq, lk = q.shape[2], k.shape[2]
            pos_q = torch.arange(lk - lq, lk, device=q.device)[:, None]
            s = s.masked_fill(torch.arange(lk, device=q.device)[None, :] > pos_q, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        b, h, l, dv = o.shape
        return F.linear(o.transpose(1, 2).reshape(b, l, h * dv), self.wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.project(x))


@register
class ExternalGqaKVCache(LayerVariant):
    name = "external-gqa-kvcache"
    family = "gqa-layer"
    description = "fused-qkv GQA layer from outside the repo, explicit attention, its own growing KV cache"
    backend = "eager-matmul"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "dv_ne_dqk", "custom_scale"})
    decodes = True

    def build(self, problem: Problem, params: dict[str, torch.Tensor]) -> nn.Module:
        return FusedGqaLayer(problem, params)

    def canonical_grads(self, module: nn.Module) -> dict[str, Optional[torch.Tensor]]:
        g = module.wqkv.grad
        parts = [None] * 3 if g is None else g.split(module.sizes, dim=0)
        return {"wq": parts[0], "wk": parts[1], "wv": parts[2], "wo": module.wo.grad}

    def prefill(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, GrowingKVCache]:
        q, k, v = module.project(x)
        return module.attend(q, k, v), GrowingKVCache(k, v)

    def step(self, module: nn.Module, x_new: torch.Tensor,
             cache: GrowingKVCache) -> tuple[torch.Tensor, GrowingKVCache]:
        q, k, v = module.project(x_new)
        k_all, v_all = cache.append(k, v)
        return module.attend(q, k_all, v_all), cache
