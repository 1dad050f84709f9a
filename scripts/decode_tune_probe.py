"""Does the decode split kernel's autotuning rank its configs as the whole decode step does?

On fresh H200 machines `triton-decode`'s step at 4K cached keys took 40.4-41.3 us where the
autotuner had chosen BLOCK_N=32 and 43.6 us where it had chosen 64, while the tuner had timed the
split kernel alone only 1.7% apart (docs/evidence/h200-2026-12-03-s28). Either the kernel timed
alone ranks the configs otherwise than the step (then tune the step, or pin the config), or the
machines differ and the choice only travels with them (then no tuning change helps). This probe
tells them apart on one machine: for each decode problem, each of the split kernel's configs
forced in turn, over several input placements (the cache behind pads of other sizes, configs in a
rotated order each time), it times

- ``step``        the whole step (split + merge) by the suite's device time (graph replay);
- ``split_alone`` the split kernel without the merge, back to back, as Triton's autotuner timed it
                  (before the step tuner, attnsuite.triton_support.StepTuner);
- ``kernels``     the profiler's per-kernel durations of the step (split and merge apart);

and records the autotuner's own choice. Writes JSON lines to --out.
Usage (on the GPU machine): python3 scripts/decode_tune_probe.py --out $OUT/decode_tune.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from attnsuite import registry, timing  # noqa: E402
from attnsuite.case import prepare  # noqa: E402
from attnsuite.problem import Mask, Problem  # noqa: E402

DECODE = Mask("causal", align="bottom_right")
PROBLEMS = [Problem(batch=8, lq=lq, lk=lk, hq=32, hkv=8, dqk=128, dv=128, mask=DECODE, dtype="bfloat16",
                    device="cuda") for lq, lk in ((1, 4096), (1, 32768), (4, 32768))]


class _NoLaunch:
    """Stands in for the merge kernel: ``kernel[grid](...)`` launches nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 5)


def probe(problem: Problem, placements: int) -> list[dict]:
    """One row per (placement, config) of ``problem``; the autotuner's choice in each placement's first row."""
    from attnsuite_impls.attention.triton_flash import MASK_CODES
    from attnsuite_impls.attention.triton_kernels import kernels

    dk = kernels("decode", problem.device)  # the module the variant itself launches from

    configs = [(c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in dk.SPLIT_CONFIGS]
    rows = []
    for i in range(placements):
        pad = torch.empty((i * 37 + 3) * 2**20, dtype=torch.uint8, device="cuda")
        case = prepare(registry.get("triton-decode"), problem, requires_grad=False)
        q, k, v = (case.inputs[name] for name in ("q", "k", "v"))
        p = problem
        args = (q, k, v, MASK_CODES[p.mask.kind], p.align_offset, p.mask.window, p.softmax_scale)

        def step(config=None):
            with torch.no_grad():
                return dk.decode(*args, config=config)
        step()  # the autotuner tunes this shape here (graph-timed, the split kernel alone)
        # the tuner (triton_support.StepTuner since s29; Triton's autotuner on the split kernel before)
        tuner = getattr(dk, "SPLIT_TUNER", None) or dk.decode_split
        chosen = {str(key): str(cfg) for key, cfg in getattr(tuner, "cache", {}).items()}
        tuned = {str(cfg): t for cfg, t in (getattr(tuner, "configs_timings", None) or {}).items()}
        order = configs[i % len(configs):] + configs[:i % len(configs)]
        for config in order:
            row = {"problem": p.id, "placement": i, "pad_mib": pad.numel() // 2**20,
                   "config": {"BLOCK_N": config[0], "num_warps": config[1], "num_stages": config[2]}}
            row["step_ms"] = _median_ms(timing.device_time(lambda: step(config), "cuda").samples_s)
            merge, dk.decode_merge = dk.decode_merge, _NoLaunch()
            try:
                row["split_alone_ms"] = _median_ms(timing.device_time(lambda: step(config), "cuda").samples_s)
            finally:
                dk.decode_merge = merge
            row["kernels"] = timing.profile_step(lambda: step(config), "cuda", top=4)
            if config == order[0]:
                row["autotuner_choice"], row["autotuner_timings_ms"] = chosen, tuned
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("problem", "placement", "config", "step_ms", "split_alone_ms")}),
                  flush=True)
        case = pad = None
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--placements", type=int, default=3, help="input allocations per problem (default 3)")
    args = ap.parse_args()
    registry.load_all()
    with open(args.out, "w") as fh:
        for problem in PROBLEMS:
            for row in probe(problem, args.placements):
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
