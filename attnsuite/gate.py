"""THE compare path: one thresholds lookup and one "judge two runs" for every caller.

The ``attnsuite compare``/``report`` commands, the pytest gate (:mod:`attnsuite.plugin_gate`),
``scripts/gate_eval.py`` and the same-machine A/B command all call :func:`thresholds_for` and
:func:`judge_runs`, so they cannot drift apart: the same two runs get the same verdicts, judged
with the same thresholds, whoever asks.

The thresholds rule (:func:`thresholds_for`), first match wins:

1. the file named explicitly (``--attn-thresholds`` / ``--thresholds``); it must exist;
2. ``thresholds.json`` in the baselines folder in play (pytest: ``--attn-baselines-dir`` or
   ``<rootdir>/baselines``; the CLI: the folder of the reference file);
3. ``baselines/thresholds.json`` of the repository this package lives in (not for the same-machine
   A/B, which runs from the tree under review: its own file must not set its bar);
4. the built-in per-device defaults (:data:`attnsuite.verdict.DEVICE_DEFAULTS`).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from . import baseline as bl
from .record import CaseRecord
from .verdict import Comparison, Scope, ThresholdConfig, ThresholdsError, compare, load_thresholds, reference_name

PathLike = Union[str, "os.PathLike[str]"]
# The repository's own baselines folder (absent when attnsuite is installed as a package).
REPO_BASELINES = Path(__file__).resolve().parents[1] / bl.DEFAULT_DIR


def thresholds_path_for(explicit: Optional[PathLike], baselines_dir: Optional[PathLike],
                        repo_fallback: bool | PathLike = True) -> Optional[Path]:
    """The thresholds file the rule above picks (None: built-in defaults); an explicit file that
    does not exist raises :class:`~attnsuite.verdict.ThresholdsError` naming it. ``repo_fallback``:
    step 3's folder, the repository's ``baselines/`` (True: this package's checkout); False leaves
    step 3 out. The same-machine A/B runs this package from the tree under review, whose own file
    must not set the bar it is judged by: it names the base tree's folder instead."""
    # A name that exists as anything but a regular file (a folder, a FIFO, a dangling link) is picked
    # too: the reader refuses it saying what it is. Beside a baseline it had been passed over without
    # a word for the repository's file; given explicitly it had read only "not a file".
    if explicit:
        p = Path(explicit)
        if not os.path.lexists(p):
            raise ThresholdsError(f"thresholds {p}: no such file")
        return p
    repo_dir = REPO_BASELINES if repo_fallback is True else Path(repo_fallback) if repo_fallback else None
    candidates = ([Path(baselines_dir)] if baselines_dir else []) + ([repo_dir] if repo_dir is not None else [])
    for d in candidates:
        for name in bl.THRESHOLDS_NAMES:  # a gzip-compressed one beside a gzip-compressed baseline had been passed over
            p = d / name
            if os.path.lexists(p):
                return p
    return None


def thresholds_for(explicit: Optional[PathLike], baselines_dir: Optional[PathLike],
                   repo_fallback: bool | PathLike = True) -> tuple[ThresholdConfig, Optional[Path]]:
    """THE thresholds lookup: (the parsed config, the file it came from or None for built-ins).

    Raises :class:`~attnsuite.verdict.ThresholdsError` (message names the file) for a missing
    explicit file or a malformed one. ``repo_fallback``: see :func:`thresholds_path_for`.
    """
    path = thresholds_path_for(explicit, baselines_dir, repo_fallback)
    return load_thresholds(path), path


def run_of_baseline(b: bl.Baseline) -> bl.Run:
    """A loaded baseline file as a :class:`~attnsuite.baseline.Run` (calibration kept when the store has it)."""
    run = bl.Run(records=b.records(), fingerprint=dict(b.fingerprint), path=b.path, kind="baseline")
    cal = getattr(b, "calibration", None)
    if cal is not None and getattr(run, "calibration", None) is None:
        try:
            run.calibration = cal  # type: ignore[attr-defined]
        except AttributeError:  # a Run with slots and no such field: the header just omits it
            pass
    return run


def _label(run: bl.Run) -> str:
    return str(run.path) if run.path else run.kind


def run_scope(run: bl.Run) -> Scope:
    """Which cases ``run`` answers for: the selection its own gate stored in its JSON, else (a file
    written without one) everything of the tiers it ran. A baseline case outside is not missing."""
    return run.scope if run.scope is not None else Scope.tiers_of(run.records)


def unknown_workload_sections(thresholds: ThresholdConfig, *runs: bl.Run) -> list[str]:
    """The thresholds file's workload sections that match no workload: neither a built-in one (nor
    one a problems file added in this process) nor the workload of any case of ``runs``."""
    from . import workloads  # the catalogue; cheap (no torch)

    seen = {r.workload for run in runs for r in run.records.values()}
    return sorted(set(thresholds.workload) - set(workloads.WORKLOADS) - seen)


def unmatched_case_patterns(thresholds: ThresholdConfig, *runs: bl.Run) -> list[str]:
    """The thresholds file's case patterns that match no case of ``runs`` (the baseline holds every
    case recorded, so a pattern matching none of it is most likely a typo): a misspelt pattern had
    loaded silently and applied to nothing, where a misspelt workload section was named."""
    keys = [k for run in runs for k in run.records]
    return [pattern for pattern, _ in thresholds.case if not any(fnmatch.fnmatchcase(k, pattern) for k in keys)]


WIDE_FLOOR = 0.5  # a time floor from here up is named in the report: the gate is blind below it


def band_note(thresholds: ThresholdConfig, device: str, reference: str = "the baseline",
              cases: Iterable[CaseRecord] = ()) -> Optional[str]:
    """What a wide time floor means for this device's verdicts, or None: a CPU case 99.6% slower read
    "same" with no word that the CPU gate's floor is 100% (shared CPU runners move by up to 2x).
    ``reference``: what a case is compared with (:func:`~attnsuite.verdict.reference_name`). ``cases``:
    the cases judged, each with the floor its own thresholds give it (a ``workload`` or ``case``
    section's floor had been left out, and the note had said 100% of cases judged at 15%: an outside
    tester's trial); none given, the device's floor."""
    recs = list(cases) or [CaseRecord("", "", "fwd", "")]
    floors = [(thresholds.for_case(r, device).time_floor, r) for r in recs]
    wide = [(f, r) for f, r in floors if f >= WIDE_FLOOR]
    if not wide:
        return None
    floor, widest = max(wide, key=lambda fr: fr[0])
    which = "" if len(wide) == len(floors) else (
        f" for {len(wide)} of the {len(floors)} cases compared (workload or case sections of the thresholds give "
        f"the other {len(floors) - len(wide)} a floor under {WIDE_FLOOR:.0%})")
    # the section that set the widest floor is the one to lower: device.cpu.time_floor had been named
    # where a workload or case section set it, and lowering that changed nothing (an outside tester's trial)
    section = thresholds.section_setting(widest, device, "time_floor")
    narrow = (f"a lower {section}.time_floor in {thresholds.path or 'the thresholds file'} narrows it" if section
              else f"a thresholds file with a lower device.{device}.time_floor narrows it")
    return (f"time on {device} is judged with a floor of {floor:.0%}{which} (thresholds: time_floor): such a case must "
            f"be more than {floor:.0%} slower than {reference} to read as slower, so this gate catches only large "
            f"slowdowns here ({narrow}, at the price of false alarms where runners vary)")


def judge_runs(base: bl.Run, cur: bl.Run, *, thresholds: ThresholdConfig,
               scope: Optional[Union[Scope, Callable[[CaseRecord], bool]]] = None, allow_mismatch: bool = False,
               notes: Iterable[str] = (), side_names: tuple[str, str] = ("baseline", "this run")) -> Comparison:
    """Judge ``cur`` against ``base``: the machine check, every case's verdict, labels and notes.

    ``side_names``: how the verdicts and reports name the two sides (:func:`~attnsuite.verdict.compare`).
    Raises :class:`~attnsuite.baseline.FingerprintMismatch` for machines that must not be compared
    (unless ``allow_mismatch``). ``scope`` limits which baseline cases count as missing when absent
    from ``cur`` (default: :func:`run_scope`, what ``cur`` selected). The device kind comes from the fingerprints.
    """
    all_notes = list(notes)
    all_notes += bl.check_compatible(base.fingerprint, cur.fingerprint, allow_mismatch=allow_mismatch)
    for run in (base, cur):
        if getattr(run, "foreign", 0):
            all_notes.append(f"{run.foreign} benchmark(s) of {_label(run)} carry no attnsuite record: not judged")
    if getattr(base, "simulated", ()):
        # the new side says SIMULATED in its summary; a reference that was slowed had passed unremarked
        # and would hide a real slowdown of the run up to the injected size
        all_notes.append(f"SIMULATED reference: {_label(base)} was run with {'; '.join(base.simulated)}: its times "
                         "are not the code's own, so this run reads faster, and a slowdown of it up to that size "
                         "reads as unchanged")
    for run in (base, cur):
        if getattr(run, "interrupted", ""):
            all_notes.append(f"{_label(run)} comes from a session that was {run.interrupted}: it holds part of "
                             "its selection")
    if thresholds.path:  # ThresholdConfig.path reads "thresholds <file>"
        all_notes.append(f"thresholds from {thresholds.path.removeprefix('thresholds ')}")
    else:
        all_notes.append("thresholds: built-in defaults")
    stray = unknown_workload_sections(thresholds, base, cur)
    if stray:
        all_notes.append(f"thresholds: workload section(s) {', '.join(stray)} name no workload attnsuite knows "
                         "and no case of either run: they apply to nothing (a typo?)")
    unmatched = unmatched_case_patterns(thresholds, base, cur)
    if unmatched:
        all_notes.append(f"thresholds: case pattern(s) {', '.join(unmatched)} match no case of either run: they "
                         "apply to nothing (a typo?)")
    device = bl.device_kind(cur.fingerprint or base.fingerprint)
    if device == "cuda" and not any(r.device_ms for r in base.records.values() if r.outcome == "ok"):
        all_notes.append(f"{_label(base)} was recorded without device time (event timing only): on CUDA "
                         "its times are not gated; outcomes, missing cases and memory are")
    wide = band_note(thresholds, device, reference_name(side_names[0]), cur.records.values())
    if wide:
        all_notes.append(wide)
    if scope is None:
        scope = run_scope(cur)
    cmp = compare(base.records, cur.records, thresholds=thresholds, device=device, scope=scope, notes=all_notes,
                  side_names=side_names)
    cmp.interrupted = bool(cur.interrupted)  # its scope is what it ran: every report must say so
    cmp.baseline_label = _label(base)
    cmp.current_label = _label(cur) if cur.path else "this run"
    cmp.base_calibration = _calibration(base)
    cmp.cur_calibration = _calibration(cur)
    base_cpu, cur_cpu = bl.fp_get(base.fingerprint, "cpu"), bl.fp_get(cur.fingerprint, "cpu")
    if cmp.base_calibration and device == "cpu" and base_cpu and cur_cpu and base_cpu != cur_cpu:
        # a fallback baseline of another CPU model: its probe measured that CPU, not this one, and %
        # of peak against it had read about twice the truth on a fresh machine (flops.stated_peak)
        cmp.base_calibration[bl.CALIBRATION_OTHER_CPU] = base_cpu
    return cmp


def _calibration(run: bl.Run) -> Optional[dict[str, Any]]:
    cal = getattr(run, "calibration", None)
    return dict(cal) if isinstance(cal, dict) and cal else None
