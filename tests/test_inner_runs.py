"""The pytest runs these tests make: what they are given (tests/conftest.py, suiterun.INNER_ADDOPTS)."""

from __future__ import annotations

import pytest

PROBE = """
def test_probe(request):
    assert not request.config.pluginmanager.has_plugin("hypothesispytest"), "hypothesis's plugin was loaded"
"""


@pytest.mark.parametrize("where", ["in-this-process", "in-its-own-process"])
def test_a_pytester_run_leaves_out_hypothesis_plugin(pytester: pytest.Pytester, where: str) -> None:
    # pytester clears PYTEST_ADDOPTS: the opt-out had reached none of its runs (each imported all of hypothesis)
    pytester.makepyfile(test_probe=PROBE)
    run = pytester.runpytest if where == "in-this-process" else pytester.runpytest_subprocess
    run("-p", "no:cacheprovider").assert_outcomes(passed=1)
