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
    # Hypothesis's pytest plugin imports all of hypothesis in every session's terminal summary: a
    # one-test session took 1.46 s with it, 0.35 s without (2-core CPU machine, 2026-12-02), in each of
    # the pytest processes these tests start. None of them asserts on its output, and @given tests run
    # without it (test_correctness/conftest.py loads the profile itself).
    opts = os.environ.get("PYTEST_ADDOPTS", "")
    if "no:hypothesispytest" not in opts:
        monkeypatch.setenv("PYTEST_ADDOPTS", f"{opts} -p no:hypothesispytest".strip())
