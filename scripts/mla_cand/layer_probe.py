"""Experiment: the DeepSeek-V3 MLA layer forward with candidate absorbed cores (CUDA only).

Times ``mla-expanded`` and ``triton-mla-absorbed`` as shipped, then the shipped layer with its core
swapped for each candidate of :mod:`kern` (an unshipped kernel with a lazy softmax rescale and a
value-column split, docs/triton.md "MLA", session s38), each with its device time by kernel and its
peak memory, and each output's largest difference from the expanded form's.

    OUT=results PROBE_CFGS='[[lazy, split, bm, bn, warps, stages, chunk_heads], ...]' python3 scripts/mla_cand/layer_probe.py

Writes ``$OUT/layer_probe.json`` (rewritten after every row).
"""
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import triton.testing  # noqa: E402

from attnsuite import registry, timing  # noqa: E402

registry.load_all()
from attnsuite_impls.mla import mla, triton_mla  # noqa: E402
from attnsuite_impls.mla.mla_oracle import deepseek_v3_problem  # noqa: E402
from kern import make  # noqa: E402


def run(fn, p) -> dict:
    """Median time, peak memory above what was allocated before, kernels, and the output."""
    row = {}
    with torch.no_grad():
        y = fn()
        torch.cuda.synchronize()
        row["ms_bench"] = triton.testing.do_bench(fn, warmup=25, rep=300, return_mode="median")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        row["peak_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
        row["kernels"] = timing.profile_step(fn, p.device, top=10)
    return row, y


def main() -> int:
    out = Path(os.environ.get("OUT", "results"))
    out.mkdir(parents=True, exist_ok=True)
    p = deepseek_v3_problem(dtype="bfloat16", device="cuda")
    inputs, _, params = registry.family("mla-layer").device_inputs(p)
    x = inputs["x"]
    rows = []

    def keep(label, row):
        row = {"label": label, **row}
        rows.append(row)
        print(json.dumps(row, default=str)[:900], flush=True)
        (out / "layer_probe.json").write_text(json.dumps(rows, indent=1, default=str))

    exp = mla.build_module("mla-expanded", p, params)
    row, ref = run(lambda: exp(x), p)
    keep("expanded", row)
    exp = None
    torch.cuda.empty_cache()
    ab = mla.build_module("triton-mla-absorbed", p, params)
    shipped_kernels, shipped_chunk = triton_mla.kernels, triton_mla.HEAD_CHUNK_BYTES
    per_head = p.batch * p.lq * 512 * 2  # bytes of one head's latent query (kv_lora 512, bf16)
    cands = [("shipped", None, None)] + [
        (f"lazy{int(lazy)}-split{split}-{bm}x{bn}x{warps}x{stages}-chunk{ch}", (lazy, split, (bm, bn, warps, stages)), ch)
        for lazy, split, bm, bn, warps, stages, ch in json.loads(os.environ.get("PROBE_CFGS", "[]"))]
    for label, spec, chunk_heads in cands:
        try:
            if spec is not None:
                _, forward = make(spec[0], spec[1], spec[2])
                triton_mla.kernels = lambda name, device_type, forward=forward: SimpleNamespace(mla_forward=forward)
                triton_mla.HEAD_CHUNK_BYTES = chunk_heads * per_head
            row, y = run(lambda: ab(x), p)
            row["max_abs_vs_expanded"] = float((y.float() - ref.float()).abs().max())
        except Exception as exc:  # a candidate that does not compile is reported, the others still run
            row = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        finally:
            triton_mla.kernels, triton_mla.HEAD_CHUNK_BYTES = shipped_kernels, shipped_chunk
        keep(label, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
