"""The Triton kernels against the best kernels on the GPU, in one run (called by scripts/gpu_triton.sh).

Stages, each independent (a failing stage is recorded and the next one runs):
  flash   forward and backward TFLOP/s of triton-flash, sdpa-flash and sdpa-cudnn, bf16, d 64/128,
          L 1K-16K (B*L = 16K tokens, 16 heads: the fa-sweep shapes), causal and not;
  decode  triton-decode (and SDPA) at 32K cached keys as % of the probed memory bandwidth;
  mla     DeepSeek-V3 MLA layer forward: time and peak memory of mla-expanded, mla-absorbed (SDPA
          math) and triton-mla-absorbed.
Times come from attnsuite.timing.measure (CUDA events), FLOPs from attnsuite.flops, bandwidth from
attnsuite.calibrate.probe, peak memory from attnsuite.memory.measure_peak. Writes
$OUT/triton_bench_<stages>.json after every measured shape (atomically).

Usage: python scripts/triton_bench.py [--out DIR] [--stages flash,decode,mla] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attnsuite import calibrate, flops, memory, registry, timing  # noqa: E402
from attnsuite.problem import Mask, Problem  # noqa: E402

CONFIG = timing.TimerConfig(warmup_s=0.02, min_warmup=2, target_s=0.05, min_samples=5, max_samples=50)
FLASH_VARIANTS = ("triton-flash", "sdpa-flash", "sdpa-cudnn")


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _inputs(p: Problem, grad: bool):
    dt = getattr(torch, p.dtype)
    g = torch.Generator(device=p.device).manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, device=p.device, dtype=dt).requires_grad_(grad)

    return r(p.batch, p.hq, p.lq, p.dqk), r(p.batch, p.hkv, p.lk, p.dqk), r(p.batch, p.hkv, p.lk, p.dv)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _first_call(fn) -> float:
    """Wall time of the first call (compilation and autotuning included)."""
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def time_kernel(name: str, p: Problem, backward: bool) -> dict:
    """Forward (and backward) median time, TFLOP/s and first-call time of one kernel variant."""
    variant = registry.get(name)
    reasons = variant.unsupported(p, backward=backward)
    if reasons:
        return {"skipped": "; ".join(reasons)}
    fn = variant.build(p)
    q, k, v = _inputs(p, backward)
    out = {}
    with torch.no_grad():
        out["fwd_first_call_s"] = _first_call(lambda: fn(q, k, v))
        t = timing.measure(lambda: fn(q, k, v), p.device, CONFIG, first_call=False)
    out["fwd_ms"] = t.median_s * 1e3
    out["fwd_tflops"] = flops.case_flops(p, "attention", "fwd") / t.median_s / 1e12
    if backward:
        state = {}
        do = torch.randn_like(q)

        def setup():
            q.grad = k.grad = v.grad = None
            state["o"] = fn(q, k, v)

        def bwd():
            state["o"].backward(do)

        setup()
        out["bwd_first_call_s"] = _first_call(bwd)
        t = timing.measure(bwd, p.device, CONFIG, setup=setup, first_call=False)
        out["bwd_ms"] = t.median_s * 1e3
        out["bwd_tflops"] = flops.case_flops(p, "attention", "bwd") / t.median_s / 1e12
    return out


def stage_flash(quick: bool, partial) -> list:
    rows = []
    lengths = (1024, 4096) if quick else (1024, 4096, 16384)
    for d in (64, 128):
        for length in lengths:
            for mask in (Mask("causal"), Mask()):
                p = Problem(batch=16384 // length, lq=length, lk=length, hq=16, hkv=16, dqk=d, dv=d,
                            dtype="bfloat16", device="cuda", mask=mask)
                row = {"problem": p.id, "d": d, "L": length, "causal": mask.kind == "causal"}
                for name in FLASH_VARIANTS:
                    try:
                        row[name] = time_kernel(name, p, backward=True)
                    except Exception as exc:
                        row[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                        torch.cuda.empty_cache()
                tf = row["triton-flash"]
                ref = row["sdpa-flash"]
                for key in ("fwd_tflops", "bwd_tflops"):
                    if key in tf and key in ref:
                        row[f"{key[:3]}_vs_sdpa_flash"] = tf[key] / ref[key]
                print(json.dumps({k: row[k] for k in row if not isinstance(row[k], dict)}), flush=True)
                print("   ", {n: {k: round(v, 2) for k, v in row[n].items() if isinstance(v, float)} or row[n]
                              for n in FLASH_VARIANTS}, flush=True)
                rows.append(row)
                partial(rows)  # on disk after every shape: a timeout keeps what was measured
    return rows


def stage_decode(quick: bool, partial) -> dict:
    bw = calibrate.probe("cuda")
    peak_gbs = bw["mem_bandwidth_gbs"]
    result = {"probe": bw, "rows": []}
    br = Mask("causal", align="bottom_right")
    for lq in (1, 4):
        p = Problem(batch=8, lq=lq, lk=32768, hq=32, hkv=8, dqk=128, dv=128, dtype="bfloat16", device="cuda", mask=br)
        kv_bytes = p.batch * p.hkv * p.lk * (p.dqk + p.dv) * 2
        row = {"problem": p.id, "kv_bytes": kv_bytes}
        for name in ("triton-decode", "triton-flash", "sdpa", "sdpa-efficient"):
            try:
                r = time_kernel(name, p, backward=False)
                if "fwd_ms" in r:
                    r["gbs"] = kv_bytes / (r["fwd_ms"] / 1e3) / 1e9
                    r["pct_of_bandwidth"] = 100.0 * r["gbs"] / peak_gbs
                row[name] = r
            except Exception as exc:
                row[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        print(json.dumps(row, default=str), flush=True)
        result["rows"].append(row)
        partial(result)
    return result


def stage_mla(quick: bool, partial) -> list:
    from attnsuite_impls.mla import mla  # the built-in families, loaded by main's load_all
    from attnsuite_impls.mla.mla_oracle import deepseek_v3_problem

    rows = []
    p = deepseek_v3_problem(dtype="bfloat16", device="cuda", quick=quick)
    family = registry.family("mla-layer")
    inputs, _, params = family.device_inputs(p)
    x = inputs["x"]
    for name in ("mla-expanded", "mla-absorbed", "triton-mla-absorbed"):
        row = {"variant": name, "problem": p.id}
        try:
            module = mla.build_module(name, p, params)
            with torch.no_grad():
                row["first_call_s"] = _first_call(lambda: module(x))
                t = timing.measure(lambda: module(x), p.device, CONFIG, first_call=False)
                _, mem = memory.measure_peak(lambda: module(x), p.device)
            row["fwd_ms"] = t.median_s * 1e3
            row["peak_bytes"] = mem.peak_bytes
            row["fwd_tflops"] = flops.case_flops(p, "mla-layer", "fwd") / t.median_s / 1e12
            module = None  # free the layer before the next variant builds
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        torch.cuda.empty_cache()
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
        partial(rows)
    return rows


STAGES = {"flash": stage_flash, "decode": stage_decode, "mla": stage_mla}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"))
    ap.add_argument("--stages", default="flash,decode,mla")
    ap.add_argument("--quick", action="store_true", help="fewer lengths, MLA at quick size (a smoke run)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("triton_bench: needs a CUDA device", file=sys.stderr)
        return 2
    registry.load_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"triton_bench_{args.stages.replace(',', '_')}.json"
    data = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "stages": {}}
    try:
        import triton

        data["triton"] = triton.__version__
    except Exception as exc:
        data["triton"] = f"unavailable: {exc}"
    failed = 0
    for name in args.stages.split(","):
        start = time.perf_counter()
        print(f"== stage {name}", flush=True)
        def partial(result, name=name):
            data["stages"][name] = {"partial": result}
            _write(path, data)

        try:
            data["stages"][name] = {"result": STAGES[name](args.quick, partial)}
        except Exception:
            failed += 1
            data["stages"][name] = {"error": traceback.format_exc()[-2000:]}
            print(data["stages"][name]["error"], flush=True)
        data["stages"][name]["seconds"] = time.perf_counter() - start
        _write(path, data)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
