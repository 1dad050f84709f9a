"""Which kernel ran, for Triton variants: their launches are recorded through Triton's launch hook.

The memory probe's host-side profiler sees aten ops, not a Triton kernel launched from Python, so
on an H200 every triton-flash, triton-decode and triton-mla-absorbed case was labelled ``eager``.
The compiled launch path (and so the hook) runs only on a GPU; these tests drive the hook itself.
"""

from __future__ import annotations

import sys
import types

import pytest

from attnsuite import registry, runner
from attnsuite.triton_support import LAUNCH_PREFIX, triton_launches


class Meta:
    """The lazy metadata dict Triton hands its launch hook (``.get()`` gives the dict)."""

    def __init__(self, name: str) -> None:
        self.data = {"name": name}

    def get(self) -> dict:
        return self.data


def test_a_launch_inside_the_block_is_recorded_through_tritons_hook_chain_and_the_hook_is_removed_after():
    knobs = pytest.importorskip("triton.knobs")
    chain = knobs.runtime.launch_enter_hook
    if not hasattr(chain, "add"):
        pytest.skip("this Triton's launch hook is a single callable (tested below with a stand-in)")
    before = list(chain.calls)
    with triton_launches() as launched:
        chain(Meta("flash_fwd"))
        chain(Meta("flash_bwd_dq"))
    chain(Meta("after_the_block"))
    assert launched == ["flash_fwd", "flash_bwd_dq"]
    assert chain.calls == before


def test_a_single_callable_hook_is_chained_to_and_put_back(monkeypatch):
    seen = []
    runtime = types.SimpleNamespace(launch_enter_hook=lambda meta: seen.append(meta.get()["name"]))
    old = runtime.launch_enter_hook
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(knobs=types.SimpleNamespace(runtime=runtime)))
    with triton_launches() as launched:
        runtime.launch_enter_hook(Meta("decode_split_kv"))
    assert launched == ["decode_split_kv"] and seen == ["decode_split_kv"], "the hook already there still runs"
    assert runtime.launch_enter_hook is old


def test_nothing_is_recorded_and_triton_is_not_imported_when_no_one_imported_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    with triton_launches() as launched:
        pass
    assert launched == [] and "triton" not in sys.modules


@pytest.mark.parametrize("names, compiled, label", [
    ((LAUNCH_PREFIX + "flash_fwd", "FlashAttention"), False, "triton"),
    ((LAUNCH_PREFIX + "triton_poi_fused_0", "Torch-Compiled Region: 0/0"), True, "compiled"),
    (("aten::bmm", "aten::softmax"), False, "eager"),
], ids=["a Triton kernel launched from Python reads triton", "Inductor's Triton kernels read compiled",
        "no Triton launch reads eager"])
def test_the_backend_label_names_a_triton_launch(names, compiled, label):
    registry.load_builtin()
    variant = registry.get("triton-flash" if not compiled else "flex")
    backend, facts = runner.detect_backend(tuple(names), variant, {})
    assert backend == label
    if label == "triton":
        assert LAUNCH_PREFIX + "flash_fwd" in facts["backend_ops"]


@pytest.mark.parametrize("call", [
    lambda hook: hook(Meta("k1")),
    lambda hook: hook(Meta("k1"), "extra", more=1),
    lambda hook: hook(metadata=Meta("k1")),
    lambda hook: hook(object()),
], ids=["metadata", "more arguments", "by keyword", "metadata of another form"])
def test_the_recording_hook_never_raises_whatever_triton_passes_it(monkeypatch, call):
    # a hook that raised inside Triton's launcher would fail the kernel launch it observes
    runtime = types.SimpleNamespace(launch_enter_hook=None)
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(knobs=types.SimpleNamespace(runtime=runtime)))
    with triton_launches() as launched:
        call(runtime.launch_enter_hook)
    assert len(launched) == 1 and runtime.launch_enter_hook is None
