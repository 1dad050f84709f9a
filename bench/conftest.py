"""bench/ runs only when asked for: ``pytest bench ...`` or ``pytest --benchmark-only``.

A plain ``pytest`` (the correctness and unit-test run) leaves the benchmarks alone, so adding
``bench`` to ``testpaths`` does not make every test run pay for the quick tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent.resolve()


def _asked_for(config: pytest.Config) -> bool:
    if config.getoption("benchmark_only", False):
        return True
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config):
    if collection_path.resolve() != HERE and HERE in collection_path.resolve().parents and not _asked_for(config):
        return True
    return None
