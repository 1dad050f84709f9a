#!/usr/bin/env python3
"""Fresh-instance A/A: unchanged code on machines the baseline did not come from, judged against it.

Each RESULT is one run of the benchmarks (pytest-benchmark JSON, ``.gz`` allowed) on a fresh
machine instance, with the code the baseline was recorded from. Every case is judged by the gate's
own compare path (:func:`attnsuite.gate.judge_runs`, the thresholds the gate would use), and per
run this prints:

* the cases judged on time (ok in both, time gated) and how many a first measurement flagged
  (``slower`` or ``memory-growth`` before confirmation: still gating, or dropped as not confirmed);
* the gating verdicts after confirmation, by kind (what would fail CI);
* for host-bound cases (launch fraction at the gate's ``host_bound_at`` or more on either side),
  the largest device-time change.

and the series: in how many runs nothing gated, and the flagged share of all cases judged. These
are the figures issue 9 judges the gate by ("no gating verdict in at least 4 of 5 fresh-instance
runs; before confirmation at most 0.2% of cases flagged on device time").

    python scripts/instance_aa.py --baseline baselines/cuda-nvidia-h200-...json RUN1.json.gz RUN2.json.gz
    python scripts/instance_aa.py ... --markdown results/aa.md   # also write the table
    python scripts/instance_aa.py ... --exclude 'triton-*' --slowed 0.05 --slowed 0.10

``--exclude GLOB`` leaves out the cases of matching variants (code or measurement method changed
since the baseline was recorded: not an A/A comparison). ``--slowed F`` also judges each run with
every time of every case made F slower, and reports which share of the cases with at least 0.2 ms
of baseline device time (median time off CUDA) its first measurement flags ``slower``: a
synthetic slowdown on a real instance's noise, to weigh a threshold choice offline (run it with
each ``--thresholds`` file). It stands in for no measurement: an injected slowdown really timed on
the device is ``scripts/gate_eval.py``'s.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsuite import baseline as bl  # noqa: E402
from attnsuite import gate  # noqa: E402
from attnsuite.verdict import CONFIRMABLE, Comparison, ThresholdConfig, host_bound  # noqa: E402

@dataclass
class RunSummary:
    """One fresh-instance run against the baseline."""

    path: str
    judged: int = 0  # cases with a time verdict (ok in both, time gated)
    flagged_first: int = 0  # slower / memory-growth on the first measurement
    gating: dict[str, int] = field(default_factory=dict)  # verdict -> count, after confirmation
    host_bound: int = 0
    host_bound_max_change: Optional[float] = None  # largest |device-time change| among host-bound cases
    worst: list[str] = field(default_factory=list)  # the gating findings, for the reader
    slowed: dict[float, tuple[int, int]] = field(default_factory=dict)  # fraction -> (caught, cases)

    @property
    def gated(self) -> bool:
        return bool(self.gating)


SLOWED_MIN_MS = 0.2  # the bound: an injected slowdown is judged on cases of at least this much time
TIME_FIELDS = ("median_ms", "min_ms", "device_ms", "device_min_ms", "host_overhead_ms")


def excluded(key: str, patterns: list[str]) -> bool:
    """Whether the case ``workload/variant/mode/problem`` belongs to a variant matching a pattern."""
    parts = key.split("/")
    return len(parts) > 1 and any(fnmatch.fnmatchcase(parts[1], p) for p in patterns)


def slowed_run(cur: bl.Run, fraction: float) -> bl.Run:
    """A copy of ``cur`` with every case's times ``fraction`` longer and no second measurement
    (the first measurement is what a slowdown must be flagged on)."""
    out = copy.deepcopy(cur)
    for r in out.records.values():
        for name in TIME_FIELDS:
            value = getattr(r, name, None)
            if value is not None:
                setattr(r, name, value * (1.0 + fraction))
        r.extra.pop("confirm", None)
    return out


def slowdown_caught(cmp: Comparison, base: bl.Run, exclude: list[str]) -> tuple[int, int]:
    """(cases flagged slower, cases judged) among the judged cases of at least SLOWED_MIN_MS."""
    caught = cases = 0
    for v in cmp.verdicts:
        b = base.records.get(v.key)
        if v.time_change is None or b is None or excluded(v.key, exclude):
            continue
        ms = b.device_ms if b.device_ms is not None else b.median_ms
        if ms is None or ms < SLOWED_MIN_MS:
            continue
        cases += 1
        caught += v.verdict == "slower" or "slower" in v.flags
    return caught, cases


def summarise(cmp: Comparison, base: bl.Run, cur: bl.Run, path: str, thresholds: ThresholdConfig,
              exclude: Optional[list[str]] = None) -> RunSummary:
    """The A/A figures of one judged run (see the module docstring); host-bound as the gate's rule
    says (:func:`attnsuite.verdict.host_bound` with each case's thresholds). Cases of variants
    matching ``exclude`` are left out."""
    out = RunSummary(path)
    for v in cmp.verdicts:
        if excluded(v.key, exclude or []):
            continue
        if v.time_change is not None:
            out.judged += 1
        if any(f in CONFIRMABLE for f in v.flags) or (v.confirmed is False):
            out.flagged_first += 1
        if v.gating:
            out.gating[v.verdict] = out.gating.get(v.verdict, 0) + 1
            if v.verdict != "missing":  # counted in the table; a cut run has hundreds
                out.worst.append(f"{v.verdict} {v.key}: {v.message[:160]}")
        b, c = base.records.get(v.key), cur.records.get(v.key)
        if b is None or c is None or v.time_change is None or not v.statistic.startswith("device"):
            continue
        if host_bound(b, c, thresholds.for_case(c, "cuda")):
            out.host_bound += 1
            change = abs(v.time_change)
            out.host_bound_max_change = max(change, out.host_bound_max_change or 0.0)
    return out


def table(rows: list[RunSummary]) -> str:
    """The markdown table of the series, with its totals."""
    fractions = sorted({f for r in rows for f in r.slowed})
    lines = ["| run | judged | flagged (first) | gating after confirmation | host-bound: max device change |"
             + "".join(f" slowed {f:+.0%}: caught |" for f in fractions),
             "|---|---:|---:|---|---:|" + "---:|" * len(fractions)]
    for r in rows:
        gating = ", ".join(f"{n} {k}" for k, n in sorted(r.gating.items())) or "none"
        hb = "-" if r.host_bound_max_change is None else f"{r.host_bound_max_change:.2%} of {r.host_bound}"
        caught = "".join(" {} of {} |".format(*r.slowed.get(f, (0, 0))) for f in fractions)
        lines.append(f"| {r.path} | {r.judged} | {r.flagged_first} | {gating} | {hb} |{caught}")
    judged = sum(r.judged for r in rows)
    flagged = sum(r.flagged_first for r in rows)
    clean = sum(1 for r in rows if not r.gated)
    share = f"{flagged / judged:.2%}" if judged else "-"
    lines.append("")
    lines.append(f"Runs with no gating verdict: {clean} of {len(rows)}. Flagged before confirmation: "
                 f"{flagged} of {judged} cases judged ({share}).")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="fresh-instance A/A: unchanged code judged against a baseline")
    ap.add_argument("--baseline", required=True, help="the baseline file the runs are judged against")
    ap.add_argument("results", nargs="+", help="result JSON(s) from fresh instances (.gz allowed)")
    ap.add_argument("--thresholds", default=None, help="thresholds JSON (default: the gate's rule)")
    ap.add_argument("--markdown", default=None, help="also write the table here")
    ap.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="leave out the cases of variants matching GLOB (repeatable)")
    ap.add_argument("--slowed", action="append", default=[], type=float, metavar="F",
                    help="also judge each run with every time F slower (e.g. 0.05) and count the cases of at "
                         f"least {SLOWED_MIN_MS} ms flagged slower (repeatable)")
    args = ap.parse_args(argv)
    bad = [f for f in args.slowed if not 0.0 < f < 1.0]
    if bad:
        ap.error(f"--slowed takes a fraction above 0 and below 1 (0.05 is 5%), got {bad[0]}")
    try:
        base = gate.run_of_baseline(bl.load_baseline(args.baseline))
        thresholds, _ = gate.thresholds_for(args.thresholds, Path(args.baseline).parent)
        rows = []
        for path in args.results:
            cur = bl.load_run(path)  # .gz allowed
            cmp = gate.judge_runs(base, cur, thresholds=thresholds)
            row = summarise(cmp, base, cur, path, thresholds, args.exclude)
            for fraction in args.slowed:
                slowed = gate.judge_runs(base, slowed_run(cur, fraction), thresholds=thresholds)
                row.slowed[fraction] = slowdown_caught(slowed, base, args.exclude)
            rows.append(row)
    except (OSError, ValueError) as exc:  # baseline/result/threshold errors name their file
        print(f"instance_aa.py: {exc}", file=sys.stderr)
        return 2
    text = table(rows)
    print(text)
    for r in rows:
        for line in r.worst[:10]:
            print(f"  {r.path}: {line}")
    if args.markdown:
        bl.atomic_write_text(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
