#!/usr/bin/env python3
"""Measure the regression gate itself: its false-alarm rate and its detection rate.

1. ``--ref-runs`` reference runs of the benchmarks (default 3), combined per case by the median as
   ``attnsuite record`` combines several runs, become the baseline (rounded like a recorded one);
   or ``--baseline FILE`` judges against an existing baseline, e.g. the committed one recorded on
   another machine instance (what CI does).
2. A/A: ``--runs`` more runs of unchanged code; every gating verdict among cases that ran ok in
   both is a false alarm. Rate = false alarms / cases judged.
3. Injection: ``--runs`` runs with ``--attn-inject-slowdown VARIANT=FRACTION``. In each trial every
   chosen variant gets one of the fractions (rotating over trials, so each variant sees each
   fraction), so one run gives a trial per variant: a single variant is slowed per case, and cases
   are timed one at a time, so the others do not feel it. ``--single`` instead slows one variant
   per run (more runs, same statistic). A case counts as detected when its verdict is ``slower``.

Every run is a separate pytest process (what CI does), its JSON kept under OUT/runs; ``--resume``
reuses the runs already there, so a long evaluation can be split across commands with time limits.
Writes OUT/summary.json and OUT/summary.md.

    python scripts/gate_eval.py --out results/gate_eval --runs 5                 # CPU, quick tier
    python scripts/gate_eval.py --out results/gate_eval_gpu --tier full --runs 10 --resume
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnsuite import baseline as bl  # noqa: E402
from attnsuite import gate, report  # noqa: E402
from attnsuite.combine import combine_runs  # noqa: E402
from attnsuite.verdict import ThresholdsError  # noqa: E402


def pytest_command(args: argparse.Namespace, json_path: Path, inject: dict[str, float]) -> list[str]:
    """The pytest command of one run (the benchmarks only, gate off: this script judges)."""
    cmd = [args.python, "-m", "pytest", "bench", "--benchmark-only", "-p", "no:cacheprovider", "-q",
           "--attn-gate", "off", f"--benchmark-json={json_path}"]
    if args.tier:
        cmd += ["--attn-tier", args.tier]
    if args.device:
        cmd += ["--attn-device", args.device]
    for variant, frac in sorted(inject.items()):
        cmd += ["--attn-inject-slowdown", f"{variant}={frac:g}"]
    return cmd + list(args.pytest_args)


def run_once(args: argparse.Namespace, name: str, inject: dict[str, float]) -> tuple[bl.Run, dict[str, Any]]:
    """One benchmark run (or the kept JSON with --resume); returns the run and what was done."""
    runs = Path(args.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    json_path = runs / f"{name}.json"
    cmd = pytest_command(args, json_path, inject)
    info = {"name": name, "inject": inject, "command": shlex.join(cmd)}
    if args.resume and json_path.exists():
        info["reused"] = True
        return bl.load_results(json_path), info
    t0 = time.monotonic()
    log = runs / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=args.run_timeout)
    info["seconds"] = round(time.monotonic() - t0, 1)
    if proc.returncode not in (0, 1) or not json_path.exists():
        raise SystemExit(f"gate_eval: run {name} failed with exit status {proc.returncode}; see {log}")
    return bl.load_results(json_path), info


def ok_both(base: dict, cur: dict, key: str) -> bool:
    b, c = base.get(key), cur.get(key)
    return b is not None and c is not None and b.outcome == "ok" and c.outcome == "ok" and bool(b.median_ms)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run everything and return the summary object."""
    fractions = [float(f) for f in args.fractions.split(",")]
    # the gate's own thresholds rule: --thresholds, else the repository's baselines/thresholds.json
    cfg, thresholds_path = gate.thresholds_for(args.thresholds, ROOT / bl.DEFAULT_DIR)
    runs_info = []
    if args.baseline:
        # an existing baseline (e.g. the committed one, recorded on another machine instance): the
        # case CI is in. Only the cases these runs produce are judged (ok_both below).
        loaded = bl.load_baseline(args.baseline)
        base_run = gate.run_of_baseline(loaded)
        reference = f"baseline file {args.baseline}"
    else:
        refs = []
        for i in range(args.ref_runs):
            ref, ref_info = run_once(args, "ref" if i == 0 else f"ref{i}", {})
            if not ref.fingerprint:
                raise SystemExit(f"gate_eval: reference run {ref_info['name']} has no machine fingerprint")
            refs.append(ref)
            runs_info.append(ref_info)
        combined = combine_runs(refs).run
        baseline, _ = bl.merge_into(None, combined.records, combined.fingerprint)
        # rounded as a committed baseline would be
        base_run = bl.Run(records=baseline.records(), fingerprint=combined.fingerprint, path="reference", kind="baseline")
        reference = f"{args.ref_runs} reference run(s) combined as `attnsuite record` does"
    base, ref_fp = base_run.records, base_run.fingerprint
    device = bl.device_kind(ref_fp)
    variants = sorted({r.variant for r in base.values() if r.outcome == "ok"})
    if args.variants:
        wanted = args.variants.split(",")
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            raise SystemExit(f"gate_eval: variants {unknown} have no ok case in the reference; have {variants}")
        variants = wanted

    # A/A
    aa = {"runs": 0, "cases_judged": 0, "false_alarms": 0, "alarms": [], "verdicts": {}}
    fingerprint = None
    measured: set[str] = set()
    for i in range(args.runs):
        run, info = run_once(args, f"aa{i}", {})
        runs_info.append(info)
        fingerprint = fingerprint or run.fingerprint
        measured |= {r.variant for r in run.records.values() if r.outcome == "ok"}
        # the gate's one compare path: a file from another machine is refused, as the gate refuses it
        cmp = gate.judge_runs(base_run, run, thresholds=cfg)
        aa["runs"] += 1
        for v in cmp.verdicts:
            aa["verdicts"][v.verdict] = aa["verdicts"].get(v.verdict, 0) + 1
            if not ok_both(base, run.records, v.key):
                continue
            aa["cases_judged"] += 1
            if v.gating:
                aa["false_alarms"] += 1
                aa["alarms"].append({"run": info["name"], "key": v.key, "verdict": v.verdict, "message": v.message})
    aa["rate"] = aa["false_alarms"] / aa["cases_judged"] if aa["cases_judged"] else None

    # Injection
    inj: dict[str, dict[str, Any]] = {f"{f:g}": {"trials": 0, "detected": 0, "missed": [], "changes": []}
                                      for f in fractions}
    other_alarms = {"cases_judged": 0, "false_alarms": 0}
    if args.baseline and not args.variants and args.runs:
        # a baseline file holds every variant: inject only into those the A/A runs measured
        variants = [v for v in variants if v in measured]
    plans: list[dict[str, float]] = []
    if args.single:
        for t in range(args.runs):
            for f in fractions:
                plans.append({variants[(t) % len(variants)]: f})
    else:
        for t in range(args.runs):
            plans.append({v: fractions[(i + t) % len(fractions)] for i, v in enumerate(variants)})
    for t, plan in enumerate(plans):
        run, info = run_once(args, f"inj{t}", plan)
        runs_info.append(info)
        cmp = gate.judge_runs(base_run, run, thresholds=cfg)
        for v in cmp.verdicts:
            if not ok_both(base, run.records, v.key):
                continue
            rec = run.records[v.key]
            if rec.variant in plan:
                slot = inj[f"{plan[rec.variant]:g}"]
                slot["trials"] += 1
                slot["changes"].append(round(v.time_change or 0.0, 4))
                if "slower" in v.flags:
                    slot["detected"] += 1
                else:
                    slot["missed"].append({"run": info["name"], "key": v.key, "verdict": v.verdict,
                                           "time_change": v.time_change, "band": v.band})
            else:
                other_alarms["cases_judged"] += 1
                other_alarms["false_alarms"] += int(v.gating)
    for slot in inj.values():
        slot["rate"] = slot["detected"] / slot["trials"] if slot["trials"] else None
        ch = sorted(slot.pop("changes"))
        slot["measured_change_median"] = ch[len(ch) // 2] if ch else None
    return {
        "fingerprint": fingerprint or ref_fp, "baseline_fingerprint": ref_fp, "reference": reference,
        "device": device, "variants": variants, "fractions": fractions,
        "thresholds": str(thresholds_path) if thresholds_path else "built-in defaults",
        "runs_per_arm": args.runs, "mode": "single" if args.single else "rotate",
        "aa": aa, "injection": inj, "uninjected_cases_in_injection_runs": other_alarms, "runs": runs_info,
        "command": shlex.join([sys.executable] + sys.argv),
    }


def markdown(s: dict[str, Any]) -> str:
    """The summary as markdown (for README and PRs)."""
    fp = s["fingerprint"]
    machine = fp.get("gpu_name") or fp.get("cpu_model") or fp.get("id")
    aa = s["aa"]
    rate = "n/a" if aa["rate"] is None else f"{aa['rate'] * 100:.2f}%"
    lines = [f"### Regression gate evaluation on {machine} ({s['device']})", "",
             f"Thresholds: {s['thresholds']}. Baseline: {s.get('reference', '1 reference run')}. "
             f"{s['runs_per_arm']} runs per arm, injection mode {s['mode']}, variants: {', '.join(s['variants'])}.", "",
             "| measurement | trials (case-runs) | flagged | rate |", "|---|---|---|---|",
             f"| A/A false alarms (unchanged code) | {aa['cases_judged']} | {aa['false_alarms']} | {rate} |"]
    for frac, slot in s["injection"].items():
        r = "n/a" if slot["rate"] is None else f"{slot['rate'] * 100:.1f}%"
        med = slot["measured_change_median"]
        extra = "" if med is None else f" (median measured change {med * 100:+.1f}%)"
        lines.append(f"| injected {float(frac) * 100:g}% slowdown detected{extra} | {slot['trials']} | "
                     f"{slot['detected']} | {r} |")
    o = s["uninjected_cases_in_injection_runs"]
    if o["cases_judged"]:
        lines.append(f"| false alarms on un-injected cases of injection runs | {o['cases_judged']} | "
                     f"{o['false_alarms']} | {o['false_alarms'] / o['cases_judged'] * 100:.2f}% |")
    if aa["alarms"]:
        lines += ["", "A/A false alarms:", ""] + [f"- {a['run']}: `{a['key']}` {a['message']}" for a in aa["alarms"][:30]]
    lines += ["", f"Reproduce: `{s['command']}`", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="measure the regression gate's false-alarm and detection rates")
    p.add_argument("--out", default="results/gate_eval", help="output folder (runs/, summary.json, summary.md)")
    p.add_argument("--runs", type=int, default=5, help="runs per arm (A/A, and injection trials)")
    p.add_argument("--fractions", default="0.05,0.1,0.2", help="injected slowdowns, comma-separated")
    p.add_argument("--variants", default="", help="variants to inject into (default: every variant with ok cases)")
    p.add_argument("--single", action="store_true", help="inject one variant per run instead of all, rotating")
    p.add_argument("--tier", default=None, help="--attn-tier for the runs (default: the suite's)")
    p.add_argument("--device", default=None, help="--attn-device for the runs")
    p.add_argument("--ref-runs", type=int, default=3,
                   help="unchanged reference runs combined into the baseline (per case, the median; default 3)")
    p.add_argument("--baseline", default=None,
                   help="judge against this baseline file instead of reference runs (e.g. the committed one)")
    p.add_argument("--thresholds", default=None,
                   help="thresholds JSON (default: the gate's rule, attnsuite.gate.thresholds_for: the "
                        "repository's baselines/thresholds.json, else built-in defaults)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--run-timeout", type=float, default=3600.0, help="seconds allowed per run")
    p.add_argument("--resume", action="store_true", help="reuse run JSON files already in OUT/runs")
    p.add_argument("pytest_args", nargs="*", help="extra pytest args after --, e.g. -- --attn-workload fa-sweep")
    args = p.parse_args(argv)
    if args.ref_runs < 1:
        p.error(f"--ref-runs must be at least 1, got {args.ref_runs}")
    try:
        summary = evaluate(args)
    except (ThresholdsError, bl.InputFileError) as exc:
        raise SystemExit(f"gate_eval: {exc}") from None
    except bl.FingerprintMismatch as exc:
        raise SystemExit(f"gate_eval: the baseline's machine differs from the runs': {exc}") from None
    text = markdown(summary)
    report.write_summary(args.out, summary, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
