"""The gate inside pytest: a tiny benchmark project run with pytester (in process, no real timing).

The project (gatehelp.CONFTEST, gatehelp.BENCH) writes synthetic records read from cases.json and
adds the machine fingerprint to the JSON the way the benchmarks plugin does, so each scenario
controls exactly what the gate sees.
"""

from __future__ import annotations

import json

import pytest

from attnsuite import baseline as bl
from attnsuite.record import CaseRecord
from gatehelp import BENCH, CONFTEST, FP_H100, fp

pytest_plugins = ["pytester"]

PROBLEM = "b1-q256-h2-d64-causal-fp32-cpu"


def case(variant, **kw):
    d = dict(workload="tiny", variant=variant, mode="fwd", problem=PROBLEM, outcome="ok", median_ms=2.0,
             iqr_ms=0.01, samples=20, peak_mem_bytes=64 << 20, backend="math")
    d.update(kw)
    return d


CASES = [case("alpha"), case("beta"), case("gamma", outcome="oom", median_ms=None, oom_bytes=1 << 34)]
BASELINE = f"baselines/{FP_H100['id']}.json"
QUIET = ("-p", "no:cacheprovider", "--benchmark-only", "--benchmark-disable-gc")


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bench=BENCH)
    set_cases(pytester, CASES)
    (pytester.path / "fingerprint.json").write_text(json.dumps(FP_H100))
    return pytester


def set_cases(pytester, cases):
    (pytester.path / "cases.json").write_text(json.dumps(cases))


def record(pytester, cases=CASES):
    """Write the baseline the way --attn-record-baseline would, without spending a pytest run."""
    records = {r.key: r for r in (CaseRecord(**c) for c in cases)}
    baseline, _ = bl.merge_into(None, records, FP_H100)
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
    assert json.loads((project.path / "out.json").read_text())["attnsuite"]["fingerprint"]["id"] == FP_H100["id"]


def test_record_then_an_unchanged_rerun_passes(project):
    res = project.runpytest(*QUIET, "--attn-record-baseline")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines(["baseline recorded: *: 3 added, 0 updated, 0 unchanged, 0 removed"])
    obj = json.loads((project.path / BASELINE).read_text())
    assert len(obj["cases"]) == 3 and obj["fingerprint"]["id"] == FP_H100["id"]
    assert obj == record(project)  # the plugin writes what the store writes
    res = project.runpytest(*QUIET)
    assert res.ret == 0
    res.stdout.fnmatch_lines([f"baseline *{FP_H100['id']}.json (fingerprint *)", "pass (3 same)"])


def test_baseline_doctored_faster_smaller_and_free_of_oom_fails_with_the_three_verdicts(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)  # CPU flags only more than a doubling (docs/gate.md)
    doctor(project, "beta", peak_mem_bytes=16 << 20)
    doctor(project, "gamma", outcome="ok", median_ms=3.0, oom_bytes=None, detail=None)
    res = project.runpytest(*QUIET)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines([
        f"FAILED newly-oom: tiny/gamma/fwd/{PROBLEM}: now out of memory (asked for 16 GiB)*",
        f"FAILED slower: tiny/alpha/fwd/{PROBLEM}: slower by 300.0% (0.5000 ms -> 2.000 ms*",
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
    res.stdout.fnmatch_lines(["pass (2 same); 1 baseline cases outside this run's scope"])


def test_report_mode_shows_regressions_without_failing(project):
    record(project)
    doctor(project, "alpha", median_ms=0.5)
    res = project.runpytest(*QUIET, "--attn-gate", "report", "--attn-markdown", "gate.md")
    assert res.ret == 0
    res.stdout.fnmatch_lines(["REPORTED slower: tiny/alpha/*"])
    assert "**slower**" in (project.path / "gate.md").read_text()


def test_a_corrupt_baseline_is_a_usage_error_naming_the_file(project):
    record(project)
    (project.path / BASELINE).write_text('{"schema": "attnsuite-baseline", "version": 1, "cases": {')
    res = project.runpytest(*QUIET)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stdout.fnmatch_lines([f"ERROR attnsuite gate: baseline *{FP_H100['id']}.json: not valid JSON (truncated?)*"])


def test_a_corrupt_baseline_named_on_the_command_line_stops_the_run_before_benchmarks(project):
    (project.path / "bad.json").write_text("[]")
    res = project.runpytest(*QUIET, "--attn-baseline", "bad.json")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*attnsuite gate: baseline bad.json: top level is list*"])


def test_a_baseline_from_another_gpu_is_refused_unless_allowed(project):
    record(project)
    (project.path / "fingerprint.json").write_text(json.dumps(fp(gpu_name="NVIDIA A100-SXM4-80GB")))
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
    res.stdout.fnmatch_lines(["FAIL: 1 regression(s) (1 newly-oom, 2 same)"])


def test_volatile_fingerprint_fields_stay_out_of_the_recorded_baseline(project):
    (project.path / "fingerprint.json").write_text(json.dumps(fp(gpu_clock_sm_mhz_at_start=1980)))
    res = project.runpytest(*QUIET, "--attn-record-baseline")
    assert res.ret == 0
    stored = json.loads((project.path / BASELINE).read_text())["fingerprint"]
    assert "gpu_clock_sm_mhz_at_start" not in stored and stored["gpu_name"] == FP_H100["gpu_name"]
