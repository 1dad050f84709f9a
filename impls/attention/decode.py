"""KV-cache decoding: new queries attend to a preallocated key/value cache, causal corner bottom-right.

A decode step of a served model holds the keys and values of every earlier token in a cache
allocated once for the longest sequence; each step writes its ``lq`` new tokens' K/V at positions
``[lk - lq, lk)`` and attends its ``lq`` queries to the cache prefix ``[0, lk)``. New query ``r``
sits at position ``lk - lq + r``, so a causal mask is aligned bottom-right: the last query sees
every cached key. Attending to the whole capacity, or aligning the mask top-left, are the classic
bugs; the cache's unused tail is filled with NaN so the first shows up as NaN.

:class:`KVCache` is the cache (usable step by step: :meth:`KVCache.prefill`, :meth:`KVCache.step`);
the kernel variants ``kvcache-sdpa`` and ``kvcache-explicit`` wrap it in the kernel contract
``fn(q, k, v) -> o``: on a call whose ``k``/``v`` are not the tensors already cached, the first
``lk - lq`` positions are prefilled; every call then writes the last ``lq`` positions (the step's
own work) and attends. Decoding is inference: the variants declare no backward.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F

from attnsuite.problem import Problem
from attnsuite.registry import KernelVariant, register
from attnsuite.variant_math import causal_lower_right

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def cache_capacity(lk: int) -> int:
    """Preallocated length: lk plus at least 16 slots of slack, rounded up to a multiple of 64."""
    return ((lk + 16 + 63) // 64) * 64


class KVCache:
    """A preallocated (batch, hkv, capacity, d) key/value cache with a write cursor.

    ``attend(q, k_view, v_view, q_pos0)`` computes attention of queries at positions
    ``q_pos0 .. q_pos0 + lq - 1`` to the valid cache prefix (the views); the cache chooses nothing
    about masking, the attend function does.
    """

    def __init__(self, batch: int, hkv: int, capacity: int, dqk: int, dv: int, dtype: torch.dtype,
                 device: str, attend: AttendFn):
        # NaN poison in the unwritten slots: reading past the valid prefix turns the output NaN
        self.k = torch.full((batch, hkv, capacity, dqk), float("nan"), dtype=dtype, device=device)
        self.v = torch.full((batch, hkv, capacity, dv), float("nan"), dtype=dtype, device=device)
        self.length = 0
        self.attend_fn = attend

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reset(self) -> None:
        """Forget the contents (the slots keep their old values; only ``length`` counts)."""
        self.length = 0

    def write(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Append the new tokens' keys and values at the cursor."""
        n = k_new.shape[2]
        if self.length + n > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} + {n} tokens > capacity {self.capacity}")
        self.k[:, :, self.length:self.length + n].copy_(k_new)
        self.v[:, :, self.length:self.length + n].copy_(v_new)
        self.length += n

    def attend(self, q: torch.Tensor) -> torch.Tensor:
        """The queries of the tokens written last attend to the cache prefix [0, length)."""
        q_pos0 = self.length - q.shape[2]
        if q_pos0 < 0:
            raise ValueError(f"{q.shape[2]} queries but only {self.length} cached tokens")
        return self.attend_fn(q, self.k[:, :, :self.length], self.v[:, :, :self.length], q_pos0)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Start a sequence: cache k, v and attend the prompt's queries (causal within the prompt)."""
        self.reset()
        return self.step(q, k, v)

    @torch.no_grad()
    def step(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> torch.Tensor:
        """Append ``k_new``/``v_new`` (lq tokens) and attend their queries ``q`` to the whole prefix."""
        self.write(k_new, v_new)
        return self.attend(q)


def sdpa_attend(problem: Problem) -> AttendFn:
    """SDPA over the cache prefix: ``causal_lower_right`` for several queries, no mask for one."""
    scale, gqa, kind, window = problem.softmax_scale, problem.hkv != problem.hq, problem.mask.kind, problem.mask.window

    def attend(q, k, v, q_pos0):
        lq, lk = q.shape[2], k.shape[2]
        mask = None
        if kind == "causal" and lq > 1:
            mask = causal_lower_right(lq, lk)  # query r sits at position lk - lq + r
        elif kind == "window":
            qpos = torch.arange(lq, device=q.device)[:, None] + q_pos0
            kpos = torch.arange(lk, device=q.device)[None, :]
            mask = (kpos <= qpos) & (kpos >= qpos - window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)

    return attend


def explicit_attend(problem: Problem) -> AttendFn:
    """Grouped einsum over the cache prefix; the mask is built from cache positions, not from mask_mods."""
    scale, kind, window = problem.softmax_scale, problem.mask.kind, problem.mask.window
    group = problem.hq // problem.hkv

    def attend(q, k, v, q_pos0):
        b, hq, lq, d = q.shape
        lk = k.shape[2]
        qg = q.reshape(b, hq // group, group, lq, d)  # query head h = g * group + r reads kv head g
        s = torch.einsum("bgrqd,bgkd->bgrqk", qg, k) * scale
        if kind in ("causal", "window"):
            qpos = torch.arange(lq, device=q.device)[:, None] + q_pos0  # absolute positions
            kpos = torch.arange(lk, device=q.device)[None, :]
            allowed = kpos <= qpos
            if kind == "window":
                allowed = allowed & (kpos >= qpos - window)
            s = s.masked_fill(~allowed, float("-inf"))
        o = torch.einsum("bgrqk,bgkd->bgrqd", torch.softmax(s, dim=-1), v)
        return o.reshape(b, hq, lq, v.shape[-1])

    return attend


class _KVCacheVariant(KernelVariant):
    """fn(q, k, v): prefill k/v[:, :, :lk-lq] once per (k, v) pair, then write the step's lq tokens and attend."""

    masks = frozenset({"none", "causal", "window"})
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    backward_devices = frozenset()  # decoding is inference; the cache write is not differentiated

    def make_attend(self, problem: Problem) -> AttendFn:
        """The cache's attend function for ``problem`` (a variant may name a factory: staticmethod(...))."""
        raise NotImplementedError

    def extra_reasons(self, problem, backward):
        reasons = []
        if problem.lq > problem.lk:
            reasons.append(f"a decode step needs lq <= lk (the new tokens are part of the cache), got {problem.lq} > {problem.lk}")
        if problem.mask.kind != "none" and problem.mask.align == "top_left" and problem.lq != problem.lk:
            reasons.append("KV-cache decoding places the queries at the end of the cache: the mask must be bottom-right")
        return reasons

    def build(self, problem: Problem):
        """Allocate the cache once (outside the timed region); the returned fn runs one decode step."""
        p = problem
        cache = KVCache(p.batch, p.hkv, cache_capacity(p.lk), p.dqk, p.dv, getattr(torch, p.dtype),
                        p.device, self.make_attend(p))
        prefix = p.lk - p.lq
        state: dict = {"k": None, "v": None, "versions": None}

        def run(q, k, v):
            # the prompt is cached once per (k, v) pair; weak references so a new tensor at a
            # recycled address is never mistaken for the cached one, versions to see in-place edits
            same = (state["k"] is not None and state["k"]() is k and state["v"]() is v
                    and state["versions"] == (k._version, v._version))
            with torch.no_grad():
                if same:
                    cache.length = prefix  # rewind over the previous step's tokens
                else:
                    cache.reset()
                    cache.write(k[:, :, :prefix], v[:, :, :prefix])
                    state.update(k=weakref.ref(k), v=weakref.ref(v), versions=(k._version, v._version))
                return cache.step(q, k[:, :, prefix:], v[:, :, prefix:])

        run.cache = cache  # for tests: the preallocated buffers
        return run


@register
class KVCacheSdpa(_KVCacheVariant):
    name = "kvcache-sdpa"
    description = "KV-cache decode step: write new K/V into a preallocated cache, SDPA (enable_gqa) over its prefix"
    backend = "sdpa:default+kvcache"
    make_attend = staticmethod(sdpa_attend)


@register
class KVCacheExplicit(_KVCacheVariant):
    name = "kvcache-explicit"
    description = "KV-cache decode step: grouped einsum over the cache prefix, mask from absolute cache positions"
    backend = "eager-einsum+kvcache"
    make_attend = staticmethod(explicit_attend)


def decode_problems(device: str, dtypes: tuple, lk: int = 300) -> list[Problem]:
    """Decode-shaped correctness problems: 1 and 4 new queries against ``lk`` cached keys, GQA/MQA."""
    from attnsuite.problem import Mask

    br = Mask("causal", align="bottom_right")
    base = [
        Problem(batch=2, lq=1, lk=lk, hq=8, hkv=2, dqk=32, dv=32, mask=br, tag="decode"),
        Problem(batch=2, lq=4, lk=lk, hq=8, hkv=2, dqk=32, dv=32, mask=br, tag="decode"),
        Problem(batch=1, lq=4, lk=lk, hq=4, hkv=1, dqk=16, dv=32, mask=br, tag="decode-mqa"),
        Problem(batch=1, lq=4, lk=lk, hq=4, hkv=4, dqk=32, dv=32,
                mask=Mask("window", window=64, align="bottom_right"), tag="decode-window"),
    ]
    return [p.with_(device=device, dtype=dtype) for dtype in dtypes for p in base]
