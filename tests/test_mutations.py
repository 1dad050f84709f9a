"""The checks catch the defect classes the suite exists to catch (future leaks, NaN or zero heads, wrong scale, missing gradients, silent downcasts) when a variant is made wrong.

Each mutant is a small, deliberately broken kernel variant (not registered). The test asserts that
the named check FAILS and that its message names the variant and what is off, and that the
unbroken twin passes the same check (so the failure is the mutation's, not the harness's).
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, mask_mods
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant
from attnsuite_impls.attention.dense_kernel import ALL_MASKS, EVERYTHING


class Mutant(KernelVariant):
    """Explicit attention with one knob per defect class."""

    name = "mutant"
    masks = ALL_MASKS
    features = EVERYTHING

    def __init__(self, defect: str = "none"):
        self.defect = defect
        self.name = f"mutant-{defect}"

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        defect, scale = self.defect, problem.softmax_scale
        if defect == "mask-inverted" and allowed is not None:
            allowed = ~allowed
        if defect == "mask-shifted" and allowed is not None:
            allowed = mask_mods.dense_bool_mask(problem.with_(lk=problem.lk))  # same shape
            allowed = torch.roll(allowed, shifts=1, dims=1) | allowed  # one step into the future
        if defect == "wrong-corner":
            mask = problem.mask
            allowed = mask_mods.dense_bool_mask(problem.with_(mask=type(mask)(mask.kind, align="top_left",
                                                                               window=mask.window)))
        if defect == "scale-3pct":
            scale *= 1.03

        def run(q, k, v):
            hq, hkv = q.shape[1], k.shape[1]
            if defect == "grad-detached":
                k = k.detach()
            if defect == "kv-head-map":
                idx = torch.arange(hq) % hkv  # wrong: should be h * hkv // hq
            else:
                idx = torch.arange(hq) * hkv // hq
            kk, vv = k[:, idx], v[:, idx]
            work = q.to(torch.float16) if defect == "low-precision" else q
            s = (work @ kk.to(work.dtype).transpose(-1, -2)) * scale
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            o = torch.softmax(s, -1) @ vv.to(work.dtype)
            if defect == "head-zeroed":
                o = o.clone()
                o[:, -1] = 0
            if defect == "output-cast":
                return o.to(torch.float16)
            return o.to(q.dtype)

        return run


CAUSAL = Problem(batch=1, lq=33, lk=33, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("causal"))
DECODE = Problem(batch=1, lq=4, lk=40, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("causal", align="bottom_right"))
FP64 = CAUSAL.with_(dtype="float64")

MUTATIONS = [
    # (defect, problem, check that must catch it, words the message must contain)
    ("mask-inverted", CAUSAL, "forward", "output: "),  # the last row sees nothing: NaN
    ("mask-inverted", CAUSAL, "causality", "future leak"),
    ("mask-shifted", CAUSAL, "forward", "output: max error"),
    ("mask-shifted", CAUSAL, "causality", "future leak"),
    ("wrong-corner", DECODE, "forward", "output: max error"),
    ("scale-3pct", CAUSAL, "forward", "output: max error"),
    ("scale-3pct", CAUSAL, "backward", "grad"),
    ("scale-3pct", FP64, "forward", "output: max error"),
    ("grad-detached", CAUSAL, "backward", "grad k: missing"),
    ("output-cast", CAUSAL, "forward", "silent cast"),
    ("low-precision", FP64, "forward", "output: max error"),
    ("head-zeroed", CAUSAL, "forward", "head 3 of batch 0 is all zeros"),
    ("kv-head-map", CAUSAL, "forward", "output: max error"),
]


@pytest.mark.parametrize(
    "defect, problem, check, words", MUTATIONS, ids=[f"{m[0]}-caught-by-{m[2]}-on-{m[1].dtype}" for m in MUTATIONS]
)
def test_mutation_is_caught(defect, problem, check, words):
    broken = checks.CHECKS[check](Mutant(defect), problem)
    assert not broken.passed, f"{check} missed the {defect} mutation on {problem.id}"
    assert f"mutant-{defect} on {problem.id}: {check} FAILED" in broken.message
    assert words in broken.message, broken.message
    healthy = checks.CHECKS[check](Mutant("none"), problem)
    assert healthy.passed, f"the unmutated twin fails {check} on {problem.id}: {healthy.message}"


def test_a_variant_that_raises_is_a_failed_check_not_a_crash():
    class Raises(Mutant):
        def build(self, problem):
            def run(q, k, v):
                raise RuntimeError("kernel exploded")
            return run

    result = checks.check_forward(Raises("raises"), CAUSAL)
    assert not result.passed
    assert "raised RuntimeError: kernel exploded" in result.message


def test_a_variant_returning_nan_is_named_with_its_index():
    class Nan(Mutant):
        def build(self, problem):
            def run(q, k, v):
                o = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
                o[0, 1, 2, 3] = float("nan")
                return o
            return run

    result = checks.check_forward(Nan("nan"), CAUSAL)
    assert not result.passed and "NaN or Inf (first at index (0, 1, 2, 3))" in result.message


def test_a_variant_returning_the_wrong_shape_is_named():
    class Shape(Mutant):
        def build(self, problem):
            return lambda q, k, v: q[..., :-1]

    result = checks.check_forward(Shape("shape"), CAUSAL)
    assert not result.passed and "output shape (1, 4, 33, 15) != expected (1, 4, 33, 16)" in result.message
