"""Where a fresh process's first SDPA calls spend their time, and whether a disk cache keeps it (CUDA only).

On fresh H200 machines whose Triton and Inductor caches were restored, the full tier's first calls
still cost 49-58 s beyond their warm time (docs/evidence/h200-2026-12-04-s34: each record's
``first_call_ms`` less its ``median_ms``), and plain SDPA cases (cuDNN on Hopper, no compiler of
ours involved) were among the largest: 0.9-1.8 s each. This probe tells whether that is code the
CUDA driver compiles at load time (its JIT cache, ``CUDA_CACHE_PATH``, would keep it between jobs as
the workflow keeps Triton's cache) or work done in every process (a library building its plans).

Each round runs the same SDPA steps (forward and backward, bf16, the full tier's shapes) in a new
process and reports each step's first and second call in milliseconds; rounds 1 and 2 share one
empty-at-start ``CUDA_CACHE_PATH``, round 3 runs with ``CUDA_CACHE_DISABLE=1``, round 4 with the filled cache and cuDNN's SDPA
backend turned off (which of SDPA's backends pays the first call).

    python3 scripts/first_call_probe.py --out DIR     # writes DIR/first_call_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, batch, query heads, kv heads, length, head dim, mask): the tier's cases with the largest
# first-call excess in s34's runs, and one flash-sized plain case
STEPS = [
    ("llama3-70b sdpa-additive", 1, 64, 8, 4096, 128, "additive"),
    ("gpt2-mha sdpa", 8, 12, 12, 1024, 64, "causal"),
    ("video-wm sdpa", 32, 6, 6, 1950, 64, "causal"),
    ("deepseek-v3 sdpa", 2, 128, 128, 2048, 56, "causal"),
    ("fa-sweep sdpa", 4, 16, 16, 4096, 128, "causal"),
]


def child() -> None:
    """One round: every step's first and second call (forward + backward), as JSON on stdout."""
    import torch
    import torch.nn.functional as F

    if os.environ.get("PROBE_NO_CUDNN") == "1":  # round 4: SDPA may not pick cuDNN
        torch.backends.cuda.enable_cudnn_sdp(False)
    t0 = time.perf_counter()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    rows = [{"step": "cuda init", "first_ms": (time.perf_counter() - t0) * 1e3}]
    for name, b, hq, hkv, L, d, mask in STEPS:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, L, d, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        k = torch.randn(b, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        v = torch.randn(b, hkv, L, d, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        kw: dict = {"enable_gqa": True} if hkv != hq else {}
        if mask == "additive":
            keep = torch.ones(L, L, dtype=torch.bool, device="cuda").tril()
            kw["attn_mask"] = torch.zeros(L, L, device="cuda", dtype=torch.bfloat16).masked_fill(~keep, float("-inf"))
        else:
            kw["is_causal"] = True
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, **kw).sum().backward()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
        rows.append({"step": name, "first_ms": round(times[0], 1), "second_ms": round(times[1], 1)})
        del q, k, v, kw
        torch.cuda.empty_cache()
    print(json.dumps(rows))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "results"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child()
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="cuda-jit-cache-"))
    rounds = []
    for label, extra in (("1: empty CUDA_CACHE_PATH", {"CUDA_CACHE_PATH": str(cache)}),
                         ("2: the same CUDA_CACHE_PATH, filled by round 1", {"CUDA_CACHE_PATH": str(cache)}),
                         ("3: CUDA_CACHE_DISABLE=1", {"CUDA_CACHE_DISABLE": "1"}),
                         ("4: the filled cache, cuDNN's SDPA off", {"CUDA_CACHE_PATH": str(cache), "PROBE_NO_CUDNN": "1"})):
        env = {**os.environ, **extra}
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                              timeout=300)
        row = {"round": label, "process_s": round(time.perf_counter() - t, 2), "rc": proc.returncode,
               "cache_bytes_after": _size(cache)}
        try:
            row["steps"] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            row["stderr_tail"] = proc.stderr[-2000:]
        rounds.append(row)
        print(json.dumps(row), flush=True)
    result = {"rounds": rounds}
    try:
        import torch
        result.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                      device=torch.cuda.get_device_name())
    except Exception as exc:  # the report stands without them
        result["versions"] = f"{type(exc).__name__}: {exc}"
    tmp = out / "first_call_probe.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "first_call_probe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
