"""``triton-flash``: the suite's own FlashAttention-2 kernel in Triton, forward and backward.

The kernels (:mod:`.triton_kernels.flash`) are written here from the FlashAttention-2
algorithm: the forward streams key blocks with an online softmax and saves each row's
log-sum-exp; the backward recomputes the probabilities from it. Two backward paths: "split" (the
default), one kernel owning a key block's dK/dV (summing the GQA group's query heads in order) and
one owning a query block's dQ; "fused", one kernel per key block that also adds its share of dQ
into an fp32 accumulator with atomics. ``FlashOptions.bwd`` or ATTNSUITE_TRITON_BWD=fused|split
picks one; otherwise the rule in :mod:`.triton_kernels.bwd_path` does.

Supports: bf16, fp16 (CUDA and the CPU interpreter), fp32 on the interpreter only (Triton's fp32
``tl.dot`` on CUDA is TF32); masks none, causal and sliding window with either corner (top-left
or bottom-right); GQA and MQA without repeating K/V; Lq != Lk; any length; head dims up to 256
(non-powers of two padded inside the kernel; dv may differ from dqk); the default or a pinned
scale. Not: ALiBi, softcap, dropout, other mask kinds.

Deterministic: the forward always, and the default "split" backward (no atomics: dQ has its own
kernel), so two identical runs agree bit for bit. The "fused" backward's dQ is not bitwise
deterministic (the order of its fp32 atomic adds varies); the suite's repeat check is forward-only,
so ``deterministic = True`` still describes what it checks.

On CUDA the kernels are autotuned per head dim, mask and dtype (a few tile configs): that shows
as first-call time in the benchmark records. On CPU tensors they run under Triton's interpreter
with one fixed tile, which costs seconds per problem: the variant declines CPU problems above a
size limit (see :data:`attnsuite.triton_support.CPU_MAX_STEPS`) with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from attnsuite.problem import Problem
from attnsuite.registry import KernelVariant, register
from attnsuite.triton_support import CPU_MAX_STEPS, interpreter_budget, interpreting, triton_reasons  # noqa: F401

from .triton_kernels import kernels
from .triton_kernels.bwd_path import check_bwd_path

MASK_CODES = {"none": 0, "causal": 1, "window": 2}
MAX_HEAD_DIM = 256
MUTANTS = ("skip_block", "wrong_corner", "stale_lse")  # kernel defects the tests switch on


@dataclass(frozen=True)
class FlashOptions:
    """Everything the kernels need beyond q, k, v: the mask as (code, corner offset, window), the scale."""

    mask: int
    offset: int
    window: int
    scale: float
    mutants: dict = field(default_factory=dict, compare=False, hash=False)
    bwd: str | None = None  # backward path, "split" or "fused"; None: $ATTNSUITE_TRITON_BWD, else the rule

    @staticmethod
    def of(problem: Problem, mutants: dict | None = None, bwd: str | None = None) -> "FlashOptions":
        """The options of ``problem`` (mutant flags only for the tests; ``bwd`` pins the backward path)."""
        unknown = sorted(set(mutants or {}) - set(MUTANTS))
        if unknown:
            raise ValueError(f"unknown triton-flash mutant flags {unknown}; known: {', '.join(MUTANTS)}")
        return FlashOptions(MASK_CODES[problem.mask.kind], problem.align_offset, problem.mask.window,
                            problem.softmax_scale, dict(mutants or {}), bwd)


class FlashAttention(torch.autograd.Function):
    """o = attention(q, k, v); the backward recomputes from the saved log-sum-exp (split or fused path)."""

    @staticmethod
    def forward(ctx, q, k, v, opts: FlashOptions):
        mod = kernels("flash", q.device.type)
        o, lse = mod.forward(q, k, v, opts.mask, opts.offset, opts.window, opts.scale, opts.mutants)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.opts = opts
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        opts = ctx.opts
        mod = kernels("flash", q.device.type)
        dq, dk, dv = mod.backward(do, q, k, v, o, lse, opts.mask, opts.offset, opts.window, opts.scale,
                                  opts.mutants, path=opts.bwd)
        return dq, dk, dv, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, opts: FlashOptions) -> torch.Tensor:
    """Differentiable attention of SDPA-layout tensors through the Triton kernels."""
    return FlashAttention.apply(q, k, v, opts)


@register
class TritonFlash(KernelVariant):
    name = "triton-flash"
    description = "the suite's own FlashAttention-2 kernels in Triton (fwd + dQ and dK/dV bwd, GQA, windows)"
    masks = frozenset(MASK_CODES)
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    dtypes = frozenset({"bfloat16", "float16", "float32"})
    fused = True
    deterministic = True
    backend = "triton"
    mutants: ClassVar[dict] = {}  # test-only subclasses set kernel flags here
    bwd_path: ClassVar[str | None] = None  # unregistered subclasses (tests, benchmark rows) pin a backward path

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        reasons = triton_reasons(problem)
        if max(problem.dqk, problem.dv) > MAX_HEAD_DIM:
            reasons.append(f"{self.name} takes head dims up to {MAX_HEAD_DIM}, got {problem.dqk}/{problem.dv}")
        reasons.extend(interpreter_budget(problem.device, problem.batch * problem.hq, problem.lq, problem.lk))
        return reasons

    def build(self, problem: Problem):
        opts = FlashOptions.of(problem, self.mutants, self.bwd_path)

        def run(q, k, v):
            return flash_attention(q, k, v, opts)

        return run


def pinned_variant(bwd: str, mutants: dict | None = None) -> TritonFlash:
    """An unregistered ``triton-flash`` whose backward always takes path ``bwd`` ("split" or "fused").

    Named ``triton-flash[<bwd>]`` (plus the mutant flags, for the tests' defective kernels); used by
    the tests and by scripts/triton_bench.py's per-path rows. Not registered: the benchmark tier
    runs the registered variant, whose path the rule picks.
    """
    check_bwd_path(bwd, "pinned_variant's bwd argument")
    flags = dict(mutants or {})
    suffix = "".join(f"-{flag.replace('_', '-')}" for flag in sorted(flags))
    name = f"triton-flash[{bwd}]{suffix}"
    cls = type(f"TritonFlash_{bwd}{suffix.replace('-', '_')}", (TritonFlash,),
               {"name": name, "bwd_path": bwd, "mutants": flags})
    return cls()
