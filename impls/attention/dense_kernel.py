"""Kernel-level variants of standard attention: q, k, v (SDPA layout) to o.

Each class is one variant; ``@register`` adds it to the registry. They all compute the
``attention`` family (see :mod:`.family`), with masks built from
:mod:`attnsuite.mask_mods` (a boolean mask is True where attention is allowed).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnsuite import mask_mods
from attnsuite.oracle_mask import fully_masked_rows
from attnsuite.problem import MASK_KINDS, Problem
from attnsuite.registry import KernelVariant, register
# dropout and the tests take these from here too
from attnsuite.variant_math import (  # noqa: F401
    SDPA_NONDETERMINISTIC_BACKWARD, causal_lower_right, dead_rows, explicit_attention, softmax_rows)

ALL_MASKS = frozenset(MASK_KINDS)
EVERYTHING = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "alibi", "softcap", "custom_scale"})
HALF = frozenset({"bfloat16", "float16"})


def alibi_bias(problem: Problem, dtype: torch.dtype):
    """(hq, lq, lk) ALiBi bias without any mask, or None."""
    if not problem.alibi:
        return None
    # keep the alignment: ALiBi's |i - j| uses the aligned query position (bottom-right offset)
    return mask_mods.additive_bias(problem.with_(mask=type(problem.mask)(align=problem.mask.align)), dtype)


@register
class Explicit(KernelVariant):
    name = "explicit"
    description = "matmul, masked_fill, softmax, matmul (materialises the score matrix)"
    masks = ALL_MASKS
    features = EVERYTHING
    backend = "eager-matmul"

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        dead = dead_rows(allowed)
        bias = alibi_bias(problem, getattr(torch, problem.dtype))
        scale, cap = problem.softmax_scale, problem.softcap

        def run(q, k, v):
            b = None if bias is None else bias.to(q.dtype)
            return explicit_attention(q, k, v, scale, allowed, b, cap, dead=dead)

        return run


@register
class Einsum(KernelVariant):
    name = "einsum"
    description = "einsum scores with grouped heads (GQA by reshape, no K/V repeat)"
    masks = ALL_MASKS
    features = EVERYTHING
    backend = "eager-einsum"

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        dead = dead_rows(allowed)
        bias = alibi_bias(problem, getattr(torch, problem.dtype))
        scale, cap = problem.softmax_scale, problem.softcap
        g = problem.hq // problem.hkv

        def run(q, k, v):
            b, hq, lq, d = q.shape
            qg = q.reshape(b, hq // g, g, lq, d)  # query head h = kv_head * g + r
            s = torch.einsum("bkgqd,bkjd->bkgqj", qg, k) * scale
            if bias is not None:
                s = s + bias.to(q.dtype).reshape(hq // g, g, lq, -1)
            if cap is not None:
                s = cap * torch.tanh(s / cap)
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            o = torch.einsum("bkgqj,bkjd->bkgqd", softmax_rows(s, dead), v)
            return o.reshape(b, hq, lq, v.shape[-1])

        return run


class _Sdpa(KernelVariant):
    """SDPA with the problem's causal structure passed the way SDPA takes it."""

    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    pinned: ClassVar = None  # an SDPBackend, or None for default dispatch
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD

    def sdpa_kwargs(self, problem: Problem) -> dict:
        kw = {"scale": problem.softmax_scale}
        if problem.hkv != problem.hq:
            kw["enable_gqa"] = True
        if problem.mask.kind == "causal":
            if problem.mask.align == "bottom_right" and problem.lq != problem.lk:
                kw["attn_mask"] = causal_lower_right(problem.lq, problem.lk)
            else:
                kw["is_causal"] = True
        return kw

    def build(self, problem):
        kw = self.sdpa_kwargs(problem)
        pinned = self.pinned

        def run(q, k, v):
            if pinned is None:
                return F.scaled_dot_product_attention(q, k, v, **kw)
            with sdpa_kernel(pinned):
                return F.scaled_dot_product_attention(q, k, v, **kw)

        return run


def lower_right_defect(problem: Problem) -> list[str]:
    """torch's lower-right CausalBias on CUDA gives wrong rows when lq > lk (torch warns of NaN).

    Found by this suite on an H200 (torch 2.11, fp32, default dispatch): live rows off by 2.55.
    """
    if (problem.device.startswith("cuda") and problem.mask.kind == "causal"
            and problem.mask.align == "bottom_right" and problem.lq > problem.lk):
        return ["torch's CUDA lower-right causal bias is wrong when lq > lk (rows with keys come out wrong)"]
    return []


@register
class Sdpa(_Sdpa):
    name = "sdpa"
    description = "F.scaled_dot_product_attention, default dispatch (is_causal / causal_lower_right)"
    backend = "sdpa:default"

    def extra_reasons(self, problem, backward):
        return lower_right_defect(problem)


@register
class SdpaMath(_Sdpa):
    name = "sdpa-math"
    description = "SDPA pinned to the math backend"
    pinned = SDPBackend.MATH
    backend = "sdpa:math"
    nondeterministic_backward_devices = frozenset()  # the math backend adds up in a fixed order


@register
class SdpaFlash(_Sdpa):
    name = "sdpa-flash"
    description = "SDPA pinned to the flash backend (CPU: torch's CPU flash kernel)"
    pinned = SDPBackend.FLASH_ATTENTION
    backend = "sdpa:flash"
    fused = True
    features = _Sdpa.features - {"dv_ne_dqk"}

    def extra_reasons(self, problem, backward):
        reasons = []
        if problem.device.startswith("cuda"):
            if problem.dtype not in HALF:
                reasons.append("flash on CUDA takes only fp16/bf16")
            if problem.dqk > 256:
                reasons.append("flash on CUDA takes head dim <= 256")
            if problem.mask.align == "bottom_right" and problem.lq != problem.lk and problem.mask.kind != "none":
                reasons.append("flash on CUDA has no lower-right causal bias")
            if problem.mask.kind == "causal" and problem.lq > problem.lk:
                reasons.append("flash on CUDA has no kernel for is_causal with lq > lk (seen on H200, torch 2.11)")
        return reasons


@register
class SdpaEfficient(_Sdpa):
    name = "sdpa-efficient"
    description = "SDPA pinned to the memory-efficient (xformers-derived) backend"
    pinned = SDPBackend.EFFICIENT_ATTENTION
    backend = "sdpa:efficient"
    devices = frozenset({"cuda"})
    dtypes = frozenset({"float32", "bfloat16", "float16"})
    fused = True
    features = _Sdpa.features - {"gqa"}

    def extra_reasons(self, problem, backward):
        return lower_right_defect(problem)


@register
class SdpaCudnn(_Sdpa):
    name = "sdpa-cudnn"
    description = "SDPA pinned to the cuDNN backend"
    pinned = SDPBackend.CUDNN_ATTENTION
    backend = "sdpa:cudnn"
    devices = frozenset({"cuda"})
    dtypes = HALF
    fused = True
    features = frozenset({"lq_ne_lk", "custom_scale"})

    def extra_reasons(self, problem, backward):
        reasons = []
        if problem.dqk > 128 or problem.dqk % 8:
            reasons.append("cuDNN SDPA takes head dim <= 128 in multiples of 8")
        if min(problem.lq, problem.lk) < 2:
            reasons.append("cuDNN SDPA has no kernel for a length-1 sequence (seen on H200, torch 2.11)")
        return reasons


class _SdpaExplicitMask(KernelVariant):
    masks = ALL_MASKS
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})

    def make_mask(self, problem: Problem):
        raise NotImplementedError

    def build(self, problem):
        mask = self.make_mask(problem)
        kw = {"scale": problem.softmax_scale, "attn_mask": mask}
        if problem.hkv != problem.hq:
            kw["enable_gqa"] = True

        def run(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, **kw)

        return run


@register
class SdpaBoolMask(_SdpaExplicitMask):
    name = "sdpa-boolmask"
    description = "SDPA with an explicit boolean mask (True = attend)"
    backend = "sdpa:default+boolmask"

    known_defects = {
        "backward": "torch 2.11's SDPA with a boolean mask picks cuDNN for fp16/bf16 on an H200, and cuDNN gives a "
                    "query row that may see no key uniform weights over every key instead of none: its grad q is "
                    "not zero and it adds to every key's grad k/v (18x to 312x the bound on b1-q20k8 and b1-q64k16 "
                    "with a bottom-right causal mask; the math and efficient backends, and cuDNN with the "
                    "additive -inf mask, give the oracle's zeros; scripts/deadrow_probe.py, 2026-12-01)",
    }

    def make_mask(self, problem):
        return mask_mods.dense_bool_mask(problem)

    def known_defect(self, check, problem):
        # only where SDPA picks cuDNN (Hopper and later) and only on problems with fully masked rows
        if (problem.device.startswith("cuda") and problem.dtype in HALF and len(fully_masked_rows(problem))
                and torch.cuda.is_available() and torch.cuda.get_device_capability(problem.device)[0] >= 9):
            return super().known_defect(check, problem)
        return None


@register
class SdpaAdditiveMask(_SdpaExplicitMask):
    name = "sdpa-additive"
    description = "SDPA with an additive float mask (0 / -inf, plus ALiBi)"
    backend = "sdpa:default+additive"
    features = _SdpaExplicitMask.features | {"alibi"}

    def build(self, problem):
        # the additive mask must be in the inputs' dtype; build it once per dtype
        bias = mask_mods.additive_bias(problem, getattr(torch, problem.dtype))
        kw = {"scale": problem.softmax_scale}
        if problem.hkv != problem.hq:
            kw["enable_gqa"] = True
        cast = None if bias is None else bias.to(torch.float64 if problem.dtype == "float64" else
                                                   getattr(torch, problem.dtype))

        def run(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=cast, **kw)

        return run


class _Flex(KernelVariant):
    """FlexAttention: BlockMask from the problem's mask_mod, score_mod for ALiBi/softcap."""

    masks = ALL_MASKS
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "alibi", "softcap", "custom_scale"})
    backward_devices = frozenset({"cuda"})  # torch has no FlexAttention backward on CPU
    dtypes = frozenset({"float32", "bfloat16", "float16", "float64"})
    compile_flex: ClassVar[bool] = True
    use_block_mask: ClassVar[bool] = True

    def extra_reasons(self, problem, backward):
        reasons = []
        if problem.device == "cpu" and problem.dtype == "float16":
            reasons.append("FlexAttention on CPU has no fp16 kernel")
        if problem.dtype == "float64" and self.compile_flex:
            reasons.append("compiled FlexAttention has no fp64 kernel")
        return reasons

    def build(self, problem):
        from torch.nn.attention.flex_attention import flex_attention

        mmod = mask_mods.mask_mod(problem)
        smod = mask_mods.score_mod(problem)
        block_mask = None
        if mmod is not None and self.use_block_mask:
            block_mask = mask_mods.block_mask(problem)
        elif mmod is not None:  # the mask as a score_mod: no block sparsity, every tile computed
            inner = smod

            def smod(score, b, h, qi, kj):
                if inner is not None:
                    score = inner(score, b, h, qi, kj)
                return torch.where(mmod(b, h, qi, kj), score, float("-inf"))

        fn = torch.compile(flex_attention, dynamic=False) if self.compile_flex else flex_attention
        kw = dict(score_mod=smod, block_mask=block_mask, scale=problem.softmax_scale,
                  enable_gqa=problem.hkv != problem.hq)

        def run(q, k, v):
            return fn(q, k, v, **kw)

        return run


@register
class FlexCompiled(_Flex):
    name = "flex"
    description = "torch.compile(flex_attention) with a BlockMask"
    compiled = True
    fused = True
    backend = "flex:compiled"


@register
class FlexScoreMod(_Flex):
    name = "flex-scoremod"
    description = "compiled flex_attention with the mask folded into a score_mod (no BlockMask)"
    compiled = True
    fused = True
    use_block_mask = False
    backend = "flex:compiled-scoremod"


@register
class FlexEager(_Flex):
    name = "flex-eager"
    description = "flex_attention without torch.compile (the unfused reference path)"
    compile_flex = False
    backend = "flex:eager"
    # torch 2.11: every one of its cases in an H200 full tier failed capture this way (tests/test_gpu_timing.py
    # checks it still does)
    no_graph_capture = ("uncompiled flex_attention copies between host and GPU inside each call (\"Cannot copy "
                        "between CPU and CUDA tensors during CUDA graph capture\")")

    def extra_reasons(self, problem, backward):
        reasons = super().extra_reasons(problem, backward)
        if backward and problem.device.startswith("cuda") and (problem.alibi or problem.softcap is not None):
            reasons.append("uncompiled flex_attention backward with a score_mod fails on CUDA in torch 2.11 "
                           "(PendingUnbackedSymbolNotFound)")
        return reasons


@register
class CompiledExplicit(KernelVariant):
    name = "compiled-explicit"
    description = "torch.compile of the explicit matmul-softmax form"
    masks = ALL_MASKS
    features = EVERYTHING
    compiled = True
    backend = "inductor"

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        dead = dead_rows(allowed)
        bias = alibi_bias(problem, getattr(torch, problem.dtype))
        scale, cap = problem.softmax_scale, problem.softcap
        fn = torch.compile(explicit_attention, dynamic=False)

        def run(q, k, v):
            b = None if bias is None else bias.to(q.dtype)
            return fn(q, k, v, scale, allowed, b, cap, dead=dead)

        return run
