"""The context-parallel workload on one host's GPUs: distributed variants against the best single GPU.

For each problem and mode it times the best single-GPU SDPA backend on the full sequence (GPU 0,
in this process), then each distributed variant on P ranks (:func:`bench.run_distributed_case`),
and records the scaling efficiency T(best single) / (P x T(P)). Cases run in priority order (the
judged L = 64K causal fwd+bwd first) until a time budget is spent; what did not run is recorded
as skipped with that reason. Results go to one JSON file, written atomically after every case.

Run: ``python -m attnsuite.distributed.scaling --out DIR [--world 2] [--budget-s 300]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

import torch

from .. import registry, timing
from ..baseline import atomic_write_text
from ..problem import Mask, Problem
from .bench import fixed_count, run_distributed_case, scaling_efficiency
from .launch import RankPool

LENGTHS = (16384, 32768, 65536, 131072)
SINGLE_BACKENDS = ("flash", "efficient", "cudnn")
VARIANTS = ("ring-zigzag", "ring", "context-parallel-flash", "context-parallel-efficient",
            "context-parallel-cudnn", "ulysses")


def workload_problems(lengths=LENGTHS, heads: int = 16, d: int = 128, dtype: str = "bfloat16",
                      device: str = "cuda") -> list[Problem]:
    """The proposed 'context-parallel' workload: B 1, L in 16K..128K, H heads, d 128, causal and not."""
    return [Problem(batch=1, lq=n, lk=n, hq=heads, hkv=heads, dqk=d, dv=d, dtype=dtype, device=device,
                    mask=mask, tag="context-parallel")
            for n in lengths for mask in (Mask("causal"), Mask())]


def single_device_best(problem: Problem, mode: str, config: timing.TimerConfig) -> dict[str, Any]:
    """Every SDPA backend on the full problem on this process's GPU; the fastest one's time."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import torch.nn.functional as F

    family = registry.family("attention")
    full, grad_out, _ = family.device_inputs(problem)
    q, k, v = (full[n].requires_grad_(mode != "fwd") for n in ("q", "k", "v"))
    causal = problem.mask.kind == "causal"
    per: dict[str, Any] = {}
    for name in SINGLE_BACKENDS:
        backend = getattr(SDPBackend, {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                                       "cudnn": "CUDNN_ATTENTION"}[name])

        def step():
            with sdpa_kernel([backend]):
                if mode == "fwd":
                    with torch.no_grad():
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                q.grad = k.grad = v.grad = None
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                out.backward(grad_out)
                return out

        try:
            per[name] = timing.measure(step, problem.device, config).median_s
        except Exception as exc:  # a backend that cannot run this shape: recorded, not fatal
            per[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    step = full = grad_out = None  # the closure holds the inputs: drop them before emptying the cache
    torch.cuda.empty_cache()
    times = {n: t for n, t in per.items() if isinstance(t, float)}
    best = min(times, key=times.get) if times else None
    return {"backend": best, "time_s": times.get(best) if best else None, "per_backend": per}


def _order(problems: list[Problem], modes: tuple[str, ...]) -> list[tuple[Problem, str]]:
    """The judged case (64K causal fwd+bwd) first, then by length, causal first."""
    cases = [(p, m) for p in problems for m in modes]
    return sorted(cases, key=lambda c: (not is_judged(*c),
                                        c[0].lq, c[0].mask.kind != "causal", c[1]))


def is_judged(problem: Problem, mode: str) -> bool:
    """The case the ring is judged on: L = 64K, causal, fwd+bwd."""
    return problem.lq == 65536 and problem.mask.kind == "causal" and mode == "fwd+bwd"


def run(out_path: str, world_size: int, problems: list[Problem], modes: tuple[str, ...], variants: tuple[str, ...],
        budget_s: float, samples: int, log=print, profile: bool = False) -> list[dict]:
    """Time every (problem, mode) on one GPU and every variant on ``world_size`` GPUs; JSON rows.

    ``profile``: the judged case's distributed runs also record each rank's device time by kernel.
    """
    registry.load_builtin()
    config = fixed_count(timing.FULL_GPU, samples)
    rows: list[dict] = []
    start = time.monotonic()
    pool: Optional[RankPool] = None

    def save() -> None:
        atomic_write_text(out_path, json.dumps({"world_size": world_size, "rows": rows}, indent=1, default=str))

    try:
        pool = RankPool(world_size, "cuda", timeout_s=300.0)
        for problem, mode in _order(problems, modes):
            if time.monotonic() - start > budget_s:
                rows.append({"problem": problem.id, "mode": mode, "outcome": "skip",
                             "detail": f"time budget of {budget_s:g} s spent before this case"})
                continue
            single = single_device_best(problem, mode, config)
            torch.cuda.empty_cache()  # GPU 0 is also rank 0's: give back what the single-GPU run cached
            log(f"single GPU {problem.id} {mode}: {single['backend']} {single['time_s']}")
            rows.append({"problem": problem.id, "mode": mode, "variant": "single-gpu-best", "world_size": 1,
                         "outcome": "ok" if single["time_s"] else "error", **single})
            for name in variants:
                rec = run_distributed_case(name, problem, mode, world_size, config, pool=pool, samples=samples,
                                           profile=profile and is_judged(problem, mode))
                if rec.get("time_s") and single["time_s"]:
                    rec["single_best_s"] = single["time_s"]
                    rec["single_best_backend"] = single["backend"]
                    rec["scaling_efficiency"] = scaling_efficiency(single["time_s"], world_size, rec["time_s"])
                rows.append(rec)
                log(f"  {name} P={world_size}: {rec['outcome']} time {rec.get('time_s')} "
                    f"eff {rec.get('scaling_efficiency')} {rec.get('pair_kernel', '')} {rec.get('detail', '')[:200]}")
                save()
    finally:
        if pool is not None:
            pool.close()
        save()
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="record each rank's device time by kernel for the judged case (64K causal fwd+bwd)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.device_count() < args.world:
        print(f"scaling: needs {args.world} CUDA GPUs, found {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    try:
        lengths = tuple(int(x) for x in args.lengths.split(","))
    except ValueError:
        print(f"scaling: --lengths must be comma-separated ints, got {args.lengths!r}", file=sys.stderr)
        return 2
    rows = run(args.out, args.world, workload_problems(lengths, args.heads), tuple(args.modes.split(",")),
               tuple(args.variants.split(",")), args.budget_s, args.samples, profile=args.profile)
    return 0 if all(r.get("outcome") in ("ok", "skip") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
