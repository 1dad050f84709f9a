"""The Triton kernels (triton-flash, triton-decode, triton-mla-absorbed): what test_variants.py does not show.

test_variants.py runs every registered variant, these included, through every check on the
families' problems. Here: each deliberate kernel defect (a constexpr mutant flag of the flash
kernels) is caught by the check that should catch it while the honest kernel passes the same
problem, and by the backward check on the fused backward path too; the split backward is bitwise
deterministic; MLA decode steps go through the kernel; the variants decline what they do not
support with a reason. The fused path's own checks are test_triton_bwd.py.

On CPU the kernels run in Triton's interpreter, which needs TRITON_INTERPRET=1 before triton's
first import (test_correctness/conftest.py sets it for CPU runs, through triton_support.choose_mode).
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, registry
from attnsuite_impls.mla import mla_oracle as mo
from attnsuite.case import prepare
from attnsuite.inputs import layer_inputs_np, to_torch
from attnsuite.problem import Mask, Problem
from attnsuite.tolerance import compare
from attnsuite_impls.attention.triton_flash import TritonFlash, pinned_variant
from attnsuite.triton_support import device_reason, unavailable_reason

from .conftest import correctness_device

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = [pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
              pytest.mark.attn_variants("triton-flash", "triton-decode", "triton-mla-absorbed")]


@pytest.fixture(scope="module")
def device(pytestconfig) -> str:
    """The run's device; its tests skip, saying why, when Triton cannot take its tensors in this process."""
    device = correctness_device(pytestconfig)
    reason = device_reason(device.split(":")[0])
    if reason is not None:
        pytest.skip(reason)
    return device


def _dtype(device: str) -> str:
    """fp32 on the interpreter; on CUDA Triton's fp32 dot is TF32, so bf16."""
    return "float32" if device == "cpu" else "bfloat16"


def _mutant(flag: str) -> TritonFlash:
    """triton-flash with one kernel defect switched on (not registered: tests only)."""
    cls = type(f"Mutant_{flag}", (TritonFlash,), {"name": f"mutant-triton-{flag.replace('_', '-')}",
                                                  "mutants": {flag: True}})
    return cls()


BR = Mask("causal", align="bottom_right")
# (defect, problem where it shows, the check that must catch it, a check it must still pass)
MUTANTS = [
    ("skip_block", Problem(batch=1, lq=40, lk=150, hq=2, hkv=1, dqk=32, dv=32), "forward", None),
    ("wrong_corner", Problem(batch=1, lq=17, lk=97, hq=2, hkv=2, dqk=32, dv=32, mask=BR), "forward", None),
    ("stale_lse", Problem(batch=1, lq=97, lk=97, hq=2, hkv=2, dqk=32, dv=32, mask=Mask("causal")),
     "backward", "forward"),
]


@pytest.mark.parametrize("flag,problem,catching,passing", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_a_kernel_defect_is_caught_by_its_check_and_the_honest_kernel_passes(flag, problem, catching, passing,
                                                                             device):
    problem = problem.with_(device=device, dtype="bfloat16")
    honest = checks.CHECKS[catching](registry.get("triton-flash"), problem)
    assert honest.passed, honest.message
    caught = checks.CHECKS[catching](_mutant(flag), problem)
    assert not caught.passed, f"the {flag} mutant passed the {catching} check:\n{caught.message}"
    if passing is not None:  # the defect lives in one pass only: the other check cannot see it
        result = checks.CHECKS[passing](_mutant(flag), problem)
        assert result.passed, result.message


@pytest.mark.parametrize("flag,problem", [m[:2] for m in MUTANTS], ids=[m[0] for m in MUTANTS])
def test_on_the_fused_backward_path_a_kernel_defect_fails_the_backward_check(flag, problem, device):
    # the fused kernel carries the same masking ranges and corner flag as the split one: whatever
    # the defect breaks (o and lse, or the corner), dQ/dK/dV computed from it must come out wrong
    problem = problem.with_(device=device, dtype="bfloat16")
    honest = checks.CHECKS["backward"](pinned_variant("fused"), problem)
    assert honest.passed, honest.message
    caught = checks.CHECKS["backward"](pinned_variant("fused", {flag: True}), problem)
    assert not caught.passed, f"the {flag} mutant passed the backward check on the fused path:\n{caught.message}"


def test_the_mutant_flags_are_off_in_the_registered_variant():
    assert registry.get("triton-flash").mutants == {}


def test_triton_flash_split_backward_is_bitwise_deterministic_with_gqa_and_a_window(device):
    problem = Problem(batch=1, lq=70, lk=90, hq=4, hkv=2, dqk=40, dv=40, dtype="bfloat16", device=device,
                      mask=Mask("window", window=20, align="bottom_right"))
    variant = pinned_variant("split")  # the fused path's dQ atomics are not bitwise deterministic
    runs = []
    for _ in range(2):
        case = prepare(variant, problem, requires_grad=True)
        out = case.forward()
        case.backward(out)
        runs.append(case.grads())
    for name in ("q", "k", "v"):
        assert checks.same_bits(runs[0][name], runs[1][name]), f"grad {name} differs between two identical runs"


@pytest.mark.parametrize("variant_name,problem,needle", [
    ("triton-flash", Problem(alibi=True, dtype="bfloat16"), "alibi"),
    ("triton-flash", Problem(dqk=320, dv=320, dtype="bfloat16"), "head dims up to 256"),
    ("triton-flash", Problem(dtype="float32", device="cuda"), "TF32"),
    ("triton-flash", Problem(batch=4, lq=1031, lk=1031, dtype="bfloat16"), "interpreter"),
    ("triton-decode", Problem(lq=64, lk=300, dtype="bfloat16", mask=BR), "at most 16 new queries"),
    ("triton-decode", Problem(lq=1, lk=300, dtype="bfloat16"), "no backward"),
], ids=["alibi", "head-dim", "fp32-cuda", "interpreter-budget", "decode-lq", "decode-backward"])
def test_a_triton_variant_declines_what_it_does_not_support_and_says_why(variant_name, problem, needle,
                                                                         monkeypatch):
    if problem.device == "cuda":
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # compiled CUDA kernels (the interpreter has no TF32)
        reasons = registry.get(variant_name).extra_reasons(problem, False)  # any "no CUDA here" reason aside
    else:
        reasons = registry.get(variant_name).unsupported(problem, backward=(needle == "no backward"))
    assert any(needle in r for r in reasons), reasons


def test_cpu_tensors_without_the_interpreter_are_declined_with_the_variable_to_set(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = device_reason("cpu")
    assert reason is not None and "TRITON_INTERPRET=1" in reason


@pytest.mark.parametrize("new_tokens", [1, 3])
def test_mla_decode_steps_through_the_triton_core_match_the_full_forward(new_tokens, device):
    problem = mo.mla_problem(1, 12, 40, 3, 16, 12, 6, 4, 7, mask=Mask("causal"), dtype=_dtype(device), device=device)
    from attnsuite_impls.mla import mla

    module = mla.build_module("triton-mla-absorbed", problem)
    x = to_torch(layer_inputs_np(problem)[0], problem)
    with torch.no_grad():
        full = module(x)
        cache = module.latent_cache(x[:, : problem.lq - new_tokens])
        step = module.decode(x[:, problem.lq - new_tokens :], cache)
    c = compare("decode rows", step, full[:, -new_tokens:].double(), full[:, -new_tokens:].double(), problem.dtype)
    assert c.passed, c.describe()


def test_a_backward_through_the_forward_only_mla_kernel_raises_instead_of_returning_wrong_grads(device):
    problem = mo.mla_problem(1, 5, 40, 2, 16, 12, 6, 4, 7, mask=Mask("causal"), dtype=_dtype(device), device=device)
    from attnsuite_impls.mla import mla

    module = mla.build_module("triton-mla-absorbed", problem)
    x = to_torch(layer_inputs_np(problem)[0], problem, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward"):
        module(x).sum().backward()


@pytest.mark.parametrize("chunk_heads", [1, 2])
def test_the_mla_core_gives_the_same_output_when_its_heads_go_through_in_chunks(chunk_heads, device, monkeypatch):
    from attnsuite_impls.mla import mla, triton_mla

    problem = mo.mla_problem(1, 12, 40, 3, 16, 12, 6, 4, 7, mask=Mask("causal"), dtype=_dtype(device), device=device)
    module = mla.build_module("triton-mla-absorbed", problem)
    x = to_torch(layer_inputs_np(problem)[0], problem)
    with torch.no_grad():
        whole = module(x)  # tiny problem: every head in one chunk
        per_head = problem.batch * problem.lq * 16 * x.element_size()  # kv_lora 16
        monkeypatch.setattr(triton_mla, "HEAD_CHUNK_BYTES", chunk_heads * per_head)
        calls = []
        real = triton_mla._MLACore.apply
        monkeypatch.setattr(triton_mla._MLACore, "apply", lambda *a: calls.append(a[0].shape[1]) or real(*a))
        chunked = module(x)
    assert calls == [chunk_heads] * (3 // chunk_heads) + ([3 % chunk_heads] if 3 % chunk_heads else [])
    # the same per-head math; only the batched matmuls' blocking differs (last-bit rounding), while a
    # head mapped to the wrong weights or rows would be off by O(1)
    tol = dict(rtol=1e-5, atol=1e-6) if x.dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)  # bf16 on CUDA
    torch.testing.assert_close(chunked, whole, **tol)


def _mla_core_reference(q_lat, q_pe, kv, scale: float, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """softmax(scale [q_lat, q_pe] kv^T, bottom-right causal) kv[..., :DL], computed in ``dtype``."""
    dl, lq, lk = q_lat.shape[-1], q_lat.shape[-2], kv.shape[1]
    q = torch.cat([q_lat, q_pe], dim=-1).to(dtype)
    k = kv[:, None].to(dtype)
    s = q @ k.transpose(-1, -2) * scale
    if causal:
        future = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(lk - lq + 1)
        s = s.masked_fill(future, float("-inf"))
    return torch.softmax(s, dim=-1) @ k[..., :dl]


# Rows are (query position, head) pairs: with 3 heads a tile of 32 rows starts at another query
# position each time, so causal tiles run some key blocks unmasked and the rest masked; LK > LQ puts
# the causal corner at the bottom right, as in decoding. "even": head dims that fill their blocks
# (the loads without a column mask); "odd": padded ones. "split": each program owns half of the value
# columns (MLA_CONFIGS' SPLIT 2, the autotuner's choice for long prefills on an H200), the scores still
# over all of them; "whole": one program owns all of a row's columns.
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "nomask"])
@pytest.mark.parametrize("dl,dr", [(32, 16), (24, 8)], ids=["even", "odd"])
@pytest.mark.parametrize("split", [1, 2], ids=["whole", "split"])
def test_the_mla_core_matches_float64_attention_across_tiles_and_key_blocks(causal, dl, dr, split, device):
    from attnsuite_impls.mla.triton_kernels import kernels

    dtype = getattr(torch, _dtype(device))
    g = torch.Generator().manual_seed(7)
    b, h, lq, lk = 2, 3, 40, 70
    q_lat, q_pe, kv = (torch.randn(*shape, generator=g, dtype=torch.float64)
                       for shape in ((b, h, lq, dl), (b, lq, h, dr), (b, lk, dl + dr)))
    q_pe = q_pe.transpose(1, 2)  # read through its strides, as the layer passes it
    scale = (dl + dr) ** -0.5
    out = kernels("mla", device.split(":")[0]).mla_forward(
        q_lat.to(device, dtype), q_pe.to(device, dtype), kv.to(device, dtype), scale, causal,
        config=(32, 32, 4, 1, split))
    inputs = [t.to(dtype).double() for t in (q_lat, q_pe, kv)]  # the rounded inputs the kernel saw
    ref = _mla_core_reference(*inputs, scale, causal, torch.float64)
    base = _mla_core_reference(*(t.to(device, dtype) for t in (q_lat, q_pe, kv)), scale, causal, dtype)
    c = compare(f"mla core {'causal' if causal else 'nomask'} dl {dl} dr {dr} split {split}", out.cpu(), ref, base.cpu(),
                _dtype(device))
    assert c.passed, c.describe()
