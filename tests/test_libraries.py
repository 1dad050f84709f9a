"""Library backends found automatically (attnsuite/libraries.py, impls/attention/libraries.py), with fake libraries.

None of xformers, flash_attn, flash-attn-4 or flashinfer installs on this CPU machine, so each is
stood in for by a fake module put into ``sys.modules``: it computes attention in the library's own
layout and conventions (as documented by the library) with torch, so running the registered variant
through the suite's checks on CPU shows that the wrapper converts layouts, passes the scale and picks
the causal corner the way the library expects. A fake that reads the layout the wrong way must fail.
"""

from __future__ import annotations

import subprocess
import importlib.metadata
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnsuite import checks, libraries, registry
from attnsuite.problem import Mask, Problem

registry.load_builtin()
from attnsuite_impls.attention import libraries as lib_impls  # noqa: E402  (after the families exist)

REPO = Path(__file__).resolve().parents[1]
BR = Mask("causal", align="bottom_right")


# ----------------------------------------------------------------------------- fake libraries
def attend_bhsd(q, k, v, scale, allowed):
    """Reference attention in SDPA layout, with a boolean mask (True = attend) or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True)


def corner_mask(sq: int, sk: int, left: int, right: int, bottom_right: bool) -> torch.Tensor:
    """flash_attn's documented window: query i sees keys [i + off - left, i + off + right], off =
    sk - sq (bottom-right) or 0; -1 means unbounded on that side."""
    i = torch.arange(sq)[:, None] + (sk - sq if bottom_right else 0)
    j = torch.arange(sk)[None, :]
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if right >= 0:
        ok &= j <= i + right
    if left >= 0:
        ok &= j >= i - left
    return ok


def fake_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                         softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn.flash_attn_func: (b, s, h, d) in and out; causal aligned bottom-right."""
    assert dropout_p == 0.0 and softcap == 0.0 and alibi_slopes is None
    sq, sk = q.shape[1], k.shape[1]
    left, right = window_size
    allowed = corner_mask(sq, sk, left, 0 if causal else right, bottom_right=True)
    out = attend_bhsd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale, allowed)
    return out.transpose(1, 2).contiguous()


def fake_fa4_func(q, k, v, softmax_scale=None, causal=False, window_size=(None, None), softcap=0.0, **_):
    """flash_attn.cute.flash_attn_func: like FA2 but window ends are None and it returns (out, lse)."""
    left = -1 if window_size[0] is None else window_size[0]
    right = -1 if window_size[1] is None else window_size[1]
    out = fake_flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=(left, right))
    return out, None


def fake_flash_attn_wrong_layout(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), **_):
    """A library reading (b, h, s, d): what a wrapper without its transposes would compute."""
    sq, sk = q.shape[2], k.shape[2]
    allowed = corner_mask(sq, sk, window_size[0], 0 if causal else window_size[1], bottom_right=True)
    return attend_bhsd(q, k, v, softmax_scale, allowed)


class LowerTriangularMask:  # xformers.ops.fmha.attn_bias: causal, top-left
    pass


class LowerTriangularFromBottomRightMask:  # causal, bottom-right
    pass


def fake_memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
    """xformers.ops.memory_efficient_attention: (B, M, H, K), or (B, M, G, H, K) for GQA."""
    shape = query.shape
    if query.dim() == 5:  # groups x heads flatten into heads; k/v come expanded over the heads
        query, key, value = (t.flatten(2, 3) for t in (query, key, value))
    sq, sk = query.shape[1], key.shape[1]
    allowed = None
    if attn_bias is not None:
        allowed = corner_mask(sq, sk, -1, 0, bottom_right=isinstance(attn_bias, LowerTriangularFromBottomRightMask))
    out = attend_bhsd(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale, allowed)
    return out.transpose(1, 2).reshape(*shape[:-1], value.shape[-1])


def fake_single_prefill(q, k, v, custom_mask=None, causal=False, kv_layout="NHD", sm_scale=None, **_):
    """flashinfer.single_prefill_with_kv_cache: (s, h, d) for NHD; causal bottom-right; mask True = keep."""
    assert kv_layout == "NHD"
    sq, sk = q.shape[0], k.shape[0]
    allowed = custom_mask if custom_mask is not None else (corner_mask(sq, sk, -1, 0, True) if causal else None)
    out = attend_bhsd(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], sm_scale, allowed)
    return out[0].transpose(0, 1).contiguous()


def fake_single_decode(q, k, v, kv_layout="NHD", sm_scale=None, **_):
    """flashinfer.single_decode_with_kv_cache: q (h, d), k/v (s, h_kv, d) for NHD; out (h, d)."""
    return fake_single_prefill(q[None], k, v, kv_layout=kv_layout, sm_scale=sm_scale)[0]


def fake_sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True, **_):
    """sageattention.sageattn 1.0.6 as published: it smooths K by subtracting its mean from the caller's
    k in place (softmax ignores that shift, so the output stays right); HND is SDPA's layout."""
    assert tensor_layout == "HND"
    if smooth_k:
        k -= k.mean(dim=2, keepdim=True)
    allowed = corner_mask(q.shape[2], k.shape[2], -1, 0, False) if is_causal else None
    return attend_bhsd(q, k, v, sm_scale, allowed)


def fake_sageattn_fixed(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, **_):
    """The same without the in-place write (smoothing a copy)."""
    return fake_sageattn(q, k.clone(), v, tensor_layout, is_causal, sm_scale)


def module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__version__ = "0.0-fake"
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


FAKES = {
    "flash_attn": {"flash_attn": module("flash_attn"), "flash_attn.flash_attn_interface": module(
        "flash_attn.flash_attn_interface", flash_attn_func=fake_flash_attn_func)},
    "flash_attn.cute": {"flash_attn": module("flash_attn"),
                        "flash_attn.cute": module("flash_attn.cute", flash_attn_func=fake_fa4_func)},
    "xformers": {"xformers": module("xformers"), "xformers.ops": module(
        "xformers.ops", memory_efficient_attention=fake_memory_efficient_attention,
        fmha=types.SimpleNamespace(attn_bias=types.SimpleNamespace(
            LowerTriangularMask=LowerTriangularMask,
            LowerTriangularFromBottomRightMask=LowerTriangularFromBottomRightMask)))},
    "flashinfer": {"flashinfer": module("flashinfer", single_prefill_with_kv_cache=fake_single_prefill,
                                        single_decode_with_kv_cache=fake_single_decode)},
    "sageattention": {"sageattention": module("sageattention", sageattn=fake_sageattn)},
}
LIBRARY = {lib.name: lib for lib in lib_impls.LIBRARIES}


@pytest.fixture
def isolated(monkeypatch):
    """A private registry and status table, so fake registrations leave the session's untouched."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(libraries, "_STATUS", {})
    monkeypatch.setattr(libraries, "_DEVICE_REASONS", {})
    return monkeypatch


def install(monkeypatch, library: str) -> libraries.Status:
    for name, mod in FAKES[library].items():
        monkeypatch.setitem(sys.modules, name, mod)
    return libraries.load_library(LIBRARY[library])


def on_cpu(variant):
    """The registered (CUDA-only) variant, allowed to run on CPU in fp32 for the layout check."""
    variant.devices = frozenset({"cpu"})
    variant.dtypes = frozenset({"float32"})
    return variant


def problem(mask=BR, lq=5, lk=9, hq=4, hkv=2, d=64, batch=2) -> Problem:
    return Problem(batch=batch, lq=lq, lk=lk, hq=hq, hkv=hkv, dqk=d, dv=d, mask=mask, dtype="float32")


# ----------------------------------------------------------------------------- registration
@pytest.mark.parametrize(("library", "names"), [
    ("flash_attn", ["flash-attn2"]), ("flash_attn.cute", ["flash-attn4"]), ("xformers", ["xformers-mea"]),
    ("flashinfer", ["flashinfer-prefill", "flashinfer-decode"]), ("sageattention", ["sage-attention"]),
])
def test_library_that_imports_registers_its_variants(isolated, library, names):
    status = install(isolated, library)
    assert status.loaded and list(status.variants) == names
    for name in names:
        variant = registry.get(name)
        assert variant.devices == frozenset({"cuda"}) and "gqa" in variant.features
        assert variant.dtypes <= {"float16", "bfloat16", "float32"}
    assert f"{library} 0.0-fake loaded ({', '.join(names)})" in libraries.header_line()


@pytest.mark.parametrize("name", ["flash-attn2", "flash-attn4"])
def test_flash_attn_declares_its_bottom_right_corner(isolated, name):
    install(isolated, "flash_attn" if name == "flash-attn2" else "flash_attn.cute")
    variant = registry.get(name)
    top_left = problem(mask=Mask("causal")).with_(device="cuda", dtype="bfloat16")
    assert any("aligns its causal mask bottom-right" in r for r in variant.unsupported(top_left))
    square = top_left.with_(lk=5)  # lq == lk: both corners agree
    assert not any("bottom-right" in r for r in variant.unsupported(square))
    assert any("not cpu" in r for r in variant.unsupported(problem().with_(dtype="bfloat16")))


def test_inference_libraries_declare_no_backward(isolated):
    install(isolated, "flashinfer")
    cuda = problem(lq=1, hq=4, hkv=1).with_(device="cuda", dtype="float16")
    for name in ("flashinfer-prefill", "flashinfer-decode"):
        assert any("no backward on cuda" in r for r in registry.get(name).unsupported(cuda, backward=True))
    assert any("one query per sequence" in r for r in registry.get("flashinfer-decode").unsupported(problem()))


# ----------------------------------------------------------------------------- layout, through the checks
LAYOUT_CASES = [
    ("flash_attn", "flash-attn2", problem()),
    ("flash_attn", "flash-attn2", problem(mask=Mask("window", window=3, align="bottom_right"))),
    ("flash_attn", "flash-attn2", problem(mask=Mask("none"), lq=9, lk=5, hkv=1)),
    ("flash_attn.cute", "flash-attn4", problem(mask=Mask("window", window=2, align="bottom_right"))),
    ("xformers", "xformers-mea", problem()),
    ("xformers", "xformers-mea", problem(mask=Mask("causal"), lq=9, lk=5)),  # top-left, rows all live
    ("xformers", "xformers-mea", problem(mask=Mask("causal"), hkv=4)),
    ("flashinfer", "flashinfer-prefill", problem()),
    ("flashinfer", "flashinfer-prefill", problem(mask=Mask("random", seed=1))),
    ("flashinfer", "flashinfer-decode", problem(lq=1, hq=4, hkv=1)),
]


@pytest.mark.parametrize(("library", "name", "prob"), LAYOUT_CASES,
                         ids=[f"{n}@{p.id}" for _, n, p in LAYOUT_CASES])
def test_registered_variant_matches_the_oracle_through_the_library_layout(isolated, library, name, prob):
    install(isolated, library)
    variant = on_cpu(registry.get(name))
    assert variant.unsupported(prob) == []
    result = checks.check_forward(variant, prob)
    assert result.passed, result.message
    if not variant.unsupported(prob, backward=True):
        result = checks.check_backward(variant, prob)
        assert result.passed, result.message


@pytest.mark.parametrize("fixed", [False, True], ids=["as-published", "without-the-in-place-write"])
def test_sage_attention_is_judged_as_int8_and_its_in_place_smoothing_of_k_is_caught(isolated, fixed):
    install(isolated, "sageattention")
    if fixed:
        isolated.setattr(sys.modules["sageattention"], "sageattn", fake_sageattn_fixed)
        libraries.load_library(LIBRARY["sageattention"])  # registered again around the fixed function
    variant = on_cpu(registry.get("sage-attention"))
    assert variant.accuracy == "int8" and "forward" in variant.known_defects
    result = checks.check_forward(variant, problem(mask=Mask("causal"), lq=9, lk=9))
    assert result.passed is fixed, result.message
    assert ("the call changed its input k in place" in result.message) is not fixed


@pytest.mark.parametrize("smooth_k", [True, False], ids=["smoothed-over-every-key", "unsmoothed"])
def test_sage_attention_smoothing_over_every_key_reaches_causal_rows_from_the_future(isolated, smooth_k):
    # the declared causality defect, on the CPU: the mean of K includes future keys, and rounding
    # after subtracting it (float32 here, INT8 on the GPU) carries them into rows that must not see them
    install(isolated, "sageattention")
    isolated.setattr(sys.modules["sageattention"], "sageattn",
                     lambda q, k, v, **kw: fake_sageattn(q, k.clone(), v, smooth_k=smooth_k, **kw))
    libraries.load_library(LIBRARY["sageattention"])
    variant = on_cpu(registry.get("sage-attention"))
    assert "causality" in variant.known_defects
    result = checks.check_causality(variant, problem(mask=Mask("causal"), lq=9, lk=9))
    assert result.passed is not smooth_k, result.message
    assert ("future leak" in result.message) is smooth_k


def test_library_read_in_the_wrong_layout_fails_the_check(isolated):
    isolated.setitem(sys.modules, "flash_attn", module("flash_attn"))
    isolated.setitem(sys.modules, "flash_attn.flash_attn_interface",
                     module("flash_attn.flash_attn_interface", flash_attn_func=fake_flash_attn_wrong_layout))
    libraries.load_library(LIBRARY["flash_attn"])
    result = checks.check_forward(on_cpu(registry.get("flash-attn2")), problem(lq=9, lk=9, hq=4, hkv=4))
    assert not result.passed


# ----------------------------------------------------------------------------- imports, but no kernel here
NO_KERNEL = "\n".join([
    "No operator found for `memory_efficient_attention_forward` with inputs:",
    "     query       : shape=(1, 64, 2, 64) (torch.float16)",
    "`fa3F@0.0.0` is not supported because:",
    "    xFormers wasn't build with CUDA support",
    "`fa2F@2.5.7-pt` is not supported because:",
    "    xFormers wasn't build with CUDA support",
    "`cutlassF-pt` is not supported because:",
    "    xFormers wasn't build with CUDA support",
])


def test_a_library_without_a_kernel_for_the_device_is_a_skip_that_names_the_cause(isolated):
    """As seen on an H200: xformers 0.0.35 imports, and every call raises NotImplementedError."""
    install(isolated, "xformers")
    calls = []

    def no_kernel(*args, **kwargs):
        calls.append(1)
        raise NotImplementedError(NO_KERNEL)

    isolated.setattr(sys.modules["xformers.ops"], "memory_efficient_attention", no_kernel)
    libraries.load_library(LIBRARY["xformers"])
    variant = on_cpu(registry.get("xformers-mea"))
    for prob in (problem(), problem(mask=Mask("none"), lq=9, lk=9)):
        reasons = variant.unsupported(prob)
        assert len(reasons) == 1, reasons
        assert reasons[0] == ("xformers-mea: xformers imports but a tiny call on cpu failed, so it has no usable "
                              "kernel here: NotImplementedError: No operator found for "
                              "`memory_efficient_attention_forward` with inputs: "
                              "[xFormers wasn't build with CUDA support]")
    assert len(calls) == 1, "one probe per variant and device, kept for the process"
    # the test runner skips each case with that reason (checks.skip_reason), not a failure per case
    assert "no usable kernel" in checks.skip_reason("forward", variant, problem()) and len(calls) == 1


def test_a_library_that_runs_is_probed_once_and_declines_nothing(isolated):
    install(isolated, "xformers")
    calls = []
    real = sys.modules["xformers.ops"].memory_efficient_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    isolated.setattr(sys.modules["xformers.ops"], "memory_efficient_attention", counted)
    libraries.load_library(LIBRARY["xformers"])
    variant = on_cpu(registry.get("xformers-mea"))
    assert variant.unsupported(problem()) == [] and variant.unsupported(problem(lq=3)) == []
    assert len(calls) == 1


@pytest.mark.parametrize(("message", "summary"), [
    ("boom", "RuntimeError: boom"),
    ("head\n  a\n  b", "RuntimeError: head"),  # nothing recurs: the first line alone
    ("head\n  a\n  b\n  b\n  a\n  b", "RuntimeError: head [b]"),  # the most frequent recurring line
])
def test_failure_summary_adds_the_line_a_message_repeats(message, summary):
    assert libraries.failure_summary(RuntimeError(message)) == summary


# ----------------------------------------------------------------------------- missing and broken
def test_missing_library_registers_nothing_and_names_its_import_error(isolated):
    lib = libraries.Library("nolib", "attnsuite_no_such_library", lambda m: pytest.fail("registered"))
    status = libraries.load_library(lib)
    assert not status.loaded
    assert libraries.header_line() == "libraries: nolib missing (No module named 'attnsuite_no_such_library')"


def test_library_raising_other_than_importerror_is_reported(isolated, tmp_path):
    (tmp_path / "attnsuite_broken_lib.py").write_text('raise RuntimeError("CUDA driver too old\\nmore detail")\n')
    isolated.syspath_prepend(str(tmp_path))
    status = libraries.load_library(libraries.Library("broken", "attnsuite_broken_lib", lambda m: []))
    assert not status.loaded
    assert libraries.header_line() == "libraries: broken missing (RuntimeError: CUDA driver too old)"


def test_library_with_an_unexpected_api_is_reported_not_registered(isolated):
    isolated.setitem(sys.modules, "flash_attn", module("flash_attn"))
    isolated.setitem(sys.modules, "flash_attn.flash_attn_interface", module("flash_attn.flash_attn_interface"))
    status = libraries.load_library(LIBRARY["flash_attn"])
    assert not status.loaded and "imported but could not register: AttributeError" in status.detail
    with pytest.raises(registry.UnknownVariantError):
        registry.get("flash-attn2")


def test_run_header_names_found_and_missing_libraries_end_to_end(tmp_path):
    """A pytest run finds a library on its path by itself, and a broken one does not stop collection."""
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text('__version__ = "2.99-fake"\n')
    (tmp_path / "flash_attn" / "flash_attn_interface.py").write_text(textwrap.dedent("""
        def flash_attn_func(q, k, v, **kwargs):
            raise AssertionError("not called: CUDA only")
    """))
    (tmp_path / "flashinfer.py").write_text('raise OSError("libcuda.so.1: cannot open shared object file")\n')
    cmd = [sys.executable, "-m", "pytest", "test_correctness/test_variants.py", "--collect-only",
           "-p", "no:cacheprovider", "-p", "no:xdist", "--attn-only", "flash-attn2", "-k", "forward"]
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    header = [line for line in run.stdout.splitlines() if line.startswith("libraries:")]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(header) == 1, run.stdout[:3000]
    assert "flash_attn 2.99-fake loaded (flash-attn2)" in header[0]
    assert "flashinfer missing (OSError: libcuda.so.1: cannot open shared object file)" in header[0]
    assert "xformers missing (No module named 'xformers')" in header[0]
    assert "flash-attn2@" in run.stdout


@pytest.mark.parametrize(("library", "name"), [
    ("sageattention", "sage-attention"), ("flashinfer", "flashinfer-prefill"), ("flash_attn.cute", "flash-attn4"),
    ("xformers", "xformers-mea"), ("flash_attn", "flash-attn2"),
])
def test_every_library_variant_has_cuda_problems_to_be_checked_on(isolated, library, name):
    """The H200 run of 2026-11-30 checked sage-attention on no problem: its head dims and equal-length
    causal mask matched none of the CUDA catalogue. Each library variant must meet some problem with
    every mask kind it declares of none, causal and window (FA2 and FA4 declare a sliding window).
    What is asked is the variant's declared coverage, so no device probe runs: on a host with a GPU the
    stand-in libraries would be probed on it and fail there."""
    isolated.setattr(torch.cuda, "is_available", lambda: False)
    install(isolated, library)
    variant = registry.get(name)
    catalogue = registry.problems_of(registry.family("attention"), "cuda", ("float16", "bfloat16", "float32"))
    no_gpu_here = "no CUDA device on this machine"
    runnable = [p for p in catalogue if [r for r in variant.unsupported(p) if r != no_gpu_here] == []]
    wanted = {"none", "causal", "window"} & set(variant.masks)
    assert {p.mask.kind for p in runnable} >= wanted, [p.id for p in runnable]


def test_a_loaded_library_reports_the_version_pip_installed_over_the_modules_own(isolated):
    # flash_attn.cute from flash-attn-4 4.0.0b36 calls itself 0.0.0; its distribution knows better
    isolated.setitem(sys.modules, "stand_in_lib", module("stand_in_lib", __version__="0.0.0"))
    installed = libraries.Library("stand-in", "stand_in_lib", lambda mod: [], "pytest")
    unpackaged = libraries.Library("stand-in-2", "stand_in_lib", lambda mod: [], "no-such-distribution-here")
    assert libraries.load_library(installed).detail == importlib.metadata.version("pytest")
    assert libraries.load_library(unpackaged).detail == "0.0.0"
