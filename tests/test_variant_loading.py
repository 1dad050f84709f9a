"""Loading variants from outside the repository: what a broken one does to the run.

- A level that is not the variant class's kind, or a family that is not registered, is refused when
  the variants are loaded, naming the variant, its module and the family (it had registered, then
  skipped every test, or broken the collection of every variant's tests).
- A variant whose ``extra_reasons`` raises fails its own correctness tests, naming itself and the
  exception; the other variants are collected and run (it had stopped the whole collection).
- An entry point whose module does not import is named with its distribution and module.
- Entry-point variants count as code from outside in the run header's warning.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attnsuite import plugin_isolation, registry
from variant_sources import CORRECT_RUN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch):
    """The registry as it is, and whatever a test loads into it (variants, families, modules) forgotten
    afterwards: a variant left behind would break every later run of this process."""
    registry.load_builtin()
    # only the built-in variants: whatever an earlier test of this process registered (an xdist worker
    # runs many) is left out, whether loaded from outside or registered directly (origin None): these
    # tests count what is external. Leaving out only the former had failed a test here once xdist's
    # worksteal ordering put it after a test that registers directly.
    outside = {v.name for v in registry.variants() if registry.origin(v.name) != registry.BUILTIN_ORIGIN}
    monkeypatch.setattr(registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items() if k not in outside})
    monkeypatch.setattr(registry, "_ORIGINS", {k: o for k, o in registry._ORIGINS.items() if k not in outside})
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_EXTERNAL_SOURCES", [])
    monkeypatch.setattr(registry, "_BROKEN_ENTRY_POINTS", [])
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("attnsuite_external_") or name.startswith("s14_ep_"):
            del sys.modules[name]


def _module(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(CORRECT_RUN + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("base, words", [
    ("KernelVariant", "does not implement build(problem) -> fn(q, k, v)"),
    ("LayerVariant", "does not implement build(problem, params) -> module"),
])
def test_a_variant_without_its_own_build_is_refused_when_it_registers(isolated_registry, tmp_path, base, words):
    # every one of its tests had failed with a bare NotImplementedError from the base class
    path = _module(tmp_path, f"s20_nobuild_{base.lower()}", f'''
        from attnsuite.registry import {base}, register

        @register
        class NoBuild({base}):
            name = "x-no-build"
            family = "mha-layer" if "{base}" == "LayerVariant" else "attention"
    ''')
    with pytest.raises(registry.VariantLoadError) as exc:
        registry.load_all([str(path)])
    text = str(exc.value)
    assert "variant 'x-no-build'" in text and words in text and str(path) in text, text
    assert "x-no-build" not in registry._REGISTRY


# --- a level or a family that does not fit ----------------------------------------------------------


@pytest.mark.parametrize("base, level, words", [
    ("KernelVariant", "layer", "declares level 'layer', but it is a KernelVariant: its level is 'kernel'"),
    ("LayerVariant", "kernel", "declares level 'kernel', but it is a LayerVariant: its level is 'layer'"),
])
def test_a_level_that_is_not_the_classs_kind_is_refused_naming_variant_and_module(
        isolated_registry, tmp_path, base, level, words):
    path = _module(tmp_path, f"s14_level_{base.lower()}", f'''
        from attnsuite.registry import {base}, register

        @register
        class Odd({base}):
            name = "x-level"
            family = "mha-layer" if "{base}" == "LayerVariant" else "attention"
            level = "{level}"
    ''')
    with pytest.raises(registry.VariantLoadError) as exc:
        registry.load_all([str(path)])
    text = str(exc.value)
    assert "variant 'x-level'" in text and words in text and str(path) in text, text
    assert "x-level" not in registry._REGISTRY


def test_an_unknown_family_is_refused_at_load_naming_variant_module_and_known_families(isolated_registry, tmp_path):
    path = _module(tmp_path, "s14_family_typo", '''
        from attnsuite.registry import KernelVariant, register

        @register
        class Typo(KernelVariant):
            name = "x-fam"
            family = "attentoin"

            def build(self, problem):
                return correct_run(problem)
    ''')
    with pytest.raises(ValueError) as exc:
        registry.load_all([str(path)])
    text = str(exc.value)
    assert "variant 'x-fam'" in text and "unknown family 'attentoin'" in text, text
    assert "attnsuite_external_s14_family_typo" in text and str(path) in text, text
    assert "did you mean 'attention'?" in text and "known: attention, dilated" in text, text


def test_a_variant_whose_level_is_not_its_familys_is_refused(isolated_registry, tmp_path):
    path = _module(tmp_path, "s14_family_level", '''
        from attnsuite.registry import KernelVariant, register

        @register
        class Kernel(KernelVariant):
            name = "x-kernel-in-layer-family"
            family = "mha-layer"

            def build(self, problem):
                return None
    ''')
    with pytest.raises(registry.VariantLoadError, match="variant 'x-kernel-in-layer-family' in .* is kernel-level, "
                                                        "but its family 'mha-layer' is layer-level"):
        registry.load_all([str(path)])


def test_a_variant_may_be_loaded_before_the_module_that_registers_its_family(isolated_registry, tmp_path):
    variant = _module(tmp_path, "s14_early_variant", '''
        from attnsuite.registry import KernelVariant, register

        @register
        class Early(KernelVariant):
            name = "x-early"
            family = "late-family"

            def build(self, problem):
                return correct_run(problem)
    ''')
    family = _module(tmp_path, "s14_late_family", '''
        from attnsuite_impls.attention.family import ATTENTION
        import dataclasses
        from attnsuite.registry import register_family

        register_family(dataclasses.replace(ATTENTION, name="late-family"))
    ''')
    registry.load_all([str(variant), str(family)])
    assert registry.family_of(registry.get("x-early")).name == "late-family"


def test_an_unknown_family_is_a_usage_error_of_the_correctness_run(isolated_registry, tmp_path, pytester):
    path = _module(tmp_path, "s14_family_typo_run", '''
        from attnsuite.registry import KernelVariant, register

        @register
        class Typo(KernelVariant):
            name = "x-fam"
            family = "attentoin"
    ''')
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "--collect-only", "-q", "--attn-variants", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "variant 'x-fam' in attnsuite_external_s14_family_typo_run" in result.stderr.str(), result.stderr.str()


# --- a variant hook that raises while the tests are collected ------------------------------------


# failed: the raising variant's tests of the five checks (the strided one leaves out the problems
# whose known_defect() raised: the other four report it); passed: the five of x-fine
@pytest.mark.parametrize("hook, raising, said, failed", [
    ("def extra_reasons(self, problem, backward):", 'raise RuntimeError("boom")',
     "its unsupported()/extra_reasons() raised RuntimeError: boom", 5),
    ("def known_defect(self, check, problem):", 'raise KeyError("no such defect table")',
     "its known_defect() raised KeyError: 'no such defect table'", 4),
    # os._exit there had ended a run without xdist at once, with status 0 and no output
    ("def extra_reasons(self, problem, backward):", 'import os; os._exit(0)',
     "its unsupported()/extra_reasons() called os._exit(0)", 5),
    ("def extra_reasons(self, problem, backward):", 'raise SystemExit(3)',
     "its unsupported()/extra_reasons() called sys.exit(3)", 5),
], ids=["extra_reasons", "known_defect", "extra_reasons calls os._exit", "extra_reasons calls sys.exit"])
def test_a_hook_that_raises_while_collecting_fails_that_variants_tests_only(isolated_registry, tmp_path, pytester,
                                                                            hook, raising, said, failed):
    # both are variant code called while collecting: a raise had stopped every variant's collection
    path = _module(tmp_path, "s14_hook_raise", f'''
        from attnsuite.registry import KernelVariant, register

        @register
        class Raises(KernelVariant):
            name = "x-hook-raise"

            {hook}
                {raising}

            def build(self, problem):
                return correct_run(problem)

        @register
        class Fine(KernelVariant):
            name = "x-fine"

            def build(self, problem):
                return correct_run(problem)
    ''')
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "-q", "--attn-variants", str(path), "--attn-only", "x-hook-raise,x-fine",
        "-k", "b2-q3-h2-d32-causal-tl-fp32-cpu")
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    result.assert_outcomes(failed=failed, passed=5)
    assert f"x-hook-raise on b2-q3-h2-d32-causal-tl-fp32-cpu: {said}" in text, text[-3000:]
    assert "FAILED" not in "".join(line for line in text.splitlines() if "x-fine@" in line), text[-3000:]


# --- entry points -----------------------------------------------------------------------------------


class FakeEntryPoint:
    """An ``attnsuite.variants`` entry point of an installed distribution, as importlib.metadata gives one."""

    def __init__(self, name: str, value: str, dist: str) -> None:
        self.name, self.value, self.group = name, value, "attnsuite.variants"
        self.dist = SimpleNamespace(name=dist)

    def load(self) -> Any:
        import importlib
        return importlib.import_module(self.value)


def _entry_points(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint) -> None:
    monkeypatch.setattr(registry, "entry_points", lambda group: list(eps) if group == "attnsuite.variants" else [])


def test_an_entry_point_that_fails_to_import_is_left_out_named_with_its_distribution_and_module(isolated_registry,
                                                                                                monkeypatch):
    # a broken installed package had stopped every run, the built-in variants' included
    _entry_points(monkeypatch, FakeEntryPoint("mine", "s14_ep_no_such_module_xyz", "my-dist"))
    registry.load_all()
    assert registry.broken_entry_points() == [
        "entry point 'mine' (distribution my-dist) 's14_ep_no_such_module_xyz': ModuleNotFoundError: No module "
        "named 's14_ep_no_such_module_xyz' (fix or uninstall that package, or set ATTNSUITE_NO_ENTRY_POINTS=1 to "
        "run without installed packages' variants)"]
    assert registry.get("sdpa") and not registry.external_variants()


def test_a_package_that_fails_half_way_through_its_import_leaves_none_of_its_variants(isolated_registry, monkeypatch,
                                                                                      tmp_path):
    _entry_point_module(monkeypatch, tmp_path, module="s14_ep_half", variant="x-half-first",
                        then='raise RuntimeError("the second kernel\'s extension did not build")')
    registry.load_all()
    assert "x-half-first" not in {v.name for v in registry.variants()}
    assert registry.broken_entry_points()[0].startswith("entry point 'mine' (distribution my-dist) 's14_ep_half': "
                                                        "RuntimeError: the second kernel's extension did not build")


def test_a_run_with_a_broken_package_checks_everything_else_and_fails_at_its_end_naming_it(isolated_registry,
                                                                                          monkeypatch, pytester):
    _entry_points(monkeypatch, FakeEntryPoint("mine", "s14_ep_no_such_module_xyz", "my-dist"))
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "-p", "no:xdist", "--attn-only", "sdpa", "-k", "test_forward and q113k97 and fp32")
    text = result.stdout.str()
    assert result.parseoutcomes().get("passed", 0) >= 1, text[-2000:]
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-2000:]
    line = ("attnsuite: entry point 'mine' (distribution my-dist) 's14_ep_no_such_module_xyz': ModuleNotFoundError")
    assert text.count(line) == 2, text[-2000:]  # in the header and in the summary
    assert "its variants were left out of this run, which fails for it" in text
    # counted as a failure: pytest's last line had read a green "N passed" over exit status 1
    assert result.parseoutcomes().get("failed", 0) == 1, text[-2000:]
    assert "attnsuite-entry-points::0" in text, text[-2000:]


def test_attn_only_naming_a_variant_of_a_broken_package_says_the_package_was_left_out(isolated_registry, monkeypatch,
                                                                                      pytester):
    _entry_points(monkeypatch, FakeEntryPoint("mine", "s14_ep_no_such_module_xyz", "my-dist"))
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "-p", "no:xdist", "--attn-only", "my-kernel")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown variant 'my-kernel'" in result.stderr.str()
    assert "; left out: entry point 'mine' (distribution my-dist)" in result.stderr.str()


def test_a_broken_entry_point_can_be_left_out_with_the_variable_its_error_names(isolated_registry, monkeypatch):
    # a broken installed package had blocked every run, the suite's own tests included
    _entry_points(monkeypatch, FakeEntryPoint("mine", "s14_ep_no_such_module_xyz", "my-dist"))
    monkeypatch.setenv("ATTNSUITE_NO_ENTRY_POINTS", "1")
    registry.load_all()
    assert registry.get("sdpa") and not registry.external_variants()


def test_an_entry_point_without_its_distribution_still_names_itself(isolated_registry, monkeypatch):
    from importlib.metadata import EntryPoint

    bare = EntryPoint(name="mine", value="s14_ep_no_such_module_abc", group="attnsuite.variants")
    monkeypatch.setattr(registry, "entry_points", lambda group: [bare])
    registry.load_entry_points()
    assert registry.broken_entry_points()[0].startswith("entry point 'mine' (distribution unknown) "
                                                        "'s14_ep_no_such_module_abc': ModuleNotFoundError")


def _entry_point_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str = "s14_ep_variants",
                        variant: str = "x-from-entry-point", then: str = "") -> None:
    """An installed package's module registering ``variant`` (then running ``then``), as entry point 'mine'."""
    _module(tmp_path, module, f'''
        from attnsuite.registry import KernelVariant, register

        @register
        class FromPackage(KernelVariant):
            name = "{variant}"

            def build(self, problem):
                return correct_run(problem)

        {then}
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    _entry_points(monkeypatch, FakeEntryPoint("mine", module, "my-dist"))


def test_the_registry_knows_each_variants_origin(isolated_registry, monkeypatch, tmp_path):
    _entry_point_module(monkeypatch, tmp_path)
    registry.load_all()
    assert registry.origin("x-from-entry-point") == "entry point 'mine' (distribution my-dist) 's14_ep_variants'"
    assert registry.origin("sdpa") == registry.BUILTIN_ORIGIN
    assert [v.name for v in registry.external_variants()] == ["x-from-entry-point"]


HEADER = "attnsuite: correctness tests run in this process: a variant that crashes or hangs ends the run"


def test_the_run_header_counts_entry_point_variants_as_code_from_outside(isolated_registry, monkeypatch, tmp_path,
                                                                          pytester):
    _entry_point_module(monkeypatch, tmp_path)
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "-p", "no:xdist", "--collect-only", "--attn-only", "x-from-entry-point")  # no -q: it hides the header
    assert HEADER in result.stdout.str(), result.stdout.str()[:2000]


def test_under_q_which_hides_the_header_the_in_process_warning_is_its_own_line(isolated_registry, monkeypatch,
                                                                               tmp_path, pytester):
    # a first-time user ran with -q, and a segfaulting variant ended the run with no word of why or of -n 1
    _entry_point_module(monkeypatch, tmp_path)
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "-p", "no:xdist", "--collect-only", "-q", "--attn-only", "x-from-entry-point")
    assert result.stdout.str().count(HEADER) == 1, result.stdout.str()[:2000]


def test_the_run_header_says_nothing_for_built_in_variants_only(isolated_registry):
    registry.load_all()
    config = SimpleNamespace(option=SimpleNamespace(numprocesses=None),
                             getoption=lambda name, default=None: None if name == "--attn-variants" else default)
    assert plugin_isolation.pytest_report_header(config) is None
    others = [v.name for v in registry.variants() if registry.origin(v.name) != registry.BUILTIN_ORIGIN]
    assert not others, f"variants not built in: {others}"


# --- drawn problems stay within what a variant declares -------------------------------------------


def test_drawn_problems_catch_a_wrong_scale_in_a_variant_that_declares_few_features(isolated_registry, tmp_path,
                                                                                    pytester):
    # masks none/causal, float32 only, no feature: 10 of 12 draws had been declined and the two that ran
    # were one query against one key, where any scale gives the right answer: the test had passed
    path = _module(tmp_path, "s14_bad_scale", '''
        from attnsuite.registry import KernelVariant, register

        @register
        class BadScale(KernelVariant):
            name = "x-bad-scale"
            dtypes = frozenset({"float32"})

            def build(self, problem):
                run = correct_run(problem)
                return lambda q, k, v: run(q * 1.05, k, v)
    ''')
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_hypothesis.py"), "--rootdir", str(REPO), "-p", "no:cacheprovider",
        "-q", "--attn-variants", str(path), "--attn-only", "x-bad-scale")
    result.assert_outcomes(failed=1)
    assert "x-bad-scale on " in result.stdout.str() and "forward FAILED" in result.stdout.str()


# --- two files of one name, two configurations of one class, a module that exits --------------------

TWIN = '''
from attnsuite.registry import KernelVariant, register


@register
class Twin(KernelVariant):
    name = "{name}"
    masks = frozenset({{"none"}})

    def build(self, problem):
        return correct_run(problem)
'''


def test_two_files_of_one_name_in_two_folders_both_load(tmp_path, isolated_registry):
    for folder, name in (("one", "from-one"), ("two", "from-two")):
        (tmp_path / folder).mkdir()
        _module(tmp_path / folder, "variants", TWIN.format(name=name))
    registry.load_all([str(tmp_path / "one" / "variants.py"), str(tmp_path / "two" / "variants.py")])
    # the second file had been taken for the first (same module name) and skipped without a word
    assert {"from-one", "from-two"} <= set({v.name for v in registry.variants()})
    sources = dict(registry.external_sources())
    assert len(set(sources.values())) == 2, sources
    # loading either again is still a no-op, and a spawned rank loads each under the parent's name
    registry.load_external(str(tmp_path / "two" / "variants.py"))
    assert registry.load_like(registry.external_sources()) == []


def test_a_name_given_for_a_file_that_another_file_holds_is_an_error_naming_both(tmp_path, isolated_registry):
    for folder, name in (("one", "from-one"), ("two", "from-two")):
        (tmp_path / folder).mkdir()
        _module(tmp_path / folder, "variants", TWIN.format(name=name))
    registry.load_external(str(tmp_path / "one" / "variants.py"), "attnsuite_external_pinned")
    with pytest.raises(ImportError, match=r"cannot load .*two.*variants\.py as attnsuite_external_pinned: "
                                          r"that module is already imported from .*one.*variants\.py"):
        registry.load_external(str(tmp_path / "two" / "variants.py"), "attnsuite_external_pinned")


CONFIGS = '''
from attnsuite.registry import KernelVariant, register


class Scaled(KernelVariant):
    name = "my-scaled"
    masks = frozenset({{"none"}})

    def __init__(self, mult):
        self.mult = mult

    def build(self, problem):
        return correct_run(problem)


register(Scaled({first}))
register(Scaled({second}))
'''


@pytest.mark.parametrize("first, second, refused", [
    (1.5, 1.0, True),  # another configuration under a taken name: the first would go unchecked
    (1.0, 1.0, False),  # the same settings again (a registrar run twice): harmless
], ids=["other-settings-refused", "same-settings-again-accepted"])
def test_two_instances_of_one_class_under_one_name(tmp_path, isolated_registry, first, second, refused):
    path = _module(tmp_path, "configs", CONFIGS.format(first=first, second=second))
    if refused:
        with pytest.raises(registry.VariantLoadError, match=r"variant name 'my-scaled' is already registered by "
                                                            r"another Scaled instance .* with other settings"):
            registry.load_all([str(path)])
        assert "my-scaled" not in {v.name for v in registry.variants()}  # nothing of the refused module stays
    else:
        registry.load_all([str(path)])
        assert registry.get("my-scaled").mult == 1.0


@pytest.mark.parametrize("body, call", [
    ("import argparse\nargparse.ArgumentParser().parse_args(['--no-such-option'])\n", "sys.exit(2)"),
    ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    # os._exit had ended the run at once: status 0, no output, no JSON, as if it had passed
    ("import os\nos._exit(0)\n", "os._exit(0)"),
], ids=["argparse-at-import", "sys-exit-at-import", "os-exit-at-import"])
def test_a_module_that_exits_while_imported_is_a_load_error_naming_it(tmp_path, isolated_registry, body, call):
    path = _module(tmp_path, "exits", TWIN.format(name="exits-early") + body)
    with pytest.raises(registry.VariantLoadError) as err:
        registry.load_all([str(path)])
    text = str(err.value)
    assert f"--attn-variants {str(path)!r}" in text and call in text, text
    assert "if __name__ == '__main__'" in text
    assert "exits-early" not in {v.name for v in registry.variants()}  # what it registered before exiting is forgotten


FORWARD_ONLY = '''
from attnsuite.registry import KernelVariant, register


@register
class ForwardOnly(KernelVariant):
    name = "fwd-only-drawn"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "lq_ne_lk", "bottom_right", "custom_scale"})
    backward_devices = frozenset()  # no backward anywhere

    def build(self, problem):
        inner = correct_run(problem)
        return lambda q, k, v: inner(q, k, v).detach()
'''


def test_a_forward_only_variant_gets_its_forward_checked_on_drawn_problems(tmp_path):
    # asking for forward and backward together had skipped every draw: "every drawn problem is a declared
    # limitation: ... has no backward on cpu"
    from suiterun import run_suite_tests

    path = _module(tmp_path, "fwd_only", FORWARD_ONLY)
    out = run_suite_tests(["test_correctness/test_hypothesis.py"], tmp_path, "-q", "-rs",
                          f"--attn-variants={path}", "--attn-only=fwd-only-drawn")
    final = out.strip().splitlines()[-1]  # pytest's summary line (the in-process warning speaks of skips too)
    assert "1 passed" in final and "skipped" not in final, out[-2000:]


def test_built_in_variants_have_the_built_in_origin_however_they_were_loaded():
    # a fresh process that calls load_builtin() alone (as the GPU scripts do) had left their origin None
    code = ("from attnsuite import registry; registry.load_builtin(); "
            "print(sorted({str(registry.origin(v.name)) for v in registry.variants()}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str([registry.BUILTIN_ORIGIN]), done.stdout


def test_one_file_loaded_two_ways_is_named_as_one_file_imported_twice(isolated_registry, tmp_path):
    # an installed package's entry point plus --attn-variants with its folder had read as two variants
    # with one name ("already registered by my_pkg.more.PkgB"), never saying it was the same file
    path = _module(tmp_path, "twice_variants", """
        from attnsuite.registry import KernelVariant, register

        @register
        class Twice(KernelVariant):
            name = "x-loaded-twice"

            def build(self, problem):
                return correct_run(problem)
    """)
    registry.load_external(str(path), module_name="attnsuite_external_twice_a")
    with pytest.raises(Exception, match=r"variant name 'x-loaded-twice': .*twice_variants\.py was imported twice, as "
                                        r"module attnsuite_external_twice_a and again as attnsuite_external_twice_b"):
        registry.load_external(str(path), module_name="attnsuite_external_twice_b")


def test_a_variants_file_importing_another_file_also_given_is_told_to_give_only_the_importer(isolated_registry,
                                                                                          tmp_path):
    # a first-time user's with_helper.py subclassed my_attn.py's variant and both were given: the hint
    # named only an entry point beside --attn-variants
    base = _module(tmp_path, "s28_my_attn", """
        from attnsuite.registry import KernelVariant, register

        @register
        class MyAttn(KernelVariant):
            name = "x-s28-my-attn"

            def build(self, problem):
                return correct_run(problem)
    """)
    importer = _module(tmp_path, "s28_with_helper", """
        from attnsuite.registry import register
        from s28_my_attn import MyAttn

        @register
        class Faster(MyAttn):
            name = "x-s28-faster"
    """)
    registry.load_external(str(base))
    with pytest.raises(Exception, match=r"s28_my_attn\.py was imported twice, .*or one --attn-variants file that "
                                        r"imports another file also given\): name it one way \(for the latter, give "
                                        r"only the file that imports the other\)"):
        registry.load_external(str(importer))
    sys.modules.pop("s28_my_attn", None)


def test_two_classes_of_one_file_with_one_name_are_named_as_such(isolated_registry, tmp_path):
    # had read "dup.py was imported twice, as module attnsuite_external_dup and again as attnsuite_external_dup"
    path = _module(tmp_path, "dup_variants", """
        from attnsuite.registry import KernelVariant, register

        @register
        class First(KernelVariant):
            name = "x-dup-name"

            def build(self, problem):
                return correct_run(problem)

        @register
        class Second(First):
            pass
    """)
    with pytest.raises(Exception, match=r"variant name 'x-dup-name': two classes in \S*dup_variants\.py register it, "
                                        r"First and Second: give each its own name"):
        registry.load_external(str(path))


def test_a_variants_file_can_import_a_helper_module_beside_it(isolated_registry, tmp_path):
    # "ModuleNotFoundError: No module named 'kernel_utils'": only the package-folder form had worked
    (tmp_path / "kernel_utils_s18.py").write_text("SCALE_NAME = 'x-beside-helper'\n")
    path = _module(tmp_path, "uses_helper", """
        from attnsuite.registry import KernelVariant, register
        import kernel_utils_s18

        @register
        class UsesHelper(KernelVariant):
            name = kernel_utils_s18.SCALE_NAME

            def build(self, problem):
                return correct_run(problem)
    """)
    try:
        registry.load_external(str(path))
        assert registry.get("x-beside-helper").name == "x-beside-helper"
        assert sys.path[-1] == str(tmp_path)  # at the end: an installed package of the same name wins
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("kernel_utils_s18", None)


@pytest.mark.parametrize("how", ["already imported", "first on the import path"])
def test_two_variant_files_each_importing_a_helper_of_one_name_beside_it_is_a_load_error(
        tmp_path, isolated_registry, monkeypatch, how):
    # p4/v.py's `import helper` had run p3's helper.py (imported first, or found first on the path),
    # silently: its variant was benchmarked with the other folder's code
    helper = "helper_s24_" + ("a" if how == "already imported" else "b")
    files = {}
    for folder, name in (("p3", "gamma"), ("p4", "delta")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{helper}.py").write_text(f"WHO = {folder!r}\n")
        files[folder] = _module(tmp_path / folder, "v", f"""
            import {helper}
            from attnsuite.registry import KernelVariant, register

            @register
            class V(KernelVariant):
                name = "{name}-s24-{how[0]}"
                description = "uses the helper of " + {helper}.WHO

                def build(self, problem):
                    return correct_run(problem)
            """)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, helper, raising=False)
    if how == "already imported":
        registry.load_all([str(files["p3"])])
        assert sys.modules[helper].WHO == "p3"
    else:  # p3's folder joined the path first, nothing imported from it yet
        sys.path.append(str(files["p3"].parent))
    with pytest.raises(registry.VariantLoadError) as err:
        registry.load_all([str(files["p4"])])
    text = str(err.value)
    assert f"imports {helper!r} and {tmp_path / 'p4' / helper}.py lies beside it" in text, text
    assert f"{tmp_path / 'p3' / helper}.py" in text, text
    assert f"delta-s24-{how[0]}" not in {v.name for v in registry.variants()}
    monkeypatch.delitem(sys.modules, helper, raising=False)


VARIANT_IN_PACKAGE = '''
from attnsuite.registry import KernelVariant, register
from {pkg}.kernels import SCALE  # the package this file lies in, as the author means it


@register
class InPackage(KernelVariant):
    name = "{name}"

    def build(self, problem):
        return lambda q, k, v: q * SCALE
'''


@pytest.mark.parametrize("installed", [True, False], ids=["an-installed-copy-shadows-it", "its-own-package"])
def test_a_variant_file_whose_package_imports_from_another_copy_is_warned_about(tmp_path, monkeypatch, installed):
    # src/teamattn/variants.py importing teamattn.kernels ran an installed teamattn: a kernel made 50% wrong in
    # the working tree passed every check, and nothing said where the code came from
    import warnings as _warnings

    from attnsuite import registry

    pkg = f"teamattn_shadow_{'a' if installed else 'b'}"
    work = tmp_path / "work" / "src" / pkg
    work.mkdir(parents=True)
    (work / "__init__.py").write_text("")
    (work / "kernels.py").write_text("SCALE = 1.5  # the working tree's change\n")
    (work / "variants.py").write_text(VARIANT_IN_PACKAGE.format(pkg=pkg, name=f"in-{pkg}"))
    if installed:
        copy = tmp_path / "site" / pkg
        copy.mkdir(parents=True)
        (copy / "__init__.py").write_text("")
        (copy / "kernels.py").write_text("SCALE = 1.0\n")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
    else:
        monkeypatch.syspath_prepend(str(tmp_path / "work" / "src"))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for name in (pkg, f"{pkg}.kernels"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with _warnings.catch_warnings(record=True) as seen:
        _warnings.simplefilter("always")
        registry.load_external(str(work / "variants.py"), module_name=f"attnsuite_external_shadow_{pkg}")
    monkeypatch.delitem(sys.modules, f"attnsuite_external_shadow_{pkg}", raising=False)
    for name in (pkg, f"{pkg}.kernels"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    shadow = [str(w.message) for w in seen if issubclass(w.category, registry.ShadowedPackage)]
    if installed:
        assert len(shadow) == 1 and f"lies in package {pkg!r} at {work}" in shadow[0], shadow
        assert f"loaded it from {(tmp_path / 'site' / pkg).resolve()}" in shadow[0], shadow
    else:
        assert shadow == []


def test_one_name_in_two_files_names_both_files(tmp_path, isolated_registry):
    # two --attn-variants files with one name had been refused naming "attnsuite_external_one.Mine", a
    # module name the user never wrote, and not the second file at all
    body = '''
    from attnsuite.registry import KernelVariant, register


    @register
    class Mine(KernelVariant):
        name = "my-twice"
        masks = frozenset({"none"})

        def build(self, problem):
            return lambda q, k, v: q
    '''
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _module(tmp_path / "a", "one", body), _module(tmp_path / "b", "two", body)
    with pytest.raises(registry.VariantLoadError) as info:
        registry.load_all([str(first), str(second)])
    text = str(info.value)
    assert "variant name 'my-twice' is already registered by Mine in" in text and str(first) in text, text
    assert f"{second}) registers it again: give one of them another name" in text, text


def test_a_package_whose_submodule_imports_a_missing_module_is_refused_naming_that_file_and_line(
        isolated_registry, tmp_path):
    # it had named the folder and the missing module only, not which of the package's files imported it
    pkg = tmp_path / "s27_pkg_missing_dep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import fine, needs_dep  # noqa: F401\n")
    (pkg / "fine.py").write_text("X = 1\n")
    (pkg / "needs_dep.py").write_text("import os\nimport s27_no_such_module_xyz  # noqa: F401\n")
    with pytest.raises(registry.VariantLoadError) as exc:
        registry.load_all([str(pkg)])
    text = str(exc.value)
    assert "ModuleNotFoundError: No module named 's27_no_such_module_xyz'" in text, text
    assert text.endswith(f"(at {pkg / 'needs_dep.py'} line 2: import s27_no_such_module_xyz  # noqa: F401)"), text
