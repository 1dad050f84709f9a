"""``attnsuite ab`` names the working tree's own thresholds file when the base tree's judges the A/B."""

from __future__ import annotations

import gzip
import json

import pytest

from attnsuite import ab


@pytest.mark.parametrize("name", ["thresholds.json", "thresholds.json.gz"])
def test_a_working_tree_thresholds_file_the_base_lacks_is_named_gzip_compressed_or_not(tmp_path, name):
    repo, base = tmp_path / "repo", tmp_path / "base"
    (repo / "baselines").mkdir(parents=True)
    (base / "baselines").mkdir(parents=True)
    text = json.dumps({"version": 1, "default": {"time_floor": 0.5}}).encode()
    (repo / "baselines" / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    words = ab.working_thresholds_unused(repo, base, base / "baselines", None, "main")
    assert f"the working tree's baselines/{name} is not in main" in words, words
    assert f"--thresholds {repo / 'baselines' / name}" in words, words
