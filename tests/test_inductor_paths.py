"""A checkout under a folder with a space: Inductor's CPU build splits the path, and the suite says why.

The compile error alone ("C++ compile error", then a g++ command line) kept its cause ("cannot find
-ltorch") past what a record holds (a trial in such a folder).
"""

from __future__ import annotations

import pytest

from attnsuite import inductor_paths

COMPILE_ERROR = "InductorError: CppCompileError: C++ compile error\n\nCommand:\ng++ x.cpp -L/a b/torch/lib"


@pytest.fixture
def clean_paths(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    if inductor_paths.spaced_build_path() is not None:
        pytest.skip("this machine's torch or Python lies under a path with a space")


def test_a_build_folder_with_a_space_is_named_and_leads_a_compile_errors_text(clean_paths, monkeypatch):
    assert inductor_paths.spaced_build_path() is None
    assert inductor_paths.explain_compile_error(COMPILE_ERROR) == COMPILE_ERROR
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/my caches/inductor")
    assert inductor_paths.spaced_build_path() == "/tmp/my caches/inductor"
    explained = inductor_paths.explain_compile_error(COMPILE_ERROR)
    assert explained == (f"'/tmp/my caches/inductor' holds a space, and Inductor's C++ build (torch.compile on the CPU) "
                         "passes it to the compiler unquoted, so the build fails: move the checkout (or its .venv, or "
                         "TORCHINDUCTOR_CACHE_DIR, or TMPDIR where Inductor's cache lies) to a path without spaces. "
                         f"{COMPILE_ERROR}")


def test_a_temporary_folder_with_a_space_is_named_as_inductors_default_cache(clean_paths, monkeypatch, tmp_path):
    # Inductor's cache defaults to a folder under TMPDIR: a spaced TMPDIR had failed every compiled variant
    # on the CPU ("g++: fatal error: input file '/tmp/my' is the same as output file") without a word why
    import tempfile

    spaced = tmp_path / "my tmp"
    spaced.mkdir()  # gettempdir() passes over a TMPDIR that does not exist
    monkeypatch.setenv("TMPDIR", str(spaced))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    folder = inductor_paths.spaced_build_path()
    assert folder is not None and folder.startswith(f"{spaced}/torchinductor_"), folder
    assert "TMPDIR" in inductor_paths.advice(folder)


def test_another_error_is_left_as_it_is_even_under_a_folder_with_a_space(clean_paths, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/my caches/inductor")
    assert inductor_paths.explain_compile_error("RuntimeError: boom") == "RuntimeError: boom"


def test_a_benchmark_record_of_such_a_compile_error_leads_with_the_cause(clean_paths, monkeypatch):
    from attnsuite import registry, runner, workloads

    class CppCompileError(RuntimeError):  # what Inductor raises, by name
        pass

    registry.load_builtin()

    class Failing(type(registry.get("sdpa"))):
        name = "t-cpp-compile-error"

        def build(self, problem):
            def run(q, k, v):
                raise CppCompileError("C++ compile error\n\nCommand:\ng++ -L/a b/torch/lib")
            return run

    variant = Failing()
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/my caches/inductor")
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("fa-sweep",)) if e.entry.family == "attention")
    bc = runner.BenchCase("fa-sweep", entry, entry.problem, variant.name, "fwd")
    rec, _ = runner.run_case(bc, runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu")))
    assert rec.outcome == "error" and rec.detail.startswith("'/tmp/my caches/inductor' holds a space"), rec.detail
    assert "CppCompileError: C++ compile error" in rec.detail
