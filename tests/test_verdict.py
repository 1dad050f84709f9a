"""The verdict rule: every verdict of DESIGN section 5, the noise band, thresholds, scope."""

from __future__ import annotations

import pytest

from attnsuite.verdict import (
    DEVICE_DEFAULTS, GATING, Scope, Thresholds, ThresholdsError, compare, judge, load_thresholds,
    noise_band, parse_thresholds,
)
from gatehelp import by_key, rec

T = Thresholds(time_floor=0.03, spread_k=1.5, mem_floor=0.02, mem_abs_bytes=1 << 20)


def _case(why: str, base_kw: dict, cur_kw: dict, verdict: str):
    return pytest.param(base_kw, cur_kw, verdict, id=f"{why} is {verdict}")


@pytest.mark.parametrize(
    "base_kw, cur_kw, verdict",
    [
        _case("10% slower with a tight spread", {}, {"median_ms": 1.10}, "slower"),
        _case("10% faster with a tight spread", {}, {"median_ms": 0.90}, "faster"),
        _case("1% slower (inside the 3% floor)", {}, {"median_ms": 1.01}, "same"),
        _case("peak memory 100 to 200 MiB", {}, {"peak_mem_bytes": 200 << 20}, "memory-growth"),
        _case("peak memory 100 to 50 MiB", {}, {"peak_mem_bytes": 50 << 20}, "memory-shrink"),
        _case("ok then out of memory", {}, {"outcome": "oom", "median_ms": None, "oom_bytes": 40 << 30}, "newly-oom"),
        _case("out of memory then ok", {"outcome": "oom", "median_ms": None}, {}, "fixed-oom"),
        _case("out of memory in both", {"outcome": "oom", "median_ms": None},
              {"outcome": "oom", "median_ms": None}, "same"),
        _case("ok then a numerics failure", {}, {"outcome": "numerics", "detail": "out: err 0.5 > 0.01"},
              "newly-failing"),
        _case("ok then an error", {}, {"outcome": "error", "detail": "RuntimeError: boom"}, "newly-failing"),
        _case("out of memory then an error", {"outcome": "oom"}, {"outcome": "error", "detail": "x"},
              "newly-failing"),
        _case("numerics failure then ok", {"outcome": "numerics"}, {}, "fixed-failing"),
        _case("error then numerics failure", {"outcome": "error"}, {"outcome": "numerics"}, "same"),
        _case("ok then skipped", {}, {"outcome": "skipped", "detail": "no flash on this GPU"}, "missing"),
        _case("skipped in both", {"outcome": "skipped"}, {"outcome": "skipped"}, "same"),
        _case("skipped then ok", {"outcome": "skipped"}, {}, "new"),
    ],
)
def test_verdict_of_a_case_changed_between_baseline_and_run(base_kw, cur_kw, verdict):
    v = judge(rec(**base_kw), rec(**cur_kw), T)
    assert v.verdict == verdict, v.message
    assert v.gating == (verdict in GATING)


def test_a_case_in_the_baseline_that_did_not_run_is_missing_and_fails_the_gate():
    v = judge(rec(), None, T)
    assert (v.verdict, v.gating) == ("missing", True)
    assert "not run" in v.message and "1.000 ms" in v.message


def test_a_case_not_in_the_baseline_is_new_and_does_not_fail_the_gate():
    v = judge(None, rec(), T)
    assert (v.verdict, v.gating) == ("new", False)


def test_slower_says_by_how_much_and_which_noise_band():
    v = judge(rec(median_ms=2.0), rec(median_ms=2.5), T)
    assert v.verdict == "slower"
    assert v.time_change == pytest.approx(0.25)
    assert "slower by 25.0%" in v.message and "2.000 ms -> 2.500 ms" in v.message and "3.0%" in v.message


def test_slower_and_bigger_case_carries_both_findings_with_slower_first():
    v = judge(rec(), rec(median_ms=1.5, peak_mem_bytes=300 << 20), T)
    assert v.flags == ("slower", "memory-growth")
    assert v.verdict == "slower"
    assert "peak memory +200 MiB" in v.message


def test_faster_but_bigger_case_fails_on_memory_growth():
    v = judge(rec(), rec(median_ms=0.5, peak_mem_bytes=300 << 20), T)
    assert v.verdict == "memory-growth" and "faster" in v.flags and v.gating


def test_noise_band_is_the_floor_when_both_runs_are_tight():
    assert noise_band(rec(iqr_ms=0.001), rec(iqr_ms=0.001), T) == pytest.approx(0.03)


def test_noise_band_grows_with_the_relative_iqr_of_both_runs():
    # relative IQRs 4% and 3%: hypot = 5%, times spread_k 1.5 = 7.5%
    band = noise_band(rec(median_ms=1.0, iqr_ms=0.04), rec(median_ms=2.0, iqr_ms=0.06), T)
    assert band == pytest.approx(0.075)


def test_a_10_percent_change_in_a_noisy_case_is_within_noise_but_not_in_a_tight_one():
    noisy = judge(rec(iqr_ms=0.06), rec(median_ms=1.10, iqr_ms=0.06), T)
    tight = judge(rec(iqr_ms=0.005), rec(median_ms=1.10, iqr_ms=0.005), T)
    assert (noisy.verdict, tight.verdict) == ("same", "slower")


def test_memory_growth_needs_both_the_relative_and_the_absolute_allowance():
    # +50% but only 512 KiB: a tiny buffer, not a regression
    small = judge(rec(peak_mem_bytes=1 << 20), rec(peak_mem_bytes=(1 << 20) + (512 << 10)), T)
    # +2 MiB but only 1% of 200 MiB
    relative = judge(rec(peak_mem_bytes=200 << 20), rec(peak_mem_bytes=202 << 20), T)
    assert small.verdict == "same" and relative.verdict == "same"


def test_memory_growth_from_zero_is_growth():
    v = judge(rec(peak_mem_bytes=0), rec(peak_mem_bytes=64 << 20), T)
    assert v.verdict == "memory-growth" and "from 0" in v.message


def test_backend_change_and_new_materialisation_are_noted():
    v = judge(rec(backend="sdpa:flash"), rec(backend="sdpa:math", materialises=True), T)
    assert any("backend changed: sdpa:flash -> sdpa:math" in n for n in v.notes)
    assert any("materialises" in n for n in v.notes)


def test_compare_sorts_regressions_first_and_counts_verdicts():
    base = by_key([rec("a"), rec("b"), rec("c"), rec("gone")])
    cur = by_key([rec("a"), rec("b", median_ms=2.0), rec("c", median_ms=0.5), rec("fresh")])
    cmp = compare(base, cur, device="cuda")
    assert [v.verdict for v in cmp.verdicts] == ["missing", "slower", "faster", "new", "same"]
    assert cmp.failed and len(cmp.regressions) == 2 and len(cmp.improvements) == 1
    assert cmp.counts() == {"missing": 1, "slower": 1, "faster": 1, "new": 1, "same": 1}
    assert cmp.summary().startswith("FAIL: 2 regression(s)")


def test_an_unchanged_run_passes():
    base = by_key([rec("a"), rec("b", outcome="oom", median_ms=None), rec("c", outcome="skipped")])
    cmp = compare(base, dict(base), device="cuda")
    assert not cmp.failed and cmp.summary().startswith("pass")


def test_cpu_cases_get_the_wider_cpu_defaults():
    base, cur = by_key([rec()]), by_key([rec(median_ms=1.10)])
    assert compare(base, cur, device="cuda").verdicts[0].verdict == "slower"
    assert compare(base, cur, device="cpu").verdicts[0].verdict == "same"
    assert DEVICE_DEFAULTS["cpu"].time_floor > DEVICE_DEFAULTS["cuda"].time_floor


def test_thresholds_apply_default_then_device_then_workload_then_case_pattern():
    cfg = parse_thresholds({
        "default": {"time_floor": 0.05},
        "device": {"cuda": {"time_floor": 0.04, "mem_floor": 0.5}},
        "workload": {"decode": {"time_floor": 0.08}},
        "case": {"decode/sdpa-*/fwd/*": {"time_floor": 0.2}, "decode/sdpa-math/*": {"spread_k": 3.0}},
    })
    assert cfg.for_case(rec(workload="fa-sweep"), "cuda").time_floor == 0.04
    assert cfg.for_case(rec(workload="fa-sweep"), "cuda").mem_floor == 0.5
    assert cfg.for_case(rec(workload="fa-sweep"), "cpu").time_floor == 0.05
    assert cfg.for_case(rec(workload="decode", variant="flex"), "cuda").time_floor == 0.08
    t = cfg.for_case(rec(workload="decode", variant="sdpa-math"), "cuda")
    assert (t.time_floor, t.spread_k) == (0.2, 3.0)


def test_a_per_workload_threshold_turns_a_slowdown_into_same():
    cfg = parse_thresholds({"workload": {"decode": {"time_floor": 0.25}}})
    base = by_key([rec(workload="decode"), rec(workload="fa-sweep")])
    cur = by_key([rec(workload="decode", median_ms=1.2), rec(workload="fa-sweep", median_ms=1.2)])
    verdicts = {v.key.split("/")[0]: v.verdict for v in compare(base, cur, thresholds=cfg).verdicts}
    assert verdicts == {"decode": "same", "fa-sweep": "slower"}


@pytest.mark.parametrize("obj, needle", [
    ({"default": {"time_flor": 0.1}}, "unknown thresholds ['time_flor']"),
    ({"default": {"time_floor": -0.1}}, "time_floor must be a non-negative number"),
    ({"workload": {"decode": {"spread_k": "wide"}}}, "workload 'decode': spread_k"),
    ({"version": 2}, "version 2"),
    ({"cases": {}}, "unknown sections ['cases']"),
])
def test_a_bad_thresholds_config_is_refused_naming_the_problem(obj, needle):
    with pytest.raises(ThresholdsError) as info:
        parse_thresholds(obj, "thresholds t.json")
    assert needle in str(info.value) and "t.json" in str(info.value)


def test_thresholds_file_that_is_not_json_names_the_file(tmp_path):
    p = tmp_path / "thresholds.json"
    p.write_text("{oops")
    with pytest.raises(ThresholdsError, match="thresholds.json: not valid JSON"):
        load_thresholds(p)


def test_scope_keeps_deselected_baseline_cases_from_being_called_missing():
    base = by_key([rec("a", workload="w1"), rec("b", workload="w1"), rec("a", workload="w2")])
    cur = by_key([rec("a", workload="w1")])
    cmp = compare(base, cur, scope=Scope.of_run(cur))
    assert [v.verdict for v in cmp.verdicts] == ["same"] and cmp.out_of_scope == 2
    unscoped = compare(base, cur)
    assert unscoped.counts() == {"missing": 2, "same": 1}


def test_scope_by_tier_ignores_the_other_tiers_cases():
    base = by_key([rec("a", problem="p-quick", extra={"tier": "quick"}), rec("a", problem="p-full", extra={"tier": "full"})])
    cur = by_key([rec("a", problem="p-quick", extra={"tier": "quick"})])
    cmp = compare(base, cur, scope=Scope.tiers_of(cur))
    assert cmp.counts() == {"same": 1} and cmp.out_of_scope == 1


def test_min_statistic_judges_the_fastest_sample_and_names_it():
    from attnsuite.verdict import Thresholds, judge
    from tests.gatehelp import rec

    base = rec(median_ms=10.0, min_ms=8.0, iqr_ms=0.1)
    noisy = rec(median_ms=25.0, min_ms=9.0, iqr_ms=0.1)  # a slow run on a busy machine, same best case
    t = Thresholds(time_floor=0.5, statistic="min")
    assert judge(base, noisy, t).verdict == "same"
    slower = rec(median_ms=25.0, min_ms=20.0, iqr_ms=0.1)
    v = judge(base, slower, t)
    assert v.verdict == "slower" and "min 8" in v.message, v.message
    assert judge(base, noisy, Thresholds(time_floor=0.5)).verdict == "slower"  # the median would alarm


@pytest.mark.parametrize("launch_fraction, change, verdict", [
    pytest.param(0.9, 1.20, "same", id="host-bound case 20% slower is inside its 50% floor"),
    pytest.param(0.9, 1.60, "slower", id="host-bound case 60% slower is slower"),
    pytest.param(0.1, 1.20, "slower", id="kernel-bound case 20% slower is slower"),
    pytest.param(None, 1.20, "slower", id="case without a launch measurement 20% slower is slower"),
])
def test_host_bound_cases_get_the_wider_host_bound_floor_on_cuda(launch_fraction, change, verdict):
    t = DEVICE_DEFAULTS["cuda"]
    base = rec(min_ms=1.0, median_ms=1.0, launch_fraction=None)  # an older baseline without the field
    cur = rec(min_ms=change, median_ms=change, launch_fraction=launch_fraction)
    v = judge(base, cur, t)
    assert v.verdict == verdict, v.message
    assert ("(host-bound)" in v.message) == (launch_fraction == 0.9), v.message


def test_the_host_bound_floor_can_be_turned_off_for_a_fixed_runner():
    cfg = parse_thresholds({"version": 1, "device": {"cuda": {"host_bound_floor": 0}}})
    base, cur = rec(min_ms=1.0, launch_fraction=0.9), rec(min_ms=1.2, launch_fraction=0.9)
    t = cfg.for_case(cur, "cuda")
    assert judge(base, cur, t).verdict == "slower"
