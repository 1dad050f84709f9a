#!/usr/bin/env bash
# The pinned rules, the reset hook and the selection checks on a CUDA GPU (a few minutes on an H200):
#   1. backward of every variant on the attention problems with fully masked query rows, on cuda
#      (checked since the rules were pinned: NaN gradients there now fail, docs/checks.md);
#   2. the repeat check of every variant on cuda (a variant whose output depends on earlier calls
#      is named there);
#   3. the CPU tests of docs/checks.md (tests/test_rules_pinned.py, test_reset_hook.py,
#      test_selection_checks.py): the rules do not depend on the device.
# Each stage runs even if the one before fails. Logs and JUnit XML go to ${OUT:-results}.
source "$(dirname "$0")/gpu_common.sh"

stage gpu_checks_masked_rows_backward 200 test_correctness/test_variants.py --attn-device cuda \
  -k "test_backward_matches_oracle and (masked-rows or causal-br)"
stage gpu_checks_repeat 200 test_correctness/test_variants.py --attn-device cuda -k "test_two_runs_agree"
stage gpu_checks_cpu_rules 150 tests/test_rules_pinned.py tests/test_reset_hook.py tests/test_selection_checks.py
exit $status
