"""Instance calibration: how fast this machine instance moves memory and multiplies matrices.

Two machines with one fingerprint (same GPU or CPU model, same software) are not always equally
fast: clocks, memory, neighbours and thermal state differ between cloud instances. :func:`probe`
measures two figures that a run records next to its results, so a report can show this instance
against the one its baseline came from:

- memory bandwidth: a device-to-device copy of one large buffer, counted as bytes read plus bytes
  written (on CUDA 1 GiB, event-timed; on CPU 256 MiB, ``time.perf_counter``), median of several;
- dense matmul: ``2 n^3`` FLOPs of one square matmul (CUDA: bf16, n = 8192, event-timed; CPU: fp32,
  n = 1024 under the current torch thread count), median of several.

The probe is cheap (well under a second on a GPU, about a second on 2 CPU cores), changes no torch
global state (threads, grad mode, default dtype, RNG: its inputs are constants, not random) and
frees its buffers before it returns.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Optional

import torch

from . import timing

MIB = 2**20
CUDA_COPY_BYTES = 1024 * MIB
CPU_COPY_BYTES = 256 * MIB
CUDA_MATMUL_N = 8192
CPU_MATMUL_N = 1024
REPS = 5


def bandwidth_gbs(buffer_bytes: int, seconds: float) -> float:
    """GB/s (decimal) of copying ``buffer_bytes`` in ``seconds``: the copy reads and writes each byte."""
    return 2 * buffer_bytes / seconds / 1e9


def matmul_tflops(n: int, seconds: float) -> float:
    """TFLOP/s of one ``n x n`` by ``n x n`` matmul (``2 n^3`` FLOPs) in ``seconds``."""
    return 2 * n**3 / seconds / 1e12


def _median_seconds(op: Callable[[], object], reps: int, cuda: bool) -> float:
    """Median time of ``reps`` calls of ``op`` after one untimed call (lazy init, first touch of pages)."""
    op()
    if cuda:
        torch.cuda.synchronize()
        return timing.event_median_s(op, None, reps)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        op()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"calibrate.probe: {device!r} is not a device (use cpu or cuda[:i])") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"calibrate.probe: device {device!r} is neither cpu nor cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"calibrate.probe: device {device!r} asked for, but CUDA is not available")
    return dev


def probe(device: str, *, copy_bytes: Optional[int] = None, matmul_n: Optional[int] = None,
          reps: int = REPS) -> dict[str, Any]:
    """Memory-bandwidth and dense-matmul probes of ``device`` ("cpu" or "cuda[:i]").

    Returns ``mem_bandwidth_gbs``, ``matmul_tflops``, ``matmul_dtype``, ``device``, ``method`` (how
    it was measured, in words) and ``probe_s`` (the probe's own wall time). ``copy_bytes`` and
    ``matmul_n`` override the sizes (tests use small ones).
    """
    started = time.perf_counter()
    dev = _check_device(device)
    cuda = dev.type == "cuda"
    nbytes = int(copy_bytes or (CUDA_COPY_BYTES if cuda else CPU_COPY_BYTES))
    n = int(matmul_n or (CUDA_MATMUL_N if cuda else CPU_MATMUL_N))
    dtype = torch.bfloat16 if cuda else torch.float32
    if reps < 1 or nbytes < 1 or n < 1:
        raise ValueError(f"calibrate.probe: reps, copy_bytes and matmul_n must be positive "
                         f"(got {reps}, {nbytes}, {n})")
    with torch.no_grad(), (torch.cuda.device(dev) if cuda else contextlib.nullcontext()):
        # constants, not random draws: the probe must not advance the global RNG
        src = torch.ones(nbytes, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        copy_s = _median_seconds(lambda: dst.copy_(src), reps, cuda)
        del src, dst
        a = torch.full((n, n), 0.5, dtype=dtype, device=dev)
        b = torch.full((n, n), 0.25, dtype=dtype, device=dev)
        c = torch.empty((n, n), dtype=dtype, device=dev)
        mm_s = _median_seconds(lambda: torch.mm(a, b, out=c), reps, cuda)
        del a, b, c
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # give the probe's ~2.4 GiB back to the device
    timer = "cuda-events" if cuda else f"perf_counter, {torch.get_num_threads()} torch threads"
    return {
        "mem_bandwidth_gbs": bandwidth_gbs(nbytes, copy_s),
        "matmul_tflops": matmul_tflops(n, mm_s),
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "device": str(dev),
        "method": (f"{timer}; copy of {nbytes / MIB:g} MiB (read + write) and {n}^3 matmul, "
                   f"median of {reps} after one warm-up each"),
        "probe_s": time.perf_counter() - started,
    }


__all__ = ["bandwidth_gbs", "matmul_tflops", "probe"]
