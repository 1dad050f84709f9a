"""torch's default device and oneDNN's switch are tracked global state (attnsuite/torch_state.py): a
variant that leaves them changed is named and they are put back, so the variant after it is not blamed.

A variant that ended its run with ``torch.set_default_device("meta")`` had passed, and the next, correct
variant failed ("Tensor on device meta is not on the expected device cpu!").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attnsuite import torch_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_state():
    """Whatever a test does to the default device, oneDNN's switch, denormals or the folder is undone after it."""
    here = os.getcwd()
    yield
    torch.set_default_device(None)
    torch.backends.mkldnn.enabled = True
    torch.set_flush_denormal(False)
    os.chdir(here)


@pytest.mark.parametrize("change, words", [
    (lambda: torch.set_default_device("meta"), "default device: device(type='cpu') -> device(type='meta')"),
    (lambda: setattr(torch.backends.mkldnn, "enabled", False), "mkldnn.enabled: True -> False"),
    (lambda: torch.set_flush_denormal(True), "flush denormal: False -> True"),
    (lambda: os.chdir("/"), "working directory: {here!r} -> '/'"),
], ids=["default device", "mkldnn.enabled", "flush denormal", "working directory"])
def test_a_changed_setting_is_named_and_put_back(clean_state, change, words):
    if "denormal" in words and not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal returns False)")
    before = torch_state.snapshot()
    here = os.getcwd()
    change()
    assert torch_state.end_case(before) == [words.format(here=here)]
    assert torch_state.snapshot() == before
    assert torch.ones(()).device.type == "cpu" and os.getcwd() == here
    assert float(torch.full((1,), 1e-39) * 1.0) != 0.0  # denormals kept again


def test_the_default_device_is_put_back_as_unset_not_as_an_explicit_cpu(clean_state):
    # an explicit default device is a function mode that costs every later torch call something
    before = torch_state.snapshot()
    torch.set_default_device("meta")
    torch_state.end_case(before)
    assert getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None) is None


DEVICE_TESTS = """
import types
import pytest
import torch

V = types.SimpleNamespace

@pytest.mark.parametrize("variant", [V(name="leaves-meta")])
def test_leaky_variant(variant):
    torch.set_default_device("meta")

@pytest.mark.parametrize("variant", [V(name="victim")])
def test_victim_after_it(variant):
    assert torch.ones(()).device.type == "cpu"
"""


def test_a_variant_that_leaves_the_meta_device_is_blamed_and_not_the_next(pytester, monkeypatch, clean_state):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    pytester.makepyfile(test_device=DEVICE_TESTS)
    res = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "-rE")
    res.assert_outcomes(passed=2, errors=1)
    res.stdout.fnmatch_lines(["*ERROR at teardown of test_leaky_variant*",
                              "variant leaves-meta left torch's global state changed (default device: "
                              "device(type='cpu') -> device(type='meta')); it was put back for the tests after it"])


def test_a_state_that_cannot_be_read_now_is_not_what_loses_a_cases_record(monkeypatch):
    # the denormal reading runs a tensor op: with a dispatch mode a variant left on it could raise inside
    # end_case, outside the case's own error handling, and the record was lost
    def broken(*args, **kwargs):
        raise RuntimeError("a dispatch mode left on")

    before = torch_state.snapshot()
    monkeypatch.setattr(torch_state, "_FULL", broken)
    assert torch_state.snapshot()["flush denormal"] is None
    assert torch_state.end_case(before) == [f"flush denormal: {before['flush denormal']!r} -> None"]
