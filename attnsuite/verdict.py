"""THE verdict rule: one case's measurement against its baseline entry (docs/gate.md, "Verdicts").

Verdicts (``VERDICTS``), gating ones first:

* ``newly-failing``: the case now fails (numerics, error, crash, timeout) and did not before;
* ``newly-oom``: the case now runs out of memory and did not before;
* ``missing``: the baseline has the case, this run selected it but did not produce it (or skips it);
* ``slower``: the judged time grew by more than the case's noise band;
* ``memory-growth``: peak memory grew by more than the relative and the absolute allowance;
* ``host-slower`` / ``host-faster``: on CUDA, the host's overhead per call (event time minus
  device time) changed beyond its own allowance; reported, gating only with ``host_gating``;
* ``faster`` / ``memory-shrink``: the reverse (reported so the baseline gets refreshed); time on the
  ratio: ``faster`` when base / current exceeds 1 + band, the mirror of ``slower``;
* ``fixed-oom`` / ``fixed-failing``: ran out of memory / failed in the baseline, runs now;
* ``new``: not in the baseline;
* ``same``: within noise (also: skipped in both, failing the same way in both, not confirmed).

Which time is judged (:func:`time_basis`): on CUDA the device time (``device_min_ms`` for the
statistic "min", else ``device_ms``) when both runs have it, so the host CPU of the machine
instance does not move the verdict; a CUDA baseline without device time (recorded with the old
event-only method) does not gate time at all. On CPU the timer's own statistic.

The noise band of a case is ``max(time_floor, spread_k * hypot(iqr_b/median_b, iqr_c/median_c),
instance_k * instance_spread)`` of the judged time's own spread (device IQR for device time): it
grows with the measured spread of *both* runs, with how far the baseline's own runs (fresh
instances) lay apart on that case, and never drops below the floor. A host-bound case judged on
event time (the GPU waited on Python's launches: ``launch_fraction``) has its own, wider floor;
device time has none.

Confirmation (:func:`judge`): a case whose record carries ``extra["confirm"]`` (a second
measurement taken after the other cases) keeps ``slower``/``memory-growth`` only when the second
measurement is beyond the band too; otherwise the finding is dropped with a note naming both
changes. Floors and factors come from :class:`Thresholds`, resolved per device kind, workload
and case from a small JSON config (``baselines/thresholds.json``, see :func:`load_thresholds`).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

from .json_files import FILE_KINDS, SCHEMA_TAG, THRESHOLDS_SECTIONS, json_kind, looks_like_thresholds, read_json_file  # noqa: F401
from .record import FAILING_OUTCOMES, KERNEL_SUM, CaseRecord, failed_counts
from .wording import clip, count

GATING = ("newly-failing", "newly-oom", "missing", "slower", "memory-growth")
HOST = ("host-slower", "host-faster")  # reported; host-slower gates only with Thresholds.host_gating
IMPROVEMENTS = ("faster", "memory-shrink", "fixed-oom", "fixed-failing")
VERDICTS = GATING + ("host-slower",) + IMPROVEMENTS + ("host-faster", "new", "same")
_RANK = {v: i for i, v in enumerate(VERDICTS)}
CONFIRMABLE = ("slower", "memory-growth")  # findings a second measurement must agree with
FAILING = FAILING_OUTCOMES  # crash and timeout count like a numerics failure or an error
RAN = ("ok", "oom") + FAILING_OUTCOMES  # outcomes that mean the case was attempted


class ThresholdsError(ValueError):
    """A thresholds config that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Thresholds:
    """How much change a case tolerates before a verdict other than ``same``."""

    time_floor: float = 0.03  # relative: the noise band never drops below this
    spread_k: float = 1.5  # band = spread_k * combined relative IQR of both runs (when above the floor)
    mem_floor: float = 0.02  # relative peak-memory growth allowed
    mem_abs_bytes: int = 1 << 20  # ... and absolute growth allowed (tiny buffers are not regressions)
    # The time statistic compared: "median", or "min" where interference only ever adds time
    # (a shared CPU), so the fastest sample is the steadiest estimate of the code's own cost.
    statistic: str = "median"
    # Host-bound cases (a record's launch_fraction >= host_bound_at on either side: the GPU waited
    # on Python) time the host CPU, whose speed differs between machine instances: their band never
    # drops below host_bound_floor. 0 turns this off.
    host_bound_floor: float = 0.0
    host_bound_at: float = 0.5
    # Host overhead per call (CUDA: event-bracketed median minus device median) is judged apart
    # from device time: it changes with the machine instance's CPU, so by default it is reported
    # ("host-slower"/"host-faster") and does not fail the gate. It counts as changed only beyond
    # host_floor (relative) AND host_abs_ms (absolute, ms), like memory.
    host_floor: float = 0.5
    host_abs_ms: float = 0.05
    host_gating: bool = False
    # A baseline recorded from several runs (fresh instances) keeps each case's spread over them
    # (combine.py): the band never drops below instance_k x that spread of the judged statistic.
    # Two fresh H200s put 13 of 813 cases more than 3% apart (inductor chose other kernels for one
    # compiled case: 12%) while most stayed within 1%: a per-case band, not a wider floor for all.
    instance_k: float = 1.0

    def validate(self, where: str) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "statistic":
                if v not in ("median", "min"):
                    raise ThresholdsError(f"{where}: statistic must be 'median' or 'min', got {v!r}")
                continue
            if f.name == "host_gating":
                if not isinstance(v, bool):
                    raise ThresholdsError(f"{where}: host_gating must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ThresholdsError(f"{where}: {f.name} must be a non-negative number, got {v!r}")
            if f.name in _FRACTIONS and v > 1:
                raise ThresholdsError(f"{where}: {f.name} is a share of a call's time, from 0 to 1, got {v!r}")
            if f.name in _RELATIVE and v > MAX_RELATIVE:
                # "time_floor": 50 (meant 0.5) had been taken as 5000%: a gate that passes everything
                raise ThresholdsError(f"{where}: {f.name} is a fraction (0.03 is 3%), got {v!r}, i.e. "
                                      f"{v:.0%}; at most {MAX_RELATIVE:g} ({MAX_RELATIVE:.0%})")
            if f.name in _MULTIPLIERS and v > MAX_MULTIPLIER:
                # "spread_k": 50 (meant 0.5) had given bands of +-9348% and every case "same"
                raise ThresholdsError(f"{where}: {f.name} multiplies the runs' spread (0.5 is half of it), got "
                                      f"{v!r}; at most {MAX_MULTIPLIER:g}")
            if f.name in MAX_ABSOLUTE and v > MAX_ABSOLUTE[f.name]:
                # "mem_abs_bytes": 1e18 had let a 50x memory growth pass without a word
                raise ThresholdsError(f"{where}: {f.name} {v!r} is more than any case could grow by; at most "
                                      f"{MAX_ABSOLUTE[f.name]:g}")


# Relative allowances (fractions of the baseline's figure) and their sanity bound: the CPU floor is 1.0
# (100%, a doubling); ten times the baseline's time is no band a gate could mean.
_RELATIVE = frozenset({"time_floor", "mem_floor", "host_bound_floor", "host_floor"})
MAX_RELATIVE = 10.0
_FRACTIONS = frozenset({"host_bound_at"})  # a launch share: above 1 no case is ever host-bound
# Multiples of the runs' spread (the shipped ones are 0.5 to 2) and absolute allowances: past these
# bounds a band passes everything (an outside tester's trials: spread_k 50, mem_abs_bytes 1e18).
_MULTIPLIERS = frozenset({"spread_k", "instance_k"})
MAX_MULTIPLIER = 10.0
MAX_ABSOLUTE = {"mem_abs_bytes": float(1 << 40), "host_abs_ms": 10_000.0}  # 1 TiB; 10 s of host work a call


# Built-in defaults per device kind. On a
# shared 2-core CPU runner whole runs slow down by up to ~2x (measured A/A, docs/gate.md), so the
# CPU gate compares the fastest sample and flags only a doubling; CPU memory (allocator events) is
# deterministic and keeps a tight band.
DEVICE_DEFAULTS = {
    # CUDA: calibrated on an H200 (docs/gate.md): some kernels (cuDNN at d128) are bimodal, so the
    # median moves by several % run to run while the fastest sample stays within ~1.5%.
    # Host-bound cases moved by up to +29% (an eager loop over segments) and +49% (a 0.65 ms layer)
    # between H200 instances with the same code, hence their own floor.
    # Host overhead moved by 52-161% between fresh H200 instances with the same GPU work (issue 9),
    # so it is reported with a wide allowance and does not gate.
    # instance_k 1.5: judged leave-one-instance-out over six fresh H200s (scripts/instance_aa.py
    # --leave-one-out, docs/gate.md), 1.0 flagged 0.41% of cases on first measurement and 1.5 0.24%;
    # a case's range over a handful of instances understates how far the next instance may fall.
    "cuda": Thresholds(time_floor=0.03, spread_k=0.5, statistic="min", host_bound_floor=0.5,
                       host_floor=0.5, host_abs_ms=0.05, host_gating=False, instance_k=1.5),
    "cpu": Thresholds(time_floor=1.0, spread_k=2.0, mem_floor=0.10, mem_abs_bytes=8 << 20, statistic="min"),
}
_THRESHOLD_FIELDS = {f.name for f in fields(Thresholds)}


@dataclass
class ThresholdConfig:
    """Threshold overrides: file-wide, per device kind, per workload, per case-key pattern (in order)."""

    default: dict[str, Any] = field(default_factory=dict)
    device: dict[str, dict[str, Any]] = field(default_factory=dict)
    workload: dict[str, dict[str, Any]] = field(default_factory=dict)
    case: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    path: Optional[str] = None

    def _layers(self, rec: CaseRecord, device: str) -> list[tuple[str, dict[str, Any]]]:
        """(the section's name in a thresholds file, its fields) of every section that applies to the
        case, in the order they apply: file default, device, workload, then each matching case pattern."""
        named = [("default", self.default), (f"device.{device}", self.device.get(device, {})),
                 (f"workload.{rec.workload}", self.workload.get(rec.workload, {}))]
        named += [(f"case.{pattern}", layer) for pattern, layer in self.case if fnmatch.fnmatchcase(rec.key, pattern)]
        return [(name, layer) for name, layer in named if layer]

    def for_case(self, rec: CaseRecord, device: str) -> Thresholds:
        """The thresholds of one case: device defaults, then file default, device, workload, case."""
        t = DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cuda"])
        for _, layer in self._layers(rec, device):
            t = replace(t, **layer)
        return t

    def section_setting(self, rec: CaseRecord, device: str, name: str) -> Optional[str]:
        """The thresholds file's section that gives the case its ``name`` field ("workload.decode",
        "case.gpt2-mha/*", ...), or None where the device's built-in default does."""
        return next((section for section, layer in reversed(self._layers(rec, device)) if name in layer), None)


def _layer(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ThresholdsError(f"{where}: expected an object of threshold values")
    unknown = set(obj) - _THRESHOLD_FIELDS
    if unknown:
        raise ThresholdsError(f"{where}: unknown thresholds {sorted(unknown)} (known: {sorted(_THRESHOLD_FIELDS)})")
    replace(Thresholds(), **obj).validate(where)
    return dict(obj)


def _another_file_kind(obj: dict[str, Any]) -> str:
    """What another of the suite's JSON files given as thresholds is, naming the keys that show it and
    where it belongs ("" when it is none of them). A baseline given as the thresholds file had been
    told "unknown sections ['calibration', 'cases', 'fingerprint', 'schema']" (an outside tester's trial)."""
    kind = json_kind(obj)
    if kind in ("", "thresholds"):
        return ""
    keys = sorted(set(obj) - THRESHOLDS_SECTIONS)
    if kind == "baseline":
        return (f"this looks like an attnsuite baseline, not a thresholds file: its keys {keys} are a baseline's "
                f"(\"schema\": \"{SCHEMA_TAG}\"); a baseline is given with --attn-baseline (pytest), --baseline "
                "(attnsuite report) or as attnsuite compare's OLD, and --thresholds / --attn-thresholds take a "
                f"thresholds file (sections {', '.join(sorted(THRESHOLDS_SECTIONS))})")
    return f"this looks like {FILE_KINDS[kind]}, not a thresholds file: its keys {keys} show it"


def parse_thresholds(obj: Any, where: str = "<thresholds>") -> ThresholdConfig:
    """Validate a thresholds JSON object::

        {"version": 1,
         "default": {"time_floor": 0.03},
         "device": {"cpu": {"time_floor": 0.2}},
         "workload": {"decode": {"time_floor": 0.05}},
         "case": {"gpt2-mha/*/fwd+bwd/*": {"spread_k": 2.0}}}
    """
    if not isinstance(obj, dict):
        raise ThresholdsError(f"{where}: top level must be an object")
    other = _another_file_kind(obj)
    if other:
        raise ThresholdsError(f"{where}: {other}")
    if obj.get("version", 1) != 1:
        raise ThresholdsError(f"{where}: version {obj.get('version')!r}, this attnsuite reads 1")
    unknown = set(obj) - THRESHOLDS_SECTIONS
    if unknown:
        raise ThresholdsError(f"{where}: unknown sections {sorted(unknown)}")
    cfg = ThresholdConfig(path=where)
    cfg.default = _layer(obj.get("default", {}), f"{where}: default")
    for section in ("device", "workload", "case"):
        sub = obj.get(section, {})
        if not isinstance(sub, dict):
            raise ThresholdsError(f"{where}: {section} must be an object of name to thresholds")
        if section == "device":
            # a closed set: a misspelt kind ("gpu") would load and never apply
            odd = sorted(set(sub) - set(DEVICE_DEFAULTS))
            if odd:
                raise ThresholdsError(f"{where}: device {odd} unknown; device kinds are "
                                      f"{', '.join(sorted(DEVICE_DEFAULTS))}")
        parsed = {name: _layer(v, f"{where}: {section} {name!r}") for name, v in sub.items()}
        if section == "case":
            cfg.case = list(parsed.items())
        else:
            setattr(cfg, section, parsed)
    return cfg


def load_thresholds(path: os.PathLike | str | None) -> ThresholdConfig:
    """The thresholds config at ``path``; an empty config when ``path`` is None."""
    if path is None:
        return ThresholdConfig()
    p = Path(path)
    # the suite's one JSON reader, as for baselines and results: gzip-compressed or not (a gzipped
    # thresholds file had been refused with a raw codec error), duplicate keys named with their path
    obj = read_json_file(p, lambda where, problem: ThresholdsError(f"thresholds {where}: {problem}"))
    return parse_thresholds(obj, f"thresholds {p}")


# --------------------------------------------------------------------------- one case


@dataclass
class CaseVerdict:
    """The verdict on one case, with every finding and the figures behind it."""

    key: str
    verdict: str  # the most severe finding
    flags: tuple[str, ...]  # every finding (e.g. slower and memory-growth)
    message: str  # by how much, in words
    base: Optional[CaseRecord] = None
    cur: Optional[CaseRecord] = None
    time_change: Optional[float] = None  # relative change of the judged time (0.1 = 10% slower)
    band: Optional[float] = None  # the noise band used
    mem_change: Optional[float] = None  # relative change of peak memory
    notes: tuple[str, ...] = ()  # backend changed, now materialises, not confirmed, ...
    # what was judged: "device min", "device median", "min", "median" ("" when time was not judged)
    statistic: str = ""
    base_ms: Optional[float] = None  # the judged statistic, both sides
    cur_ms: Optional[float] = None
    base_median_ms: Optional[float] = None  # the median of the same timer, shown beside it
    cur_median_ms: Optional[float] = None
    time_note: str = ""  # why time was not judged (e.g. the baseline has no device time)
    host_change: Optional[float] = None  # relative change of the host overhead per call (CUDA)
    host_gating: bool = False  # whether host-slower fails the gate (Thresholds.host_gating)
    confirmed: Optional[bool] = None  # None: no second measurement was judged for a finding
    confirm_time_change: Optional[float] = None  # the second measurement's change, when there is one
    confirm_mem_change: Optional[float] = None
    band_by: Optional[BandSetter] = None  # the thresholds field that set ``band`` (None when time was not judged)

    @property
    def label(self) -> str:
        """Every finding, most severe first: ``slower/memory-growth`` (the tables had shown the first alone)."""
        return "/".join(self.flags) or self.verdict

    @property
    def gating(self) -> bool:
        """Whether this case fails the gate."""
        return any(f in GATING for f in self.flags) or (self.host_gating and "host-slower" in self.flags)

    @property
    def skipped_in_both(self) -> bool:
        """Skipped here and in the baseline: judged ``same``, but nothing was measured."""
        return all(r is not None and r.outcome == "skipped" for r in (self.base, self.cur))

    @property
    def improvement(self) -> bool:
        return not self.gating and any(f in IMPROVEMENTS for f in self.flags)

    @property
    def reported(self) -> bool:
        """A finding shown apart that does not fail the gate: host overhead, a finding not confirmed."""
        if self.gating or self.improvement:
            return False
        return any(f in HOST for f in self.flags) or self.confirmed is False

    @property
    def record(self) -> CaseRecord:
        """The current record, or the baseline's when the case is missing."""
        return self.cur or self.base  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of this verdict (what the A/B command reads to pick flagged cases);
        a change from zero (infinite) is written as null, since JSON has no infinity."""
        nums = {"base_ms": self.base_ms, "cur_ms": self.cur_ms, "base_median_ms": self.base_median_ms,
                "cur_median_ms": self.cur_median_ms, "time_change": self.time_change, "band": self.band,
                "mem_change": self.mem_change, "host_change": self.host_change,
                "confirm_time_change": self.confirm_time_change, "confirm_mem_change": self.confirm_mem_change}
        return {"key": self.key, "verdict": self.verdict, "flags": list(self.flags), "gating": self.gating,
                "message": self.message, "notes": list(self.notes), "statistic": self.statistic,
                "confirmed": self.confirmed, "cur_outcome": self.cur.outcome if self.cur is not None else None,
                **{k: (v if v is None or math.isfinite(v) else None) for k, v in nums.items()}}


def fmt_ms(x: Optional[float]) -> str:
    """A time in ms, 4 significant digits (trailing zeros kept: 1.000 ms)."""
    if x is None:
        return "-"
    return f"{x:.0f} ms" if abs(x) >= 1000 else f"{x:#.4g} ms"


def fmt_bytes(x: Optional[float]) -> str:
    """Bytes in binary units, 3-4 significant digits."""
    if x is None:
        return "-"
    x = float(x)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.4g} {unit}"
        x /= 1024
    return f"{x} B"


def fmt_pct(x: Optional[float]) -> str:
    """A signed relative change in percent."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return "from 0" if x > 0 else "-"
    return f"{x * 100:+.1f}%" if round(x * 100, 1) != 0 else "+0.0%"  # never "-0.0%"


def beyond_allowance(base: float, cur: float, rel_floor: float, abs_floor: float) -> tuple[float, int]:
    """(relative change, +1 / -1 / 0): whether ``cur`` grew (+1) or shrank (-1) past BOTH the
    relative and the absolute allowance, or stayed within either (0). A zero base changes by inf."""
    grow = cur - base
    rel = grow / base if base > 0 else (math.inf if grow > 0 else (-math.inf if grow < 0 else 0.0))
    if grow > abs_floor and rel > rel_floor:
        return rel, 1
    if -grow > abs_floor and -rel > rel_floor:
        return rel, -1
    return rel, 0


def host_bound(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> bool:
    """Does either run say the case is host-bound (the GPU waited on the host's launches)?"""
    return any(r.launch_fraction is not None and r.launch_fraction >= t.host_bound_at for r in (base, cur))


class BandSetter(NamedTuple):
    """The thresholds field that set a case's noise band, and its value: the note on bands too wide
    to see a doubling names it (it had said "a floor or the runs' spread" and left the user to guess)."""

    field: str  # "time_floor", "host_bound_floor", "spread_k" or "instance_k"
    value: float

    def __str__(self) -> str:
        return f"{self.field} = {self.value:g}"


def _band(rel_iqrs: list[float], floor: float, t: Thresholds,
          floor_field: str = "time_floor") -> tuple[float, BandSetter]:
    """(band, what set it): the floor (the field ``floor_field``), or ``spread_k`` times both runs'
    combined relative IQR where that is wider (a tie is the floor's, as ``max`` gave it)."""
    spread = math.hypot(*rel_iqrs) if rel_iqrs else 0.0
    if t.spread_k * spread > floor:
        return t.spread_k * spread, BandSetter("spread_k", t.spread_k)
    return floor, BandSetter(floor_field, floor)


def _event_rel_iqrs(base: CaseRecord, cur: CaseRecord) -> list[float]:
    """Each run's relative IQR of event/CPU time (where it has one)."""
    return [r.iqr_ms / r.median_ms for r in (base, cur) if r.iqr_ms is not None and r.median_ms]


def noise_band(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> float:
    """The relative noise band of event/CPU time from both runs' relative IQR, never below the floor
    (nor below ``host_bound_floor`` for a host-bound case)."""
    return _event_band(base, cur, t)[0]


def _event_band(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> tuple[float, BandSetter]:
    """:func:`noise_band` and the field that set it."""
    rel = _event_rel_iqrs(base, cur)
    if t.host_bound_floor > t.time_floor and host_bound(base, cur, t):
        return _band(rel, t.host_bound_floor, t, "host_bound_floor")
    return _band(rel, t.time_floor, t)


def host_abs_allowance(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> tuple[float, str]:
    """(ms, note): the absolute change of host overhead per call that counts. Host overhead is the event
    median minus the device time, so it cannot be read finer than the event time's own noise: the
    allowance is ``host_abs_ms``, or the event time's noise band (its floor and IQR spread, without the
    host-bound floor) times the longer event median where that is larger. A 12 ms step whose overhead
    went from 0 to 0.06 ms has not changed (an H200 A/A run had flagged it); a 0.2 ms step's has."""
    medians = [r.median_ms for r in (base, cur) if r.median_ms]
    of_event = _band(_event_rel_iqrs(base, cur), t.time_floor, t)[0] * max(medians) if medians else 0.0
    if of_event > t.host_abs_ms:
        return of_event, f" (the event time's noise at {fmt_ms(max(medians))})"
    return t.host_abs_ms, ""


def device_noise_band(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> float:
    """The noise band of device time: its own relative IQR; no host-bound floor (the host is not in it)."""
    return _device_band(base, cur, t)[0]


def _device_band(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> tuple[float, BandSetter]:
    """:func:`device_noise_band` and the field that set it."""
    rel = [r.device_iqr_ms / r.device_ms for r in (base, cur) if r.device_iqr_ms is not None and r.device_ms]
    return _band(rel, t.time_floor, t)


def is_cuda(base: Optional[CaseRecord], cur: Optional[CaseRecord]) -> bool:
    """Whether records were timed on CUDA (device time, or CUDA events), for callers without a device kind."""
    return any(r is not None and (r.device_ms is not None or r.device_method or r.timer.startswith("cuda"))
               for r in (base, cur))


_SPREAD_OF = {"device min": "device_min_ms", "device median": "device_ms", "min": "min_ms", "median": "median_ms"}


def baseline_spread(base: CaseRecord, label: str) -> float:
    """How far the baseline's runs lay apart on the statistic ``label`` judges (0 for one run)."""
    spread = (base.extra or {}).get("instance_spread") or {}
    value = spread.get(_SPREAD_OF[label]) if isinstance(spread, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class TimeBasis:
    """Which time of a case is judged, and its figures on both sides."""

    label: str  # "device min", "device median", "min", "median"
    base_ms: float
    cur_ms: float
    band: float
    base_median_ms: Optional[float]
    cur_median_ms: Optional[float]
    host_bound: bool = False  # the event-time band used the host-bound floor
    instance_spread: float = 0.0  # the baseline runs' spread on this statistic (0: one run)
    capped: tuple[str, ...] = ()  # sides whose kernel-sum time read above their event time, judged at it
    band_by: Optional[BandSetter] = None  # the thresholds field that set ``band``


_EVENT_OF = {"device min": "min_ms", "device median": "median_ms"}


def cap_kernel_sum(rec: CaseRecord, label: str, ms: float) -> tuple[float, bool]:
    """A kernel-sum device time, never above the same record's event time of the same statistic.

    Kernel-sum adds up the device work of one call, and one call's work cannot outlast the call:
    its event-timed time is an upper bound. On an H200 the deferred kernel-sum pass read 4.5-8.9%
    above the same cases' event times (and their confirmation 0-1% away from them) for a handful of
    cases, every run (docs/gate.md, session s9). Graph replay is not capped: it replays many calls back
    to back and reads a few % above the event timer on memory-bound steps by the method itself.
    """
    if rec.device_method != KERNEL_SUM:
        return ms, False
    event = getattr(rec, _EVENT_OF[label])
    if event is not None and 0 < event < ms:
        return event, True
    return ms, False


def judged_statistic(t: Thresholds, device: str, *records: CaseRecord) -> str:
    """THE statistic time is judged on for ``records`` (both sides of a comparison, or one): "device
    min" or "device median" on CUDA, "min" or "median" on CPU; the minimum where the thresholds ask
    for it and every record has one (records that carry only a median are judged on it)."""
    if device == "cuda":
        fastest = t.statistic == "min" and all(r.device_min_ms is not None for r in records)
        return "device min" if fastest else "device median"
    return "min" if t.statistic == "min" and all(r.min_ms is not None for r in records) else "median"


def one_side_figure(r: CaseRecord, t: Thresholds, device: str) -> tuple[str, Optional[float], Optional[float]]:
    """(statistic, its value, the median of its timer) of one ok record, as a comparison would judge
    it: what a row shows for a case with nothing to compare it with (new, newly failing, missing),
    where it had shown "none" and "-" beside a figure the gate would judge. ("", None, None) on CUDA
    without device time."""
    if device == "cuda" and r.device_ms is None:
        return "", None, None
    label = judged_statistic(t, device, r)
    return label, getattr(r, _SPREAD_OF[label]), r.device_ms if device == "cuda" else r.median_ms


def time_basis(base: CaseRecord, cur: CaseRecord, t: Thresholds, device: str) -> tuple[Optional[TimeBasis], str]:
    """THE choice of the judged time: (basis, "") or (None, why time is not gated).

    CUDA: device time when both sides have it (``device_min_ms`` for "min" when both have it, else
    ``device_ms``); a side without device time means time is not gated, since event time measures
    the host too, and so does device time measured by another method on each side (graph replay
    against kernel-sum, which differ by several % on memory-bound steps). CPU: ``min_ms`` for
    "min" when both have it, else ``median_ms``. Either way the band never drops below
    ``instance_k`` times the baseline runs' spread on the judged statistic. A kernel-sum time is
    judged at most at its own record's event time (:func:`cap_kernel_sum`).
    """
    hb, capped = False, ()
    if device == "cuda":
        if base.device_ms is None:
            return None, "baseline has no device time: time not gated"
        if cur.device_ms is None:
            why = (cur.extra or {}).get("device_time_note")
            return None, "this run has no device time" + (f" ({clip(str(why), 120)})" if why else "") + ": time not gated"
        if base.device_method and cur.device_method and base.device_method != cur.device_method:
            # graph replay and kernel-sum read ~6% apart on memory-bound steps (H200): not comparable
            return None, (f"device time by another method (baseline {base.device_method}, this run "
                          f"{cur.device_method}): time not gated")
        label = judged_statistic(t, device, base, cur)
        b_ms, c_ms = getattr(base, _SPREAD_OF[label]), getattr(cur, _SPREAD_OF[label])
        if not b_ms:
            return None, "baseline device time is zero: time not gated"
        (b_ms, b_cap), (c_ms, c_cap) = cap_kernel_sum(base, label, b_ms), cap_kernel_sum(cur, label, c_ms)
        capped = tuple(side for side, c in (("baseline", b_cap), ("this run", c_cap)) if c)
        (band, band_by), medians = _device_band(base, cur, t), (base.device_ms, cur.device_ms)
    else:
        label = judged_statistic(t, device, base, cur)
        b_ms, c_ms = getattr(base, _SPREAD_OF[label]), getattr(cur, _SPREAD_OF[label])
        if not b_ms or c_ms is None:
            return None, "no time on one side: time not compared"
        hb = bool(t.host_bound_floor) and host_bound(base, cur, t)
        (band, band_by), medians = _event_band(base, cur, t), (base.median_ms, cur.median_ms)
    inst = baseline_spread(base, label)
    if t.instance_k * inst > band:  # the baseline's own runs lay further apart than the band allows
        band, band_by = t.instance_k * inst, BandSetter("instance_k", t.instance_k)
    return TimeBasis(label, b_ms, c_ms, band, *medians, hb, inst, capped, band_by), ""


def _describe(r: CaseRecord) -> str:
    if r.outcome == "ok":
        # labelled: the figure is a median, not the fastest sample a time verdict judges
        which = "device median" if r.device_ms is not None else "median"
        parts = [f"{which} {fmt_ms(r.device_ms if r.device_ms is not None else r.median_ms)}"]
        if r.peak_mem_bytes is not None:
            parts.append(fmt_bytes(r.peak_mem_bytes))
        return "ok, " + ", ".join(parts)
    if r.outcome == "oom":
        return "out of memory" + (f" (asked for {fmt_bytes(r.oom_bytes)})" if r.oom_bytes else "")
    detail = (r.detail or "").strip().splitlines()
    # cut at a word: a numerics message's end says how far off it is ("5199.24x the bound")
    return r.outcome + (f": {clip(detail[0], 200)}" if detail else "")


@dataclass
class _Findings:
    """What judging one ok measurement against the baseline found (before confirmation)."""

    flags: list[str] = field(default_factory=list)
    msgs: dict[str, str] = field(default_factory=dict)  # flag -> its text
    context: list[str] = field(default_factory=list)  # within-noise and not-gated texts
    notes: list[str] = field(default_factory=list)
    basis: Optional[TimeBasis] = None
    time_note: str = ""
    tchange: Optional[float] = None
    mchange: Optional[float] = None
    hchange: Optional[float] = None


def _assess(base: CaseRecord, cur: CaseRecord, t: Thresholds, device: str) -> _Findings:
    """Time, host overhead and memory of two ok records."""
    f = _Findings()
    basis, why = time_basis(base, cur, t, device)
    f.basis, f.time_note = basis, why
    if basis is not None:
        f.tchange = basis.cur_ms / basis.base_ms - 1.0
        hb = " (host-bound)" if basis.host_bound else ""
        if basis.instance_spread:
            hb += f" (baseline runs {basis.instance_spread * 100:.1f}% apart)"
        if basis.capped:
            hb += f" (kernel-sum above the event time on {' and '.join(basis.capped)}: judged at the event time)"
        what = f"{basis.label} {fmt_ms(basis.base_ms)} -> {fmt_ms(basis.cur_ms)}, noise band {basis.band * 100:.1f}%{hb}"
        held = clock_note(cur, basis.label.startswith("device")) if f.tchange > basis.band else ""
        at_full_clock = (full_clock_reading(base, cur, t, basis.band) if held and basis.label.startswith("device")
                         else "")
        if at_full_clock:
            f.context.append(f"time {fmt_pct(f.tchange)} on the device ({what}) under a held clock, "
                             f"{at_full_clock}: not flagged")
        elif f.tchange > basis.band:
            f.flags.append("slower")
            f.msgs["slower"] = f"slower by {f.tchange * 100:.1f}% ({what})"
            if held:
                f.notes.append(held)
        elif f.tchange < 1.0 / (1.0 + basis.band) - 1.0:
            # the mirror of "slower" on the ratio (base/cur above 1 + band): a change cannot fall below
            # -100%, so "-band" had made a 5x speed-up "same" wherever the band is 100% or more (CPU)
            f.flags.append("faster")
            f.msgs["faster"] = f"faster by {-f.tchange * 100:.1f}% ({what})"
        else:
            f.context.append(f"time {fmt_pct(f.tchange)} within noise ({what})")
    else:
        ev = ""
        if base.median_ms and cur.median_ms is not None and why.endswith("time not gated"):
            ev = f" (event median {fmt_ms(base.median_ms)} -> {fmt_ms(cur.median_ms)}, {fmt_pct(cur.median_ms / base.median_ms - 1)})"
        f.context.append(why + ev)
    if base.host_overhead_ms is not None and cur.host_overhead_ms is not None:
        # A record's overhead is its event median minus its device time; where the device time reads
        # above the event median (a long memory-bound step replayed from a graph, a kernel-sum pass) it
        # is negative: no host overhead was seen, so it is judged as none, not as a change of -400%.
        b, c = max(0.0, base.host_overhead_ms), max(0.0, cur.host_overhead_ms)
        abs_allow, of_event = host_abs_allowance(base, cur, t)
        f.hchange, way = beyond_allowance(b, c, t.host_floor, abs_allow)
        what = (f"host overhead {fmt_ms(b)} -> {fmt_ms(c)}, allowed {t.host_floor * 100:.0f}% and "
                f"{fmt_ms(abs_allow)}{of_event}; {'gating' if t.host_gating else 'reported, not gating'}")
        if way:
            flag = "host-slower" if way > 0 else "host-faster"
            f.flags.append(flag)
            f.msgs[flag] = f"host overhead {fmt_pct(f.hchange)} ({what})"
    if base.peak_mem_bytes is not None and cur.peak_mem_bytes is not None:
        grow = cur.peak_mem_bytes - base.peak_mem_bytes
        f.mchange, way = beyond_allowance(base.peak_mem_bytes, cur.peak_mem_bytes, t.mem_floor, t.mem_abs_bytes)
        what = (f"{fmt_bytes(base.peak_mem_bytes)} -> {fmt_bytes(cur.peak_mem_bytes)}, allowed "
                f"{t.mem_floor * 100:.0f}% and {fmt_bytes(t.mem_abs_bytes)}")
        if way > 0:
            f.flags.append("memory-growth")
            f.msgs["memory-growth"] = f"peak memory +{fmt_bytes(grow)} ({fmt_pct(f.mchange)}; {what})"
        elif way < 0:
            f.flags.append("memory-shrink")
            f.msgs["memory-shrink"] = f"peak memory {fmt_pct(f.mchange)} ({what})"
    if base.backend and cur.backend and base.backend != cur.backend:
        f.notes.append(f"backend changed: {base.backend} -> {cur.backend}")
    if cur.materialises and not base.materialises:
        f.notes.append("now materialises the L x L scores (fused kernel fell back?)")
    return f


def clock_note(rec: CaseRecord, device_time: bool) -> str:
    """Why a slower reading may be the GPU's clock, not the code ("" when nothing says so): the GPU held
    its clock down (a power cap, heat) while the judged time was measured, by the sample the record
    keeps (``extra["gpu_state"]``, attnsuite.gpu_state). On a fresh H200, 139 of 687 cases were
    device-timed under the software power cap, one at 1590 MHz against 1980 for its event timing,
    and that case read 9.5% slower (docs/gate.md)."""
    states = (rec.extra or {}).get("gpu_state")
    state = states.get("device-timed" if device_time else "timed") if isinstance(states, dict) else None
    if not isinstance(state, dict) or not state.get("reasons"):
        return ""
    what = "device time" if device_time else "timed samples"
    return (f"this run's {what} ran with the GPU holding its clock down ({', '.join(map(str, state['reasons']))}, "
            f"{state.get('sm_mhz', '?')} MHz): a lower clock reads as slower code")


def full_clock_reading(base: CaseRecord, cur: CaseRecord, t: Thresholds, band: float) -> str:
    """Where a slower device time was measured with the GPU holding its clock down, the same run's
    event-timed samples taken at full clock, when they read within ``band`` (the device time's band,
    the bar the case is judged by, not the event time's own, wider one) of the baseline's: that reading
    in words (the case is then not flagged); "" otherwise.

    Device time replays the step back to back for many milliseconds, and on some H200 machines that
    sustained load trips the software power cap where the event timer's shorter bursts do not: on
    machine AN (session s29) `fa-sweep/triton-flash/fwd` at L 16K was device-timed at 1890 MHz, +3.9%
    over the baseline (and +3.4% on confirmation), while its event time at 1980 MHz read -1.3%. Code
    that is slower is slower at full clock too, so the event time must agree before the clock is
    blamed; not for host-bound steps (their event time is mostly the host's) nor where the event-timed
    samples ran clock-limited as well.
    """
    states = (cur.extra or {}).get("gpu_state")
    timed = states.get("timed") if isinstance(states, dict) else None
    if not isinstance(timed, dict) or timed.get("reasons") or "sm_mhz" not in timed:
        return ""  # the event-timed samples were clock-limited too, or their clock is unknown
    event, _ = time_basis(base, cur, t, "cpu")  # the event-timed statistic
    if event is None or host_bound(base, cur, t):
        return ""
    change = event.cur_ms / event.base_ms - 1.0
    if change > band:
        return ""
    return (f"the event time at full clock ({timed['sm_mhz']} MHz) {fmt_pct(change)} "
            f"({event.label} {fmt_ms(event.base_ms)} -> {fmt_ms(event.cur_ms)}, within the band)")


def confirm_record(cur: CaseRecord) -> tuple[Optional[CaseRecord], str]:
    """The second measurement in ``cur.extra["confirm"]``: (record, "") or (None, why unusable / "")."""
    data = (cur.extra or {}).get("confirm")
    if data is None:
        return None, ""
    if not isinstance(data, dict):
        return None, "second measurement unreadable (not an object)"
    data = {k: v for k, v in data.items() if k not in ("case", "schema")}
    for name in ("workload", "variant", "mode", "problem"):
        data.setdefault(name, getattr(cur, name))
    try:
        second = CaseRecord.from_extra_info(data)
    except (TypeError, ValueError) as exc:
        return None, f"second measurement unreadable: {exc}"
    second.extra.pop("confirm", None)
    return second, ""


def _confirm_change(flag: str, f: _Findings) -> Optional[float]:
    return f.tchange if flag == "slower" else f.mchange


def _apply_confirmation(first: _Findings, second: Optional[_Findings], second_rec: Optional[CaseRecord]
                        ) -> tuple[list[str], list[str], list[str], Optional[bool]]:
    """THE confirmation rule: (flags, finding texts, notes, confirmed).

    A confirmable finding (slower, memory-growth) of the first measurement stays only when the
    second measurement has it too; otherwise it is dropped and a note gives both changes.
    """
    flags = list(first.flags)
    texts = [first.msgs[fl] for fl in flags]
    notes: list[str] = []
    confirmable = [fl for fl in first.flags if fl in CONFIRMABLE]
    if not confirmable:
        return flags, texts, notes, None
    confirmed = True
    for fl in confirmable:
        what = "" if fl == "slower" else "memory growth "
        one = fmt_pct(_confirm_change(fl, first))
        if second is None:  # the second measurement did not run ok: it cannot agree
            got = second_rec.outcome if second_rec is not None else "unreadable"
            notes.append(f"{what}not confirmed: first {one}, second {got}")
            agreed = False
        else:
            two = fmt_pct(_confirm_change(fl, second))
            agreed = fl in second.flags
            notes.append(f"{what}{'confirmed' if agreed else 'not confirmed'}: first {one}, second {two}")
        if not agreed:
            confirmed = False
            i = flags.index(fl)
            del flags[i], texts[i]
    return flags, texts, notes, confirmed


def judge(base: Optional[CaseRecord], cur: Optional[CaseRecord], t: Thresholds, device: Optional[str] = None,
          reference: str = "baseline") -> CaseVerdict:
    """THE verdict rule for one case (either side may be None: new or missing).

    ``device`` is the device kind ("cuda"/"cpu"); None infers it from the records' timers.
    ``reference`` names the side judged against in the verdict's words ("base" for an A/B's base tree).
    """
    if base is None and cur is None:
        raise ValueError("judge: neither a baseline nor a current record")
    key = (cur or base).key  # type: ignore[union-attr]
    kind = device or ("cuda" if is_cuda(base, cur) else "cpu")

    def one_sided(verdict: str, message: str) -> CaseVerdict:
        # the figure the gate would judge, on the side that has one (nothing to compare it with)
        side = cur if cur is not None and cur.outcome == "ok" else base
        label, value, median = one_side_figure(side, t, kind) if side is not None and side.outcome == "ok" \
            else ("", None, None)
        mine = side is cur
        return CaseVerdict(key, verdict, (verdict,), message, base, cur, statistic=label,
                           base_ms=None if mine else value, cur_ms=value if mine else None,
                           base_median_ms=None if mine else median, cur_median_ms=median if mine else None)

    if base is None:
        return one_sided("new", f"not in the {reference}; now {_describe(cur)}")
    if cur is None or (cur.outcome == "skipped" and base.outcome != "skipped"):
        how = "not run" if cur is None else f"now skipped ({clip(cur.detail or 'no reason given', 200)})"
        return one_sided("missing", f"{how}; {reference}: {_describe(base)}")
    if cur.outcome == "skipped":  # skipped in both
        return CaseVerdict(key, "same", ("same",), f"skipped in both ({clip(cur.detail or '', 160)})", base, cur)
    if base.outcome == "skipped":  # runs now, was skipped
        return one_sided("new", f"was skipped, now {_describe(cur)}")
    if cur.outcome in FAILING and base.outcome not in FAILING:
        return one_sided("newly-failing", f"now {_describe(cur)}; {reference}: {_describe(base)}")
    if cur.outcome == "oom" and base.outcome != "oom":
        return one_sided("newly-oom", f"now {_describe(cur)}; {reference}: {_describe(base)}")
    if cur.outcome != "ok":  # failing or OOM in both
        still = "still out of memory" if cur.outcome == "oom" else f"still failing ({_describe(cur)})"
        return CaseVerdict(key, "same", ("same",), still, base, cur)
    if base.outcome == "oom":
        return CaseVerdict(key, "fixed-oom", ("fixed-oom",), f"runs now ({_describe(cur)}); {reference} ran out of memory",
                           base, cur)
    if base.outcome in FAILING:
        return CaseVerdict(key, "fixed-failing", ("fixed-failing",), f"passes now ({_describe(cur)}); {reference}: "
                           f"{_describe(base)}", base, cur)
    # Both ok: time, host overhead and memory, then the second measurement when there is one.
    first = _assess(base, cur, t, kind)
    second_rec, unreadable = confirm_record(cur)
    second = _assess(base, second_rec, t, kind) if second_rec is not None and second_rec.outcome == "ok" else None
    if second_rec is None and not unreadable:
        flags, texts, cnotes, confirmed = list(first.flags), [first.msgs[fl] for fl in first.flags], [], None
    else:
        flags, texts, cnotes, confirmed = _apply_confirmation(first, second, second_rec)
        if unreadable:
            cnotes.append(unreadable)
    order = sorted(range(len(flags)), key=lambda i: _RANK[flags[i]])
    flags = [flags[i] for i in order]
    texts = [texts[i] for i in order]  # gating findings first: the message is cut in one-line summaries
    if not flags:
        flags = ["same"]
    notes = cnotes + first.notes
    message = "; ".join(texts + first.context + notes) or "same"
    b = first.basis
    return CaseVerdict(
        key, flags[0], tuple(flags), message, base, cur, first.tchange, b.band if b else None, first.mchange,
        tuple(notes), statistic=b.label if b else "", base_ms=b.base_ms if b else None,
        cur_ms=b.cur_ms if b else None, base_median_ms=b.base_median_ms if b else None,
        cur_median_ms=b.cur_median_ms if b else None, time_note=first.time_note, host_change=first.hchange,
        host_gating=t.host_gating, confirmed=confirmed,
        confirm_time_change=second.tchange if second else None,
        confirm_mem_change=second.mchange if second else None, band_by=b.band_by if b else None)


# --------------------------------------------------------------------------- a whole run

_DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}  # problem.DTYPE_SHORT
_DEVICE_TOKEN = re.compile(r"^(cpu|cuda\d*)$")


def problem_dtype_device(problem: str) -> tuple[Optional[str], Optional[str]]:
    """(dtype short name, device token) read from a problem id (``...-bf16-cuda1`` -> ("bf16", "cuda1")).

    The device token is the run's ``--attn-device`` without its colon (Problem.id writes it so).
    """
    tokens = problem.split("-")
    for i in range(len(tokens) - 1, -1, -1):
        if _DEVICE_TOKEN.match(tokens[i]):
            dtype = tokens[i - 1] if i > 0 and tokens[i - 1] in _DTYPE_SHORT.values() else None
            return dtype, tokens[i]
    return None, None


@dataclass(frozen=True)
class Scope:
    """Which baseline cases a selective run answers for; a baseline case outside is not called missing.

    Every field left None selects everything along it. ``keys`` is the exact set of selected case
    keys (``-k``, ``-m``, deselection); ``pairs`` the (workload, variant) pairs a run produced.
    """

    variants: Optional[frozenset[str]] = None
    workloads: Optional[frozenset[str]] = None
    pairs: Optional[frozenset[tuple[str, str]]] = None  # (workload, variant) pairs that ran
    tiers: Optional[frozenset[str]] = None
    modes: Optional[frozenset[str]] = None
    dtypes: Optional[frozenset[str]] = None  # "float32" or "fp32" alike
    devices: Optional[frozenset[str]] = None  # --attn-device values: "cpu", "cuda", "cuda:1"
    keys: Optional[frozenset[str]] = None

    def __contains__(self, rec: CaseRecord) -> bool:
        if self.variants is not None and rec.variant not in self.variants:
            return False
        if self.workloads is not None and rec.workload not in self.workloads:
            return False
        if self.modes is not None and rec.mode not in self.modes:
            return False
        if self.pairs is not None and (rec.workload, rec.variant) not in self.pairs:
            return False
        if self.keys is not None and rec.key not in self.keys:
            return False
        tier = rec.extra.get("tier") if rec.extra else None
        if self.tiers is not None and tier is not None and tier not in self.tiers:
            return False
        if self.dtypes is not None or self.devices is not None:
            dtype, device = problem_dtype_device(rec.problem)
            wanted = {_DTYPE_SHORT.get(d, d) for d in self.dtypes or ()}
            if self.dtypes is not None and dtype is not None and dtype not in wanted:
                return False
            if self.devices is not None and device is not None and device not in {d.replace(":", "") for d in self.devices}:
                return False
        return True

    _SETS = ("variants", "workloads", "tiers", "modes", "dtypes", "devices", "keys")

    def to_json(self) -> dict[str, Any]:
        """The selection as stored in a run's JSON (``attnsuite.scope``): only the fields that narrow it."""
        out: dict[str, Any] = {name: sorted(getattr(self, name)) for name in self._SETS
                               if getattr(self, name) is not None}
        if self.pairs is not None:
            out["pairs"] = sorted([w, v] for w, v in self.pairs)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "scope") -> "Scope":
        """The inverse of :meth:`to_json`; ``ValueError`` naming the field when ``obj`` is not one."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where} is {type(obj).__name__}, expected an object")
        unknown = sorted(set(obj) - set(cls._SETS) - {"pairs"})
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}")
        kw: dict[str, Any] = {}
        for name in cls._SETS:
            value = obj.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}.{name} must be a list of strings")
            kw[name] = frozenset(value)
        pairs = obj.get("pairs")
        if pairs is not None:
            if not isinstance(pairs, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
                raise ValueError(f"{where}.pairs must be a list of [workload, variant] pairs")
            kw["pairs"] = frozenset((w, v) for w, v in pairs)
        return cls(**kw)

    @classmethod
    def of_run(cls, records: Mapping[str, CaseRecord]) -> "Scope":
        """The scope of a filtered run: the (workload, variant) pairs (and tiers) it produced."""
        tiers = {r.extra.get("tier") for r in records.values() if r.extra and r.extra.get("tier")}
        return cls(pairs=frozenset((r.workload, r.variant) for r in records.values()),
                   tiers=frozenset(tiers) if tiers else None)

    @classmethod
    def dtypes_of(cls, records: Mapping[str, CaseRecord]) -> Optional[frozenset[str]]:
        """The dtypes of a run's cases (skipped ones included: every selected case has a record), or
        None when no problem id names one. A run without ``--attn-dtype`` answers for these only: a
        case of another dtype (recorded from an ``--attn-dtype float64`` run) is not its to miss."""
        dtypes = {problem_dtype_device(r.problem)[0] for r in records.values()} - {None}
        return frozenset(dtypes) if dtypes else None  # type: ignore[arg-type]

    @classmethod
    def tiers_of(cls, records: Mapping[str, CaseRecord]) -> "Scope":
        """Everything of the tiers the run used (a quick run does not call full-tier cases missing)."""
        tiers = {r.extra.get("tier") for r in records.values() if r.extra and r.extra.get("tier")}
        return cls(tiers=frozenset(tiers) if tiers else None)


@dataclass
class Comparison:
    """Every case's verdict between a baseline and a run, with what was left out and why."""

    verdicts: list[CaseVerdict]
    out_of_scope: int = 0
    notes: list[str] = field(default_factory=list)
    baseline_label: str = "baseline"
    current_label: str = "this run"
    # the two sides' names in table headers: ("base", "head") for attnsuite ab, whose sides are two trees
    side_names: tuple[str, str] = ("baseline", "this run")
    # shown at the head of every report: which baseline and what it can promise, calibration
    header: list[str] = field(default_factory=list)
    fallback: bool = False  # the baseline is a compatible machine's, not this exact fingerprint's
    promise: str = ""  # what a comparison with a fallback baseline can and cannot promise
    base_calibration: Optional[dict[str, Any]] = None
    cur_calibration: Optional[dict[str, Any]] = None
    # --attn-gate / --gate: "enforce" fails the run on a regression, "report" only shows it, so
    # every text of this comparison (table, markdown heading) says FAIL only where the run fails
    gate_mode: str = "enforce"
    # the run stopped early: its scope is what it ran, so "outside the scope" includes what it never reached
    interrupted: bool = False
    # the baseline file this run was recorded into after the comparison ("" when it was not): reports
    # then say the figures were kept, not advise keeping them
    recorded: str = ""

    @property
    def failed(self) -> bool:
        """Whether the gate fails: any case with a gating verdict."""
        return any(v.gating for v in self.verdicts)

    @property
    def regressions(self) -> list[CaseVerdict]:
        return [v for v in self.verdicts if v.gating]

    @property
    def improvements(self) -> list[CaseVerdict]:
        return [v for v in self.verdicts if v.improvement]

    @property
    def reported(self) -> list[CaseVerdict]:
        """Findings that do not fail the gate: host overhead, slowdowns a second measurement did not confirm."""
        return [v for v in self.verdicts if v.reported]

    @property
    def n_skipped_in_both(self) -> int:
        """Judged cases that ran in neither run (skipped here and in the baseline): judged, not measured."""
        return sum(1 for v in self.verdicts if v.skipped_in_both)

    @property
    def new(self) -> list[CaseVerdict]:
        return [v for v in self.verdicts if v.verdict == "new"]

    @property
    def reference(self) -> str:
        """What this comparison judges against, in words (:func:`reference_name`)."""
        return reference_name(self.side_names[0])

    @property
    def unchanged(self) -> list[CaseVerdict]:
        return [v for v in self.verdicts if v.verdict == "same" and not v.reported]

    def counts(self) -> dict[str, int]:
        """How many cases got each (primary) verdict, in verdict order, zeros left out."""
        out: dict[str, int] = {}
        for v in self.verdicts:
            out[v.verdict] = out.get(v.verdict, 0) + 1
        return {k: out[k] for k in VERDICTS if k in out}

    def summary(self) -> str:
        """One line: the gate's outcome and the counts. A gate without regressions reads "pass" only
        when no case of this run failed: a new case that raised or crashed is no regression, yet it
        fails the run, and "pass (1 new)" had stood above "FAIL: 1 case(s) of this run failed"."""
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items()) or "no cases"
        failing = failed_counts({v.key: v.cur for v in self.verdicts if v.cur is not None})
        calm = "no regression" if failing else "pass"
        if self.verdicts and all(v.verdict == "new" for v in self.verdicts):
            # none of the run's cases is in the baseline: "pass (29 new)" had stood beside the summary's
            # "NOT COMPARED", for a run whose cases were all skipped too
            calm = "nothing compared"
        n = count(len(self.regressions), "regression")
        head = calm if not self.failed else f"FAIL: {n}" if self.gate_mode == "enforce" else \
            f"REPORTED: {n} (gate in report mode)"
        unconfirmed = sum(1 for v in self.verdicts if v.confirmed is False)
        tail = f"; {unconfirmed} not confirmed by a second measurement" if unconfirmed else ""
        if failing and not self.failed:
            what = ", ".join(f"{n} {k}" for k, n in failing.items())
            tail += f"; {count(sum(failing.values()), 'case')} of this run failed ({what}): the run fails on them"
        if self.out_of_scope:
            tail += f"; {count(self.out_of_scope, 'baseline case')} " + (
                "not judged (outside its selection or not reached before the interruption)" if self.interrupted
                else "outside this run's scope")
        # after a regression count, the verdict counts are a list of their own ("FAIL: 3 regressions
        # (3 newly-failing, 3 same)" had read as three of the regressions being "same")
        return f"{head}; verdicts: {counts}{tail}" if self.failed else f"{head} ({counts}){tail}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (the CLI's --format json, --attn-gate-json, the gate evaluation)."""
        return {
            "compared": True,
            "failed": self.failed,
            "gate_mode": self.gate_mode,
            "interrupted": self.interrupted,
            "counts": self.counts(),
            "out_of_scope": self.out_of_scope,
            "skipped_in_both": self.n_skipped_in_both,
            "notes": list(self.notes),
            "baseline": self.baseline_label,
            "current": self.current_label,
            "header": list(self.header),
            "fallback": self.fallback,
            "promise": self.promise,
            "recorded": self.recorded or None,
            "calibration": {"baseline": self.base_calibration, "current": self.cur_calibration},
            "cases": [v.to_json() for v in self.verdicts],
        }


def reference_name(side: str) -> str:
    """How reports name the side a comparison judges against: "the baseline" (a stored baseline), or
    for an A/B's side "base" "the base tree" (the words of every clause that names it)."""
    return "the baseline" if side == "baseline" else f"the {side} tree"


def compare(base: Mapping[str, CaseRecord], cur: Mapping[str, CaseRecord], *,
            thresholds: Optional[ThresholdConfig] = None, device: str = "cuda",
            scope: Optional[Scope | Callable[[CaseRecord], bool]] = None,
            notes: Optional[list[str]] = None, side_names: tuple[str, str] = ("baseline", "this run")) -> Comparison:
    """Judge every case of ``cur`` and ``base`` (baseline cases outside ``scope`` are not judged).

    ``side_names`` name the two sides in the verdicts' words and the reports (an A/B's are
    ("base", "head"): two trees, not a baseline and a run)."""
    cfg = thresholds or ThresholdConfig()
    verdicts = []
    skipped_scope = 0
    for key in sorted(set(base) | set(cur)):
        b, c = base.get(key), cur.get(key)
        if c is None and scope is not None:
            inside = (b in scope) if isinstance(scope, Scope) else scope(b)  # type: ignore[operator]
            if not inside:
                skipped_scope += 1
                continue
        verdicts.append(judge(b, c, cfg.for_case(c or b, device), device, side_names[0]))  # type: ignore[arg-type]
    verdicts.sort(key=lambda v: (_RANK[v.verdict], v.key))
    blind = blind_band_note(verdicts)
    return Comparison(verdicts=verdicts, out_of_scope=skipped_scope, notes=list(notes or []) + ([blind] if blind else []),
                      side_names=side_names)


# A band past this can hide a doubling of the time: the CPU floor is exactly 100% (docs/gate.md),
# and a run's own spread (or a floor set above it) widens a band beyond it.
BLIND_BAND = 1.0
# What each thresholds field that can set a band measures, and what narrows a band it set too wide.
_BAND_CAUSES = {
    "spread_k": "times both runs' own spread: re-run on a quieter machine to judge their time",
    "instance_k": "times how far the baseline's runs lay apart: re-record it from runs that agree",
    "time_floor": "the thresholds' floor: a lower one narrows it",
    "host_bound_floor": "the thresholds' floor for host-bound cases: a lower one narrows it",
}


def blind_band_note(verdicts: list[CaseVerdict]) -> str:
    """A note naming the cases whose time was judged within a band wider than :data:`BLIND_BAND`.

    The band grows with both runs' own spread; on a loaded machine it reached 292%, and a 3x slowdown
    then read ``same`` with nothing in the summary to say the gate could not have seen it.
    """
    wide = [v for v in verdicts if v.band is not None and v.band > BLIND_BAND and v.time_change is not None
            and "slower" not in v.flags]
    if not wide:
        return ""
    widest = max(wide, key=lambda v: v.band or 0.0)
    by: dict[BandSetter, int] = {}  # the field (and value) that set each band, in the verdicts' order
    for v in wide:
        if v.band_by is not None:
            by[v.band_by] = by.get(v.band_by, 0) + 1
    set_by = "; ".join(f"{setter} for {count(n, 'case')} ({_BAND_CAUSES[setter.field]})" for setter, n in by.items())
    return (f"{count(len(wide), 'case')} judged within a noise band over {BLIND_BAND:.0%}: "
            f"even a doubling of their time would read same there; widest {widest.key} "
            f"±{(widest.band or 0.0) * 100:.0f}%." + (f" The thresholds set it: {set_by}." if set_by else ""))
