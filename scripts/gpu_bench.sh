#!/usr/bin/env bash
# The whole GPU benchmark run, as done on one H100 with the device tool. Steps (default: all):
#   full     the full tier (every variant, every workload, fwd / bwd / fwd+bwd) in ONE pytest
#            invocation -> full.json.gz, full.log (wall time at its end; suite time per phase printed)
#   capped   video-wm under a memory cap, so the uncompiled FlexAttention runs out of memory the way
#            it did on its authors' smaller GPU, and the run goes on -> capped.json, capped.log
#   dobench  the do_bench agreement test (suite median vs triton.testing.do_bench within 3%) -> dobench.log
#   devtime  device time against do_bench_cudagraph, host-independence, and a Triton kernel with an
#            illegal address recorded as a crash while the cases after it pass -> devtime.log
#   cost     what case isolation costs: one workload (WORKLOAD, default gpt2-mha) with worker processes,
#            then in-process -> cost.log, cost_process.json, cost_none.json
# Everything lands in "${OUT:-results}".
# Usage: scripts/gpu_bench.sh [full|capped|dobench|all]... [-- extra pytest args for the full step]
# Env: CAP (default 8GiB) is the memory cap of the capped step; PYTHON (default python3).
set -uo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
OUT="${OUT:-results}"
CAP="${CAP:-8GiB}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# as the GPU workflow does: a Triton autotuning choice is kept on disk, so later workers (other GPUs,
# replacements) and later runs on the machine reuse it instead of benchmarking every config again
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
PY="${PYTHON:-python3}"
status=0

steps=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    full|capped|dobench|devtime|cost) steps+=("$1") ;;
    all) steps+=(full capped dobench devtime) ;;
    *) echo "gpu_bench.sh: unknown step '$1' (full, capped, dobench, devtime, cost, all)" >&2; exit 2 ;;
  esac
  shift
done
[ "${1:-}" = "--" ] && shift
[ ${#steps[@]} -eq 0 ] && steps=(full capped dobench)

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"

for step in "${steps[@]}"; do
  case "$step" in
    full)
      echo "== full tier, one invocation =="
      start=$(date +%s)
      $PY -m pytest bench --benchmark-only --attn-tier=full -p no:cacheprovider -q -rs \
          --benchmark-json="$OUT/full.json" --benchmark-columns=median,iqr,min,rounds "$@" 2>&1 | tee "$OUT/full.log"
      [ "${PIPESTATUS[0]}" -le 1 ] || status=1   # 1 = some case failed (numerics/error): recorded in the JSON
      echo "full tier wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/full.log"
      gzip -f "$OUT/full.json" ;;
    capped)
      echo "== video-wm under a ${CAP} cap =="
      $PY -m pytest bench --benchmark-only --attn-tier=full --attn-workload=video-wm --attn-mem-cap="$CAP" \
          --attn-only=flex-eager --attn-only=flex --attn-only=sdpa -p no:cacheprovider -q -rs \
          --benchmark-json="$OUT/capped.json" 2>&1 | tee "$OUT/capped.log"
      [ "${PIPESTATUS[0]}" -le 1 ] || status=1 ;;
    dobench)
      echo "== do_bench agreement =="
      $PY -m pytest tests/test_gpu_timing.py -p no:cacheprovider -q -rs -rP 2>&1 | tee "$OUT/dobench.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    devtime)
      echo "== device time and GPU isolation =="
      $PY -m pytest tests/test_gpu_timing.py tests/test_gpu_isolation.py -p no:cacheprovider -q -rs -rP 2>&1 | tee "$OUT/devtime.log"
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    cost)
      echo "== isolation cost: ${WORKLOAD:-gpt2-mha}, worker processes vs in-process =="
      for iso in process none; do
        start=$(date +%s)
        $PY -m pytest bench --benchmark-only --attn-tier=full --attn-workload="${WORKLOAD:-gpt2-mha}" --attn-isolation=$iso \
            --attn-gate=off -p no:cacheprovider -q --benchmark-json="$OUT/cost_$iso.json" "$@" > "$OUT/cost_$iso.log" 2>&1
        echo "isolation $iso: exit $? wall $(( $(date +%s) - start )) s" | tee -a "$OUT/cost.log"
        tail -3 "$OUT/cost_$iso.log" | tee -a "$OUT/cost.log"
      done ;;
  esac
done

$PY - "$OUT" <<'PY'
import collections, gzip, json, os, sys
sys.path.insert(0, os.getcwd())
from attnsuite.baseline import benchmark_entries
out = sys.argv[1]
for name in ("full.json.gz", "capped.json"):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        continue
    try:
        data = json.load((gzip.open if name.endswith(".gz") else open)(path, "rt"))
    except (OSError, EOFError, ValueError) as exc:  # a run stopped before pytest wrote its JSON
        print(f"{name}: no readable result ({type(exc).__name__}: {exc}); an interrupted journaled run "
              "is finished by running it again with --attn-resume")
        continue
    recs = [b["extra_info"] for b in benchmark_entries(data)]
    print(f"{name}: {dict(collections.Counter(r['outcome'] for r in recs))}")
    phases = collections.Counter()
    for r in recs:
        phases.update(r.get("extra", {}).get("suite_s", {}))
    if phases:
        print("  suite time by phase (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.most_common()))
    for r in recs:
        if r["outcome"] == "oom":
            asked = r["oom_bytes"] / 2**30 if r["oom_bytes"] else float("nan")
            print(f"  oom  {r['case']}  asked for {asked:.2f} GiB")
PY
exit $status
