"""Which SDPA backend gets fully masked query rows wrong in backward, with an explicit mask, on CUDA.

Seen in the first H200 correctness pass of session s15: ``sdpa-boolmask`` on b1-q20k8-h2-d16 with a
bottom-right causal mask (12 of the 20 query rows see no key), fp16: gradients 120-200x the bound,
not NaN. This probe runs the suite's own backward check on that problem and its neighbours, for
``sdpa-boolmask`` and ``sdpa-additive`` as registered (torch picks the backend) and with each SDPA
backend pinned, and prints each check's verdict and details. Writes JSON lines to --out.

Usage (on the GPU machine): python3 scripts/deadrow_probe.py --out $OUT/deadrow_probe.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from attnsuite import checks, registry  # noqa: E402
from attnsuite.problem import Mask, Problem  # noqa: E402

BACKENDS = {"default": None, "math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def problems(device: str) -> list[Problem]:
    """The failing problem, the same with no dead rows (top-left corner), and other dtypes and sizes."""
    out = []
    for dtype in ("float16", "bfloat16", "float32"):
        for lq, lk, align in ((20, 8, "bottom_right"), (20, 8, "top_left"), (64, 16, "bottom_right")):
            out.append(Problem(batch=1, lq=lq, lk=lk, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal", align=align),
                               dtype=dtype, device=device))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", help="default cuda; cpu runs the same checks here")
    args = ap.parse_args()
    registry.load_all()
    with open(args.out, "w") as fh:
        for name in ("sdpa-boolmask", "sdpa-additive"):
            variant = registry.get(name)
            for problem in problems(args.device):
                for label, backend in BACKENDS.items():
                    ctx = contextlib.nullcontext() if backend is None else sdpa_kernel([backend])
                    row = {"variant": name, "problem": problem.id, "backend": label}
                    try:
                        with ctx:
                            fwd = checks.check_forward(variant, problem)
                            bwd = checks.check_backward(variant, problem)
                        row.update(forward=fwd.passed, forward_details=fwd.details, forward_notes=fwd.notes,
                                   backward=bwd.passed, backward_details=bwd.details)
                    except Exception as exc:  # a pinned backend that has no kernel for the problem
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    fh.write(json.dumps(row) + "\n")
                    short = row.get("error") or (f"fwd {'ok' if row['forward'] else 'FAIL'} "
                                                 f"bwd {'ok' if row['backward'] else 'FAIL'} "
                                                 + " | ".join(d[:160] for d in row["backward_details"]))
                    print(f"{name} {problem.id} [{label}]: {short}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
