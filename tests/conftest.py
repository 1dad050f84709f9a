"""Fixtures for the machinery tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _inner_runs_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `pytest -n 2` each worker has PYTEST_XDIST_WORKER set; pytest-benchmark reads it and
    # disables itself in the in-process pytester runs these tests make, so hide it from them.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
