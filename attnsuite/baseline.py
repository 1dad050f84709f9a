"""The baseline store: one JSON file per machine fingerprint under ``baselines/``.

A baseline holds, per case key (``workload/variant/mode/problem-id``, see :mod:`attnsuite.record`),
the fields of a :class:`~attnsuite.record.CaseRecord` that the verdict rule and the reports need.
The file is meant to live in git and be reviewed in pull requests, so:

* keys are sorted and the layout is one field per line (``json.dumps(indent=1, sort_keys=True)``);
* numbers are rounded (times and derived rates to 4 significant digits, bytes to whole bytes), and
  run-to-run details that carry no verdict (compile time, mask build time, minimum) are left out,
  so that re-recording an unchanged run on the same machine is a small diff;
* writes are atomic (temporary file in the same folder, then ``os.replace``);
* loading validates the schema and says which file is wrong and how (:class:`BaselineError`).

This module also reads pytest-benchmark result JSON files (:func:`load_results`), so that the CLI
and the pytest gate accept either a result file or a baseline wherever they take "a run".

Layout (``version`` 1)::

    {
     "cases": {"<key>": {"backend": "sdpa:flash", "median_ms": 1.234, "outcome": "ok", ...}},
     "fingerprint": {"id": "h100-80gb-...", "gpu_name": "...", "torch": "2.11.0", ...},
     "schema": "attnsuite-baseline",
     "version": 1
    }
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .record import MODES, OUTCOMES, CaseRecord, case_key

SCHEMA_TAG = "attnsuite-baseline"
BASELINE_VERSION = 1
RESULT_SCHEMA_VERSION = 1  # the "attnsuite" object the benchmarks add to pytest-benchmark's JSON
DEFAULT_DIR = "baselines"
THRESHOLDS_FILE = "thresholds.json"

# Fields kept in a baseline entry, and how each is rounded. Anything else in a CaseRecord is
# either run-to-run noise without a verdict (first-call and mask-build times, the minimum) or too
# bulky for a reviewed file (``extra``, except the tier).
_TIME_FIELDS = ("median_ms", "iqr_ms", "min_ms")  # min: the statistic the gate compares (verdict.py)
_RATE_FIELDS = ("flops", "tflops", "pct_peak", "launch_fraction")  # launch_fraction: host-bound cases (verdict.py)
_BYTE_FIELDS = ("peak_mem_bytes", "oom_bytes")
_TEXT_FIELDS = ("workload", "variant", "mode", "problem", "outcome", "detail", "family", "level",
                "timer", "mem_method", "backend")
_REQUIRED = ("workload", "variant", "mode", "problem", "outcome")
_DETAIL_MAX = 300  # an exception text can be long; the first lines say what it was
SIG_DIGITS = 4


class InputFileError(ValueError):
    """A result or baseline file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: os.PathLike | str, problem: str, kind: str = "file") -> None:
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{kind} {self.path}: {problem}")


class BaselineError(InputFileError):
    """A baseline file that is corrupt, truncated, of another schema version, or lacks fields."""

    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        super().__init__(path, problem, kind="baseline")


class ResultFileError(InputFileError):
    """A pytest-benchmark result file that cannot be read as attnsuite records."""

    def __init__(self, path: os.PathLike | str, problem: str) -> None:
        super().__init__(path, problem, kind="result file")


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
    return e


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
}
_NONE_WORDS = {"", "none", "null", "n/a", "cpu"}


def fp_get(fp: Optional[Mapping[str, Any]], what: str) -> Optional[str]:
    """The fingerprint's value for ``what`` (gpu, torch, cuda, cpu, driver, cudnn, triton), or None."""
    if not fp:
        return None
    for name in _FP_ALIASES.get(what, (what,)):
        value = fp.get(name)
        if value is not None and str(value).strip().lower() not in _NONE_WORDS:
            return str(value).strip()
    return None


def device_kind(fp: Optional[Mapping[str, Any]]) -> str:
    """``"cuda"`` when the fingerprint names a GPU, else ``"cpu"``."""
    return "cuda" if fp_get(fp, "gpu") else "cpu"


def _major(version: Optional[str], parts: int) -> Optional[str]:
    if not version:
        return None
    core = version.split("+")[0]
    return ".".join(core.split(".")[:parts])


def compatibility(base_fp: Optional[Mapping[str, Any]], cur_fp: Optional[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """Why two machines must not be compared (refusals) and what differs but is tolerated (notes).

    Refused: a different GPU model (or GPU against CPU), a different CPU model when both runs are
    on CPU, a different torch major.minor, a different CUDA major. Noted: driver, cuDNN, triton,
    minor torch/CUDA differences. An absent fingerprint cannot be checked: that is a note.
    """
    refusals: list[str] = []
    notes: list[str] = []
    if not base_fp or not cur_fp:
        which = "baseline" if not base_fp else "this run"
        notes.append(f"{which} has no machine fingerprint: the machines were not checked to match")
        return refusals, notes
    bg, cg = fp_get(base_fp, "gpu"), fp_get(cur_fp, "gpu")
    if bg != cg:
        refusals.append(f"GPU model differs: baseline {bg or 'no GPU'}, this run {cg or 'no GPU'}")
    elif not bg:
        bc, cc = fp_get(base_fp, "cpu"), fp_get(cur_fp, "cpu")
        if bc and cc and bc != cc:
            refusals.append(f"CPU model differs (CPU-only runs): baseline {bc}, this run {cc}")
    bt, ct = fp_get(base_fp, "torch"), fp_get(cur_fp, "torch")
    if _major(bt, 2) != _major(ct, 2):
        refusals.append(f"torch major version differs: baseline {bt}, this run {ct}")
    elif bt != ct:
        notes.append(f"torch differs: baseline {bt}, this run {ct}")
    bcu, ccu = fp_get(base_fp, "cuda"), fp_get(cur_fp, "cuda")
    if _major(bcu, 1) != _major(ccu, 1):
        refusals.append(f"CUDA major version differs: baseline {bcu or 'none'}, this run {ccu or 'none'}")
    elif bcu != ccu:
        notes.append(f"CUDA differs: baseline {bcu}, this run {ccu}")
    for what in ("driver", "cudnn", "triton"):
        b, c = fp_get(base_fp, what), fp_get(cur_fp, what)
        if b != c:
            notes.append(f"{what} differs: baseline {b or 'none'}, this run {c or 'none'}")
    return refusals, notes


def check_compatible(base_fp: Optional[Mapping[str, Any]], cur_fp: Optional[Mapping[str, Any]], *,
                     allow_mismatch: bool = False) -> list[str]:
    """Raise :class:`FingerprintMismatch` unless comparable (or allowed); return the notes."""
    refusals, notes = compatibility(base_fp, cur_fp)
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


# --------------------------------------------------------------------------- baseline files


@dataclass
class Baseline:
    """A loaded (or new) baseline: the machine's fingerprint and the entries per case key."""

    fingerprint: dict[str, Any]
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Optional[str] = None

    def records(self) -> dict[str, CaseRecord]:
        """The entries as :class:`CaseRecord` objects, by key."""
        return {k: record_from_entry(k, e) for k, e in self.cases.items()}

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {"schema": SCHEMA_TAG, "version": BASELINE_VERSION,
                "fingerprint": dict(self.fingerprint), "cases": dict(self.cases)}


def dumps_stable(obj: Any) -> str:
    """The store's one serialisation: sorted keys, one field per line, trailing newline."""
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; a committed baseline is an ordinary file (0666 less umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_baseline(baseline: Baseline, path: os.PathLike | str | None = None) -> str:
    """Validate and write ``baseline`` atomically to ``path`` (default: its own path); return the path."""
    target = str(path or baseline.path or "")
    if not target:
        raise ValueError("save_baseline: no path given and the baseline has none")
    obj = baseline.to_json()
    problems = validate_baseline_json(obj)
    if problems:  # never write a file that the loader would refuse
        raise BaselineError(target, "refusing to write an invalid baseline: " + "; ".join(problems))
    atomic_write_text(target, dumps_stable(obj))
    baseline.path = target
    return target


def _read_json(path: Path, err: type[InputFileError]) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise err(path, "no such file") from None
    except OSError as exc:
        raise err(path, f"cannot be read: {exc.strerror or exc}") from None
    if not raw.strip():
        raise err(path, "file is empty (truncated?)")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise err(path, f"not UTF-8 text (corrupt?): byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        hint = "truncated?" if exc.pos >= len(raw.rstrip()) - 1 else "corrupt?"
        raise err(path, f"not valid JSON ({hint}): {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_entry(key: str, e: Any) -> list[str]:
    """Problems with one baseline entry (empty list when it is valid)."""
    if not isinstance(e, dict):
        return [f"case {key!r}: entry is {type(e).__name__}, not an object"]
    out = []
    missing = [n for n in _REQUIRED if not isinstance(e.get(n), str) or not e.get(n)]
    if missing:
        return [f"case {key!r}: missing fields {missing}"]
    if e["outcome"] not in OUTCOMES:
        out.append(f"case {key!r}: unknown outcome {e['outcome']!r} (expected one of {list(OUTCOMES)})")
    if e["mode"] not in MODES:
        out.append(f"case {key!r}: unknown mode {e['mode']!r} (expected one of {list(MODES)})")
    expect = case_key(e["workload"], e["variant"], e["mode"], e["problem"])
    if key != expect:
        out.append(f"case {key!r}: key does not match its fields (expected {expect!r})")
    for name in _TIME_FIELDS + _RATE_FIELDS + _BYTE_FIELDS + ("samples", "runs"):
        if name in e and e[name] is not None and (not _is_number(e[name]) or e[name] < 0):
            out.append(f"case {key!r}: {name} must be a non-negative number, got {e[name]!r}")
    for name in _TEXT_FIELDS + ("tier",):
        if name in e and not isinstance(e[name], str):
            out.append(f"case {key!r}: {name} must be text, got {type(e[name]).__name__}")
    if "materialises" in e and not isinstance(e["materialises"], bool):
        out.append(f"case {key!r}: materialises must be true or false")
    unknown = set(e) - set(_TEXT_FIELDS + _TIME_FIELDS + _RATE_FIELDS + _BYTE_FIELDS) - {"samples", "materialises", "tier", "runs"}
    if unknown:
        out.append(f"case {key!r}: unknown fields {sorted(unknown)}")
    return out


def validate_baseline_json(obj: Any) -> list[str]:
    """All problems with a baseline's JSON object (empty list when it is valid)."""
    if not isinstance(obj, dict):
        return [f"top level is {type(obj).__name__}, expected an object"]
    if obj.get("schema") != SCHEMA_TAG:
        if "benchmarks" in obj:
            return ["this is a pytest-benchmark result file, not a baseline: make a baseline from it "
                    "with `attnsuite record RESULT.json` or pytest --attn-record-baseline"]
        return [f"not an attnsuite baseline: \"schema\" is {obj.get('schema')!r}, expected {SCHEMA_TAG!r}"]
    version = obj.get("version")
    if version != BASELINE_VERSION:
        if isinstance(version, int) and version > BASELINE_VERSION:
            return [f"schema version {version} is newer than this attnsuite reads ({BASELINE_VERSION}): upgrade attnsuite"]
        return [f"schema version {version!r} is not {BASELINE_VERSION}: re-record the baseline with this attnsuite"]
    out = []
    fp = obj.get("fingerprint")
    if not isinstance(fp, dict):
        out.append("missing field \"fingerprint\" (an object)")
    elif not fp.get("id"):
        out.append("fingerprint has no \"id\"")
    cases = obj.get("cases")
    if not isinstance(cases, dict):
        out.append("missing field \"cases\" (an object of case key to entry)")
    else:
        for key, e in cases.items():
            out.extend(validate_entry(key, e))
    extra = set(obj) - {"schema", "version", "fingerprint", "cases"}
    if extra:
        out.append(f"unknown top-level fields {sorted(extra)}")
    return out


def load_baseline(path: os.PathLike | str) -> Baseline:
    """Load and validate a baseline file; :class:`BaselineError` names the file and every problem."""
    p = Path(path)
    obj = _read_json(p, BaselineError)
    problems = validate_baseline_json(obj)
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise BaselineError(p, "; ".join(shown))
    return Baseline(fingerprint=dict(obj["fingerprint"]), cases=dict(obj["cases"]), path=str(p))


def is_baseline_json(obj: Any) -> bool:
    """Whether a JSON object claims to be a baseline (valid or not)."""
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA_TAG


# --------------------------------------------------------------------------- result files


@dataclass
class Run:
    """The cases of one run, from a result file or a baseline: what the gate compares."""

    records: dict[str, CaseRecord]
    fingerprint: Optional[dict[str, Any]]
    path: Optional[str] = None
    kind: str = "result"  # "result" or "baseline"
    foreign: int = 0  # benchmarks in a result file that carry no attnsuite record
    duplicates: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.path}" if self.path else self.kind


def run_from_benchmarks_json(obj: Mapping[str, Any], path: Optional[str] = None) -> Run:
    """The attnsuite records of a pytest-benchmark JSON object (``ResultFileError`` when malformed)."""
    where = path or "<result>"
    benches = obj.get("benchmarks")
    if not isinstance(benches, list):
        raise ResultFileError(where, "no \"benchmarks\" list: not a pytest-benchmark result file")
    meta = obj.get("attnsuite")
    fp = None
    if isinstance(meta, dict):
        version = meta.get("schema")
        if version is not None and version != RESULT_SCHEMA_VERSION:
            raise ResultFileError(where, f"attnsuite schema {version!r}, this attnsuite reads {RESULT_SCHEMA_VERSION}")
        if isinstance(meta.get("fingerprint"), dict):
            fp = dict(meta["fingerprint"])
    records: dict[str, CaseRecord] = {}
    foreign = 0
    dups = []
    for i, b in enumerate(benches):
        info = b.get("extra_info") if isinstance(b, dict) else None
        if not isinstance(info, dict) or "workload" not in info:
            foreign += 1
            continue
        try:
            rec = CaseRecord.from_extra_info(info)
        except (TypeError, ValueError) as exc:
            name = b.get("fullname") or b.get("name") or f"#{i}"
            raise ResultFileError(where, f"benchmark {name}: {exc}") from None
        if rec.key in records:
            dups.append(rec.key)
        records[rec.key] = rec
    return Run(records=records, fingerprint=fp, path=path, kind="result", foreign=foreign, duplicates=dups)


def load_run(path: os.PathLike | str) -> Run:
    """A result file or a baseline file, read as a :class:`Run` (errors name the file)."""
    p = Path(path)
    obj = _read_json(p, ResultFileError)
    if is_baseline_json(obj):
        b = load_baseline(p)
        return Run(records=b.records(), fingerprint=b.fingerprint, path=str(p), kind="baseline")
    if not isinstance(obj, dict):
        raise ResultFileError(p, f"top level is {type(obj).__name__}, expected an object")
    return run_from_benchmarks_json(obj, str(p))


def load_results(path: os.PathLike | str) -> Run:
    """A pytest-benchmark result file (only) as a :class:`Run`."""
    run = load_run(path)
    if run.kind != "result":
        raise ResultFileError(path, "this is a baseline, not a pytest-benchmark result file")
    return run


# --------------------------------------------------------------------------- finding and recording


def baseline_path_for(fp: Mapping[str, Any], directory: os.PathLike | str = DEFAULT_DIR) -> Path:
    """Where the baseline of this fingerprint lives: ``<directory>/<fingerprint id>.json``."""
    fid = fingerprint_id(fp)
    if not fid:
        raise ValueError("the fingerprint has no id, so its baseline file cannot be named")
    return Path(directory) / f"{safe_file_stem(fid)}.json"


def baseline_files(directory: os.PathLike | str) -> list[Path]:
    """The baseline candidates in a folder (every ``*.json`` except the thresholds config)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.json") if p.name != THRESHOLDS_FILE)


@dataclass
class Lookup:
    """The outcome of looking for a run's baseline: a path (or None) and what was found, in words."""

    path: Optional[Path]
    message: str


def find_baseline(fp: Optional[Mapping[str, Any]], directory: os.PathLike | str = DEFAULT_DIR) -> Lookup:
    """The baseline for fingerprint ``fp`` in ``directory``.

    The file named by the fingerprint id wins. Failing that, a single other baseline whose machine
    is compatible (same GPU/CPU model, same major versions; e.g. only the driver changed) is used,
    and the message says so. Unreadable candidates are skipped here; loading the chosen file
    validates it properly.
    """
    d = Path(directory)
    fid = fingerprint_id(fp)
    if not fid:
        return Lookup(None, "this run has no machine fingerprint id, so no baseline can be found by "
                            "itself; name one with --attn-baseline")
    exact = baseline_path_for(fp, d)
    if exact.exists():
        return Lookup(exact, f"baseline {exact} (fingerprint {fid})")
    compatible = []
    for p in baseline_files(d):
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if is_baseline_json(obj) and isinstance(obj.get("fingerprint"), dict):
            refusals, _ = compatibility(obj["fingerprint"], fp)
            if not refusals:
                compatible.append(p)
    if len(compatible) == 1:
        return Lookup(compatible[0], f"baseline {compatible[0]} (no {exact.name}; this file's machine is "
                                     f"compatible with fingerprint {fid})")
    others = ", ".join(p.name for p in baseline_files(d)) or "none"
    extra = f"; {len(compatible)} compatible files, ambiguous: name one with --attn-baseline" if compatible else ""
    return Lookup(None, f"no baseline for this machine: looked for {exact} (fingerprint {fid}); "
                        f"baselines present: {others}{extra}")


@dataclass
class MergeSummary:
    """What recording changed in a baseline, by case key."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed")


def select_records(records: Mapping[str, CaseRecord], *, workloads: Iterable[str] = (),
                   cases: Iterable[str] = ()) -> dict[str, CaseRecord]:
    """The records of the named workloads and matching case-key patterns (fnmatch); all if none given."""
    wl = set(workloads)
    pats = list(cases)
    return {k: r for k, r in records.items()
            if (not wl or r.workload in wl) and (not pats or any(fnmatch.fnmatchcase(k, p) for p in pats))}


def merge_into(baseline: Optional[Baseline], records: Mapping[str, CaseRecord], fingerprint: Mapping[str, Any], *,
               prune: bool = False, allow_mismatch: bool = False) -> tuple[Baseline, MergeSummary]:
    """Write ``records`` into ``baseline`` (a new one when None); other cases stay untouched.

    With ``prune``, baseline cases of the workloads being written that the records do not contain
    are removed (a case that no longer exists). A baseline from an incompatible machine is refused
    (:class:`FingerprintMismatch`) unless ``allow_mismatch``.
    """
    summary = MergeSummary()
    if baseline is None:
        baseline = Baseline(fingerprint=stable_fingerprint(fingerprint))
    else:
        check_compatible(baseline.fingerprint, fingerprint, allow_mismatch=allow_mismatch)
        baseline.fingerprint = stable_fingerprint(fingerprint)
    for key in sorted(records):
        entry = entry_from_record(records[key])
        old = baseline.cases.get(key)
        if old is None:
            summary.added.append(key)
        elif old == entry:
            summary.unchanged.append(key)
        else:
            summary.updated.append(key)
        baseline.cases[key] = entry
    if prune:
        written = {r.workload for r in records.values()}
        for key in sorted(baseline.cases):
            if key not in records and baseline.cases[key].get("workload") in written:
                del baseline.cases[key]
                summary.removed.append(key)
    baseline.cases = dict(sorted(baseline.cases.items()))
    return baseline, summary


def record_baseline(run: Run, path: os.PathLike | str, *, workloads: Iterable[str] = (), cases: Iterable[str] = (),
                    prune: bool = False, allow_mismatch: bool = False) -> MergeSummary:
    """Record or refresh the baseline at ``path`` from ``run`` (optionally only some workloads/cases).

    An existing file must load cleanly (a corrupt baseline is never silently overwritten).
    """
    if not run.fingerprint or not fingerprint_id(run.fingerprint):
        raise ValueError(f"{run.label} has no machine fingerprint with an id: a baseline must say which machine it is for")
    chosen = select_records(run.records, workloads=workloads, cases=cases)
    existing = load_baseline(path) if Path(path).exists() else None
    baseline, summary = merge_into(existing, chosen, run.fingerprint, prune=prune, allow_mismatch=allow_mismatch)
    save_baseline(baseline, path)
    return summary
