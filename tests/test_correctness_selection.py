"""The correctness suite checks what ``--attn-only`` selects, and nothing else, in every module.

Found: the distributed checks ran every distributed variant whatever was selected, and selecting a
distributed variant alone stopped collection with a usage error from the single-process checks
(they had nothing to check). Collection only: these tests run no check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from suiterun import once_per_session

ROOT = Path(__file__).resolve().parents[1]
# ids of variant-parametrised checks: "<variant>@<problem>" or "<variant>[P=<n>]@<problem>-<check>"
VARIANT_ID = re.compile(r"\[(?P<variant>[A-Za-z0-9_.+-]+?)(?:\[P=\d+\])?@")


def _collect_run(only: tuple[str, ...], extra: tuple[str, ...]) -> list:
    args = [a for name in only for a in ("--attn-only", name)]
    done = subprocess.run([sys.executable, "-m", "pytest", "test_correctness", "--co", "-q", "-p", "no:cacheprovider",
                           "-n", "0", *extra, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    return [done.returncode, ids]


@pytest.fixture
def collect(tmp_path_factory, request):
    """``collect(*only, extra=...)``: (exit status, collected ids) of the correctness suite's ``pytest
    --co`` with ``--attn-only`` for each of ``only``. Several tests read the same selection's
    collection (a fresh process, 6-9 s on 2 cores; an lru_cache had made it once per xdist worker):
    each is made once per session."""
    def run(*only: str, extra: tuple[str, ...] = ()) -> tuple[int, list[str]]:
        key = hashlib.sha1(json.dumps([only, extra]).encode()).hexdigest()[:16]
        code, ids = once_per_session(tmp_path_factory, request.config, f"corrsel-collect-{key}",
                                     lambda: _collect_run(only, extra))
        return code, ids
    return run


def test_an_external_variant_alone_collects_only_its_own_checks_not_the_built_in_kernels_tests(collect):
    # "--attn-only my-kernel" had also run ~300 tests of built-in kernels (ring, Triton, decoding,
    # dropout, MLA, ...): a run where every test of my-kernel was skipped still read "284 passed"
    code, ids = collect("chunked-queries", extra=("--attn-variants", "examples/external_variant.py"))
    assert code == 0 and ids
    # kept besides its own: the tests that run the selection themselves (attn_selection: a layer
    # family's variants, skipped naming the selection when it holds none of the family)
    own_selection = ("test_each_dense_layer_family_has_at_least_three_variants", "test_every_variant_of_a_layer_family",
                     "test_every_variant_loads_the_canonical_weights_exactly",
                     "test_eager_layer_variants_match_the_oracle_on_drawn_shapes")
    others = [i for i in ids if "chunked-queries" not in i and "nothing-selected" not in i
              and not any(name in i for name in own_selection)]
    assert not others, f"--attn-only chunked-queries also collected {others[:5]}"


@pytest.mark.parametrize("only, module", [("triton-flash", "test_triton_bwd.py"), ("ring-sim", "test_ring.py"),
                                          ("kvcache-sdpa", "test_decode.py"), ("explicit-dropout", "test_dropout.py")])
def test_a_built_in_kernels_own_tests_stay_when_it_is_selected(collect, only, module):
    code, ids = collect(only)
    assert code == 0 and any(i.startswith(f"test_correctness/{module}::") for i in ids), (only, module)


@pytest.mark.parametrize("only", [("triton-flash",), ("ring-zigzag",), ("sdpa", "ring")])
def test_every_variant_parametrised_check_collects_only_the_selected_variants(collect, only):
    code, ids = collect(*only)
    assert code == 0, f"collection with --attn-only {' '.join(only)} exited {code}"
    seen = {m.group("variant") for i in ids for m in [VARIANT_ID.search(i)] if m}
    assert seen, "no variant-parametrised check collected"
    assert seen <= set(only), f"--attn-only {' '.join(only)} also collected {sorted(seen - set(only))}"


def test_a_selection_with_nothing_for_a_check_module_is_reported_as_a_skip_there_not_an_error(collect):
    code, ids = collect("ring-zigzag")  # distributed only: the single-process checks have nothing
    assert code == 0
    single = [i for i in ids if i.startswith("test_correctness/test_variants.py::test_forward_matches_oracle")]
    assert single == ["test_correctness/test_variants.py::test_forward_matches_oracle[nothing-selected]"]
    code, ids = collect("triton-flash")  # no distributed variant selected
    dist = [i for i in ids if "test_distributed_variant_on_P_ranks" in i]
    assert dist == ["test_correctness/test_distributed.py::"
                    "test_distributed_variant_on_P_ranks_passes_the_check[nothing-selected]"]


def test_a_comma_separated_selection_selects_what_the_repeated_option_does(collect):
    # ATTNSUITE_VARIANTS takes "a,b"; --attn-only "a,b" had been refused as one unknown name
    assert collect("sdpa,ring") == collect("sdpa", "ring")


@pytest.mark.parametrize("value", ["", ",", " "], ids=["empty", "comma", "space"])
def test_an_empty_selection_is_a_usage_error_not_every_variant(pytester, monkeypatch, value):
    # `--attn-only=$UNSET` had selected every variant: a run of everything where one was meant. The
    # plugin refuses it while it configures, before anything is collected, so each spelling is checked
    # in this process (a fresh one costs 6-20 s); the test below runs the correctness suite itself once
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    res = pytester.runpytest_inprocess("--co", "-q", "-p", "no:cacheprovider", f"--attn-only={value}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()[-1000:]
    err = res.stderr.str()
    assert f"attnsuite: --attn-only: {value!r} names no variant" in err, err[-1000:]


def test_an_empty_selection_of_the_correctness_suite_exits_as_a_usage_error_saying_why():
    done = subprocess.run([sys.executable, "-m", "pytest", "test_correctness/test_variants.py", "--co", "-q",
                           "-p", "no:cacheprovider", "-n", "0", "--attn-only="],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-1000:]
    assert "--attn-only: " in done.stderr and "names no variant" in done.stderr, done.stderr[-1000:]


@pytest.mark.parametrize("workers", [
    pytest.param(("-p", "no:xdist"), id="one process"),
    # under xdist the workers deselect and the controller had said nothing at all (the CI command uses -n)
    pytest.param(("-n", "1"), id="under xdist"),
])
def test_a_k_that_matches_no_correctness_test_says_nothing_was_checked(tmp_path, workers):
    # pytest alone printed "7921 deselected" and exited 5 (an external variant not loaded, a typo)
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_mla.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", *workers, "-q", "-k", "my-kernel"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 5, done.stdout[-2000:]
    assert "attnsuite: -k 'my-kernel' left none of the" in done.stdout and \
        "collected tests: nothing was checked (exit status 5)" in done.stdout, done.stdout[-2000:]


SEGFAULT_AT_COLLECTION = """
import ctypes
from attnsuite.registry import KernelVariant, register


@register
class CrashesWhenAsked(KernelVariant):
    name = "x-collect-segv"

    def extra_reasons(self, problem, backward):
        ctypes.string_at(0)  # read address 0: SIGSEGV, in the collecting process
        return []

    def build(self, problem):
        raise AssertionError("never built")
"""


def test_workers_that_die_while_collecting_fail_the_run_saying_so_not_blaming_the_selection(tmp_path):
    # the run had said "--attn-only x-collect-segv left none of the collected tests" and exited 5
    variant = tmp_path / "collect_segv.py"
    variant.write_text(SEGFAULT_AT_COLLECTION)
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_variants.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-n", "1", "--max-worker-restart=0", "-q",
                           f"--attn-variants={variant}", "--attn-only=x-collect-segv"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout[-2000:]
    assert "attnsuite: pytest-xdist worker(s) gw0 died while collecting the tests" in done.stdout, done.stdout[-2000:]
    assert "left none of the" not in done.stdout, done.stdout[-2000:]


def test_a_variant_named_in_attn_only_whose_every_test_skipped_fails_the_run_naming_it(tmp_path):
    # a CUDA-only variant run on CPU: 316 skipped, exit 0, and not a word that nothing was checked; then
    # a word, and still exit 0: a kernel's CI on the wrong runner read green
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_variants.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                           # the unmasked problems only: a few of explicit's tests run, as many as needed
                           "--attn-only=sdpa-cudnn", "--attn-only=explicit", "-k", "test_forward and fp32 and nomask"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "400"})  # pytest's summary lines uncut
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout[-2000:]
    line = next((l for l in done.stdout.splitlines() if l.startswith("attnsuite: variant sdpa-cudnn: none of its")),
                None)
    assert line is not None and "tests ran here, every one was skipped (e.g. " in line, done.stdout[-2000:]
    assert line.endswith("): nothing of it was checked; --attn-only named it, so the run fails")
    assert "attnsuite-selection::sdpa-cudnn - --attn-only sdpa-cudnn: none of its" in done.stdout, done.stdout[-2000:]
    assert "attnsuite: variant explicit:" not in done.stdout  # its tests ran
    assert "attnsuite-selection::explicit" not in done.stdout


@pytest.mark.parametrize("dtype, ran", [("float16", False), ("float64", True)])
def test_the_drawn_problems_keep_to_attn_dtype(tmp_path, dtype, ran):
    # the property test drew float32/float64 whatever --attn-dtype said: a float16 run of a variant without
    # float16 had passed on a float32 draw, with nothing checked in float16 (an outside tester's trial)
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_hypothesis.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs",
                           "--attn-only=explicit", f"--attn-dtype={dtype}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "400"})
    if ran:
        assert done.returncode == pytest.ExitCode.OK and "1 passed" in done.stdout, done.stdout[-2000:]
    else:
        assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout[-2000:]
        assert f"--attn-dtype {dtype}: the drawn problems are float32 and float64" in done.stdout, done.stdout[-2000:]
        assert "attnsuite: variant explicit: none of its 1 tests ran here" in done.stdout, done.stdout[-2000:]


def test_a_variant_only_loaded_from_outside_whose_every_test_skipped_is_named_and_does_not_fail_the_run(tmp_path):
    # a file may carry CUDA-only variants beside the ones a CPU runner checks: named, not failed
    variant = tmp_path / "cuda_only.py"
    variant.write_text(
        "from attnsuite.registry import KernelVariant, register\n"
        "import torch\n\n\n"
        "@register\nclass CudaOnly(KernelVariant):\n    name = 'x-cuda-only'\n    devices = frozenset({'cuda'})\n\n"
        "    def build(self, problem):\n        return lambda q, k, v: q\n")
    # -k "explicit" also matches its relatives (explicit-dropout, kvcache-explicit, compiled-explicit, ...):
    # the unmasked problems and no compiling keep the tests that run and pass beside it to a few dozen
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_variants.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                           f"--attn-variants={variant}",
                           "-k", "test_forward and fp32 and nomask and (x-cuda-only or explicit) and not compiled"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == pytest.ExitCode.OK, done.stdout[-2000:]
    line = next((l for l in done.stdout.splitlines() if l.startswith("attnsuite: variant x-cuda-only: none of its")),
                None)
    assert line is not None and line.endswith("): nothing of it was checked"), done.stdout[-2000:]


def _report(nodeid: str, outcome: str, when: str, reason: str = "") -> pytest.TestReport:
    longrepr = ("x.py", 1, f"Skipped: {reason}") if outcome == "skipped" else None
    return pytest.TestReport(nodeid, ("x.py", 1, "t"), {}, outcome, longrepr, when)


def test_a_variant_whose_one_test_crashed_is_not_called_wholly_skipped():
    from attnsuite.plugin import SkippedWholly

    watched = SkippedWholly({"crasher", "idle"})
    watched.pytest_runtest_logreport(_report("t.py::test_a[crasher@p1]", "failed", "???"))  # xdist's crash report
    long_reason = "variant crasher took the test process down " + "and more words " * 30
    for i in range(3):
        watched.pytest_runtest_logreport(_report(f"t.py::test_b[crasher@p{i}]", "skipped", "setup", long_reason))
        watched.pytest_runtest_logreport(_report(f"t.py::test_b[idle@p{i}]", "skipped", "setup", long_reason))
    lines = watched.lines()
    assert len(lines) == 1 and lines[0].startswith("attnsuite: variant idle: none of its 3 tests ran here")
    # the example reason is cut at a word, and says it was cut
    example = lines[0].split("(e.g. ", 1)[1].rsplit("): nothing", 1)[0]
    assert example.endswith(" ...") and len(example) <= 200
    cut = example.removesuffix(" ...")
    assert long_reason.startswith(cut) and long_reason[len(cut)] == " "


def test_an_unknown_hypothesis_profile_is_a_usage_error_naming_the_ones_there_are(tmp_path):
    # it had been an ImportError traceback of the correctness conftest
    env = {**os.environ, "HYPOTHESIS_PROFILE": "bogus"}
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "test_correctness" / "test_hypothesis.py"),
                           f"--rootdir={ROOT}", "-p", "no:cacheprovider", "-p", "no:xdist", "--co", "-q"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert "HYPOTHESIS_PROFILE='bogus': no such hypothesis profile here (this suite has ci, dev" in done.stderr


@pytest.mark.parametrize("crashed", ["t.py::test_random_problems[crasher]", "t.py::test_dist[crasher[P=2]@p1-forward]"],
                         ids=["in a property test", "in a distributed test"])
def test_a_crash_in_a_property_or_distributed_test_counts_as_a_test_that_ran(crashed):
    # their ids have no "[name@": a variant whose one crash was in test_hypothesis.py had been said to have
    # had "none of its 314 tests ran here"
    from attnsuite.plugin import SkippedWholly

    watched = SkippedWholly({"crasher"})
    watched.pytest_runtest_logreport(_report(crashed, "failed", "???"))
    watched.pytest_runtest_logreport(_report("t.py::test_b[crasher@p1]", "skipped", "setup", "took the process down"))
    assert watched.lines() == []


def test_a_declared_dtype_that_no_test_of_the_run_checked_is_named():
    # a variant declaring float16 ran on CPU (float32, float64, bfloat16 problems): its float16 path,
    # wrong, was never run, and nothing said so (a first-time user's trial)
    from attnsuite import registry
    from attnsuite.plugin import SkippedWholly

    registry.load_builtin()
    declared = sorted(registry.get("sdpa").dtypes)
    assert "float16" in declared and "float32" in declared
    watched = SkippedWholly({"sdpa"})
    for dtype in ("fp32", "fp64"):
        watched.pytest_runtest_logreport(_report(f"t.py::test_a[sdpa@b1-q3-h2-d16-causal-tl-{dtype}-cpu]", "passed",
                                                 "call"))
    unchecked = [d for d in declared if d not in ("float32", "float64")]
    default = "" if registry.sets_itself(registry.get("sdpa"), "dtypes") else " (the default: its class sets no dtypes)"
    assert watched.lines() == [f"attnsuite: variant sdpa: declares {', '.join(unchecked)}{default}, which no test of "
                               "this run checked (its problems here were float32, float64: --attn-dtype, or a run on "
                               "CUDA for half precision, checks it)"]
    chosen = SkippedWholly({"sdpa"}, dtypes_note=False)  # -k, -m or --attn-dtype chose the dtypes: no note
    chosen.pytest_runtest_logreport(_report("t.py::test_a[sdpa@b1-q3-h2-d16-causal-tl-fp32-cpu]", "passed", "call"))
    assert chosen.lines() == []
    for d in unchecked:  # every declared dtype checked: nothing to say
        short = {"bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "float32": "fp32"}[d]
        watched.pytest_runtest_logreport(_report(f"t.py::test_a[sdpa@b1-q3-h2-d16-causal-tl-{short}-cpu]", "failed",
                                                 "call"))
    assert watched.lines() == []


def test_the_dtype_note_of_a_variant_whose_tests_stopped_after_a_crash_says_so_not_the_problem_set():
    # after a hang and a segfault the note had blamed "its problems here were float32"
    from attnsuite import registry
    from attnsuite.plugin import SkippedWholly
    from attnsuite.isolation import OTHERS_NOT_RUN

    registry.load_builtin()
    watched = SkippedWholly({"sdpa"})
    watched.pytest_runtest_logreport(_report("t.py::test_a[sdpa@b1-q3-h2-d16-causal-tl-fp32-cpu]", "passed", "call"))
    reason = f"variant sdpa hung in t.py::test_b[sdpa@p1]: {OTHERS_NOT_RUN} (that test's failure says more)"
    watched.pytest_runtest_logreport(_report("t.py::test_c[sdpa@b1-q3-h2-d16-causal-tl-fp64-cpu]", "skipped", "setup",
                                             reason))
    (line,) = watched.lines()
    assert "which no test of this run checked (its tests after a crash or hang were not run (variant sdpa hung" in line
    assert "its problems here were" not in line


def test_a_declaration_the_author_never_wrote_is_called_the_default():
    from attnsuite import registry

    class Plain(registry.KernelVariant):
        name = "x-plain"

    class Mine(registry.KernelVariant):
        name = "x-mine"
        dtypes = frozenset({"float32"})

    class Derived(Mine):
        name = "x-derived"

    assert not registry.sets_itself(Plain(), "dtypes") and not registry.sets_itself(Plain(), "deterministic")
    assert registry.sets_itself(Mine(), "dtypes") and registry.sets_itself(Derived(), "dtypes")
