"""Kernel variants backed by third-party attention libraries, registered only when the library imports.

Each library below is tried once when the variants load (:mod:`attnsuite.libraries`); when it
imports, its variants register, when it does not the run header says which one is missing and why.
The suite's kernel contract is SDPA's layout, q (batch, hq, lq, d), k/v (batch, hkv, lk, d); these
libraries take (batch, seq, heads, dim) (FlashInfer's single-sequence calls take (seq, heads, dim)),
so each wrapper transposes on the way in and out (views: no copy unless the library makes one).

What each declares (docs/libraries.md has the sources and the reasoning):

- ``flash-attn2`` (``flash_attn.flash_attn_func``, imported from ``flash_attn.flash_attn_interface``) and ``flash-attn4`` (``flash_attn.cute.flash_attn_func``,
  package flash-attn-4): CUDA, fp16/bf16, GQA/MQA, causal and sliding window. Their causal mask is
  aligned bottom-right when lq != lk, so a top-left causal problem with lq != lk is declared
  unsupported (it cannot be expressed), not silently computed with the other corner.
- ``xformers-mea`` (``xformers.ops.memory_efficient_attention``): CUDA, fp16/bf16/fp32, GQA through
  its 5-D (batch, seq, groups, heads, dim) form, causal with either corner (``LowerTriangularMask``
  is top-left, ``LowerTriangularFromBottomRightMask`` bottom-right).
- ``flashinfer-prefill`` (``flashinfer.single_prefill_with_kv_cache``) and ``flashinfer-decode``
  (``flashinfer.single_decode_with_kv_cache``): CUDA, fp16/bf16, forward only (an inference library),
  head dims 64/128/256, one sequence per call (the wrapper loops over the batch). Prefill's causal is
  bottom-right; every other mask goes in as its boolean ``custom_mask`` (True = attend). Decode takes
  one query per sequence.
- ``sage-attention`` (``sageattention.sageattn``, SageAttention 1: Triton kernels): CUDA, fp16/bf16,
  head dims 64/96/128, GQA, causal only with lq == lk, forward only; INT8 Q K^T, so it declares the
  ``int8`` accuracy class (docs/approximate.md). Its in-place smoothing of the caller's ``k`` is a
  declared known defect of the forward check, and the future keys that reach a causal row through
  that smoothing's mean one of the causality check.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, ClassVar

import torch

from attnsuite import libraries, mask_mods
from attnsuite.libraries import Library
from attnsuite.problem import MASK_KINDS, Problem
from attnsuite.registry import KernelVariant, register

HALF = frozenset({"float16", "bfloat16"})


def to_bshd(x: torch.Tensor) -> torch.Tensor:
    """SDPA layout (batch, heads, seq, dim) to the libraries' (batch, seq, heads, dim), as a view."""
    return x.transpose(1, 2)


def from_bshd(x: torch.Tensor) -> torch.Tensor:
    """(batch, seq, heads, dim) back to the suite's (batch, heads, seq, dim), as a view."""
    return x.transpose(1, 2)


def first_tensor(result: Any) -> torch.Tensor:
    """The output of a call that returns either the tensor or a tuple starting with it (out, lse)."""
    return result[0] if isinstance(result, (tuple, list)) else result


class LibraryKernel(KernelVariant):
    """A kernel variant whose work is one library function, given at registration.

    ``corner`` is the causal corner the library aligns to when lq != lk: ``"bottom_right"`` (the
    flash_attn convention), or ``"either"`` when the library takes both.
    """

    devices: ClassVar[frozenset] = frozenset({"cuda"})
    dtypes: ClassVar[frozenset] = HALF
    library: ClassVar[str] = ""
    corner: ClassVar[str] = "bottom_right"
    head_dims: ClassVar[frozenset] = frozenset()  # supported q/k head dims; empty means any up to 256

    def __init__(self, fn: Callable, module: ModuleType | None = None) -> None:
        self.fn = fn
        self.module = module

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        reasons = []
        if (self.corner == "bottom_right" and problem.mask.kind != "none" and problem.lq != problem.lk
                and problem.mask.align == "top_left" and problem.mask.kind in ("causal", "window")):
            reasons.append(f"{self.name}: {self.library} aligns its causal mask bottom-right when lq != lk; "
                           "a top-left causal problem with lq != lk cannot be expressed")
        if self.head_dims and problem.dqk not in self.head_dims:
            reasons.append(f"{self.name}: head dim {problem.dqk} not in {sorted(self.head_dims)}")
        elif problem.dqk > 256:
            reasons.append(f"{self.name}: head dim {problem.dqk} > 256")
        device = problem.device.split(":")[0]
        if device in self.devices and (device != "cuda" or torch.cuda.is_available()):
            why = libraries.device_reason(self.name, self.library, problem.device, lambda: self.probe(problem.device))
            if why:
                reasons.append(why)
        return reasons

    def probe_problem(self, device: str) -> Problem:
        """The tiny problem of the device probe: one the variant supports wherever its library works."""
        dtype = "float16" if "float16" in self.dtypes else sorted(self.dtypes)[0]
        return Problem(batch=1, lq=64, lk=64, hq=2, hkv=2, dqk=64, dv=64, dtype=dtype, device=device)

    def probe(self, device: str) -> None:
        """One tiny forward on ``device`` (inputs filled, not drawn: the RNG stays put); raises if the
        library cannot run there."""
        p = self.probe_problem(device)
        dt = getattr(torch, p.dtype)
        q = torch.full((p.batch, p.hq, p.lq, p.dqk), 0.5, dtype=dt, device=device)
        k = torch.full((p.batch, p.hkv, p.lk, p.dqk), 0.25, dtype=dt, device=device)
        v = torch.full((p.batch, p.hkv, p.lk, p.dv), 1.0, dtype=dt, device=device)
        with torch.no_grad():
            self.build(p)(q, k, v)


def _window(problem: Problem) -> tuple[int, int]:
    """flash_attn's (left, right) window: -1 means unbounded; a causal window is (w, 0)."""
    if problem.mask.kind == "window":
        return (problem.mask.window, 0)
    return (-1, 0) if problem.mask.kind == "causal" else (-1, -1)


class FlashAttn2(LibraryKernel):
    name = "flash-attn2"
    library = "flash_attn"
    description = "FlashAttention 2 (flash_attn.flash_attn_func), (b, s, h, d) layout"
    masks = frozenset({"none", "causal", "window"})
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "custom_scale", "softcap"})
    backend = "flash_attn2"

    def build(self, problem: Problem):
        causal = problem.mask.kind in ("causal", "window")
        window, scale, cap = _window(problem), problem.softmax_scale, problem.softcap or 0.0

        def run(q, k, v):
            out = self.fn(to_bshd(q), to_bshd(k), to_bshd(v), dropout_p=0.0, softmax_scale=scale,
                          causal=causal, window_size=window, softcap=cap)
            return from_bshd(first_tensor(out))

        return run


class FlashAttn4(LibraryKernel):
    name = "flash-attn4"
    library = "flash_attn.cute"
    description = "FlashAttention 4 (flash_attn.cute.flash_attn_func, package flash-attn-4), (b, s, h, d)"
    masks = frozenset({"none", "causal", "window"})
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "custom_scale", "softcap"})
    head_dims = frozenset({64, 96, 128})
    backend = "flash_attn4"

    def build(self, problem: Problem):
        causal = problem.mask.kind in ("causal", "window")
        left = problem.mask.window if problem.mask.kind == "window" else None
        window = (left, 0) if problem.mask.kind == "window" else (None, None)
        scale, cap = problem.softmax_scale, problem.softcap or 0.0

        def run(q, k, v):
            out = self.fn(to_bshd(q), to_bshd(k), to_bshd(v), softmax_scale=scale, causal=causal,
                          window_size=window, softcap=cap)
            return from_bshd(first_tensor(out))  # returns (out, lse)

        return run


class XformersMea(LibraryKernel):
    name = "xformers-mea"
    library = "xformers"
    description = "xformers.ops.memory_efficient_attention, (b, s, h, d); GQA as (b, s, g, h, d)"
    dtypes = frozenset({"float16", "bfloat16", "float32"})
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "custom_scale"})
    corner = "either"
    backend = "xformers"

    def build(self, problem: Problem):
        bias = None
        if problem.mask.kind == "causal":
            biases = self.module.fmha.attn_bias
            bias = (biases.LowerTriangularFromBottomRightMask() if problem.mask.align == "bottom_right"
                    else biases.LowerTriangularMask())
        scale, group = problem.softmax_scale, problem.hq // problem.hkv

        def run(q, k, v):
            q, k, v = to_bshd(q), to_bshd(k), to_bshd(v)
            if group == 1:
                return from_bshd(self.fn(q, k, v, attn_bias=bias, scale=scale))
            b, lq, hq, d = q.shape
            hkv = k.shape[2]
            # query head h reads kv head h // group: groups are the kv heads, stride 0 over the group
            q5 = q.reshape(b, lq, hkv, group, d)
            k5 = k.unsqueeze(3).expand(-1, -1, -1, group, -1)
            v5 = v.unsqueeze(3).expand(-1, -1, -1, group, -1)
            out = self.fn(q5, k5, v5, attn_bias=bias, scale=scale)
            return from_bshd(out.reshape(b, lq, hq, out.shape[-1]))

        return run


class FlashInferPrefill(LibraryKernel):
    name = "flashinfer-prefill"
    library = "flashinfer"
    description = "flashinfer.single_prefill_with_kv_cache per sequence, NHD layout (seq, heads, dim)"
    masks = frozenset(MASK_KINDS)
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "custom_scale"})
    backward_devices = frozenset()  # inference library: no autograd
    corner = "either"  # bottom-right natively, anything else as a custom mask
    head_dims = frozenset({64, 128, 256})
    backend = "flashinfer"

    def build(self, problem: Problem):
        native = problem.mask.kind == "causal" and (problem.mask.align == "bottom_right" or problem.lq == problem.lk)
        custom = None if native else mask_mods.dense_bool_mask(problem, device=problem.device)
        scale = problem.softmax_scale

        def run(q, k, v):
            q, k, v = to_bshd(q), to_bshd(k), to_bshd(v)
            outs = [self.fn(q[i], k[i], v[i], custom_mask=custom, causal=native, kv_layout="NHD", sm_scale=scale)
                    for i in range(q.shape[0])]
            return from_bshd(torch.stack([first_tensor(o) for o in outs]))

        return run


class FlashInferDecode(LibraryKernel):
    name = "flashinfer-decode"
    library = "flashinfer"
    description = "flashinfer.single_decode_with_kv_cache per sequence: one query, NHD cache"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "custom_scale"})
    backward_devices = frozenset()
    head_dims = frozenset({64, 128, 256})
    backend = "flashinfer"

    def probe_problem(self, device: str) -> Problem:
        return super().probe_problem(device).with_(lq=1)

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        reasons = super().extra_reasons(problem, backward)
        if problem.lq != 1:
            reasons.append(f"{self.name} decodes one query per sequence; the problem has lq={problem.lq}")
        return reasons

    def build(self, problem: Problem):
        scale = problem.softmax_scale  # one query, causal bottom-right: it sees every cached key

        def run(q, k, v):
            k, v = to_bshd(k), to_bshd(v)
            outs = [self.fn(q[i, :, 0], k[i], v[i], kv_layout="NHD", sm_scale=scale) for i in range(q.shape[0])]
            return torch.stack([first_tensor(o) for o in outs]).unsqueeze(2)

        return run


class SageAttention(LibraryKernel):
    name = "sage-attention"
    library = "sageattention"
    description = ("sageattention.sageattn (SageAttention 1, Triton): INT8 Q K^T after smoothing K, fp16 P V; "
                   "accuracy class int8")
    dtypes = frozenset({"float16", "bfloat16"})
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "custom_scale"})  # its causal mask needs lq == lk (its docstring)
    backward_devices = frozenset()  # Triton kernels without autograd
    head_dims = frozenset({64, 96, 128})
    accuracy = "int8"
    deterministic = True
    backend = "sageattention"
    known_defects = {
        "forward": "sageattention 1.0.6 smooths K by subtracting its mean from the caller's k tensor in place "
                   "(sageattention/core.py, 'k -= km'); the output is right, the caller's k is not "
                   "(read in its source on 2026-11-30; the forward check failed as expected on an H200, 2026-12-01)",
        # The mean is taken over every key, future ones included, before the INT8 rounding: exact
        # arithmetic would cancel it (a per-row shift of the scores), the rounding does not.
        "causality": "sageattention 1.0.6 subtracts the mean of K over the whole sequence before rounding K to "
                     "INT8, so a causal row's output moves with keys it must not see: changing keys >= 64 moved "
                     "62623 (fp16) and 54492 (bf16) output elements of rows that must not see them, by up to "
                     "0.0898 and 0.109 (H200, 2026-12-01, b2-q129-h4:2-d128 causal)",
    }

    def build(self, problem: Problem):
        scale, causal = problem.softmax_scale, problem.mask.kind == "causal"

        def run(q, k, v):
            return self.fn(q, k, v, tensor_layout="HND", is_causal=causal, sm_scale=scale)

        return run


def _one(cls: type[LibraryKernel], fn_name: str) -> Callable[[ModuleType], list[str]]:
    """A registrar: look ``fn_name`` up in the imported module and register ``cls`` around it."""

    def registrar(module: ModuleType) -> list[str]:
        register(cls(getattr(module, fn_name), module))
        return [cls.name]

    return registrar


def _flashinfer(module: ModuleType) -> list[str]:
    register(FlashInferPrefill(module.single_prefill_with_kv_cache, module))
    register(FlashInferDecode(module.single_decode_with_kv_cache, module))
    return [FlashInferPrefill.name, FlashInferDecode.name]


LIBRARIES = (
    Library("xformers", "xformers.ops", _one(XformersMea, "memory_efficient_attention"), "xformers"),
    # the interface module, not the package: with only flash-attn-4 installed, ``flash_attn`` is a bare
    # namespace package that imports but has no FA2 in it
    Library("flash_attn", "flash_attn.flash_attn_interface", _one(FlashAttn2, "flash_attn_func"), "flash-attn"),
    Library("flash_attn.cute", "flash_attn.cute", _one(FlashAttn4, "flash_attn_func"), "flash-attn-4"),
    Library("flashinfer", "flashinfer", _flashinfer, "flashinfer-python"),
    Library("sageattention", "sageattention", _one(SageAttention, "sageattn"), "sageattention"),
)

libraries.load(LIBRARIES)
