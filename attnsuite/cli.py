"""``attnsuite`` command line: compare runs, record baselines, make reports.

    attnsuite compare OLD NEW          # OLD, NEW: pytest-benchmark result JSON or baseline files
    attnsuite record RESULT.json       # write/refresh baselines/<fingerprint-id>.json from a run
    attnsuite record R1.json R2.json R3.json   # ... from several runs: per case, the median (combine.py)
    attnsuite report RESULT.json [--baseline B] [--markdown out.md] [--plots DIR] [--html out.html [--gate-json G]]
    attnsuite check baselines/*.json   # validate baseline files
    attnsuite ab --base REF [-- PYTEST_ARGS]   # same-machine A/B of a git ref against the working tree (ab.py)

Exit status: 0 pass; 1 the gate fails (a gating verdict, with ``--gate enforce``, the default);
2 bad input: unreadable or malformed file, incompatible machines without ``--allow-mismatch``,
bad arguments. The verdicts are the pytest gate's: both call :func:`attnsuite.gate.judge_runs`
with the thresholds of :func:`attnsuite.gate.thresholds_for`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from . import baseline as bl
from . import ab, gate, report, summary
from .combine import WIDE_SPREAD, combine_runs
from .output_paths import output_options_problem
from .record import CaseRecord
from .verdict import CONFIRMABLE, Comparison, Scope, ThresholdsError, load_thresholds, looks_like_thresholds
from .wording import count, none_of

EXIT_OK, EXIT_GATE, EXIT_INPUT = 0, 1, 2


def _judge(old: bl.Run, new: bl.Run, args: argparse.Namespace,
           scope: Optional[Union[Scope, Callable[[CaseRecord], bool]]] = None) -> Comparison:
    """The one compare path (:func:`attnsuite.gate.judge_runs`) with the one thresholds rule; the
    baselines folder in play is the reference file's folder."""
    cfg, _ = gate.thresholds_for(args.thresholds, Path(old.path).parent if old.path else None)
    cmp = gate.judge_runs(old, new, thresholds=cfg, scope=scope, allow_mismatch=args.allow_mismatch)
    # both files named: the terminal's header had named OLD only (a reviewer's trial)
    cmp.header = [f"reference: {old.label}", f"compared with it: {new.label}"]
    cmp.gate_mode = getattr(args, "gate", "report")  # `report` has no --gate: it fails nothing
    first_only = [v for v in cmp.regressions if v.confirmed is None and any(f in CONFIRMABLE for f in v.flags)]
    if first_only:
        # a loaded CPU run had failed here on one measurement, where the pytest gate measures again
        shown = ", ".join(v.key for v in first_only[:3]) + (f" and {len(first_only) - 3} more" if len(first_only) > 3 else "")
        cmp.notes.append(f"{count(len(first_only), 'regression')} {'rests' if len(first_only) == 1 else 'rest'} on a "
                         f"first measurement only ({shown}): "
                         f"{new.path or new.label} holds no second one (the pytest gate measures a case it flags again "
                         "before failing it, unless --attn-no-confirm; attnsuite compare judges what the files hold)")
    return cmp


def _emit(cmp: Comparison, args: argparse.Namespace, out, last: summary.Summary) -> None:
    head = summary.markdown_lines(last, report.md_escape)
    if args.format == "json":
        print(json.dumps({**cmp.to_json(), "verdict_line": last.verdict, "simulated": last.simulated or None},
                         indent=1), file=out)
    elif args.format == "markdown":
        print(report.markdown_diff(cmp, head=head), file=out)
    else:
        print("\n".join(report.terminal_report(cmp, last.verdict, show_same=args.all, simulated=last.simulated)),
              file=out)
    if args.markdown or args.step_summary:  # --step-summary alone had been ignored without a word
        text = report.markdown_diff(cmp, head=head)
        if args.markdown:
            report.write_markdown(text, args.markdown)
        if args.step_summary and not report.append_step_summary(text):
            # on stderr: stdout may be the JSON a tool parses (report says the same on its own stdout)
            print("GITHUB_STEP_SUMMARY is not set: no job summary written", file=sys.stderr)


def _check_outputs(files: dict[str, Optional[str]], folders: dict[str, Optional[str]] = {},
                   inputs: Mapping[str, Optional[os.PathLike | str]] = {}) -> None:
    """Every output option checked before any work (ValueError naming it: exit 2, never the gate's 1),
    none of them one of the files read (``inputs``)."""
    why = output_options_problem(files, folders, inputs)
    if why:
        raise ValueError(why)


def _thresholds_read(args: argparse.Namespace, reference: Optional[str]) -> Optional[Path]:
    """The thresholds file a comparison with ``reference`` reads (the one lookup, gate.thresholds_path_for,
    as :func:`_judge` calls it), or None when nothing is compared or the built-ins apply."""
    return gate.thresholds_path_for(args.thresholds, Path(reference).parent) if reference else None


def _what_differs(old: bl.Run, new: bl.Run) -> str:
    """Why two result files share no case, as far as their records tell: the variants, workloads or
    problems that neither has in common with the other (two runs of different variants had read
    "another dtype, device or tier?")."""
    for field, what in (("variant", "variants"), ("workload", "workloads"), ("problem", "problems")):
        mine, theirs = ({getattr(r, field) for r in run.records.values()} for run in (new, old))
        if mine and theirs and not mine & theirs:
            shown = [", ".join(sorted(names)[:4]) + (" ..." if len(names) > 4 else "") for names in (mine, theirs)]
            return f"they hold different {what}: {shown[0]} here, {shown[1]} there"
    return "another dtype, device or tier? another suite's file?"


def cmd_compare(args: argparse.Namespace, out) -> int:
    _check_outputs({"--markdown": args.markdown,
                    "$GITHUB_STEP_SUMMARY": report.step_summary_target(args.step_summary)},
                   inputs={"OLD": args.old, "NEW": args.new, "the thresholds file": _thresholds_read(args, args.old)})
    # either may be a baseline: one that does not parse had been called a "result file"
    old = bl.load_run(args.old, kind="OLD (a result or baseline file)")
    new = bl.load_run(args.new, kind="NEW (a result or baseline file)")
    for path, run, side in ((args.old, old, "OLD"), (args.new, new, "NEW")):
        if not run.records:  # every case of the other file had read as a regression ("missing")
            # named as what it is: an empty baseline had been called a "result file"
            raise bl.ResultFileError(path, "no case in it: nothing to compare",
                                     f"{side} ({'a baseline' if run.kind == 'baseline' else 'a result file'})")
    scope = None
    if args.workload or args.variant:
        for option, names, field in (("--workload", args.workload, "workload"), ("--variant", args.variant, "variant")):
            present = {getattr(r, field) for run in (old, new) for r in run.records.values()}
            unknown = sorted(set(names or ()) - present)
            if unknown:  # a typo would otherwise pass the gate judging nothing
                raise ValueError(f"{option} {', '.join(unknown)}: no case of either file has it "
                                 f"(they have: {', '.join(sorted(present)) or 'none'})")
        narrow = Scope(workloads=frozenset(args.workload) or None, variants=frozenset(args.variant) or None)
        old.records = {k: r for k, r in old.records.items() if r in narrow}
        new.records = {k: r for k, r in new.records.items() if r in narrow}
        stored = gate.run_scope(new)  # and what the new run itself selected
        scope = lambda rec: rec in narrow and rec in stored  # noqa: E731
    cmp = _judge(old, new, args, scope)
    if not cmp.verdicts:  # as pytest exits 5 when it collects nothing: a gate over nothing is no pass
        narrowed = " and the --workload/--variant filters" if args.workload or args.variant else ""
        raise ValueError(f"no case was judged: {args.new}'s selection{narrowed} leave no case of either file "
                         f"to compare ({len(old.records)} in {args.old}, {len(new.records)} in {args.new})")
    if len(cmp.new) == len(cmp.verdicts):  # every case new: the files share no case (another dtype, another suite)
        raise ValueError(f"no case was judged: {none_of(len(cmp.new), 'case')} of {args.new} is in {args.old} "
                         f"({_what_differs(old, new)})")
    # The verdict line of the run's own summary (attnsuite.summary.verdict_line): a case of NEW that
    # crashed or failed its numerics fails here as it failed its pytest item, even as a "new" case.
    judged = {v.key: v.cur for v in cmp.verdicts if v.cur is not None}
    last = summary.build(judged, cmp, gate_mode=args.gate, interrupted=new.interrupted)
    _emit(cmp, args, out, last)
    # an interrupted run answers only for what it ran: a CI step comparing it must not read as a pass
    failing = cmp.failed or bool(summary.failed_counts(judged)) or bool(new.interrupted)
    if failing and args.gate == "enforce" and not cmp.failed and not summary.failed_counts(judged):
        # the last line can read PASS over what it ran: say why the status is 1 all the same
        print(f"exit status {EXIT_GATE}: {args.new} comes from a session that was {new.interrupted}: it answers "
              "only for the cases it ran, so it is not a pass", file=out)
    return EXIT_GATE if failing and args.gate == "enforce" else EXIT_OK


def cmd_record(args: argparse.Namespace, out) -> int:
    _refuse_repeated_runs(args.result)
    if not args.baseline and not Path(args.dir).is_dir():  # a typo had made a new folder (pytest refuses it too)
        raise ValueError(f"--dir {args.dir}: {'is not a folder' if Path(args.dir).exists() else 'no such folder'} "
                         "(make it first, or name the file with --baseline)")
    folder = Path(args.baseline).parent if args.baseline else None
    if folder is not None and not folder.is_dir():  # as --dir: a typo in the path had made the folders it named
        raise ValueError(f"--baseline {args.baseline}: its folder {folder} "
                         f"{'is not a folder' if folder.exists() else 'does not exist'} (make it first)")
    runs = [bl.load_results(path) for path in args.result]
    _refuse_repeated_run_ids(args.result, runs)
    for path, one in zip(args.result, runs):
        if not one.records:  # recording nothing had still replaced the baseline's calibration
            raise bl.ResultFileError(path, "no case in it: nothing to record (no baseline was written)")
        if one.foreign:
            print(f"note: {path}: {one.foreign} benchmark(s) without an attnsuite record left out", file=out)
    # before the combining's report: it had printed how the runs combined, then refused one of them
    bl.refuse_unrecordable(runs, prune=args.prune, allow_interrupted=args.allow_interrupted)
    if len(runs) > 1:
        combined = combine_runs(runs, allow_mismatch=args.allow_mismatch)
        run = combined.run
        # with --case/--workload, only what is recorded: the others had been counted and named as if
        # recorded (a 7-run Triton refresh listed flex cases among its widely spread ones)
        keys = (set(bl.select_records(run.records, workloads=args.workload, cases=args.case))
                if args.workload or args.case else None)
        which = "" if keys is None else " (of the cases the filters select)"
        print(f"combined {len(runs)} runs: {bl.cases_by_run_count(runs, keys)}{which}; per case, the median of "
              "each timing statistic", file=out)
        for key, outcomes in combined.disagreeing.items():
            if keys is not None and key not in keys:
                continue
            print(f"  outcome differs between runs ({', '.join(outcomes)}), recorded as "
                  f"{run.records[key].outcome}: {key}", file=out)
        wide = combined.widely_spread(keys=keys)
        if wide:
            print(f"  {len(wide)} case(s) whose runs lay more than {WIDE_SPREAD:.0%} apart: the gate's band "
                  "for each widens to its spread (instance_k); the widest:", file=out)
            for spread, key in wide[:5]:
                print(f"    {spread:.1%} apart: {key}", file=out)
    else:
        run = runs[0]
    if args.baseline:
        path = Path(args.baseline)
    else:
        if not bl.fingerprint_id(run.fingerprint):
            raise bl.ResultFileError(args.result[0], "no machine fingerprint id in the \"attnsuite\" object: name "
                                                     "the baseline file with --baseline")
        path = bl.baseline_path_for(run.fingerprint, args.dir)
    summary = bl.record_baseline(run, path, workloads=args.workload, cases=args.case, prune=args.prune,
                                 allow_mismatch=args.allow_mismatch, sources=runs,
                                 allow_interrupted=args.allow_interrupted, allow_older=args.allow_older)
    print(f"recorded {path}: {summary}", file=out)
    failing = bl.recorded_failures(run, summary)
    if failing:
        print(failing, file=out)
    if len(runs) == 1:
        # one run's lucky fastest sample can set a bar the next runs cannot reach (docs/gate.md, measured on the H100)
        print("note: recorded from 1 run; a baseline is best recorded from three runs (docs/gate.md): "
              "attnsuite record r1.json r2.json r3.json keeps, per case, the median of each timing statistic", file=out)
    return EXIT_OK


def _refuse_repeated_runs(paths: Sequence[str]) -> None:
    """ValueError when two of the files ``record`` combines are one run (the same file, or the same
    bytes under another name): counted twice, it had made "3 runs" of two and halved the spread."""
    seen: dict[str, str] = {}
    for path in paths:
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            continue  # load_results names the unreadable file
        if digest in seen:
            same = "the same file" if os.path.realpath(seen[digest]) == os.path.realpath(path) else "identical files"
            raise ValueError(f"{seen[digest]} and {path} are {same}: each run is combined once (give each "
                             "run's result file once)")
        seen[digest] = path


def _refuse_repeated_run_ids(paths: Sequence[str], runs: Sequence[bl.Run]) -> None:
    """ValueError when two files ``record`` combines carry one session's ``run_id``: one run gzipped, or
    saved again by another tool, is other bytes (:func:`_refuse_repeated_runs` passes it) and had been
    combined as a second run (an outside tester's trial)."""
    seen: dict[str, str] = {}
    for path, run in zip(paths, runs):
        if not run.run_id:  # an older attnsuite's file names no run: the bytes check is all there is
            continue
        if run.run_id in seen:
            raise ValueError(f"{seen[run.run_id]} and {path} hold the same run (run_id {run.run_id}): each run "
                             "is combined once (a compressed or re-saved copy of a result file is the same run)")
        seen[run.run_id] = path


def cmd_report(args: argparse.Namespace, out) -> int:
    if args.step_summary_top and not args.html:  # it had done nothing, without a word (an outside tester's trial)
        raise ValueError("--step-summary-top appends the top of the HTML report to the job summary: give --html "
                         "too (or --step-summary for the markdown)")
    _check_outputs({"--markdown": args.markdown, "--html": args.html,
                    "$GITHUB_STEP_SUMMARY": report.step_summary_target(args.step_summary or args.step_summary_top)},
                   {"--plots": args.plots},
                   inputs={"RESULT": args.result, "--baseline": args.baseline, "--gate-json": args.gate_json,
                           "the thresholds file": _thresholds_read(args, args.baseline)})
    run = bl.load_run(args.result)
    if not run.records:  # `record` refuses the same file: a report of nothing had exited 0
        raise bl.ResultFileError(args.result, "no case in it: nothing to report")
    runs = {"this run": run.records}
    verdicts = None  # the HTML's verdicts when no --gate-json is given: this comparison's
    if args.baseline:
        base = bl.load_run(args.baseline, kind="--baseline file")
        cmp = _judge(base, run, args)
        verdicts = {**cmp.to_json(), "run_failed": dict(summary.failed_counts(run.records))}
        last = summary.build(run.records, cmp, gate_mode="report", interrupted=run.interrupted)
        text = report.markdown_diff(cmp, head=summary.markdown_lines(last, report.md_escape))
        runs["baseline"] = base.records
        print(report.terminal_table(cmp), file=out)
    else:
        calibration = None
        if args.gate_json:  # the verdict the run's gate wrote, as the HTML shows it
            from . import html_report

            gate_json = _read_gate_json(args, run)
            last = html_report.summary_from_gate_json(run.records, gate_json, interrupted=run.interrupted)
            calibration = (gate_json.get("calibration") or {}).get("baseline")
        else:
            last = summary.build(run.records, None, baseline_lines=["no baseline given (--baseline names one)"],
                                 interrupted=run.interrupted)
        text = report.markdown_run(run.records, context=[f"from `{args.result}`"],
                                   head=summary.markdown_lines(last, report.md_escape), calibration=calibration)
        print(f"{count(len(run.records), 'case')} in {args.result}", file=out)
    if args.markdown:
        report.write_markdown(text, args.markdown)
        print(f"markdown written to {args.markdown}", file=out)
    elif not args.html:
        # no file named: stdout is where the markdown goes; beside --html, a run's ~100 KB of it had
        # buried the verdict and the paths written
        print(text, file=out)
    if args.step_summary:
        where = report.append_step_summary(text)
        print(f"appended to {where}" if where else "GITHUB_STEP_SUMMARY is not set: no job summary written", file=out)
    if args.plots:
        res = report.make_plots(runs, args.plots)
        print(res.message, file=out)
    if args.html:
        _write_html(args, run, out, verdicts)
    print("\n".join(summary.terminal_lines(last)), file=out)  # the answers last, as at the end of a run
    return EXIT_OK


def _read_gate_json(args: argparse.Namespace, run: bl.Run) -> dict:
    """``--gate-json``, read and checked against the result ``run`` (ValueError naming it)."""
    records = run.records
    # the suite's one JSON reader: a gzipped gate JSON had been refused with a raw codec error
    gate_json = bl.read_json_file(args.gate_json, lambda path, problem: ValueError(f"--gate-json {path}: {problem}"))
    if (not isinstance(gate_json, dict) or not isinstance(gate_json.get("compared"), bool)
            or not isinstance(gate_json.get("cases"), list)):
        raise ValueError(f"--gate-json {args.gate_json}: " + (bl.wrong_kind(gate_json, "gate") or (
            "not a gate JSON (--attn-gate-json writes an object with \"compared\" and a \"cases\" list)")))
    theirs = gate_json.get("run_id")
    if isinstance(theirs, str) and run.run_id and theirs != run.run_id:
        # files of one session carry its id: this tells another run's verdicts even where none of
        # its cases is left to compare (a "not compared" gate JSON judged none)
        raise ValueError(f"--gate-json {args.gate_json}: not the verdicts of {args.result}: written by run "
                         f"{theirs}, and the result by run {run.run_id} (the gate JSON of another run?)")
    if not isinstance(theirs, str) and run.run_id and not gate_json["cases"]:
        # nothing else could tie it to the result: its "not compared" had been shown as any run's verdict
        raise ValueError(f"--gate-json {args.gate_json}: judged no case and names no run, so nothing ties it to "
                         f"{args.result} (run {run.run_id}): the gate JSON of another run, or of an older attnsuite?")
    keys = {c.get("key") for c in gate_json["cases"] if isinstance(c, dict)}
    if keys and not keys & set(records):  # another run's verdicts would be shown as this run's
        raise ValueError(f"--gate-json {args.gate_json}: {none_of(len(keys), 'case', 'its')} is in {args.result} "
                         "(the gate JSON of another run?)")
    other = _another_runs_figure(gate_json["cases"], records)
    if other:
        raise ValueError(f"--gate-json {args.gate_json}: not the verdicts of {args.result}: {other}")
    return gate_json


def _another_runs_figure(cases: Sequence[Any], records: Mapping[str, CaseRecord]) -> str:
    """The first case whose "this run" outcome or median in a gate JSON differs from the result's own
    ("" when none): the verdicts of another run of the same cases. The median is of the judged statistic's timer
    (device time on CUDA, verdict.time_basis). Cases measured a second time (confirmation) are left
    out, since their figures may come from that measurement."""
    for case in cases:
        if not isinstance(case, dict):
            continue
        rec, outcome = records.get(case.get("key")), case.get("cur_outcome")
        if rec is not None and isinstance(outcome, str) and outcome != rec.outcome:
            # a failed case has no median to compare: another run's failures had been shown as this run's
            return (f"{case['key']} is {outcome} there and {rec.outcome} in the result (the gate JSON of another "
                    "run of the same cases?)")
        if case.get("confirmed") is not None:
            continue
        theirs = case.get("cur_median_ms")
        device = str(case.get("statistic") or "").startswith("device")
        ours = getattr(rec, "device_ms" if device else "median_ms", None)
        if rec is None or not isinstance(theirs, (int, float)):
            continue
        if not isinstance(ours, (int, float)) or abs(theirs - ours) > 1e-3 * abs(ours) + 1e-6:
            shown = f"{ours:.4g} ms" if isinstance(ours, (int, float)) else "none"
            return (f"{case['key']} has a {'device ' if device else ''}median of {theirs:.4g} ms there and {shown} "
                    "in the result (the gate JSON of another run of the same cases?)")
    return ""


def _write_html(args: argparse.Namespace, run: bl.Run, out, verdicts: Optional[dict] = None) -> None:
    """``--html``: one self-contained HTML file (html_report), with the gate JSON's verdicts when given,
    else ``verdicts`` (the comparison with ``--baseline``: the HTML had said "NOT COMPARED" beside a
    terminal and markdown that judged the run)."""
    from . import html_report

    gate_json = _read_gate_json(args, run) if args.gate_json else verdicts
    text = html_report.render(run.records, gate_json=gate_json, source=str(args.result), fingerprint=run.fingerprint,
                              interrupted=run.interrupted)
    bl.atomic_write_text(args.html, text)
    print(f"HTML report written to {args.html}", file=out)
    if args.step_summary_top:
        top = html_report.step_summary(run.records, gate_json, Path(args.html).name, run.interrupted)
        where = report.append_step_summary(top)
        print(f"report top appended to {where}" if where else "GITHUB_STEP_SUMMARY is not set: no job summary written",
              file=out)


def _is_thresholds_file(path: str) -> bool:
    """A thresholds file by name (the gate looks for thresholds.json) or by content (an object of
    thresholds sections only), so a copy under another name is checked as what it is."""
    if Path(path).name in bl.THRESHOLDS_NAMES:
        return True
    try:
        # a key named twice does not hide the kind: the thresholds reader then names the duplicate (it
        # had been called a baseline's fault)
        obj = bl.read_json_file(path, bl.BaselineError, duplicates=True)
    except bl.BaselineError:
        return False  # the baseline check names what is wrong with it
    return looks_like_thresholds(obj)


def cmd_check(args: argparse.Namespace, out) -> int:
    bad = 0
    for p in args.files:
        if _is_thresholds_file(p):  # the gate's config lives beside the baselines
            try:
                load_thresholds(p)
                print(f"ok {p}: thresholds", file=out)
            except ThresholdsError as exc:
                print(f"attnsuite check: error: {exc}", file=sys.stderr)
                bad += 1
            continue
        try:
            b = bl.load_baseline(p)
            fid = bl.fingerprint_id(b.fingerprint)
            if not b.cases:  # valid JSON, but a gate against it would call every case new and judge nothing
                print(f"attnsuite check: error: baseline {p}: no case in it: a gate against it judges nothing",
                      file=sys.stderr)
                bad += 1
                continue
            print(f"ok {p}: {count(len(b.cases), 'case')}, fingerprint {fid}", file=out)
            if fid and Path(p).name not in bl.baseline_names_for(b.fingerprint):
                # valid, but the gate finds a machine's baseline by its fingerprint id only
                print(f"note: {p}: the gate looks for this machine's baseline as "
                      f"{' or '.join(bl.baseline_names_for(b.fingerprint))}; under this name only --attn-baseline "
                      "finds it", file=out)
        except bl.BaselineError as exc:
            print(f"attnsuite check: error: {exc}", file=sys.stderr)
            bad += 1
    return EXIT_INPUT if bad else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attnsuite`` command."""
    p = argparse.ArgumentParser(prog="attnsuite", description="attention regression suite: compare, record, report, "
                                                              "check, ab (attnsuite COMMAND --help for each)")
    sub = p.add_subparsers(dest="command", required=True)

    def common_compare(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--thresholds", help="thresholds JSON (default: thresholds.json beside the reference "
                                             "file, else the repository's baselines/thresholds.json, else "
                                             "built-in defaults)")
        sp.add_argument("--allow-mismatch", action="store_true",
                        help="compare even when the machines differ in GPU model or major torch/CUDA version")

    c = sub.add_parser("compare", help="compare two runs (result JSON or baseline files): OLD is the reference")
    c.add_argument("old", metavar="OLD", help="the reference: a result JSON (pytest --benchmark-json with attnsuite "
                                              "records) or a baseline file")
    c.add_argument("new", metavar="NEW", help="the run judged against OLD: a result JSON or a baseline file")
    common_compare(c)
    c.add_argument("--gate", choices=("enforce", "report"), default="enforce",
                   help="enforce: exit 1 on a gating verdict; report: always exit 0")
    c.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    c.add_argument("--all", action="store_true", help="table: show unchanged cases too")
    c.add_argument("--markdown", help="also write the markdown diff to this file")
    c.add_argument("--step-summary", action="store_true", help="append the markdown diff to $GITHUB_STEP_SUMMARY")
    c.add_argument("--workload", action="append", default=[], help="judge only these workloads (repeatable)")
    c.add_argument("--variant", action="append", default=[], help="judge only these variants (repeatable)")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser("record", help="write or refresh a baseline from one or more result JSONs of one machine")
    r.add_argument("result", nargs="+", metavar="RESULT",
                   help="result file(s); several are combined per case by the median of each timing statistic "
                        "(recommended: three runs)")
    r.add_argument("--baseline", help="baseline file (default: DIR/<fingerprint id>.json)")
    r.add_argument("--dir", default=bl.DEFAULT_DIR, help="baselines folder (default: baselines)")
    r.add_argument("--workload", action="append", default=[], help="record only these workloads (repeatable)")
    r.add_argument("--case", action="append", default=[], help="record only case keys matching this glob (repeatable)")
    r.add_argument("--prune", action="store_true",
                   help="drop baseline cases that the run(s) selected (attnsuite.scope) and the filters pass but the "
                        "run(s) lack; a variant the run(s) have no case of is dropped only when --case names it")
    r.add_argument("--allow-mismatch", action="store_true", help="write into a baseline of an incompatible machine")
    r.add_argument("--allow-interrupted", action="store_true",
                   help="record the cases a stopped run finished (each is whole); not with --prune")
    r.add_argument("--allow-older", action="store_true",
                   help="replace or prune entries recorded from a newer run (each entry's \"recorded\" time) with "
                        "this older run's")
    r.set_defaults(func=cmd_record)

    rep = sub.add_parser("report", help="markdown (and plots, an HTML report) of a run, or of its diff against a "
                                        "baseline")
    rep.add_argument("result", metavar="RESULT", help="the run's result JSON (pytest --benchmark-json with attnsuite "
                                                       "records)")
    rep.add_argument("--baseline", help="compare with this baseline or result file")
    common_compare(rep)
    rep.add_argument("--markdown", help="write the markdown here (default: print it, unless --html names a file)")
    rep.add_argument("--step-summary", action="store_true", help="append the markdown to $GITHUB_STEP_SUMMARY")
    rep.add_argument("--plots", help="folder for PNG plots of TFLOP/s and memory against sequence length")
    rep.add_argument("--html", help="write one self-contained HTML report here (sortable tables, inline SVG plots)")
    rep.add_argument("--gate-json", help="with --html: the gate's verdicts (--attn-gate-json) to draw against their bands")
    rep.add_argument("--step-summary-top", action="store_true",
                     help="with --html: append the report's top (the run's summary) to $GITHUB_STEP_SUMMARY")
    rep.set_defaults(func=cmd_report)

    ch = sub.add_parser("check", help="validate baseline files")
    ch.add_argument("files", nargs="+", metavar="FILE", help="baseline files to validate (a thresholds file among "
                                                            "them is checked as thresholds)")
    ch.set_defaults(func=cmd_check)
    ab.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None, out=None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out)
    except BrokenPipeError:  # `attnsuite ... | head`: the reader left; what it read is all it wanted
        sys.stderr.close()  # keeps Python from printing a second error about the closed pipe at exit
        return EXIT_OK
    except (bl.InputFileError, ThresholdsError) as exc:
        print(f"attnsuite {args.command}: error: {exc}", file=sys.stderr)
    except bl.FingerprintMismatch as exc:
        doing = "record runs of different machines into one baseline" if args.command == "record" else \
            "compare runs from different machines"
        print(f"attnsuite {args.command}: refusing to {doing}: {exc} (--allow-mismatch overrides)", file=sys.stderr)
    except ValueError as exc:
        print(f"attnsuite {args.command}: error: {exc}", file=sys.stderr)
    return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
