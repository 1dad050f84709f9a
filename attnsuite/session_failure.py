"""Failing a pytest session for a finding that no test reported (the gate's verdicts, a package whose
variants did not load, a variant named and never run), as one of pytest's failures."""

from __future__ import annotations

import pytest


def fail_session(session: pytest.Session, nodeid: str, text: str) -> None:
    """Fail the session for something no test reported (``nodeid`` names it, ``text`` says why), counted
    among pytest's failures so that its last line is not a green "N passed" over exit status 1."""
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        where, _, what = nodeid.partition("::")
        tr.stats.setdefault("failed", []).append(pytest.TestReport(
            nodeid=nodeid, location=(where, None, what), keywords={}, outcome="failed", longrepr=text,
            when="call", sections=[], duration=0.0))
