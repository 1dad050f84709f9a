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


def test_each_failure_is_written_to_the_log_as_it_happens(pytester, monkeypatch):
    log = pytester.path / "failures.log"
    monkeypatch.setenv("LOG_UNDER_TEST", str(log))
    pytester.makepyfile(test_sample=TESTS)
    result = pytester.runpytest_subprocess("-p", "attnsuite.plugin", "-p", "no:cacheprovider",
                                           f"--attn-failures-log={log}")
    outcomes = result.parseoutcomes()
    # the in-session check ran after the failure and found it on disk: it passed
    assert outcomes.get("failed") == 1 and outcomes.get("passed") == 2, result.stdout.str()
    text = log.read_text()
    assert text.count("FAILED ") == 1, text
    assert "test_sample.py::test_a_failing_one" in text
    assert "arithmetic is off by one" in text
    assert "test_a_passing_one" not in text


class _Config:
    def __init__(self, path, worker: bool):
        self.path, self.registered = path, []
        if worker:
            self.workerinput = {"workerid": "gw0"}
        self.pluginmanager = self

    def getoption(self, name):
        assert name == "--attn-failures-log"
        return self.path

    def register(self, plugin, name):
        self.registered.append((name, plugin))


@pytest.mark.parametrize("path,worker,expected", [
    ("f.log", False, 1),  # the controller (or a run without xdist) writes the log
    ("f.log", True, 0),  # an xdist worker does not: its reports reach the controller, which writes them once
    (None, False, 0),  # no option, no plugin
])
def test_the_log_is_written_by_one_process_only(path, worker, expected):
    from attnsuite.plugin import FailuresLog, register_failures_log

    config = _Config(path, worker)
    register_failures_log(config)
    assert len(config.registered) == expected
    assert all(isinstance(p, FailuresLog) and p.path == path for _, p in config.registered)


def test_a_long_message_without_e_lines_keeps_its_first_line_where_the_error_is_named():
    from attnsuite.plugin import failure_reason

    message = ["flex raised BackendCompilerFailed: the lowering failed"] + [f"  detail {i}" for i in range(40)]
    reason = failure_reason("\n".join(message)).splitlines()
    assert reason[0] == message[0]  # the error's name, which the old "last 12 lines" dropped
    assert reason[-1] == message[-1]
    assert "[... 27 lines ...]" in reason[8]
    assert len(reason) == 8 + 1 + 6


@pytest.mark.parametrize("longrepr,expected", [
    ("def test():\n>   assert x\nE   AssertionError: x is off\nE   assert 0", "E   AssertionError: x is off\nE   assert 0"),
    ("short message\nsecond line", "short message\nsecond line"),  # short: kept whole
])
def test_failure_reason_keeps_e_lines_or_a_short_message_whole(longrepr, expected):
    from attnsuite.plugin import failure_reason

    assert failure_reason(longrepr) == expected
