"""scripts/carry_wheels.py: a set of files too large for one device call goes over in parts and comes
back byte for byte; a missing, damaged or foreign part is an error that names it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("carry_wheels", REPO / "scripts" / "carry_wheels.py")
carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry)


@pytest.fixture
def wheels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"big.whl": 2500, "mid.whl": 700, "tiny.whl": 10}  # bytes; parts of 1000 below
    for i, (name, size) in enumerate(sizes.items()):
        (src / name).write_bytes(bytes((i * 7 + j) % 251 for j in range(size)))
    return src


def test_parts_stay_under_the_limit_and_a_large_file_is_split_across_them():
    parts = carry.plan({"big.whl": 2500, "mid.whl": 700, "tiny.whl": 10}, 1000)
    assert [sum(n for _, _, n in p) for p in parts] == [1000, 1000, 1000, 210]
    assert [(f, o) for f, o, _ in parts[0] + parts[1] + parts[2][:1]] == [("big.whl", 0), ("big.whl", 1000),
                                                                          ("big.whl", 2000)]
    with pytest.raises(ValueError, match="positive"):
        carry.plan({"a": 1}, 0)


def test_packed_parts_stashed_one_call_at_a_time_join_back_byte_for_byte(wheels, tmp_path):
    parts = carry.pack(wheels, tmp_path / "parts", max_mib=1000 / carry.MiB)
    assert len(parts) == 4
    collected = tmp_path / "machine" / "carry"
    for part in parts:  # one device call each
        carry.stash(part, collected)
    out = carry.unpack(collected, tmp_path / "machine" / "wheels")
    assert sorted(p.name for p in out) == ["big.whl", "mid.whl", "tiny.whl"]
    for p in out:
        assert p.read_bytes() == (wheels / p.name).read_bytes()


def test_a_part_not_yet_stashed_is_named_and_nothing_is_joined(wheels, tmp_path):
    parts = carry.pack(wheels, tmp_path / "parts", max_mib=1000 / carry.MiB)
    collected = tmp_path / "carry"
    for part in parts[:2]:
        carry.stash(part, collected)
    with pytest.raises(carry.CarryError, match=r"part\(s\) \[3, 4\] of 4 not stashed yet"):
        carry.unpack(collected, tmp_path / "out")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_a_damaged_chunk_fails_its_digest_and_leaves_no_file(wheels, tmp_path):
    parts = carry.pack(wheels, tmp_path / "parts", max_mib=1000 / carry.MiB)
    collected = tmp_path / "carry"
    for part in parts:
        carry.stash(part, collected)
    chunk = collected / "mid.whl.0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 1
    chunk.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(carry.CarryError, match="mid.whl: joined file does not match"):
        carry.unpack(collected, out)
    assert "mid.whl" not in os.listdir(out) and not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_part_of_another_set_is_refused(wheels, tmp_path):
    first = carry.pack(wheels, tmp_path / "a", max_mib=1000 / carry.MiB)
    (wheels / "tiny.whl").write_bytes(b"changed")
    second = carry.pack(wheels, tmp_path / "b", max_mib=1000 / carry.MiB)
    carry.stash(first[0], tmp_path / "carry")
    with pytest.raises(carry.CarryError, match="belongs to another set"):
        carry.stash(second[1], tmp_path / "carry")


def test_the_command_line_reports_a_bad_folder_without_a_traceback(tmp_path, capsys):
    assert carry.main(["unpack", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "no manifest.json: no part was stashed there" in capsys.readouterr().err
