"""Interop: the result JSON with attnsuite's additions stays pytest-benchmark's own format."""

from __future__ import annotations

import json

from attnsuite import baseline as bl
from gatehelp import BENCH, CONFTEST, FP_H100, pytest_benchmark_compare

pytest_plugins = ["pytester"]

CASES = [
    {"workload": "tiny", "variant": "fast", "mode": "fwd", "problem": "b1-q64-h2-d32-nomask-fp32-cpu",
     "median_ms": 0.5, "iqr_ms": 0.01, "peak_mem_bytes": 4096, "tflops": 0.1},
    {"workload": "tiny", "variant": "oomy", "mode": "fwd+bwd", "problem": "b1-q64-h2-d32-nomask-fp32-cpu",
     "outcome": "oom", "oom_bytes": 1 << 40, "detail": "CPU guard: 1 TiB over budget"},
]


def test_result_json_with_attnsuite_records_loads_in_pytest_benchmark_compare(pytester, tmp_path_factory):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_bench=BENCH)
    (pytester.path / "cases.json").write_text(json.dumps(CASES))
    (pytester.path / "fingerprint.json").write_text(json.dumps(FP_H100))
    # plus a case with no samples at all (zero rounds), added to the JSON as the benchmarks plugin does
    (pytester.path / "landed.json").write_text(json.dumps([{**CASES[1], "variant": "nosamples"}]))
    res = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-only", "--benchmark-json=result.json")
    assert res.ret == 0, res.stdout.str()
    result = pytester.path / "result.json"
    obj = json.loads(result.read_text())
    assert obj["attnsuite"]["schema"] == 1 and len(obj["benchmarks"]) == 3
    # attnsuite reads its records back, the out-of-memory case included
    run = bl.load_results(result)
    assert {r.outcome for r in run.records.values()} == {"ok", "oom"}
    # and pytest-benchmark's own reader accepts the same file (run away from the test project's
    # conftest: the compare command reads a conftest in its working folder)
    proc = pytest_benchmark_compare(result, tmp_path_factory.mktemp("compare"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_bench[fast]" in proc.stdout and "test_bench[oomy]" in proc.stdout
    assert "test_bench[nosamples]" in proc.stdout
