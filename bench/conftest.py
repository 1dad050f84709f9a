"""bench/ runs only when asked for: ``pytest bench ...`` or ``pytest --benchmark-only``.

A plain ``pytest`` (the correctness and unit-test run) leaves the benchmarks alone, so adding
``bench`` to ``testpaths`` does not make every test run pay for the quick tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnsuite.plugin_bench import benchmarks_requested

HERE = Path(__file__).parent.resolve()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config):
    if collection_path.resolve() != HERE and HERE in collection_path.resolve().parents and not benchmarks_requested(config):
        return True
    return None
