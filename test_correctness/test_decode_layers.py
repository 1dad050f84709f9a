"""Layer-level incremental decoding: prefill, then steps of 1 and 3 tokens, equal the full forward's rows.

Every selected (``--attn-only``) layer variant that declares ``decodes`` runs through
:func:`attnsuite.decode_check.check_decode` on its family's causal problems (unmasked ones in causal
form, so MQA is decoded too); ids read ``test_decode_steps_match_the_full_forward[<variant>@<problem>-
decode-prefill7-steps1,3,1]``. Mutants of ``layer-sdpa`` (a step that aligns its causal mask top-left,
a cache that drops its oldest token, a step that does not append to the cache) must each be caught,
and the failure must name the first wrong step.
"""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from attnsuite import registry
from attnsuite.checks import guarded_skip_reason
from attnsuite.decode_check import DEFAULT_PLAN, DecodePlan, check_decode, decode_problems, skip_reason
from attnsuite.plugin import selected_variants
from attnsuite_impls.layers import dense_layer

from .conftest import correctness_device

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("layer-sdpa", "layer-flex")

# CPU budget: sequences up to 40 tokens (7 prefill + ~20 steps each); the GPU run takes every length.
CPU_MAX_LENGTH = 40
CPU_DTYPES = ("float32", "bfloat16")


def _dtypes(config: pytest.Config, device: str) -> tuple:
    chosen = config.getoption("--attn-dtype", default=None)
    if chosen:
        return tuple(chosen) if isinstance(chosen, (list, tuple)) else (chosen,)
    return ("float16", "bfloat16", "float32") if device.startswith("cuda") else CPU_DTYPES


def _cases(config: pytest.Config):
    device = correctness_device(config)
    dtypes = _dtypes(config, device)
    max_length = None if device.startswith("cuda") else CPU_MAX_LENGTH
    problems: dict[str, list] = {}
    for variant in selected_variants(config, level="layer"):
        if not getattr(variant, "decodes", False):
            continue
        family = registry.family_of(variant)
        if family.name not in problems:
            problems[family.name] = decode_problems(family, device, dtypes, DEFAULT_PLAN, max_length)
        for problem in problems[family.name]:
            # None when the variant's own hook raised: that test then fails naming it (_applies)
            reason, _ = guarded_skip_reason(lambda: skip_reason(variant, problem, DEFAULT_PLAN), variant, problem)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            yield pytest.param(variant, problem, id=f"{variant.name}@{problem.id}-{DEFAULT_PLAN.id}", marks=marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ == "test_decode_steps_match_the_full_forward":
        params = list(_cases(metafunc.config))
        if not params:  # --attn-only chose no decoding variant: say so instead of an empty run
            params = [pytest.param(None, None, id="no-selected-decoding-variant",
                                   marks=pytest.mark.skip(reason="no selected layer variant declares decodes"))]
        metafunc.parametrize(("variant", "problem"), params)


def _applies(variant, problem) -> None:
    """Skip the test when the variant declares the problem unsupported; fail it when its hook raises."""
    reason, failure = guarded_skip_reason(lambda: skip_reason(variant, problem, DEFAULT_PLAN), variant, problem)
    if failure:
        pytest.fail(failure, pytrace=False)
    if reason:
        pytest.skip(reason)


def test_decode_steps_match_the_full_forward(variant, problem, build_cache):
    _applies(variant, problem)
    result = check_decode(variant, problem, DEFAULT_PLAN, cache=build_cache)
    if not result.passed:
        pytest.fail(result.message, pytrace=False)


def test_every_family_with_decoding_variants_is_covered():
    """MHA, GQA (with its MQA problem), MLA and the latent layer each have a decoding variant and problems."""
    for family, variant_name in (("mha-layer", "layer-sdpa"), ("gqa-layer", "gqa-layer-sdpa"),
                                 ("mla-layer", "mla-expanded"), ("mla-layer", "mla-absorbed"),
                                 ("latent-layer", "latent-absorbed")):
        assert registry.get(variant_name).decodes, variant_name
        assert decode_problems(registry.family(family), "cpu", CPU_DTYPES, max_length=CPU_MAX_LENGTH), family
    gqa = decode_problems(registry.family("gqa-layer"), "cpu", ("float32",), max_length=CPU_MAX_LENGTH)
    assert any(p.hkv == 1 for p in gqa), "the MQA problem (hkv=1) is not decoded"


def test_the_plan_splits_a_sequence_into_prefill_then_steps_of_one_and_three():
    assert DEFAULT_PLAN.id == "decode-prefill7-steps1,3,1"
    assert DEFAULT_PLAN.pieces(17) == [(0, 7), (7, 8), (8, 11), (11, 12), (12, 13), (13, 16), (16, 17)]
    with pytest.raises(ValueError, match="nothing to step through"):
        DEFAULT_PLAN.pieces(7)
    with pytest.raises(ValueError, match=">= 1 token"):
        DecodePlan(prefill=7, steps=(1, 0))


def test_a_variant_without_decoding_is_a_skip_with_its_reason():
    problem = decode_problems(registry.family("mha-layer"), "cpu", ("float32",))[0]
    reason = skip_reason(registry.get("layer-flex"), problem)
    assert reason is not None and "declares no incremental decoding" in reason
    result = check_decode(registry.get("layer-flex"), problem)
    assert not result.passed and result.details == [f"cannot decode-check: {reason}"]


# ---------------------------------------------------------------- mutants: each must be caught


class TopLeftStep(dense_layer.LayerSdpa):
    """Mutant: each step calls SDPA with is_causal=True, whose corner is top-left when lq < lk."""

    name = "mutant-layer-sdpa-top-left-step"

    def build(self, problem, params):
        module = super().build(problem, params)
        module.decode_attend = lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=module.scale)
        return module


class DropsOldestToken(dense_layer.LayerSdpa):
    """Mutant: a sliding cache that forgets the oldest token after each step."""

    name = "mutant-layer-sdpa-drops-oldest-token"

    def step(self, module, x_new, cache):
        y, (k, v) = super().step(module, x_new, cache)
        return y, (k[:, :, 1:], v[:, :, 1:])


class CacheNotAppended(dense_layer.LayerSdpa):
    """Mutant: a step that attends correctly but hands back the cache it was given."""

    name = "mutant-layer-sdpa-cache-not-appended"

    def step(self, module, x_new, cache):
        y, _ = super().step(module, x_new, cache)
        return y, cache


def _mha_problem(dtype: str):
    return decode_problems(registry.family("mha-layer"), "cpu", (dtype,), max_length=CPU_MAX_LENGTH)[0]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(("mutant", "first_wrong"), [
    (TopLeftStep(), "step 1 of 1 token (rows 7..7)"),
    (DropsOldestToken(), "step 2 of 3 tokens (rows 8..10)"),
    (CacheNotAppended(), "step 2 of 3 tokens (rows 8..10)"),
], ids=["top-left-step", "drops-oldest-token", "cache-not-appended"])
def test_a_wrong_decode_is_caught_at_its_first_wrong_step(mutant, first_wrong, dtype):
    problem = _mha_problem(dtype)
    assert check_decode(registry.get("layer-sdpa"), problem).passed, "the real layer-sdpa fails the decode check"
    result = check_decode(mutant, problem)
    assert not result.passed, f"{mutant.name} passed the decode check"
    assert f"above the bound: {first_wrong}: max error" in result.message, result.message
    assert f"{mutant.name} on {problem.id}: decode FAILED" in result.message


def test_a_step_that_writes_nan_is_named():
    class NaNStep(dense_layer.LayerSdpa):
        name = "mutant-layer-sdpa-nan-step"

        def step(self, module, x_new, cache):
            y, cache = super().step(module, x_new, cache)
            return (y * float("nan") if cache[0].shape[2] == 12 else y), cache  # the step ending at token 12

    result = check_decode(NaNStep(), _mha_problem("float32"))
    assert not result.passed
    assert "the first NaN/Inf is in step 3 of 1 token (rows 11..11)" in result.message, result.message


def test_a_step_with_the_wrong_output_shape_breaks_the_contract():
    class HalfStep(dense_layer.LayerSdpa):
        name = "mutant-layer-sdpa-half-step"

        def step(self, module, x_new, cache):
            y, cache = super().step(module, x_new, cache)
            return y[:, :1], cache  # only the first new token's row

    result = check_decode(HalfStep(), _mha_problem("float32"))
    assert not result.passed
    assert "step 2 of 3 tokens (rows 8..10) broke the output contract" in result.message, result.message
    assert "output shape (2, 1, 48) != expected (2, 3, 48)" in result.message, result.message

