"""--attn-failures-log: a failure's id and error reach the file while the run is still going."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = '''
import os, time

def test_a_passing_one():
    assert True

def test_a_failing_one():
    assert 1 + 1 == 3, "arithmetic is off by one"

def test_the_log_holds_the_failure_before_the_run_ends():
    # runs after the failure, inside the same session: the reason is already on disk
    text = open(os.environ["LOG_UNDER_TEST"]).read()
    assert "test_a_failing_one" in text and "arithmetic is off by one" in text
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_each_failure_is_written_to_the_log_as_it_happens(pytester, monkeypatch, workers):
    log = pytester.path / "failures.log"
    monkeypatch.setenv("LOG_UNDER_TEST", str(log))
    pytester.makepyfile(test_sample=TESTS)
    args = ["-p", "attnsuite.plugin", "-p", "no:cacheprovider", f"--attn-failures-log={log}"]
    if workers:  # no order across workers: the in-session check belongs to the one-process run
        args += ["-n", str(workers), "-k", "not the_log_holds"]
    result = pytester.runpytest_subprocess(*args)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    text = log.read_text()
    assert text.count("FAILED ") == 1, text  # once, also under xdist (the controller writes it)
    assert "test_sample.py::test_a_failing_one" in text
    assert "arithmetic is off by one" in text
    assert "test_a_passing_one" not in text
    if not workers:  # in order, one process: the check ran after the failure and saw it
        assert outcomes.get("passed") == 2, result.stdout.str()
