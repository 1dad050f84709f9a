"""Time the absorbed-MLA Triton kernel over many tile configs at DeepSeek-V3 size (CUDA only).

The autotuner picks among ``MLA_CONFIGS`` (impls/mla/triton_kernels/mla.py); this script is how
that list is chosen: it compiles the kernel with each candidate config directly (no autotuner),
reports its median time by ``triton.testing.do_bench``, TFLOP/s, registers and spills, and checks
its output against SDPA's math path on the same inputs. The inputs are laid out as the
``triton-mla-absorbed`` layer passes them: a head-major q_lat for one chunk of heads, q_pe a
transposed view of the projection's output, the (B, LK, 576) latent cache.

    OUT=results python3 scripts/mla_tune.py [--heads 32] [--lq 2048] [--lk 2048] [--no-causal]

Writes ``$OUT/mla_tune.json`` (rewritten after every config) and prints one JSON line per config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# A first sweep over the whole list (--wide) on an H200 (docs/triton.md, MLA) found every config at
# 255 registers a thread and all but two spilling; 64 rows by 32-128 keys over 8 warps led. FOCUS is
# that neighbourhood, for comparing kernel versions in one call.
# A fifth number is the kernel's SPLIT (2: a program owns half of the value columns).
FOCUS = [(64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 8, 3), (64, 32, 8, 4), (64, 64, 8, 1), (64, 128, 8, 1),
         (64, 16, 8, 4), (64, 64, 4, 2), (32, 64, 4, 2), (128, 32, 8, 2, 2), (128, 64, 8, 1, 2), (32, 64, 4, 2, 2),
         (64, 32, 4, 2, 2)]


def candidates() -> list[tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) worth compiling: the query tile and the streamed
    latent tiles fit in an H100/H200's 227 KB of shared memory (576 bf16 columns each)."""
    out = []
    # the likeliest first (a --budget-s cut drops the rest): 8-16 warps hold a 512-wide fp32
    # accumulator of 64-128 rows without spilling; 4 warps and 32 rows come last
    for bm, warps in ((64, 8), (128, 16), (128, 8), (64, 4), (32, 4)):
        for bn in (16, 32, 64):
            for stages in (1, 2, 3):
                smem = (bm + stages * bn) * 576 * 2
                if smem <= 222 * 1024 and not (bm == 32 and bn == 16):
                    out.append((bm, bn, warps, stages))
    return out


def _compiled_facts(compiled) -> dict:
    """Registers, spills and shared memory of a compiled kernel (what a fixed-config launch returns)."""
    try:
        return {"n_regs": compiled.n_regs, "n_spills": compiled.n_spills, "shared": compiled.metadata.shared}
    except Exception as exc:  # Triton internals: say what was not found rather than fail the config
        return {"compiled_facts": f"{type(exc).__name__}: {exc}"[:120]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=32, help="heads of one chunk (the layer's chunk at B 2, L 2048)")
    ap.add_argument("--lq", type=int, default=2048)
    ap.add_argument("--lk", type=int, default=2048)
    ap.add_argument("--no-causal", action="store_true")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="start no new config after this many seconds (0: no limit); the JSON is rewritten per config")
    ap.add_argument("--wide", action="store_true", help="every candidate config, not only FOCUS")
    ap.add_argument("--kernel-file", action="append", default=[],
                    help="a kernel module to time instead of the shipped one (a file with launch() and mla_forward(); "
                         "repeatable; the shipped impls/mla/triton_kernels/mla.py is always timed first)")
    ap.add_argument("--only", default="",
                    help="configs to time, BLOCK_MxBLOCK_NxWARPSxSTAGES[xSPLIT], e.g. 64x32x8x2,128x32x8x2x2 (default: all)")
    args = ap.parse_args(argv)

    import torch
    import triton
    import triton.testing

    if not torch.cuda.is_available():
        print("mla_tune.py: needs a CUDA device", file=sys.stderr)
        return 2
    from attnsuite import registry

    registry.load_all()
    from attnsuite_impls.mla.triton_kernels import kernels

    import importlib.util

    modules = [("shipped", kernels("mla", "cuda"))]
    for i, path in enumerate(args.kernel_file):
        spec = importlib.util.spec_from_file_location(f"mla_candidate_{i}", path)
        cand = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cand)
        modules.append((path, cand))
    b, h, lq, lk, dl, dr = args.batch, args.heads, args.lq, args.lk, 512, 64
    causal = not args.no_causal
    g = torch.Generator(device="cuda").manual_seed(0)
    q_lat = torch.randn(h, b, lq, dl, device="cuda", dtype=torch.bfloat16, generator=g).transpose(0, 1)
    q_pe = torch.randn(b, lq, h, dr, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    kv = torch.randn(b, lk, dl + dr, device="cuda", dtype=torch.bfloat16, generator=g)
    scale = (192) ** -0.5  # DeepSeek-V3's softmax scale over its 128 + 64 query/key dims
    pairs = b * h * (lq * lk - (lq * (lq - 1)) // 2 if causal else lq * lk)  # bottom-right, lq <= lk
    flop = 2.0 * pairs * (dl + dr + dl)

    q = torch.cat([q_lat, q_pe], dim=-1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), kv[:, None].float(), kv[:, None, :, :dl].float(), scale=scale, enable_gqa=True,
        attn_mask=(torch.ones(lq, lk, dtype=torch.bool, device="cuda").tril(lk - lq) if causal else None))
    q = None

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "shape": dict(batch=b, heads=h, lq=lq, lk=lk, dl=dl, dr=dr, causal=causal), "flop": flop, "rows": []}

    def save():
        tmp = out_dir / "mla_tune.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out_dir / "mla_tune.json")

    only = {tuple(int(x) for x in s.split("x")) for s in args.only.split(",") if s}
    pool = candidates() if args.wide else FOCUS
    cfgs = [c for c in pool if not only or c in only] + [c for c in only if c not in pool]
    started = time.perf_counter()
    # the autotuned entry point as the layer calls it (shipped kernel), then each config on every
    # kernel in turn: the kernels are compared over the same minutes of the machine's life
    jobs = [("shipped", modules[0][1], "autotuned", None)]
    jobs += [(kname, mod, "x".join(map(str, c)), c) for c in cfgs for kname, mod in modules]
    for kname, mod, name, cfg in jobs:
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            result["cut"] = f"--budget-s {args.budget_s:g} reached before {kname} config {name}"
            print(result["cut"], flush=True)
            break
        row = {"kernel": kname, "config": name}
        try:
            o = torch.empty_like(q_lat)
            t0 = time.perf_counter()
            if cfg is None:
                fn = (lambda mod=mod: mod.mla_forward(q_lat, q_pe, kv, scale, causal))
                o = fn()
            else:
                fn = (lambda o=o, cfg=cfg, mod=mod: mod.launch(q_lat, q_pe, kv, o, scale, causal, cfg))
                row.update(_compiled_facts(fn()))
            torch.cuda.synchronize()
            row["first_call_s"] = round(time.perf_counter() - t0, 2)
            row["max_abs_err"] = float((o.float() - ref).abs().max())
            ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
            row["ms"] = ms
            row["tflops"] = flop / (ms * 1e-3) / 1e12
            if cfg is None:
                row["chosen"] = str(getattr(mod.mla_fwd, "best_config", None))
        except Exception as exc:  # a config that does not compile (shared memory, registers) is reported
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        save()
    for kname, _ in modules:
        ok = [r for r in result["rows"] if "ms" in r and r["config"] != "autotuned" and r["kernel"] == kname]
        if ok:
            best = min(ok, key=lambda r: r["ms"])
            print(f"fastest {kname}: {best['config']} {best['ms']:.3f} ms {best['tflops']:.1f} TFLOP/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
