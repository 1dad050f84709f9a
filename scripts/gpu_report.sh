#!/usr/bin/env bash
# The last screen, % of peak and the HTML report on a GPU, in a few minutes: fa-sweep and gpt2-mha
# (full tier, fwd and fwd+bwd, five variants) through scripts/ci_bench.sh against the stored
# baseline in report mode, then scripts/ci_report.sh. Checks that every % of peak is against the
# datasheet and at most 100%, and that report.html has a plot per workload with more than one length.
# Everything lands in "${OUT:-results}": bench.json, gate.json, gate.md, bench.log, report.html,
# plots/, results.md, step_summary.md, check.log.  Usage: bash scripts/gpu_report.sh
set -uo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
export OUT="${OUT:-results}" PYTHON="${PYTHON:-python3}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
bash scripts/ci_bench.sh full report --attn-workload fa-sweep --attn-workload gpt2-mha \
  --attn-mode fwd --attn-mode fwd+bwd --attn-only sdpa --attn-only sdpa-flash --attn-only flex \
  --attn-only explicit --attn-only layer-sdpa
echo "ci_bench exit status: $?"
GITHUB_STEP_SUMMARY="$OUT/step_summary.md" bash scripts/ci_report.sh "$OUT"
"$PYTHON" - "$OUT" <<'PY' 2>&1 | tee "$OUT/check.log"
import re, sys
from pathlib import Path
from attnsuite import baseline as bl, report, summary
out = Path(sys.argv[1])
run = bl.load_run(out / "bench.json")
ok = [r for r in run.records.values() if r.outcome == "ok" and r.tflops is not None]
pcts = [(summary.percent_of_peak(r, None), r.key) for r in ok]
print(f"{len(ok)} timed cases; sources: {sorted({p[0][2] for p in pcts})}")
over = [(p[0][0], k, p[0][1]) for p in pcts if p[0][0] is not None and p[0][0] > 100]
print(f"cases over 100% of peak: {len(over)}", *over[:5], sep="\n  ")
multi = [n for n, f in report.figures(run.records).items() if len({x for v in f.lines.values() for x, _ in v}) > 1]
html = (out / "report.html").read_text()
missing = [n for n in multi if f"{n}: TFLOP/s" not in html]
print(f"figures with more than one length: {len(multi)}; missing from report.html: {missing}")
PY
