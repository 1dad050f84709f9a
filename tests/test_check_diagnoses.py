"""A failing check names the real cause, whatever ran before it (three misdiagnoses a fresh user found).

- State between calls: a layer that counts its calls and declares no ``reset()`` is told so by the
  repeat check also after earlier checks used the same cached instance (it had been told it "claims
  determinism" in a full run, and told the right thing only when its repeat test ran alone).
- Nondeterminism is not a future leak: a variant that respects the mask but adds noise is told its
  output is not bitwise repeatable; a real leak is still caught, judged within tolerance.
- A ``canonical_grads`` that leaves keys out is named as such by the backward check and the weight
  check, not as a detached parameter or a wrong load.
- One output buffer returned by every call (the next call overwrites what the last returned) is
  named as such by the causality and repeat checks, not as keys ignored or data reused.
- Noise on some calls only (every other call) is named as nondeterminism by the causality check, not
  as a future leak: one more unperturbed call had agreed with the first by chance.

The variants are unregistered objects defined here and run through :mod:`attnsuite.checks`, so the
messages asserted are those the suite prints.
"""

from __future__ import annotations

import pytest
import torch

from attnsuite import checks, registry
from attnsuite.problem import Mask, Problem
from attnsuite.registry import KernelVariant
from attnsuite_impls.layers import dense_layer

KERNEL_PROBLEM = Problem(batch=1, lq=16, lk=16, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")


def layer_problem() -> Problem:
    """mha-layer's first small causal fp32 CPU problem."""
    problems = registry.family("mha-layer").problems("cpu", ("float32",))
    return next(p for p in problems if p.mask.kind == "causal" and p.lq > 3)


class Wrapped(torch.nn.Module):
    """A canonical separate-q/k/v layer whose output ``extra(y)`` changes: state or noise added."""

    def __init__(self, inner: torch.nn.Module, extra) -> None:
        super().__init__()
        self.inner, self.extra, self.calls = inner, extra, 0

    def forward(self, x):
        y = self.extra(self, self.inner(x))
        self.calls += 1
        return y

    def canonical_grads(self):
        return self.inner.canonical_grads()


class WrappedLayer(dense_layer.LayerSeparateQKV):
    """``layer-separate-qkv`` with ``extra(module, y)`` added to every output."""

    def __init__(self, name: str, extra, deterministic: bool = True) -> None:
        self.name, self.extra, self.deterministic = name, extra, deterministic

    def build(self, problem, params):
        return Wrapped(super().build(problem, params), self.extra)


def counting(name: str = "test-counting-layer", deterministic: bool = True) -> WrappedLayer:
    """Adds 1e-3 per earlier call (its first call is exact) and declares no reset()."""
    return WrappedLayer(name, lambda m, y: y + 1e-3 * m.calls, deterministic)


def noisy_layer() -> WrappedLayer:
    """Respects the mask, adds fresh noise far below the tolerance, and claims determinism."""
    return WrappedLayer("test-noisy-layer", lambda m, y: y + 1e-7 * torch.randn_like(y))


class NoisyKernel(KernelVariant):
    """Causal SDPA plus fresh noise; ``leaks``: no mask at all (every row sees the future)."""

    masks = frozenset({"causal"})

    def __init__(self, name: str, leaks: bool = False, deterministic: bool = True) -> None:
        self.name, self.leaks, self.deterministic = name, leaks, deterministic

    def build(self, problem):
        causal = not self.leaks
        return lambda q, k, v: (torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                                + 1e-7 * torch.randn_like(q))


# ------------------------------------------------------------------ 1. state, whatever ran before


@pytest.mark.parametrize("earlier", [(), ("forward", "backward", "causality")], ids=["alone", "after-other-checks"])
def test_a_stateful_layer_is_told_to_declare_reset_whatever_ran_before(earlier):
    variant, problem, cache = counting(), layer_problem(), {}
    for check in earlier:  # as in a full run: the earlier tests call the instance the build cache keeps
        checks.CHECKS[check](variant, problem, cache=cache)
    result = checks.check_repeat(variant, problem, cache=cache)
    assert not result.passed
    assert "test-counting-layer: output depends on earlier calls" in result.message, result.message
    assert "claims determinism" not in result.message, result.message


def test_a_noisy_layer_is_still_told_it_claims_determinism_after_other_checks():
    variant, problem, cache = noisy_layer(), layer_problem(), {}
    checks.check_forward(variant, problem, cache=cache)
    result = checks.check_repeat(variant, problem, cache=cache)
    assert not result.passed and "though the variant claims determinism" in result.message, result.message
    assert "depends on earlier calls" not in result.message, result.message


@pytest.mark.parametrize("sets_it", [False, True], ids=["the default", "set by its author"])
def test_the_claim_of_determinism_says_whether_it_is_the_default_and_how_to_drop_it(sets_it):
    # "claims determinism" had been said to authors who never wrote deterministic = True
    class Quiet(KernelVariant):
        name = "x-quiet"

    class Loud(KernelVariant):
        name = "x-loud"
        deterministic = True

    claim = checks.determinism_claim(Loud() if sets_it else Quiet())
    made = "it sets deterministic = True" if sets_it else "deterministic = True, the default"
    assert claim == f"{made}; a variant nondeterministic by design sets deterministic = False"


def test_a_stateful_layer_declaring_nondeterminism_is_told_to_declare_reset_after_other_checks():
    # within tolerance: its first call is exact, later ones are 1e-3 off; the check's own first call
    # (the cached instance's second) had been taken for the first and the state had gone unnamed
    variant, problem, cache = counting("test-counting-nondet", deterministic=False), layer_problem(), {}
    checks.check_forward(variant, problem, cache=cache)
    result = checks.check_repeat(variant, problem, cache=cache)
    assert not result.passed
    assert "test-counting-nondet: output depends on earlier calls" in result.message, result.message


# ------------------------------------------------------------------ 2. nondeterminism is not a future leak


@pytest.mark.parametrize("variant, problem", [(NoisyKernel("test-noisy-kernel"), KERNEL_PROBLEM),
                                              (noisy_layer(), None)], ids=["kernel", "layer"])
def test_undeclared_noise_is_named_as_not_repeatable_not_as_a_future_leak(variant, problem):
    problem = problem or layer_problem()
    result = checks.check_causality(variant, problem, cache={})
    assert not result.passed  # it claims determinism and is not bitwise repeatable
    assert "the output is not bitwise repeatable across identical calls" in result.message, result.message
    assert "claims determinism" in result.message and "no future leak seen" in result.message, result.message
    assert "future leak:" not in result.message and "future leak (judged" not in result.message, result.message


def test_state_between_calls_is_not_taken_for_a_future_leak_either():
    result = checks.check_causality(counting(), layer_problem(), cache={})
    assert not result.passed and "not bitwise repeatable" in result.message, result.message
    assert "no future leak seen" in result.message and "future leak:" not in result.message, result.message


@pytest.mark.parametrize("deterministic", [True, False], ids=["claims-determinism", "declares-nondeterminism"])
def test_a_real_leak_in_output_that_is_not_bitwise_repeatable_is_still_caught(deterministic):
    variant = NoisyKernel("test-noisy-leak", leaks=True, deterministic=deterministic)
    result = checks.check_causality(variant, KERNEL_PROBLEM, cache={})
    assert not result.passed
    assert "future leak (judged within tolerance, the output not being bitwise repeatable): rows that must " \
           "not see keys/tokens >= 8: max error" in result.message, result.message
    assert ("claims determinism" in result.message) is deterministic, result.message
    assert "no future leak seen" not in result.message, result.message


def test_noise_within_tolerance_passes_causality_when_the_variant_declares_it():
    result = checks.check_causality(NoisyKernel("test-noisy-declared", deterministic=False), KERNEL_PROBLEM)
    assert result.passed, result.message


# ------------------------------------------------------------------ 3. canonical_grads leaving keys out


class NoBiasGrads(dense_layer.LayerSeparateQKV):
    """Its module holds the canonical biases, but canonical_grads leaves bq, bk and bv out."""

    name = "test-canonical-grads-without-biases"

    def canonical_grads(self, module):
        return {k: g for k, g in super().canonical_grads(module).items() if k not in ("bq", "bk", "bv")}


class NoneBiasGrad(dense_layer.LayerSeparateQKV):
    """canonical_grads returns bq's key with None, as for a parameter that got no gradient."""

    name = "test-canonical-grads-none-bias"

    def canonical_grads(self, module):
        return {**super().canonical_grads(module), "bq": None}


class WrongWeight(dense_layer.LayerSeparateQKV):
    """Loads wq off by one: a wrong load, which the weight check must still call so."""

    name = "test-wrong-wq"

    def build(self, problem, params):
        module = super().build(problem, params)
        with torch.no_grad():
            next(p for n, p in module.named_parameters() if n.startswith("q") and p.dim() == 2).add_(1.0)
        return module


def test_backward_names_keys_canonical_grads_leaves_out_not_a_detached_parameter():
    result = checks.check_backward(NoBiasGrads(), layer_problem())
    assert not result.passed
    for name in ("bq", "bk", "bv"):
        assert f"grad {name}: not returned: the variant's canonical_grads returns no '{name}' key" in result.message, \
            result.message
    assert "detached" not in result.message, result.message
    none = checks.check_backward(NoneBiasGrad(), layer_problem())  # a key given as None: still "detached"
    assert "grad bq: missing (None): no gradient reached it: the output does not use it, or it is detached" \
        in none.message, none.message


def test_the_weight_check_names_keys_canonical_grads_leaves_out_not_a_wrong_load():
    result = checks.check_loaded_weights(NoBiasGrads(), layer_problem())
    assert not result.passed
    for name in ("bq", "bk", "bv"):
        assert (f"test-canonical-grads-without-biases: loaded {name} cannot be read back: the variant's "
                f"canonical_grads returns no '{name}' key") in result.message, result.message
    assert "differs from the canonical weights" not in result.message, result.message


def test_the_weight_check_still_names_a_wrong_load_and_passes_a_right_one():
    wrong = checks.check_loaded_weights(WrongWeight(), layer_problem())
    assert not wrong.passed and "test-wrong-wq: loaded wq differs from the canonical weights" in wrong.message, \
        wrong.message
    right = checks.check_loaded_weights(registry.get("layer-separate-qkv"), layer_problem())
    assert right.passed, right.message


# ------------------------------------------------- 4. a built function that keeps its first K/V


class StaleKV(KernelVariant):
    """SDPA on the K/V its built function saw first (``fixed``: on each call's own K/V)."""

    masks = frozenset({"none", "causal"})

    def __init__(self, name: str, fixed: bool = False) -> None:
        self.name, self.fixed = name, fixed

    def build(self, problem):
        kept: dict = {}

        def run(q, k, v):
            if self.fixed or "kv" not in kept:
                kept["kv"] = (k.detach().clone(), v.detach().clone())
            k0, v0 = kept["kv"]
            return torch.nn.functional.scaled_dot_product_attention(q, k0, v0, is_causal=problem.mask.kind == "causal")
        return run


NO_MASK = Problem(batch=1, lq=16, lk=16, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("none"), dtype="float32")


@pytest.mark.parametrize("earlier", [(), ("forward", "causality", "strided")], ids=["alone", "after-other-checks"])
@pytest.mark.parametrize("fixed", [False, True], ids=["keeps its first K/V", "reads each call's K/V"])
def test_a_kernel_that_reuses_its_first_calls_kv_is_caught_by_the_repeat_check(earlier, fixed):
    # every check had called a built function on one set of values: this variant passed all 19 of
    # its tests on unmasked problems (a first-time user's trial)
    variant, cache = StaleKV("test-stale-kv", fixed=fixed), {}
    for check in earlier:
        checks.CHECKS[check](variant, NO_MASK, cache=cache)
    result = checks.check_repeat(variant, NO_MASK, cache=cache)
    assert result.passed == fixed, result.message
    if not fixed:
        assert "test-stale-kv: a call on other values of the same shapes (input seed 1) is wrong where a freshly " \
               "built instance gets them right: the built function reuses data from an earlier call" in result.message
        assert "output" in result.message and "bound" in result.message  # how far off, as every check says


class ModuleStaleKV(KernelVariant):
    """Causal-free SDPA over the K/V of the first call of each shape, kept in a module-level dict that
    every built instance shares (``fixed``: reads each call's K/V)."""

    masks = frozenset({"none"})
    KEPT: dict = {}

    def __init__(self, name: str, fixed: bool = False) -> None:
        self.name, self.fixed = name, fixed

    def build(self, problem):
        def run(q, k, v):
            key = (self.name, tuple(k.shape))
            if self.fixed or key not in self.KEPT:
                self.KEPT[key] = (k.detach().clone(), v.detach().clone())
            k0, v0 = self.KEPT[key]
            return torch.nn.functional.scaled_dot_product_attention(q, k0, v0)
        return run


@pytest.mark.parametrize("fixed", [False, True], ids=["keeps K/V by shape outside the instance", "reads each call's K/V"])
def test_a_kernel_keeping_kv_outside_its_built_function_is_caught_by_the_repeat_check(fixed):
    # a fresh instance shares the module-level K/V, so it got the other values wrong too, and the check
    # had stayed silent, saying the forward check would fail: that check calls on the first values only
    variant = ModuleStaleKV(f"test-module-kv-{fixed}", fixed=fixed)
    assert checks.check_forward(variant, NO_MASK, cache={}).passed
    result = checks.check_repeat(variant, NO_MASK, cache={})
    assert result.passed == fixed, result.message
    if not fixed:
        assert (f"{variant.name}: a call on other values of the same shapes (input seed 1) is wrong, and so is a "
                "freshly built instance's call on them, while a freshly built instance gets the problem's own "
                "values (input seed 0) right: data kept from an earlier call outside the built function"
                in result.message), result.message
        assert "output: max error" in result.message


@pytest.mark.parametrize("fill, said", [(0.0, None), (float("nan"), "NaN"), (0.5, "other values (max |x| 0.5)")])
def test_fully_masked_rows_are_reported_only_when_they_are_not_the_oracles_zeros(fill, said):
    # a correct variant (zeros where a row sees no key, as the oracle defines) had warned on every run
    import numpy as np

    rows = np.array([True, False, True, False])
    out = torch.ones(1, 1, 4, 2)
    out[..., ~torch.from_numpy(rows), :] = fill
    note = checks.fully_masked_report(out, rows)
    assert note == ("" if said is None else f"reported: 2 fully masked query rows come out as {said} (not compared: "
                                            "no softmax exists there)")


# ------------------------------------------------- 5. one output buffer returned by every call


class OneBuffer(KernelVariant):
    """Causal SDPA written into one buffer allocated at the first call and returned by every call
    (``own``: a tensor of its own each call, as the contract wants)."""

    masks = frozenset({"causal"})

    def __init__(self, name: str, own: bool = False) -> None:
        self.name, self.own = name, own

    def build(self, problem):
        held: dict = {}

        def run(q, k, v):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            if self.own:
                return out
            held.setdefault("out", torch.empty_like(out)).copy_(out)
            return held["out"]
        return run


@pytest.mark.parametrize("own", [False, True], ids=["one buffer for every call", "a tensor of its own each call"])
@pytest.mark.parametrize("check", ["causality", "repeat"])
def test_a_kernel_returning_one_buffer_from_every_call_is_told_so_by_the(check, own):
    # the next call overwrote what the last returned: causality had read "ignores keys it must attend
    # to", repeat "reuses data from an earlier call (K/V ...)" (an outside tester's trial)
    result = checks.CHECKS[check](OneBuffer("test-one-buffer", own=own), KERNEL_PROBLEM, cache={})
    assert result.passed == own, result.message
    if not own:
        assert "test-one-buffer returns one output buffer from more than one call: the tensors" in result.message, \
            result.message
        assert "each call must return a tensor of its own" in result.message, result.message
        for misleading in ("ignores keys", "reuses data", "future leak", "depends on earlier calls"):
            assert misleading not in result.message, result.message


# ------------------------------------------------- 6. noise on some calls only is not a future leak


class EveryOtherCallNoisy(KernelVariant):
    """Causal SDPA plus ``noise`` times fresh noise on every second call of a built function: its
    first call is exact, the causality check's perturbed call (the second) noisy, one more unperturbed
    call exact again (that call had agreed with the first, and the noise had read as a future leak)."""

    masks = frozenset({"causal"})

    def __init__(self, name: str, noise: float, deterministic: bool) -> None:
        self.name, self.noise, self.deterministic = name, noise, deterministic

    def build(self, problem):
        calls = [0]

        def run(q, k, v):
            calls[0] += 1
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return out + self.noise * torch.randn_like(out) if calls[0] % 2 == 0 else out
        return run


@pytest.mark.parametrize("variant, said", [
    (EveryOtherCallNoisy("test-half-noisy", 1e-7, deterministic=True),
     "test-half-noisy: the output is not bitwise repeatable across identical calls"),
    (EveryOtherCallNoisy("test-half-noisy-declared", 1e-2, deterministic=False),
     "test-half-noisy-declared: the output is not repeatable within tolerance across identical calls"),
], ids=["tiny-noise-claiming-determinism", "noise-beyond-tolerance-declaring-nondeterminism"])
def test_noise_on_every_other_call_is_named_as_nondeterminism_not_as_a_future_leak(variant, said):
    result = checks.check_causality(variant, KERNEL_PROBLEM, cache={})  # one built function, as in a run
    assert not result.passed
    assert said in result.message, result.message
    assert "future leak:" not in result.message and "future leak (judged" not in result.message, result.message


class Counted(KernelVariant):
    """Causal SDPA (``leaks``: no mask at all) that counts the calls of its built functions."""

    masks = frozenset({"causal"})

    def __init__(self, name: str, leaks: bool) -> None:
        self.name, self.leaks, self.calls = name, leaks, 0

    def build(self, problem):
        def run(q, k, v):
            self.calls += 1
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=not self.leaks)
        return run


@pytest.mark.parametrize("leaks, calls", [(False, 2), (True, 2 + 2 * checks.CAUSALITY_RERUNS)],
                         ids=["a passing kernel is called twice", "a leaking kernel is run again before blamed"])
def test_the_causality_checks_further_unperturbed_runs_are_made_only_on_a_failure(leaks, calls):
    variant = Counted("test-counted", leaks)
    result = checks.check_causality(variant, KERNEL_PROBLEM, cache={})
    assert result.passed != leaks, result.message
    assert variant.calls == calls
    if leaks:  # every further run repeats the first: the mask is blamed, bit for bit
        assert "future leak: changing keys/tokens >= 8 changed" in result.message, result.message


class NoisyWhenPerturbed(KernelVariant):
    """Right causal attention, with rounding noise on the call that sees perturbed keys alone and on its
    first rerun: as a kernel noisy on a random share of its calls, when the draw falls there."""

    name = "test-noisy-when-perturbed"
    masks = frozenset({"causal"})

    def __init__(self) -> None:
        self.noisy_calls = 0
        self.first_k = None  # the check calls the unperturbed input first

    def build(self, problem):
        def run(q, k, v):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            if self.first_k is None:
                self.first_k = k.detach().clone()
            elif not torch.equal(k, self.first_k) and self.noisy_calls < 2:
                self.noisy_calls += 1
                return out * (1 + 2.0 ** -20)
            return out
        return run


def test_noise_on_the_perturbed_call_alone_is_named_as_nondeterminism_not_as_a_future_leak():
    # the unperturbed reruns all agreed, so the check had blamed the mask (an outside tester's trial)
    result = checks.check_causality(NoisyWhenPerturbed(), KERNEL_PROBLEM, cache={})
    assert not result.passed and "future leak:" not in result.message, result.message
    assert "further runs of the perturbed input, one differs from the first" in result.message, result.message


class NoisyOnSomeCalls(KernelVariant):
    """A stateless kernel with rounding noise on some calls of the whole process (as a random draw
    would give them: here its 3rd and 7th), shared by every instance: no state an instance keeps."""

    name = "test-noisy-on-some-calls"
    masks = frozenset({"causal"})

    def __init__(self, noisy: frozenset) -> None:
        self.noisy, self.calls = noisy, 0

    def build(self, problem):
        def run(q, k, v):
            self.calls += 1
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return out * (1 + self.calls * 2.0 ** -20) if self.calls in self.noisy else out
        return run


def test_a_stateless_kernel_noisy_on_some_calls_is_told_nondeterminism_not_to_declare_reset():
    # its two fresh instances' first calls had happened to agree, and it had been told to declare
    # reset(), which cannot help it (an outside tester's trial): calls 1-3 are the check's (the third
    # noisy), then each fresh instance is called twice
    result = checks.check_repeat(NoisyOnSomeCalls(frozenset({3, 7})), KERNEL_PROBLEM, cache={})
    assert not result.passed and "claims determinism" in result.message, result.message
    assert "reset()" not in result.message
