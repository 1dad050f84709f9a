"""The run journal: every finished case on disk as it finishes, so a killed run loses nothing.

One JSON object per line. The first line is the header (the run's spec and machine fingerprint
id); each later line is one finished case: ``{"key", "record", "samples", "timer", "warmup"}``, or
an update of a case's record (``"update": true``: its deferred device time) that keeps its samples.
Each line is flushed and fsynced when written, so a run killed at any moment leaves every case
it finished; a torn last line (killed mid-write) is ignored when the journal is read back.
``--attn-resume`` reads it and runs only the cases it lacks.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Iterable, Optional

JOURNAL_VERSION = 1


class JournalError(ValueError):
    """A journal that cannot be resumed from; the message names the file and why."""


def _header(spec: dict[str, Any], fingerprint_id: Optional[str],
            sources: Optional[dict[str, str]] = None, case_timeout: Optional[float] = None) -> dict[str, Any]:
    head = {"attnsuite_journal": JOURNAL_VERSION, "spec": spec, "fingerprint_id": fingerprint_id,
            "case_timeout": case_timeout}
    if sources is not None:
        head["sources"] = sources
    return head


def _limit(seconds: Optional[float]) -> str:
    return f"--attn-timeout {seconds:g}" if seconds else "no --attn-timeout"


def is_code_file(path: os.PathLike | str) -> bool:
    """A Python source or a compiled extension module (``.so``, ``.cpython-311-x86_64-linux-gnu.so``,
    ``.pyd``): a resumed run had accepted a variant whose C extension beside it was rebuilt with other
    code (an outside tester's trial), as only ``.py`` files were digested."""
    name = os.fspath(path)
    return name.endswith(".py") or name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def source_digests(paths: Iterable[str]) -> dict[str, str]:
    """A content digest of each external file the run's cases depend on (variant modules, problem
    files), by the name the run was given: a resume after the file changed would mix the results of
    two versions of the code. A folder digests its .py files; a module name, the file it imports from
    (a package's name, its whole folder); a name that cannot be found, "" (no check can be made).
    Compiled extension modules count as code (:func:`is_code_file`)."""
    out: dict[str, str] = {}
    for name in paths:
        name = name.strip()
        if not name:
            continue
        path = Path(name).expanduser()
        if not path.exists() and "/" not in name and not name.endswith(".py"):
            try:
                found = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                found = None
            if found is not None and found.submodule_search_locations:
                # a package: every module of it (its __init__ alone had let an edited submodule resume)
                path = Path(list(found.submodule_search_locations)[0])
            elif found is not None and found.origin:
                path = Path(found.origin)
        digest = hashlib.sha256()
        files = sorted(f for f in path.rglob("*") if f.is_file() and is_code_file(f)) if path.is_dir() \
            else [path] if path.is_file() else []
        for f in files:
            digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
            digest.update(f.read_bytes())
        out[name] = digest.hexdigest()[:16] if files else ""
    return out


def changed_sources(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The names whose digest differs between two :func:`source_digests` (a name either side could not
    digest is not judged), sorted."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and before.get(k) and now.get(k))


def _installed(path: Path) -> bool:
    """Is ``path`` part of the Python installation: the standard library or an installed distribution
    (site-packages, dist-packages)? Such code is not the user's, and digesting it all costs time."""
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return True
    return any(path.is_relative_to(root) for root in _stdlib_roots())


@functools.lru_cache(maxsize=1)
def _stdlib_roots() -> tuple[Path, ...]:
    """The standard library's folders, resolved once per process (not once per module file)."""
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib") if paths.get(k))


def code_beside(module_names: Iterable[str]) -> list[str]:
    """The files of imported modules that live beside the named modules, for :func:`source_digests`:
    in the folder of a lone module's file, or of a package's folder, or below it, outside installed
    packages. A variant file that imports a helper module next to it ("from kernels import ...") had
    resumed after that helper changed, mixing two versions of its results in one file."""
    folders: list[Path] = []
    for name in module_names:
        mod = sys.modules.get(name)
        where = list(getattr(mod, "__path__", None) or [])
        file = getattr(mod, "__file__", None)
        folder = Path(where[0]) if where else Path(file).parent if file else None
        if folder is not None and folder.is_dir():
            folders.append(folder.resolve())
    out: list[str] = []
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if not file or not is_code_file(file):
            continue
        path = Path(file).resolve()
        # beside a named module first: most imported modules are not, and need no installation check
        if any(path.is_relative_to(f) for f in folders) and not _installed(path) and str(path) not in out:
            out.append(str(path))
    return sorted(out)


def code_locations(module_names: Iterable[str]) -> list[str]:
    """Where the code of each imported module lives, for :func:`source_digests`: a module of a
    package gives the whole top-level package's folder (the helpers a variant module imports change
    its results too), a lone module its file; a module not imported gives nothing."""
    out: list[str] = []
    for name in module_names:
        top = sys.modules.get(name.split(".")[0])
        mod = sys.modules.get(name)
        folders = list(getattr(top, "__path__", None) or [])
        where = folders[0] if folders else getattr(mod, "__file__", None)
        if where and where not in out:
            out.append(str(where))
    return out


def read(path: os.PathLike | str, spec: dict[str, Any], fingerprint_id: Optional[str],
         sources: Optional[dict[str, str]] = None, case_timeout: Optional[float] = None) -> dict[str, dict[str, Any]]:
    """The finished cases of the journal at ``path`` by key; refuses a journal of another run setup,
    including another per-case time limit (``case_timeout``, ``--attn-timeout``)."""
    p = Path(path)
    if not p.is_file():
        kept = kept_paths(p)
        hint = (f"; an earlier unfinished run's journal was kept as {kept[-1]} when a run without --attn-resume "
                f"started: move it back to {p.name} to carry that run on") if kept else ""
        raise JournalError(f"journal {p}: no such file (nothing to resume){hint}")
    entries: dict[str, dict[str, Any]] = {}
    with open(p, "r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
        try:
            head = json.loads(first)
        except ValueError:
            raise JournalError(f"journal {p}: the first line is not a journal header") from None
        if not isinstance(head, dict) or head.get("attnsuite_journal") != JOURNAL_VERSION:
            raise JournalError(f"journal {p}: not an attnsuite journal of version {JOURNAL_VERSION}")
        want = json.loads(json.dumps(_header(spec, fingerprint_id)))  # tuples read back as lists
        for field in ("spec", "fingerprint_id"):
            if head.get(field) != want[field]:
                raise JournalError(f"journal {p}: written by a run with another {field.replace('_', ' ')} "
                                   f"({_difference(head.get(field), want[field])}); resume with the same options")
        # a case that timed out under one limit would be kept as a timeout under another (and one
        # that finished under a longer limit would stand beside cases cut at a shorter one)
        if "case_timeout" in head and (head["case_timeout"] or None) != (case_timeout or None):
            raise JournalError(f"journal {p}: written by a run with {_limit(head['case_timeout'])}, this run has "
                               f"{_limit(case_timeout)}: resume with the same limit, or run again without "
                               "--attn-resume")
        theirs = head.get("sources")
        if sources is not None and isinstance(theirs, dict):  # a journal written before digests: no check
            changed = changed_sources(theirs, sources)
            if changed:
                raise JournalError(f"journal {p}: {', '.join(changed)} changed since the interrupted run: a resume "
                                   "would mix the results of two versions of that code; run again without "
                                   "--attn-resume")
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:  # a torn last line: that case did not finish writing
                continue
            if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("record"), dict):
                earlier = entries.get(entry["key"])
                if entry.get("update") and earlier is not None:  # a later figure (deferred device time)
                    entry = {**earlier, "record": entry["record"]}
                entries[entry["key"]] = entry
    return entries


def previous_path(path: os.PathLike | str) -> Path:
    """Where a fresh run keeps an unfinished run's journal instead of overwriting it: ``.prev``, or
    ``.prev2``, ``.prev3`` ... when the earlier ones are taken (a second fresh run had replaced the
    first kept journal, and every case it held was lost)."""
    return _kept_name(path, len(kept_paths(path)) + 1)


def kept_paths(path: os.PathLike | str) -> list[Path]:
    """The unfinished journals kept beside ``path``, oldest first (:func:`previous_path`)."""
    out: list[Path] = []
    while (kept := _kept_name(path, len(out) + 1)).exists():
        out.append(kept)
    return out


def _kept_name(path: os.PathLike | str, n: int) -> Path:
    """The n-th kept journal's name (1: ``.prev``, then ``.prev2``, ``.prev3`` ...)."""
    return Path(f"{path}.prev{n if n > 1 else ''}")


UNFINISHED = "an unfinished run's journal"
NO_JOURNAL = "a file by the journal's name that is no journal"


def _worth_keeping(path: Path) -> str:
    """What a fresh run must keep aside rather than write over ("" when nothing): a journal with at
    least one finished case (:data:`UNFINISHED`), or a file that is no journal at all (:data:`NO_JOURNAL`:
    one of the user's by that name had been overwritten without a word). Only a journal of no finished
    case is replaced."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
            rest = fh.read()
    except OSError:
        return ""
    try:
        head = json.loads(first) if first.strip() else None
    except ValueError:
        head = None
    if not (isinstance(head, dict) and "attnsuite_journal" in head):
        return NO_JOURNAL if (first + rest).strip() else ""
    return UNFINISHED if rest.strip() else ""


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left unfinished, so the next line appended starts a line of its own
    (appended to the torn fragment, the next finished case would be unreadable too)."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def _difference(theirs: Any, ours: Any) -> str:
    """What differs, field by field where both are objects (the run spec), else the two values."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        return "; ".join(f"{k}: the journal's {theirs.get(k)!r}, this run's {ours.get(k)!r}" for k in keys)
    return f"{theirs!r}, this run {ours!r}"


class Journal:
    """An open journal that finished cases are appended to."""

    def __init__(self, path: os.PathLike | str, spec: dict[str, Any], fingerprint_id: Optional[str], *,
                 resume: bool = False, sources: Optional[dict[str, str]] = None,
                 case_timeout: Optional[float] = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (resume and self.path.is_file())
        # a fresh run where an unfinished one left finished cases (or a file of the user's has the
        # journal's name): kept aside, never overwritten unseen
        self.kept_previous: Optional[Path] = None
        self.kept_what = _worth_keeping(self.path) if fresh else ""  # what was kept there, in words
        if self.kept_what:
            self.kept_previous = previous_path(self.path)
            os.replace(self.path, self.kept_previous)
        if not fresh:
            _drop_torn_tail(self.path)
        self._fh = open(self.path, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._write(_header(spec, fingerprint_id, sources, case_timeout))

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, allow_nan=True, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, key: str, entry: dict[str, Any]) -> None:
        """Write one finished case (durably) before the run moves on."""
        self._write({"key": key, **entry})

    def close(self, *, remove: bool = False) -> None:
        """Close the file; ``remove`` deletes it (the run finished and its results are written)."""
        self._fh.close()
        if remove:
            try:
                self.path.unlink()
            except OSError:
                pass
