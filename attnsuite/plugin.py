"""The pytest plugin: loaded by the root ``conftest.py``; it loads the variants and the sub-plugins.

Sub-plugins, one job each: :mod:`attnsuite.plugin_bench` (benchmark options and timing fixtures),
:mod:`attnsuite.plugin_gate` (baselines, verdicts, reports), :mod:`attnsuite.plugin_isolation` (the correctness
tests against hostile variants: leaked state, crashes, hangs), :mod:`attnsuite.benchmark_json_option`
(``--benchmark-json`` written whole or not at all, also on pytest-benchmark before 5.3).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

from . import exits, import_limit, problem_file, registry
from .isolation import NOT_RUN_PREFIX, OTHERS_NOT_RUN
from .problem import DTYPE_SHORT
from .session_failure import fail_session
from .verdict import problem_dtype_device
from .wording import exception_text

PROBLEM_FILES = pytest.StashKey[list]()  # the problems files this session loaded (resolved paths)

SUBPLUGINS = ("attnsuite.plugin_bench", "attnsuite.plugin_gate", "attnsuite.plugin_isolation",
              "attnsuite.benchmark_json_option", "attnsuite.bench_xdist")
# Registered with this module (pytest reads a plugin's pytest_plugins at registration), so that
# their command-line options exist before the command line is parsed.
pytest_plugins = list(SUBPLUGINS)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnsuite", "attention regression suite")
    group.addoption(
        "--attn-variants",
        action="append",
        default=[],
        metavar="MODULE_OR_PATH",
        help="import variants from a module name, a .py file or a package folder outside the repo (repeatable; "
        "also ATTNSUITE_VARIANTS=a,b and the 'attnsuite.variants' entry-point group)",
    )
    group.addoption(
        "--attn-import-timeout",
        default=import_limit.DEFAULT_S,
        metavar="SECONDS",
        help=f"stop the run, naming the module and where it hangs, when one variants module from outside "
        f"(entry point, ATTNSUITE_VARIANTS, --attn-variants) takes longer to import (default "
        f"{import_limit.DEFAULT_S:g}; 0 for no limit)",
    )
    group.addoption(
        "--attn-problems",
        action="append",
        default=[],
        metavar="FILE",
        help="add correctness problems to existing families and benchmark entries to workloads from a "
        "JSON or TOML file (repeatable; also ATTNSUITE_PROBLEMS=a.json,b.toml); see attnsuite/problem_file.py",
    )
    group.addoption(
        "--attn-only",
        action="append",
        default=[],
        metavar="NAME",
        help="check/benchmark only these variants (repeatable, or comma-separated like ATTNSUITE_VARIANTS; "
        "unknown names are an error)",
    )
    group.addoption(
        "--attn-failures-log",
        default=None,
        metavar="FILE",
        help="append each failing test's id and error to FILE the moment it fails (a run cut by a time "
        "limit keeps its reasons; pytest's own summary comes only at the end)",
    )


def register_failures_log(config: pytest.Config) -> None:
    """Write failures as they happen when --attn-failures-log is given; under xdist only in the
    controller, which sees every worker's reports (a worker writing too would double each line)."""
    path = config.getoption("--attn-failures-log")
    if path and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FailuresLog(path), "attnsuite-failures-log")


class FailuresLog:
    """--attn-failures-log: each failure (or error) written out as soon as its report exists."""

    def __init__(self, path: str) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.failed:
            return
        where = "" if report.when == "call" else f" (in {report.when})"
        with open(self.path, "a", encoding="utf-8") as fh:  # closed (so on disk) after every failure
            fh.write(f"FAILED {report.nodeid}{where}\n{failure_reason(report.longreprtext)}\n\n")


def failure_reason(longrepr: str, head: int = 8, tail: int = 6) -> str:
    """The lines of a failure that say why: pytest's ``E`` lines, or, for a message without them
    (``pytest.fail(..., pytrace=False)``), its first lines (where the suite names the error) and last."""
    text = longrepr.strip().splitlines()
    marked = [line for line in text if line.startswith("E ")]
    if marked:
        return "\n".join(marked)
    if len(text) <= head + tail:
        return "\n".join(text)
    return "\n".join(text[:head] + [f"  [... {len(text) - head - tail} lines ...]"] + text[-tail:])


class SkippedWholly:
    """Which watched variants (``--attn-only`` names, variants from outside the repository) had every
    correctness test of this run skipped: the run read green having checked nothing of them (a
    variant declared for CUDA only, run on CPU: 316 skipped, exit 0, not a word).

    Counted from the test reports by the variant in the test id (``[name@problem]``, ``[name]`` of the
    property tests, ``[name[P=2]@problem-check]`` of the distributed ones), so the xdist controller,
    which never sees the items, counts too. (Only ``[name@`` had been read: a variant whose one crash
    was in a property test was said to have had none of its tests run.)"""

    ID = re.compile(r"::[^\[]*\[([^\]@\[]+)[\]@\[]")

    def __init__(self, watched: set[str], dtypes_note: bool = True, named: frozenset[str] = frozenset()) -> None:
        self.watched = watched
        self.named = named  # --attn-only's names: asked for by name, so checking nothing of one fails the run
        self.dtypes_note = dtypes_note  # off where -k, -m or --attn-dtype chose the dtypes themselves
        self.ran: Counter = Counter()
        self.skipped: Counter = Counter()
        self.reason: dict[str, str] = {}
        self.dtypes_ran: dict[str, set[str]] = {}  # short dtype names of the problems its tests that ran had
        self.cut_short: dict[str, str] = {}  # a skip reason saying its later tests were not run after a crash or hang

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        m = self.ID.search(report.nodeid)
        name = m.group(1) if m else None
        if name not in self.watched:
            return
        if report.skipped:
            self.skipped[name] += 1
            if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                reason = str(report.longrepr[2]).removeprefix("Skipped: ")
                self.reason.setdefault(name, reason)
                if reason.startswith(NOT_RUN_PREFIX) or OTHERS_NOT_RUN in reason:
                    self.cut_short.setdefault(name, reason)
        elif report.when == "call" or report.failed:  # a test that crashed its worker reports no "call"
            self.ran[name] += 1
            problem_id = report.nodeid.split("@", 1)[1].rstrip("]") if "@" in report.nodeid else ""
            dtype, _ = problem_dtype_device(problem_id) if problem_id else (None, None)
            if dtype:
                self.dtypes_ran.setdefault(name, set()).add(dtype)

    def unchecked(self) -> list[str]:
        """The watched variants none of whose tests ran (each one was skipped)."""
        return [name for name in sorted(self.watched) if self.skipped[name] and not self.ran[name]]

    def failing(self) -> list[str]:
        """The unchecked variants that ``--attn-only`` named: the run fails for them (a CUDA-only kernel's
        CI on a CPU runner had read green, 333 skipped, having checked nothing of it)."""
        return [name for name in self.unchecked() if name in self.named]

    def lines(self) -> list[str]:
        out = [f"attnsuite: variant {name}: none of its {self.skipped[name]} tests ran here, every one was "
               f"skipped (e.g. {textwrap.shorten(self.reason.get(name, '?'), 200, placeholder=' ...')}): nothing "
               "of it was checked" + ("; --attn-only named it, so the run fails" if name in self.named else "")
               for name in self.unchecked()]
        for name in sorted(self.dtypes_ran) if self.dtypes_note else ():
            # a declared dtype no test of the run had: its code path was never run (float16 on CPU, where the
            # run's problems are float32, float64 and bfloat16), and the run had said nothing of it
            declared = getattr(registry.get(name), "dtypes", None) or ()
            unchecked = sorted(d for d in declared if DTYPE_SHORT.get(d, d) not in self.dtypes_ran[name])
            if unchecked:
                seen = sorted(long for long, short in DTYPE_SHORT.items() if short in self.dtypes_ran[name])
                default = "" if registry.sets_itself(registry.get(name), "dtypes") else \
                    " (the default: its class sets no dtypes)"
                if name in self.cut_short:  # its tests stopped: the problem set is not why
                    why = (f"its tests after a crash or hang were not run "
                           f"({textwrap.shorten(self.cut_short[name], 160, placeholder=' ...')})")
                else:
                    why = (f"its problems here were {', '.join(seen)}: --attn-dtype, or a run on CUDA for half "
                           "precision, checks it")
                out.append(f"attnsuite: variant {name}: declares {', '.join(unchecked)}{default}, which no test of "
                           f"this run checked ({why})")
        return out


# pytest-benchmark's own default, a folder relative to wherever pytest was started
_BENCHMARK_STORAGE_DEFAULT = "file://./.benchmarks"


def keep_benchmark_storage_in_rootdir(config: pytest.Config) -> None:
    """Point pytest-benchmark's storage at the checkout's ``.benchmarks/`` (ignored by git) when it is left
    at its default: the default is relative to the working folder, and pytest-benchmark makes that
    folder at start-up even when it saves nothing, so a run started from a user's own folder (with
    ``-c <checkout>/pyproject.toml``) had left an empty ``.benchmarks/`` there. A storage the user
    names is kept as given."""
    if getattr(config.option, "benchmark_storage", None) == _BENCHMARK_STORAGE_DEFAULT:
        config.option.benchmark_storage = f"file://{config.rootpath / '.benchmarks'}"


# The configs of this process's pytest runs still configured: a run inside another (pytester's inline
# runs in the suite's own tests) leaves the process's end to the outer one (see pytest_unconfigure).
_CONFIGURED: set[int] = set()
_SESSION = pytest.StashKey[pytest.Session]()
_CONFIGURE_DONE = pytest.StashKey[bool]()
# How long a finished run's process may wait for threads it did not start before it ends without them
# (ATTNSUITE_EXIT_GRACE_S sets it, in seconds).
HELD_GRACE_S = 20.0


def pytest_configure(config: pytest.Config) -> None:
    _CONFIGURED.add(id(config))
    register_failures_log(config)
    keep_benchmark_storage_in_rootdir(config)
    for name in SUBPLUGINS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.import_plugin(name)
    try:
        registry.IMPORT_LIMIT_S = import_limit.parse(config.getoption("--attn-import-timeout"))
    except ValueError as exc:
        raise pytest.UsageError(f"attnsuite: {exc}") from None
    try:
        registry.load_all(config.getoption("--attn-variants"))
    except Exception as exc:  # a broken external module must say which one and why
        raise pytest.UsageError(f"attnsuite: could not load variants: {exception_text(exc)}") from exc
    try:  # after the variants: a file may add to the families they register
        config.stash[PROBLEM_FILES] = problem_file.load_all(config.getoption("--attn-problems"))
    except problem_file.ProblemFileError as exc:
        raise pytest.UsageError(f"attnsuite: {exc}") from None  # names ATTNSUITE_PROBLEMS or --attn-problems
    # "a,b" as well as "--attn-only a --attn-only b", read once here for every plugin after this one
    # (--attn-workload too: attnsuite ab already read its values so, and a,b had been "unknown")
    for option, what in (("--attn-only", "variant"), ("--attn-workload", "workload"), ("--attn-mode", "mode")):
        given = config.getoption(option, default=None)
        if given is None:  # the benchmarks plugin, which declares --attn-workload, is not loaded
            continue
        empty = [v for v in given if not v.strip(" ,")]
        if empty:  # `--attn-only=$UNSET` had selected every variant
            raise pytest.UsageError(f"attnsuite: {option}: {empty[0]!r} names no {what} (an unset shell variable?); "
                                    f"leave the option out to select every {what}")
        setattr(config.option, option[2:].replace("-", "_"),
                [n.strip() for v in given for n in v.split(",") if n.strip()])
    for name in config.getoption("--attn-only"):
        try:
            registry.get(name)
        except registry.UnknownVariantError as exc:
            broken = "".join(f"; left out: {line}" for line in registry.broken_entry_points())
            raise pytest.UsageError(f"attnsuite: --attn-only: {exc}{broken}") from None
    if not hasattr(config, "workerinput"):  # the controller (or the only process) reads every report
        watched = set(config.getoption("--attn-only")) | {v.name for v in registry.external_variants()}
        chose_dtypes = any(config.getoption(o, default=None) for o in ("keyword", "markexpr", "--attn-dtype"))
        config.pluginmanager.register(SkippedWholly(watched, dtypes_note=not chose_dtypes,
                                                    named=frozenset(config.getoption("--attn-only"))),
                                      "attnsuite-skipped-wholly")
        config.pluginmanager.register(CollectionCrashes(), "attnsuite-collection-crashes")
    config.stash[_CONFIGURE_DONE] = True


class CollectionCrashes:
    """Under pytest-xdist, the workers that died before they had collected the tests.

    Code of a variant runs while the tests are collected (its module's import, its ``extra_reasons``
    and ``known_defect``); a segfault there takes every worker down before any test exists, and the
    run had ended "--attn-only X left none of the collected tests" with exit status 5, blaming the
    selection. Such a run now says what happened and fails (status 1)."""

    def __init__(self) -> None:
        self.collected: set[str] = set()
        self.died: dict[str, str] = {}  # worker id -> why xdist says it went down

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list) -> None:
        self.collected.add(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        worker = node.gateway.id
        if error and worker not in self.collected:
            self.died[worker] = str(error).strip().splitlines()[0][:160] if str(error).strip() else "died"

    def line(self) -> Optional[str]:
        """What the terminal summary says (None when every worker collected)."""
        if not self.died:
            return None
        why = "; ".join(f"{w}: {e}" for w, e in sorted(self.died.items()))
        return (f"attnsuite: pytest-xdist worker(s) {', '.join(sorted(self.died))} died while collecting the tests "
                f"({why}): code that runs at collection crashed, a variant module's import or a variant's "
                "extra_reasons()/known_defect(); what they would have collected was not checked. The same "
                "command without -n shows where it crashed")


# The parameters by which a correctness test names the variant it checks: a Variant object, or its name.
_VARIANT_PARAMS = ("variant", "variant_name", "name")


def checked_variants(item: pytest.Item) -> set[str]:
    """The variants a correctness test checks: its variant parameter and its ``attn_variants`` marks."""
    names: set[str] = set()
    params = getattr(getattr(item, "callspec", None), "params", {})
    for key in _VARIANT_PARAMS:
        value = params.get(key)
        value = getattr(value, "name", value)
        if isinstance(value, str):
            names.add(value)
    for mark in item.iter_markers("attn_variants"):
        names.update(a for a in mark.args if isinstance(a, str))
    return names


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # "--attn-only X" checks X only: a correctness test of other variants (a built-in kernel's mutants,
    # its own specifics) is deselected, so a run for one kernel cannot read green on others' tests
    only = set(config.getoption("--attn-only"))
    if not only:
        return
    root = (Path(config.rootpath) / "test_correctness").resolve()
    keep, drop = [], []
    for item in items:
        inside = Path(str(item.path)).resolve().is_relative_to(root)
        # the one skip a check reports when the selection holds nothing for it (nothing_selected) stays
        placeholder = getattr(getattr(item, "callspec", None), "id", "") == "nothing-selected"
        # a test that runs the selection itself (a family's variants through selected_variants) stays
        own_selection = item.get_closest_marker("attn_selection") is not None
        wanted = placeholder or own_selection or bool(checked_variants(item) & only)
        (drop if inside and not wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config.stash[_OTHERS_DESELECTED] = len(drop)


_OTHERS_DESELECTED = pytest.StashKey[int]()


def selected_variants(config: pytest.Config, level: str | None = None) -> list[registry.Variant]:
    """Registered variants of ``level`` after the ``--attn-only`` filter."""
    only = set(config.getoption("--attn-only"))
    return [v for v in registry.variants(level=level) if not only or v.name in only]


def nothing_selected(config: pytest.Config, arity: int) -> Any:
    """The one parameter set of a variant-parametrised test whose selection holds no case for it: a
    skip that names the selection, so the test is reported (never an empty collection or an error)."""
    only = config.getoption("--attn-only")
    what = f"--attn-only {' '.join(only)}" if only else "the registered variants"
    return pytest.param(*([None] * arity), id="nothing-selected",
                        marks=pytest.mark.skip(reason=f"{what}: no variant and problem this test checks"))


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """One line naming each optional attention library found or missing, and why (attnsuite/libraries.py),
    and one per installed package whose variants could not be loaded."""
    from . import libraries

    line = libraries.header_line()
    return ([line] if line else []) + _broken_packages() + _spaced_build_path() or None


def _spaced_build_path() -> list[str]:
    from . import inductor_paths

    folder = inductor_paths.spaced_build_path()
    return [f"attnsuite: {inductor_paths.advice(folder)} (compiled variants on the CPU read error)"] if folder else []


def pytest_deselected(items: list) -> None:
    # tests (not benchmark cases: plugin_bench explains an empty selection of those itself)
    tests = [i for i in items if "bench_case" not in getattr(i, "fixturenames", ())]
    if tests:
        cfg = tests[0].config
        cfg.stash[_TESTS_DESELECTED] = cfg.stash.get(_TESTS_DESELECTED, 0) + len(tests)


_TESTS_DESELECTED = pytest.StashKey[int]()


def _broken_packages() -> list[str]:
    return [f"attnsuite: {line}: its variants were left out of this run, which fails for it"
            for line in registry.broken_entry_points()]


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Once the run's verdict is final, nothing a variant's code left behind may change it or hold the
    process (:mod:`attnsuite.exits`): an atexit handler's ``os._exit(0)`` had turned a failing run into
    exit status 0, and a thread a variants module started held a finished run for ever (an outside
    tester's trials). Not for a run inside another one (its process's end is the outer run's). Where no
    session ran, only after this plugin's own usage error (the status is then 4, and a module it loaded
    may have started the thread); another way (``--help``) leaves the process as it was."""
    _CONFIGURED.discard(id(config))
    if _CONFIGURED:
        return
    session = config.stash.get(_SESSION, None)
    if session is not None:
        status = int(session.exitstatus)
    elif not config.stash.get(_CONFIGURE_DONE, False):
        status = int(pytest.ExitCode.USAGE_ERROR)
    else:
        return
    given = os.environ.get("ATTNSUITE_EXIT_GRACE_S")
    try:
        grace = HELD_GRACE_S if given is None else float(given)
        if not grace >= 0:
            raise ValueError(given)
    except ValueError:
        print(f"attnsuite: ATTNSUITE_EXIT_GRACE_S={given!r} is not a number of seconds >= 0: "
              f"{HELD_GRACE_S:g} s used", file=sys.stderr)
        grace = HELD_GRACE_S
    exits.end_if_held(status, grace)
    if session is not None and not hasattr(config, "workerinput"):  # an xdist worker's status is not the run's
        exits.keep_exit_status(status)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # an installed package that failed to import was left out so that the rest could run: the run
    # must still not read green, or a CI step would pass without the kernel it exists for
    crashes = session.config.pluginmanager.get_plugin("attnsuite-collection-crashes")
    if crashes is not None and crashes.died and session.exitstatus in (pytest.ExitCode.OK,
                                                                       pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if registry.broken_entry_points() and session.exitstatus == pytest.ExitCode.OK \
            and not hasattr(session.config, "workerinput"):
        for i, line in enumerate(registry.broken_entry_points()):
            fail_session(session, f"attnsuite-entry-points::{i}", f"{line}: its variants were left out of this run")
    wholly = session.config.pluginmanager.get_plugin("attnsuite-skipped-wholly")
    if wholly is not None and session.exitstatus == pytest.ExitCode.OK:
        for name in wholly.failing():
            example = textwrap.shorten(wholly.reason.get(name, "?"), 200, placeholder=" ...")
            fail_session(session, f"attnsuite-selection::{name}",
                         f"--attn-only {name}: none of its {wholly.skipped[name]} tests ran on this machine, every one "
                         f"was skipped (e.g. {example}): nothing of it was checked")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for line in _broken_packages():
        terminalreporter.write_line(line, red=True)
    wholly = config.pluginmanager.get_plugin("attnsuite-skipped-wholly")
    for line in wholly.lines() if wholly is not None else []:
        terminalreporter.write_line(line)
    crashes = config.pluginmanager.get_plugin("attnsuite-collection-crashes")
    crashed = crashes.line() if crashes is not None else None
    if crashed:
        terminalreporter.write_line(crashed, red=True)
    deselected = config.stash.get(_TESTS_DESELECTED, 0)
    given = [f"-k {config.getoption('keyword')!r}" if config.getoption("keyword") else "",
             f"-m {config.getoption('markexpr')!r}" if config.getoption("markexpr") else "",
             f"--attn-only {' '.join(config.getoption('--attn-only'))}" if config.getoption("--attn-only") else ""]
    # under xdist the workers collect and deselect, so the controller has no count: it says so all the same
    xdist = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if not crashed and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and (deselected or (xdist and any(given))):
        # pytest alone says "N deselected" and exits 5: a CI step that allows 5 would pass checking nothing
        of = f"of the {deselected} collected tests" if deselected else "of the collected tests"
        terminalreporter.write_line(f"attnsuite: {' '.join(g for g in given if g) or 'the selection'} left none "
                                    f"{of}: nothing was checked (exit status 5)", red=True)
    dropped = config.stash.get(_OTHERS_DESELECTED, 0)
    if dropped:
        terminalreporter.write_line(f"attnsuite: --attn-only {' '.join(config.getoption('--attn-only'))}: "
                                    f"{dropped} correctness test(s) of other variants were deselected")
