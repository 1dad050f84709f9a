"""triton-flash's two backward paths: the fused one against the oracle, how a path is chosen, delta.

The "fused" path (one kernel per key block, dQ by fp32 atomic adds) must pass the suite's backward
check (float64 oracle, the dtype's tolerance) on the shapes that stress its masking ranges: both
causal corners, a window, GQA and MQA, Lq != Lk both ways (rows that see no key), ragged lengths,
non-power-of-2 head dims. The path comes from ``FlashOptions.bwd`` (a pinned variant), else
ATTNSUITE_TRITON_BWD, else the default rule ("split"); a bad value is an error naming its source.
The kernel mutants on the fused path are in test_triton.py, beside the split path's.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py
through triton_support.choose_mode); on CUDA (--attn-device cuda) they are compiled.
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks
from attnsuite.problem import Mask, Problem
from attnsuite.triton_support import device_reason, unavailable_reason
from attnsuite_impls.attention.triton_flash import FlashOptions, flash_attention, pinned_variant
from attnsuite_impls.attention.triton_kernels import bwd_path, kernels

from .conftest import correctness_device

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = [pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
              pytest.mark.attn_variants("triton-flash")]

BWD_KERNELS = ("flash_bwd_dkdv", "flash_bwd_fused", "flash_bwd_dq")
SPLIT = ["flash_bwd_dkdv", "flash_bwd_dq"]
FUSED = ["flash_bwd_fused"]


@pytest.fixture(scope="module")
def device(pytestconfig) -> str:
    """The run's device; its tests skip, saying why, when Triton cannot take its tensors in this process."""
    device = correctness_device(pytestconfig)
    reason = device_reason(device.split(":")[0])
    if reason is not None:
        pytest.skip(reason)
    return device


@pytest.fixture
def flash(device):
    """The flash kernel module for ``device``'s tensors."""
    return kernels("flash", device.split(":")[0])


class _Recorder:
    """Stands in for one launcher (``kernel[grid](...)``) and notes its name at every launch."""

    def __init__(self, kernel, name: str, log: list):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


@pytest.fixture
def launches(flash, monkeypatch) -> list:
    """The backward kernels launched during the test, in order (preprocess aside)."""
    log: list = []
    for name in BWD_KERNELS:
        monkeypatch.setattr(flash, name, _Recorder(getattr(flash, name), name, log))
    return log


BR = Mask("causal", align="bottom_right")
# (what the problem stresses, problem); bf16 like the GPU runs (the interpreter computes it in fp32)
FUSED_PROBLEMS = [
    ("causal-top-left-gqa-ragged-d40",
     Problem(batch=1, lq=97, lk=97, hq=4, hkv=2, dqk=40, dv=40, mask=Mask("causal"))),
    ("causal-bottom-right-mqa-lq-lt-lk-d48",
     Problem(batch=1, lq=40, lk=150, hq=3, hkv=1, dqk=48, dv=48, mask=BR)),
    ("causal-bottom-right-lq-gt-lk-rows-without-keys-dv-ne-dqk",
     Problem(batch=2, lq=90, lk=40, hq=2, hkv=2, dqk=40, dv=24, mask=BR)),
    ("window-bottom-right-gqa-d40",
     Problem(batch=1, lq=70, lk=90, hq=4, hkv=2, dqk=40, dv=40, mask=Mask("window", window=20, align="bottom_right"))),
    ("no-mask-lq-gt-lk-pinned-scale-d56",
     Problem(batch=1, lq=100, lk=33, hq=2, hkv=1, dqk=56, dv=56, scale=0.3)),
]


@pytest.mark.parametrize("problem", [p for _, p in FUSED_PROBLEMS], ids=[i for i, _ in FUSED_PROBLEMS])
def test_the_fused_backward_matches_the_float64_oracle_without_a_dq_kernel(problem, device, launches):
    problem = problem.with_(device=device, dtype="bfloat16")
    result = checks.CHECKS["backward"](pinned_variant("fused"), problem)
    assert result.passed, result.message
    # dQ came from the fused kernel's atomics: no dQ kernel ran, so a wrong dQ would have shown above
    assert launches and set(launches) == set(FUSED), launches


def _tiny_backward(device: str, bwd: str | None = None) -> None:
    """One forward + backward of a tiny GQA causal problem through ``flash_attention`` (head dim 40:
    on CUDA the kernels compiled for FUSED_PROBLEMS' first problem serve it)."""
    problem = Problem(batch=1, lq=20, lk=30, hq=2, hkv=1, dqk=40, dv=40, device=device, mask=BR)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=g, device=device, dtype=dtype).requires_grad_()
               for shape in ((1, 2, 20, 40), (1, 1, 30, 40), (1, 1, 30, 40)))
    flash_attention(q, k, v, FlashOptions.of(problem, bwd=bwd)).sum().backward()


@pytest.mark.parametrize("env,argument,expected", [
    (None, None, SPLIT),
    ("fused", None, FUSED),
    ("split", None, SPLIT),
    (" fused ", None, FUSED),
    ("", None, SPLIT),
    ("split", "fused", FUSED),
    ("fused", "split", SPLIT),
], ids=["unset-takes-the-default-split", "env-fused", "env-split", "env-with-spaces", "env-empty-is-unset",
        "argument-fused-beats-env-split", "argument-split-beats-env-fused"])
def test_the_backward_path_comes_from_the_argument_then_the_variable_then_the_rule(env, argument, expected, device,
                                                                                  launches, monkeypatch):
    if env is None:
        monkeypatch.delenv(bwd_path.BWD_ENV, raising=False)
    else:
        monkeypatch.setenv(bwd_path.BWD_ENV, env)
    _tiny_backward(device, argument)
    assert launches == expected


@pytest.mark.parametrize("mask", [0, 1, 2], ids=["none", "causal", "window"])
@pytest.mark.parametrize("lq,lk,d", [(1024, 1024, 64), (16384, 16384, 128), (3, 40000, 256)],
                         ids=["L1K-d64", "L16K-d128", "decode-like-d256"])
def test_the_default_rule_takes_the_deterministic_split_path_everywhere_for_now(mask, lq, lk, d, monkeypatch):
    # the rule the lead sets from the H200 figures of both paths replaces this pin (docs/triton.md)
    monkeypatch.delenv(bwd_path.BWD_ENV, raising=False)
    assert bwd_path.choose_bwd_path(None, mask, lq, lk, d) == "split"


def test_a_bad_variable_value_is_an_error_naming_the_variable_and_the_paths(device, monkeypatch):
    monkeypatch.setenv(bwd_path.BWD_ENV, "atomic")
    with pytest.raises(ValueError, match=r"'atomic' from the environment variable ATTNSUITE_TRITON_BWD "
                                         r"is not one of split, fused"):
        _tiny_backward(device)


def test_a_bad_bwd_argument_is_an_error_naming_the_argument(device, monkeypatch):
    monkeypatch.setenv(bwd_path.BWD_ENV, "fused")  # a valid variable does not hide a bad argument
    with pytest.raises(ValueError, match=r"'Fused' from the bwd argument .* is not one of split, fused"):
        _tiny_backward(device, "Fused")
    with pytest.raises(ValueError, match=r"pinned_variant's bwd argument"):
        pinned_variant("both")


@pytest.mark.parametrize("fused", [False, True], ids=["split-delta-only", "fused-also-zeroes-dq"])
def test_the_preprocess_kernel_gives_rowsum_do_o_in_fp32_and_zeroes_the_fused_dq_accumulator(fused, flash, device):
    g = torch.Generator(device=device).manual_seed(1)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    o = torch.randn(2, 3, 70, 24, generator=g, device=device, dtype=dtype)
    do = torch.randn(2, 70, 3, 24, generator=g, device=device, dtype=dtype).transpose(1, 2)  # strided like SDPA's
    dq_acc = torch.full((2, 3, 70, 40), float("nan"), device=device) if fused else None
    delta = flash._preprocess(do, o, dq_acc)
    assert delta.dtype == torch.float32 and delta.shape == (2, 3, 70) and delta.is_contiguous()
    want = (do.double() * o.double()).sum(-1)
    torch.testing.assert_close(delta.double(), want, rtol=1e-5, atol=1e-4)  # fp32 sums of 24 products
    if fused:
        assert bool((dq_acc == 0).all()), "the fused path's dQ accumulator was not zeroed"
