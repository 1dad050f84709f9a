"""Peak memory of one call, out-of-memory handling, and the CPU out-of-memory guard.

Peak is "bytes allocated during the call above what was live when it started" (inputs, weights
and, for a timed backward, the saved forward activations).

- CUDA: the caching allocator's own counters (``reset_peak_memory_stats`` then
  ``max_memory_allocated`` minus ``memory_allocated`` at the start).
- CPU: torch's CPU allocator reports every allocation and free to the profiler when
  ``profile_memory=True``; replaying those events in time order gives the exact peak of live
  tensor bytes, for eager and for Inductor-compiled code alike (Inductor allocates through the same
  allocator). Process RSS was rejected: after warm-up, glibc reuses freed pages, so RSS misses the
  allocations that matter. Not seen: memory that libraries allocate outside torch (oneDNN/BLAS
  scratch), which is small and constant per call.

On CPU nothing recovers a process that the kernel kills for memory, so :func:`predict_bytes`
estimates what a case will allocate (for an unfused variant, the score matrices) and the caller
records ``oom`` instead of running a case over the budget. The prediction can be wrong, so
:func:`cpu_cap` also enforces the budget: under it, an allocation that would take the process's
data segment past the cap fails inside the allocator with an ordinary out-of-memory error.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import operator
import os
import re
import resource
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch

from .problem import Problem
from .record import has_backward
from .wording import exception_message

ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
         "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


@dataclass
class MemResult:
    """Peak bytes above the start of the call, how it was measured, and (CPU) the op names seen."""

    peak_bytes: int
    method: str
    op_names: tuple[str, ...] = ()


def parse_bytes(text: str) -> int:
    """'24GiB', '1.5 GB', '1000000' -> bytes (binary units for KiB/MiB/GiB, decimal for KB/MB/GB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m:
        raise ValueError(f"cannot read a byte count from {text!r}; write e.g. 8GiB, 512MiB or 1000000")
    unit = (m.group(2) or "B").upper()
    if unit in ("K", "M", "G", "T"):
        unit += "IB"
    if unit not in UNITS:
        raise ValueError(f"unknown byte unit {m.group(2)!r} in {text!r}; use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")
    return int(float(m.group(1)) * UNITS[unit])


_OOM_PATTERNS = (
    re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B|B|bytes)", re.I),  # CUDA caching allocator
    re.compile(r"you tried to allocate ([0-9]+) bytes", re.I),  # DefaultCPUAllocator
    re.compile(r"allocate ([0-9]+) bytes", re.I),
    re.compile(r"Unable to allocate ([0-9.]+) ?([KMGT]i?B|B)", re.I),  # NumPy ("128. MiB")
)


def parse_oom_bytes(message: str) -> Optional[int]:
    """The size the allocator was asked for, read from an out-of-memory message (None if absent)."""
    for pattern in _OOM_PATTERNS:
        m = pattern.search(message)
        if m:
            unit = m.group(2) if m.lastindex and m.lastindex >= 2 else "B"
            unit = "B" if unit.lower() == "bytes" else unit
            return parse_bytes(m.group(1).rstrip(".") + unit)
    return None


def is_oom(exc: BaseException) -> bool:
    """True for an allocator out-of-memory error, also when wrapped (e.g. by torch.compile).

    Python's and NumPy's ``MemoryError`` count too: under :func:`cpu_cap` the float64 oracle's
    arrays fail that way.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        text = exception_message(exc)  # a variant's own exception: its __str__ may raise
        if "out of memory" in text.lower() or "can't allocate memory" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def recover(device: str) -> None:
    """Give memory back (after an out-of-memory error, or between problems) so the run can go on.

    Costs about 0.1 s (a full garbage collection), so the benchmarks call it when the problem
    changes or a case failed, not after every case.
    """
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        release_cuda_cache()
        torch.cuda.reset_peak_memory_stats()


def release_cuda_cache() -> None:
    """Give the caching allocator's unused memory back to the driver, cuBLAS's workspaces first.

    cuBLAS keeps a workspace per (handle, stream), allocated through the caching allocator by a
    stream's first matmul. One allocated mid-case (a graph capture's side stream, the first matmul
    after a large step freed its tensors) can be carved out of a large cached block, and a block
    with anything live in it is never given back by ``empty_cache``. The workers replaced on the
    H200 for stranded memory (72-137 GiB) all came after matmul-based materialising steps (einsum,
    math SDPA, uncompiled Flex), which fits this; freeing the workspaces (re-made on the next matmul,
    microseconds) first is cheap either way. Not yet confirmed on a GPU.
    """
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()


def _cpu_allocation_events(prof) -> list[tuple[int, int]]:
    """(time ns, +/- bytes) of every CPU allocator event the profiler recorded."""
    alloc_tag = torch._C._profiler._EventType.Allocation
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == alloc_tag:
            fields = node.extra_fields
            if str(fields.device).startswith("cpu"):
                events.append((node.start_time_ns, int(fields.alloc_size)))
        stack.extend(node.children)
    events.sort()
    return events


def _op_names(prof) -> tuple[str, ...]:
    # kineto's raw events, not prof.events(): building FunctionEvents costs ~1 ms per thousand ops
    # (a step of 20,000 small ops: 18 s against 0.5 s here), which made the memory probe of
    # many-op steps (LongNet's explicit dilated attention) cost 30 s per case on an H200
    return tuple(sorted({e.name() for e in prof.profiler.kineto_results.events() if e.name() != "[memory]"}))


def profile_call(fn: Callable[[], object], profile_memory: bool = True) -> tuple[object, Optional[int], tuple[str, ...]]:
    """Run ``fn`` once under torch.profiler: (result, CPU peak bytes above the start, op names).

    The op names include the Triton kernels the call launched, as ``triton-kernel::<name>``
    (:func:`attnsuite.triton_support.triton_launches`): the host-side profiler does not see them.
    """
    from torch.profiler import ProfilerActivity, profile

    from .triton_support import LAUNCH_PREFIX, triton_launches

    with triton_launches() as launched, profile(activities=[ProfilerActivity.CPU], profile_memory=profile_memory) as prof:
        result = fn()
    peak = None
    if profile_memory:
        live = peak = 0
        for _, delta in _cpu_allocation_events(prof):
            live += delta
            peak = max(peak, live)
    return result, peak, tuple(sorted(set(_op_names(prof)) | {LAUNCH_PREFIX + name for name in launched}))


def poison_free_memory(nbytes: int, device: object) -> None:
    """Fill a block of ``nbytes`` with NaN and free it: the allocator hands that memory to the next
    allocations, so an output the variant then allocates and never writes shows up as NaN."""
    block = torch.full((max(nbytes // 4, 1),), float("nan"), dtype=torch.float32, device=device)
    del block


def poison_tensors(tensors: Iterable[object], keep: Iterable[torch.Tensor]) -> int:
    """Fill with NaN every floating tensor of ``tensors`` that shares no storage with ``keep`` (inputs,
    parameters: never the suite's to write), so that once freed their blocks read NaN to the next call
    that is handed them. Returns how many were filled."""
    kept = {t.untyped_storage().data_ptr() for t in keep if isinstance(t, torch.Tensor)}
    filled = 0
    with torch.no_grad():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() \
                    and t.untyped_storage().data_ptr() not in kept:
                t.fill_(float("nan"))
                filled += 1
    return filled


@contextlib.contextmanager
def fresh_memory_reads_nan(device: str, compiled: bool) -> Iterator[None]:
    """Inside: on CPU, every tensor allocated without values (``torch.empty`` and the like) starts as
    NaN (integers at their largest value), so an output element a call never writes reads NaN.

    Torch's own switch for it (``torch.utils.deterministic.fill_uninitialized_memory``) acts only in
    deterministic mode, which is set here with ``warn_only`` (an op without a deterministic form
    warns, silenced here, and runs as before) and put back after. Not on CUDA, where deterministic
    mode also steers backend choices (SDPA, cuBLAS) away from what was timed: there the caching
    allocator hands a call the blocks the one before it freed (:func:`poison_tensors`). Not for
    compiled variants, whose guards include deterministic mode: they would recompile here.
    """
    if str(device).startswith("cuda") or compiled:
        yield
        return
    import warnings

    import torch.utils.deterministic as det

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        det.fill_uninitialized_memory = before[2]


def measure_peak(fn: Callable[[], object], device: str) -> tuple[object, MemResult]:
    """Run ``fn`` once and measure its peak allocation above what was live at the start.

    The same call is profiled (host-side ops only) so the op names that tell which backend ran come
    with it: one call serves memory, backend detection and the caller's numerics check.
    """
    if str(device).startswith("cuda"):
        def call_and_wait():
            out = fn()
            torch.cuda.synchronize()
            return out

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        # a host-only profiler allocates nothing on the device, so the allocator's peak is the call's
        result, _, names = profile_call(call_and_wait, profile_memory=False)
        peak = max(0, torch.cuda.max_memory_allocated() - base)
        return result, MemResult(peak, "cuda-allocator", names)
    result, peak, names = profile_call(fn, profile_memory=True)
    return result, MemResult(int(peak or 0), "cpu-torch-allocator (profiler memory events)", names)


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33+): every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _mallinfo2() -> Optional[Callable[[], _MallInfo2]]:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    fn.restype = _MallInfo2
    return fn


def held_bytes(device: str) -> Optional[int]:
    """Bytes the process holds in allocations now, for telling a call that keeps memory after its
    outputs are freed (:func:`attnsuite.runner._poisoned_call`); None where it cannot be read.

    CUDA: the caching allocator's live tensor bytes on ``device`` (after a synchronize), exact. CPU:
    glibc's bytes in use (``mallinfo2``: allocated chunks plus mmapped ones), where torch's CPU
    tensors live beside the interpreter's own larger objects; a fraction of a millisecond to read,
    where a profiler session (the peak's method) costs milliseconds. None off glibc 2.33+.
    """
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    info = _mallinfo2()
    if info is None:
        return None
    got = info()
    return int(got.uordblks + got.hblkhd)


def score_matrix_bytes(problem: Problem, itemsize: Optional[int] = None) -> int:
    """Bytes of one (batch, hq, lq, lk) score matrix in the problem's dtype."""
    size = itemsize or ITEMSIZE[problem.dtype]
    return problem.batch * problem.hq * problem.lq * problem.lk * size


def io_bytes(problem: Problem) -> int:
    """Bytes of q, k, v and the output (or x and y for a layer)."""
    p, size = problem, ITEMSIZE[problem.dtype]
    if p.d_model is not None:
        return 2 * p.batch * p.lq * p.d_model * size
    return size * p.batch * (p.hq * p.lq * (p.dqk + p.dv) + p.hkv * p.lk * (p.dqk + p.dv))


def materialises(peak_bytes: Optional[int], problem: Problem, mode: str = "fwd") -> Optional[bool]:
    """Does a peak this size mean the (lq, lk) score matrix was built?

    A fused kernel's peak is O(L): at most about the input/output bytes (twice that with backward,
    for the gradients): the allowance. True when the peak exceeds the allowance by half of one score
    matrix in the problem's dtype. None when the problem is too small to tell (half a score matrix
    below the allowance, so an O(L) peak and an L^2 one are not clearly apart).
    """
    if peak_bytes is None:
        return None
    scores = score_matrix_bytes(problem)
    allowance = io_bytes(problem) * (2 if has_backward(mode) else 1)
    if scores // 2 < allowance:
        return None
    return peak_bytes >= allowance + scores // 2


def predict_bytes(problem: Problem, mode: str, fused: bool) -> int:
    """Bytes a case is expected to allocate above its inputs (the CPU guard's prediction).

    Unfused: the score matrices, about 3 live at once forward (scores, masked scores, softmax;
    in fp32 for half dtypes, as the CPU math paths upcast) and 6 with backward (saved softmax,
    dP, dS and their temporaries), plus the mask. Fused: outputs and gradients, O(L).
    """
    with_bwd = has_backward(mode)
    out = io_bytes(problem) * (3 if with_bwd else 1)
    if fused:
        return out
    k = 6 if with_bwd else 3
    itemsize = max(ITEMSIZE[problem.dtype], 4)
    return out + score_matrix_bytes(problem, itemsize) * k + problem.lq * problem.lk


def available_cpu_bytes() -> int:
    """MemAvailable from /proc/meminfo (what the kernel can hand out without swapping)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def default_cpu_budget() -> int:
    """Half of the memory available now: room for the suite, other processes and our misprediction."""
    return available_cpu_bytes() // 2


@dataclass(frozen=True)
class CpuGuard:
    """Refuses to run CPU cases predicted to allocate more than ``budget`` bytes."""

    budget: int

    def check(self, problem: Problem, mode: str, fused: bool) -> Optional[tuple[int, str]]:
        """None when the case may run; else (predicted bytes, message) for an ``oom`` record."""
        predicted = predict_bytes(problem, mode, fused)
        if predicted <= self.budget:
            return None
        return predicted, (
            f"out of memory (predicted, not run): {mode} needs about {predicted / 2**30:.2f} GiB "
            f"({'fused' if fused else 'unfused: score matrices'}) over the CPU budget of {self.budget / 2**30:.2f} GiB"
        )


def data_segment_bytes() -> int:
    """The process's data segment now (``VmData`` of /proc/self/status): what RLIMIT_DATA limits.

    It counts private writable mappings: the heap, every tensor torch allocates on the CPU (large
    ones are mmap'd), Python objects, and thread stacks.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError as exc:
        raise RuntimeError(f"cpu_cap needs /proc/self/status (Linux): {exc}") from exc
    raise RuntimeError("cpu_cap: /proc/self/status has no VmData line")


@contextlib.contextmanager
def cpu_cap(cap_bytes: int) -> Iterator[int]:
    """Enforce a CPU memory cap of ``cap_bytes`` above what the process holds now, while inside.

    Sets the soft RLIMIT_DATA to ``VmData now + cap_bytes`` (never above a soft limit already set,
    so a nested cap cannot loosen an outer one; never touching the hard limit) and restores the
    previous soft limit on exit, also on an exception. Inside, a torch CPU allocation past the cap
    raises ``RuntimeError: ... DefaultCPUAllocator: can't allocate memory: you tried to allocate N
    bytes`` (NumPy raises MemoryError), which :func:`is_oom` and :func:`parse_oom_bytes` read as out
    of memory with the bytes asked for. Yields the limit set, in bytes.

    The cap covers all growth of the data segment, not only tensors: allocator caches, Python
    objects and the stacks of threads started inside count too, and child processes started inside
    inherit the limit. Meant for a case's worker process (Linux >= 4.7, where RLIMIT_DATA covers
    mmap'd memory). Not RLIMIT_AS: address space counts reservations that are never used (CUDA and
    allocators reserve far more than they touch), so a cap on it fails where memory is plentiful.
    """
    try:
        cap = operator.index(cap_bytes)  # an integer type (not a float, not a string)
    except TypeError:
        cap = 0
    if isinstance(cap_bytes, bool) or cap <= 0:
        raise ValueError(f"cpu_cap: the cap must be a positive whole number of bytes, got {cap_bytes!r}")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_segment_bytes() + cap
    for bound in (soft, hard):
        if bound != resource.RLIM_INFINITY:
            limit = min(limit, bound)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def set_gpu_cap(cap_bytes: int, device: str = "cuda") -> float:
    """Cap this process's CUDA allocator at ``cap_bytes`` so a large GPU stands in for a smaller one.

    Returns the fraction of the device's memory that was set.
    """
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index  # torch wants an index here
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, cap_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def tensor_bytes(tensors) -> int:
    """Total bytes of an iterable of tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


__all__ = [
    "CpuGuard", "MemResult", "available_cpu_bytes", "cpu_cap", "data_segment_bytes", "default_cpu_budget",
    "io_bytes", "is_oom",
    "materialises", "measure_peak", "parse_bytes", "parse_oom_bytes", "predict_bytes", "profile_call",
    "recover", "score_matrix_bytes", "set_gpu_cap", "tensor_bytes",
]
