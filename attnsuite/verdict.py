"""THE verdict rule: one case's measurement against its baseline entry (DESIGN section 5).

Verdicts (``VERDICTS``), gating ones first:

* ``newly-failing``: the case now ends in a numerics failure or an error and did not before;
* ``newly-oom``: the case now runs out of memory and did not before;
* ``missing``: the baseline has the case, this run did not produce it (or now skips it);
* ``slower``: the median time grew by more than the case's noise band;
* ``memory-growth``: peak memory grew by more than the relative and the absolute allowance;
* ``faster`` / ``memory-shrink``: the reverse (reported so the baseline gets refreshed);
* ``fixed-oom`` / ``fixed-failing``: ran out of memory / failed in the baseline, runs now;
* ``new``: not in the baseline;
* ``same``: within noise (also: skipped in both, failing the same way in both).

The noise band of a case is ``max(time_floor, spread_k * hypot(iqr_b/median_b, iqr_c/median_c))``:
it grows with the measured spread (relative interquartile range) of *both* runs and never drops
below the floor. A host-bound case (the GPU waited on Python's launches: ``launch_fraction``) has
its own, wider floor, because it times the host CPU, which varies between machine instances.
Floors and factors come from :class:`Thresholds`, resolved per device kind,
workload and case from a small JSON config (``baselines/thresholds.json``, see
:func:`load_thresholds`).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .record import CaseRecord

GATING = ("newly-failing", "newly-oom", "missing", "slower", "memory-growth")
IMPROVEMENTS = ("faster", "memory-shrink", "fixed-oom", "fixed-failing")
VERDICTS = GATING + IMPROVEMENTS + ("new", "same")
_RANK = {v: i for i, v in enumerate(VERDICTS)}
FAILING = ("numerics", "error")
RAN = ("ok", "oom", "numerics", "error")  # outcomes that mean the case was attempted


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

    def validate(self, where: str) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "statistic":
                if v not in ("median", "min"):
                    raise ThresholdsError(f"{where}: statistic must be 'median' or 'min', got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ThresholdsError(f"{where}: {f.name} must be a non-negative number, got {v!r}")


# Built-in defaults per device kind. On a
# shared 2-core CPU runner whole runs slow down by up to ~2x (measured A/A, docs/gate.md), so the
# CPU gate compares the fastest sample and flags only a doubling; CPU memory (allocator events) is
# deterministic and keeps a tight band.
DEVICE_DEFAULTS = {
    # CUDA: calibrated on an H200 (docs/gate.md): some kernels (cuDNN at d128) are bimodal, so the
    # median moves by several % run to run while the fastest sample stays within ~1.5%.
    # Host-bound cases moved by up to +29% (an eager loop over segments) and +49% (a 0.65 ms layer)
    # between H200 instances with the same code, hence their own floor.
    "cuda": Thresholds(time_floor=0.03, spread_k=0.5, statistic="min", host_bound_floor=0.5),
    "cpu": Thresholds(time_floor=1.0, spread_k=2.0, mem_floor=0.10, mem_abs_bytes=8 << 20, statistic="min"),
}
_THRESHOLD_FIELDS = {f.name for f in fields(Thresholds)}


@dataclass
class ThresholdConfig:
    """Threshold overrides: file-wide, per device kind, per workload, per case-key pattern (in order)."""

    default: dict[str, float] = field(default_factory=dict)
    device: dict[str, dict[str, float]] = field(default_factory=dict)
    workload: dict[str, dict[str, float]] = field(default_factory=dict)
    case: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    path: Optional[str] = None

    def for_case(self, rec: CaseRecord, device: str) -> Thresholds:
        """The thresholds of one case: device defaults, then file default, device, workload, case."""
        t = DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cuda"])
        for layer in (self.default, self.device.get(device, {}), self.workload.get(rec.workload, {})):
            if layer:
                t = replace(t, **layer)
        for pattern, layer in self.case:
            if fnmatch.fnmatchcase(rec.key, pattern):
                t = replace(t, **layer)
        return t


def _layer(obj: Any, where: str) -> dict[str, float]:
    if not isinstance(obj, dict):
        raise ThresholdsError(f"{where}: expected an object of threshold values")
    unknown = set(obj) - _THRESHOLD_FIELDS
    if unknown:
        raise ThresholdsError(f"{where}: unknown thresholds {sorted(unknown)} (known: {sorted(_THRESHOLD_FIELDS)})")
    replace(Thresholds(), **obj).validate(where)
    return dict(obj)


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
    if obj.get("version", 1) != 1:
        raise ThresholdsError(f"{where}: version {obj.get('version')!r}, this attnsuite reads 1")
    unknown = set(obj) - {"version", "default", "device", "workload", "case", "comment"}
    if unknown:
        raise ThresholdsError(f"{where}: unknown sections {sorted(unknown)}")
    cfg = ThresholdConfig(path=where)
    cfg.default = _layer(obj.get("default", {}), f"{where}: default")
    for section in ("device", "workload", "case"):
        sub = obj.get(section, {})
        if not isinstance(sub, dict):
            raise ThresholdsError(f"{where}: {section} must be an object of name to thresholds")
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
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThresholdsError(f"thresholds {p}: no such file") from None
    except ValueError as exc:
        raise ThresholdsError(f"thresholds {p}: not valid JSON: {exc}") from None
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
    time_change: Optional[float] = None  # relative change of the median (0.1 = 10% slower)
    band: Optional[float] = None  # the noise band used
    mem_change: Optional[float] = None  # relative change of peak memory
    notes: tuple[str, ...] = ()  # backend changed, now materialises, ...

    @property
    def gating(self) -> bool:
        """Whether this case fails the gate."""
        return any(f in GATING for f in self.flags)

    @property
    def improvement(self) -> bool:
        return not self.gating and any(f in IMPROVEMENTS for f in self.flags)

    @property
    def record(self) -> CaseRecord:
        """The current record, or the baseline's when the case is missing."""
        return self.cur or self.base  # type: ignore[return-value]


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
    return "-" if x is None else f"{x * 100:+.1f}%"


def host_bound(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> bool:
    """Does either run say the case is host-bound (the GPU waited on the host's launches)?"""
    return any(r.launch_fraction is not None and r.launch_fraction >= t.host_bound_at for r in (base, cur))


def noise_band(base: CaseRecord, cur: CaseRecord, t: Thresholds) -> float:
    """The relative noise band of a case from both runs' relative IQR, never below the floor
    (nor below ``host_bound_floor`` for a host-bound case)."""
    rel = []
    for r in (base, cur):
        if r.iqr_ms is not None and r.median_ms:
            rel.append(r.iqr_ms / r.median_ms)
    spread = math.hypot(*rel) if rel else 0.0
    floor = t.time_floor
    if t.host_bound_floor and host_bound(base, cur, t):
        floor = max(floor, t.host_bound_floor)
    return max(floor, t.spread_k * spread)


def _describe(r: CaseRecord) -> str:
    if r.outcome == "ok":
        parts = [fmt_ms(r.median_ms)]
        if r.peak_mem_bytes is not None:
            parts.append(fmt_bytes(r.peak_mem_bytes))
        return "ok, " + ", ".join(parts)
    if r.outcome == "oom":
        return "out of memory" + (f" (asked for {fmt_bytes(r.oom_bytes)})" if r.oom_bytes else "")
    detail = (r.detail or "").strip().splitlines()
    return r.outcome + (f": {detail[0][:120]}" if detail else "")


def judge(base: Optional[CaseRecord], cur: Optional[CaseRecord], t: Thresholds) -> CaseVerdict:
    """THE verdict rule for one case (either side may be None: new or missing)."""
    if base is None and cur is None:
        raise ValueError("judge: neither a baseline nor a current record")
    key = (cur or base).key  # type: ignore[union-attr]
    if base is None:
        return CaseVerdict(key, "new", ("new",), f"not in the baseline; now {_describe(cur)}", None, cur)
    if cur is None or (cur.outcome == "skipped" and base.outcome != "skipped"):
        how = "not run" if cur is None else f"now skipped ({(cur.detail or 'no reason given')[:160]})"
        return CaseVerdict(key, "missing", ("missing",), f"{how}; baseline: {_describe(base)}", base, cur)
    if cur.outcome == "skipped":  # skipped in both
        return CaseVerdict(key, "same", ("same",), f"skipped in both ({(cur.detail or '')[:120]})", base, cur)
    if base.outcome == "skipped":  # runs now, was skipped
        return CaseVerdict(key, "new", ("new",), f"was skipped, now {_describe(cur)}", base, cur)
    if cur.outcome in FAILING and base.outcome not in FAILING:
        return CaseVerdict(key, "newly-failing", ("newly-failing",),
                           f"now {_describe(cur)}; baseline: {_describe(base)}", base, cur)
    if cur.outcome == "oom" and base.outcome != "oom":
        return CaseVerdict(key, "newly-oom", ("newly-oom",),
                           f"now {_describe(cur)}; baseline: {_describe(base)}", base, cur)
    if cur.outcome != "ok":  # failing or OOM in both
        still = "still out of memory" if cur.outcome == "oom" else f"still failing ({_describe(cur)})"
        return CaseVerdict(key, "same", ("same",), still, base, cur)
    if base.outcome == "oom":
        return CaseVerdict(key, "fixed-oom", ("fixed-oom",), f"runs now ({_describe(cur)}); baseline ran out of memory",
                           base, cur)
    if base.outcome in FAILING:
        return CaseVerdict(key, "fixed-failing", ("fixed-failing",), f"passes now ({_describe(cur)}); baseline: "
                           f"{_describe(base)}", base, cur)
    # Both ok: time and memory.
    flags: list[str] = []
    msgs: list[str] = []  # gating findings first: the message is cut in one-line summaries
    notes: list[str] = []
    tchange = band = mchange = None
    within_noise = False
    statistic = t.statistic
    b_ms, c_ms = getattr(base, f"{statistic}_ms"), getattr(cur, f"{statistic}_ms")
    if statistic != "median" and (b_ms is None or c_ms is None):  # records that carry only a median
        statistic, b_ms, c_ms = "median", base.median_ms, cur.median_ms
    if b_ms and c_ms is not None:
        tchange = c_ms / b_ms - 1.0
        band = noise_band(base, cur, t)
        stat = "" if statistic == "median" else f"{statistic} "
        hb = " (host-bound)" if t.host_bound_floor and host_bound(base, cur, t) else ""
        what = f"{stat}{fmt_ms(b_ms)} -> {fmt_ms(c_ms)}, noise band {band * 100:.1f}%{hb}"
        if tchange > band:
            flags.append("slower")
            msgs.append(f"slower by {tchange * 100:.1f}% ({what})")
        elif tchange < -band:
            flags.append("faster")
            msgs.append(f"faster by {-tchange * 100:.1f}% ({what})")
        else:
            msgs.append(f"time {fmt_pct(tchange)} within noise ({what})")
            within_noise = True
    else:
        notes.append("no time on one side: time not compared")
    if base.peak_mem_bytes is not None and cur.peak_mem_bytes is not None:
        grow = cur.peak_mem_bytes - base.peak_mem_bytes
        mchange = grow / base.peak_mem_bytes if base.peak_mem_bytes else (math.inf if grow > 0 else 0.0)
        what = (f"{fmt_bytes(base.peak_mem_bytes)} -> {fmt_bytes(cur.peak_mem_bytes)}, allowed "
                f"{t.mem_floor * 100:.0f}% and {fmt_bytes(t.mem_abs_bytes)}")
        if grow > t.mem_abs_bytes and mchange > t.mem_floor:
            flags.append("memory-growth")
            msgs.insert(0, f"peak memory +{fmt_bytes(grow)} ({fmt_pct(mchange) if math.isfinite(mchange) else 'from 0'}; {what})")
        elif -grow > t.mem_abs_bytes and -mchange > t.mem_floor:
            flags.append("memory-shrink")
            msgs.append(f"peak memory {fmt_pct(mchange)} ({what})")
    if base.backend and cur.backend and base.backend != cur.backend:
        notes.append(f"backend changed: {base.backend} -> {cur.backend}")
    if cur.materialises and not base.materialises:
        notes.append("now materialises the L x L scores (fused kernel fell back?)")
    if not flags:
        flags.append("same")
    flags.sort(key=_RANK.__getitem__)
    if within_noise and len(msgs) > 1:  # the time part is context once memory has a finding
        msgs.append(msgs.pop(0 if msgs[0].startswith("time ") else 1))
    message = "; ".join(msgs + notes) or "same"
    return CaseVerdict(key, flags[0], tuple(flags), message, base, cur, tchange, band, mchange, tuple(notes))


# --------------------------------------------------------------------------- a whole run


@dataclass(frozen=True)
class Scope:
    """Which baseline cases a (filtered) run is judged on; cases outside are not called missing."""

    variants: Optional[frozenset[str]] = None
    workloads: Optional[frozenset[str]] = None
    pairs: Optional[frozenset[tuple[str, str]]] = None  # (workload, variant) pairs that ran
    tiers: Optional[frozenset[str]] = None

    def __contains__(self, rec: CaseRecord) -> bool:
        if self.variants is not None and rec.variant not in self.variants:
            return False
        if self.workloads is not None and rec.workload not in self.workloads:
            return False
        if self.pairs is not None and (rec.workload, rec.variant) not in self.pairs:
            return False
        tier = rec.extra.get("tier") if rec.extra else None
        if self.tiers is not None and tier is not None and tier not in self.tiers:
            return False
        return True

    @classmethod
    def of_run(cls, records: Mapping[str, CaseRecord]) -> "Scope":
        """The scope of a filtered run: the (workload, variant) pairs (and tiers) it produced."""
        tiers = {r.extra.get("tier") for r in records.values() if r.extra and r.extra.get("tier")}
        return cls(pairs=frozenset((r.workload, r.variant) for r in records.values()),
                   tiers=frozenset(tiers) if tiers else None)

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
    def new(self) -> list[CaseVerdict]:
        return [v for v in self.verdicts if v.verdict == "new"]

    @property
    def unchanged(self) -> list[CaseVerdict]:
        return [v for v in self.verdicts if v.verdict == "same"]

    def counts(self) -> dict[str, int]:
        """How many cases got each (primary) verdict, in verdict order, zeros left out."""
        out: dict[str, int] = {}
        for v in self.verdicts:
            out[v.verdict] = out.get(v.verdict, 0) + 1
        return {k: out[k] for k in VERDICTS if k in out}

    def summary(self) -> str:
        """One line: the gate's outcome and the counts."""
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items()) or "no cases"
        head = f"FAIL: {len(self.regressions)} regression(s)" if self.failed else "pass"
        return f"{head} ({counts})" + (f"; {self.out_of_scope} baseline cases outside this run's scope" if self.out_of_scope else "")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (used by the CLI and the gate evaluation)."""
        return {
            "failed": self.failed,
            "counts": self.counts(),
            "out_of_scope": self.out_of_scope,
            "notes": list(self.notes),
            "cases": [{"key": v.key, "verdict": v.verdict, "flags": list(v.flags), "message": v.message,
                       "time_change": v.time_change, "band": v.band, "mem_change": v.mem_change}
                      for v in self.verdicts],
        }


def compare(base: Mapping[str, CaseRecord], cur: Mapping[str, CaseRecord], *,
            thresholds: Optional[ThresholdConfig] = None, device: str = "cuda",
            scope: Optional[Scope | Callable[[CaseRecord], bool]] = None,
            notes: Optional[list[str]] = None) -> Comparison:
    """Judge every case of ``cur`` and ``base`` (baseline cases outside ``scope`` are not judged)."""
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
        verdicts.append(judge(b, c, cfg.for_case(c or b, device)))  # type: ignore[arg-type]
    verdicts.sort(key=lambda v: (_RANK[v.verdict], v.key))
    return Comparison(verdicts=verdicts, out_of_scope=skipped_scope, notes=list(notes or []))
