"""The Triton kernels against the best kernels on the GPU, in one run (called by scripts/gpu_triton.sh).

Stages, each independent (a failing stage is recorded and the next one runs):
  flash   forward and backward TFLOP/s of triton-flash, sdpa-flash and sdpa-cudnn, bf16, d 64/128,
          L 1K-16K (B*L = 16K tokens, 16 heads: the fa-sweep shapes), causal and not; triton-flash's
          backward by both paths (the row "triton-flash" takes the rule's path, recorded as
          bwd_path; "triton-flash[<other path>]" is the backward by the other one);
  decode  triton-decode (and SDPA) at 32K cached keys as % of the probed memory bandwidth;
  mla     DeepSeek-V3 MLA layer forward: time and peak memory of mla-expanded, mla-absorbed (SDPA
          math) and triton-mla-absorbed, each with its device time by kernel (timing.profile_step).
Times come from attnsuite.timing.measure (CUDA events: fwd_ms, bwd_ms) and, for the flash stage,
also attnsuite.timing.device_time (host-independent device time: fwd_device_ms by CUDA-graph replay,
bwd_device_ms by graph replay of the backward over a retained autograd graph, or by kernel-sum
after every other measurement of the stage when that graph cannot be captured: the profiler slows
later launches). FLOPs from attnsuite.flops, bandwidth from attnsuite.calibrate.probe, peak memory
from attnsuite.memory.measure_peak. Writes $OUT/triton_bench_<stages>.json after every measured
shape (atomically).

Usage: python scripts/triton_bench.py [--out DIR] [--stages flash,decode,mla] [--quick] [--flash-dims 64,128]
(--flash-dims other than 64,128 adds _d<dims> to the JSON's name: two runs can split the flash stage)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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

registry.load_builtin()  # the built-in families import as attnsuite_impls, the way external ones do
from attnsuite_impls.attention.triton_flash import MASK_CODES, pinned_variant  # noqa: E402
from attnsuite_impls.attention.triton_kernels.bwd_path import BWD_PATHS, choose_bwd_path  # noqa: E402

CONFIG = timing.TimerConfig(warmup_s=0.02, min_warmup=2, target_s=0.05, min_samples=5, max_samples=50)
# device time: shorter replays and fewer samples than the suite's default (dozens of figures per stage)
DEVICE_CONFIG = dataclasses.replace(timing.DEVICE_DEFAULT, replay_target_s=0.03, max_replays=20,
                                    profile_target_s=0.03, max_profiled_calls=10)
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


def _device(out: dict, prefix: str, tflop: float, event_s: float, calls, deferred: list | None,
            kernel_sum_calls=None) -> None:
    """Add ``<prefix>_device_ms``, ``_device_tflops`` and ``_device_method`` to ``out``.

    ``calls()`` gives (None, call): measured now by CUDA-graph replay. When the capture fails,
    kernel-sum (the profiler) times ``kernel_sum_calls()`` (default ``calls()``; (setup or None,
    call)) instead: appended to ``deferred`` and run at the end of the stage, since the profiler
    slows every later launch (with ``deferred`` None it runs now). A failure is recorded as
    ``<prefix>_device_note``, never raised: device time is an extra figure beside the event time.
    """
    config = dataclasses.replace(DEVICE_CONFIG, estimate_s=event_s)  # the event timer already warmed the step

    def measure(kernel_sum: bool, why: str = "") -> None:
        try:
            setup, call = (kernel_sum_calls or calls)() if kernel_sum else calls()
            dt = timing.device_time(call, "cuda", setup=setup, config=config, allow_graph=not kernel_sum,
                                    defer_kernel_sum=not kernel_sum and deferred is not None)
        except timing.KernelSumDeferred as exc:
            out[f"{prefix}_device_note"] = f"kernel-sum pending ({exc})"
            deferred.append(lambda why=str(exc): measure(True, why))
            return
        except Exception as exc:  # noqa: BLE001
            out[f"{prefix}_device_note"] = f"not measured: {timing.first_line(exc)}"[:300]
            _sync()
            return
        setup = call = None  # the step's tensors go before the next measurement
        out[f"{prefix}_device_ms"] = dt.median_s * 1e3
        out[f"{prefix}_device_tflops"] = tflop / dt.median_s / 1e12
        out[f"{prefix}_device_method"] = dt.method
        note = "; ".join(n for n in (why, dt.note) if n)
        if note:
            out[f"{prefix}_device_note"] = note
        else:
            out.pop(f"{prefix}_device_note", None)

    measure(False)


def _backward_calls(fn, p: Problem):
    """(setup, bwd): a forward as per-call setup and the timed backward (the event timer's form)."""
    q, k, v = _inputs(p, True)
    do = torch.randn_like(q)
    state = {}

    def setup():
        q.grad = k.grad = v.grad = None
        state["o"] = fn(q, k, v)

    def bwd():
        state["o"].backward(do)

    return setup, bwd


def _retained_backward(fn, p: Problem):
    """(None, call): a setup-free backward over one retained autograd graph (a CUDA graph can capture
    it); its forward runs once, here, on the capture stream, where the backward's kernels then go."""
    q, k, v = _inputs(p, True)
    do = torch.randn_like(q)
    with timing.capture_stream("cuda"):
        o = fn(q, k, v)

    def call():
        q.grad = k.grad = v.grad = None
        o.backward(do, retain_graph=True)

    return None, call


def _forward_call(fn, p: Problem):
    """(None, call): the forward without autograd."""
    q, k, v = _inputs(p, False)

    def call():
        with torch.no_grad():
            return fn(q, k, v)

    return None, call


def time_kernel(name: str, p: Problem, backward: bool, variant=None, forward: bool = True,
                deferred: list | None = None) -> dict:
    """Median event time, device time, TFLOP/s and first-call time of one kernel variant's forward
    (unless ``forward`` is False) and backward.

    ``variant`` replaces the registered ``name`` (a pinned backward path). Device times that need the
    profiler go to ``deferred`` (thunks the caller runs after its other measurements).
    """
    variant = variant or registry.get(name)
    reasons = variant.unsupported(p, backward=backward)
    if reasons:
        return {"skipped": "; ".join(reasons)}
    fn = variant.build(p)
    out = {}
    if forward:
        _, fwd = _forward_call(fn, p)
        out["fwd_first_call_s"] = _first_call(fwd)
        t = timing.measure(fwd, p.device, CONFIG, first_call=False)
        tflop = flops.case_flops(p, "attention", "fwd")
        out["fwd_ms"] = t.median_s * 1e3
        out["fwd_tflops"] = tflop / t.median_s / 1e12
        fwd = None
        _device(out, "fwd", tflop, t.median_s, lambda: _forward_call(fn, p), deferred)
    if backward:
        setup, bwd = _backward_calls(fn, p)
        setup()
        out["bwd_first_call_s"] = _first_call(bwd)
        t = timing.measure(bwd, p.device, CONFIG, setup=setup, first_call=False)
        tflop = flops.case_flops(p, "attention", "bwd")
        out["bwd_ms"] = t.median_s * 1e3
        out["bwd_tflops"] = tflop / t.median_s / 1e12
        setup = bwd = None
        # by graph over a retained autograd graph; if that cannot be captured, kernel-sum times the
        # event timer's own form (a forward as setup before each backward)
        _device(out, "bwd", tflop, t.median_s, lambda: _retained_backward(fn, p), deferred,
                kernel_sum_calls=lambda: _backward_calls(fn, p))
    return out


CLOCKS = {"event": ("fwd_tflops", "bwd_tflops"), "device": ("fwd_device_tflops", "bwd_device_tflops")}


def vs_reference(row: dict, names, ref: str = "sdpa-flash") -> dict:
    """{row name: {"fwd_event": ratio, "bwd_event": ..., "fwd_device": ..., "bwd_device": ...}} of
    TFLOP/s against ``ref`` on both clocks, for the figures both have (>1: faster than ``ref``)."""
    base = row.get(ref, {})
    ratios = {}
    for name in names:
        mine = row.get(name, {})
        got = {f"{key[:3]}_{clock}": mine[key] / base[key]
               for clock, keys in CLOCKS.items() for key in keys if key in mine and base.get(key)}
        if got:
            ratios[name] = got
    return ratios


FLASH_DIMS = (64, 128)


def stage_flash(quick: bool, partial, dims: tuple = FLASH_DIMS) -> list:
    rows = []
    deferred = []
    lengths = (1024, 4096) if quick else (1024, 4096, 16384)
    for d in dims:
        for length in lengths:
            for mask in (Mask("causal"), Mask()):
                started = time.perf_counter()
                p = Problem(batch=16384 // length, lq=length, lk=length, hq=16, hkv=16, dqk=d, dv=d,
                            dtype="bfloat16", device="cuda", mask=mask)
                rule = choose_bwd_path(None, MASK_CODES[mask.kind], p.lq, p.lk, p.dqk)
                row = {"problem": p.id, "d": d, "L": length, "causal": mask.kind == "causal", "bwd_path": rule}
                # the registered variant (the rule's backward path), then triton's other backward path(s)
                runs = [(name, None, True) for name in FLASH_VARIANTS]
                runs[1:1] = [(f"triton-flash[{path}]", pinned_variant(path), False)
                             for path in BWD_PATHS if path != rule]
                for name, variant, forward in runs:
                    try:
                        row[name] = time_kernel(name, p, backward=True, variant=variant, forward=forward,
                                                deferred=deferred)
                    except Exception as exc:
                        row[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                        torch.cuda.empty_cache()
                row["vs_sdpa_flash"] = vs_reference(row, [n for n, _, _ in runs if n.startswith("triton-flash")])
                # the earlier sessions' flat keys (event time, the registered variant), from the same table
                for mode in ("fwd", "bwd"):
                    ratio = row["vs_sdpa_flash"].get("triton-flash", {}).get(f"{mode}_event")
                    if ratio is not None:
                        row[f"{mode}_vs_sdpa_flash"] = ratio
                print(json.dumps({k: row[k] for k in row if not isinstance(row[k], dict)}), flush=True)
                print("   ", json.dumps({n: {k: round(x, 3) for k, x in r.items()}
                                         for n, r in row["vs_sdpa_flash"].items()}), flush=True)
                print("   ", {n: {k: round(x, 3) for k, x in row[n].items() if isinstance(x, float)} or row[n]
                              for n, _, _ in runs}, flush=True)
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
                partial(rows)  # on disk after every shape: a timeout keeps what was measured
    # kernel-sum needs the profiler, which slows every later launch: only after the event figures
    for measure_later in deferred:
        measure_later()  # records its own failure as a note
        torch.cuda.empty_cache()
    for row in rows:
        names = [n for n in row if n.startswith("triton-flash")]
        row["vs_sdpa_flash"] = vs_reference(row, names)
    if deferred:
        partial(rows)
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
                # where the layer's time goes (attention kernel against projections and copies)
                row["kernels"] = timing.profile_step(lambda: module(x), p.device, top=8)
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
    ap.add_argument("--flash-dims", default=",".join(map(str, FLASH_DIMS)),
                    help="head dims of the flash stage (comma-separated; default %(default)s)")
    args = ap.parse_args(argv)
    try:
        dims = tuple(int(x) for x in args.flash_dims.split(","))
    except ValueError:
        print(f"triton_bench: --flash-dims takes comma-separated integers, got {args.flash_dims!r}", file=sys.stderr)
        return 2
    unknown = [name for name in args.stages.split(",") if name not in STAGES]
    if unknown:
        print(f"triton_bench: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("triton_bench: needs a CUDA device", file=sys.stderr)
        return 2
    registry.load_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = {**STAGES, "flash": functools.partial(stage_flash, dims=dims)}
    suffix = "" if dims == FLASH_DIMS or "flash" not in args.stages.split(",") else "_d" + "-".join(map(str, dims))
    path = out / f"triton_bench_{args.stages.replace(',', '_')}{suffix}.json"
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
            data["stages"][name] = {"result": stages[name](args.quick, partial)}
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
