"""attnsuite ab: round order, the combining statistic, verdicts, --cases-from, the git worktree's
life, and which tree's code a round runs.

The rounds are run by an injected fake runner (it writes synthetic result JSONs) in a tiny git
repository; one end-to-end test runs the real benchmarks of a clone of this repository.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from attnsuite import ab
from attnsuite.record import CaseRecord

ROOT = Path(__file__).resolve().parents[1]
GPU_FP = {"id": "cuda-test-gpu", "gpu_name": "Test GPU", "torch": "2.13.0", "cuda": "13.0", "device": "cuda"}
KEY_A = "fa-sweep/sdpa/fwd/b1-q128-h2-d32-causal-tl-fp32-cuda"
KEY_B = "fa-sweep/explicit/fwd/b1-q128-h2-d32-causal-tl-fp32-cuda"
STRICT = {"version": 1, "default": {"time_floor": 0.03, "spread_k": 0.5, "statistic": "min"}}
LOOSE = {"version": 1, "default": {"time_floor": 0.5, "spread_k": 0.5, "statistic": "min"}}


def rec(key: str = KEY_A, *, min_ms: float = 1.0, median_ms: Optional[float] = None, iqr_ms: float = 0.01,
        outcome: str = "ok", peak: Optional[int] = 1 << 20, **kw) -> CaseRecord:
    workload, variant, mode, problem = key.split("/")
    r = CaseRecord(workload, variant, mode, problem, outcome=outcome, timer="cuda-events", samples=50, **kw)
    if outcome == "ok":
        r.min_ms, r.median_ms, r.iqr_ms, r.peak_mem_bytes = min_ms, median_ms or min_ms * 1.02, iqr_ms, peak
        if "device_ms" not in kw:  # CUDA records carry device time, which the gate judges there
            r.device_min_ms, r.device_ms, r.device_iqr_ms = r.min_ms, r.median_ms, iqr_ms
    return r


def result_json(path: Path, records: list[CaseRecord], fp: dict = GPU_FP) -> Path:
    obj = {"benchmarks": [{"name": f"test_workload[{r.key}]", "extra_info": r.to_extra_info()} for r in records],
           "attnsuite": {"schema": 1, "fingerprint": fp}}
    path.write_text(json.dumps(obj))
    return path


# --------------------------------------------------------------------------- a tiny repository


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A git repository with bench/test_workloads.py and the base's strict thresholds committed."""
    r = tmp_path / "repo"
    (r / "bench").mkdir(parents=True)
    (r / "bench" / "test_workloads.py").write_text("# the benchmarks\n")
    (r / "baselines").mkdir()
    (r / "baselines" / "thresholds.json").write_text(json.dumps(STRICT))
    git(r, "init", "-q", "-b", "main")
    git(r, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "base")
    return r


class FakeRunner:
    """Writes a synthetic result per round: ``make(side, side_round)`` gives the round's records."""

    def __init__(self, make: Callable[[str, int], Optional[list[CaseRecord]]]) -> None:
        self.make = make
        self.specs: list[ab.RoundSpec] = []
        self.seen_trees: list[tuple[Path, bool]] = []
        self.cases: Optional[list[str]] = None  # the case list a round was given, read while it exists

    def __call__(self, spec: ab.RoundSpec) -> Optional[Path]:
        self.specs.append(spec)
        self.seen_trees.append((spec.tree, spec.tree.is_dir()))
        cases = spec.env.get("ATTNSUITE_AB_CASES")
        self.cases = None if cases is None else Path(cases).read_text().split()
        n = sum(1 for s in self.specs if s.side == spec.side)
        records = self.make(spec.side, n)
        return None if records is None else result_json(spec.json_path, records)


def run_cmd(argv: list[str], runner) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    p = argparse.ArgumentParser()
    ab._configure(p)
    args = p.parse_args(argv)
    with contextlib.redirect_stderr(err):
        status = ab.cmd_ab(args, out, runner=runner)
    return status, out.getvalue(), err.getvalue()


def worktrees(repo: Path) -> list[str]:
    return [line for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize("rounds, expected", [
    (1, "BH"), (2, "BHHB"), (3, "BHHBBH"), (4, "BHHBBHHB"),
])
def test_rounds_run_in_abba_order(rounds, expected):
    assert "".join(s[0].upper() for s in ab.round_order(rounds)) == expected


@pytest.mark.parametrize("rounds", [2, 4, 6])
def test_abba_order_gives_both_sides_the_same_mean_position_so_linear_drift_cancels(rounds):
    order = ab.round_order(rounds)
    pos = {s: [i for i, x in enumerate(order) if x == s] for s in ab.SIDES}
    assert len(pos["base"]) == len(pos["head"]) == rounds
    assert sum(pos["base"]) == sum(pos["head"])


# --------------------------------------------------------------------------- combining


def test_relative_spread_of_three_rounds_is_half_their_range_over_the_median():
    assert ab.relative_spread([1.0, 1.1, 1.3]) == pytest.approx(0.15 / 1.1)
    assert ab.relative_spread([2.0]) is None


def test_combined_record_takes_the_median_over_rounds_of_each_rounds_minimum():
    rounds = [rec(min_ms=1.00, median_ms=1.2), rec(min_ms=1.30, median_ms=1.5), rec(min_ms=1.05, median_ms=1.3)]
    out = ab.combine_rounds(rounds, "min")
    assert out.min_ms == pytest.approx(1.05)
    assert out.median_ms == pytest.approx(1.3)
    assert out.extra["rounds"] == 3 and out.extra["round_min_ms"] == [1.00, 1.30, 1.05]


@pytest.mark.parametrize("statistic, values", [("min", (1.0, 1.3, 1.05)), ("median", (1.2, 1.5, 1.3))])
def test_combined_spread_is_the_round_to_round_spread_of_the_judged_statistic(statistic, values):
    rounds = [rec(min_ms=1.00, median_ms=1.2, iqr_ms=0.5), rec(min_ms=1.30, median_ms=1.5, iqr_ms=0.5),
              rec(min_ms=1.05, median_ms=1.3, iqr_ms=0.5)]
    out = ab.combine_rounds(rounds, statistic)
    # the verdict's noise band reads iqr_ms / median_ms: it must equal the rounds' relative spread
    assert out.iqr_ms / out.median_ms == pytest.approx(ab.relative_spread(values))


def test_combined_device_time_uses_the_rounds_device_minimum_and_its_spread():
    rounds = [rec(min_ms=2.0, device_ms=1.1, device_min_ms=1.0), rec(min_ms=2.5, device_ms=1.2, device_min_ms=1.2),
              rec(min_ms=2.2, device_ms=1.15, device_min_ms=1.1)]
    out = ab.combine_rounds(rounds, "min")
    assert out.device_min_ms == pytest.approx(1.1) and out.device_ms == pytest.approx(1.15)
    assert out.device_iqr_ms / out.device_ms == pytest.approx(ab.relative_spread([1.0, 1.2, 1.1]))


@pytest.mark.parametrize("outcomes, expected", [
    (("ok", "crash", "ok"), "crash"), (("ok", "oom", "ok"), "oom"), (("numerics", "ok", "timeout"), "timeout"),
])
def test_a_case_that_failed_in_any_round_keeps_the_worst_outcome(outcomes, expected):
    out = ab.combine_rounds([rec(outcome=o) for o in outcomes], "min")
    assert out.outcome == expected and out.extra["round_outcomes"] == list(outcomes)


# --------------------------------------------------------------------------- --cases-from


def gate_json(tmp_path: Path, cases: list[tuple[str, list[str]]]) -> Path:
    p = tmp_path / "gate.json"
    p.write_text(json.dumps({"failed": True, "cases": [{"key": k, "verdict": f[0], "flags": f, "message": ""}
                                                        for k, f in cases]}))
    return p


def test_cases_from_selects_every_case_with_a_gating_finding_and_nothing_else(tmp_path):
    p = gate_json(tmp_path, [("w/a/fwd/p1", ["slower"]), ("w/b/fwd/p1", ["memory-growth", "faster"]),
                             ("w/c/fwd/p1", ["newly-failing"]), ("w/d/fwd/p1", ["missing"]),
                             ("w/e/fwd/p1", ["same"]), ("w/f/fwd/p1", ["faster"]), ("w/g/fwd/p1", ["new"])])
    flagged = ab.cases_from_gate_json(p)
    assert flagged.keys == ["w/a/fwd/p1", "w/b/fwd/p1", "w/c/fwd/p1", "w/d/fwd/p1"]
    assert flagged.note.startswith("Cases: the 4 flagged") and not flagged.interrupted


def test_cases_from_also_takes_a_case_the_gate_marked_gating_under_a_finding_not_gating_by_default(tmp_path):
    p = tmp_path / "gate.json"
    p.write_text(json.dumps({"cases": [{"key": "w/a/fwd/p1", "verdict": "host-slower", "flags": ["host-slower"],
                                        "gating": True},
                                       {"key": "w/b/fwd/p1", "verdict": "host-slower", "flags": ["host-slower"],
                                        "gating": False}]}))
    assert ab.cases_from_gate_json(p).keys == ["w/a/fwd/p1"]


def test_a_gate_that_compared_nothing_flags_nothing_and_says_why(tmp_path):
    p = tmp_path / "gate.json"
    p.write_text(json.dumps({"compared": False, "failed": False, "reason": "no baseline for this machine",
                             "cases": []}))
    assert ab.cases_from_gate_json(p) == ab.FlaggedCases([], f"The stored-baseline gate ({p}) compared nothing: "
                                                             "no baseline for this machine.")


def test_cases_from_an_interrupted_gate_run_says_its_flags_cover_only_the_cases_it_ran(tmp_path):
    p = tmp_path / "gate.json"
    p.write_text(json.dumps({"compared": True, "interrupted": True,
                             "cases": [{"key": "w/a/fwd/p1", "verdict": "slower", "flags": ["slower"]}]}))
    flagged = ab.cases_from_gate_json(p)
    assert flagged.keys == ["w/a/fwd/p1"] and flagged.interrupted
    assert flagged.note == (f"Cases: the 1 flagged by the stored-baseline gate ({p}). That gate run was interrupted: "
                            "it flagged only among the cases it ran; the cases it did not reach are not measured here.")


@pytest.mark.parametrize("content, words", [
    (None, "no such file"), ("{not json", "not valid JSON"), ('{"failed": false}', "no \"cases\" list"),
    ('{"cases": [{"flags": ["slower"]}]}', "cases[0]"),
])
def test_cases_from_refuses_a_bad_gate_json_naming_it(tmp_path, content, words):
    p = tmp_path / "g.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ab.AbError, match="--cases-from") as exc:
        ab.cases_from_gate_json(p)
    assert words in str(exc.value)


def test_the_round_plugin_keeps_only_the_listed_cases_and_probes_the_import(pytester, tmp_path, monkeypatch):
    (pytester.path / f"{ab.PLUGIN_MODULE}.py").write_text(ab.PLUGIN_SOURCE)
    pytester.syspathinsert()
    pytester.makepyfile(test_cases="""
        import pytest
        @pytest.mark.parametrize("bench_case", ["w/a/fwd/p1", "w/b/fwd/p1", "w/c/fwd/p1"],
                                 ids=["w/a/fwd/p1", "w/b/fwd/p1", "w/c/fwd/p1"])
        def test_workload(bench_case):
            pass
    """)
    cases, probe = tmp_path / "cases.txt", tmp_path / "probe.json"
    cases.write_text("w/b/fwd/p1\nw/z/fwd/p9\n")  # a key this tree lacks is just not run
    monkeypatch.setenv("ATTNSUITE_AB_CASES", str(cases))
    monkeypatch.setenv("ATTNSUITE_AB_PROBE", str(probe))
    res = pytester.runpytest("-p", ab.PLUGIN_MODULE, "-v", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, deselected=2)
    assert "w/b/fwd/p1" in res.stdout.str()
    written = json.loads(probe.read_text())
    assert written["selected"] == 1
    marks = written["marks"]  # where the round's time went, in the order the round reached them
    assert marks["loaded"] <= marks["collected"] <= marks["first_done"] <= marks["finished"], marks


def test_a_rounds_phases_split_its_wall_time_at_the_probes_marks(tmp_path):
    probe = tmp_path / "p.json"
    probe.write_text(json.dumps({"marks": {"loaded": 101.0, "collected": 104.0, "first_done": 112.5,
                                           "finished": 118.0}}))
    phases = ab.round_phases(probe, 100.0, 129.0)
    assert phases == {"start": 4.0, "first case": 8.5, "other cases": 5.5, "exit": 11.0}
    assert sum(phases.values()) == pytest.approx(129.0 - 100.0)
    # a round that stopped before its first case finished, or wrote no probe: only what it reached
    probe.write_text(json.dumps({"marks": {"loaded": 101.0, "collected": 104.0}}))
    assert ab.round_phases(probe, 100.0, 109.0) == {"start": 4.0}
    assert ab.round_phases(tmp_path / "none.json", 100.0, 109.0) == {}


@pytest.mark.parametrize("inside, ok", [(True, True), (False, False)])
def test_a_round_that_imported_attnsuite_from_another_tree_is_refused(tmp_path, inside, ok):
    tree, other = tmp_path / "tree", tmp_path / "other"
    where = (tree if inside else other) / "attnsuite" / "__init__.py"
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"attnsuite": str(where), "attnsuite_impls": None, "rootdir": str(tree), "selected": 1}))
    tree.mkdir()
    if ok:
        assert ab.check_probe(probe, tree)["selected"] == 1
    else:
        with pytest.raises(ab.AbError, match="another tree"):
            ab.check_probe(probe, tree)


def test_round_environment_puts_the_tree_first_on_the_import_path(tmp_path):
    env = ab.round_env(tmp_path / "t", tmp_path / "w", tmp_path / "p.json", None, {"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(":") == [str(tmp_path / "t"), str(tmp_path / "w"), "/elsewhere"]


# --------------------------------------------------------------------------- the command, fake rounds


def same_speed(side, n):
    return [rec(KEY_A, min_ms=1.0 + 0.002 * n), rec(KEY_B, min_ms=2.0 - 0.002 * n)]


def head_slower(fraction):
    def make(side, n):
        scale = 1.0 + fraction if side == "head" else 1.0
        return [rec(KEY_A, min_ms=(1.0 + 0.003 * n) * scale), rec(KEY_B, min_ms=2.0 + 0.003 * n)]
    return make


def test_ab_of_equal_trees_passes_after_three_rounds_each_in_abba_order(repo, tmp_path):
    runner = FakeRunner(same_speed)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json"),
                                "--markdown", str(tmp_path / "ab.md")], runner)
    assert status == ab.EXIT_OK, err
    assert [s.side for s in runner.specs] == ["base", "head", "head", "base", "base", "head"]
    data = json.loads((tmp_path / "ab.json").read_text())
    assert not data["failed"] and data["counts"] == {"same": 2}
    # the verdict line as `attnsuite compare --format json` has it (a script read it from one, not the other)
    assert data["verdict_line"] == "PASS: no regression among 2 cases judged against the base tree"
    assert data["simulated"] is None
    assert (tmp_path / "ab.md").read_text().startswith("<!-- attnsuite-gate -->")
    # without --out the round files are gone, but each round's side and time stay (they had been dropped)
    rounds = data["ab"]["round_files"]
    assert [f["side"] for f in rounds] == ["base", "head", "head", "base", "base", "head"]
    assert all(f["json"] is None and f["log"] is None and "seconds" in f for f in rounds)


def test_a_variant_the_working_tree_no_longer_runs_is_missing_and_says_it_may_be_removed(repo):
    # had read "missing: not run" alone, as if a round had lost the case
    def make(side, n):
        return same_speed(side, n) if side == "base" else [rec(KEY_A, min_ms=1.0 + 0.002 * n)]
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(make))
    assert status == ab.EXIT_GATE
    assert f"{KEY_B}: not run: variant explicit ran in no round of the working tree (removed or renamed by the " \
           "change?); base: ok" in out, out


KEY_SKIP = "fa-sweep/flex/fwd/b1-q128-h2-d32-causal-tl-fp32-cuda"
KEY_OOM = "fa-sweep/einsum/fwd/b1-q128-h2-d32-causal-tl-fp32-cuda"


def test_the_ab_words_its_verdicts_against_the_base_tree_never_a_baseline(repo, tmp_path):
    # the A/B diff had said "not in the baseline", "skipped here and in the baseline" and "baseline ran
    # out of memory" of the base tree, the stored gate's words beside a comparison that has no baseline
    def make(side, n):
        base = [rec(KEY_A, min_ms=1.0 + 0.002 * n), rec(KEY_SKIP, outcome="skipped", detail="declared"),
                rec(KEY_OOM, outcome="oom")]
        return base if side == "base" else [*base[:2], rec(KEY_OOM, min_ms=3.0), rec(KEY_B, min_ms=2.0)]
    md = tmp_path / "ab.md"
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md)], FakeRunner(make))
    assert status == ab.EXIT_OK, out
    text = md.read_text()
    for said in ("1 skipped here and in the base tree", "1 new, not in the base tree (not judged)",
                 "not in the base; now ok", "base ran out of memory"):
        assert said in text, said
    text = text.replace("baselines/thresholds.json", "")  # the base tree's file, named by its path
    assert "baseline" not in text.lower(), [line for line in text.splitlines() if "baseline" in line.lower()]


@pytest.mark.parametrize("fraction, status", [(0.10, ab.EXIT_GATE), (0.0, ab.EXIT_OK), (-0.10, ab.EXIT_OK)])
def test_a_head_ten_percent_slower_fails_and_equal_or_faster_passes(repo, tmp_path, fraction, status):
    got, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json")],
                            FakeRunner(head_slower(fraction)))
    assert got == status, out + err
    cases = {c["key"]: c for c in json.loads((tmp_path / "ab.json").read_text())["cases"]}
    assert cases[KEY_B]["verdict"] == "same"
    expected = {0.10: "slower", 0.0: "same", -0.10: "faster"}[fraction]
    assert cases[KEY_A]["verdict"] == expected
    if fraction > 0:
        assert f"GATE slower: {KEY_A}" in out


@pytest.mark.parametrize("fraction, verdict", [(0.10, "**FAIL: 1 regression among 2 cases judged (gate enforced)**"),
                                               (0.0, "**PASS: no regression among 2 cases judged against the base tree**")])
def test_the_markdown_states_its_verdict_in_bold_and_names_its_sides_base_and_head(repo, tmp_path, fraction, verdict):
    # the A/B diff had only its heading's mark for a verdict, and called its two trees "baseline" and "this run"
    md = tmp_path / "ab.md"
    run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md)], FakeRunner(head_slower(fraction)))
    text = md.read_text()
    assert verdict in text.splitlines()[2:4], text[:600]
    tables = [line for line in text.splitlines() if line.startswith("| verdict |")]
    assert tables and all("| base | head |" in line and "this run" not in line for line in tables), tables
    # had read "Baseline: base HEAD", then "Base: base HEAD"
    assert "Baseline:" not in text and "Base: base" not in text and ". Base HEAD (" in text
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(head_slower(fraction)))
    heads = [line.split()[3:5] for line in out.splitlines() if line.startswith("verdict ")]
    assert all(h == ["base", "head"] for h in heads) and (bool(heads) == (fraction > 0)), out  # no rows, no heads


def test_report_mode_measures_and_reports_but_exits_zero_and_never_reads_fail(repo, tmp_path):
    md = tmp_path / "ab.md"
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--gate", "report", "--markdown", str(md)],
                             FakeRunner(head_slower(0.1)))
    assert status == ab.EXIT_OK and "REPORTED slower" in out and "GATE " not in out
    # the PR comment had shown a red FAIL over a job that passed
    assert "REPORTED: 1 regression (gate in report mode)" in out and "FAIL" not in out
    assert "⚠️ **REPORTED**" in md.read_text() and "FAIL" not in md.read_text()


def test_the_report_names_the_base_trees_thresholds_file_by_ref_not_by_its_removed_worktree(repo, tmp_path):
    md = tmp_path / "ab.md"
    run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md)], FakeRunner(head_slower(0.0)))
    assert "thresholds from HEAD:baselines/thresholds.json (the base tree's)" in md.read_text()
    assert "attnsuite-ab-" not in md.read_text()


def test_the_base_trees_thresholds_judge_not_the_working_trees(repo):
    (repo / "baselines" / "thresholds.json").write_text(json.dumps(LOOSE))  # the change loosens its own bar
    status, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(head_slower(0.1)))
    assert status == ab.EXIT_GATE
    status, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--baselines-dir", str(repo / "baselines")],
                           FakeRunner(head_slower(0.1)))
    assert status == ab.EXIT_OK  # named explicitly, the loose file applies


@pytest.mark.parametrize("edit, words", [
    ("none", None),
    ("loosened", "the working tree's baselines/thresholds.json differs from the one that judges this A/B "
                 "(HEAD's baselines/thresholds.json): the bar is the base tree's"),
    ("added", "the working tree's baselines/thresholds.json is not in HEAD, so not the one that judges this A/B "
              "(the built-in thresholds): the bar is the base tree's"),
], ids=["unchanged: nothing said", "edited: said", "new in the change: said"])
def test_a_working_tree_thresholds_file_that_does_not_judge_the_ab_is_said_with_the_way_to_use_it(
        repo, tmp_path, edit, words):
    # an uncommitted or edited thresholds.json had been set aside without a word: the user thought it applied
    if edit == "added":
        git(repo, "rm", "-q", "baselines/thresholds.json")
        git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "no thresholds")
    if edit != "none":
        (repo / "baselines").mkdir(exist_ok=True)
        (repo / "baselines" / "thresholds.json").write_text(json.dumps(LOOSE))
    md = tmp_path / "ab.md"
    _, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md)], FakeRunner(head_slower(0.0)))
    if words is None:
        assert "the working tree's" not in out + md.read_text()
        return
    assert f"attnsuite ab: {words}, so a change cannot set its own; to judge by it, pass --thresholds " \
           f"{repo / 'baselines' / 'thresholds.json'}" in out, out
    assert words[0].upper() + words[1:] in md.read_text()


@pytest.mark.parametrize("fraction, large", [(0.40, True), (0.20, False)])
def test_a_large_slowdown_inside_a_wide_band_is_said_on_the_terminal_with_the_floors_note(repo, fraction, large):
    # on CPU (floor 100%) a case +88% slower had printed "(2 unchanged cases not shown)" and "pass (2 same)"
    # alone: the verdict line's clause and the floor's note reached the JSON and the markdown only
    (repo / "baselines" / "thresholds.json").write_text(json.dumps(LOOSE))
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "a wide floor")
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(head_slower(fraction)))
    assert status == ab.EXIT_OK, out
    assert "attnsuite ab: time on cuda is judged with a floor of 50% (thresholds: time_floor)" in out, out
    assert "PASS: no regression among 2 cases judged against the base tree" in out, out
    assert (f"largest slowdown read as same: {KEY_A} +" in out) is large, out


@pytest.mark.parametrize("committed, working, status", [
    (LOOSE, LOOSE, ab.EXIT_OK),    # the rounds' folder is followed, not baselines/ (strict)
    (STRICT, LOOSE, ab.EXIT_GATE),  # and read from the base tree: the change's loosening is not its bar
], ids=["the rounds' folder applies", "its base tree's copy applies"])
def test_the_rounds_own_baselines_dir_sets_the_bar_from_the_base_trees_copy(repo, committed, working, status):
    # `ab ... -- --attn-baselines-dir attn/baselines` had judged with the suite's thresholds while
    # bench.sh given the same folder used the team's: one change failed one and passed the other
    (repo / "team").mkdir()
    (repo / "team" / "thresholds.json").write_text(json.dumps(committed))
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "team thresholds")
    (repo / "team" / "thresholds.json").write_text(json.dumps(working))
    got, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--", f"--attn-baselines-dir={repo / 'team'}"],
                        FakeRunner(head_slower(0.1)))
    assert got == status


def test_a_baselines_dir_without_thresholds_falls_back_to_the_base_trees_baselines_as_bench_does(repo, tmp_path):
    # bench.sh given such a folder used the repository's baselines/thresholds.json, ab the built-ins
    (repo / "team").mkdir()
    md = tmp_path / "ab.md"
    status, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md), "--",
                            f"--attn-baselines-dir={repo / 'team'}"], FakeRunner(head_slower(0.1)))
    assert status == ab.EXIT_GATE
    assert "thresholds from HEAD:baselines/thresholds.json (the base tree's)" in md.read_text()


def test_a_base_without_thresholds_gets_the_built_ins_never_the_tree_under_review(repo, tmp_path, monkeypatch):
    # the package runs from the working tree: its baselines/ had been the fallback, so a change that
    # loosened that file (and a base without one) passed a 5x slowdown
    from attnsuite import gate

    git(repo, "rm", "-q", "baselines/thresholds.json")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "no thresholds")
    loose = tmp_path / "package-tree-baselines"
    loose.mkdir()
    (loose / "thresholds.json").write_text(json.dumps(LOOSE))
    monkeypatch.setattr(gate, "REPO_BASELINES", loose)
    md = tmp_path / "ab.md"
    status, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md)],
                           FakeRunner(head_slower(0.1)))
    assert status == ab.EXIT_GATE
    assert str(loose) not in md.read_text()


def test_a_baselines_dir_that_does_not_exist_is_refused_before_any_round(repo, tmp_path):
    runner = FakeRunner(head_slower(0.1))
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--baselines-dir", str(tmp_path / "nope")],
                             runner)
    assert status == ab.EXIT_INPUT and f"--baselines-dir {tmp_path / 'nope'}: no such folder" in err
    assert runner.specs == []


def test_one_noisy_base_round_widens_the_band_instead_of_failing_the_head(repo):
    def make(side, n):
        if side == "base":  # rounds 1.0, 1.2, 1.0: the base itself moves 20% round to round
            return [rec(KEY_A, min_ms=1.2 if n == 2 else 1.0)]
        return [rec(KEY_A, min_ms=1.05)]
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(make))
    assert status == ab.EXIT_OK, out + err


def test_rounds_run_in_their_own_tree_with_the_selection_passed_through(repo):
    runner = FakeRunner(same_speed)
    status, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--rounds", "3", "--",
                            "--attn-workload", "fa-sweep", "-k", "sdpa"], runner)
    assert status == 0
    for spec in runner.specs:
        assert spec.command[-4:] == ["--attn-workload", "fa-sweep", "-k", "sdpa"]
        assert spec.env["PYTHONPATH"].split(":")[0] == str(spec.tree)
        assert "--attn-gate" in spec.command and spec.command[spec.command.index("--attn-gate") + 1] == "off"
    base_trees = {s.tree for s in runner.specs if s.side == "base"}
    head_trees = {s.tree for s in runner.specs if s.side == "head"}
    assert head_trees == {repo.resolve()} and len(base_trees) == 1 and base_trees != head_trees
    assert all(exists for _, exists in runner.seen_trees)


def test_a_head_arg_reaches_the_head_rounds_only_and_the_report_names_it(repo, tmp_path):
    runner = FakeRunner(same_speed)
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json"),
                              "--markdown", str(tmp_path / "ab.md"),
                              "--head-arg=--attn-inject-slowdown=sdpa=0.05", "--", "-k", "sdpa"], runner)
    assert status == 0
    for spec in runner.specs:
        injected = "--attn-inject-slowdown=sdpa=0.05" in spec.command
        assert injected == (spec.side == "head"), (spec.side, spec.command)
        assert spec.command[-3 if injected else -2:][:2] == ["-k", "sdpa"]  # after the shared selection
    assert json.loads((tmp_path / "ab.json").read_text())["ab"]["head_args"] == ["--attn-inject-slowdown=sdpa=0.05"]
    assert "the head rounds run with --attn-inject-slowdown=sdpa=0.05 as well" in (tmp_path / "ab.md").read_text()


def test_cases_from_measures_only_the_flagged_cases(repo, tmp_path):
    gj = gate_json(tmp_path, [(KEY_A, ["slower"]), (KEY_B, ["same"])])
    runner = FakeRunner(same_speed)
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj)], runner)
    assert status == 0, err
    assert runner.cases == [KEY_A]


def test_cases_from_whose_every_case_the_working_tree_removed_reads_missing_with_its_markdown(repo, tmp_path):
    # a PR renaming a kernel: the gate flagged its cases missing, and the A/B step had ended with
    # "no case selected" (exit 2) and no markdown for the PR comment
    gj = gate_json(tmp_path, [(KEY_A, ["missing"])])
    runner = FakeRunner(lambda side, n: [rec(KEY_A)] if side == "base" else None)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj),
                                "--markdown", str(tmp_path / "ab.md"), "--json", str(tmp_path / "ab.json")], runner)
    assert status == ab.EXIT_GATE, err
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["counts"] == {"missing": 1}
    assert "The working tree runs none of the 1 case from --cases-from" in (tmp_path / "ab.md").read_text()


def test_cases_from_that_neither_tree_runs_is_still_bad_input(repo, tmp_path):
    gj = gate_json(tmp_path, [(KEY_A, ["slower"])])
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj)],
                             FakeRunner(lambda side, n: None))
    assert status == ab.EXIT_INPUT and "no case selected" in err and "from --cases-from" in err


def test_cases_from_a_gate_run_that_flagged_nothing_passes_without_running_a_round(repo, tmp_path):
    gj = gate_json(tmp_path, [(KEY_A, ["same"])])
    runner = FakeRunner(same_speed)
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj),
                              "--markdown", str(tmp_path / "ab.md"), "--json", str(tmp_path / "ab.json")], runner)
    assert status == ab.EXIT_OK and runner.specs == []
    md = (tmp_path / "ab.md").read_text()
    assert "flagged no case" in md and "Cases: the 0 flagged" in md and "NOT COMPARED" in md
    data = json.loads((tmp_path / "ab.json").read_text())  # said as the markdown says it (it had read true)
    assert data["compared"] is False and "flagged no case" in data["reason"]
    # the terminal says it too (it had read "pass (no cases)" beside the markdown's NOT COMPARED)
    assert out.splitlines() == [f"attnsuite ab: {gj} flagged no case: nothing to measure A/B",
                                "NOT COMPARED: no case to judge"]


@pytest.mark.parametrize("thresholds", ["missing", "truncated"])
def test_a_bad_thresholds_file_is_refused_before_any_round_even_when_nothing_was_flagged(repo, tmp_path, thresholds):
    # a gate JSON that flagged nothing had let a broken --thresholds pass (exit 0): CI stayed green until
    # the first pull request with a flagged case (an outside tester's trial)
    gj = gate_json(tmp_path, [(KEY_A, ["same"])])
    path = tmp_path / "thresholds.json"
    if thresholds == "truncated":
        path.write_text('{"version": 1, "default": {"time_fl')
    runner = FakeRunner(same_speed)
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj),
                              "--thresholds", str(path)], runner)
    assert status == ab.EXIT_INPUT and runner.specs == [], err
    assert f"thresholds {path}: " in err and ("no such file" if thresholds == "missing" else "not valid JSON") in err


def interrupted_gate_json(tmp_path: Path, cases: list[tuple[str, list[str]]]) -> Path:
    p = gate_json(tmp_path, cases)
    p.write_text(json.dumps({**json.loads(p.read_text()), "compared": True, "interrupted": True}))
    return p


def test_cases_from_an_interrupted_gate_run_that_flagged_nothing_never_reads_as_a_pass(repo, tmp_path):
    # it had printed "pass (no cases)" and its markdown "flagged no case", the interruption unsaid
    gj = interrupted_gate_json(tmp_path, [(KEY_A, ["same"])])
    runner = FakeRunner(same_speed)
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj),
                              "--markdown", str(tmp_path / "ab.md"), "--json", str(tmp_path / "ab.json")], runner)
    # exit 0: the gate step that wrote the file fails on the interruption itself
    assert status == ab.EXIT_OK and runner.specs == []
    said = (f"{gj} flagged no case, but its gate run was interrupted: no pass for the cases it did not reach; "
            "nothing to measure A/B")
    assert out.splitlines() == [f"attnsuite ab: {said}", "NOT COMPARED: no case to judge"]
    md = (tmp_path / "ab.md").read_text()
    assert "### attnsuite A/B (same machine): ⏹️ **INTERRUPTED**" in md and "✅" not in md and "PASS" not in md
    assert said in md.replace("\\", "") and "That gate run was interrupted" in md
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["compared"] is False and data["interrupted"] is True and data["reason"] == said


def test_cases_from_an_interrupted_gate_run_measures_its_flagged_cases_and_says_what_they_cover(repo, tmp_path):
    gj = interrupted_gate_json(tmp_path, [(KEY_A, ["slower"]), (KEY_B, ["same"])])
    runner = FakeRunner(same_speed)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(gj),
                                "--markdown", str(tmp_path / "ab.md")], runner)
    assert status == ab.EXIT_OK, err
    assert runner.cases == [KEY_A]
    assert out.splitlines()[0] == (f"attnsuite ab: {gj} comes from an interrupted gate run: it flagged only among "
                                   "the cases it ran; the cases it did not reach are not measured here")
    assert "That gate run was interrupted: it flagged only among the cases it ran" in (tmp_path / "ab.md").read_text()


# --------------------------------------------------------------------------- bad input and failures


@pytest.mark.parametrize("argv, words", [
    (["--base", "no-such-ref"], "unknown git ref"),
    # it exists but is not a commit: said so, not "unknown" with advice to fetch it
    (["--base", "HEAD:bench/test_workloads.py"], "names a blob in"),
    (["--base", "HEAD:bench"], "names a tree in"),
    (["--base", "HEAD", "--rounds", "2"], "at least 3"),
    (["--base", "HEAD", "--cases-from", "/nonexistent/gate.json"], "no such file"),
    (["--base", "HEAD", "--thresholds", "/nonexistent/t.json"], "no such file"),
    (["--base", "HEAD", "--round-timeout", "0"], "--round-timeout 0"),
    (["--base", "HEAD", "--python", "/nonexistent/python9"], "no such interpreter"),
])
def test_bad_input_exits_2_with_a_message_naming_it(repo, argv, words):
    status, out, err = run_cmd(argv + ["--repo", str(repo)], FakeRunner(same_speed))
    assert status == ab.EXIT_INPUT
    assert words in err and "Traceback" not in err
    assert len(worktrees(repo)) == 1


def test_a_folder_outside_git_is_bad_input(tmp_path):
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(tmp_path)], FakeRunner(same_speed))
    assert status == ab.EXIT_INPUT and "not inside a git working tree" in err


# a round's usage error, as the suite's pytest words it, for a name its tree lacks
_UNKNOWN_SAID = {"--attn-only": "--attn-only: unknown variant {name!r} (12 registered)",
                 "--attn-workload": "--attn-workload {name!r} is unknown; known: fa-sweep"}


class OnlyKnownRunner(FakeRunner):
    """A round fails as the suite's pytest does for an ``option`` name (--attn-only: a variant,
    --attn-workload: a workload) its tree lacks; otherwise it runs the selected ones of
    ``known[side]`` (name to case key)."""

    def __init__(self, known: dict[str, dict[str, str]], option: str = "--attn-only") -> None:
        super().__init__(lambda side, n: None)
        self.known, self.option = known, option

    def __call__(self, spec: ab.RoundSpec) -> Optional[Path]:
        self.specs.append(spec)
        given = [n for i, a in enumerate(spec.command) if a == self.option for n in spec.command[i + 1].split(",")]
        for name in given:
            if name not in self.known[spec.side]:
                raise ab.RoundFailed(spec, "pytest exit status 4 (usage error)",
                                     "ERROR: attnsuite: " + _UNKNOWN_SAID[self.option].format(name=name))
        keys = [k for n, k in self.known[spec.side].items() if not given or n in given]
        return result_json(spec.json_path, [rec(k) for k in keys])


KEY_NEW = "fa-sweep/new-k/fwd/b1-q128-h2-d32-causal-tl-fp32-cuda"


def test_a_variant_the_change_adds_named_by_attn_only_reads_new_and_the_base_rounds_run_without_it(repo, tmp_path):
    # `attnsuite ab -- --attn-only sdpa --attn-only new-k` for a change that adds new-k had failed in the first
    # base round: "--attn-only: unknown variant 'new-k'"
    runner = OnlyKnownRunner({"base": {"sdpa": KEY_A}, "head": {"sdpa": KEY_A, "new-k": KEY_NEW}})
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json"),
                                "--markdown", str(tmp_path / "ab.md"), "--", "--attn-only", "sdpa,new-k"], runner)
    assert status == ab.EXIT_OK, err
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["counts"] == {"same": 1, "new": 1}
    assert "--attn-only new-k is not a variant of the base" in out
    assert "--attn-only new-k is not a variant of the base" in (tmp_path / "ab.md").read_text()
    base_cmds = [s.command for s in runner.specs if s.side == "base"]
    assert len(base_cmds) == 4  # the failed first round and its retry, then two more
    assert "sdpa,new-k" in base_cmds[0] and all("sdpa" in c and "sdpa,new-k" not in c for c in base_cmds[1:])
    assert all("sdpa,new-k" in s.command for s in runner.specs if s.side == "head")


def test_when_attn_only_names_only_a_new_variant_the_base_rounds_do_not_run_and_every_case_reads_new(repo, tmp_path):
    runner = OnlyKnownRunner({"base": {"sdpa": KEY_A}, "head": {"sdpa": KEY_A, "new-k": KEY_NEW}})
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json"),
                                "--", "--attn-only", "new-k"], runner)
    assert status == ab.EXIT_OK, err
    assert json.loads((tmp_path / "ab.json").read_text())["counts"] == {"new": 1}
    # without the name, the base round would have selected every variant: it is not run at all
    assert [s.side for s in runner.specs] == ["base", "head", "head", "head"]
    assert out.count("base: not run, this tree has none of the selected variants or workloads") == 3


def test_a_variant_the_change_removes_named_by_attn_only_reads_not_run_in_the_working_tree(repo, tmp_path):
    runner = OnlyKnownRunner({"base": {"sdpa": KEY_A, "explicit": KEY_B}, "head": {"sdpa": KEY_A}})
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json"),
                                "--", "--attn-only", "sdpa", "--attn-only", "explicit"], runner)
    assert "--attn-only explicit is not a variant of the working tree" in out
    data = json.loads((tmp_path / "ab.json").read_text())
    assert data["counts"].get("same") == 1 and sum(data["counts"].values()) == 2
    assert any("removed or renamed by the change" in c.get("message", "") for c in data["cases"]), data["cases"]


KEY_UX = "ux-model/sdpa/fwd/b1-q128-h2-d32-causal-tl-fp32-cuda"


@pytest.mark.parametrize("workloads, counts, base_rounds_run", [
    (["fa-sweep", "ux-model"], {"same": 1, "new": 1}, True),
    (["ux-model"], {"new": 1}, False),  # without the name the base would select every workload: not run
])
def test_a_workload_the_change_adds_reads_new_and_the_base_rounds_run_without_it(repo, tmp_path, workloads, counts,
                                                                                 base_rounds_run):
    # a workload added in the working tree (a problem file, workloads.py) had failed the first base round
    runner = OnlyKnownRunner({"base": {"fa-sweep": KEY_A}, "head": {"fa-sweep": KEY_A, "ux-model": KEY_UX}},
                             "--attn-workload")
    args = [a for w in workloads for a in ("--attn-workload", w)]
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--json", str(tmp_path / "ab.json"), "--",
                                *args], runner)
    assert status == ab.EXIT_OK, err
    assert "--attn-workload ux-model is not a workload of the base" in out
    assert json.loads((tmp_path / "ab.json").read_text())["counts"] == counts
    assert runner.specs[0].side == "base" and "ux-model" in runner.specs[0].command  # failed, named it
    ran_base = [s for s in runner.specs[1:] if s.side == "base"]
    assert bool(ran_base) == base_rounds_run
    assert all("ux-model" not in s.command for s in ran_base)


def test_an_attn_only_name_neither_tree_registers_is_bad_input_naming_it(repo):
    runner = OnlyKnownRunner({"base": {"sdpa": KEY_A}, "head": {"sdpa": KEY_A}})
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--", "--attn-only", "sdpa,typo-k"], runner)
    assert status == ab.EXIT_INPUT
    assert "--attn-only typo-k: neither the base nor the working tree registers a variant of that name" in err
    # not first called a variant the change adds (its cases "new"), as it had been before the head round
    assert "is not a variant of the base" not in out, out
    # the round's own words, not the path of its log in a temporary folder removed by then
    assert "round said: ERROR: attnsuite: --attn-only: unknown variant 'typo-k' (12 registered)" in err
    assert "log" not in err


def test_a_selection_that_runs_no_case_in_the_working_tree_is_bad_input_not_a_silent_pass(repo):
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--", "--attn-workload", "nope"],
                             FakeRunner(lambda side, n: None))
    assert status == ab.EXIT_INPUT and "no case selected" in err and "--attn-workload nope" in err


def test_a_k_selection_only_the_base_runs_reads_missing_with_its_markdown_not_bad_input(repo, tmp_path):
    # -k naming only a variant the change removed: the head's pytest collects nothing (exit 5). The
    # same removal named by --attn-only read missing; by -k it had been "no case selected" (exit 2)
    runner = FakeRunner(lambda side, n: [rec(KEY_A)] if side == "base" else None)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(tmp_path / "ab.md"),
                                "--json", str(tmp_path / "ab.json"), "--", "-k", "gone-kernel"], runner)
    assert status == ab.EXIT_GATE, err
    assert json.loads((tmp_path / "ab.json").read_text())["counts"] == {"missing": 1}
    assert ("The working tree runs no case with pytest arguments -k gone-kernel, where the base runs 1 case: each "
            "reads missing") in (tmp_path / "ab.md").read_text()
    assert len(runner.specs) == 6  # every round ran: an empty head round is an answer, not an error
    assert "no machine fingerprint" not in out + err  # one machine ran both sides


def test_a_selection_neither_tree_runs_stops_once_each_side_has_run(repo):
    runner = FakeRunner(lambda side, n: None)
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--", "-k", "nothing"], runner)
    assert status == ab.EXIT_INPUT and "no case selected" in err
    assert sorted(s.side for s in runner.specs) == ["base", "head"]  # one round each, not six


def test_a_base_ref_without_the_benchmarks_is_bad_input(repo):
    git(repo, "rm", "-q", "bench/test_workloads.py")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "no bench")
    (repo / "bench").mkdir(exist_ok=True)
    (repo / "bench" / "test_workloads.py").write_text("# the benchmarks, added in the working tree\n")
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(same_speed))
    assert status == ab.EXIT_INPUT and "predates the benchmarks" in err


@pytest.fixture()
def kernel_repo(tmp_path: Path) -> Path:
    """A kernel author's own git repository: kernels/v.py, no benchmarks of its own."""
    r = tmp_path / "mykernels"
    (r / "kernels").mkdir(parents=True)
    (r / "kernels" / "v.py").write_text("# base version\n")
    git(r, "init", "-q", "-b", "main")
    git(r, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "base")
    (r / "kernels" / "v.py").write_text("# changed in the working tree\n")
    return r


def test_a_kernel_repository_runs_each_sides_own_variants_with_this_suites_benchmarks(kernel_repo):
    # ab had refused it ("it predates the benchmarks"), and from the suite's checkout both sides had
    # loaded the same absolute path, judging a changed kernel "same"
    seen: list[tuple[str, str]] = []

    class Reading(FakeRunner):
        def __call__(self, spec):
            value = spec.command[spec.command.index("--attn-variants") + 1]
            seen.append((spec.side, Path(value).read_text()))  # the file that side's round would load
            assert spec.tree == ab.suite_tree()
            return super().__call__(spec)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(kernel_repo), "--", "--attn-variants",
                                str(kernel_repo / "kernels" / "v.py")], Reading(same_speed))
    assert status == ab.EXIT_OK, err
    assert {text for side, text in seen if side == "base"} == {"# base version\n"}
    assert {text for side, text in seen if side == "head"} == {"# changed in the working tree\n"}
    assert f"the variants of both, run by the attnsuite at {ab.suite_tree()}" in out


def test_each_side_of_a_kernel_repository_imports_its_own_checkout_first_and_watches_the_others(kernel_repo):
    # an installed (editable) copy of the repository's package had been imported by both sides: a kernel made
    # 10x slower read "same". Each side's root and src/ now come first on the import path
    (kernel_repo / "src").mkdir()
    git(kernel_repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    (kernel_repo / "src" / "keep.py").write_text("")
    git(kernel_repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(kernel_repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "src layout")
    runner = FakeRunner(same_speed)
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(kernel_repo), "--", "--attn-variants",
                              str(kernel_repo / "kernels" / "v.py")], runner)
    assert status == ab.EXIT_OK, err
    for spec in runner.specs:
        path = spec.env["PYTHONPATH"].split(os.pathsep)
        own = Path(path[2])
        assert path[0] == str(ab.suite_tree()) and path[3] == str(own / "src"), path
        assert (own == kernel_repo.resolve()) is (spec.side == "head"), (spec.side, path)
        assert Path(spec.env["ATTNSUITE_AB_FOREIGN"]) != own  # the other side's checkout


def test_the_probe_names_a_module_a_round_imported_from_the_other_sides_checkout(tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / "src" / "teampkg_ab_probe_test").mkdir(parents=True)
    (other / "src" / "teampkg_ab_probe_test" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(other / "src"))
    monkeypatch.delitem(sys.modules, "teampkg_ab_probe_test", raising=False)
    import teampkg_ab_probe_test  # noqa: F401  (as an installed copy of the other checkout would be)

    monkeypatch.setitem(sys.modules, "teampkg_ab_probe_test", sys.modules["teampkg_ab_probe_test"])
    plugin: dict = {}
    exec(compile(ab.PLUGIN_SOURCE, ab.PLUGIN_MODULE, "exec"), plugin)  # the probe as rounds load it
    probe = tmp_path / "r.probe.json"
    monkeypatch.setenv("ATTNSUITE_AB_PROBE", str(probe))
    monkeypatch.setenv("ATTNSUITE_AB_FOREIGN", str(other))
    suite = ab.suite_tree()
    session = argparse.Namespace(config=argparse.Namespace(rootpath=suite), items=[])
    plugin["_write_probe"](session)
    with pytest.raises(ab.AbError, match=r"imported teampkg_ab_probe_test from .*other/src/teampkg_ab_probe_test/"
                                         r"__init__.py, a file of the other side's checkout"):
        ab.check_probe(probe, suite)
    monkeypatch.setenv("ATTNSUITE_AB_FOREIGN", str(tmp_path / "elsewhere"))  # nothing of it imported: fine
    plugin["_write_probe"](session)
    assert ab.check_probe(probe, suite)["foreign"] == []


def test_a_module_of_the_other_checkout_loaded_through_an_entry_point_is_named_with_it_and_the_way_out(
        tmp_path, monkeypatch):
    # an editable install of the head's kernels (an attnsuite.variants entry point) had been named by its
    # module alone: the user could not tell what imported it, nor that ATTNSUITE_NO_ENTRY_POINTS avoids it
    import importlib.metadata

    other = tmp_path / "other"
    (other / "src" / "teamkern_ab_ep_test").mkdir(parents=True)
    (other / "src" / "teamkern_ab_ep_test" / "variants.py").write_text("")
    (other / "src" / "teamkern_ab_ep_test" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(other / "src"))
    for name in ("teamkern_ab_ep_test", "teamkern_ab_ep_test.variants"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.import_module("teamkern_ab_ep_test.variants")
    for name in ("teamkern_ab_ep_test", "teamkern_ab_ep_test.variants"):
        monkeypatch.setitem(sys.modules, name, sys.modules[name])
    ep = argparse.Namespace(module="teamkern_ab_ep_test.variants", name="teamkern", value="teamkern_ab_ep_test.variants",
                            dist=argparse.Namespace(name="teamkern"))
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == "attnsuite.variants" else [])
    plugin: dict = {}
    exec(compile(ab.PLUGIN_SOURCE, ab.PLUGIN_MODULE, "exec"), plugin)
    probe = tmp_path / "r.probe.json"
    monkeypatch.setenv("ATTNSUITE_AB_PROBE", str(probe))
    monkeypatch.setenv("ATTNSUITE_AB_FOREIGN", str(other))
    suite = ab.suite_tree()
    plugin["_write_probe"](argparse.Namespace(config=argparse.Namespace(rootpath=suite), items=[]))
    with pytest.raises(ab.AbError) as caught:
        ab.check_probe(probe, suite)
    words = str(caught.value)
    assert "through entry point 'teamkern' (distribution teamkern) 'teamkern_ab_ep_test.variants'" in words, words
    assert "ATTNSUITE_NO_ENTRY_POINTS=1" in words, words
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])  # not through one: as before
    plugin["_write_probe"](argparse.Namespace(config=argparse.Namespace(rootpath=suite), items=[]))
    with pytest.raises(ab.AbError) as caught:
        ab.check_probe(probe, suite)
    assert "entry point" not in str(caught.value) and "a file of the other side's checkout" in str(caught.value)


def test_the_probe_plugin_itself_in_an_out_folder_inside_the_other_sides_checkout_is_not_foreign(tmp_path, monkeypatch):
    # a first-time user's `attnsuite ab --out about` in their kernel repository failed every base round:
    # the probe plugin the command writes into --out was taken for a module of the head's checkout
    other = tmp_path / "kernels"
    out = other / "about"
    out.mkdir(parents=True)
    (out / f"{ab.PLUGIN_MODULE}.py").write_text(ab.PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(out))
    monkeypatch.delitem(sys.modules, ab.PLUGIN_MODULE, raising=False)
    plugin = importlib.import_module(ab.PLUGIN_MODULE)  # as pytest -p loads it in a round
    probe = tmp_path / "r.probe.json"
    monkeypatch.setenv("ATTNSUITE_AB_PROBE", str(probe))
    monkeypatch.setenv("ATTNSUITE_AB_FOREIGN", str(other))
    suite = ab.suite_tree()
    plugin._write_probe(argparse.Namespace(config=argparse.Namespace(rootpath=suite), items=[]))
    assert [name for name, _ in json.loads(probe.read_text())["foreign"]] == [ab.PLUGIN_MODULE]  # seen, and
    assert ab.check_probe(probe, suite)["rootdir"] == str(suite)  # not held against the round


@pytest.mark.parametrize("given, kept", [
    (["--attn-baselines-dir", "team/baselines", "--attn-only", "sdpa"], ["--attn-only", "sdpa"]),
    (["--attn-baseline=b.json", "--attn-thresholds", "t.json", "-k", "fwd"], ["-k", "fwd"]),
    (["--attn-gate", "enforce", "--attn-record-baseline", "--attn-require-baseline", "--attn-workload", "decode"],
     ["--attn-workload", "decode"]),
    (["--attn-markdown", "m.md", "--attn-gate-json=g.json", "--attn-allow-mismatch", "--attn-no-confirm",
      "--attn-confirm", "--attn-mode", "fwd"], ["--attn-mode", "fwd"]),
], ids=["baselines-dir", "baseline-and-thresholds", "gate-and-record", "reports-and-flags"])
def test_a_round_gets_none_of_the_stored_baseline_gates_options(given, kept):
    command = ab.pytest_command("python", Path("r.json"), given)
    assert command[command.index("-q") + 1:] == kept
    assert command.count("--attn-gate") == 1 and command[command.index("--attn-gate") + 1] == "off"


def test_a_baselines_folder_the_base_commit_lacks_does_not_fail_the_base_rounds(repo):
    # a first-time user's recipe (README: record into a folder of their own, then ab with it) failed every
    # base round: the folder was not committed, so the base's worktree had none ("no such folder")
    (repo / "team" / "baselines").mkdir(parents=True)  # untracked: only the working tree has it
    runner = FakeRunner(same_speed)
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--", "--attn-baselines-dir",
                              str(repo / "team" / "baselines")], runner)
    assert status == ab.EXIT_OK, err
    assert runner.specs and all("--attn-baselines-dir" not in " ".join(spec.command) for spec in runner.specs)


def test_a_failed_run_leaves_no_earlier_runs_diff_or_json_behind(repo, tmp_path):
    # a failed or interrupted A/B had left the last run's ab.md (FAIL, another commit) in place, unmarked,
    # for the PR-comment step to post as this run's (a first-time user's trial)
    md, js = tmp_path / "ab.md", tmp_path / "ab.json"
    md.write_text("earlier run: FAIL\n")
    js.write_text("{}\n")
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md), "--json", str(js)],
                             failing_runner(lambda s: ab.RoundFailed(s, "pytest exit status 3", "boom")))
    assert status == ab.EXIT_INPUT, err
    assert not md.exists() and not js.exists()


def test_the_diff_names_the_head_commit_measured(repo, tmp_path):
    md = tmp_path / "ab.md"
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(md)], FakeRunner(same_speed))
    assert status == ab.EXIT_OK, err
    head = git(repo, "rev-parse", "HEAD").strip()
    assert f"against the working tree at {head[:12]}" in md.read_text()


def test_step_summary_outside_github_actions_says_no_job_summary_was_written(repo, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--step-summary"], FakeRunner(same_speed))
    assert status == ab.EXIT_OK, err
    assert "GITHUB_STEP_SUMMARY is not set: no job summary written" in out


def test_a_killed_runs_base_worktree_still_registered_is_named_with_how_to_remove_it(repo, tmp_path):
    # kill -KILL leaves the worktree registered and ~41 MB under /tmp; the next run had said nothing
    left = tmp_path / f"{ab.WORKTREE_PREFIX}killed" / "base"
    git(repo, "worktree", "add", "--detach", str(left), "HEAD")
    gone = tmp_path / f"{ab.WORKTREE_PREFIX}gone" / "base"
    git(repo, "worktree", "add", "--detach", str(gone), "HEAD")
    shutil.rmtree(gone.parent)  # its folder went with /tmp: pruned, not named
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo)], FakeRunner(same_speed))
    assert status == ab.EXIT_OK, err
    assert f"attnsuite ab: {left.resolve()} is the base worktree of an earlier A/B that did not end" in out or \
        f"attnsuite ab: {left} is the base worktree of an earlier A/B that did not end" in out, out
    assert "gone" not in out and str(gone) not in git(repo, "worktree", "list")
    hint = out.split("remove it and its temporary folder with ", 1)[1].splitlines()[0]
    (left.parent / "rounds").mkdir()  # the killed run's round files, beside its worktree
    subprocess.run(hint, shell=True, cwd=repo, check=True)
    assert not left.parent.exists() and str(left) not in git(repo, "worktree", "list")


def test_a_kernel_repository_with_no_variants_path_in_it_is_bad_input(kernel_repo, tmp_path):
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("")
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(kernel_repo), "--", "--attn-variants", str(elsewhere)],
                             FakeRunner(same_speed))
    assert status == ab.EXIT_INPUT and "both sides would run the same code" in err, err


def test_variants_outside_the_compared_repository_are_named_as_not_measured(repo, tmp_path):
    outside = tmp_path / "mine.py"
    outside.write_text("")
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--", "--attn-variants", str(outside)],
                             FakeRunner(same_speed))
    assert status == ab.EXIT_OK
    assert f"--attn-variants {outside} lies outside {repo}: both sides load that same file" in out


def test_an_absolute_path_inside_the_repository_is_each_trees_own_copy(kernels_beside):
    repo, _ = kernels_beside
    assert ab.rebase_paths([f"--attn-variants={repo / 'examples' / 'v.py'}"], Path("/"), repo) == \
        ["--attn-variants=examples/v.py"]


def _sigterm(spec):
    os.kill(os.getpid(), signal.SIGTERM)  # the A/B's handler raises here, in the round
    time.sleep(5)
    return AssertionError("SIGTERM was not handled")


def failing_runner(exc_factory):
    def run(spec):
        if spec.index == 2:
            raise exc_factory(spec)
        return result_json(spec.json_path, same_speed(spec.side, 1))
    return run


@pytest.mark.parametrize("exc_factory, status, words", [
    (lambda s: ab.RoundFailed(s, "pytest exit status 3 (internal error)", "INTERNALERROR> boom"), ab.EXIT_INPUT,
     "INTERNALERROR> boom"),
    (lambda s: KeyboardInterrupt(), ab.EXIT_INTERRUPTED, "interrupted; the base worktree was removed"),
    (_sigterm, 143, "terminated (SIGTERM); the base worktree was removed"),
], ids=["round-failed", "ctrl-c", "sigterm"])
def test_the_base_worktree_is_removed_after_a_failed_or_interrupted_round(repo, exc_factory, status, words):
    seen = []

    def runner(spec):
        seen.append(spec.tree)
        return failing_runner(exc_factory)(spec)

    got, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo)], runner)
    assert got == status and words in err
    assert len(worktrees(repo)) == 1
    assert not seen[0].exists()
    if status == ab.EXIT_INPUT:  # the error names a log in the removed temporary folder: it says so
        assert "that log was removed with the temporary folder; --out DIR keeps" in err


def test_the_base_worktree_is_removed_after_a_passing_run(repo):
    runner = FakeRunner(same_speed)
    assert run_cmd(["--base", "HEAD", "--repo", str(repo)], runner)[0] == 0
    assert len(worktrees(repo)) == 1 and not runner.specs[0].tree.exists()


def test_a_real_round_that_crashes_shows_its_log_tail(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    spec = ab.RoundSpec(1, "base", tree, [sys.executable, "-c", "import sys; print('kaboom here'); sys.exit(3)"],
                        dict(os.environ), tmp_path / "r.json", tmp_path / "r.log", tmp_path / "p.json")
    with pytest.raises(ab.RoundFailed) as exc:
        ab.run_round(spec)
    assert "exit status 3 (internal error)" in str(exc.value) and "kaboom here" in exc.value.tail


def test_a_real_round_with_no_tests_collected_returns_none(tmp_path):
    spec = ab.RoundSpec(1, "head", tmp_path, [sys.executable, "-c", "import sys; sys.exit(5)"],
                        dict(os.environ), tmp_path / "r.json", tmp_path / "r.log", tmp_path / "p.json")
    assert ab.run_round(spec) is None


def test_the_cli_parser_takes_the_ab_subcommand():
    p = argparse.ArgumentParser()
    ab.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["ab", "--base", "main", "--", "--attn-mode", "fwd"])
    assert args.func is ab.cmd_ab and args.pytest_args == ["--attn-mode", "fwd"] and args.rounds == 3


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # six pytest processes: about 50-90 s on two shared cores
def test_end_to_end_ab_of_head_against_itself_on_the_cpu_quick_tier(tmp_path):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode != 0:
        pytest.skip("needs git and this project as a git repository")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(clone)], check=True)
    out_dir = tmp_path / "rounds"
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(clone), "--out", str(out_dir),
                                "--json", str(tmp_path / "ab.json"), "--",
                                "--attn-tier", "quick", "--attn-device", "cpu", "--attn-only", "explicit",
                                "--attn-workload", "video-wm", "--attn-mode", "fwd",
                                # the cases in each round's pytest process: what is checked here is the
                                # rounds (their order, trees, probes and phases), not the case isolation,
                                # and a benchmark worker's start cost each of the six rounds seconds
                                "--attn-isolation", "none"],
                               ab.run_round)
    assert status == ab.EXIT_OK, out + err
    data = json.loads((tmp_path / "ab.json").read_text())
    sides = [f["side"] for f in data["ab"]["round_files"]]
    assert sides == ["base", "head", "head", "base", "base", "head"]
    assert all(f["cases"] == 2 for f in data["ab"]["round_files"])
    assert not data["failed"] and sum(data["counts"].values()) == 2
    base_tree = Path(data["ab"]["trees"]["base"])
    for f in data["ab"]["round_files"]:
        probe = json.loads(Path(f["json"][: -len(".json")] + ".probe.json").read_text())
        tree = base_tree if f["side"] == "base" else clone
        assert Path(probe["attnsuite"]).parent.parent == tree.resolve()
        assert set(f["phases"]) == {"start", "first case", "other cases", "exit"}, f
        assert sum(f["phases"].values()) == pytest.approx(f["seconds"], abs=0.5), f
    assert len(worktrees(clone)) == 1 and not base_tree.exists()


@pytest.fixture
def kernels_beside(tmp_path) -> tuple[Path, Path]:
    """A repository with examples/v.py, and a folder mykernels/ beside it with k.py and good.py."""
    repo, outside = tmp_path / "repo", tmp_path / "mykernels"
    (repo / "examples").mkdir(parents=True)
    outside.mkdir()
    for f in (outside / "k.py", outside / "good.py", repo / "examples" / "v.py"):
        f.write_text("")
    return repo, outside


def test_relative_path_options_work_from_every_round_however_the_user_named_them(kernels_beside):
    # each round runs in its own tree: "--attn-variants ../mykernels/k.py" typed from the repository had
    # been read inside the base worktree ("variant module file ... does not exist")
    repo, outside = kernels_beside
    args = ["--attn-variants", "../mykernels/k.py", "--attn-variants=examples/v.py", "-k", "fwd",
            "--attn-problems", "/abs/p.json", "--attn-variants", "not_a_path_module"]
    got = ab.rebase_paths(args, repo, repo)
    assert got == ["--attn-variants", str(outside / "k.py"), "--attn-variants=examples/v.py", "-k", "fwd",
                   "--attn-problems", "/abs/p.json", "--attn-variants", "not_a_path_module"]
    # typed from a sub-folder, a file of the repository stays relative to its root: each tree reads its own
    assert ab.rebase_paths(["--attn-variants=v.py"], repo / "examples", repo) == ["--attn-variants=examples/v.py"]


def test_relative_paths_in_the_variables_work_from_every_round_as_the_options_do(kernels_beside, tmp_path):
    # ATTNSUITE_VARIANTS=good.py typed beside the kernel had been read inside each round's tree, and the
    # round failed blaming "an option after --"
    repo, outside = kernels_beside
    env = {"ATTNSUITE_VARIANTS": "good.py, my_pkg.variants", "ATTNSUITE_PROBLEMS": "../repo/examples/v.py",
           "OTHER": "good.py"}
    got = ab.rebase_env(env, outside, repo)
    assert got == {"ATTNSUITE_VARIANTS": f"{outside / 'good.py'},my_pkg.variants",
                   "ATTNSUITE_PROBLEMS": "examples/v.py", "OTHER": "good.py"}
    # and that environment is what each round gets
    plan = ab.AbPlan(base_tree=repo, head_tree=repo, rounds=1, python="python", pytest_args=[],
                     workdir=tmp_path / "w", base_env=got)
    assert all(r.env["ATTNSUITE_VARIANTS"] == got["ATTNSUITE_VARIANTS"] for r in ab.round_specs(plan))


@pytest.mark.parametrize("option", ["--json", "--markdown", "--out"])
def test_an_output_that_cannot_be_written_is_refused_before_any_round(repo, tmp_path, option):
    # a --json naming a folder had crashed after all six rounds ran, and the rounds were lost
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    target = tmp_path if option != "--out" else blocker
    runner = FakeRunner(head_slower(0.0))
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), option, str(target)], runner)
    assert status == ab.EXIT_INPUT and f"error: {option} {target}" in err and not runner.specs


def test_an_output_naming_the_gate_json_it_reads_is_refused_before_any_round(repo, tmp_path):
    flagged = tmp_path / "gate.json"
    flagged.write_text(json.dumps({"compared": True, "cases": [{"key": KEY_A, "verdict": "slower"}]}))
    before = flagged.read_bytes()
    runner = FakeRunner(head_slower(0.0))
    status, _, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--cases-from", str(flagged),
                              "--json", str(flagged)], runner)
    assert status == ab.EXIT_INPUT and f"error: --json {flagged}: is --cases-from" in err and not runner.specs
    assert flagged.read_bytes() == before


def test_ab_with_step_summary_alone_still_appends_the_diff(repo, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    status, _, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--gate", "report", "--step-summary"],
                           FakeRunner(head_slower(0.1)))
    assert status == ab.EXIT_OK and "attnsuite A/B (same machine)" in summary.read_text()


def test_an_out_folder_used_again_gets_the_earlier_rounds_set_aside_not_mixed_in(repo, tmp_path):
    # a second A/B into the same --out had left round files of another base beside its own
    out_dir = tmp_path / "rounds"
    out_dir.mkdir()
    (out_dir / "round02-head.json").write_text("{}")
    (out_dir / "round03-head.log").write_text("old")
    (out_dir / "round04-base.json.journal.jsonl").write_text("{}\n")  # a stopped round's journal
    (out_dir / "notes.txt").write_text("the user's own")
    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--out", str(out_dir)], FakeRunner(same_speed))
    assert status == ab.EXIT_OK
    aside = [d for d in out_dir.iterdir() if d.is_dir() and d.name.startswith("earlier-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in out
    assert sorted(f.name for f in aside[0].iterdir()) == ["round02-head.json", "round03-head.log",
                                                          "round04-base.json.journal.jsonl"]
    assert (aside[0] / "round03-head.log").read_text() == "old"  # kept, not deleted
    assert (out_dir / "notes.txt").read_text() == "the user's own"  # not an A/B file: left alone


def test_a_variants_file_the_change_adds_is_left_out_of_the_base_rounds_and_reads_new(kernel_repo):
    # the base round had failed: "variant module file '.../base/kernels/new_variants.py' does not exist"
    (kernel_repo / "kernels" / "new_variants.py").write_text("# added by the change\n")
    seen: list[tuple[str, list[str]]] = []

    class Recording(FakeRunner):
        def __call__(self, spec):
            seen.append((spec.side, [a for a in spec.command if "variants.py" in a or a.endswith("v.py")]))
            return super().__call__(spec)
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(kernel_repo), "--", "--attn-variants",
                                str(kernel_repo / "kernels" / "v.py"), "--attn-variants",
                                str(kernel_repo / "kernels" / "new_variants.py")], Recording(same_speed))
    assert status == ab.EXIT_OK, err
    assert ("attnsuite ab: --attn-variants kernels/new_variants.py is not in base HEAD: the base rounds run without "
            "it, and the cases of what it adds read new") in out, out
    base_files = {Path(p).name for side, args in seen if side == "base" for p in args}
    head_files = {Path(p).name for side, args in seen if side == "head" for p in args}
    assert base_files == {"v.py"} and head_files == {"v.py", "new_variants.py"}


@pytest.mark.parametrize("args, expected", [
    (["--attn-variants", "a.py", "-k", "fwd"], ["--attn-variants", "A.PY", "-k", "fwd"]),
    (["--attn-variants=a.py", "--attn-only=x"], ["--attn-variants=A.PY", "--attn-only=x"]),
    (["--attn-problems", "drop.json", "--attn-mode", "fwd"], ["--attn-mode", "fwd"]),
    (["--attn-problems=drop.json", "-q"], ["-q"]),
    (["-q", "--attn-variants"], ["-q", "--attn-variants"]),  # no value: left for pytest to refuse
    (["--attn-variantsX=a.py", "--attn-only", "--attn-variants"], ["--attn-variantsX=a.py", "--attn-only", "--attn-variants"]),
], ids=["separate value", "joined value", "separate value dropped", "joined value dropped",
        "option without value at the end", "other options untouched"])
def test_path_options_are_read_in_both_forms_by_one_walker(args, expected):
    fn = lambda option, value: None if value.startswith("drop") else value.upper()  # noqa: E731
    assert ab.map_option_values(args, ("--attn-variants", "--attn-problems"), fn) == expected


def test_path_variables_drop_an_emptied_variable_and_keep_others():
    fn = lambda name, value: None if value.startswith("drop") else value.upper()  # noqa: E731
    env = {"ATTNSUITE_VARIANTS": "drop.py, a.py,", "ATTNSUITE_PROBLEMS": "drop.json", "OTHER": "drop.py"}
    assert ab.map_variable_entries(env, fn) == {"ATTNSUITE_VARIANTS": "A.PY", "OTHER": "drop.py"}


def test_without_files_absent_from_keeps_module_names_outside_paths_and_typos(tmp_path):
    base, head = tmp_path / "base", tmp_path / "head"
    for tree in (base, head):
        (tree / "k").mkdir(parents=True)
        (tree / "k" / "old.py").write_text("")
    (head / "k" / "new.py").write_text("")
    args = ["--attn-variants", "k/new.py", "--attn-variants=k/old.py", "--attn-variants", "my_pkg.mod",
            "--attn-variants", "k/typo.py", "--attn-problems=/elsewhere/p.json", "-k", "fwd"]
    env = {"ATTNSUITE_VARIANTS": f"{base / 'k' / 'new.py'},my_pkg.mod", "OTHER": "k/new.py"}
    kept, env_out, dropped = ab.without_files_absent_from(args, env, base, head)
    assert kept == ["--attn-variants=k/old.py", "--attn-variants", "my_pkg.mod", "--attn-variants", "k/typo.py",
                    "--attn-problems=/elsewhere/p.json", "-k", "fwd"]
    assert env_out == {"ATTNSUITE_VARIANTS": "my_pkg.mod", "OTHER": "k/new.py"}
    assert dropped == ["--attn-variants k/new.py", "ATTNSUITE_VARIANTS entry k/new.py"]


def test_the_terminal_says_how_many_uncommitted_paths_the_head_rounds_include(repo, tmp_path):
    # only the markdown had said so; a CI log without --markdown did not
    (repo / "bench" / "test_workloads.py").write_text("# the benchmarks, edited\n")
    (repo / "new_file.py").write_text("")
    status, out, err = run_cmd(["--base", "HEAD", "--repo", str(repo), "--markdown", str(tmp_path / "ab.md")],
                               FakeRunner(same_speed))
    assert status == ab.EXIT_OK, err
    assert f"head {repo} with its 2 uncommitted paths; 3 rounds per side" in out, out
    assert "(2 uncommitted path(s) included)" in (tmp_path / "ab.md").read_text()


def test_an_ab_option_given_after_the_double_dash_is_refused_before_any_round(tmp_path):
    # `ab --base main -- --attn-only k --head-arg=--attn-inject-slowdown=k=0.05` went to pytest, which
    # refused it only when round 1 ran, in a worktree made for it
    runner = FakeRunner(same_speed)
    status, _, err = run_cmd(["--base", "HEAD", "--", "--attn-only", "k", "--head-arg=--attn-inject-slowdown=k=0.05"],
                             runner)
    assert status == ab.EXIT_INPUT, err
    assert "--head-arg is an option of attnsuite ab: put it before --" in err, err
    assert not runner.specs, runner.specs


def test_a_head_side_with_an_injected_slowdown_says_simulated_in_bold(repo, tmp_path):
    # the markdown had held only the quoted note "the head rounds run with ... as well"
    def make(side, n):
        slowed = {"extra": {"injected_ms": 0.05}} if side == "head" else {}
        return [rec(KEY_A, min_ms=1.0 * (1.05 if side == "head" else 1.0), **slowed), rec(KEY_B, min_ms=2.0)]

    status, out, _ = run_cmd(["--base", "HEAD", "--repo", str(repo), "--gate", "report", "--markdown",
                              str(tmp_path / "ab.md"), "--head-arg=--attn-inject-slowdown=a=0.05"], FakeRunner(make))
    assert status == 0
    md = (tmp_path / "ab.md").read_text()
    assert "**SIMULATED: 1 case ran with a slowdown injected (--attn-inject-slowdown:" in md, md[:1500]
    assert "SIMULATED: 1 case ran with a slowdown injected" in out
