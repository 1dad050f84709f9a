"""Fixtures for the machinery tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
