"""Timing a distributed variant on P ranks, for the benchmark runner (runner._run_distributed).

:func:`run_distributed_case` times one (variant, problem, mode) on P ranks: every rank draws the
family's device inputs for the full problem (same seed, so the same tensors on every rank), keeps
its shard, and times the call with the suite's timer (attnsuite/timing.py; CUDA events on CUDA)
under a fixed warm-up and sample count, so every rank makes the same number of calls (the calls
contain collectives: different counts would deadlock). The case time is the slowest rank's
median; memory is each rank's ``max_memory_allocated``; bytes are what each rank sent in one call
(counted by our ring; estimated from the algorithm for context_parallel, and marked so).

Scaling efficiency (:func:`scaling_efficiency`) = T(best single-device variant, full sequence) /
(P x T(P ranks)).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch

from .. import registry, timing
from ..problem import Problem
from .launch import RankError, RankPool
from .run import SEQ
from .shard import take
from .variant import DistributedVariant, RankContext, refusal

BENCH_MODES = ("fwd", "fwd+bwd")


def scaling_efficiency(t_single_best_s: float, p: int, t_p_s: float) -> float:
    """T(best one-device variant on the full sequence) / (P x T(P ranks)); 1.0 is perfect scaling."""
    if not isinstance(p, int) or p < 1:
        raise ValueError(f"scaling_efficiency: p must be a positive int, got {p!r}")
    if not (t_single_best_s > 0 and t_p_s > 0):
        raise ValueError(f"scaling_efficiency: times must be positive, got {t_single_best_s!r} and {t_p_s!r}")
    return t_single_best_s / (p * t_p_s)


def fixed_count(config: timing.TimerConfig, samples: Optional[int] = None) -> timing.TimerConfig:
    """``config`` with a fixed warm-up and sample count (min == max), identical on every rank."""
    n = samples or max(config.min_samples, 5)
    return replace(config, warmup_s=0.0, min_warmup=max(config.min_warmup, 2), min_samples=n, max_samples=n,
                   min_sample_s=0.0)


def _bench_task(ctx: RankContext, payload: dict) -> dict:
    """Per rank: draw the inputs, keep the shard, time the step; this rank's figures."""
    variant: DistributedVariant = payload["variant"]
    problem: Problem = payload["problem"].with_(device=str(ctx.device))
    mode, config = payload["mode"], payload["config"]
    lay = variant.layout(problem, ctx.world_size)
    ctx.layout = lay
    family = registry.family_of(variant)
    full, grad_out, _ = family.device_inputs(problem)
    backward = mode == "fwd+bwd"
    q = take(full["q"], lay.q[ctx.rank], SEQ).requires_grad_(backward)
    k = take(full["k"], lay.kv[ctx.rank], SEQ).requires_grad_(backward)
    v = take(full["v"], lay.kv[ctx.rank], SEQ).requires_grad_(backward)
    do = take(grad_out, lay.q[ctx.rank], SEQ)
    del full, grad_out
    fn = variant.build_rank(problem, ctx)
    cuda = ctx.device.type == "cuda"

    def step():
        if not backward:
            with torch.no_grad():
                return fn(q, k, v)[0]
        q.grad = k.grad = v.grad = None
        with torch.enable_grad():
            out = fn(q, k, v)[0]
            out.backward(do)
        return out

    def zero() -> None:
        q.grad = k.grad = v.grad = None

    if cuda:
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with variant.rank_scope(problem, ctx):
        ctx.bytes_sent = 0
        step()  # one call counted alone: the bytes of one call
        bytes_one = ctx.bytes_sent
        result = timing.measure(step, str(ctx.device), config, setup=zero if backward else None, first_call=False)
        peak = torch.cuda.max_memory_allocated(ctx.device) if cuda else None
        # every rank profiles (the calls hold collectives): where one call's device time goes
        profile = timing.profile_step(step, str(ctx.device)) if cuda and payload.get("profile") else None
    step = zero = None  # the closures hold the shards: drop them before emptying the cache
    if cuda:
        torch.cuda.empty_cache()  # the next case (another length) starts from an empty cache on every rank
    return {"median_s": result.median_s, "iqr_s": result.iqr_s, "samples": len(result.samples_s),
            "samples_s": list(result.samples_s), "warmup_calls": result.warmup_calls,
            "timer": result.timer, "bytes_sent": bytes_one, "peak_bytes": peak,
            "notes": {k: v for k, v in ctx.notes.items() if not k.startswith("_")}, "profile": profile}


def run_distributed_case(variant_name: str, problem: Problem, mode: str, world_size: int,
                         timer_config: timing.TimerConfig, pool: Optional[RankPool] = None,
                         samples: Optional[int] = None, profile: bool = False) -> dict[str, Any]:
    """Time ``variant_name`` on ``problem`` in ``mode`` ('fwd' or 'fwd+bwd') on ``world_size`` ranks.

    Returns a JSON-ready dict: outcome ('ok', 'skip' or 'error'), detail, time_s (the slowest
    rank's median), per-rank medians, peak bytes and bytes sent, whether the bytes are estimated,
    the sharding. ``pool`` reuses started ranks (else a pool on the problem's device is started
    and closed). ``profile`` (CUDA): one more call per rank under the profiler, its device time by
    kernel in ``profile_per_rank`` (:func:`attnsuite.timing.kernel_breakdown`). Never raises for the
    case's own failure.
    """
    rec: dict[str, Any] = {"variant": variant_name, "problem": problem.id, "mode": mode,
                           "world_size": world_size, "outcome": "ok", "detail": ""}
    if mode not in BENCH_MODES:
        return {**rec, "outcome": "skip", "detail": f"mode {mode!r}: distributed cases time {', '.join(BENCH_MODES)}"}
    variant = registry.get(variant_name)
    if not isinstance(variant, DistributedVariant):
        return {**rec, "outcome": "skip", "detail": f"{variant_name} is not a distributed variant"}
    reasons = variant.unsupported(problem, backward=mode != "fwd", world_size=world_size)
    if reasons:
        return {**rec, "outcome": "skip", "detail": "; ".join(reasons)}
    rec["sharding"] = variant.layout(problem, world_size).sharding
    own = pool is None
    device = problem.device.split(":")[0]
    try:
        if own:
            pool = RankPool(world_size, device, timeout_s=600.0)
        if pool.world_size != world_size:
            raise ValueError(f"pool has {pool.world_size} ranks, the case asks for {world_size}")
        payload = {"variant": variant, "problem": problem, "mode": mode, "config": fixed_count(timer_config, samples),
                   "profile": profile}
        ranks = pool.run(_bench_task, payload, f"{variant_name} on {problem.id} ({mode}) with P={world_size}")
    except (RankError, ValueError) as exc:
        text = str(exc)
        why = refusal(text)
        if why:
            return {**rec, "outcome": "skip", "detail": why}
        oom = "out of memory" in text.lower()
        return {**rec, "outcome": "oom" if oom else "error", "detail": text[:1500]}
    finally:
        if own and pool is not None:
            pool.close()
    notes: dict = {}
    for r in ranks:
        notes.update(r["notes"])
    slowest = max(range(world_size), key=lambda i: ranks[i]["median_s"])
    rec.update(
        time_s=ranks[slowest]["median_s"],
        slowest_rank=slowest,
        samples_s=ranks[slowest]["samples_s"],  # the case's samples: the slowest rank's
        warmup_calls=ranks[slowest]["warmup_calls"],
        rank_median_s=[r["median_s"] for r in ranks],
        rank_iqr_s=[r["iqr_s"] for r in ranks],
        samples=ranks[0]["samples"],
        timer=ranks[0]["timer"],
        peak_bytes_per_rank=[r["peak_bytes"] for r in ranks],
        bytes_sent_per_rank=[r["bytes_sent"] for r in ranks],
        bytes_estimated=bool(notes.get("bytes_estimated", False)),
    )
    if profile:
        rec["profile_per_rank"] = [r["profile"] for r in ranks]
    if "pair_kernel" in notes:  # which fused kernel the ring's block pairs ran (cudnn or flash)
        rec["pair_kernel"] = notes["pair_kernel"]
    if "pair_views" in notes:  # whether the fused backward read row/key slices as views (no copies)
        rec["pair_views"] = notes["pair_views"]
    return rec
