"""Problems and benchmark entries from a file outside the repository (``--attn-problems``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from attnsuite import problem_file, registry, workloads
from attnsuite.problem import Problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    registry.load_builtin()
    monkeypatch.setattr(registry, "_EXTRA_PROBLEMS", {})
    monkeypatch.setattr(workloads, "WORKLOADS", dict(workloads.WORKLOADS))
    monkeypatch.setattr(problem_file, "_LOADED", set())
    monkeypatch.delenv(problem_file.ENV, raising=False)


GOOD = {
    "version": 1,
    "problems": [{"family": "attention", "lq": 33, "lk": 65, "hq": 4, "hkv": 2, "dqk": 32,
                  "mask": {"kind": "causal", "align": "bottom_right"}, "dtypes": ["float32"]}],
    "workloads": [
        {"name": "my-model", "description": "ours", "entries": [
            {"tier": "quick", "family": "attention", "modes": ["fwd"],
             "problem": {"batch": 2, "lq": 64, "hq": 4, "dqk": 32, "mask": "causal"}}]},
        {"name": "gpt2-mha", "entries": [
            {"tier": "quick", "family": "attention", "modes": ["fwd"], "problem": {"lq": 48, "hq": 2, "dqk": 16}}]},
    ],
}


def _write(tmp_path: Path, data, name: str = "problems.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_file_adds_problems_to_a_family_in_the_dtypes_it_names_and_on_the_runs_device(tmp_path):
    assert problem_file.load(_write(tmp_path, GOOD)) == (1, 2)
    family = registry.family_of(registry.get("explicit"))
    ids = [p.id for p in registry.problems_of(family, "cpu", ("float32", "bfloat16"))]
    assert "b1-q33k65-h4:2-d32-causal-br-fp32-cpu" in ids
    assert not any(i.startswith("b1-q33k65-h4:2-d32-causal-br-bf16") for i in ids)  # not a dtype it named


def test_a_file_adds_a_new_workload_and_entries_to_an_existing_one(tmp_path):
    before = len(workloads.get("gpt2-mha").quick)
    problem_file.load(_write(tmp_path, GOOD))
    assert workloads.get("my-model").quick[0].problem.id.startswith("b2-q64-h4-d32-causal")
    assert workloads.get("my-model").quick[0].problem.dtype == "float32"  # the quick tier's default
    assert len(workloads.get("gpt2-mha").quick) == before + 1
    expanded = workloads.expand("quick", "cpu", None, ("my-model",))
    assert [e.problem.device for e in expanded] == ["cpu"]


def test_toml_reads_the_same(tmp_path):
    toml = '''
version = 1
[[problems]]
family = "attention"
lq = 21
hq = 2
dqk = 16
mask = { kind = "window", window = 4 }
'''
    problem_file.load(_write(tmp_path, toml, "p.toml"))
    family = registry.family_of(registry.get("explicit"))
    assert "b1-q21-h2-d16-win4-fp32-cpu" in [p.id for p in registry.problems_of(family, "cpu", ("float32",))]


def test_loading_a_file_twice_adds_its_problems_once(tmp_path):
    path = _write(tmp_path, GOOD)
    problem_file.load(path)
    problem_file.load(path)
    assert len(registry._EXTRA_PROBLEMS["attention"]) == 1


@pytest.mark.parametrize("change,words", [
    (lambda d: d["problems"][0].update(lqq=3), "problems[0]: unknown field(s) 'lqq'"),
    (lambda d: d["problems"][0].update(lq="33"), "problems[0]: field 'lq' must be a whole number"),
    (lambda d: d["problems"][0].update(lq=True), "problems[0]: field 'lq' must be a whole number"),
    (lambda d: d["problems"][0].update(family="nope"), "problems[0]: field 'family': unknown family 'nope'"),
    (lambda d: d["problems"][0].pop("family"), "problems[0]: field 'family' is required"),
    (lambda d: d["problems"][0].update(hq=3), "problems[0]: hq=3 is not a multiple of hkv=2"),
    (lambda d: d["problems"][0].update(mask={"kind": "diagonal"}), "problems[0], mask: unknown mask kind"),
    (lambda d: d["problems"][0].update(mask={"knd": "causal"}), "problems[0], mask: unknown field(s) 'knd'"),
    (lambda d: d["problems"][0].update(dtypes=["float8"]), "problems[0]: field 'dtypes': unknown dtype 'float8'"),
    (lambda d: d["problems"][0].update(d_model=64, lk=33), "problems[0]: family 'attention' is kernel-level"),
    (lambda d: d["workloads"][0]["entries"][0].update(tier="huge"), "workloads[0].entries[0]: field 'tier'"),
    (lambda d: d["workloads"][0]["entries"][0].update(modes=["sideways"]), "workloads[0].entries[0]: field 'modes'"),
    (lambda d: d["workloads"][0]["entries"][0].update(variants=["nosuch"]),
     "workloads[0].entries[0]: field 'variants'"),
    (lambda d: d["workloads"][0]["entries"][0].pop("problem"), "workloads[0].entries[0]: field 'problem' is required"),
    (lambda d: d["workloads"][0].pop("description"), "workloads[0]: workload 'my-model' is new"),
    (lambda d: d["workloads"][1].update(description="ours"), "workloads[1]: workload 'gpt2-mha' exists ("),
    (lambda d: d["workloads"][1]["entries"][0]["problem"].update(dqk=0),
     "workloads[1].entries[0].problem: problem field dqk must be a positive int"),
    (lambda d: d.update(version=2), "field 'version': 2 is not supported"),
    # one problem is one case key: a repeat had been measured twice and the gate had kept the last
    (lambda d: d["workloads"][0]["entries"].append(json.loads(json.dumps(d["workloads"][0]["entries"][0]))),
     "workloads[0].entries[1]: workload 'my-model' (quick tier) already has problem"),
    # a family's own rules (Family.check): a misspelt arg had been accepted and every test of it skipped
    (lambda d: d["problems"][0].update(family="dilated", lq=64, lk=64, hq=4, hkv=4, mask="none",
                                       args={"segment": [16], "dilation": [2]}),
     "problems[0]: family 'dilated': dilated problem"),
    (lambda d: d["problems"][0].update(family="dilated", lq=64, lk=32, hq=4, hkv=4, mask="none",
                                       args={"segments": [16], "dilations": [2]}),
     "self-attention only, lq=64 != lk=32"),
    (lambda d: d["problems"][0].update(family="mla-layer", lq=16, lk=16, hq=4, hkv=4, d_model=64, mask="causal"),
     "problems[0]: family 'mla-layer': MLA problem"),
    (lambda d: d.update(extra=1), "unknown field(s) 'extra'"),
    # found by a fresh-user test: each had been accepted and a different problem checked, or collection
    # had allocated tens of GiB and blamed the variant for the suite's own MemoryError
    (lambda d: d["problems"][0].update(mask={"kind": "causal", "window": 8}),
     "problems[0], mask: kind 'causal' does not use 'window' (it reads align)"),
    (lambda d: d["problems"][0].update(mask={"kind": "none", "align": "bottom_right"}),
     "problems[0], mask: kind 'none' does not use 'align' (it reads no other field)"),
    (lambda d: d["problems"][0].update(dtypes=[]), "problems[0]: field 'dtypes': an empty list selects no dtype"),
    (lambda d: d["problems"][0].update(dtypes=["float32", "float32"]), "problems[0]: field 'dtypes': ['float32', "
     "'float32'] names a dtype twice"),
    (lambda d: d["problems"].append(json.loads(json.dumps(d["problems"][0]))),
     "problems[1]: the same problem as problems[0]"),
    (lambda d: d["problems"][0].update(family="gqa-layer", lq=97, lk=97, hq=8, hkv=2, dqk=16, d_model=64,
                                       mask="causal"),
     "problems[0]: b1-q97-h8:2-d16-m64-causal-tl-fp32-cpu is already one of the gqa-layer family's own problems"),
    (lambda d: d["problems"][0].update(lq=10**9, lk=10**9), "problems[0]: batch*hq*lq*lk = 4e+18 scores"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].update(lq=10**12, lk=10**12),
     "workloads[0].entries[0].problem: its inputs and output alone are"),
    # found by a second fresh-user test: each had been accepted, then ignored, dropped or judged wrongly
    (lambda d: d["problems"][0].update(scale=0.3004, lq=29, lk=29, hq=2, hkv=2, mask="causal"),
     "problems[0]: its id b1-q29-h2-d32-causal-tl-s0.3-fp32-cpu is also the id of another problem of the family, which "
     "differs in scale"),
    (lambda d: d["problems"].append({**d["problems"][0], "scale": 0.3002}) or d["problems"][0].update(scale=0.3001),
     "problems[1]: its id b1-q33k65-h4:2-d32-causal-br-s0.3-fp32-cpu is also the id of another problem earlier in this file"),
    (lambda d: d["workloads"][0]["entries"].append(
        {"tier": "quick", "family": "attention", "problem": {**d["workloads"][0]["entries"][0]["problem"],
                                                             "scale": 0.3002}})
     or d["workloads"][0]["entries"][0]["problem"].update(scale=0.3001),
     "workloads[0].entries[1]: workload 'my-model' (quick tier) already has a problem with the id"),
    (lambda d: d["problems"][0].update(dtype="bfloat16"), "problems[0]: field 'dtype': a correctness problem is "
     "checked in each dtype of 'dtypes'"),
    (lambda d: d["problems"][0].update(device="cuda"), "problems[0]: field 'device': a correctness problem runs on "
     "the run's device"),
    (lambda d: d["problems"][0].update(dropout=0.5), "problems[0]: field 'dropout': dropout draws random masks"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].update(device="cuda"),
     "workloads[0].entries[0].problem: field 'device': a workload entry runs on the run's device"),
    (lambda d: d["problems"][0].update(softcap=float("inf")), "problems[0]: field 'softcap': inf is not a finite"),
    (lambda d: d["problems"][0].update(scale=1e300), "problems[0]: field 'scale': 1e+300 is not a finite number "
     "that float32 can hold"),
    (lambda d: d["problems"][0].pop("lq"), "problems[0]: field 'lq' is required"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].pop("dqk"),
     "workloads[0].entries[0].problem: field 'dqk' is required"),
    (lambda d: d.update(problems=[], workloads=[]), "no problems and no workloads: the file adds nothing"),
    (lambda d: d["problems"][0].update(family="mha-layer", lq=32, lk=32, hq=2, hkv=2, dqk=8, d_model=24,
                                       mask="causal"),
     "problems[0]: family 'mha-layer': field 'd_model': 24 is not hq * dqk = 2 * 8 = 16"),
    # found by a third fresh-user test: an arg nothing reads had been accepted, named in every test id,
    # and the checks had passed without it (a gqa-layer "rope_theta": no RoPE anywhere)
    (lambda d: d["problems"][0].update(family="gqa-layer", lq=21, lk=21, hq=4, hkv=2, dqk=16, d_model=64,
                                       mask="causal", args={"rope_theta": 10000}),
     "problems[0]: field 'args': args 'rope_theta': not read by family 'gqa-layer' or any of its variants "
     "(they read: decode_step)"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].update(args={"ranks": 3, "window_size": 8}),
     "workloads[0].entries[0].problem: field 'args': args 'window_size': not read by family 'attention' or any of "
     "its variants (they read: ranks)"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].update(args={"ranks": float("nan")}),
     "workloads[0].entries[0].problem: field 'args': 'ranks' is nan: not a finite number"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].update(args={"ranks": [2, float("inf")]}),
     "field 'args': 'ranks' is inf: not a finite number"),
    (lambda d: d["workloads"][0]["entries"][0]["problem"].update(args={"ranks": {"p": 2}}),
     "field 'args': 'ranks' is {'p': 2}: args are numbers, strings, booleans or lists of them"),
    (lambda d: d["problems"][0].update(family="latent-layer", lq=16, lk=16, hq=2, hkv=2, dqk=8, d_model=32,
                                       mask="causal", args={"kv_lora": 8, "q_lora": 16}),
     "args 'q_lora': not read by family 'latent-layer'"),
    (lambda d: d["problems"][0].update(family="gqa-layer", lq=21, lk=21, hq=4, hkv=2, dqk=16, d_model=64,
                                       mask="causal", args={"decode_step": 1}),
     "problems[0]: field 'args': 'decode_step' is a benchmark setting"),
    # decode entries that no variant could run had loaded, and every one of their cases was skipped
    (lambda d: d["workloads"][0]["entries"][0].update(family="gqa-layer", modes=["decode"], problem={
        "lq": 64, "hq": 4, "hkv": 2, "dqk": 16, "d_model": 64, "mask": "causal"}),
     "workloads[0].entries[0]: field 'modes': 'decode' needs a problem a decode step can run on: decode cases "
     "need a causal layer problem with 1 <= decode_step < L; b1-q64-h4:2-d16-m64-causal-tl-fp32-cpu lacks an int "
     "arg decode_step"),
    (lambda d: d["workloads"][0]["entries"][0].update(family="gqa-layer", modes=["decode"], problem={
        "lq": 64, "hq": 4, "hkv": 2, "dqk": 16, "d_model": 64, "mask": "causal", "args": {"decode_step": 100}}),
     "lacks 1 <= decode_step < L (it is 100, L 64)"),
    (lambda d: d["workloads"][0]["entries"][0].update(family="gqa-layer", modes=["decode"], problem={
        "lq": 64, "hq": 4, "hkv": 2, "dqk": 16, "d_model": 64, "mask": "none", "args": {"decode_step": 1}}),
     "lacks a causal mask (not 'none')"),
    (lambda d: d["workloads"][0]["entries"][0].update(modes=["decode"]),
     "lacks a layer problem (d_model) and an int arg decode_step"),
    (lambda d: d["workloads"][0]["entries"][0].update(family="gqa-layer", modes=["decode"], problem={
        "lq": 64, "hq": 4, "hkv": 2, "dqk": 16, "d_model": 64, "mask": "causal", "args": {"decode_steps": 1}}),
     "args 'decode_steps': not read by family 'gqa-layer'"),
    (lambda d: d["workloads"][0]["entries"][0].update(family="gqa-layer", modes=["fwd"], problem={
        "lq": 64, "hq": 4, "hkv": 2, "dqk": 16, "d_model": 64, "mask": "causal", "args": {"decode_step": 1}}),
     "workloads[0].entries[0].problem: field 'args': 'decode_step' is read only by mode 'decode', which 'modes' "
     "(fwd) leaves out"),
])
def test_a_bad_entry_is_refused_naming_the_file_the_entry_and_the_field_and_nothing_is_added(tmp_path, change, words):
    data = json.loads(json.dumps(GOOD))
    change(data)
    path = _write(tmp_path, data)
    before = dict(workloads.WORKLOADS)
    with pytest.raises(problem_file.ProblemFileError) as info:
        problem_file.load(path)
    assert str(path) in str(info.value) and words in str(info.value), str(info.value)
    assert registry._EXTRA_PROBLEMS == {} and workloads.WORKLOADS == before


@pytest.mark.parametrize("text,words", [
    ("{not json", "not valid JSON"),
    ('{"problems": [], "problems": []}', "duplicate key 'problems'"),
    ("[1, 2]", "the top level must be a table"),
])
def test_a_file_that_is_not_a_problems_file_is_refused_with_its_name(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(problem_file.ProblemFileError, match=words):
        problem_file.load(path)


def test_a_gzip_compressed_problems_file_is_read_like_every_json_input(tmp_path):
    # the suite's one JSON reader (baseline.read_json_file): it had been refused with a raw codec error
    import gzip

    path = tmp_path / "problems.json.gz"
    path.write_bytes(gzip.compress(json.dumps(GOOD).encode()))
    assert problem_file.load(path) == (1, 2)


def test_a_missing_file_is_named():
    with pytest.raises(problem_file.ProblemFileError, match="no such file"):
        problem_file.load("/nonexistent/problems.json")


@pytest.mark.parametrize("kind, words", [("a folder", "not a regular file: it is a directory"),
                                         ("a FIFO", "not a regular file: it is a FIFO")])
def test_a_folder_or_a_fifo_given_as_the_problems_file_is_named_as_such(tmp_path, kind, words):
    # both had been told "no such file"
    path = tmp_path / "problems.json"
    if kind == "a folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(problem_file.ProblemFileError, match=f"{path}: {words}"):
        problem_file.load(path)


def test_the_size_limit_holds_for_a_gzip_compressed_problems_file_once_decompressed(tmp_path):
    # 10 MiB of JSON gzipped to a few KB had passed the 4 MiB limit a plain file is held to
    import gzip

    padded = dict(GOOD, comment=" " * (problem_file.MAX_BYTES + 1))
    path = tmp_path / "problems.json.gz"
    path.write_bytes(gzip.compress(json.dumps(padded).encode()))
    assert path.stat().st_size < problem_file.MAX_BYTES
    with pytest.raises(problem_file.ProblemFileError, match=f"{path}: more than 4 MiB once decompressed"):
        problem_file.load(path)


def test_from_python_problems_must_match_the_familys_level():
    with pytest.raises(ValueError, match="layer-level, the family kernel-level"):
        registry.add_problems("attention", [Problem(lq=8, lk=8, d_model=64)])
    with pytest.raises(KeyError, match="unknown family 'nope'"):
        registry.add_problems("nope", [Problem()])


# ----------------------------------------------------------------------- through pytest, end to end

@pytest.fixture
def outside(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A project that is not this repository: the suite's plugin, its bench and correctness modules."""
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")
    shutil.copytree(ROOT / "test_correctness", pytester.path / "test_correctness",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    _write(pytester.path, GOOD, "ours.json")
    return pytester.path


_COLLECTED: dict[str, str] = {}


def _collected_with_ours(pytester: pytest.Pytester, outside: Path) -> str:
    """`--collect-only` of the correctness tests with ours.json added, narrowed to the added problem and to
    the variants these tests name (explicit, sdpa, compiled-explicit): one run per process, shared by the
    tests that read which ids it collects. None of what they read depends on which others are selected: the
    compiled variants' CPU limit is per variant, and the dtype note per added problem."""
    if "ours" not in _COLLECTED:
        _COLLECTED["ours"] = pytester.runpytest_subprocess(
            "test_correctness/test_variants.py", "-p", "no:cacheprovider", "-q", "--collect-only", "-n", "0",
            f"--attn-problems={outside / 'ours.json'}", "--attn-only=explicit", "--attn-only=sdpa",
            "--attn-only=compiled-explicit", "-k", "q33k65").stdout.str()
    return _COLLECTED["ours"]


def test_an_added_problem_is_checked_for_the_selected_variant_only(pytester, outside):
    result = pytester.runpytest_subprocess(
        "test_correctness/test_variants.py", "-p", "no:cacheprovider", "-q", "-n", "0",
        f"--attn-problems={outside / 'ours.json'}", "--attn-only=explicit", "-k", "q33k65")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 3 and not outcomes.get("failed"), result.stdout.str()[-2000:]
    collected = _collected_with_ours(pytester, outside)
    assert "explicit@b1-q33k65-h4:2-d32-causal-br-fp32-cpu" in collected and "sdpa@b1-q33k65" in collected, \
        collected[-3000:]


def test_a_problem_in_dtypes_the_run_does_not_check_is_named_instead_of_vanishing(pytester, outside):
    data = json.loads(json.dumps(GOOD))
    data["problems"][0]["dtypes"] = ["float16"]  # CPU checks fp32, fp64 and bf16
    _write(outside, data, "half.json")
    out = pytester.runpytest_subprocess(
        "test_correctness/test_variants.py", "-p", "no:cacheprovider", "-q", "--collect-only", "-n", "0",
        f"--attn-problems={outside / 'half.json'}", "--attn-only=explicit", "-k", "q33k65").stdout.str()
    line = (f"attnsuite: {outside / 'half.json'}: attention problem b1-q33k65-h4:2-d32-causal-br-fp16-cpu asks for "
            "float16, which this run (cpu: float32, float64, bfloat16) does not check: it adds no test")
    assert line in out, out[-3000:]  # at the end (and in the header, which -q leaves out)
    both = _collected_with_ours(pytester, outside)  # a dtype the run checks: no such line
    assert "explicit@b1-q33k65-h4:2-d32-causal-br-fp32-cpu" in both, both[-3000:]  # it did collect the problem
    assert "does not check: it adds no test" not in both, both[-3000:]


def test_a_yaml_file_is_refused_saying_which_formats_are_read(tmp_path):
    with pytest.raises(problem_file.ProblemFileError, match="a problems file is JSON .* or TOML .*; YAML is not read"):
        problem_file.load(_write(tmp_path, "version: 1\n", "p.yaml"))


def test_a_workload_entry_without_modes_gets_the_built_in_entries_modes(tmp_path):
    data = json.loads(json.dumps(GOOD))
    del data["workloads"][0]["entries"][0]["modes"]
    problem_file.load(_write(tmp_path, data))
    assert workloads.get("my-model").quick[0].modes == workloads.ALL  # decode only when asked for


def test_compiled_variants_check_every_added_problem_on_cpu(pytester, outside):
    # the CPU limit on compiled variants (2 problems per dtype) had always stopped before the added ones
    collected = _collected_with_ours(pytester, outside)  # every variant's ids, compiled-explicit's among them
    assert "compiled-explicit@b1-q33k65-h4:2-d32-causal-br-fp32-cpu" in collected, collected[-3000:]


def test_an_added_workload_is_benchmarked_in_the_worker_process(pytester, outside):
    out = outside / "out.json"
    result = pytester.runpytest_subprocess(
        "bench", "--benchmark-only", "-p", "no:cacheprovider", "-q", "--attn-device=cpu", "--attn-tier=quick",
        f"--attn-problems={outside / 'ours.json'}", "--attn-workload=my-model", "--attn-only=explicit",
        "--attn-gate=off", f"--benchmark-json={out}")
    assert result.ret == 0, result.stdout.str()[-2000:]
    recs = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    assert [(r["workload"], r["variant"], r["outcome"]) for r in recs] == [("my-model", "explicit", "ok")]


def test_a_bad_problems_file_is_a_usage_error_before_anything_runs(pytester, outside):
    bad = _write(outside, {"problems": [{"family": "attention", "lq": -1, "hq": 2, "dqk": 16}]}, "bad.json")
    result = pytester.runpytest_subprocess("bench", "--benchmark-only", "-p", "no:cacheprovider",
                                           f"--attn-problems={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"attnsuite: --attn-problems: {bad}: problems[0]: problem field lq must be a positive int" \
        in result.stderr.str()


def test_an_error_in_a_file_named_by_the_environment_says_so(tmp_path, monkeypatch):
    # it had been labelled --attn-problems, an option the user never gave
    bad = _write(tmp_path, {"problems": [{"family": "attention", "lq": -1}]}, "bad.json")
    monkeypatch.setenv(problem_file.ENV, str(bad))
    with pytest.raises(problem_file.ProblemFileError, match=f"^ATTNSUITE_PROBLEMS: {bad}: problems\\[0\\]"):
        problem_file.load_all([])


def test_a_second_file_repeating_an_entry_already_registered_is_refused(tmp_path):
    first = _write(tmp_path, GOOD, "a.json")
    problem_file.load(first)
    second = _write(tmp_path, GOOD, "b.json")  # the same content under another name
    with pytest.raises(problem_file.ProblemFileError, match="already has problem"):
        problem_file.load(second)


def test_an_unknown_key_of_a_correctness_entry_lists_the_keys_that_entry_takes(tmp_path):
    # it had listed device, dropout and dtype (each refused in a correctness entry) and left out family and dtypes
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"version": 1, "problems": [{"family": "attention", "lq": 8, "hq": 2, "dqk": 16,
                                                            "causal": True}]}))
    with pytest.raises(problem_file.ProblemFileError) as info:
        problem_file.load(path)
    known = str(info.value).split("known: ")[1].split(", ")
    assert "unknown field(s) 'causal'" in str(info.value)
    assert {"family", "dtypes", "mask", "lq"} <= set(known) and not {"device", "dropout", "dtype"} & set(known)


def test_a_problems_file_loaded_before_any_family_says_to_load_the_variants_first(tmp_path, monkeypatch):
    # from Python, before registry.load_all(): "unknown family 'attention'; known: " with an empty list
    monkeypatch.setattr(registry, "families", lambda: [])
    path = tmp_path / "p.json"
    path.write_text(json.dumps(GOOD))
    with pytest.raises(problem_file.ProblemFileError, match=r"no family is registered in this process yet; load "
                                                            r"the variants first \(attnsuite.registry.load_all\(\)\)"):
        problem_file.load(path)


def test_args_that_a_family_or_one_of_its_variants_reads_are_taken(tmp_path):
    data = {"version": 1, "problems": [
        {"family": "attention", "lq": 40, "hq": 2, "dqk": 16, "mask": "causal", "args": {"ranks": 3}},
        {"family": "latent-layer", "lq": 16, "hq": 2, "dqk": 8, "d_model": 32, "mask": "causal",
         "args": {"kv_lora": 8}}],
        "workloads": [{"name": "my-decode", "description": "ours", "entries": [
            {"tier": "quick", "family": "gqa-layer", "modes": ["decode"], "problem": {
                "lq": 64, "hq": 4, "hkv": 2, "dqk": 16, "d_model": 64, "mask": "causal", "args": {"decode_step": 4}}}]}]}
    assert problem_file.load(_write(tmp_path, data)) == (2, 1)


def _builtin_problems():
    for family in registry.families():
        for device in ("cpu", "cuda"):
            for problem in registry.problems_of(family, device, ("float32", "bfloat16")):
                yield f"family {family.name} on {device}", family, problem, ()
    for workload in workloads.WORKLOADS.values():
        for tier in workloads.TIERS:
            for entry in workload.tier(tier):
                yield f"workload {workload.name} ({tier})", registry.family(entry.family), entry.problem, entry.modes


def test_every_built_in_problem_and_entry_keeps_the_rule_a_problems_file_is_held_to():
    # the latent-layer entries of deepseek-v3 and layer-decode had carried a q_lora the layer does not
    # have: nothing read it but the FLOP count, which credited a compressed query projection
    from attnsuite import decode_bench

    bad = []
    for where, family, problem, modes in _builtin_problems():
        why = registry.unread_args(family, problem)
        if "decode" in modes:
            why = why or decode_bench.problem_reason(problem)
        if why:
            bad.append(f"{where}: {problem.id}: {why}")
    assert bad == []
