"""On a GPU: a Triton kernel with an illegal address is a ``crash`` and the cases after it pass.

An illegal memory access poisons the CUDA context of the process it happens in: every later CUDA
call there fails. The case runs in a worker process, so the suite records ``crash`` for it (with
the CUDA error), replaces the worker, and the next cases run on a healthy context.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnsuite.baseline import benchmark_entries

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: a real illegal address"),
]


def test_an_illegal_address_is_a_crash_and_the_cases_after_it_pass(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-p", "no:cacheprovider", "-q",
           "--attn-variants", str(ROOT / "examples" / "hostile" / "triton_oob.py"), "--attn-only", "triton-oob",
           "--attn-only", "sdpa-flash", "--attn-workload", "fa-sweep", "--attn-mode", "fwd", "--attn-gate", "off",
           f"--benchmark-json={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.exists(), proc.stdout[-4000:] + proc.stderr[-2000:]
    recs = [b["extra_info"] for b in benchmark_entries(json.loads(out.read_text()))]
    order = [(r["variant"], r["problem"]) for r in recs]
    bad = [r for r in recs if r["variant"] == "triton-oob"]
    good = [r for r in recs if r["variant"] == "sdpa-flash"]
    assert bad and good, order
    for r in bad:
        assert r["outcome"] == "crash", (r["outcome"], r["detail"])
        assert "illegal" in r["detail"].lower() or "signal" in r["detail"], r["detail"]
    for r in good:
        assert r["outcome"] == "ok", (r["problem"], r["detail"])
    # at least one sdpa-flash case ran after a crash, in a fresh worker
    problems = sorted({r["problem"] for r in recs})
    assert len(problems) >= 2, problems
    print("\n".join(f"{r['variant']:<12} {r['problem']:<45} {r['outcome']:<6} {r['detail'][:120]}" for r in recs))
