"""scripts/instance_spread.py: how far each case's event and device time moved between two runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from attnsuite import baseline as bl
from gatehelp import FP_H100, by_key, rec, write_result

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("instance_spread", ROOT / "scripts" / "instance_spread.py")
spread = importlib.util.module_from_spec(spec)
spec.loader.exec_module(spread)


def _write(folder, name, records) -> str:
    return str(write_result(folder / name, records))


def test_changes_pair_ok_cases_and_keep_the_launch_fraction():
    a = bl.Run(by_key([rec("x", min_ms=1.0, device_min_ms=0.5, launch_fraction=0.9),
                       rec("y", min_ms=2.0, median_ms=2.1, device_min_ms=2.0, launch_fraction=0.1),
                       rec("z", outcome="error")]), FP_H100)
    b = bl.Run(by_key([rec("x", min_ms=2.0, median_ms=2.1, device_min_ms=0.51, launch_fraction=0.95),
                       rec("y", min_ms=2.0, median_ms=2.1, device_min_ms=2.2, device_ms=2.3, launch_fraction=0.1),
                       rec("z")]), FP_H100)
    rows = {key.split("/")[1]: (lf, dev, ev) for lf, dev, ev, key in spread.changes(a, b)}
    assert set(rows) == {"x", "y"}  # z failed in one run: not a time comparison
    assert rows["x"] == (0.95, pytest.approx(0.02), pytest.approx(1.0))
    assert rows["y"] == (0.1, pytest.approx(0.1), pytest.approx(0.0))


def test_the_command_prints_host_bound_figures_and_refuses_a_bad_file(tmp_path, capsys):
    a = _write(tmp_path, "a.json", [rec("x", min_ms=1.0, device_min_ms=0.5, launch_fraction=0.9)])
    b = _write(tmp_path, "b.json", [rec("x", min_ms=1.5, median_ms=1.6, device_min_ms=0.505, launch_fraction=0.9)])
    assert spread.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "host-bound: 1 cases; |device min change| median 1.00%" in out and "event min change| median 50.0%" in out
    (tmp_path / "bad.json").write_text("{")
    assert spread.main([a, str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_cases_whose_triton_kernels_chose_another_config_are_listed_with_their_change(tmp_path, capsys):
    def tuned(name, device_ms, configs):
        r = rec(name, min_ms=device_ms * 1.1, median_ms=device_ms * 1.2, device_min_ms=device_ms, launch_fraction=0.1)
        r.extra["triton_configs"] = configs
        return r

    a = _write(tmp_path, "a.json", [
        tuned("t", 1.0, {"flash_fwd": "BLOCK_M=128 w8 s3", "flash_pre": "BLOCK_M=64 w4 s1"}),
        tuned("same", 1.0, {"flash_fwd": "BLOCK_M=128 w8 s3"}), tuned("untuned", 1.0, {})])
    b = _write(tmp_path, "b.json", [
        tuned("t", 0.95, {"flash_fwd": "BLOCK_M=64 w4 s2", "flash_pre": "BLOCK_M=64 w4 s1"}),
        tuned("same", 1.01, {"flash_fwd": "BLOCK_M=128 w8 s3"}), tuned("untuned", 1.0, {})])
    assert spread.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "Triton tile configs that differ between the runs: 1" in out, out
    assert "flash_fwd: BLOCK_M=128 w8 s3 -> BLOCK_M=64 w4 s2  (device -5.00%)" in out, out
