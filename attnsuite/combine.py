"""Several runs of one machine as one run: what a baseline recorded from N runs holds.

One run's fastest sample can be lucky (cuDNN's bimodal kernels, a quiet host, a clock that
happened to stay high): a baseline set by it makes every later unchanged run look slower. On the
H100 a single reference run put ``sdpa`` bwd at 4.70 ms where the next three runs gave 4.90-5.00 ms,
and the gate flagged it in all three. Combining runs takes, per case, the median over the runs of
each timing statistic (event-timed and device times, host overhead, launch share, rates), so one
outlier run out of three moves nothing; peak memory is the largest seen. The runs' instance
calibrations are combined the same way: per field, the median of the numbers. Each case also keeps
how far its runs lay apart (``instance_spread``: per time statistic, (max - min) / median over
the runs): fresh GPU instances differ case by case (inductor picking other kernels on another
instance moved one compiled case by 12%), and the gate widens that case's band by it
(``Thresholds.instance_k``, verdict.py) instead of every case's floor. A case whose
outcome differs between runs keeps the worse outcome (a crash or timeout first) and is listed,
because a flaky case is something a reviewer should see rather than something to average away.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import fnmatch
import statistics
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Optional, Sequence

from .baseline import SPREAD_FIELDS, Run, check_compatible, check_same_cpu_model
from . import provenance
from .record import GRAPH_REPLAY, CaseRecord

# worst first: when runs disagree the baseline keeps the outcome that gates least on the next run
_SEVERITY = ("crash", "timeout", "error", "numerics", "oom", "skipped", "ok")
# per case, the median over the runs of each of these (see the module docstring)
_MEDIAN_FIELDS = ("median_ms", "iqr_ms", "min_ms", "launch_fraction", "tflops", "pct_peak")
# device time and what is derived from it, taken from the runs that used one measuring method
_DEVICE_FIELDS = ("device_ms", "device_iqr_ms", "device_min_ms", "host_overhead_ms")
_PREFERRED_METHOD = GRAPH_REPLAY  # the primary method (kernel-sum is its fallback), on a tie


WIDE_SPREAD = 0.10  # runs further apart than this on a case are named when a baseline is recorded


@dataclass
class Combined:
    """The combined run and the cases whose outcome differed between the runs."""

    run: Run
    disagreeing: dict[str, list[str]] = field(default_factory=dict)  # case key -> outcome per run

    def widely_spread(self, limit: float = WIDE_SPREAD,
                      keys: Optional[Collection[str]] = None) -> list[tuple[float, str]]:
        """(spread, case key) of the cases (of ``keys``, default all) whose runs lay more than ``limit``
        apart on the time the gate judges (device min where there is one, else min), widest first:
        their noise band widens to that spread, so whoever records the baseline should see them (one
        bad run among few can make a case's band wide)."""
        wide = []
        for key, rec in self.run.records.items():
            if keys is not None and key not in keys:
                continue
            spread = rec.extra.get("instance_spread") or {}
            value = spread.get("device_min_ms", spread.get("min_ms"))
            if value is not None and value > limit:
                wide.append((value, key))
        return sorted(wide, reverse=True)


def _median(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def instance_spread(records: Sequence[CaseRecord], fields: Sequence[str] = SPREAD_FIELDS) -> dict[str, float]:
    """Per time statistic of ``fields`` present in at least two records: (max - min) / median over them."""
    out: dict[str, float] = {}
    for name in fields:
        values = [getattr(r, name) for r in records if getattr(r, name) is not None]
        mid = statistics.median(values) if len(values) >= 2 else 0.0
        if mid > 0:
            out[name] = (max(values) - min(values)) / mid
    return out


def device_timed_runs(records: Sequence[CaseRecord]) -> list[CaseRecord]:
    """The records whose device time the combined record takes: those of the measuring method most
    of them used (graph replay on a tie).

    A case's method can change from run to run (a graph capture that runs out of memory falls back
    to kernel-sum), and on memory-bound steps the two read ~6% apart on an H200 (graph replay high):
    a median across methods would match neither, so a baseline keeps one method's figures.
    """
    timed = [r for r in records if r.device_ms is not None]
    if not timed:
        return []
    counts = collections.Counter(r.device_method for r in timed)
    top = max(counts.values())
    tied = [m for m, n in counts.items() if n == top]
    method = _PREFERRED_METHOD if _PREFERRED_METHOD in tied else tied[0]
    return [r for r in timed if r.device_method == method]


def latest_measurement(rec: CaseRecord) -> CaseRecord:
    """The run's last measurement of a case: the confirmation's re-measurement where the run made one.

    A case first judged slower is measured again at the end of the run; when the two disagree the
    gate has judged the first a transient, and a baseline that took it would widen that case's
    band by the transient (on a fresh H200 one first measurement read +13% and its second +1.1%).
    When they agree either serves; the later one is taken so the rule has no condition.
    """
    second = rec.extra.get("confirm")
    if not isinstance(second, dict):
        return rec
    out = CaseRecord.from_extra_info(second)
    out.extra = {**{k: v for k, v in rec.extra.items() if k != "confirm"}, **out.extra,
                 "first_measurement": {"device_min_ms": rec.device_min_ms, "min_ms": rec.min_ms}}
    return out


def combine_records(records: Sequence[CaseRecord]) -> CaseRecord:
    """One record from the same case's records in several runs (see the module docstring); a run that
    measured the case twice contributes its later measurement (:func:`latest_measurement`)."""
    if not records:
        raise ValueError("combine_records needs at least one record")
    records = [latest_measurement(r) for r in records]
    outcome = min((r.outcome for r in records), key=_SEVERITY.index)
    same = [r for r in records if r.outcome == outcome]
    out = copy.deepcopy(same[0])
    if outcome == "ok":
        for name in _MEDIAN_FIELDS:
            setattr(out, name, _median([getattr(r, name) for r in same]))
        timed = device_timed_runs(same)
        for name in _DEVICE_FIELDS:
            setattr(out, name, _median([getattr(r, name) for r in timed]))
        out.device_method = timed[0].device_method if timed else ""
        peaks = [r.peak_mem_bytes for r in same if r.peak_mem_bytes is not None]
        out.peak_mem_bytes = max(peaks) if peaks else None
        out.samples = sum(r.samples for r in same)
        # event statistics over every run, device ones over the runs of the kept method
        spread = instance_spread(same, [f for f in SPREAD_FIELDS if not f.startswith("device")])
        spread.update(instance_spread(timed, [f for f in SPREAD_FIELDS if f.startswith("device")]))
        if spread:
            out.extra["instance_spread"] = spread
    out.extra["runs"] = len(same)
    stamp = provenance.combined(r.extra.get(provenance.KEY) for r in same)  # the runs whose figures it holds
    if stamp:
        out.extra[provenance.KEY] = stamp
    else:
        out.extra.pop(provenance.KEY, None)
    return out


def combine_runs(runs: Sequence[Run], allow_mismatch: bool = False) -> Combined:
    """Several result runs of one machine as one :class:`Run` (case by case, see the module docstring).

    The runs must come from compatible machines of one CPU model when CPU-only
    (``FingerprintMismatch`` otherwise, unless ``allow_mismatch``); the combined run carries the
    first run's fingerprint and the per-field median of the runs' calibrations.
    """
    if not runs:
        raise ValueError("combine_runs needs at least one run")
    first = runs[0]
    for other in runs[1:]:
        check_compatible(first.fingerprint, other.fingerprint, allow_mismatch=allow_mismatch,
                         names=("the first run", "another run"))
        check_same_cpu_model(first.fingerprint, other.fingerprint, allow_mismatch=allow_mismatch,
                             first="the first run is", second="another is")
    keys = sorted({k for r in runs for k in r.records})
    records: dict[str, CaseRecord] = {}
    disagreeing: dict[str, list[str]] = {}
    for key in keys:
        present = [r.records[key] for r in runs if key in r.records]
        records[key] = combine_records(present)
        outcomes = [r.records[key].outcome if key in r.records else "absent" for r in runs]
        if len(set(outcomes) - {"absent"}) > 1:
            disagreeing[key] = outcomes
    label = " + ".join(r.path or r.kind for r in runs)
    run = Run(records=records, fingerprint=first.fingerprint, path=label, kind="result",
              calibration=combine_calibrations([r.calibration for r in runs]),
              simulated=tuple(dict.fromkeys(s for r in runs for s in r.simulated)),
              interrupted="; ".join(f"{r.path or r.kind}: {r.interrupted}" for r in runs if r.interrupted))
    return Combined(run, disagreeing)


def variant_matches(key: str, patterns: Collection[str]) -> bool:
    """Whether the case ``workload/variant/mode/problem`` belongs to a variant matching a glob."""
    parts = key.split("/")
    return len(parts) > 1 and any(fnmatch.fnmatchcase(parts[1], p) for p in patterns)


def combine_instances(instances: Mapping[str, Sequence[Run]], only_from: Mapping[str, Collection[str]] = {},
                      allow_mismatch: bool = False) -> Combined:
    """The runs of several machine instances as one run (:func:`combine_runs` over all of them),
    where the cases of some variants come only from some instances.

    ``instances`` maps an instance's name to its runs. ``only_from`` maps a variant glob to the names
    of the instances whose runs may give those variants' cases: the ones that ran the variant's
    current code or measuring method. A baseline re-recorded after such a change keeps the other
    instances for everything else (more instances, a truer spread) without mixing in figures the
    code no longer produces. Raises ValueError for an ``only_from`` entry naming an unknown instance.
    """
    for pattern, names in only_from.items():
        unknown = sorted(set(names) - set(instances))
        if unknown:
            raise ValueError(f"only_from {pattern!r} names instance(s) {', '.join(unknown)} that are not among "
                             f"{', '.join(instances)}")
    runs = []
    for name, group in instances.items():
        drop = [pattern for pattern, names in only_from.items() if name not in names]
        for run in group:
            if drop:
                kept = {k: r for k, r in run.records.items() if not variant_matches(k, drop)}
                run = dataclasses.replace(run, records=kept)
            runs.append(run)
    if not runs:
        raise ValueError("combine_instances needs at least one run")
    return combine_runs(runs, allow_mismatch=allow_mismatch)


def combine_calibrations(calibrations: Sequence[Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    """Several runs' instance calibrations as one: per field, the median of the numbers; a text
    field keeps the first run's value. None when no run has one."""
    present = [c for c in calibrations if c]
    if not present:
        return None
    out: dict[str, Any] = {}
    for name in dict.fromkeys(k for c in present for k in c):
        values = [c[name] for c in present if name in c]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[name] = statistics.median(numbers) if numbers else values[0]
    return out
