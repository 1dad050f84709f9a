#!/usr/bin/env python3
"""How much each case's time moved between two runs of unchanged code (e.g. two machine instances).

For every case that ran ok in both result files it prints the change of the event-bracketed time
(min) and of the device time (device min), overall and for host-bound cases (launch_fraction at
the gate's host_bound_at, 0.5, or more in either run: the GPU waited on Python), with the cases that moved most. This is the evidence
behind "device time does not follow the host": host-bound cases whose event time moves by tens of
percent between instances should move by a few percent at most in device time.

It also lists the cases whose autotuned Triton kernels ran another tile config in the two runs
(``extra["triton_configs"]``, recorded since c14faed): a Triton case's time can move between
machines because its autotuner chose differently, not because the machine is slower.

    python scripts/instance_spread.py A.json[.gz] B.json[.gz] [--top 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsuite import baseline as bl  # noqa: E402
from attnsuite.verdict import DEVICE_DEFAULTS  # noqa: E402

HOST_BOUND_AT = DEVICE_DEFAULTS["cuda"].host_bound_at  # the gate's own rule for a host-bound case


def changes(a: bl.Run, b: bl.Run) -> list[tuple[float, float, float, str]]:
    """(launch fraction, device-min change, event-min change, key) of the cases ok in both runs."""
    rows = []
    for key, ra in a.records.items():
        rb = b.records.get(key)
        if rb is None or ra.outcome != "ok" or rb.outcome != "ok":
            continue
        if not (ra.device_min_ms and rb.device_min_ms and ra.min_ms and rb.min_ms):
            continue
        lf = max(ra.launch_fraction or 0.0, rb.launch_fraction or 0.0)
        rows.append((lf, rb.device_min_ms / ra.device_min_ms - 1, rb.min_ms / ra.min_ms - 1, key))
    return rows


def config_changes(a: bl.Run, b: bl.Run) -> list[tuple[str, str, str, str]]:
    """(key, kernel, config in a, config in b) for each autotuned kernel whose choice differs
    between the runs, among cases that recorded their choices in both."""
    out = []
    for key, ra in sorted(a.records.items()):
        rb = b.records.get(key)
        ca = (ra.extra or {}).get("triton_configs") or {}
        cb = ((rb.extra or {}).get("triton_configs") or {}) if rb is not None else {}
        for kernel in sorted(set(ca) & set(cb)):
            if ca[kernel] != cb[kernel]:
                out.append((key, kernel, ca[kernel], cb[kernel]))
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    try:
        a, b = bl.load_run(args.a), bl.load_run(args.b)  # .gz allowed
        rows = changes(a, b)
    except (bl.InputFileError, OSError) as exc:
        print(f"instance_spread: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("no case ran ok with device time in both files", file=sys.stderr)
        return 2
    for label, sel in (("all", rows), ("host-bound", [r for r in rows if r[0] >= HOST_BOUND_AT])):
        if not sel:
            continue
        dev, ev = [abs(r[1]) for r in sel], [abs(r[2]) for r in sel]
        print(f"{label}: {len(sel)} cases; |device min change| median {100 * _median(dev):.2f}%, "
              f"max {100 * max(dev):.2f}%, over 3%: {sum(d > 0.03 for d in dev)}; "
              f"|event min change| median {100 * _median(ev):.1f}%, max {100 * max(ev):.1f}%")
    for lf, d, e, key in sorted(rows, key=lambda r: -abs(r[1]))[: args.top]:
        print(f"  device {100 * d:+.2f}%  event {100 * e:+.1f}%  launch fraction {lf:.2f}  {key}")
    moved = {key: d for _, d, _, key in rows}
    differ = config_changes(a, b)
    print(f"Triton tile configs that differ between the runs: {len(differ)}")
    for key, kernel, ca, cb in differ:
        change = f"device {100 * moved[key]:+.2f}%" if key in moved else "no device time in both"
        print(f"  {kernel}: {ca} -> {cb}  ({change})  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
