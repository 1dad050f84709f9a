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
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
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


def test_other_tests_under_xdist_are_left_alone(project):
    pytest.importorskip("xdist")
    res = project.runpytest_subprocess("test_plain.py", "-n", "2", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()[-2000:] + res.stderr.str()[-2000:]
