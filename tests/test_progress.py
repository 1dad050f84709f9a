"""Progress of a benchmark run: which case of how many, time so far, time left; compact in CI logs."""

from __future__ import annotations

import pytest

from attnsuite import progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("done, total, elapsed, left", [(1, 10, 5.0, 45.0), (5, 10, 10.0, 10.0), (10, 10, 60.0, 0.0),
                                                       (0, 10, 3.0, None), (3, 0, 3.0, None)])
def test_the_estimate_is_the_average_case_time_times_the_cases_left(done, total, elapsed, left):
    assert progress.estimate_remaining(done, total, elapsed) == left


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.4, "0:59"), (61, "1:01"), (3725, "1:02:05"), (None, "?"),
                                           (float("nan"), "?")])
def test_durations_read_as_minutes_and_seconds(seconds, text):
    assert progress.format_duration(seconds) == text


def test_a_line_names_the_case_number_the_total_the_time_so_far_and_left():
    line = progress.format_line(120, 602, 65.0, 261.0, "fa-sweep/sdpa/fwd/b1", {"ok": 98, "skipped": 22})
    assert line == ("attnsuite [120/602  20%] 1:05 elapsed, about 4:21 left (98 ok, 22 skipped) "
                    "last: fa-sweep/sdpa/fwd/b1")
    assert "done" in progress.format_line(602, 602, 300.0, 0.0)


@pytest.mark.parametrize("isatty, ci, expected", [(True, "", True), (True, "true", False), (False, "", False),
                                                  (True, "0", True), (False, "true", False)])
def test_only_a_tty_outside_ci_counts_as_a_person_watching(isatty, ci, expected):
    assert progress.interactive(isatty, {"CI": ci} if ci else {}) is expected


def _run(tracker: progress.Progress, clock: FakeClock, seconds_per_case: float) -> list[int]:
    """Feed every case; return the case numbers that got a line."""
    lines = []
    for i in range(tracker.total):
        clock.now += seconds_per_case
        if tracker.case_done(f"case{i}", "ok"):
            lines.append(i + 1)
    return lines


def test_in_a_terminal_a_line_comes_every_two_seconds_and_names_the_case():
    clock = FakeClock()
    tracker = progress.Progress(20, interactive=True, clock=clock)
    clock.now += 0.5
    line = tracker.case_done("fa-sweep/sdpa/fwd/b1", "ok")
    assert line is not None and line.endswith("last: fa-sweep/sdpa/fwd/b1") and "[ 1/20" in line
    assert _run(progress.Progress(20, interactive=True, clock=clock), clock, 0.5) == [1, 5, 9, 13, 17, 20]


@pytest.mark.parametrize("seconds_per_case, expected", [
    (0.1, [1, 50, 100, 150, 200, 250, 300]),  # fast cases: the first, then every 50th
    (7.0, [1, 6, 11, 16, 20]),  # slow cases: every 30 s (and the last)
])
def test_in_a_ci_log_lines_are_compact(seconds_per_case, expected):
    clock = FakeClock()
    total = 300 if seconds_per_case < 1 else 20
    lines = _run(progress.Progress(total, interactive=False, clock=clock), clock, seconds_per_case)
    assert lines == expected


def test_a_log_line_carries_no_case_name_and_counts_outcomes():
    clock = FakeClock()
    tracker = progress.Progress(2, interactive=False, clock=clock)
    tracker.case_done("a", "ok")
    clock.now += 1
    line = tracker.case_done("b", "skipped")
    assert line is not None and "last:" not in line and "(1 ok, 1 skipped)" in line and "done" in line


def test_the_estimate_leaves_out_the_first_case_which_also_starts_the_worker():
    t = [0.0]
    prog = progress.Progress(101, interactive=False, clock=lambda: t[0], log_every_n=1)
    t[0] = 13.0  # worker start and calibration, then the first case
    first = prog.case_done("a", "ok")
    assert "about ? left" in first  # one case says nothing about the rate
    t[0] = 14.0  # the second case took 1 s: 99 more of those
    second = prog.case_done("b", "ok")
    assert "about 1:39 left" in second, second
