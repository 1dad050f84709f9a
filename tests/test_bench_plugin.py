"""End to end: ``pytest bench --benchmark-only --benchmark-json=...`` keeps every case in the JSON.

A tiny external variant module adds one variant that raises, one that asks for far too much
memory, and one that runs only on CUDA; with the built-in ``sdpa`` they give an ok, an error, an
out-of-memory and a skipped case in one filtered run, and every record must carry its fields.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from attnsuite.baseline import load_run

ROOT = Path(__file__).resolve().parents[1]

EXTERNAL = '''
import torch
from attnsuite.registry import KernelVariant, register

MASKS = frozenset({"none", "causal"})
FEATURES = frozenset({"gqa", "lq_ne_lk", "bottom_right"})


@register
class Boom(KernelVariant):
    name = "boom"
    masks = MASKS
    features = FEATURES

    def build(self, problem):
        def run(q, k, v):
            raise RuntimeError("boom: this kernel is broken on purpose")
        return run


@register
class Hog(KernelVariant):
    name = "hog"
    masks = MASKS
    features = FEATURES

    def build(self, problem):
        def run(q, k, v):
            return torch.empty(2**62, dtype=torch.uint8)  # the allocator refuses: a real CPU OOM
        return run


@register
class Wrong(KernelVariant):
    name = "wrong"
    masks = MASKS
    features = FEATURES

    def build(self, problem):
        print("x" * 99)  # and chatty: once a case

        def run(q, k, v):  # fast and wrong: its numerics fail
            return torch.zeros_like(q)
        return run


@register
class GpuOnly(KernelVariant):
    name = "gpu-only"
    masks = MASKS
    features = FEATURES
    devices = frozenset({"cuda"})

    def build(self, problem):
        return lambda q, k, v: q
'''


@pytest.fixture
def bench_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """A copy of bench/ with the suite's plugin, and a function running it to a parsed JSON."""
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")
    ext = pytester.path / "ext_variants.py"
    ext.write_text(EXTERNAL)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)

    def run(variants=("sdpa", "boom", "hog", "gpu-only"), extra=()):
        out = pytester.path / "out.json"
        result = pytester.runpytest_subprocess(
            "bench", "--benchmark-only", f"--benchmark-json={out}", "-p", "no:cacheprovider", "-rs",
            f"--attn-variants={ext}", "--attn-device=cpu", "--attn-tier=quick", "--attn-workload=decode",
            "--attn-mode=fwd", *[f"--attn-only={v}" for v in variants], *extra,
        )
        data = json.loads(out.read_text()) if out.exists() else None
        return result, data

    return run


def _shared_run(folder: Path, variants, extra=(), env_drop=()) -> tuple[pytest.RunResult, dict | None]:
    """What ``bench_run`` does, in ``folder``, for a module-scoped fixture: one run whose result several
    tests read (each pytest process costs seconds of imports and a benchmark worker). Its environment is
    the one pytester gives its runs (HOME in the folder, PYTEST_ADDOPTS only the tests' own, PY_COLORS=0),
    less ``env_drop``."""
    import subprocess
    import sys
    import time

    from suiterun import INNER_ADDOPTS

    (folder / "conftest.py").write_text('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", folder / "bench")
    ext = folder / "ext_variants.py"
    ext.write_text(EXTERNAL)
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATTNSUITE_VARIANTS", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", *env_drop)}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), HOME=str(folder),
               USERPROFILE=str(folder), PY_COLORS="0", PYTEST_ADDOPTS=INNER_ADDOPTS)
    out = folder / "out.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-mpytest", f"--basetemp={folder / 'basetemp'}", "bench", "--benchmark-only",
         f"--benchmark-json={out}", "-p", "no:cacheprovider", "-rs", f"--attn-variants={ext}",
         "--attn-device=cpu", "--attn-tier=quick", "--attn-workload=decode", "--attn-mode=fwd",
         *[f"--attn-only={v}" for v in variants], *extra],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    result = pytest.RunResult(done.returncode, done.stdout.splitlines(), done.stderr.splitlines(),
                              time.monotonic() - started)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def _once(tmp_path_factory, request, name, make):
    """``make()``'s run once per session (suiterun.once_per_session), as (its folder, its result, its JSON or
    whatever JSON-able value ``make()`` returns third)."""
    from suiterun import once_per_session

    def kept():
        folder, result, data = make()
        return str(folder), result.ret, result.outlines, result.errlines, result.duration, data

    folder, ret, outlines, errlines, duration, data = once_per_session(tmp_path_factory, request.config, name, kept)
    return Path(folder), pytest.RunResult(ret, outlines, errlines, duration), data


@pytest.fixture(scope="module")
def sdpa_and_wrong_run(tmp_path_factory, request):
    """sdpa and the fast, wrong, chatty variant in one run, without PYTHONUNBUFFERED (as a plain pytest
    run has it): read by the numerics test and the printed-output test."""
    def make():
        folder = tmp_path_factory.mktemp("sdpa-and-wrong")
        return (folder, *_shared_run(folder, ("sdpa", "wrong"), env_drop=("PYTHONUNBUFFERED",)))

    _, result, data = _once(tmp_path_factory, request, "bench-plugin-sdpa-and-wrong", make)
    return result, data


@pytest.fixture(scope="module")
def sdpa_alone_run(tmp_path_factory, request):
    """sdpa alone, the gate at its default, gate.md and the gate JSON asked for, a slowdown injected into a
    variant outside the selection, not on GitHub Actions: read by the files-line test, the injection test
    and the GitHub Actions test. (the run's folder, its result, its JSON)"""
    def make():
        folder = tmp_path_factory.mktemp("sdpa-alone")
        md, js = folder / "g.md", folder / "g.json"
        extra = (f"--attn-markdown={md}", f"--attn-gate-json={js}", "--attn-inject-slowdown=hog=0.5")
        return (folder, *_shared_run(folder, ("sdpa",), extra, env_drop=("GITHUB_ACTIONS",)))

    return _once(tmp_path_factory, request, "bench-plugin-sdpa-alone", make)


@pytest.fixture(scope="module")
def nothing_measured_run(tmp_path_factory, request):
    """The CUDA-only, the raising and the memory-hungry variant, the gate JSON asked for: no case has samples,
    and no case is judged (no baseline): read by the no-samples test and the report test."""
    def make():
        folder = tmp_path_factory.mktemp("nothing-measured")
        gate = f"--attn-gate-json={folder / 'gate.json'}"
        return (folder, *_shared_run(folder, ("gpu-only", "boom", "hog"), (gate,)))

    return _once(tmp_path_factory, request, "bench-plugin-nothing-measured", make)


@pytest.fixture(scope="module")
def sdpa_and_gpu_only_run(tmp_path_factory, request):
    """sdpa and the CUDA-only variant, the gate JSON asked for: every case passes or skips, and no case is
    judged (no baseline): read by the test of a named variant that measured nothing and the report test."""
    def make():
        folder = tmp_path_factory.mktemp("sdpa-and-gpu-only")
        return (folder, *_shared_run(folder, ("sdpa", "gpu-only"), (f"--attn-gate-json={folder / 'gate.json'}",)))

    return _once(tmp_path_factory, request, "bench-plugin-sdpa-and-gpu-only", make)


@pytest.fixture(scope="module")
def recorded_with_errors_run(tmp_path_factory, request):
    """sdpa and the raising variant recorded as a baseline into a baselines folder (``team-baselines`` in the
    run's folder): read by the test of the failures it counts and the --benchmark-disable test, which judges
    sdpa's cases against it."""
    def make():
        folder = tmp_path_factory.mktemp("recorded-with-errors")
        base = folder / "team-baselines"
        base.mkdir()
        return (folder, *_shared_run(folder, ("sdpa", "boom"), (f"--attn-baselines-dir={base}",
                                                                 "--attn-record-baseline")))

    return _once(tmp_path_factory, request, "bench-plugin-recorded-with-errors", make)


@pytest.fixture(scope="module")
def gate_off_run_from_elsewhere(tmp_path_factory, request):
    """The checkout's bench/ run (sdpa, one gpt2-mha case) with the gate off, started from a folder outside
    the checkout (``mine`` in the run's folder) with -c <checkout>/pyproject.toml, gate.md and the gate JSON
    named in the run's folder: read by the storage-folder test and the files-line test. (the run's folder,
    its result, the names ``mine`` held after the run)"""
    import subprocess
    import sys
    import time

    def make():
        folder = tmp_path_factory.mktemp("gate-off-elsewhere")
        mine = folder / "mine"
        mine.mkdir()
        # what tests/conftest.py's fixtures give a test's own processes, made here: a module's fixture is set
        # up before them (under xdist pytest-benchmark would read PYTEST_XDIST_WORKER and turn itself off)
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                               str(ROOT), str(ROOT / "bench"), "--benchmark-only", "-p", "no:cacheprovider",
                               "-q", "--attn-only=sdpa", "--attn-workload=gpt2-mha", "--attn-mode=fwd",
                               "--attn-gate=off", f"--attn-markdown={folder / 'g.md'}",
                               f"--attn-gate-json={folder / 'g.json'}"],
                              cwd=mine, env=env, capture_output=True, text=True, timeout=300)
        result = pytest.RunResult(done.returncode, done.stdout.splitlines(), done.stderr.splitlines(),
                                  time.monotonic() - started)
        return folder, result, sorted(p.name for p in mine.iterdir())

    return _once(tmp_path_factory, request, "bench-plugin-gate-off-elsewhere", make)


def _entries(data):
    """Every case of a result JSON: pytest-benchmark's list and, beside it, the cases without samples."""
    return list(data["benchmarks"]) + list(data["attnsuite"].get("unmeasured", []))


def _by_variant(data):
    out = {}
    for b in _entries(data):
        out.setdefault(b["extra_info"]["variant"], []).append(b)
    return out


def test_a_case_that_fails_numerics_keeps_its_figures_but_is_left_out_of_pytest_benchmarks_table(sdpa_and_wrong_run):
    # pytest-benchmark's table had ranked a variant returning garbage as the fastest of its group
    result, data = sdpa_and_wrong_run
    assert data is not None, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=2, failed=2)
    assert {b["extra_info"]["variant"] for b in data["benchmarks"]} == {"sdpa"}
    wrong = _by_variant(data)["wrong"]
    assert len(wrong) == 2 and all(b["extra_info"]["outcome"] == "numerics" for b in wrong)
    assert all(b["extra_info"]["median_ms"] > 0 and b["stats"]["rounds"] == 0 for b in wrong)
    assert all("a failed case, numerics" in b["options"]["timer"] for b in wrong)
    table = [line for line in result.stdout.lines if line.startswith("test_workload[")]
    assert table and not any("wrong" in line for line in table), table


def test_json_has_every_field_for_ok_error_oom_and_skipped_cases(bench_run, tmp_path_factory):
    result, data = bench_run(extra=("--attn-inject-slowdown=sdpa=0.5",))
    assert data is not None, result.stdout.str()[-3000:]
    # two decode problems x four variants, fwd only: the error cases fail the run, the rest pass or skip;
    # gpu-only and hog, named in --attn-only and measured nothing here (skipped, out of memory), fail it too
    result.assert_outcomes(passed=2, failed=4, skipped=4)
    result.stdout.fnmatch_lines(["*--attn-only hog: none of its 2 cases was measured: 2 cases ran out of memory*"])
    by = _by_variant(data)
    assert set(by) == {"sdpa", "boom", "hog", "gpu-only"}
    assert all(len(v) == 2 for v in by.values())

    for b in by["sdpa"]:
        rec = b["extra_info"]
        assert rec["outcome"] == "ok"
        for key in ("median_ms", "iqr_ms", "min_ms", "first_call_ms", "mask_build_ms", "flops", "tflops",
                    "peak_mem_bytes"):
            assert isinstance(rec[key], (int, float)) and rec[key] >= 0, key
        assert rec["pct_peak"] is None  # no stable, stated peak on CPU (the summary uses a stored probe)
        assert rec["samples"] > 0 and rec["timer"] == "perf_counter"
        assert rec["mem_method"].startswith("cpu-torch-allocator")
        assert rec["backend"].startswith("sdpa:"), rec["backend"]
        assert rec["case"] == f"decode/sdpa/fwd/{rec['problem']}"
        assert rec["extra"]["numerics_check"] == "oracle"
        assert rec["extra"]["injected_ms"] > 0
        assert rec["extra"]["peak_source"].startswith("no % of peak on CPU")
        # pytest-benchmark's own stats are the suite's samples, in seconds
        assert b["stats"]["rounds"] == rec["samples"]
        assert b["stats"]["median"] == pytest.approx(rec["median_ms"] / 1e3)
        assert b["group"] == "decode fwd"

    for b in by["boom"]:
        rec = b["extra_info"]
        assert rec["outcome"] == "error"
        assert "RuntimeError: boom: this kernel is broken on purpose" in rec["detail"]
        assert b["stats"]["rounds"] == 0 and rec["flops"] > 0
    for b in by["hog"]:
        rec = b["extra_info"]
        assert rec["outcome"] == "oom" and rec["oom_bytes"] == 2**62
        assert b["stats"]["rounds"] == 0
    for b in by["gpu-only"]:
        rec = b["extra_info"]
        assert rec["outcome"] == "skipped" and "runs on ['cuda'], not cpu" in rec["detail"]

    meta = data["attnsuite"]
    assert meta["fingerprint"]["id"] == meta["fingerprint_id"] == data["machine_info"]["attnsuite_fingerprint_id"]
    for key in ("cpu_model", "cpu_count", "torch", "triton", "cuda", "cudnn"):
        assert key in meta["fingerprint"]
    assert meta["outcomes"] == {"ok": 2, "error": 2, "oom": 2, "skipped": 2}
    assert meta["inject_slowdown"] == {"sdpa": 0.5}
    assert meta["peaks_tflops"] == {}  # no per-run CPU peak
    out = result.stdout.str()
    assert "attnsuite measurements" in out and "out of memory" in out
    # the real benchmarks' JSON, error/oom/skipped cases included, loads in pytest-benchmark compare
    from gatehelp import pytest_benchmark_compare

    written = tmp_path_factory.mktemp("json") / "out.json"
    written.write_text(json.dumps(data))
    proc = pytest_benchmark_compare(written, tmp_path_factory.mktemp("cmp"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # only measured cases are pytest-benchmark results: error, out-of-memory and skipped cases are
    # not shown as 0 ns rows; the suite's own reader still has every case
    assert "decode/sdpa/fwd/" in proc.stdout, proc.stdout[-2000:]
    for variant in ("boom", "hog", "gpu-only"):
        assert f"decode/{variant}/fwd/" not in proc.stdout, \
            "a case without samples is a 0 ns row in pytest-benchmark compare (does attnsuite/baseline.py " \
            "define UNMEASURED_KEY and read the attnsuite.unmeasured list?):\n" + proc.stdout[-2000:]
    assert [b["extra_info"]["variant"] for b in data["benchmarks"]] == ["sdpa", "sdpa"]
    outcomes = sorted(r.outcome for r in load_run(written).records.values())
    assert outcomes == ["error"] * 2 + ["ok"] * 2 + ["oom"] * 2 + ["skipped"] * 2
    # progress (not a terminal here: the first case, then the last), then the last screen: the verdict
    # (no baseline here), skips by reason, the failures, the fastest variant
    assert "attnsuite [1/8  12%]" in out and "attnsuite [8/8 100%]" in out and "done (" in out
    # each after its test's status character: written inside the test, the "." had followed alone
    lines = out.splitlines()
    after = [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if line.startswith("attnsuite [")]
    assert after and not any(a and set(a) <= set(".sFExX") for a in after), after
    out = out.split("attnsuite summary")[-1]
    assert "FAIL: 2 case(s) of this run failed (2 error); the run was not judged against a baseline" in out and "cases: 2 ok, 2 skipped, 2 oom, 2 error" in out
    assert "variant runs on ['cuda'], not cpu" in out and "fastest variant per workload" in out


def test_a_run_where_no_case_has_samples_still_writes_its_records(nothing_measured_run):
    # pytest-benchmark alone writes no JSON when no benchmark produced stats
    _, result, data = nothing_measured_run  # gpu-only, boom, hog
    assert data is not None, result.stdout.str()[-3000:]
    assert sorted(b["extra_info"]["outcome"] for b in _entries(data)) == ["error"] * 2 + ["oom"] * 2 + ["skipped"] * 2


def test_a_report_refuses_the_gate_json_of_another_run_even_one_that_judged_no_case(
        nothing_measured_run, sdpa_and_gpu_only_run, tmp_path, capsys):
    # with no case to compare, another run's "not compared" gate JSON had been shown as this result's verdict
    from attnsuite import cli

    files = {}
    # two runs shared with other tests, neither with a baseline: each judged no case
    for run, (folder, result, data) in (("one", nothing_measured_run), ("two", sdpa_and_gpu_only_run)):
        gate = folder / "gate.json"
        assert data is not None, result.stdout.str()[-3000:]
        kept = tmp_path / f"{run}.json"
        kept.write_text(json.dumps(data))
        files[run] = (kept, gate, data["attnsuite"]["run_id"], json.loads(gate.read_text()))
    for run, (_, _, bench_id, verdicts) in files.items():
        assert verdicts["run_id"] == bench_id, run  # one session, one id in both files
        assert verdicts["compared"] is False and verdicts["cases"] == [], verdicts  # nothing else tells them apart
    assert files["one"][2] != files["two"][2]
    result, theirs = files["one"][0], files["two"][1]
    capsys.readouterr()
    assert cli.main(["report", str(result), "--gate-json", str(theirs)]) == cli.EXIT_INPUT
    assert (f"--gate-json {theirs}: not the verdicts of {result}: written by run {files['two'][2]}, and the result "
            f"by run {files['one'][2]}") in capsys.readouterr().err
    assert cli.main(["report", str(result), "--gate-json", str(files["one"][1])]) == 0
    # one that names no run (an older attnsuite's) and judged no case: nothing ties it to the result
    legacy = tmp_path / "legacy-gate.json"
    legacy.write_text(json.dumps({k: v for k, v in files["two"][3].items() if k != "run_id"}))
    capsys.readouterr()
    assert cli.main(["report", str(result), "--gate-json", str(legacy)]) == cli.EXIT_INPUT
    assert f"--gate-json {legacy}: judged no case and names no run, so nothing ties it to {result}" in \
        capsys.readouterr().err


def test_with_benchmark_disable_the_runs_cases_are_still_judged_against_the_baseline(
        bench_run, pytester, recorded_with_errors_run):
    # pytest-benchmark holds no result then (xdist turns it on too), and the summary had said "no
    # baseline for this machine" for measured cases with a baseline right there
    folder, result, _ = recorded_with_errors_run  # sdpa and boom recorded (boom's errors fail that run)
    base = folder / "team-baselines"
    assert list(base.glob("*.json")), result.stdout.str()[-3000:]
    # in bench_run's folder (a bench/ copy with the plugin), by hand: bench_run passes --benchmark-only, which
    # refuses --benchmark-disable. --attn-only sdpa judges sdpa's cases; boom's are outside its scope
    result = pytester.runpytest_subprocess(
        "bench", "--benchmark-disable", "-p", "no:cacheprovider", "--attn-device=cpu",
        "--attn-tier=quick", "--attn-workload=decode", "--attn-mode=fwd", "--attn-only=sdpa",
        f"--attn-baselines-dir={base}", "--attn-gate=report", "--benchmark-json=never.json")
    summary = result.stdout.str().split("attnsuite summary")[-1]
    assert "no baseline for this machine" not in summary, summary
    assert "PASS: no regression among" in summary and "cases judged against the baseline" in summary, summary
    # nor does it list a file pytest-benchmark does not write then
    assert "files: benchmark JSON none (never.json is not written under --benchmark-disable)" in summary, summary
    assert not (pytester.path / "never.json").exists()


def test_the_files_line_names_no_gate_file_the_run_did_not_write(gate_off_run_from_elsewhere, sdpa_alone_run):
    # with the gate off, and after the gate refused another machine's baseline, the summary had named
    # gate.md and gate.json as written (an outside tester's trial)
    folder, result, _ = gate_off_run_from_elsewhere  # --attn-only sdpa --attn-gate=off, shared
    md, js = folder / "g.md", folder / "g.json"
    summary = result.stdout.str().split("attnsuite summary")[-1]
    assert f"gate diff none ({md} is not written: the gate is off)" in summary, summary
    assert f"verdicts none ({js} is not written: the gate is off)" in summary, summary
    assert not md.exists() and not js.exists()
    # the same selection with the gate on (the default, report), shared with other tests
    folder, result, _ = sdpa_alone_run
    md, js = folder / "g.md", folder / "g.json"
    summary = result.stdout.str().split("attnsuite summary")[-1]
    assert f"gate diff {md}" in summary and f"verdicts {js}" in summary and md.exists() and js.exists(), summary


def test_what_a_variant_printed_is_counted_in_its_own_record(sdpa_and_wrong_run):
    # a variant's prints go to the worker's log, which is emptied after each case: the record keeps how much
    # (the worker flushes its streams before answering: without PYTHONUNBUFFERED, as in a plain pytest run,
    # a print could otherwise wait in a buffer and be counted to a later case; the shared run has none)
    result, data = sdpa_and_wrong_run
    recs = [b["extra_info"] for b in _entries(data) if b["extra_info"]["variant"] == "wrong"]
    assert recs and all(r["extra"].get("printed_bytes", 0) >= 100 for r in recs), [r["extra"] for r in recs]


def test_bad_options_are_usage_errors_naming_the_option(pytester: pytest.Pytester):
    # in this process (a pytest process of its own costs seconds of imports before it refuses): what a user
    # sees from a process of its own, exit status and message, is checked by the unknown --attn-mode test
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")
    result = pytester.runpytest("bench", "--benchmark-only", "--attn-workload=nope", "-p", "no:cacheprovider",)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--attn-workload 'nope' is unknown*"])


def test_the_terminal_table_shows_tflops_and_peak_share_by_device_time_on_cuda():
    from attnsuite.plugin_bench import summary_lines
    from attnsuite.record import CaseRecord

    r = CaseRecord("fa-sweep", "triton-flash", "bwd", "b16-q1024-h16-d128-causal-tl-bf16-cuda", outcome="ok",
                   median_ms=1.113, iqr_ms=0.01, timer="cuda-events", flops=1.75e11, tflops=157.2, pct_peak=15.9,
                   device_ms=0.756)
    row = next(line for line in summary_lines([r]) if "triton-flash" in line).split()
    # median 1.113 ms stays the caller's figure; TFLOP/s 231.5 and 23.4% of the same peak by device time
    assert row[3:7] == ["1.1130", "0.0100", "231.4815", "23.4"], row


def test_the_terminal_tables_columns_stay_put_for_a_case_without_figures_and_a_missing_peak_is_explained():
    from attnsuite.plugin_bench import NO_DATASHEET_PEAK, summary_lines
    from attnsuite.record import CaseRecord

    ok = CaseRecord("gpt2-mha", "sdpa", "fwd", "b1-q64-h2-d16-causal-tl-fp32-cpu", outcome="ok", median_ms=1.5,
                    iqr_ms=0.1, timer="perf_counter", flops=1e9, tflops=0.0007)
    crash = CaseRecord("gpt2-mha", "h-segv", "fwd", "b1-q64-h2-d16-causal-tl-fp32-cpu", outcome="crash")
    lines = summary_lines([ok, crash])
    header = next(line for line in lines if "variant" in line)
    rows = [line for line in lines if line.strip().startswith(("sdpa", "h-segv"))]
    # every column ends where its heading ends, for a crash's "-" as for the ok case's figures
    for col in ("median ms", "iqr ms", "TFLOP/s", "%peak", "peak MiB"):
        end = header.index(col) + len(col)
        assert all(row[end - 1] != " " and (len(row) == end or row[end] == " ") for row in rows), (col, rows)
    assert lines[-1] == NO_DATASHEET_PEAK  # a CPU case has TFLOP/s and no datasheet peak: "-" is explained
    cuda = CaseRecord("fa-sweep", "sdpa", "fwd", "b1-q64-h2-d16-causal-tl-bf16-cuda", outcome="ok", median_ms=1.0,
                      tflops=100.0, pct_peak=10.0, flops=1e11)
    assert NO_DATASHEET_PEAK not in summary_lines([cuda])


class _Config:
    """Just enough of pytest.Config for the option readers: getoption by name."""

    def __init__(self, **options):
        self.options = options

    def getoption(self, name, default=None):
        return self.options.get(name, default)


@pytest.mark.parametrize("given", ["str", "Path", "open file"])
def test_the_benchmark_json_path_and_the_journal_beside_it_name_the_file_however_pytest_benchmark_passes_it(
        tmp_path, given):
    # pytest-benchmark on the GPU image hands --benchmark-json over as an open file (its repr had been
    # printed as the file's name, and the journal had gone to "<_io.BufferedWriter ...>.journal.jsonl");
    # 5.3 hands over a Path, whose .name alone had put the journal in the current folder
    from attnsuite import plugin_bench, plugin_gate

    target = tmp_path / "sub" / "run.json"
    target.parent.mkdir()
    with open(target, "wb") as handle:
        value = {"str": str(target), "Path": target, "open file": handle}[given]
        config = _Config(benchmark_json=value, **{"--attn-journal": None})
        assert plugin_bench.benchmark_json_path(config) == target
        assert plugin_bench._journal_path(config) == tmp_path / "sub" / "run.json.journal.jsonl"
        assert plugin_gate._files(config) == [("benchmark JSON", str(target))]
    assert plugin_bench.benchmark_json_path(_Config()) is None


class _Item:
    def __init__(self, bench):
        self.fixturenames = ("bench_case",) if bench else ("problem",)


@pytest.mark.parametrize("args, items, expected", [
    (["test_correctness", "--attn-mem-cap", "1G", "--attn-workload=decode", "--attn-only", "x"], [False],
     ["--attn-mem-cap", "--attn-workload"]),
    (["bench", "--attn-mem-cap", "1G"], [True, False], []),  # a benchmark session reads it
    (["test_correctness", "--attn-only", "x", "--attn-dtype", "float32"], [False], []),  # the checks read these
    (["test_correctness", "--attn-resume", "--attn-resume"], [False], ["--attn-resume"]),
    (["--attn-mem-cap", "1G"], [], []),  # nothing collected: pytest says so itself
], ids=["correctness-run", "benchmark-run", "shared-options", "named-once", "nothing-collected"])
def test_benchmark_only_options_in_a_session_without_benchmarks_are_named(args, items, expected):
    # pytest test_correctness --attn-mem-cap 1G had run without a word that the cap applied to nothing
    from attnsuite import plugin_bench

    assert plugin_bench.unused_bench_options(args, [_Item(b) for b in items]) == expected


def test_a_case_stopped_by_ctrl_c_leaves_no_unused_fixture_warning(monkeypatch):
    # an interrupted CI run (SIGINT at its time limit) had ended with pytest-benchmark's "Benchmark
    # fixture was not used at all in this test!" for the case it was measuring
    from types import SimpleNamespace

    from pytest_benchmark.fixture import BenchmarkFixture

    from attnsuite import plugin_bench

    def interrupted(bc):
        raise KeyboardInterrupt

    monkeypatch.setattr(plugin_bench, "_progress_tracker", lambda session: None)
    runner = SimpleNamespace(execute=interrupted)
    warned = []
    bench = SimpleNamespace(_cleanup_callbacks=[], _mode=None, skipped=False, _warner=None,
                            _logger=SimpleNamespace(warning=lambda text, **kw: warned.append(text)))
    with pytest.raises(KeyboardInterrupt):
        plugin_bench.BenchRunner.run(runner, SimpleNamespace(id="w/v/fwd/p"), bench, SimpleNamespace(session=None))
    BenchmarkFixture._cleanup(bench)  # pytest-benchmark's own end-of-test check
    assert warned == [], warned


def test_an_injection_into_a_variant_outside_the_selection_is_said_at_the_end(sdpa_alone_run):
    # --attn-inject-slowdown explicit=0.5 --attn-only sdpa had run and passed without a word
    _, result, data = sdpa_alone_run  # --attn-only sdpa --attn-inject-slowdown=hog=0.5
    assert data is not None, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["NOT SIMULATED: --attn-inject-slowdown hog: no case of it ran in this selection, "
                                 "so nothing of it was slowed"])


def test_a_run_started_outside_the_checkout_leaves_no_benchmark_storage_folder_there(gate_off_run_from_elsewhere):
    # pytest-benchmark makes its storage folder (./.benchmarks by default) at start-up: a run from a
    # user's own folder with -c <checkout>/pyproject.toml had left an empty .benchmarks/ there
    _, result, left = gate_off_run_from_elsewhere  # gate.md and the gate JSON named outside that folder
    assert result.ret == 0, result.stdout.str()[-3000:] + result.stderr.str()[-2000:]
    assert left == []


@pytest.mark.parametrize("given, expected", [
    (None, "file://{root}/.benchmarks"),  # pytest-benchmark's default: into the checkout
    ("file://./.benchmarks", "file://{root}/.benchmarks"),
    ("file://./elsewhere", "file://./elsewhere"),  # named by the user: kept as given
    ("elasticsearch+https://host/index", "elasticsearch+https://host/index"),
])
def test_only_the_default_benchmark_storage_moves_into_the_checkout(given, expected, tmp_path):
    from types import SimpleNamespace

    from attnsuite import plugin

    config = SimpleNamespace(option=SimpleNamespace(benchmark_storage=given or "file://./.benchmarks"),
                             rootpath=tmp_path)
    plugin.keep_benchmark_storage_in_rootdir(config)
    assert config.option.benchmark_storage == expected.format(root=tmp_path)


def test_a_variant_named_in_attn_only_of_which_nothing_was_measured_fails_the_run(sdpa_and_gpu_only_run):
    # a CUDA-only kernel benchmarked on a CPU runner had read "PASS: ... (none measured ...)", exit status 0
    _, result, data = sdpa_and_gpu_only_run
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["FAIL: --attn-only gpu-only: none of its * ran on this machine, every one was "
                                 "skipped (e.g. *): nothing of it was measured; *"])
    result.assert_outcomes(passed=2, skipped=2, failed=1)  # counted among pytest's failures


@pytest.mark.parametrize("outcomes, expected", [
    (["skipped", "skipped"], "none of its 2 cases ran on this machine, every one was skipped (e.g. why 0)"),
    ([], "no case of it is in this selection"),
    (["skipped", "ok"], None),
    (["numerics"], None),  # measured, and failed: its own failure says so
    # a kernel that asked for 4 TiB on every call had passed the run (out of memory ends a case as a skip)
    (["oom", "oom"], "none of its 2 cases was measured: 2 cases ran out of memory (e.g. why 0): nothing"),
    (["oom", "skipped"], "none of its 2 cases was measured: 1 case ran out of memory (e.g. why 0); 1 case "
                         "skipped (e.g. why 1): nothing"),
    (["oom", "ok"], None),  # the rest of a variant too big for the largest problems was measured
])
def test_unmeasured_named_variants(outcomes, expected):
    from attnsuite import summary
    from attnsuite.record import CaseRecord

    records = [CaseRecord("fa-sweep", "mine", "fwd", f"p{i}", outcome=o, detail=f"why {i}")
               for i, o in enumerate(outcomes)]
    records.append(CaseRecord("fa-sweep", "other", "fwd", "p0", outcome="skipped", detail="not named"))
    got = summary.unmeasured_named(records, ["mine"])
    if expected is None:
        assert got == {}
    else:
        assert list(got) == ["mine"] and expected in got["mine"] and got["mine"].startswith("--attn-only mine: ")


def test_a_run_on_github_actions_that_compared_nothing_says_so_as_a_workflow_warning(bench_run, monkeypatch,
                                                                                     sdpa_alone_run):
    # a CPU job on a runner with no compatible baseline passed in report mode with the fact on one log line
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    result, _ = bench_run(variants=("sdpa",))
    result.stdout.fnmatch_lines(["::warning title=attnsuite gate%3A nothing compared::NOT COMPARED: *; no baseline "
                                 "for this machine*"])
    _, result, _ = sdpa_alone_run  # the same selection without GITHUB_ACTIONS
    assert "::warning" not in result.stdout.str()


def _collected(*args: str) -> tuple[int, list[str]]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), str(ROOT / "bench"),
                           "--benchmark-only", "-p", "no:cacheprovider", "-q", "--collect-only", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.returncode, [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def test_attn_mode_takes_a_comma_separated_list_as_attn_only_and_attn_workload_do(pytester: pytest.Pytester):
    # `--attn-mode fwd,fwd+bwd` had been refused by argparse ("invalid choice") where --attn-only a,b worked
    # collected in this process, from a bench/ copy with the plugin (a pytest process each had cost seconds)
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")

    def collected(*args: str) -> tuple[int, list[str]]:
        res = pytester.runpytest("bench", "--benchmark-only", "-p", "no:cacheprovider", "-q",
                                 "--collect-only", *args)
        return res.ret, [line for line in res.outlines + res.errlines if line.strip()]

    listed = collected("--attn-workload=fa-sweep", "--attn-mode=fwd,fwd+bwd")
    repeated = collected("--attn-workload=fa-sweep", "--attn-mode=fwd", "--attn-mode=fwd+bwd")
    ids = [line for line in listed[1] if "::test_workload[" in line]
    assert listed[0] == repeated[0] == 0 and ids == [line for line in repeated[1] if "::test_workload[" in line]
    assert ids and {line.split("[", 1)[1].split("/")[2] for line in ids} == {"fwd", "fwd+bwd"}


def test_an_unknown_attn_mode_is_a_usage_error_naming_it_and_the_known_ones():
    status, lines = _collected("--attn-mode=fwd,backward")
    assert status == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: attnsuite: --attn-mode 'backward' is unknown; known: fwd, bwd, fwd+bwd, decode" in lines, lines


def test_recording_a_baseline_from_pytest_counts_the_failures_it_recorded(recorded_with_errors_run):
    # attnsuite record said it; pytest's --attn-record-baseline had said "4 added" of 2 errors among them
    _, result, _ = recorded_with_errors_run  # sdpa and boom, --attn-record-baseline
    result.stdout.fnmatch_lines(["baseline recorded: *", "2 recorded cases failed (2 error): a later run is judged "
                                 "against those outcomes (e.g. decode/boom/fwd/*"])
