"""The GPU's clocks, power and temperature around one case's measurement (NVML, through torch.cuda).

A case timed while the GPU ran at a lower clock (a power cap, heat left by the case before it)
reads slower with unchanged code. On fresh H200s a few cases a run read 5-9% slow on their first
measurement and normal on their confirmation minutes later (docs/gate.md, s12): these samples,
kept in each CUDA record's ``extra["gpu_state"]``, let such a reading be told apart from a real
change. Reading NVML costs well under a millisecond and needs ``nvidia-ml-py`` (pynvml); without it,
or off CUDA, nothing is recorded.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

# NVML's clock-event ("throttle") reason bits that slow a busy GPU (nvml.h, nvmlClocksEventReason*)
REASONS = {
    0x2: "application clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}


def reasons_text(mask: int) -> list[str]:
    """The named reasons in an NVML clock-event bitmask (idle and unnamed bits left out)."""
    return [name for bit, name in sorted(REASONS.items()) if mask & bit]


def sample(device: Any = None) -> Optional[dict[str, Any]]:
    """SM clock (MHz), power (W), temperature (C) and clock-event reasons of ``device`` now, or None
    where NVML cannot be read (no pynvml, no CUDA, a driver without the query)."""
    try:
        state: dict[str, Any] = {"sm_mhz": int(torch.cuda.clock_rate(device)),
                                 "power_w": round(torch.cuda.power_draw(device) / 1000.0, 1),
                                 "temp_c": int(torch.cuda.temperature(device))}
    except Exception:  # NVML missing or unreadable: the record simply has no sample
        return None
    try:
        import pynvml

        handle = torch.cuda._get_pynvml_handler(device)
        query = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = int(query(handle))
        state["reasons"] = reasons_text(mask)
    except Exception:  # older bindings or drivers: clocks, power and temperature still say most
        pass
    return state


def describe(state: Optional[dict[str, Any]]) -> str:
    """One sample in words: ``1980 MHz, 512.3 W, 41 C`` (plus its slowdown reasons), or ""."""
    if not state:
        return ""
    text = f"{state.get('sm_mhz', '?')} MHz, {state.get('power_w', '?')} W, {state.get('temp_c', '?')} C"
    if state.get("reasons"):
        text += " (" + ", ".join(state["reasons"]) + ")"
    return text
