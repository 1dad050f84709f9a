"""The last screen of a benchmark run: the three answers on one screen (pure: records in, text out).

A person who ran the benchmarks wants, without scrolling: **the verdict** and the baseline it came
from (or why there was none); **the regressions**, each with its change and noise band; **the best
variant per workload** with its time, TFLOP/s and % of peak where that figure means something
(:func:`attnsuite.flops.stated_peak`); and **where the files went**. Skipped cases are counted by
reason, never listed one per row. :func:`build` gathers that from a run's records and the gate's
:class:`~attnsuite.verdict.Comparison`; :func:`terminal_lines` and :func:`markdown_lines` render it
(the markdown version heads gate.md).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from . import flops
from .record import FAILING_OUTCOMES, CaseRecord, failed_counts
from .verdict import Comparison, CaseVerdict, fmt_ms, fmt_pct
from .wording import clip, count, none_of

MODE_PREFERENCE = ("fwd+bwd", "fwd", "bwd")  # the mode a workload's best variant is named for
MAX_REGRESSIONS = 12  # more are counted, and listed in gate.md
MAX_FAILURES = 8
MAX_REASONS = 8
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}


@dataclass
class Best:
    """The fastest variant of a workload on its largest problem in one mode."""

    workload: str
    mode: str
    problem: str
    variant: str
    median_ms: float
    tflops: Optional[float]
    pct_peak: Optional[float]
    pct_flag: str  # why a % is above 100 ("" when it is not)
    variants: int  # how many variants ran ok on that problem and mode
    runner_up: str = ""  # "next-variant +x%"
    statistic: str = "median"  # what ranked them: "device" (CUDA device-time median) or "median" (event/CPU)


@dataclass
class Summary:
    """Everything the last screen says, before rendering."""

    verdict: str  # one line: PASS / FAIL / REPORTED / NOT COMPARED, with the counts
    baseline: list[str]  # the baseline and what it promises, or why there was none
    regressions: list[str]
    more_regressions: int
    outcomes: str  # "374 ok, 228 skipped, ..."
    failures: list[str]  # cases that failed outright (numerics, error, crash, timeout)
    skip_reasons: list[tuple[int, str]]
    best: list[Best]
    peak_note: str  # what % of peak is measured against (or why there is none)
    files: list[tuple[str, str]] = field(default_factory=list)
    checked: str = ""  # how the ok cases' numerics were checked (:func:`numerics_line`)
    backends: str = ""  # cases whose SDPA kernel was not the one declared (:func:`backend_mismatch_line`)
    simulated: str = ""  # cases whose times carry an injected slowdown (:func:`simulated_line`)


def dtype_of(rec: CaseRecord) -> Optional[str]:
    """The record's dtype name (``float32``): the peak's dtype when recorded, else read from the problem id."""
    d = rec.extra.get("peak_dtype") if rec.extra else None
    if isinstance(d, str) and d:
        return d
    short = next((t for t in reversed(rec.problem.split("-")) if t in _DTYPES), None)
    return _DTYPES.get(short) if short else None


def percent_of_peak(rec: CaseRecord, calibration: Optional[Mapping[str, object]],
                    calibration_label: str = "the baseline") -> tuple[Optional[float], str, str]:
    """(% of peak, flag, the peak in words) of one ok record, against a stable, stated peak only."""
    peak, source = flops.stated_peak(rec.extra.get("peak_tflops") if rec.extra else None,
                                     str((rec.extra or {}).get("peak_source") or ""), dtype_of(rec) or "",
                                     dict(calibration) if calibration else None, calibration_label)
    pct, flag = flops.pct_of_peak(rec.rate(), peak, source)
    return pct, flag, source


def skip_reason_class(rec: CaseRecord) -> str:
    """A skip's reason without what is particular to the case: the first clause, the variant's name
    replaced by "variant", and whatever follows a colon dropped ("quick tier budget: ..." -> "quick tier budget")."""
    text = (rec.detail or "no reason given").split("; ")[0]
    if text.startswith(NOT_RUN):
        # why a variant's later cases were not run (it hung in one): the variant is the reason, and
        # "not run" alone had hidden both it and the cause; the case it hung in is left out
        why = text[len(NOT_RUN):].split(": ")[0]
        return NOT_RUN + re.sub(r" in \S+/\S+$", "", why).strip()[:120]
    if rec.variant:
        text = re.sub(rf"(?<![\w-]){re.escape(rec.variant)}(?![\w-])", "variant", text)
    text = text.split(": ")[0].strip()
    return text[:90] or "no reason given"


NOT_RUN = "not run: "  # a skip the run chose for a variant that misbehaved (plugin_bench's hung variants)


def best_per_workload(records: Mapping[str, CaseRecord], calibration: Optional[Mapping[str, object]] = None,
                      calibration_label: str = "the baseline") -> list[Best]:
    """Per workload, the fastest ok variant on its largest problem (by FLOPs), in the first mode of
    :data:`MODE_PREFERENCE` that has an ok case; sorted by workload.

    Ranked by device time where every candidate has one (CUDA: the figure the gate judges, free of
    the host's speed), else by the median the timer measured. A variant that failed any case of the
    workload and mode (wrong numbers, a crash) is not a candidate: its fastest case there may be one
    too large for the oracle, and a wrong kernel is not the fastest one."""
    failed = {(r.workload, r.mode, r.variant) for r in records.values() if r.outcome in FAILING_OUTCOMES}
    by_workload: dict[str, list[CaseRecord]] = {}
    for r in records.values():
        if r.outcome == "ok" and r.median_ms and (r.workload, r.mode, r.variant) not in failed:
            by_workload.setdefault(r.workload, []).append(r)
    out = []
    for workload in sorted(by_workload):
        recs = by_workload[workload]
        mode = next(m for m in MODE_PREFERENCE + tuple(sorted({r.mode for r in recs})) if any(r.mode == m for r in recs))
        in_mode = [r for r in recs if r.mode == mode]
        problem = max(in_mode, key=lambda r: (r.flops or 0.0, r.problem)).problem
        candidates = [r for r in in_mode if r.problem == problem]
        by_device = all(r.device_ms for r in candidates)

        def time_of(r: CaseRecord) -> float:
            return r.device_ms if by_device else r.median_ms

        ranked = sorted(candidates, key=lambda r: (time_of(r), r.variant))
        top = ranked[0]
        pct, flag, _ = percent_of_peak(top, calibration, calibration_label)
        runner_up = ""
        if len(ranked) > 1:
            runner_up = f"{ranked[1].variant} {fmt_pct(time_of(ranked[1]) / time_of(top) - 1)}"
        out.append(Best(workload, mode, problem, top.variant, time_of(top), top.rate(), pct, flag, len(ranked),
                        runner_up, "device" if by_device else "median"))
    return out


def regression_line(v: CaseVerdict) -> str:
    """One regression: its case, its finding, the change against its band, the judged figures."""
    parts = [f"{v.label}: {v.key}"]
    if v.time_change is not None:
        band = f" (band ±{v.band * 100:.1f}%)" if v.band is not None else ""
        confirm = f", second measurement {fmt_pct(v.confirm_time_change)}" if v.confirm_time_change is not None else ""
        parts.append(f"time {fmt_pct(v.time_change)}{band}{confirm}")
        if v.statistic:
            parts.append(f"{v.statistic} {fmt_ms(v.base_ms)} -> {fmt_ms(v.cur_ms)}")
    if v.mem_change is not None and "memory-growth" in v.flags:
        parts.append(f"peak memory {fmt_pct(v.mem_change)}")
    if len(parts) == 1:
        parts.append(v.message)
    return "; ".join(parts)


def peak_note(records: Mapping[str, CaseRecord], calibration: Optional[Mapping[str, object]],
              calibration_label: str = "the baseline") -> str:
    """What % of peak is measured against, in words (the two most common peaks), or why there is none."""
    sources = Counter()
    for r in records.values():
        if r.outcome == "ok" and r.rate() is not None:
            sources[percent_of_peak(r, calibration, calibration_label)[2]] += 1
    if not sources:
        return "% of peak: no timed case"
    return "% of peak against: " + "; ".join(s for s, _ in sources.most_common(2))


def verdict_line(regressions: int, judged: int, skipped_in_both: int, gate_mode: str,
                 failed_cases: Optional[Mapping[str, int]] = None, new: int = 0, not_run: int = 0,
                 against: str = "the baseline") -> str:
    """The summary's first line: the run's outcome, from the gate and from the cases that failed.

    ``against`` names what the run is judged against, in every clause ("the base tree" for an A/B).
    ``judged`` counts the cases compared with a baseline entry; ``new`` the cases the baseline does
    not have (or had skipped), which are reported and not judged: a run whose cases are all new
    (a float32 baseline for a bfloat16 run, another suite's file) reads NOT COMPARED, never PASS.
    A case skipped here and in the baseline is judged ``same`` (its status did not change) but says
    nothing about speed, so those are counted apart: a selection that measured nothing never reads
    as a plain pass. ``not_run`` counts the judged cases this run selected and did not run
    (``missing``): they had been counted as run. ``failed_cases`` counts this run's failing outcomes (crash, error, ...): each
    fails its pytest item whatever the gate says, so the line leads with them and never reads PASS.
    """
    among = f"{count(judged, 'case')} judged"
    if skipped_in_both and skipped_in_both == judged:
        among += f" (none measured: every one was skipped here and in {against})"
    elif skipped_in_both or not_run:
        parts = [f"{judged - skipped_in_both - not_run} run", f"{not_run} not run here" if not_run else "",
                 f"{skipped_in_both} skipped here and in {against}" if skipped_in_both else ""]
        among += f" ({', '.join(p for p in parts if p)})"
    new_text = f"; {new} new, not in {against} (not judged)" if new else ""
    failed = {k: n for k, n in (failed_cases or {}).items() if n}
    if not judged:
        gate = (f"{none_of(new, 'case')} is in {against}: nothing was judged" if new
                else "no case to judge")
        return f"{_failed_head(failed)}; {gate}" if failed else f"NOT COMPARED: {gate}"
    if not regressions:
        gate = f"no regression among {among} against {against}{new_text}"
    elif gate_mode == "enforce":
        gate = f"{count(regressions, 'regression')} among {among} (gate enforced){new_text}"
    else:
        why = "the regressions do not fail the run, its failed cases do" if failed else "the run does not fail"
        gate = f"{count(regressions, 'regression')} among {among} (gate in report mode: {why}){new_text}"
    if failed:
        return f"{_failed_head(failed)}; {gate}"
    return f"{'PASS' if not regressions else 'FAIL' if gate_mode == 'enforce' else 'REPORTED'}: {gate}"


def out_of_scope_line(n: int, interrupted: bool = False) -> str:
    """What a report says of the ``n`` baseline cases a run's selection left out (not judged); of an
    interrupted run, which answers only for what it ran, they include the selected cases it never reached."""
    if interrupted:
        return (f"{count(n, 'baseline case')} {'was' if n == 1 else 'were'} not judged: outside this run's "
                "selection, or selected but not reached before the run was interrupted")
    return f"{count(n, 'baseline case')} {'was' if n == 1 else 'were'} outside this run's selection and not judged"


# A slowdown this large that still read "same" is said in the verdict line itself: under the CPU's
# 100% floor a steady +54% had read as a plain pass in a PR review (the band was stated only below).
LARGE_SAME = 0.25


def largest_same_slowdown(cmp: Comparison) -> Optional[str]:
    """The largest time growth of a case judged ``same`` (inside its band), when at least
    :data:`LARGE_SAME`, as a clause of the verdict line; else None. A finding that a second
    measurement did not confirm is left out: its change is the first measurement's, outside its band
    (it had read "+633.1%, inside its ±209.4% band"), and the findings that do not gate list it."""
    same = [v for v in cmp.verdicts if v.verdict == "same" and v.time_change is not None
            and v.time_change >= LARGE_SAME and v.confirmed is not False]
    if not same:
        return None
    top = max(same, key=lambda v: v.time_change)
    band = f", inside its ±{fmt_pct(top.band).lstrip('+')} band" if top.band is not None else ""
    return f"largest slowdown read as same: {top.key} {fmt_pct(top.time_change)}{band}"


def comparison_verdict(cmp: Comparison, gate_mode: str, failed_cases: Optional[Mapping[str, int]] = None) -> str:
    """:func:`verdict_line` for a comparison: its new cases counted apart from the judged ones, and the
    largest slowdown that its wide band kept from being flagged (:func:`largest_same_slowdown`)."""
    n_new = len(cmp.new)
    line = verdict_line(len(cmp.regressions), len(cmp.verdicts) - n_new, cmp.n_skipped_in_both, gate_mode,
                        failed_cases, n_new, sum(1 for v in cmp.verdicts if v.verdict == "missing"), cmp.reference)
    large = largest_same_slowdown(cmp)
    return f"{line}; {large}" if large and not line.startswith("NOT COMPARED") else line


_HEADINGS = {"PASS": "✅ pass", "FAIL": "❌ **FAIL**", "REPORTED": "⚠️ **REPORTED** (gate in report mode: not failing)",
             "NOT COMPARED": "⚪ **NOT COMPARED**"}


def heading_status(cmp: Comparison, failed_cases: Mapping[str, int], outside: str = "") -> str:
    """The markdown heading's status: the first word of the verdict line, so a PR comment never shows
    FAIL over a job that passed (report mode) nor a pass over a comparison of nothing. ``outside``: why
    the run fails apart from its cases and the comparison (a package that did not load, a variant named
    and not measured), or ""."""
    failed = {k: n for k, n in failed_cases.items() if n}
    if outside and not failed and not cmp.regressions:
        status = f"❌ **FAIL**: {outside}"
    elif failed and not cmp.regressions:
        status = f"❌ **FAIL**: {sum(failed.values())} case(s) failed, no regression"
    else:
        status = _HEADINGS[comparison_verdict(cmp, cmp.gate_mode, failed).split(":", 1)[0]]
        if status == _HEADINGS["PASS"] and cmp.gate_mode == "report":
            # a reviewer could not tell this pass from an enforcing gate's: here nothing could have failed
            status += " (gate in report mode: a regression would not have failed the run)"
    # an interrupted run judged only what it ran: a green heading over it had read as a pass in PR comments
    return f"⏹️ **INTERRUPTED** (only the cases that ran were judged: {status})" if cmp.interrupted else status


NOT_COMPARED = "the run was not judged against a baseline"


def interrupted_verdict(verdict: str, interrupted: str) -> str:
    """The verdict line of a session that stopped early (``interrupted`` says how; "" for one that did not).

    A pass of part of a run is not a pass: its ``PASS:`` word goes (``INTERRUPTED (...): PASS: ...``
    had read as a pass while ``attnsuite compare`` of the same file exits 1)."""
    if not interrupted:
        return verdict
    if verdict.startswith("PASS: "):
        verdict = verdict[len("PASS: "):] + " (of the cases that ran)"
    how = "" if interrupted == "interrupted" else f" ({interrupted})"
    return f"INTERRUPTED{how}: {verdict}"


def numerics_line(records: Mapping[str, CaseRecord]) -> str:
    """How the ok cases' outputs and gradients were checked, by ``extra.numerics_check``: a case `ok`
    whose output was too large for the oracle and had no row-wise check was checked to be finite
    only, and the summary must not let it read like one compared with the oracle."""
    how = Counter()
    for r in records.values():
        if r.outcome != "ok":
            continue
        check = str((r.extra or {}).get("numerics_check") or "")
        how["oracle" if check == "oracle" else "spot" if check.startswith("spot:")
            else "finite" if check.startswith("finite") else "unsaid" if not check else "other"] += 1
    if not how or set(how) == {"unsaid"}:
        # records that keep no check (a baseline's entries, a run of older code): nothing to say; it
        # had read "numerics of the 458 ok cases: 458 otherwise" for a compare of two baselines
        return ""
    parts = [f"{how['oracle']} against the whole float64 oracle" if how["oracle"] else "",
             f"{how['spot']} on spot rows (outputs too large for it)" if how["spot"] else "",
             f"{how['finite']} checked to be finite only (no row-wise oracle for them: layer families, decode "
             "steps, approximate classes, outside families without Family.rows: the correctness tests check them)"
             if how["finite"] else "",
             f"{how['other']} otherwise" if how["other"] else "",
             f"{how['unsaid']} not saying how" if how["unsaid"] else ""]
    return (f"numerics of the {sum(how.values())} ok cases: " + ", ".join(p for p in parts if p)
            + " (each case's extra.numerics_check in the benchmark JSON, --benchmark-json)")


def backend_mismatch_line(records: Mapping[str, CaseRecord]) -> str:
    """The cases whose SDPA kernel was not the one their variant declares (``extra.backend_mismatch``),
    by variant, or "": their times are another kernel's (SDPA falls back without a word where the
    declared one does not take the problem). Had been in the JSON only, read by no report."""
    by: dict[str, list[CaseRecord]] = {}
    for r in sorted(records.values(), key=lambda r: r.key):
        if r.outcome == "ok" and (r.extra or {}).get("backend_mismatch"):
            by.setdefault(r.variant, []).append(r)
    if not by:
        return ""
    parts = [f"{v} declares {rs[0].extra.get('declared_backend', '?')}, ran "
             f"{' / '.join(sorted({r.backend for r in rs}))} ({count(len(rs), 'case')}, e.g. {rs[0].key})"
             for v, rs in by.items()]
    n = sum(len(rs) for rs in by.values())
    return f"{count(n, 'case')} timed another SDPA kernel than declared: " + "; ".join(parts)


def simulated_line(records: Mapping[str, CaseRecord], requested: Sequence[str] = ()) -> str:
    """Which cases ran with a slowdown injected (``--attn-inject-slowdown``), or "": the gate catching
    it is the point of injecting one, but a report that did not say so read as the code's own times.
    Variants in ``requested`` (the option's names) that no case slowed are named: an injection into a
    variant outside the selection had run and passed without a word, as if the gate had missed it."""
    slowed = Counter(r.variant for r in records.values() if (r.extra or {}).get("injected_ms"))
    unmatched = sorted(set(requested) - set(slowed))
    missed = (f"--attn-inject-slowdown {', '.join(unmatched)}: no case of {'it' if len(unmatched) == 1 else 'them'} "
              "ran in this selection, so nothing of it was slowed") if unmatched else ""
    if not slowed:
        return f"NOT SIMULATED: {missed}" if missed else ""
    names = ", ".join(f"{v} ({n})" for v, n in sorted(slowed.items()))
    return (f"SIMULATED: {count(sum(slowed.values()), 'case')} ran with a slowdown injected (--attn-inject-slowdown: "
            f"{names}): their times are not the code's own, and no baseline is recorded from this run"
            + (f"; {missed}" if missed else ""))


def unmeasured_named(records: Sequence[CaseRecord], named: Sequence[str]) -> dict[str, str]:
    """Variant name -> a line, for each variant that ``--attn-only`` named and of which this run measured
    nothing: every case of it skipped here or out of memory, or none selected. The run fails for each: a
    CUDA-only kernel benchmarked on a CPU runner had read "PASS: no regression among 29 cases judged (none
    measured ...)" with exit status 0, and so had a kernel that asked for 4 TiB on every call (an outside
    tester's trial: out of memory ends a case as a skip, and no case of it was measured)."""
    cases: dict[str, list[CaseRecord]] = {}
    for r in records:
        cases.setdefault(r.variant, []).append(r)
    out: dict[str, str] = {}
    for name in named:
        mine = cases.get(name, [])
        if any(r.outcome not in ("skipped", "oom") for r in mine):
            continue
        oom = [r for r in mine if r.outcome == "oom"]
        skipped = [r for r in mine if r.outcome == "skipped"]
        if oom:
            parts = [f"{count(len(oom), 'case')} ran out of memory (e.g. {clip(oom[0].detail or '?', 160)})"]
            if skipped:
                parts.append(f"{count(len(skipped), 'case')} skipped (e.g. {clip(skipped[0].detail or '?', 120)})")
            out[name] = (f"--attn-only {name}: none of its {count(len(mine), 'case')} was measured: "
                         f"{'; '.join(parts)}: nothing of it was measured")
        elif mine:
            out[name] = (f"--attn-only {name}: none of its {count(len(mine), 'case')} ran on this machine, every "
                         f"one was skipped (e.g. {clip(mine[0].detail or '?', 160)}): nothing of it was measured")
        else:
            out[name] = (f"--attn-only {name}: no case of it is in this selection (its workloads, modes, -k): "
                         "nothing of it was measured")
    return out


def _failed_head(failed: Mapping[str, int]) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in failed.items())
    return f"FAIL: {sum(failed.values())} case(s) of this run failed ({kinds})"


def build(records: Mapping[str, CaseRecord], cmp: Optional[Comparison], *, gate_mode: str = "report",
          baseline_lines: Sequence[str] = (), files: Sequence[tuple[str, str]] = (),
          interrupted: str = "", uncompared: str = "", broken: Sequence[str] = (),
          injected: Sequence[str] = (), unmeasured: Sequence[str] = ()) -> Summary:
    """The last screen's content.

    ``cmp`` is the gate's comparison (None when there was none: ``baseline_lines`` then say why);
    ``gate_mode`` is ``--attn-gate`` (enforce fails on a regression; report only shows it);
    ``files`` are (what, path) pairs of what the run wrote. ``interrupted`` says how a session that
    stopped early ended (``"interrupted after 12 of 48 selected cases ..."``): the first line then
    starts ``INTERRUPTED``, so a partial run never reads as a plain PASS. ``uncompared`` is the first
    line when there was no comparison (default ``NOT COMPARED: ...``): a recording run says it was
    recorded, a run that required a baseline and had none says it failed. ``broken``: installed
    packages whose variants could not be loaded (registry.broken_entry_points): the run fails for
    them, and the first line leads with that.
    ``injected``: the variants ``--attn-inject-slowdown`` named (one that no case of the run slowed is said).
    ``unmeasured``: :func:`unmeasured_named`'s lines: the run fails for them, and the first line leads with that.
    """
    outcomes = Counter(r.outcome for r in records.values())
    order = ["ok", "skipped", "oom", *FAILING_OUTCOMES]
    outcome_text = ", ".join(f"{outcomes[k]} {k}" for k in order if outcomes.get(k)) or "no cases"
    resumed = sum(1 for r in records.values() if (r.extra or {}).get("resumed"))
    if resumed:  # a resumed run had not said that part of it came from an earlier session
        # "(42 of them ...)" after "22 ok, 77 skipped" had read as 42 of the skipped
        outcome_text += f"; {resumed} of these {count(len(records), 'case')} carried on from an earlier session's journal (--attn-resume)"
    failures = [f"{r.outcome}: {r.key}: {clip(r.detail.splitlines()[0], 160) if r.detail else ''}".rstrip(": ")
                for r in sorted(records.values(), key=lambda r: r.key) if r.outcome in FAILING_OUTCOMES]
    reasons = Counter(skip_reason_class(r) for r in records.values() if r.outcome == "skipped")
    calibration = cmp.base_calibration if cmp is not None else None
    label = "the baseline" if cmp is not None else flops.NO_BASELINE
    if cmp is not None:
        regs = cmp.regressions
        verdict = comparison_verdict(cmp, gate_mode, failed_counts(records))
        base = list(cmp.header) or [f"baseline: {cmp.baseline_label}"]  # the header names the baseline
        if cmp.recorded:  # compared with the baseline as it was, then written into it
            base.insert(0, f"RECORDED: compared with the baseline as it was, then this run was recorded into "
                           f"{cmp.recorded}")
        if cmp.out_of_scope:
            base.append(out_of_scope_line(cmp.out_of_scope, cmp.interrupted))
        reg_lines = [regression_line(v) for v in regs]
    else:
        failed = failed_counts(records)
        why = uncompared or f"NOT COMPARED: {NOT_COMPARED}"
        verdict = f"{_failed_head(failed)}; {why.split(': ', 1)[-1]}" if failed else why
        base = list(baseline_lines) or ["no baseline for this machine"]
        reg_lines = []
    verdict = interrupted_verdict(verdict, interrupted)
    # the rest of the line after a FAIL head: a "no regression ..." that had followed FAIL without a
    # word read as the failure's own finding (a first-time user's trial)
    def rest(line: str) -> str:
        return f"otherwise {line.removeprefix('PASS: ')}" if line.startswith("PASS: ") else line
    if unmeasured:
        # whole: its example is clipped already, and a clip of the line had cut it inside its parenthesis
        verdict = f"FAIL: {unmeasured[0]}; {rest(verdict)}"
    if broken:
        verdict = (f"FAIL: {count(len(broken), 'installed package')} could not load {'its' if len(broken) == 1 else 'their'} "
                   f"variants ({clip(broken[0], 160)}); {rest(verdict)}")
    return Summary(verdict=verdict, baseline=base, regressions=reg_lines[:MAX_REGRESSIONS],
                   more_regressions=max(0, len(reg_lines) - MAX_REGRESSIONS), outcomes=outcome_text,
                   failures=failures, skip_reasons=[(n, k) for k, n in reasons.most_common()],
                   best=best_per_workload(records, calibration, label),
                   peak_note=peak_note(records, calibration, label), files=list(files),
                   checked=numerics_line(records), simulated=simulated_line(records, injected),
                   backends=backend_mismatch_line(records))


def _best_cells(b: Best) -> list[str]:
    tf = "-" if b.tflops is None else f"{b.tflops:.3g}"
    pct = "-" if b.pct_peak is None else f"{b.pct_peak:.1f}%" + (" (!)" if b.pct_flag else "")
    time = fmt_ms(b.median_ms) + (" (device)" if b.statistic == "device" else "")
    return [b.workload, b.mode, b.variant, time, tf, pct, f"{b.variants}", b.runner_up or "-", b.problem]


BEST_HEADER = ["workload", "mode", "fastest", "median time", "TFLOP/s", "% peak", "of", "next", "problem (largest)"]
# the two columns whose heading alone did not say what they count (a baseline keeper's trial)
BEST_LEGEND = ("of: how many variants ran that problem in that mode (ok cases); next: the runner-up, and how much slower it "
               "was than the fastest")


def _reasons(s: Summary) -> list[str]:
    shown = s.skip_reasons[:MAX_REASONS]
    lines = [f"  {n:>4}  {reason}" for n, reason in shown]
    rest = sum(n for n, _ in s.skip_reasons[MAX_REASONS:])
    if rest:
        lines.append(f"  {rest:>4}  {len(s.skip_reasons) - MAX_REASONS} other reasons (see the JSON)")
    return lines


def terminal_lines(s: Summary) -> list[str]:
    """The summary as plain lines for the terminal (one screen for a typical run)."""
    out = [s.verdict] + [f"  {line}" for line in s.baseline] + ([s.simulated] if s.simulated else [])
    if s.regressions:
        out.append(f"regressions ({len(s.regressions) + s.more_regressions}):")
        out += [f"  {line}" for line in s.regressions]
        if s.more_regressions:
            out.append(f"  ... and {s.more_regressions} more (see gate.md)")
    out.append(f"cases: {s.outcomes}")
    if s.checked:
        out.append(f"  {s.checked}")
    if s.backends:
        out.append(f"  {s.backends}")
    out += [f"  {line}" for line in s.failures[:MAX_FAILURES]]
    if len(s.failures) > MAX_FAILURES:
        out.append(f"  ... and {len(s.failures) - MAX_FAILURES} more failures")
    if s.skip_reasons:
        out.append("skipped, by reason:")
        out += _reasons(s)
    if s.best:
        out.append("fastest variant per workload (largest problem):")
        rows = [BEST_HEADER] + [_best_cells(b) for b in s.best]
        widths = [max(len(r[i]) for r in rows) for i in range(len(BEST_HEADER) - 1)]
        for r in rows:
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        out.append(f"  {s.peak_note}")
        out.append(f"  {BEST_LEGEND}")
        flagged = [b for b in s.best if b.pct_flag]
        for b in flagged:
            out.append(f"  (!) {b.workload}: {b.pct_peak:.0f}% {b.pct_flag}")
    if s.files:
        out.append("files: " + ", ".join(f"{what} {path}" for what, path in s.files))
    return out


def markdown_lines(s: Summary, escape) -> list[str]:
    """The summary as markdown (heads gate.md); ``escape`` is report.md_escape, the one escaping rule."""
    out = [f"**{escape(s.verdict)}**", ""] + [f"> {escape(line)}" for line in s.baseline] + [""]
    if s.simulated:
        out += [f"**{escape(s.simulated)}**", ""]
    if s.regressions:
        out += [f"**Regressions ({len(s.regressions) + s.more_regressions})**", ""]
        out += [f"- {escape(line)}" for line in s.regressions]
        if s.more_regressions:
            out.append(f"- ... and {s.more_regressions} more (below)")
        out.append("")
    out.append(f"Cases: {escape(s.outcomes)}." + (f" {escape(s.checked[0].upper() + s.checked[1:])}." if s.checked else ""))
    if s.backends:
        out.append(f"- {escape(s.backends)}")
    out += [f"- **{escape(line)}**" for line in s.failures[:MAX_FAILURES]]
    if len(s.failures) > MAX_FAILURES:  # the list had stopped at MAX_FAILURES without a word
        out.append(f"- ... and {len(s.failures) - MAX_FAILURES} more failures (each case's outcome and detail "
                   "are in the benchmark JSON)")
    if s.skip_reasons:
        out += ["", "| skipped | reason |", "|---:|---|"]
        out += [f"| {n} | {escape(reason)} |" for n, reason in s.skip_reasons]
    if s.best:
        out += ["", "| " + " | ".join(BEST_HEADER) + " |", "|---|---|---|---:|---:|---:|---:|---|---|"]
        out += ["| " + " | ".join(escape(c) for c in _best_cells(b)) + " |" for b in s.best]
        out += ["", escape(s.peak_note), "", escape(BEST_LEGEND)]
        out += [f"- (!) {escape(b.workload)}: {b.pct_peak:.0f}% {escape(b.pct_flag)}" for b in s.best if b.pct_flag]
    if s.files:
        # escaped text, not a code span: a backslash escape inside backticks shows ("gate\_json")
        out += ["", "Files: " + ", ".join(f"{escape(what)} {escape(path)}" for what, path in s.files)]
    return out + [""]
