"""Support for variants whose kernels are written in Triton: availability, execution mode, the loader.

Triton picks compiled or interpreted execution when it is imported: with ``TRITON_INTERPRET=1`` in
the environment *before* triton's first import, every kernel (and triton.language's own helpers)
runs in its NumPy interpreter, on CPU or CUDA tensors; without it, kernels compile for CUDA and
cannot take CPU tensors. The correctness suite sets the variable for CPU runs (:func:`choose_mode`);
the variants decline CPU problems with a clear reason when it is missing. Importing this module never imports
triton: kernel modules are imported on first use through :func:`kernel_module`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import re
import sys
import warnings
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

from .problem import Problem
from .wording import exception_text

# Interpreter budget, in (batch * head, 64-query tile, 64-key tile) steps of one pass: the
# interpreter's cost is per tile step (Python dispatch of each tl op), ~0.2 s per step for the
# four checks of the correctness suite on two CPU cores.
CPU_MAX_STEPS = 24


@lru_cache(maxsize=1)
def unavailable_reason() -> Optional[str]:
    """Why the Triton kernels cannot run in this process (None when triton imports)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install the pinned triton of the dev extra)"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401  (a broken install fails here, not in a kernel)
    except Exception as exc:  # a broken install must read as a skip, not a collection error
        return f"triton does not import: {exception_text(exc)}"
    return None


def choose_mode(device_type: str) -> None:
    """Before triton's first import, pick the mode a run on ``device_type`` tensors needs.

    One process holds one mode. A run whose tensors are on the CPU (the CPU test command, also on a
    host with a GPU) needs the interpreter; a CUDA run needs compiled kernels. The decision follows
    the run's device, never whether a GPU is present: on an H200 host the CPU test command once left
    the interpreter off because CUDA was there, and every Triton test on CPU tensors failed. A
    ``TRITON_INTERPRET`` the user set is kept, and nothing changes once triton is imported
    (:func:`device_reason` then says why CPU tensors are declined).
    """
    if device_type == "cpu" and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def interpreting() -> bool:
    """TRITON_INTERPRET=1 in the environment: kernels run in Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def device_reason(device_type: str) -> Optional[str]:
    """Why the kernels cannot take tensors on ``device_type`` in this process (None when they can)."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    if device_type == "cuda" or not device_type:
        return None
    if not interpreting():
        return ("Triton runs CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before triton "
                "is imported (test_correctness/conftest.py does for CPU runs)")
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language as tl

    if not isinstance(tl.zeros, InterpretedFunction):
        return "TRITON_INTERPRET=1 was set after triton was imported: triton.language is not in interpreter mode"
    return interpreter_fault()


@lru_cache(maxsize=1)
def interpreter_fault() -> Optional[str]:
    """Why this Triton's interpreter cannot run a loop over a runtime bound (None when it can).

    Every kernel of the suite loops over key blocks up to a length passed at run time. Triton 3.6's
    interpreter turns such a bound into a Python int with ``int()`` of a one-element NumPy array,
    which NumPy 2.4 refuses (seen on an H200 host: torch 2.11 pins triton 3.6); triton 3.9 squeezes
    the array first. One tiny kernel, run once, tells which kind this process has, so the Triton
    checks on CPU tensors skip naming the versions instead of failing in every kernel.
    """
    import numpy as np
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def count_blocks(out, n, BLOCK: tl.constexpr):
        total = 0
        for _ in range(0, n, BLOCK):
            total += 1
        tl.store(out, total)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        count_blocks[(1,)](out, 40, BLOCK=16)
    except Exception as exc:  # noqa: BLE001 - any failure here means the interpreter cannot run the kernels
        cause = exc.__cause__ or exc
        return (f"triton {triton.__version__}'s interpreter cannot run a loop over a runtime bound with numpy "
                f"{np.__version__} ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}): "
                "the Triton kernels are not checked on CPU tensors here (triton 3.9, the dev extra's pin, can; "
                "on a GPU they run compiled)")
    if int(out[0]) != 3:
        return (f"triton {triton.__version__}'s interpreter counts {int(out[0])} blocks of 16 in 40, not 3: "
                "the Triton kernels are not checked on CPU tensors here")
    return None


def kernel_module(package: str, name: str, device_type: str) -> ModuleType:
    """The kernel module ``name`` of ``package`` (a family's kernel folder), for tensors on ``device_type``."""
    reason = device_reason(device_type)
    if reason is not None:
        raise RuntimeError(reason)
    return importlib.import_module(f"{package}.{name}")


def autotuning() -> bool:
    """Whether the Triton kernels benchmark their configs on first call (``ATTNSUITE_TRITON_AUTOTUNE``, default on).

    ``ATTNSUITE_TRITON_AUTOTUNE=0`` keeps the first config that fits: the GPU correctness run sets
    it, since it compiles dozens of keys and times none of them.
    """
    return os.environ.get("ATTNSUITE_TRITON_AUTOTUNE", "1") != "0"


# Every autotuner :func:`autotuned` made in this process, so a case can record which config ran.
_AUTOTUNERS: list[Any] = []


def forget_choices() -> None:
    """Clear the config each autotuned kernel last ran (``best_config``) and the timings of its last
    tuning (``configs_timings``), before a case: what is set after it is that case's own, and a kernel
    the case did not launch (or did not tune) reports nothing."""
    for tuner in _AUTOTUNERS:
        tuner.best_config = None
        tuner.configs_timings = None


def config_text(config: Any) -> str:
    """A Triton config in one line: its block sizes, then warps and stages (``BLOCK_M=128 BLOCK_N=64 w8 s3``)."""
    kw = " ".join(f"{k}={v}" for k, v in sorted(getattr(config, "kwargs", {}).items()))
    return f"{kw} w{getattr(config, 'num_warps', '?')} s{getattr(config, 'num_stages', '?')}".strip()


def choices() -> dict[str, str]:
    """Kernel name -> the config it last ran, for each autotuned kernel that ran since :func:`forget_choices`.

    Recorded per case (``extra["triton_configs"]``): a Triton case's time depends on the tile config its
    autotuner picked on that machine, so two runs that differ can be told apart from two that chose
    differently."""
    out = {}
    for tuner in _AUTOTUNERS:
        config = getattr(tuner, "best_config", None)
        if config is not None:
            out[_kernel_name(tuner)] = config_text(config)
    return out


def _kernel_name(tuner: Any) -> str:
    fn = getattr(tuner, "base_fn", None) or getattr(tuner, "fn", None)
    return getattr(fn, "__name__", repr(fn))


def _first_ms(timing: Any) -> Optional[float]:
    """The time the autotuner ranks a config by (the first of the quantiles it asked for), in ms."""
    value = timing[0] if isinstance(timing, (list, tuple)) and timing else timing
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(f"{value:.4g}")
    return None  # Triton's inf for a config that failed to compile or launch


def tunings() -> dict[str, dict[str, Optional[float]]]:
    """Kernel name -> {config: its autotune time in ms}, for each kernel tuned (or whose timings were
    read from Triton's cache) since :func:`forget_choices`, fastest first (None: the config failed).

    Recorded per case (``extra["triton_tuning"]``) beside the choice: two fresh H200s of the graph-timed
    tuning chose different decode split configs whose case times lie 7% apart (BLOCK_N=32 on three,
    64 on one, session s26), and only the tuning's own timings say whether the two configs timed
    close (a coin toss each machine makes) or far apart (something disturbed one machine's tuning).
    """
    out: dict[str, dict[str, Optional[float]]] = {}
    for tuner in _AUTOTUNERS:
        timings = getattr(tuner, "configs_timings", None)
        if isinstance(timings, dict) and timings:
            ranked = sorted(((config_text(c), _first_ms(t)) for c, t in timings.items()),
                            key=lambda item: (item[1] is None, item[1] or 0.0))
            out[_kernel_name(tuner)] = dict(ranked)
    return out


def autotuned(configs: list, key: tuple[str, ...], shape: tuple[str, ...], *, prune: Any = None,
              reset_to_zero: Optional[list[str]] = None) -> Any:
    """Decorator: Triton's autotuner over ``configs``, keyed on ``key`` and ``shape``, for a ``@triton.jit`` kernel.

    ``key`` names the kernel's arguments that select its code (head-dim blocks, the mask);
    ``shape`` names the runtime sizes that decide which config is fastest (lengths, heads, batch).
    Keyed on both, the config a case runs is chosen on that case's own shape: with a key of head
    dim and mask only, the first shape of a key tuned it for every other, so a case's time depended
    on which case ran first (on one H200, DeepSeek-V3's d 56 forward ran 23% slower after GPT-2's
    d 64 shape had tuned the key; docs/triton.md). Re-tuning a new shape costs benchmark time only:
    the configs' compiled code does not depend on these sizes.

    With :func:`autotuning` on, the timings are kept in Triton's on-disk cache where this Triton can
    (:func:`_autotune_takes`). With it off, the first config ``prune`` keeps and a key without
    ``shape`` (there is nothing to choose). Under the interpreter the kernel is returned as it is. Every
    name must be an argument of the kernel: Triton's autotuner skips unknown names silently.
    """
    import triton
    from triton import knobs

    tune = autotuning()

    def first(cfgs: list, named_args: dict, **kwargs: Any) -> list:
        return (prune(cfgs, named_args, **kwargs) if prune is not None else list(cfgs))[:1]

    def decorate(fn: Any) -> Any:
        names = getattr(fn, "arg_names", [])
        missing = [n for n in (*key, *shape) if n not in names]
        if missing:
            kernel = getattr(getattr(fn, "fn", fn), "__name__", repr(fn))
            raise ValueError(f"autotune key of Triton kernel {kernel}: no argument named "
                             f"{', '.join(missing)} (its arguments: {', '.join(names)})")
        if knobs.runtime.interpret:
            return fn
        early = prune if tune else first
        extra: dict[str, Any] = {}
        if tune and _autotune_takes("cache_results"):
            extra["cache_results"] = True
        if tune and _autotune_takes("do_bench"):
            extra["do_bench"] = graph_bench
        tuner = triton.autotune(configs=configs, key=[*key, *shape] if tune else list(key),
                                prune_configs_by={"early_config_prune": early} if early is not None else None,
                                reset_to_zero=reset_to_zero, **extra)(fn)
        _AUTOTUNERS.append(tuner)
        return tuner

    return decorate


# How long one graph of repeated calls of a config runs (ms); do_bench_cudagraph replays it 10 times
GRAPH_BENCH_REP_MS = 5


def graph_bench(kernel_call: Callable[[], Any], quantiles: Any = None) -> Any:
    """The autotuner's timing of one config: replays of a CUDA graph of repeated calls
    (``triton.testing.do_bench_cudagraph``), the device's time alone.

    Triton's default timing brackets each call with events, so for a kernel of tens of microseconds
    it times the host's launch as much as the kernel, and the config it picks follows the host: the
    decode step's split kernel chose BLOCK_N=64 on five fresh H200 machines and BLOCK_N=32 on four,
    and the case's device time differed by 6.1% with the choice (0.0437 against 0.0412 ms, medians;
    ``extra["triton_configs"]`` of the ten fresh-machine runs of
    docs/evidence/h200-2026-12-02-s23/README.md). Timed on the device,
    every machine picks what is fastest on the GPU.

    The first call runs outside the graph, so a config that does not compile or does not fit raises
    as Triton's autotuner expects (it skips that config); a capture this process cannot make (a CUDA
    graph refused here) falls back to Triton's event timing, with a warning.
    """
    import triton.testing

    kernel_call()  # compile and first launch, outside any capture: a config's own failure raises here
    try:
        return triton.testing.do_bench_cudagraph(kernel_call, rep=GRAPH_BENCH_REP_MS, quantiles=quantiles)
    except RuntimeError as exc:
        warnings.warn(f"attnsuite: a Triton autotune config could not be timed from a CUDA graph ({exc}); "
                      "timed with events instead, so this choice may follow the host's speed", RuntimeWarning)
        return triton.testing.do_bench(kernel_call, quantiles=quantiles)


class StepTuner:
    """Chooses a Triton kernel's config by timing the whole step it runs in, not the kernel alone.

    Triton's autotuner times the one kernel it wraps. Where later kernels of the step read that
    kernel's output, the config changes their time too, and the kernel alone ranks the configs
    otherwise than the step: on one H200 the decode split kernel at 4K cached keys timed 36.6 us
    with BLOCK_N=32 and 36.9 us with 64 alone, while the merge after it took 4.0 and 6.0 us, so the
    step took 41.0 and 43.4 us (three input placements each; ``scripts/decode_tune_probe.py``,
    docs/evidence/h200-2026-12-03-s29). Machines whose tuning fell either way had moved the case 6%.

    :meth:`choose` times ``step(config)`` (every launch of the step, into buffers the caller made
    beforehand) for each config from a CUDA graph (:func:`graph_bench`) and keeps the fastest per
    ``key``, in this process and in a JSON file under Triton's cache folder (``TRITON_CACHE_DIR``),
    keyed also by the kernel's source, Triton's version, the device and the configs: a warm run skips
    the tuning, and an A/B's two trees and a confirmation run the config the first tuning chose.
    With :func:`autotuning` off: the first config, untimed. It reports like Triton's autotuners
    (``best_config``, ``configs_timings``: :func:`choices`, :func:`tunings`).
    """

    def __init__(self, fn: Any, configs: list, bench: Optional[Callable[..., Any]] = None) -> None:
        self.fn = fn  # the @triton.jit kernel whose config is chosen (its name, its source's hash)
        self.configs = list(configs)
        self.bench = bench or graph_bench
        self.cache: dict[tuple, Any] = {}
        self.best_config: Any = None
        self.configs_timings: Optional[dict] = None
        _AUTOTUNERS.append(self)

    def choose(self, key: tuple, step: Callable[[Any], Any]) -> Any:
        """The config to run ``step`` with for ``key`` (the sizes and dtypes that decide it), timed on first use."""
        if not autotuning():
            self.best_config = self.configs[0]
            return self.best_config
        if key not in self.cache:
            timings = self._load(key)
            if timings is None:
                timings = self._time(step)
                self._store(key, timings)
            self.configs_timings = timings
            self.cache[key] = min(timings, key=lambda c: _first_ms(timings[c]) or math.inf)
        self.best_config = self.cache[key]
        return self.best_config

    def _time(self, step: Callable[[Any], Any]) -> dict:
        timings: dict = {}
        failure: Optional[BaseException] = None
        for config in self.configs:
            try:
                timings[config] = self.bench(lambda c=config: step(c), quantiles=(0.5, 0.2, 0.8))
            except Exception as exc:  # a config that does not compile or fit here: never chosen
                failure, timings[config] = exc, math.inf
        if failure is not None and all(t == math.inf for t in timings.values()):
            raise failure  # no config runs: the step's own error, not a choice among failures
        return timings

    def _file(self, key: tuple) -> str:
        import hashlib
        import json

        import torch
        import triton
        from triton import knobs

        ident = json.dumps([getattr(self.fn, "cache_key", repr(self.fn)), triton.__version__,
                            torch.cuda.get_device_name(), [config_text(c) for c in self.configs], repr(key)])
        name = f"{getattr(self.fn, '__name__', 'kernel')}-{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"
        return os.path.join(knobs.cache.dir, "attnsuite-step-tuning", name)

    def _load(self, key: tuple) -> Optional[dict]:
        import json

        try:
            with open(self._file(key)) as fh:
                saved = json.load(fh)["timings"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none kept, or unreadable: tune again (and overwrite it)
        if not isinstance(saved, list) or len(saved) != len(self.configs):
            return None
        return dict(zip(self.configs, saved))

    def _store(self, key: tuple, timings: dict) -> None:
        import json

        from .baseline import atomic_write_text

        kept = [t if not isinstance(t, float) or math.isfinite(t) else None for t in timings.values()]
        try:
            atomic_write_text(self._file(key), json.dumps({"key": repr(key), "configs": [
                config_text(c) for c in self.configs], "timings": kept}) + "\n")
        except OSError as exc:  # a read-only cache: the choice holds for this process only
            warnings.warn(f"attnsuite: could not keep the tuning of {getattr(self.fn, '__name__', 'a kernel')} "
                          f"({exc}); later processes tune it again", RuntimeWarning)


def _autotune_takes(parameter: str) -> bool:
    """Whether this Triton's autotuner takes ``parameter`` (both used here came with 3.2).

    ``cache_results``: the configs' timings kept in Triton's cache, read back by every later process
    that runs the same kernel source with the same configs: a warm run (the GPU workflow keeps
    Triton's cache between jobs) skips the tuning, and both trees of an A/B run, and a confirmation's
    second measurement, run the config the first tuning chose instead of one re-chosen under other
    noise. ``do_bench``: the timing function (:func:`graph_bench`).
    """
    import inspect

    import triton

    return parameter in inspect.signature(triton.autotune).parameters


def triton_reasons(problem: Problem) -> list[str]:
    """Reasons shared by the Triton variants: triton missing, fp32 on CUDA, the interpreter budget."""
    reason = device_reason(problem.device.split(":")[0])
    if reason is not None:
        return [reason]
    reasons = []
    if problem.device.startswith("cuda") and problem.dtype == "float32" and not interpreting():
        reasons.append("Triton's fp32 tl.dot on CUDA runs in TF32: fp32 runs on the CPU interpreter only")
    return reasons


INTERPRETER_TIMING = ("Triton variants are benchmarked on CUDA only: on CPU tensors Triton runs in its interpreter, "
                      "which emulates the kernel with NumPy, so a time would measure the emulation (their "
                      "correctness checks do run on CPU)")


def is_triton_backend(backend: str) -> bool:
    """Whether a variant's declared ``backend`` names Triton: "triton", or "triton" qualified as the
    suite's backends are ("triton:split-kv", "triton+kvcache"). Only an exact "triton" had counted,
    so ``triton-decode`` ("triton:split-kv") and an outside kernel declared like it were timed in
    the interpreter under TRITON_INTERPRET=1."""
    return re.split(r"[:+]", backend, maxsplit=1)[0].strip().lower() == "triton"


def benchmark_reason(backend: str, device: str) -> Optional[str]:
    """Why a variant is not timed: a Triton one (:func:`is_triton_backend`) on CPU, which only the
    interpreter runs. With TRITON_INTERPRET=1 exported such a case had been timed and its figure
    recorded as the kernel's; without it, the skip had told a benchmark run to set it. None otherwise."""
    if is_triton_backend(backend) and device.split(":")[0] == "cpu":
        return INTERPRETER_TIMING
    return None


def interpreter_budget(device: str, streams: int, rows: int, keys: int, limit: int = CPU_MAX_STEPS) -> list[str]:
    """On CPU (the interpreter), decline work above ``limit`` steps of 64x64 tiles.

    ``streams`` independent query-row streams of ``rows`` rows each read ``keys`` keys.
    """
    steps = streams * -(-rows // 64) * -(-keys // 64)
    if device.split(":")[0] == "cpu" and steps > limit:
        return [f"CPU runs go through the Triton interpreter (seconds per tile): problems above {limit} "
                f"64x64 tile steps run on CUDA only (this one {steps})"]
    return []


LAUNCH_PREFIX = "triton-kernel::"  # how a recorded Triton launch appears among a profiled call's op names


def _launch_name(metadata: Any) -> str:
    """A launched kernel's name from the metadata Triton hands its launch hook (a lazy dict)."""
    for read in (lambda m: m.get()["name"], lambda m: m.data["name"], lambda m: m["name"]):
        try:
            return str(read(metadata))
        except Exception:  # noqa: BLE001 - the metadata's form differs between Triton versions
            continue
    return "?"


@contextlib.contextmanager
def triton_launches() -> Iterator[list[str]]:
    """Record the names of the Triton kernels launched inside the block (compiled ones: the
    interpreter launches nothing). Yields the list it fills.

    The host-side profiler behind a case's backend label sees aten ops, not a Triton kernel launched
    from Python, so a Triton variant would read ``eager``; Triton's own launch hook does see it.
    Nothing is recorded when triton was never imported (it is not imported here for that), or when
    this Triton has no launch hook; a hook already installed keeps running.
    """
    names: list[str] = []
    triton = sys.modules.get("triton")
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None) if triton is not None else None
    hooks = getattr(runtime, "launch_enter_hook", None) if runtime is not None else None

    # any arguments: a hook that raised inside Triton's launcher would fail the launch itself
    def record(*args: Any, **kwargs: Any) -> None:
        names.append(_launch_name(args[0] if args else kwargs.get("metadata")))

    if hooks is not None and hasattr(hooks, "add") and hasattr(hooks, "remove"):  # a chain of hooks
        hooks.add(record)
        try:
            yield names
        finally:
            hooks.remove(record)
        return
    if runtime is not None and hasattr(runtime, "launch_enter_hook"):  # one hook: ours calls the old one too
        old = runtime.launch_enter_hook

        def chained(*args: Any, **kwargs: Any) -> None:
            record(*args, **kwargs)
            if old is not None:
                old(*args, **kwargs)

        runtime.launch_enter_hook = chained
        try:
            yield names
        finally:
            runtime.launch_enter_hook = old
        return
    yield names
