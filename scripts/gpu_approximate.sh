#!/usr/bin/env bash
# The GPU run of docs/libraries.md and docs/approximate.md: which libraries import (the header line),
# the library and approximate variants through the correctness suite on CUDA, and the approximate
# kernels' errors measured on the GPU. Logs and JSON under $OUT (default results/gpu-approximate).
OUT="${OUT:-results/gpu-approximate}"
source "$(dirname "$0")/gpu_common.sh"
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
# Library wheels carried to the machine in .whl/ (git-ignored; see docs/libraries.md for which and
# why): installed apart, with no dependencies, so nothing of the machine's own torch changes.
if ls .whl/*.whl > /dev/null 2>&1; then
  install_carried /tmp/attnsuite-site .whl/*.whl >> "$OUT/gpu.txt" 2>&1
  echo "carried wheels: $(cd .whl && ls *.whl | tr '\n' ' ')" | tee -a "$OUT/gpu.txt"
fi
# A set too large for one call (FlashAttention 4's wheels) arrives in parts over several calls,
# stashed in /tmp/attnsuite-carry (scripts/carry_wheels.py): joined and installed the same way.
if [ -f /tmp/attnsuite-carry/manifest.json ]; then
  if "$PY" scripts/carry_wheels.py unpack /tmp/attnsuite-carry /tmp/attnsuite-wheels >> "$OUT/gpu.txt" 2>&1; then
    install_carried /tmp/attnsuite-site /tmp/attnsuite-wheels/*.whl >> "$OUT/gpu.txt" 2>&1
    echo "carried in parts: $(cd /tmp/attnsuite-wheels && ls *.whl | tr '\n' ' ')" | tee -a "$OUT/gpu.txt"
  else
    echo "carried in parts: not all parts stashed (see gpu.txt)" | tee -a "$OUT/gpu.txt"
  fi
fi
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt" 2>&1
# the header line says which libraries imported and why the others did not
timeout "${CORRECTNESS_S:-540}" "$PY" -m pytest test_correctness/test_variants.py --attn-device cuda -p no:cacheprovider \
  -k "fakequant or flash-attn or xformers or flashinfer or sage" -rs -q --junitxml "$OUT/correctness.xml" \
  --attn-failures-log "$OUT/correctness.failures" \
  > "$OUT/correctness.log" 2>&1
echo "correctness rc=$?" | tee -a "$OUT/gpu.txt"
"$PY" -m pytest test_correctness/test_variants.py --attn-device cuda -p no:cacheprovider --collect-only \
  -k fakequant 2>/dev/null | grep '^libraries:' | tee -a "$OUT/gpu.txt"
timeout "${MEASURE_S:-300}" "$PY" scripts/measure_approximate.py --device cuda --json "$OUT/approximate.json" \
  > "$OUT/approximate.log" 2>&1
echo "measure rc=$?" | tee -a "$OUT/gpu.txt"
tail -8 "$OUT/approximate.log"
# the library variants that registered here, timed beside SDPA's backends through the benchmarks
# (--attn-only refuses names that are not registered, so only those are named)
only=$("$PY" -c "from attnsuite import registry; registry.load_all(); names = {v.name for v in registry.variants()}; \
print(' '.join('--attn-only=' + n for n in ('xformers-mea', 'sage-attention', 'flash-attn2', 'flash-attn4', \
'flashinfer-prefill', 'flashinfer-decode') if n in names))")
if [ -n "$only" ]; then
  # shellcheck disable=SC2086
  timeout "${BENCH_S:-300}" "$PY" -m pytest bench --benchmark-only --attn-device cuda --attn-workload fa-sweep --attn-workload decode \
    $only --attn-only=sdpa-flash --attn-only=sdpa-cudnn --attn-gate off -p no:cacheprovider -q -rs \
    --benchmark-json "$OUT/libraries_bench.json" > "$OUT/libraries_bench.log" 2>&1
  echo "library benchmarks rc=$?" | tee -a "$OUT/gpu.txt"
  tail -25 "$OUT/libraries_bench.log"
else
  echo "library benchmarks: no library variant registered" | tee -a "$OUT/gpu.txt"
fi
