"""scripts/ab_eval.py, which measures `attnsuite ab` itself: its bookkeeping on synthetic A/B results,
the runs it plans, and its refusal of a working tree that is not the base (no benchmark runs here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ab_eval", ROOT / "scripts" / "ab_eval.py")
ev = importlib.util.module_from_spec(spec)
sys.modules["ab_eval"] = ev
spec.loader.exec_module(ev)


def case(variant: str, base_ms: float, change: float | None, verdict: str = "same", gating: bool = False) -> dict:
    flags = [verdict] if verdict in ("slower", "faster") else []
    return {"key": f"fa-sweep/{variant}/fwd/b1-q{int(base_ms * 1000)}-h2-d64-bf16-cuda", "verdict": verdict,
            "flags": flags, "gating": gating, "time_change": change, "base_ms": base_ms, "band": 0.03,
            "message": f"{verdict} {change}"}


def test_tally_counts_false_alarms_per_run_and_catches_only_on_cases_of_the_floor_or_more():
    aa1 = ({"cases": [case("sdpa", 1.0, 0.01), case("flash", 0.5, -0.02)]}, {"name": "aa1", "inject": None})
    aa2 = ({"cases": [case("sdpa", 1.0, 0.09, "slower", gating=True), case("flash", 0.5, None)]},
           {"name": "aa2", "inject": None})
    inj = ({"cases": [case("flash", 1.0, 0.05, "slower", gating=True),  # caught
                      case("flash", 0.3, 0.02),  # missed: reported with its measured change
                      case("flash", 0.1, 0.01),  # under 0.2 ms: not counted either way
                      case("sdpa", 1.0, 0.0)]},  # another variant in an injection run: an A/A case
           {"name": "inj3-flash-0.05", "inject": ["flash", 0.05]})
    t = ev.tally([aa1, aa2, inj], min_ms=0.2)
    aa = t["aa"]
    assert (aa["runs"], aa["runs_with_gating"], aa["cases_judged"], aa["false_alarms"]) == (2, 1, 4, 1)
    assert aa["alarms"][0]["run"] == "aa2" and aa["rate"] == pytest.approx(0.25)
    slot = t["injection"]["flash=0.05"]
    assert (slot["cases"], slot["caught"], slot["small"]) == (2, 1, 1)
    assert slot["rate"] == 0.5 and slot["missed"][0]["time_change"] == 0.02
    md = ev.markdown({**t, "machine": "Test GPU", "base": "HEAD", "rounds": 3, "min_ms": 0.2, "selection": "-k x",
                      "runs": [{"seconds": 90.0}, {"seconds": 110.0}], "command": "ab_eval.py"})
    assert "| A/A: unchanged code, gating verdicts | 2 (1 with one) | 4 | 1 | 25.00% |" in md
    assert "| flash slowed 5%: caught (median measured +5.0%) | 1 | 2 | 1 | 50.0% |" in md
    assert "2 A/B run(s) measured here took 200 s, 90-110 s each (6 pytest processes per run)" in md


@pytest.mark.parametrize("spec_text", ["flash", "flash=", "=0.05", "flash=0", "flash=abc", "flash=20"])
def test_a_malformed_injection_is_a_usage_error_naming_it(spec_text, capsys):
    with pytest.raises(SystemExit) as exc:
        ev.main(["--aa", "0", "--inject", spec_text])
    assert exc.value.code == 2 and repr(spec_text) in capsys.readouterr().err


def test_the_runs_are_planned_in_order_with_the_injection_on_the_head_rounds_only(tmp_path, monkeypatch):
    seen = []

    def fake_run_ab(args, name, inject):
        seen.append((name, ev.ab_command(args, tmp_path, name, inject)))
        return {"cases": [case("flash", 1.0, 0.1 if inject else 0.0, "slower" if inject else "same")]}, \
            {"name": name, "inject": list(inject) if inject else None, "seconds": 1.0}

    monkeypatch.setattr(ev, "run_ab", fake_run_ab)
    monkeypatch.setattr(ev, "check_unchanged", lambda repo, base: None)
    assert ev.main(["--out", str(tmp_path), "--aa", "2", "--inject", "flash=0.1", "--", "--attn-only", "flash"]) == 0
    assert [n for n, _ in seen] == ["aa1", "aa2", "inj3-flash-0.1"]
    for name, cmd in seen:
        assert cmd[cmd.index("--gate") + 1] == "report" and cmd[-3:] == ["--", "--attn-only", "flash"]
        # each file is named after the whole run name, dots included (inj3-flash-0.1.md, not inj3-flash-0.md)
        assert [cmd[cmd.index(o) + 1] for o in ("--json", "--markdown", "--out")] == [
            str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.md"), str(tmp_path / f"{name}-rounds")]
        assert ("--head-arg=--attn-inject-slowdown=flash=0.1" in cmd) == name.startswith("inj")
    text = (tmp_path / "summary.md").read_text()
    assert "| flash slowed 10%: caught" in text and "| A/A: unchanged code, gating verdicts | 2 (0 with one)" in text


def test_a_working_tree_that_differs_from_the_base_is_refused(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    for args in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(repo), "add", "a.py"], check=True)
    with pytest.raises(SystemExit, match="differs from HEAD"):
        ev.check_unchanged(repo, "HEAD")
    with pytest.raises(SystemExit, match="cannot compare the working tree with no-such-ref"):
        ev.check_unchanged(repo, "no-such-ref")


def test_an_interrupted_evaluation_keeps_its_finished_runs_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    done = []

    def fake_run_ab(args, name, inject):
        if done:
            raise KeyboardInterrupt
        done.append(name)
        return {"cases": []}, {"name": name, "inject": None, "seconds": 1.0}

    monkeypatch.setattr(ev, "run_ab", fake_run_ab)
    monkeypatch.setattr(ev, "check_unchanged", lambda repo, base: None)
    assert ev.main(["--out", str(tmp_path), "--aa", "3"]) == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 of 3 runs" in err and "with --resume carries on" in err
    assert not (tmp_path / "summary.md").exists()  # no summary of a part, read as if it were the whole


def test_stop_after_starts_no_run_that_the_longest_run_so_far_says_would_end_past_it(tmp_path, monkeypatch, capsys):
    clock = [0.0]
    started = []

    def fake_run_ab(args, name, inject):
        started.append(name)
        took = 100.0 if len(started) == 1 else 120.0
        clock[0] += took
        return {"cases": []}, {"name": name, "inject": None, "seconds": took}

    monkeypatch.setattr(ev, "run_ab", fake_run_ab)
    monkeypatch.setattr(ev, "check_unchanged", lambda repo, base: None)
    monkeypatch.setattr(ev.time, "monotonic", lambda: clock[0])
    # at 220 s the longest run so far (120 s) would end at 340 s: within 340 starts a third run, 339 does not
    assert ev.main(["--out", str(tmp_path / "a"), "--aa", "5", "--stop-after", "339"]) == 3
    assert started == ["aa1", "aa2"]
    assert "stopped before run aa3 (2 of 5 done)" in capsys.readouterr().err
    started.clear()
    clock[0] = 0.0
    assert ev.main(["--out", str(tmp_path / "b"), "--aa", "5", "--stop-after", "340"]) == 3
    assert started == ["aa1", "aa2", "aa3"]
    assert not (tmp_path / "a" / "summary.md").exists()  # a part is not summarised as if it were the whole


def test_stop_after_never_holds_back_a_run_that_resume_reuses(tmp_path):
    args = ev.argparse.Namespace(stop_after=10.0, resume=True, out=str(tmp_path))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "aa2.json").write_text("{}")
    long_run = [({}, {"seconds": 500.0})]
    assert ev.enough_time(args, long_run, "aa2", elapsed=600.0)
    assert not ev.enough_time(args, long_run, "aa3", elapsed=600.0)
    assert ev.enough_time(args, [], "aa3", elapsed=600.0)  # nothing measured yet: the first run starts
