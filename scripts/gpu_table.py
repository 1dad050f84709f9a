#!/usr/bin/env python3
"""Print the README's table of main GPU figures from benchmark result JSONs.

Usage: python scripts/gpu_table.py [--only WORKLOAD/MODE ...] RESULT.json [RESULT.json ...]
The figures are read from the records, never typed in; the header names the machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsuite.record import CaseRecord  # noqa: E402

# (workload, mode, problem-id fragment): the rows a reader compares first
PICKS = [
    ("fa-sweep", "fwd", "b4-q4096-h16-d128-causal"),
    ("fa-sweep", "fwd+bwd", "b4-q4096-h16-d128-causal"),
    ("fa-sweep", "fwd", "b1-q16384-h16-d128-causal"),
    ("gpt2-mha", "fwd+bwd", "b8-q1024-h12-d64-m768"),
    ("video-wm", "fwd+bwd", "frame65"),
    ("llama3-70b", "fwd", "h64:8"),
    ("deepseek-v3", "fwd", "rope_dim64"),
    ("deepseek-v3", "fwd+bwd", "d56"),
    ("decode", "fwd", "q1k32768"),
    ("longnet", "fwd", "b1-q16384"),
]


def _load(path: str) -> dict:
    """A result file (gzip-compressed or not); exits with a message naming the file when unusable."""
    try:
        with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as fh:
            data = json.load(fh)
    except (OSError, ValueError, EOFError) as exc:
        sys.exit(f"gpu_table.py: cannot read {path}: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        sys.exit(f"gpu_table.py: {path} is not a pytest-benchmark result file (no \"benchmarks\" list)")
    return data


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description="The README's table of main GPU figures from result JSONs.")
    ap.add_argument("results", nargs="+", help="pytest-benchmark result JSON(s), .gz allowed")
    ap.add_argument("--only", action="append", default=[], metavar="WORKLOAD/MODE", help="only these rows")
    args = ap.parse_args(argv)
    only, paths = args.only, args.results
    recs, machine = [], ""
    for path in paths:
        data = _load(path)
        fp = data.get("attnsuite", {}).get("fingerprint", {})
        machine = (f"{fp.get('gpu_name', '?')}, driver {fp.get('driver', '?')}, torch {fp.get('torch', '?')}, "
                   f"CUDA {fp.get('cuda', '?')}, triton {fp.get('triton', '?')}, "
                   f"SM clock {fp.get('gpu_clock_sm_mhz_at_start', '?')} MHz at start")
        recs += [b["extra_info"] for b in data["benchmarks"]]
    print(f"Measured on {machine} ({', '.join(paths)}):\n")
    print("TFLOP/s and % peak: by device time where a case has one (CUDA), else by the median.\n")
    print("| workload | mode | problem | variant | ms (median) | ms (device) | TFLOP/s | % peak | peak MiB | backend |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for workload, mode, frag in PICKS:
        if only and f"{workload}/{mode}" not in only:
            continue
        rows = [r for r in recs if r["workload"] == workload and r["mode"] == mode and frag in r["problem"]]
        problems = sorted({r["problem"] for r in rows})
        if not problems:
            continue
        rows = [r for r in rows if r["problem"] == problems[0]]
        for r in sorted(rows, key=lambda r: (r["outcome"] != "ok", r.get("median_ms") or 1e30)):
            if r["outcome"] == "skipped":
                continue
            mib = "-" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**20:.0f}"
            if r["outcome"] == "ok":
                rec = CaseRecord.from_extra_info(r)
                rate, pct = rec.rate(), rec.rate_pct_peak()  # the reports' one rule: device time where there is one
                dev = "-" if rec.device_ms is None else f"{rec.device_ms:.3f}"
                figs = (f"{rec.median_ms:.3f} | {dev} | {'-' if rate is None else f'{rate:.1f}'} | "
                        f"{'-' if pct is None else f'{pct:.1f}'} | {mib}")
            else:
                figs = f"{r['outcome']} | - | - | - | {mib}"
            print(f"| {workload} | {mode} | {r['problem']} | {r['variant']} | {figs} | {r.get('backend', '')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
