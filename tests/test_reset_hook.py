"""State between calls: a variant's reset hook runs before every call; a variant whose output depends on
earlier calls and that declares no hook is named by the repeat check, and fails its benchmark's numerics.

The stateful variant is external (defined here): a kernel with its own key/value cache that appends
what each call brings, as a decode cache does, so a second identical call attends to the keys twice.
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, registry, runner, workloads
from attnsuite.case import prepare
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant, LayerVariant

PROBLEM = Problem(batch=1, lq=16, lk=16, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")


class AppendingCache:
    """Causal attention over every key and value seen since the last clear (its own cache), the new
    queries placed after the cached keys (bottom-right), as in decoding."""

    def __init__(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def clear(self) -> None:
        self.k.clear()
        self.v.clear()

    def __call__(self, q, k, v):
        self.k.append(k)
        self.v.append(v)
        keys, values = torch.cat(self.k, -2), torch.cat(self.v, -2)
        lq, lk = q.shape[-2], keys.shape[-2]
        allowed = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)


class StatefulNoReset(KernelVariant):
    name = "test-stateful-cache"
    masks = frozenset({"causal"})

    def build(self, problem):
        return AppendingCache()


class StatefulWithReset(StatefulNoReset):
    name = "test-stateful-cache-reset"

    def reset(self, built: AppendingCache) -> None:
        built.clear()


class Noisy(KernelVariant):
    """Claims determinism but adds fresh noise each call: nondeterministic, not stateful."""

    name = "test-noisy"
    masks = frozenset({"causal"})

    def build(self, problem):
        return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v) + 1e-3 * torch.rand_like(q)


def test_a_stateful_variant_without_a_reset_hook_is_named_by_the_repeat_check():
    result = checks.check_repeat(StatefulNoReset(), PROBLEM, cache={})
    assert not result.passed
    assert "test-stateful-cache: output depends on earlier calls" in result.message, result.message
    assert "reset()" in result.message


class LeavesRowsUnwritten(KernelVariant):
    """Its last two rows hold whatever the memory held, different in each call (as torch.empty gives)."""

    name = "test-unwritten-rows"
    masks = frozenset({"causal"})

    def build(self, problem):
        calls = []

        def run(q, k, v):
            calls.append(1)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            out[..., -2:, :] = 1e37 * len(calls)
            return out
        return run


def test_output_never_written_is_named_as_such_not_as_state_needing_reset():
    # it had read "output depends on earlier calls ... must declare reset()"
    result = checks.check_repeat(LeavesRowsUnwritten(), PROBLEM, cache={})
    assert not result.passed
    # its calls: the first, one on other values between the two (its output not blamed on state: a fresh
    # build's is as wrong), the second, which holds 3e37
    assert ("test-unwritten-rows: 64 output elements differ between two identical calls and hold values up to 3e+37"
            in result.message), result.message
    assert "reuses data from an earlier call" not in result.message
    assert "output the call never wrote" in result.message and "reset()" not in result.message


def test_a_nondeterministic_variant_is_not_called_stateful():
    result = checks.check_repeat(Noisy(), PROBLEM, cache={})
    assert not result.passed and "claims determinism" in result.message, result.message
    assert "depends on earlier calls" not in result.message


@pytest.mark.parametrize("check", list(checks.CHECKS))
def test_the_same_variant_with_a_reset_hook_passes_every_check_sharing_one_build(check):
    variant, cache = StatefulWithReset(), {}
    if checks.skip_reason(check, variant, PROBLEM):
        pytest.skip(checks.skip_reason(check, variant, PROBLEM))
    for _ in range(2):  # the build cache hands the second run the module the first one used
        result = checks.CHECKS[check](variant, PROBLEM, cache=cache)
        assert result.passed, result.message


class CountingKernel(KernelVariant):
    name = "test-counting-kernel"
    masks = frozenset({"causal"})

    def __init__(self) -> None:
        self.seen: list = []

    def build(self, problem):
        return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def reset(self, built) -> None:
        self.seen.append(built)


class CountingLayer(LayerVariant):
    name = "test-counting-layer"
    family = "mha-layer"
    masks = frozenset({"causal"})

    def __init__(self) -> None:
        self.seen: list = []

    def build(self, problem, params):
        return torch.nn.Identity()

    def reset(self, built) -> None:
        self.seen.append(built)


@pytest.mark.parametrize("variant, problem", [
    (CountingKernel(), PROBLEM),
    (CountingLayer(), PROBLEM.with_(d_model=32)),
], ids=["kernel", "layer"])
def test_the_reset_hook_runs_before_every_call_with_what_build_returned(variant, problem):
    cache: dict = {}
    case = prepare(variant, problem, requires_grad=False, cache=cache)
    for _ in range(3):
        case.forward()
    built = cache[(variant.name, problem)]  # the function or module build() returned
    assert len(variant.seen) == 3 and all(b is built for b in variant.seen)


def test_a_variant_without_a_reset_hook_adds_no_call_to_its_steps():
    assert prepare(registry.get("sdpa"), PROBLEM, requires_grad=False).reset is None


@pytest.mark.parametrize("variant, outcome", [(StatefulWithReset(), "ok"), (StatefulNoReset(), "numerics")],
                         ids=["with-reset", "without-reset"])
def test_a_benchmark_resets_between_timed_calls(variant, outcome, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    entry = workloads.Entry(family="attention", problem=PROBLEM, modes=("fwd",))
    settings = runner.Settings("quick", "cpu", None, (), ("fwd",), None, {}, runner.timing.QUICK_CPU, None)
    record, _ = runner.run_case(runner.BenchCase("unit", entry, PROBLEM, variant.name, "fwd"), settings)
    assert record.outcome == outcome, record.detail
