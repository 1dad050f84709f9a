"""Benchmarks under pytest-xdist are a usage error (attnsuite/bench_xdist.py): pytest-benchmark
disables itself under xdist, and ``pytest bench -n 2`` had measured, written and judged nothing, exit 0."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return pytester


@pytest.mark.parametrize("args", [("bench", "-n", "2"), ("bench", "--benchmark-only", "-n", "2"),
                                  ("bench/test_workloads.py", "-n", "1")],
                         ids=["bench-path", "benchmark-only", "bench-file"])
def test_benchmarks_with_xdist_are_a_usage_error_naming_the_option(project, args):
    pytest.importorskip("xdist")
    res = project.runpytest_subprocess(*args, "-p", "no:cacheprovider", "--attn-device=cpu")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()[-2000:] + res.stderr.str()[-2000:]
    res.stderr.fnmatch_lines([f"*attnsuite: -n {args[-1]} (pytest-xdist) with the benchmarks: under xdist "
                              "pytest-benchmark times nothing*Drop -n*"])


@pytest.mark.parametrize("args, source, workers, benchmark_only", [
    (["tests"], "ARGS", 2, False),  # the test command's own -n
    (["tests", "test_correctness", "bench"], "TESTPATHS", 2, False),  # plain `pytest -n 2`: bench not named
    (["bench"], "ARGS", 0, False),  # -n 0: no workers
], ids=["tests", "testpaths", "no-workers"])
def test_other_sessions_under_xdist_are_left_alone(tmp_path, args, source, workers, benchmark_only):
    from types import SimpleNamespace

    from attnsuite.bench_xdist import xdist_problem

    config = SimpleNamespace(option=SimpleNamespace(numprocesses=workers), rootpath=tmp_path,
                             args_source=getattr(pytest.Config.ArgsSource, source),
                             args=[str(tmp_path / a) for a in args],
                             getoption=lambda name, default=None: benchmark_only if name == "benchmark_only" else default)
    assert xdist_problem(config) is None
