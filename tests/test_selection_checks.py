"""Checks that respect the user, with external variants (a module written here, loaded by --attn-variants):

- the generic layer tests and the hypothesis test run the selection (``--attn-only``) and nothing else;
- a limitation a variant declares (``Variant.unsupported``) is a skip with its reason, never a failure;
- equal work is checked for every layer family and a failure names every offender.
"""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest
import torch

from attnsuite import checks, registry
from test_correctness.conftest import skip_if_nothing_ran
from test_correctness.test_hypothesis import hypothesis_variants
from tests.suiterun import run_suite_tests


EXTERNAL = textwrap.dedent('''
    """Third-party variants: two that do unequal work (correct outputs), two with declared limitations."""
    import torch
    from attnsuite import registry

    SdpaLayer = type(registry.get("layer-sdpa"))
    Sdpa = type(registry.get("sdpa"))


    @registry.register
    class ExtraProjection(SdpaLayer):
        """An extra output projection (identity weights, so the output is right; the work is not)."""
        name = "ext-layer-extra-proj"

        def build(self, problem, params):
            module = super().build(problem, params)
            module.extra = torch.nn.Linear(problem.d_model, problem.d_model, dtype=next(module.parameters()).dtype)
            with torch.no_grad():
                module.extra.weight.copy_(torch.eye(problem.d_model))
                module.extra.bias.zero_()
            inner = module.forward
            module.forward = lambda x: module.extra(inner(x))
            return module

        def canonical_grads(self, module):
            return {k: v for k, v in super().canonical_grads(module).items() if not k.startswith("extra.")}


    @registry.register
    class UnusedWeight(SdpaLayer):
        """A parameter it never uses: more to hold and to update."""
        name = "ext-layer-unused-weight"

        def build(self, problem, params):
            module = super().build(problem, params)
            module.unused = torch.nn.Parameter(torch.zeros(3, dtype=next(module.parameters()).dtype))
            return module


    @registry.register
    class ShortLayer(SdpaLayer):
        """Correct, and declares it runs at most 8 tokens."""
        name = "ext-layer-short"

        def extra_reasons(self, problem, backward):
            return [f"{self.name} runs at most 8 tokens"] if problem.lq > 8 else []


    @registry.register
    class ShortKernel(Sdpa):
        name = "ext-kernel-short"

        def extra_reasons(self, problem, backward):
            return [f"{self.name} runs at most 8 tokens"] if max(problem.lq, problem.lk) > 8 else []


    @registry.register
    class HalfOnlyKernel(Sdpa):
        name = "ext-kernel-fp16-only"
        dtypes = frozenset({"float16"})
''')


ONLY = ("ext-layer-extra-proj", "ext-layer-unused-weight", "ext-layer-short", "ext-kernel-short",
        "ext-kernel-fp16-only")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One pytest run of the generic layer tests and the hypothesis test, selecting the outside variants."""
    folder = tmp_path_factory.mktemp("third_party")
    (folder / "third_party.py").write_text(EXTERNAL)
    tests = [f"test_correctness/{name}" for name in ("test_layer_specific.py", "test_hypothesis.py")]
    return run_suite_tests(tests, folder, "-v", "-rs", f"--attn-variants={folder / 'third_party.py'}",
                           *[f"--attn-only={v}" for v in ONLY], "-k", "equal_work or drawn_shapes or at_least or drawn_problem")


def test_equal_work_names_every_offender_and_only_the_offenders(run):
    assert "test_every_variant_of_a_layer_family_does_equal_work[mha-layer] FAILED" in run, run[-4000:]
    assert "2 variant(s) of mha-layer do unequal work" in run, run[-4000:]
    failures = run[run.index("= FAILURES ="):run.index("short test summary")]
    assert "ext-layer-extra-proj on" in failures and "ext-layer-unused-weight on" in failures
    assert "(unequal work)" in failures
    assert "layer-sdpa on" not in failures and "ext-layer-short on" not in failures


def test_the_generic_layer_tests_check_the_selection_only(run):
    assert "no selected variant of gqa-layer (--attn-only)" in run, run[-4000:]
    assert "a selection (--attn-only) need not hold three variants" in run
    assert " 1 failed" in run  # equal work of mha-layer, and nothing else


def test_a_limitation_a_layer_declares_is_skipped_not_failed(run):
    # ext-layer-short runs at most 8 tokens; drawn lengths go to 40
    assert "test_eager_layer_variants_match_the_oracle_on_drawn_shapes[mha-layer] PASSED" in run, run[-4000:]


def test_the_hypothesis_test_runs_the_selection_and_skips_what_a_variant_declares(run):
    assert "test_drawn_problem_forward_and_backward_match_oracle[ext-kernel-short] PASSED" in run, run[-4000:]
    assert "test_drawn_problem_forward_and_backward_match_oracle[ext-kernel-fp16-only] SKIPPED" in run
    assert "every drawn problem is a declared limitation: ext-kernel-fp16-only does not support dtype" in run
    assert "test_drawn_problem_forward_and_backward_match_oracle[sdpa]" not in run  # not selected


class _Config:
    """The one option selected_variants reads."""

    def __init__(self, only=()):
        self.only = list(only)

    def getoption(self, name, default=None):
        return self.only if name == "--attn-only" else default


def test_without_a_selection_the_hypothesis_test_takes_the_built_ins_and_every_outside_variant(monkeypatch):
    class OutsideKernel(type(registry.get("sdpa"))):  # defined here: a module outside the suite
        name = "test-selection-outside-kernel"

    monkeypatch.setitem(registry._REGISTRY, OutsideKernel.name, OutsideKernel())
    names = [v.name for v in hypothesis_variants(_Config())]
    assert OutsideKernel.name in names and "sdpa" in names and "explicit" in names
    assert "ring-sim" not in names  # built-ins beyond the default set are left to the fixed problems
    assert [v.name for v in hypothesis_variants(_Config(["explicit"]))] == ["explicit"]


def test_a_test_in_which_every_draw_was_declined_is_a_skip_with_the_reasons():
    with pytest.raises(pytest.skip.Exception, match="declared limitation: x runs at most 8 tokens \\(3x\\)"):
        skip_if_nothing_ran(0, Counter({"x runs at most 8 tokens": 3}), "x")
    skip_if_nothing_ran(1, Counter({"x runs at most 8 tokens": 3}), "x")  # something ran: no skip


def test_the_equal_work_check_passes_a_built_in_layer_and_names_what_is_extra():
    problem = registry.family("mha-layer").problems("cpu", ("float32",))[0]
    assert checks.check_equal_work(registry.get("layer-sdpa"), problem).passed

    class Extra(type(registry.get("layer-sdpa"))):
        name = "test-selection-extra-bias"

        def build(self, problem, params):
            module = super().build(problem, params)
            module.extra_bias = torch.nn.Parameter(torch.zeros(problem.d_model))
            return module

    result = checks.check_equal_work(Extra(), problem)
    assert not result.passed and result.message.startswith("test-selection-extra-bias on")
    assert "parameters, the canonical set has" in result.message and "(unequal work)" in result.message
