"""Benchmarks under pytest-xdist (``-n N``) are a usage error, named before anything runs.

Under xdist pytest-benchmark disables itself: ``pytest bench -n 2`` ran each case once, untimed,
wrote no ``--benchmark-json`` and judged nothing, exit 0 (one warning line said "Benchmark
fixture was not used at all"); with ``--benchmark-only`` pytest-benchmark stopped on "Can't have
both --benchmark-only and --benchmark-disable". The suite's benchmarks isolate each case in a
worker process of their own already (and ``--attn-gpus`` spreads them over GPUs), so ``-n`` has
nothing to add there. ``scripts/test.sh`` uses ``-n`` for the tests, which a user may copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest


def xdist_problem(config: pytest.Config) -> Optional[str]:
    """Why this session's ``-n`` cannot run with its benchmarks (None when there is none)."""
    workers = getattr(config.option, "numprocesses", None)
    if not workers or hasattr(config, "workerinput"):
        return None
    named = getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS
    bench = (Path(config.rootpath) / "bench").resolve()
    paths = [Path(str(a).split("::")[0]).resolve() for a in (config.args if named else ())]
    if not (config.getoption("benchmark_only", False) or any(p == bench or bench in p.parents for p in paths)):
        return None
    return (f"-n {workers} (pytest-xdist) with the benchmarks: under xdist pytest-benchmark times nothing and "
            "writes no JSON, so nothing would be measured or judged. Drop -n: each benchmark case already runs "
            "in a worker process of its own, and --attn-gpus spreads the cases over a host's GPUs")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    why = xdist_problem(config)
    if why:
        raise pytest.UsageError(f"attnsuite: {why}")
