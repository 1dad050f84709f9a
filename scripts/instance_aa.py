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

**Instances.** ``--instance NAME=RUN[,RUN...]`` (repeatable) names each machine instance's runs
(its first run is the fresh one: cold caches, the machine's first contact with the code).
``--only-from GLOB=NAME[,NAME...]`` takes the cases of variants matching GLOB only from those
instances (their code or measuring method changed since the others ran). Then:

* ``--leave-one-out`` judges each instance's runs against a baseline recorded (through the
  baseline file format, as the gate reads it) from all the *other* instances: a false-alarm rate
  on instances the baseline did not come from, with the shipped thresholds, before any new
  machine is spent on it. It also shows how the band rule would fare with a baseline of one
  instance fewer than the shipped one.
* ``--record OUT`` writes the baseline of all the instances to OUT, a new file
  (:func:`attnsuite.combine.combine_instances`, then :func:`attnsuite.baseline.record_baseline`).

    python scripts/instance_aa.py --instance A=a.json.gz --instance E=e1.json.gz,e2.json.gz ... \
        --only-from 'triton-*=E,G,H' --leave-one-out
    python scripts/instance_aa.py --instance ... --only-from ... --record baselines/new.json

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
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnsuite import baseline as bl  # noqa: E402
from attnsuite import gate  # noqa: E402
from attnsuite.combine import combine_instances, variant_matches  # noqa: E402
from attnsuite.verdict import CONFIRMABLE, Comparison, ThresholdConfig, host_bound  # noqa: E402
from attnsuite.gpu_state import describe  # noqa: E402
from attnsuite.record import CaseRecord  # noqa: E402


@dataclass
class RunSummary:
    """One fresh-instance run against the baseline."""

    path: str
    judged: int = 0  # cases with a time verdict (ok in both, time gated)
    flagged_first: int = 0  # slower / memory-growth on the first measurement
    gating: dict[str, int] = field(default_factory=dict)  # verdict -> count, after confirmation
    host_bound: int = 0
    host_bound_max_change: Optional[float] = None  # largest |device-time change| among host-bound cases
    host_bound_max_case: str = ""  # that case, with its signed change (the reader's next question)
    worst: list[str] = field(default_factory=list)  # the gating findings, for the reader
    cleared: list[str] = field(default_factory=list)  # first flagged, then not confirmed
    slowed: dict[float, tuple[int, int]] = field(default_factory=dict)  # fraction -> (caught, cases)

    @property
    def gated(self) -> bool:
        return bool(self.gating)


SLOWED_MIN_MS = 0.2  # the bound: an injected slowdown is judged on cases of at least this much time
TIME_FIELDS = ("median_ms", "min_ms", "device_ms", "device_min_ms", "host_overhead_ms")


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
        if v.time_change is None or b is None or variant_matches(v.key, exclude):
            continue
        ms = b.device_ms if b.device_ms is not None else b.median_ms
        if ms is None or ms < SLOWED_MIN_MS:
            continue
        cases += 1
        caught += v.verdict == "slower" or "slower" in v.flags
    return caught, cases


def gpu_clocks(rec: Optional[CaseRecord]) -> str:
    """The GPU's state while a flagged case's samples were taken, first measurement and confirmation
    (``extra["gpu_state"]["timed"]``, attnsuite.gpu_state), or "" where the record has none."""
    if rec is None:
        return ""
    first = (rec.extra.get("gpu_state") or {}).get("timed")
    second = ((rec.extra.get("confirm") or {}).get("extra") or {}).get("gpu_state", {}).get("timed")
    if not first and not second:
        return ""
    return f"; GPU while timed: first {describe(first) or '-'}, confirmation {describe(second) or '-'}"


def summarise(cmp: Comparison, base: bl.Run, cur: bl.Run, path: str, thresholds: ThresholdConfig,
              exclude: Optional[list[str]] = None) -> RunSummary:
    """The A/A figures of one judged run (see the module docstring); host-bound as the gate's rule
    says (:func:`attnsuite.verdict.host_bound` with each case's thresholds). Cases of variants
    matching ``exclude`` are left out."""
    out = RunSummary(path)
    for v in cmp.verdicts:
        if variant_matches(v.key, exclude or []):
            continue
        if v.time_change is not None:
            out.judged += 1
        gpu = gpu_clocks(cur.records.get(v.key))
        if any(f in CONFIRMABLE for f in v.flags) or (v.confirmed is False):
            out.flagged_first += 1
            if not v.gating:  # cleared by its second measurement: shown, so a pattern can be seen
                out.cleared.append(f"not confirmed {v.key}: {v.message[:160]}{gpu}")
        if v.gating:
            out.gating[v.verdict] = out.gating.get(v.verdict, 0) + 1
            if v.verdict != "missing":  # counted in the table; a cut run has hundreds
                out.worst.append(f"{v.verdict} {v.key}: {v.message[:160]}{gpu}")
        b, c = base.records.get(v.key), cur.records.get(v.key)
        if b is None or c is None or v.time_change is None or not v.statistic.startswith("device"):
            continue
        if host_bound(b, c, thresholds.for_case(c, "cuda")):
            out.host_bound += 1
            change = abs(v.time_change)
            if change > (out.host_bound_max_change or -1.0):
                out.host_bound_max_change = change
                out.host_bound_max_case = f"{v.key} ({v.time_change:+.2%})"
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
    for r in rows:
        if r.host_bound_max_case:
            lines.append(f"  {r.path}: largest host-bound device-time change {r.host_bound_max_case}")
    return "\n".join(lines)


REPO = Path(__file__).resolve().parents[1]


def parse_named(specs: list[str], what: str) -> dict[str, list[str]]:
    """``NAME=a,b`` entries as {NAME: [a, b]}; ValueError naming the entry when malformed or repeated."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        items = [x for x in rest.split(",") if x]
        if not sep or not name or not items:
            raise ValueError(f"{what} {spec!r}: expected NAME=ITEM[,ITEM...]")
        if name in out:
            raise ValueError(f"{what} {spec!r}: {name} is given twice")
        out[name] = items
    return out


def record_instances(instances: dict[str, list[bl.Run]], only_from: dict[str, list[str]], out: Path) -> str:
    """Write the baseline of ``instances`` to ``out`` (a new file); the recorder's summary line."""
    if out.exists():
        raise ValueError(f"{out} exists: a baseline recorded from instances replaces nothing in place; "
                         "write a new file and move it over the old one")
    combined = combine_instances(instances, only_from)
    return str(bl.record_baseline(combined.run, out))


def held_out_baseline(instances: dict[str, list[bl.Run]], only_from: dict[str, list[str]], held: str,
                      folder: Path) -> bl.Run:
    """The baseline of every instance but ``held``, written and read back as the gate reads a baseline."""
    others = {n: r for n, r in instances.items() if n != held}
    rule = {g: [n for n in names if n != held] for g, names in only_from.items()}
    path = folder / f"without-{bl.safe_file_stem(held)}.json"
    record_instances(others, rule, path)
    return gate.run_of_baseline(bl.load_baseline(path))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="fresh-instance A/A: unchanged code judged against a baseline")
    ap.add_argument("--baseline", default=None, help="the baseline file the runs are judged against")
    ap.add_argument("results", nargs="*", help="result JSON(s) from fresh instances (.gz allowed)")
    ap.add_argument("--instance", action="append", default=[], metavar="NAME=RUN[,RUN]",
                    help="one machine instance's runs, its fresh run first (repeatable)")
    ap.add_argument("--only-from", action="append", default=[], metavar="GLOB=NAME[,NAME]",
                    help="take the cases of variants matching GLOB only from these instances (repeatable)")
    ap.add_argument("--leave-one-out", action="store_true",
                    help="judge each instance against the baseline of all the others")
    ap.add_argument("--record", default=None, metavar="OUT", help="write the baseline of all the instances to OUT")
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
    by_instance = bool(args.instance)
    if by_instance and (args.baseline or args.results):
        ap.error("--instance runs are judged leave-one-out or recorded: give no --baseline and no RESULT")
    if by_instance and not (args.leave_one_out or args.record):
        ap.error("--instance needs --leave-one-out, --record or both")
    if not by_instance and (args.leave_one_out or args.record or args.only_from):
        ap.error("--leave-one-out, --record and --only-from need --instance")
    if not by_instance and not (args.baseline and args.results):
        ap.error("give --baseline and RESULT(s), or --instance")
    try:
        rows = []
        if by_instance:
            named = parse_named(args.instance, "--instance")
            only_from = parse_named(args.only_from, "--only-from")
            instances = {n: [bl.load_results(p) for p in paths] for n, paths in named.items()}
            if args.record:
                print(f"recorded {args.record}: {record_instances(instances, only_from, Path(args.record))}")
            judged: list[tuple[bl.Run, list[str], list[bl.Run], list[str]]] = []
            if args.leave_one_out:
                if len(instances) < 2:
                    raise ValueError("--leave-one-out needs at least two instances")
                with tempfile.TemporaryDirectory(prefix="instance-aa-") as folder:
                    for name, runs in instances.items():
                        base = held_out_baseline(instances, only_from, name, Path(folder))
                        labels = [f"{name} run {i + 1}{' (fresh)' if i == 0 else ''}: {p}"
                                  for i, p in enumerate(named[name])]
                        # its own cases of variants it may not give (older code) are not an A/A comparison
                        skip = [g for g, names in only_from.items() if name not in names]
                        judged.append((base, skip, runs, labels))
            thresholds, _ = gate.thresholds_for(args.thresholds, REPO / "baselines")
        else:
            base = gate.run_of_baseline(bl.load_baseline(args.baseline))
            thresholds, _ = gate.thresholds_for(args.thresholds, Path(args.baseline).parent)
            judged = [(base, [], [bl.load_run(p) for p in args.results], list(args.results))]  # .gz allowed
        for base, skip, runs, labels in judged:
            for cur, label in zip(runs, labels):
                cmp = gate.judge_runs(base, cur, thresholds=thresholds)
                exclude = args.exclude + skip
                row = summarise(cmp, base, cur, label, thresholds, exclude)
                for fraction in args.slowed:
                    slowed = gate.judge_runs(base, slowed_run(cur, fraction), thresholds=thresholds)
                    row.slowed[fraction] = slowdown_caught(slowed, base, exclude)
                rows.append(row)
    except (OSError, ValueError) as exc:  # baseline/result/threshold errors name their file
        print(f"instance_aa.py: {exc}", file=sys.stderr)
        return 2
    if not rows:
        return 0
    text = table(rows)
    print(text)
    for r in rows:
        for line in r.worst[:10] + r.cleared[:10]:
            print(f"  {r.path}: {line}")
    if args.markdown:
        bl.atomic_write_text(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
