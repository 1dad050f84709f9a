"""A distributed variant whose rank hangs costs one rank timeout per world size, not one per test.

A first-time user's trial: rank 1 of a copy of examples/distributed_variant.py slept for an hour;
every one of its tests waited the hard-coded 60 s (about 33 minutes over the default world sizes),
and pytest printed each test's source with its assertion rewrite. Now ``--attn-rank-timeout`` sets
the wait, the variant's other tests on that world size are skipped with the reason, and a failure
shows the check's own message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from attnsuite.distributed.check import CHECKS

ROOT = Path(__file__).resolve().parents[1]


def test_a_hung_rank_fails_one_test_and_skips_the_variants_others_on_that_world_size(tmp_path):
    source = (ROOT / "examples" / "distributed_variant.py").read_text()
    hung = source.replace('name = "example-gather-kv"', 'name = "test-hung-rank"').replace(
        "        def run(q, k, v):\n",
        "        def run(q, k, v):\n            if ctx.rank == 1:\n                import time\n"
        "                time.sleep(3600)\n", 1)
    assert hung != source and "time.sleep(3600)" in hung
    module = tmp_path / "hung_rank.py"
    module.write_text(hung)
    # the CPU ranks and problems this test counts, whatever device the outer run checks distributed
    # variants on (scripts/gpu_correctness.sh exports ATTNSUITE_DIST_DEVICE=cuda and its dtypes: there
    # the run had collected none of the CPU problems and exited 5)
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNSUITE_DIST_DEVICE", "ATTNSUITE_DIST_DTYPES")}
    env.update(ATTNSUITE_DIST_WORLD="2", PYTHONPATH=str(ROOT))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "test_correctness/test_distributed.py", "-p", "no:cacheprovider",
                           "-n", "0", "-rs", f"--attn-variants={module}", "--attn-only=test-hung-rank",
                           "--attn-rank-timeout=3", "-k", "test_distributed_variant_on_P_ranks and q24"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    took = time.monotonic() - start
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    assert "did not answer within 3 s (hung)" in out, out[-3000:]
    assert "test-hung-rank hung on P=2 ranks in " in out and "its other tests are not run on P=2" in out
    # one test waited; the problem's other checks on P=2 did not
    assert f"1 failed, {len(CHECKS) - 1} skipped" in out, out[-2000:]
    assert "def test_distributed_variant_on_P_ranks_passes_the_check" not in out  # no source dump
    assert took < 120, f"took {took:.0f} s"
