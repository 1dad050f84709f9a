"""Each baseline entry says when and at which commit its figures were measured, and a recording of
an older run does not put its figures over newer ones (``attnsuite.provenance``).

A baseline keeper's trial: entries carried no provenance, and ``attnsuite record old.json`` after
``record new.json`` replaced the newer figures with the older ones without a word.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from attnsuite import baseline as bl
from attnsuite import cli, provenance
from gatehelp import rec, result_json

NEW_TIME, OLD_TIME = "2026-12-03T12:00:00+00:00", "2026-12-01T08:30:00+00:00"


def run_cli(*argv: Any) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main([str(a) for a in argv], out=out), out.getvalue()


def result(path: Path, records: list, when: str, commit: str = "0123456789abcdef0123", dirty: bool = False) -> Path:
    obj = result_json(records)
    obj["datetime"] = when
    obj["commit_info"] = {"id": commit, "dirty": dirty, "branch": "main"}
    path.write_text(json.dumps(obj))
    return path


def entries(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text())["cases"]


@pytest.mark.parametrize("given, stored", [
    ("2026-12-03T12:00:00+00:00", "2026-12-03T12:00:00Z"),
    ("2026-12-03T14:00:00.123456+02:00", "2026-12-03T12:00:00Z"),  # another zone: said in UTC
    ("2026-12-03T12:00:00", "2026-12-03T12:00:00Z"),  # no zone: pytest-benchmark's older files were UTC
    ("yesterday", ""), (None, ""),
])
def test_a_result_time_is_stored_in_utc_or_not_at_all(given, stored):
    assert provenance.utc_text(given) == stored


def test_each_recorded_entry_names_its_run_time_and_short_commit_with_dirty(tmp_path):
    base = tmp_path / "base.json"
    code, out = run_cli("record", result(tmp_path / "r.json", [rec("a")], NEW_TIME, dirty=True), "--baseline", base)
    assert code == 0, out
    assert entries(base)[rec("a").key]["recorded"] == {"at": "2026-12-03T12:00:00Z", "commit": "0123456789ab+dirty"}


def test_an_older_run_over_newer_entries_is_refused_and_writes_nothing(tmp_path, capsys):
    base = tmp_path / "base.json"
    assert run_cli("record", result(tmp_path / "new.json", [rec("a", median_ms=1.0)], NEW_TIME), "--baseline", base)[0] == 0
    before = base.read_bytes()
    old = result(tmp_path / "old.json", [rec("a", median_ms=2.0)], OLD_TIME, commit="fedcba9876543210")
    code, _ = run_cli("record", old, "--baseline", base)
    assert code == 2 and base.read_bytes() == before
    err = capsys.readouterr().err
    assert (f"1 case of the baseline was recorded from a run newer than result {old}, which would replace or prune it "
            f"(e.g. {rec('a').key}: recorded 2026-12-03T12:00:00Z (commit 0123456789ab); result {old}: "
            "2026-12-01T08:30:00Z (commit fedcba987654)); the baseline is left as it was (--allow-older records "
            "anyway)") in err, err
    code, out = run_cli("record", old, "--baseline", base, "--allow-older")
    assert code == 0, out
    assert entries(base)[rec("a").key]["median_ms"] == 2.0
    assert entries(base)[rec("a").key]["recorded"]["at"] == "2026-12-01T08:30:00Z"


def test_an_older_run_may_record_cases_the_baseline_has_only_from_older_runs(tmp_path):
    # the refusal is per entry: a case recorded from an even older run, or never, is the run's to replace
    base = tmp_path / "base.json"
    assert run_cli("record", result(tmp_path / "first.json", [rec("a"), rec("b")], "2026-11-01T00:00:00Z"),
                   "--baseline", base)[0] == 0
    code, out = run_cli("record", result(tmp_path / "old.json", [rec("a", median_ms=3.0)], OLD_TIME), "--baseline", base)
    assert code == 0, out and entries(base)[rec("a").key]["median_ms"] == 3.0


def test_an_older_run_may_not_prune_an_entry_a_newer_run_recorded(tmp_path, capsys):
    base = tmp_path / "base.json"
    assert run_cli("record", result(tmp_path / "new.json", [rec("a"), rec("a", mode="bwd")], NEW_TIME),
                   "--baseline", base)[0] == 0
    before = base.read_bytes()
    code, _ = run_cli("record", result(tmp_path / "old.json", [rec("a")], OLD_TIME), "--baseline", base, "--prune")
    assert code == 2 and base.read_bytes() == before
    assert f"(e.g. {rec('a', mode='bwd').key}: recorded 2026-12-03T12:00:00Z" in capsys.readouterr().err


def test_an_unchanged_rerecording_keeps_the_entry_and_its_provenance(tmp_path):
    # the same figures from a later run: nothing moved, so the PR diff of the baseline shows nothing
    base = tmp_path / "base.json"
    assert run_cli("record", result(tmp_path / "r1.json", [rec("a")], OLD_TIME), "--baseline", base)[0] == 0
    before = base.read_bytes()
    code, out = run_cli("record", result(tmp_path / "r2.json", [rec("a")], NEW_TIME, commit="99999999"), "--baseline", base)
    assert code == 0 and "0 added, 0 updated, 1 unchanged" in out, out
    assert base.read_bytes() == before


def test_a_combined_recording_is_as_new_as_its_newest_run_and_names_every_commit(tmp_path):
    base = tmp_path / "base.json"
    r1 = result(tmp_path / "r1.json", [rec("a", median_ms=1.0)], OLD_TIME, commit="1111111111111111")
    r2 = result(tmp_path / "r2.json", [rec("a", median_ms=1.2)], NEW_TIME, commit="2222222222222222", dirty=True)
    code, out = run_cli("record", r1, r2, "--baseline", base)
    assert code == 0, out
    assert entries(base)[rec("a").key]["recorded"] == {"at": "2026-12-03T12:00:00Z",
                                                      "commit": "111111111111, 222222222222+dirty"}


def test_entries_recorded_before_provenance_existed_are_never_called_newer(tmp_path):
    base = tmp_path / "base.json"
    assert run_cli("record", result(tmp_path / "r.json", [rec("a")], NEW_TIME), "--baseline", base)[0] == 0
    obj = json.loads(base.read_text())
    del obj["cases"][rec("a").key]["recorded"]
    base.write_text(json.dumps(obj))
    code, out = run_cli("record", result(tmp_path / "old.json", [rec("a", median_ms=5.0)], OLD_TIME), "--baseline", base)
    assert code == 0, out


@pytest.mark.parametrize("bad, why", [
    ("2026-12-03", "recorded is str, expected an object"),
    ({"at": "last week"}, "recorded.at must be a UTC time like 2026-12-03T23:40:08Z, got 'last week'"),
    ({"at": "2026-12-03T12:00:00+02:00"}, "recorded.at must be a UTC time"),
    ({"when": "x"}, "recorded has unknown fields ['when']"),
    ({"commit": 7}, "recorded.commit must be a short text"),
])
def test_attnsuite_check_names_a_malformed_provenance_and_its_case(tmp_path, capsys, bad, why):
    base = tmp_path / "base.json"
    assert run_cli("record", result(tmp_path / "r.json", [rec("a")], NEW_TIME), "--baseline", base)[0] == 0
    obj = json.loads(base.read_text())
    obj["cases"][rec("a").key]["recorded"] = bad
    base.write_text(json.dumps(obj))
    code, out = run_cli("check", base)
    text = out + capsys.readouterr().err
    assert code == 2 and f"case '{rec('a').key}': {why}" in text, text


def test_merge_into_refuses_an_older_record_over_a_newer_entry_unless_allowed():
    newer = rec("a")
    newer.extra[provenance.KEY] = {"at": "2026-12-03T12:00:00Z"}
    base, _ = bl.merge_into(None, {newer.key: newer}, {"id": "x"})
    older = rec("a", median_ms=2.0)
    older.extra[provenance.KEY] = {"at": "2026-12-03T11:59:59Z"}
    with pytest.raises(bl.OlderRun):
        bl.merge_into(base, {older.key: older}, {"id": "x"})
    merged, summary = bl.merge_into(base, {older.key: older}, {"id": "x"}, allow_older=True)
    assert summary.updated == [older.key] and merged.cases[older.key]["median_ms"] == 2.0
