"""A variant whose output breaks the contract (not a tensor, another shape) is told so in the contract's
words on every path: the forward, backward and causality checks and each benchmark mode (causality
also names a non-finite output as such).

The backward check and the bwd / fwd+bwd benchmarks had surfaced torch's own words instead
("'tuple' object has no attribute 'backward'", "Mismatch in shape: grad_output[0] ..."), and the
fwd benchmark "'tuple' object has no attribute 'detach'".
"""

from __future__ import annotations

import sys

import pytest
import torch

from attnsuite import checks, registry, runner, workloads
from attnsuite.problem import Mask, Problem

PROBLEM = Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")
registry.load_builtin()


class _Broken(type(registry.get("sdpa"))):
    """The built-in sdpa, with its output broken after the call."""

    how = ""

    def build(self, problem):
        run = super().build(problem)

        def broken(q, k, v):
            out = run(q, k, v)
            if self.how == "tuple":
                return out, None
            if self.how == "none":
                return None
            if self.how == "transposed":
                return out.transpose(-1, -2)
            if self.how == "nan":
                return torch.full_like(out, float("nan"))
            if self.how == "meta":
                return out.to("meta")
            return out[..., :-1, :]  # one query row short

        return broken


class ReturnsTuple(_Broken):
    name = "returns-a-tuple"
    how = "tuple"


class OneRowShort(_Broken):
    name = "one-row-short"
    how = "short"


class ReturnsNone(_Broken):
    name = "returns-none"
    how = "none"


class Transposed(_Broken):
    name = "returns-transposed"
    how = "transposed"


class AllNaN(_Broken):
    name = "returns-nan"
    how = "nan"


class OnMeta(_Broken):
    name = "returns-on-meta"
    how = "meta"


BROKEN = [pytest.param(ReturnsTuple(), "returned tuple, not a tensor", id="a tuple"),
          pytest.param(OneRowShort(), "output is (1, 2, 23, 16), the contract says (1, 2, 24, 16)",
                       id="one query row short"),
          # torch's words had been "invalid gradient at index 0 - expected device meta but got cpu"
          pytest.param(OnMeta(), "returns-on-meta: output on meta, the problem on cpu", id="on another device")]


@pytest.mark.parametrize("variant, words", BROKEN)
def test_the_backward_check_names_the_broken_output_contract(monkeypatch, variant, words):
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.check_backward(variant, PROBLEM)
    assert not result.passed and any(words in d for d in result.details), result.details


@pytest.mark.parametrize("variant, words", [pytest.param(ReturnsTuple(), "returned tuple, not a tensor", id="a tuple"),
                                            pytest.param(ReturnsNone(), "returned NoneType, not a tensor", id="None")])
def test_the_repeat_check_names_the_broken_output_contract(monkeypatch, variant, words):
    # a variant returning (out, lse), as flash-attn kernels do, had failed the repeat check with
    # "raised AttributeError: 'tuple' object has no attribute 'shape'" from inside checks.same_bits
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.check_repeat(variant, PROBLEM)
    assert not result.passed and any(words in d for d in result.details), result.details
    assert "raised" not in result.message, result.message


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("variant, words", [pytest.param(ReturnsTuple(), "returned tuple, not a tensor", id="a tuple"),
                                            pytest.param(OneRowShort(), ", the contract says ", id="a row short"),
                                            # fwd had been an error: torch's NotImplementedError from the
                                            # suite's own finiteness check on a meta tensor
                                            pytest.param(OnMeta(), "output on meta, the problem on cpu",
                                                         id="on another device")])
def test_each_benchmark_mode_records_the_broken_contract_as_numerics(monkeypatch, variant, words, mode):
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    entry = next(e.entry for e in workloads.expand("quick", "cpu", None, ("fa-sweep",)) if e.entry.family == "attention")
    bc = runner.BenchCase("fa-sweep", entry, entry.problem, variant.name, mode)
    settings = runner.settings_from_spec(runner.RunSpec(tier="quick", device="cpu"))
    rec, _ = runner.run_case(bc, settings)
    assert rec.outcome == "numerics" and words in rec.detail and variant.name in rec.detail, (rec.outcome, rec.detail)
    assert rec.extra["numerics_check"] == "contract"


@pytest.mark.parametrize("variant, words", BROKEN + [
    pytest.param(ReturnsNone(), "returned NoneType, not a tensor", id="None"),
    pytest.param(Transposed(), "output is (1, 2, 16, 24), the contract says (1, 2, 24, 16)", id="transposed"),
    pytest.param(AllNaN(), "non-finite output: 768 of 768 values in rows that attend to some key are NaN or Inf",
                 id="NaN"),
])
def test_the_causality_check_names_a_broken_output_before_comparing(monkeypatch, variant, words):
    # it had read "future leak" then an IndexError (transposed), an AttributeError (None, a tuple), and
    # "the perturbation was ignored" (NaN)
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.check_causality(variant, PROBLEM)
    assert not result.passed and any(words in d for d in result.details), result.details
    assert "causality not judged" in result.message, result.message
    for misleading in ("future leak", "raised", "ignores keys it must attend to"):
        assert misleading not in result.message, result.message


def _traceback_through_a_library(tmp_path, monkeypatch, lib_module: str, lib_code: str, folder: str,
                                 mine_module: str, mine_code: str) -> str:
    """checks.traceback_text of the error ``mine_module.launch()`` raises, where ``triton.<lib_module>``
    is a stand-in library under a site folder (so its frames count as a library's) and the user's
    module sits in ``folder``."""
    import importlib

    from attnsuite import checks

    lib = tmp_path / "site" / "triton"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / f"{lib_module}.py").write_text(lib_code)
    mine_dir = tmp_path / folder
    mine_dir.mkdir()
    (mine_dir / f"{mine_module}.py").write_text(mine_code)
    monkeypatch.syspath_prepend(str(mine_dir))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.delitem(sys.modules, f"triton.{lib_module}", raising=False)
    try:
        importlib.import_module(mine_module).launch()
    except Exception as exc:
        return checks.traceback_text(exc)
    raise AssertionError("launch() raised nothing")


def test_a_variant_that_raises_deep_inside_a_library_is_shown_at_its_own_line(tmp_path, monkeypatch):
    # an error raised deep in Triton's interpreter had shown only Triton's frames (limit=-3), never the
    # kernel line that caused it; the user's code sits in a folder named like the suite (a clone called
    # "attnsuite"): still their own
    text = _traceback_through_a_library(
        tmp_path, monkeypatch, "deep",
        "def a():\n    b()\n\ndef b():\n    c()\n\ndef c():\n    d()\n\n"
        "def d():\n    raise AssertionError('input and other must have equal reduction dims')\n",
        "attnsuite", "my_kernel", "from triton import deep\n\n\ndef launch():\n    deep.a()  # the user's line\n")
    assert "my_kernel.py" in text and "deep.a()  # the user's line" in text, text
    assert "in d" in text and "equal reduction dims" in text  # the innermost frames are kept too
    assert text.startswith("Traceback (the variant's last own frame, then the innermost frames):"), text


def test_an_error_a_library_re_raised_from_the_kernels_own_shows_the_kernels_line(tmp_path, monkeypatch):
    # Triton's interpreter re-raises a kernel's error as `InterpreterError(repr(e)) from e`: the kernel's
    # line is only in the cause's frames, and the failure had shown the launch line and Triton's frames
    text = _traceback_through_a_library(
        tmp_path, monkeypatch, "interp",
        "class InterpreterError(Exception):\n    pass\n\n"
        "def run(kernel):\n    try:\n        kernel()\n    except Exception as e:\n"
        "        raise InterpreterError(repr(e)) from e\n",
        "mine", "my_triton",
        "from triton import interp\n\n\ndef fwd():\n    acc = 0\n    acc = not_a_function(acc)  # the kernel's line\n\n\n"
        "def launch():\n    interp.run(fwd)  # the launch line\n")
    assert "acc = not_a_function(acc)  # the kernel's line" in text, text
    assert "interp.run(fwd)  # the launch line" in text  # and where it was launched
    assert text.index("the kernel's line") < text.index("the launch line")
    assert text.rstrip().endswith("InterpreterError: NameError(\"name 'not_a_function' is not defined\")"), text


def test_a_traceback_whose_raising_line_is_among_the_innermost_frames_says_so_in_its_header():
    # the header had promised "the variant's last own frame" first, above the suite's frames
    from attnsuite import checks

    def a():
        b()

    def b():
        raise ValueError("bad tile size 17")
    try:
        a()
    except ValueError as exc:
        text = checks.traceback_text(exc)
    assert text.startswith("Traceback (the innermost 3 frames, the last where it was raised):"), text
    assert text.rstrip().endswith("ValueError: bad tile size 17") and "in b" in text


class _FirstKeyOnly(type(registry.get("sdpa"))):
    """Every row reads the first key's value only: the keys a row must attend to change nothing."""

    name = "test-first-key-only"

    def build(self, problem):
        def first(q, k, v):
            g = q.shape[1] // v.shape[1]
            return v[:, :, :1].repeat_interleave(g, dim=1).expand(-1, -1, q.shape[2], -1).clone()
        return first


def test_a_variant_that_ignores_keys_it_must_see_is_named_as_the_one_at_fault(monkeypatch):
    # "rows that see keys >= N did not change at all: the perturbation was ignored" had read as the check's fault
    variant = _FirstKeyOnly()
    monkeypatch.setitem(registry._REGISTRY, variant.name, variant)
    result = checks.check_causality(variant, Problem(batch=1, lq=16, lk=16, hq=2, hkv=2, dqk=8, dv=8,
                                                     mask=Mask("causal"), dtype="float32"))
    assert not result.passed
    assert any(d.startswith("test-first-key-only ignores keys it must attend to: changing keys/tokens >= ")
               for d in result.details), result.details
