"""The regression gate as a pytest sub-plugin: baselines, verdicts and reports after a benchmark run.

Timeline of a benchmark session:

1. ``pytest_configure``: every path option is checked (``--attn-baseline``, ``--attn-baselines-dir``,
   ``--attn-thresholds``, ``--attn-gate-json``) and the thresholds and a named baseline are loaded,
   so a bad one is a usage error (exit status 4) before any benchmark runs.
2. ``pytest_report_header``: the baseline this machine will be compared with (or why none), at the
   top of the output, with what a fallback baseline (a compatible machine's) can promise.
3. ``pytest_runtestloop`` (after the benchmarks, before pytest-benchmark writes its JSON): the
   cases judged ``slower`` or ``memory-growth`` against a stored baseline are measured again
   (:func:`attnsuite.plugin_bench.confirm_cases`), once, all together; the verdict rule keeps a
   finding only when the second measurement agrees (``--attn-no-confirm`` turns this off).
4. ``pytest_sessionfinish``: the run's records (as its result JSON has them) are judged by the
   one compare path (:func:`attnsuite.gate.judge_runs`), scoped to what the run selected, and:

   * ``--attn-gate enforce`` (default): each gating case becomes a failed report
     ``attnsuite-gate::<case key>`` (pytest's FAILURES section, short summary and red closing
     line) and the exit status is 1;
   * ``--attn-gate report``: the same table and markdown, exit status untouched;
   * ``--attn-gate off``: nothing.

A malformed baseline, or one from another machine (GPU model, major torch/CUDA version) without
``--attn-allow-mismatch``, is a usage error (exit status 4), never a test failure. No baseline for
this machine is said plainly and does not fail the run. ``--attn-record-baseline`` writes the run's
cases into the baseline (other cases untouched) after showing what changed; an interrupted session
records nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Optional, Sequence

import pytest

from . import baseline as bl
from . import gate, plugin_bench, provenance, registry, report, summary
from .output_paths import output_options_problem, output_problem
from .session_failure import fail_session
from .verdict import CONFIRMABLE, Comparison, Scope, ThresholdsError
from .wording import count, exception_text

_STATE = pytest.StashKey["GateState"]()
GATE_NODE = "attnsuite-gate"
BENCH_PLUGIN = "attnsuite.plugin_bench"


class GateState:
    """What the gate found, carried from configure to the terminal summary."""

    def __init__(self) -> None:
        self.json_obj: Optional[dict[str, Any]] = None  # records and "attnsuite" object of the run's JSON
        self.lines: list[str] = []  # plain lines for the summary section
        self.comparison: Optional[Comparison] = None
        self.error: Optional[str] = None
        self.deselected = 0
        self.narrowed = False  # fewer benchmark items collected than the options parametrised
        self.selected_keys: Optional[frozenset[str]] = None  # case keys of the collected benchmark items
        self.deselected_keys: set[str] = set()  # case keys of the benchmark items -k, -m or --deselect left out
        self.template: Any = None  # one benchmark item: what -k reads of a case that was not collected
        self.probing = False  # building a JSON object for the gate's own use: not the run's JSON
        self.no_baseline: list[str] = []  # why there was no comparison (the last screen says it)
        self.uncompared = ""  # the summary's first line when there was no comparison ("" : NOT COMPARED)
        self.session: Optional[pytest.Session] = None  # set when collection finishes
        self.no_case_line = ""  # the last screen's line of a session interrupted before any case finished


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnsuite", "attention regression suite")
    group.addoption("--attn-baseline", default=None, metavar="PATH",
                    help="baseline file to compare with (default: <baselines dir>/<fingerprint id>.json, else a "
                         "compatible machine's); must exist unless --attn-record-baseline creates it")
    group.addoption("--attn-baselines-dir", default=None, metavar="DIR",
                    help="where baselines live (default: baselines/ under the rootdir); must exist")
    group.addoption("--attn-record-baseline", action="store_true", default=False,
                    help="record or refresh the baseline from this run (only the cases this run produced)")
    group.addoption("--attn-gate", choices=("off", "report", "enforce"), default="enforce",
                    help="enforce: gating verdicts fail the run; report: show them only; off: no comparison")
    group.addoption("--attn-require-baseline", action="store_true", default=False,
                    help="fail the run when it finds no baseline to compare with (for a CI gate: a runner whose "
                         "machine drifted from every stored baseline must not pass by comparing nothing)")
    group.addoption("--attn-allow-mismatch", action="store_true", default=False,
                    help="compare with a baseline from another GPU model or major torch/CUDA version")
    group.addoption("--attn-markdown", default=None, metavar="PATH",
                    help="write the markdown diff here (also appended to $GITHUB_STEP_SUMMARY when set)")
    group.addoption("--attn-thresholds", default=None, metavar="PATH",
                    help="thresholds JSON (default: thresholds.json in the baselines dir, else the repository's "
                         "baselines/thresholds.json, else built-in defaults)")
    group.addoption("--attn-confirm", dest="attn_confirm", action="store_true", default=True,
                    help="measure a case judged slower or memory-growth again after all other cases; it fails "
                         "only if the second measurement agrees (default)")
    group.addoption("--attn-no-confirm", dest="attn_confirm", action="store_false",
                    help="judge each case on its first measurement only")
    group.addoption("--attn-gate-json", default=None, metavar="PATH",
                    help="write the verdicts as JSON here (per case: verdict, flags, confirmed), e.g. for "
                         "`attnsuite ab --cases-from`")


# --------------------------------------------------------------------------- options, up front


def _baselines_dir(config: pytest.Config) -> Path:
    d = config.getoption("--attn-baselines-dir")
    return Path(d) if d else Path(config.rootpath) / bl.DEFAULT_DIR


def _usage(option: str, value: str, problem: str) -> pytest.UsageError:
    return pytest.UsageError(f"attnsuite gate: {option} {value}: {problem}")


def check_path_options(config: pytest.Config) -> None:
    """Every path option names something usable; a UsageError naming the option and the value if not."""
    recording = config.getoption("--attn-record-baseline")
    named = config.getoption("--attn-baseline")
    if named:
        p = Path(named)
        if p.is_dir():
            raise _usage("--attn-baseline", named, "is a folder, expected a baseline file")
        if not p.exists() and not recording:  # recording may create it
            raise _usage("--attn-baseline", named, "no such file (--attn-record-baseline creates one)")
    d = config.getoption("--attn-baselines-dir")
    if d:
        if not Path(d).exists():
            raise _usage("--attn-baselines-dir", d, "no such folder")
        if not Path(d).is_dir():
            raise _usage("--attn-baselines-dir", d, "is not a folder")
    t = config.getoption("--attn-thresholds")
    if t:
        if not Path(t).exists():
            raise _usage("--attn-thresholds", t, "no such file")
        if not Path(t).is_file():
            raise _usage("--attn-thresholds", t, "is not a file")
    why = output_options_problem(_output_options(config), inputs=_input_files(config))
    if why:
        raise pytest.UsageError(f"attnsuite gate: {why}")
    if recording:
        check_recording_options(config)


def _output_options(config: pytest.Config) -> dict[str, Optional[str]]:
    """Every file a run writes that an option names (the baseline a recording writes is checked by
    check_recording_options, and is an input here: the gate reads it first)."""
    json_path = plugin_bench.benchmark_json_path(config)
    return {"--attn-markdown": config.getoption("--attn-markdown"),
            "--attn-gate-json": config.getoption("--attn-gate-json"),
            "--benchmark-json": str(json_path) if json_path is not None else None,
            # (None where the plugin that declares the option is not loaded)
            "--attn-journal": config.getoption("--attn-journal", default=None),
            "--attn-failures-log": config.getoption("--attn-failures-log", default=None)}


def _input_files(config: pytest.Config) -> list[tuple[str, Optional[str]]]:
    """Every file a run reads that an output option must not replace: the baselines (each file of the
    baselines folder, any of which a later run may read), the thresholds, the variant and problem files."""
    files: list[tuple[str, Optional[str]]] = [("--attn-baseline", config.getoption("--attn-baseline")),
                                              ("--attn-thresholds", config.getoption("--attn-thresholds"))]
    folder = _baselines_dir(config)
    if folder.is_dir():
        files += [(f"a file of the baselines folder {folder}", str(p)) for p in sorted(folder.iterdir()) if p.is_file()]
    for option, env in (("--attn-variants", "ATTNSUITE_VARIANTS"), ("--attn-problems", "ATTNSUITE_PROBLEMS")):
        named = [(option, v) for v in config.getoption(option, default=None) or ()]
        named += [(env, v.strip()) for v in os.environ.get(env, "").split(",") if v.strip()]
        files += [(label, v) for label, v in named if Path(v).is_file()]
    return files


def check_recording_options(config: pytest.Config) -> None:
    """``--attn-record-baseline``: refused with a simulation option, and its target must be writable.

    Both were found only after every case had run: a slowed or memory-capped run was recorded as the
    code's own figures (hiding every later regression up to the injected factor), and an unwritable
    target cost the whole run.
    """
    for option in ("--attn-inject-slowdown", "--attn-mem-cap"):
        value = config.getoption(option, default=None)
        if value:
            shown = " ".join(value) if isinstance(value, (list, tuple)) else value
            raise _usage("--attn-record-baseline", f"with {option} {shown}",
                         "a simulated run's figures are not the code's own; record from a run without it")
    named = config.getoption("--attn-baseline")
    if named:
        why = output_problem(named)
        if why:
            raise _usage("--attn-baseline", named, f"cannot be recorded: {why}")
    else:
        folder = _baselines_dir(config)
        cwd, root = Path.cwd().resolve(), Path(config.rootpath).resolve()
        if not config.getoption("--attn-baselines-dir") and cwd != root and root not in cwd.parents:
            # run from another project (pytest /path/to/attnsuite/bench ...): the default folder is this
            # checkout's shipped baselines/, and a team's cases had been recorded into its tracked file
            raise _usage("--attn-record-baseline", f"from {cwd}",
                         f"it would write into this attnsuite checkout's baselines folder ({folder}), the baselines "
                         "it ships; name your own folder with --attn-baselines-dir DIR (in your repository), "
                         "or a file with --attn-baseline FILE")
        why = output_problem(folder / ".attnsuite-output-check") if folder.is_dir() else None
        if why:
            raise _usage("--attn-record-baseline", str(folder), f"the baselines folder cannot be written: {why}")


def effective_gate_mode(config: pytest.Config) -> str:
    """``--attn-gate``, except that a recording session never fails on a regression (it is replacing
    the reference): there an enforcing gate reads as report mode, so that no output says FAIL
    over a job that passed."""
    mode = config.getoption("--attn-gate")
    return "report" if mode == "enforce" and config.getoption("--attn-record-baseline") else mode


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = GateState()
    check_path_options(config)
    if config.getoption("--attn-gate") == "off":
        return
    # Files named on the command line, and the baseline this machine's fingerprint finds, are read now,
    # so a bad one (corrupt, or another machine's) stops the run before any benchmark time is spent, as
    # a usage error (exit status 4); it had been found only after every case had run. The fingerprint
    # comes from the benchmarks plugin: only a session that runs benchmarks has one.
    named = config.getoption("--attn-baseline")
    benchmarking = plugin_bench.benchmarks_requested(config) \
        and config.pluginmanager.has_plugin("attnsuite.plugin_bench")
    here = bl.stable_fingerprint(plugin_bench.fingerprint_of(config)["info"]) if benchmarking else None
    lookup = None
    if named:
        path = Path(named)
    else:
        lookup = bl.find_baseline(here, _baselines_dir(config)) if here is not None else None
        path = lookup.path if lookup is not None else None
        if lookup is not None and path is None and _requires_baseline(config):
            # a CI gate on a runner whose torch, CUDA or GPU drifted from every stored baseline had
            # learned it only after the whole tier had run
            _stop_without_baseline(config, lookup)
    if path is not None and Path(path).exists():
        try:
            base = bl.load_baseline(path)
        except bl.BaselineError as exc:
            whose = "" if named else " (the baseline for this machine; fix or remove it, or name another with " \
                                     "--attn-baseline)"
            raise pytest.UsageError(f"attnsuite gate: {exc}{whose}") from None
        if not base.cases and _requires_baseline(config):
            # a baseline holding no case judges nothing: `attnsuite check` refuses it, and a CI gate
            # requiring a baseline had passed against it (an outside tester's trial)
            _stop_without_baseline(config, SimpleNamespace(
                message=f"{path} holds no case, so a gate against it judges nothing"))
        if here is not None:
            # the baseline found under this machine's fingerprint too: a file of another machine stored
            # by that name had been refused only after every case had run (an outside tester's trial)
            recording = config.getoption("--attn-record-baseline")
            allow = config.getoption("--attn-allow-mismatch")
            # a recording run writes a fallback's measurements into this machine's own file, not the fallback
            into = recording and (named or not getattr(lookup, "fallback", False))
            try:
                bl.check_compatible(dict(base.fingerprint), here, allow_mismatch=allow)
                if into:  # the rule record_baseline applies when it writes (merge_into), checked now:
                    # a refusal had come after every case had run, under a summary that read PASS
                    bl.check_same_cpu_model(dict(base.fingerprint), here, allow_mismatch=allow)
            except bl.FingerprintMismatch as exc:
                doing = "record into" if into else "compare with"
                which = named or f"{path} (the baseline this machine's fingerprint finds)"
                raise pytest.UsageError(f"attnsuite gate: refusing to {doing} {which}: the machines differ: "
                                        f"{exc} (--attn-allow-mismatch {doing.split()[0]}s anyway)") from None
    try:
        named = config.getoption("--attn-baseline")
        gate.thresholds_for(config.getoption("--attn-thresholds"), Path(named).parent if named else _baselines_dir(config))
    except ThresholdsError as exc:
        raise pytest.UsageError(f"attnsuite gate: {exc}") from None


def _stop_without_baseline(config: pytest.Config, lookup: Any) -> None:
    """Stop the session before any case runs: ``--attn-require-baseline`` and no baseline found.
    gate.md and the gate JSON say why (a PR job posts gate.md, and its A/B step reads the JSON)."""
    why = f"{REQUIRED_TEXT}: {lookup.message} (record one with --attn-record-baseline, or name one with --attn-baseline)"
    state = config.stash[_STATE]
    _write_markdown(config, state, report.no_run_markdown("❌ **FAIL**", f"{why}; no case ran"))
    _write_gate_json(config, state, {"compared": False, "failed": True, "reason": why, "cases": []})
    raise pytest.UsageError(f"attnsuite gate: {why}")


def _judged_any(cmp: Comparison) -> bool:
    """Did the comparison judge a case this run measured (not only new cases and baseline cases it
    did not run)?"""
    return any(v.verdict not in ("new", "missing") for v in cmp.verdicts)


def _requires_baseline(config: pytest.Config) -> bool:
    """``--attn-require-baseline`` applies: asked for, and this session is not the one recording it."""
    return bool(config.getoption("--attn-require-baseline")) and not config.getoption("--attn-record-baseline") \
        and not config.getoption("collectonly")


# --------------------------------------------------------------------------- the header


def lookup_lines(lookup: Any) -> list[str]:
    """The baseline found (or why none) in words, with a fallback's promise on a line of its own."""
    lines = [str(lookup.message)]
    promise = getattr(lookup, "promise", "")
    if getattr(lookup, "fallback", False) and promise and promise not in lookup.message:
        lines.append(f"fallback baseline: {promise}")
    return lines


def pytest_report_header(config: pytest.Config) -> Optional[list[str]]:
    if config.getoption("--attn-gate") == "off" and not config.getoption("--attn-record-baseline"):
        return None
    if not plugin_bench.benchmarks_requested(config):
        return None
    named = config.getoption("--attn-baseline")
    if named:
        return [f"attnsuite gate: baseline {named} (named with --attn-baseline)"]
    try:
        fp = bl.stable_fingerprint(plugin_bench.fingerprint_of(config)["info"])  # the one the JSON gets
    except Exception as exc:  # the header must never stop the run; the end of the run says it again
        return [f"attnsuite gate: could not read this machine's fingerprint: {exception_text(exc)}"]
    lookup = bl.find_baseline(fp, _baselines_dir(config))
    return [f"attnsuite gate: {line}" for line in lookup_lines(lookup)]


# --------------------------------------------------------------------------- selection


def pytest_deselected(items: list) -> None:
    # Counted so that a filtered run does not call the deselected baseline cases "missing".
    if items:
        cfg = items[0].config
        if _STATE in cfg.stash:
            state = cfg.stash[_STATE]
            state.deselected += len(items)
            for item in items:
                key = plugin_bench.bench_key(item)
                if key is not None:
                    state.deselected_keys.add(key)
                    state.template = state.template or item


def pytest_collection_finish(session: pytest.Session) -> None:
    # The case keys of the selected benchmark items (the bench module parametrises by the key):
    # with -k, -m or deselection, exactly these are judged.
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    keys = {key for key in map(plugin_bench.bench_key, session.items) if key is not None}
    state.selected_keys = frozenset(keys) if keys else None
    # node ids on the command line, --lf, --sw or another plugin's filter leave out items without
    # pytest_deselected: a collection smaller than what the options parametrised is a selection too
    # (a rerun of one case by its id had called every other baseline case missing)
    parametrised = plugin_bench.parametrised_keys(session.config)
    state.narrowed = parametrised is not None and keys != parametrised
    state.session = session
    state.template = next((i for i in session.items if plugin_bench.bench_key(i) is not None), state.template)


def keyword_selects(expression: str, template: Any, key: str) -> Optional[bool]:
    """Whether ``-k expression`` selects the benchmark item of case ``key``, read as pytest reads a
    collected one (its name and the names of its parents and marks), the name taken from
    ``template``'s function; None when pytest's matcher cannot be used here (its API is internal)."""
    try:
        from _pytest.mark import KeywordMatcher
        from _pytest.mark.expression import Expression

        names = set(KeywordMatcher.from_item(template)._names) - {template.name}
        names.add(f"{template.originalname}[{key}]")
        return bool(Expression.compile(expression).evaluate(KeywordMatcher(names)))
    except Exception:  # noqa: BLE001 - another pytest: judge the collected cases only, as before
        return None


def _keyword_baseline_keys(config: pytest.Config, run: bl.Run) -> Iterable[str]:
    """Under ``-k``, the case keys of the baseline the gate compares with, so that the selection
    stored in the run's JSON holds the removed cases ``-k`` selects as the gate judged them (``attnsuite
    compare`` of the file then agrees); none without ``-k`` or a readable baseline (the gate says why)."""
    if not _option(config, "keyword"):
        return ()
    try:
        path, _ = _locate(config, run)
        return tuple(bl.load_baseline(path).cases) if path is not None and path.is_file() else ()
    except Exception:  # noqa: BLE001 - the gate itself reports an unreadable baseline
        return ()


def _keyword_scope(config: pytest.Config, state: GateState, baseline_keys: Iterable[str]) -> frozenset[str]:
    """The baseline cases that ``-k`` selects and that this run did not collect at all (a problem or
    variant the change removed): they are in scope, and read missing, as under ``--attn-only``. Only
    for ``-k`` alone: ``-m`` and ``--deselect`` name what cannot be read from a case's key."""
    expression = _option(config, "keyword")
    if not expression or _option(config, "markexpr") or _option(config, "deselect") or state.template is None:
        return frozenset()
    known = (state.selected_keys or frozenset()) | state.deselected_keys
    return frozenset(k for k in baseline_keys if k not in known and keyword_selects(expression, state.template, k))


def _option(config: pytest.Config, name: str) -> Any:
    return config.getoption(name, default=None)


def scope_of(config: pytest.Config, run: bl.Run, state: GateState, interrupted: bool = False,
             baseline_keys: Iterable[str] = ()) -> Scope:
    """Which baseline cases this run answers for: what every selection option selected.

    ``--attn-workload``, ``--attn-mode``, ``--attn-only``, ``--attn-dtype``, ``--attn-device`` and
    the tier each narrow the scope along their own field (without ``--attn-dtype``: the dtypes the
    run's cases have, as the tier without ``--attn-tier``); ``-k``, ``-m``, deselection and any
    collection of fewer items than the options selected (node ids, ``--lf``) narrow it to the
    selected items' case keys, and ``-k`` adds the ``baseline_keys`` it selects that the run
    did not collect (:func:`_keyword_scope`). A baseline case outside is not judged ("missing" means
    a selected case that did not run). An interrupted session answers only for the cases it ran.
    """
    def chosen(name: str) -> Optional[frozenset[str]]:
        value = _option(config, name)
        if isinstance(value, str):
            value = [value]
        return frozenset(value) if value else None

    keys = pairs = None
    filtered = bool(_option(config, "keyword") or _option(config, "markexpr") or state.deselected or state.narrowed)
    if interrupted:
        keys = frozenset(run.records)
    elif filtered:
        if state.selected_keys is not None:
            keys = state.selected_keys | _keyword_scope(config, state, baseline_keys)
        else:  # items without a case-key parameter: judge the (workload, variant) pairs that ran
            pairs = Scope.of_run(run.records).pairs
    tiers = chosen("--attn-tier") or Scope.tiers_of(run.records).tiers
    return Scope(variants=chosen("--attn-only"), workloads=chosen("--attn-workload"), modes=chosen("--attn-mode"),
                 dtypes=chosen("--attn-dtype") or Scope.dtypes_of(run.records), devices=chosen("--attn-device"),
                 tiers=tiers, keys=keys, pairs=pairs)


# --------------------------------------------------------------------------- the run's records


@pytest.hookimpl(trylast=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    # trylast: the benchmarks plugin adds the "attnsuite" object (with the fingerprint) and the
    # cases that produced no samples (out of memory, errors) first; the gate judges exactly this.
    state = config.stash.get(_STATE, None)
    if state is not None and not state.probing:
        meta = output_json.get("attnsuite")
        if isinstance(meta, dict):
            # the selection travels with the file: `attnsuite compare` and `report` of it later judge the
            # same cases as this gate (a partial run's file had read as hundreds of "missing" cases)
            why = _interrupted(state.session) if state.session is not None else None
            if why:  # `attnsuite record` of this file refuses it, as --attn-record-baseline does now
                meta["interrupted"] = why
            try:
                interrupted = bool(why)
                run = _run_of({"benchmarks": output_json.get("benchmarks", []), "attnsuite": meta})
                meta["scope"] = scope_of(config, run, state, interrupted, _keyword_baseline_keys(config, run)).to_json()
            except (bl.ResultFileError, ValueError) as exc:  # the JSON is written regardless
                state.lines.append(f"the run's selection was not stored in its JSON: {exc}")
        state.json_obj = {
            "benchmarks": [{"name": b.get("fullname") or b.get("name"), "extra_info": b.get("extra_info")}
                           for b in output_json.get("benchmarks", []) if isinstance(b, dict)],
            "attnsuite": output_json.get("attnsuite"),
        }


def _benchmark_session(config: pytest.Config) -> Any:
    return getattr(config, "_benchmarksession", None)


def _json_now(config: pytest.Config, state: GateState) -> Optional[dict[str, Any]]:
    """The run's JSON object as the same hooks would build it now (without keeping it as the run's)."""
    benches = list(getattr(_benchmark_session(config), "benchmarks", None) or [])
    # the suite's runner measures its cases whatever pytest-benchmark does: with --benchmark-disable
    # (xdist turns it on too) pytest-benchmark holds none of them, and the summary had said "no
    # baseline for this machine" for a run whose cases were all measured and never compared
    if not benches and not getattr(config.stash.get(plugin_bench._RUNNER, None), "landed", None):
        return None
    # machine_info stays empty: pytest-benchmark's own (py-cpuinfo) costs seconds and the
    # fingerprint is the benchmarks plugin's business.
    out = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=benches, include_data=False, machine_info={}, commit_info={})
    state.probing = True
    try:
        config.hook.pytest_benchmark_update_json(config=config, benchmarks=benches, output_json=out)
    finally:
        state.probing = False
    return {"benchmarks": [{"name": b.get("fullname") or b.get("name"), "extra_info": b.get("extra_info")}
                           for b in out.get("benchmarks", []) if isinstance(b, dict)],
            "attnsuite": out.get("attnsuite")}


def _run_of(obj: dict[str, Any]) -> bl.Run:
    run = bl.run_from_benchmarks_json(obj, "this run")
    if run.fingerprint:
        run.fingerprint = bl.stable_fingerprint(run.fingerprint)
    meta = obj.get("attnsuite")
    cal = meta.get("calibration") if isinstance(meta, dict) else None
    if getattr(run, "calibration", None) is None and isinstance(cal, dict) and cal:
        try:
            run.calibration = dict(cal)  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return run


def _current_run(config: pytest.Config, state: GateState) -> Optional[bl.Run]:
    """This session's records and fingerprint, as its result JSON has them; None when no benchmark ran."""
    obj = state.json_obj
    if obj is None:
        # No JSON was saved (no --benchmark-json): ask the same hooks for the same JSON object.
        try:
            obj = _json_now(config, state)
        except Exception as exc:  # the gate must still run on the records it has
            state.lines.append(f"could not build the run's JSON: {exception_text(exc)}")
            benches = list(getattr(_benchmark_session(config), "benchmarks", None) or [])
            obj = {"benchmarks": [{"name": getattr(b, "fullname", "?"), "extra_info": dict(b.extra_info or {})}
                                  for b in benches]} if benches else None
    return None if obj is None else _run_of(obj)


# --------------------------------------------------------------------------- finding and judging


def _locate(config: pytest.Config, run: bl.Run) -> tuple[Optional[Path], Any]:
    """(baseline path or None, the lookup: message, fallback, promise) for this run."""
    named = config.getoption("--attn-baseline")
    if named:
        return Path(named), bl.Lookup(Path(named), f"baseline {named} (named with --attn-baseline)")
    look = bl.find_baseline(run.fingerprint, _baselines_dir(config))
    return look.path, look


def _judge(config: pytest.Config, run: bl.Run, base: bl.Baseline, path: Path, lookup: Any, state: GateState,
           interrupted: bool = False) -> Comparison:
    """The one compare path with the one thresholds rule (raises FingerprintMismatch, ThresholdsError).

    The thresholds folder is the baseline's own, as for ``attnsuite compare`` (the folder of its
    reference file): with ``--attn-baseline`` elsewhere the two had read different files and given
    opposite verdicts on the same two runs (found by a fresh-user test)."""
    cfg, _ = gate.thresholds_for(config.getoption("--attn-thresholds"), Path(path).parent)
    notes = ["the session was interrupted: only the cases that ran are judged"] if interrupted else []
    cmp = gate.judge_runs(gate.run_of_baseline(base), run, thresholds=cfg,
                          scope=scope_of(config, run, state, interrupted, base.cases),
                          allow_mismatch=config.getoption("--attn-allow-mismatch"), notes=notes)
    cmp.baseline_label = str(path)
    cmp.current_label = "this run"
    cmp.header = lookup_lines(lookup)
    cmp.fallback = bool(getattr(lookup, "fallback", False))
    cmp.promise = str(getattr(lookup, "promise", "") or "")
    cmp.gate_mode = effective_gate_mode(config)
    cmp.interrupted = interrupted
    unregistered = unregistered_missing(cmp)
    if unregistered:
        cmp.notes.append(unregistered)
    once = (_measured_once(cmp) if interrupted and config.getoption("attn_confirm")
            and not config.getoption("--attn-record-baseline") else [])
    if once:
        # an interrupted run skips the confirmation pass: its findings had read as confirmed regressions
        cmp.notes.append(f"{len(once)} case(s) judged slower or memory-growth were measured once: the session "
                         "stopped before its confirmation pass, which measures them again; the same command with "
                         "--attn-resume carries on and confirms or clears them")
    return cmp


def unregistered_missing(cmp: Comparison) -> str:
    """A note on the missing cases whose variant this session does not register, or "": a run that
    forgot an outside variant's ``--attn-variants`` had read its cases missing (gating) with no word
    of why (``record --prune`` keeps such a variant's cases unless ``--case`` names them)."""
    known = {v.name for v in registry.variants()}
    names: dict[str, int] = {}
    for v in cmp.verdicts:
        parts = v.key.split("/")
        if v.verdict == "missing" and len(parts) > 1 and parts[1] not in known:
            names[parts[1]] = names.get(parts[1], 0) + 1
    if not names:
        return ""
    listed = ", ".join(f"{name} ({count(n, 'case')})" for name, n in sorted(names.items()))
    return (f"missing cases of {count(len(names), 'variant')} this run does not register: {listed}: an outside "
            "variant whose file this run did not load (--attn-variants, ATTNSUITE_VARIANTS)? A variant taken out "
            "of the code: record with --case '*/NAME/*' --prune (docs/gate.md)")


def _measured_once(cmp: Comparison) -> list[str]:
    """Keys of the cases judged slower or memory-growth that no second measurement has confirmed yet."""
    return [v.key for v in cmp.verdicts
            if v.cur is not None and any(f in CONFIRMABLE for f in v.flags) and "confirm" not in (v.cur.extra or {})]


def _interrupted(session: pytest.Session, exitstatus: Any = None) -> Optional[str]:
    """Why the session did not run to its end (None when it did)."""
    if exitstatus == pytest.ExitCode.INTERRUPTED or session.exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted"
    for why in (session.shouldstop, session.shouldfail):  # shouldfail: -x / --maxfail reached
        if why:
            return f"stopped early ({why})" if isinstance(why, str) else "stopped early"
    return None


# --------------------------------------------------------------------------- confirmation


def _confirm_function(config: pytest.Config) -> Optional[Callable[..., Any]]:
    """The benchmarks plugin's ``confirm_cases(config, keys)``, when that plugin is loaded."""
    plugin = config.pluginmanager.get_plugin(BENCH_PLUGIN)
    return getattr(plugin, "confirm_cases", None) if plugin is not None else None


def confirm_flagged(session: pytest.Session) -> None:
    """Re-measure, once and together, every case judged slower or memory-growth against a stored baseline."""
    config = session.config
    state: Optional[GateState] = config.stash.get(_STATE, None)
    if state is None or not config.getoption("attn_confirm") or config.getoption("--attn-gate") == "off":
        return
    if config.getoption("--attn-record-baseline") or _interrupted(session):
        return
    try:
        obj = _json_now(config, state)
        run = _run_of(obj) if obj else None
        if run is None or not run.records:
            return
        path, lookup = _locate(config, run)
        if path is None or not path.exists():
            return
        cmp = _judge(config, run, bl.load_baseline(path), path, lookup, state)
    except (bl.InputFileError, bl.FingerprintMismatch, ThresholdsError):
        return  # the session's end reports these properly
    keys = _measured_once(cmp)
    if not keys:
        return
    confirm = _confirm_function(config)
    if confirm is None:
        state.lines.append(f"{len(keys)} flagged case(s) not confirmed: the benchmarks plugin ({BENCH_PLUGIN}) "
                           "is not loaded")
        return
    t0 = time.monotonic()
    confirm(config, keys)
    state.lines.append(f"confirmation: {len(keys)} case(s) first judged slower or memory-growth measured again "
                       f"({time.monotonic() - t0:.1f} s)")


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    result = yield  # an exception (KeyboardInterrupt, -x) propagates: nothing is re-measured
    # After every case ran and before pytest-benchmark writes its JSON (in pytest_sessionfinish),
    # so the second measurements are in the JSON and in the verdicts.
    try:
        confirm_flagged(session)
    except Exception as exc:  # never lose the run's results over the confirmation
        state = session.config.stash.get(_STATE, None)
        if state is not None:
            state.lines.append(f"confirmation failed: {exception_text(exc)}")
    return result


# --------------------------------------------------------------------------- the end of the session


REQUIRED_TEXT = "no baseline to judge this run against, and --attn-require-baseline asks for one"


def _fail_session(session: pytest.Session, v: Any) -> None:
    """Fail the session with one gate finding (``v``: label, key, message), listed among pytest's failures."""
    fail_session(session, f"{GATE_NODE}::{v.key}", f"{v.label}: {v.message}")


def _usage_error(session: pytest.Session, state: GateState, message: str) -> None:
    state.error = message
    session.exitstatus = pytest.ExitCode.USAGE_ERROR


def _write_gate_json(config: pytest.Config, state: GateState, obj: dict[str, Any],
                     records: Optional[dict] = None) -> None:
    target = config.getoption("--attn-gate-json")
    if not target:
        return
    # this run's cases that failed outright (each failed its pytest item, whatever the gate found):
    # `failed` speaks of the gate alone, and a run of errors had read as a pass to a tool reading this
    obj = {**obj, "run_failed": dict(summary.failed_counts(records or {}))}
    # a run with --attn-inject-slowdown: its gate.md says so, and so must what `ab --cases-from` reads
    obj["simulated"] = summary.simulated_line(records or {}) or None
    obj["run_id"] = plugin_bench.run_id(config)  # the benchmark JSON's: a report tells this run's verdicts by it
    try:
        bl.atomic_write_text(target, json.dumps(obj, indent=1, allow_nan=False) + "\n")
        state.lines.append(f"gate JSON written to {target}")
    except (OSError, ValueError) as exc:
        state.lines.append(f"could not write the gate JSON {target}: {exc}")


def _files(config: pytest.Config) -> list[tuple[str, str]]:
    """(what, path) of every file this session writes that a person opens next."""
    json_path = plugin_bench.benchmark_json_path(config)
    out = [("benchmark JSON", str(json_path))] if json_path is not None else []
    if out and getattr(_benchmark_session(config), "disabled", False):
        # the gate still judges the runner's records, but the file named had been listed as written
        out = [("benchmark JSON", f"none ({json_path} is not written under --benchmark-disable)")]
    # the gate's files are not written with the gate off, nor after its usage error (a baseline of another
    # machine refused): the line had named both as written (an outside tester's trial)
    gate_files = [(what, value) for what, value in (("gate diff", config.getoption("--attn-markdown", default=None)),
                                                    ("verdicts", config.getoption("--attn-gate-json", default=None)))
                  if value]
    if gate_files:
        state = config.stash.get(_STATE, None)
        why_not = ("the gate is off" if effective_gate_mode(config) == "off"
                   else "the gate stopped on the error above" if state is not None and state.error else "")
        out += [(what, f"none ({value} is not written: {why_not})" if why_not else str(value))
                for what, value in gate_files]
    return out


def _summary_of(config: pytest.Config, records: Any, cmp: Optional[Comparison],
                why_none: Sequence[str] = ()) -> summary.Summary:
    mode = effective_gate_mode(config)
    if mode == "off":
        why_none = ["the gate is off (--attn-gate off): nothing was compared"]
    state = config.stash.get(_STATE, None)
    return summary.build(records, cmp, gate_mode=mode, baseline_lines=why_none, files=_files(config),
                         interrupted=_interrupted_text(config, records),
                         uncompared=state.uncompared if state is not None and mode != "off" else "",
                         broken=registry.broken_entry_points(),
                         injected=_injected(config),
                         unmeasured=list(_unmeasured(config, records).values()))


def _unmeasured(config: pytest.Config, records: Any) -> dict[str, str]:
    """:func:`summary.unmeasured_named` of a session that ran to its end (an interrupted one answers only for
    what it ran)."""
    if _interrupted_text(config, records):
        return {}
    return summary.unmeasured_named(list(records.values()), config.getoption("--attn-only", default=None) or [])


def _failed_outside(config: pytest.Config, records: Any) -> str:
    """Why this session fails apart from its cases and the comparison (gate.md's heading), or ""."""
    if registry.broken_entry_points():
        return "an installed package's variants could not be loaded"
    names = list(_unmeasured(config, records))
    return f"--attn-only {', '.join(names)}: nothing of it was measured" if names else ""


def _injected(config: pytest.Config) -> list[str]:
    """The variants ``--attn-inject-slowdown`` named in a session that ran benchmarks (none otherwise)."""
    spec = getattr(config.stash.get(plugin_bench._RUNNER, None), "spec", None)
    return [name for name, _ in spec.inject] if spec is not None else []


def _interrupted_text(config: pytest.Config, records: Any) -> str:
    """How far a session that stopped early got, for the summary's first line ("" when it ran to its end)."""
    state = config.stash.get(_STATE, None)
    why = _interrupted(state.session) if state is not None and state.session is not None else None
    if not why:
        return ""
    selected = len(state.selected_keys or ())
    ran = len(records or ())
    if selected > ran:
        return (f"{why} after {ran} of {count(selected, 'selected case')}; {selected - ran} did not run "
                "(the same command with --attn-resume, the same options and output, carries on from the journal)")
    return f"{why} after {count(ran, 'case')}"


def _summary_markdown(config: pytest.Config, records: Any, cmp: Optional[Comparison],
                      why_none: Sequence[str] = ()) -> list[str]:
    """The last screen as markdown: it heads gate.md."""
    return summary.markdown_lines(_summary_of(config, records, cmp, why_none), report.md_escape)


def _session_records(config: pytest.Config) -> dict[str, Any]:
    """Every record of this session, from the benchmarks plugin (skipped and failed cases included)."""
    runner = config.stash.get(plugin_bench._RUNNER, None)
    landed = getattr(runner, "landed", None) or []
    return {item.record.key: item.record for item in landed}


WRITTEN = ("baseline recorded:", "baseline NOT recorded", "markdown diff written to", "gate JSON written to")


def written_lines(config: pytest.Config) -> list[str]:
    """What this run wrote, in the gate's words (the benchmark JSON, gate.md and gate JSON, a baseline
    recorded or why not): said when a Ctrl-C cuts the summary that would have shown it."""
    state: Optional[GateState] = config.stash.get(_STATE, None)
    json_path = plugin_bench.benchmark_json_path(config)
    lines = [f"benchmark JSON written to {json_path}"] if json_path is not None and json_path.exists() else []
    return lines + [line for line in (state.lines if state is not None else ()) if line.startswith(WRITTEN)]


def _write_markdown(config: pytest.Config, state: GateState, text: str) -> None:
    md_path = config.getoption("--attn-markdown")
    text = report.without_root(text, config.rootpath)  # read in a PR: paths as the repository names them
    if md_path:
        try:
            report.write_markdown(text, md_path)
            state.lines.append(f"markdown diff written to {md_path}")
        except OSError as exc:  # checked before the run; a disk that filled since must not lose the verdict
            state.lines.append(f"could not write the markdown diff {md_path}: {exc}")
        try:
            report.append_step_summary(text)
        except OSError as exc:  # the runner's file, unwritable: the verdict, gate JSON and recording go on
            state.lines.append(f"could not append the markdown diff to $GITHUB_STEP_SUMMARY: {exc}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state: GateState = config.stash.get(_STATE, None) or GateState()
    mode = config.getoption("--attn-gate")
    recording = config.getoption("--attn-record-baseline")
    if mode == "off" and not recording:
        return
    interrupted = _interrupted(session, exitstatus)
    try:
        run = _current_run(config, state)
    except bl.ResultFileError as exc:
        _usage_error(session, state, f"this run's benchmark records are malformed: {exc.problem}")
        return
    if run is None or not run.records:
        if recording or config.getoption("--attn-baseline"):
            state.lines.append("no attnsuite benchmark records in this run: nothing to compare or record")
        nothing = plugin_bench.nothing_selected_line(config)
        if nothing:
            # gate.md too: a CI step posting it as the PR comment had found no file, where the
            # terminal said why (a -k or --attn-* selection that matched nothing)
            _write_markdown(config, state, report.nothing_selected_markdown(nothing))
        elif interrupted:
            # Ctrl-C (or a cancelled job's SIGTERM) in the first case had left no gate.md, no summary and a
            # gate JSON reading "no benchmark records", failed false, with no word of the interruption
            # (interrupted while collecting, the session's selection is not known yet: no count to give)
            how = _interrupted_text(config, {}) or f"{interrupted} before any case was selected"
            state.no_case_line = f"INTERRUPTED ({how}): no case finished, so nothing was judged"
            _write_markdown(config, state, report.no_run_markdown("⏹️ **INTERRUPTED**", state.no_case_line))
        _write_gate_json(config, state, {"compared": False, "failed": False, "interrupted": bool(interrupted),
                                         "reason": nothing or state.no_case_line or "no benchmark records",
                                         "cases": []})
        return
    path, lookup = _locate(config, run)
    if path is None and recording and bl.fingerprint_id(run.fingerprint):
        path = bl.baseline_path_for(run.fingerprint, _baselines_dir(config))

    base = None
    if path is not None and path.exists():
        try:
            base = bl.load_baseline(path)
        except bl.BaselineError as exc:
            _usage_error(session, state, str(exc))
            return
    if base is not None and mode != "off":
        try:
            cmp = _judge(config, run, base, path, lookup, state, interrupted=bool(interrupted))  # type: ignore[arg-type]
        except bl.FingerprintMismatch as exc:
            _usage_error(session, state, f"refusing to compare with {path}: the machines differ: {exc} "
                                         "(--attn-allow-mismatch compares anyway)")
            return
        except ThresholdsError as exc:
            _usage_error(session, state, str(exc))
            return
        state.comparison = cmp
        if _requires_baseline(config) and not interrupted and not _judged_any(cmp):
            # it shares no case with the run: a CI gate requiring a baseline had passed having judged
            # nothing, where `attnsuite compare` of the same two files is an error (an outside tester's trial)
            state.comparison = None
            lookup = SimpleNamespace(message=f"{path} holds none of this run's {count(len(run.records), 'case')}, "
                                             "so nothing was judged", fallback=False)
    else:
        state.lines.extend(lookup_lines(lookup))
    recorded = False
    if recording:
        if getattr(lookup, "fallback", False) and bl.fingerprint_id(run.fingerprint):
            # a fallback is another machine's file: this machine's measurements go into its own
            path = bl.baseline_path_for(run.fingerprint, _baselines_dir(config))
        recorded = _record(session, state, run, path, interrupted)
    cmp = state.comparison
    if cmp is not None:
        # written after recording, so that gate.md, the gate JSON and the last screen say it happened (a
        # recording run had advised "refresh the baseline" and its summary never said it had)
        cmp.recorded = str(path) if recorded else ""
        _write_markdown(config, state, report.markdown_diff(cmp, head=_summary_markdown(config, run.records, cmp),
                                                            outside=_failed_outside(config, run.records)))
        _write_gate_json(config, state, cmp.to_json(), run.records)
        if cmp.failed and mode == "enforce" and not recording:
            for v in cmp.regressions:
                _fail_session(session, v)
    if state.comparison is None and mode != "off":
        # after recording, so the last screen and gate.md say what became of the recording
        required = _requires_baseline(config)
        state.no_baseline = lookup_lines(lookup)
        if recorded:
            state.uncompared = f"RECORDED: nothing was compared; this run is recorded as the baseline {path}"
        elif recording:
            state.uncompared = f"NOT COMPARED: {summary.NOT_COMPARED}, and the baseline was NOT recorded (why above)"
        else:
            state.lines.append("no comparison: results are still in the benchmark JSON; make this machine's "
                               "baseline with --attn-record-baseline")
        if required:
            state.uncompared = (f"FAIL: {REQUIRED_TEXT} (why below; record one with --attn-record-baseline, "
                                "or name one with --attn-baseline)")
            state.lines.append(f"FAILED {REQUIRED_TEXT}")
            _fail_session(session, SimpleNamespace(label="no baseline", key="no-baseline",
                                                   message=f"{REQUIRED_TEXT}: {lookup.message}"))
        _write_markdown(config, state, report.markdown_run(
            run.records, context=lookup_lines(lookup),
            head=_summary_markdown(config, run.records, None, state.no_baseline)))
        _write_gate_json(config, state, {"compared": False, "failed": required, "reason": str(lookup.message),
                                         "cases": []}, run.records)


def _commit_info() -> Optional[dict[str, Any]]:
    """pytest-benchmark's commit information of the working directory (None where it cannot tell)."""
    try:
        from pytest_benchmark.utils import get_commit_info

        info = get_commit_info()
    except Exception:  # noqa: BLE001 - no git, no repository: the entries then say only when
        return None
    return info if isinstance(info, dict) and not info.get("error") else None


def _record(session: pytest.Session, state: GateState, run: bl.Run, path: Optional[Path],
            interrupted: Optional[str]) -> bool:
    """Record this run into ``path``; True when it was written."""
    config = session.config
    if interrupted:  # a partial run must not replace a baseline's cases with a subset or with errors
        state.lines.append(f"baseline NOT recorded: the session was {interrupted}; nothing was written")
        return False
    if path is None:
        _usage_error(session, state, "cannot record a baseline: this run has no machine fingerprint id; "
                                     "name the file with --attn-baseline")
        return False
    try:
        if not bl.fingerprint_id(run.fingerprint) and not path.exists():
            raise ValueError("this run has no machine fingerprint id")
        stamp = provenance.now(_commit_info())  # each entry says when and at which commit it was measured
        for rec in run.records.values():
            rec.extra.setdefault(provenance.KEY, dict(stamp))
        # read, merge and write under the store's lock: a concurrent recording loses nothing
        # allow_older: this run is being measured now; a stored entry that reads newer is another clock's skew
        merged = bl.record_baseline(run, path, allow_mismatch=config.getoption("--attn-allow-mismatch"),
                                    allow_older=True)
        if not (merged.added or merged.updated or merged.unchanged or merged.removed):
            # every case kept the baseline's entry (each failed or was skipped where the baseline had a
            # measurement): the summary had still said RECORDED, of a file this run changed nothing in
            state.lines.append(f"baseline NOT changed: no case of this run was recorded into {path}: {merged}")
            return False
        state.lines.append(f"baseline recorded: {path}: {merged}")
        failing = bl.recorded_failures(run, merged)
        if failing:
            state.lines.append(failing.strip())
        return True
    except (bl.FingerprintMismatch, bl.BaselineError, ValueError) as exc:
        _usage_error(session, state, f"cannot record baseline {path}: {exc}")
        return False


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables: the summary is the last screen
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state: Optional[GateState] = config.stash.get(_STATE, None)
    if state is None:
        return
    _gate_section(terminalreporter, config, state)
    records = _session_records(config)
    if records:
        tr = terminalreporter
        tr.write_sep("=", "attnsuite summary", bold=True)
        why = [f"the gate stopped: {state.error}"] if state.error else state.no_baseline
        s = _summary_of(config, records, state.comparison, why)
        for line in summary.terminal_lines(s):
            failing = line.startswith("FAIL")
            tr.write_line(line, red=failing, green=line.startswith("PASS"), yellow=line.startswith("REPORTED"),
                          bold=failing)
        nothing_judged = state.comparison is None or not _judged_any(state.comparison)
        if nothing_judged and effective_gate_mode(config) != "off":
            # a CI job that compared nothing passes in report mode: its page says so (a runner with another
            # core count than the shipped CPU baseline's had found no compatible baseline, without a mark)
            warning = report.github_warning("attnsuite gate: nothing compared", "; ".join([s.verdict, *s.baseline]))
            if warning:
                tr.write_line(warning)
    elif state.no_case_line:
        terminalreporter.write_sep("=", "attnsuite summary", bold=True)
        terminalreporter.write_line(state.no_case_line, yellow=True, bold=True)


def _gate_section(terminalreporter: Any, config: pytest.Config, state: GateState) -> None:
    """The gate's detail: notes, every finding as a table, the gating and reported lines."""
    if not (state.lines or state.comparison or state.error):
        return
    tr = terminalreporter
    tr.write_sep("=", "attnsuite regression gate", bold=True)
    cmp = state.comparison
    if cmp is not None:
        for note in cmp.notes:
            tr.write_line(f"note: {note}")
    for line in state.lines:
        tr.write_line(line)
    if cmp is not None:
        tr.write_line(report.terminal_table(cmp))  # starts with the baseline and the calibration
        mode = effective_gate_mode(config)
        for line in report.gate_lines(cmp):
            tr.write_line(f"{'FAILED' if mode == 'enforce' else 'REPORTED'} {line}", red=mode == "enforce",
                          yellow=mode != "enforce")
        for line in report.reported_lines(cmp):
            tr.write_line(f"NOT GATING {line}", yellow=True)
        if cmp.improvements:
            tr.write_line(f"{count(len(cmp.improvements), 'improvement')}: {report.improvement_advice(cmp)}", green=True)
    if state.error:
        tr.write_line(f"ERROR attnsuite gate: {state.error}", red=True)
