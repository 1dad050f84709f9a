"""Scoped selections: every selection option judges only what it selects (issue 9 item 4).

Each test runs the real benchmarks (bench/ with the suite's plugin) on the quick CPU tier with a
tiny selection (one cheap variant, one workload, forward only: two cases) against a baseline that
holds those cases plus one more that differs from them along one field only: the field of the
option under test. The extra case is outside the selection, so it must not be called ``missing``;
if that option's scoping broke, it would be, and the run would fail. The options that need no
argument of their own (workload, mode, variant, tier, device, a dtype the run did not ask for) share
one run whose baseline holds all their extra cases at once: each is still called missing, and the
run fails, if its own option's scoping breaks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from attnsuite.wording import count

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD, VARIANT = "video-wm", "explicit"
# in-process cases (no worker processes): these tests are about judging, not isolation
TINY = ("--attn-isolation=none", "--attn-device=cpu", "--attn-tier=quick", f"--attn-workload={WORKLOAD}", "--attn-mode=fwd",
        f"--attn-only={VARIANT}")
# A time floor no timing noise reaches (an 11x slowdown; 10 is the largest a thresholds file takes): these
# tests pin which cases are judged, and a loaded CI host once doubled a 0.2 ms case between the recording
# and the run (a `slower` verdict, not a scoping bug).
WIDE = {"version": 1, "default": {}, "device": {"cpu": {"time_floor": 10.0, "spread_k": 2.0, "mem_floor": 0.10,
                                                         "mem_abs_bytes": 8388608, "statistic": "min"}},
        "workload": {}, "case": {}}
# with pytest's cache: the --lf test needs it
CACHED = ("--benchmark-only", "--attn-no-confirm", "--attn-baseline=base.json",
          "--attn-thresholds=wide.json", "--benchmark-json=run.json")
COMMON = ("-p", "no:cacheprovider", *CACHED)


@pytest.fixture(scope="module")
def recorded() -> dict:
    """The baseline of the tiny selection, recorded once by a real run (its JSON object)."""
    return {}


@pytest.fixture
def bench(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, recorded: dict, tmp_path_factory, request):
    """A copy of bench/ with the suite's plugin; ``run(baseline_extra, *args)`` runs the tiny selection
    against the recorded baseline plus one extra case (fields changed from a recorded case), or plus
    several: ``baseline_extra`` a list of such changes."""
    from suiterun import once_per_session

    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    base = pytester.path / "base.json"
    (pytester.path / "wide.json").write_text(json.dumps(WIDE))
    if "obj" not in recorded:
        def record() -> dict:
            res = pytester.runpytest("bench", *COMMON, *TINY, "--attn-record-baseline")
            assert res.ret == 0 and base.exists(), res.stdout.str()[-3000:]
            return json.loads(base.read_text())

        # once per session, not once per xdist worker: every test only reads it
        recorded["obj"] = once_per_session(tmp_path_factory, request.config, "scope-selection-baseline", record)

    def run(extra_changes: dict | list[dict], *args: str, where: tuple[str, ...] = ("bench",),
            common: tuple[str, ...] = COMMON) -> pytest.RunResult:
        obj = json.loads(json.dumps(recorded["obj"]))
        assert len(obj["cases"]) == 2, obj["cases"].keys()
        first = sorted(obj["cases"].items())[0][1]
        for changes in extra_changes if isinstance(extra_changes, list) else [extra_changes]:
            entry = {**first, **changes}
            key = _key(entry)
            assert key not in obj["cases"]
            obj["cases"][key] = entry
        base.write_text(json.dumps(obj))
        res = pytester.runpytest(*where, *common, *TINY, *args)
        res.workdir = pytester.path  # where base.json and the run's run.json are
        return res

    return run


def _swap_token(problem: str, old: str, new: str) -> str:
    tokens = problem.split("-")
    assert old in tokens, problem
    return "-".join(new if t == old else t for t in tokens)


def _assert_judged_only_the_selection(res: pytest.RunResult, outside: int = 1) -> None:
    out = res.stdout.str()
    assert res.ret == 0, out[-3000:]
    assert "missing" not in out.split("attnsuite regression gate")[-1], out[-3000:]
    res.stdout.fnmatch_lines([f"pass (*same)*; {count(outside, 'baseline case')} outside this run's scope"])
    # the run's JSON carries its selection: `attnsuite compare` of the same two files judges the same
    # cases (it had called every case outside a partial run's selection missing)
    from attnsuite import cli

    text = io.StringIO()
    status = cli.main(["compare", str(res.workdir / "base.json"), str(res.workdir / "run.json"),
                       "--thresholds", str(res.workdir / "wide.json")], out=text)
    assert status == 0 and "missing" not in text.getvalue(), text.getvalue()[-3000:]


def _key(entry: dict) -> str:
    return "/".join(entry[f] for f in ("workload", "variant", "mode", "problem"))


def _outside_cases(recorded_obj: dict) -> dict[str, dict]:
    """The extra baseline case of each option judged by the shared run, by option: a recorded case with
    that option's one field changed."""
    problem = sorted(recorded_obj["cases"].values(), key=lambda e: e["problem"])[0]["problem"]
    return {
        "--attn-workload": {"workload": "gpt2-mha"},
        "--attn-mode": {"mode": "bwd"},
        "--attn-only": {"variant": "einsum"},
        # the tier is not part of the key: a full-tier problem of the same workload, variant and mode
        "--attn-tier": {"tier": "full", "problem": "b9-q9-h1-d8-nomask-fp32-cpu"},
        "--attn-device": {"problem": _swap_token(problem, "cpu", "cuda")},
        # a dtype the run did not ask for (it has no --attn-dtype)
        "no --attn-dtype": {"problem": _swap_token(problem, "fp32", "fp64")},
    }


@pytest.fixture
def outside_run(bench, recorded, tmp_path_factory, request) -> pytest.RunResult:
    """The tiny selection judged against a baseline holding every case of _outside_cases at once: one
    run read by six tests (each judged run is a pytest session with its measurements). Were one
    option's scoping broken, its case would be called missing and the run would fail, failing them all."""
    from suiterun import once_per_session

    def make():
        res = bench(list(_outside_cases(recorded["obj"]).values()))
        return str(res.workdir), res.ret, res.outlines, res.errlines

    workdir, ret, outlines, errlines = once_per_session(tmp_path_factory, request.config, "scope-selection-outside",
                                                        make)
    res = pytest.RunResult(ret, outlines, errlines, 0.0)
    res.workdir = Path(workdir)
    return res


def _assert_left_alone(res: pytest.RunResult, recorded: dict, option: str) -> None:
    """``option``'s extra case is in the shared run's baseline, and the run judged only its selection."""
    first = sorted(recorded["obj"]["cases"].items())[0][1]
    entry = {**first, **_outside_cases(recorded["obj"])[option]}
    baseline = json.loads((res.workdir / "base.json").read_text())
    assert baseline["cases"].get(_key(entry)) == entry, sorted(baseline["cases"])
    _assert_judged_only_the_selection(res, outside=len(_outside_cases(recorded["obj"])))


@pytest.mark.parametrize("option", [
    pytest.param("--attn-workload", id="--attn-workload leaves another workload's case alone"),
    pytest.param("--attn-mode", id="--attn-mode leaves another mode's case alone"),
    pytest.param("--attn-only", id="--attn-only leaves another variant's case alone"),
    pytest.param("--attn-tier", id="--attn-tier leaves the other tier's case alone"),
])
def test_a_selection_option_judges_only_what_it_selects(outside_run, recorded, option):
    _assert_left_alone(outside_run, recorded, option)


def test_attn_device_leaves_another_devices_case_alone(outside_run, recorded):
    _assert_left_alone(outside_run, recorded, "--attn-device")


def test_attn_dtype_leaves_another_dtypes_case_alone(bench, recorded):
    problem = sorted(recorded["obj"]["cases"].values(), key=lambda e: e["problem"])[0]["problem"]
    _assert_judged_only_the_selection(bench({"problem": _swap_token(problem, "fp32", "bf16")}, "--attn-dtype=float32"))


def test_a_run_without_attn_dtype_leaves_a_case_of_a_dtype_it_did_not_run_alone(outside_run, recorded):
    # an fp64 case recorded from an `--attn-dtype float64` run had been called missing by every default run
    _assert_left_alone(outside_run, recorded, "no --attn-dtype")


@pytest.mark.parametrize("args", [
    pytest.param(("-k", "frame13"), id="-k"),
    pytest.param(("--deselect", "bench/test_workloads.py::test_workload[{other}]"), id="--deselect"),
])
def test_a_keyword_or_deselection_judges_only_the_selected_cases(bench, recorded, args):
    keys = sorted(recorded["obj"]["cases"])
    other = next(k for k in keys if "frame13" not in k)
    res = bench({"problem": "b9-q9-h1-d8-nomask-fp32-cpu"}, *(a.format(other=other) for a in args))
    # the unselected case of the run and the extra baseline case are both outside
    _assert_judged_only_the_selection(res, outside=2)


def test_a_case_picked_by_its_node_id_is_judged_alone(bench, recorded):
    # rerunning one case by the id pytest printed had called every other baseline case missing
    # (collection by node id narrows without pytest_deselected)
    picked = sorted(recorded["obj"]["cases"])[0]
    res = bench({"problem": "b9-q9-h1-d8-nomask-fp32-cpu"}, where=(f"bench/test_workloads.py::test_workload[{picked}]",))
    _assert_judged_only_the_selection(res, outside=2)


def test_last_failed_judges_only_the_cases_it_reruns(bench, recorded, pytester):
    # --lf reruns the failed items (here written into pytest's cache by hand) and leaves out the rest
    failed = sorted(recorded["obj"]["cases"])[0]
    cache = pytester.path / ".pytest_cache" / "v" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "lastfailed").write_text(json.dumps({f"bench/test_workloads.py::test_workload[{failed}]": True}))
    res = bench({"problem": "b9-q9-h1-d8-nomask-fp32-cpu"}, "--lf", common=CACHED)
    res.stdout.fnmatch_lines(["*run-last-failure: rerun previous 1 failure*"])
    _assert_judged_only_the_selection(res, outside=2)


def test_m_judges_only_the_selected_cases(bench):
    res = bench({"problem": "b9-q9-h1-d8-nomask-fp32-cpu"}, "-m", "not slow")
    _assert_judged_only_the_selection(res)


def test_a_selected_case_that_did_not_run_is_still_missing(bench):
    # same workload, variant, mode, tier, dtype and device as the run: inside the selection
    res = bench({"problem": "b9-q9-h1-d8-nomask-fp32-cpu"})
    assert res.ret == 1
    res.stdout.fnmatch_lines([f"FAILED missing: {WORKLOAD}/{VARIANT}/fwd/b9-q9-h1-d8-nomask-fp32-cpu: not run*"])


@pytest.mark.parametrize("args, why", [
    pytest.param(("--attn-only=layer-sdpa", f"--attn-workload={WORKLOAD}"),
                 f"--attn-only layer-sdpa --attn-workload {WORKLOAD} --attn-device cpu select no case of the quick "
                 "tier on cpu", id="options that select no case"),
    pytest.param((*TINY, "-k", "no-such-case"), "-k 'no-such-case' left none of the 2 benchmark cases",
                 id="-k that matches no case"),
    pytest.param(("--attn-problems=mine.json", "--attn-workload=mine"),
                 "--attn-workload mine --attn-device cpu select no case of the quick tier on cpu; workload 'mine' has no "
                 "entry in the quick tier (its entries are in the full tier: add --attn-tier full)",
                 id="a workload with full-tier entries only"),
])
def test_a_selection_of_no_case_exits_5_and_says_why(bench, pytester, args, why):
    # pytest alone exits 0 when the options leave an empty parameter set: a CI gate would pass judging nothing
    (pytester.path / "mine.json").write_text(json.dumps({"version": 1, "workloads": [{"name": "mine", "description": "ours", "entries": [
        {"tier": "full", "family": "attention", "modes": ["fwd"], "problem": {"lq": 48, "hq": 2, "dqk": 16}}]}]}))
    res = pytester.runpytest("bench", "--benchmark-only", "-p", "no:cacheprovider",
                             "--attn-isolation=none", "--attn-device=cpu", "--attn-markdown=gate.md",
                             "--attn-gate-json=gate.json", *args)
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED, res.stdout.str()[-3000:]
    res.stdout.fnmatch_lines([f"attnsuite: no benchmark case selected: {why}*; nothing was measured or judged "
                              "(exit status 5)"])
    # gate.md and the gate JSON say it too: a CI step posting gate.md as the PR comment had found no file
    md = (pytester.path / "gate.md").read_text()
    assert md.startswith("<!-- attnsuite-gate -->\n### attnsuite regression gate: ⚪ **NOTHING SELECTED**"), md
    assert "No benchmark case selected: " in md and "nothing was measured or judged (exit status 5)" in md, md
    verdicts = json.loads((pytester.path / "gate.json").read_text())
    assert verdicts["compared"] is False and verdicts["reason"].startswith("no benchmark case selected: "), verdicts


@pytest.mark.parametrize("keyword, missing", [
    pytest.param("explicit", True, id="-k selecting it"),
    pytest.param("explicit and not b9", False, id="-k leaving it out"),
])
def test_a_baseline_case_the_run_no_longer_has_is_judged_when_k_selects_it(bench, keyword, missing):
    # (the test name must not hold the word the output is searched for: it is in the tmp path)
    # under -k only the collected cases had been in scope, so a problem a change removed was never
    # missing (under --attn-only it is); -k now reads a removed case's name as it reads a collected one's
    res = bench({"problem": "b9-q9-h1-d8-nomask-fp32-cpu"}, "-k", keyword)
    if missing:
        assert res.ret == 1, res.stdout.str()[-3000:]
        res.stdout.fnmatch_lines([f"FAILED missing: {WORKLOAD}/{VARIANT}/fwd/b9-q9-h1-d8-nomask-fp32-cpu: not run*"])
        # the selection stored in the run's JSON holds it too: `attnsuite compare` of the files agrees
        from attnsuite import cli

        text = io.StringIO()
        status = cli.main(["compare", str(res.workdir / "base.json"), str(res.workdir / "run.json"),
                           "--thresholds", str(res.workdir / "wide.json"), "--gate", "enforce"], out=text)
        assert status == 1 and f"{WORKLOAD}/{VARIANT}/fwd/b9-q9-h1-d8-nomask-fp32-cpu" in text.getvalue(), \
            text.getvalue()[-3000:]
    else:
        _assert_judged_only_the_selection(res)


@pytest.mark.parametrize("option", ["--attn-workload", "--attn-only"])
def test_a_comma_list_selects_what_the_repeated_option_selects(pytester, monkeypatch, option):
    # `--attn-workload=llama3-70b,fa-sweep` had been refused as one unknown workload, while
    # --attn-only and attnsuite ab both read "a,b" as two names
    pytester.makeconftest('pytest_plugins = ["attnsuite.plugin"]\n')
    shutil.copytree(ROOT / "bench", pytester.path / "bench")
    monkeypatch.delenv("ATTNSUITE_VARIANTS", raising=False)
    names = ("decode", "video-wm") if option == "--attn-workload" else ("sdpa", "explicit")
    base = ("bench", "--benchmark-only", "-p", "no:cacheprovider", "--collect-only", "-q",
            "--attn-device=cpu", "--attn-tier=quick")

    def collected(*args: str) -> list[str]:
        res = pytester.runpytest(*base, *args)
        assert res.ret == 0, res.stdout.str()[-2000:] + res.stderr.str()[-2000:]
        return sorted(line for line in res.stdout.lines if "::" in line)

    repeated = collected(*[f"{option}={n}" for n in names])
    assert repeated and collected(f"{option}={','.join(names)}") == repeated
    assert collected(f"{option}={names[0]}") != repeated  # the second name is not ignored
