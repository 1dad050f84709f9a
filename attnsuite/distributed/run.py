"""One call of a distributed variant on a pool's ranks: shard the inputs, run, gather the shards.

:func:`rank_call` is the task each rank runs (take its shard, call the variant, backpropagate its
shard of the output gradient); :func:`gather` puts the ranks' shards back into full tensors that
start as NaN, so a position no rank wrote stays NaN and fails the comparison.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Optional

import torch

from ..memory import poison_free_memory
from ..problem import Problem
from .launch import RankPool
from .shard import Layout, place, take
from .variant import DistributedVariant, RankContext

SEQ = 2  # the sequence axis of q, k, v, o (SDPA layout); the lse's is axis 2 too


def rank_call(ctx: RankContext, payload: dict) -> dict:
    """The per-rank task: this rank's output, lse and gradient shards for the payload's variant and inputs."""
    variant: DistributedVariant = payload["variant"]
    problem: Problem = payload["problem"]
    lay = variant.layout(problem, ctx.world_size)
    ctx.layout, ctx.bytes_sent = lay, 0
    backward = payload["grad_out"] is not None
    q, k, v = (payload["inputs"][n] for n in ("q", "k", "v"))
    shards = {
        "q": take(q, lay.q[ctx.rank], SEQ),
        "k": take(k, lay.kv[ctx.rank], SEQ),
        "v": take(v, lay.kv[ctx.rank], SEQ),
    }
    shards = {n: t.to(ctx.device).requires_grad_(backward) for n, t in shards.items()}
    fn = variant.build_rank(problem, ctx)
    poison_free_memory(q.numel() * 8 // ctx.world_size, ctx.device)
    do = take(payload["grad_out"], lay.q[ctx.rank], SEQ).to(ctx.device) if backward else None
    with variant.rank_scope(problem, ctx), torch.enable_grad() if backward else torch.no_grad():
        out, lse = fn(shards["q"], shards["k"], shards["v"])
        if isinstance(out, torch.Tensor) and out.device != ctx.device:
            # the output goes back to the parent on the CPU: another device had passed unseen
            raise ValueError(f"rank {ctx.rank} returned its output on {out.device}, its shards are on {ctx.device}")
        if backward:
            out.backward(do)
    return {
        "out": out.detach().cpu(),
        "lse": None if lse is None else lse.detach().cpu(),
        "grads": {n: (None if t.grad is None else t.grad.cpu()) for n, t in shards.items()} if backward else None,
        "bytes_sent": ctx.bytes_sent,
        "notes": {k: v for k, v in ctx.notes.items() if not k.startswith("_")},
    }


@dataclass
class Gathered:
    """Full tensors assembled from the ranks' shards (NaN where no rank wrote)."""

    out: torch.Tensor
    lse: Optional[torch.Tensor]
    grads: Optional[dict[str, Optional[torch.Tensor]]]
    bytes_sent: list[int]
    notes: dict


def _assemble(parts: list, segs: tuple, shape: tuple, dtype, what: str, name: str, same_dtype: bool = True) -> torch.Tensor:
    """The full tensor from the ranks' ``parts`` (NaN where none wrote); each part must have its
    shard's shape and, with ``same_dtype``, ``dtype``: converted silently, a rank other than rank 0
    returning another dtype had passed every check."""
    full = torch.full(shape, float("nan"), dtype=dtype)
    for rank, (part, s) in enumerate(zip(parts, segs)):
        want = list(shape)
        want[SEQ] = sum(b - a for a, b in s)
        if tuple(part.shape) != tuple(want):
            raise ValueError(f"{what}: rank {rank} returned {name} of shape {tuple(part.shape)}, its shard is {tuple(want)}")
        if same_dtype and part.dtype != dtype:
            raise ValueError(f"{what}: rank {rank} returned {name} in {part.dtype}, the problem's dtype is {dtype}")
        place(full, part.to(dtype), s, SEQ)
    return full


def gather(results: list[dict], lay: Layout, problem: Problem, inputs: dict, what: str) -> Gathered:
    """The ranks' shards put together: output (b, hq, lq, dv), lse (b, hq, lq), gradients like the inputs."""
    out_shape = (problem.batch, problem.hq, problem.lq, problem.dv)
    out = _assemble([r["out"] for r in results], lay.q, out_shape, inputs["q"].dtype, what, "output")
    lse = None
    if all(r["lse"] is not None for r in results):
        # the lse is the accumulation dtype's, whatever the problem's
        lse = _assemble([r["lse"].unsqueeze(-1) for r in results], lay.q, (*out_shape[:3], 1), torch.float64,
                        what, "lse", same_dtype=False)[..., 0]
    grads = None
    if results[0]["grads"] is not None:
        grads = {}
        for name, t in inputs.items():
            parts = [r["grads"][name] for r in results]
            if any(p is None for p in parts):
                grads[name] = None  # detached on some rank: the check says so
                continue
            segs = lay.q if name == "q" else lay.kv
            grads[name] = _assemble(parts, segs, tuple(t.shape), t.dtype, what, f"grad {name}")
    notes = {}
    for r in results:
        notes.update(r["notes"])
    return Gathered(out, lse, grads, [r["bytes_sent"] for r in results], notes)


def call(pool: RankPool, variant: DistributedVariant, problem: Problem, inputs: dict,
         grad_out: Optional[torch.Tensor] = None) -> Gathered:
    """Run ``variant`` on the pool's ranks with full ``inputs`` (q, k, v); gather output, lse and gradients."""
    what = f"{variant.name} on {problem.id} with P={pool.world_size}"
    try:
        pickle.dumps(variant)
    except Exception as exc:  # noqa: BLE001 - any pickling failure: the ranks would never get the task
        # sent anyway, the failure had happened in the queue's feeder thread, unseen, and the ranks read as
        # hung after the whole rank timeout (an outside tester's trial)
        raise ValueError(f"{what}: the variant cannot be sent to the ranks: {type(exc).__name__}: {exc} (a "
                         "distributed variant is pickled to reach them: define its class at a module's top "
                         "level, not inside a function, and keep no lambda, lock or open file on it)") from None
    cpu = {n: t.detach().cpu() for n, t in inputs.items()}
    payload = {"variant": variant, "problem": problem, "inputs": cpu,
               "grad_out": None if grad_out is None else grad_out.detach().cpu()}
    results = pool.run(rank_call, payload, what)
    return gather(results, variant.layout(problem, pool.world_size), problem, cpu, what)
