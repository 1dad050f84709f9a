"""``checks.same_bits``: the equality the repeat, backward-repeat and causality checks hold two runs to."""

from __future__ import annotations

import pytest
import torch

from attnsuite.checks import same_bits

NAN, INF = float("nan"), float("inf")


CASES = [
    (torch.tensor([1.0, NAN]), torch.tensor([1.0, NAN]), True, "NaN where the other run has NaN"),
    (torch.tensor([-0.0, 2.0]), torch.tensor([0.0, 2.0]), True, "zeros of either sign (a masked key's 0 * v)"),
    (torch.tensor([INF, -INF]), torch.tensor([INF, -INF]), True, "the same infinities"),
    (torch.tensor([1.0, NAN]), torch.tensor([1.0, 0.0]), False, "NaN against a number"),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0000002]), False, "one ulp apart"),
    (torch.tensor([INF]), torch.tensor([torch.finfo(torch.float32).max]), False, "an infinity against the largest finite"),
    (torch.tensor([-INF]), torch.tensor([torch.finfo(torch.float32).min]), False, "-inf against the lowest finite"),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0], dtype=torch.bfloat16), False, "another dtype, the same values"),
    (torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 2.0]]), False, "another shape"),
]


@pytest.mark.parametrize("a, b, same, why", CASES, ids=[c[3] for c in CASES])
def test_same_bits_holds_two_results_to(a, b, same, why):
    assert same_bits(a, b) is same, f"{why}: same_bits should say {same}"
    assert same_bits(b, a) is same, f"{why} (swapped): same_bits should say {same}"
