"""The gate inside pytest: a tiny benchmark project run with pytester (in process, no real timing).

The project (gatehelp.CONFTEST, gatehelp.BENCH) writes synthetic records read from cases.json and
adds the machine fingerprint to the JSON the way the benchmarks plugin does, so each scenario
controls exactly what the gate sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from attnsuite import baseline as bl
from attnsuite.record import CaseRecord
from attnsuite import fingerprint
from gatehelp import BENCH, CONFTEST, FP_CPU, fp

pytest_plugins = ["pytester"]

PROBLEM = "b1-q256-h2-d64-causal-fp32-cpu"


def case(variant, **kw):
    d = dict(workload="tiny", variant=variant, mode="fwd", problem=PROBLEM, outcome="ok", median_ms=2.0,
             iqr_ms=0.01, samples=20, peak_mem_bytes=64 << 20, backend="math", timer="perf_counter")
    d.update(kw)
    return d


CASES = [case("alpha"), case("beta"), case("gamma", outcome="oom", median_ms=None, oom_bytes=1 << 34)]
# A CPU machine: its time is the timer's own (CUDA cases would need device time to be judged).
FP = FP_CPU
BASELINE = f"baselines/{FP['id']}.json"
QUIET = ("-p", "no:cacheprovider", "--benchmark-only", "--benchmark-disable-gc")


@pytest.fixture
def project(pytester, monkeypatch):
    # the header's fingerprint: the project's machine, not the one running these tests
    monkeypatch.setattr(fingerprint, "machine_info", lambda device="cpu": dict(FP))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bench=BENCH)
    set_cases(pytester, CASES)
    (pytester.path / "fingerprint.json").write_text(json.dumps(FP))
    return pytester


def set_cases(pytester, cases):
    (pytester.path / "cases.json").write_text(json.dumps(cases))


def record(pytester, cases=CASES):
    """Write the baseline the way --attn-record-baseline would, without spending a pytest run."""
    records = {r.key: r for r in (CaseRecord(**c) for c in cases)}
    baseline, _ = bl.merge_into(None, records, FP)
    bl.save_baseline(baseline, pytester.path / BASELINE)
    return json.loads((pytester.path / BASELINE).read_text())


def doctor(pytester, variant, **changes):
    path = pytester.path / BASELINE
    obj = json.loads(path.read_text())
    key = f"tiny/{variant}/fwd/{PROBLEM}"
    obj["cases"][key].update(changes)
    obj["cases"][key] = {k: v for k, v in obj["cases"][key].items() if v is not None}
    path.write_text(json.dumps(obj))


def test_without_a_baseline_the_run_says_so_plainly_and_passes(project):
    res = project.runpytest(*QUIET, "--benchmark-json=out.json")
    assert res.ret == 0
    res.stdout.fnmatch_lines(["*attnsuite regression gate*", "no baseline for this machine: looked for*",
                              "*make this machine's baseline with --attn-record-baseline*"])
    assert json.loads((project.path / "out.json").read_text())["attnsuite"]["fingerprint"]["id"] == FP["id"]


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_a_run_that_requires_a_baseline_and_finds_none_fails_naming_why(project, mode):
    # a CI runner whose machine drifted from every stored baseline had passed by comparing nothing
    res = project.runpytest(*QUIET, f"--attn-gate={mode}", "--attn-require-baseline", "--attn-markdown=gate.md",
                            "--attn-gate-json=gate.json")
    assert res.ret == 1, res.stdout.str()
    res.stdout.fnmatch_lines(["FAILED no baseline to judge this run against, and --attn-require-baseline asks for one",
                              "FAILED attnsuite-gate::no-baseline*"])
    md = (project.path / "gate.md").read_text()  # headed by the summary's first line
    first = md.split("**", 1)[1]  # after the PR comment's marker
    assert first.startswith("FAIL: no baseline to judge this run against") and "record one with" in md, md[:600]
    assert "> no baseline for this machine: looked for" in md, md[:600]
    verdicts = json.loads((project.path / "gate.json").read_text())
    assert verdicts["compared"] is False and verdicts["failed"] is True


def test_a_run_that_requires_a_baseline_and_has_one_or_records_one_is_not_failed_by_it(project):
    res = project.runpytest(*QUIET, "--attn-require-baseline", "--attn-record-baseline")  # recording: it makes one
    assert res.ret == 0, res.stdout.str()
    res = project.runpytest(*QUIET, "--attn-require-baseline")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["pass (3 same)"])
    res = project.runpytest(*QUIET, "--attn-require-baseline", "--attn-gate=off")  # off compares nothing, asked
    assert res.ret == 0, res.stdout.str()


@pytest.mark.parametrize("baseline_cases", [[case("delta")], []], ids=["other cases", "no case"])
def test_a_run_that_requires_a_baseline_fails_when_its_baseline_judges_none_of_its_cases(project, baseline_cases):
    # a CI gate requiring a baseline had passed (exit 0, no warning) against a baseline that shared no case
    # with the run, where `attnsuite compare` and `check` refuse the same files (an outside tester's trial)
    record(project, baseline_cases)
    res = project.runpytest(*QUIET, "--attn-require-baseline", "--attn-markdown=gate.md", "--attn-gate-json=gate.json")
    out = res.stdout.str()
    assert res.ret == 1, out
    assert f"{BASELINE} holds none of this run's 3 cases, so nothing was judged" in out, out
    res.stdout.fnmatch_lines(["FAILED attnsuite-gate::no-baseline*"])
    assert json.loads((project.path / "gate.json").read_text())["failed"] is True
    assert (project.path / "gate.md").read_text().split("**", 1)[1].startswith("FAIL")


@pytest.mark.parametrize("required", [True, False], ids=["required", "not required"])
def test_the_benchmarks_against_a_baseline_with_no_case_fail_before_running_or_warn_that_nothing_was_compared(
        tmp_path, required):
    # required: refused before any case runs (the project above has no fingerprint before its cases run, so
    # it meets such a baseline at the end); not required: a pass, and a GitHub Actions job's page says that
    # nothing was compared, as it does for a run with no baseline (it had said nothing)
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shipped = json.loads(next((root / "baselines").glob("cpu-*.json")).read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**shipped, "cases": {}}))
    env = {**os.environ, "GITHUB_ACTIONS": "true"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(root / "pyproject.toml"), str(root / "bench"),
                           "--benchmark-only", "-p", "no:cacheprovider", "--attn-device=cpu", "--attn-tier=quick",
                           "--attn-workload=gpt2-mha", "--attn-only=sdpa", "--attn-mode=fwd", f"--attn-baseline={empty}",
                           "--attn-gate=enforce", *(["--attn-require-baseline"] if required else []),
                           f"--benchmark-json={tmp_path / 'out.json'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    out = done.stdout + done.stderr
    if required:
        assert done.returncode == 4, out[-3000:]
        assert f"{empty} holds no case, so a gate against it judges nothing" in out, out[-3000:]
        assert "attnsuite summary" not in out  # no case ran
    else:
        assert done.returncode == 0, out[-3000:]
        assert "::warning title=attnsuite gate%3A nothing compared::NOT COMPARED: no case (of 1) is in the baseline" \
            in out, out[-3000:]


def test_recording_from_another_project_into_this_checkouts_baselines_is_refused_before_the_run(project, monkeypatch):
    # pytest /path/to/attnsuite/bench ... --attn-record-baseline from a team's repository had written the team's
    # cases into the suite's shipped (tracked) baseline file: rootdir/baselines is the default folder
    team = project.path.parent / f"{project.path.name}-team"
    (team / "baselines").mkdir(parents=True)
    monkeypatch.chdir(team)
    args = (str(project.path / "test_bench.py"), "--rootdir", str(project.path), *QUIET, "--attn-record-baseline")
    res = project.runpytest(*args)
    assert res.ret == 4, res.stdout.str()
    assert "it would write into this attnsuite checkout's baselines folder" in res.stderr.str() + res.stdout.str()
    assert not (project.path / BASELINE).exists()
    res = project.runpytest(*args, "--attn-baselines-dir", str(team / "baselines"))  # the team's own folder
    assert res.ret == 0, res.stdout.str()
    assert (team / BASELINE).is_file() and not (project.path / BASELINE).exists()


def test_record_then_an_unchanged_rerun_passes(project):
    res = project.runpytest(*QUIET, "--attn-record-baseline", "--attn-markdown=gate.md")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["baseline recorded: *: 3 added, 0 updated, 0 unchanged, 0 removed"])
    assert "make this machine's baseline" not in res.stdout.str()  # it was making it
    md = (project.path / "gate.md").read_text()  # its first line had read NOT COMPARED, as if nothing happened
    first = md.split("**", 2)[1]  # after the PR comment's marker
    assert first.startswith("RECORDED: nothing was compared; this run is recorded as the baseline "), md[:300]
    assert first.endswith(f"{FP['id']}.json"), md[:300]
    obj = json.loads((project.path / BASELINE).read_text())
    assert len(obj["cases"]) == 3 and obj["fingerprint"]["id"] == FP["id"]
    stamps = [e.pop("recorded") for e in obj["cases"].values()]  # when and at which commit it measured them
    assert obj == record(project)  # the plugin writes what the store writes
    assert all(s.get("at", "").endswith("Z") and set(s) <= {"at", "commit"} for s in stamps), stamps
    res = project.runpytest(*QUIET)
    assert res.ret == 0
    res.stdout.fnmatch_lines([f"baseline *{FP['id']}.json (fingerprint *)", "pass (3 same)"])


def test_baseline_doctored_faster_smaller_and_free_of_oom_fails_with_the_three_verdicts(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)  # CPU flags only more than a doubling (docs/gate.md)
    doctor(project, "beta", peak_mem_bytes=16 << 20)
    doctor(project, "gamma", outcome="ok", median_ms=3.0, oom_bytes=None, detail=None)
    res = project.runpytest(*QUIET)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines([
        f"FAILED newly-oom: tiny/gamma/fwd/{PROBLEM}: now out of memory (asked for 16 GiB)*",
        f"FAILED slower: tiny/alpha/fwd/{PROBLEM}: slower by 300.0% (median 0.5000 ms -> 2.000 ms*",
        f"FAILED memory-growth: tiny/beta/fwd/{PROBLEM}: peak memory +48 MiB*",
    ])
    # pytest's own short summary and closing line carry the gate's failures
    res.stdout.fnmatch_lines([f"FAILED attnsuite-gate::tiny/alpha/fwd/{PROBLEM}*slower*"])
    res.stdout.re_match_lines([r".*3 failed, 3 passed.*"])


def test_a_case_that_stops_running_is_missing_but_a_deselected_one_is_not(project):
    record(project)
    set_cases(project, CASES[:2])
    res = project.runpytest(*QUIET)
    assert res.ret == 1
    res.stdout.fnmatch_lines([f"FAILED missing: tiny/gamma/fwd/{PROBLEM}: not run*"])
    set_cases(project, CASES)
    res = project.runpytest(*QUIET, "-k", "alpha or beta")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["pass (2 same); 1 baseline case outside this run's scope"])


def test_report_mode_shows_regressions_without_failing(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)
    res = project.runpytest(*QUIET, "--attn-gate", "report", "--attn-markdown", "gate.md")
    assert res.ret == 0
    res.stdout.fnmatch_lines(["REPORTED slower: tiny/alpha/*"])
    assert "**slower**" in (project.path / "gate.md").read_text()


def test_report_mode_says_its_regressions_would_fail_an_enforcing_gate_not_that_they_fail(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)
    project.runpytest(*QUIET, "--attn-gate", "report", "--attn-markdown", "gate.md")
    text = (project.path / "gate.md").read_text()
    assert "these would fail an enforcing gate" in text and "these fail the gate" not in text


def test_a_recording_session_never_reads_fail_over_a_job_that_passed(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)
    res = project.runpytest(*QUIET, "--attn-record-baseline", "--attn-markdown", "gate.md", "--attn-gate-json", "g.json")
    assert res.ret == 0
    text = (project.path / "gate.md").read_text()
    assert "FAIL" not in text and "REPORTED" in text
    assert json.loads((project.path / "g.json").read_text())["gate_mode"] == "report"
    res.stdout.fnmatch_lines(["REPORTED slower: tiny/alpha/*"])
    res.stdout.fnmatch_lines(["baseline recorded: *"])


@pytest.mark.parametrize("recording", [True, False], ids=["a recording run", "a run that records nothing"])
def test_a_recording_run_says_it_kept_the_improvements_and_never_advises_recording(project, recording):
    # a recording run had advised "refresh the baseline (--attn-record-baseline ...)" over figures it had
    # just recorded, and its summary and gate.md had never said it recorded
    record(project)
    doctor(project, "alpha", median_ms=8.0)  # this run's 2.0 ms is an improvement
    res = project.runpytest(*QUIET, *(["--attn-record-baseline"] if recording else []),
                            "--attn-markdown", "gate.md", "--attn-gate-json", "g.json")
    assert res.ret == 0
    out, md = res.stdout.str(), (project.path / "gate.md").read_text()
    recorded = json.loads((project.path / "g.json").read_text())["recorded"]
    said = f"this run was recorded into {project.path / BASELINE}, which now holds their new figures"
    advice = "refresh the baseline (--attn-record-baseline, or attnsuite record) to keep the new figures"
    if recording:
        assert recorded == str(project.path / BASELINE)
        assert f"1 improvement: {said}" in out and advice not in out and advice not in md
        head = md.split("Cases:")[0]  # the summary's head, as the last screen's (markdown-escaped)
        assert "> RECORDED: compared with the baseline as it was, then this run was recorded into " in head
        assert head.split("> RECORDED")[1].split("\n")[0].endswith(f"{FP['id']}.json")
    else:
        assert recorded is None and f"1 improvement: {advice}" in out and "RECORDED" not in out


def test_a_ctrl_c_while_the_summary_prints_says_what_the_run_wrote_without_a_traceback(project):
    # after the baseline was written, a Ctrl-C during the summary had shown a 60-line traceback from
    # inside another plugin's summary hook, and no word that the baseline had been recorded
    project.makeconftest(CONFTEST.replace('pytest_plugins = ["attnsuite.plugin_gate"]',
                                          'pytest_plugins = ["attnsuite.plugin_gate", "attnsuite.plugin_isolation"]')
                         + "\n\ndef pytest_terminal_summary(terminalreporter):\n"
                           "    import os, signal\n    os.kill(os.getpid(), signal.SIGINT)\n")
    res = project.runpytest_subprocess(*QUIET, "--attn-record-baseline", "--attn-markdown", "gate.md")
    text = res.stdout.str() + res.stderr.str()
    assert res.ret == pytest.ExitCode.INTERRUPTED, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "attnsuite: interrupted while the summary was printed; the run itself had finished" in text
    assert f"baseline recorded: {project.path / BASELINE}" in text and "markdown diff written to gate.md" in text
    assert json.loads((project.path / BASELINE).read_text())["cases"]


@pytest.mark.parametrize("worker", [False, True], ids=["the-controller", "an-xdist-worker"])
def test_only_the_process_that_prints_the_summary_treats_a_sigint_then_as_after_the_run(worker):
    # execnet signals SIGINT to a worker still busy 5 s after its controller's shutdown: in a worker
    # that is no Ctrl-C after the summary, and saying so had ended passing runs with that message
    from attnsuite.plugin_isolation import RaisedInterrupt

    config = types.SimpleNamespace(**({"workerinput": {"workerid": "gw0"}} if worker else {}))
    guard = RaisedInterrupt()
    guard.pytest_terminal_summary(None, 0, config)
    assert guard.summarising is (None if worker else config)


def test_a_corrupt_baseline_is_a_usage_error_naming_the_file(project):
    record(project)
    (project.path / BASELINE).write_text('{"schema": "attnsuite-baseline", "version": 1, "cases": {')
    res = project.runpytest(*QUIET)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stdout.fnmatch_lines([f"ERROR attnsuite gate: baseline *{FP['id']}.json: not valid JSON (truncated?)*"])


def test_a_corrupt_baseline_named_on_the_command_line_stops_the_run_before_benchmarks(project):
    (project.path / "bad.json").write_text("[]")
    res = project.runpytest(*QUIET, "--attn-baseline", "bad.json")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*attnsuite gate: baseline bad.json: top level is list*"])


def test_a_baseline_from_another_gpu_is_refused_unless_allowed(project):
    record(project)
    (project.path / "fingerprint.json").write_text(json.dumps(fp(FP, gpu_name="NVIDIA A100-SXM4-80GB")))
    res = project.runpytest(*QUIET)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stdout.fnmatch_lines(["*refusing to compare with *: the machines differ: GPU model differs*"])
    res = project.runpytest(*QUIET, "--attn-allow-mismatch")
    assert res.ret == 0
    res.stdout.fnmatch_lines(["note: compared despite: GPU model differs*"])


def test_recording_a_filtered_run_refreshes_only_the_cases_that_ran(project):
    before = record(project)
    set_cases(project, [case("alpha", median_ms=9.0), case("beta", median_ms=9.0), CASES[2]])
    res = project.runpytest(*QUIET, "--attn-record-baseline", "-k", "alpha")
    assert res.ret == 0
    res.stdout.fnmatch_lines(["baseline recorded: *: 0 added, 1 updated, 0 unchanged, 0 removed"])
    after = json.loads((project.path / BASELINE).read_text())
    assert after["cases"][f"tiny/alpha/fwd/{PROBLEM}"]["median_ms"] == 9.0
    assert after["cases"][f"tiny/beta/fwd/{PROBLEM}"] == before["cases"][f"tiny/beta/fwd/{PROBLEM}"]


def test_gate_off_does_nothing(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)
    res = project.runpytest(*QUIET, "--attn-gate", "off")
    assert res.ret == 0 and "attnsuite regression gate" not in res.stdout.str()


def test_a_case_that_runs_out_of_memory_before_timing_is_judged_not_missing(project):
    record(project)
    set_cases(project, CASES[:1] + CASES[2:])
    (project.path / "landed.json").write_text(json.dumps([case("beta", outcome="oom", median_ms=None,
                                                              oom_bytes=1 << 33)]))
    res = project.runpytest(*QUIET)
    assert res.ret == 1
    res.stdout.fnmatch_lines([f"FAILED newly-oom: tiny/beta/fwd/{PROBLEM}: now out of memory (asked for 8 GiB)*"])
    assert "FAILED missing" not in res.stdout.str()
    res.stdout.fnmatch_lines(["FAIL: 1 regression; verdicts: 1 newly-oom, 2 same"])


def test_volatile_fingerprint_fields_stay_out_of_the_recorded_baseline(project):
    (project.path / "fingerprint.json").write_text(json.dumps(fp(FP, gpu_clock_sm_mhz_at_start=1980)))
    res = project.runpytest(*QUIET, "--attn-record-baseline")
    assert res.ret == 0
    stored = json.loads((project.path / BASELINE).read_text())["fingerprint"]
    assert "gpu_clock_sm_mhz_at_start" not in stored and stored["cpu_model"] == FP["cpu_model"]


# --------------------------------------------------------------------------- options checked up front


@pytest.mark.parametrize("args, named", [
    pytest.param(("--attn-baseline", "nope.json"), "--attn-baseline nope.json: no such file",
                 id="a baseline file that does not exist"),
    pytest.param(("--attn-baseline", "baselines"), "--attn-baseline baselines: is a folder",
                 id="a baseline that is a folder"),
    pytest.param(("--attn-baselines-dir", "nowhere"), "--attn-baselines-dir nowhere: no such folder",
                 id="a baselines folder that does not exist"),
    pytest.param(("--attn-baselines-dir", "cases.json"), "--attn-baselines-dir cases.json: is not a folder",
                 id="a baselines folder that is a file"),
    pytest.param(("--attn-thresholds", "t.json"), "--attn-thresholds t.json: no such file",
                 id="a thresholds file that does not exist"),
    pytest.param(("--attn-gate-json", "baselines"), "--attn-gate-json baselines: is a folder",
                 id="a gate JSON path that is a folder"),
])
def test_a_bad_path_option_is_a_usage_error_naming_it_before_any_benchmark_runs(project, args, named):
    (project.path / "baselines").mkdir()
    res = project.runpytest(*QUIET, *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*attnsuite gate: {named}*"])
    assert "test_bench.py" not in res.stdout.str()  # nothing was collected or run


@pytest.mark.parametrize("args, named", [
    pytest.param(("--attn-markdown", BASELINE), f"--attn-markdown {BASELINE}: is a file of the baselines folder",
                 id="the markdown over the baseline in use"),
    pytest.param(("--attn-gate-json", "baselines/thresholds.json"),
                 "--attn-gate-json baselines/thresholds.json: is a file of the baselines folder",
                 id="the verdicts over the thresholds"),
    pytest.param(("--attn-markdown", "cases.json", "--attn-baseline", "cases.json"),
                 "--attn-markdown cases.json: is --attn-baseline", id="the markdown over a named baseline"),
    pytest.param(("--attn-markdown", "out.md", "--attn-gate-json", "out.md"),
                 "--attn-markdown out.md: --attn-gate-json names the same file", id="two outputs into one file"),
])
def test_an_output_option_naming_a_file_the_run_reads_is_refused_and_the_file_kept(project, args, named):
    # --attn-markdown naming the shipped baseline had written the diff over it and exited 0
    record(project)
    (project.path / "baselines" / "thresholds.json").write_text('{"version": 1}')
    kept = {p: p.read_bytes() for p in project.path.rglob("*.json")}
    res = project.runpytest(*QUIET, *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*attnsuite gate: {named}*"])
    assert {p: p.read_bytes() for p in project.path.rglob("*.json")} == kept


def test_a_baseline_to_be_recorded_may_not_exist_yet(project):
    res = project.runpytest(*QUIET, "--attn-baseline", "new/b.json", "--attn-record-baseline")
    assert res.ret == 0, res.stdout.str()
    assert json.loads((project.path / "new" / "b.json").read_text())["cases"]


# --------------------------------------------------------------------------- confirmation


@pytest.fixture
def confirming(project):
    from gatehelp import CONFIRM_PLUGIN

    project.makeconftest(CONFTEST + CONFIRM_PLUGIN)
    record(project)
    doctor(project, "alpha", median_ms=0.5)  # this run's alpha (2.0 ms) is +300%: slower on CPU
    return project


def _confirm_calls(project):
    path = project.path / "confirm_calls.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("second_ms, ret, line", [
    pytest.param(2.0, 1, f"FAILED slower: tiny/alpha/fwd/{PROBLEM}: slower by 300.0%*confirmed: first +300.0%, "
                         "second +300.0%*", id="a slowdown the second measurement agrees with fails"),
    pytest.param(0.5, 0, f"NOT GATING same: tiny/alpha/fwd/{PROBLEM}: not confirmed: first +300.0%, second +0.0%*",
                 id="a slowdown the second measurement does not show passes with both numbers"),
])
def test_a_flagged_case_is_measured_again_and_fails_only_if_confirmed(confirming, second_ms, ret, line):
    (confirming.path / "confirm.json").write_text(json.dumps({"alpha": {"median_ms": second_ms}}))
    res = confirming.runpytest(*QUIET, "--benchmark-json=out.json")
    assert res.ret == ret, res.stdout.str()
    res.stdout.fnmatch_lines([line])
    assert _confirm_calls(confirming) == [[f"tiny/alpha/fwd/{PROBLEM}"]]  # once, only the flagged case
    out = json.loads((confirming.path / "out.json").read_text())
    alpha = next(b for b in out["benchmarks"] if b["extra_info"]["variant"] == "alpha")
    assert alpha["extra_info"]["extra"]["confirm"]["median_ms"] == second_ms  # the JSON carries both


def test_no_confirm_judges_the_first_measurement_and_measures_nothing_again(confirming):
    (confirming.path / "confirm.json").write_text(json.dumps({"alpha": {"median_ms": 0.5}}))
    res = confirming.runpytest(*QUIET, "--attn-no-confirm")
    assert res.ret == 1 and _confirm_calls(confirming) is None


def test_nothing_is_measured_again_without_a_baseline_or_when_recording(confirming):
    (confirming.path / "confirm.json").write_text(json.dumps({"alpha": {"median_ms": 0.5}}))
    assert confirming.runpytest(*QUIET, "--attn-record-baseline").ret == 0
    (confirming.path / BASELINE).unlink()
    assert confirming.runpytest(*QUIET).ret == 0
    assert _confirm_calls(confirming) is None


def test_an_interrupted_session_says_its_findings_were_measured_once_and_how_to_confirm_them(confirming):
    # s22 on an H200: a run stopped by the CI step's limit listed a +6.3% "regression" that its
    # resumed run measured again at +0.8%; nothing had said the first was unconfirmed
    (confirming.path / "confirm.json").write_text(json.dumps({"alpha": {"median_ms": 0.5}}))
    confirming.makepyfile(test_zz=INTERRUPTS["KeyboardInterrupt"])
    # not --benchmark-only (QUIET): it would skip test_zz, which is no benchmark
    res = _interrupted(confirming, "-p", "no:cacheprovider", "--attn-markdown", "gate.md", "test_bench.py",
                       "test_zz.py")
    assert _confirm_calls(confirming) is None  # no confirmation pass after an interrupt
    note = ("1 case(s) judged slower or memory-growth were measured once: the session stopped before its "
            "confirmation pass, which measures them again; the same command with --attn-resume carries on "
            "and confirms or clears them")
    assert note in res.stdout.str()
    assert note in (confirming.path / "gate.md").read_text()


def test_an_interrupted_session_without_confirmation_has_no_measured_once_note(confirming):
    # --attn-no-confirm asks for one measurement: no confirmation pass was skipped, so none is promised
    (confirming.path / "confirm.json").write_text(json.dumps({"alpha": {"median_ms": 0.5}}))
    confirming.makepyfile(test_zz=INTERRUPTS["KeyboardInterrupt"])
    res = _interrupted(confirming, "-p", "no:cacheprovider", "--attn-no-confirm", "test_bench.py", "test_zz.py")
    out = res.stdout.str()
    assert "slower" in out and "measured once" not in out, out[-2000:]


# --------------------------------------------------------------------------- gate JSON, interruption


def test_gate_json_lists_every_case_with_its_verdict_flags_and_confirmation(confirming):
    (confirming.path / "confirm.json").write_text(json.dumps({"alpha": {"median_ms": 2.0}}))
    res = confirming.runpytest(*QUIET, "--attn-gate-json", "out/gate.json")
    assert res.ret == 1
    data = json.loads((confirming.path / "out" / "gate.json").read_text())
    cases = {c["key"].split("/")[1]: c for c in data["cases"]}
    assert data["failed"] is True and cases["alpha"]["flags"] == ["slower"] and cases["alpha"]["confirmed"] is True
    assert cases["beta"]["verdict"] == "same" and cases["beta"]["confirmed"] is None


def _interrupted(pytester, *args):
    """A run that a test of its own stops (INTERRUPTS), in this process: the KeyboardInterrupt ends the inner
    session as it ends a session of its own and is not raised again in this one (no_reraise_ctrlc)."""
    return pytester.runpytest(*args, no_reraise_ctrlc=True)


INTERRUPTS = {
    "KeyboardInterrupt": "def test_zz_stop():\n    raise KeyboardInterrupt\n",
    "-x after a failure": "def test_zz_stop():\n    assert False, 'a failing test'\n",
}


@pytest.mark.parametrize("how", list(INTERRUPTS))
def test_recording_from_an_interrupted_session_writes_nothing_and_says_so(project, how):
    project.makepyfile(test_zz=INTERRUPTS[how])
    res = _interrupted(project, "-p", "no:cacheprovider", "--attn-record-baseline", "-x", "test_bench.py",
                       "test_zz.py")
    assert not (project.path / BASELINE).exists()
    res.stdout.fnmatch_lines(["baseline NOT recorded: the session was * nothing was written"])


def test_the_json_of_an_interrupted_session_says_so_and_attnsuite_record_refuses_it(project):
    # `attnsuite record` of the same session's JSON had recorded the partial run without a word
    project.makepyfile(test_zz=INTERRUPTS["-x after a failure"])
    _interrupted(project, "-p", "no:cacheprovider", "-x", "--benchmark-json=out.json", "test_bench.py", "test_zz.py")
    meta = json.loads((project.path / "out.json").read_text())["attnsuite"]
    assert meta["interrupted"].startswith("stopped early")
    done = subprocess.run([sys.executable, "-m", "attnsuite", "record", "out.json", "--baseline", "b.json"],
                          cwd=project.path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "the session that wrote it was stopped early" in done.stderr, done.stderr
    assert not (project.path / "b.json").exists()


def test_an_interrupted_session_never_reads_as_a_plain_pass(project):
    project.makepyfile(test_zz=INTERRUPTS["KeyboardInterrupt"])
    record(project)  # the baseline --attn-record-baseline writes (test_record_then_an_unchanged_rerun_passes)
    res = _interrupted(project, "-p", "no:cacheprovider", "--attn-markdown", "gate.md", "test_bench.py", "test_zz.py")
    md = (project.path / "gate.md").read_text()
    # a pass of part of a run is not a pass: no PASS word ("INTERRUPTED (...): PASS: ..." had read as one)
    assert "**INTERRUPTED (interrupted after 3 cases): no regression among" in md, md[:1500]
    assert "(of the cases that ran)**" in md and "PASS" not in md.split("\n", 1)[0], md[:1500]


# --------------------------------------------------------------------------- header and fallback


FP_OTHER_CPU = dict(FP, id="cpu-intel-xeon-2c-torch2.13", cpu_model="Intel Xeon", arch="x86_64", cpu_usable=2)


def test_a_fallback_baseline_is_named_at_the_top_and_at_the_end_with_its_promise(project, monkeypatch):
    this = dict(FP, arch="x86_64", cpu_usable=2)
    (project.path / "fingerprint.json").write_text(json.dumps(this))
    monkeypatch.setattr(fingerprint, "machine_info", lambda device="cpu": dict(this))
    records = {r.key: r for r in (CaseRecord(**c) for c in CASES)}
    baseline, _ = bl.merge_into(None, records, FP_OTHER_CPU)
    bl.save_baseline(baseline, project.path / "baselines" / f"{FP_OTHER_CPU['id']}.json")
    res = project.runpytest(*QUIET, "--attn-markdown", "gate.md")
    assert res.ret == 0, res.stdout.str()
    lines = res.stdout.lines
    top = next(i for i, l in enumerate(lines) if l.startswith("attnsuite gate: baseline ") and "fallback" in l)
    end = next(i for i, l in enumerate(lines) if l.startswith("baseline ") and "fallback" in l)
    assert top < next(i for i, l in enumerate(lines) if l.startswith("test_bench.py")) < end
    assert "Intel Xeon" in lines[end] and "rough guide" in lines[end]
    md = (project.path / "gate.md").read_text().splitlines()
    # gate.md opens with the run's summary: the verdict, then the (fallback) baseline it came from
    assert md[3].startswith("**PASS") and md[5].startswith("> baseline ") and "fallback" in md[5]


def test_no_header_line_when_no_benchmark_is_run(project):
    res = project.runpytest("-p", "no:cacheprovider", "--collect-only", "test_bench.py")
    assert "attnsuite gate:" not in res.stdout.str()


def test_the_calibration_of_this_instance_and_the_baseline_head_the_summary(project):
    records = {r.key: r for r in (CaseRecord(**c) for c in CASES)}
    baseline, _ = bl.merge_into(None, records, FP, calibration={"mem_bandwidth_gbs": 20.0, "matmul_tflops": 0.5})
    bl.save_baseline(baseline, project.path / BASELINE)
    (project.path / "calibration.json").write_text(json.dumps({"mem_bandwidth_gbs": 19.0, "matmul_tflops": 0.5}))
    res = project.runpytest(*QUIET)
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["instance: copy 19 GB/s, matmul 0.5 TFLOP/s; baseline: 20 GB/s, 0.5 TFLOP/s (-5%, +0%)"])


# --------------------------------------------------------------------------- crash and timeout


@pytest.mark.parametrize("outcome", ["crash", "timeout"])
def test_a_case_that_now_crashes_or_times_out_fails_the_gate(project, outcome):
    record(project)
    set_cases(project, [case("alpha", outcome=outcome, median_ms=None, detail="worker died: signal 11")] + CASES[1:])
    res = project.runpytest(*QUIET)
    assert res.ret == 1
    res.stdout.fnmatch_lines([f"FAILED newly-failing: tiny/alpha/fwd/{PROBLEM}: now {outcome}: worker died*"])


def test_a_wide_time_floor_is_named_in_the_comparison_and_a_narrow_one_is_not():
    # a CPU case 99.6% slower had read "same" with no word that the CPU floor is 100%
    from attnsuite import gate
    from attnsuite.verdict import ThresholdConfig

    note = gate.band_note(ThresholdConfig(), "cpu")
    assert note is not None and note.startswith("time on cpu is judged with a floor of 100% (thresholds: time_floor)")
    assert gate.band_note(ThresholdConfig(), "cuda") is None  # 3%
    assert gate.band_note(ThresholdConfig(device={"cpu": {"time_floor": 0.2}}), "cpu") is None


@pytest.mark.parametrize("sections, expected", [
    ({}, "floor of 100% (thresholds"),  # every case at the CPU's floor
    # a case section lowering some cases' floor had been left out: the note said 100% of cases judged at 5%
    ({"case": [("fa-sweep/sdpa/fwd/*", {"time_floor": 0.05})]},
     "floor of 100% for 1 of the 2 cases compared (workload or case sections of the thresholds give the other 1 a "
     "floor under 50%)"),
    ({"workload": {"fa-sweep": {"time_floor": 0.05}}}, None),  # no case judged at a wide floor: no note
])
def test_the_wide_floor_note_reads_each_cases_own_floor(sections, expected):
    from attnsuite import gate
    from attnsuite.record import CaseRecord
    from attnsuite.verdict import ThresholdConfig

    cases = [CaseRecord("fa-sweep", "sdpa", "fwd", "p1"), CaseRecord("fa-sweep", "explicit", "fwd", "p1")]
    note = gate.band_note(ThresholdConfig(**sections), "cpu", cases=cases)
    if expected is None:
        assert note is None
    else:
        assert note is not None and f"time on cpu is judged with a {expected}" in note, note


@pytest.mark.parametrize("sections, names", [
    ({}, "a thresholds file with a lower device.cpu.time_floor narrows it"),  # the built-in default
    ({"device": {"cpu": {"time_floor": 0.8}}}, "a lower device.cpu.time_floor in t.json narrows it"),
    # a workload or case section set the wide floor: device.cpu.time_floor (already low) had been named
    ({"device": {"cpu": {"time_floor": 0.2}}, "workload": {"fa-sweep": {"time_floor": 2.0}}},
     "a lower workload.fa-sweep.time_floor in t.json narrows it"),
    ({"device": {"cpu": {"time_floor": 0.2}}, "case": [("fa-sweep/*", {"time_floor": 3.0})]},
     "a lower case.fa-sweep/*.time_floor in t.json narrows it"),
])
def test_the_wide_floor_note_names_the_section_whose_floor_to_lower(sections, names):
    from attnsuite import gate
    from attnsuite.record import CaseRecord
    from attnsuite.verdict import ThresholdConfig

    cases = [CaseRecord("fa-sweep", "sdpa", "fwd", "p1")]
    note = gate.band_note(ThresholdConfig(**sections, path="t.json"), "cpu", cases=cases)
    assert note is not None and f"({names}, at the price of" in note, note


def test_the_gate_json_says_which_of_the_runs_cases_failed_outright(tmp_path):
    # "failed": false (no gating verdict) had been all it said of a run whose cases raised
    from types import SimpleNamespace

    from attnsuite import plugin_gate

    target = tmp_path / "g.json"
    config = SimpleNamespace(getoption=lambda name: str(target) if name == "--attn-gate-json" else None,
                             stash=pytest.Stash())
    state = plugin_gate.GateState()
    records = {r.key: r for r in (CaseRecord("w", "a", "fwd", "p1", outcome="error", detail="RuntimeError: boom"),
                                  CaseRecord("w", "b", "fwd", "p1", outcome="ok", median_ms=1.0, min_ms=1.0))}
    plugin_gate._write_gate_json(config, state, {"compared": True, "failed": False}, records)
    assert json.loads(target.read_text()) == {"compared": True, "failed": False, "run_failed": {"error": 1},
                                              "simulated": None, "run_id": plugin_gate.plugin_bench.run_id(config)}
    plugin_gate._write_gate_json(config, state, {"compared": False, "failed": False})
    assert json.loads(target.read_text())["run_failed"] == {}


def test_the_gate_json_of_a_simulated_run_says_so_and_ab_cases_from_repeats_it(tmp_path):
    # gate.md said SIMULATED; the JSON that `attnsuite ab --cases-from` reads had not
    from types import SimpleNamespace

    from attnsuite import ab, plugin_gate

    target = tmp_path / "g.json"
    config = SimpleNamespace(getoption=lambda name: str(target) if name == "--attn-gate-json" else None,
                             stash=pytest.Stash())
    slowed = CaseRecord("w", "a", "fwd", "p1", outcome="ok", median_ms=1.1, min_ms=1.1, extra={"injected_ms": 0.1})
    plugin_gate._write_gate_json(config, plugin_gate.GateState(),
                                 {"compared": True, "failed": True, "cases": [{"key": slowed.key, "flags": ["slower"]}]},
                                 {slowed.key: slowed})
    obj = json.loads(target.read_text())
    assert obj["simulated"].startswith("SIMULATED: 1 case ran with a slowdown injected (--attn-inject-slowdown: a (1))")
    flagged = ab.cases_from_gate_json(target)
    assert flagged.simulated and flagged.keys == [slowed.key]
    assert "That gate run was simulated (SIMULATED: 1 case" in flagged.note


def test_an_unwritable_step_summary_is_named_and_the_verdict_json_and_recording_go_on(project, monkeypatch, tmp_path):
    # a PermissionError traceback had ended the gate: no verdict, no gate JSON, no baseline recorded
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(blocked / "summary.md"))
    res = project.runpytest(*QUIET, "--benchmark-json=out.json", "--attn-markdown=g.md", "--attn-gate-json=g.json",
                            "--attn-record-baseline")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["could not append the markdown diff to $GITHUB_STEP_SUMMARY: *Not a directory*"])
    assert (project.path / "g.md").is_file() and (project.path / "g.json").is_file()
    assert (project.path / BASELINE).is_file()


def test_the_thresholds_beside_a_named_baseline_are_the_ones_used_as_by_attnsuite_compare(project):
    # pytest had read the repository's file and failed a run that `attnsuite compare` passed on the same files
    record(project)
    elsewhere = project.path / "elsewhere"
    elsewhere.mkdir()
    (project.path / BASELINE).rename(elsewhere / "my.json")
    (elsewhere / "thresholds.json").write_text(json.dumps({"version": 1, "device": {"cpu": {"time_floor": 9.0}}}))
    res = project.runpytest(*QUIET, f"--attn-baseline={elsewhere / 'my.json'}")
    res.stdout.fnmatch_lines([f"*thresholds from {elsewhere / 'thresholds.json'}*"])


def test_missing_cases_of_a_variant_this_run_does_not_register_are_said_so():
    # a run that forgot an outside variant's --attn-variants had read its cases missing with no word of why
    from attnsuite import plugin_gate, registry
    from attnsuite.verdict import CaseVerdict, Comparison

    registry.load_builtin()
    verdicts = [CaseVerdict(f"w/{name}/fwd/{PROBLEM}", verdict, (verdict,), "x")
                for name, verdict in (("my-kernel", "missing"), ("my-kernel", "missing"), ("explicit", "missing"),
                                      ("other-kernel", "same"))]
    note = plugin_gate.unregistered_missing(Comparison(verdicts=verdicts))
    assert note.startswith("missing cases of 1 variant this run does not register: my-kernel (2 cases): an outside "
                           "variant whose file this run did not load (--attn-variants"), note
    assert plugin_gate.unregistered_missing(Comparison(verdicts=verdicts[2:])) == ""


def test_a_recording_that_changed_nothing_in_the_baseline_does_not_say_recorded(project):
    # every case failed, so each kept the baseline's measured entry: the summary had said RECORDED
    record(project)
    before = (project.path / BASELINE).read_text()
    set_cases(project, [case("alpha", outcome="error", median_ms=None, detail="boom"),
                        case("beta", outcome="error", median_ms=None, detail="boom")])
    res = project.runpytest(*QUIET, "--attn-record-baseline", "--attn-gate=report")
    out = res.stdout.str()
    assert f"baseline NOT changed: no case of this run was recorded into {project.path / BASELINE}" in out, out
    assert "RECORDED" not in out and "baseline recorded:" not in out, out
    assert json.loads((project.path / BASELINE).read_text())["cases"] == json.loads(before)["cases"]
