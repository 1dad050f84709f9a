"""What ``attnsuite record``, ``check``, ``compare`` and the pytest gate take as input, and what
recording says it changed.

* A result with no case is refused (exit 2, the file named, nothing written): recording it had
  printed "0 added ... 0 removed" and still replaced the baseline's calibration, the reference of
  every case's "% of peak". A changed calibration is named in the summary line, old -> new.
* Combining runs says how many cases came from how many runs.
* Gzip-compressed files are read wherever a result or baseline is read, by their content, not name.
* A pytest-benchmark file whose benchmarks carry no attnsuite record is an input error (it had read
  as every baseline case missing, or as every case new).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from attnsuite import baseline as bl
from attnsuite import cli, fingerprint, json_files
from gatehelp import BENCH, CONFTEST, FP_CPU, FP_H100, rec, result_json, write_result

pytest_plugins = ["pytester"]

CAL_OLD = {"mem_bandwidth_gbs": 20.0, "matmul_tflops": 0.5, "matmul_dtype": "float32"}
CAL_NEW = {"mem_bandwidth_gbs": 25.0, "matmul_tflops": 0.4, "matmul_dtype": "float32"}


def run_cli(*argv: Any) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main([str(a) for a in argv], out=out), out.getvalue()


def write_run(path: Path, records: list, calibration: dict | None = None) -> Path:
    """A result file with ``records`` and, when given, the run's calibration probe."""
    obj = result_json(records)
    if calibration is not None:
        obj["attnsuite"]["calibration"] = calibration
    path.write_text(json.dumps(obj))
    return path


def recorded(tmp_path: Path, calibration: dict | None = CAL_OLD) -> Path:
    path = tmp_path / "base.json"
    code, out = run_cli("record", write_run(tmp_path / "first.json", [rec("a"), rec("b")], calibration),
                        "--baseline", path)
    assert code == 0, out
    return path


# --------------------------------------------------------------------------- item 2: empty results, calibration


def test_recording_a_result_with_no_case_is_refused_and_leaves_the_baseline_byte_for_byte(tmp_path, capsys):
    base = recorded(tmp_path)
    before = base.read_bytes()
    empty = write_run(tmp_path / "empty.json", [], CAL_NEW)
    code, out = run_cli("record", empty, "--baseline", base)
    err = capsys.readouterr().err
    assert code == 2 and "recorded" not in out
    assert f"result file {empty}: no case in it: nothing to record" in err
    assert base.read_bytes() == before  # the calibration above all: it is every case's reference


def test_recording_a_result_with_no_case_creates_no_baseline(tmp_path, capsys):
    (tmp_path / "bl").mkdir()
    code, _ = run_cli("record", write_run(tmp_path / "empty.json", []), "--dir", tmp_path / "bl")
    assert code == 2 and "no case in it" in capsys.readouterr().err
    assert not list((tmp_path / "bl").iterdir())


def test_a_baselines_folder_that_does_not_exist_is_refused_not_made(tmp_path, capsys):
    # a typo in --dir had made a new folder and recorded there, far from the baselines the gate reads
    code, out = run_cli("record", write_run(tmp_path / "r.json", [rec("a")]), "--dir", tmp_path / "baslines")
    assert code == 2 and "recorded" not in out
    assert f"--dir {tmp_path / 'baslines'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "baslines").exists()


def test_filters_that_select_no_case_are_refused_and_write_nothing(tmp_path, capsys):
    base = recorded(tmp_path)
    before = base.read_bytes()
    run = write_run(tmp_path / "r.json", [rec("a")], CAL_NEW)
    code, _ = run_cli("record", run, "--baseline", base, "--case", "nothing/*")
    assert code == 2
    assert f"--case nothing/*: no case (of 1) of result {run} passes: nothing to record" in capsys.readouterr().err
    assert base.read_bytes() == before


def test_a_recording_of_every_case_replaces_the_calibration_naming_old_and_new_figures(tmp_path):
    base = recorded(tmp_path)
    code, out = run_cli("record", write_run(tmp_path / "r.json", [rec("a"), rec("b")], CAL_NEW), "--baseline", base)
    assert code == 0, out
    assert "calibration replaced: mem_bandwidth_gbs 20 -> 25, matmul_tflops 0.5 -> 0.4" in out
    assert json.loads(base.read_text())["calibration"]["mem_bandwidth_gbs"] == 25.0


@pytest.mark.parametrize("how, argv, replaced", [
    ("a partial refresh", [], False),
    ("a refresh that prunes the rest", ["--prune", "--case", "fa-sweep/*"], True),
], ids=["partial refresh keeps it", "pruning the rest replaces it"])
def test_the_calibration_is_replaced_only_by_a_recording_that_leaves_no_case_of_another(tmp_path, how, argv, replaced):
    # refreshing one case from another machine had put that machine's probe over every case of the file
    base = recorded(tmp_path)
    code, out = run_cli("record", write_run(tmp_path / "r.json", [rec("a")], CAL_NEW), "--baseline", base, *argv)
    assert code == 0, out
    stored = json.loads(base.read_text())
    assert stored["calibration"]["mem_bandwidth_gbs"] == (25.0 if replaced else 20.0), how
    if replaced:
        assert "calibration replaced" in out and sorted(stored["cases"]) == [rec("a").key]
    else:
        assert "calibration kept: 1 case of 2 was recorded by other runs (this run's: mem_bandwidth_gbs 25, " \
               "matmul_tflops 0.4)" in out


def test_a_run_whose_failures_leave_measured_entries_in_place_keeps_the_calibration(tmp_path):
    # every case failed numerics in the new run, so both measured entries stayed: they are the old
    # recording's, and its probe had still been replaced by the failing run's
    base = recorded(tmp_path)
    failing = [rec(n, outcome="numerics", detail="max abs err 0.5") for n in ("a", "b")]
    code, out = run_cli("record", write_run(tmp_path / "r.json", failing, CAL_NEW), "--baseline", base)
    assert code == 0, out
    assert json.loads(base.read_text())["calibration"]["mem_bandwidth_gbs"] == 20.0, out
    assert "calibration kept: 2 cases of 2 were recorded by other runs" in out, out


def test_a_recording_that_keeps_the_calibration_says_nothing_of_it(tmp_path):
    base = recorded(tmp_path)
    _, same = run_cli("record", write_run(tmp_path / "r.json", [rec("a")], CAL_OLD), "--baseline", base)
    _, none = run_cli("record", write_run(tmp_path / "n.json", [rec("a")]), "--baseline", base)
    assert "calibration" not in same and "calibration" not in none


# --------------------------------------------------------------------------- item 3: combining runs


def test_combining_runs_says_how_many_cases_came_from_how_many_runs(tmp_path):
    runs = [write_result(tmp_path / "r0.json", [rec("all"), rec("one"), rec("two")]),
            write_result(tmp_path / "r1.json", [rec("all", median_ms=1.01)]),
            write_result(tmp_path / "r2.json", [rec("all", median_ms=1.02)])]
    code, out = run_cli("record", *runs, "--baseline", tmp_path / "b.json")
    assert code == 0, out
    assert "combined 3 runs: 1 case from 3 runs, 2 from 1 run; per case, the median of each timing statistic" in out


@pytest.mark.parametrize("how", ["same-path", "copy"])
def test_one_run_given_twice_is_refused_not_counted_twice(tmp_path, capsys, how):
    # "combined 3 runs" of two, with the spread understated, had been recorded as a 3-run median
    one = write_result(tmp_path / "r1.json", [rec("all")])
    again = one
    if how == "copy":
        again = tmp_path / "copy.json"
        again.write_bytes(one.read_bytes())
    other = write_result(tmp_path / "r2.json", [rec("all", median_ms=1.02)])
    code, out = run_cli("record", one, again, other, "--baseline", tmp_path / "b.json")
    err = capsys.readouterr().err
    assert code == 2 and "recorded" not in out and not (tmp_path / "b.json").exists()
    assert f"{one} and {again} are {'the same file' if how == 'same-path' else 'identical files'}" in err


@pytest.mark.parametrize("how", ["gzipped", "re-saved"])
def test_one_run_in_other_bytes_is_refused_by_its_run_id(tmp_path, capsys, how):
    # a gzipped or re-saved copy is other bytes: it had been combined as a second run (an outside
    # tester's trial: "combined 3 runs" of two, r2's min kept as the bar)
    one = write_result(tmp_path / "r1.json", [rec("all")])
    obj = json.loads(one.read_text())
    obj.setdefault("attnsuite", {})["run_id"] = "0123abcd"
    one.write_text(json.dumps(obj, indent=1))
    again = tmp_path / ("r1.json.gz" if how == "gzipped" else "r1-saved.json")
    again.write_bytes(gzip.compress(one.read_bytes()) if how == "gzipped" else json.dumps(obj).encode())
    other = write_result(tmp_path / "r2.json", [rec("all", median_ms=1.02)])
    code, out = run_cli("record", one, again, other, "--baseline", tmp_path / "b.json")
    err = capsys.readouterr().err
    assert code == 2 and "recorded" not in out and not (tmp_path / "b.json").exists(), (out, err)
    assert f"{one} and {again} hold the same run (run_id 0123abcd): each run is combined once" in err, err


def test_cases_by_run_count_orders_by_runs_and_counts_each_case_once():
    runs = [bl.Run({r.key: r for r in recs}, None) for recs in
            ([rec("a"), rec("b"), rec("c")], [rec("a"), rec("b")], [rec("a")])]
    assert bl.cases_by_run_count(runs) == "1 case from 3 runs, 1 from 2 runs, 1 from 1 run"


# --------------------------------------------------------------------------- item 4: gzip wherever a file is read


def gz(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes()))
    return dst


@pytest.mark.parametrize("name", ["b.json.gz", "b.json"], ids=["named .gz", "named .json"])
def test_check_reads_a_gzip_compressed_baseline_whatever_its_name(tmp_path, name):
    (tmp_path / "packed").mkdir()
    packed = gz(recorded(tmp_path), tmp_path / "packed" / name)
    code, out = run_cli("check", packed)
    assert code == 0 and f"ok {packed}: 2 cases" in out


def test_record_into_a_gzip_compressed_baseline_reads_it_and_keeps_its_other_cases(tmp_path):
    packed = gz(recorded(tmp_path), tmp_path / "b.json.gz")
    code, out = run_cli("record", write_result(tmp_path / "r.json", [rec("a", median_ms=2.0)]), "--baseline", packed)
    assert code == 0, out
    assert "0 added, 1 updated" in out
    assert set(bl.load_baseline(packed).cases) == {rec("a").key, rec("b").key}


def is_gzip(path: Path) -> bool:
    return path.read_bytes().startswith(bl.GZIP_MAGIC)


@pytest.mark.parametrize("name, packed", [("b.json.gz", True), ("b.json", True), ("b.json", False)],
                         ids=["gzipped b.json.gz stays gzipped", "gzipped b.json stays gzipped",
                              "plain b.json stays plain"])
def test_record_writes_a_baseline_back_in_the_format_it_had(tmp_path, monkeypatch, name, packed):
    # a refresh of a .json.gz had written it back as plain JSON (an outside tester's trial)
    plain = recorded(tmp_path)
    target = gz(plain, tmp_path / name) if packed else tmp_path / name
    if not packed:
        target.write_bytes(plain.read_bytes())
    writes: list[tuple[str, bool]] = []
    store_write = bl.atomic_write_text

    def spy(path, text):  # the store's one atomic writer does the write
        writes.append((str(path), isinstance(text, bytes) and text.startswith(bl.GZIP_MAGIC)))
        return store_write(path, text)

    monkeypatch.setattr(bl, "atomic_write_text", spy)
    code, out = run_cli("record", write_result(tmp_path / "r.json", [rec("a", median_ms=2.0)]), "--baseline", target)
    assert code == 0 and "0 added, 1 updated" in out, out
    assert writes == [(str(target), packed)]
    assert is_gzip(target) == packed
    assert bl.load_baseline(target).cases[rec("a").key]["median_ms"] == 2.0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_record_makes_a_new_baseline_named_json_gz_gzip_compressed(tmp_path):
    target = tmp_path / "new.json.gz"
    code, out = run_cli("record", write_result(tmp_path / "r.json", [rec("a")]), "--baseline", target)
    assert code == 0, out
    assert is_gzip(target) and set(bl.load_baseline(target).cases) == {rec("a").key}


def test_recording_an_unchanged_run_into_a_gzipped_baseline_leaves_the_file_untouched(tmp_path):
    result = write_result(tmp_path / "r.json", [rec("a"), rec("b")])
    target = tmp_path / "b.json.gz"
    assert run_cli("record", result, "--baseline", target)[0] == 0
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    code, out = run_cli("record", result, "--baseline", target)
    assert code == 0 and "0 added, 0 updated, 2 unchanged" in out, out
    assert (target.read_bytes(), target.stat().st_mtime_ns) == before


def test_the_lookup_finds_a_machines_gzipped_baseline_by_its_id_and_record_keeps_writing_into_it(tmp_path):
    # a <id>.json.gz in the baselines folder had been passed over: the lookup named no baseline (or
    # called it a fallback) and `record --dir` wrote a plain <id>.json beside it
    folder = tmp_path / "baselines"
    folder.mkdir()
    result = write_result(tmp_path / "r.json", [rec("a")])
    packed = folder / bl.baseline_names_for(FP_H100)[1]
    assert packed.name.endswith(".json.gz")
    assert run_cli("record", result, "--baseline", packed)[0] == 0
    found = bl.find_baseline(FP_H100, folder)
    assert found.path == packed and not found.fallback, found.message
    assert bl.baseline_files(folder) == [packed]
    code, out = run_cli("record", write_result(tmp_path / "r2.json", [rec("a"), rec("b")]), "--dir", folder)
    assert code == 0, out
    assert sorted(p.name for p in folder.iterdir()) == [packed.name]
    assert is_gzip(packed) and set(bl.load_baseline(packed).cases) == {rec("a").key, rec("b").key}


def test_a_plain_baseline_wins_over_a_gzipped_one_of_the_same_machine(tmp_path):
    folder = tmp_path / "baselines"
    folder.mkdir()
    plain, packed = (folder / name for name in bl.baseline_names_for(FP_H100))
    for target in (packed, plain):
        assert run_cli("record", write_result(tmp_path / "r.json", [rec("a")]), "--baseline", target)[0] == 0
    assert bl.find_baseline(FP_H100, folder).path == plain == bl.baseline_path_for(FP_H100, folder)


def test_a_gzip_compressed_result_named_json_is_read_by_compare_and_record(tmp_path):
    base = recorded(tmp_path)
    packed = gz(write_result(tmp_path / "plain.json", [rec("a"), rec("b")]), tmp_path / "run.json")
    code, out = run_cli("compare", base, packed)
    assert code == 0, out
    code, out = run_cli("record", packed, "--baseline", base)
    assert code == 0 and "0 added, 0 updated, 2 unchanged" in out


def test_a_broken_gzip_file_is_named_whatever_its_name(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_bytes(gzip.compress(recorded(tmp_path).read_bytes())[:-12])  # cut short
    for loader, error in ((bl.load_baseline, bl.BaselineError), (bl.load_run, bl.ResultFileError)):
        with pytest.raises(error, match=f"{broken}: not a readable gzip file"):
            loader(broken)


def test_a_gzip_file_that_decompresses_past_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(json_files, "MAX_FILE_BYTES", 1000)  # the one reader's limit
    bomb = tmp_path / "bomb.json"
    bomb.write_bytes(gzip.compress(b" " * 5000))
    with pytest.raises(bl.BaselineError, match=f"{bomb}: more than .* MiB once decompressed"):
        bl.load_baseline(bomb)


def test_the_pytest_gate_reads_a_gzip_compressed_attn_baseline(pytester, monkeypatch):
    monkeypatch.setattr(fingerprint, "machine_info", lambda device="cpu": dict(FP_CPU))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bench=BENCH)
    case = dict(workload="tiny", variant="alpha", mode="fwd", problem="b1-q256-h2-d64-causal-fp32-cpu",
                outcome="ok", median_ms=2.0, iqr_ms=0.01, samples=20, backend="math", timer="perf_counter")
    (pytester.path / "cases.json").write_text(json.dumps([case]))
    (pytester.path / "fingerprint.json").write_text(json.dumps(FP_CPU))
    plain = pytester.path / "plain.json"
    baseline, _ = bl.merge_into(None, {rec(**case).key: rec(**case)}, FP_CPU)
    bl.save_baseline(baseline, plain)
    packed = gz(plain, pytester.path / "b.json.gz")
    res = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-only", f"--attn-baseline={packed}")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines([f"baseline {packed} (named with --attn-baseline)", "pass (1 same)"])


THRESHOLDS = {"version": 1, "device": {"cpu": {"time_floor": 0.5}}}


def gate_json_of(tmp_path: Path, result: Path, base: Path) -> Path:
    """The gate JSON of ``result`` judged against ``base`` (what ``compare --format json`` prints)."""
    code, out = run_cli("compare", base, result, "--format", "json")
    assert code == 0, out
    path = tmp_path / "gate-plain.json"
    path.write_text(out)
    return path


@pytest.mark.parametrize("how", ["compare --thresholds", "thresholds.json beside the baseline", "check"])
def test_a_gzip_compressed_thresholds_file_is_read_like_every_json_input(tmp_path, how):
    # it had been refused with a raw "'utf-8' codec can't decode byte 0x8b" (an outside tester's trial)
    base = recorded(tmp_path)
    plain = tmp_path / "plain-thresholds.json"
    plain.write_text(json.dumps(THRESHOLDS))
    if how == "compare --thresholds":
        packed = gz(plain, tmp_path / "t.json.gz")
        code, out = run_cli("compare", base, base, "--thresholds", packed)
    elif how == "thresholds.json beside the baseline":
        packed = gz(plain, tmp_path / bl.THRESHOLDS_FILE)
        code, out = run_cli("compare", base, base)
    else:
        packed = gz(plain, tmp_path / bl.THRESHOLDS_FILE)
        code, out = run_cli("check", packed)
    assert code == 0, out
    assert (f"ok {packed}: thresholds" if how == "check" else f"thresholds from {packed}") in out, out


@pytest.mark.parametrize("where", ["beside the baseline", "given with --thresholds"])
@pytest.mark.parametrize("kind, words", [("a folder", "it is a directory"), ("a FIFO", "it is a FIFO")])
def test_a_thresholds_name_that_is_not_a_regular_file_is_refused_saying_what_it_is(tmp_path, capsys, where,
                                                                                    kind, words):
    # beside the baseline it had been passed over without a word for the repository's thresholds;
    # given explicitly it had read only "not a file"
    base = recorded(tmp_path)
    path = tmp_path / bl.THRESHOLDS_FILE
    if kind == "a folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    args = ("--thresholds", path) if where == "given with --thresholds" else ()
    code, out = run_cli("compare", base, base, *args)
    err = capsys.readouterr().err
    assert code == 2 and "thresholds from" not in out, out
    assert f"{path}: not a regular file: {words}" in err, err


def test_a_gzip_compressed_gate_json_is_read_by_report_html(tmp_path):
    base = recorded(tmp_path)
    result = write_result(tmp_path / "run.json", [rec("a"), rec("b")])
    packed = gz(gate_json_of(tmp_path, result, base), tmp_path / "gate.json.gz")
    code, out = run_cli("report", result, "--html", tmp_path / "r.html", "--gate-json", packed)
    assert code == 0 and (tmp_path / "r.html").is_file(), out


def test_a_gzip_compressed_gate_json_is_read_by_ab_cases_from(tmp_path):
    from attnsuite import ab

    base = recorded(tmp_path)
    result = write_result(tmp_path / "run.json", [rec("a"), rec("b")])
    packed = gz(gate_json_of(tmp_path, result, base), tmp_path / "gate.json.gz")
    assert ab.cases_from_gate_json(packed).keys == []


@pytest.mark.parametrize("where", ["--thresholds", "--gate-json"])
def test_a_broken_gzip_thresholds_or_gate_json_is_named_as_gzip_not_a_codec_error(tmp_path, capsys, where):
    base = recorded(tmp_path)
    broken = tmp_path / "cut.json.gz"
    broken.write_bytes(gzip.compress(json.dumps(THRESHOLDS).encode())[:-12])  # cut short
    if where == "--thresholds":
        code, _ = run_cli("compare", base, base, "--thresholds", broken)
    else:
        result = write_result(tmp_path / "run.json", [rec("a"), rec("b")])
        code, _ = run_cli("report", result, "--html", tmp_path / "r.html", "--gate-json", broken)
    err = capsys.readouterr().err
    assert code == 2 and f"{broken}: not a readable gzip file" in err and "codec" not in err, err


# --------------------------------------------------------------------------- item 5: files of another suite


def foreign_file(path: Path, n: int = 3) -> Path:
    """A pytest-benchmark file of another suite: benchmarks, no ``attnsuite`` object, empty extra_info."""
    obj = result_json([rec(f"v{i}") for i in range(n)], fingerprint=None)
    for bench in obj["benchmarks"]:
        bench["extra_info"] = {}
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("side", ["new", "old"])
def test_compare_refuses_a_result_file_without_attnsuite_records_on_either_side(tmp_path, capsys, side):
    base, other = recorded(tmp_path), foreign_file(tmp_path / "X.json")
    code, out = run_cli("compare", *((base, other) if side == "new" else (other, base)))
    assert code == 2 and "regression" not in out and "new" not in out
    assert (f"result file {other}: it has 3 benchmarks and no attnsuite record (a pytest-benchmark file from "
            "another suite?)") in capsys.readouterr().err


def test_record_refuses_a_result_file_without_attnsuite_records(tmp_path, capsys):
    code, _ = run_cli("record", foreign_file(tmp_path / "X.json"), "--baseline", tmp_path / "b.json")
    assert code == 2 and "3 benchmarks and no attnsuite record" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_a_file_with_some_foreign_benchmarks_is_read_and_record_counts_them(tmp_path):
    obj = result_json([rec("a")])
    obj["benchmarks"].append({"name": "test_other", "extra_info": {}})
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(obj))
    run = bl.load_run(mixed)
    assert set(run.records) == {rec("a").key} and run.foreign == 1
    code, out = run_cli("record", mixed, "--baseline", tmp_path / "b.json")
    assert code == 0 and f"note: {mixed}: 1 benchmark(s) without an attnsuite record left out" in out


def test_compare_notes_the_benchmarks_of_a_mixed_file_that_it_did_not_judge(tmp_path):
    obj = result_json([rec("a")])
    obj["benchmarks"].append({"name": "test_other", "extra_info": {}})
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(obj))
    code, out = run_cli("compare", mixed, mixed)
    assert code == 0 and f"note: 1 benchmark(s) of {mixed} carry no attnsuite record: not judged" in out


@pytest.mark.parametrize("low, high", [("min_ms", "median_ms"), ("device_min_ms", "device_ms")])
def test_a_fastest_sample_above_its_median_is_refused_in_results_and_baselines(tmp_path, low, high):
    # `attnsuite check` had accepted min_ms 2.0 beside median_ms 1.0: the gate would judge one and show another
    bad = rec("a", **{low: 2.0, high: 1.0})
    path = write_result(tmp_path / "r.json", [bad])
    with pytest.raises(bl.ResultFileError, match=f"{low} 2 is above {high} 1"):
        bl.load_run(path)
    entry = bl.entry_from_record(rec("a"))
    entry.update({low: 2.0, high: 1.0})
    assert any(f"{low} 2 is above {high} 1" in p for p in bl.validate_entry(bad.key, entry))


@pytest.mark.parametrize("meta, words", [
    ({"inject_slowdown": {"explicit": 3.0}}, "--attn-inject-slowdown explicit=3.0 (a simulated slowdown)"),
    ({"mem_cap_bytes": 1048576}, "--attn-mem-cap 1048576 bytes (a simulated memory limit)"),
], ids=["injected-slowdown", "memory-cap"])
def test_a_simulated_run_is_never_recorded(tmp_path, capsys, meta, words):
    # a run slowed 3x had been recorded as "1 updated": every later slowdown under 4x read as same
    base = recorded(tmp_path)
    before = base.read_bytes()
    obj = result_json([rec("a")])
    obj["attnsuite"].update(meta)
    run = tmp_path / "sim.json"
    run.write_text(json.dumps(obj))
    code, out = run_cli("record", run, "--baseline", base)
    err = capsys.readouterr().err
    assert code == 2 and "recorded" not in out and words in err and "figures are not the code's own" in err
    assert base.read_bytes() == before


@pytest.mark.parametrize("outcome", ["skipped", "oom"])
def test_measured_entries_replaced_by_an_unmeasured_outcome_are_named(tmp_path, outcome):
    base = recorded(tmp_path)
    extra = {"detail": "declared"} if outcome == "skipped" else {"oom_bytes": 1 << 30}
    run = write_run(tmp_path / "now.json", [rec("a", outcome=outcome, min_ms=None, median_ms=None, iqr_ms=None,
                                                device_ms=None, device_min_ms=None, device_iqr_ms=None,
                                                peak_mem_bytes=None, **extra)])
    code, out = run_cli("record", run, "--baseline", base)
    assert code == 0, out
    assert "1 measured case(s) now recorded without figures, as this run's skip or out-of-memory" in out


def test_a_failed_probes_figure_is_not_stored_as_the_reference():
    # a zero or negative probe figure would be refused by `check` and read back as every case's % of peak
    assert bl.stable_calibration({"matmul_tflops": 0.0, "mem_bandwidth_gbs": 12.25, "device": "cpu"}) == \
        {"mem_bandwidth_gbs": 12.25, "device": "cpu"}


def test_of_several_runs_the_simulated_one_is_named_alone(tmp_path, capsys):
    # "r0.json + r1.json + r2.json was run with --attn-inject-slowdown": only r2.json had been
    base = recorded(tmp_path)
    paths = []
    for i in range(3):
        obj = result_json([rec("a", min_ms=1.0 - i / 100, device_min_ms=1.0 - i / 100)])
        if i == 2:
            obj["attnsuite"]["inject_slowdown"] = {"explicit": 3.0}
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(obj))
    code, out = run_cli("record", *paths, "--baseline", base)
    err = capsys.readouterr().err
    assert code == 2 and f"{paths[2]} was run with --attn-inject-slowdown explicit=3.0" in err, err
    assert "r0.json +" not in err
    assert "combined" not in out, out  # refused before the combining's report, which had come first


@pytest.mark.parametrize("damage", [None, {}, "text"], ids=["null", "empty", "text"])
def test_one_of_the_suites_own_entries_without_its_record_is_an_error_naming_it(tmp_path, capsys, damage):
    # "extra_info": null had been counted as another suite's benchmark and its case judged "missing"
    base = recorded(tmp_path)
    obj = result_json([rec("a"), rec("b")])
    obj["benchmarks"][1]["name"] = "test_workload[fa-sweep/b/fwd/p]"
    obj["benchmarks"][1]["fullname"] = "bench/test_workloads.py::test_workload[fa-sweep/b/fwd/p]"
    obj["benchmarks"][1]["extra_info"] = damage
    run = tmp_path / "damaged.json"
    run.write_text(json.dumps(obj))
    code, out = run_cli("compare", base, run)
    err = capsys.readouterr().err
    assert code == 2 and "regression" not in out, out
    assert f"result file {run}: benchmark bench/test_workloads.py::test_workload[fa-sweep/b/fwd/p]: its extra_info is" \
        in err and "not the attnsuite record" in err, err


def interrupted(path: Path, records: list) -> Path:
    """A result file from a session stopped before its end (as the gate writes one)."""
    obj = result_json(records)
    obj["attnsuite"]["interrupted"] = "interrupted after 1 of 3 selected cases; 2 did not run"
    obj["attnsuite"]["scope"] = {"keys": [r.key for r in records]}
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("options, recorded_b", [
    ((), False),  # refused: a partial run, said how to take its finished cases anyway
    (("--allow-interrupted",), True),  # its finished case recorded, the others kept
    (("--allow-interrupted", "--prune"), False),  # prune would read every unreached case as removed
])
def test_a_stopped_run_is_recorded_only_when_allowed_and_never_pruned_from(tmp_path, capsys, options, recorded_b):
    base = recorded(tmp_path)
    before = json.loads(base.read_text())
    stopped = interrupted(tmp_path / "stopped.json", [rec("b", median_ms=2.5)])
    code, out = run_cli("record", stopped, "--baseline", base, *options)
    err = capsys.readouterr().err
    after = json.loads(base.read_text())
    if recorded_b:
        assert code == 0, err
        assert after["cases"][rec("b").key]["median_ms"] == 2.5
        assert after["cases"][rec("a").key] == before["cases"][rec("a").key]  # not reached: kept as it was
    else:
        assert code == 2 and after == before, (out, err)
        assert f"{stopped}: the session that wrote it was interrupted after 1 of 3 selected cases" in err, err
        assert ("--prune would remove every case it did not reach" if "--prune" in options
                else "pass --allow-interrupted to record the cases it finished") in err, err


def test_a_filtered_recording_counts_and_names_only_the_cases_it_records(tmp_path):
    # a Triton-only refresh from seven runs had said "81 cases from 1 run" and named flex cases among
    # its widely spread ones: cases of the runs that the --case filter did not record
    def timed(variant: str, ms: float):
        return rec(variant, median_ms=ms, min_ms=ms)

    # "other" in two runs 50% apart, "kept" in three runs 60% apart: both widely spread
    runs = [write_result(tmp_path / f"r{i}.json", [timed("kept", 1.0 + 0.3 * i), timed("other", 1.0 + 0.5 * i)]
                         [: 2 if i < 2 else 1]) for i in range(3)]
    code, out = run_cli("record", *runs, "--baseline", tmp_path / "b.json", "--case", "*/other/*")
    assert code == 0, out
    assert "combined 3 runs: 1 case from 2 runs (of the cases the filters select)" in out, out
    assert "apart: fa-sweep/other/fwd/" in out and "kept" not in out, out
    code, out = run_cli("record", *runs, "--baseline", tmp_path / "all.json")  # no filter: every case
    assert code == 0 and "combined 3 runs: 1 case from 3 runs, 1 from 2 runs;" in out, out
    assert "apart: fa-sweep/kept/fwd/" in out and "apart: fa-sweep/other/fwd/" in out, out


def test_refreshing_a_three_run_entry_from_one_run_says_its_spread_is_gone(tmp_path):
    # the entry's "runs": 3 and instance_spread (which widened its band) had been dropped without a word
    base = tmp_path / "base.json"
    runs = [write_run(tmp_path / f"r{i}.json", [rec("a", median_ms=1.0 + i / 20, min_ms=1.0 + i / 20), rec("b")])
            for i in range(3)]
    assert run_cli("record", *runs, "--baseline", base)[0] == 0
    code, out = run_cli("record", write_run(tmp_path / "one.json", [rec("a", median_ms=1.2, min_ms=1.2)]),
                        "--baseline", base)
    assert code == 0, out
    assert f"1 case(s) recorded from more runs before now hold fewer (e.g. {rec('a').key}: 3 -> 1)" in out, out
    _, again = run_cli("record", *runs, "--baseline", base)  # from three runs again: nothing to say
    assert "recorded from more runs before" not in again, again


@pytest.mark.parametrize("content, said", [
    ({"version": 1, "device": {"cpu": {"time_floor": 0.5}}},
     "this is a thresholds file (the gate's noise floors, --attn-thresholds), not a baseline"),
    ({"compared": True, "failed": False, "cases": []},
     "this is a gate JSON (a run's verdicts, --attn-gate-json), not a baseline"),
], ids=["thresholds", "gate-json"])
def test_another_kind_of_file_given_as_the_baseline_is_named_by_its_kind(tmp_path, capsys, content, said):
    # record --baseline thresholds.json had said '"schema" is None'
    other = tmp_path / "other.json"
    other.write_text(json.dumps(content))
    before = other.read_bytes()
    code, _ = run_cli("record", write_run(tmp_path / "r.json", [rec("a")]), "--baseline", other)
    err = capsys.readouterr().err
    assert code == 2 and said in err and other.read_bytes() == before, err


BASELINE_AS_THRESHOLDS = ("this looks like an attnsuite baseline, not a thresholds file: its keys ['calibration', "
                          "'cases', 'fingerprint', 'schema'] are a baseline's (\"schema\": \"attnsuite-baseline\"); "
                          "a baseline is given with --attn-baseline (pytest), --baseline (attnsuite report) or as "
                          "attnsuite compare's OLD")


@pytest.mark.parametrize("how", ["compare --thresholds", "thresholds.json beside the baseline", "check"])
def test_a_baseline_given_as_the_thresholds_file_is_named_a_baseline_not_unknown_sections(tmp_path, capsys, how):
    # it had been told "unknown sections ['calibration', 'cases', 'fingerprint', 'schema']" (an outside tester's trial)
    base = recorded(tmp_path)
    if how == "compare --thresholds":
        given = base
        code, _ = run_cli("compare", base, base, "--thresholds", given)
    else:
        (tmp_path / "ref").mkdir()
        given = tmp_path / "ref" / bl.THRESHOLDS_FILE
        given.write_bytes(base.read_bytes())
        reference = tmp_path / "ref" / "b.json"  # the lookup reads thresholds.json beside the reference
        reference.write_bytes(base.read_bytes())
        code, _ = run_cli(*(("check", given) if how == "check" else ("compare", reference, base)))
    err = capsys.readouterr().err
    assert code == 2 and f"thresholds {given}: {BASELINE_AS_THRESHOLDS}" in err and "unknown sections" not in err, err


def test_a_baseline_given_to_attn_thresholds_is_named_a_baseline(pytester, tmp_path):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bench=BENCH)
    base = recorded(tmp_path)
    res = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-only", f"--attn-thresholds={base}")
    assert res.ret != 0
    assert f"attnsuite gate: thresholds {base}: {BASELINE_AS_THRESHOLDS}" in res.stderr.str(), res.stderr.str()
