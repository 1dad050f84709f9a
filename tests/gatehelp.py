"""Shared helpers of the gate's tests: synthetic records, fingerprints and result files.

Records are made through :class:`attnsuite.record.CaseRecord`, the benchmarks' contract, so the
tests exercise the same fields the benchmarks write.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from attnsuite.record import CaseRecord

FP_H100: dict[str, Any] = {
    "id": "nvidia-h100-80gb-hbm3-torch2.11-cu13",
    "gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": 132, "gpu_memory_bytes": 85_000_000_000,
    "driver": "580.65", "cuda": "13.0", "cudnn": "91000", "torch": "2.11.0+cu130", "triton": "3.6.0",
    "cpu_model": "AMD EPYC 9654", "cpu_count": 16,
}
FP_CPU: dict[str, Any] = {
    "id": "cpu-epyc-2c-torch2.13", "gpu_name": None, "torch": "2.13.0+cpu", "cuda": None,
    "cpu_model": "AMD EPYC 7B13", "cpu_count": 2,
}


def fp(base: dict[str, Any] = FP_H100, **changes: Any) -> dict[str, Any]:
    """A copy of a fingerprint with some fields changed."""
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def rec(variant: str = "sdpa-flash", workload: str = "fa-sweep", mode: str = "fwd",
        problem: str = "b4-q4096-h16-d128-causal-bf16-cuda0", **kw: Any) -> CaseRecord:
    """A synthetic ok CUDA record (1.0 ms, IQR 0.005 ms, 100 MiB) unless fields say otherwise.

    Like a record of the current benchmarks, it carries device time: unless given, device_ms,
    device_min_ms and device_iqr_ms mirror median_ms, min_ms and iqr_ms (no host overhead), so a
    test that changes median_ms changes the time the gate judges. Pass ``device_ms=None`` for a
    record of the old event-only method.
    """
    base = dict(outcome="ok", median_ms=1.0, iqr_ms=0.005, samples=50, timer="cuda-events",
                peak_mem_bytes=100 << 20, mem_method="cuda-allocator", backend="sdpa:flash",
                flops=1.1e12, tflops=1100.0, pct_peak=55.5)
    base.update(kw)
    if base["timer"].startswith("cuda"):
        for dev, ev in (("device_ms", "median_ms"), ("device_min_ms", "min_ms"), ("device_iqr_ms", "iqr_ms")):
            if dev not in kw:
                base[dev] = base.get(ev)
        if "device_method" not in kw and base.get("device_ms") is not None:
            base["device_method"] = "cuda-graph"
    return CaseRecord(workload=workload, variant=variant, mode=mode, problem=problem, **base)


def by_key(records: Iterable[CaseRecord]) -> dict[str, CaseRecord]:
    """Records keyed by their case key."""
    return {r.key: r for r in records}


def result_json(records: Iterable[CaseRecord], fingerprint: Optional[dict[str, Any]] = FP_H100) -> dict[str, Any]:
    """A minimal pytest-benchmark-shaped result object carrying the records and the fingerprint."""
    benches = []
    for r in records:
        benches.append({"group": r.workload, "name": f"test_bench[{r.key}]", "fullname": f"bench/x.py::test_bench[{r.key}]",
                        "params": None, "param": r.key, "extra_info": r.to_extra_info(), "options": {},
                        "stats": {"min": 0.001, "max": 0.001, "mean": 0.001, "stddev": 0.0, "rounds": 1,
                                  "median": 0.001, "iqr": 0.0, "q1": 0.001, "q3": 0.001, "iqr_outliers": 0,
                                  "stddev_outliers": 0, "outliers": "0;0", "ld15iqr": 0.001, "hd15iqr": 0.001,
                                  "ops": 1000.0, "total": 0.001, "iterations": 1}})
    obj: dict[str, Any] = {"machine_info": {}, "commit_info": {}, "benchmarks": benches,
                           "datetime": "2025-01-01T00:00:00", "version": "5.3.1"}
    if fingerprint is not None:
        obj["attnsuite"] = {"schema": 1, "fingerprint": fingerprint}
    return obj


def write_result(path: Path, records: Iterable[CaseRecord], fingerprint: Optional[dict[str, Any]] = FP_H100) -> Path:
    """Write a result file; return its path."""
    path.write_text(json.dumps(result_json(records, fingerprint), indent=1))
    return path


# A tiny pytest-benchmark project for pytester: its benchmark test writes the records of
# cases.json (CaseRecord fields) into extra_info, and its conftest adds the fingerprint of
# fingerprint.json to the JSON the way the benchmarks plugin does.
CONFTEST = '''
import json
from pathlib import Path

pytest_plugins = ["attnsuite.plugin_gate"]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    fp = json.loads(Path(str(config.rootpath), "fingerprint.json").read_text())
    output_json["attnsuite"] = {"schema": 1, "fingerprint": fp}
    cal = Path(str(config.rootpath), "calibration.json")  # the instance calibration, when a test sets one
    if cal.exists():
        output_json["attnsuite"]["calibration"] = json.loads(cal.read_text())
    # Cases that produced no samples (out of memory before timing) are added here with zero
    # rounds, as the benchmarks plugin does: they exist only in the JSON.
    landed = Path(str(config.rootpath), "landed.json")
    if landed.exists():
        from attnsuite.record import CaseRecord
        for c in json.loads(landed.read_text()):
            rec = CaseRecord(**c)
            stats = {k: 0.0 for k in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3",
                                      "ld15iqr", "hd15iqr", "ops", "total")}
            stats.update({"rounds": 0, "iterations": 1, "iqr_outliers": 0, "stddev_outliers": 0,
                          "outliers": "0;0", "data": []})
            output_json["benchmarks"].append({
                "group": rec.workload, "name": f"test_bench[{rec.variant}]",
                "fullname": f"test_bench.py::test_bench[{rec.variant}]", "params": {"bench_case": rec.key},
                "param": rec.variant, "extra_info": rec.to_extra_info(), "options": {}, "stats": stats})
'''

# A stand-in for the benchmarks plugin's confirm_cases(config, keys), registered under the real
# plugin's name: it writes the keys it was asked for to confirm_calls.json and attaches a second
# record (the first one's fields changed by confirm.json, per variant) as extra["confirm"].
CONFIRM_PLUGIN = '''
import types


def _confirm_cases(config, keys):
    from attnsuite.record import CaseRecord

    root = Path(str(config.rootpath))
    calls = root / "confirm_calls.json"
    done = json.loads(calls.read_text()) if calls.exists() else []
    calls.write_text(json.dumps(done + [sorted(keys)]))
    second = json.loads((root / "confirm.json").read_text())
    out = {}
    for bench in config._benchmarksession.benchmarks:
        info = bench.extra_info
        if info.get("case") in keys:
            rec = CaseRecord.from_extra_info({**{k: v for k, v in info.items() if k != "extra"},
                                              **second.get(info["variant"], {})})
            info.setdefault("extra", {})["confirm"] = rec.to_extra_info()
            out[info["case"]] = rec
    return out


def pytest_configure(config):
    plugin = types.ModuleType("fake_bench")
    plugin.confirm_cases = _confirm_cases
    config.pluginmanager.register(plugin, "attnsuite.plugin_bench")
'''

BENCH = '''
import json
from pathlib import Path

import pytest

from attnsuite.record import CaseRecord

CASES = json.loads((Path(__file__).parent / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["variant"] for c in CASES])
def test_bench(benchmark, case):
    benchmark.extra_info.update(CaseRecord(**case).to_extra_info())
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
'''


def pytest_benchmark_compare(result_json: Path, workdir: Path) -> subprocess.CompletedProcess:
    """Run pytest-benchmark's own ``compare`` on a result file (copied into ``workdir``, away from
    any test project's conftest, which the command would read); skips when it is not installed."""
    import pytest

    exe = Path(sys.executable).parent / "pytest-benchmark"
    found = str(exe) if exe.exists() else shutil.which("pytest-benchmark") or shutil.which("py.test-benchmark")
    if not found:
        pytest.skip("the pytest-benchmark command is not installed beside this Python")
    shutil.copy(result_json, workdir / "result.json")
    return subprocess.run([found, "compare", "result.json", "--columns=min,median", "--group-by=name"],
                          capture_output=True, text=True, timeout=120, cwd=workdir)
