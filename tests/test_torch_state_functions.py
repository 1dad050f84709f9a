"""A torch function a variant replaces process-wide is tracked state (attnsuite/torch_state.py): the
variant is named and the original put back, so the variant after it is not blamed.

A variant whose build() set ``torch.softmax = lambda x, dim=-1, **kw: _orig(x, dim, **kw) * 1.01``
(its own run called the original) passed its own tests, and the next variant of the process, the
built-in ``explicit``, failed its forward check with a 977x error; nothing named the culprit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnsuite import torch_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def put_back():
    """Whatever a test replaces, adds or deletes among the tracked attributes is undone after it,
    whether or not torch_state did so (these tests check that it does)."""
    owners = {"torch": torch, "F": F, "Tensor": torch.Tensor, "linalg": torch.linalg}
    saved = {(q, n): v for q, o in owners.items() for n, v in vars(o).items() if not n.startswith("_")}
    yield
    for (qualname, name), value in saved.items():
        if vars(owners[qualname]).get(name) is not value:
            setattr(owners[qualname], name, value)
    for qualname, owner in owners.items():
        for name in [n for n in vars(owner) if not n.startswith("_") and (qualname, n) not in saved]:
            delattr(owner, name)


def _replacement(*args, **kwargs):
    raise AssertionError("the replacement ran: it should have been put back")


LINE = _replacement.__code__.co_firstlineno


BY = f"replaced by _replacement (test_torch_state_functions.py, line {LINE})"


@pytest.mark.parametrize("owner, name, words", [
    (torch, "softmax", f"torch.softmax {BY}"),
    (F, "scaled_dot_product_attention", f"torch.nn.functional.scaled_dot_product_attention {BY}"),
    # torch.Tensor.softmax lives on torch._C.TensorBase: setting it on Tensor shadows it, a replacement
    (torch.Tensor, "softmax", f"torch.Tensor.softmax {BY}"),
    (torch.linalg, "vector_norm", f"torch.linalg.vector_norm {BY}"),
], ids=["torch.softmax", "F.scaled_dot_product_attention", "Tensor.softmax", "torch.linalg.vector_norm"])
def test_a_replaced_function_is_named_and_the_original_put_back(put_back, owner, name, words):
    original = getattr(owner, name)
    before = torch_state.snapshot()
    setattr(owner, name, _replacement)
    assert torch_state.diff(before, torch_state.snapshot()) == [words]
    assert torch_state.end_case(before) == [words]
    assert getattr(owner, name) is original
    assert torch_state.snapshot() == before
    assert torch_state.end_case(before) == []
    x = torch.randn(2, 3, 4, 8)  # none of the four reaches the replacement, which raises
    torch.softmax(x, -1), x.softmax(-1), F.scaled_dot_product_attention(x, x, x), torch.linalg.vector_norm(x)


def test_an_added_and_a_deleted_attribute_are_named_and_undone(put_back):
    norm = torch.linalg.norm
    before = torch_state.snapshot()
    torch.fast_softmax = _replacement
    torch.Tensor.my_flag = 3
    del torch.linalg.norm
    assert sorted(torch_state.end_case(before)) == [
        "torch.Tensor.my_flag added with 3",
        f"torch.fast_softmax added by _replacement (test_torch_state_functions.py, line {LINE})",
        "torch.linalg.norm deleted",
    ]
    assert not hasattr(torch, "fast_softmax") and not hasattr(torch.Tensor, "my_flag")
    assert torch.linalg.norm is norm


def test_a_case_starts_with_the_original_functions_whatever_the_last_one_left(put_back):
    # start_case puts the known state back too (a benchmark worker calls it before each case)
    state = torch_state.snapshot()
    original = torch.softmax
    torch.softmax = _replacement
    torch_state.start_case(state, "some-case")
    assert torch.softmax is original


def test_a_variant_that_replaces_a_function_and_sets_a_flag_has_both_named(put_back):
    before = torch_state.snapshot()
    torch.softmax = _replacement
    torch.set_default_dtype(torch.float64)
    try:
        changed = torch_state.end_case(before)
    finally:
        torch.set_default_dtype(torch.float32)
    assert changed[0] == "default dtype: torch.float32 -> torch.float64"
    assert changed[1].startswith("torch.softmax replaced by _replacement")
    assert torch.get_default_dtype() == torch.float32 and torch.softmax is not _replacement


def test_what_torch_does_by_itself_is_not_a_change(put_back):
    # a submodule's first import binds it to its package; private names are torch's own caches
    import torch.nn.attention.flex_attention  # noqa: F401

    attention = sys.modules["torch.nn.attention"]
    had = vars(attention).pop("flex_attention")  # as if not imported yet when the state was taken
    try:
        before = torch_state.snapshot()
        attention.flex_attention = sys.modules["torch.nn.attention.flex_attention"]  # what its first import does
        torch._attnsuite_private_cache = {}
        assert torch_state.diff(before, torch_state.snapshot()) == []
        assert torch_state.end_case(before) == []
        assert torch_state.snapshot() == before
        assert attention.flex_attention is had and torch._attnsuite_private_cache == {}  # nothing undone
    finally:
        vars(torch).pop("_attnsuite_private_cache", None)
        attention.flex_attention = had


def test_a_submodule_replaced_by_another_object_is_named(put_back):
    real = torch.linalg
    before = torch_state.snapshot()
    torch.linalg = types.ModuleType("fake_linalg")
    assert torch_state.end_case(before) == ["torch.linalg replaced with <module 'fake_linalg'>"]
    assert torch.linalg is real


def test_attributes_are_compared_by_identity_never_by_equality(put_back):
    class Loud:
        def __eq__(self, other):
            raise AssertionError("== called")

        __hash__ = object.__hash__

    torch.attnsuite_loud = Loud()
    before = torch_state.snapshot()
    assert torch_state.snapshot() == before
    assert torch_state.end_case(before) == []
    torch.attnsuite_loud = Loud()
    assert torch_state.end_case(before)[0].startswith("torch.attnsuite_loud replaced with <")


MONKEY = '''
import torch

from attnsuite import mask_mods
from attnsuite.registry import KernelVariant, register

_orig = torch.softmax


@register
class Monkey(KernelVariant):
    name = "a-monkey"
    description = "replaces torch.softmax for the whole process in build(); its own run uses the original"
    masks = frozenset({"none", "causal"})
    features = frozenset({"lq_ne_lk", "custom_scale", "gqa", "bottom_right", "dv_ne_dqk"})

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        scale = problem.softmax_scale
        torch.softmax = lambda x, dim=-1, **kw: _orig(x, dim, **kw) * 1.01

        def run(q, k, v):
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            s = q @ k.transpose(-1, -2) * scale
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            return _orig(s, -1) @ v

        return run
'''

MONKEY_LINE = next(i for i, line in enumerate(MONKEY.splitlines(), 1) if line.strip().startswith("torch.softmax ="))
BLAME = ("variant a-monkey left torch's global state changed (torch.softmax replaced by "
         f"Monkey.build.<locals>.<lambda> (monkey.py, line {MONKEY_LINE}))")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNSUITE_VARIANTS", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_the_correctness_run_names_the_variant_that_replaced_softmax_and_the_next_one_passes(tmp_path):
    # the tester's command: a-monkey's test runs first, explicit's after it in the same process
    (tmp_path / "monkey.py").write_text(MONKEY)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "test_correctness"), "-n", "1", f"--rootdir={ROOT}",
         "-p", "no:cacheprovider", "--attn-variants", "monkey.py", "--attn-only", "a-monkey", "--attn-only", "explicit",
         "-k", "b2-q3-h2-d32-causal-tl-fp32 and forward", "-rA"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    summary = [line.split(" ")[0] + " " + line.split("::")[-1].split("@")[0] for line in out.splitlines()
               if line.startswith(("PASSED ", "FAILED ", "ERROR "))]
    assert sorted(summary) == ["ERROR test_forward_matches_oracle[a-monkey",  # its teardown: the blame
                               "PASSED test_forward_matches_oracle[a-monkey",  # its own check
                               "PASSED test_forward_matches_oracle[explicit"], out[-4000:]
    assert f"{BLAME}; it was put back for the tests after it" in out, out[-4000:]
    # pytest's own last line (stdout): stderr may end with a plugin's warning (pytest-benchmark's under xdist)
    last = done.stdout.strip().splitlines()[-1]
    assert "2 passed" in last and "1 error" in last, out[-4000:]


def test_a_benchmark_case_that_replaced_softmax_is_an_error_naming_it_and_the_next_case_is_ok(tmp_path):
    (tmp_path / "monkey.py").write_text(MONKEY)
    result = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), f"--rootdir={ROOT}", str(ROOT / "bench"),
         "--benchmark-only", "-p", "no:cacheprovider", "-q", "--attn-device=cpu", "--attn-tier=quick",
         "--attn-workload=gpt2-mha", "--attn-mode=fwd", "--attn-variants=monkey.py", "--attn-only=a-monkey",
         "--attn-only=explicit", "--attn-gate=off", f"--benchmark-json={result}"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert f"{BLAME}; the suite restored it for the next case" in out, out[-4000:]
    data = json.loads(result.read_text())
    records = [b["extra_info"] for b in data["benchmarks"] + data["attnsuite"]["unmeasured"]]
    by_variant = {r.get("variant"): r for r in records}
    assert by_variant["a-monkey"]["outcome"] == "error", by_variant
    assert by_variant["a-monkey"]["extra"]["state_leak"].startswith("torch.softmax replaced by"), by_variant
    assert by_variant["explicit"]["outcome"] == "ok", by_variant
