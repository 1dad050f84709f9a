#!/usr/bin/env bash
# What the standby worker (WorkerPool(spare=True), docs/isolation.md) saves on a 2-GPU host: one
# workload of the full tier whose materialising cases get workers replaced (default fa-sweep), run
# with the standby (as shipped on CUDA) and without it (a pytest plugin written to $OUT turns it
# off), each under a time limit. Per run: wall time, the summary's worker line, the JSON's
# workers_started / worker_start_s, how many records say a worker was replaced, and whether any
# worker process outlived the run.
# Usage: OUT=... bash scripts/gpu_spare_worker.sh [on|off]...   (default: on off)
# Env: WORKLOAD (default fa-sweep), GPUS (default 2), LIMIT seconds per run (default 280), PYTHON.
set -uo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
OUT="${OUT:-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
status=0
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(on off)

cat > "$OUT/standby_off.py" <<'PY'
"""Loaded with -p standby_off: the bench plugin's pools are built without a standby worker."""
import attnsuite.plugin_bench as pb
from attnsuite.isolation import WorkerPool

pb.WorkerPool = lambda *args, **kwargs: WorkerPool(*args, **{**kwargs, "spare": False})
PY

for run in "${runs[@]}"; do
  case "$run" in
    on) extra=() ;;
    off) extra=(-p standby_off) ;;
    *) echo "gpu_spare_worker.sh: unknown run '$run' (on, off)" >&2; exit 2 ;;
  esac
  echo "== standby worker $run: ${WORKLOAD:-fa-sweep}, full tier, ${GPUS:-2} GPUs =="
  start=$(date +%s)
  PYTHONPATH="$OUT${PYTHONPATH:+:$PYTHONPATH}" timeout "${LIMIT:-280}" "$PY" -m pytest bench --benchmark-only \
      --attn-tier=full --attn-device=cuda --attn-gpus="${GPUS:-2}" --attn-workload="${WORKLOAD:-fa-sweep}" \
      --attn-gate=off -p no:cacheprovider -q "${extra[@]}" --benchmark-json="$OUT/standby_$run.json" \
      > "$OUT/standby_$run.log" 2>&1
  rc=$?
  echo "exit $rc, wall $(( $(date +%s) - start )) s" | tee -a "$OUT/standby.log"
  [ "$rc" -le 1 ] || status=1
  grep -h "worker processes started" "$OUT/standby_$run.log" | tee -a "$OUT/standby.log"
  sleep 2  # the pools' close() has returned; give the kernel a moment before looking for stragglers
  left=$(pgrep -f "attnsuite.worker" | wc -l)
  echo "worker processes still alive after the run: $left" | tee -a "$OUT/standby.log"
  [ "$left" -eq 0 ] || status=1
  "$PY" - "$OUT/standby_$run.json" <<'PY' | tee -a "$OUT/standby.log"
import collections, json, os, sys
sys.path.insert(0, os.getcwd())
from attnsuite.baseline import benchmark_entries
if not os.path.exists(sys.argv[1]):
    sys.exit(print(f"{sys.argv[1]}: not written (the run was cut short?)"))
data = json.load(open(sys.argv[1]))
recs = [b["extra_info"] for b in benchmark_entries(data)]
meta = data.get("attnsuite", {})
print(f"cases {len(recs)} {dict(collections.Counter(r['outcome'] for r in recs))}; workers_started "
      f"{meta.get('workers_started')}, worker_start_s {meta.get('worker_start_s')}, loop_s {meta.get('loop_s')}; "
      f"records with worker_replaced {sum(1 for r in recs if r.get('extra', {}).get('worker_replaced'))}, "
      f"with fresh_worker_retry {sum(1 for r in recs if r.get('extra', {}).get('fresh_worker_retry'))}")
PY
done
exit $status
