"""Are the backward passes of variants that declare ``deterministic = True`` bitwise repeatable on CUDA?

``test_two_runs_agree`` holds a deterministic variant's forward to bit-for-bit agreement; nothing
checks its backward yet, because some of CUDA's attention backward kernels accumulate dq (or dk/dv)
with atomics, whose order varies between runs. Before the correctness suite holds the backward to
the declaration, this probe measures which variants' backwards repeat on this GPU: for each variant
that runs backward on the device (distributed ones aside), on the family's own problems plus, for the
attention family, larger ones (many key blocks per query block, where atomics show), it runs forward
and backward REPEATS times on the same inputs and compares every gradient with the first run's bits.

Writes one JSON line per (variant, problem) to --out and prints a per-variant summary.
Usage (on the GPU machine): python3 scripts/bwd_determinism_probe.py --out $OUT/bwd_determinism.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from attnsuite import registry  # noqa: E402
from attnsuite.case import prepare  # noqa: E402
from attnsuite.problem import Mask, Problem  # noqa: E402
from attnsuite.runner import is_distributed  # noqa: E402


def large_attention_problems(device: str) -> list[Problem]:
    """Kernel problems with many key blocks per query block: where atomically accumulated gradients
    would change order between runs."""
    out = []
    for dtype in ("bfloat16", "float16"):
        for hq, hkv, d in ((8, 8, 64), (8, 2, 128)):
            for mask in (Mask("none"), Mask("causal")):
                out.append(Problem(batch=2, lq=2048, lk=2048, hq=hq, hkv=hkv, dqk=d, dv=d, mask=mask,
                                   dtype=dtype, device=device))
    return out


def grads_of(variant, problem: Problem) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward on the problem's seeded inputs: (output, gradient per input/parameter)."""
    case = prepare(variant, problem, requires_grad=True)
    with torch.enable_grad():
        out = case.forward()
        case.backward(out)
    if problem.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out.detach().clone(), {n: g.detach().clone() for n, g in case.grads().items() if g is not None}


def probe(variant, problem: Problem, repeats: int) -> dict:
    """Compare ``repeats`` runs' output and gradients with the first run's bits."""
    first_out, first = grads_of(variant, problem)
    differ: dict[str, dict] = {}
    out_differs = 0
    for _ in range(repeats - 1):
        out, grads = grads_of(variant, problem)
        if not torch.equal(out, first_out):
            out_differs += 1
        for name, g in grads.items():
            a, b = first[name].double(), g.double()
            if not torch.equal(first[name], g):
                d = differ.setdefault(name, {"runs": 0, "elements": 0, "max_abs": 0.0, "ref_max_abs": 0.0})
                d["runs"] += 1
                d["elements"] = max(d["elements"], int((a != b).sum()))
                d["max_abs"] = max(d["max_abs"], float((a - b).abs().nan_to_num().max()))
                d["ref_max_abs"] = float(a.abs().nan_to_num().max())
    return {"forward_differs_runs": out_differs, "gradients_differ": differ}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--budget-s", type=float, default=240.0, help="no new variant is started after this")
    ap.add_argument("--only", action="append", default=[],
                    help="variant names (repeatable), run in that order; default every one")
    ap.add_argument("--max-problems", type=int, default=6,
                    help="per variant: the family's largest problems (by scores per call), besides the large ones")
    args = ap.parse_args()
    registry.load_all()
    start = time.perf_counter()
    summary = {}
    with open(args.out, "w") as fh:
        chosen = [registry.get(n) for n in args.only] if args.only else registry.variants()
        for variant in chosen:
            if time.perf_counter() - start > args.budget_s:
                print(f"budget reached: {variant.name} and later not run", flush=True)
                break
            if is_distributed(variant) or not variant.deterministic:
                continue
            family = registry.family_of(variant)
            problems = [p for p in registry.problems_of(family, args.device, ("bfloat16", "float16"))
                        if not variant.unsupported(p, backward=True)]
            problems = sorted(problems, key=lambda p: p.batch * p.hq * p.lq * p.lk)[-args.max_problems:]
            if variant.family == "attention" and variant.level == "kernel":
                problems += large_attention_problems(args.device)
            ran = differed = 0
            for problem in problems:
                if variant.unsupported(problem, backward=True):
                    continue
                row = {"variant": variant.name, "problem": problem.id, "backend": variant.backend}
                try:
                    row.update(probe(variant, problem, args.repeats))
                except Exception as exc:  # noqa: BLE001 - a probe: say it and go on
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                if "error" not in row:
                    ran += 1
                    if row["gradients_differ"] or row["forward_differs_runs"]:
                        differed += 1
                        print(f"{variant.name} {problem.id}: forward differs in {row['forward_differs_runs']} runs; "
                              f"gradients {row['gradients_differ']}", flush=True)
            summary[variant.name] = (ran, differed)
            print(f"== {variant.name}: {differed} of {ran} problems not repeatable", flush=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
