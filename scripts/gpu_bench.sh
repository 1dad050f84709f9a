#!/usr/bin/env bash
# The whole GPU benchmark run, as done on one H100 with the device tool:
#   1. the full tier (every variant, every workload, fwd / bwd / fwd+bwd) -> full.json, full.log
#   2. video-wm under a memory cap, so the uncompiled FlexAttention runs out of memory the way it
#      did on its authors' smaller GPU, and the run goes on -> capped.json, capped.log
#   3. the do_bench agreement test (suite median vs triton.testing.do_bench within 3%) -> dobench.log
# Everything lands in "${OUT:-results}". Usage: scripts/gpu_bench.sh [extra pytest args for step 1]
# Env: CAP (default 8GiB) is the memory cap of step 2.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results}"
CAP="${CAP:-8GiB}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
status=0

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"

echo "== 1. full tier =="
start=$(date +%s)
$PY -m pytest bench --benchmark-only --attn-tier=full -p no:cacheprovider -q -rs \
    --benchmark-json="$OUT/full.json" --benchmark-columns=median,iqr,min,rounds "$@" 2>&1 | tee "$OUT/full.log"
[ "${PIPESTATUS[0]}" -le 1 ] || status=1   # 1 = some case failed (numerics/error): recorded in the JSON
echo "full tier wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/full.log"

echo "== 2. video-wm under a ${CAP} cap =="
$PY -m pytest bench --benchmark-only --attn-tier=full --attn-workload=video-wm --attn-mem-cap="$CAP" \
    --attn-only=flex-eager --attn-only=flex --attn-only=sdpa -p no:cacheprovider -q -rs \
    --benchmark-json="$OUT/capped.json" 2>&1 | tee "$OUT/capped.log"
[ "${PIPESTATUS[0]}" -le 1 ] || status=1

echo "== 3. do_bench agreement =="
$PY -m pytest tests/test_gpu_timing.py -p no:cacheprovider -q -rs -rP 2>&1 | tee "$OUT/dobench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

$PY - "$OUT" <<'PY'
import json, sys, collections
out = sys.argv[1]
for name in ("full", "capped"):
    try:
        data = json.load(open(f"{out}/{name}.json"))
    except OSError:
        print(f"{name}: no JSON")
        continue
    recs = [b["extra_info"] for b in data["benchmarks"]]
    print(f"{name}: {dict(collections.Counter(r['outcome'] for r in recs))}")
    for r in recs:
        if r["outcome"] == "oom":
            asked = r["oom_bytes"] / 2**30 if r["oom_bytes"] else float("nan")
            print(f"  oom  {r['case']}  asked for {asked:.2f} GiB")
PY
exit $status
