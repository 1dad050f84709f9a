"""Reports: the terminal table, the markdown diff for PR review, the job summary, plot data."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnsuite import report
from attnsuite.verdict import compare
from gatehelp import by_key, rec


def _mixed_comparison():
    base = by_key([rec("same1"), rec("same2"), rec("slow"), rec("fast"), rec("gone"), rec("oomer")])
    cur = by_key([rec("same1"), rec("same2"), rec("slow", median_ms=1.5), rec("fast", median_ms=0.5),
                  rec("oomer", outcome="oom", median_ms=None, oom_bytes=80 << 30), rec("fresh")])
    return compare(base, cur)


def test_markdown_diff_puts_the_regressions_in_the_first_lines():
    md = report.markdown_diff(_mixed_comparison())
    lines = md.splitlines()
    assert lines[0] == report.MARKER and "FAIL" in lines[1]
    first = "\n".join(lines[:10])
    for name in ("newly-oom", "missing", "slower"):
        assert name in first, f"{name} not in the first 10 lines:\n{first}"
    assert md.index("Regressions") < md.index("Improvements") < md.index("New cases") < md.index("Unchanged")


def test_markdown_diff_collapses_unchanged_cases_in_details():
    md = report.markdown_diff(_mixed_comparison())
    block = md[md.index("<summary>Unchanged (2)</summary>"):]
    assert block.index("same1") < block.index("</details>")
    assert "<details>" in md[: md.index("<summary>Unchanged")]


def test_markdown_regression_line_says_which_case_which_verdict_and_by_how_much():
    md = report.markdown_diff(_mixed_comparison())
    line = next(l for l in md.splitlines() if l.startswith("- **slower**"))
    assert "fa-sweep/slow/fwd/" in line and "slower by 50.0%" in line and "1.000 ms -&gt; 1.500 ms" in line


def test_markdown_table_cells_escape_pipes_so_the_table_does_not_break():
    cmp = compare(by_key([rec("a")]), by_key([rec("a", outcome="error", detail="bad | value <x>")]))
    md = report.markdown_diff(cmp)
    assert "bad \\| value &lt;x&gt;" in md


@pytest.mark.parametrize("mode, heading", [
    ("enforce", "### attnsuite regression gate: ✅ pass\n"),
    ("report", "### attnsuite regression gate: ✅ pass (gate in report mode: a regression would not have failed "
               "the run)\n")])
def test_a_passing_diff_says_pass_names_a_report_mode_gate_and_has_no_regression_section(mode, heading):
    # a report-mode pass (bench.sh on CPU) had read as an enforcing gate's: "report" was nowhere in gate.md
    cmp = compare(by_key([rec("a")]), by_key([rec("a")]))
    cmp.gate_mode = mode
    md = report.markdown_diff(cmp)
    assert heading in md and "Regressions" not in md, md


def test_a_terminal_table_of_unchanged_cases_only_has_no_column_heads_over_no_rows():
    cmp = compare(by_key([rec("a"), rec("b")]), by_key([rec("a"), rec("b")]))
    lines = report.terminal_table(cmp).splitlines()
    assert not any(line.startswith("verdict ") or line.startswith("---") for line in lines), lines
    assert "(2 unchanged cases not shown)" in lines and lines[-1] == cmp.summary()
    shown = report.terminal_table(cmp, show_same=True).splitlines()
    assert any(line.startswith("verdict ") for line in shown)  # with rows, the heads are back


def test_terminal_table_lists_changed_cases_and_the_summary_line():
    text = report.terminal_table(_mixed_comparison())
    assert text.splitlines()[0].split()[:2] == ["verdict", "case"]
    assert "newly-oom" in text and "(2 unchanged cases not shown)" in text
    assert text.splitlines()[-1].startswith("FAIL: 3 regressions")
    lines = report.gate_lines(_mixed_comparison())
    assert len(lines) == 3 and any(l.startswith("slower: fa-sweep/slow/") for l in lines)


def test_step_summary_is_appended_only_when_github_sets_it(tmp_path):
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n")
    assert report.append_step_summary("## gate\n", env={"GITHUB_STEP_SUMMARY": str(target)}) == str(target)
    assert target.read_text() == "earlier step\n## gate\n"
    assert report.append_step_summary("## gate\n", env={}) is None


def test_markdown_is_written_atomically_to_a_file(tmp_path):
    p = tmp_path / "out" / "gate.md"
    report.write_markdown("hello\n", p)
    assert p.read_text() == "hello\n"


def test_markdown_of_a_single_run_shows_outcomes_and_backends():
    md = report.markdown_run(by_key([rec("a"), rec("b", outcome="oom", median_ms=None, detail="CUDA OOM")]))
    assert "**oom** CUDA OOM" in md and "sdpa:flash" in md


@pytest.mark.parametrize("problem, length", [
    ("b4-q4096-h16-d128-causal-bf16-cuda0", 4096),
    ("b8-q1k32768-h32:8-d128-causal-br-bf16-cuda0", 32768),
    ("b1-q17-h2-d64-nomask-fp32-cpu", 17),
], ids=["self-attention uses L", "decode uses the key length", "odd length"])
def test_sequence_length_is_read_from_the_problem_id(problem, length):
    assert report.seq_len(rec(problem=problem)) == length


def test_plot_series_joins_lengths_per_variant_and_drops_failed_cases():
    recs = by_key([rec("flash", problem=f"b{16384 // L}-q{L}-h16-d128-causal-bf16-cuda0", flops=L * 1e8)
                   for L in (1024, 4096, 2048)]
                  + [rec("math", problem="b16-q1024-h16-d128-causal-bf16-cuda0"),
                     rec("math", problem="b4-q4096-h16-d128-causal-bf16-cuda0", outcome="oom", median_ms=None)])
    figs = report.plot_series(recs)
    (name, series), = figs.items()
    assert name == "fa-sweep fwd h16-d128-causal-bf16-cuda0"
    flash = next(s for s in series if s.label == "flash")
    assert [p[0] for p in flash.points] == [1024, 2048, 4096] and flash.points[0][1] == pytest.approx(102.4)
    assert [p[0] for p in next(s for s in series if s.label == "math").points] == [1024]


def test_every_report_shows_tflops_by_device_time_where_a_case_has_one():
    # as on an H200: a backward whose caller waited 1.113 ms for 0.756 ms of GPU work (host launches)
    cuda = rec("triton-flash", mode="bwd", flops=1.75e11, median_ms=1.113, tflops=1.75e11 / 1.113e-3 / 1e12,
               device_ms=0.756, pct_peak=15.9, extra={"peak_tflops": 989.4, "peak_source": "datasheet dense peak, H200"})
    cpu = rec("explicit", problem="b1-q64-h2-d16-causal-fp32-cpu", timer="perf_counter", flops=1e9, median_ms=2.0,
              tflops=0.5, device_ms=None)
    assert cuda.rate() == pytest.approx(231.5, rel=1e-3) and cpu.rate() == 0.5
    md = report.markdown_run(by_key([cuda, cpu]))
    assert "TFLOP/s and % peak: by device time where a case has one (CUDA), else by the median." in md
    row = next(line for line in md.splitlines() if "| triton-flash |" in line)
    assert "| 231.5 | 23.4 |" in row, row  # not the median's 157.2 TFLOP/s (15.9%)
    assert "| 0.5 |" in next(line for line in md.splitlines() if "| explicit |" in line)
    (series,), = report.plot_series(by_key([cuda])).values()
    assert series.points[0][1] == pytest.approx(231.5, rel=1e-3)


def test_plots_are_skipped_with_a_message_when_matplotlib_is_missing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    res = report.make_plots({"run": by_key([rec()])}, tmp_path / "plots")
    assert res.paths == [] and "matplotlib is not installed" in res.message


def test_plots_are_drawn_per_workload_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    recs = by_key([rec("flash", problem=f"b1-q{L}-h16-d128-causal-bf16-cuda0") for L in (1024, 2048)])
    res = report.make_plots({"this run": recs, "baseline": recs}, tmp_path)
    assert len(res.paths) == 1 and res.paths[0].endswith(".png")
    assert res.message == f"1 plot written to {tmp_path}"


def test_a_baseline_adds_no_plot_of_a_workload_the_run_did_not_select(tmp_path):
    # a gpt2-mha run against a baseline of every workload had drawn 23 plots, 22 of the baseline alone
    pytest.importorskip("matplotlib")
    run = by_key([rec("flash", problem=f"b1-q{L}-h16-d128-causal-bf16-cuda0") for L in (1024, 2048)])
    other = by_key([rec("flash", workload="decode", problem=f"b1-q{L}-h16-d128-causal-bf16-cuda0")
                    for L in (1024, 2048)])
    res = report.make_plots({"this run": run, "baseline": {**run, **other}}, tmp_path)
    assert [Path(p).name for p in res.paths] == ["fa-sweep_fwd_h16-d128-causal-bf16-cuda0.png"]


# --------------------------------------------------------------------------- escaping

HOSTILE = [
    pytest.param("evil|name", id="a pipe would split the table"),
    pytest.param("<img src=x onerror=alert(1)>", id="an HTML tag would render"),
    pytest.param("a&amp;b", id="an entity would be decoded"),
    pytest.param("`code` **bold**", id="backticks and emphasis would be markup"),
    pytest.param("[click](http://evil)", id="brackets would make a link"),
    pytest.param("line1\n### heading", id="a newline would start a heading"),
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_variant_names_and_details_reach_the_markdown_escaped(name):
    base = by_key([rec(name), rec("ok")])
    cur = by_key([rec(name, outcome="error", detail=f"boom {name}"), rec(name, problem="p2"), rec("ok")])
    for md in (report.markdown_diff(compare(base, cur)), report.markdown_run(cur)):
        assert name not in md and report.md_escape(name) in md
        assert not any(line.startswith("### heading") for line in md.splitlines())
        for table in _tables(md):  # every row has its header's number of cells
            assert len({len(row.replace("\\|", "").split("|")) for row in table}) == 1, table


def _tables(md):
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.parametrize("text, escaped", [
    ("a|b", "a\\|b"), ("<b>", "&lt;b&gt;"), ("x & y", "x &amp; y"), ("`x`", "\\`x\\`"),
    ("[a](b)", "\\[a\\](b)"), ("*a* _b_ ~c~", "\\*a\\* \\_b\\_ \\~c\\~"), ("a\r\nb", "a b"), ("a\\b", "a\\\\b"),
])
def test_md_escape_neutralises_each_markdown_and_html_character(text, escaped):
    assert report.md_escape(text) == escaped


# --------------------------------------------------------------------------- the judged statistic


def test_a_table_row_shows_the_judged_statistic_labelled_with_the_median_beside_it():
    # the row: medians 6.282 -> 5.849 ms (faster) while the fastest sample went +141.9%
    base = rec("x", median_ms=6.282, min_ms=2.0, iqr_ms=0.01, device_ms=None, timer="perf_counter",
               problem="b1-q64-h2-d16-causal-fp32-cpu")
    cur = rec("x", median_ms=5.849, min_ms=4.838, iqr_ms=0.01, device_ms=None, timer="perf_counter",
              problem="b1-q64-h2-d16-causal-fp32-cpu")
    cmp = compare(by_key([base]), by_key([cur]), device="cpu")
    row = next(l for l in report.terminal_table(cmp).splitlines() if l.startswith("slower"))
    cells = row.split()
    assert cells[2:5] == ["min", "2.000", "ms"] and "4.838 ms" in row and "+141.9%" in row
    assert "6.282 ms -> 5.849 ms" in row  # the median, beside the judged minimum
    md_row = next(l for l in report.markdown_diff(cmp).splitlines() if l.startswith("| **slower**"))
    assert "| min | 2.000 ms | 4.838 ms | +141.9% |" in md_row and "6.282 ms -&gt; 5.849 ms" in md_row


def test_a_device_time_row_is_labelled_device_min():
    cmp = compare(by_key([rec("x", min_ms=0.9)]), by_key([rec("x", median_ms=1.5, min_ms=1.4)]), device="cuda")
    row = next(l for l in report.terminal_table(cmp).splitlines() if l.startswith("slower"))
    assert "device min" in row and "0.9000 ms" in row and "1.400 ms" in row and "1.000 ms -> 1.500 ms" in row


def test_a_confirmed_slowdown_shows_both_changes_in_every_report():
    cur = rec("x", median_ms=1.2)
    cur.extra["confirm"] = rec("x", median_ms=1.25).to_extra_info()
    cmp = compare(by_key([rec("x")]), by_key([cur]))
    assert "+20.0% / +25.0%" in report.terminal_table(cmp)
    assert "+20.0% / +25.0%" in report.markdown_diff(cmp)
    # and say which is which, once under each table that shows one
    legend = 'b, the confirmation\'s (measured again after every other case)'
    assert report.terminal_table(cmp).count(legend) == 1 and legend in report.markdown_diff(cmp)
    plain = compare(by_key([rec("x")]), by_key([rec("x", median_ms=1.2)]))
    assert legend not in report.terminal_table(plain) and legend not in report.markdown_diff(plain)


@pytest.mark.parametrize("x, text", [(-0.00001, "+0.0%"), (0.0, "+0.0%"), (-0.0004, "+0.0%"), (-0.0006, "-0.1%"),
                                     (0.25, "+25.0%")])
def test_a_change_never_reads_minus_zero(x, text):
    from attnsuite.verdict import fmt_pct

    assert fmt_pct(x) == text


def test_an_unconfirmed_slowdown_is_listed_as_reported_not_as_a_regression():
    cur = rec("x", median_ms=1.2)
    cur.extra["confirm"] = rec("x", median_ms=1.0).to_extra_info()
    cmp = compare(by_key([rec("x")]), by_key([cur]))
    md = report.markdown_diff(cmp)
    assert "Reported, not gating (1)" in md and "Regressions" not in md
    assert "not confirmed: first +20.0%, second +0.0%" in md


# --------------------------------------------------------------------------- header


@pytest.mark.parametrize("cur, base, line", [
    pytest.param({"mem_bandwidth_gbs": 3900.0, "matmul_tflops": 690.0, "matmul_dtype": "bfloat16"},
                 {"mem_bandwidth_gbs": 4100.0, "matmul_tflops": 702.0, "matmul_dtype": "bfloat16"},
                 "instance: copy 3.9 TB/s, bf16 matmul 690 TFLOP/s; baseline: 4.1 TB/s, 702 TFLOP/s (-5%, -2%)",
                 id="both sides"),
    pytest.param({"mem_bandwidth_gbs": 12.5, "matmul_tflops": 0.21}, None,
                 "instance: copy 12.5 GB/s, matmul 0.21 TFLOP/s; baseline: no calibration recorded",
                 id="a baseline without calibration"),
    pytest.param(None, None, None, id="neither side"),
])
def test_the_calibration_line_puts_this_instance_beside_the_baseline(cur, base, line):
    assert report.calibration_line(cur, base) == line


def test_the_header_lines_open_the_terminal_table_and_the_markdown():
    cmp = compare(by_key([rec("x")]), by_key([rec("x")]))
    cmp.header = ["fallback baseline b.json: compatible machine (another CPU model)"]
    cmp.cur_calibration, cmp.base_calibration = {"mem_bandwidth_gbs": 10.0}, {"mem_bandwidth_gbs": 20.0}
    assert report.terminal_table(cmp).splitlines()[:2] == [
        "fallback baseline b.json: compatible machine (another CPU model)",
        "instance: copy 10 GB/s; baseline: 20 GB/s (-50%)"]
    md = report.markdown_diff(cmp).splitlines()
    assert md[3] == "> fallback baseline b.json: compatible machine (another CPU model)"
    assert md[4].startswith("> instance: copy 10 GB/s")


def test_a_row_with_one_side_shows_the_statistic_the_gate_would_judge_labelled_and_the_median_beside_it():
    # a new case's median had sat in the "this run" column, where judged rows show the fastest sample; then
    # new, newly-failing and missing rows showed no figure at all ("none", "-": a PR reviewer's trial)
    broke = rec("broke", outcome="error", detail="boom", median_ms=None, device_ms=None)
    cmp = compare(by_key([rec("old"), rec("broke", min_ms=0.9)]),
                  by_key([rec("new", median_ms=5.1, min_ms=3.6), broke]), device="cuda")
    rows = {line.split()[0]: line for line in report.terminal_table(cmp).splitlines()[2:] if line.strip()}
    assert rows["new"].split()[2:] == ["device", "min", "-", "3.600", "ms", "-", "->", "5.100", "ms", "100", "MiB"]
    assert rows["newly-failing"].split()[2:7] == ["device", "min", "0.9000", "ms", "error"], rows["newly-failing"]
    assert rows["missing"].split()[2:7] == ["device", "median", "1.000", "ms", "not"], rows["missing"]
    missing = next(v for v in cmp.verdicts if v.verdict == "missing")
    assert "baseline: ok, device median 1.000 ms" in missing.message
    assert all(v.time_change is None and v.band is None for v in cmp.verdicts)  # nothing was judged


def test_a_count_of_one_reads_in_the_singular():
    from attnsuite.wording import count, none_of

    assert [count(n, "case") for n in (0, 1, 2)] == ["0 cases", "1 case", "2 cases"]
    assert [none_of(n, "case") for n in (1, 3)] == ["no case (of 1)", "none of the 3 cases"]
    one_same = compare(by_key([rec("a"), rec("b")]), by_key([rec("a"), rec("b", median_ms=2.0)]))
    assert "(1 unchanged case not shown)" in report.terminal_table(one_same)


def test_the_markdown_diff_quotes_each_baseline_line_once_after_the_run_summary():
    # the summary that heads the diff quotes the baseline and the out-of-scope count; the diff's own
    # header had quoted both again
    from attnsuite import summary
    from attnsuite.verdict import Scope

    base = by_key([rec("a", workload="w1"), rec("a", workload="w2")])
    cur = by_key([rec("a", workload="w1")])
    cmp = compare(base, cur, scope=Scope.of_run(cur))
    cmp.header = ["baseline: the shipped one (exact fingerprint)"]
    head = summary.markdown_lines(summary.build(cur, cmp), report.md_escape)
    md = report.markdown_diff(cmp, head=head)
    assert md.count("> baseline: the shipped one (exact fingerprint)") == 1, md
    assert md.count("> 1 baseline case was outside this run's selection and not judged") == 1, md
    alone = report.markdown_diff(cmp)  # without the summary the diff quotes them itself
    assert "> baseline: the shipped one" in alone and "> 1 baseline case was outside" in alone


def test_the_gate_line_says_no_regression_not_pass_when_a_case_of_the_run_failed():
    # "pass (1 new)" had stood above the run's "FAIL: 1 case(s) of this run failed (1 error)"
    cmp = compare(by_key([rec("a")]), by_key([rec("a"), rec("b", outcome="error", median_ms=None, detail="boom")]))
    line = cmp.summary()
    assert line.startswith("no regression (1 new, 1 same)"), line
    assert line.endswith("; 1 case of this run failed (1 error): the run fails on them"), line
    assert compare(by_key([rec("a")]), by_key([rec("a")])).summary() == "pass (1 same)"


def test_an_interrupted_run_does_not_call_the_cases_it_never_reached_outside_its_selection():
    # the headline said "439 did not run" and the next line "439 baseline cases were outside this run's selection"
    from attnsuite import summary
    from attnsuite.verdict import Scope

    base = by_key([rec("a", workload="w1"), rec("a", workload="w2")])
    cur = by_key([rec("a", workload="w1")])
    cmp = compare(base, cur, scope=Scope.of_run(cur))
    cmp.interrupted = True
    said = "1 baseline case was not judged: outside this run's selection, or selected but not reached before the " \
           "run was interrupted"
    assert said in report.markdown_diff(cmp)
    assert said in "\n".join(summary.markdown_lines(summary.build(cur, cmp, interrupted="interrupted after 1 of 2"),
                                                    report.md_escape))
    assert "1 baseline case not judged (outside its selection or not reached before the interruption)" in cmp.summary()
    assert "outside this run's scope" not in cmp.summary() and "outside this run's selection and" not in \
        report.markdown_diff(cmp)


@pytest.mark.parametrize("with_regressions", [True, False], ids=["beside regressions", "alone"])
def test_the_advice_on_improvements_never_says_to_record_a_run_that_has_regressions(with_regressions):
    # "5 improvements: refresh the baseline (--attn-record-baseline)" stood in a run with 3 slower cases:
    # following it recorded them as the new figures
    cmp = _mixed_comparison() if with_regressions else compare(by_key([rec("fast")]), by_key([rec("fast", median_ms=0.5)]))
    assert cmp.improvements and bool(cmp.regressions) == with_regressions
    advice = report.improvement_advice(cmp)
    assert ("--attn-record-baseline" in advice) != with_regressions, advice
    assert ("--case KEY" in advice) == with_regressions, advice
    assert f"Improvements ({len(cmp.improvements)}): {advice}" in report.markdown_diff(cmp)


@pytest.mark.parametrize("width", [20, 21, 90])
def test_a_long_case_key_in_the_terminal_table_keeps_its_workload_variant_and_its_end(width):
    # cut from the left, "...ated-gather/fwd+bwd/b1-q200-..." named no workload and half a variant
    from attnsuite.report import cut_middle

    key = "layer-decode/mla-absorbed/decode/b1-q64-h4-d32-m256-causal-tl-fp32-cpu-decode_step4-kv_lora32-nope_dim32"
    cut = cut_middle(key, width)
    assert len(cut) == width and "..." in cut, cut
    head, tail = cut.split("...")
    assert key.startswith(head) and key.endswith(tail) and abs(len(head) - len(tail)) <= 1, cut
    assert cut_middle("short", width) == "short"


@pytest.mark.parametrize("env, expected", [
    ({}, None),  # not on GitHub Actions: nothing
    ({"GITHUB_ACTIONS": "true"}, "::warning title=gate%3A none%2C really::NOT COMPARED: 100%25 sure%0Anext"),
])
def test_a_github_warning_is_written_only_on_github_actions_with_the_commands_escaping(env, expected):
    from attnsuite import report

    assert report.github_warning("gate: none, really", "NOT COMPARED: 100% sure\nnext", env=env) == expected
