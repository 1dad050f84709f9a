"""Same-machine A/B: the base ref's tree against the working tree, in alternating rounds.

``attnsuite ab --base REF`` checks REF out into a temporary ``git worktree`` and runs the
benchmarks of both trees on this machine, each round a separate pytest process, in ABBA order
(base, head, head, base, base, head, ...). Per case and side the rounds are combined into one
record (each statistic: the median over the rounds of the per-round value; its spread: the
rounds' relative interquartile range) and the two records are judged by THE compare path
(:func:`attnsuite.gate.judge_runs`), so the verdicts, the markdown diff and the JSON are the
gate's. docs/ab.md says why this statistic and not a rank test, and what a run costs.

    attnsuite ab --base origin/main -- --attn-workload fa-sweep --attn-mode fwd
    cd my-kernels && attnsuite ab --base main -- --attn-variants kernels/ --attn-workload fa-sweep
    attnsuite ab --base "$BASE_SHA" --cases-from results/gate.json --markdown results/ab.md -- --attn-tier full
    python -m attnsuite.ab ...          # the same, standalone

Exit status: 0 pass; 1 a gating verdict (with ``--gate enforce``, the default); 2 bad input (no
git repository, unknown ref, unreadable ``--cases-from``, a selection that runs no case) or a
round that could not run (pytest crashed: its log tail is shown); 130 interrupted (Ctrl-C); 143
terminated (SIGTERM, e.g. a cancelled CI job). The temporary worktree is removed in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from . import baseline as bl
from . import report, summary
from .output_paths import output_options_problem
from .record import CaseRecord
from .verdict import GATING, Comparison, ThresholdConfig, ThresholdsError
from .wording import count

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: what a shell reports for a process that SIGTERM ended
MIN_ROUNDS = 3  # fewer rounds give no usable round-to-round spread (and a median of 2 is a mean)
SIDES = ("base", "head")
TREE_MARKER = Path("bench") / "test_workloads.py"  # a tree without it has no benchmarks to run
LOG_TAIL_LINES = 40

# pytest exit statuses a round may end with; 1 (some case failed) still gives a full result file.
_PYTEST_EXIT = {2: "interrupted, or errors while collecting the tests", 3: "internal error",
                4: "usage error (an option after --, a path or a variant module this tree's pytest cannot use: "
                   "the log below says which)",
                5: "no tests collected"}


class AbError(ValueError):
    """Bad input or a round that could not run; the message says which and why (exit status 2)."""


class RoundFailed(AbError):
    """One round's pytest process failed; carries the tail of its log."""

    def __init__(self, spec: "RoundSpec", problem: str, tail: str = "") -> None:
        self.spec = spec
        self.tail = tail
        super().__init__(f"round {spec.index} ({spec.side}, {spec.tree}) failed: {problem}; log {spec.log_path}")


# --------------------------------------------------------------------------- order


def round_order(rounds: int) -> list[str]:
    """The sides in run order, ABBA style: base, head, head, base, base, head, ...

    Alternating pairs (ABAB) would always run base first in each pair, so a drift that grows over
    the session (warming clocks, a filling page cache, background load ramping up or down) would
    land on one side; reversing every other pair cancels a linear drift for an even number of
    pairs and halves it for an odd one.
    """
    if rounds < 1:
        raise AbError(f"--rounds must be at least 1, got {rounds}")
    order: list[str] = []
    for pair in range(rounds):
        order += ["base", "head"] if pair % 2 == 0 else ["head", "base"]
    return order


# --------------------------------------------------------------------------- selection


@dataclass
class FlaggedCases:
    """What ``--cases-from`` selects: the case keys a gate run flagged, a sentence saying where they
    came from, and whether that gate run was interrupted (its flags then cover only the cases it ran)."""

    keys: list[str]
    note: str
    interrupted: bool = False
    simulated: bool = False  # the gate run had --attn-inject-slowdown: its flags are not the code's own


def cases_from_gate_json(path: os.PathLike | str) -> FlaggedCases:
    """The case keys that a stored-baseline gate run flagged (any gating finding: slower,
    memory-growth, newly-failing, newly-oom, missing), from its ``--attn-gate-json`` file, and a
    sentence saying where they came from (or why there are none: a gate that compared nothing),
    which also says when that gate run was interrupted (``"interrupted": true``)."""
    p = Path(path)
    if not p.exists():
        raise AbError(f"--cases-from {p}: no such file (did the gate step write --attn-gate-json?)")
    # the suite's one JSON reader: a gzipped gate JSON had been refused with a raw codec error
    obj = bl.read_json_file(p, lambda where, problem: AbError(f"--cases-from {where}: {problem}"))
    cases = obj.get("cases") if isinstance(obj, dict) else None
    if not isinstance(cases, list):
        # named as what it is: a baseline had read 'no "cases" list' (its cases are an object)
        raise AbError(f"--cases-from {p}: " + (bl.wrong_kind(obj, "gate") or
                                               "no \"cases\" list: not a gate JSON (Comparison.to_json)"))
    keys = []
    for i, c in enumerate(cases):
        if not isinstance(c, dict) or not isinstance(c.get("key"), str) or not isinstance(c.get("flags", []), list):
            raise AbError(f"--cases-from {p}: cases[{i}] has no \"key\" text and \"flags\" list")
        flags = c.get("flags") or [c.get("verdict")]
        if c.get("gating") is True or any(f in GATING for f in flags):  # "gating": host-slower made gating
            keys.append(c["key"])
    keys = sorted(set(keys))
    if obj.get("compared") is False:  # the gate found no baseline to compare with (or no records)
        note = f"The stored-baseline gate ({p}) compared nothing: {obj.get('reason') or 'no reason given'}."
    else:
        note = f"Cases: the {len(keys)} flagged by the stored-baseline gate ({p})."
    interrupted = obj.get("interrupted") is True
    if interrupted:  # it judged only the cases it ran: one it never reached could not be flagged
        note += (" That gate run was interrupted: it flagged only among the cases it ran; the cases it did not reach "
                 "are not measured here.")
    simulated = obj.get("simulated")
    simulated = simulated if isinstance(simulated, str) and simulated.startswith("SIMULATED") else ""
    if simulated:
        # its flags may be the injected slowdown's, which the rounds here do not inject (unless --head-arg does)
        note += (f" That gate run was simulated ({simulated[:300]}): what it flagged may be the injected slowdown, "
                 "which these rounds measure without (unless a --head-arg injects it).")
    return FlaggedCases(keys, note, interrupted, simulated=bool(simulated))


# Loaded into every round with ``-p``: keeps only the listed case keys (a node id that one tree
# lacks would make pytest refuse the whole round; a deselected absence is simply a missing case)
# and records where attnsuite and its built-in families (attnsuite_impls) were imported from,
# which cmd_ab checks against the tree the round was meant to run (an editable install could
# otherwise resolve to the working tree).
PLUGIN_MODULE = "attnsuite_ab_probe"
PLUGIN_SOURCE = '''"""attnsuite ab: round selection and import probe (written by attnsuite/ab.py)."""
import json
import os
import sys
import time

import pytest

# wall-clock marks (time.time(), comparable with the parent's) of where a round's time goes
_MARKS = {"loaded": time.time()}


def _entry_points():
    """[module, name, distribution, value] of each attnsuite.variants entry point: a module of the other
    side's checkout loaded through one is named with it"""
    try:
        from importlib.metadata import entry_points

        return [[ep.module, ep.name, getattr(getattr(ep, "dist", None), "name", None), ep.value]
                for ep in entry_points(group="attnsuite.variants")]
    except Exception:  # noqa: BLE001 - a broken install: the message then names the module alone
        return []


def _write_probe(session):
    path = os.environ.get("ATTNSUITE_AB_PROBE")
    if not path:
        return
    where = {name: getattr(sys.modules.get(name), "__file__", None) for name in ("attnsuite", "attnsuite_impls")}
    where["rootdir"] = str(session.config.rootpath)
    foreign = os.environ.get("ATTNSUITE_AB_FOREIGN")
    if foreign:  # modules of the other side's checkout (an installed copy of it shadowing this side's)
        top = os.path.realpath(foreign) + os.sep
        where["foreign"] = sorted(
            [name, os.path.realpath(f)] for name, f in
            ((n, getattr(m, "__file__", None)) for n, m in list(sys.modules.items()))
            if f and os.path.realpath(f).startswith(top) and "site-packages" not in f and "dist-packages" not in f)[:20]
        where["entry_points"] = _entry_points()
    where["selected"] = len(session.items)
    where["marks"] = dict(_MARKS)
    with open(path + ".part", "w", encoding="utf-8") as fh:
        json.dump(where, fh)
    os.replace(path + ".part", path)


def _case(item):
    spec = getattr(item, "callspec", None)
    return spec.id if spec is not None else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    path = os.environ.get("ATTNSUITE_AB_CASES")
    if not path:
        return
    with open(path, encoding="utf-8") as fh:
        wanted = {line.strip() for line in fh if line.strip()}
    drop = [i for i in items if _case(i) not in wanted]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if _case(i) in wanted]


def pytest_collection_finish(session):
    _MARKS["collected"] = time.time()
    _write_probe(session)


def pytest_runtest_logfinish(nodeid, location):
    _MARKS.setdefault("first_done", time.time())


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    _MARKS["finished"] = time.time()
    _write_probe(session)
'''


def check_probe(probe: Path, tree: Path) -> dict[str, Any]:
    """Check that a round imported attnsuite (and attnsuite_impls) from ``tree`` and ran from it; the probe
    as read. Raises :class:`AbError` naming both paths otherwise."""
    try:
        where = json.loads(probe.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AbError(f"the round wrote no import probe {probe}: cannot tell which tree's code it ran") from None
    root = tree.resolve()
    for name in ("attnsuite", "attnsuite_impls"):
        f = where.get(name)
        if name == "attnsuite" and not f:
            raise AbError(f"the round in {tree} never imported attnsuite")
        if f and root not in Path(f).resolve().parents:
            raise AbError(f"the round meant for {tree} imported {name} from {f}: it would measure another tree's "
                          "code (check PYTHONPATH and how attnsuite is installed)")
    if where.get("rootdir") and Path(where["rootdir"]).resolve() != root:
        raise AbError(f"the round meant for {tree} ran with pytest rootdir {where['rootdir']}")
    # ab's own probe plugin lives in --out, which may lie inside the other side's checkout (an --out
    # in the working tree of a kernel repository): that module is this command's, never that side's code
    foreign = [(name, f) for name, f in where.get("foreign") or []
               if name != PLUGIN_MODULE and root not in Path(f).resolve().parents]
    if foreign:
        name, f = foreign[0]
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        through = _entry_point_of(name, where.get("entry_points") or [])
        if through:
            raise AbError(f"the round imported {name} from {f}{more}, a file of the other side's checkout, through "
                          f"{through} of the attnsuite.variants group: that installed package loads its own "
                          "checkout's variants into both sides' rounds. Run ab with ATTNSUITE_NO_ENTRY_POINTS=1 "
                          "(installed packages' variants are then not loaded) and name the variants with "
                          "--attn-variants, which each side reads from its own tree, or uninstall the package")
        raise AbError(f"the round imported {name} from {f}{more}, a file of the other side's checkout: it would "
                      "measure that side's code. A package of the repository installed where its other checkout "
                      "is found (pip install -e, or a path in PYTHONPATH) does that; each side puts its own root "
                      "and src/ first on the import path, so import your package by its name from there, or "
                      "run ab without that install")
    return where


def working_thresholds_unused(repo: Path, base_tree: Path, baselines_dir: Path, used: Optional[Path], base: str) -> str:
    """Words for the working tree's thresholds file when the A/B is not judged by it ("" when there is
    none there, or the one used has the same content). The bar is the base tree's: a change does not
    set its own. An edited or new thresholds.json had been left out without a word (a user's trial)."""
    if used is not None and used.is_relative_to(base_tree):
        rel = used.relative_to(base_tree)
    elif baselines_dir.is_relative_to(base_tree):
        from .gate import thresholds_path_for  # the folder's file by the gate's own rule (gzip-compressed or not)

        folder = baselines_dir.relative_to(base_tree)
        found = thresholds_path_for(None, repo / folder, repo_fallback=False)
        rel = folder / (found.name if found is not None else bl.THRESHOLDS_FILE)
    else:
        return ""  # a folder outside both trees, or the suite's own: the same file for both sides
    mine = repo / rel
    try:
        if not mine.is_file() or (used is not None and used.read_bytes() == mine.read_bytes()):
            return ""
    except OSError:
        return ""
    judged = f"{base}'s {rel.as_posix()}" if used is not None and used.is_relative_to(base_tree) else \
        (str(used) if used is not None else "the built-in thresholds")
    how = "differs from" if used is not None and used.is_relative_to(base_tree) else f"is not in {base}, so not"
    return (f"the working tree's {rel.as_posix()} {how} the one that judges this A/B ({judged}): the bar is "
            f"the base tree's, so a change cannot set its own; to judge by it, pass --thresholds {mine}")


def _entry_point_of(module: str, entry_points: Sequence[Any]) -> str:
    """How the probe's entry point that loads ``module`` (itself, a module of it or its package) is named
    in messages ("" when none does)."""
    for entry in entry_points:
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
            continue
        ep_module, name, dist, value = entry
        if module == ep_module or module.startswith(ep_module + ".") or ep_module.startswith(module + "."):
            return f"entry point {name!r} (distribution {dist}) {value!r}"
    return ""


# --------------------------------------------------------------------------- git


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise AbError("git is not installed: attnsuite ab needs it to check out the base ref") from None


def repo_root(path: os.PathLike | str) -> Path:
    """The top of the git working tree containing ``path`` (AbError when there is none)."""
    p = Path(path)
    if not p.is_dir():
        raise AbError(f"--repo {p}: no such folder")
    proc = _git(p, "rev-parse", "--show-toplevel")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AbError(f"{p.resolve()} is not inside a git working tree: attnsuite ab compares a git ref with "
                      "the working tree")
    return Path(proc.stdout.strip())


def resolve_ref(repo: Path, ref: str) -> str:
    """The commit id of ``ref`` in ``repo`` (AbError when it names no commit)."""
    if not ref or ref.startswith("-"):
        raise AbError(f"--base {ref!r}: not a git ref")
    proc = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if proc.returncode != 0:
        kind = _git(repo, "cat-file", "-t", "--end-of-options", ref)
        if kind.returncode == 0 and kind.stdout.strip():  # it exists, but is a file or a folder, not a commit
            raise AbError(f"--base {ref!r}: names a {kind.stdout.strip()} in {repo}, not a commit: give a "
                          "branch, a tag of a commit or a commit id")
        raise AbError(f"--base {ref!r}: unknown git ref in {repo} (in a shallow clone fetch it first, e.g. "
                      f"`git fetch origin {ref}`, or check out with fetch-depth: 0)")
    return proc.stdout.strip()


def uncommitted(repo: Path) -> int:
    """How many paths of the working tree differ from HEAD (tracked changes and untracked files)."""
    proc = _git(repo, "status", "--porcelain")
    return len([line for line in proc.stdout.splitlines() if line.strip()]) if proc.returncode == 0 else 0


@contextmanager
def base_worktree(repo: Path, sha: str, parent: Path) -> Iterator[Path]:
    """``git worktree add --detach`` of ``sha`` under ``parent``; removed on exit, however it ends."""
    path = parent / "base"
    proc = _git(repo, "worktree", "add", "--detach", str(path), sha)
    if proc.returncode != 0:
        raise AbError(f"git worktree add of {sha[:12]} failed: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if _git(repo, "worktree", "remove", "--force", str(path)).returncode != 0:
            shutil.rmtree(path, ignore_errors=True)  # git could not (already gone, locked): the files at least
        _git(repo, "worktree", "prune")


WORKTREE_PREFIX = "attnsuite-ab-"  # the temporary folder each A/B makes its base worktree in


def stale_worktrees(repo: Path) -> list[str]:
    """Base worktrees of earlier A/B runs still registered in ``repo`` (a run killed with SIGKILL cannot
    remove its own): their paths. Entries whose folder is gone are pruned first, as git would."""
    _git(repo, "worktree", "prune")
    listed = _git(repo, "worktree", "list", "--porcelain").stdout.splitlines()
    paths = [line[len("worktree "):] for line in listed if line.startswith("worktree ")]
    return [p for p in paths if Path(p).name == "base" and Path(p).parent.name.startswith(WORKTREE_PREFIX)]


# --------------------------------------------------------------------------- rounds


@dataclass
class RoundSpec:
    """One round: which side, where it runs, its command and environment, where it writes."""

    index: int  # 1-based position in the whole sequence
    side: str  # "base" or "head"
    tree: Path
    command: list[str]
    env: dict[str, str]
    json_path: Path
    log_path: Path
    probe_path: Path
    timeout: Optional[float] = None
    selects_nothing: bool = False  # every --attn-only name is missing from this tree: not run, an empty side


# A runner runs one round and returns its result JSON, or None when pytest selected no case.
Runner = Callable[[RoundSpec], Optional[Path]]


# The suite's options that take a path: each round runs in its own tree, so a relative value would be
# read there, not where the user typed it.
PATH_OPTIONS = ("--attn-variants", "--attn-problems", "--attn-thresholds", "--attn-baseline", "--attn-baselines-dir")


# The variables that name the same paths, comma-separated (read by every round's pytest).
PATH_VARIABLES = ("ATTNSUITE_VARIANTS", "ATTNSUITE_PROBLEMS")


def rebase_path(raw: str, cwd: Path, repo: Path, into: Optional[Path] = None) -> str:
    """One path as every round must read it: inside the repository, relative to its root (each tree
    reads its own copy: A/B compares trees), or under ``into`` when given (a variants repository's
    checkout of that side); elsewhere, absolute (a kernel module outside the repository, as the user
    named it from ``cwd``). A value that is not an existing path (a module name) is kept."""
    path = Path(raw)
    full = path if path.is_absolute() else cwd / path
    if not full.exists():
        return raw
    full, root = full.resolve(), repo.resolve()
    if full != root and root not in full.parents:
        return str(full)
    rel = full.relative_to(root)
    return str(into / rel) if into is not None else str(rel)


def map_option_values(args: Sequence[str], options: Sequence[str],
                      fn: Callable[[str, str], Optional[str]]) -> list[str]:
    """``args`` with the value of every option in ``options`` (``--opt value`` or ``--opt=value``)
    replaced by ``fn(option, value)``, in the form it came in; ``None`` leaves that option out with
    its value. The one reader of path options: every rule about them goes through it."""
    out: list[str] = []
    pending: Optional[str] = None
    for arg in args:
        if pending is not None:
            new = fn(pending, arg)
            out += [pending, new] if new is not None else []
            pending = None
            continue
        option, eq, value = arg.partition("=")
        if arg in options:
            pending = arg
        elif eq and option in options:
            new = fn(option, value)
            out += [f"{option}={new}"] if new is not None else []
        else:
            out.append(arg)
    if pending is not None:  # an option at the end without its value: pytest says so
        out.append(pending)
    return out


def map_variable_entries(env: dict[str, str], fn: Callable[[str, str], Optional[str]]) -> dict[str, str]:
    """``env`` with every comma-separated entry of :data:`PATH_VARIABLES` replaced by ``fn(name,
    entry)``; ``None`` leaves the entry out, and a variable left with no entry is removed."""
    out = dict(env)
    for name in PATH_VARIABLES:
        entries = [v.strip() for v in out.get(name, "").split(",") if v.strip()]
        if not entries:
            continue
        kept = [new for new in (fn(name, v) for v in entries) if new is not None]
        if kept:
            out[name] = ",".join(kept)
        else:
            out.pop(name)
    return out


def _path_values(args: Sequence[str], env: dict[str, str]) -> list[tuple[str, str]]:
    """(where, value) of every path an option of :data:`PATH_OPTIONS` or a :data:`PATH_VARIABLES`
    entry names."""
    found: list[tuple[str, str]] = []

    def note(name: str, value: str) -> str:
        found.append((name, value))
        return value
    map_option_values(args, PATH_OPTIONS, note)
    map_variable_entries(env, note)
    return found


CODE_PATHS = ("--attn-variants", "--attn-problems", *PATH_VARIABLES)  # the paths that name code, not the bar


def last_path_option(args: Sequence[str], option: str, cwd: Path, repo: Path, base_tree: Path) -> Optional[str]:
    """The value of the last ``option`` among the rounds' pytest ``args`` (as pytest takes the last), as
    the base side reads it (:func:`rebase_path` into ``base_tree``: a path inside the repository is the
    base's copy, so a change cannot loosen its own bar), or None when the option is not given."""
    found: list[str] = []
    map_option_values(args, (option,), lambda _, value: found.append(value) or value)
    return rebase_path(found[-1], cwd, repo, base_tree) if found else None


def code_paths(args: Sequence[str], env: dict[str, str], cwd: Path, repo: Path) -> dict[str, list[str]]:
    """The variants and problem paths (options and variables) that exist, as "inside" or "outside"
    ``repo``: both sides load the same file outside it, so a change made there is never measured."""
    where: dict[str, list[str]] = {"inside": [], "outside": []}
    root = repo.resolve()
    for name, value in _path_values(args, env):
        full = Path(value) if Path(value).is_absolute() else cwd / value
        if name in CODE_PATHS and full.exists():
            full = full.resolve()
            where["inside" if full == root or root in full.parents else "outside"].append(f"{name} {value}")
    return where


def rebase_paths(args: Sequence[str], cwd: Path, repo: Path, into: Optional[Path] = None) -> list[str]:
    """``args`` with the relative values of :data:`PATH_OPTIONS` made to work in every round (:func:`rebase_path`)."""
    return map_option_values(args, PATH_OPTIONS, lambda _, value: rebase_path(value, cwd, repo, into))


def rebase_env(env: dict[str, str], cwd: Path, repo: Path, into: Optional[Path] = None) -> dict[str, str]:
    """``env`` with each entry of :data:`PATH_VARIABLES` made to work in every round, as the options are."""
    return map_variable_entries(env, lambda _, value: rebase_path(value, cwd, repo, into))


def without_files_absent_from(args: Sequence[str], env: dict[str, str], tree: Path, head: Path
                               ) -> tuple[list[str], dict[str, str], list[str]]:
    """The base rounds' arguments and environment (paths already rebased for them: relative to the
    tree's root, or absolute into ``tree``) without the variants and problem files that the working
    tree ``head`` has and the base ``tree`` lacks (files the change adds), and what was left out, by
    its path in the repository. Anything else (paths outside the repository, module names, a typo)
    stays as it was."""
    root = os.path.abspath(tree)
    dropped: list[str] = []

    def keep(name: str, value: str) -> Optional[str]:
        """None for a file the change adds (noted in ``dropped``), else the value as it was."""
        full = os.path.abspath(value if os.path.isabs(value) else os.path.join(root, value))
        if not full.startswith(root + os.sep):
            return value
        rel = os.path.relpath(full, root)
        if os.path.exists(full) or not os.path.exists(os.path.join(head, rel)):
            return value
        dropped.append(f"{name} {rel}" if name.startswith("--") else f"{name} entry {rel}")
        return None
    kept = map_option_values(args, ("--attn-variants", "--attn-problems"), keep)
    return kept, map_variable_entries(env, keep), dropped


def suite_tree() -> Optional[Path]:
    """The checkout this attnsuite runs from, when it holds the benchmarks (an install without them: None)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / TREE_MARKER).is_file() else None


# The stored-baseline gate's options: ab judges the rounds itself (its thresholds are read from the
# options before the rounds, :func:`last_path_option`), so a round gets none of them. Passed on, a
# --attn-baselines-dir the base commit lacks (a folder not committed yet) had failed every base round
# with "no such folder" under a temporary path the user never made, a --attn-gate given after ab's own
# "off" turned the gate on in every round, and --attn-record-baseline would have written baselines.
GATE_VALUE_OPTIONS = ("--attn-baseline", "--attn-baselines-dir", "--attn-thresholds", "--attn-gate",
                      "--attn-markdown", "--attn-gate-json")
GATE_FLAGS = ("--attn-record-baseline", "--attn-require-baseline", "--attn-allow-mismatch", "--attn-confirm",
              "--attn-no-confirm")


def without_gate_options(args: Sequence[str]) -> list[str]:
    """``args`` without the stored-baseline gate's options (:data:`GATE_VALUE_OPTIONS` with their values,
    :data:`GATE_FLAGS`)."""
    return [a for a in map_option_values(args, GATE_VALUE_OPTIONS, lambda _, __: None) if a not in GATE_FLAGS]


def pytest_command(python: str, json_path: Path, pytest_args: Sequence[str]) -> list[str]:
    """The pytest command of one round: the benchmarks only, gate off (this command judges)."""
    return [python, "-m", "pytest", "bench", "--benchmark-only", "--attn-gate", "off",
            "--benchmark-json", str(json_path), "-p", "no:cacheprovider", "-p", PLUGIN_MODULE, "-q",
            *without_gate_options(pytest_args)]


def import_roots(checkout: Path) -> list[Path]:
    """Where a variants repository's own packages import from: its root, and ``src/`` in the src layout.
    First on a round's path, they win over an installed copy of the package (an editable install's
    finder is consulted after the path; a regular install sits behind it in site-packages), so each
    side imports its own checkout's code."""
    return [checkout] + ([checkout / "src"] if (checkout / "src").is_dir() else [])


def round_env(tree: Path, plugin_dir: Path, probe: Path, cases_file: Optional[Path],
              base_env: Optional[dict[str, str]] = None, import_first: Sequence[Path] = (),
              foreign: Optional[Path] = None) -> dict[str, str]:
    """The environment of a round: the tree first on PYTHONPATH (it also runs from there), then
    the probe plugin's folder, then ``import_first`` (a variants repository's side:
    :func:`import_roots`), then whatever PYTHONPATH was already set. ``foreign``: the other side's
    checkout, from which the probe reports any module the round imported (:func:`check_probe`)."""
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(plugin_dir), *map(str, import_first)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["ATTNSUITE_AB_PROBE"] = str(probe)
    if foreign is not None:
        env["ATTNSUITE_AB_FOREIGN"] = str(foreign)
    else:
        env.pop("ATTNSUITE_AB_FOREIGN", None)
    if cases_file is not None:
        env["ATTNSUITE_AB_CASES"] = str(cases_file)
    else:
        env.pop("ATTNSUITE_AB_CASES", None)
    return env


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_round(spec: RoundSpec) -> Optional[Path]:
    """The real runner: one pytest process in ``spec.tree``; checks that it ran that tree's code."""
    spec.json_path.unlink(missing_ok=True)
    spec.probe_path.unlink(missing_ok=True)
    with open(spec.log_path, "w", encoding="utf-8") as log:
        log.write(f"$ cd {shlex.quote(str(spec.tree))} && {shlex.join(spec.command)}\n")
        log.flush()
        proc = subprocess.Popen(spec.command, cwd=spec.tree, env=spec.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise RoundFailed(spec, f"ran past --round-timeout {spec.timeout:g} s", _tail(spec.log_path)) from None
        except BaseException:  # Ctrl-C, SIGTERM: do not leave the benchmark running
            _stop(proc)
            raise
    if rc == 5:
        return None
    if rc < 0:
        try:
            why = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            why = f"killed by signal {-rc}"
        raise RoundFailed(spec, f"pytest {why}", _tail(spec.log_path))
    if rc not in (0, 1):
        raise RoundFailed(spec, f"pytest exit status {rc} ({_PYTEST_EXIT.get(rc, 'unknown')})", _tail(spec.log_path))
    if not spec.json_path.is_file():
        raise RoundFailed(spec, f"pytest exited {rc} without writing {spec.json_path}", _tail(spec.log_path))
    try:
        check_probe(spec.probe_path, spec.tree)
    except AbError as exc:
        raise RoundFailed(spec, str(exc)) from None
    return spec.json_path


# --------------------------------------------------------------------------- combining rounds

# worst first: a case that failed in any round failed (one crash in three rounds is a crash)
_WORST = ("crash", "timeout", "error", "numerics", "oom", "skipped", "ok")
# every per-round figure that becomes the median over the rounds
_MEDIAN_FIELDS = ("median_ms", "min_ms", "device_ms", "device_min_ms", "host_overhead_ms", "first_call_ms",
                  "launch_fraction", "tflops", "pct_peak")


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def relative_spread(values: Sequence[Optional[float]]) -> Optional[float]:
    """The rounds' interquartile range over their median (inclusive quartiles, so for 3 rounds
    half the range); None with fewer than 2 values or a zero median."""
    vals = [float(v) for v in values if v is not None]
    if len(vals) < 2:
        return None
    mid = statistics.median(vals)
    if not mid:
        return None
    q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return (q3 - q1) / mid


def combine_rounds(records: Sequence[CaseRecord], statistic: str = "min") -> CaseRecord:
    """One side's rounds of one case as one record.

    Outcome: the worst of the rounds. Every timing figure: the median over the rounds of the
    per-round figure. Spread: ``iqr_ms`` and ``device_iqr_ms`` are replaced by the round-to-round
    relative IQR of the statistic the gate judges (``statistic``: "min" or "median", host and
    device time alike) times the combined median, so the verdict's noise band
    (``iqr_ms / median_ms`` of both sides) measures how much the judged figure moved between
    rounds, not how much samples moved within one. Peak memory: the median over the rounds.
    """
    if not records:
        raise ValueError("combine_rounds needs at least one record")
    outcomes = [r.outcome for r in records]
    worst = min(outcomes, key=lambda o: _WORST.index(o) if o in _WORST else 0)
    same = [r for r in records if r.outcome == worst]
    out = replace(same[0], extra=dict(same[0].extra))
    out.extra["rounds"] = len(records)
    if len(set(outcomes)) > 1:
        out.extra["round_outcomes"] = outcomes
    if worst != "ok":
        return out
    for name in _MEDIAN_FIELDS:
        setattr(out, name, _median([getattr(r, name) for r in same]))
    peaks = _median([r.peak_mem_bytes for r in same])
    out.peak_mem_bytes = None if peaks is None else int(round(peaks))
    out.samples = sum(r.samples for r in same)
    host = "min_ms" if statistic == "min" and all(r.min_ms is not None for r in same) else "median_ms"
    device = "device_min_ms" if statistic == "min" and all(r.device_min_ms is not None for r in same) else "device_ms"
    for stat, centre, spread in ((host, "median_ms", "iqr_ms"), (device, "device_ms", "device_iqr_ms")):
        values = [getattr(r, stat) for r in same]
        rel = relative_spread(values)
        mid = getattr(out, centre)
        setattr(out, spread, None if rel is None or mid is None else rel * mid)
        if any(v is not None for v in values):
            out.extra[f"round_{stat}"] = values
    return out


def combine_side(runs: Sequence[bl.Run], thresholds: ThresholdConfig, label: str) -> bl.Run:
    """One side's rounds as one :class:`~attnsuite.baseline.Run`, case by case (:func:`combine_rounds`,
    with the statistic the thresholds judge for that case)."""
    first = next((r for r in runs if r.fingerprint), runs[0] if runs else None)
    fp = first.fingerprint if first else None
    device = bl.device_kind(fp)
    keys = sorted({k for r in runs for k in r.records})
    records = {}
    for key in keys:
        present = [r.records[key] for r in runs if key in r.records]
        stat = thresholds.for_case(present[0], device).statistic
        rec = combine_rounds(present, stat)
        if len(present) < len(runs):
            rec.extra["rounds_absent"] = len(runs) - len(present)
        records[key] = rec
    return bl.Run(records=records, fingerprint=fp, path=label, kind="result")


# --------------------------------------------------------------------------- the A/B


@dataclass
class AbPlan:
    """Everything one A/B needs, resolved: trees, rounds, the selection, where files go."""

    base_tree: Path
    head_tree: Path
    rounds: int
    python: str
    pytest_args: list[str]
    workdir: Path  # round JSONs, logs, probes, the plugin, the case list
    cases: Optional[list[str]] = None  # None: the selection is the pytest args alone
    timeout: Optional[float] = None
    head_args: list[str] = field(default_factory=list)  # pytest args of the head rounds only (--head-arg)
    base_env: Optional[dict[str, str]] = None  # the rounds' environment before round_env (default: this one)
    # the base rounds' own selection and environment where their paths differ (a variants repository:
    # its files in the base checkout); None: pytest_args and base_env, as the head rounds
    base_args: Optional[list[str]] = None
    base_side_env: Optional[dict[str, str]] = None
    # --attn-only names a side's tree does not register (a variant the change adds or removes): that
    # side's rounds run without them, found from the rounds' own usage errors (any version of the suite)
    not_in: dict[str, set[str]] = field(default_factory=lambda: {"base": set(), "head": set()})
    # the same for --attn-workload names (a workload the change adds, in code or in a problem file)
    workloads_not_in: dict[str, set[str]] = field(default_factory=lambda: {"base": set(), "head": set()})
    # a variants repository's two checkouts, by side: each side's rounds import its own (its root and
    # src/ first on PYTHONPATH), and a module imported from the other side's fails the round
    side_roots: Optional[dict[str, Path]] = None


@dataclass
class AbRounds:
    """What the rounds produced: the runs per side, the files, and the time each side took."""

    runs: dict[str, list[bl.Run]] = field(default_factory=lambda: {"base": [], "head": []})
    files: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"base": 0.0, "head": 0.0})
    order: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the report must say about the rounds' selection


def set_aside_earlier_rounds(workdir: Path) -> Optional[Path]:
    """Move an earlier A/B's round files out of ``workdir`` (an ``--out`` used again) into a folder
    ``earlier-<UTC time>`` inside it, and return that folder (None when there were none). Left in place
    they had mixed with this run's under the same names, from another base; nothing is deleted."""
    if not workdir.is_dir():
        return None
    earlier = [f for f in workdir.iterdir() if f.is_file() and (
        re.fullmatch(r"round\d+-(base|head)\.(json|log|probe\.json|json\.journal\.jsonl)", f.name)
        or f.name in ("cases.txt", f"{PLUGIN_MODULE}.py"))]
    if not earlier:
        return None
    aside = workdir / time.strftime("earlier-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir(exist_ok=True)
    for f in earlier:
        f.rename(aside / f.name)
    return aside


def round_specs(plan: AbPlan) -> list[RoundSpec]:
    """The rounds of ``plan`` in run order (:func:`round_order`), with commands and environments."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    plugin = plan.workdir / f"{PLUGIN_MODULE}.py"
    bl.atomic_write_text(plugin, PLUGIN_SOURCE)
    cases_file = None
    if plan.cases is not None:
        cases_file = plan.workdir / "cases.txt"
        bl.atomic_write_text(cases_file, "".join(f"{k}\n" for k in plan.cases))
    specs = []
    for i, side in enumerate(round_order(plan.rounds), start=1):
        tree = plan.base_tree if side == "base" else plan.head_tree
        if side == "base":
            args = plan.base_args if plan.base_args is not None else plan.pytest_args
            env = plan.base_side_env if plan.base_side_env is not None else plan.base_env
        else:
            args, env = [*plan.pytest_args, *plan.head_args], plan.base_env
        args, nothing = without_only_names(args, plan.not_in[side])
        args, no_workload = without_only_names(args, plan.workloads_not_in[side], "--attn-workload")
        nothing = nothing or no_workload
        stem = plan.workdir / f"round{i:02d}-{side}"
        json_path = stem.with_suffix(".json")
        probe = stem.with_name(stem.name + ".probe.json")
        roots, foreign = (), None
        if plan.side_roots is not None:
            roots = import_roots(plan.side_roots[side])
            foreign = plan.side_roots["head" if side == "base" else "base"]
        specs.append(RoundSpec(i, side, tree, pytest_command(plan.python, json_path, args),
                               round_env(tree, plan.workdir, probe, cases_file, env, roots, foreign), json_path,
                               stem.with_suffix(".log"), probe, plan.timeout, selects_nothing=nothing))
    return specs


def without_only_names(args: Sequence[str], names: set[str], option: str = "--attn-only") -> tuple[list[str], bool]:
    """``args`` without ``names`` in their ``option`` values (``a,b`` or repeated options; ``--attn-only``
    or ``--attn-workload``), and whether that leaves a selection that had names with none: it would
    select every variant (or workload), so such a round is not run at all."""
    had, left = False, False

    def drop(_: str, value: str) -> Optional[str]:
        nonlocal had, left
        kept = [n for n in (v.strip() for v in value.split(",")) if n and n not in names]
        had, left = had or bool(value.strip(" ,")), left or bool(kept)
        return ",".join(kept) if kept else None
    out = map_option_values(args, (option,), drop) if names else list(args)
    return out, bool(names) and had and not left


# A round's usage error for an --attn-only name its tree does not register (every version says it so)
_UNKNOWN_ONLY = re.compile(r"--attn-only: unknown variant '([^']+)'")
# ... and for an --attn-workload name it does not know
_UNKNOWN_WORKLOAD = re.compile(r"--attn-workload '([^']+)' is unknown")


def _missing_only_name(plan: AbPlan, spec: RoundSpec, exc: RoundFailed) -> Optional[tuple[str, str]]:
    """(the option, the name) of an --attn-only or --attn-workload name that ``spec``'s tree lacks, when
    that is why the round failed and the other side has it (a variant or workload the change adds or
    removes); AbError when neither tree has it."""
    for option, pattern, missing, what in (("--attn-only", _UNKNOWN_ONLY, plan.not_in, "registers a variant"),
                                           ("--attn-workload", _UNKNOWN_WORKLOAD, plan.workloads_not_in,
                                            "has a workload")):
        found = pattern.search(exc.tail or "")
        if not found or found.group(1) in missing[spec.side]:
            continue
        name = found.group(1)
        other = "head" if spec.side == "base" else "base"
        if name in missing[other]:
            # the round's own words (with its close matches), not its log: a temporary folder, gone by now
            said = next((ln.strip() for ln in (exc.tail or "").splitlines() if found.group(0) in ln), "")
            raise AbError(f"{option} {name}: neither the base nor the working tree {what} of that name"
                          + (f" (the {spec.side} round said: {said})" if said else ""))
        return option, name
    return None


# (name, from mark, to mark): where a round's wall time went, from the probe plugin's marks and the
# parent's own clock around the process ("start" and "end")
_PHASES = (("start", "start", "collected"),  # interpreter, imports, plugins, collection
           ("first case", "collected", "first_done"),  # benchmark worker start, calibration, the first case
           ("other cases", "first_done", "finished"),
           ("exit", "finished", "end"))  # reports, worker shutdown, the process's own teardown


def round_phases(probe: Path, started: float, ended: float) -> dict[str, float]:
    """Seconds of each phase of a round (:data:`_PHASES`), from its probe's wall-clock marks and the
    parent's ``started``/``ended`` (time.time()); the phases a round did not reach are left out."""
    try:
        marks = json.loads(probe.read_text(encoding="utf-8")).get("marks") or {}
    except (OSError, ValueError, AttributeError):
        marks = {}
    marks = {**{k: v for k, v in marks.items() if isinstance(v, (int, float))}, "start": started, "end": ended}
    return {name: round(marks[b] - marks[a], 1) for name, a, b in _PHASES if a in marks and b in marks}


def run_rounds(plan: AbPlan, runner: Runner = run_round, out=None) -> AbRounds:
    """Run every round of ``plan`` with ``runner`` (progress on ``out``); AbError when the head
    tree's selection runs no case (a base that has none of them is just an empty side)."""
    res = AbRounds(order=round_order(plan.rounds))
    specs = round_specs(plan)
    # A name one side lacks is said once a round of the other side has run with it: said at once, a
    # misspelt name had first read "not a variant of the base: its cases read new", then failed as
    # known to neither tree (a reviewer's trial)
    pending: list[tuple[str, str]] = []  # (the side that lacks it, the note)
    for i in range(len(specs)):
        t0, wall0 = time.monotonic(), time.time()
        while True:
            spec = specs[i]
            if spec.selects_nothing:
                path = None
                break
            try:
                path = runner(spec)
                for _, note in [p for p in pending if p[0] != spec.side]:
                    res.notes.append(f"{note}.")
                    if out is not None:
                        print(f"attnsuite ab: {note}", file=out, flush=True)
                pending = [p for p in pending if p[0] == spec.side]
                break
            except RoundFailed as exc:
                missing = _missing_only_name(plan, spec, exc)
                if missing is None:
                    raise
                option, name = missing
                (plan.not_in if option == "--attn-only" else plan.workloads_not_in)[spec.side].add(name)
                kind = "variant" if option == "--attn-only" else "workload"
                what = (f"is not a {kind} of the base: the base rounds run without it and its cases read new"
                        if spec.side == "base" else
                        f"is not a {kind} of the working tree: the head rounds run without it and its base cases "
                        "read as not run by the change")
                pending.append((spec.side, f"{option} {name} {what}"))
                specs = round_specs(plan)  # every later round of that side without the name too
        took = time.monotonic() - t0
        phases = round_phases(spec.probe_path, wall0, time.time())
        res.seconds[spec.side] += took
        if path is None:
            # A working tree whose selection collects nothing while the base's collects cases (a -k
            # that names only a variant the change removed; with --cases-from, flagged cases each
            # removed or renamed) is an answer: those cases read missing. It had ended the A/B step
            # with a usage error and no markdown; without any case on either side it is still an
            # error, said as soon as each side has run once (below).
            run = bl.Run(records={}, fingerprint=None, path=str(spec.tree), kind="result")
        else:
            run = bl.load_results(path)
        res.runs[spec.side].append(run)
        if all(res.runs[side] for side in ("base", "head")) and not any(
                r.records for side in res.runs.values() for r in side):
            raise AbError(_nothing_selected(plan))
        res.files.append({"round": spec.index, "side": spec.side, "json": str(path) if path else None,
                          "log": str(spec.log_path), "seconds": round(took, 1), "cases": len(run.records),
                          "phases": phases})
        if out is not None and spec.selects_nothing:
            print(f"attnsuite ab: round {spec.index}/{len(specs)} {spec.side}: not run, this tree has none of the "
                  "selected variants or workloads", file=out, flush=True)
        elif out is not None:
            where = f" ({', '.join(f'{k} {v:.1f}' for k, v in phases.items())})" if phases else ""
            print(f"attnsuite ab: round {spec.index}/{len(specs)} {spec.side}: {count(len(run.records), 'case')}, "
                  f"{took:.1f} s{where}", file=out, flush=True)
    if not any(r.records for side in res.runs.values() for r in side):
        raise AbError(_nothing_selected(plan))
    if not any(r.records for r in res.runs["head"]):
        which = (f"none of the {count(len(plan.cases), 'case')} from --cases-from" if plan.cases is not None else
                 f"no case with pytest arguments {shlex.join(plan.pytest_args) or '(none)'}, where the base runs "
                 f"{count(max(len(r.records) for r in res.runs['base']), 'case')}")
        res.notes.append(f"The working tree runs {which}: each reads missing (removed or renamed by the change?).")
    return res


def _nothing_selected(plan: AbPlan) -> str:
    sel = shlex.join(plan.pytest_args) or "(none)"
    extra = f" and the {len(plan.cases)} case(s) from --cases-from" if plan.cases is not None else ""
    return (f"no case selected: the working tree's benchmarks with pytest arguments {sel}{extra} collect nothing "
            "(pytest exit status 5)")


def judge_ab(rounds: AbRounds, thresholds: ThresholdConfig, *, base_label: str, head_label: str,
             notes: Sequence[str] = (), allow_mismatch: bool = False) -> tuple[Comparison, dict[str, bl.Run]]:
    """Combine each side's rounds and judge head against base with THE compare function."""
    from .gate import judge_runs  # THE compare path (gate.py), shared with the CLI and the pytest gate

    sides = {s: combine_side(rounds.runs[s], thresholds, lbl) for s, lbl in (("base", base_label), ("head", head_label))}
    # a side with no case at all (every base case new, or every head case removed) has no fingerprint:
    # both sides ran on this machine, so there is nothing to check and nothing to warn of
    if not sides["base"].fingerprint:
        sides["base"].fingerprint = sides["head"].fingerprint
    if not sides["head"].fingerprint:
        sides["head"].fingerprint = sides["base"].fingerprint
    cmp = judge_runs(sides["base"], sides["head"], thresholds=thresholds, allow_mismatch=allow_mismatch,
                     scope=lambda rec: True, notes=notes, side_names=("base", "head"))
    cmp.baseline_label, cmp.current_label = base_label, head_label
    # a variant of the base that no head round ran at all: most likely removed or renamed by the change
    head_variants = {r.variant for r in sides["head"].records.values()}
    for i, v in enumerate(cmp.verdicts):
        if v.verdict == "missing" and v.cur is None and v.base is not None and v.base.variant not in head_variants:
            cmp.verdicts[i] = replace(v, message=f"not run: variant {v.base.variant} ran in no round of the working "
                                                 f"tree (removed or renamed by the change?); " + v.message.split("; ", 1)[-1])
    return cmp, sides


def per_case_rounds(sides: dict[str, bl.Run]) -> dict[str, dict[str, Any]]:
    """Per case, the per-round values of the judged statistic on each side (for the JSON report)."""
    out: dict[str, dict[str, Any]] = {}
    for side, run in sides.items():
        for key, rec in run.records.items():
            vals = {k[len("round_"):]: v for k, v in rec.extra.items() if k.startswith("round_")}
            if vals:
                out.setdefault(key, {})[side] = vals
    return out


# --------------------------------------------------------------------------- command line


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="REF", help="git ref (branch, tag, commit) of the base tree")
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                   help=f"rounds per side, at least {MIN_ROUNDS} (default {MIN_ROUNDS}); each is a pytest process")
    p.add_argument("--cases-from", metavar="GATE_JSON",
                   help="measure only the cases this gate JSON (pytest --attn-gate-json) flagged")
    p.add_argument("--thresholds", help="thresholds JSON (default: the rounds' --attn-thresholds, else "
                                        "thresholds.json of --baselines-dir)")
    p.add_argument("--baselines-dir", help="folder whose thresholds.json applies (default: the rounds' "
                                           "--attn-baselines-dir, else baselines/; inside the repository, the "
                                           "base tree's copy, so a change cannot loosen its own bar)")
    p.add_argument("--gate", choices=("enforce", "report"), default="enforce",
                   help="enforce: exit 1 on a gating verdict; report: always exit 0 once measured")
    p.add_argument("--markdown", help="write the markdown diff here")
    p.add_argument("--step-summary", action="store_true", help="append the markdown diff to $GITHUB_STEP_SUMMARY")
    p.add_argument("--json", help="write the verdicts (and each case's per-round figures) here")
    p.add_argument("--out", help="keep the rounds' result JSONs and logs in this folder (default: a temporary one)")
    p.add_argument("--repo", default=".", help="the git working tree to compare (default: the current folder)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the rounds (default: this one)")
    p.add_argument("--round-timeout", type=float, default=None, metavar="S", help="stop a round after S seconds")
    p.add_argument("--head-arg", action="append", default=[], metavar="ARG",
                   help="a pytest argument for the head rounds only, after the selection (repeatable; write it "
                        "as --head-arg=--attn-inject-slowdown=sdpa-flash=0.05): to measure what the A/B catches "
                        "(scripts/ab_eval.py); the report names it")
    p.add_argument("--allow-mismatch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS",
                   help="selection options for the benchmarks, after --: --attn-workload, --attn-mode, -k, ...")


def add_parser(subparsers: Any) -> None:
    """Add the ``ab`` subcommand to the ``attnsuite`` command's subparsers."""
    p = subparsers.add_parser("ab", help="same-machine A/B: a git ref's tree against the working tree, "
                                         "in alternating rounds")
    _configure(p)
    p.set_defaults(func=cmd_ab)


def _write(path: Optional[str], text: str) -> None:
    if path:
        bl.atomic_write_text(path, text)


def head_commit(repo: Path) -> Optional[str]:
    """The commit the working tree of ``repo`` is on (its HEAD), None where it has none yet."""
    proc = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _context(ref: str, sha: str, rounds: AbRounds, n: int, dirty: int, cases_note: Optional[str],
             head_args: Sequence[str] = (), head_sha: Optional[str] = None) -> list[str]:
    order = " ".join("B" if s == "base" else "H" for s in rounds.order)
    # the head's commit named: a PR comment had not said which push was measured
    lines = [f"Same machine, base {ref} ({sha[:12]}) against the working tree"
             + (f" at {head_sha[:12]}" if head_sha else "")
             + (f" ({dirty} uncommitted path(s) included)" if dirty else "")
             + (f", the head rounds run with {shlex.join(head_args)} as well" if head_args else "")
             + f": {n} rounds per side, each a separate pytest process, in the order {order}. Per case: the median "
             "over the rounds of each round's judged statistic; the noise band widens with the rounds' spread, "
             "never below the device's floor.",
             f"Rounds took {rounds.seconds['base']:.0f} s (base) + {rounds.seconds['head']:.0f} s (head)."]
    if cases_note:
        lines.insert(1, cases_note)
    return lines


class _Terminated(KeyboardInterrupt):
    """SIGTERM: unwound like Ctrl-C (the worktree is removed), reported as itself (exit 143, not 130)."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so the worktree is still removed."""
    def handler(signum, frame):  # noqa: ARG001
        raise _Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def cmd_ab(args: argparse.Namespace, out, runner: Runner = run_round) -> int:
    """Run the A/B of ``args`` (see the module docstring); returns the exit status."""
    err = sys.stderr
    try:
        with _sigterm_as_interrupt():
            return _cmd_ab(args, out, runner)
    except RoundFailed as exc:
        print(f"attnsuite ab: error: {exc}", file=err)
        if exc.tail:
            print(f"--- last lines of {exc.spec.log_path} ---\n{exc.tail}", file=err)
        if not args.out:  # the log named above went with the temporary folder
            print("attnsuite ab: that log was removed with the temporary folder; --out DIR keeps every round's "
                  "log and JSON", file=err)
    except (AbError, bl.InputFileError, ThresholdsError) as exc:
        print(f"attnsuite ab: error: {exc}", file=err)
    except bl.FingerprintMismatch as exc:
        print(f"attnsuite ab: error: the rounds ran on different machines: {exc}", file=err)
    except _Terminated:
        print("attnsuite ab: terminated (SIGTERM); the base worktree was removed", file=err)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("attnsuite ab: interrupted; the base worktree was removed", file=err)
        return EXIT_INTERRUPTED
    return EXIT_INPUT


# ab's own options that name no pytest option (--attn-... is pytest's): given after "--" they are a slip
_OWN_OPTIONS = frozenset({"--head-arg", "--base", "--rounds", "--cases-from", "--round-timeout", "--repo",
                          "--python", "--out"})


def _cmd_ab(args: argparse.Namespace, out, runner: Runner) -> int:
    if args.rounds < MIN_ROUNDS:
        raise AbError(f"--rounds {args.rounds}: at least {MIN_ROUNDS} rounds per side are needed for a spread")
    if args.round_timeout is not None and not args.round_timeout > 0:
        raise AbError(f"--round-timeout {args.round_timeout:g}: must be a positive number of seconds")
    if not (shutil.which(args.python) or Path(args.python).is_file()):
        raise AbError(f"--python {args.python}: no such interpreter")
    bad_output = output_options_problem({"--markdown": args.markdown, "--json": args.json,
                                         "$GITHUB_STEP_SUMMARY": report.step_summary_target(args.step_summary)},
                                        {"--out": args.out}, inputs={"--cases-from": args.cases_from})
    if bad_output:  # before any round: a typo had crashed after every round ran, the rounds lost
        raise AbError(bad_output)
    own = sorted({a.split("=", 1)[0] for a in args.pytest_args} & _OWN_OPTIONS)
    if own:
        # after "--" they go to pytest, which refused them only when round 1 ran, in a worktree made for it
        raise AbError(f"{', '.join(own)} {'is an option' if len(own) == 1 else 'are options'} of attnsuite ab: "
                      "put it before --, where the benchmarks' own options end")
    if args.baselines_dir and not Path(args.baselines_dir).is_dir():
        # a missing folder had fallen back to the working tree's thresholds: the change set its own bar
        raise AbError(f"--baselines-dir {args.baselines_dir}: no such folder")
    if args.thresholds:
        from .gate import thresholds_for

        # read now, before anything is measured and also when the gate JSON flags nothing: a broken
        # file had passed every such run and failed only the first pull request with a flagged case
        thresholds_for(args.thresholds, None, repo_fallback=False)
    repo = repo_root(args.repo)
    sha = resolve_ref(repo, args.base)
    # The last run's diff and JSON go now, once the arguments are known good (a bad ref had deleted
    # them first), not when this one writes its own: a run that then failed or was interrupted had
    # left them, unmarked, for the next step (a PR comment) to post as its own.
    for earlier in (args.markdown, args.json):
        if earlier and os.path.isfile(earlier):
            os.unlink(earlier)
    cases = None
    cases_note = None
    if args.cases_from:
        flagged = cases_from_gate_json(args.cases_from)
        cases, cases_note = flagged.keys, flagged.note
        if flagged.interrupted and cases:  # with none, the line below says it
            print(f"attnsuite ab: {args.cases_from} comes from an interrupted gate run: it flagged only among the "
                  "cases it ran; the cases it did not reach are not measured here", file=out, flush=True)
        if flagged.simulated:
            print(f"attnsuite ab: {args.cases_from} comes from a simulated gate run (--attn-inject-slowdown): what "
                  "it flagged may be the injection's, not the code's", file=out, flush=True)
        if not cases:
            nothing = f"{args.cases_from} flagged no case: nothing to measure A/B"
            if flagged.interrupted:
                # "flagged no case" had read as a clean pass of the whole selection
                nothing = (f"{args.cases_from} flagged no case, but its gate run was interrupted: no pass for the "
                           "cases it did not reach; nothing to measure A/B")
            # interrupted: the markdown's heading says INTERRUPTED over its NOT COMPARED
            cmp = Comparison(verdicts=[], notes=[nothing], gate_mode=args.gate, interrupted=flagged.interrupted)
            cmp.baseline_label, cmp.current_label = f"base {args.base} ({sha[:12]})", "the working tree"
            # the JSON says what the markdown's NOT COMPARED says (it had read "compared": true)
            _emit(cmp, args, out, context=[cases_note], extra={"base_sha": sha, "rounds": 0},
                  top={"compared": False, "reason": nothing})
            return EXIT_OK
    dirty = uncommitted(repo)
    cwd, env = Path.cwd(), dict(os.environ)
    # A repository without the benchmarks holds variants of its own (a kernel author's): both sides
    # run this attnsuite's benchmarks, each with that repository's files of its side.
    suite = suite_tree() if not (repo / TREE_MARKER).is_file() else None
    if not (repo / TREE_MARKER).is_file():
        if suite is None:
            raise AbError(f"{repo} has no {TREE_MARKER}, and this attnsuite ({Path(__file__).resolve().parent}) "
                          "was installed without its benchmarks: run ab from a checkout of attnsuite")
        if not code_paths(args.pytest_args, env, cwd, repo)["inside"]:
            raise AbError(f"{repo} is not an attnsuite tree (no {TREE_MARKER}) and no --attn-variants or "
                          "--attn-problems path (nor ATTNSUITE_VARIANTS / ATTNSUITE_PROBLEMS) lies inside it: both "
                          "sides would run the same code. Name your variants by their path in this repository, "
                          "e.g. -- --attn-variants kernels/my_variants.py")
    outside = code_paths(args.pytest_args, env, cwd, repo)["outside"]
    for where in outside:
        print(f"attnsuite ab: {where} lies outside {repo}: both sides load that same file, so a change made "
              "there is not measured (run ab from that code's own git repository)", file=out, flush=True)
    for stale in stale_worktrees(repo):
        # a killed A/B's worktree (and its folder) stays registered, unseen, run after run (a reviewer's trial)
        # the hint removes its whole temporary folder: the worktree alone had left that run's rounds/ behind
        print(f"attnsuite ab: {stale} is the base worktree of an earlier A/B that did not end (killed?): unless "
              f"another attnsuite ab is running, remove it and its temporary folder with git worktree remove --force "
              f"{shlex.quote(stale)} && rm -rf {shlex.quote(str(Path(stale).parent))}", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix=WORKTREE_PREFIX) as tmp:
        with base_worktree(repo, sha, Path(tmp)) as base_tree:
            if suite is None and not (base_tree / TREE_MARKER).is_file():
                raise AbError(f"--base {args.base} ({sha[:12]}) has no {TREE_MARKER}: it predates the benchmarks")
            # the bar the rounds' own pytest options name (a team's folder, as bench.sh is given it) applies
            # here too, from the base tree's copy; it had been ignored for the suite's thresholds, so the
            # same change failed bench.sh and passed ab (a first-time user's trial)
            given_dir = last_path_option(args.pytest_args, "--attn-baselines-dir", cwd, repo, base_tree)
            baselines_dir = Path(args.baselines_dir or given_dir or (suite or base_tree) / bl.DEFAULT_DIR)
            from .gate import thresholds_for

            # never the working tree's own file (the package runs from it): step 3 of the rule (the
            # repository's baselines/) is the base tree's, or the attnsuite checkout's that runs both sides;
            # a folder given without a thresholds.json had got the built-ins here and that file in bench.sh
            thresholds, found = thresholds_for(
                args.thresholds or last_path_option(args.pytest_args, "--attn-thresholds", cwd, repo, base_tree),
                baselines_dir, repo_fallback=(suite or base_tree) / bl.DEFAULT_DIR)
            if found is not None and found.is_relative_to(base_tree):  # the worktree is gone once the report is read
                thresholds.path = f"thresholds {args.base}:{found.relative_to(base_tree).as_posix()} (the base tree's)"
            unused = "" if args.thresholds or last_path_option(args.pytest_args, "--attn-thresholds", cwd, repo,
                                                                  base_tree) else \
                working_thresholds_unused(repo, base_tree, baselines_dir, found, args.base)
            if unused:
                print(f"attnsuite ab: {unused}", file=out, flush=True)
            workdir = Path(args.out).resolve() if args.out else Path(tmp) / "rounds"
            aside = set_aside_earlier_rounds(workdir) if args.out else None
            if aside is not None:
                print(f"attnsuite ab: --out {args.out} held an earlier A/B's round files: moved to {aside}",
                      file=out, flush=True)
            if suite is None:
                plan = AbPlan(base_tree=base_tree, head_tree=repo, rounds=args.rounds, python=args.python,
                              pytest_args=rebase_paths(args.pytest_args, cwd, repo), workdir=workdir,
                              cases=cases, timeout=args.round_timeout,
                              head_args=rebase_paths(args.head_arg, cwd, repo),
                              base_env=rebase_env(env, cwd, repo))
            else:  # the variants repository's paths, into each side's checkout; the suite's tree runs both
                plan = AbPlan(base_tree=suite, head_tree=suite, rounds=args.rounds, python=args.python,
                              pytest_args=rebase_paths(args.pytest_args, cwd, repo, repo.resolve()), workdir=workdir,
                              cases=cases, timeout=args.round_timeout,
                              head_args=rebase_paths(args.head_arg, cwd, repo, repo.resolve()),
                              base_env=rebase_env(env, cwd, repo, repo.resolve()),
                              base_args=rebase_paths(args.pytest_args, cwd, repo, base_tree),
                              base_side_env=rebase_env(env, cwd, repo, base_tree),
                              side_roots={"base": base_tree, "head": repo.resolve()})
            # a variants or problem file the change adds is not in the base: its rounds run without it
            base_args, base_env, added = without_files_absent_from(
                plan.base_args if plan.base_args is not None else plan.pytest_args,
                plan.base_side_env if plan.base_side_env is not None else (plan.base_env or {}), base_tree, repo)
            if added:
                plan = replace(plan, base_args=base_args, base_side_env=base_env)
                for what in added:
                    print(f"attnsuite ab: {what} is not in base {args.base}: the base rounds run without it, and the "
                          "cases of what it adds read new", file=out, flush=True)
            print(f"attnsuite ab: base {args.base} ({sha[:12]}) in {base_tree}, head {repo}"
                  + (f" with its {count(dirty, 'uncommitted path')}" if dirty else "") + "; "
                  f"{args.rounds} rounds per side" + (f", {len(cases)} case(s) from {args.cases_from}" if cases else "")
                  + (f"; the variants of both, run by the attnsuite at {suite}" if suite else ""),
                  file=out, flush=True)
            rounds = run_rounds(plan, runner, out)
            base_label = f"base {args.base} ({sha[:12]}), {args.rounds} rounds"
            head_label = f"the working tree, {args.rounds} rounds"
            cmp, sides = judge_ab(rounds, thresholds, base_label=base_label, head_label=head_label,
                                  allow_mismatch=args.allow_mismatch)
            cmp.gate_mode = args.gate
            context = _context(args.base, sha, rounds, args.rounds, dirty, cases_note, args.head_arg,
                               head_commit(repo)) + rounds.notes
            if suite is not None:
                context.insert(1, f"The variants of {repo} at each side, run by the same attnsuite ({suite}).")
            context += [f"{where} lies outside {repo}: both sides loaded the same file, so a change there is not "
                        "measured." for where in outside]
            if unused:
                context.append(unused[0].upper() + unused[1:] + ".")
            extra = {"base_ref": args.base, "base_sha": sha, "rounds": args.rounds, "order": rounds.order,
                     "head_args": list(args.head_arg),
                     "trees": {"base": str(base_tree), "head": str(repo)}, "seconds": rounds.seconds,
                     "round_files": rounds.files if args.out else [  # the timings stay; the files went with the temp folder
                         {**f, "json": None, "log": None} for f in rounds.files], "per_case": per_case_rounds(sides)}
            _emit(cmp, args, out, context=context, extra=extra)
    return EXIT_GATE if cmp.failed and args.gate == "enforce" else EXIT_OK


def _emit(cmp: Comparison, args: argparse.Namespace, out, *, context: Sequence[str], extra: dict[str, Any],
          top: Optional[dict[str, Any]] = None) -> None:
    # the verdict in words, bold, first, as gate.md has it (the heading alone had carried it)
    verdict = summary.comparison_verdict(cmp, cmp.gate_mode, summary.failed_counts(
        {v.key: v.cur for v in cmp.verdicts if v.cur is not None}))
    # a head side run with --head-arg=--attn-inject-slowdown says so in bold, as a slowed run's gate.md
    # does (the markdown had held only the quoted note that the head rounds ran with it)
    slowed = summary.simulated_line({v.key: v.cur for v in cmp.verdicts if v.cur is not None})
    # the same lines as `attnsuite compare` (with nothing measured, the table's "pass (no cases)" had
    # stood beside a markdown saying NOT COMPARED: no table then)
    print("\n".join(report.terminal_report(cmp, verdict, note_prefix="attnsuite ab: ", simulated=slowed)), file=out)
    head = [f"**{report.md_escape(verdict)}**", ""]
    if slowed:
        head += [f"**{report.md_escape(slowed)}**", ""]
    text = report.markdown_diff(cmp, title="attnsuite A/B (same machine)", context=context, head=head)
    if args.markdown:
        report.write_markdown(text, args.markdown)
    if args.step_summary:  # with or without --markdown (alone it had been ignored without a word)
        if report.append_step_summary(text) is None:  # as `attnsuite report` says it
            print("GITHUB_STEP_SUMMARY is not set: no job summary written", file=out)
    if args.json:
        # the verdict line and the simulated note as `attnsuite compare --format json` gives them
        _write(args.json, json.dumps({**cmp.to_json(), "verdict_line": verdict, "simulated": slowed or None,
                                      **(top or {}), "ab": extra}, indent=1) + "\n")


def main(argv: Optional[Sequence[str]] = None, out=None) -> int:
    """``python -m attnsuite.ab``: the ``attnsuite ab`` subcommand on its own."""
    p = argparse.ArgumentParser(prog="attnsuite ab", description=__doc__.splitlines()[0])
    _configure(p)
    return cmd_ab(p.parse_args(argv), out or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
