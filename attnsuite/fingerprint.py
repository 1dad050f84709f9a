"""The machine fingerprint: what a measurement is only comparable on.

:func:`machine_info` collects the GPU (name, SM count, memory, driver, clocks when the run
started), the CPU (model, logical cores, cores this process may use) and the software (torch,
CUDA, cuDNN, triton, Python). :func:`fingerprint_id` turns the stable part of it into a short
readable id for baseline file names; clocks and the driver's minor version are recorded but left
out of the id, since they move without changing what the numbers mean.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from typing import Any, Optional

import torch


def _run(cmd: list[str], timeout: float = 10.0) -> Optional[str]:
    """stdout of a command, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def triton_version() -> Optional[str]:
    try:
        import triton  # noqa: PLC0415

        return triton.__version__
    except Exception:  # triton absent (CPU builds) or broken
        return None


def nvidia_smi(index: int = 0) -> dict[str, Any]:
    """Driver version and clocks from nvidia-smi for GPU ``index`` (empty when unavailable)."""
    fields = ["driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "temperature.gpu",
              "power.draw", "pstate"]
    out = _run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if not out:
        return {}
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(fields, values))


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Everything that makes two measurements comparable, for ``device`` ('cpu' or 'cuda[:i]').

    A flat dict (the gate reads fields by name): ``id`` (see :func:`fingerprint_id`), ``device``,
    ``cpu_model``, ``cpu_count``, ``cpu_usable``, ``arch`` (``platform.machine()``: a baseline of
    another CPU model may stand in only on the same architecture and core count, see
    :func:`attnsuite.baseline.find_baseline`), ``torch``, ``triton``, ``cuda``, ``cudnn``, and on
    CUDA ``gpu_name``, ``gpu_sm_count``, ``gpu_memory_bytes``, ``driver`` and the GPU clocks,
    temperature and power when the run started (from nvidia-smi when it is installed).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "device": "cuda" if str(device).startswith("cuda") else "cpu",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "arch": platform.machine() or None,
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "cudnn": None,
        "gpu_name": None,
    }
    if info["device"] == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        smi = nvidia_smi(index)
        info.update({
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpu_name": props.name,
            "gpu_sm_count": props.multi_processor_count,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_bytes": props.total_memory,
            "driver": smi.get("driver_version"),
            "gpu_clock_sm_mhz_at_start": smi.get("clocks.sm"),
            "gpu_clock_sm_max_mhz": smi.get("clocks.max.sm"),
            "gpu_clock_mem_mhz_at_start": smi.get("clocks.mem"),
            "gpu_temperature_c_at_start": smi.get("temperature.gpu"),
            "gpu_power_w_at_start": smi.get("power.draw"),
            "gpu_pstate_at_start": smi.get("pstate"),
        })
    info["id"] = fingerprint_id(info)
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _major_minor(version: Optional[str]) -> str:
    if not version:
        return "none"
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else _slug(version)


def fingerprint_id(info: dict[str, Any]) -> str:
    """A short stable id, e.g. ``cuda-nvidia-h100-80gb-hbm3-132sm-80g-torch2.11-cuda13.0``.

    Built from the device model, its size, and the major.minor versions of torch and CUDA; safe
    as a file name. The architecture is not part of it (ids, and so baseline file names, stay as
    they were before ``arch`` was recorded).
    """
    torch_v = _major_minor(info.get("torch"))
    if info.get("device") == "cuda" and info.get("gpu_name"):
        gib = round(info["gpu_memory_bytes"] / 2**30)
        parts = ["cuda", _slug(info["gpu_name"]), f"{info['gpu_sm_count']}sm", f"{gib}g",
                 f"torch{torch_v}", f"cuda{_major_minor(info.get('cuda'))}"]
    else:
        parts = ["cpu", _slug(info.get("cpu_model") or "unknown"), f"{info.get('cpu_usable')}c", f"torch{torch_v}"]
    return "-".join(p for p in parts if p)[:120]
