"""Where a baseline entry's figures came from: when the run was made and at which commit.

Each entry a recording writes carries ``"recorded": {"at": ..., "commit": ...}``: the time of the
result file it came from (pytest-benchmark's ``datetime``, in UTC) and the commit of the tree that
ran (``commit_info``: a short id, ``+dirty`` when the tree had uncommitted changes). A baseline
refreshed case by case mixes recordings, so the baseline keeper needs this per case, and a
recording can tell a run older than what it would replace (:func:`is_newer`): ``record`` of
an older result file had put older figures over newer ones with no word.

Entries recorded before this field existed have none; they are never called newer.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Iterable, Mapping, Optional

KEY = "recorded"  # the field in a baseline entry and in a record's ``extra``
_COMMIT_MAX = 200


def utc_text(value: Any) -> str:
    """An ISO time as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC ("" when it is not one); a time without a zone
    is taken as UTC, as pytest-benchmark wrote it before it added one."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def commit_text(info: Any) -> str:
    """A short commit id from pytest-benchmark's ``commit_info`` (``+dirty`` when it says so), or ""."""
    if not isinstance(info, Mapping):
        return ""
    cid = info.get("id")
    if not isinstance(cid, str) or not cid.strip() or cid.strip() in ("unversioned", "unknown"):
        return ""  # pytest-benchmark's words for a tree outside git, or a git that failed
    return cid.strip()[:12] + ("+dirty" if info.get("dirty") is True else "")


def of_result(obj: Mapping[str, Any]) -> dict[str, str]:
    """The provenance of a pytest-benchmark result object: ``{"at", "commit"}``, fields it lacks left out."""
    out = {"at": utc_text(obj.get("datetime")), "commit": commit_text(obj.get("commit_info"))}
    return {k: v for k, v in out.items() if v}


def now(commit_info: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    """The provenance of the run in this process: this moment, and ``commit_info``'s commit if given."""
    return of_result({"datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(), "commit_info": commit_info})


def combined(stamps: Iterable[Optional[Mapping[str, str]]]) -> dict[str, str]:
    """One provenance for a case combined from several runs: the latest time (the case is as new as
    its newest run) and every commit, in order of first appearance."""
    stamps = [s for s in stamps if s]
    times = [s["at"] for s in stamps if s.get("at")]
    commits = list(dict.fromkeys(s["commit"] for s in stamps if s.get("commit")))
    out = {"at": max(times) if times else "", "commit": ", ".join(commits)[:_COMMIT_MAX]}
    return {k: v for k, v in out.items() if v}


def problems(value: Any) -> list[str]:
    """What is wrong with an entry's ``recorded`` field (empty when it is well formed)."""
    if not isinstance(value, Mapping):
        return [f"{KEY} is {type(value).__name__}, expected an object with \"at\" and \"commit\""]
    out = []
    unknown = sorted(set(value) - {"at", "commit"})
    if unknown:
        out.append(f"{KEY} has unknown fields {unknown[:5]}")
    at = value.get("at")
    if at is not None and (not isinstance(at, str) or utc_text(at) != at):
        out.append(f"{KEY}.at must be a UTC time like 2026-12-03T23:40:08Z, got {str(at)[:60]!r}")
    commit = value.get("commit")
    if commit is not None and (not isinstance(commit, str) or len(commit) > _COMMIT_MAX):
        out.append(f"{KEY}.commit must be a short text")
    return out


def is_newer(entry_stamp: Optional[Mapping[str, str]], run_stamp: Optional[Mapping[str, str]]) -> bool:
    """Whether a stored entry was recorded from a run made after ``run_stamp``'s (False when either
    time is unknown: nothing is refused on a guess)."""
    old = (entry_stamp or {}).get("at") or ""
    new = (run_stamp or {}).get("at") or ""
    return bool(old and new and old > new)


def describe(stamp: Optional[Mapping[str, str]]) -> str:
    """``2026-12-03T23:40:08Z (commit 9543503)`` or what is known of it."""
    stamp = stamp or {}
    text = stamp.get("at") or "an unknown time"
    return f"{text} (commit {stamp['commit']})" if stamp.get("commit") else text
