"""scripts/gpu_correctness.sh, the GPU workflow's correctness step, run against a stand-in python.

It runs in two passes: the tests that time nothing share the GPU among several xdist workers, and
the tests marked ``gpu`` (timing, a real illegal address) get it alone in one worker. These tests
pin how the passes are split, how the workers are counted and what each pass's exit status makes
of the step's, without a GPU: the stand-in records each pytest command line and exits as told.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!/usr/bin/env bash
# python3 as gpu_correctness.sh sees it: xdist is importable; pytest records its arguments
if [ "$1" = "-c" ]; then exit 0; fi
printf '%s\\n' "OMP_NUM_THREADS=$OMP_NUM_THREADS $*" >> "$CALLS"
case "$*" in
  *"-m not gpu"*) exit "${SHARED_EXIT:-0}" ;;
  *) exit "${ALONE_EXIT:-0}" ;;
esac
"""


def run_script(tmp_path: Path, shared: int, alone: int, **env: str) -> tuple[int, str, list[str]]:
    stand_in = tmp_path / "python"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    calls = tmp_path / "calls.txt"
    full_env = {"PATH": os.environ["PATH"], "PYTHON": str(stand_in), "CALLS": str(calls), "OUT": str(tmp_path / "out"),
                "SHARED_EXIT": str(shared), "ALONE_EXIT": str(alone), **env}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_correctness.sh"), "-k", "sdpa"], capture_output=True,
                          text=True, timeout=60, env=full_env)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return done.returncode, done.stdout + done.stderr, lines


def test_the_shared_pass_runs_the_unmarked_tests_in_workers_and_the_gpu_tests_run_alone(tmp_path):
    rc, out, calls = run_script(tmp_path, 0, 0, WORKERS="5")
    assert rc == 0, out
    assert len(calls) == 2, calls
    shared, alone = calls
    assert "-n 5 --dist worksteal -m not gpu" in shared and "--attn-device cuda" in shared, shared
    assert "-n 1 --dist worksteal -m gpu" in alone, alone
    for line in calls:  # the caller's own arguments reach both passes; one failures log gathers both
        assert line.endswith("-k sdpa") and f"--attn-failures-log={tmp_path}/out/gpu_correctness.failures" in line


@pytest.mark.parametrize("cores,workers", [(1, 1), (2, 1), (4, 2), (16, 6), (64, 6)])
def test_the_default_worker_count_is_half_the_cores_and_at_most_six(tmp_path, cores, workers):
    fake_nproc = tmp_path / "bin" / "nproc"
    fake_nproc.parent.mkdir()
    fake_nproc.write_text(f"#!/bin/sh\necho {cores}\n")
    fake_nproc.chmod(0o755)
    rc, out, calls = run_script(tmp_path, 0, 0, PATH=f"{fake_nproc.parent}:{os.environ['PATH']}")
    assert rc == 0, out
    assert f"-n {workers} --dist worksteal -m not gpu" in calls[0], calls[0]
    # the cores shared out among the workers for their threads; the pass marked gpu has them all
    assert calls[0].startswith(f"OMP_NUM_THREADS={max(1, cores // workers)} "), calls[0]
    assert calls[1].startswith(f"OMP_NUM_THREADS={cores} "), calls[1]


@pytest.mark.parametrize("paths, given", [
    (None, True), ("test_correctness", True), ("test_correctness/test_variants.py tests", True),
    ("tests", False), ("tests/test_gpu_timing.py", False),
])
def test_the_correctness_only_option_goes_only_to_runs_that_collect_the_correctness_suite(tmp_path, paths, given):
    # PATHS=tests had ended both passes at once: "unrecognized arguments: --attn-compiled-problems 2"
    rc, out, calls = run_script(tmp_path, 0, 0, **({"PATHS": paths} if paths else {}))
    assert rc == 0 and len(calls) == 2, out
    assert all(("--attn-compiled-problems 2" in line) == given for line in calls), calls


def test_a_thread_count_the_caller_set_is_kept(tmp_path):
    rc, out, calls = run_script(tmp_path, 0, 0, WORKERS="4", OMP_NUM_THREADS="3")
    assert rc == 0 and all(line.startswith("OMP_NUM_THREADS=3 ") for line in calls), calls


@pytest.mark.parametrize("shared,alone,expected,says", [
    (0, 0, 0, "gpu_correctness exit status: 0"),
    (1, 0, 1, "pass 1 (not gpu, 6 workers) exit status: 1"),
    (0, 1, 1, "pass 2 (gpu, 1 worker) exit status: 1"),
    (0, 5, 0, "no test marked gpu was selected"),  # a narrowed PATHS or -k: nothing there is marked gpu
    (5, 0, 5, "pass 1 (not gpu, 6 workers) exit status: 5"),  # the shared pass collecting nothing is an error
])
def test_each_pass_status_decides_the_steps_status(tmp_path, shared, alone, expected, says):
    rc, out, calls = run_script(tmp_path, shared, alone, WORKERS="6")
    assert rc == expected, out
    assert says in out, out
    assert len(calls) == 2


@pytest.mark.parametrize("status", [2, 130])
def test_an_interrupted_shared_pass_ends_the_step_without_starting_the_second(tmp_path, status):
    # a time limit's SIGINT: pytest's own "interrupted" (2), or 130 where it died of the signal
    rc, out, calls = run_script(tmp_path, status, 0, WORKERS="2")
    assert rc == status, out
    assert len(calls) == 1 and "pass 2 (the tests marked gpu) not run" in out, (calls, out)


def test_a_sigint_to_the_step_during_the_shared_pass_keeps_the_second_from_starting(tmp_path):
    # timeout -s INT signals the whole process group: here pytest survives it and exits 0 (its
    # stand-in ignores the signal), so only the shell's trap knows that the step was interrupted
    slow = STAND_IN.replace('printf', 'if [ -n "$SLOW" ] && [[ "$*" == *"not gpu"* ]]; then trap "" INT; sleep 3; fi\nprintf')
    (tmp_path / "python").write_text(slow)
    stand_in = tmp_path / "python"
    stand_in.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": os.environ["PATH"], "PYTHON": str(stand_in), "CALLS": str(calls), "OUT": str(tmp_path / "out"),
           "SLOW": "1", "WORKERS": "2"}
    done = subprocess.run(["timeout", "-s", "INT", "1", "bash", str(ROOT / "scripts" / "gpu_correctness.sh")],
                          capture_output=True, text=True, timeout=60, env=env)
    out = done.stdout + done.stderr
    assert "pass 2 (the tests marked gpu) not run" in out, out
    assert len(calls.read_text().splitlines()) == 1
