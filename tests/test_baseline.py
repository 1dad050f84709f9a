"""The baseline store: layout, rounding, validation with clear errors, atomic writes, merging, fingerprints."""

from __future__ import annotations

import json
import re
import os

import pytest

from attnsuite import baseline as bl
from gatehelp import FP_CPU, FP_H100, fp, rec, write_result


def _recorded(tmp_path, records, fingerprint=FP_H100, name="b.json"):
    path = tmp_path / name
    run = bl.load_run(write_result(tmp_path / "r.json", records, fingerprint))
    bl.record_baseline(run, path)
    return path


def test_baseline_file_has_sorted_keys_one_field_per_line_and_a_trailing_newline(tmp_path):
    path = _recorded(tmp_path, [rec("b"), rec("a")])
    text = path.read_text()
    obj = json.loads(text)
    assert text == json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    assert obj["schema"] == "attnsuite-baseline" and obj["version"] == 1
    assert list(obj["cases"]) == sorted(obj["cases"])
    assert obj["fingerprint"]["id"] == FP_H100["id"]


def test_times_are_rounded_to_4_significant_digits_and_bytes_to_whole_bytes(tmp_path):
    path = _recorded(tmp_path, [rec(median_ms=1.23456789, iqr_ms=0.0123456, tflops=612.3456, peak_mem_bytes=1234.6)])
    (entry,) = json.loads(path.read_text())["cases"].values()
    assert entry["median_ms"] == 1.235 and entry["iqr_ms"] == 0.01235 and entry["tflops"] == 612.3
    assert entry["peak_mem_bytes"] == 1235 and isinstance(entry["peak_mem_bytes"], int)


def test_run_to_run_noise_without_a_verdict_is_left_out_of_the_baseline(tmp_path):
    path = _recorded(tmp_path, [rec(first_call_ms=812.0, mask_build_ms=3.1, min_ms=0.9, detail="note",
                                    extra={"launch": "x", "tier": "full"})])
    (entry,) = json.loads(path.read_text())["cases"].values()
    assert not {"first_call_ms", "mask_build_ms", "detail", "extra", "launch"} & set(entry)
    assert entry["tier"] == "full"
    assert entry["min_ms"] == 0.9  # kept: the gate's time statistic (verdict.py)


def test_re_recording_an_unchanged_run_with_small_jitter_changes_few_lines(tmp_path):
    recs = [rec(f"v{i}", median_ms=1.0 + i / 7, iqr_ms=0.004) for i in range(20)]
    path = _recorded(tmp_path, recs)
    before = path.read_text().splitlines()
    jitter = [rec(r.variant, median_ms=r.median_ms * (1.00001 if i % 2 else 1.0), iqr_ms=0.004) for i, r in enumerate(recs)]
    bl.record_baseline(bl.load_run(write_result(tmp_path / "r2.json", jitter)), path)
    after = path.read_text().splitlines()
    changed = sum(a != b for a, b in zip(before, after))
    assert len(before) == len(after) and changed == 0


def test_recording_one_workload_leaves_the_other_workloads_untouched(tmp_path):
    path = _recorded(tmp_path, [rec("a", workload="w1"), rec("b", workload="w2")])
    other_before = json.loads(path.read_text())["cases"]["w2/b/fwd/" + rec().problem]
    run = bl.load_run(write_result(tmp_path / "r2.json", [rec("a", workload="w1", median_ms=2.0),
                                                          rec("b", workload="w2", median_ms=9.0)]))
    summary = bl.record_baseline(run, path, workloads=["w1"])
    cases = json.loads(path.read_text())["cases"]
    assert cases["w1/a/fwd/" + rec().problem]["median_ms"] == 2.0
    assert cases["w2/b/fwd/" + rec().problem] == other_before
    assert (summary.updated, summary.added, summary.removed) == (["w1/a/fwd/" + rec().problem], [], [])


def test_recording_one_case_by_pattern_leaves_the_other_cases_untouched(tmp_path):
    path = _recorded(tmp_path, [rec("a"), rec("b")])
    run = bl.load_run(write_result(tmp_path / "r2.json", [rec("a", median_ms=3.0), rec("b", median_ms=3.0)]))
    bl.record_baseline(run, path, cases=["*/a/*"])
    cases = bl.load_baseline(path).records()
    assert {k.split("/")[1]: r.median_ms for k, r in cases.items()} == {"a": 3.0, "b": 1.0}


def test_a_partial_run_adds_and_updates_but_never_drops_cases_unless_pruned(tmp_path):
    path = _recorded(tmp_path, [rec("a"), rec("a", mode="bwd")])
    run = bl.load_run(write_result(tmp_path / "r2.json", [rec("a"), rec("c")]))
    s = bl.record_baseline(run, path)
    assert sorted(k.split("/", 1)[1][:5] for k in bl.load_baseline(path).cases) == ["a/bwd", "a/fwd", "c/fwd"]
    assert (len(s.added), len(s.unchanged), len(s.removed)) == (1, 1, 0)
    s = bl.record_baseline(run, path, prune=True)
    assert sorted(k.split("/", 1)[1][:5] for k in bl.load_baseline(path).cases) == ["a/fwd", "c/fwd"]
    assert [k.split("/", 1)[1][:5] for k in s.removed] == ["a/bwd"]


def test_out_of_memory_and_failing_cases_are_stored_with_their_outcome(tmp_path):
    path = _recorded(tmp_path, [rec("m", outcome="oom", median_ms=None, oom_bytes=3 << 30, detail="CUDA OOM " * 100),
                                rec("n", outcome="numerics", detail="dq err 3.1 > 0.02")])
    recs = {r.variant: r for r in bl.load_baseline(path).records().values()}
    assert recs["m"].outcome == "oom" and recs["m"].oom_bytes == 3 << 30 and len(recs["m"].detail) <= 300
    assert recs["n"].outcome == "numerics" and recs["n"].detail == "dq err 3.1 > 0.02"


def test_write_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = _recorded(tmp_path, [rec()])
    before = path.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bl.os, "replace", boom)
    b = bl.load_baseline(path)
    b.cases = {}
    with pytest.raises(bl.BaselineError, match=f"{path}: cannot be written: disk full"):
        bl.save_baseline(b, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _write(tmp_path, text):
    p = tmp_path / "baseline.json"
    p.write_text(text)
    return p


def _valid(tmp_path):
    return json.loads(_recorded(tmp_path, [rec()], name="good.json").read_text())


@pytest.mark.parametrize("doctor, needle", [
    (lambda t, o: "", "file is empty (truncated?)"),
    (lambda t, o: t[: len(t) // 2], "not valid JSON (truncated?)"),
    (lambda t, o: t.replace('"cases"', '"cases" oops', 1), "not valid JSON (corrupt?)"),
    (lambda t, o: json.dumps([1, 2]), "top level is list"),
    (lambda t, o: json.dumps({**o, "version": 0}), "schema version 0 is not 1: re-record"),
    (lambda t, o: json.dumps({**o, "version": 7}), "schema version 7 is newer"),
    (lambda t, o: json.dumps({k: v for k, v in o.items() if k != "fingerprint"}), "missing field \"fingerprint\""),
    (lambda t, o: json.dumps({k: v for k, v in o.items() if k != "cases"}), "missing field \"cases\""),
    (lambda t, o: json.dumps({**o, "cases": list(o["cases"].values())}),
     "field \"cases\" is an array, expected an object of case key to entry"),
    (lambda t, o: json.dumps({**o, "fingerprint": None}), "field \"fingerprint\" is null, expected an object"),
    (lambda t, o: json.dumps({**o, "schema": "other"}), "not an attnsuite baseline"),
    (lambda t, o: json.dumps({"benchmarks": []}), "this is a pytest-benchmark result file"),
    (lambda t, o: json.dumps({**o, "cases": {k: {kk: vv for kk, vv in e.items() if kk != "outcome"}
                                             for k, e in o["cases"].items()}}), "missing fields ['outcome']"),
    (lambda t, o: json.dumps({**o, "cases": {k: {**e, "median_ms": "fast"} for k, e in o["cases"].items()}}),
     "median_ms must be a number, got 'fast'"),
    (lambda t, o: json.dumps({**o, "cases": {"wrong/key": e for e in o["cases"].values()}}),
     "key does not match its fields"),
    (lambda t, o: json.dumps({**o, "cases": {k: {**e, "outcome": "crashed"} for k, e in o["cases"].items()}}),
     "unknown outcome 'crashed'"),
], ids=["empty file", "truncated file", "corrupt JSON", "a list", "old version", "newer version",
        "no fingerprint", "no cases", "cases as a list", "a null fingerprint", "another schema", "a result file given as baseline",
        "a case without outcome", "a time that is text", "a key that does not match", "an unknown outcome"])
def test_a_malformed_baseline_is_refused_naming_the_file_and_the_problem(tmp_path, doctor, needle):
    good = _valid(tmp_path)
    text = json.dumps(good, indent=1, sort_keys=True)
    p = _write(tmp_path, doctor(text, good))
    with pytest.raises(bl.BaselineError) as info:
        bl.load_baseline(p)
    assert str(p) in str(info.value) and needle in str(info.value)


def test_a_file_cut_inside_a_string_says_where_once(tmp_path):
    # json's own message ends "starting at": the error had read "starting at at line 96"
    p = _write(tmp_path, '{"schema": "attnsuite-baseline", "vers')
    with pytest.raises(bl.BaselineError) as info:
        bl.load_baseline(p)
    assert "Unterminated string starting at line 1 column 34" in str(info.value), str(info.value)


def test_a_file_given_as_the_baseline_of_a_report_is_not_called_a_result_file(tmp_path):
    p = _write(tmp_path, '{"benchmarks": [')
    with pytest.raises(bl.ResultFileError) as info:
        bl.load_run(p, kind="--baseline file")
    assert str(info.value).startswith(f"--baseline file {p}: not valid JSON (truncated?)"), str(info.value)


def test_a_corrupt_existing_baseline_is_never_overwritten_by_recording(tmp_path):
    p = _write(tmp_path, '{"schema": "attnsuite-baseline", "vers')
    run = bl.load_run(write_result(tmp_path / "r.json", [rec()]))
    with pytest.raises(bl.BaselineError):
        bl.record_baseline(run, p)
    assert p.read_text() == '{"schema": "attnsuite-baseline", "vers'


def test_a_result_file_with_a_broken_record_names_the_benchmark(tmp_path):
    obj = json.loads(write_result(tmp_path / "r.json", [rec()]).read_text())
    obj["benchmarks"][0]["extra_info"]["outcome"] = "exploded"
    (tmp_path / "r.json").write_text(json.dumps(obj))
    with pytest.raises(bl.ResultFileError, match=r"r.json: benchmark bench/x.py::test_bench.*unknown outcome"):
        bl.load_run(tmp_path / "r.json")


def test_an_ok_record_without_its_time_is_refused_naming_the_benchmark(tmp_path):
    # it had been judged "same" (no time on one side) under enforce
    obj = json.loads(write_result(tmp_path / "r.json", [rec()]).read_text())
    del obj["benchmarks"][0]["extra_info"]["median_ms"]
    (tmp_path / "r.json").write_text(json.dumps(obj))
    with pytest.raises(bl.ResultFileError, match=r"test_bench.*median_ms is missing in an ok case"):
        bl.load_run(tmp_path / "r.json")


@pytest.mark.parametrize("where", ["benchmarks", "unmeasured"])
def test_a_result_file_with_two_records_of_one_case_is_refused_naming_the_case(tmp_path, where):
    # "the last one counts" had let a faster copy appended to a file hide a 12x slowdown from compare
    obj = json.loads(write_result(tmp_path / "r.json", [rec()]).read_text())
    copy = json.loads(json.dumps(obj["benchmarks"][0]))
    copy["extra_info"]["median_ms"] /= 10
    if where == "benchmarks":
        obj["benchmarks"].append(copy)
    else:
        obj.setdefault("attnsuite", {})[bl.UNMEASURED_KEY] = [copy]
    (tmp_path / "r.json").write_text(json.dumps(obj))
    key = bl.load_run(write_result(tmp_path / "one.json", [rec()])).records.popitem()[0]
    with pytest.raises(bl.ResultFileError, match=rf"r.json: case {re.escape(key)} has two records"):
        bl.load_run(tmp_path / "r.json")


def test_benchmarks_without_an_attnsuite_record_are_counted_not_judged(tmp_path):
    obj = json.loads(write_result(tmp_path / "r.json", [rec()]).read_text())
    obj["benchmarks"].append({"name": "test_other", "extra_info": {}})
    (tmp_path / "r.json").write_text(json.dumps(obj))
    run = bl.load_run(tmp_path / "r.json")
    assert len(run.records) == 1 and run.foreign == 1


def test_load_run_reads_a_baseline_as_a_run(tmp_path):
    path = _recorded(tmp_path, [rec("a"), rec("b", outcome="oom", median_ms=None)])
    run = bl.load_run(path)
    assert run.kind == "baseline" and set(run.records) == {rec("a").key, rec("b").key}
    assert run.fingerprint["id"] == FP_H100["id"]


@pytest.mark.parametrize("changes, refusal", [
    ({"gpu_name": "NVIDIA A100-SXM4-80GB"}, "GPU model differs"),
    ({"torch": "2.12.0+cu130"}, "torch major.minor version differs"),
    ({"cuda": "12.8"}, "CUDA major version differs"),
], ids=["another GPU model", "another torch minor series", "another CUDA major"])
def test_machines_that_differ_in_gpu_or_major_versions_are_refused(changes, refusal):
    with pytest.raises(bl.FingerprintMismatch, match=refusal):
        bl.check_compatible(FP_H100, fp(**changes))
    notes = bl.check_compatible(FP_H100, fp(**changes), allow_mismatch=True)
    assert any(refusal in n and n.startswith("compared despite") for n in notes)


def test_driver_cudnn_and_patch_version_differences_are_notes_not_refusals():
    notes = bl.check_compatible(FP_H100, fp(driver="590.1", torch="2.11.1+cu130", cuda="13.1", triton="3.6.1"))
    assert len(notes) == 4 and any("driver differs" in n for n in notes)


def test_gpu_run_against_cpu_baseline_is_refused():
    with pytest.raises(bl.FingerprintMismatch, match="baseline no GPU"):
        bl.check_compatible(FP_CPU, FP_H100)


def test_another_cpu_model_is_refused_when_architecture_and_cores_cannot_be_checked():
    with pytest.raises(bl.FingerprintMismatch, match="CPU model differs .* architecture or core count is not recorded"):
        bl.check_compatible(FP_CPU, fp(FP_CPU, cpu_model="Intel Xeon 8480"))


def test_another_cpu_model_with_the_same_architecture_and_cores_is_a_note_not_a_refusal():
    base = fp(FP_CPU, arch="x86_64", cpu_usable=2)
    notes = bl.check_compatible(base, fp(base, cpu_model="Intel Xeon 8480"))
    assert notes == ["CPU model differs: baseline AMD EPYC 7B13, this run Intel Xeon 8480 (same architecture and "
                     "core count: times are a rough guide)"]


def test_baseline_is_found_by_fingerprint_id_then_by_a_single_compatible_file(tmp_path):
    d = tmp_path / "baselines"
    _recorded(d.parent, [rec()], name=f"baselines/{FP_H100['id']}.json")
    assert bl.find_baseline(FP_H100, d).path == d / f"{FP_H100['id']}.json"
    driver_bump = fp(id="nvidia-h100-new-driver", driver="999.9")
    look = bl.find_baseline(driver_bump, d)
    assert look.path == d / f"{FP_H100['id']}.json" and "compatible" in look.message
    other = bl.find_baseline(fp(id="a100", gpu_name="NVIDIA A100"), d)
    assert other.path is None and "no baseline for this machine" in other.message and FP_H100["id"] in other.message


def test_recording_into_another_machines_baseline_is_refused(tmp_path):
    path = _recorded(tmp_path, [rec()])
    run = bl.load_run(write_result(tmp_path / "r2.json", [rec()], fp(gpu_name="NVIDIA A100")))
    with pytest.raises(bl.FingerprintMismatch):
        bl.record_baseline(run, path)


def test_a_run_without_a_fingerprint_cannot_become_a_baseline(tmp_path):
    run = bl.load_run(write_result(tmp_path / "r.json", [rec()], fingerprint=None))
    with pytest.raises(ValueError, match="no machine fingerprint"):
        bl.record_baseline(run, tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


def test_baseline_path_is_a_safe_file_name_from_the_fingerprint_id(tmp_path):
    p = bl.baseline_path_for(fp(id="NVIDIA H100/80GB torch:2.11"), tmp_path)
    assert p.parent == tmp_path and os.sep not in p.name[:-5] and p.name.endswith(".json")


def test_the_fastest_sample_is_kept_so_the_min_statistic_can_be_judged(tmp_path):
    from attnsuite import baseline as bl
    from tests.gatehelp import rec

    one = rec(min_ms=0.91234567)
    stored, _ = bl.merge_into(None, {one.key: one}, {})
    (entry,) = stored.records().values()
    assert entry.min_ms == 0.9123, "min_ms must survive recording, rounded like the other times"


def test_the_launch_fraction_is_kept_in_the_baseline_for_the_host_bound_rule(tmp_path):
    path = _recorded(tmp_path, [rec(launch_fraction=0.876543)])
    (entry,) = json.loads(path.read_text())["cases"].values()
    assert entry["launch_fraction"] == 0.8765
    assert bl.load_baseline(path).records()[rec().key].launch_fraction == 0.8765


# --------------------------------------------------------------------------- fallback to a compatible baseline

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "baselines")
SHIPPED_CPU = "cpu-amd-epyc-2c-torch2.13.json"
SHIPPED_XEON = "cpu-intel-r-xeon-r-processor-2c-torch2.13.json"
# the two CPU models machines of this project's kind have, as their fingerprints read
FRESH_XEON = {"id": "cpu-intel-r-xeon-r-processor-2c-torch2.13", "device": "cpu",
              "cpu_model": "Intel(R) Xeon(R) Processor", "cpu_count": 2, "cpu_usable": 2, "arch": "x86_64",
              "torch": "2.13.0+cpu", "cuda": None, "gpu_name": None, "platform": "Linux-6.1-x86_64-with-glibc2.36"}
# a machine of a third CPU model: neither shipped CPU baseline is its own
FRESH_OTHER = fp(FRESH_XEON, id="cpu-intel-xeon-platinum-8481c-2c-torch2.13", cpu_model="Intel Xeon Platinum 8481C")


def test_a_fresh_machine_of_either_cpu_model_of_this_kind_finds_its_own_shipped_baseline():
    # the Intel one had compared with the AMD file as a fallback: 4 confirmed slower decode steps on unchanged code
    look = bl.find_baseline(FRESH_XEON, SHIPPED)
    assert look.path is not None and look.path.name == SHIPPED_XEON and not look.fallback, look.message
    amd = bl.load_baseline(os.path.join(SHIPPED, SHIPPED_CPU)).fingerprint
    look = bl.find_baseline(amd, SHIPPED)
    assert look.path is not None and look.path.name == SHIPPED_CPU and not look.fallback, look.message


def test_a_machine_of_another_cpu_model_falls_back_to_a_shipped_cpu_baseline_with_a_promise():
    look = bl.find_baseline(FRESH_OTHER, SHIPPED)
    assert look.path is not None and look.path.name == SHIPPED_CPU and look.fallback
    assert look.promise == ("recorded on AMD EPYC, this run is on Intel Xeon Platinum 8481C: outcomes, missing cases "
                            "and memory are compared as usual; times come from another CPU model and are a rough "
                            "guide only")
    assert "fallback: no cpu-intel-xeon-platinum-8481c-2c-torch2.13.json" in look.message
    assert "first by name of 2 equally good compatible baselines (2 compatible in all)" in look.message
    assert look.promise in look.message
    notes = bl.check_compatible(bl.load_baseline(look.path).fingerprint, FRESH_OTHER)  # the gate must not refuse it
    assert any(n.startswith("CPU model differs: baseline AMD EPYC, this run Intel Xeon Platinum 8481C") for n in notes)


@pytest.mark.parametrize("changes, why", [
    ({"cpu_usable": 4, "cpu_count": 4}, "logical cores usable differ (CPU-only runs): baseline 2, this run 4"),
    ({"arch": "aarch64", "platform": "Linux-6.1-aarch64-with-glibc2.36"},
     "architecture differs (CPU-only runs): baseline x86_64, this run aarch64"),
    ({"torch": "2.12.0+cpu"}, "torch major.minor version differs: baseline 2.13.0+cpu, this run 2.12.0+cpu"),
], ids=["4 cores", "aarch64", "torch 2.12"])
def test_a_machine_that_differs_in_cores_architecture_or_torch_finds_no_fallback_and_is_told_why(changes, why):
    look = bl.find_baseline(fp(FRESH_OTHER, **changes), SHIPPED)
    assert look.path is None and not look.fallback
    assert look.message.startswith("no baseline for this machine: looked for")
    for shipped in (SHIPPED_CPU, SHIPPED_XEON):
        assert f"{shipped} ({why}" in look.message, look.message


def test_an_h200_with_a_new_driver_falls_back_to_the_shipped_h200_baseline_and_an_a100_to_none():
    h200 = bl.load_baseline(os.path.join(SHIPPED, "cuda-nvidia-h200-132sm-140g-torch2.11-cuda13.0.json")).fingerprint
    look = bl.find_baseline(fp(h200, id="h200-new-driver", driver="590.1"), SHIPPED)
    assert look.path.name.startswith("cuda-nvidia-h200") and look.fallback
    assert "driver differs: baseline 580.159.04, this run 590.1" in look.promise
    a100 = bl.find_baseline(fp(h200, id="a100", gpu_name="NVIDIA A100"), SHIPPED)
    assert a100.path is None and "GPU model differs: baseline NVIDIA H200, this run NVIDIA A100" in a100.message


def test_the_fallback_prefers_the_same_cpu_model_then_the_first_name_and_says_how_many_tied(tmp_path):
    xeon = FRESH_XEON["cpu_model"]
    for name, cpu in (("a-epyc", "AMD EPYC"), ("b-xeon", xeon), ("c-xeon", xeon)):
        run = bl.Run({rec().key: rec()}, fp(FRESH_XEON, id=name, cpu_model=cpu))
        bl.record_baseline(run, tmp_path / f"{name}.json")
    look = bl.find_baseline(fp(FRESH_XEON, id="fresh"), tmp_path)
    assert look.path == tmp_path / "b-xeon.json" and look.fallback
    assert "first by name of 2 equally good compatible baselines (3 compatible in all)" in look.message
    (tmp_path / "b-xeon.json").unlink()
    (tmp_path / "c-xeon.json").unlink()
    assert bl.find_baseline(fp(FRESH_XEON, id="fresh"), tmp_path).path == tmp_path / "a-epyc.json"


@pytest.mark.parametrize("platform_text, arch", [
    ("Linux-6.18.44-fc-v445-x86_64-with-glibc2.36", "x86_64"),
    ("Linux-6.1.0-aarch64-with-glibc2.35", "aarch64"),
    ("macOS-14.2-arm64-arm-64bit", "aarch64"),
    ("Linux-5.4-ppc64le-with-glibc2.17", "ppc64le"),
    ("Windows-10-10.0.19041-SP0", None),
], ids=["x86_64", "aarch64", "macOS arm64", "ppc64le", "no architecture in the text"])
def test_the_architecture_of_an_old_fingerprint_is_read_from_its_platform_string(platform_text, arch):
    assert bl.fp_arch({"platform": platform_text}) == arch
    assert bl.fp_arch({"platform": platform_text, "arch": "AMD64"}) == "x86_64"  # the field wins when present


def test_a_run_is_never_recorded_into_another_cpu_models_fallback_baseline(tmp_path):
    amd = fp(FRESH_XEON, id="amd", cpu_model="AMD EPYC")
    path = tmp_path / "amd.json"
    bl.record_baseline(bl.Run({rec().key: rec()}, amd), path)
    before = path.read_bytes()
    xeon_run = bl.Run({rec("other").key: rec("other")}, fp(FRESH_XEON))
    with pytest.raises(bl.FingerprintMismatch, match=r"recorded on AMD EPYC, this run is on Intel\(R\) Xeon\(R\) "
                                                     r"Processor: .* never recorded into or combined with; record this "
                                                     "machine's own file"):
        bl.record_baseline(xeon_run, path)
    assert path.read_bytes() == before
    bl.record_baseline(xeon_run, path, allow_mismatch=True)  # said explicitly: allowed
    assert bl.load_baseline(path).fingerprint["cpu_model"] == FRESH_XEON["cpu_model"]


def test_a_statistic_pair_out_of_order_is_named_even_past_floats_range():
    # "{a:g}" of 10**500 had raised OverflowError instead of naming the field (found by the fuzz test)
    assert bl.order_problems({"min_ms": 10**500, "median_ms": 1.0}.get) == [
        "min_ms an integer of 501 digits is above median_ms 1: a fastest sample cannot exceed the median"]
    assert bl.order_problems({"min_ms": 1.0, "median_ms": 2.0}.get) == []
