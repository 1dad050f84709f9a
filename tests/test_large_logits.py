"""The catalogue's large-logits problems: a softmax without the row maximum taken off passed every
CPU problem (found by a fresh-user test; only fp16, a CUDA dtype, overflowed). Logits of a few
hundred overflow exp() in fp32 and bf16 alike. A second fresh-user test found the first such problem
reached only variants declaring three features, and no bf16 run: they now need nothing declared."""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, mask_mods, registry
from attnsuite.problem import LARGE_LOGITS
from attnsuite.registry import KernelVariant
from test_correctness.conftest import CPU_DTYPES, CUDA_DTYPES


class NoMaxSoftmax(KernelVariant):
    # what README's example declares: two masks, no feature
    name = "test-softmax-without-max"
    masks = frozenset({"none", "causal"})
    dtypes = frozenset({"float32", "bfloat16", "float16"})

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)

        def run(q, k, v):
            s = q @ k.transpose(-1, -2) * problem.softmax_scale
            e = torch.exp(s if allowed is None else s.masked_fill(~allowed, float("-inf")))
            return (e / e.sum(-1, keepdim=True)).nan_to_num() @ v
        return run


def _problems(device: str = "cpu", dtypes: tuple = CPU_DTYPES):
    registry.load_builtin()
    return [p for p in registry.family("attention").problems(device, dtypes) if not p.dropout]


@pytest.mark.parametrize("device,dtypes", [("cpu", CPU_DTYPES), ("cuda", CUDA_DTYPES)])
def test_every_dtype_but_fp64_has_large_logits_problems_a_minimal_variant_takes(device, dtypes):
    for dtype in dtypes:
        large = [p for p in _problems(device, dtypes) if p.tag == LARGE_LOGITS and p.dtype == dtype]
        if dtype == "float64":  # exp() does not overflow there
            assert not large
            continue
        assert {p.mask.kind for p in large} == {"none", "causal"}, f"{device} {dtype}: {[p.id for p in large]}"
        for p in large:
            assert max(p.lq, p.lk) > 16 and p.lq == p.lk and p.hq == p.hkv
            if device == "cpu":
                assert NoMaxSoftmax().unsupported(p) == [], p.id


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_softmax_without_the_row_maximum_fails_on_the_large_logits_problems_only(dtype):
    problems = [p for p in _problems() if p.dtype == dtype]
    large = [p for p in problems if p.tag == LARGE_LOGITS]
    for p in large:
        result = checks.check_forward(NoMaxSoftmax(), p)
        assert not result.passed and "output" in result.message, f"{p.id}: {result.message}"
    assert len(large) == 2
    for p in large:  # the same problems with ordinary inputs: the large ones are what catches it
        ordinary = p.with_(tag="")
        assert checks.check_forward(NoMaxSoftmax(), ordinary).passed, ordinary.id


@pytest.mark.parametrize("check, skipped", [("backward", True), ("strided", True), ("forward", False),
                                           ("causality", False), ("repeat", False)])
def test_approximate_classes_skip_only_the_budget_checks_of_the_large_logits_problems_saying_why(check, skipped):
    # their forward is held to the values' range there (tests/test_approximate.py); causality and repeat need no budget
    p = next(p for p in _problems() if p.tag == LARGE_LOGITS and p.mask.kind == "causal")
    reason = checks.skip_reason(check, registry.get("fp8-fakequant"), p)
    assert ("budget was measured at ordinary logit sizes" in (reason or "")) is skipped, reason
    assert checks.skip_reason(check, registry.get("sdpa"), p) is None


def test_a_compiled_variant_meets_the_large_logits_problems_of_the_first_dtype(tmp_path):
    # compiled variants check only the first two problems per dtype on CPU; the large-logits ones come
    # last in the catalogue, and no compiled variant had met them on CPU or on an H200
    from tests.suiterun import run_suite_tests

    out = run_suite_tests(["test_correctness/test_variants.py"], tmp_path, "--collect-only", "-q",
                          "--attn-only=compiled-explicit", "-k", "forward_matches")
    ids = {line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "test_forward_matches_oracle[" in line}
    large = {i for i in ids if i.endswith("-large-logits")}
    assert large == {"compiled-explicit@b1-q29-h2-d32-nomask-fp32-cpu-large-logits",
                     "compiled-explicit@b1-q29-h2-d32-causal-tl-fp32-cpu-large-logits"}, out[-2000:]
    assert len(ids) == 3 * 2 + 2, sorted(ids)  # two problems per dtype (fp32, fp64, bf16) plus those two
