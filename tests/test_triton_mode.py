"""Triton's mode (interpreted or compiled) follows the device a run checks, not whether a GPU is present.

On an H200 host the CPU test command once left the interpreter off because CUDA was there, and every
Triton test on CPU tensors failed (docs/evidence/h200-2026-12-01-s15).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnsuite import triton_support

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("device,preset,imported,expected", [
    ("cpu", None, False, "1"),  # CPU tensors need the interpreter
    ("cuda", None, False, None),  # CUDA runs compile
    ("cpu", "0", False, "0"),  # what the user set is kept (device_reason then says why CPU is declined)
    ("cpu", None, True, None),  # too late once triton is imported: nothing changes
], ids=["cpu-interprets", "cuda-compiles", "user-value-kept", "after-import-unchanged"])
def test_the_mode_follows_the_runs_device(monkeypatch, device, preset, imported, expected):
    if preset is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", preset)
    if imported:
        monkeypatch.setitem(sys.modules, "triton", sys.modules.get("triton", object()))
    else:
        monkeypatch.delitem(sys.modules, "triton", raising=False)  # restored after the test
    triton_support.choose_mode(device)
    assert os.environ.get("TRITON_INTERPRET") == expected


def test_the_cpu_correctness_run_interprets_triton_on_a_host_that_has_a_gpu():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_gpu_host", "-p", "no:cacheprovider", "-q",
                           "-rs", f"--rootdir={ROOT}", str(ROOT / "test_correctness" / "test_triton.py"),
                           "-k", "bitwise_deterministic"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    fault = _interpreter_fault(env)
    if fault:  # this Triton's interpreter cannot run the kernels at all: the skip must say that, not "off"
        assert done.returncode == 0 and "1 skipped" in out and "interpreter cannot run" in out, out[-3000:]
    else:  # passed, not skipped: a skip would say the interpreter was off for a CPU run
        assert done.returncode == 0 and "1 passed" in out, out[-3000:]


_FAULT: list[str] = []


def _interpreter_fault(env: dict) -> str:
    """triton_support.interpreter_fault() as a fresh interpreting process sees it ('' when none).

    Asked once per process: the answer is this Triton's and this NumPy's, whichever test asks first (the
    two callers' environments differ only in PYTHONPATH entries and xdist's worker name)."""
    if not _FAULT:
        code = "from attnsuite import triton_support as t; print(t.interpreter_fault() or '')"
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "TRITON_INTERPRET": "1"},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        _FAULT.append(done.stdout.strip())
    return _FAULT[0]


FAULTY_INTERPRETER = """
import numpy, triton
from triton.runtime import interpreter

def refuse(self, *args, **kwargs):  # what triton 3.6's interpreter does under NumPy 2.4
    raise interpreter.InterpreterError("TypeError") from TypeError("only 0-dimensional arrays can be converted")

interpreter.GridExecutor.__call__ = refuse
from attnsuite import triton_support as t
print(t.device_reason("cpu"))
print(triton.__version__, numpy.__version__)
"""


def test_an_interpreter_that_cannot_run_a_runtime_loop_bound_declines_cpu_tensors_naming_the_versions():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FAULTY_INTERPRETER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reason, versions = done.stdout.strip().splitlines()
    triton_version, numpy_version = versions.split()
    assert f"triton {triton_version}'s interpreter cannot run a loop over a runtime bound" in reason
    assert f"numpy {numpy_version}" in reason and "only 0-dimensional arrays" in reason


def test_the_pinned_triton_interpreter_runs_the_kernels():
    triton = pytest.importorskip("triton")
    pin = re.search(r'"triton==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    if triton.__version__ != pin:
        pytest.skip(f"triton {triton.__version__} here, not the dev extra's pin {pin}")
    assert _interpreter_fault({**os.environ, "PYTHONPATH": str(ROOT)}) == ""


def test_the_test_commands_two_folders_together_still_check_triton_on_cpu_tensors(tmp_path):
    # tests/conftest.py had imported TorchDynamo (and with it Triton) at its own import, before
    # test_correctness/conftest.py chose the interpreter: every Triton check of the CPU test command
    # skipped ("Triton runs CPU tensors only under its interpreter"), and the run passed
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_compile_limits.py"),
                           str(ROOT / "test_correctness" / "test_triton.py"), f"--rootdir={ROOT}", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "-q", "-rs", "-k", "not lifting"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "only under its interpreter" not in done.stdout, done.stdout[-3000:]
    assert int(re.search(r"(\d+) passed", done.stdout).group(1)) >= 10, done.stdout[-1000:]
