"""The ``attnsuite`` command line: compare, record, report, check, and their exit statuses."""

from __future__ import annotations

import argparse
import io
import gzip
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from attnsuite import cli
from gatehelp import FP_CPU, FP_H100, fp, rec, write_result

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv, cwd=None):
    out = io.StringIO()
    code = cli.main([str(a) for a in argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def runs(tmp_path):
    old = write_result(tmp_path / "old.json", [rec("a"), rec("b"), rec("c", outcome="oom", median_ms=None)])
    same = write_result(tmp_path / "same.json", [rec("a", median_ms=1.005), rec("b"), rec("c", outcome="oom", median_ms=None)])
    worse = write_result(tmp_path / "worse.json", [rec("a", median_ms=1.3), rec("b", outcome="oom", median_ms=None)])
    return old, same, worse


def test_compare_of_an_unchanged_run_passes_with_exit_status_0(runs):
    old, same, _ = runs
    code, out = run_cli("compare", old, same)
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASS: no regression among 3 cases judged")


def test_compare_with_a_file_of_no_case_is_bad_input_not_every_case_regressed(runs, tmp_path, capsys):
    # "FAIL: 3 regressions among 3 cases judged (0 run, 3 not run here)", exit 1, where report refuses it
    old, _, _ = runs
    empty = write_result(tmp_path / "empty.json", [])
    for pair in ((old, empty), (empty, old)):
        code, out = run_cli("compare", *pair)
        assert code == 2 and "regression" not in out
        assert f"{empty}: no case in it: nothing to compare" in capsys.readouterr().err


@pytest.mark.parametrize("theirs, words", [
    ([rec("x"), rec("y")], "they hold different variants: x, y here, a, b there"),
    ([rec("a", workload="decode")], "they hold different workloads: decode here, fa-sweep there"),
    ([rec("a", problem="b1-q64-h2-d16-causal-fp32-cuda0")], "they hold different problems: "),
], ids=["variants", "workloads", "problems"])
def test_compare_of_files_that_share_no_case_says_what_differs(tmp_path, capsys, theirs, words):
    # two runs of different variants had been told "another dtype, device or tier? another suite's file?"
    from attnsuite.verdict import Scope

    old = write_result(tmp_path / "old.json", [rec("a"), rec("b")])
    new = write_result(tmp_path / "new.json", theirs)
    data = json.loads(new.read_text())  # what the new run selected, as its gate stores it: nothing of the old
    data["attnsuite"]["scope"] = Scope(variants=frozenset(r.variant for r in theirs),
                                       workloads=frozenset(r.workload for r in theirs)).to_json()
    if words.endswith("problems: "):
        data["attnsuite"]["scope"] = Scope(keys=frozenset(r.key for r in theirs)).to_json()
    new.write_text(json.dumps(data))
    code, _ = run_cli("compare", old, new)
    assert code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("gate_mode, status", [("enforce", 1), ("report", 0)])
def test_compare_fails_a_new_case_that_failed_its_numerics_as_the_run_did(tmp_path, gate_mode, status):
    # it had said "pass (1 new)" with exit 0 while the run's own summary and `report` said FAIL
    old = write_result(tmp_path / "o.json", [rec("a")])
    new = write_result(tmp_path / "n.json", [rec("a"), rec("b", outcome="numerics", detail="max error 3e-1")])
    code, out = run_cli("compare", old, new, "--gate", gate_mode)
    assert code == status
    assert out.strip().splitlines()[-1].startswith("FAIL: 1 case(s) of this run failed (1 numerics)"), out


def test_compare_of_a_regressed_run_exits_1_naming_each_case_verdict_and_amount(runs):
    old, _, worse = runs
    code, out = run_cli("compare", old, worse)
    assert code == 1
    gate = [l for l in out.splitlines() if l.startswith("GATE ")]
    assert any(l.startswith("GATE slower: fa-sweep/a/fwd/") and "slower by 30.0%" in l for l in gate)
    assert any(l.startswith("GATE newly-oom: fa-sweep/b/") for l in gate)
    assert any(l.startswith("GATE missing: fa-sweep/c/") for l in gate)
    # the slower case rests on the file's one measurement, and the output says so (newly-oom and missing do not)
    assert re.search(rf"note: 1 regression rests on a first measurement only \(fa-sweep/a/fwd/\S+\): "
                     rf"{re.escape(str(worse))} holds no second one", out), out


def test_compare_names_no_first_measurement_regression_when_the_file_confirmed_it(tmp_path):
    old = write_result(tmp_path / "old.json", [rec("a")])
    confirmed = rec("a", median_ms=1.3)
    confirmed.extra["confirm"] = rec("a", median_ms=1.31).to_extra_info()
    worse = write_result(tmp_path / "worse.json", [confirmed])
    code, out = run_cli("compare", old, worse)
    assert code == 1 and "confirmed: first +30.0%, second +31.0%" in out, out
    assert "first measurement only" not in out


def test_compare_in_report_mode_shows_the_regressions_but_exits_0(runs):
    old, _, worse = runs
    code, out = run_cli("compare", old, worse, "--gate", "report")
    # labelled REPORTED, as the pytest gate does: a CI log searched for GATE finds only what fails
    assert code == 0 and "REPORTED slower: fa-sweep/a/fwd/" in out and "GATE " not in out


def test_compare_writes_markdown_and_json(runs, tmp_path):
    old, _, worse = runs
    code, out = run_cli("compare", old, worse, "--format", "json", "--markdown", tmp_path / "d.md")
    data = json.loads(out)
    assert data["failed"] and data["counts"] == {"newly-oom": 1, "missing": 1, "slower": 1}
    assert (tmp_path / "d.md").read_text().startswith("<!-- attnsuite-gate -->")


def test_compare_result_against_a_recorded_baseline_gives_the_same_verdicts(runs, tmp_path):
    old, _, worse = runs
    (tmp_path / "baselines").mkdir()
    code, out = run_cli("record", old, "--dir", tmp_path / "baselines")
    assert code == 0 and "3 added" in out
    base = tmp_path / "baselines" / f"{FP_H100['id']}.json"
    _, direct = run_cli("compare", old, worse, "--format", "json")
    _, via_baseline = run_cli("compare", base, worse, "--format", "json")
    strip = lambda d: [(c["key"], c["verdict"]) for c in json.loads(d)["cases"]]
    assert strip(direct) == strip(via_baseline)


def test_compare_refuses_another_gpu_with_exit_2_unless_allowed(runs, tmp_path, capsys):
    old, same, _ = runs
    other = write_result(tmp_path / "a100.json", [rec("a")], fp(gpu_name="NVIDIA A100-SXM4-80GB"))
    code, _ = run_cli("compare", old, other)
    assert code == 2 and "refusing to compare runs from different machines: GPU model differs" in capsys.readouterr().err
    code, out = run_cli("compare", old, other, "--allow-mismatch", "--gate", "report")
    assert code == 0


def test_compare_of_a_corrupt_file_exits_2_naming_the_file(tmp_path, runs, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": [')
    code, _ = run_cli("compare", runs[0], bad)
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "not valid JSON" in err
    # named by its place, not as a "result file": a truncated baseline given as OLD had been called one
    assert f"NEW (a result or baseline file) {bad}: not valid JSON" in err, err


def test_compare_uses_a_thresholds_file(runs, tmp_path):
    old, _, worse = runs
    t = tmp_path / "t.json"
    t.write_text(json.dumps({"case": {"*/a/*": {"time_floor": 0.5}}}))
    _, out = run_cli("compare", old, worse, "--thresholds", t, "--format", "json")
    verdicts = {c["key"].split("/")[1]: c["verdict"] for c in json.loads(out)["cases"]}
    assert verdicts["a"] == "same"


def test_compare_limited_to_one_workload_does_not_call_the_rest_missing(tmp_path):
    old = write_result(tmp_path / "o.json", [rec("a", workload="w1"), rec("a", workload="w2")])
    new = write_result(tmp_path / "n.json", [rec("a", workload="w1")])
    assert run_cli("compare", old, new)[0] == 1
    assert run_cli("compare", old, new, "--workload", "w1")[0] == 0


def test_record_refreshes_one_workload_only(tmp_path):
    first = write_result(tmp_path / "1.json", [rec("a", workload="w1"), rec("a", workload="w2")])
    second = write_result(tmp_path / "2.json", [rec("a", workload="w1", median_ms=5.0), rec("a", workload="w2", median_ms=5.0)])
    b = tmp_path / "b.json"
    assert run_cli("record", first, "--baseline", b)[0] == 0
    code, out = run_cli("record", second, "--baseline", b, "--workload", "w2")
    assert code == 0 and "1 updated" in out
    cases = json.loads(b.read_text())["cases"]
    assert {k.split("/")[0]: e["median_ms"] for k, e in cases.items()} == {"w1": 1.0, "w2": 5.0}


def test_record_from_a_baseline_instead_of_a_result_is_an_input_error(tmp_path, capsys):
    first = write_result(tmp_path / "1.json", [rec()])
    b = tmp_path / "b.json"
    run_cli("record", first, "--baseline", b)
    assert run_cli("record", b, "--baseline", tmp_path / "c.json")[0] == 2
    assert "this is a baseline, not a pytest-benchmark result file" in capsys.readouterr().err


def test_check_validates_baselines(tmp_path, capsys):
    good = tmp_path / "good.json"
    run_cli("record", write_result(tmp_path / "r.json", [rec()]), "--baseline", good)
    bad = tmp_path / "bad.json"
    bad.write_text("")
    assert run_cli("check", good)[0] == 0
    assert run_cli("check", good, bad)[0] == 2
    # prefixed as every other subcommand's errors are (it had read "error: baseline ...")
    assert f"attnsuite check: error: baseline {bad}: file is empty" in capsys.readouterr().err


@pytest.mark.parametrize("edit, words", [
    (lambda e, o: e.update(samples=0), "samples is 0 in an ok case"),
    (lambda e, o: (e.pop("median_ms"), e.pop("min_ms", None)), "median_ms is missing in an ok case"),
    (lambda e, o: e.update(instance_spread={"min_ms": 0.01}), "instance_spread without runs > 1"),
    (lambda e, o: e.update(tier="galactic"), "unknown tier 'galactic'"),
    (lambda e, o: o.update(calibration={"matmul_tflops": -1}), "calibration.matmul_tflops is -1: a probe's figure"),
    # text had passed, and every report then said the baseline stores no probe (an outside tester's trial)
    (lambda e, o: o.update(calibration={"matmul_tflops": "0.16"}),
     "calibration.matmul_tflops is '0.16': a probe's figure is a number"),
    (lambda e, o: e.update(timer="stopwatch"), "unknown timer 'stopwatch' (expected one of ['cuda-events', "),
    (lambda e, o: e.update(device_method="guess"), "unknown device_method 'guess' (expected one of ['cuda-graph', "),
    (lambda e, o: o["fingerprint"].update(id="cpu-amd-epyc-2c-torch2.13", device="cuda"),
     "fingerprint id 'cpu-amd-epyc-2c-torch2.13' names a cpu machine, its \"device\" is 'cuda'"),
], ids=["ok-without-samples", "ok-without-time", "spread-of-one-run", "unknown-tier", "negative-probe", "text-probe",
        "unknown-timer",
        "unknown-device-method", "id-of-another-device-kind"])
def test_check_refuses_what_recording_never_writes(tmp_path, capsys, edit, words):
    # each hand edit had passed `attnsuite check` with "ok"
    good = tmp_path / "b.json"
    run_cli("record", write_result(tmp_path / "r.json", [rec()]), "--baseline", good)
    obj = json.loads(good.read_text())
    edit(next(iter(obj["cases"].values())), obj)
    good.write_text(json.dumps(obj))
    assert run_cli("check", good)[0] == 2
    assert words in capsys.readouterr().err


def test_check_refuses_a_baseline_with_no_case(tmp_path, capsys):
    # it had read "ok ...: 0 cases"
    path = tmp_path / "b.json"
    run_cli("record", write_result(tmp_path / "r.json", [rec()]), "--baseline", path)
    obj = json.loads(path.read_text())
    obj["cases"] = {}
    path.write_text(json.dumps(obj))
    assert run_cli("check", path)[0] == 2
    assert f"baseline {path}: no case in it" in capsys.readouterr().err


def test_check_says_when_a_baseline_is_not_named_after_its_machine(tmp_path):
    path = tmp_path / "mine.json"
    run_cli("record", write_result(tmp_path / "r.json", [rec()]), "--baseline", path)
    code, out = run_cli("check", path)
    assert code == 0 and f"the gate looks for this machine's baseline as {FP_H100['id']}.json" in out


def test_report_writes_markdown_and_says_why_plots_are_missing(runs, tmp_path, monkeypatch):
    old, _, worse = runs
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out = run_cli("report", worse, "--baseline", old, "--markdown", tmp_path / "r.md", "--step-summary",
                        "--plots", tmp_path / "plots")
    assert code == 0
    assert (tmp_path / "r.md").read_text() == summary.read_text()
    try:
        import matplotlib  # noqa: F401
        assert re.search(r"\b\d+ plots? written to ", out) or "plots skipped: no ok case" in out, out
    except ImportError:
        assert "matplotlib is not installed" in out


def test_report_of_a_single_run_lists_its_cases(runs):
    code, out = run_cli("report", runs[0])
    assert code == 0 and "| fa-sweep | a | fwd |" in out


def test_module_entry_point_runs_and_pyproject_declares_the_attnsuite_script(runs):
    old, same, _ = runs
    proc = subprocess.run([sys.executable, "-m", "attnsuite.cli", "compare", str(old), str(same)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["attnsuite"] == "attnsuite.cli:main"


def test_check_accepts_the_committed_thresholds_file_beside_the_baselines(capsys):
    code, out = run_cli("check", ROOT / "baselines" / "thresholds.json")
    assert code == 0 and "thresholds" in out


def test_compare_with_an_event_time_only_cuda_baseline_does_not_gate_time_and_says_so(tmp_path):
    old = write_result(tmp_path / "old.json", [rec("a", device_ms=None, device_min_ms=None)])
    new = write_result(tmp_path / "new.json", [rec("a", median_ms=3.0)])
    code, out = run_cli("compare", old, new, "--all")
    assert code == 0
    row = next(l for l in out.splitlines() if l.startswith("same"))
    assert "not gated" in row and "1.000 ms -> 3.000 ms" in row  # event medians shown, not judged
    code, out = run_cli("compare", old, new, "--format", "json")
    assert "baseline has no device time: time not gated" in json.loads(out)["cases"][0]["message"]


def test_compare_labels_the_judged_device_statistic_and_shows_the_median_beside_it(runs):
    old, _, worse = runs
    _, out = run_cli("compare", old, worse)
    row = next(l for l in out.splitlines() if l.startswith("slower"))
    assert "device median" in row and "1.000 ms -> 1.300 ms" in row


@pytest.mark.parametrize("option", ["--workload", "--variant"])
def test_compare_with_a_filter_that_matches_no_case_is_an_error_naming_it(tmp_path, option):
    # a typo would otherwise "pass (no cases)" and a CI gate would judge nothing
    old = write_result(tmp_path / "o.json", [rec("a", workload="w1")])
    code, _ = run_cli("compare", old, old, option, "nosuch")
    assert code == 2


def test_compare_judges_only_what_the_new_run_selected_as_stored_in_its_json(tmp_path):
    old = write_result(tmp_path / "o.json", [rec("a", workload="w1"), rec("a", workload="w2"), rec("b", workload="w1")])
    new = write_result(tmp_path / "n.json", [rec("a", workload="w1")])
    obj = json.loads(new.read_text())
    obj["attnsuite"]["scope"] = {"workloads": ["w1"]}  # as a run with --attn-workload w1 stores it
    new.write_text(json.dumps(obj))
    code, out = run_cli("compare", old, new)
    assert code == 1 and "w1/b/" in out and "w2/a/" not in out, out  # b is selected and missing; w2 is outside
    obj["attnsuite"]["scope"] = {"workloads": "w1"}
    new.write_text(json.dumps(obj))
    code, _ = run_cli("compare", old, new)
    assert code == 2  # a malformed stored selection is a bad file, named


def test_compare_that_judges_no_case_is_an_error_not_a_pass(tmp_path):
    # --workload w2 names a workload of OLD only, and NEW selected w1: "PASS among 0 cases" had exited 0
    old = write_result(tmp_path / "o.json", [rec("a", workload="w1"), rec("a", workload="w2")])
    new = write_result(tmp_path / "n.json", [rec("a", workload="w1")])
    obj = json.loads(new.read_text())
    obj["attnsuite"]["scope"] = {"workloads": ["w1"]}
    new.write_text(json.dumps(obj))
    code, _ = run_cli("compare", old, new, "--workload", "w2")
    assert code == 2


def test_compare_of_files_that_share_no_case_is_a_usage_error_not_a_pass(tmp_path, capsys):
    # a float32 baseline against a bfloat16 run had read "PASS: no regression among 4 cases judged", exit 0
    old = write_result(tmp_path / "fp32.json", [rec("a", problem="b1-q64-h2-d16-nomask-fp32-cuda0"),
                                                rec("b", problem="b1-q64-h2-d16-nomask-fp32-cuda0")])
    new = write_result(tmp_path / "bf16.json", [rec("a", problem="b1-q64-h2-d16-nomask-bf16-cuda0"),
                                                rec("b", problem="b1-q64-h2-d16-nomask-bf16-cuda0")])
    obj = json.loads(new.read_text())
    obj["attnsuite"]["scope"] = {"dtypes": ["bfloat16"]}  # as a run with --attn-dtype bfloat16 stores it
    new.write_text(json.dumps(obj))
    code, _ = run_cli("compare", old, new)
    assert code == 2 and f"none of the 2 cases of {new} is in {old}" in capsys.readouterr().err


def test_compare_in_report_mode_never_headlines_fail_in_its_markdown_or_table(runs, tmp_path):
    # a PR comment had read "FAIL" over a job that exited 0
    old, _, worse = runs
    md = tmp_path / "cr.md"
    code, out = run_cli("compare", old, worse, "--gate", "report", "--markdown", md)
    text = md.read_text()
    assert code == 0 and "FAIL" not in out and "FAIL" not in text
    assert text.splitlines()[1].endswith("⚠️ **REPORTED** (gate in report mode: not failing)")
    code, out = run_cli("compare", old, worse, "--markdown", md)
    assert code == 1 and md.read_text().splitlines()[1].endswith("❌ **FAIL**")


@pytest.mark.parametrize("argv, option", [
    (["compare", "{old}", "{old}", "--markdown", "{dir}"], "--markdown"),
    (["compare", "{old}", "{old}", "--markdown", "{old}/x.md"], "--markdown"),
    (["report", "{old}", "--html", "{dir}"], "--html"),
    (["report", "{old}", "--markdown", "{dir}"], "--markdown"),
    (["report", "{old}", "--plots", "{old}"], "--plots"),
])
def test_an_output_option_that_cannot_be_written_is_a_usage_error_before_any_work(runs, tmp_path, capsys, argv,
                                                                                  option):
    # they had ended in a traceback with exit 1, the status that means "the gate failed"
    old = runs[0]
    (tmp_path / "adir").mkdir()
    code, out = run_cli(*[a.format(old=old, dir=tmp_path / "adir") for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {option} " in err and "Traceback" not in err, err
    assert out == ""  # refused before comparing or printing anything


@pytest.mark.parametrize("content, verdict", [
    ({"version": 1, "workload": {"decode": {"time_floor": 0.05}}}, "ok {path}: thresholds"),
    ({"version": 1, "workload": {"decode": {"time_floor": -1}}}, "time_floor"),  # checked as thresholds
])
def test_check_knows_a_thresholds_file_by_its_content_under_any_name(tmp_path, capsys, content, verdict):
    # a copy named th.json had been reported "not an attnsuite baseline"
    path = tmp_path / "th.json"
    path.write_text(json.dumps(content))
    code, out = run_cli("check", path)
    text = out + capsys.readouterr().err
    assert verdict.format(path=path) in text and "not an attnsuite baseline" not in text, text


@pytest.mark.parametrize("name", ["th.json", "thresholds.json.gz"])
def test_check_names_a_thresholds_file_with_a_key_named_twice_as_thresholds(tmp_path, capsys, name):
    # under another name it had been called a baseline ("error: baseline th.json: duplicate key"),
    # the strict reader refusing it before its kind was known
    path = tmp_path / name
    text = '{"version": 1, "default": {"time_floor": 0.1}, "default": {"time_floor": 0.2}}'.encode()
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    code, out = run_cli("check", path)
    err = capsys.readouterr().err
    assert code != 0 and f"error: thresholds {path}: duplicate key 'default'" in err, err


def test_compare_with_step_summary_alone_still_appends_the_diff(runs, tmp_path, monkeypatch):
    # --step-summary without --markdown had been ignored without a word: the CI job lost its summary
    old, _, worse = runs
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, _ = run_cli("compare", old, worse, "--gate", "report", "--step-summary")
    assert code == 0 and summary.read_text().startswith("<!-- attnsuite-gate -->")


def test_compare_with_step_summary_and_no_job_summary_says_so_on_stderr(runs, monkeypatch, capsys):
    # it had said nothing (report says "GITHUB_STEP_SUMMARY is not set"); stdout stays the JSON asked for
    old, _, worse = runs
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    code, out = run_cli("compare", old, worse, "--gate", "report", "--step-summary", "--format", "json")
    assert code == 0 and json.loads(out)
    assert "GITHUB_STEP_SUMMARY is not set: no job summary written" in capsys.readouterr().err


def test_report_step_summary_top_without_html_is_refused(runs, tmp_path, monkeypatch, capsys):
    # it had written nothing and said nothing, exit 0 (an outside tester's trial)
    old, _, _ = runs
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, _ = run_cli("report", old, "--step-summary-top")
    assert code == 2 and "--step-summary-top appends the top of the HTML report to the job summary: give --html" \
        in capsys.readouterr().err
    assert not summary.exists()


@pytest.fixture
def interrupted_run(tmp_path, runs):
    from gatehelp import result_json

    obj = result_json([rec("a", median_ms=1.005)])
    obj["attnsuite"]["interrupted"] = "interrupted after 1 of 3 selected cases; 2 did not run"
    obj["attnsuite"]["scope"] = {"keys": [rec("a").key]}  # as the gate stores it: what an interrupted run ran
    path = tmp_path / "interrupted.json"
    path.write_text(json.dumps(obj))
    return runs[0], path


@pytest.mark.parametrize("gate_mode, status", [("enforce", 1), ("report", 0)])
def test_compare_of_an_interrupted_run_never_reads_as_a_pass(interrupted_run, tmp_path, gate_mode, status):
    # it had printed "PASS" and a green heading and exited 0, calling the cases it never reached out of scope
    old, cur = interrupted_run
    md = tmp_path / "g.md"
    code, out = run_cli("compare", old, cur, "--gate", gate_mode, "--markdown", md)
    assert code == status, out
    lines = out.strip().splitlines()
    verdict = lines[-2] if gate_mode == "enforce" else lines[-1]
    assert verdict.startswith("INTERRUPTED (interrupted after 1 of 3 selected cases; 2 did not run): "), out
    if gate_mode == "enforce":  # why the status is 1 where the verdict line reads a pass over what ran
        assert lines[-1] == (f"exit status 1: {cur} comes from a session that was interrupted after 1 of 3 "
                             "selected cases; 2 did not run: it answers only for the cases it ran, so it is not "
                             "a pass"), out
    text = md.read_text()
    assert "### attnsuite regression gate: ⏹️ **INTERRUPTED** (only the cases that ran were judged: " in text
    assert "selected but not reached before the run was interrupted" in text and "✅ pass\n" not in text


def test_the_gate_json_of_an_interrupted_comparison_says_so(interrupted_run):
    from attnsuite import baseline as bl
    from attnsuite import gate

    old, cur = interrupted_run
    from attnsuite.verdict import ThresholdConfig

    cmp = gate.judge_runs(bl.load_run(old), bl.load_run(cur), thresholds=ThresholdConfig())
    assert cmp.to_json()["interrupted"] is True
    assert gate.judge_runs(bl.load_run(old), bl.load_run(old), thresholds=ThresholdConfig()).to_json()["interrupted"] is False


def test_report_of_an_interrupted_run_says_so_in_its_summary_and_html(interrupted_run, tmp_path):
    _, cur = interrupted_run
    html = tmp_path / "r.html"
    code, out = run_cli("report", cur, "--html", html)
    assert code == 0
    assert "INTERRUPTED (interrupted after 1 of 3 selected cases; 2 did not run)" in out
    assert "INTERRUPTED (interrupted after 1 of 3 selected cases; 2 did not run)" in html.read_text()


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_compare_says_in_every_format_that_the_new_run_carried_an_injected_slowdown(tmp_path, fmt):
    # the markdown said SIMULATED; the default table said only PASS over a slowed run
    old = write_result(tmp_path / "old.json", [rec("a"), rec("b")])
    slowed = write_result(tmp_path / "new.json", [rec("a", median_ms=1.3, extra={"injected_ms": 0.3}), rec("b")])
    code, out = run_cli("compare", old, slowed, "--format", fmt, "--gate", "report")
    line = "SIMULATED: 1 case ran with a slowdown injected (--attn-inject-slowdown: a (1))"
    assert code == 0 and line in (json.loads(out)["simulated"] if fmt == "json" else out), out


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_compare_against_a_slowed_reference_says_so_in_every_format(tmp_path, fmt):
    # a run slowed 3x used as OLD made the code read 71.5% faster, with no word of the injection
    from gatehelp import result_json

    obj = result_json([rec("a", median_ms=3.0, extra={"injected_ms": 2.0}), rec("b")])
    obj["attnsuite"]["inject_slowdown"] = {"a": 2.0}
    slowed = tmp_path / "slowed.json"
    slowed.write_text(json.dumps(obj))
    new = write_result(tmp_path / "new.json", [rec("a"), rec("b")])
    code, out = run_cli("compare", slowed, new, "--format", fmt, "--gate", "report")
    notes = "\n".join(json.loads(out)["notes"]) if fmt == "json" else out
    assert code == 0 and "SIMULATED reference: " in notes, out
    assert ("was run with --attn-inject-slowdown a=2.0 (a simulated slowdown): its times are not the code's own"
            in notes), out


def test_record_of_two_cpu_models_says_it_refuses_to_record_not_to_compare(tmp_path, capsys):
    # it had said "refusing to compare runs from different machines ... the baseline was recorded on"
    # over two result files being recorded
    amd = {**FP_CPU, "cpu_model": "AMD EPYC"}
    a = write_result(tmp_path / "a.json", [rec("a", device_ms=None, timer="perf_counter")], fingerprint=amd)
    b = write_result(tmp_path / "b.json", [rec("a", device_ms=None, timer="perf_counter")],
                     fingerprint={**amd, "cpu_model": "Intel Xeon"})
    code, _ = run_cli("record", a, b, "--baseline", tmp_path / "base.json")
    err = capsys.readouterr().err
    assert code == 2 and "refusing to record runs of different machines into one baseline: CPU model differs" in err
    assert "the first run AMD EPYC, another run Intel Xeon" in err and "baseline AMD" not in err, err


# --------------------------------------------------------------------------- a first-time user's trial


@pytest.mark.parametrize("extra, verdict", [
    ([], "NOT COMPARED: the run was not judged against a baseline"),
    (["--baseline", "{old}"], "REPORTED: 3 regressions among 3 cases judged"),
], ids=["run", "against-a-baseline"])
def test_report_with_html_prints_the_verdict_and_the_paths_written_not_the_whole_markdown(runs, tmp_path, extra,
                                                                                          verdict):
    # the whole markdown (~120 KB for a full-tier run) had been printed above the verdict
    old, _, worse = runs
    html = tmp_path / "r.html"
    code, out = run_cli("report", worse, *[a.format(old=old) for a in extra], "--html", html)
    assert code == 0 and html.is_file()
    assert "<!-- attnsuite-gate -->" not in out and "| workload |" not in out, out
    assert f"HTML report written to {html}" in out and verdict in out


def test_report_with_markdown_and_html_prints_both_paths_and_writes_the_markdown_only_to_its_file(runs, tmp_path):
    _, _, worse = runs
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    code, out = run_cli("report", worse, "--markdown", md, "--html", html)
    assert code == 0 and "<!-- attnsuite-gate -->" in md.read_text()
    assert "<!-- attnsuite-gate -->" not in out
    assert f"markdown written to {md}" in out and f"HTML report written to {html}" in out


def test_report_without_an_output_file_still_prints_the_markdown(runs):
    code, out = run_cli("report", runs[2])
    assert code == 0 and out.count("<!-- attnsuite-gate -->") == 1


def test_top_level_help_names_every_subcommand():
    # it had said "compare, record, report" over five subcommands
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"compare", "record", "report", "check", "ab"}
    for name in commands:
        assert name in parser.description, name


def test_every_positional_argument_of_every_subcommand_has_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {action.dest}" for name, sub in commands.items() for action in sub._actions
               if not action.option_strings and not action.help]
    assert missing == []


@pytest.mark.parametrize("make_parent, words", [(False, "does not exist"), (True, "is not a folder")],
                         ids=["missing", "a-file"])
def test_record_refuses_a_baseline_whose_folder_does_not_exist_as_it_refuses_dir(tmp_path, capsys, make_parent,
                                                                                   words):
    # --dir /nonexistent was refused while --baseline /tmp/x/y/z.json made the folders x/y
    parent = tmp_path / "x" / "y"
    if make_parent:
        parent.parent.mkdir()
        parent.write_text("a file")
    target = parent / "z.json"
    code, out = run_cli("record", write_result(tmp_path / "r.json", [rec("a")]), "--baseline", target)
    assert code == 2 and out == ""
    assert f"attnsuite record: error: --baseline {target}: its folder {parent} {words} (make it first)" in \
        capsys.readouterr().err
    assert not target.exists() and parent.exists() == make_parent


def failing_cases() -> list:
    return [rec("ok-one"), rec("err-a", outcome="error", median_ms=None), rec("err-b", outcome="error", median_ms=None),
            rec("num-a", outcome="numerics", median_ms=None), rec("num-b", outcome="numerics", median_ms=None)]


def test_record_says_how_many_recorded_cases_failed_by_outcome_and_records_them_as_they_are(tmp_path):
    # "5 added" had said nothing of 4 of them being errors and numerics failures
    code, out = run_cli("record", write_result(tmp_path / "r.json", failing_cases()), "--dir", tmp_path)
    assert code == 0 and "5 added" in out
    assert ("  4 recorded cases failed (2 numerics, 2 error): a later run is judged against those outcomes "
            "(e.g. fa-sweep/err-a/fwd/") in out, out
    cases = json.loads((tmp_path / f"{FP_H100['id']}.json").read_text())["cases"]
    assert sorted(e["outcome"] for e in cases.values()) == ["error", "error", "numerics", "numerics", "ok"]


def test_record_counts_no_failure_that_it_kept_off_a_measured_entry(tmp_path):
    b = tmp_path / "b.json"
    run_cli("record", write_result(tmp_path / "1.json", [rec("err-a"), rec("num-a")]), "--baseline", b)
    code, out = run_cli("record", write_result(tmp_path / "2.json", failing_cases()), "--baseline", b)
    assert code == 0 and "2 measured case(s) kept" in out
    assert "2 recorded cases failed (1 numerics, 1 error)" in out, out


def test_record_from_one_run_points_to_recording_from_three_and_from_three_does_not(tmp_path):
    files = [write_result(tmp_path / f"{i}.json", [rec("a", median_ms=1.0 + i / 100)]) for i in range(3)]
    _, one = run_cli("record", files[0], "--baseline", tmp_path / "one.json")
    _, three = run_cli("record", *files, "--baseline", tmp_path / "three.json")
    hint = "note: recorded from 1 run; a baseline is best recorded from three runs (docs/gate.md)"
    assert hint in one and hint not in three
    assert "failed" not in one  # an all-ok recording says nothing of failures


@pytest.mark.parametrize("side", ["OLD", "NEW"])
def test_a_gate_json_given_to_compare_is_named_as_one_on_either_side(tmp_path, capsys, side):
    # as NEW it had read only 'no "benchmarks" list: not a pytest-benchmark result file'
    result = write_result(tmp_path / "r.json", [rec()])
    gate_json = tmp_path / "gate.json"
    gate_json.write_text(json.dumps({"compared": True, "failed": False, "cases": []}))
    args = [gate_json, result] if side == "OLD" else [result, gate_json]
    assert run_cli("compare", *args)[0] == 2
    assert "this is a gate JSON (a run's verdicts, --attn-gate-json), not a" in capsys.readouterr().err


def test_compare_names_both_files_at_the_top(tmp_path):
    # the terminal output had named OLD only, and NEW nowhere
    old = write_result(tmp_path / "old.json", [rec()])
    new = write_result(tmp_path / "new.json", [rec()])
    code, out = run_cli("compare", old, new)
    lines = out.splitlines()
    assert code == 0 and any(l.startswith("reference: ") and str(old) in l for l in lines), out
    assert any(l.startswith("compared with it: ") and str(new) in l for l in lines), out


def test_each_input_given_a_file_of_another_kind_names_what_it_is_and_what_belonged_there(tmp_path, capsys):
    # compare and report had said "not a pytest-benchmark result file" of a thresholds file or a gate JSON
    # (where a baseline is as welcome), "result file ...: no case in it" of an empty baseline, and the gate
    # JSON readers 'no "cases" list' of a baseline (whose cases are an object) (an outside tester's trial)
    result = write_result(tmp_path / "r.json", [rec()])
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"version": 1, "default": {}}))
    baseline = tmp_path / "b.json"
    assert run_cli("record", result, "--baseline", baseline)[0] == 0
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**json.loads(baseline.read_text()), "cases": {}}))
    said = {
        ("compare", thresholds, result): f"OLD (a result or baseline file) {thresholds}: this is a thresholds file "
                                         "(the gate's noise floors, --attn-thresholds), not a result file or a baseline",
        ("report", result, "--baseline", thresholds): f"--baseline file {thresholds}: this is a thresholds file",
        ("compare", result, empty): f"NEW (a baseline) {empty}: no case in it: nothing to compare",
        ("report", result, "--gate-json", baseline): f"--gate-json {baseline}: this is an attnsuite baseline, not a "
                                                     "gate JSON (a run's verdicts, --attn-gate-json)",
    }
    for args, words in said.items():
        code, _ = run_cli(*args)
        err = capsys.readouterr().err
        assert code == 2 and words in err, (args, err)
    from attnsuite import ab

    with pytest.raises(ab.AbError, match=re.escape(f"--cases-from {baseline}: this is an attnsuite baseline, not a "
                                                   "gate JSON")):
        ab.cases_from_gate_json(baseline)
