"""Fuzzing the store's loaders: whatever a file holds, loading it either works or raises
:class:`attnsuite.baseline.InputFileError` (a BaselineError or ResultFileError naming the file),
never anything else. A loaded file is usable: its records rebuild and it serialises again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnsuite import baseline as bl
from gatehelp import FP_H100, rec, result_json

FUZZ = settings(max_examples=int(os.environ.get("ATTN_FUZZ_EXAMPLES", "200")), deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**500), max_value=10**500)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
LOADERS = [bl.load_baseline, bl.load_run]


def _valid_baseline() -> dict:
    records = [rec(), rec("oom", outcome="oom", median_ms=None, device_ms=None, oom_bytes=1 << 30)]
    b, _ = bl.merge_into(None, {r.key: r for r in records}, FP_H100, calibration={"mem_bandwidth_gbs": 3900.0})
    return b.to_json()


# one file rewritten per example: cheaper than a folder each; removed when the process exits
_TMP = tempfile.TemporaryDirectory(prefix="attn-fuzz-")
_DIR = Path(_TMP.name)


def _load(loader, data: bytes) -> None:
    p = _DIR / "f.json"
    p.write_bytes(data)
    try:
        loaded = loader(p)
    except bl.InputFileError as exc:
        assert str(p) in str(exc)
        return
    records = loaded.records() if isinstance(loaded, bl.Baseline) else loaded.records
    if isinstance(loaded, bl.Baseline):
        assert records.keys() == loaded.cases.keys()
        bl.dumps_stable(loaded.to_json())  # what it would write back
    for r in records.values():
        bl.entry_from_record(r)  # recording from it works


# each example goes through both loaders (load_baseline, load_run): half the generation time


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_load_or_raise_an_input_file_error(data):
    for loader in LOADERS:
        _load(loader, data)


@FUZZ
@given(value=json_values)
def test_arbitrary_json_values_load_or_raise_an_input_file_error(value):
    for loader in LOADERS:
        _load(loader, json.dumps(value).encode())


@FUZZ
@given(path=st.sampled_from(["fingerprint", "calibration", "case", "entry-field", "top"]), name=st.text(max_size=12),
       value=json_values)
def test_a_valid_baseline_with_one_value_replaced_loads_or_raises_an_input_file_error(path, name, value):
    obj = _valid_baseline()
    entry = next(iter(obj["cases"].values()))
    target = {"fingerprint": obj["fingerprint"], "calibration": obj["calibration"],
              "case": obj["cases"], "entry-field": entry, "top": obj}[path]
    field = name or next(iter(entry)) if path == "entry-field" else name
    target[field] = value
    for loader in LOADERS:
        _load(loader, json.dumps(obj).encode())


@FUZZ
@given(field=st.sampled_from(sorted(bl._RANGES) + list(bl._TEXT_FIELDS) + ["extra", "materialises", "confirm"]),
       value=json_values)
def test_a_result_file_with_one_record_field_replaced_loads_or_raises_a_result_file_error(field, value):
    obj = result_json([rec()], FP_H100)
    info = obj["benchmarks"][0]["extra_info"]
    if field == "confirm":
        info["extra"] = {"confirm": value}
    else:
        info[field] = value
    _load(bl.load_run, json.dumps(obj).encode())
