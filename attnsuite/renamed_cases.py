"""Cases renamed since results were recorded: an older file's records and baseline entries read under
today's names, so a result or baseline recorded before a rename still compares with today's runs.

The one rename so far: the plain latent layer (``latent-layer``) has no query compression, yet its
built-in deepseek-v3 and layer-decode entries had carried DeepSeek-V3's ``q_lora`` arg. Nothing
read it but the FLOP count, which credited the layer with a compressed query projection it does not
compute (at DeepSeek-V3 size 28% fewer FLOPs than the layer does). The arg is gone from the entries
(a problem's args must be read by its family: :func:`attnsuite.registry.unread_args`); a record
named with it is renamed, and its FLOP figures are counted again for the problem it ran.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

# family -> the problem args dropped from its names (each an arg its function never read)
DROPPED_ARGS: dict[str, tuple[str, ...]] = {"latent-layer": ("q_lora",)}
# the FLOP-derived figures of a record, each proportional to its FLOP count at a fixed time
FLOP_FIELDS = ("tflops", "pct_peak")


def _pattern(names: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"-(" + "|".join(map(re.escape, names)) + r")(-?\d+(?:\.\d+)?)(?=-|$)")


def renamed(data: Mapping[str, Any], rnd: Callable[[float], Any] = lambda x: x) -> Optional[dict[str, Any]]:
    """``data`` (a record's or a baseline entry's fields: workload, mode, family, problem, flops, ...)
    under today's name, with its FLOP figures counted again, or None when it needs no rename. ``rnd``
    rounds the recounted figures as the file stores them (a baseline keeps 4 significant digits)."""
    names = DROPPED_ARGS.get(str(data.get("family") or ""))
    problem = data.get("problem")
    if not names or not isinstance(problem, str):
        return None
    dropped = {m.group(1): m.group(2) for m in _pattern(names).finditer(problem)}
    if not dropped:
        return None
    out = dict(data, problem=_pattern(names).sub("", problem))
    extra = out.get("extra")
    if isinstance(extra, Mapping) and isinstance(extra.get("confirm"), Mapping):  # its second measurement
        again = renamed(dict(extra["confirm"], family=extra["confirm"].get("family", data.get("family"))), rnd)
        if again is not None:
            out["extra"] = dict(extra, confirm=again)
    counts = _flop_counts(out, dropped)
    if counts is None:  # no built-in entry of that name: its FLOPs cannot be counted again, so none are said
        for name in ("flops", *FLOP_FIELDS):
            out[name] = None
        return out
    now, before = counts
    out["flops"] = rnd(now)
    for name in FLOP_FIELDS:
        if isinstance(out.get(name), (int, float)) and not isinstance(out.get(name), bool):
            out[name] = rnd(out[name] * now / before)
    return out


def _flop_counts(data: Mapping[str, Any], dropped: Mapping[str, str]) -> Optional[tuple[float, float]]:
    """(today's FLOP count of the renamed case, the count its old name was credited with), or None."""
    from . import flops, workloads  # imported when a rename is needed only (they import the record module)

    workload = workloads.WORKLOADS.get(str(data.get("workload")))
    if workload is None:
        return None
    for tier in workloads.TIERS:
        for entry in workload.tier(tier):
            if entry.family != data.get("family"):
                continue
            for device in ("cpu", "cuda"):
                problem = entry.problem.with_(device=device)
                if problem.id != data["problem"]:
                    continue
                before = problem.with_(args=tuple(sorted(
                    (*problem.args, *((k, int(v) if v.lstrip("-").isdigit() else float(v)) for k, v in dropped.items())))))
                old = flops.case_flops(before, entry.family, str(data.get("mode")))
                return (flops.case_flops(problem, entry.family, str(data.get("mode"))), old) if old else None
    return None

