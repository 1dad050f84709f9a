"""One self-contained HTML report of a benchmark run: summary, plots and sortable tables per workload.

No external resource (no CDN, no font, no image file): plots are inline SVG drawn here, the table
sorting is a few lines of inline JavaScript. Per workload and mode: TFLOP/s and peak memory against
sequence length, one line per variant (and problem shape, when a workload has several), with the
stated peak drawn where one exists (:func:`attnsuite.flops.stated_peak`); the gate's change per case
drawn against its noise band (from a gate JSON, ``--attn-gate-json``); and a table of every case
that ran (skipped cases are counted by reason in the summary at the top).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

from . import flops
from . import summary as summ
from .record import CaseRecord
from .report import figures
from .verdict import fmt_bytes, fmt_ms, fmt_pct
from .wording import count

# 12 colours that stay apart from each other (Tableau 10 plus two); beyond 12 lines the dash changes.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#003f5c", "#ffa600")
DASHES = ("", "6 3", "2 2", "8 3 2 3")


def esc(text: object) -> str:
    """THE HTML escaping of any text that is not ours (names, keys, details, paths)."""
    return html.escape(str(text), quote=True)


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        a, b = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
        step = max(1, (b - a) // 6)
        return [2.0 ** e for e in range(a, b + 1, step)]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def _fmt_tick(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0e}"


def short_label(text: str, limit: int = 60) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, marked with an ellipsis (a
    label cut mid-number had read "stored with the baseline, 0.")."""
    if len(text) <= limit:
        return text
    return text[:limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def svg_line_chart(lines: Mapping[str, Sequence[tuple[float, Optional[float]]]], *, title: str, xlabel: str,
                   ylabel: str, log_x: bool = True, hline: Optional[tuple[float, str]] = None,
                   width: int = 560, height: int = 300) -> str:
    """An inline SVG line chart: one polyline (with point markers) per line, a legend, axes with ticks.

    ``hline`` = (value, label) draws a dashed horizontal reference (a stated peak).
    """
    pts = [(x, y) for s in lines.values() for x, y in s if y is not None and x > 0]
    if not pts:
        return f'<p class="empty">{esc(title)}: no points</p>'
    ml, mr, mt, mb = 62, 10, 24, 40
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + ([hline[0]] if hline else [])
    xlo, xhi = min(xs), max(xs)
    if xlo == xhi:
        xlo, xhi = (xlo / 2, xhi * 2) if log_x else (xlo - 1, xhi + 1)
    ylo, yhi = 0.0, max(ys) * 1.08 or 1.0
    fx = (lambda x: math.log2(x)) if log_x else (lambda x: x)
    pw, ph = width - ml - mr, height - mt - mb

    def X(x: float) -> float:
        return ml + (fx(x) - fx(xlo)) / (fx(xhi) - fx(xlo)) * pw

    def Y(y: float) -> float:
        return mt + ph - (y - ylo) / (yhi - ylo) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height + 16 * len(lines)}" '
           f'role="img" aria-label="{esc(title)}">',
           f'<text x="{ml}" y="14" class="ct">{esc(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(xlo, xhi, log_x):
        if xlo <= t <= xhi:
            out.append(f'<line x1="{X(t):.1f}" y1="{mt + ph}" x2="{X(t):.1f}" y2="{mt + ph + 4}" stroke="#666"/>'
                       f'<text x="{X(t):.1f}" y="{mt + ph + 16}" text-anchor="middle">{_fmt_tick(t)}</text>')
    for t in _ticks(ylo, yhi, False):
        if ylo <= t <= yhi:
            out.append(f'<line x1="{ml}" y1="{Y(t):.1f}" x2="{ml + pw}" y2="{Y(t):.1f}" stroke="#eee"/>'
                       f'<text x="{ml - 4}" y="{Y(t) + 4:.1f}" text-anchor="end">{_fmt_tick(t)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(12,{mt + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    if hline:
        out.append(f'<line x1="{ml}" y1="{Y(hline[0]):.1f}" x2="{ml + pw}" y2="{Y(hline[0]):.1f}" stroke="#000" '
                   f'stroke-dasharray="4 4"/><text x="{ml + pw - 4}" y="{Y(hline[0]) - 4:.1f}" text-anchor="end">'
                   f'{esc(hline[1])}</text>')
    for i, (label, series) in enumerate(lines.items()):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[(i // len(PALETTE)) % len(DASHES)]
        good = [(X(x), Y(y)) for x, y in series if y is not None and x > 0]
        if len(good) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in good)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"'
                       + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"><title>{esc(label)}</title></circle>'
                for a, b in good]
        ly = height + 16 * i + 4
        out.append(f'<line x1="{ml}" y1="{ly}" x2="{ml + 18}" y2="{ly}" stroke="{colour}" stroke-width="2"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + f'/><text x="{ml + 24}" y="{ly + 4}">{esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_gate_chart(cases: Sequence[Mapping[str, Any]], *, title: str, width: int = 860) -> str:
    """Each case's judged time change (dot) against its noise band (grey bar), one row per case,
    labelled with the case key without its workload; red: gating, green: faster beyond the band."""
    rows = [c for c in cases if isinstance(c.get("time_change"), (int, float))]
    if not rows:
        return f'<p class="empty">{esc(title)}: no judged time changes</p>'
    ml, mr, row = 360, 10, 12
    span = max([abs(c["time_change"]) for c in rows] + [c.get("band") or 0 for c in rows] + [0.05]) * 1.1
    span = min(span, 2.0)
    pw = width - ml - mr
    height = 40 + row * len(rows)

    def X(v: float) -> float:
        return ml + (max(-span, min(span, v)) + span) / (2 * span) * pw

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart gate" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(title)}"><text x="{ml}" y="14" class="ct">{esc(title)}</text>',
           f'<line x1="{X(0):.1f}" y1="20" x2="{X(0):.1f}" y2="{height - 16}" stroke="#999"/>',
           f'<text x="{X(-span) + 2:.1f}" y="{height - 4}">{fmt_pct(-span)}</text>'
           f'<text x="{X(span) - 2:.1f}" y="{height - 4}" text-anchor="end">{fmt_pct(span)}</text>']
    for i, c in enumerate(sorted(rows, key=lambda c: c["key"])):
        y = 24 + i * row
        band = c.get("band") or 0.0
        colour = "#d62728" if c.get("gating") else ("#2ca02c" if c["time_change"] < -band else "#333")
        tip = f"{c['key']}: {fmt_pct(c['time_change'])} (band ±{band * 100:.1f}%) {verdict_text(c)}"
        label = str(c["key"]).split("/", 1)[-1]
        out.append(f'<text x="{ml - 4}" y="{y + row - 4}" text-anchor="end" font-size="9">{esc(label[:70])}</text>')
        out.append(f'<rect x="{X(-band):.1f}" y="{y}" width="{X(band) - X(-band):.1f}" height="{row - 3}" fill="#ddd"/>'
                   f'<circle cx="{X(c["time_change"]):.1f}" cy="{y + (row - 3) / 2:.1f}" r="3.5" fill="{colour}">'
                   f'<title>{esc(tip)}</title></circle>')
    out.append("</svg>")
    return "".join(out)


_COLUMNS = ("variant", "mode", "problem", "outcome", "median ms", "TFLOP/s", "% peak", "peak memory", "backend",
            "judged: baseline -> run", "gate change", "band", "verdict")


def verdict_text(case: Mapping[str, Any]) -> str:
    """A gate JSON case's verdict with what its second measurement said: a change beyond the band
    judged ``same`` had stood with no reason when the confirmation had not agreed."""
    text = "/".join(case.get("flags") or []) or str(case.get("verdict", "-"))
    if case.get("confirmed") is None:
        return text
    second = case.get("confirm_time_change")
    if not isinstance(second, (int, float)):
        second = case.get("confirm_mem_change")
    figure = f", second measurement {fmt_pct(second)}" if isinstance(second, (int, float)) else ""
    return f"{text} ({'confirmed' if case['confirmed'] else 'not confirmed'}{figure})"


def _cell(text: str, value: Optional[float] = None) -> str:
    v = "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f' data-v="{value:.6g}"'
    return f"<td{v}>{esc(text)}</td>"


def case_table(records: Sequence[CaseRecord], gate: Mapping[str, Mapping[str, Any]],
               calibration: Optional[Mapping[str, object]]) -> str:
    """A sortable table of the cases that ran (click a header to sort; numbers sort as numbers)."""
    head = "".join(f'<th data-col="{i}">{esc(c)}</th>' for i, c in enumerate(_COLUMNS))
    body = []
    for r in sorted(records, key=lambda r: (r.mode, r.problem, r.median_ms or math.inf)):
        pct = summ.percent_of_peak(r, calibration)[0] if r.outcome == "ok" else None
        g = gate.get(r.key, {})
        tc, band = g.get("time_change"), g.get("band")
        body.append("<tr>" + "".join([
            _cell(r.variant), _cell(r.mode), _cell(r.problem),
            _cell(r.outcome if r.outcome == "ok" else f"{r.outcome}: {(r.detail or '')[:100]}"),
            _cell(fmt_ms(r.median_ms) if r.median_ms else "-", r.median_ms),
            _cell("-" if r.rate() is None else f"{r.rate():.4g}", r.rate()),
            _cell("-" if pct is None else f"{pct:.1f}", pct),
            _cell(fmt_bytes(r.peak_mem_bytes), r.peak_mem_bytes),
            _cell(r.backend or "-"),
            # the figures the gate judged (device min on CUDA, min on CPU) and their change, named: the
            # median beside them is another statistic, and a +20.6% (min) beside a median 3.7x the
            # baseline's had read as a contradiction with nothing to check it against
            _cell(f"{fmt_ms(g.get('base_ms'))} -> {fmt_ms(g.get('cur_ms'))}" if isinstance(tc, (int, float)) else "-",
                  g.get("cur_ms") if isinstance(g.get("cur_ms"), (int, float)) else None),
            _cell(f"{fmt_pct(tc)} ({g.get('statistic') or 'judged'})" if isinstance(tc, (int, float)) else "-",
                  tc if isinstance(tc, (int, float)) else None),
            _cell(f"±{band * 100:.1f}%" if isinstance(band, (int, float)) else "-", band if isinstance(band, (int, float)) else None),
            # every finding (slower/memory-growth), as the terminal's tables show it
            _cell(verdict_text(g) if g else "-"),
        ]) + "</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}pre{background:#f6f6f6;padding:.8em;
overflow-x:auto}table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:2px 6px}th{background:#eee;cursor:pointer;user-select:none}th.asc:after{content:" \\25b2"}
th.desc:after{content:" \\25bc"}svg.chart{font-size:10px;margin:4px 12px 4px 0}svg .ct{font-weight:bold;
font-size:12px}.charts{display:flex;flex-wrap:wrap}.empty{color:#777}"""

# Sorting: numbers by their data-v attribute, text otherwise; clicking again reverses.
_JS = """document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var table=th.closest('table'),body=table.tBodies[0],col=+th.dataset.col,asc=!th.classList.contains('asc');
table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});th.classList.add(asc?'asc':'desc');
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=a.cells[col],y=b.cells[col];
var p=x.dataset.v,q=y.dataset.v,r;if(p!==undefined&&q!==undefined){r=parseFloat(p)-parseFloat(q)}
else if(p!==undefined){r=-1}else if(q!==undefined){r=1}else{r=x.textContent.localeCompare(y.textContent)}
return asc?r:-r});rows.forEach(function(row){body.appendChild(row)})})});
document.documentElement.dataset.ready='1';"""


def render(records: Mapping[str, CaseRecord], *, gate_json: Optional[Mapping[str, Any]] = None,
           source: str = "", fingerprint: Optional[Mapping[str, Any]] = None, gate_mode: str = "report",
           interrupted: str = "") -> str:
    """The whole HTML document for a run's records (and the gate's verdicts, when given)."""
    gate = {c["key"]: c for c in (gate_json or {}).get("cases", []) if isinstance(c, dict) and "key" in c}
    cal = ((gate_json or {}).get("calibration") or {}).get("baseline")
    regressions = [c for c in gate.values() if c.get("gating")]
    top = summary_lines(records, gate_json, gate_mode, interrupted)
    parts = [f"<h1>attnsuite report</h1><p>{esc(source)}"
             + (f" &middot; machine {esc(fingerprint.get('id', ''))}" if fingerprint else "") + "</p>",
             f'<pre id="summary">{esc(chr(10).join(top))}</pre>']
    by_workload: dict[str, list[CaseRecord]] = defaultdict(list)
    for r in records.values():
        by_workload[r.workload].append(r)
    parts.append("<p>" + " &middot; ".join(f'<a href="#w-{esc(w)}">{esc(w)}</a>' for w in sorted(by_workload)) + "</p>")
    for w in sorted(by_workload):
        recs = by_workload[w]
        parts.append(f'<section class="workload" id="w-{esc(w)}"><h2>{esc(w)}</h2><div class="charts">')
        for name, fig in figures({r.key: r for r in recs}).items():
            lines = fig.lines
            peak_value, peak_source = _stated(next(iter(lines.values()))[0][1], cal)
            parts.append(svg_line_chart({k: [(x, r.rate()) for x, r in v] for k, v in lines.items()},
                                        title=f"{name}: TFLOP/s", xlabel=fig.axis, ylabel="TFLOP/s",
                                        hline=(peak_value, f"peak {peak_value:.3g} ({short_label(peak_source)})")
                                        if peak_value else None))
            parts.append(svg_line_chart({k: [(x, None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20)
                                              for x, r in v] for k, v in lines.items()},
                                        title=f"{name}: peak memory above inputs", xlabel=fig.axis, ylabel="MiB"))
        wcases = [c for k, c in gate.items() if k.split("/")[0] == w]
        if wcases:
            parts.append(svg_gate_chart(wcases, title=f"{w}: gate change per case against its band"))
        parts.append("</div>")
        parts.append(case_table([r for r in recs if r.outcome != "skipped"], gate, cal))
        parts.append("</section>")
    title = "attnsuite report" + (f": {count(len(regressions), 'regression')}" if regressions else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>{''.join(parts)}"
            f"<script>{_JS}</script></body></html>\n")


def _stated(rec: CaseRecord, calibration: Optional[Mapping[str, object]]) -> tuple[Optional[float], str]:
    """The stable, stated peak a record's figure is drawn against (or None and why not)."""
    return flops.stated_peak(rec.extra.get("peak_tflops") if rec.extra else None,
                             str((rec.extra or {}).get("peak_source") or ""), summ.dtype_of(rec) or "",
                             dict(calibration) if calibration else None)


def summary_lines(records: Mapping[str, CaseRecord], gate_json: Optional[Mapping[str, Any]],
                  gate_mode: str = "report", interrupted: str = "") -> list[str]:
    """The report's top: the run's summary (:mod:`attnsuite.summary`), its verdict from a gate JSON."""
    return summ.terminal_lines(summary_from_gate_json(records, gate_json, gate_mode, interrupted))


def summary_from_gate_json(records: Mapping[str, CaseRecord], gate_json: Optional[Mapping[str, Any]],
                           gate_mode: str = "report", interrupted: str = "") -> summ.Summary:
    """The run's summary with the verdict a gate JSON (``--attn-gate-json``) holds: what `attnsuite report
    --gate-json` prints and what its HTML shows, from one function."""
    gate = dict(gate_json or {})
    cal = (gate.get("calibration") or {}).get("baseline")
    if not gate:
        why = ["no gate JSON given (--gate-json): no verdicts"]
    elif not gate.get("compared"):
        why = [str(gate.get("reason") or "no baseline")]
    else:
        why = []
    s = summ.build(records, None, gate_mode=gate_mode, baseline_lines=why)
    if gate.get("compared"):
        cases = [c for c in gate.get("cases", []) if isinstance(c, dict)]
        regs = [c for c in cases if c.get("gating")]
        # the mode the run was judged in, when its gate JSON says (an older one: a failure reads FAIL)
        mode = str(gate.get("gate_mode") or ("enforce" if gate.get("failed") else gate_mode))
        n_new = sum(1 for c in cases if c.get("verdict") == "new")
        s.verdict = summ.verdict_line(len(regs), len(cases) - n_new, int(gate.get("skipped_in_both") or 0), mode,
                                      summ.failed_counts(records), n_new,
                                      sum(1 for c in cases if c.get("verdict") == "missing"))
        s.baseline = [str(x) for x in gate.get("header") or []] or [f"baseline: {gate.get('baseline')}"]
        # each case's own message, as the terminal and gate.md word it (report.gate_lines): a missing
        # case had read "time - (band ±0.0%)" and a memory growth as its time change alone
        lines = [f"{'/'.join(c.get('flags') or []) or c.get('verdict')}: {c.get('key')}: {c['message']}"
                 if c.get("message") else  # a gate JSON from before messages were stored
                 f"{'/'.join(c.get('flags') or []) or c.get('verdict')}: {c.get('key')}; time "
                 f"{fmt_pct(c.get('time_change'))} (band ±{(c.get('band') or 0) * 100:.1f}%)" for c in regs]
        s.regressions, s.more_regressions = lines[:summ.MAX_REGRESSIONS], max(0, len(lines) - summ.MAX_REGRESSIONS)
    s.verdict = summ.interrupted_verdict(s.verdict, interrupted)  # the result file's own word
    # a gate JSON that compared nothing (a recording run, no baseline) has no baseline whose probe is missing
    label = "the baseline" if gate.get("compared") else flops.NO_BASELINE
    s.best = summ.best_per_workload(records, cal, label)
    s.peak_note = summ.peak_note(records, cal, label)
    return s


def step_summary(records: Mapping[str, CaseRecord], gate_json: Optional[Mapping[str, Any]], html_name: str,
                 interrupted: str = "") -> str:
    """The report's top as markdown for a CI job summary: the summary in a code block, and where the file is."""
    body = "\n".join(summary_lines(records, gate_json, interrupted=interrupted)).replace("```", "'''")  # cannot close the block early
    return (f"### attnsuite report\n\n```\n{body}\n```\n\nThe whole report (plots, sortable tables) is "
            f"`{html_name}` in this run's artifacts.\n")
