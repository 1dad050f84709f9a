"""Distributed variants: attention computed on P ranks, each holding a shard of the sequence.

Registered like every other variant; run only through :mod:`attnsuite.distributed` (in one
process they decline every problem, saying where they run). See docs/distributed.md.

- ``ring`` / ``ring-zigzag``: our ring attention (:mod:`attnsuite.distributed.ring_attention`) on
  contiguous / zigzag (load-balanced for causal) shards; any mask kind at global positions, GQA,
  Lq != Lk, any length (uneven and empty shards included); returns the log-sum-exp.
- ``context-parallel[-flash|-efficient|-cudnn]``: PyTorch's ``context_parallel`` over SDPA
  (the default backend choice, or one backend pinned); load balancing (head-tail = our zigzag)
  for causal calls, switched off for non-causal ones, which it refuses otherwise.
- ``ulysses``: all-to-all head parallelism: each rank trades its sequence shard of every head for
  the whole sequence of hq/P heads, attends locally (SDPA), and trades back.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from attnsuite.distributed.ring_attention import FAULTS, STATE_FAULTS, RingAttention
from attnsuite.distributed.shard import Layout, layout
from attnsuite.distributed.variant import DistributedVariant, RankContext, RankFn, Refused
from attnsuite.problem import MASK_KINDS, Problem
from attnsuite.registry import register
from attnsuite.variant_math import SDPA_NONDETERMINISTIC_BACKWARD


class _Ring(DistributedVariant):
    masks = frozenset(MASK_KINDS)
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    returns_lse = True
    backend = "ring"
    # the pairs SDPA's fused kernels take run its backward, whose dq differs between identical calls on
    # CUDA (variant_math); the ring's own merge and gradient hops keep a fixed order
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD

    def __init__(self, fault: Optional[str] = None, fused: bool = True) -> None:
        """``fault``: a defect to inject (tests only: see FAULTS); ``fused=False``: plain math for every pair."""
        if fault is not None and fault not in FAULTS + STATE_FAULTS:
            raise ValueError(f"{type(self).__name__}: unknown fault {fault!r}; known: {', '.join(FAULTS + STATE_FAULTS)}")
        self.fault, self.fused = fault, fused
        if fault is not None:  # a mutant is never registered; its name says what it is
            self.name = f"{type(self).name}[mutant={fault}]"
        elif not fused:
            self.name = f"{type(self).name}[math]"
        if not fused:  # plain math on every pair: bit for bit on every device
            self.nondeterministic_backward_devices = frozenset()

    def build_rank(self, problem: Problem, ctx: RankContext) -> RankFn:
        lay = ctx.layout

        def run(q, k, v):
            return RingAttention.apply(q, k, v, problem, ctx, lay, self.fault, self.fused)

        return run


@register
class Ring(_Ring):
    name = "ring"
    description = "ring attention on P ranks: contiguous shards, async K/V ring, fp32 online-softmax merge, ring backward"
    sharding = "contiguous"


@register
class RingZigzag(_Ring):
    name = "ring-zigzag"
    description = "ring attention on P ranks with zigzag shards (chunks r and 2P-1-r): causal work balanced"
    sharding = "zigzag"


# ---- PyTorch's context parallel ----------------------------------------------------------------
_SDPA_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}


def _cp_modules():
    """PyTorch's context-parallel entry points (import deferred: the module is experimental)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import _cp_options

    return init_device_mesh, context_parallel, _cp_options


class _ContextParallel(DistributedVariant):
    masks = frozenset({"none", "causal"})
    features = frozenset({"custom_scale"})
    sdpa_backend: ClassVar[Optional[str]] = None  # None: SDPA chooses
    deterministic = False  # the efficient/cuDNN backward may accumulate in a varying order

    @staticmethod
    def balanced(problem: Problem, world_size: int) -> bool:
        """Load balancing (head-tail chunks, our zigzag) is used for causal calls whose length splits into 2P chunks."""
        return problem.mask.kind == "causal" and problem.lq % (2 * world_size) == 0

    def layout(self, problem: Problem, world_size: int) -> Layout:
        return layout("zigzag" if self.balanced(problem, world_size) else "contiguous", problem.lq, problem.lk, world_size)

    def world_reasons(self, problem: Problem, world_size: int, device: str) -> list[str]:
        reasons = []
        if problem.lq % world_size:
            reasons.append(f"{self.name}: L={problem.lq} is not a multiple of P={world_size} "
                           "(context_parallel shards the sequence in equal parts; not tried)")
        return reasons

    def _mesh(self, ctx: RankContext):
        init_device_mesh, _, _ = _cp_modules()
        mesh = ctx.notes.get("_mesh")
        # one mesh per call (a RankContext lives for one task), reused by its backward; over the whole
        # world a mesh takes the default process group (torch's DeviceMesh), so no group is made per call,
        # except for gloo ranks on a host with CUDA, where torch makes one (context_parallel refuses on CPU)
        if mesh is None:
            mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
            ctx.notes["_mesh"] = mesh
        return mesh

    @contextlib.contextmanager
    def rank_scope(self, problem: Problem, ctx: RankContext):
        """context_parallel's patch (and the pinned SDPA backend) around the calls and their backward."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        _, context_parallel, cp_options = _cp_modules()
        mesh = self._mesh(ctx)
        # a stand-in buffer of the full length makes context_parallel choose its load balancer; nothing of
        # ours is resharded by it: q, k and v arrive as our shards, in its layout (head-tail = our zigzag)
        stand_in = torch.empty((1, 1, problem.lq, 1), device=ctx.device)
        old = cp_options.enable_load_balance
        cp_options.enable_load_balance = self.balanced(problem, ctx.world_size)  # off for non-causal: it raises otherwise
        backend = self.sdpa_backend
        pin = sdpa_kernel([getattr(SDPBackend, _SDPA_BACKENDS[backend])]) if backend else contextlib.nullcontext()
        try:
            with context_parallel(mesh, buffers=[stand_in], buffer_seq_dims=[2], no_restore_buffers={stand_in}), pin:
                yield
        except Refused:
            raise
        except Exception as exc:  # PyTorch's experimental API refusing the call: say what was seen
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise Refused(f"context_parallel on {ctx.device.type} raised {type(exc).__name__}: {first}"[:300]) from exc
        finally:
            cp_options.enable_load_balance = old

    def build_rank(self, problem: Problem, ctx: RankContext) -> RankFn:
        causal = problem.mask.kind == "causal"
        ctx.notes["bytes_estimated"] = True  # counted from the algorithm, not seen on the wire

        def run(q, k, v):
            # what context_parallel's ring sends per call: the K/V shard to P - 1 peers (its backward,
            # when run, sends K/V and dK/dV again: the bench counts the forward only, and says so)
            ctx.bytes_sent += (ctx.world_size - 1) * (k.numel() * k.element_size() + v.numel() * v.element_size())
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=problem.scale), None

        return run


@register
class ContextParallel(_ContextParallel):
    name = "context-parallel"
    description = "torch.distributed.tensor.experimental.context_parallel over SDPA (backend chosen by SDPA)"


@register
class ContextParallelFlash(_ContextParallel):
    name = "context-parallel-flash"
    description = "context_parallel over SDPA's flash backend"
    devices = frozenset({"cuda"})
    dtypes = frozenset({"bfloat16", "float16"})
    sdpa_backend = "flash"
    deterministic = True


@register
class ContextParallelEfficient(_ContextParallel):
    name = "context-parallel-efficient"
    description = "context_parallel over SDPA's memory-efficient backend"
    devices = frozenset({"cuda"})
    dtypes = frozenset({"bfloat16", "float16", "float32"})
    sdpa_backend = "efficient"
    known_defects = {
        "backward": "PyTorch 2.11 context_parallel over SDPA's memory-efficient backend: NaN/Inf in the causal "
                    "grad q and grad k on every rank (2 H200s, bf16 and fp16, 2026-11-30), and an illegal memory "
                    "access at L 32K/64K causal fwd+bwd in the scaling run",
    }

    def known_defect(self, check: str, problem: Problem) -> Optional[str]:
        # seen on CUDA with a causal mask only; the unmasked backward passed on the same GPUs
        if problem.device.startswith("cuda") and problem.mask.kind == "causal":
            return super().known_defect(check, problem)
        return None


@register
class ContextParallelCudnn(_ContextParallel):
    name = "context-parallel-cudnn"
    description = "context_parallel over SDPA's cuDNN backend"
    devices = frozenset({"cuda"})
    dtypes = frozenset({"bfloat16", "float16"})
    sdpa_backend = "cudnn"


# ---- Ulysses: all-to-all head parallelism ------------------------------------------------------
@register
class Ulysses(DistributedVariant):
    name = "ulysses"
    description = "all-to-all head parallelism: sequence shards traded for whole-sequence head groups, local SDPA"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "custom_scale"})
    sharding = "contiguous"  # the head groups come back in rank order: global order for contiguous shards
    backend = "ulysses"
    nondeterministic_backward_devices = SDPA_NONDETERMINISTIC_BACKWARD  # local SDPA, default dispatch

    def world_reasons(self, problem: Problem, world_size: int, device: str) -> list[str]:
        reasons = []
        for what, heads in (("hq", problem.hq), ("hkv", problem.hkv)):
            if heads % world_size:
                reasons.append(f"{self.name}: {what}={heads} is not a multiple of P={world_size} "
                               "(each rank attends with a whole group of heads)")
        return reasons

    def build_rank(self, problem: Problem, ctx: RankContext) -> RankFn:
        from attnsuite.distributed.all_to_all import heads_to_seq, seq_to_heads
        from attnsuite.distributed.shard import size

        q_rows = [size(s) for s in ctx.layout.q]
        kv_rows = [size(s) for s in ctx.layout.kv]
        causal = problem.mask.kind == "causal"

        def run(q, k, v):
            qh, kh, vh = seq_to_heads(q, q_rows, ctx), seq_to_heads(k, kv_rows, ctx), seq_to_heads(v, kv_rows, ctx)
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=problem.scale,
                                               enable_gqa=problem.hq != problem.hkv)
            return heads_to_seq(o, q_rows, ctx), None

        return run
