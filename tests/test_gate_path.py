"""The one compare path (attnsuite.gate): one thresholds rule, one judge, used by every caller."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from attnsuite import baseline as bl
from attnsuite import cli, gate
from attnsuite.verdict import ThresholdsError, parse_thresholds
from gatehelp import FP_CPU, FP_H100, by_key, fp, rec, write_result

ROOT = Path(__file__).resolve().parents[1]


def _thresholds(path: Path, floor: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "default": {"time_floor": floor}}))
    return path


@pytest.mark.parametrize("explicit, in_dir, picked", [
    pytest.param(True, True, "explicit", id="an explicit file wins over the baselines folder"),
    pytest.param(False, True, "folder", id="else thresholds.json in the baselines folder"),
    pytest.param(False, False, "repo", id="else the repository's baselines/thresholds.json"),
])
def test_thresholds_for_picks_by_one_rule(tmp_path, explicit, in_dir, picked):
    files = {"explicit": _thresholds(tmp_path / "mine.json", 0.4)}
    folder = tmp_path / "baselines"
    folder.mkdir()
    if in_dir:
        files["folder"] = _thresholds(folder / "thresholds.json", 0.3)
    files["repo"] = gate.REPO_BASELINES / "thresholds.json"
    cfg, path = gate.thresholds_for(files["explicit"] if explicit else None, folder)
    assert path == files[picked]
    assert cfg.path is not None and str(files[picked]) in cfg.path


@pytest.mark.parametrize("names, picked", [
    pytest.param(["thresholds.json.gz"], "thresholds.json.gz", id="a gzip-compressed thresholds file in the folder is read"),
    pytest.param(["thresholds.json", "thresholds.json.gz"], "thresholds.json", id="a plain one wins where both exist"),
])
def test_a_folders_thresholds_file_may_be_gzip_compressed(tmp_path, names, picked):
    import gzip

    folder = tmp_path / "baselines"
    folder.mkdir()
    for floor, name in enumerate(names, start=1):
        text = json.dumps({"version": 1, "default": {"time_floor": floor / 10}}).encode()
        (folder / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    cfg, path = gate.thresholds_for(None, folder)
    assert path == folder / picked
    assert cfg.default["time_floor"] == (names.index(picked) + 1) / 10
    assert bl.baseline_files(folder) == [], "a thresholds file is never a baseline candidate"


def test_thresholds_for_falls_back_to_built_in_defaults_without_any_file(tmp_path, monkeypatch):
    monkeypatch.setattr(gate, "REPO_BASELINES", tmp_path / "nowhere")
    cfg, path = gate.thresholds_for(None, tmp_path)
    assert path is None and cfg.path is None and not cfg.default


def test_an_explicit_thresholds_file_that_does_not_exist_is_an_error_naming_it(tmp_path):
    with pytest.raises(ThresholdsError, match="missing.json: no such file"):
        gate.thresholds_for(tmp_path / "missing.json", None)


def test_judge_runs_checks_the_machines_and_labels_the_runs():
    base = bl.Run(by_key([rec("a")]), FP_H100, path="b.json", kind="baseline")
    cur = bl.Run(by_key([rec("a", median_ms=1.5)]), FP_H100, path="r.json")
    cfg, _ = gate.thresholds_for(None, None)
    cmp = gate.judge_runs(base, cur, thresholds=cfg, notes=["hello"])
    assert cmp.failed and (cmp.baseline_label, cmp.current_label) == ("b.json", "r.json")
    assert cmp.notes[0] == "hello" and any(n.startswith("thresholds from ") for n in cmp.notes)
    other = bl.Run(by_key([rec("a")]), fp(gpu_name="NVIDIA A100"), path="x.json")
    with pytest.raises(bl.FingerprintMismatch):
        gate.judge_runs(base, other, thresholds=cfg)
    assert gate.judge_runs(base, other, thresholds=cfg, allow_mismatch=True).notes


@pytest.mark.parametrize("sides, said", [
    (("baseline", "this run"), "more than 100% slower than the baseline to read as slower"),
    (("base", "head"), "more than 100% slower than the base tree to read as slower"),
], ids=["the stored gate's note names the baseline", "an A/B's names the base tree"])
def test_the_cpu_floors_note_names_what_a_case_is_compared_with(sides, said):
    # an A/B's note had said "slower than its baseline" of the base tree (a first-time user's trial)
    cpu = dict(timer="cpu", device_ms=None, device_min_ms=None, device_iqr_ms=None)
    base = bl.Run(by_key([rec("a", **cpu)]), FP_CPU)
    cur = bl.Run(by_key([rec("a", **cpu)]), FP_CPU)
    notes = gate.judge_runs(base, cur, thresholds=gate.thresholds_for(None, None)[0], side_names=sides).notes
    assert any(said in n for n in notes), notes


@pytest.mark.parametrize("base_device_ms, noted", [
    pytest.param(None, True, id="an event-only CUDA baseline is named as such: its times are not gated"),
    pytest.param(1.0, False, id="a baseline with device time gets no such note"),
])
def test_an_event_only_cuda_baseline_is_marked_in_the_comparison(base_device_ms, noted):
    base = bl.Run(by_key([rec("a", device_ms=base_device_ms)]), FP_H100, path="old.json", kind="baseline")
    cur = bl.Run(by_key([rec("a", median_ms=1.5)]), FP_H100)
    cmp = gate.judge_runs(base, cur, thresholds=gate.thresholds_for(None, None)[0])
    marked = [n for n in cmp.notes if "recorded without device time" in n]
    assert bool(marked) == noted, cmp.notes
    assert cmp.failed != noted  # 50% slower: gated only when the baseline has device time


def test_judge_runs_carries_both_calibrations_into_the_comparison():
    base = bl.Run(by_key([rec("a")]), FP_H100, kind="baseline")
    cur = bl.Run(by_key([rec("a")]), FP_H100)
    base.calibration, cur.calibration = {"mem_bandwidth_gbs": 4100.0}, {"mem_bandwidth_gbs": 3900.0}
    cmp = gate.judge_runs(base, cur, thresholds=gate.thresholds_for(None, None)[0])
    assert (cmp.base_calibration, cmp.cur_calibration) == ({"mem_bandwidth_gbs": 4100.0}, {"mem_bandwidth_gbs": 3900.0})


@pytest.mark.parametrize("base_cpu, shown", [
    pytest.param("Intel Xeon Platinum 8481C", False, id="a fallback baseline of another CPU model gives no percent of peak"),
    pytest.param(None, True, id="a baseline of this CPU model gives its probe as the peak"),
])
def test_percent_of_peak_on_cpu_reads_the_baselines_probe_only_when_it_measured_this_cpu_model(base_cpu, shown):
    # a first-time user's fresh Intel machine compared with the shipped AMD baseline (the fallback) showed
    # sdpa at 65% of "peak": the AMD machine's probe, half this machine's own
    from attnsuite import summary

    problem = "b1-q512-h4-d64-causal-tl-fp32-cpu"
    this = fp(FP_CPU, arch="x86_64")
    other = fp(this, cpu_model=base_cpu) if base_cpu else this  # a fallback: same architecture and cores
    record = rec("sdpa", problem=problem, timer="perf_counter", device_ms=None, flops=2e9, median_ms=40.0)
    base = bl.Run(by_key([rec("sdpa", problem=problem, timer="perf_counter", device_ms=None)]), other, kind="baseline")
    cur = bl.Run(by_key([record]), this)
    base.calibration = {"matmul_tflops": 0.0738, "matmul_dtype": "float32"}
    cmp = gate.judge_runs(base, cur, thresholds=gate.thresholds_for(None, None)[0])
    pct, _, source = summary.percent_of_peak(record, cmp.base_calibration)
    if shown:
        assert pct == pytest.approx(100 * record.rate() / 0.0738) and bl.CALIBRATION_OTHER_CPU not in \
            cmp.base_calibration, source
    else:
        assert pct is None and cmp.base_calibration[bl.CALIBRATION_OTHER_CPU] == base_cpu
        assert source == f"no % of peak: the baseline's calibration probe measured another CPU model ({base_cpu}), " \
                         "not this one"
        assert base.calibration == {"matmul_tflops": 0.0738, "matmul_dtype": "float32"}  # the baseline's own untouched


class _Spy:
    """Wraps gate.judge_runs and gate.thresholds_for, recording that each was called."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        real_judge, real_thresholds = gate.judge_runs, gate.thresholds_for

        def judge(*a, **k):
            self.calls.append("judge_runs")
            return real_judge(*a, **k)

        def thresholds(*a, **k):
            self.calls.append("thresholds_for")
            return real_thresholds(*a, **k)

        monkeypatch.setattr(gate, "judge_runs", judge)
        monkeypatch.setattr(gate, "thresholds_for", thresholds)


@pytest.mark.parametrize("command", ["compare", "report"])
def test_the_cli_judges_through_the_one_compare_path(tmp_path, monkeypatch, command):
    spy = _Spy(monkeypatch)
    old = write_result(tmp_path / "old.json", [rec("a")])
    new = write_result(tmp_path / "new.json", [rec("a", median_ms=1.3)])
    argv = [command, str(old), str(new)] if command == "compare" else [command, str(new), "--baseline", str(old)]
    cli.main(argv, out=io.StringIO())
    assert spy.calls == ["thresholds_for", "judge_runs"]


def test_gate_eval_judges_through_the_one_compare_path(monkeypatch):
    spec = importlib.util.spec_from_file_location("gate_eval", ROOT / "scripts" / "gate_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    spy = _Spy(monkeypatch)

    def fake_run_once(args, name, inject):
        recs = [rec(v, median_ms=1.0 + inject.get(v, 0.0)) for v in ("a", "b")]
        return bl.Run(records=by_key(recs), fingerprint=FP_H100, path=name), {"name": name, "inject": inject}

    monkeypatch.setattr(mod, "run_once", fake_run_once)
    import argparse

    s = mod.evaluate(argparse.Namespace(thresholds=None, variants="", runs=1, single=False, ref_runs=1,
                                        baseline=None, fractions="0.2"))
    assert spy.calls[0] == "thresholds_for" and spy.calls.count("judge_runs") == 2  # one A/A run, one injection
    assert s["thresholds"].endswith("baselines/thresholds.json")


def test_the_cli_and_the_pytest_gate_find_the_same_thresholds_for_a_baselines_folder(tmp_path):
    # the CLI's folder in play is the reference file's; pytest's is --attn-baselines-dir
    folder = tmp_path / "baselines"
    t = _thresholds(folder / "thresholds.json", 0.9)
    from attnsuite import plugin_gate

    class Config:
        rootpath = tmp_path

        @staticmethod
        def getoption(name, default=None):
            return {"--attn-baselines-dir": str(folder)}.get(name, default)

    assert plugin_gate._baselines_dir(Config) == folder
    assert gate.thresholds_path_for(None, plugin_gate._baselines_dir(Config)) == t
    base = write_result(folder / "old.json", [rec("a")])
    new = write_result(tmp_path / "new.json", [rec("a", median_ms=1.5)])
    out = io.StringIO()
    assert cli.main(["compare", str(base), str(new), "--format", "json"], out=out) == 0  # +50% < the 90% floor
    assert f"thresholds from {t}" in json.loads(out.getvalue())["notes"]


@pytest.mark.parametrize("section, noted", [("fa-swep", True), ("fa-sweep", False), ("my-own", False)])
def test_a_thresholds_workload_section_that_names_nothing_is_noted_as_applying_to_nothing(section, noted):
    # {"workload": {"fa-swep": ...}} had been accepted silently: the bar the user meant to set applied nowhere
    cfg = parse_thresholds({"workload": {section: {"time_floor": 0.5}}}, "t.json")
    run = bl.Run(records={r.key: r for r in [rec("sdpa", workload="my-own")]}, fingerprint={}, path=None)
    notes = gate.judge_runs(run, run, thresholds=cfg).notes
    assert any(f"workload section(s) {section} name no workload" in n for n in notes) is noted


@pytest.mark.parametrize("pattern, noted", [("my-own/sdpa/fwd/nomatch*", True), ("my-own/sdpa/*", False),
                                            ("*", False), ("my-own/sdpx/*", True)])
def test_a_thresholds_case_pattern_that_matches_no_case_is_noted_as_applying_to_nothing(pattern, noted):
    # {"case": {"video-wm/explicit/fwd/nomatch*": ...}} had been accepted silently, unlike a workload typo
    cfg = parse_thresholds({"case": {pattern: {"time_floor": 0.5}}}, "t.json")
    run = bl.Run(records={r.key: r for r in [rec("sdpa", workload="my-own")]}, fingerprint={}, path=None)
    notes = gate.judge_runs(run, run, thresholds=cfg).notes
    assert any(f"case pattern(s) {pattern} match no case of either run" in n for n in notes) is noted, notes
