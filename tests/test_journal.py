"""The run journal (attnsuite/journal.py): what a kill, a resume and a fresh run do to the file.

A journal holds hours of finished GPU cases: a torn last line must cost only that case, and a fresh
run started on the same path must not overwrite an unfinished run's cases unseen.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from attnsuite import journal

SPEC = {"tier": "quick", "device": "cpu"}


def _entry(key: str) -> dict:
    return {"record": {"case": key, "outcome": "ok"}, "samples": [1.0], "timer": "perf_counter", "warmup": 1}


def _write(path, keys) -> None:
    j = journal.Journal(path, SPEC, "fp", resume=False)
    for k in keys:
        j.append(k, _entry(k))
    j.close()


def test_a_resumed_journal_cuts_a_torn_last_line_so_the_next_case_is_readable(tmp_path):
    path = tmp_path / "run.journal.jsonl"
    _write(path, ["w/a/fwd/p"])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "w/b/fwd/p", "rec')  # killed mid-write
    j = journal.Journal(path, SPEC, "fp", resume=True)
    j.append("w/c/fwd/p", _entry("w/c/fwd/p"))
    j.close()
    assert set(journal.read(path, SPEC, "fp")) == {"w/a/fwd/p", "w/c/fwd/p"}
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_fresh_run_keeps_an_unfinished_runs_journal_aside_instead_of_overwriting_it(tmp_path):
    path = tmp_path / "run.journal.jsonl"
    _write(path, ["w/a/fwd/p", "w/b/fwd/p"])
    j = journal.Journal(path, SPEC, "fp", resume=False)
    j.close()
    assert j.kept_previous == tmp_path / "run.journal.jsonl.prev"
    assert set(journal.read(j.kept_previous, SPEC, "fp")) == {"w/a/fwd/p", "w/b/fwd/p"}
    assert journal.read(path, SPEC, "fp") == {}


def test_a_second_fresh_run_keeps_another_unfinished_journal_beside_the_first_kept_one(tmp_path):
    # the second had replaced the first kept journal, and every case it held was lost
    path = tmp_path / "run.journal.jsonl"
    _write(path, ["w/a/fwd/p", "w/b/fwd/p"])
    journal.Journal(path, SPEC, "fp", resume=False).close()
    _write(path, ["w/c/fwd/p"])
    second = journal.Journal(path, SPEC, "fp", resume=False)
    second.close()
    assert second.kept_previous == tmp_path / "run.journal.jsonl.prev2"
    assert set(journal.read(tmp_path / "run.journal.jsonl.prev", SPEC, "fp")) == {"w/a/fwd/p", "w/b/fwd/p"}
    assert set(journal.read(second.kept_previous, SPEC, "fp")) == {"w/c/fwd/p"}
    assert journal.kept_paths(path) == [tmp_path / "run.journal.jsonl.prev", second.kept_previous]
    path.unlink()
    with pytest.raises(journal.JournalError, match=r"was kept as .*run\.journal\.jsonl\.prev2 when"):
        journal.read(path, SPEC, "fp")  # the resume hint names the latest kept one


def test_a_journal_with_no_finished_case_is_simply_started_over(tmp_path):
    path = tmp_path / "run.journal.jsonl"
    _write(path, [])
    j = journal.Journal(path, SPEC, "fp", resume=False)
    j.close()
    assert j.kept_previous is None and not journal.previous_path(path).exists()


@pytest.mark.parametrize("content", ["my precious notes\n", '{"not": "a journal"}\n'], ids=["text", "other JSON"])
def test_a_file_of_the_users_by_the_journals_name_is_kept_aside_not_overwritten(tmp_path, content):
    # a fresh run had written its journal over it without a word (an output-folder trial)
    path = tmp_path / "bench.json.journal.jsonl"
    path.write_text(content)
    j = journal.Journal(path, SPEC, "fp", resume=False)
    j.close()
    assert j.kept_what == journal.NO_JOURNAL and j.kept_previous.read_text() == content
    assert journal.read(path, SPEC, "fp") == {}


def test_a_resume_with_other_options_names_the_field_that_differs_not_both_whole_specs(tmp_path):
    path = tmp_path / "run.journal.jsonl"
    _write(path, ["w/a/fwd/p"])
    try:
        journal.read(path, {"tier": "quick", "device": "cuda"}, "fp")
    except journal.JournalError as exc:
        text = str(exc)
    assert "device: the journal's 'cpu', this run's 'cuda'" in text and "tier" not in text, text


def test_a_resume_after_the_variant_file_changed_is_refused_naming_it(tmp_path):
    # resuming had mixed the finished cases of the old code with new cases of the edited code
    kernel = tmp_path / "mine.py"
    kernel.write_text("SCALE = 1.0\n")
    path = tmp_path / "run.journal.jsonl"
    j = journal.Journal(path, SPEC, "fp", sources=journal.source_digests([str(kernel)]))
    j.append("w/a/fwd/p", _entry("w/a/fwd/p"))
    j.close()
    assert set(journal.read(path, SPEC, "fp", journal.source_digests([str(kernel)]))) == {"w/a/fwd/p"}
    kernel.write_text("SCALE = 1.01\n")
    try:
        journal.read(path, SPEC, "fp", journal.source_digests([str(kernel)]))
        raise AssertionError("a changed variant file was not noticed")
    except journal.JournalError as exc:
        assert f"{kernel} changed since the interrupted run" in str(exc), exc
    # a journal written before digests were kept is read as before
    _write(path, ["w/a/fwd/p"])
    assert set(journal.read(path, SPEC, "fp", journal.source_digests([str(kernel)]))) == {"w/a/fwd/p"}


def test_source_digests_follow_content_and_leave_unknown_names_unchecked(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    first = journal.source_digests([str(pkg), "no_such_module_anywhere", "json"])
    assert first["no_such_module_anywhere"] == "" and first["json"] and first[str(pkg)]
    (pkg / "__init__.py").write_text("x = 2\n")
    assert journal.source_digests([str(pkg)])[str(pkg)] != first[str(pkg)]


def test_code_locations_cover_a_variant_packages_helpers_and_a_lone_modules_file(tmp_path, monkeypatch):
    # a resume had reused results after an entry-point module (not named by any option) or a helper it
    # imports changed: the digest covered only the files options named
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "variants.py").write_text("from . import common\n")
    (pkg / "common.py").write_text("SCALE = 1.0\n")
    (tmp_path / "lone_variants.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("my_pkg.variants", "lone_variants"):
        importlib.import_module(name)
        monkeypatch.delitem(sys.modules, name)  # re-added below; keeps later tests' imports fresh
        importlib.import_module(name)
    where = journal.code_locations(["my_pkg.variants", "lone_variants", "never_imported_module"])
    assert where == [str(pkg), str(tmp_path / "lone_variants.py")]
    before = journal.source_digests(where)
    (pkg / "common.py").write_text("SCALE = 2.0\n")  # only the helper changes
    assert journal.source_digests(where)[str(pkg)] != before[str(pkg)]


def _imported_package(tmp_path, monkeypatch, name: str, module: str) -> Path:
    """A package ``name`` importing its ``module`` (``S = 1``), imported for the test and forgotten after it."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"from . import {module}\n")
    (pkg / f"{module}.py").write_text("S = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in (name, f"{name}.{module}"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    importlib.import_module(name)
    for mod in (name, f"{name}.{module}"):
        monkeypatch.setitem(sys.modules, mod, sys.modules[mod])  # taken out again after the test
    return pkg


def test_a_package_named_by_module_name_is_digested_whole(tmp_path, monkeypatch):
    # ATTNSUITE_VARIANTS=mypkg had digested mypkg/__init__.py alone: an edited submodule resumed
    pkg = _imported_package(tmp_path, monkeypatch, "named_pkg", "kernel")
    before = journal.source_digests(["named_pkg"])["named_pkg"]
    (pkg / "kernel.py").write_text("S = 2\n")
    assert before and journal.source_digests(["named_pkg"])["named_pkg"] != before


def test_a_helper_imported_beside_a_variant_file_is_digested_and_unrelated_code_is_not(tmp_path, monkeypatch):
    # a variant file doing "from helpers import K" resumed after helpers.py changed: two versions of its
    # results in one file. Beside it: what it imported from its folder (or below), not the whole folder,
    # and never the Python installation (an imported json module, say)
    from attnsuite import plugin_bench, registry

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "deep.py").write_text("D = 1\n")
    (tmp_path / "helpers_beside.py").write_text("K = 1.0\n")
    (tmp_path / "not_imported.py").write_text("N = 1\n")
    (tmp_path / "my_variant_file.py").write_text("import json\nfrom helpers_beside import K\nfrom sub import deep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("helpers_beside", "sub", "sub.deep", "my_variant_file"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.import_module("my_variant_file")
    for name in ("helpers_beside", "sub", "sub.deep", "my_variant_file"):
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # taken out again after the test
    beside = journal.code_beside(["my_variant_file"])
    assert beside == sorted(str((tmp_path / f).resolve()) for f in
                            ("helpers_beside.py", "my_variant_file.py", "sub/__init__.py", "sub/deep.py"))
    monkeypatch.setattr(registry, "entry_point_modules", lambda: [])
    monkeypatch.setattr(registry, "external_sources", lambda: [(str(tmp_path / "my_variant_file.py"), "my_variant_file")])
    spec = plugin_bench.RunSpec(device="cpu", tier="quick")
    before = plugin_bench._sources(spec)
    (tmp_path / "not_imported.py").write_text("N = 2\n")  # not imported: no part of the run
    assert journal.changed_sources(before, plugin_bench._sources(spec)) == []
    (tmp_path / "helpers_beside.py").write_text("K = 3.0\n")
    assert journal.changed_sources(before, plugin_bench._sources(spec)) == [str((tmp_path / "helpers_beside.py").resolve())]


def test_a_module_named_variant_source_is_digested_with_its_package(tmp_path, monkeypatch):
    # ATTNSUITE_VARIANTS=mypkg is remembered as ("mypkg", None): its name had been left out of the digest
    from attnsuite import plugin_bench, registry

    pkg = _imported_package(tmp_path, monkeypatch, "envpkg", "impl")
    monkeypatch.setattr(registry, "entry_point_modules", lambda: [])
    monkeypatch.setattr(registry, "external_sources", lambda: [("envpkg", None)])
    spec = plugin_bench.RunSpec(device="cpu", tier="quick")
    before = plugin_bench._sources(spec)
    (pkg / "impl.py").write_text("S = 2\n")
    assert str(pkg) in journal.changed_sources(before, plugin_bench._sources(spec))


def test_the_run_digests_every_module_that_registered_variants_from_outside(monkeypatch):
    from attnsuite import plugin_bench, registry

    monkeypatch.setattr(registry, "entry_point_modules", lambda: ["json"])
    monkeypatch.setattr(registry, "external_sources", lambda: [("x.py", "csv")])
    got = plugin_bench._sources(plugin_bench.RunSpec(device="cpu", tier="quick"))
    suite = str(Path(plugin_bench.__file__).parent)  # the suite's own package is always digested
    assert set(got) == {suite, str(Path(json.__file__).parent), sys.modules["csv"].__file__}
    assert all(got.values())


def test_the_sources_a_run_names_agree_however_they_were_named_and_include_the_variable(tmp_path, monkeypatch):
    from attnsuite import registry

    (tmp_path / "k").mkdir()
    kernel = tmp_path / "k" / "mine.py"
    kernel.write_text("")
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    monkeypatch.chdir(tmp_path)
    relative = registry.named_sources(["k/mine.py", "my_pkg.kernels"])
    monkeypatch.chdir(tmp_path / "k")
    # the same files named from another folder, absolute: one resume must accept the other
    assert registry.named_sources([str(kernel), "my_pkg.kernels"]) == relative == (str(kernel), "my_pkg.kernels")
    # code named through the variable is part of what a run names: other code there is another run
    monkeypatch.setenv("ATTNSUITE_VARIANTS", "mine.py")
    assert registry.named_sources([]) == (str(kernel),)
    monkeypatch.setenv("ATTNSUITE_VARIANTS", str(tmp_path / "v2" / "mine.py"))
    assert registry.named_sources([]) != (str(kernel),)


@pytest.mark.parametrize("before, now, words", [
    (30.0, 60.0, "written by a run with --attn-timeout 30, this run has --attn-timeout 60"),
    (None, 5.0, "written by a run with no --attn-timeout, this run has --attn-timeout 5"),
], ids=["longer-limit", "limit-added"])
def test_a_resume_with_another_case_time_limit_is_refused_naming_both(tmp_path, before, now, words):
    # the resumed run had kept the first run's timeouts under a limit it no longer had
    path = tmp_path / "run.journal.jsonl"
    j = journal.Journal(path, SPEC, "fp", case_timeout=before)
    j.append("w/a/fwd/p", _entry("w/a/fwd/p"))
    j.close()
    assert set(journal.read(path, SPEC, "fp", case_timeout=before)) == {"w/a/fwd/p"}
    with pytest.raises(journal.JournalError, match=words):
        journal.read(path, SPEC, "fp", case_timeout=now)


def test_a_run_digests_the_suites_own_package_so_a_resume_after_it_changed_is_refused():
    # a resume had mixed records timed by two versions of attnsuite/timing.py in one file
    from types import SimpleNamespace

    import attnsuite
    from attnsuite import plugin_bench

    folder = str(Path(attnsuite.__file__).parent)
    sources = plugin_bench._sources(SimpleNamespace(variant_modules=(), problem_files=()))
    assert sources.get(folder), sources
    changed = dict(sources, **{folder: "0" * 16})
    assert journal.changed_sources(sources, changed) == [folder]


def test_a_compiled_extension_beside_a_variant_file_is_part_of_its_code(tmp_path, monkeypatch):
    # a resumed run had accepted a variant whose C extension beside it was rebuilt to compute something
    # else (an outside tester's trial): only .py files were digested
    import importlib.machinery
    import types

    from attnsuite import plugin_bench, registry

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so
    ext = tmp_path / f"fastscale{suffix}"
    ext.write_bytes(b"\x7fELF built with SCALE=1.0")
    (tmp_path / "cvar.py").write_text("import fastscale\n")
    for name, file in (("fastscale", ext), ("cvar", tmp_path / "cvar.py")):
        mod = types.ModuleType(name)
        mod.__file__ = str(file)
        monkeypatch.setitem(sys.modules, name, mod)
    assert journal.is_code_file(ext) and journal.is_code_file("x.py") and not journal.is_code_file("notes.txt")
    assert str(ext.resolve()) in journal.code_beside(["cvar"])
    monkeypatch.setattr(registry, "entry_point_modules", lambda: [])
    monkeypatch.setattr(registry, "external_sources", lambda: [(str(tmp_path / "cvar.py"), "cvar")])
    spec = plugin_bench.RunSpec(device="cpu", tier="quick")
    before = plugin_bench._sources(spec)
    ext.write_bytes(b"\x7fELF built with SCALE=2.0")
    assert journal.changed_sources(before, plugin_bench._sources(spec)) == [str(ext.resolve())]


def test_a_package_folder_digest_covers_its_compiled_extensions(tmp_path):
    import importlib.machinery

    pkg = tmp_path / "kpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    lib = pkg / f"_kernels{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    lib.write_bytes(b"v1")
    (pkg / "README.txt").write_text("not code")
    before = journal.source_digests([str(pkg)])
    (pkg / "README.txt").write_text("edited, still not code")
    assert journal.source_digests([str(pkg)]) == before
    lib.write_bytes(b"v2")
    assert journal.source_digests([str(pkg)]) != before
