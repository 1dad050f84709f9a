#!/usr/bin/env bash
# Re-record baselines/cuda-nvidia-h200-132sm-140g-torch2.11-cuda13.0.json from the full-tier runs of
# six fresh H200 machines kept under docs/evidence (A, B: session s5; C: s7; E: s8; G, H: s9), and
# print how the gate fares on each machine judged against a baseline of the other five
# (leave-one-out, the shipped thresholds).
#   triton-* and ring-sim*: only from E, G, H (per-shape Triton tuning and graph-replayed ring-sim
#   came after A, B, C); flex-eager: only from G, H (compiled per shape since a042dd1);
#   triton-mla-absorbed (deepseek-v3, layer-decode): from Y, Z, S, whose runs are its current code;
#   ring-sim, ring-sim-p3 (fp32 scores since s20): from three fresh machines that ran that code (s20
#   call 5, D and F of s21);
#   triton-flash, triton-decode, triton-mla-absorbed (autotuned by CUDA graph replay since s24): from
#   the fresh machines that ran that tuning, AC-AE (s25) and AF, AH, AI (s26), three to five per case.
# A machine's first run is its fresh one (cold caches); the others are the same machine again.
# Usage: bash scripts/record_h200_baseline.sh [--dry-run]   (--dry-run: only the leave-one-out table)
set -euo pipefail
CDPATH= cd -- "$(dirname -- "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ev=docs/evidence
s8=$ev/h200-2026-11-30-s8
s9=$ev/h200-2026-11-30-s9
out=baselines/cuda-nvidia-h200-132sm-140g-torch2.11-cuda13.0.json
args=(
  --instance "A=$ev/h200-2026-11-30-s5/a_tier_2gpu.json.gz"
  --instance "B=$ev/h200-2026-11-30-s5/b_tier_2gpu.json.gz"
  --instance "C=$ev/h200-2026-11-30-s7/c_tier_1gpu.json.gz"
  --instance "E=$s8/e_tier_2gpu_cold.json.gz,$s8/e_tier_1gpu_warm.json.gz,$s8/e_tier_2gpu_warm.json.gz"
  --instance "G=$s9/g_tier_2gpu_cold.json.gz,$s9/g_tier_1gpu_warm.json.gz"
  --instance "H=$s9/h_tier_2gpu_cold.json.gz,$s9/h_tier_2gpu_warm.json.gz"
  --only-from 'triton-*=E,G,H' --only-from 'ring-sim*=E,G,H' --only-from 'flex-eager=G,H'
)
"$PY" scripts/instance_aa.py "${args[@]}" --leave-one-out --slowed 0.05 --slowed 0.10
[ "${1:-}" = "--dry-run" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" scripts/instance_aa.py "${args[@]}" --record "$tmp/new.json"
# triton-mla-absorbed as changed in s17 (25% faster forward, decode steps added): from the three fresh
# machines that ran that code, Y (s17), Z (s19) and S (s20), one run each (s20)
"$PY" -m attnsuite record --baseline "$tmp/new.json" \
  --case 'deepseek-v3/triton-mla-absorbed/*' --case 'layer-decode/triton-mla-absorbed/*' \
  "$ev/h200-2026-12-01-s17/Y_mla_full.json.gz" "$ev/h200-2026-12-02-s19/Z-full.json.gz" \
  "$ev/h200-2026-12-02-s20/S-full.json.gz"
# ring-sim as changed in s20 (its scores kept in fp32: 46 of 84 cases 3.5-11.8% faster): from the three
# fresh machines that ran that code, s20's call 5 (ring-sim alone), D (s21, full tier) and F (s21,
# ring-sim alone), one run each
"$PY" -m attnsuite record --baseline "$tmp/new.json" --case '*/ring-sim/*' --case '*/ring-sim-p3/*' \
  "$ev/h200-2026-12-02-s20/ring-fix/ring-full.json.gz" "$ev/h200-2026-12-02-s21/D-full.json.gz" \
  "$ev/h200-2026-12-02-s21/F/F-ring.json.gz"
# the Triton kernels as autotuned since s24 (each config timed by CUDA graph replay): every run of that
# tuning on a fresh machine, each holding some of the 45 Triton cases: AC and AF (the push step, cut
# before its end), AD and AE (the decode workload; AE also triton-flash on fa-sweep and llama3-70b), AH
# (decode and layer-decode), AI (the three Triton variants alone)
s25=$ev/h200-2026-12-03-s25
s26=$ev/h200-2026-12-03-s26
"$PY" -m attnsuite record --baseline "$tmp/new.json" --case '*/triton-flash/*' --case '*/triton-decode/*' \
  --case '*/triton-mla-absorbed/*' --allow-interrupted \
  "$s25/AC-cigate-part1-interrupted-bench.json.gz" "$s25/AD-decode-bench.json.gz" "$s25/AE-decode-bench.json.gz" \
  "$s25/AE-triton-flash-bench.json.gz" "$s26/AF-cigate-part1-interrupted-bench.json.gz" \
  "$s26/AH-decode-layer-decode-bench.json.gz" "$s26/AI-triton-only-bench.json.gz"
"$PY" -m attnsuite check "$tmp/new.json"
mv "$tmp/new.json" "$out"  # one rename: the shipped file is never half written
echo "recorded $out"
