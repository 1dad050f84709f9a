"""The baseline store: one JSON file per machine fingerprint under ``baselines/``.

A baseline holds, per case key (``workload/variant/mode/problem-id``, see :mod:`attnsuite.record`),
the fields of a :class:`~attnsuite.record.CaseRecord` that the verdict rule and the reports need,
plus the machine's fingerprint and, optionally, the instance calibration of the recording run.
The file is meant to live in git and be reviewed in pull requests, so:

* keys are sorted and the layout is one field per line (``json.dumps(indent=1, sort_keys=True)``);
* numbers are rounded (times and derived rates to 4 significant digits, bytes to whole bytes), and
  run-to-run details that carry no verdict (compile time, mask build time) are left out, so that
  re-recording an unchanged run on the same machine is a small diff, and a file whose text would
  not change is not rewritten at all;
* writes are atomic (temporary file in the same folder, then ``os.replace``), keep the file's mode
  and its format (a gzip-compressed baseline is written back compressed, :func:`_stored_bytes`),
  write through a symlink to its target, and happen under an exclusive lock of the folder
  (:mod:`attnsuite.filelock`) from reading to replacing, so concurrent writers lose no case;
* reading is defensive (:mod:`attnsuite.json_files`): only regular files up to :data:`MAX_FILE_BYTES`, opened without blocking
  (a FIFO or a link to ``/dev/zero`` is refused, not read), strict JSON (no duplicate keys, at most
  :data:`MAX_JSON_DEPTH` levels), and every number checked (finite, in range; zero where a
  measurement cannot be zero). Every problem is an :class:`InputFileError` naming the file and the
  entry, never a traceback.

This module also reads pytest-benchmark result JSON files (:func:`load_run`), with the same checks,
so that the CLI and the pytest gate accept either a result file or a baseline wherever they take
"a run". Either kind of file may be gzip-compressed, whatever its name (:func:`parse_json_bytes`).

Layout (``version`` 1)::

    {
     "calibration": {"mem_bandwidth_gbs": 3900.0, ...},            (optional)
     "cases": {"<key>": {"backend": "sdpa:flash", "median_ms": 1.234, "outcome": "ok", ...}},
     "fingerprint": {"id": "h100-80gb-...", "gpu_name": "...", "torch": "2.11.0", ...},
     "schema": "attnsuite-baseline",
     "version": 1
    }
"""

from __future__ import annotations

import copy
import fnmatch
import gzip
import json
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, Optional, Sequence

from . import filelock, provenance
from .record import (CALIBRATION_OTHER_CPU, DEVICE_METHODS, MODES, OUTCOMES, TIMERS, CaseRecord, case_key,
                     failed_counts, failed_or_left_by_a_failure)
from .renamed_cases import renamed
# the one JSON reader and the file kinds live in json_files (verdict reads through it too); they are
# names of this module as well, for the callers that read results and baselines through it
from .json_files import (FILE_KINDS, GZIP_MAGIC, MAX_FILE_BYTES, MAX_JSON_DEPTH, SCHEMA_TAG,  # noqa: F401
                         ErrorType, InputFileError, is_baseline_json, json_kind, parse_json_bytes, read_input_bytes,
                         read_json_file, wrong_kind)
from .wording import count, none_of
from .workloads import TIERS

if TYPE_CHECKING:  # for annotations; the module imports verdict where it uses it, as run_from_benchmarks_json does
    from .verdict import Scope

BASELINE_VERSION = 1
RESULT_SCHEMA_VERSION = 1  # the "attnsuite" object the benchmarks add to pytest-benchmark's JSON
DEFAULT_DIR = "baselines"
THRESHOLDS_FILE = "thresholds.json"
# the names a folder's thresholds file may have, in the order looked for: read gzip-compressed or not
# as every JSON input is, a plain one winning where both exist (as for baselines)
THRESHOLDS_NAMES = (THRESHOLDS_FILE, THRESHOLDS_FILE + ".gz")

# Reading limits. A baseline of the full GPU tier is ~0.5 MB and a result file ~30 MB; anything
# larger is not ours, and reading it whole could exhaust memory.
MAX_TIME_MS = 86_400_000.0  # one day: no benchmark call takes longer
MAX_MEM_BYTES = 2**50  # 1 PiB: no device holds more
MAX_TEXT = 1000  # characters of a fingerprint or entry text field (detail is cut to _DETAIL_MAX)
# the "attnsuite" object's list of cases that produced no samples (see run_from_benchmarks_json)
UNMEASURED_KEY = "unmeasured"
OUR_TEST = "test_workload"  # bench/test_workloads.py's test: its entries always carry a record
CALIBRATION_TEXT_MAX = 300  # a calibration string is a short note (device name, method, error)

# Fields kept in a baseline entry, and how each is rounded. Anything else in a CaseRecord is
# either run-to-run noise without a verdict (first-call and mask-build times) or too bulky for a
# reviewed file (``extra``, except the tier and the number of runs).
_TIME_FIELDS = ("median_ms", "iqr_ms", "min_ms",  # min: the statistic the gate compares (verdict.py)
                "device_ms", "device_iqr_ms", "device_min_ms",  # CUDA device time (graph replay / kernel sum)
                "host_overhead_ms")  # event time minus device time: may be negative (noise)
# the time statistics a verdict may judge (verdict.time_basis): a baseline recorded from several
# runs keeps, per case, how far each lay apart over the runs ("instance_spread", combine.py)
SPREAD_FIELDS = ("min_ms", "median_ms", "device_min_ms", "device_ms")
SPREAD_MAX = 100.0  # relative: (max - min) / median over runs cannot plausibly exceed 100x
_RATE_FIELDS = ("flops", "tflops", "pct_peak", "launch_fraction")  # launch_fraction: host-bound cases (verdict.py)
_BYTE_FIELDS = ("peak_mem_bytes", "oom_bytes")
_COUNT_FIELDS = ("samples", "runs")
_TEXT_FIELDS = ("workload", "variant", "mode", "problem", "outcome", "detail", "family", "level",
                "timer", "mem_method", "backend", "device_method")
_REQUIRED = ("workload", "variant", "mode", "problem", "outcome")
_ENTRY_FIELDS = frozenset(_TEXT_FIELDS + _TIME_FIELDS + _RATE_FIELDS + _BYTE_FIELDS + _COUNT_FIELDS
                          + ("materialises", "tier", "instance_spread", provenance.KEY))
_DETAIL_MAX = 300  # an exception text can be long; the first lines say what it was
SIG_DIGITS = 4


class BaselineError(InputFileError):
    """A baseline file that is corrupt, truncated, of another schema version, lacks fields, or
    cannot be written (the message names the path and the reason)."""

    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        super().__init__(path, problem, kind="baseline")


class ResultFileError(InputFileError):
    """A pytest-benchmark result file that cannot be read as attnsuite records (``kind``: what the
    message calls it, for a file that may be either kind)."""

    def __init__(self, path: os.PathLike | str, problem: str, kind: str = "result file") -> None:
        super().__init__(path, problem, kind=kind)


class FingerprintMismatch(ValueError):
    """Two runs from machines that must not be compared (GPU model, major torch or CUDA version)."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


# --------------------------------------------------------------------------- numbers


def round_sig(x: Optional[float], digits: int = SIG_DIGITS) -> Optional[float]:
    """``x`` rounded to ``digits`` significant digits (None, 0 and non-finite values unchanged)."""
    if x is None or isinstance(x, bool):
        return x
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


def _whole(x: Optional[float]) -> Optional[int]:
    return None if x is None else int(round(float(x)))


def _is_number(x: Any) -> bool:
    """A JSON number that is finite (an int of any size is finite; ``math.isfinite`` would
    overflow on a 400-digit one)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, float) and math.isfinite(x)


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error message (a huge integer or text is cut)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        digits = len(str(abs(value)))
        return f"an integer of {digits} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class _Range:
    """The values a numeric field may take."""

    low: float
    high: float
    what: str  # the upper limit in words
    nonzero_when_ok: bool = False  # a measured time of an ok case cannot be zero
    whole: bool = False


_TIME = _Range(0.0, MAX_TIME_MS, "a day")
_TIME_MEASURED = _Range(0.0, MAX_TIME_MS, "a day", nonzero_when_ok=True)
# THE number rule, for baseline entries and result records alike (one table, written once).
_RANGES: dict[str, _Range] = {
    "median_ms": _TIME_MEASURED, "min_ms": _TIME_MEASURED,
    "device_ms": _TIME_MEASURED, "device_min_ms": _TIME_MEASURED,
    "iqr_ms": _TIME, "device_iqr_ms": _TIME, "first_call_ms": _TIME, "mask_build_ms": _TIME,
    "host_overhead_ms": _Range(-MAX_TIME_MS, MAX_TIME_MS, "a day either way"),
    "flops": _Range(0.0, 1e21, "1e21 FLOPs in one call"),
    "tflops": _Range(0.0, 1e5, "100 PFLOP/s"),
    "pct_peak": _Range(0.0, 1e4, "100 times the peak"),
    "launch_fraction": _Range(0.0, 10.0, "10 (it is a share of one call)"),
    "peak_mem_bytes": _Range(0.0, float(MAX_MEM_BYTES), "1 PiB"),
    # what a failed allocation asked for may be absurd (that is why it failed), but not past 64 bits
    "oom_bytes": _Range(0.0, float(2**64), "2**64 bytes"),
    "samples": _Range(0.0, 1e9, "1e9", whole=True),
    "runs": _Range(1.0, 1e6, "1e6", whole=True),
}


def number_problem(name: str, value: Any, outcome: Optional[str] = None) -> Optional[str]:
    """What is wrong with ``value`` as field ``name`` (None when it is acceptable or absent)."""
    rule = _RANGES.get(name)
    if rule is None or value is None:
        return None
    if not _is_number(value):
        if isinstance(value, float):
            return f"{name} is {_show(value)}, not a finite number"
        return f"{name} must be a number, got {_show(value)}"
    if rule.whole and isinstance(value, float) and not value.is_integer():
        return f"{name} must be a whole number, got {_show(value)}"
    if value < rule.low and rule.low < 0:  # a signed figure: absurd either way
        return f"{name} is {_show(value)}, more than {rule.what}: not a plausible measurement"
    if value < rule.low:
        need = "a non-negative number" if rule.low == 0 else f"at least {rule.low:g}"
        return f"{name} must be {need}, got {_show(value)}"
    if value > rule.high:
        return f"{name} is {_show(value)}, more than {rule.what}: not a plausible measurement"
    if rule.nonzero_when_ok and outcome == "ok" and value == 0:
        return f"{name} is 0 in an ok case: a measured time cannot be zero"
    return None


def spread_problems(spread: Any) -> list[str]:
    """What is wrong with an ``instance_spread`` object (none when it is absent or fine)."""
    if spread is None:
        return []
    if not isinstance(spread, dict):
        return [f"instance_spread must be an object of time statistics, got {_show(spread)}"]
    out = []
    for name, value in spread.items():
        if name not in SPREAD_FIELDS:
            out.append(f"instance_spread: unknown statistic {_show(name)} (expected one of {list(SPREAD_FIELDS)})")
        elif not _is_number(value) or not 0 <= value <= SPREAD_MAX:
            out.append(f"instance_spread: {name} must be a number from 0 to {SPREAD_MAX:g}, got {_show(value)}")
    return out


def _text_problem(name: str, value: Any, limit: int = MAX_TEXT) -> Optional[str]:
    """What is wrong with ``value`` as text field ``name`` (None when fine)."""
    if not isinstance(value, str):
        return f"{name} must be text, got {type(value).__name__}"
    if len(value) > limit:
        return f"{name} is {len(value)} characters long, more than {limit}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape: cannot be written back
        return f"{name} holds a character that is not valid Unicode"
    return None


def entry_from_record(rec: CaseRecord) -> dict[str, Any]:
    """The baseline entry of one record: rounded numbers, empty fields left out."""
    e: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(rec, name)
        if value:
            e[name] = str(value)
    if rec.outcome == "ok":
        e.pop("detail", None)  # an ok case's note is not part of what the gate compares
    elif len(e.get("detail", "")) > _DETAIL_MAX:
        e["detail"] = e["detail"][: _DETAIL_MAX - 3] + "..."
    for name in _TIME_FIELDS + _RATE_FIELDS:
        value = getattr(rec, name)
        if value is not None:
            e[name] = round_sig(value)
    for name in _BYTE_FIELDS:
        value = getattr(rec, name)
        if value is not None:
            e[name] = _whole(value)
    if rec.samples:
        e["samples"] = int(rec.samples)
    if rec.materialises is not None:
        e["materialises"] = bool(rec.materialises)
    tier = rec.extra.get("tier") if rec.extra else None
    if tier:
        e["tier"] = str(tier)
    runs = rec.extra.get("runs") if rec.extra else None
    if runs and int(runs) > 1:  # recorded from several runs (combine.py): the median of each statistic
        e["runs"] = int(runs)
    spread = rec.extra.get("instance_spread") if rec.extra else None
    if spread:
        e["instance_spread"] = {k: round_sig(float(spread[k])) for k in SPREAD_FIELDS if k in spread}
    stamp = rec.extra.get(provenance.KEY) if rec.extra else None
    if stamp:  # where the figures came from: not part of what the gate compares (figures_of)
        e[provenance.KEY] = dict(stamp)
    return e


def figures_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry without its provenance: what a recording compares to tell a changed case from an unchanged one."""
    return {k: v for k, v in entry.items() if k != provenance.KEY}


def record_from_entry(key: str, e: Mapping[str, Any]) -> CaseRecord:
    """Rebuild a :class:`CaseRecord` from a validated baseline entry."""
    data = {k: v for k, v in e.items() if k != "tier"}
    rec = CaseRecord.from_extra_info(data)
    if "tier" in e:
        rec.extra["tier"] = e["tier"]
    return rec


# --------------------------------------------------------------------------- fingerprints

# The benchmarks write the fingerprint; these are the names we accept for each field we judge by,
# so that a renamed field degrades to "unknown" instead of a crash.
_FP_ALIASES = {
    "gpu": ("gpu_name", "gpu", "gpu_model", "device_name"),
    "torch": ("torch", "torch_version"),
    "cuda": ("cuda", "cuda_version"),
    "cpu": ("cpu_model", "cpu", "cpu_name"),
    "driver": ("driver", "driver_version", "gpu_driver"),
    "cudnn": ("cudnn", "cudnn_version"),
    "triton": ("triton", "triton_version"),
    "gpu_memory": ("gpu_memory_bytes", "gpu_memory", "memory_bytes", "memory"),
    "cores": ("cpu_usable", "cpu_count"),  # the cores the run may use, else the machine's
}
_NONE_WORDS = {"", "none", "null", "n/a", "cpu"}
# platform.machine() spellings, and the one name each is compared by
_ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
               "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64",
               "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "armv7l": "armv7", "armv6l": "armv6"}
_ARCH_IN_PLATFORM = re.compile(r"(?<![a-z0-9])(" + "|".join(sorted(_ARCH_NAMES, key=len, reverse=True)) + r")(?![a-z0-9])")


def fp_get(fp: Optional[Mapping[str, Any]], what: str) -> Optional[str]:
    """The fingerprint's value for ``what`` (gpu, torch, cuda, cpu, driver, cudnn, triton, cores), or None."""
    if not fp:
        return None
    for name in _FP_ALIASES.get(what, (what,)):
        value = fp.get(name)
        if value is not None and str(value).strip().lower() not in _NONE_WORDS:
            return str(value).strip()
    return None


def fp_arch(fp: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The machine architecture (``x86_64``, ``aarch64``, ...): the ``arch`` field, or for files
    recorded before it existed, the architecture named in the ``platform`` string
    (``Linux-6.1-x86_64-with-glibc2.36``). None when neither says."""
    if not fp:
        return None
    arch = fp.get("arch")
    if isinstance(arch, str) and arch.strip():
        return _ARCH_NAMES.get(arch.strip().lower(), arch.strip().lower())
    plat = fp.get("platform")
    if isinstance(plat, str):
        m = _ARCH_IN_PLATFORM.search(plat.lower())
        if m:
            return _ARCH_NAMES[m.group(1)]
    return None


def fp_cores(fp: Optional[Mapping[str, Any]]) -> Optional[int]:
    """The logical cores the run could use (``cpu_usable``, else ``cpu_count``), or None."""
    value = fp_get(fp, "cores")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def device_kind(fp: Optional[Mapping[str, Any]]) -> str:
    """``"cuda"`` when the fingerprint names a GPU, else ``"cpu"``."""
    return "cuda" if fp_get(fp, "gpu") else "cpu"


def _major(version: Optional[str], parts: int) -> Optional[str]:
    if not version:
        return None
    core = version.split("+")[0]
    return ".".join(core.split(".")[:parts])


def compatibility(base_fp: Optional[Mapping[str, Any]], cur_fp: Optional[Mapping[str, Any]], *,
                  names: tuple[str, str] = ("baseline", "this run")) -> tuple[list[str], list[str]]:
    """Why two machines must not be compared (refusals) and what differs but is tolerated (notes).

    Refused: a different GPU model (or GPU against CPU), a different torch major.minor, a different
    CUDA major; for CPU-only runs a different architecture or number of usable logical cores. A
    different CPU model of CPU-only runs is a note when architecture and core count are known and
    equal (the times are then a rough guide: see :func:`find_baseline`), a refusal when they cannot
    be checked. Noted: driver, cuDNN, triton, minor torch/CUDA differences, and on CUDA the host's
    CPU model and architecture. An absent fingerprint cannot be checked: that is a note. ``names``
    are the two sides as the messages call them (two runs being combined are not a baseline).
    """
    first, second = names
    refusals: list[str] = []
    notes: list[str] = []
    if not base_fp or not cur_fp:
        which = first if not base_fp else second
        notes.append(f"{which} has no machine fingerprint: the machines were not checked to match")
        return refusals, notes
    bg, cg = fp_get(base_fp, "gpu"), fp_get(cur_fp, "gpu")
    ba, ca = fp_arch(base_fp), fp_arch(cur_fp)
    bn, cn = fp_cores(base_fp), fp_cores(cur_fp)
    bc, cc = fp_get(base_fp, "cpu"), fp_get(cur_fp, "cpu")
    if bg != cg:
        refusals.append(f"GPU model differs: {first} {bg or 'no GPU'}, {second} {cg or 'no GPU'}")
    elif not bg:  # CPU-only runs: the CPU is the device
        if ba and ca and ba != ca:
            refusals.append(f"architecture differs (CPU-only runs): {first} {ba}, {second} {ca}")
        if bn and cn and bn != cn:
            refusals.append(f"logical cores usable differ (CPU-only runs): {first} {bn}, {second} {cn}")
        if bc and cc and bc != cc:
            if ba and ca and bn and cn:
                notes.append(f"CPU model differs: {first} {bc}, {second} {cc} (same architecture and core "
                             "count: times are a rough guide)")
            else:
                refusals.append(f"CPU model differs (CPU-only runs) and the architecture or core count is not "
                                f"recorded to show the machines alike: {first} {bc}, {second} {cc}")
    else:  # same GPU: the host only moves host overhead and host-bound cases
        if bc and cc and bc != cc:
            notes.append(f"host CPU differs: {first} {bc}, {second} {cc}")
        if ba and ca and ba != ca:
            notes.append(f"host architecture differs: {first} {ba}, {second} {ca}")
    bt, ct = fp_get(base_fp, "torch"), fp_get(cur_fp, "torch")
    if _major(bt, 2) != _major(ct, 2):
        refusals.append(f"torch major.minor version differs: {first} {bt}, {second} {ct}")
    elif bt != ct:
        notes.append(f"torch differs: {first} {bt}, {second} {ct}")
    bcu, ccu = fp_get(base_fp, "cuda"), fp_get(cur_fp, "cuda")
    if _major(bcu, 1) != _major(ccu, 1):
        refusals.append(f"CUDA major version differs: {first} {bcu or 'none'}, {second} {ccu or 'none'}")
    elif bcu != ccu:
        notes.append(f"CUDA differs: {first} {bcu}, {second} {ccu}")
    for what in ("driver", "cudnn", "triton"):
        b, c = fp_get(base_fp, what), fp_get(cur_fp, what)
        if b != c:
            notes.append(f"{what} differs: {first} {b or 'none'}, {second} {c or 'none'}")
    return refusals, notes


def check_compatible(base_fp: Optional[Mapping[str, Any]], cur_fp: Optional[Mapping[str, Any]], *,
                     allow_mismatch: bool = False, names: tuple[str, str] = ("baseline", "this run")) -> list[str]:
    """Raise :class:`FingerprintMismatch` unless comparable (or allowed); return the notes."""
    refusals, notes = compatibility(base_fp, cur_fp, names=names)
    if refusals and not allow_mismatch:
        raise FingerprintMismatch(refusals)
    return [f"compared despite: {r}" for r in refusals] + notes


_VOLATILE_SUFFIXES = ("_at_start",)  # clocks, temperature, power when the run started


def stable_fingerprint(fp: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint without the fields that change run to run (kept out of baselines so that a
    re-recording does not rewrite them)."""
    return {k: v for k, v in fp.items() if not k.endswith(_VOLATILE_SUFFIXES)}


def fingerprint_id(fp: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The fingerprint's short id (the baseline's file name stem), or None."""
    if not fp:
        return None
    value = fp.get("id")
    return str(value) if value else None


def safe_file_stem(text: str) -> str:
    """A file-name-safe version of a fingerprint id."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip(".-") or "unknown"


def _flat_problems(obj: Any, what: str, *, text_max: int, allow_null: bool) -> list[str]:
    """Problems with a flat object of names to scalars (a fingerprint or a calibration)."""
    if not isinstance(obj, dict):
        return [f"{what} is {type(obj).__name__}, expected an object"]
    if len(obj) > 500:
        return [f"{what} has {len(obj)} fields, more than 500"]
    out = []
    for k, v in obj.items():
        name = f"{what}.{k}"
        if len(k) > 100:
            out.append(f"{what} has a field name of {len(k)} characters")
        elif v is None or isinstance(v, bool):
            if not allow_null:
                out.append(f"{name} must be a number or text, got {_show(v)}")
        elif isinstance(v, (int, float)):
            if not _is_number(v):
                out.append(f"{name} is {_show(v)}, not a finite number")
            elif abs(v) > 1e18:
                out.append(f"{name} is {_show(v)}: not a plausible figure")
        elif isinstance(v, str):
            problem = _text_problem(name, v, text_max)
            if problem:
                out.append(problem)
        else:
            out.append(f"{name} must be a number or text, got {type(v).__name__}")
    return out


def fingerprint_problems(fp: Any, what: str = "fingerprint") -> list[str]:
    """Problems with a machine fingerprint: a flat object of text, numbers, true/false or null."""
    return _flat_problems(fp, what, text_max=MAX_TEXT, allow_null=True)


def calibration_problems(cal: Any, what: str = "calibration") -> list[str]:
    """Problems with an instance calibration: a flat object of finite numbers or short texts."""
    return _flat_problems(cal, what, text_max=CALIBRATION_TEXT_MAX, allow_null=False)


def stable_calibration(cal: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """A calibration as a baseline stores it: floats to 4 significant digits (so a re-recording
    is a small diff), texts cut to :data:`CALIBRATION_TEXT_MAX`, empty values left out."""
    if not cal:
        return None
    out: dict[str, Any] = {}
    for k, v in cal.items():
        if k in _CALIBRATION_FIGURES and _is_number(v) and v <= 0:
            continue  # a failed probe's figure: no reference at all beats a wrong one
        if isinstance(v, float):
            out[str(k)] = round_sig(v)
        elif isinstance(v, str):
            out[str(k)] = v if len(v) <= CALIBRATION_TEXT_MAX else v[: CALIBRATION_TEXT_MAX - 3] + "..."
        elif isinstance(v, int) and not isinstance(v, bool):
            out[str(k)] = v
    return out or None


# --------------------------------------------------------------------------- baseline files


@dataclass
class Baseline:
    """A loaded (or new) baseline: the machine's fingerprint, the entries per case key, and the
    instance calibration of the recording run (None when not recorded)."""

    fingerprint: dict[str, Any]
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Optional[str] = None
    calibration: Optional[dict[str, Any]] = None
    # The file's bytes when it was loaded and the real path they came from: on save, a file
    # changed since by another writer gets only this object's changes (see save_baseline).
    source: Optional[bytes] = field(default=None, repr=False, compare=False)
    source_real: Optional[str] = field(default=None, repr=False, compare=False)

    def records(self) -> dict[str, CaseRecord]:
        """The entries as :class:`CaseRecord` objects, by key."""
        return {rec.key: rec for rec in (record_from_entry(k, e) for k, e in self.cases.items())}

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        obj = {"schema": SCHEMA_TAG, "version": BASELINE_VERSION,
               "fingerprint": dict(self.fingerprint), "cases": dict(self.cases)}
        if self.calibration:
            obj["calibration"] = dict(self.calibration)
        return obj


def dumps_stable(obj: Any) -> str:
    """The store's one serialisation: sorted keys, one field per line, trailing newline."""
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


# a fastest sample above its median is not a measurement (a hand edit, another tool's file): the gate
# judges the minimum and shows the median beside it, so such a pair would judge one and show another
_ORDERED = (("min_ms", "median_ms"), ("device_min_ms", "device_ms"))


def _number(x: Any) -> str:
    """A number as ``:g`` writes it; an integer past float's range (10**500, found by the fuzz test)
    has no ``:g`` and reads as :func:`_show` says."""
    try:
        return f"{x:g}"
    except OverflowError:
        return _show(x)


def order_problems(get: Callable[[str], Any]) -> list[str]:
    """Each statistic pair out of order (a minimum above its median), by the fields' values."""
    out = []
    for low, high in _ORDERED:
        a, b = get(low), get(high)
        if _is_number(a) and _is_number(b) and a > b:
            out.append(f"{low} {_number(a)} is above {high} {_number(b)}: a fastest sample cannot exceed the median")
    return out


# Every measured case has its timer's median: an ok case without one had been judged "same" ("no time
# on one side") under enforce, a 5x slowdown passing, and `attnsuite check` had called the file ok.
MISSING_TIME = "median_ms is missing in an ok case: a measured case has its time, and without it the gate cannot judge it"


def validate_entry(key: str, e: Any) -> list[str]:
    """Problems with one baseline entry (empty list when it is valid), each naming the case."""
    if not isinstance(e, dict):
        return [f"case {key!r}: entry is {type(e).__name__}, not an object"]
    out = []
    missing = [n for n in _REQUIRED if not isinstance(e.get(n), str) or not e.get(n)]
    if missing:
        return [f"case {key!r}: missing fields {missing}"]
    if e["outcome"] not in OUTCOMES:
        out.append(f"case {key!r}: unknown outcome {_show(e['outcome'])} (expected one of {list(OUTCOMES)})")
    if e["mode"] not in MODES:
        out.append(f"case {key!r}: unknown mode {_show(e['mode'])} (expected one of {list(MODES)})")
    expect = case_key(e["workload"], e["variant"], e["mode"], e["problem"])
    if key != expect:
        out.append(f"case {key!r}: key does not match its fields (expected {expect!r})")
    for name in _TIME_FIELDS + _RATE_FIELDS + _BYTE_FIELDS + _COUNT_FIELDS:
        problem = number_problem(name, e.get(name), e["outcome"])
        if problem:
            out.append(f"case {key!r}: {problem}")
    for name in _TEXT_FIELDS + ("tier",):
        problem = _text_problem(name, e[name]) if name in e else None
        if problem:
            out.append(f"case {key!r}: {problem}")
    if "materialises" in e and not isinstance(e["materialises"], bool):
        out.append(f"case {key!r}: materialises must be true or false")
    out.extend(f"case {key!r}: {p}" for p in order_problems(e.get))
    out.extend(f"case {key!r}: {p}" for p in spread_problems(e.get("instance_spread")))
    if provenance.KEY in e:
        out.extend(f"case {key!r}: {p}" for p in provenance.problems(e[provenance.KEY]))
    # what recording never writes (hand edits `attnsuite check` had passed)
    if e["outcome"] == "ok" and e.get("samples") == 0:
        out.append(f"case {key!r}: samples is 0 in an ok case: a measured case has samples")
    if e["outcome"] == "ok" and e.get("median_ms") is None:
        out.append(f"case {key!r}: {MISSING_TIME}")
    if "instance_spread" in e and not (_is_number(e.get("runs")) and e["runs"] > 1):
        out.append(f"case {key!r}: instance_spread without runs > 1: a spread is between several runs")
    if "tier" in e and e["tier"] not in TIERS:
        out.append(f"case {key!r}: unknown tier {_show(e['tier'])} (expected one of {list(TIERS)})")
    # the verdict reads both (a CUDA timer, the device-time method): a value no run writes is a hand
    # edit, and would be judged as something it is not
    for name, allowed in (("timer", TIMERS), ("device_method", DEVICE_METHODS)):
        if e.get(name) and isinstance(e[name], str) and e[name] not in allowed:
            out.append(f"case {key!r}: unknown {name} {_show(e[name])} (expected one of {list(allowed)})")
    unknown = set(e) - _ENTRY_FIELDS
    if unknown:
        out.append(f"case {key!r}: unknown fields {sorted(unknown)[:10]}")
    return out


def other_file_kind(obj: Any) -> str:
    """What another of the suite's JSON files is, said for a message where a baseline or a result file
    was expected ("a gate JSON (a run's verdicts, --attn-gate-json)"), or "" when it is neither."""
    kind = json_kind(obj)
    return FILE_KINDS[kind] if kind in ("thresholds", "gate", "problems") else ""


def validate_baseline_json(obj: Any) -> list[str]:
    """All problems with a baseline's JSON object (empty list when it is valid)."""
    if not isinstance(obj, dict):
        return [f"top level is {type(obj).__name__}, expected an object"]
    if obj.get("schema") != SCHEMA_TAG:
        if "benchmarks" in obj:
            return ["this is a pytest-benchmark result file, not a baseline: make a baseline from it "
                    "with `attnsuite record RESULT.json` or pytest --attn-record-baseline"]
        # named by what they are: both had read '"schema" is None'
        other = other_file_kind(obj)
        if other:
            return [f"this is {other}, not a baseline"]
        return [f"not an attnsuite baseline: \"schema\" is {_show(obj.get('schema'))}, expected {SCHEMA_TAG!r}"]
    version = obj.get("version")
    if version != BASELINE_VERSION or isinstance(version, bool):
        if isinstance(version, int) and not isinstance(version, bool) and version > BASELINE_VERSION:
            return [f"schema version {_show(version)} is newer than this attnsuite reads ({BASELINE_VERSION}): "
                    "upgrade attnsuite"]
        return [f"schema version {_show(version)} is not {BASELINE_VERSION}: re-record the baseline with this attnsuite"]
    out = []
    fp = obj.get("fingerprint")
    if not isinstance(fp, dict):
        out.append(_field_problem(obj, "fingerprint", "an object"))
    else:
        out.extend(fingerprint_problems(fp))
        if not fp.get("id") or not isinstance(fp.get("id"), str):
            out.append("fingerprint has no \"id\" (text)")
        else:
            # an id names the device kind first (fingerprint.fingerprint_id): one that contradicts the
            # fingerprint's own device was edited by hand, and which machine it is for cannot be told
            kind = fp["id"].split("-", 1)[0]
            if kind in ("cpu", "cuda") and fp.get("device") in ("cpu", "cuda") and kind != fp["device"]:
                out.append(f"fingerprint id {fp['id']!r} names a {kind} machine, its \"device\" is "
                           f"{fp['device']!r}: which machine the baseline is for cannot be told")
    cases = obj.get("cases")
    if not isinstance(cases, dict):
        out.append(_field_problem(obj, "cases", "an object of case key to entry"))
    else:
        for key, e in cases.items():
            out.extend(validate_entry(key, e))
    if "calibration" in obj:
        out.extend(calibration_problems(obj["calibration"]))
        cal = obj["calibration"] if isinstance(obj["calibration"], dict) else {}
        out.extend(f"calibration.{name} is {_show(cal[name])}: a probe's figure is above 0"
                   for name in _CALIBRATION_FIGURES if _is_number(cal.get(name)) and cal[name] <= 0)
        # a figure written as text ("0.16") had passed, and every report then called it absent
        out.extend(f"calibration.{name} is {_show(cal[name])}: a probe's figure is a number"
                   for name in _CALIBRATION_FIGURES
                   if cal.get(name) is not None and (isinstance(cal[name], bool) or not isinstance(cal[name], (int, float))))
    extra = set(obj) - {"schema", "version", "fingerprint", "cases", "calibration"}
    if extra:
        out.append(f"unknown top-level fields {sorted(extra)[:10]}")
    return out


def _baseline_from_bytes(raw: bytes, path: os.PathLike | str, real: Optional[str] = None) -> Baseline:
    obj = parse_json_bytes(raw, path, BaselineError)
    problems = validate_baseline_json(obj)
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise BaselineError(path, "; ".join(shown))
    cal = obj.get("calibration")
    cases: dict[str, Any] = {}
    for key, entry in obj["cases"].items():
        # an entry recorded before its case was renamed (attnsuite.renamed_cases) reads under the new key;
        # an entry already under that key (recorded since) wins
        new = renamed(entry, round_sig)
        if new is None:
            cases[key] = entry
        else:
            cases.setdefault(case_key(new["workload"], new["variant"], new["mode"], new["problem"]), new)
    return Baseline(fingerprint=dict(obj["fingerprint"]), cases=cases, path=str(path),
                    calibration=dict(cal) if cal else None, source=raw,
                    source_real=real or os.path.realpath(path))


def load_baseline(path: os.PathLike | str) -> Baseline:
    """Load and validate a baseline file; :class:`BaselineError` names the file and every problem."""
    return _baseline_from_bytes(read_input_bytes(path, BaselineError), path)


# --------------------------------------------------------------------------- writing files


def _file_mode_for(path: Path) -> int:
    """The mode a (re)written file gets: the existing file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _same_content(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file holding exactly ``data`` (read only when sizes match)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        with open(path, "rb") as fh:
            return fh.read(len(data) + 1) == data
    except OSError:
        return False


def atomic_write_text(path: os.PathLike | str, text: str | bytes) -> bool:
    """Write ``text`` (a str, written as UTF-8, or bytes, written as they are: a gzip-compressed
    baseline) to ``path`` atomically; return False when the file already held it.

    A temporary file in the target's folder (``.<name>.<random>.tmp``, removed on any failure,
    Ctrl-C included), then ``os.replace``. A symlink is written through to its target (the link
    stays a link); an existing file keeps its mode; a file that already holds exactly ``text``
    is left alone (mtime untouched). Raises ``OSError`` when the folder cannot be written.
    """
    real = Path(os.path.realpath(path))
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    if _same_content(real, data):
        return False
    real.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode_for(real)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes the file 0600
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True


def _write_error(path: os.PathLike | str, exc: OSError) -> BaselineError:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) and str(exc.filename) != str(path) else ""
    return BaselineError(path, f"cannot be written: {exc.strerror or exc}{where}")


class _Lock:
    """The store's lock on the folder of a baseline's real path; errors become BaselineError."""

    def __init__(self, target: os.PathLike | str) -> None:
        self.target = str(target)
        self.real = Path(os.path.realpath(target))
        self._cm: Any = None

    def __enter__(self) -> "_Lock":
        self._cm = filelock.exclusive(self.real.parent)
        try:
            self._cm.__enter__()
        except OSError as exc:
            raise BaselineError(self.target, f"cannot lock its folder {self.real.parent}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._cm.__exit__(*exc_info)


def _current_bytes(lock: _Lock) -> Optional[bytes]:
    """The target's bytes now (None when absent); a directory or FIFO there is a BaselineError."""
    if not os.path.lexists(lock.real):
        return None
    return read_input_bytes(lock.real, BaselineError) if lock.real.exists() else None


def _rebase(ours: Baseline, theirs_raw: bytes, lock: _Lock) -> Baseline:
    """``ours`` re-applied on the file as another writer left it: their cases, with the cases we
    added, changed or removed since we read the file (so neither writer loses an update)."""
    theirs = _baseline_from_bytes(theirs_raw, lock.target, str(lock.real))
    loaded: dict[str, Any] = {}
    if ours.source is not None and ours.source_real == str(lock.real):
        loaded = parse_json_bytes(ours.source, lock.target, BaselineError)["cases"]  # it may be gzip
    merged = dict(theirs.cases)
    for key, entry in ours.cases.items():
        if loaded.get(key) != entry:
            merged[key] = entry
    for key in loaded:
        if key not in ours.cases:
            merged.pop(key, None)
    return Baseline(fingerprint=ours.fingerprint, cases=dict(sorted(merged.items())), path=ours.path,
                    calibration=ours.calibration if ours.calibration else theirs.calibration)


def _save_locked(baseline: Baseline, lock: _Lock, current: Optional[bytes]) -> bool:
    """Write ``baseline`` to the locked target whose bytes are ``current``; False when unchanged."""
    same_file = baseline.source_real == str(lock.real)
    loaded = baseline.source if same_file else None
    if current is not None and current != loaded:
        baseline_to_write = _rebase(baseline, current, lock)
    else:
        baseline_to_write = baseline
    obj = baseline_to_write.to_json()
    problems = validate_baseline_json(obj)
    if problems:  # never write a file that the loader would refuse
        raise BaselineError(lock.target, "refusing to write an invalid baseline: " + "; ".join(problems[:5]))
    data = _stored_bytes(dumps_stable(obj), lock.real, current)
    try:
        written = atomic_write_text(lock.real, data)
    except OSError as exc:
        raise _write_error(lock.target, exc) from None
    baseline.cases = baseline_to_write.cases
    baseline.calibration = baseline_to_write.calibration
    baseline.source, baseline.source_real = data, str(lock.real)
    return written


def _stored_bytes(text: str, real: Path, current: Optional[bytes]) -> bytes:
    """The bytes a baseline's ``text`` is stored as at ``real`` (whose bytes are now ``current``, None
    when absent): the file keeps its format, gzip in, gzip out (a refresh had written a ``.json.gz``
    back as plain JSON); a new file is gzip-compressed when its name ends in ``.gz``. The gzip header
    carries no time (``mtime=0``), so an unchanged baseline compresses to the same bytes and is not
    rewritten."""
    data = text.encode("utf-8")
    packed = current.startswith(GZIP_MAGIC) if current is not None else real.name.endswith(".gz")
    return gzip.compress(data, mtime=0) if packed else data


def save_baseline(baseline: Baseline, path: os.PathLike | str | None = None) -> str:
    """Validate and write ``baseline`` to ``path`` (default: its own path); return the path.

    Under the folder's lock: when another writer changed the file since ``baseline`` was loaded
    from it (or created it since a new baseline was made), only this object's own changes are
    applied on top of theirs. Unchanged text is not rewritten. Every failure (invalid content, a
    directory or FIFO at the path, a full disk, no permission) is a :class:`BaselineError` naming
    the path, and the file on disk is left as it was.
    """
    target = str(path or baseline.path or "")
    if not target:
        raise ValueError("save_baseline: no path given and the baseline has none")
    with _Lock(target) as lock:
        _save_locked(baseline, lock, _current_bytes(lock))
    baseline.path = target
    return target


# --------------------------------------------------------------------------- result files


@dataclass
class Run:
    """The cases of one run, from a result file or a baseline: what the gate compares."""

    records: dict[str, CaseRecord]
    fingerprint: Optional[dict[str, Any]]
    path: Optional[str] = None
    kind: str = "result"  # "result" or "baseline"
    foreign: int = 0  # benchmarks in a result file that carry no attnsuite record
    calibration: Optional[dict[str, Any]] = None  # the instance calibration probes of the run
    # what the run selected (a verdict.Scope, stored by the pytest gate as attnsuite.scope): a later
    # compare of this file judges the same cases as the run's own gate did (None: a file without it, or a baseline)
    scope: Optional[Any] = None
    # the settings that made the run simulate something (--attn-inject-slowdown, --attn-mem-cap), in
    # words: its figures are not the code's own, so no baseline is recorded from it (simulated_settings)
    simulated: tuple[str, ...] = ()
    # why the session that wrote the file did not run to its end ("" when it did): it holds a part
    # of its selection, so no baseline is recorded from it
    interrupted: str = ""
    # the identity of the session that wrote the file ("" in a file without one): its gate JSON has the same
    run_id: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.path}" if self.path else self.kind


_RECORD_NUMBERS = tuple(_RANGES)
_RECORD_TEXTS = _TEXT_FIELDS


def record_problems(rec: CaseRecord) -> list[str]:
    """Problems with a record read from a result file (the same number rule as baseline entries).

    Empty optional text fields may be null in the file; they are normalised to ``""`` here.
    """
    out = []
    for name in ("workload", "variant", "mode", "problem"):
        value = getattr(rec, name)
        if not isinstance(value, str) or not value:
            out.append(f"{name} must be non-empty text, got {_show(value)}")
    if out:
        return out
    if rec.mode not in MODES:
        out.append(f"unknown mode {_show(rec.mode)} (expected one of {list(MODES)})")
    for name in _RECORD_TEXTS:
        if getattr(rec, name) is None:
            setattr(rec, name, "")
        problem = _text_problem(name, getattr(rec, name), limit=1 << 20)
        if problem:
            out.append(problem)
    for name in _RECORD_NUMBERS:
        problem = number_problem(name, getattr(rec, name, None), rec.outcome)
        if problem:
            out.append(problem)
    out.extend(order_problems(lambda name: getattr(rec, name, None)))
    if rec.samples is None:
        rec.samples = 0
    if rec.outcome == "ok" and rec.median_ms is None:
        out.append(MISSING_TIME)
    if not isinstance(rec.extra, dict):
        return out + ["extra must be an object"]
    problem = number_problem("runs", rec.extra.get("runs"))
    if problem:
        out.append(problem)
    out.extend(spread_problems(rec.extra.get("instance_spread")))
    if rec.extra.get("tier") is not None:
        problem = _text_problem("tier", rec.extra["tier"], limit=100)
        if problem:
            out.append(problem)
    if rec.materialises is not None and not isinstance(rec.materialises, bool):
        out.append("materialises must be true, false or null")
    if "confirm" in rec.extra and rec.extra["confirm"] is not None:
        confirm = rec.extra["confirm"]  # the re-measurement of a flagged case: judged, so checked alike
        if not isinstance(confirm, dict):
            out.append(f"confirm must be an object, got {type(confirm).__name__}")
        else:
            try:
                out.extend(f"confirm: {p}" for p in record_problems(CaseRecord.from_extra_info(confirm)))
            except (TypeError, ValueError, AttributeError) as exc:
                out.append(f"confirm: {str(exc)[:200]}")
    return out


def benchmark_entries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case entry of a pytest-benchmark JSON object this suite wrote: pytest-benchmark's own
    ``benchmarks`` (cases with samples) and ``attnsuite.unmeasured`` (skipped, out of memory,
    failed: kept apart so pytest-benchmark's ``compare`` shows no 0 ns rows)."""
    meta = obj.get("attnsuite")
    unmeasured = meta.get(UNMEASURED_KEY) if isinstance(meta, dict) else None
    return list(obj.get("benchmarks") or []) + list(unmeasured or [])


def run_from_benchmarks_json(obj: Mapping[str, Any], path: Optional[str] = None) -> Run:
    """The attnsuite records of a pytest-benchmark JSON object (``ResultFileError`` when malformed).

    Every record is checked with the store's number rule (NaN, negative, zero or absurd times are
    refused, naming the benchmark and the field), as are the fingerprint and the calibration.
    """
    where = path or "<result>"
    if not isinstance(obj, Mapping):
        raise ResultFileError(where, f"top level is {type(obj).__name__}, expected an object")
    benches = obj.get("benchmarks")
    if not isinstance(benches, list):
        other = other_file_kind(obj)  # a gate JSON given as NEW had read only "not a ... result file"
        raise ResultFileError(where, f"this is {other}, not a pytest-benchmark result file" if other else
                              "no \"benchmarks\" list: not a pytest-benchmark result file")
    meta = obj.get("attnsuite")
    fp = None
    calibration = None
    if meta is not None and not isinstance(meta, dict):
        raise ResultFileError(where, f"\"attnsuite\" is {type(meta).__name__}, expected an object")
    if isinstance(meta, dict):
        version = meta.get("schema")
        if version is not None and (version != RESULT_SCHEMA_VERSION or isinstance(version, bool)):
            raise ResultFileError(where, f"attnsuite schema {_show(version)}, this attnsuite reads {RESULT_SCHEMA_VERSION}")
        if meta.get("fingerprint") is not None:
            problems = fingerprint_problems(meta["fingerprint"], "attnsuite.fingerprint")
            if problems:
                raise ResultFileError(where, "; ".join(problems[:5]))
            fp = dict(meta["fingerprint"])
        if meta.get("calibration") is not None:
            calibration = meta["calibration"]
            # a failed probe leaves its error text here: a long one is cut, not a reason to refuse the run
            if isinstance(calibration, dict):
                calibration = {k: (v[: CALIBRATION_TEXT_MAX - 3] + "..." if isinstance(v, str) and len(v) > CALIBRATION_TEXT_MAX
                                   else v) for k, v in calibration.items()}
            problems = calibration_problems(calibration, "attnsuite.calibration")
            if problems:
                raise ResultFileError(where, "; ".join(problems[:5]))
            calibration = dict(calibration) or None
    simulated = simulated_settings(meta) if isinstance(meta, dict) else ()
    interrupted = meta.get("interrupted") if isinstance(meta, dict) else None
    if interrupted is not None and (not isinstance(interrupted, str) or _text_problem("interrupted", interrupted)):
        raise ResultFileError(where, f"\"attnsuite.interrupted\" must be a short text, got {_show(interrupted)}")
    run_id = meta.get("run_id") if isinstance(meta, dict) else None
    if run_id is not None and (not isinstance(run_id, str) or _text_problem("run_id", run_id)):
        raise ResultFileError(where, f"\"attnsuite.run_id\" must be a short text, got {_show(run_id)}")
    scope = meta.get("scope") if isinstance(meta, dict) else None
    if scope is not None:
        from .verdict import Scope  # verdict does not import this module: no cycle

        try:
            scope = Scope.from_json(scope, "attnsuite.scope")
        except ValueError as exc:
            raise ResultFileError(where, str(exc)) from None
    # cases without samples (skipped, out of memory, failed) are kept beside pytest-benchmark's list,
    # so its own `compare` does not show them as 0 ns results (plugin_bench.pytest_benchmark_update_json)
    unmeasured = meta.get(UNMEASURED_KEY) if isinstance(meta, dict) else None
    if unmeasured is not None and not isinstance(unmeasured, list):
        raise ResultFileError(where, f"\"attnsuite.{UNMEASURED_KEY}\" is {type(unmeasured).__name__}, expected a list")
    benches = benchmark_entries(obj)
    records: dict[str, CaseRecord] = {}
    where_first: dict[str, str] = {}
    foreign = 0
    for i, b in enumerate(benches):
        info = b.get("extra_info") if isinstance(b, dict) else None
        name = (b.get("fullname") or b.get("name") or f"#{i}") if isinstance(b, dict) else f"#{i}"
        name = name if isinstance(name, str) else f"#{i}"
        if not isinstance(info, dict) or "workload" not in info:
            if name.split("::")[-1].startswith(f"{OUR_TEST}["):  # one of ours without its record: damaged
                raise ResultFileError(where, f"benchmark {name[:200]}: its extra_info is {_show(info)}, not the "
                                             "attnsuite record this suite's benchmarks write (the file was edited or "
                                             "damaged); its case cannot be judged")
            foreign += 1  # another project's benchmark in the same file: left out, and the gate says so
            continue
        try:
            rec = CaseRecord.from_extra_info(renamed(info) or info)  # recorded before a rename: today's name
            problems = record_problems(rec)
        except (TypeError, ValueError, AttributeError) as exc:  # e.g. "extra" that is not an object
            problems = [str(exc)[:300]]
        if problems:
            raise ResultFileError(where, f"benchmark {name[:200]}: " + "; ".join(problems[:5]))
        if rec.key in records:
            # a run writes one record per case: a second one (an edited or concatenated file) had been
            # taken as "the last one counts", so a faster copy appended to a file hid a 12x slowdown
            raise ResultFileError(where, f"case {rec.key} has two records (benchmarks {where_first[rec.key]} and "
                                         f"{name[:200]}): a result file holds one record per case (was it edited "
                                         "or two files joined?); `attnsuite record` combines several runs")
        records[rec.key] = rec
        where_first[rec.key] = name[:200]
    stamp = provenance.of_result(obj)  # when and at which commit: each entry recorded from it keeps it
    if stamp:
        for rec in records.values():
            rec.extra.setdefault(provenance.KEY, dict(stamp))
    return Run(records=records, fingerprint=fp, path=path, kind="result", foreign=foreign,
               calibration=calibration, scope=scope, simulated=simulated, interrupted=interrupted or "",
               run_id=run_id or "")


def simulated_settings(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The simulation settings a result's ``attnsuite`` object records, in words (empty when none):
    a slowdown injected into some variants, or a memory cap that turns cases into out-of-memory."""
    out = []
    inject = meta.get("inject_slowdown")
    if isinstance(inject, dict) and inject:
        shown = " ".join(f"{name}={factor}" for name, factor in sorted(inject.items()))
        out.append(f"--attn-inject-slowdown {shown} (a simulated slowdown)")
    cap = meta.get("mem_cap_bytes")
    if cap is not None:
        out.append(f"--attn-mem-cap {cap} bytes (a simulated memory limit)")
    return tuple(out)


def load_run(path: os.PathLike | str, kind: str = "result file") -> Run:
    """A result file or a baseline file, read as a :class:`Run` (errors name the file, as ``kind``
    until it reads as a baseline); either may be gzip-compressed (:func:`parse_json_bytes`).

    A result file whose benchmarks carry no attnsuite record at all is refused: judged as NEW it
    had read as every baseline case missing, as OLD as every case new. Benchmarks without a
    record beside attnsuite's are left out and counted (``Run.foreign``).
    """
    p = Path(path)

    def err(where: Any, problem: str) -> ResultFileError:
        return ResultFileError(where, problem, kind)

    raw = read_input_bytes(p, err)
    obj = parse_json_bytes(raw, p, err)
    if is_baseline_json(obj):
        b = _baseline_from_bytes(raw, p)
        return Run(records=b.records(), fingerprint=b.fingerprint, path=str(p), kind="baseline",
                   calibration=b.calibration)
    if not isinstance(obj, dict):
        raise err(p, f"top level is {type(obj).__name__}, expected an object")
    other = json_kind(obj)
    if other and other not in ("results", "baseline"):
        # a thresholds file or gate JSON given as OLD/NEW or --baseline had read "not a pytest-benchmark
        # result file", where a baseline is as welcome (an outside tester's trial)
        raise err(p, f"this is {FILE_KINDS[other]}, not a result file or a baseline")
    if not isinstance(obj.get("benchmarks"), list):  # neither kind: said under the caller's name for it
        raise err(p, "neither a pytest-benchmark result file (no \"benchmarks\" list) nor an attnsuite baseline "
                     "(no \"schema\" naming one)")
    run = run_from_benchmarks_json(obj, str(p))  # a result file from here on: its errors say so
    if run.foreign and not run.records:
        raise ResultFileError(p, f"it has {run.foreign} benchmarks and no attnsuite record (a pytest-benchmark "
                                 "file from another suite?)")
    return run


def load_results(path: os.PathLike | str) -> Run:
    """A pytest-benchmark result file (only) as a :class:`Run`."""
    run = load_run(path)
    if run.kind != "result":
        raise ResultFileError(path, "this is a baseline, not a pytest-benchmark result file")
    return run


# --------------------------------------------------------------------------- finding and recording


def baseline_names_for(fp: Mapping[str, Any]) -> tuple[str, str]:
    """The file names a baseline of this fingerprint may have: ``<fingerprint id>.json`` and, kept
    gzip-compressed, ``<fingerprint id>.json.gz``."""
    fid = fingerprint_id(fp)
    if not fid:
        raise ValueError("the fingerprint has no id, so its baseline file cannot be named")
    stem = safe_file_stem(fid)
    return f"{stem}.json", f"{stem}.json.gz"


def baseline_path_for(fp: Mapping[str, Any], directory: os.PathLike | str = DEFAULT_DIR) -> Path:
    """Where the baseline of this fingerprint lives: ``<directory>/<fingerprint id>.json``, or the
    ``.json.gz`` of that name where only that one exists (recording keeps a file's format: a
    compressed baseline had been passed over by the lookup and a plain one written beside it)."""
    plain, packed = (Path(directory) / name for name in baseline_names_for(fp))
    return packed if not os.path.lexists(plain) and os.path.lexists(packed) else plain


def baseline_files(directory: os.PathLike | str) -> list[Path]:
    """The baseline candidates in a folder: every ``*.json`` and ``*.json.gz`` except the thresholds
    config and hidden files (the store's temporary files and lock are hidden)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for pattern in ("*.json", "*.json.gz") for p in d.glob(pattern)
                  if p.name not in THRESHOLDS_NAMES and not p.name.startswith("."))


@dataclass
class Lookup:
    """The outcome of looking for a run's baseline: a path (or None) and what was found, in words.

    ``fallback`` is True when the file is not this machine's own (no file of its fingerprint id)
    but a compatible machine's; ``promise`` then says what the comparison can and cannot promise.
    ``notes`` lists candidate files that were skipped (unreadable, not a baseline, invalid).
    """

    path: Optional[Path]
    message: str
    fallback: bool = False
    promise: str = ""
    notes: list[str] = field(default_factory=list)


def fallback_promise(base_fp: Mapping[str, Any], cur_fp: Mapping[str, Any], notes: Sequence[str]) -> str:
    """What comparing a run with a compatible machine's baseline can and cannot promise."""
    bc, cc = fp_get(base_fp, "cpu") or "an unknown CPU", fp_get(cur_fp, "cpu") or "an unknown CPU"
    if device_kind(cur_fp) == "cpu" and bc != cc:
        return (f"recorded on {bc}, this run is on {cc}: outcomes, missing cases and memory are compared as usual; "
                "times come from another CPU model and are a rough guide only")
    differs = "; ".join(notes) or "only the fingerprint id differs"
    host = " (host overhead and host-bound cases measure the host)" if device_kind(cur_fp) == "cuda" and bc != cc else ""
    return (f"recorded on a machine of the same model ({differs}): outcomes, missing cases, memory and times are "
            f"compared as usual; a time verdict may come from that difference rather than from the code{host}")


def find_baseline(fp: Optional[Mapping[str, Any]], directory: os.PathLike | str = DEFAULT_DIR) -> Lookup:
    """The baseline for fingerprint ``fp`` in ``directory``.

    The file named by the fingerprint id wins. Failing that, a compatible machine's baseline (see
    :func:`compatibility`: same device kind and GPU model, same torch major.minor and CUDA major;
    on CPU the same architecture and usable core count, the CPU model may differ) is the fallback:
    one of the same CPU model first, then any; among equals the first by file name, and the
    message says how many there were. Candidates that cannot be read (a FIFO, a link to a device,
    a file over the size limit, invalid JSON or an invalid baseline) are skipped with a note and
    never block the scan; loading the chosen file validates it again.
    """
    d = Path(directory)
    fid = fingerprint_id(fp)
    if not fid or fp is None:
        return Lookup(None, "this run has no machine fingerprint id, so no baseline can be found by "
                            "itself; name one with --attn-baseline")
    exact = baseline_path_for(fp, d)
    if os.path.lexists(exact):
        return Lookup(exact, f"baseline {exact} (fingerprint {fid})")
    skipped: list[str] = []
    refused: list[str] = []
    candidates: list[tuple[int, str, Path, dict[str, Any], list[str]]] = []
    for p in baseline_files(d):
        try:
            raw = read_input_bytes(p, BaselineError)
            cand = _baseline_from_bytes(raw, p)
        except BaselineError as exc:
            skipped.append(f"{p.name} ({exc.problem})")
            continue
        refusals, notes = compatibility(cand.fingerprint, fp)
        if refusals:
            refused.append(f"{p.name} ({'; '.join(refusals)})")
            continue
        same_cpu = fp_get(cand.fingerprint, "cpu") == fp_get(fp, "cpu")
        candidates.append((0 if same_cpu else 1, p.name, p, cand.fingerprint, notes))
    skip_note = f"; skipped unreadable or invalid files: {', '.join(skipped)}" if skipped else ""
    if not candidates:
        others = ", ".join(p.name for p in baseline_files(d)) or "none"
        why = f"; none is compatible: {', '.join(refused)}" if refused else ""
        return Lookup(None, f"no baseline for this machine: looked for {exact} (fingerprint {fid}); baselines "
                            f"present: {others}{why}{skip_note}", notes=skipped)
    candidates.sort(key=lambda c: (c[0], c[1]))
    rank, _, path, base_fp, notes = candidates[0]
    ties = sum(1 for c in candidates if c[0] == rank)
    choice = ("the only compatible baseline" if len(candidates) == 1 else
              f"first by name of {ties} equally good compatible baselines ({len(candidates)} compatible in all)")
    promise = fallback_promise(base_fp, fp, notes)
    return Lookup(path, f"baseline {path} (fallback: no {exact.name} for fingerprint {fid}; {choice}): "
                        f"{promise}{skip_note}", fallback=True, promise=promise, notes=skipped)


@dataclass
class MergeSummary:
    """What recording changed in a baseline, by case key."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # measured (ok) entries left in place because this run's case failed outright (crash, timeout, ...)
    # or was left unrun by such a failure
    kept: list[str] = field(default_factory=list)
    # measured (ok) entries replaced by this run's unmeasured outcome (skipped, oom): their figures are gone
    unmeasured: list[str] = field(default_factory=list)
    # (key, runs before, runs now) of entries recorded from more runs than now replace them: the spread
    # over those runs, which widened each one's band, is gone with them
    fewer_runs: list[tuple[str, int, int]] = field(default_factory=list)
    # the stored calibration before and after, when recording replaced it (the reference of every
    # case's "% of peak", not only of the cases recorded): None when it stayed as it was
    calibration_change: Optional[tuple[Optional[dict[str, Any]], dict[str, Any]]] = None
    notes: list[str] = field(default_factory=list)  # e.g. how --prune chose what it may remove

    def __str__(self) -> str:
        text = (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed")
        if self.removed:  # what --prune erased, by name: the user must be able to see it was what they meant
            names = sorted(self.removed)
            text += f" ({', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''})"
        if self.kept:
            text += (f"; {len(self.kept)} measured case(s) kept, not replaced by this run's failure or a skip it caused "
                     f"(e.g. {', '.join(self.kept[:3])}): a failing case stays a failure for the gate")
        if self.unmeasured:
            text += (f"; {len(self.unmeasured)} measured case(s) now recorded without figures, as this run's skip "
                     f"or out-of-memory (e.g. {', '.join(self.unmeasured[:3])}): their times and memory are gone "
                     "from the baseline")
        if self.fewer_runs:
            key, before, now = self.fewer_runs[0]
            text += (f"; {len(self.fewer_runs)} case(s) recorded from more runs before now hold fewer (e.g. {key}: "
                     f"{before} -> {now}): the spread over the earlier runs, which widened their noise band, is gone "
                     "(record from as many runs to keep it)")
        if self.calibration_change is not None:
            text += "; " + calibration_change_text(*self.calibration_change)
        for note in self.notes:
            text += f"; {note}"
        return text


# the calibration's figures (calibrate.probe); its other fields (method, device, probe time) are notes
_CALIBRATION_FIGURES = ("mem_bandwidth_gbs", "matmul_tflops")


def recorded_failures(run: "Run", merged: MergeSummary) -> str:
    """A line saying how many of the cases ``merged`` wrote into the baseline failed outright, by
    outcome, naming a few ("" when none did): a recorded failure is what a later run is judged
    against, and the summary's "4 added" had said nothing of the 4 being errors. Said by
    ``attnsuite record`` and by pytest's ``--attn-record-baseline`` alike."""
    written = {key: run.records[key] for key in (*merged.added, *merged.updated, *merged.unchanged)}
    failed = failed_counts(written)
    if not failed:
        return ""
    keys = sorted(key for key, rec in written.items() if rec.outcome in failed)
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in failed.items())
    return (f"  {count(len(keys), 'recorded case')} failed ({outcomes}): a later run is judged against those "
            f"outcomes (e.g. {', '.join(keys[:3])})")


def calibration_change_text(old: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> str:
    """``calibration replaced: mem_bandwidth_gbs 25.3 -> 24.1, matmul_tflops 0.51 -> 0.49``: the
    probe's figures before and after ("none" where one side has none)."""
    if not old:
        shown = ", ".join(f"{name} {_figure(new.get(name))}" for name in _CALIBRATION_FIGURES)
        return f"calibration recorded (there was none): {shown}"
    shown = ", ".join(f"{name} {_figure(old.get(name))} -> {_figure(new.get(name))}" for name in _CALIBRATION_FIGURES)
    return f"calibration replaced: {shown}"


def _figure(value: Any) -> str:
    return f"{value:g}" if _is_number(value) else "none"


def passes_filter(rec: CaseRecord, workloads: Collection[str] = (), cases: Collection[str] = ()) -> bool:
    """Whether a case passes ``record``'s ``--workload`` names and ``--case`` globs (fnmatch on the
    case key); no names or globs pass everything."""
    return ((not workloads or rec.workload in workloads)
            and (not cases or any(fnmatch.fnmatchcase(rec.key, p) for p in cases)))


def select_records(records: Mapping[str, CaseRecord], *, workloads: Iterable[str] = (),
                   cases: Iterable[str] = ()) -> dict[str, CaseRecord]:
    """The records of the named workloads and matching case-key patterns (fnmatch); all if none given."""
    wl, pats = set(workloads), list(cases)
    return {k: r for k, r in records.items() if passes_filter(r, wl, pats)}


@dataclass(frozen=True)
class Selection:
    """The baseline cases a recording answers for: what ``--prune`` may remove when the runs lack them.

    A case is inside when it lies inside the stored selection (``attnsuite.scope``, a
    :class:`~attnsuite.verdict.Scope`) of at least one of the runs recorded from, and passes the
    ``--workload``/``--case`` filter. A run recorded with ``--attn-only``, ``--attn-dtype``,
    ``--attn-mode``, ``-k`` ... answers only for what it selected: pruning by its workload alone
    had removed every other case of that workload.
    """

    scopes: tuple[Scope, ...]  # one per run
    workloads: frozenset[str] = frozenset()
    cases: tuple[str, ...] = ()
    unscoped: tuple[str, ...] = ()  # runs without a stored selection: their workloads and tiers stood in
    # the variants the runs have any case of (None: every variant counts as measured). A run that did
    # not load an outside variant's file (a forgotten --attn-variants) has none of its cases: plain
    # --prune had removed that variant's recorded figures (a fresh-user trial)
    measured_variants: Optional[frozenset[str]] = None

    def __contains__(self, rec: CaseRecord) -> bool:
        return self.selected(rec) and not self.spares(rec)

    def selected(self, rec: CaseRecord) -> bool:
        """Whether ``rec`` passes the filters and lies inside a run's stored selection."""
        return passes_filter(rec, self.workloads, self.cases) and any(rec in scope for scope in self.scopes)

    def spares(self, rec: CaseRecord) -> bool:
        """Whether --prune keeps ``rec`` only because no run measured its variant: without a ``--case``
        glob naming its cases, a variant the runs lack entirely is not taken as removed from the code."""
        return not self.cases and self.measured_variants is not None and rec.variant not in self.measured_variants

    def note(self) -> Optional[str]:
        """What the output should say about how the selection was found (None: every run stored one)."""
        if not self.unscoped:
            return None
        return (f"--prune: no selection stored in {', '.join(self.unscoped)} (attnsuite.scope: written before "
                "it was kept), so the workloads and tiers it ran stood in for it")


def selection_of(runs: Sequence[Run], *, workloads: Iterable[str] = (), cases: Iterable[str] = ()) -> Selection:
    """The :class:`Selection` of the runs a recording is made from, narrowed by its filters."""
    from .verdict import Scope  # verdict does not import this module: no cycle

    scopes, unscoped = [], []
    for run in runs:
        if run.scope is not None:
            scopes.append(run.scope)
            continue
        # a file without a stored selection: its workloads, as pruning had always used, within the
        # tiers it ran (the gate's own rule for such a file, gate.run_scope)
        scopes.append(Scope(workloads=frozenset(r.workload for r in run.records.values()),
                            tiers=Scope.tiers_of(run.records).tiers))
        unscoped.append(run.path or run.label)
    return Selection(scopes=tuple(scopes), workloads=frozenset(workloads), cases=tuple(cases),
                     unscoped=tuple(unscoped),
                     measured_variants=frozenset(r.variant for run in runs for r in run.records.values()))


class OlderRun(ValueError):
    """A recording would put a run's figures over entries recorded from a newer run (or prune them)."""


def merge_into(baseline: Optional[Baseline], records: Mapping[str, CaseRecord], fingerprint: Mapping[str, Any], *,
               prune_inside: Optional[Selection] = None, allow_mismatch: bool = False,
               calibration: Optional[Mapping[str, Any]] = None, allow_older: bool = False,
               label: str = "this run") -> tuple[Baseline, MergeSummary]:
    """``baseline`` (a new one when None) with ``records`` written into it, as a new object; other cases stay untouched.

    With ``prune_inside``, a baseline case inside that selection that ``records`` lack is removed
    (a case that no longer exists). ``records`` must then be every case of the runs that passes
    the selection's filter, so that a case inside and absent really was not measured. A baseline
    from an incompatible machine is refused (:class:`FingerprintMismatch`) unless
    ``allow_mismatch``. ``calibration`` (the run's instance calibration) replaces the baseline's
    when it covers every case (:func:`_record_calibration`), and the summary says so. An entry
    recorded from a newer run than the one replacing or pruning it (its ``recorded`` time,
    :mod:`attnsuite.provenance`) refuses the whole merge (:class:`OlderRun`) unless ``allow_older``;
    an entry whose figures do not change keeps its own provenance.
    """
    summary = MergeSummary()
    baseline = copy.deepcopy(baseline)  # a refused merge (OlderRun, a mismatch) leaves the caller's as it was
    newer: list[tuple[str, Any, Any]] = []  # (key, the entry's provenance, the run's)
    latest = provenance.combined(r.extra.get(provenance.KEY) for r in records.values())
    if baseline is None:
        baseline = Baseline(fingerprint=stable_fingerprint(fingerprint))
    else:
        check_compatible(baseline.fingerprint, fingerprint, allow_mismatch=allow_mismatch)
        check_same_cpu_model(baseline.fingerprint, fingerprint, allow_mismatch=allow_mismatch)
        baseline.fingerprint = stable_fingerprint(fingerprint)
    for key in sorted(records):
        entry = entry_from_record(records[key])
        old = baseline.cases.get(key)
        # A crash or a timeout recorded over a measured entry would turn the next real crash into "same"
        # and lose the figures the next fix is judged against: the measured entry stays, and so does one
        # that the failure left unrun (a hung variant's other cases, skipped: their figures had gone)
        if old is not None and old.get("outcome") == "ok" and failed_or_left_by_a_failure(records[key]):
            summary.kept.append(key)
            continue
        if old is None:
            summary.added.append(key)
        elif figures_of(old) == figures_of(entry):
            summary.unchanged.append(key)
            continue  # the same figures: the entry and where it says they came from stay
        else:
            summary.updated.append(key)
            if provenance.is_newer(old.get(provenance.KEY), entry.get(provenance.KEY)):
                newer.append((key, old.get(provenance.KEY), entry.get(provenance.KEY)))
            if old.get("outcome") == "ok" and records[key].outcome != "ok":
                summary.unmeasured.append(key)
            elif (old.get("runs") or 1) > (entry.get("runs") or 1):
                summary.fewer_runs.append((key, int(old.get("runs") or 1), int(entry.get("runs") or 1)))
        baseline.cases[key] = entry
    if prune_inside is not None:
        spared: dict[str, int] = {}
        for key in sorted(baseline.cases):
            if key in records:
                continue
            rec = record_from_entry(key, baseline.cases[key])
            if rec in prune_inside:
                if provenance.is_newer(baseline.cases[key].get(provenance.KEY), latest):
                    newer.append((key, baseline.cases[key].get(provenance.KEY), latest))
                del baseline.cases[key]
                summary.removed.append(key)
            elif prune_inside.selected(rec):  # kept only because no run measured its variant
                spared[rec.variant] = spared.get(rec.variant, 0) + 1
        note = prune_inside.note()
        if note:
            summary.notes.append(note)
        if spared:
            summary.notes.append(spared_note(spared))
    if newer and not allow_older:
        key, old_stamp, new_stamp = newer[0]
        raise OlderRun(f"{count(len(newer), 'case')} of the baseline {'was' if len(newer) == 1 else 'were'} recorded "
                       f"from a run newer than {label}, which would replace or prune {'it' if len(newer) == 1 else 'them'} "
                       f"(e.g. {key}: recorded {provenance.describe(old_stamp)}; {label}: "
                       f"{provenance.describe(new_stamp)}); the baseline is left as it was (--allow-older records anyway)")
    baseline.cases = dict(sorted(baseline.cases.items()))
    _record_calibration(baseline, stable_calibration(calibration), records, summary)
    return baseline, summary


def spared_note(spared: Mapping[str, int]) -> str:
    """What --prune kept of variants no run measured, and the command that removes one on purpose."""
    listed = ", ".join(f"{name} ({count(n, 'case')})" for name, n in sorted(spared.items()))
    first = sorted(spared)[0]
    return (f"--prune kept the cases of {count(len(spared), 'variant')} no run measured: {listed} (an outside "
            "variant whose file the run did not load, --attn-variants, keeps its figures); to drop a variant "
            f"taken out of the code, name its cases: --case '*/{first}/*' --prune")


def _record_calibration(baseline: Baseline, new: Optional[dict[str, Any]], records: Mapping[str, CaseRecord],
                        summary: MergeSummary) -> None:
    """The calibration answers for every case of the baseline: a recording replaces it only when it
    leaves no case of another recording behind (a new file, or every case recorded or pruned now). A
    partial refresh keeps it (it had put one machine's probe over cases measured on another) and says so."""
    if not new or new == baseline.calibration:
        return
    # a measured entry that this run's failure left in place (summary.kept) is another recording's too
    others = [k for k in baseline.cases if k not in records or k in summary.kept]
    if baseline.calibration and others:
        shown = ", ".join(f"{name} {_figure(new.get(name))}" for name in _CALIBRATION_FIGURES)
        summary.notes.append(f"calibration kept: {count(len(others), 'case')} of {len(baseline.cases)} "
                             f"{'was' if len(others) == 1 else 'were'} recorded by other runs (this run's: {shown})")
        return
    summary.calibration_change = (baseline.calibration, new)
    baseline.calibration = new


def _field_problem(obj: Mapping[str, Any], name: str, expected: str) -> str:
    """A top-level field that is absent, or present with the wrong type, in the words that fit."""
    if name not in obj:
        return f"missing field \"{name}\" ({expected})"
    return f"field \"{name}\" is {_json_type(obj[name])}, expected {expected}"


def _json_type(value: Any) -> str:
    """A JSON value's type as JSON names it (a list is an array, None is null)."""
    for kind, name in ((bool, "a boolean"), (dict, "an object"), (list, "an array"), (str, "a string"),
                       ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def check_same_cpu_model(base_fp: Optional[Mapping[str, Any]], cur_fp: Optional[Mapping[str, Any]], *,
                         allow_mismatch: bool = False, first: str = "the baseline was recorded",
                         second: str = "this run is") -> None:
    """Refuse to put CPU-only numbers of two CPU models into one baseline (recording into another
    model's file, or combining runs of two models): another model's baseline may stand in for
    comparing (a fallback, see :func:`find_baseline`), but mixing them would relabel one machine's
    numbers as the other's. :class:`FingerprintMismatch` unless ``allow_mismatch``. ``first`` says
    what ``base_fp`` is and ``second`` what ``cur_fp`` is (when runs are combined: "the first run is",
    "another is")."""
    if allow_mismatch or device_kind(cur_fp) != "cpu" or device_kind(base_fp) != "cpu":
        return
    theirs, ours = fp_get(base_fp, "cpu"), fp_get(cur_fp, "cpu")
    if theirs and ours and theirs != ours:
        own = safe_file_stem(fingerprint_id(cur_fp) or "id")
        raise FingerprintMismatch([f"{first} on {theirs}, {second} on {ours}: another CPU "
                                   "model's baseline is compared with as a fallback, never recorded into or combined "
                                   f"with; record this machine's own file ({own}.json)"])


def refuse_unrecordable(runs: Sequence[Run], *, prune: bool = False, allow_interrupted: bool = False) -> None:
    """ValueError naming the first of ``runs`` a baseline must not be recorded from: a run with a simulated
    slowdown or memory cap, or one from an interrupted session (unless ``allow_interrupted``, never with
    ``prune``). Called on each run before they are combined, so the file at fault is named."""
    for source in runs:
        if source.interrupted and (prune or not allow_interrupted):
            how = ("--prune would remove every case it did not reach" if prune else
                   "record from a run that finished, or pass --allow-interrupted to record the cases it finished")
            raise ValueError(f"{source.label}: the session that wrote it was {source.interrupted}, so it holds "
                             f"part of its selection; {how} (the baseline is left as it was)")
        if source.simulated:
            raise ValueError(f"{source.label} was run with {'; '.join(source.simulated)}: its figures are not the "
                             "code's own, and a baseline recorded from them would hide real regressions (the "
                             "baseline is left as it was)")


def record_baseline(run: Run, path: os.PathLike | str, *, workloads: Iterable[str] = (),
                    cases: Iterable[str] = (), prune: bool = False, allow_mismatch: bool = False,
                    sources: Sequence[Run] = (), allow_interrupted: bool = False,
                    allow_older: bool = False) -> MergeSummary:
    """Record or refresh the baseline at ``path`` from ``run``, optionally only some workloads/cases.

    Several runs of one machine are combined first, per case, by
    :func:`attnsuite.combine.combine_runs` (the CLI's ``attnsuite record r1 r2 r3`` does); pass
    them as ``sources`` so that ``prune`` knows what each selected (default: ``run`` alone). With
    ``prune``, a baseline case is removed only when it lies inside a source's stored selection,
    passes the filters, and ``run`` lacks it (:class:`Selection`).

    A run without a case, or filters that select none of its cases, is refused (ValueError):
    recording nothing had still replaced the baseline's calibration, the reference of every case.
    A run from an interrupted session is refused unless ``allow_interrupted``: then the cases it
    finished are recorded (each case is written whole or not at all) and the baseline's other
    entries stay; never with ``prune``, which would read every case the run did not reach as removed.
    Entries recorded from a newer run are not replaced or pruned unless ``allow_older`` (:class:`OlderRun`).
    Reading the existing file, merging and writing happen under the folder's exclusive lock, so
    concurrent recorders lose no case. An existing file must load cleanly (a corrupt baseline is
    never silently overwritten). Everything is checked before the one write: when anything fails
    (a run of another machine, a run without a fingerprint, an invalid record, a write error)
    the file is left exactly as it was.
    """
    if not isinstance(run, Run):
        raise TypeError(f"record_baseline records one Run, got {type(run).__name__}: combine several runs "
                        "with attnsuite.combine.combine_runs first")
    one = run
    if not one.fingerprint or not fingerprint_id(one.fingerprint):
        raise ValueError(f"{one.label} has no machine fingerprint with an id: a baseline must say which machine it is for")
    if not one.records:
        raise ValueError(f"{one.label} has no case: nothing to record (the baseline is left as it was)")
    refuse_unrecordable([*sources, one], prune=prune, allow_interrupted=allow_interrupted)
    workloads, cases = list(workloads), list(cases)
    chosen = select_records(one.records, workloads=workloads, cases=cases)
    asked = " ".join([f"--workload {w}" for w in workloads] + [f"--case {c}" for c in cases])
    if not chosen and not prune:
        raise ValueError(f"{asked}: {none_of(len(one.records), 'case')} of {one.label} passes: nothing to record "
                         "(the baseline is left as it was)")
    inside = selection_of(list(sources) or [one], workloads=workloads, cases=cases) if prune else None
    with _Lock(path) as lock:
        current = _current_bytes(lock)
        existing = _baseline_from_bytes(current, path, str(lock.real)) if current is not None else None
        baseline, summary = merge_into(existing, chosen, one.fingerprint, prune_inside=inside,
                                       allow_mismatch=allow_mismatch, calibration=one.calibration,
                                       allow_older=allow_older, label=one.label)
        if not chosen and not summary.removed:
            # --prune with a filter no case of the run passes removes what the run lacks (a variant taken
            # out of the code: it had been refused as "nothing to record"); removing nothing either, it is
            # the typo it was refused as
            raise ValueError(f"{asked}: {none_of(len(one.records), 'case')} of {one.label} passes and no baseline "
                             f"case inside it is absent from the run: nothing to record or prune"
                             f"{_outside_selection(existing, inside)} (the baseline is left as it was)")
        baseline.path = str(path)
        _save_locked(baseline, lock, current)
    return summary


def _outside_selection(baseline: Optional[Baseline], inside: Optional[Selection]) -> str:
    """For a prune that removed nothing: the baseline cases the filters pass that lie outside what the
    runs selected, as the reason ("" when there are none). The documented recipe for a removed variant,
    tried with a run of other variants (--attn-only), had been refused with no word of why."""
    if baseline is None or inside is None:
        return ""
    records = (record_from_entry(k, e) for k, e in baseline.cases.items())
    outside = [r.key for r in records if passes_filter(r, inside.workloads, inside.cases) and r not in inside]
    if not outside:
        return ""
    return (f": the baseline's {count(len(outside), 'case')} that the filters pass (e.g. {outside[0]}) "
            f"{'lies' if len(outside) == 1 else 'lie'} outside what the run selected (its --attn-only, --attn-mode, "
            "-k ...), and --prune removes only cases a run selected and lacks: prune with a run that selected "
            f"{'it' if len(outside) == 1 else 'them'}")


def cases_by_run_count(runs: Sequence[Run], keys: Optional[Collection[str]] = None) -> str:
    """How many cases (of ``keys``, default all) came from how many of ``runs``, most runs first:
    ``4 cases from 3 runs, 44 from 1 run``. A combined baseline's median of "3 runs" holds only for the
    cases all three ran."""
    counts: dict[int, int] = {}
    for key in {k for run in runs for k in run.records if keys is None or k in keys}:
        n = sum(1 for run in runs if key in run.records)
        counts[n] = counts.get(n, 0) + 1
    parts = []
    for i, n in enumerate(sorted(counts, reverse=True)):
        noun = ("case" if counts[n] == 1 else "cases") if i == 0 else ""
        parts.append(f"{counts[n]} {noun + ' ' if noun else ''}from {n} run{'s' if n != 1 else ''}")
    return ", ".join(parts)
