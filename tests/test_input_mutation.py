"""The forward check fails a variant that writes into its inputs, even when its output is right."""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, registry
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant

PROBLEM = Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")


class _Sdpa(KernelVariant):
    family = "attention"
    masks = frozenset({"none", "causal"})
    dtypes = frozenset({"float32"})
    write: str = ""

    def build(self, problem):
        scale, causal = problem.softmax_scale, problem.mask.kind == "causal"

        def run(q, k, v):
            if self.write == "k-recentred":  # SageAttention 1.0.6's smoothing, on the caller's k
                k.sub_(k.mean(dim=2, keepdim=True))
            elif self.write == "v-scratch":  # uses v as scratch after reading it
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                v.zero_()
                return out
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

        return run


class Honest(_Sdpa):
    name = "honest-sdpa"


class RecentresK(_Sdpa):
    name = "recentres-k-in-place"
    write = "k-recentred"


class ZeroesV(_Sdpa):
    name = "zeroes-v-after-use"
    write = "v-scratch"


@pytest.mark.parametrize("variant,name", [(RecentresK(), "k"), (ZeroesV(), "v")], ids=["recentred-k", "zeroed-v"])
def test_a_variant_that_writes_into_an_input_fails_the_forward_check_naming_it(monkeypatch, variant, name):
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.check_forward(variant, PROBLEM)
    assert not result.passed
    text = "\n".join(result.details)
    assert f"the call changed its input {name} in place" in text, text
    # the output itself is right: softmax ignores a shift common to every key, and v was read first
    assert not any(line.startswith("output") and "above" in line for line in result.details), text


def test_an_honest_variant_passes_the_same_check(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, Honest.name, Honest())
    result = checks.check_forward(Honest(), PROBLEM)
    assert result.passed, result.details
