"""The baseline store against hostile files and concurrent writers (issue 10 item 3).

Reading: only regular files of bounded size (a FIFO, a link to /dev/zero, a directory or a device
is refused by name, never read), strict JSON, every number checked; the same for result files.
Writing: under a folder lock (two writers lose no case), atomic, unchanged text not rewritten,
mode and symlinks kept, temporary files removed on any failure, errors named.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import stat
from pathlib import Path

import pytest

from attnsuite import baseline as bl
from attnsuite.combine import combine_runs
from attnsuite import cli
from gatehelp import FP_H100, by_key, fp, rec, result_json, write_result

KEY = rec().key


@pytest.fixture
def no_hang():
    """Turn a read that would block (a FIFO) into a test failure after 20 s instead of a hang."""

    def boom(signum, frame):
        raise AssertionError("the read blocked: the store must refuse a FIFO without opening it blocking")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _recorded(path: Path, records=None, fingerprint=FP_H100) -> Path:
    run = bl.Run(by_key(records or [rec()]), dict(fingerprint))
    bl.record_baseline(run, path)
    return path


def _good_text(tmp_path: Path) -> str:
    return _recorded(tmp_path / "good.json").read_text()


# --------------------------------------------------------------------------- files that are not files


@pytest.mark.parametrize("make, needle", [
    (lambda p: os.mkfifo(p), "not a regular file: it is a FIFO (named pipe)"),
    (lambda p: os.symlink("/dev/zero", p), "not a regular file: it is a character device (a symlink to /dev/zero)"),
    (lambda p: p.mkdir(), "not a regular file: it is a directory"),
    (lambda p: os.symlink(p.parent / "nowhere.json", p), "no such file (a symlink to"),
    (lambda p: os.symlink(p.name, p), "cannot be read: Too many levels of symbolic links"),
    (lambda p: p.open("wb").truncate(bl.MAX_FILE_BYTES + 1), "more than the 64 MiB the suite reads from one file"),
], ids=["a FIFO", "a symlink to /dev/zero", "a directory", "a dangling symlink", "a symlink loop", "a file over 64 MiB"])
@pytest.mark.parametrize("loader, error", [(bl.load_baseline, bl.BaselineError), (bl.load_run, bl.ResultFileError)],
                         ids=["load_baseline", "load_run"])
def test_a_path_that_is_not_a_regular_file_of_bounded_size_is_refused_by_name_without_reading_it(
        tmp_path, no_hang, make, needle, loader, error):
    p = tmp_path / "b.json"
    make(p)
    with pytest.raises(error) as info:
        loader(p)
    assert str(info.value).startswith(f"{error(p, '').kind} {p}: ") and needle in str(info.value)


def test_a_symlink_to_a_regular_baseline_is_followed(tmp_path):
    real = _recorded(tmp_path / "real.json")
    (tmp_path / "link.json").symlink_to(real)
    assert set(bl.load_baseline(tmp_path / "link.json").cases) == {KEY}


def test_scanning_a_folder_with_a_fifo_a_device_link_and_a_directory_skips_them_with_a_note(tmp_path, no_hang):
    d = tmp_path / "baselines"
    d.mkdir()
    os.mkfifo(d / "a-fifo.json")
    os.symlink("/dev/zero", d / "b-zero.json")
    (d / "c-dir.json").mkdir()
    (d / "d-corrupt.json").write_text('{"schema": "attnsuite-baseline", "ver')
    _recorded(d / "e-good.json")
    look = bl.find_baseline(fp(id="another-driver", driver="999.1"), d)
    assert look.path == d / "e-good.json" and look.fallback
    assert [n.split(" (")[0] for n in look.notes] == ["a-fifo.json", "b-zero.json", "c-dir.json", "d-corrupt.json"]
    assert "skipped unreadable or invalid files: a-fifo.json (not a regular file: it is a FIFO" in look.message


def test_temporary_hidden_and_thresholds_files_are_never_baseline_candidates(tmp_path):
    _recorded(tmp_path / "b.json")
    for name in (".b.json.x1y2.tmp", ".hidden.json", "thresholds.json", bl.filelock.LOCK_FILE_NAME):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in bl.baseline_files(tmp_path)] == ["b.json"]


# --------------------------------------------------------------------------- malformed content


def _entry_text(tmp_path, field, raw_value):
    """A valid baseline whose one entry has ``field`` set to the raw JSON text ``raw_value``."""
    obj = json.loads(_good_text(tmp_path))
    obj["cases"][KEY][field] = "@@VALUE@@"
    return json.dumps(obj, indent=1).replace('"@@VALUE@@"', raw_value)


@pytest.mark.parametrize("field, raw, needle", [
    ("median_ms", "NaN", "median_ms is nan, not a finite number"),
    ("min_ms", "Infinity", "min_ms is inf, not a finite number"),
    ("iqr_ms", "-Infinity", "iqr_ms is -inf, not a finite number"),
    ("median_ms", "1e400", "median_ms is inf, not a finite number"),
    ("median_ms", "-1.5", "median_ms must be a non-negative number, got -1.5"),
    ("median_ms", "0", "median_ms is 0 in an ok case: a measured time cannot be zero"),
    ("device_ms", "0.0", "device_ms is 0 in an ok case: a measured time cannot be zero"),
    ("device_min_ms", "-0.1", "device_min_ms must be a non-negative number"),
    ("median_ms", "90000000", "median_ms is 90000000, more than a day: not a plausible measurement"),
    ("host_overhead_ms", "NaN", "host_overhead_ms is nan, not a finite number"),
    ("host_overhead_ms", "-1e9", "more than a day either way"),
    ("peak_mem_bytes", str(2**51), "more than 1 PiB"),
    ("peak_mem_bytes", "9" * 400, "peak_mem_bytes is an integer of 400 digits, more than 1 PiB"),
    ("samples", "2.5", "samples must be a whole number, got 2.5"),
    ("runs", "0", "runs must be at least 1, got 0"),
    ("device_method", "7", "device_method must be text, got int"),
    ("median_ms", "true", "median_ms must be a number, got True"),
], ids=["NaN time", "Infinity", "-Infinity", "a float that overflows", "a negative time", "zero time of an ok case",
        "zero device time of an ok case", "negative device minimum", "a time over a day", "NaN host overhead",
        "absurd host overhead", "bytes over 1 PiB", "a 400-digit integer", "a fractional sample count",
        "zero runs", "a method that is a number", "a time that is true"])
def test_a_bad_number_in_a_baseline_entry_is_refused_naming_the_file_the_case_and_the_field(tmp_path, field, raw, needle):
    p = tmp_path / "b.json"
    p.write_text(_entry_text(tmp_path, field, raw))
    with pytest.raises(bl.BaselineError) as info:
        bl.load_baseline(p)
    assert f"baseline {p}: case {KEY!r}: " in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("field, raw", [("host_overhead_ms", "-0.25"), ("device_iqr_ms", "0"), ("iqr_ms", "0.0")],
                         ids=["negative host overhead", "zero device spread", "zero spread"])
def test_values_that_are_possible_measurements_are_accepted(tmp_path, field, raw):
    p = tmp_path / "b.json"
    p.write_text(_entry_text(tmp_path, field, raw))
    assert bl.load_baseline(p).cases[KEY][field] == json.loads(raw)


@pytest.mark.parametrize("outcome", ["crash", "timeout"])
def test_crash_and_timeout_outcomes_are_stored_and_loaded(tmp_path, outcome):
    p = _recorded(tmp_path / "b.json", [rec(outcome=outcome, median_ms=None, min_ms=None, detail="signal 11")])
    assert bl.load_baseline(p).records()[KEY].outcome == outcome


@pytest.mark.parametrize("text, needle", [
    (lambda good: good.replace('"outcome": "ok",', '"outcome": "ok",\n   "outcome": "ok",', 1),
     f"duplicate key 'outcome' in cases[\"{KEY}\"]: a JSON object must name each field once"),
    (lambda good: good.replace('"schema"', '"version": 1,\n "schema"', 1), "duplicate key 'version' in the top level"),
    (lambda good: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (lambda good: '{"a": ' + "[" * 100 + "]" * 100 + "}", "nested more than 64 levels deep at a[0][0]"),
    (lambda good: '{"a": ' + "7" * 5000 + "}", "not usable JSON: Exceeds the limit (4300 digits)"),
    (lambda good: b"\xff\xfe{}".decode("latin-1"), "not UTF-8 text (corrupt?): byte 0"),
    (lambda good: '"just text"', "top level is str, expected an object"),
    (lambda good: good.replace('"fingerprint": {', '"fingerprint": {\n  "nested": {"x": 1},', 1),
     "fingerprint.nested must be a number or text, got dict"),
    (lambda good: good.replace('"schema"', '"calibration": {"mem_bandwidth_gbs": NaN},\n "schema"', 1),
     "calibration.mem_bandwidth_gbs is nan, not a finite number"),
    (lambda good: good.replace('"schema"', '"calibration": {"x": [1]},\n "schema"', 1),
     "calibration.x must be a number or text, got list"),
    (lambda good: good.replace('"schema"', '"calibration": {"gpu": "' + "x" * 400 + '"},\n "schema"', 1),
     "calibration.gpu is 400 characters long, more than 300"),
    (lambda good: good.replace('"version": 1', '"version": true', 1), "schema version True is not 1"),
    (lambda good: good.replace('"workload": "fa-sweep"', '"workload": "\\ud800"', 1), "key does not match"),
], ids=["a duplicate field in an entry", "a duplicate top-level field", "100000 levels of nesting",
        "100 levels of nesting", "a 5000-digit integer", "not UTF-8", "a top-level string",
        "a nested fingerprint value", "a NaN calibration figure", "a calibration list", "a long calibration text",
        "a boolean version", "a lone surrogate"])
def test_malformed_json_is_a_clear_baseline_error_never_a_traceback(tmp_path, text, needle):
    p = tmp_path / "b.json"
    body = text(_good_text(tmp_path))
    p.write_bytes(body.encode("latin-1") if body.startswith("\xff") else body.encode("utf-8"))
    with pytest.raises(bl.BaselineError) as info:
        bl.load_baseline(p)
    assert str(p) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("changes, needle", [
    ({"median_ms": float("nan")}, "median_ms is nan, not a finite number"),
    ({"min_ms": -0.5}, "min_ms must be a non-negative number, got -0.5"),
    ({"median_ms": 0.0}, "median_ms is 0 in an ok case"),
    ({"device_ms": float("inf")}, "device_ms is inf, not a finite number"),
    ({"peak_mem_bytes": 2**60}, "more than 1 PiB"),
    ({"mode": "sideways"}, "unknown mode 'sideways'"),
    ({"extra": {"confirm": {**rec().to_extra_info(), "median_ms": -1.0}}}, "confirm: median_ms must be a non-negative"),
    ({"extra": {"runs": "three"}}, "runs must be a number, got 'three'"),
], ids=["NaN time", "negative time", "zero time of an ok case", "infinite device time", "absurd peak memory",
        "unknown mode", "a bad confirmation record", "a bad runs count"])
def test_a_result_file_with_a_bad_record_is_refused_naming_the_benchmark_and_the_field(tmp_path, changes, needle):
    path = write_result(tmp_path / "r.json", [rec(**changes)])
    with pytest.raises(bl.ResultFileError) as info:
        bl.load_run(path)
    assert f"result file {path}: benchmark bench/x.py::test_bench[" in str(info.value) and needle in str(info.value)


def test_attnsuite_compare_exits_2_on_a_result_file_with_nan_times(tmp_path, capsys):
    good = write_result(tmp_path / "a.json", [rec()])
    bad = write_result(tmp_path / "b.json", [rec(median_ms=float("nan"), min_ms=float("nan"))])
    assert cli.main(["compare", str(good), str(bad)]) == 2
    assert f"{bad}: benchmark" in capsys.readouterr().err


# --------------------------------------------------------------------------- writing


def test_recording_an_unchanged_run_does_not_rewrite_the_file(tmp_path):
    p = _recorded(tmp_path / "b.json")
    os.utime(p, (1_000_000, 1_000_000))
    inode = p.stat().st_ino
    _recorded(p)
    assert (p.stat().st_mtime, p.stat().st_ino) == (1_000_000, inode)


def test_rewriting_a_baseline_keeps_its_mode(tmp_path):
    p = _recorded(tmp_path / "b.json")
    p.chmod(0o640)
    _recorded(p, [rec(median_ms=2.0)])
    assert stat.S_IMODE(p.stat().st_mode) == 0o640 and bl.load_baseline(p).cases[KEY]["median_ms"] == 2.0


def test_a_symlinked_baseline_is_written_through_to_its_target_and_stays_a_link(tmp_path):
    target = _recorded(tmp_path / "store" / "real.json")
    link = tmp_path / "baselines" / "b.json"
    link.parent.mkdir()
    link.symlink_to(target)
    _recorded(link, [rec(median_ms=3.0)])
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert bl.load_baseline(target).cases[KEY]["median_ms"] == 3.0


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["Ctrl-C mid-write", "a full disk"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, failure):
    p = _recorded(tmp_path / "b.json")
    before = p.read_bytes()

    def fail(fd):
        raise failure

    monkeypatch.setattr(bl.os, "fsync", fail)
    with pytest.raises((KeyboardInterrupt, bl.BaselineError)) as info:
        _recorded(p, [rec(median_ms=5.0)])
    if isinstance(failure, OSError):
        assert str(info.value) == f"baseline {p}: cannot be written: No space left on device"
    assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["b.json"]


def test_a_directory_where_the_baseline_should_be_is_a_clear_error(tmp_path):
    (tmp_path / "b.json").mkdir()
    with pytest.raises(bl.BaselineError, match=r"b.json: not a regular file: it is a directory"):
        _recorded(tmp_path / "b.json")


def test_an_unwritable_folder_is_a_clear_error_naming_the_path(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(bl.tempfile, "mkstemp", refuse)
    with pytest.raises(bl.BaselineError, match=r"b.json: cannot be written: Permission denied"):
        _recorded(tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


def test_recording_leaves_no_lock_or_temporary_file_in_the_folder(tmp_path):
    _recorded(tmp_path / "b.json")
    _recorded(tmp_path / "b.json", [rec(median_ms=4.0)])
    assert os.listdir(tmp_path) == ["b.json"]


@pytest.mark.parametrize("second, error", [
    (bl.Run(by_key([rec("b")]), fp(gpu_name="NVIDIA A100")), bl.FingerprintMismatch),
    (bl.Run(by_key([rec("b", mode="sideways")]), dict(FP_H100)), bl.BaselineError),
], ids=["runs of two machines", "a run with an invalid record"])
def test_recording_several_runs_writes_nothing_when_anything_fails(tmp_path, second, error):
    p = _recorded(tmp_path / "b.json")
    before = p.read_bytes()
    with pytest.raises(error):
        bl.record_baseline(combine_runs([bl.Run(by_key([rec("b")]), dict(FP_H100)), second]).run, p)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["b.json"]


def test_recording_several_runs_stores_the_median_of_each_statistic(tmp_path):
    runs = [bl.Run(by_key([rec(median_ms=m, device_ms=m / 2)]), dict(FP_H100)) for m in (1.0, 3.0, 2.0)]
    p = tmp_path / "b.json"
    bl.record_baseline(combine_runs(runs).run, p)
    entry = bl.load_baseline(p).cases[KEY]
    assert (entry["median_ms"], entry["device_ms"], entry["runs"]) == (2.0, 1.0, 3)


# --------------------------------------------------------------------------- concurrent writers


def _record_many(path: str, who: str, n: int) -> None:
    for i in range(n):
        bl.record_baseline(bl.Run(by_key([rec(f"{who}{i}")]), dict(FP_H100)), path)


def _load_merge_save_many(path: str, who: str, n: int) -> None:
    # what the pytest plugin does: load (or start) a baseline, merge this run's cases, save
    for i in range(n):
        existing = bl.load_baseline(path) if os.path.exists(path) else None
        merged, _ = bl.merge_into(existing, by_key([rec(f"{who}{i}")]), dict(FP_H100))
        bl.save_baseline(merged, path)


@pytest.mark.parametrize("writer", [_record_many, _load_merge_save_many],
                         ids=["attnsuite record", "load-merge-save as the pytest gate does"])
def test_two_processes_recording_disjoint_cases_at_once_lose_no_case(tmp_path, writer):
    path = str(tmp_path / "b.json")
    n = 25
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=writer, args=(path, who, n)) for who in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    variants = sorted(k.split("/")[1] for k in bl.load_baseline(path).cases)
    assert variants == sorted(f"{who}{i}" for who in "ab" for i in range(n))
    assert os.listdir(tmp_path) == ["b.json"]


def test_a_save_after_another_writer_changed_the_file_keeps_both_writers_cases(tmp_path):
    p = _recorded(tmp_path / "b.json", [rec("old"), rec("gone")])
    mine = bl.load_baseline(p)
    _recorded(p, [rec("theirs")])  # another writer, after we loaded
    merged, _ = bl.merge_into(mine, by_key([rec("mine"), rec("old", median_ms=7.0)]), dict(FP_H100))
    del merged.cases[rec("gone").key]
    bl.save_baseline(merged, p)
    cases = bl.load_baseline(p).cases
    assert sorted(k.split("/")[1] for k in cases) == ["mine", "old", "theirs"]
    assert cases[rec("old").key]["median_ms"] == 7.0


# --------------------------------------------------------------------------- calibration and device time


CAL = {"mem_bandwidth_gbs": 3912.3456, "matmul_tflops": 612.98765, "device": "NVIDIA H200", "method": "triad"}


def _result_with_calibration(path: Path, records, calibration) -> Path:
    obj = result_json(records, FP_H100)
    obj["attnsuite"]["calibration"] = calibration
    path.write_text(json.dumps(obj))
    return path


def test_a_runs_calibration_is_read_recorded_rounded_and_loaded_back(tmp_path):
    run = bl.load_run(_result_with_calibration(tmp_path / "r.json", [rec()], CAL))
    assert run.calibration == CAL
    p = tmp_path / "b.json"
    bl.record_baseline(run, p)
    stored = json.loads(p.read_text())["calibration"]
    assert stored == {"mem_bandwidth_gbs": 3912.0, "matmul_tflops": 613.0, "device": "NVIDIA H200", "method": "triad"}
    assert bl.load_baseline(p).calibration == stored and bl.load_run(p).calibration == stored


def test_a_baseline_without_calibration_has_none_and_no_field(tmp_path):
    p = _recorded(tmp_path / "b.json")
    assert bl.load_baseline(p).calibration is None and "calibration" not in json.loads(p.read_text())


@pytest.mark.parametrize("calibration, outcome", [
    ({"mem_bandwidth_gbs": float("nan")}, "attnsuite.calibration.mem_bandwidth_gbs is nan, not a finite number"),
    ({"probe": {"nested": 1}}, "attnsuite.calibration.probe must be a number or text, got dict"),
    ([1, 2], "attnsuite.calibration is list, expected an object"),
    ({"error": "calibration probes failed: " + "x" * 2000}, None),
], ids=["a NaN figure", "a nested value", "a list", "a long error text (cut, accepted)"])
def test_a_result_files_calibration_is_validated(tmp_path, calibration, outcome):
    path = _result_with_calibration(tmp_path / "r.json", [rec()], calibration)
    if outcome is None:
        assert len(bl.load_run(path).calibration["error"]) == bl.CALIBRATION_TEXT_MAX
    else:
        with pytest.raises(bl.ResultFileError, match=outcome.replace(".", r"\.")):
            bl.load_run(path)


def test_device_time_fields_are_stored_rounded_like_times_and_loaded_back(tmp_path):
    r = rec(device_ms=0.12345678, device_iqr_ms=0.00123456, device_min_ms=0.1111111, device_method="cuda-graph",
            host_overhead_ms=-0.0123456)
    p = _recorded(tmp_path / "b.json", [r])
    entry = json.loads(p.read_text())["cases"][KEY]
    assert (entry["device_ms"], entry["device_iqr_ms"], entry["device_min_ms"], entry["device_method"],
            entry["host_overhead_ms"]) == (0.1235, 0.001235, 0.1111, "cuda-graph", -0.01235)
    back = bl.load_baseline(p).records()[KEY]
    assert (back.device_ms, back.device_method, back.host_overhead_ms) == (0.1235, "cuda-graph", -0.01235)


def test_the_shipped_baselines_load_and_re_save_byte_for_byte(tmp_path):
    for src in sorted(Path(__file__).resolve().parents[1].joinpath("baselines").glob("*.json")):
        if src.name == bl.THRESHOLDS_FILE:
            continue
        copy = tmp_path / src.name
        copy.write_bytes(src.read_bytes())
        os.utime(copy, (1_000_000, 1_000_000))
        bl.save_baseline(bl.load_baseline(copy))
        assert copy.read_bytes() == src.read_bytes() and copy.stat().st_mtime == 1_000_000, src.name


def test_recording_a_list_of_runs_says_to_combine_them_first(tmp_path):
    runs = [bl.Run(by_key([rec()]), dict(FP_H100))] * 2
    with pytest.raises(TypeError, match="combine several runs with attnsuite.combine.combine_runs first"):
        bl.record_baseline(runs, tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("left_by_a_failure", [True, False], ids=["skipped after its variant hung",
                                                                    "skipped for a reason of its own"])
def test_a_case_its_variants_hang_left_unrun_keeps_its_measured_entry_and_any_other_skip_replaces_it(
        tmp_path, left_by_a_failure):
    # a hung variant's other cases are skipped, not run: recorded over their ok entries, the figures of
    # every case of the variant had gone from the baseline after one transient timeout
    from attnsuite.record import NOT_RUN_AFTER

    p = _recorded(tmp_path / "b.json", [rec(median_ms=2.0)])
    extra = {NOT_RUN_AFTER: "fa-sweep/sdpa-flash/fwd/other-problem"} if left_by_a_failure else {}
    skip = rec(outcome="skipped", median_ms=None, detail="not run", extra=extra)
    baseline, summary = bl.merge_into(bl.load_baseline(p), {skip.key: skip}, FP_H100)
    if left_by_a_failure:
        assert baseline.cases[skip.key]["outcome"] == "ok" and baseline.cases[skip.key]["median_ms"] == 2.0
        assert summary.kept == [skip.key] and summary.unmeasured == [], str(summary)
    else:  # e.g. the case no longer fits this machine: that is what it now measures
        assert baseline.cases[skip.key]["outcome"] == "skipped"
        assert summary.unmeasured == [skip.key] and summary.kept == [], str(summary)


@pytest.mark.parametrize("outcome", ["crash", "timeout", "error", "numerics"])
def test_recording_a_failed_case_over_a_measured_one_keeps_the_measured_entry(tmp_path, outcome):
    # it had replaced the ok entry: its figures were lost, and the next real crash read as "same"
    p = _recorded(tmp_path / "b.json", [rec(median_ms=2.0), rec("other", median_ms=1.0)])
    failed = rec(outcome=outcome, median_ms=None, detail="killed by SIGSEGV")
    baseline, summary = bl.merge_into(bl.load_baseline(p), {failed.key: failed, **by_key([rec("other", median_ms=1.5)])},
                                      FP_H100)
    assert baseline.cases[failed.key]["outcome"] == "ok" and baseline.cases[failed.key]["median_ms"] == 2.0
    assert summary.kept == [failed.key] and "1 measured case(s) kept" in str(summary)
    assert baseline.cases[rec("other").key]["median_ms"] == 1.5  # the rest is recorded as usual
    # a new case that fails is recorded as what it is
    fresh = rec("fresh", outcome=outcome, median_ms=None)
    baseline, summary = bl.merge_into(baseline, {fresh.key: fresh}, FP_H100)
    assert baseline.cases[fresh.key]["outcome"] == outcome and summary.added == [fresh.key]
