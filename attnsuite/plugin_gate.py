"""The regression gate as a pytest sub-plugin: baselines, verdicts and reports after a benchmark run.

After the benchmark session (pytest-benchmark's ``finish`` runs first, in its hookwrapper), this
plugin reads every benchmark's ``extra_info`` record and the run's machine fingerprint, finds the
baseline (``--attn-baseline`` or ``baselines/<fingerprint id>.json``), compares with
:func:`attnsuite.verdict.compare`, and:

* ``--attn-gate enforce`` (default): each gating case becomes a failed report
  ``attnsuite-gate::<case key>`` (pytest's FAILURES section, short summary and red closing line)
  and the exit status is 1;
* ``--attn-gate report``: the same table and markdown, exit status untouched;
* ``--attn-gate off``: nothing.

A malformed baseline, or one from another machine (GPU model, major torch/CUDA version) without
``--attn-allow-mismatch``, is a usage error (exit status 4), never a test failure. No baseline for
this machine is said plainly and does not fail the run. ``--attn-record-baseline`` writes the run's
cases into the baseline (other cases untouched) after showing what changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from . import baseline as bl
from . import report
from .verdict import Comparison, Scope, ThresholdsError, compare, load_thresholds

_STATE = pytest.StashKey["GateState"]()
GATE_NODE = "attnsuite-gate"


class GateState:
    """What the gate found, carried from session finish to the terminal summary."""

    def __init__(self) -> None:
        self.json_obj: Optional[dict[str, Any]] = None  # records and "attnsuite" object of the run's JSON
        self.lines: list[str] = []  # plain lines for the summary section
        self.comparison: Optional[Comparison] = None
        self.error: Optional[str] = None
        self.deselected = 0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnsuite", "attention regression suite")
    group.addoption("--attn-baseline", default=None, metavar="PATH",
                    help="baseline file to compare with (default: <baselines dir>/<fingerprint id>.json)")
    group.addoption("--attn-baselines-dir", default=None, metavar="DIR",
                    help="where baselines live (default: baselines/ under the rootdir)")
    group.addoption("--attn-record-baseline", action="store_true", default=False,
                    help="record or refresh the baseline from this run (only the cases this run produced)")
    group.addoption("--attn-gate", choices=("off", "report", "enforce"), default="enforce",
                    help="enforce: gating verdicts fail the run; report: show them only; off: no comparison")
    group.addoption("--attn-allow-mismatch", action="store_true", default=False,
                    help="compare with a baseline from another GPU model or major torch/CUDA version")
    group.addoption("--attn-markdown", default=None, metavar="PATH",
                    help="write the markdown diff here (also appended to $GITHUB_STEP_SUMMARY when set)")
    group.addoption("--attn-thresholds", default=None, metavar="PATH",
                    help="thresholds JSON (default: thresholds.json in the baselines dir, if present)")


def _baselines_dir(config: pytest.Config) -> Path:
    d = config.getoption("--attn-baselines-dir")
    return Path(d) if d else Path(config.rootpath) / bl.DEFAULT_DIR


def _thresholds_path(config: pytest.Config) -> Optional[Path]:
    p = config.getoption("--attn-thresholds")
    if p:
        return Path(p)
    default = _baselines_dir(config) / bl.THRESHOLDS_FILE
    return default if default.is_file() else None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = GateState()
    if config.getoption("--attn-gate") == "off":
        return
    # Files named on the command line are checked now, so a bad one stops the run before any
    # benchmark time is spent, as a usage error (exit status 4).
    named = config.getoption("--attn-baseline")
    if named and Path(named).exists():
        try:
            bl.load_baseline(named)
        except bl.BaselineError as exc:
            raise pytest.UsageError(f"attnsuite gate: {exc}") from None
    try:
        load_thresholds(_thresholds_path(config))
    except ThresholdsError as exc:
        raise pytest.UsageError(f"attnsuite gate: {exc}") from None


def pytest_deselected(items: list) -> None:
    # Counted so that a filtered run does not call the deselected baseline cases "missing".
    if items:
        cfg = items[0].config
        if _STATE in cfg.stash:
            cfg.stash[_STATE].deselected += len(items)


@pytest.hookimpl(trylast=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    # trylast: the benchmarks plugin adds the "attnsuite" object (with the fingerprint) and the
    # cases that produced no samples (out of memory, errors) first; the gate judges exactly this.
    if _STATE in config.stash:
        config.stash[_STATE].json_obj = {
            "benchmarks": [{"name": b.get("fullname") or b.get("name"), "extra_info": b.get("extra_info")}
                           for b in output_json.get("benchmarks", []) if isinstance(b, dict)],
            "attnsuite": output_json.get("attnsuite"),
        }


def _benchmark_session(config: pytest.Config) -> Any:
    return getattr(config, "_benchmarksession", None)


def _current_run(config: pytest.Config, state: GateState) -> Optional[bl.Run]:
    """This session's records and fingerprint, as its result JSON has them; None when no benchmark ran."""
    bs = _benchmark_session(config)
    benches = list(getattr(bs, "benchmarks", None) or [])
    if state.json_obj is None and benches:
        # No JSON was saved (no --benchmark-json): ask the same hooks for the same JSON object.
        # machine_info stays empty: pytest-benchmark's own (py-cpuinfo) costs seconds and the
        # fingerprint is the benchmarks plugin's business.
        try:
            out = config.hook.pytest_benchmark_generate_json(
                config=config, benchmarks=benches, include_data=False, machine_info={}, commit_info={})
            config.hook.pytest_benchmark_update_json(config=config, benchmarks=benches, output_json=out)
        except Exception as exc:  # the gate must still run on the records it has
            state.lines.append(f"could not build the run's JSON: {type(exc).__name__}: {exc}")
    obj = state.json_obj
    if obj is None:
        if not benches:
            return None
        obj = {"benchmarks": [{"name": getattr(b, "fullname", "?"), "extra_info": dict(b.extra_info or {})}
                              for b in benches]}
    run = bl.run_from_benchmarks_json(obj, "this run")
    if run.fingerprint:
        run.fingerprint = bl.stable_fingerprint(run.fingerprint)
    return run


def _scope(config: pytest.Config, run: bl.Run, state: GateState) -> Scope:
    """Which baseline cases this run answers for (a filtered run does not make the rest 'missing')."""
    only = config.getoption("--attn-only", default=None) or []
    filtered = bool(config.getoption("keyword", default="") or config.getoption("markexpr", default="")
                    or state.deselected)
    if filtered:
        return Scope.of_run(run.records)
    tiers = Scope.tiers_of(run.records).tiers
    return Scope(variants=frozenset(only) if only else None, tiers=tiers)


def _fail_report(v, nodeid_prefix: str = GATE_NODE) -> pytest.TestReport:
    text = f"{'/'.join(v.flags)}: {v.message}"
    return pytest.TestReport(nodeid=f"{nodeid_prefix}::{v.key}", location=(GATE_NODE, None, v.key),
                             keywords={}, outcome="failed", longrepr=text, when="call", sections=[], duration=0.0)


def _usage_error(session: pytest.Session, state: GateState, message: str) -> None:
    state.error = message
    session.exitstatus = pytest.ExitCode.USAGE_ERROR


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state: GateState = config.stash.get(_STATE, None) or GateState()
    mode = config.getoption("--attn-gate")
    recording = config.getoption("--attn-record-baseline")
    if mode == "off" and not recording:
        return
    try:
        run = _current_run(config, state)
    except bl.ResultFileError as exc:
        _usage_error(session, state, f"this run's benchmark records are malformed: {exc.problem}")
        return
    if run is None or not run.records:
        if recording or config.getoption("--attn-baseline"):
            state.lines.append("no attnsuite benchmark records in this run: nothing to compare or record")
        return
    named = config.getoption("--attn-baseline")
    if named:
        path: Optional[Path] = Path(named)
        found = f"baseline {named}"
        if not path.exists() and not recording:
            _usage_error(session, state, f"baseline {named}: no such file")
            return
    else:
        look = bl.find_baseline(run.fingerprint, _baselines_dir(config))
        path, found = look.path, look.message
        if path is None and recording and bl.fingerprint_id(run.fingerprint):
            path = bl.baseline_path_for(run.fingerprint, _baselines_dir(config))
    state.lines.append(found)

    base = None
    if path is not None and path.exists():
        try:
            base = bl.load_baseline(path)
        except bl.BaselineError as exc:
            _usage_error(session, state, str(exc))
            return
    if base is not None and mode != "off":
        try:
            notes = bl.check_compatible(base.fingerprint, run.fingerprint,
                                        allow_mismatch=config.getoption("--attn-allow-mismatch"))
            cfg = load_thresholds(_thresholds_path(config))
        except bl.FingerprintMismatch as exc:
            _usage_error(session, state, f"refusing to compare with {path}: the machines differ: {exc} "
                                         "(--attn-allow-mismatch compares anyway)")
            return
        except ThresholdsError as exc:
            _usage_error(session, state, str(exc))
            return
        cmp = compare(base.records(), run.records, thresholds=cfg, device=bl.device_kind(run.fingerprint),
                      scope=_scope(config, run, state), notes=notes)
        cmp.baseline_label = f"`{path}`"
        cmp.current_label = "this run"
        state.comparison = cmp
        md_path = config.getoption("--attn-markdown")
        if md_path:
            text = report.markdown_diff(cmp)
            report.write_markdown(text, md_path)
            report.append_step_summary(text)
            state.lines.append(f"markdown diff written to {md_path}")
        if cmp.failed and mode == "enforce" and not recording:
            tr = config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                for v in cmp.regressions:
                    tr.stats.setdefault("failed", []).append(_fail_report(v))
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif base is None and mode != "off":
        state.lines.append("no comparison: results are still in the benchmark JSON; make this machine's "
                           "baseline with --attn-record-baseline")
        md_path = config.getoption("--attn-markdown")
        if md_path:
            text = report.markdown_run(run.records, context=[found])
            report.write_markdown(text, md_path)
            report.append_step_summary(text)
    if recording:
        if path is None:
            _usage_error(session, state, "cannot record a baseline: this run has no machine fingerprint id; "
                                         "name the file with --attn-baseline")
            return
        try:
            existing = base if base is not None else None
            merged, summary = bl.merge_into(existing, run.records, run.fingerprint or {},
                                            allow_mismatch=config.getoption("--attn-allow-mismatch"))
            if not bl.fingerprint_id(merged.fingerprint):
                raise ValueError("this run has no machine fingerprint id")
            bl.save_baseline(merged, path)
            state.lines.append(f"baseline recorded: {path}: {summary}")
        except (bl.FingerprintMismatch, bl.BaselineError, ValueError) as exc:
            _usage_error(session, state, f"cannot record baseline {path}: {exc}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state: Optional[GateState] = config.stash.get(_STATE, None)
    if state is None or not (state.lines or state.comparison or state.error):
        return
    tr = terminalreporter
    tr.write_sep("=", "attnsuite regression gate", bold=True)
    for line in state.lines:
        tr.write_line(line)
    cmp = state.comparison
    if cmp is not None:
        for note in cmp.notes:
            tr.write_line(f"note: {note}")
        tr.write_line(report.terminal_table(cmp))
        mode = config.getoption("--attn-gate")
        for line in report.gate_lines(cmp):
            tr.write_line(f"{'FAILED' if mode == 'enforce' else 'REPORTED'} {line}", red=mode == "enforce",
                          yellow=mode != "enforce")
        if cmp.improvements:
            tr.write_line(f"{len(cmp.improvements)} improvements: refresh the baseline (--attn-record-baseline) "
                          "to keep them", green=True)
    if state.error:
        tr.write_line(f"ERROR attnsuite gate: {state.error}", red=True)
