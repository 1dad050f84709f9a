#!/usr/bin/env python3
"""Measure ``attnsuite ab`` itself on one machine: its false alarms on unchanged code, and what it catches.

Every run is the real command, ``python -m attnsuite.ab --base BASE --gate report``, over the
selection given after ``--``, each with its own rounds (``--rounds`` per side, separate processes):

* ``aa1`` .. ``aaN`` (``--aa N``): the working tree against BASE, unchanged. Every gating verdict
  is a false alarm; a run passes when it has none.
* ``injN-VARIANT-F`` (``--inject VARIANT=F``, repeatable): the same, with the head rounds slowed by
  ``--head-arg=--attn-inject-slowdown=VARIANT=F`` (device work added to each call of that variant,
  so device time sees it). A case of VARIANT whose base figure (the judged statistic: on CUDA the
  fastest device-time sample) is at least ``--min-ms`` counts; it is caught when its verdict is
  ``slower``. Cases of other variants in an injection run count as A/A cases of that run.

The working tree must hold BASE's tracked files unchanged (checked), or an A/A run would judge a
real change. ``--resume`` reuses every run whose JSON is already in OUT/runs, so an evaluation can
be split over several commands with time limits. Writes OUT/summary.json and OUT/summary.md.

    python scripts/ab_eval.py --out results/ab_eval --aa 5 --inject sdpa-flash=0.05 \\
        --inject sdpa-flash=0.10 -- --attn-tier full --attn-workload fa-sweep --attn-only sdpa-flash
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attnsuite import baseline as bl  # noqa: E402
from attnsuite import report  # noqa: E402
from attnsuite.combine import variant_matches  # noqa: E402

MIN_MS = 0.2  # the bound: a slowdown must be caught on cases of at least this much device time


def parse_inject(spec: str) -> tuple[str, float]:
    """``VARIANT=F`` -> (variant, fraction); ValueError naming the spec otherwise."""
    name, sep, value = spec.partition("=")
    try:
        frac = float(value)
    except ValueError:
        frac = float("nan")
    if not sep or not name or not 0 < frac < 10:
        raise ValueError(f"--inject {spec!r}: expected VARIANT=FRACTION with 0 < FRACTION < 10, e.g. sdpa-flash=0.05")
    return name, frac


def run_name(inject: Optional[tuple[str, float]], index: int) -> str:
    """The run's file stem: aaN, or injN-VARIANT-F (the index keeps two equal injections apart)."""
    return f"aa{index}" if inject is None else f"inj{index}-{inject[0]}-{inject[1]:g}"


def ab_command(args: argparse.Namespace, runs: Path, name: str, inject: Optional[tuple[str, float]]) -> list[str]:
    """The A/B command of run ``name``: report mode (this script judges); its JSON, markdown and rounds
    in ``runs`` under that name (not Path.with_suffix: a name such as inj2-sdpa-0.05 has a dot)."""
    cmd = [args.python, "-m", "attnsuite.ab", "--base", args.base, "--rounds", str(args.rounds), "--gate", "report",
           "--json", str(runs / f"{name}.json"), "--markdown", str(runs / f"{name}.md"),
           "--out", str(runs / f"{name}-rounds")]
    if args.round_timeout:
        cmd += ["--round-timeout", f"{args.round_timeout:g}"]
    if inject is not None:
        cmd.append(f"--head-arg=--attn-inject-slowdown={inject[0]}={inject[1]:g}")
    return cmd + ["--", *args.pytest_args]


def run_ab(args: argparse.Namespace, name: str, inject: Optional[tuple[str, float]]) -> tuple[dict, dict]:
    """One A/B run (or its kept JSON with --resume): (the command's JSON, what was done)."""
    runs = Path(args.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    json_path = runs / f"{name}.json"
    cmd = ab_command(args, runs, name, inject)
    info: dict[str, Any] = {"name": name, "inject": list(inject) if inject else None, "command": shlex.join(cmd)}
    if args.resume and json_path.exists():
        info["reused"] = True
        return json.loads(json_path.read_text()), info
    log = runs / f"{name}.log"
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=args.repo, stdout=fh, stderr=subprocess.STDOUT)
    info["seconds"] = round(time.monotonic() - t0, 1)
    if proc.returncode != 0 or not json_path.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"ab_eval: run {name} failed with exit status {proc.returncode}; its log {log} ends:\n{tail}")
    return json.loads(json_path.read_text()), info


def tally(runs: list[tuple[dict, dict]], min_ms: float) -> dict[str, Any]:
    """The A/A and injection figures of the runs (each: the A/B JSON and its info)."""
    aa = {"runs": 0, "runs_with_gating": 0, "cases_judged": 0, "false_alarms": 0, "alarms": []}
    inj: dict[str, dict[str, Any]] = {}
    for data, info in runs:
        inject = info.get("inject")
        gating_here = 0
        for case in data.get("cases", []):
            judged = case.get("time_change") is not None
            if inject and variant_matches(case["key"], [inject[0]]):
                slot = inj.setdefault(f"{inject[0]}={inject[1]:g}", {"variant": inject[0], "fraction": inject[1],
                                                                     "cases": 0, "caught": 0, "small": 0,
                                                                     "changes": [], "missed": []})
                if not judged:
                    continue
                if (case.get("base_ms") or 0.0) < min_ms:
                    slot["small"] += 1
                    continue
                slot["cases"] += 1
                slot["changes"].append(round(case["time_change"], 4))
                if "slower" in case.get("flags", []):
                    slot["caught"] += 1
                else:
                    slot["missed"].append({"run": info["name"], "key": case["key"], "verdict": case["verdict"],
                                           "time_change": case["time_change"], "band": case.get("band")})
                continue
            if judged:
                aa["cases_judged"] += 1
            if case.get("gating"):
                aa["false_alarms"] += 1
                gating_here += 1
                aa["alarms"].append({"run": info["name"], "key": case["key"], "verdict": case["verdict"],
                                     "message": case.get("message", "")})
        if not inject:
            aa["runs"] += 1
            aa["runs_with_gating"] += int(gating_here > 0)
    aa["rate"] = aa["false_alarms"] / aa["cases_judged"] if aa["cases_judged"] else None
    for slot in inj.values():
        slot["rate"] = slot["caught"] / slot["cases"] if slot["cases"] else None
        ch = sorted(slot.pop("changes"))
        slot["measured_change_median"] = ch[len(ch) // 2] if ch else None
    return {"aa": aa, "injection": inj}


def markdown(s: dict[str, Any]) -> str:
    """The summary as markdown."""
    aa = s["aa"]
    rate = "-" if aa["rate"] is None else f"{aa['rate']:.2%}"
    lines = [f"### `attnsuite ab` evaluation: {s['machine']}", "",
             f"Base {s['base']}, {s['rounds']} rounds per side, selection `{s['selection']}`; each run is "
             f"one `attnsuite ab` command. Injected cases count when their base figure is at least {s['min_ms']:g} ms.",
             "", "| measurement | runs | cases | flagged | rate |", "|---|---:|---:|---:|---:|",
             f"| A/A: unchanged code, gating verdicts | {aa['runs']} ({aa['runs_with_gating']} with one) | "
             f"{aa['cases_judged']} | {aa['false_alarms']} | {rate} |"]
    for name, slot in s["injection"].items():
        r = "-" if slot["rate"] is None else f"{slot['rate']:.1%}"
        med = slot["measured_change_median"]
        extra = "" if med is None else f" (median measured {med:+.1%})"
        lines.append(f"| {slot['variant']} slowed {slot['fraction']:.0%}: caught{extra} | 1 | {slot['cases']} | "
                     f"{slot['caught']} | {r} |")
    if aa["alarms"]:
        lines += ["", "False alarms:", ""] + [f"- {a['run']}: `{a['key']}` {a['message'][:200]}" for a in aa["alarms"]]
    missed = [m for slot in s["injection"].values() for m in slot["missed"]]
    if missed:
        lines += ["", "Slowed cases not caught:", ""]
        lines += [f"- {m['run']}: `{m['key']}` {m['verdict']}, measured {m['time_change']:+.1%}" for m in missed]
    seconds = [r.get("seconds") for r in s["runs"] if r.get("seconds") is not None]
    if seconds:
        lines += ["", f"Cost: {len(seconds)} A/B run(s) measured here took {sum(seconds):.0f} s, "
                      f"{min(seconds):.0f}-{max(seconds):.0f} s each ({2 * s['rounds']} pytest processes per run)."]
    lines += ["", f"Reproduce: `{s['command']}`", ""]
    return "\n".join(lines)


def check_unchanged(repo: Path, base: str) -> None:
    """SystemExit unless the working tree's tracked files equal ``base``'s (an A/A must compare equal code)."""
    done = subprocess.run(["git", "-C", str(repo), "diff", "--stat", base, "--"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ab_eval: cannot compare the working tree with {base}: {done.stderr.strip()}")
    if done.stdout.strip():
        raise SystemExit(f"ab_eval: the working tree differs from {base}, so an A/A run would judge a real change "
                         f"(commit or stash it):\n{done.stdout.strip()}")


def enough_time(args: argparse.Namespace, runs: list[tuple[dict, dict]], name: str, elapsed: float) -> bool:
    """Whether run ``name`` may start ``elapsed`` seconds into this command under ``--stop-after``: a run already
    kept (``--resume``) always may; another only if the longest run measured so far would still end in time.
    The first measured run always starts, since nothing says yet how long a run takes."""
    if args.stop_after is None or (args.resume and (Path(args.out) / "runs" / f"{name}.json").exists()):
        return True
    measured = [info["seconds"] for _, info in runs if info.get("seconds") is not None]
    return not measured or elapsed + max(measured) <= args.stop_after


def machine_of(runs: list[tuple[dict, dict]]) -> str:
    """The GPU or CPU of the first round JSON kept by the runs."""
    for data, _ in runs:
        for f in data.get("ab", {}).get("round_files", []):
            if f.get("json") and Path(f["json"]).exists():
                fp = bl.load_results(f["json"]).fingerprint or {}
                return str(fp.get("gpu_name") or fp.get("cpu_model") or fp.get("id") or "unknown machine")
    return "unknown machine"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="measure attnsuite ab's false alarms and detection on this machine")
    p.add_argument("--out", default="results/ab_eval", help="output folder (runs/, summary.json, summary.md)")
    p.add_argument("--base", default="HEAD", help="git ref of the base tree (default HEAD)")
    p.add_argument("--aa", type=int, default=5, help="A/A runs of unchanged code (default 5)")
    p.add_argument("--inject", action="append", default=[], metavar="VARIANT=F",
                   help="an A/B run with the head rounds' VARIANT slowed by F (repeatable)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per side of each A/B run (default 3)")
    p.add_argument("--min-ms", type=float, default=MIN_MS,
                   help=f"injected cases count from this base figure up (default {MIN_MS:g} ms)")
    p.add_argument("--repo", default=str(ROOT), help="the working tree (default: this repository)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--round-timeout", type=float, default=None, help="seconds allowed per round")
    p.add_argument("--resume", action="store_true", help="reuse the runs whose JSON is already in OUT/runs")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="start no run that would end past SECONDS from now, judged by the longest run so far in "
                        "this command; exit 3 so that a later --resume goes on (a run cut by a time limit is lost)")
    p.add_argument("pytest_args", nargs="*", help="the selection after --, e.g. -- --attn-only sdpa-flash")
    args = p.parse_args(argv)
    try:
        plan = [None] * args.aa + [parse_inject(s) for s in args.inject]
    except ValueError as exc:
        p.error(str(exc))
    if args.aa < 0 or not plan:
        p.error("nothing to run: give --aa N (N >= 1) and/or --inject VARIANT=F")
    check_unchanged(Path(args.repo), args.base)
    runs = []
    t0 = time.monotonic()
    try:
        for i, inject in enumerate(plan, start=1):
            name = run_name(inject, i)
            if not enough_time(args, runs, name, time.monotonic() - t0):
                print(f"ab_eval: stopped before run {name} ({len(runs)} of {len(plan)} done): the longest run so "
                      f"far would end past --stop-after {args.stop_after:g} s; the same command with --resume "
                      "carries on", file=sys.stderr)
                return 3
            data, info = run_ab(args, name, inject)
            runs.append((data, info))
            print(f"ab_eval: {info['name']}: {data.get('counts')} ({info.get('seconds', 'reused')} s)", flush=True)
    except KeyboardInterrupt:  # a time limit's SIGINT: the finished runs stay, and --resume goes on from them
        print(f"ab_eval: interrupted after {len(runs)} of {len(plan)} runs; they are kept in {args.out}/runs, "
              "and the same command with --resume carries on", file=sys.stderr)
        return 130
    summary = {**tally(runs, args.min_ms), "machine": machine_of(runs), "base": args.base, "rounds": args.rounds,
               "min_ms": args.min_ms, "selection": shlex.join(args.pytest_args) or "(the default tier)",
               "runs": [info for _, info in runs], "command": shlex.join([sys.executable] + sys.argv)}
    text = markdown(summary)
    report.write_summary(args.out, summary, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
