"""Deliberately wrong variants (the defect classes the suite exists to catch) are caught by the one pass rule against the oracle.

Each mutant is a small variant defined here: mask inverted, mask shifted by one key, window one
wider, K/V head mapping ``h % hkv`` instead of ``h * hkv // hq``, one head zeroed, ALiBi slopes
reversed; and a GQA layer with the wrong head mapping. Each test asserts that
:func:`attnsuite.tolerance.compare` FAILS and that its message points at what is off. The GQA
layer's float64 reference is also cross-checked against torch float64 autograd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite import mask_mods, registry, tolerance
from attnsuite.case import prepare
from attnsuite.inputs import layer_inputs_np
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant
from attnsuite_impls.gqa import gqa, gqa_oracle
from attnsuite_impls.attention.dense_kernel import explicit_attention

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("explicit", "gqa-layer-repeat")


class Mutant(KernelVariant):
    """A kernel variant that runs explicit attention with one deliberate defect."""

    name = "mutant"
    masks = frozenset({"none", "causal", "window"})
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "alibi"})

    def __init__(self, defect: str, head: int = 0):
        self.defect, self.head = defect, head

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        if self.defect == "inverted":
            allowed = ~allowed
        elif self.defect == "shifted":  # causal diagonal moved one key into the future: j <= i + 1
            allowed = torch.ones(problem.lq, problem.lk, dtype=torch.bool).tril(diagonal=problem.align_offset + 1)
        elif self.defect == "window+1":
            allowed = mask_mods.dense_bool_mask(problem.with_(mask=Mask("window", window=problem.mask.window + 1,
                                                                        align=problem.mask.align)))
        bias = None
        if problem.alibi:
            slopes = mask_mods.alibi_slopes(problem.hq, "cpu", torch.float64)
            if self.defect == "alibi-reversed":
                slopes = slopes.flip(0)
            qi = torch.arange(problem.lq)[:, None] + problem.align_offset
            kj = torch.arange(problem.lk)[None, :]
            bias = -slopes[:, None, None] * (qi - kj).abs()
        hq, hkv = problem.hq, problem.hkv
        mapping = torch.arange(hq) * hkv // hq
        if self.defect == "kv-mapping":
            mapping = torch.arange(hq) % hkv  # the interleaved mapping instead of the contiguous one

        def run(q, k, v):
            out = explicit_attention(q, k[:, mapping], v[:, mapping], problem.softmax_scale, allowed,
                                     None if bias is None else bias.to(q.dtype), None)
            if self.defect == "zero-head":
                out = out.clone()
                out[:, self.head] = 0
            return out

        return run


def run_mutant(mutant: Mutant, problem: Problem) -> tolerance.Comparison:
    family = registry._FAMILIES["attention"]
    ref_out, _ = family.reference(problem)
    base_out, _ = family.base(problem)
    with torch.no_grad():
        out = prepare(mutant, problem, requires_grad=False).forward()
    return tolerance.compare("output", out, ref_out, base_out, problem.dtype)


GQA = Problem(batch=2, lq=33, lk=33, hq=8, hkv=2, dqk=16, dv=16, mask=Mask("causal"))


def test_the_unmutated_explicit_form_passes():
    # the mutants share this code path: without a defect it must pass, or the tests below prove nothing
    for problem in (GQA, GQA.with_(mask=Mask("window", window=4)), GQA.with_(alibi=True, lq=17, mask=Mask("causal", align="bottom_right"))):
        c = run_mutant(Mutant("none"), problem)
        assert c.passed, c.describe()


def test_an_inverted_mask_is_caught():
    c = run_mutant(Mutant("inverted"), GQA)
    assert not c.passed
    # the last row sees every key; inverted it sees none and comes out NaN
    assert not c.finite and "NaN or Inf" in c.describe(), c.describe()


def test_a_mask_shifted_by_one_key_is_caught():
    problem = GQA
    c = run_mutant(Mutant("shifted"), problem)
    assert not c.passed, c.describe()
    assert c.err > 10 * c.bound
    assert c.where[2] < problem.lq - 1, f"the worst row {c.where[2]} should be one that gained a future key"


def test_a_window_one_key_wider_is_caught():
    c = run_mutant(Mutant("window+1"), GQA.with_(mask=Mask("window", window=4)))
    assert not c.passed, c.describe()
    assert c.where[2] >= 5, "rows before the window fills cannot differ; the error must be later"


@pytest.mark.parametrize("hq,hkv", [(8, 2), (6, 3), (8, 4)])
def test_a_wrong_kv_head_mapping_is_caught_and_points_at_a_remapped_head(hq, hkv):
    problem = GQA.with_(hq=hq, hkv=hkv)
    c = run_mutant(Mutant("kv-mapping"), problem)
    assert not c.passed, c.describe()
    h = np.arange(hq)
    remapped = set(h[(h * hkv // hq) != (h % hkv)].tolist())
    assert c.where[1] in remapped, f"worst head {c.where[1]} is not one of the remapped heads {sorted(remapped)}"


@pytest.mark.parametrize("head", [0, 5])
def test_a_zeroed_head_is_caught_at_that_head(head):
    c = run_mutant(Mutant("zero-head", head), GQA)
    assert not c.passed, c.describe()
    assert c.where[1] == head, f"the worst error is at head {c.where[1]}, the zeroed head is {head}: {c.describe()}"


def test_reversed_alibi_slopes_are_caught():
    problem = GQA.with_(alibi=True, lq=17, mask=Mask("causal", align="bottom_right"))
    c = run_mutant(Mutant("alibi-reversed"), problem)
    assert not c.passed, c.describe()


class _WrongMappingModule(gqa._RepeatModule):
    def attend(self, q, k, v):
        p = self.problem
        mapping = torch.arange(p.hq) % p.hkv  # wrong: interleaved instead of h * hkv // hq
        return _explicit_heads(q, k[:, mapping], v[:, mapping], p)


def _explicit_heads(q, k, v, p):
    s = (q @ k.transpose(-2, -1)) * p.softmax_scale
    allowed = mask_mods.dense_bool_mask(p)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v


class WrongMappingLayer(gqa.GqaLayerRepeat):
    name = "mutant-gqa-layer-kv-mapping"
    module_class = _WrongMappingModule


def test_a_gqa_layer_with_the_wrong_head_mapping_fails_output_and_kv_weight_gradients():
    problem = Problem(batch=2, lq=17, lk=17, hq=4, hkv=2, dqk=16, dv=16, d_model=48, mask=Mask("causal"))
    family = registry._FAMILIES["gqa-layer"]
    ref_out, ref_grads = family.reference(problem)
    base_out, base_grads = family.base(problem)
    for variant, should_pass in ((registry.get("gqa-layer-repeat"), True), (WrongMappingLayer(), False)):
        case = prepare(variant, problem, requires_grad=True)
        out = case.forward()
        case.backward(out)
        grads = case.grads()
        c_out = tolerance.compare("output", out, ref_out, base_out, problem.dtype)
        c_wk = tolerance.compare("grad wk", grads["wk"], ref_grads["wk"], base_grads["wk"], problem.dtype, "grad")
        assert c_out.passed == should_pass and c_wk.passed == should_pass, (variant.name, c_out.describe(), c_wk.describe())
        if not should_pass:
            assert c_wk.describe().startswith("grad wk: max error")


def test_the_gqa_layer_reference_equals_torch_float64_autograd():
    problem = Problem(batch=2, lq=13, lk=13, hq=6, hkv=2, dqk=16, dv=8, d_model=24, dtype="float64",
                      mask=Mask("window", window=5), alibi=True, softcap=4.0)
    x_np, dy_np = layer_inputs_np(problem)
    params = gqa_oracle.params_np(problem)
    y_ref, grads_ref = gqa_oracle.reference_forward_backward(problem, x_np, params, dy_np)
    x = torch.tensor(x_np, requires_grad=True)
    w = {n: torch.tensor(a, requires_grad=True) for n, a in params.items()}
    b, l, _ = x.shape
    q = (x @ w["wq"].T).view(b, l, 6, 16).transpose(1, 2)
    k = (x @ w["wk"].T).view(b, l, 2, 16).transpose(1, 2).repeat_interleave(3, dim=1)
    v = (x @ w["wv"].T).view(b, l, 2, 8).transpose(1, 2).repeat_interleave(3, dim=1)
    s = q @ k.transpose(-2, -1) * problem.softmax_scale
    s = s + mask_mods.additive_bias(problem.with_(mask=Mask()), torch.float64)
    s = 4.0 * torch.tanh(s / 4.0)
    s = s.masked_fill(~mask_mods.dense_bool_mask(problem), float("-inf"))
    y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, l, 6 * 8) @ w["wo"].T
    y.backward(torch.tensor(dy_np))
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-12, atol=1e-12)
    for name, t in [("x", x), *w.items()]:
        np.testing.assert_allclose(t.grad.numpy(), grads_ref[name], rtol=1e-10, atol=1e-12, err_msg=f"grad {name}")
