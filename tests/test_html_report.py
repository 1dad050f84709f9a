"""`attnsuite report --html`: one self-contained file with plots and sortable tables that a browser renders.

The browser test drives headless Chromium through Playwright (``pip install playwright``); the
browser is ``$ATTNSUITE_CHROMIUM``, else a ``chromium``/``chromium-browser``/``google-chrome`` on
PATH, else Playwright's own download (``playwright install chromium``). Without one it skips,
saying which is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from attnsuite import cli, html_report, summary
from attnsuite.record import CaseRecord

HOSTILE = 'evil<script>alert(1)</script>"&'


def _rec(workload, variant, mode, q, ms, *, outcome="ok", shape="h4-d64-causal-tl-fp32-cpu", detail=""):
    problem = f"b1-q{q}-{shape}"
    flops = 4.0 * q * q * 64 * 4
    ok = outcome == "ok"
    return CaseRecord(workload, variant, mode, problem, outcome=outcome, detail=detail,
                      median_ms=ms if ok else None, iqr_ms=ms / 50 if ok else None, min_ms=ms if ok else None,
                      samples=10 if ok else 0, flops=flops, tflops=flops / (ms / 1e3) / 1e12 if ok else None,
                      peak_mem_bytes=q * 1024 if ok else None, backend="sdpa:flash-cpu" if ok else "")


def _records():
    recs = []
    for i, variant in enumerate(["sdpa", "explicit", HOSTILE]):
        for q in (128, 256, 512):
            recs.append(_rec("fa-sweep", variant, "fwd", q, (1 + i) * q / 100))
    recs.append(_rec("decode", "sdpa", "fwd", 64, 0.5))  # one length only
    recs.append(_rec("decode", "sdpa-cudnn", "fwd", 64, 0, outcome="skipped", detail="sdpa-cudnn runs on ['cuda']"))
    return {r.key: r for r in recs}


def _gate(records):
    cases = []
    for k, r in records.items():
        if r.outcome == "ok":
            change = 0.4 if r.variant == "explicit" and "q512" in r.problem else 0.01
            cases.append({"key": k, "verdict": "slower" if change > 0.1 else "same", "flags": ["slower"] if change > 0.1
                          else ["same"], "gating": change > 0.1, "time_change": change, "band": 0.05, "statistic": "min"})
    return {"compared": True, "failed": True, "baseline": "baselines/x.json", "cases": cases,
            "calibration": {"baseline": {"matmul_tflops": 0.5, "matmul_dtype": "float32"}}}


@pytest.fixture(scope="module")
def page_html():
    recs = _records()
    return html_report.render(recs, gate_json=_gate(recs), source="bench.json")


def test_the_report_loads_nothing_from_outside_the_file(page_html):
    # no CDN, no stylesheet or script file, no image: only the SVG namespace URI appears
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page_html))
    assert urls == {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"<(link|img|iframe)\b|\ssrc=", page_html)


def test_a_hostile_variant_name_is_escaped_everywhere(page_html):
    assert "<script>alert(1)" not in page_html
    assert "evil&lt;script&gt;alert(1)&lt;/script&gt;" in page_html


def test_every_workload_with_more_than_one_length_has_a_plot_with_a_line_per_variant(page_html):
    fa = page_html.split('id="w-fa-sweep"')[1].split("</section>")[0]
    shape = "fa-sweep fwd h4-d64-causal-tl-fp32-cpu"
    assert f"{shape}: TFLOP/s" in fa and f"{shape}: peak memory above inputs" in fa
    lines = re.findall(r'<polyline points="([^"]+)"[^>]*stroke="(#[0-9a-f]{6})"', fa)
    tflops_lines = lines[:3]
    assert len(tflops_lines) == 3, "one line per variant"
    assert all(len(points.split()) == 3 for points, _ in tflops_lines), "three lengths per line"
    assert len({colour for _, colour in tflops_lines}) == 3, "distinct colours"


def test_the_gate_chart_draws_each_change_against_its_band_and_marks_the_regression(page_html):
    fa = page_html.split('id="w-fa-sweep"')[1].split("</section>")[0]
    assert "gate change per case against its band" in fa
    assert fa.count('fill="#d62728"') == 1  # the one gating case is red
    assert "+40.0% (band ±5.0%)" in fa
    # the table names the statistic whose change it shows, beside the median column
    assert "<td data-v=\"0.4\">+40.0% (min)</td>" in fa


def test_the_stated_peak_is_the_baselines_probe_and_percentages_use_it(page_html):
    assert "peak 0.5 (calibrated float32 matmul probe" in page_html


def test_skipped_cases_are_counted_by_reason_not_given_rows(page_html):
    assert "sdpa-cudnn runs on" not in page_html.split('id="w-decode"')[1]
    assert "variant runs on ['cuda']".replace("'", "&#x27;") in page_html


@pytest.mark.parametrize("bad, message", [("not json", "not valid JSON"), ('["a"]', "not a gate JSON")])
def test_a_bad_gate_json_is_an_error_naming_the_file(tmp_path, capsys, bad, message):
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()}
                                                 for k, r in _records().items()]}))
    gate = tmp_path / "gate.json"
    gate.write_text(bad)
    status = cli.main(["report", str(result), "--html", str(tmp_path / "r.html"), "--gate-json", str(gate)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_INPUT and f"--gate-json {gate}" in err and message in err
    assert not (tmp_path / "r.html").exists()


def test_a_gate_json_of_another_run_is_refused_not_shown_as_this_runs_verdict(tmp_path, capsys):
    # an fp64 result had been printed with an fp32 run's "FAIL: 2 regressions"
    recs = _records()
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    gate = tmp_path / "gate.json"
    other = _gate(recs)
    for case in other["cases"]:
        case["key"] = "other-" + case["key"]
    gate.write_text(json.dumps(other))
    status = cli.main(["report", str(result), "--gate-json", str(gate)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_INPUT and f"--gate-json {gate}: none of its" in err and "another run" in err
    gate.write_text(json.dumps(_gate(recs)))  # its own gate JSON is taken
    assert cli.main(["report", str(result), "--gate-json", str(gate)]) == 0


def test_a_gate_json_of_another_run_of_the_same_cases_is_refused_by_its_figures(tmp_path, capsys):
    # the verdicts of a slowed run of the same cases had been shown as an unchanged run's "3 regressions"
    recs = _records()
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    other = _gate(recs)
    for case in other["cases"]:  # what a gate JSON holds: the run's own median beside each verdict
        case["cur_median_ms"] = recs[case["key"]].median_ms
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(other))
    assert cli.main(["report", str(result), "--gate-json", str(gate)]) == 0  # its own figures: taken
    for case in other["cases"]:  # on CUDA the gate judges device time: the median beside it is the device median
        case["statistic"], case["cur_median_ms"] = "device min", recs[case["key"]].median_ms * 0.9
    gate.write_text(json.dumps(other))
    status = cli.main(["report", str(result), "--gate-json", str(gate)])
    assert status == cli.EXIT_INPUT and "has a device median of" in capsys.readouterr().err
    for case in other["cases"]:
        recs[case["key"]].device_ms = case["cur_median_ms"]
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    assert cli.main(["report", str(result), "--gate-json", str(gate)]) == 0  # device medians that agree: taken
    measured = [c for c in other["cases"] if c.get("cur_median_ms")]
    measured[0]["cur_median_ms"] *= 1.5
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(other))
    status = cli.main(["report", str(result), "--gate-json", str(gate)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_INPUT and f"not the verdicts of {result}: {measured[0]['key']} has a device median of" in err


def test_a_gate_json_whose_cases_failed_is_refused_for_a_result_where_they_ran(tmp_path, capsys):
    # a failed case has no median to compare: a broken run's verdicts ("newly-failing ... max error")
    # had been drawn over a good run's result, the report reading both "2 regressions" and "ok"
    recs = _records()
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    other = _gate(recs)
    for case in other["cases"]:
        case["cur_outcome"] = recs[case["key"]].outcome
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(other))
    assert cli.main(["report", str(result), "--gate-json", str(gate)]) == 0  # its own outcomes: taken
    broken = other["cases"][0]
    broken.update(verdict="newly-failing", flags=["newly-failing"], gating=True, cur_outcome="numerics",
                  cur_median_ms=None)
    gate.write_text(json.dumps(other))
    status = cli.main(["report", str(result), "--gate-json", str(gate)])
    assert status == cli.EXIT_INPUT
    assert f"not the verdicts of {result}: {broken['key']} is numerics there and ok in the result" in \
        capsys.readouterr().err


@pytest.mark.parametrize("bad", ['{"foo": 1}', '{"cases": []}', '{"compared": true}'])
def test_an_object_that_is_not_a_gate_json_is_refused(tmp_path, capsys, bad):
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()}
                                                 for k, r in _records().items()]}))
    gate = tmp_path / "gate.json"
    gate.write_text(bad)
    assert cli.main(["report", str(result), "--gate-json", str(gate)]) == cli.EXIT_INPUT
    assert "not a gate JSON" in capsys.readouterr().err


def test_a_report_of_a_result_with_no_case_is_an_error(tmp_path, capsys):
    result = tmp_path / "zero.json"
    result.write_text(json.dumps({"benchmarks": [], "attnsuite": {"schema": 1}}))
    assert cli.main(["report", str(result)]) == cli.EXIT_INPUT
    assert f"{result}: no case in it: nothing to report" in capsys.readouterr().err


def _browser_path():
    env = os.environ.get("ATTNSUITE_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None  # Playwright's own download, if it was installed


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        path = _browser_path()
        try:
            b = p.chromium.launch(executable_path=path, args=["--no-sandbox"]) if path else p.chromium.launch()
        except Exception as exc:  # no browser binary: say which was tried
            pytest.skip(f"no headless Chromium: {path or 'playwright install chromium was not run'}: "
                        f"{str(exc).splitlines()[0][:200]}")
        yield b
        b.close()


def test_the_report_renders_in_headless_chromium_and_its_tables_sort(browser, tmp_path, page_html):
    # through the CLI, as CI makes it
    result = tmp_path / "bench.json"
    recs = _records()
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(_gate(recs)))
    out = tmp_path / "report.html"
    assert cli.main(["report", str(result), "--html", str(out), "--gate-json", str(gate)]) == 0
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith("file:") else None)
    page.goto(out.as_uri())
    assert page.evaluate("document.documentElement.dataset.ready") == "1", "the script ran to its end"
    assert errors == []
    assert page.locator("table.sortable").count() == 2  # one per workload
    assert page.locator("svg.chart").count() >= 3  # fa-sweep TFLOP/s, memory, gate
    table = page.locator('#w-fa-sweep table.sortable')
    col = "median ms"
    header = table.locator("th", has_text=col)
    idx = ["variant", "mode", "problem", "outcome", col].index(col)

    def column():
        return [float(v) for v in table.locator(f"tbody tr td:nth-child({idx + 1})").evaluate_all(
            "cells => cells.map(c => c.dataset.v)")]

    header.click()
    asc = column()
    assert asc == sorted(asc) and asc != list(reversed(asc))
    header.click()
    assert column() == sorted(asc, reverse=True)
    assert page.locator("#summary").inner_text().startswith("FAIL: 1 regression")
    page.close()


@pytest.mark.parametrize("given", ["argument", "OUT"])
def test_ci_report_writes_the_html_its_top_in_the_job_summary_and_a_plot_per_workload(tmp_path, given):
    # the folder is relative to where the command is typed, as for ci_bench.sh (it had been looked
    # for inside the checkout: "no results/bench.json" beside a file that was there)
    import subprocess
    import sys

    recs = _records()
    out = tmp_path / "results"
    out.mkdir()
    (out / "bench.json").write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()}
                                                               for k, r in recs.items()]}))
    (out / "gate.json").write_text(json.dumps(_gate(recs)))
    summary_file = tmp_path / "step_summary.md"
    env = dict(os.environ, GITHUB_STEP_SUMMARY=str(summary_file), PYTHON=sys.executable)
    env.pop("OUT", None)
    args = ["results"] if given == "argument" else []
    if given == "OUT":
        env["OUT"] = "results"
    proc = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "scripts" / "ci_report.sh"), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    top = summary_file.read_text()
    assert top.startswith("### attnsuite report") and "FAIL: 1 regression" in top and "report.html" in top
    if "plots skipped: matplotlib" not in proc.stdout:
        assert sorted(p.name.split("_")[0] for p in (out / "plots").glob("*.png")) == ["decode", "fa-sweep"]


def test_the_gpu_workflow_uploads_the_html_report():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github" / "workflows" / "gpu.yml").read_text())
    steps = wf["jobs"]["gpu-correctness-and-gate"]["steps"]
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert "${{ env.OUT }}/report.html" in [p.strip() for p in upload["with"]["path"].splitlines()]
    report_step = next(s for s in steps if "ci_report.sh" in s.get("run", ""))
    assert report_step["if"] == "success() || failure()"  # the report is made when the gate fails too


def test_python_dash_m_attnsuite_is_the_command_without_the_venv_on_path():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "attnsuite", "report", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and "--html" in proc.stdout and "--gate-json" in proc.stdout


def test_report_with_a_gate_json_prints_the_verdict_its_html_shows(tmp_path):
    # it had printed "NOT COMPARED ... no baseline given" while the HTML of the same command said FAIL
    import io

    result, gate = tmp_path / "bench.json", tmp_path / "gate.json"
    recs = _records()
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    gate.write_text(json.dumps(_gate(recs)))
    out = io.StringIO()
    assert cli.main(["report", str(result), "--html", str(tmp_path / "r.html"), "--gate-json", str(gate)], out=out) == 0
    printed = out.getvalue()
    first = html_report.summary_lines(recs, _gate(recs))[0]
    assert first.startswith("FAIL") and first in printed and "NOT COMPARED" not in printed, printed[-1500:]


def test_the_markdown_tables_percent_of_peak_is_the_summarys_against_the_gate_jsons_probe(tmp_path):
    # the table had shown "-" in every row under a summary giving 46.2% of the same probe
    recs = _records()
    result = tmp_path / "bench.json"
    result.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()} for k, r in recs.items()]}))
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(_gate(recs)))
    md = tmp_path / "r.md"
    assert cli.main(["report", str(result), "--gate-json", str(gate), "--markdown", str(md)]) == 0
    row = next(line for line in md.read_text().splitlines() if line.startswith("| decode | sdpa |"))
    pct = summary.percent_of_peak(recs[next(k for k in recs if k.startswith("decode/sdpa/"))],
                                  _gate(recs)["calibration"]["baseline"])[0]
    assert pct is not None and f" {pct:.3g} |" in row, row


@pytest.mark.parametrize("text, expected", [
    ("calibrated float32 matmul probe stored with the baseline, 0.0607 TFLOP/s",
     "calibrated float32 matmul probe stored with the baseline…"),
    ("H200 datasheet, dense bf16", "H200 datasheet, dense bf16"),
])
def test_a_long_plot_label_is_cut_at_a_word_never_mid_number(text, expected):
    assert html_report.short_label(text) == expected


def test_the_html_and_job_summary_word_each_regression_as_the_terminal_does():
    # a missing case had read "missing: <key>; time - (band ±0.0%)", a memory growth as its time alone
    from attnsuite import baseline as bl
    from attnsuite import gate, report
    from gatehelp import FP_H100, by_key, rec

    base = bl.Run(by_key([rec("sdpa-flash"), rec("sdpa-math", peak_mem_bytes=100 << 20)]), dict(FP_H100))
    cur = bl.Run(by_key([rec("sdpa-math", peak_mem_bytes=900 << 20)]), dict(FP_H100))
    thresholds, _ = gate.thresholds_for(None, Path(__file__).resolve().parents[1] / "baselines")
    cmp = gate.judge_runs(base, cur, thresholds=thresholds)
    expected = report.gate_lines(cmp)
    assert any(line.startswith("missing: ") for line in expected) and \
        any("memory-growth" in line for line in expected), expected
    s = html_report.summary_from_gate_json(cur.records, cmp.to_json())
    assert s.regressions == expected


def test_a_case_row_shows_the_judged_figures_beside_their_change_and_every_finding():
    # the row had shown the median (9.770 ms, baseline 2.650) beside "+20.6% (min) same", and only the
    # first finding of "slower/memory-growth"
    recs = _records()
    key = next(k for k, r in recs.items() if r.outcome == "ok")
    gate = {key: {"key": key, "verdict": "slower", "flags": ["slower", "memory-growth"], "gating": True,
                  "time_change": 0.206, "band": 0.281, "statistic": "min", "base_ms": 2.322, "cur_ms": 2.801}}
    html = html_report.case_table(list(recs.values()), gate, None)
    row = next(r for r in html.split("<tr>") if "slower/memory-growth" in r)
    assert "2.322 ms -&gt; 2.801 ms" in row and "+20.6% (min)" in row, row


@pytest.mark.parametrize("confirmed, second, expected", [
    (False, 0.156, "same (not confirmed, second measurement +15.6%)"),
    (True, 0.118, "slower (confirmed, second measurement +11.8%)"),
    (None, None, "slower"),  # measured once: nothing to add
])
def test_a_case_row_and_its_dot_say_what_the_second_measurement_found(confirmed, second, expected):
    # a +123.2% change beyond its ±100% band had read "same" with no reason: the confirmation that had
    # not agreed was only in the markdown
    recs = _records()
    key = next(k for k, r in recs.items() if r.outcome == "ok")
    verdict = "slower" if confirmed is not False else "same"
    case = {"key": key, "verdict": verdict, "flags": [verdict], "gating": verdict == "slower", "time_change": 1.232,
            "band": 1.0, "statistic": "min", "base_ms": 6.12, "cur_ms": 13.66, "confirmed": confirmed,
            "confirm_time_change": second}
    row = next(r for r in html_report.case_table(list(recs.values()), {key: case}, None).split("<tr>") if "13.66" in r)
    assert f"<td>{expected}</td>" in row, row
    chart = html_report.svg_gate_chart([case], title="t")
    assert f"(band ±100.0%) {expected}" in chart, chart


def test_report_with_a_baseline_and_no_gate_json_shows_that_comparison_in_its_html(tmp_path):
    # the terminal and markdown said PASS against the baseline while the HTML of the same command said
    # "NOT COMPARED" and "the baseline stores no calibration probe" of a baseline that has one
    import io

    recs = _records()
    result, base = tmp_path / "bench.json", tmp_path / "base.json"
    for path in (result, base):
        path.write_text(json.dumps({"benchmarks": [{"name": k, "extra_info": r.to_extra_info()}
                                                    for k, r in recs.items()],
                                    "attnsuite": {"calibration": {"matmul_tflops": 0.5, "matmul_dtype": "float32"}}}))
    out, html = io.StringIO(), tmp_path / "r.html"
    assert cli.main(["report", str(result), "--baseline", str(base), "--html", str(html)], out=out) == 0, out.getvalue()
    page = html.read_text()
    assert "NOT COMPARED" not in page and "no gate JSON given" not in page, page[:3000]
    assert "PASS: no regression among" in page and "PASS: no regression among" in out.getvalue()
    assert "stores no calibration probe" not in page, page[:3000]


def test_a_gate_json_that_compared_nothing_is_not_said_to_have_a_baseline_without_a_probe():
    # a recording run's gate JSON (no comparison) had made the HTML say "the baseline stores no
    # calibration probe" of a baseline the run had just recorded with one
    recs = _records()
    s = html_report.summary_from_gate_json(recs, {"compared": False, "reason": "no baseline for this machine",
                                                  "cases": []})
    assert "stores no calibration probe" not in s.peak_note, s.peak_note
    assert "no % of peak: no baseline was compared" in s.peak_note, s.peak_note
