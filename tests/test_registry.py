"""The registry: lookups with helpful errors, declared capabilities become skip reasons, external variants."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnsuite import registry
from attnsuite.problem import Mask, Problem

REPO = Path(__file__).resolve().parents[1]


def test_unknown_variant_name_suggests_close_matches():
    registry.load_builtin()
    with pytest.raises(registry.UnknownVariantError, match="unknown variant 'sdpa-flsh'.*did you mean sdpa-flash"):
        registry.get("sdpa-flsh")


def test_duplicate_name_from_another_class_is_refused():
    registry.load_builtin()

    class Clash(registry.KernelVariant):
        name = "explicit"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Clash)


@pytest.mark.parametrize("name, held", [
    ("my,attn", "','"),  # registered, and then --attn-only my,attn selected "my" and "attn"
    ("my/attn", "'/'"),  # case keys are workload/variant/mode/problem
    ("my attn", "' '"),
    ("slow=2", "'='"),
    ("a[b]", "'[', ']'"),
    ("tab\tname", "'\\t'"),
    # '@' ends the variant in a correctness test's id: "cuda@only" hid its tests from the check that
    # fails a run whose --attn-only variant ran none (an outside tester's trial)
    ("cuda@only", "'@'"),
    ("my:attn", "':'"),
    ("flash*", "'*'"),
    ("café", "'é'"),  # pytest's ids escape it (caf\\xe9), and the id no longer names the variant
])
def test_a_variant_name_that_selection_or_case_keys_cannot_carry_is_refused_naming_the_character(name, held):
    Odd = type("Odd", (registry.KernelVariant,), {"name": name})
    with pytest.raises(ValueError) as exc:
        registry.register(Odd)
    assert f"variant name {name!r} (Odd) holds {held}:" in str(exc.value), exc.value
    assert name not in {v.name for v in registry.variants()}


def test_names_of_letters_digits_and_dash_underscore_dot_plus_register():
    for name in ("my-attn_v2.1", "flash+alibi", "V2"):
        registry.register(type("Fine", (registry.KernelVariant,), {"name": name, "build": lambda self, p: None}))
        assert name in {v.name for v in registry.variants()}
    registry.forget(["my-attn_v2.1", "flash+alibi", "V2"])


@pytest.mark.parametrize("attr, value, words", [
    ("features", frozenset({"telepathy"}), "unknown features ['telepathy']"),
    # each of these had been accepted, and every problem then skipped: a green run that checked nothing
    ("masks", frozenset({"causl"}), "unknown masks ['causl']"),
    ("dtypes", frozenset({"fp32"}), "unknown dtypes ['fp32']"),
    ("devices", frozenset({"CPU"}), "unknown devices ['CPU']"),
    ("backward_devices", frozenset({"gpu"}), "unknown backward_devices ['gpu']"),
    ("masks", "causal", "masks must be a set of names"),
    # an empty set skips everything as a misspelt one does
    ("dtypes", frozenset(), "declares no dtypes (an empty set): every problem would skip"),
    ("masks", frozenset(), "declares no masks (an empty set)"),
    ("devices", frozenset(), "declares no devices (an empty set)"),
    # a misspelt check name had been ignored: the declared defect failed the run as if undeclared
    ("nondeterministic_backward_devices", frozenset({"gpu"}), "unknown nondeterministic_backward_devices ['gpu']"),
    # a flag where the reason belongs: the record's note would have read "True"
    ("no_graph_capture", True, "no_graph_capture is the reason a CUDA graph cannot capture its step, as text"),
    ("known_defects", {"fwd": "seen on ..."}, "known_defects keys must be check names (forward, backward, "
                                               "causality, repeat, backward-repeat, strided), got ['fwd']"),
])
def test_a_misspelt_declaration_is_refused_naming_it(attr, value, words):
    Odd = type("Odd", (registry.KernelVariant,), {"name": f"odd-{attr}", attr: value})
    with pytest.raises(ValueError) as exc:
        registry.register(Odd)
    assert words in str(exc.value) and f"odd-{attr}" in str(exc.value), exc.value


def test_unsupported_reasons_name_each_missing_capability():
    registry.load_builtin()
    p = Problem(lq=17, lk=33, hq=4, hkv=2, mask=Mask("window", window=3), dtype="float64", alibi=True)
    reasons = registry.get("sdpa-math").unsupported(p)
    assert "sdpa-math does not support mask kind 'window'" in reasons
    assert "sdpa-math does not support alibi" in reasons
    assert registry.get("explicit").unsupported(p) == []


def test_missing_external_module_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does_not_exist.py"):
        registry.load_external("does_not_exist.py")


@pytest.mark.parametrize("relative", ["notes.txt", "sub/notes.txt"], ids=["bare-name", "path"])
def test_a_variants_file_that_is_not_python_is_refused_naming_it(tmp_path, monkeypatch, relative):
    # "notes.txt" had been read as the module name "notes": "No module named 'notes'"
    (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / relative).write_text("not python\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError, match=rf"variant file '{relative}' is not a \.py file: variants load from a "
                                          r"Python file \(\.py\), a package folder"):
        registry.load_external(relative)


def test_a_module_name_python_cannot_find_says_how_to_make_it_importable():
    # ATTNSUITE_VARIANTS=my_pkg.attention_variants from a project folder had ended in a bare
    # "No module named 'my_pkg'"
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'no_such_pkg_x'.*PYTHONPATH=<the folder that "
                                                  r"holds no_such_pkg_x>.*or name the file itself"):
        registry.load_external("no_such_pkg_x.attention_variants")


def test_a_folder_named_without_a_slash_is_told_to_be_written_as_a_path(tmp_path, monkeypatch):
    # --attn-variants ext3 (a folder here) had been told to "name the file itself (a path to the .py file
    # or package folder)", which it had
    (tmp_path / "ext_folder_zz").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"'ext_folder_zz' is read as a module name; it is also a folder "
                                                  r"here: to load the folder, write it as a path \(ext_folder_zz/\)"):
        registry.load_external("ext_folder_zz")


def test_a_found_module_whose_own_import_is_missing_keeps_that_error(tmp_path, monkeypatch):
    (tmp_path / "uses_missing_dep.py").write_text("import no_such_dependency_y\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        registry.load_external("uses_missing_dep")
    assert str(info.value) == "No module named 'no_such_dependency_y'"  # the module's own, not a path hint


def test_external_variant_is_checked_like_a_builtin(pytester):
    """The README's way: --attn-variants PATH; the variant runs through the generic checks and passes."""
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"),
        "--rootdir", str(REPO), "-p", "no:cacheprovider", "-q",
        "--attn-variants", str(REPO / "examples" / "external_variant.py"),
        "--attn-only", "chunked-queries", "-k", "fp32 and (q17 or q113 or random)",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 8, result.stdout.str()[-3000:]
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]


def test_the_readmes_command_from_another_projects_folder_checks_its_variant(tmp_path):
    """README, "From your own repository": run from the project's folder, paths read from there."""
    (tmp_path / "attn").mkdir()
    shutil.copy(REPO / "examples" / "external_variant.py", tmp_path / "attn" / "my_variants.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "test_correctness" / "test_variants.py"), "-n", "1",
         "--attn-variants", "attn/my_variants.py", "--attn-only", "chunked-queries", "-k", "fp32 and q17",
         "-p", "no:cacheprovider", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1] and "failed" not in done.stdout.splitlines()[-1]
    assert not (tmp_path / ".pytest_cache").exists()


def test_broken_external_variant_fails_naming_variant_problem_and_check(pytester, tmp_path):
    bad = tmp_path / "bad_variant.py"
    bad.write_text(textwrap.dedent('''
        import torch
        from attnsuite import mask_mods
        from attnsuite.registry import KernelVariant, register

        @register
        class Inverted(KernelVariant):
            name = "inverted-mask"
            masks = frozenset({"none", "causal"})
            features = frozenset({"lq_ne_lk", "bottom_right", "gqa", "dv_ne_dqk", "custom_scale"})
            def build(self, problem):
                allowed = mask_mods.dense_bool_mask(problem)
                def run(q, k, v):
                    g = q.shape[1] // k.shape[1]
                    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
                    s = q @ k.transpose(-1, -2) * problem.softmax_scale
                    if allowed is not None:
                        s = s.masked_fill(allowed, -1e30)   # inverted: hides what should be seen
                    return torch.softmax(s, -1) @ v
                return run
    '''))
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"),
        "--rootdir", str(REPO), "-p", "no:cacheprovider", "-q",
        "--attn-variants", str(bad), "--attn-only", "inverted-mask", "-k", "causal and fp32 and q113",
    )
    text = result.stdout.str()
    assert result.parseoutcomes().get("failed", 0) >= 2, text[-3000:]
    assert "inverted-mask on b1-q113-h4:1-d48-causal-tl-fp32-cpu: forward FAILED" in text
    assert "future leak" in text


def test_unknown_only_name_is_a_usage_error(pytester):
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_inprocess(
        str(REPO / "test_correctness" / "test_variants.py"), "--rootdir", str(REPO),
        "-p", "no:cacheprovider", "--attn-only", "sdpa-flsh",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown variant 'sdpa-flsh'" in result.stderr.str() + result.stdout.str()
    # `attnsuite ab` reads this message to run a side without a name only the other side registers
    from attnsuite import ab
    found = ab._UNKNOWN_ONLY.search(result.stderr.str() + result.stdout.str())
    assert found and found.group(1) == "sdpa-flsh"


@pytest.mark.filterwarnings("ignore::attnsuite.registry.NothingRegistered")  # its modules only need to import
def test_a_spawned_process_loads_the_external_sources_still_imported_and_survives_a_bad_one(
        tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_EXTERNAL_SOURCES", [])
    good = tmp_path / "spawn_good.py"
    good.write_text("X = 1\n")
    gone = tmp_path / "spawn_gone.py"
    gone.write_text("X = 2\n")
    registry.load_external(str(good))
    registry.load_external(str(gone))
    monkeypatch.delitem(sys.modules, "attnsuite_external_spawn_good")  # unloaded again, as a test's clean-up does
    monkeypatch.delitem(sys.modules, "attnsuite_external_spawn_gone")
    registry.load_external(str(good))  # imported again: remembered once
    assert registry.external_sources() == [(str(good.resolve()), "attnsuite_external_spawn_good")]

    bad = tmp_path / "spawn_bad.py"
    bad.write_text("raise RuntimeError('not today')\n")
    monkeypatch.delitem(sys.modules, "attnsuite_external_spawn_good")
    errors = registry.load_like([(str(bad), "attnsuite_external_spawn_bad"),
                                 (str(good), "attnsuite_external_spawn_good")])
    assert len(errors) == 1 and "spawn_bad.py: RuntimeError: not today" in errors[0]
    assert "attnsuite_external_spawn_good" in sys.modules  # the bad one did not stop the rest
    monkeypatch.delitem(sys.modules, "attnsuite_external_spawn_good")


def test_a_variants_module_that_fails_to_load_is_named_with_where_it_was_named(tmp_path, monkeypatch):
    bad = tmp_path / "mine.py"
    bad.write_text("import nosuchmodule_xyz\n")
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    with pytest.raises(registry.VariantLoadError) as exc:
        registry.load_all([str(bad)])
    assert f"--attn-variants '{bad}': ModuleNotFoundError" in str(exc.value) and "nosuchmodule_xyz" in str(exc.value)


def test_a_variants_file_named_on_purpose_that_registers_nothing_is_an_error(tmp_path, monkeypatch):
    # the run had gone on with the built-ins and passed, a warning at its top the only sign
    empty = tmp_path / "forgot_register_named.py"
    empty.write_text("from attnsuite.registry import KernelVariant\n\nclass Mine(KernelVariant):\n    name = 'mine'\n")
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    with pytest.raises(registry.VariantLoadError, match=r"--attn-variants '.*forgot_register_named.py': registered "
                                                         r"no variant and no family \(is the register\(\) call"):
        registry.load_all([str(empty)])
    registry.load_all([str(empty)])  # already imported: loading it again is no error


def test_a_variant_module_that_registers_nothing_is_warned_about(tmp_path):
    empty = tmp_path / "forgot_register.py"
    empty.write_text("from attnsuite.registry import KernelVariant\n\nclass Mine(KernelVariant):\n    name = 'mine'\n")
    with pytest.warns(registry.NothingRegistered, match="forgot_register.py' registered no variant"):
        registry.load_external(str(empty))


@pytest.mark.parametrize("name, hint", [
    ("SDPA", "did you mean sdpa"),  # another case: difflib alone had found nothing close
    ("my-kernel-zz", "a variant of your own is registered by loading its file with --attn-variants PATH"),
])
def test_an_unknown_variant_name_gets_a_hint(name, hint):
    with pytest.raises(registry.UnknownVariantError) as info:
        registry.get(name)
    assert hint in str(info.value), str(info.value)


@pytest.mark.parametrize("backend, refused", [
    ("sdpa:flahs", "unknown SDPA backend 'flahs'; known: sdpa:cudnn, sdpa:default, sdpa:efficient, sdpa:flash, "
                   "sdpa:math, sdpa:overrideable"),
    ("sdpa:default+gqa", None), ("sdpa:flash", None), ("warp-drive", None), ("", None),
    (3, "backend is a name, as text, got 3"),
])
def test_a_declared_sdpa_backend_must_name_an_sdpa_kernel(monkeypatch, backend, refused):
    # the benchmarks compare an "sdpa:..." declaration with the kernel that ran: a misspelt one had been
    # accepted and mismatched on every case without a word (an outside tester's trial); other names are free
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Declared(registry.KernelVariant):
        name = "t-declared-backend"

        def build(self, problem):
            return None

    Declared.backend = backend
    if refused is None:
        registry.register(Declared)
    else:
        with pytest.raises(ValueError, match=re.escape(refused)):
            registry.register(Declared)
