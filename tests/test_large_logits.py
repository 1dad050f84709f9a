"""The catalogue's large-logits problem: a softmax without the row maximum taken off passed every
CPU problem (found by a fresh-user test; only fp16, a CUDA dtype, overflowed). Logits of a few
hundred overflow exp() in fp32 and bf16 alike."""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, mask_mods, registry
from attnsuite.problem import LARGE_LOGITS
from attnsuite.registry import KernelVariant


class NoMaxSoftmax(KernelVariant):
    name = "test-softmax-without-max"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    dtypes = frozenset({"float32", "bfloat16", "float64"})

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)

        def run(q, k, v):
            g = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            s = q @ k.transpose(-1, -2) * problem.softmax_scale
            e = torch.exp(s if allowed is None else s.masked_fill(~allowed, float("-inf")))
            return (e / e.sum(-1, keepdim=True)).nan_to_num() @ v
        return run


def _problems(dtype: str):
    registry.load_builtin()
    return [p for p in registry.family("attention").problems("cpu", (dtype,)) if not p.dropout]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_softmax_without_the_row_maximum_fails_on_the_large_logits_problem_only(dtype):
    problems = _problems(dtype)
    large = [p for p in problems if p.tag == LARGE_LOGITS]
    assert large, f"no {LARGE_LOGITS} problem in the {dtype} CPU catalogue"
    result = checks.check_forward(NoMaxSoftmax(), large[0])
    assert not result.passed and "output" in result.message, result.message
    ordinary = next(p for p in problems if p.tag != LARGE_LOGITS and p.lq > 3 and not p.alibi and p.softcap is None
                    and p.mask.kind in ("none", "causal"))
    assert checks.check_forward(NoMaxSoftmax(), ordinary).passed


def test_approximate_classes_skip_the_large_logits_problem_saying_why():
    p = next(p for p in _problems("float32") if p.tag == LARGE_LOGITS)
    assert "budget was measured at ordinary logit sizes" in checks.skip_reason("forward", registry.get("fp8-fakequant"), p)
    assert checks.skip_reason("forward", registry.get("sdpa"), p) is None
