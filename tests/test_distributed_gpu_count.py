"""The GPU job runs the distributed correctness tests on NCCL (scripts/gpu_correctness.sh sets
ATTNSUITE_DIST_DEVICE=cuda): on a host with fewer GPUs than ranks they skip and say why, instead of
erroring in RankPool. On this project's machines (no GPU) that is the extreme case of too few.
Also: how rank processes start on a host with and without an accelerator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_nccl_cases_on_a_host_with_too_few_gpus_skip_naming_the_count(tmp_path):
    import torch

    gpus = torch.cuda.device_count()
    if gpus >= 2:
        pytest.skip(f"this host has {gpus} GPUs, enough for P=2: the NCCL tests run here instead of skipping")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSUITE_") and k != "PYTEST_XDIST_WORKER"}
    env.update(ATTNSUITE_DIST_DEVICE="cuda", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_distributed.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs",
                           "-k", "P_ranks or blocks_per_rank"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.OK, out[-3000:]
    assert f"P=2 ranks on cuda need 2 GPUs; this host has {gpus}" in out, out[-3000:]


@pytest.mark.parametrize("device,accelerator,expected", [
    # milliseconds per rank once the server runs, no autograd device threads, and none of the pool
    # owner's threads (a fork straight from it hung 1 in 150 starts after a torch.compile)
    ("cpu", False, "forkserver"),
    ("cpu", True, "spawn"),  # after any backward on such a host, a forked child's backward raises
    ("cuda", True, "spawn"),  # a forked child cannot use its parent's CUDA context
])
def test_ranks_start_from_a_fork_server_only_on_a_host_without_an_accelerator(monkeypatch, device, accelerator, expected):
    from attnsuite.distributed import launch

    monkeypatch.setattr(launch, "accelerator_present", lambda: accelerator)
    assert launch.start_method(device) == expected


@pytest.mark.parametrize("value,device,expected", [
    ("spawn", "cpu", "spawn"), ("fork", "cpu", "fork"), ("forkserver", "cpu", "forkserver"), ("", "cpu", "forkserver"),
    ("fork", "cuda", "ranks on cuda must be spawned"), ("forkserver", "cuda", "ranks on cuda must be spawned"),
    ("thread", "cpu", "must be one of spawn, forkserver, fork"),
])
def test_the_start_method_can_be_forced_and_a_wrong_value_is_refused(monkeypatch, value, device, expected):
    from attnsuite.distributed import launch

    monkeypatch.setattr(launch, "accelerator_present", lambda: False)
    monkeypatch.setenv("ATTNSUITE_RANK_START", value)
    if expected in launch.START_METHODS:
        assert launch.start_method(device) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            launch.start_method(device)


def test_distributed_benchmark_cases_run_on_spawned_ranks_inside_the_benchmark_worker(tmp_path):
    # as on a GPU host, where CPU ranks are spawned: from inside a benchmark worker process (one variant:
    # ring-zigzag's two quick-tier problems are the two cases on two ranks asked for below)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSUITE_") and k != "PYTEST_XDIST_WORKER"}
    env.update(ATTNSUITE_RANK_START="spawn", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    out = tmp_path / "cp.json"
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench"), f"--rootdir={ROOT}", "--benchmark-only",
                           "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "--attn-device=cpu", "--attn-tier=quick",
                           "--attn-workload=context-parallel", "--attn-only=ring-zigzag",
                           "--attn-mode=fwd+bwd", "--attn-gate=off", f"--benchmark-json={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    import json
    recs = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    ok = [r for r in recs if r["outcome"] == "ok" and r["extra"].get("world_size") == 2]
    assert len(ok) >= 2, [(r["case"], r["outcome"], r.get("error")) for r in recs]


@pytest.mark.parametrize("method,timeout_s,expected", [
    ("fork", 3.0, 30.0),  # a forked rank has torch and the variants already
    ("forkserver", 3.0, 120.0),  # the process's first pool starts the server: a torch import and the variants
    ("spawn", 3.0, 120.0),  # a spawned CPU rank pays what a spawned CUDA rank pays: took over 30 s under load
    ("spawn", 300.0, 300.0),  # never less than what the pool allows each task
])
def test_ranks_get_their_start_up_time_by_how_they_start(monkeypatch, method, timeout_s, expected):
    from attnsuite.distributed import launch

    monkeypatch.setenv("ATTNSUITE_RANK_START", method)
    assert launch.RankPool(2, "cpu", timeout_s=timeout_s).start_timeout_s == expected


UNGUARDED = """
from attnsuite.distributed.launch import RankPool

def task(ctx, payload):
    return ctx.rank

with RankPool(2, "cpu", timeout_s=30) as pool:  # no if __name__ == "__main__": each rank runs this again
    print(pool.run(task, None, "trivial"))
"""


def test_a_script_without_the_main_guard_is_told_why_its_ranks_died(tmp_path):
    # the rank's own RuntimeError scrolled by in ~140 lines of tracebacks; the last line said only
    # "rank 0 of P=2 died (exit code 1)" (a first-time user's trial, 2026-12-02)
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    env = {k: v for k, v in os.environ.items() if k != "ATTNSUITE_RANK_START"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    # the error's line (multiprocessing's resource tracker may print after it)
    last = next((line for line in reversed(done.stderr.splitlines()) if "RankError:" in line), "")
    assert done.returncode != 0 and "died (exit code" in last, done.stderr[-3000:]
    assert "if __name__ == '__main__':" in last and "importable by name" in last, last
