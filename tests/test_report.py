"""Reports: the terminal table, the markdown diff for PR review, the job summary, plot data."""

from __future__ import annotations

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
    assert "fa-sweep/slow/fwd/" in line and "slower by 50.0%" in line and "1.000 ms -> 1.500 ms" in line


def test_markdown_table_cells_escape_pipes_so_the_table_does_not_break():
    cmp = compare(by_key([rec("a")]), by_key([rec("a", outcome="error", detail="bad | value <x>")]))
    md = report.markdown_diff(cmp)
    assert "bad \\| value &lt;x>" in md


def test_a_passing_diff_says_pass_and_has_no_regression_section():
    cmp = compare(by_key([rec("a")]), by_key([rec("a")]))
    md = report.markdown_diff(cmp)
    assert "✅ pass" in md and "Regressions" not in md


def test_terminal_table_lists_changed_cases_and_the_summary_line():
    text = report.terminal_table(_mixed_comparison())
    assert text.splitlines()[0].split()[:2] == ["verdict", "case"]
    assert "newly-oom" in text and "(2 unchanged cases not shown)" in text
    assert text.splitlines()[-1].startswith("FAIL: 3 regression(s)")
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
    recs = by_key([rec("flash", problem=f"b{16384 // L}-q{L}-h16-d128-causal-bf16-cuda0", tflops=L / 10)
                   for L in (1024, 4096, 2048)]
                  + [rec("math", problem="b16-q1024-h16-d128-causal-bf16-cuda0"),
                     rec("math", problem="b4-q4096-h16-d128-causal-bf16-cuda0", outcome="oom", median_ms=None)])
    figs = report.plot_series(recs)
    (name, series), = figs.items()
    assert name == "fa-sweep fwd h16-d128-causal-bf16-cuda0"
    flash = next(s for s in series if s.label == "flash")
    assert [p[0] for p in flash.points] == [1024, 2048, 4096] and flash.points[0][1] == pytest.approx(102.4)
    assert [p[0] for p in next(s for s in series if s.label == "math").points] == [1024]


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
