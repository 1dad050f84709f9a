"""Measure the error of the reference approximate kernels (impls/attention/approximate.py) against the float64
oracle on every CPU problem of the attention family: the evidence behind tolerance.APPROXIMATE_BUDGET.

Run: .venv/bin/python scripts/measure_approximate.py [--json OUT.json] [--max-len N] [--device cuda]
Prints, per variant and kind (output, grad), the largest relative error max|X - X_ref| / max|X_ref|
(grads: over the largest gradient magnitude, as the checks do), the problem it came from, and the
same for injected bugs (fp8: one 16-key block's P.V dropped, softmax scale 5% and 25% high; int8:
scale 5% high), and on how many problems each variant exceeds its class's budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnsuite import checks, registry, tolerance  # noqa: E402
from attnsuite.case import prepare  # noqa: E402
from attnsuite.problem import LARGE_LOGITS  # noqa: E402


def relative_errors(variant, problem) -> dict[str, float]:
    """Largest relative error of the forward output and of the gradients (compared rows only)."""
    ref_out, ref_grads = checks.reference(variant.family, problem)
    rows = checks.live_rows(problem)
    case = prepare(variant, problem, requires_grad=True)
    with torch.enable_grad():
        out = case.forward()
        case.backward(out)
    o, r = tolerance.as_float64(out), np.asarray(ref_out)
    if rows is not None:
        o, r = o[..., rows, :], r[..., rows, :]
    base_out = checks.base(variant.family, problem)[0]
    exact = tolerance.compare("output", out, ref_out, base_out, problem.dtype, "output", rows).passed
    res = {"exact_rule_fails": float(not exact), "output": float(np.max(np.abs(o - r)) / max(np.max(np.abs(r)), 1e-30)) if r.size else 0.0,
           "output_rms": float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30)) if r.size else 0.0}
    magnitude = max(float(np.max(np.abs(g))) for g in ref_grads.values() if np.size(g))
    grads = case.grads()
    res["grad"] = max(float(np.max(np.abs(tolerance.as_float64(grads[n]) - g))) for n, g in ref_grads.items()) / magnitude
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the per-problem figures here")
    ap.add_argument("--max-len", type=int, default=10**9, help="skip problems with lq or lk above this")
    ap.add_argument("--device", default="cpu", help="cpu (fp32, fp64, bf16) or cuda (fp16, bf16, fp32; TF32 off)")
    args = ap.parse_args()
    registry.load_builtin()
    from attnsuite_impls.attention import approximate

    def scale_bug(base, factor):  # the softmax scale off by ``factor``
        class ScaleBug(base):
            name = f"{base.name}-scale-x{factor:g}"

            def build(self, problem):
                return super().build(problem.with_(scale=problem.softmax_scale * factor))

        return ScaleBug()

    class DroppedBlock(approximate.Fp8FakeQuant):  # keys 16..31 never attended (a skipped tile)
        name = "fp8-dropped-block"

        def build(self, problem):
            run = super().build(problem)

            def dropped(q, k, v):
                if k.shape[2] > 16:
                    keep = torch.ones(k.shape[2], dtype=k.dtype, device=k.device)
                    keep[16:32] = 0
                    v = v * keep[:, None]  # the tile's P.V is lost; its P still counts in the row sum
                return run(q, k, v)

            return dropped

    family = registry.family("attention")
    dtypes = ("float16", "bfloat16", "float32") if args.device.startswith("cuda") else ("float32", "float64", "bfloat16")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (as in the correctness run)
    # the problems the correctness checks judge approximate classes on (not the large-logits one)
    problems = [p for p in registry.problems_of(family, args.device, dtypes)
                if max(p.lq, p.lk) <= args.max_len and p.tag != LARGE_LOGITS]
    variants = [registry.get("fp8-fakequant"), registry.get("int8-fakequant"), DroppedBlock(),
                scale_bug(approximate.Fp8FakeQuant, 1.05), scale_bug(approximate.Fp8FakeQuant, 1.25),
                scale_bug(approximate.Int8FakeQuant, 1.05)]
    worst: dict = {}
    rows = []
    start = time.perf_counter()
    for problem in problems:
        for variant in variants:
            if variant.unsupported(problem, backward=True):
                continue
            errs = relative_errors(variant, problem)
            budget = tolerance.APPROXIMATE_BUDGET[variant.accuracy]
            over = errs["output"] > budget["output"] or errs["grad"] > budget["grad"]
            rows.append({"variant": variant.name, "problem": problem.id, **errs, "over_budget": over})
            for kind, e in errs.items():  # the largest error of each kind, and where
                if kind == "exact_rule_fails":
                    continue
                key = (variant.name, kind)
                if e > worst.get(key, (-1, ""))[0]:
                    worst[key] = (e, problem.id)
    print(f"{len(problems)} problems on {args.device}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s")
    for (name, kind), (e, pid) in sorted(worst.items()):
        print(f"{name:28s} {kind:13s} {e:.4f}  ({pid})")
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant.name]
        print(f"{variant.name:28s} over its {variant.accuracy} budget on {sum(r['over_budget'] for r in mine)} "
              f"of {len(mine)} problems; fails the exact rule (forward) on {int(sum(r['exact_rule_fails'] for r in mine))}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
