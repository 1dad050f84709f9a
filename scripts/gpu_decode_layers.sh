#!/usr/bin/env bash
# Layer-level decode on a CUDA GPU (docs/decode.md): every decoding layer variant, prefill then steps
# of 1 and 3 tokens, against the float64 oracle's full forward, on the families' CUDA problems
# (fp16, bf16, fp32; every length), then the CPU tests of the external example.
# Logs, JUnit XML and a JSON summary (decode_layers.json: passed/failed/skipped and the failures'
# ids) go to ${OUT:-results}. Well under 10 minutes on an H200.
source "$(dirname "$0")/gpu_common.sh"

stage decode_cuda 360 test_correctness/test_decode_layers.py --attn-device cuda
stage decode_external_cpu 150 tests/test_external_decode.py

"$PY" - "$out" <<'PY'
import json, os, sys, tempfile
import xml.etree.ElementTree as ET
out = sys.argv[1]
summary = {}
for name in ("cuda", "external_cpu"):
    path = os.path.join(out, f"decode_{name}.xml")
    if not os.path.exists(path):
        summary[name] = {"error": "no JUnit XML (pytest did not finish)"}
        continue
    cases = ET.parse(path).getroot().iter("testcase")
    counts, failed = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(case.get("name"))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    summary[name] = {**counts, "failed_ids": failed}
fd, tmp = tempfile.mkstemp(dir=out, suffix=".json")
with os.fdopen(fd, "w") as f:
    json.dump(summary, f, indent=1)
os.replace(tmp, os.path.join(out, "decode_layers.json"))
print(json.dumps({k: {kk: v for kk, v in s.items() if kk != "failed_ids"} for k, s in summary.items()}))
PY
exit $status
