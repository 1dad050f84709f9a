"""Fixtures for the machinery tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # The in-process runs of these tests (pytester.runpytest) drop every module imported during them
    # when they end. TorchDynamo is imported lazily (attnsuite.case.lift_recompile_limits), and with
    # it Triton, whose C extension aborts the process when it is loaded a second time ("refusing to
    # add duplicate key"): imported here, before any such run, neither is ever imported twice. Here,
    # not at this file's import: after test_correctness/conftest.py has chosen Triton's mode (its
    # interpreter for CPU tensors, fixed at triton's first import; imported earlier, every Triton
    # check on CPU skipped: "Triton runs CPU tensors only under its interpreter").
    import torch._dynamo  # noqa: F401


@pytest.fixture(autouse=True)
def _inner_runs_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `pytest -n 2` each worker has PYTEST_XDIST_WORKER set; pytest-benchmark reads it and
    # disables itself in the in-process pytester runs these tests make, so hide it from them.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _subprocesses_import_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pytest and python processes these tests start must import attnsuite from this checkout:
    # without it they would find no attnsuite where the package is not installed (the H200 hosts, where
    # the plugin tests' inner runs failed "No module named 'attnsuite'"), or another copy where one is.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *paths]))


@pytest.fixture(autouse=True)
def _inner_runs_leave_out_hypothesis_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pytest processes these tests start leave out hypothesis's plugin (suiterun.INNER_ADDOPTS says why)
    from suiterun import INNER_ADDOPTS

    opts = os.environ.get("PYTEST_ADDOPTS", "")
    if INNER_ADDOPTS not in opts:
        monkeypatch.setenv("PYTEST_ADDOPTS", f"{opts} {INNER_ADDOPTS}".strip())


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, whose runs (in this process or their own) leave out hypothesis's plugin too: pytester
    clears PYTEST_ADDOPTS when it is set up, after the fixture above, so its ~230 runs in these tests
    had each loaded the plugin and imported all of hypothesis (about 1 s of CPU a run)."""
    from suiterun import INNER_ADDOPTS

    monkeypatch.setenv("PYTEST_ADDOPTS", INNER_ADDOPTS)
    return pytester
