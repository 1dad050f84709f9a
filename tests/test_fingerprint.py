"""The machine fingerprint: what it records, and that the file-name id does not move with new fields."""

from __future__ import annotations

import platform

from attnsuite import baseline as bl
from attnsuite import fingerprint


def test_machine_info_records_the_architecture_as_platform_machine_says():
    info = fingerprint.machine_info("cpu")
    assert info["arch"] == platform.machine()
    assert bl.fp_arch(info) == bl.fp_arch({"platform": info["platform"]}), "the field and the platform text agree"


def test_the_architecture_is_not_part_of_the_id_so_existing_baseline_names_still_match():
    info = fingerprint.machine_info("cpu")
    assert fingerprint.fingerprint_id({**info, "arch": "something-else"}) == info["id"]
    old = {"device": "cpu", "cpu_model": "AMD EPYC", "cpu_usable": 2, "torch": "2.13.0+cpu"}
    assert fingerprint.fingerprint_id(old) == "cpu-amd-epyc-2c-torch2.13"


def test_machine_info_is_a_valid_flat_fingerprint_for_the_store():
    assert bl.fingerprint_problems(fingerprint.machine_info("cpu")) == []
