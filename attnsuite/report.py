"""Reports of a comparison: a terminal table, a markdown diff for PR review, and plots.

Every report of a comparison starts with :func:`header_lines`: the baseline (a fallback one with
what it can promise) and this instance's calibration against the baseline's. Tables show the time
statistic the verdict judged, labelled, with the median of the same timer beside it, and both
changes of a case that was measured twice (confirmation).

The markdown diff puts the regressions in its first lines (a reviewer sees what failed without
scrolling), then the findings that do not gate (host overhead, not confirmed), improvements
(refresh the baseline), new cases, and collapses the unchanged cases in ``<details>``. It starts
with :data:`MARKER`, an HTML comment by which the CI finds and updates its single PR comment.
Text that is not the suite's own goes through :func:`md_escape`, the one escaping function.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from .baseline import atomic_write_text
from .record import CaseRecord
from .summary import failed_counts, heading_status, out_of_scope_line, percent_of_peak, skip_reason_class
from .verdict import CaseVerdict, Comparison, fmt_bytes, fmt_ms, fmt_pct
from .summary import skip_reason_class
from .wording import clip, count

MARKER = "<!-- attnsuite-gate -->"
_MD_ROWS_MAX = 400  # a PR comment is capped at 65536 characters; the unchanged list is cut first

# Characters that start markdown syntax inside a line (emphasis, code, links, tables, strikethrough)
# and the backslash that escapes them; HTML's three are turned into entities.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_MD_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def md_escape(text: object) -> str:
    """THE markdown escaping of text that is not ours (variant names, case keys, details, paths).

    One line (newlines and control characters become a space), no HTML (``& < >`` as entities),
    and no markdown syntax (``\\ ` * _ [ ] | ~`` backslash-escaped), so a hostile name can neither
    break a table nor inject markup. Everything in the markdown reports goes through it.
    """
    out = _MD_BREAKS.sub(" ", str(text))
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", out)


def _change_cells(v: CaseVerdict) -> tuple[str, str, str, str, str, str, str]:
    """(judged statistic, baseline, this run, change, band, median, peak memory) of one verdict.

    The baseline and this-run cells are the statistic the verdict judged, labelled in the first
    cell; the medians of the same timer stand beside them, so a row never shows one number while
    the gate judged another. A second measurement's change follows the first after a slash.
    """
    b, c = v.base, v.cur
    if v.statistic:  # judged, or one side's figure where the other has none (new, newly failing, missing)
        judged = v.statistic
        base_t = fmt_ms(v.base_ms) if v.base_ms is not None or (b and b.outcome == "ok") else (b.outcome if b else "-")
        cur_t = fmt_ms(v.cur_ms) if v.cur_ms is not None or (c and c.outcome == "ok") else (c.outcome if c else "not run")
        median = f"{fmt_ms(v.base_median_ms)} -> {fmt_ms(v.cur_median_ms)}"
    else:  # no time judged (new, missing, failing, not gated): medians go in the median column only
        judged = "not gated" if v.time_note.endswith("not gated") else "none"
        base_t = "-" if b and b.outcome == "ok" else (b.outcome if b else "-")
        cur_t = "-" if c and c.outcome == "ok" else (c.outcome if c else "not run")
        base_m = b.median_ms if b and b.outcome == "ok" else None
        cur_m = c.median_ms if c and c.outcome == "ok" else None
        median = f"{fmt_ms(base_m)} -> {fmt_ms(cur_m)}" if base_m is not None or cur_m is not None else ""
    change = fmt_pct(v.time_change) if v.time_change is not None else ""
    if v.confirm_time_change is not None:
        change = f"{change or '-'} / {fmt_pct(v.confirm_time_change)}"
    band = f"±{v.band * 100:.1f}%" if v.band is not None else ""
    mem = ""
    if b and c and b.peak_mem_bytes is not None and c.peak_mem_bytes is not None:
        mem = f"{fmt_bytes(b.peak_mem_bytes)} -> {fmt_bytes(c.peak_mem_bytes)}"
        if v.confirm_mem_change is not None and v.mem_change is not None:
            mem += f" ({fmt_pct(v.mem_change)} / {fmt_pct(v.confirm_mem_change)})"
    elif c and c.peak_mem_bytes is not None:
        mem = fmt_bytes(c.peak_mem_bytes)
    return judged, base_t, cur_t, change, band, median, mem


# --------------------------------------------------------------------------- header


def _bandwidth(gbs: float) -> str:
    return f"{gbs / 1000:.2g} TB/s" if gbs >= 1000 else f"{gbs:.3g} GB/s"


def _calib_figures(cal: Mapping[str, object]) -> list[tuple[str, str, Optional[float]]]:
    """(name, text, value) of the calibration figures a report shows, in a fixed order."""
    out: list[tuple[str, str, Optional[float]]] = []
    bw = cal.get("mem_bandwidth_gbs")
    if isinstance(bw, (int, float)) and not isinstance(bw, bool) and bw > 0:
        out.append(("copy", _bandwidth(float(bw)), float(bw)))
    mm = cal.get("matmul_tflops")
    if isinstance(mm, (int, float)) and not isinstance(mm, bool) and mm > 0:
        dtype = str(cal.get("matmul_dtype") or "").replace("bfloat16", "bf16").replace("float16", "fp16")
        name = f"{dtype} matmul".strip()
        out.append((name, f"{float(mm):.3g} TFLOP/s", float(mm)))
    return out


def calibration_line(cur: Optional[Mapping[str, object]], base: Optional[Mapping[str, object]]) -> Optional[str]:
    """This instance's calibration probes against the baseline's, in one line (None when neither has any).

    e.g. ``instance: copy 3.9 TB/s, bf16 matmul 690 TFLOP/s; baseline: 4.1 TB/s, 702 TFLOP/s (-5%, -2%)``.
    Verdicts are not normalised by it; it tells a reader whether the instance itself is slower.
    """
    mine = _calib_figures(cur or {})
    theirs = {name: (text, value) for name, text, value in _calib_figures(base or {})}
    if not mine and not theirs:
        return None
    left = "instance: " + (", ".join(f"{n} {t}" for n, t, _ in mine) if mine else "no calibration recorded")
    if not theirs:
        return f"{left}; baseline: no calibration recorded"
    shown = [n for n, _, _ in mine if n in theirs] or list(theirs)
    right = ", ".join(theirs[n][0] if mine else f"{n} {theirs[n][0]}" for n in shown)
    rel = [f"{(value / theirs[n][1] - 1) * 100:+.0f}%" for n, _, value in mine if n in theirs and value]
    return f"{left}; baseline: {right}" + (f" ({', '.join(rel)})" if rel else "")


def header_lines(cmp: Comparison) -> list[str]:
    """The lines every report of a comparison starts with: the baseline (fallback and promise), calibration."""
    lines = list(cmp.header)
    cal = calibration_line(cmp.cur_calibration, cmp.base_calibration)
    if cal:
        lines.append(cal)
    return lines


# --------------------------------------------------------------------------- terminal


def gate_lines(cmp: Comparison) -> list[str]:
    """One line per gating case: which case, which verdict, by how much."""
    return [f"{v.label}: {v.key}: {v.message}" for v in cmp.regressions]


def improvement_advice(cmp: Comparison) -> str:
    """How to keep the improvements' figures: recording the whole run would record its regressions
    too (as their new figures, silently), so with any regression only the improved cases. A run that
    was recorded already kept them: it says so."""
    if cmp.recorded:
        return f"this run was recorded into {cmp.recorded}, which now holds their new figures"
    if cmp.side_names[0] != "baseline":  # an A/B: two trees, no stored figures to refresh
        return f"the head tree improves on {cmp.reference} here (an A/B stores no figures to refresh)"
    if not cmp.regressions:
        return "refresh the baseline (--attn-record-baseline, or attnsuite record) to keep the new figures"
    return ("to keep their new figures record these cases alone (attnsuite record <this run's JSON> --case KEY, "
            "one --case per case): recording the whole run would record its regressions as well")


def gate_label(cmp: Comparison) -> str:
    """How a command line prints a gating case: ``GATE`` when the gate enforces, ``REPORTED`` in report
    mode (as the pytest gate does), so that a CI log searched for GATE finds only what fails the job."""
    return "GATE" if cmp.gate_mode == "enforce" else "REPORTED"


def reported_lines(cmp: Comparison) -> list[str]:
    """One line per finding that does not fail the gate (host overhead, not confirmed)."""
    return [f"{v.label}: {v.key}: {v.message}" for v in cmp.reported]


def terminal_report(cmp: Comparison, verdict: str, *, show_same: bool = False, note_prefix: str = "note: ",
                    simulated: Optional[str] = None) -> list[str]:
    """What a command prints for a comparison (``attnsuite compare`` and ``attnsuite ab`` alike): its
    notes, the table, a line per gating and per reported finding, then the verdict line. ``ab`` had
    printed the table alone: a CPU case +88% slower read "2 unchanged cases not shown, pass", with
    neither the CPU floor's note nor the verdict line's "largest slowdown read as same"."""
    lines = [f"{note_prefix}{note}" for note in cmp.notes]
    if cmp.verdicts:
        lines.append(terminal_table(cmp, show_same=show_same))
    lines += [f"{gate_label(cmp)} {line}" for line in gate_lines(cmp)]
    lines += [f"NOT GATING {line}" for line in reported_lines(cmp)]
    lines.append(verdict)
    if simulated:  # every format says it (the markdown had, the table had not)
        lines.append(simulated)
    return lines


TABLE_HEADER = ("verdict", "case", "judged", "baseline", "this run", "change", "band", "median", "peak memory")


def cut_middle(text: str, width: int) -> str:
    """``text`` in ``width`` characters, its middle replaced by "...": a case key keeps its workload,
    variant and mode in front and its dtype and device at the end (cut from the left, a ``faster`` row
    had named no variant, and no other line of the terminal named the case)."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]


def terminal_table(cmp: Comparison, *, show_same: bool = False, max_rows: int = 200) -> str:
    """A plain-text table of the verdicts (unchanged cases left out unless ``show_same``)."""
    new_skipped = [v for v in cmp.new if v.cur is not None and v.cur.outcome == "skipped"]
    rows = [v for v in cmp.verdicts if show_same or ((v.verdict != "same" or v.reported) and v not in new_skipped)]
    header = table_header(cmp.side_names)
    body = [(v.label, v.key) + _change_cells(v) for v in rows[:max_rows]]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    widths[1] = min(widths[1], 90)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths)):
            if len(cell) > w:
                cell = cut_middle(cell, w)
            out.append(cell.ljust(w) if i < 3 or i == len(cells) - 1 else cell.rjust(w))
        return "  ".join(out).rstrip()

    # no row, no column heads: a header over nothing had read as a table that lost its rows
    table = [line(header), line(["-" * w for w in widths])] + [line(r) for r in body] if body else []
    if any(v.confirm_time_change is not None for v in rows[:max_rows]):
        table.append(CONFIRMED_CHANGE_NOTE)
    lines = header_lines(cmp) + table
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows")
    hidden = len(cmp.verdicts) - len(rows)
    skipped = 0 if show_same else len(new_skipped)
    if hidden - skipped:
        lines.append(f"({count(hidden - skipped, 'unchanged case')} not shown)")
    if skipped:
        lines.append(f"({count(skipped, 'new case')} that {'is' if skipped == 1 else 'are'} skipped not shown: "
                     "counted by reason in the summary)")
    lines.append(cmp.summary())
    return "\n".join(lines)


# --------------------------------------------------------------------------- markdown


def table_header(sides: tuple[str, str] = ("baseline", "this run")) -> tuple[str, ...]:
    """The verdict table's columns, its two sides named (``Comparison.side_names``)."""
    return (*TABLE_HEADER[:3], *sides, *TABLE_HEADER[5:])


# a reviewer had read "+321.1% / +329.3%" with nothing saying what the second figure was
CONFIRMED_CHANGE_NOTE = ("change \"a / b\": a, the first measurement's; b, the confirmation's (measured again "
                         "after every other case)")


def _md_table(verdicts: Iterable[CaseVerdict], with_message: bool = True,
              sides: tuple[str, str] = ("baseline", "this run")) -> list[str]:
    verdicts = list(verdicts)
    cols = ["verdict", "workload", "variant", "mode", "problem", *table_header(sides)[2:]]
    if with_message:
        cols.append("details")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for v in verdicts:
        r = v.record
        verdict = f"**{md_escape(v.label)}**" if v.gating else md_escape(v.label)
        cells = [md_escape(c) for c in (r.workload, r.variant, r.mode, r.problem, *_change_cells(v))]
        if with_message:
            cells.append(md_escape(v.message))
        lines.append("| " + " | ".join([verdict] + cells) + " |")
    if any(v.confirm_time_change is not None for v in verdicts):
        lines += ["", md_escape(CONFIRMED_CHANGE_NOTE)]
    return lines


def _md_finding(v: CaseVerdict) -> str:
    return f"- **{md_escape(v.label)}** {md_escape(v.key)}: {md_escape(v.message)}"


def _skip_reasons_text(cmp: Comparison, shown: int = 3) -> str:
    """"reasons: 3 x variant runs on ['cuda'], not cpu; 1 x quick tier budget" for the cases skipped in this run."""
    reasons = Counter(skip_reason_class(v.cur) for v in cmp.verdicts if v.cur is not None and v.cur.outcome == "skipped")
    text = "; ".join(f"{n} x {md_escape(r)}" for r, n in reasons.most_common(shown))
    rest = sum(n for _, n in reasons.most_common()[shown:])
    return f"reasons: {text}" + (f"; {rest} more (see the JSON)" if rest else "")


def nothing_selected_markdown(line: str, title: str = "attnsuite regression gate") -> str:
    """gate.md of a session whose selection held no benchmark case (pytest's exit status 5): no
    comparison, so no table, only why."""
    return no_run_markdown("⚪ **NOTHING SELECTED**", line, title)


def no_run_markdown(status: str, line: str, title: str = "attnsuite regression gate") -> str:
    """gate.md of a session that ran no benchmark case: the heading's ``status`` and ``line``, why."""
    return "\n".join([MARKER, f"### {md_escape(title)}: {status}", "",
                      f"**{md_escape(line[:1].upper() + line[1:])}**", ""])


def markdown_diff(cmp: Comparison, *, title: str = "attnsuite regression gate", context: Sequence[str] = (),
                  head: Sequence[str] = (), outside: str = "") -> str:
    """The PR-review markdown: verdict line, ``head`` (the run's summary, :mod:`attnsuite.summary`),
    regressions, improvements, new, unchanged collapsed (cases skipped in both runs only counted).
    ``outside``: why the run fails apart from its cases and the comparison (:func:`summary.heading_status`)."""
    # a case that crashed or raised fails its pytest item even when the gate finds no regression
    status = heading_status(cmp, failed_counts({v.key: v.cur for v in cmp.verdicts if v.cur is not None}), outside)
    counts = ", ".join(f"{n} {k}" for k, n in cmp.counts().items()) or "no cases"
    out = [MARKER, f"### {md_escape(title)}: {status}", "", *head]
    # the summary in ``head`` quotes the baseline's lines already: each is quoted once
    quoted = [f"> {md_escape(line)}" for line in header_lines(cmp)]
    if cmp.out_of_scope:
        quoted.append(f"> {md_escape(out_of_scope_line(cmp.out_of_scope, cmp.interrupted))}")
    out += [q for q in quoted if q not in head]
    if out[-1] != "":
        out.append("")
    # the sides as the comparison names them: an A/B has a base tree and a head tree, not a baseline
    reference = cmp.side_names[0][:1].upper() + cmp.side_names[0][1:]
    label = md_escape(cmp.baseline_label)
    # an A/B's label names its side already ("base HEAD (1a2b3c), 3 rounds"): "Base: base HEAD" had read twice
    named = (label[:1].upper() + label[1:] if label.lower().startswith(cmp.side_names[0].lower() + " ")
             else f"{reference}: {label}")
    out.append(f"{counts}. {named}; compared with {md_escape(cmp.current_label)}.")
    for line in list(context) + cmp.notes:
        out.append(f"> {md_escape(line)}")
    out.append("")
    if cmp.regressions:
        fail = "these fail the gate" if cmp.gate_mode == "enforce" else "these would fail an enforcing gate"
        out += [f"#### Regressions ({len(cmp.regressions)}): {fail}", ""]
        out += [_md_finding(v) for v in cmp.regressions]
        out += ["", "<details>", "<summary>Regressions as a table</summary>", "",
                *_md_table(cmp.regressions, with_message=False, sides=cmp.side_names), "", "</details>", ""]
    if cmp.reported:
        out += [f"#### Reported, not gating ({len(cmp.reported)}): host overhead, findings a second "
                "measurement did not confirm", ""]
        out += [_md_finding(v) for v in cmp.reported] + [""]
    if cmp.improvements:
        out += [f"#### Improvements ({len(cmp.improvements)}): {improvement_advice(cmp)}",
                "", *_md_table(cmp.improvements, sides=cmp.side_names), ""]
    # the run's summary (``head``) counts skips by reason; without one (attnsuite ab, compare) the reasons
    # are listed here, a few at most, each with how many cases it skipped
    where = "counted by reason in the summary above" if head else _skip_reasons_text(cmp)
    new = [v for v in cmp.new if not (v.cur is not None and v.cur.outcome == "skipped")]
    if len(new) < len(cmp.new):
        n = len(cmp.new) - len(new)
        out += [f"{count(n, 'new case')} {'is' if n == 1 else 'are'} skipped ({where}).", ""]
    if new:
        out += [f"#### New cases ({len(new)})", "", *_md_table(new, sides=cmp.side_names), ""]
    same = [v for v in cmp.unchanged if not v.skipped_in_both]  # those are counted by reason in the summary
    skipped = len(cmp.unchanged) - len(same)
    if skipped:
        out += [f"{count(skipped, 'case')} {'was' if skipped == 1 else 'were'} skipped in both runs ({where}).", ""]
    if same:
        shown = same[:_MD_ROWS_MAX]
        out += ["<details>", f"<summary>Unchanged ({len(same)})</summary>", "", *_md_table(shown, sides=cmp.side_names)]
        if len(same) > len(shown):
            out.append(f"\n... {len(same) - len(shown)} more unchanged cases (see the result JSON)")
        out += ["", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def markdown_run(records: Mapping[str, CaseRecord], *, title: str = "attnsuite results", context: Sequence[str] = (),
                 head: Sequence[str] = (), calibration: Optional[Mapping[str, object]] = None) -> str:
    """A markdown table of one run's cases (no baseline to compare with), after ``head`` (the run's
    summary); skipped cases are counted by reason there (or in one line here), not given rows.
    ``calibration`` is the probe the summary's % of peak is read against (a gate JSON's baseline
    calibration), so the table and the summary give one figure."""
    out = [MARKER, f"### {md_escape(title)}", "", *head] + [f"> {md_escape(c)}" for c in context] + [""]
    skipped = [r for r in records.values() if r.outcome == "skipped"]
    if skipped and not head:
        reasons = sorted({skip_reason_class(r) for r in skipped})
        out += [f"{count(len(skipped), 'case')} skipped ({md_escape('; '.join(reasons))}).", ""]
    out += ["TFLOP/s and % peak: by device time where a case has one (CUDA), else by the median.", ""]
    out.append("| workload | variant | mode | problem | outcome | median | IQR | device | TFLOP/s | % peak | "
               "peak memory | backend |")
    out.append("|" + "---|" * 12)
    for key in sorted(records):
        r = records[key]
        if r.outcome == "skipped":
            continue
        pct = percent_of_peak(r, calibration)[0] if r.outcome == "ok" else None  # a stable, stated peak only
        outcome = md_escape(r.outcome) if r.outcome == "ok" else f"**{md_escape(r.outcome)}** {md_escape(clip(r.detail or '', 100))}"
        cells = [md_escape(c) for c in (r.workload, r.variant, r.mode, r.problem)] + [outcome] + [
            md_escape(c) for c in (fmt_ms(r.median_ms), fmt_ms(r.iqr_ms), fmt_ms(r.device_ms),
                                   "-" if r.rate() is None else f"{r.rate():.4g}",
                                   "-" if pct is None else f"{pct:.3g}", fmt_bytes(r.peak_mem_bytes),
                                   r.backend or "-")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def without_root(text: str, root: os.PathLike | str) -> str:
    """``text`` with the checkout's absolute path ``root`` left out of the paths under it
    (``/runner/_work/x/baselines/a.json`` -> ``baselines/a.json``): a PR comment had shown the runner's
    folders."""
    prefix = os.path.join(os.path.abspath(root), "")
    return text.replace(prefix, "") if prefix != os.sep else text


def write_markdown(text: str, path: os.PathLike | str) -> str:
    """Write the markdown to ``path`` atomically; return the path."""
    atomic_write_text(path, text)
    return str(path)


def write_summary(folder: os.PathLike | str, summary: dict, text: str) -> None:
    """An evaluation's result (scripts/gate_eval.py, scripts/ab_eval.py): ``summary.json`` and its
    markdown ``summary.md`` in ``folder``, each written atomically."""
    atomic_write_text(os.path.join(folder, "summary.json"), json.dumps(summary, indent=1, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(folder, "summary.md"), text)


def github_warning(title: str, text: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """A ``::warning`` workflow command for GitHub Actions (None elsewhere): shown on the job's page and
    its run summary, where a line in a 1000-line log is not seen."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return None

    def escaped(value: str, in_property: bool = False) -> str:  # the workflow commands' own escaping
        out = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return out.replace(":", "%3A").replace(",", "%2C") if in_property else out

    return f"::warning title={escaped(title, in_property=True)}::{escaped(text)}"


def step_summary_target(wanted: object, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The file a ``--step-summary`` option will append to (None when not asked or not on GitHub
    Actions), so commands can check it with their other outputs before any work."""
    env = os.environ if env is None else env
    return env.get("GITHUB_STEP_SUMMARY") or None if wanted else None


def append_step_summary(text: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Append to ``$GITHUB_STEP_SUMMARY`` when it is set (GitHub Actions); return its path or None."""
    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    # The runner owns this file and reads it after the step: appending is its documented protocol.
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
    return target


# --------------------------------------------------------------------------- plots

_LEN_RE = re.compile(r"(?:^|-)q(\d+)(?:k(\d+))?(?=-|$)")
_BATCH_RE = re.compile(r"(?:^|-)b\d+(?=-|$)")


def seq_len(rec: CaseRecord) -> Optional[int]:
    """The sequence length of a case: ``extra['seq_len']``, else the key length in the problem id."""
    if rec.extra and isinstance(rec.extra.get("seq_len"), int):
        return rec.extra["seq_len"]
    m = _LEN_RE.search(rec.problem)
    if not m:
        return None
    return int(m.group(2) or m.group(1))


def series_signature(rec: CaseRecord) -> str:
    """The problem id without its batch and lengths: the cases one line of a plot joins."""
    sig = _LEN_RE.sub("", rec.problem, count=1)
    sig = _BATCH_RE.sub("", sig, count=1)
    return sig.strip("-")


@dataclass
class Series:
    """One line of a plot: a variant's points against sequence length."""

    label: str
    points: list[tuple[int, Optional[float], Optional[float]]] = field(default_factory=list)  # (L, TFLOP/s, MiB)


def lengths(rec: CaseRecord) -> tuple[Optional[int], Optional[int]]:
    """(query length, key length) from the problem id (``q128``, or ``q1k512`` for decode)."""
    m = _LEN_RE.search(rec.problem)
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2) or m.group(1))


@dataclass
class Figure:
    """One plot's data: the x axis's name and, per line, its (length, record) points sorted by length."""

    axis: str
    lines: dict[str, list[tuple[int, CaseRecord]]]


def figures(records: Mapping[str, CaseRecord]) -> dict[str, Figure]:
    """THE grouping of ok cases into plots: one figure per workload and mode, every workload included.

    The x axis is the key length, or the query length where every key length of the figure is the
    same (decode). A line is a variant; where a workload and mode have several problem shapes (the
    id without batch and lengths), a figure per shape when each shape has two lengths or more,
    else one figure whose line labels carry the shape.
    """
    groups: dict[tuple[str, str], list[CaseRecord]] = defaultdict(list)
    for r in records.values():
        if r.outcome == "ok" and lengths(r)[0] is not None:
            groups[(r.workload, r.mode)].append(r)
    out: dict[str, Figure] = {}
    for (workload, mode), recs in sorted(groups.items()):
        shapes: dict[str, list[CaseRecord]] = defaultdict(list)
        for r in recs:
            shapes[series_signature(r)].append(r)
        if all(len({lengths(r) for r in rs}) >= 2 for rs in shapes.values()):
            for shape, rs in sorted(shapes.items()):
                out[f"{workload} {mode} {shape}".strip()] = _figure(rs, label_shape=False)
        else:
            out[f"{workload} {mode}"] = _figure(recs, label_shape=len(shapes) > 1)
    return out


def _figure(recs: Sequence[CaseRecord], label_shape: bool) -> Figure:
    use_q = len({lengths(r)[1] for r in recs}) <= 1 and len({lengths(r)[0] for r in recs}) > 1
    lines: dict[str, list[tuple[int, CaseRecord]]] = defaultdict(list)
    for r in recs:
        q, k = lengths(r)
        label = f"{r.variant} [{series_signature(r)}]" if label_shape else r.variant
        lines[label].append((q if use_q else k, r))  # type: ignore[arg-type]
    return Figure("query length" if use_q else "sequence length",
                  {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(lines.items())})


def plot_series(records: Mapping[str, CaseRecord]) -> dict[str, list[Series]]:
    """Plot data: per figure (:func:`figures`) the series per line: (length, TFLOP/s, MiB) points."""
    out = {}
    for name, fig in figures(records).items():
        out[name] = [Series(label, [(x, r.rate(), None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20)
                                    for x, r in pts]) for label, pts in fig.lines.items()]
    return out


def replace_sorted(s: Series) -> Series:
    """A series with its points sorted by length."""
    return Series(s.label, sorted(s.points, key=lambda p: p[0]))


# 20 colours that stay apart (Tableau 20's strong and light pairs, strong first)
PLOT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
                "#dbdb8d", "#9edae5")


@dataclass
class PlotResult:
    """Files written, or why none were."""

    paths: list[str]
    message: str


def make_plots(runs: Mapping[str, Mapping[str, CaseRecord]], outdir: os.PathLike | str) -> PlotResult:
    """PNG plots of TFLOP/s and peak memory against sequence length, one line per variant and run.

    ``runs`` maps a label (e.g. "this run", "baseline") to records; the first run is drawn solid,
    the others dashed, and only in the figures of the first run: a baseline of every workload had
    added plots of workloads the run never selected. Without matplotlib nothing is drawn and the
    message says so.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI runners
        import matplotlib.pyplot as plt
    except ImportError:
        return PlotResult([], "plots skipped: matplotlib is not installed (pip install 'attnsuite[plots]')")
    data = {label: plot_series(recs) for label, recs in runs.items()}
    figures = sorted(next(iter(data.values()), {}))
    if not figures:
        return PlotResult([], "plots skipped: no ok case with a sequence length")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig_name in figures:
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
        labels = sorted({s.label for d in data.values() for s in d.get(fig_name, [])})
        for i, (label, d) in enumerate(data.items()):
            for s in d.get(fig_name, []):
                # one colour per line label (the same variant keeps it across runs); past the palette,
                # the marker changes; the first run solid, the others dashed
                j = labels.index(s.label)
                colour, marker = PLOT_COLOURS[j % len(PLOT_COLOURS)], "os^Dvx"[(j // len(PLOT_COLOURS)) % 6]
                style = "-" if i == 0 else "--"
                name = s.label if len(data) == 1 else f"{s.label} ({label})"
                xs = [p[0] for p in s.points]
                ax_t.plot(xs, [p[1] for p in s.points], style, color=colour, marker=marker, label=name)
                ax_m.plot(xs, [p[2] for p in s.points], style, color=colour, marker=marker, label=name)
        for ax, what in ((ax_t, "TFLOP/s"), (ax_m, "peak memory above inputs (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length")
            ax.set_ylabel(what)
            ax.grid(True, alpha=0.3)
        ax_m.set_yscale("log")
        ax_t.legend(fontsize=7)
        fig.suptitle(fig_name)
        fig.tight_layout()
        stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", fig_name)
        path = out / f"{stem}.png"
        tmp = out / f".{stem}.tmp.png"
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)  # atomic, like every file the suite writes
        plt.close(fig)
        paths.append(str(path))
    return PlotResult(paths, f"{count(len(paths), 'plot')} written to {out}")
