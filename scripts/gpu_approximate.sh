#!/usr/bin/env bash
# The GPU run of docs/libraries.md and docs/approximate.md: which libraries import (the header line),
# the library and approximate variants through the correctness suite on CUDA, and the approximate
# kernels' errors measured on the GPU. Logs and JSON under $OUT (default results/gpu-approximate).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu-approximate}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt" 2>&1
# the header line says which libraries imported and why the others did not
timeout 540 "$PY" -m pytest test_correctness/test_variants.py --attn-device cuda -p no:cacheprovider \
  -k "fakequant or flash-attn or xformers or flashinfer" -rs -q --junitxml "$OUT/correctness.xml" \
  > "$OUT/correctness.log" 2>&1
echo "correctness rc=$?" | tee -a "$OUT/gpu.txt"
"$PY" -m pytest test_correctness/test_variants.py --attn-device cuda -p no:cacheprovider --collect-only \
  -k fakequant 2>/dev/null | grep '^libraries:' | tee -a "$OUT/gpu.txt"
timeout 300 "$PY" scripts/measure_approximate.py --device cuda --json "$OUT/approximate.json" \
  > "$OUT/approximate.log" 2>&1
echo "measure rc=$?" | tee -a "$OUT/gpu.txt"
tail -8 "$OUT/approximate.log"
