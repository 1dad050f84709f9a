"""scripts/test.sh (the README's test command, which .ci/run calls): how it starts pytest.

It runs in a copy of the script beside stand-ins: a set-up that does nothing, a ``.venv/bin/python``
that prints the environment and arguments it got (and exits with a chosen status) instead of
running pytest, and an ``nproc`` that reports a chosen core count.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then  # the test tools' probe (find_spec), else the GPU probe: 0 = a CUDA GPU is present
  case "$2" in *find_spec*) echo "${FAKE_MISSING:-}"; [ -z "${FAKE_MISSING:-}" ]; exit $? ;; esac
  exit "${FAKE_GPU:-1}"
fi
echo "OMP_NUM_THREADS=${OMP_NUM_THREADS-unset} BYTECODE=${PYTHONDONTWRITEBYTECODE-unset} ARGS=$*"
case " $* " in *" -m gpu "*) exit "${FAKE_STATUS_GPU:-0}" ;; esac
exit "${FAKE_STATUS:-0}"
"""


def _run(tmp_path: Path, cores: int, **env: str) -> subprocess.CompletedProcess:
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test.sh", tree / "scripts" / "test.sh")
    shutil.copy(ROOT / "scripts" / "space.sh", tree / "scripts" / "space.sh")
    shutil.copy(ROOT / "scripts" / "python_check.sh", tree / "scripts" / "python_check.sh")
    (tree / "scripts" / "setup.sh").write_text('[ -n "${FAKE_SETUP_FAILS:-}" ] && exit 1\nexit 0\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in ((tree / ".venv" / "bin" / "python", FAKE_PYTHON),
                       (bin_dir / "nproc", f"#!/usr/bin/env bash\necho {cores}\n"),
                       (bin_dir / "chromium", "#!/usr/bin/env bash\nexit 0\n")):
        name.write_text(body)
        name.chmod(0o755)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "ATTNSUITE_TEST_WORKERS", "ATTNSUITE_TEST_PYTHON")
             and not k.startswith("FAKE_")}
    clean.update(PATH=f"{bin_dir}{os.pathsep}{clean.get('PATH', '/usr/bin:/bin')}", PYTHONDONTWRITEBYTECODE="1",
                 TMPDIR=str(tmp_path), **env)
    return subprocess.run(["bash", str(tree / "scripts" / "test.sh"), "-k", "x"], capture_output=True, text=True,
                          env=clean, timeout=60)


def _pytest_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stdout.splitlines() if "-m pytest" in line]


def _pytest_line(done: subprocess.CompletedProcess) -> str:
    return _pytest_lines(done)[0]


@pytest.mark.parametrize("cores, env, workers, threads", [
    pytest.param(2, {}, 2, 1, id="2 cores: 2 workers of 1 thread each"),
    pytest.param(16, {}, 8, 2, id="16 cores: 8 workers (the most) of 2 threads each"),
    pytest.param(1, {}, 2, 1, id="1 core: 2 workers (the fewest) of 1 thread"),
    pytest.param(16, {"ATTNSUITE_TEST_WORKERS": "4"}, 4, 4, id="16 cores, 4 workers asked for: 4 threads each"),
    pytest.param(16, {"OMP_NUM_THREADS": "3"}, 8, 3, id="a thread count the caller set is kept"),
])
def test_each_worker_gets_its_share_of_the_cores_for_its_threads(tmp_path, cores, env, workers, threads):
    # 2 workers x 2 torch threads on 2 cores had run the correctness checks at half speed
    line = _pytest_line(_run(tmp_path, cores, **env))
    assert f"OMP_NUM_THREADS={threads} " in line and f" -n {workers} " in line, line
    assert line.rstrip().endswith("-k x"), line  # the caller's arguments come last


def test_an_idle_worker_steals_queued_tests_from_a_busy_one(tmp_path):
    # xdist's default scheduling had left one of 2 workers idle through the other's tail (830 s vs 712 s)
    assert " --dist worksteal " in _pytest_line(_run(tmp_path, 2))


def test_the_tests_may_write_bytecode_where_the_environment_forbids_it(tmp_path):
    # hundreds of Python processes had each compiled this package's sources again
    assert "BYTECODE=unset " in _pytest_line(_run(tmp_path, 2))


@pytest.mark.parametrize("gpu", [False, True], ids=["without a GPU", "with a GPU"])
def test_the_tests_marked_gpu_run_alone_after_the_others_where_a_gpu_is_present(tmp_path, gpu):
    # among busy xdist workers a GPU timing test measured the host, and a worker with Triton's
    # interpreter on (from the CPU checks) failed the compiled ones (an H200 host, 2026-12-02)
    lines = _pytest_lines(_run(tmp_path, 2, FAKE_GPU="0" if gpu else "1"))
    assert len(lines) == (2 if gpu else 1), lines
    assert " -n 2 --dist worksteal -m not gpu " in lines[0], lines
    if gpu:
        assert " -m gpu " in lines[1] and " -n " not in lines[1] and "test_correctness" not in lines[1], lines
        assert lines[1].rstrip().endswith("-k x"), lines  # the caller's arguments reach both passes


@pytest.mark.parametrize("gpu, first, second, expected", [
    (False, 0, None, 0), (False, 1, None, 1), (False, 5, None, 1),
    (True, 0, 0, 0), (True, 0, 1, 1), (True, 1, 0, 1), (True, 5, 0, 0), (True, 0, 5, 0), (True, 5, 5, 1),
    (True, 2, 0, 2),
], ids=["passed", "failed", "nothing collected",
        "gpu: both passed", "gpu: the gpu pass failed", "gpu: the first pass failed",
        "gpu: only gpu tests selected", "gpu: no gpu test selected", "gpu: nothing collected in either",
        "gpu: the first pass interrupted, no second"])
def test_the_exit_status_is_pytests_except_that_collecting_nothing_fails(tmp_path, gpu, first, second, expected):
    env = {"FAKE_GPU": "0" if gpu else "1", "FAKE_STATUS": str(first)}
    if second is not None:
        env["FAKE_STATUS_GPU"] = str(second)
    done = _run(tmp_path, 2, **env)
    assert done.returncode == expected, done.stdout + done.stderr
    nothing = "pytest collected no tests: treating that as a failure" in done.stderr
    assert nothing == (first == 5 and second in (None, 5)), done.stderr
    assert len(_pytest_lines(done)) == (2 if gpu and first != 2 else 1), done.stdout


def test_a_given_interpreter_is_used_without_the_set_up(tmp_path):
    # a GPU host's image has the test tools and no package index: the set-up would fail there
    other = tmp_path / "other-python"
    other.write_text(FAKE_PYTHON.replace("ARGS=", "OTHER ARGS="))
    other.chmod(0o755)
    done = _run(tmp_path, 2, ATTNSUITE_TEST_PYTHON=str(other), FAKE_SETUP_FAILS="1")
    assert done.returncode == 0 and "OTHER ARGS=" in _pytest_line(done), done.stdout + done.stderr


def test_a_given_interpreter_that_does_not_exist_is_named_as_such(tmp_path):
    # it had read "missing scripts/test.sh: line 11: /nonexistent/python: No such file or directory"
    done = _run(tmp_path, 2, ATTNSUITE_TEST_PYTHON="/nonexistent/python")
    assert done.returncode == 4 and not _pytest_lines(done), done.stdout + done.stderr
    assert "ATTNSUITE_TEST_PYTHON=/nonexistent/python cannot run the tests: not found, or not executable (unset" \
        in done.stderr and "line 1" not in done.stderr, done.stderr


def test_a_given_interpreter_without_the_test_tools_is_refused_naming_what_it_lacks(tmp_path):
    other = tmp_path / "other-python"
    other.write_text(FAKE_PYTHON)
    other.chmod(0o755)
    done = _run(tmp_path, 2, ATTNSUITE_TEST_PYTHON=str(other), FAKE_MISSING="xdist, hypothesis")
    assert done.returncode == 4 and not _pytest_lines(done), done.stdout + done.stderr  # nothing ran (2: interrupted)
    assert f"ATTNSUITE_TEST_PYTHON={other} cannot run the tests: missing xdist, hypothesis" in done.stderr
