"""MLA (DeepSeek-V3) and plain latent attention layers: expanded == absorbed, decode from the latent cache,
the deepseek-v3 workload at quick size, and mutations the tolerance rule must catch.

The generic checks (test_variants.py) already compare every variant with the float64 oracle on the
families' problems; these tests add what is specific to latent attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnsuite import checks, registry
from attnsuite.inputs import layer_inputs_np, to_torch
from attnsuite.problem import Mask
from attnsuite.tolerance import compare
from attnsuite_impls.mla import mla, mla_oracle as mo

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("mla-absorbed", "mla-expanded", "latent-absorbed", "latent-expanded")

MASKS = [Mask("causal"), Mask()]
TIGHT = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-5)}


def _forward_backward(variant_name: str, problem):
    module = mla.build_module(variant_name, problem)
    x_np, dy_np = layer_inputs_np(problem)
    x = to_torch(x_np, problem, requires_grad=True)
    y = module(x)
    y.backward(to_torch(dy_np, problem))
    grads = {n: p.grad for n, p in module.named_parameters()}
    grads["x"] = x.grad
    return y.detach(), grads


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.id)
@pytest.mark.parametrize("family,expanded,absorbed,problem_of", [
    ("mla-layer", "mla-expanded", "mla-absorbed", lambda m, d: mo.mla_problem(2, 11, 40, 3, 16, 12, 6, 4, 7, mask=m, dtype=d)),
    ("latent-layer", "latent-expanded", "latent-absorbed", lambda m, d: mo.latent_problem(2, 11, 40, 3, 10, 8, 6, mask=m, dtype=d)),
], ids=["mla", "latent"])
def test_expanded_and_absorbed_forms_agree_with_each_other_directly(family, expanded, absorbed, problem_of, mask, dtype):
    problem = problem_of(mask, dtype)
    y_e, g_e = _forward_backward(expanded, problem)
    y_a, g_a = _forward_backward(absorbed, problem)
    torch.testing.assert_close(y_a, y_e, **TIGHT[dtype], msg=lambda m: f"{absorbed} vs {expanded} output: {m}")
    for name in g_e:
        torch.testing.assert_close(g_a[name], g_e[name], **TIGHT[dtype], msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("variant_name", ["mla-absorbed", "mla-expanded"])
@pytest.mark.parametrize("new_tokens", [1, 3])
def test_decode_from_the_latent_cache_equals_the_full_forward_last_rows(variant_name, new_tokens):
    problem = mo.mla_problem(2, 12, 32, 2, 16, 12, 6, 4, 8, mask=Mask("causal"), dtype="float64")
    module = mla.build_module(variant_name, problem)
    x = to_torch(layer_inputs_np(problem)[0], problem)
    with torch.no_grad():
        full = module(x)
        prefix = problem.lq - new_tokens
        cache = module.latent_cache(x[:, :prefix])
        assert cache[0].shape[-1] + cache[1].shape[-1] == 12 + 4, "the cache holds kv_lora + rope numbers per token"
        step = module.decode(x[:, prefix:], cache)
    torch.testing.assert_close(step, full[:, prefix:], rtol=1e-12, atol=1e-12)


def test_deepseek_v3_quick_workload_runs_both_forms_within_tolerance_in_bf16():
    problem = mo.deepseek_v3_problem(dtype="bfloat16", device="cpu", quick=True)
    for name in ("mla-expanded", "mla-absorbed"):
        result = checks.check_forward(registry.get(name), problem)
        assert result.passed, result.message


class _RopeOnNopeMLA(mla.MLA):
    """Mutation: RoPE rotates the no-position slice of q instead of the rope slice."""

    def _project(self, x, offset=0):
        q_nope, q_pe, c_kv, k_pe = super()._project(x, offset)
        b, L = x.shape[:2]
        cos, sin = mla._rope_cos_sin(L, self.dn, x.device, offset)
        # undo nothing on q_pe (it stays rotated), but also rotate q_nope: position leaks into the wrong part
        return mla.apply_rope(q_nope, cos[:, None], sin[:, None]), q_pe, c_kv, k_pe


class _NoKeyRopeMLA(mla.MLA):
    """Mutation: the shared k_pe is used without its rotary embedding."""

    def _project(self, x, offset=0):
        q_nope, q_pe, c_kv, _ = super()._project(x, offset)
        k_pe = F.linear(x, self.wkv_a)[..., self.kv_lora :]
        return q_nope, q_pe, c_kv, k_pe


class _AbsorbedWrongHalf(mla.LatentAttention):
    """Mutation: the absorbed form up-projects values with the key half of wkv_b."""

    def forward(self, x):
        w = self.wkv_b.data
        h, r = self.h, self.r
        swapped = w.view(h, self.dqk + self.dv, r)
        swapped = torch.cat([swapped[:, : self.dqk], swapped[:, : self.dv]], dim=1).reshape(w.shape)
        with torch.no_grad():
            self.wkv_b.copy_(swapped)
        try:
            return super().forward(x)
        finally:
            with torch.no_grad():
                self.wkv_b.copy_(w)


def _mutant(base_cls, module_cls, name):
    cls = type(name, (base_cls,), {"name": name, "module": module_cls})
    return cls()


@pytest.mark.parametrize("mutant,base_cls,problem", [
    (_RopeOnNopeMLA, mla.MLAExpanded, mo.mla_problem(1, 13, 32, 2, 16, 12, 8, 4, 8, mask=Mask("causal"))),
    (_NoKeyRopeMLA, mla.MLAAbsorbed, mo.mla_problem(1, 13, 32, 2, 16, 12, 8, 4, 8, mask=Mask())),
    (_AbsorbedWrongHalf, mla.LatentAbsorbed, mo.latent_problem(1, 13, 32, 2, 10, 8, 6, mask=Mask("causal"))),
], ids=["rope-on-the-nope-part", "k_pe-without-rope", "absorbed-values-from-key-half"])
def test_a_wrong_latent_layer_is_caught_by_the_tolerance_rule(mutant, base_cls, problem):
    variant = _mutant(base_cls, mutant, f"mutant-{mutant.__name__}")
    ref_out, _ = checks.reference(variant.family, problem)
    base_out, _ = checks.base(variant.family, problem)
    x = to_torch(layer_inputs_np(problem)[0], problem)
    params = {n: to_torch(a, problem) for n, a in registry.family_of(variant).params(problem).items()}
    with torch.no_grad():
        out = variant.build(problem, params)(x)
    verdict = compare("output", out, ref_out, base_out, problem.dtype)
    assert not verdict.passed, f"{variant.name} went unnoticed: {verdict.describe()}"


def test_mla_variants_decline_a_problem_without_mla_args_and_say_why():
    bad = mo.latent_problem(1, 5, 16, 2, 4, 8, 8)
    reasons = registry.get("mla-absorbed").unsupported(bad)
    assert any("lacks args" in r and "nope_dim" in r for r in reasons), reasons
