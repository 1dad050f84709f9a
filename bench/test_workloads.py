"""Every registered variant on every workload it supports, in fwd, bwd and fwd+bwd.

Run with ``pytest bench --benchmark-only`` (quick tier on CPU, full tier when CUDA is present).
Each case is one pytest item with the id ``workload/variant/mode/problem``; the pytest-benchmark
table is grouped per workload and mode; the per-case record (device time, FLOP/s, % of peak, peak
memory, backend, outcome) is in the JSON's ``extra_info`` and in the "attnsuite measurements"
section at the end of the run. See docs/benchmarks.md.
"""

from __future__ import annotations

import pytest

from attnsuite.plugin_bench import case_list


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" in metafunc.fixturenames:
        # parametrised by the case key (a string), so pytest-benchmark's JSON "params" stay readable
        keys = [c.id for c in case_list(metafunc.config)]
        metafunc.parametrize("bench_case", keys, ids=keys)


def test_workload(bench_case, benchmark, attn_bench, request):
    """Time, measure and check one case; skip/oom end as skips with the reason, numerics/error fail."""
    attn_bench.run(attn_bench.case(bench_case), benchmark, request)
