"""The case runner: one benchmark case to a record, with no pytest in sight.

Every benchmark case is (workload, variant, mode, problem). :func:`run_case` turns one into a
:class:`~attnsuite.record.CaseRecord`: it builds the case with :func:`attnsuite.case.prepare` (what
is checked is what is timed; the build time is the mask-build time), times it with
:mod:`attnsuite.timing` (event-bracketed time, and on CUDA the host-independent device time),
measures its peak memory with :mod:`attnsuite.memory`, reads which backend ran from a profiled call
and dynamo's counters, checks the output's numerics, and credits FLOPs from :mod:`attnsuite.flops`.
Skips, out-of-memory, numerics failures and errors are records too.

The run's choices travel as a :class:`RunSpec` (plain data, picklable), so the same runner serves
the pytest plugin in-process and the isolated worker processes (:mod:`attnsuite.worker`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import flops as flopmod
from . import checks, decode_bench, gpu_state, inductor_paths, memory, oracle_mask, registry, spot_check, timing, tolerance, triton_support, workloads
from .case import Case, DeviceInputs, OutputContractError, prepare
from .inputs import torch_dtype
from .problem import Problem
from .record import MODES, CaseRecord, has_backward
from .triton_support import LAUNCH_PREFIX
from .wording import exception_text

ORACLE_LIMIT = 1 << 18  # score elements (b*hq*lq*lk) up to which outputs are checked against the float64 oracle
_REF_CACHE: dict = {}  # (family, problem) -> (oracle output, same-dtype base output), shared by the variants
SDPA_OPS = (  # profiler op name -> which SDPA backend ran; most specific first
    ("_scaled_dot_product_flash_attention_for_cpu", "sdpa:flash-cpu"),
    ("_scaled_dot_product_flash_attention", "sdpa:flash"),
    ("_scaled_dot_product_efficient_attention", "sdpa:efficient"),
    ("_scaled_dot_product_cudnn_attention", "sdpa:cudnn"),
    ("_scaled_dot_product_fused_attention_overrideable", "sdpa:overrideable"),
    ("_scaled_dot_product_attention_math", "sdpa:math"),
)
COMPILED_MARKERS = ("Torch-Compiled Region", "CompiledFunction", "## Call CompiledFxGraph")
assert {label.removeprefix("sdpa:").removesuffix("-cpu") for _, label in SDPA_OPS} <= registry.SDPA_BACKENDS, \
    "registry.SDPA_BACKENDS (what a variant may declare) must name every SDPA kernel detected here"



# ------------------------------------------------------------------------------------------- spec

@dataclass(frozen=True)
class RunSpec:
    """The run's choices as plain data: what the plugin read from its options, what a worker gets.

    ``variant_modules`` are the external variant modules (``ATTNSUITE_VARIANTS`` and ``--attn-variants``,
    as :func:`attnsuite.registry.named_sources` names them) a worker must import to find the same
    variants, ``problem_files`` the problems files (``--attn-problems``) it must read to find the same
    workload entries; ``only`` is the ``--attn-only`` filter.
    """

    tier: str
    device: str
    dtype: Optional[str] = None
    workloads: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    mem_cap: Optional[int] = None
    inject: tuple[tuple[str, float], ...] = ()
    cpu_threads: int = 0
    variant_modules: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    oracle_limit: int = ORACLE_LIMIT
    device_time: bool = True
    problem_files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the journal's header)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSpec":
        """The inverse of :meth:`to_json`."""
        d = dict(data)
        for name in ("workloads", "modes", "variant_modules", "only", "problem_files"):
            d[name] = tuple(d.get(name) or ())
        d["inject"] = tuple((str(k), float(v)) for k, v in (d.get("inject") or ()))
        return cls(**d)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class Settings:
    """The run's choices, read once from the command line."""

    tier: str
    device: str
    dtype: Optional[str]
    workloads: tuple[str, ...]
    modes: tuple[str, ...]
    mem_cap: Optional[int]
    inject: dict[str, float]
    timer: timing.TimerConfig
    guard: Optional[memory.CpuGuard]
    cpu_threads: int = 0
    oracle_limit: int = ORACLE_LIMIT
    device_time: bool = True
    peaks: dict[tuple[str, str], tuple[Optional[float], str]] = field(default_factory=dict)
    device_inputs: Optional[DeviceInputs] = None  # one problem's tensors (set in __post_init__)
    current_problem: Optional[tuple] = None  # (family, problem) of the last case run

    def __post_init__(self) -> None:
        if self.device_inputs is None:
            # problems the oracle does not check need no float64 inputs: draw them on the device
            self.device_inputs = DeviceInputs(on_device=lambda p: not oracle_checks(p, self.oracle_limit))

    def peak(self, device: str, dtype: str) -> tuple[Optional[float], str]:
        """Dense peak TFLOP/s and its source, cached per (device, dtype)."""
        key = (device, dtype)
        if key not in self.peaks:
            self.peaks[key] = flopmod.peak_tflops(device, dtype)
        return self.peaks[key]



def settings_from_spec(spec: RunSpec) -> Settings:
    """The runner's working settings (timer, out-of-memory guard, caches) for a spec."""
    if spec.on_gpu:
        timer, guard = timing.FULL_GPU, None
    else:
        timer = timing.QUICK_CPU if spec.tier == "quick" else timing.TimerConfig(flush_l2=False, min_sample_s=0.0005)
        guard = memory.CpuGuard(spec.mem_cap if spec.mem_cap is not None else memory.default_cpu_budget())
    return Settings(spec.tier, spec.device, spec.dtype, spec.workloads, spec.modes, spec.mem_cap, dict(spec.inject),
                    timer, guard, cpu_threads=0 if spec.on_gpu else spec.cpu_threads,
                    oracle_limit=spec.oracle_limit, device_time=spec.device_time)


# ------------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class BenchCase:
    """One benchmark case: a workload entry, a variant (None when its family is not built) and a mode."""

    workload: str
    entry: workloads.Entry
    problem: Problem
    variant: Optional[str]
    mode: str

    @property
    def variant_label(self) -> str:
        return self.variant or f"{self.entry.family}/*"

    @property
    def id(self) -> str:
        """The case key, used as the pytest id: ``workload/variant/mode/problem``."""
        return f"{self.workload}/{self.variant_label}/{self.mode}/{self.problem.id}"

    @property
    def group(self) -> str:
        """pytest-benchmark group: the terminal table reads per workload and mode."""
        return f"{self.workload} {self.mode}"


def is_distributed(variant: registry.Variant) -> bool:
    """Whether ``variant`` runs on P ranks of a process group (attnsuite.distributed)."""
    from .distributed.variant import DistributedVariant

    return isinstance(variant, DistributedVariant)


def bench_cases(spec: RunSpec) -> list[BenchCase]:
    """Every (workload entry, variant, mode) of the spec's tier after its filters, in run order."""
    only = set(spec.only)
    chosen = {v.name for v in registry.variants() if not only or v.name in only}
    only_given = bool(only)
    cases = []
    for ex in workloads.expand(spec.tier, spec.device, spec.dtype, spec.workloads):
        entry = ex.entry
        # a variant that runs on P ranks is benchmarked by attnsuite.distributed (its own launcher), not
        # in a case worker: it joins an entry only where the entry names it (and is then skipped
        # with its reason), never by the family's default expansion
        family_variants = [v.name for v in registry.variants(family=entry.family)
                           if not is_distributed(v) or v.name in entry.variants]
        modes = [m for m in entry.modes if m in spec.modes]
        if not family_variants:
            if not only_given:  # a filtered run does not list families it did not ask for
                cases.extend(BenchCase(ex.workload, entry, ex.problem, None, m) for m in modes)
            continue
        names = [n for n in family_variants if n in chosen and (not entry.variants or n in entry.variants)]
        for name in names:
            cases.extend(BenchCase(ex.workload, entry, ex.problem, name, m) for m in modes)
    return cases


# ------------------------------------------------------------------------------------------ runner

def _step(case: Case, mode: str):
    """(timed call, untimed per-sample setup or None) for ``mode``."""
    if mode == "decode":
        return decode_bench.timed_step(case)
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return case.forward()
        return fwd, None
    if mode == "fwd+bwd":
        def fwd_bwd():
            out = case.forward()
            case.backward(out)
            return out
        return fwd_bwd, case.zero_grads
    state: dict[str, Any] = {}

    def setup():
        case.zero_grads()
        state["out"] = case.forward()

    def bwd():
        out = state.pop("out")
        case.backward(out)
        return out
    return bwd, setup


def _dynamo_counts() -> dict[str, float]:
    """A flat snapshot of the dynamo counters that reveal compilation and fallbacks."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # torch without dynamo
        return {}
    snap = {
        "frames_total": counters["frames"].get("total", 0),
        "frames_ok": counters["frames"].get("ok", 0),
        "unique_graphs": counters["stats"].get("unique_graphs", 0),
        "graph_breaks": sum(counters["graph_break"].values()),
        "recompile_limit_hits": sum(n for msg, n in counters["unimplemented"].items() if "recompile limit" in msg.lower()),
    }
    return snap


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def detect_backend(op_names: tuple[str, ...], variant: registry.Variant, dyn: dict[str, float]) -> tuple[str, dict[str, Any]]:
    """The backend that actually ran, from the profiled call's op names and dynamo's counters.

    Returns (backend string, extra facts). ``compiled->eager fallback`` means the variant is
    compiled but the profiled call ran no compiled region, or dynamo hit its recompile limit.
    """
    joined = "\n".join(op_names)
    compiled_ran = any(marker in joined for marker in COMPILED_MARKERS)
    sdpa = []
    # forward ops and their autograd backward ops (``..._backward``) name the same backend
    bare = {name.split("::")[-1].removesuffix("_backward") for name in op_names}
    for op, label in SDPA_OPS:
        if op in bare and label not in sdpa:
            if label == "sdpa:flash" and "sdpa:flash-cpu" in sdpa:
                continue
            sdpa.append(label)
    fallback = bool(variant.compiled and (not compiled_ran or dyn.get("recompile_limit_hits", 0) > 0))
    parts = []
    if compiled_ran:
        parts.append("compiled")
    elif variant.compiled:
        parts.append("compiled->eager fallback")
    parts.extend(sdpa)
    if "flex_attention" in joined and not compiled_ran:
        parts.append("flex:eager")
    # a Triton kernel launched from Python (not Inductor's, whose launches "compiled" already names)
    if not compiled_ran and any(name.startswith(LAUNCH_PREFIX) for name in op_names):
        parts.append("triton")
    if not parts:
        parts.append("eager")
    relevant = [n for n in op_names if "attention" in n.lower() or n.startswith(LAUNCH_PREFIX)
                or any(m in n for m in COMPILED_MARKERS)]
    facts = {
        "compiled": compiled_ran,
        "compile_fallback": fallback,
        "declared_backend": variant.backend,
        "backend_ops": relevant[:12],
    }
    declared = variant.backend
    if declared.startswith("sdpa:") and declared.split("+")[0] not in ("sdpa:default",) and sdpa:
        facts["backend_mismatch"] = not any(s.startswith(declared.split("+")[0]) for s in sdpa)
    return " + ".join(parts), facts


def _expected_shape(problem: Problem, mode: str = "fwd") -> tuple[int, ...]:
    if mode == "decode":
        return decode_bench.output_shape(problem)
    if problem.d_model is not None:
        return (problem.batch, problem.lq, problem.d_model)
    return (problem.batch, problem.hq, problem.lq, problem.dv)


def oracle_checks(problem: Problem, oracle_limit: int = ORACLE_LIMIT) -> bool:
    """Is the problem small enough (score elements b*hq*lq*lk) for the benchmarks' float64 oracle check?"""
    return problem.batch * problem.hq * problem.lq * problem.lk <= oracle_limit


def _nonfinite_rows(out: torch.Tensor) -> np.ndarray:
    """The query rows (second-to-last axis) where any element of ``out`` is NaN or Inf."""
    bad = ~torch.isfinite(out)
    return torch.nonzero(bad.reshape(-1, out.shape[-2], out.shape[-1]).any(dim=-1).any(dim=0)).flatten().cpu().numpy()


def _remember(key: tuple, value: Any) -> None:
    """Keep a problem's reference for the next variants and modes of it (the 16 most recent)."""
    if len(_REF_CACHE) >= 16:
        _REF_CACHE.pop(next(iter(_REF_CACHE)))
    _REF_CACHE[key] = value


def oracle_reference(family: registry.Family, p: Problem) -> tuple:
    """(oracle output, base output, oracle gradients, base gradients) of a problem the whole oracle
    judges, cached for its next variants and modes. :func:`run_case` asks for it before the variant's
    code runs: the base is torch math, and a variant that replaced a torch function (softmax) had
    computed it, poisoned, for every later case of the problem in the worker."""
    key = (family.name, p)
    if key not in _REF_CACHE:
        with checks.full_fp32():
            (ref_out, ref_grads), (base_out, base_grads) = family.reference(p), family.base(p)
        _remember(key, (ref_out, tolerance.as_float64(base_out), ref_grads,
                        {n: tolerance.as_float64(g) for n, g in base_grads.items()}))
    return _REF_CACHE[key]


def check_numerics(case: Case, mode: str, out: torch.Tensor, oracle_limit: int) -> tuple[Optional[str], str]:
    """(failure message or None, which check ran) for a benchmarked output (and gradients)."""
    p = case.problem
    expected = _expected_shape(p, mode)
    if not isinstance(out, torch.Tensor):
        return case.output_problem(out), "contract"
    out = out.detach()
    if tuple(out.shape) != expected or out.dtype != torch_dtype(p.dtype):
        return (f"{case.variant.name}: output is {tuple(out.shape)} {out.dtype}, the contract says {expected} "
                f"{torch_dtype(p.dtype)}",
                "contract")
    misplaced = case.device_problem(out)
    if misplaced:
        return misplaced, "contract"
    rows = None
    cheap = oracle_checks(p, oracle_limit)
    if cheap and case.variant.family == "attention":
        rows = oracle_mask.allowed(p).any(axis=1)
    finite = torch.isfinite(out if rows is None else out[..., torch.as_tensor(rows, device=out.device), :])
    if not bool(finite.all()) and not cheap and case.variant.family == "attention" and mode != "decode":
        # a row that may see no key is reported by the correctness checks, not judged, at any size
        bad = _nonfinite_rows(out)
        finite = torch.isfinite(out[..., torch.as_tensor(bad[oracle_mask.live_among(p, bad)], device=out.device), :])
    if not bool(finite.all()):
        return f"output has {int((~finite).sum())} NaN/Inf values", "finite"
    if has_backward(mode):
        for name, g in case.grads().items():
            if name in case.inputs and g is None:
                return f"no gradient reached input {name}", "finite"
            if g is not None and not bool(torch.isfinite(g).all()):
                return f"gradient {name} has NaN/Inf values", "finite"
    family = registry.family_of(case.variant)
    if not cheap:
        own_rows = family.name != spot_check.FAMILY and family.rows is not None
        why_not = spot_check.applies(family.name, p, mode, out, case.variant.accuracy, own_rows=own_rows)
        if why_not:
            return None, f"finite (too large for the float64 oracle; no spot check: {why_not})"
        if own_rows:
            key = ("rows", family.name, p)
            if key not in _REF_CACHE:
                _remember(key, spot_check.FamilyRows(family, p, case.inputs))
            rows_ref = _REF_CACHE[key]
            comp = rows_ref.judge(out, case.variant.accuracy)
            return (None if comp.passed else comp.describe()), rows_ref.label(has_backward(mode))
        key = ("spot", family.name, p)
        if key not in _REF_CACHE:
            _remember(key, spot_check.SpotReference(p, case.inputs))
        spot = _REF_CACHE[key]
        comp = spot.judge(out, case.variant.accuracy)
        if not comp.passed or not has_backward(mode):
            return (None if comp.passed else comp.describe()), spot.label()
        failure, how = spot.judge_gradients(case, case.variant.accuracy)
        return failure, ("contract" if how == "contract" else spot.label(how))
    ref, base, ref_grads, base_grads = oracle_reference(family, p)
    if mode == "decode":  # one step: the full forward's last rows
        ref, base = ref[:, decode_bench.reference_rows(p)], base[:, decode_bench.reference_rows(p)]
    # the rule the correctness suite judges this variant by: exact, or its declared approximate class
    comp = tolerance.compare_as(case.variant.accuracy, "output", out, ref, base, p.dtype, "output", rows=rows)
    if not comp.passed:
        return comp.describe(), "oracle"
    if has_backward(mode):  # the gradients of the measured call, by the backward check's own rule
        comps, broken = checks.compare_gradients(case.variant.accuracy, case.grads(), ref_grads, base_grads, p.dtype)
        failed = broken + [c.describe() for c in comps if not c.passed]
        if failed:
            return "; ".join(failed), "oracle"
    return None, "oracle"


class _PhaseClock:
    """Adds the seconds since the last lap to ``phases[name]``."""

    def __init__(self, phases: dict[str, float]):
        self.phases = phases
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


def _skip(rec: CaseRecord, reason: str) -> CaseRecord:
    rec.outcome, rec.detail = "skipped", reason
    return rec


def run_case(bc: BenchCase, settings: Settings) -> tuple[CaseRecord, Optional[timing.Timing]]:
    """Run one benchmark case to a record; never raises for the case's own failures."""
    p = bc.problem
    rec = CaseRecord(bc.workload, bc.variant_label, bc.mode, p.id, family=bc.entry.family, level=p.level)
    rec.extra["tier"] = settings.tier
    try:
        rec.flops = flopmod.case_flops(p, bc.entry.family, bc.mode)
    except ValueError as exc:
        rec.extra["flops_error"] = str(exc)
    if bc.variant is None:
        return _skip(rec, f"family {bc.entry.family} not built yet"), None
    variant = registry.get(bc.variant)
    if is_distributed(variant):
        return _run_distributed(bc, settings, rec)
    reasons = variant.unsupported(p, backward=has_backward(bc.mode))
    if bc.mode == "decode":
        why = decode_bench.skip_reason(variant, p)
        reasons = [why] if why else []
    untimed = triton_support.benchmark_reason(variant.backend, p.device)
    if untimed:  # whatever else the case lacks, this is why a benchmark never times it
        reasons = [untimed]
    if reasons:
        return _skip(rec, "; ".join(reasons)), None
    if variant.compiled:
        tier_entries = workloads.WORKLOADS[bc.workload].tier(settings.tier) if bc.workload in workloads.WORKLOADS else ()
        why = bc.entry.compiled_skip_reason(variant.name, bc.mode, settings.tier,
                                            [e for e in tier_entries if e is not bc.entry])
        if why:
            return _skip(rec, why), None
    if settings.guard is not None:
        refused = settings.guard.check(p, bc.mode, variant.fused)
        if refused:
            rec.outcome, rec.oom_bytes, rec.detail = "oom", refused[0], refused[1]
            rec.extra["oom_predicted"] = True
            return rec, None

    result: Optional[timing.Timing] = None
    failed = False
    phases: dict[str, float] = {}  # where the suite's own time went (seconds), for suite-speed work
    clock = _PhaseClock(phases)
    if _enter_problem(bc, settings):
        clock.lap("recover")
    # On CPU the memory cap is enforced, not only predicted: allocations past it fail inside torch
    # and the case is recorded as out of memory (memory.cpu_cap).
    cap = memory.cpu_cap(settings.mem_cap) if settings.mem_cap is not None and not timing.is_cuda(p.device) \
        else contextlib.nullcontext()
    gpu = timing.is_cuda(p.device)
    states = {"start": gpu_state.sample(p.device)} if gpu else {}
    try:
        with cap:
            if oracle_checks(p, settings.oracle_limit):
                oracle_reference(registry.family_of(variant), p)  # before the variant's code runs (see there)
                clock.lap("numerics")
            result, (case, out) = _measure(bc, variant, settings, rec, clock)
            if gpu:
                states["timed"] = gpu_state.sample(p.device)
            problem_msg, check = check_numerics(case, bc.mode, out, settings.oracle_limit)
            rec.extra["numerics_check"] = check
            if problem_msg:
                rec.outcome, rec.detail = "numerics", problem_msg
            del out
            clock.lap("numerics")
            # Device time last: its graph pool and side-stream caches must not be what the memory
            # probe sees (on an H200 they once turned four 52 GiB cases into out-of-memory), and its
            # replays rewrite the gradients the numerics check reads.
            if settings.device_time and gpu:
                _measure_device_time(rec, case, p.device, result, bc.mode)
                clock.lap("device-time")
                states["device-timed"] = gpu_state.sample(p.device)
            case = None
    except Exception as exc:  # the case's failure is its outcome; the run goes on
        failed = True
        if memory.is_oom(exc) and not isinstance(exc, MemoryHeld):
            text = exception_text(exc)
            rec.outcome, rec.oom_bytes = "oom", memory.parse_oom_bytes(str(exc))
            rec.detail = text.splitlines()[0][:400]
        elif isinstance(exc, OutputContractError):  # backward met an output of the wrong kind: as fwd says it
            rec.outcome, rec.detail = "numerics", str(exc)
            rec.extra["numerics_check"] = "contract"
        else:
            rec.outcome, rec.detail = "error", inductor_paths.explain_compile_error(exception_text(exc))[:1000]
            # where it was raised: the variant's last own frame, then the innermost frames (the
            # correctness checks show the same); the worker's log, which had the rest, is removed
            rec.extra["traceback"] = checks.traceback_text(exc)[:4000]
        result = None
    finally:
        if failed:  # the exception's traceback holds tensors in cycles; the allocator may be full
            _recover(p.device)
            clock.lap("recover")
    rec.extra["suite_s"] = {k: round(v, 4) for k, v in phases.items()}
    if any(states.values()):  # the GPU's clock and power around the measurement (gpu_state)
        rec.extra["gpu_state"] = {k: v for k, v in states.items() if v}

    if result is not None:
        _add_throughput(rec, result, settings, p)
    return rec, result


def _enter_problem(bc: BenchCase, settings: Settings) -> bool:
    """Before a case: when it is another problem than the last case's, free what that one left
    (reference cycles, cached blocks) before this one's inputs load. True when it did.

    A full garbage collection costs 0.1-0.35 s in a process with torch loaded, so it runs when the
    problem changes (and after a failed case), not after every case: a run's cases come grouped by
    problem.
    """
    problem_key = (bc.entry.family, bc.problem)
    if settings.current_problem == problem_key:
        return False
    _recover(bc.problem.device)
    settings.current_problem = problem_key
    return True


def _add_throughput(rec: CaseRecord, result: timing.Timing, settings: Settings, p: Problem) -> None:
    """TFLOP/s and % of the device's peak of a timed case, with the peak and where it came from."""
    peak, source = settings.peak(p.device, p.dtype)
    rec.tflops, rec.pct_peak = flopmod.throughput(rec.flops or 0.0, result.median_s, peak)
    rec.extra["peak_tflops"], rec.extra["peak_source"], rec.extra["peak_dtype"] = peak, source, p.dtype


def _run_distributed(bc: BenchCase, settings: Settings, rec: CaseRecord) -> tuple[CaseRecord, Optional[timing.Timing]]:
    """A case of a variant that runs on P ranks (``bc.entry.world_size``), timed by
    :func:`attnsuite.distributed.bench.run_distributed_case`: the case's time is the slowest rank's,
    its samples that rank's; memory the largest rank's peak, with every rank's in ``extra``. Its
    numerics are checked on the ranks by test_correctness/test_distributed.py, not here."""
    from .distributed.bench import run_distributed_case

    p, world = bc.problem, bc.entry.world_size
    rec.extra["world_size"] = world
    if world < 1:
        return _skip(rec, f"{bc.variant} runs on P ranks: the workload entry names no world size"), None
    if timing.is_cuda(p.device) and torch.cuda.device_count() < world:
        return _skip(rec, f"{bc.variant} needs {world} GPUs visible to its worker, which sees "
                          f"{torch.cuda.device_count()} (a run spread over GPUs gives each worker one: run "
                          f"this workload with --attn-gpus 1)"), None
    out = run_distributed_case(bc.variant, p, bc.mode, world, settings.timer)
    if out["outcome"] == "skip":
        return _skip(rec, out["detail"]), None
    if out["outcome"] != "ok":
        rec.outcome, rec.detail = out["outcome"], out["detail"][:1000]
        return rec, None
    result = timing.Timing(samples_s=list(out["samples_s"]), timer=out["timer"], warmup_calls=out["warmup_calls"])
    rec.timer = result.timer
    rec.median_ms, rec.iqr_ms = result.median_s * 1e3, result.iqr_s * 1e3
    rec.min_ms, rec.samples = result.stats["min"] * 1e3, len(result.samples_s)
    peaks = [b for b in out["peak_bytes_per_rank"] if b is not None]
    if peaks:
        rec.peak_mem_bytes, rec.mem_method = max(peaks), "cuda-allocator, the largest rank's peak"
    rec.extra.update({
        "sharding": out.get("sharding"), "slowest_rank": out["slowest_rank"],
        "rank_median_ms": [t * 1e3 for t in out["rank_median_s"]],
        "peak_bytes_per_rank": out["peak_bytes_per_rank"], "bytes_sent_per_rank": out["bytes_sent_per_rank"],
        "bytes_estimated": out["bytes_estimated"],
        "numerics_check": "on every rank by test_correctness/test_distributed.py",
    })
    _add_throughput(rec, result, settings, p)
    return rec, result


def add_scaling_efficiency(records: list[CaseRecord]) -> int:
    """Give each distributed record its scaling efficiency against the same run's fastest
    single-device variant of the same workload, problem and mode: T(single) / (P x T(P ranks)).
    Returns how many records got one."""
    best: dict[tuple[str, str, str], CaseRecord] = {}
    for r in records:
        if r.outcome == "ok" and r.median_ms and "world_size" not in r.extra:
            key = (r.workload, r.problem, r.mode)
            if key not in best or r.median_ms < best[key].median_ms:
                best[key] = r
    done = 0
    for r in records:
        world = r.extra.get("world_size")
        single = best.get((r.workload, r.problem, r.mode))
        if world and r.outcome == "ok" and r.median_ms and single is not None:
            r.extra["scaling_efficiency"] = single.median_ms / (world * r.median_ms)
            r.extra["scaling_reference"] = f"{single.variant} {single.median_ms:.4g} ms on one device"
            done += 1
    return done


def _recover(device: str) -> None:
    """memory.recover, which must not turn a broken CUDA context into an exception out of the runner:
    the worker probes the context after a failed case and reports it (worker.py)."""
    try:
        memory.recover(device)
    except Exception:  # noqa: BLE001
        pass


def _measure(bc: BenchCase, variant: registry.Variant, settings: Settings, rec: CaseRecord,
             clock: _PhaseClock) -> tuple[timing.Timing, tuple[Case, torch.Tensor]]:
    """Build, time and profile one case into ``rec``: the timing and (case, profiled output)."""
    p = bc.problem
    case = prepare(variant, p, requires_grad=has_backward(bc.mode), device_inputs=settings.device_inputs)
    clock.lap("prepare")
    rec.extra["inputs"] = "drawn on the device" if settings.device_inputs.drawn_on_device else "float64 recipe"
    rec.mask_build_ms = case.build_seconds * 1e3
    step, setup = _step(case, bc.mode)
    marks = input_marks(caller_tensors(case))  # to tell a kernel that writes its inputs (see changed_inputs)
    before = _dynamo_counts()
    triton_support.forget_choices()
    result = timing.measure(step, p.device, settings.timer, setup=setup,
                            inject_fraction=settings.inject.get(variant.name, 0.0))
    clock.lap("timing")
    tuned = triton_support.choices()
    if tuned:
        rec.extra["triton_configs"] = tuned
    tuning = triton_support.tunings()
    if tuning:
        rec.extra["triton_tuning"] = tuning
    rec.timer = result.timer
    rec.first_call_ms = result.first_call_s * 1e3 if result.first_call_s is not None else None
    rec.median_ms = result.median_s * 1e3
    rec.iqr_ms = result.iqr_s * 1e3
    rec.min_ms = result.stats["min"] * 1e3
    rec.samples = len(result.samples_s)
    rec.launch_fraction = result.launch_fraction
    rec.extra.update({
        "q1_ms": result.stats["q1"] * 1e3, "q3_ms": result.stats["q3"] * 1e3,
        "max_ms": result.stats["max"] * 1e3, "mean_ms": result.stats["mean"] * 1e3,
        "iters_per_sample": result.iters_per_sample, "warmup_calls": result.warmup_calls,
    })
    if result.injected_s:
        rec.extra["injected_ms"] = result.injected_s * 1e3

    held = _poisoned_call(case, step, setup, has_backward(bc.mode), p.device)
    if held is not None:
        rec.extra["held_after_call_bytes"] = held
        if held >= HELD_MIN_BYTES:  # a second call tells a leak from something kept once
            again = _poisoned_call(case, step, setup, has_backward(bc.mode), p.device, collect=True)
            if again is not None and again >= HELD_MIN_BYTES:
                raise MemoryHeld(variant.name, held, again, p.device)
    # one more call serves peak memory, the op names that tell the backend, and the numerics check
    if setup is not None:
        setup()
    with memory.fresh_memory_reads_nan(p.device, variant.compiled):
        out, mem = memory.measure_peak(step, p.device)
    rec.peak_mem_bytes, rec.mem_method = mem.peak_bytes, mem.method
    changed = changed_inputs(marks, input_marks(caller_tensors(case)))
    if changed:
        # the output gradient is shared with the problem's next cases (inputs are copied per case): they
        # had run on the written one
        settings.device_inputs.forget()
        inputs = [name for name in changed if name != GRAD_OUT]
        what = ([f"its input{'s' if len(inputs) > 1 else ''} {', '.join(inputs)}"] if inputs else []) + \
            (["the output gradient it was given"] if GRAD_OUT in changed else [])
        raise InputsWritten(f"{variant.name} changed {' and '.join(what)} in place during the timed calls: the "
                            "caller's tensors are not the variant's to write, and every later call ran on other "
                            f"inputs (pytest test_correctness --attn-only {variant.name} shows which elements)")
    dyn = _delta(before, _dynamo_counts())
    rec.backend, facts = detect_backend(mem.op_names, variant, dyn)
    rec.extra.update(facts)
    rec.extra["dynamo"] = dyn
    if variant.fused and bc.mode != "decode":  # a step's scores are s x L: never the L x L matrix
        rec.materialises = memory.materialises(rec.peak_mem_bytes, p, bc.mode)
    rec.extra["score_matrix_bytes"] = memory.score_matrix_bytes(p)
    clock.lap("memory+backend")

    return result, (case, out)


# A call that still holds this much after its outputs and gradients are freed, on two calls in a row,
# leaks (MemoryHeld). Built-in steps hold nothing after their warm-up, but a decode step's cache grows
# by one token (tens to hundreds of KiB at the decode workloads' sizes) and CPU readings include the
# interpreter's own larger objects: a mebibyte per call is far above both and far below a leak that
# matters (16 MiB a call is 16 GiB in a thousand-step loop).
HELD_MIN_BYTES = 1 << 20


class MemoryHeld(RuntimeError):
    """A benchmarked call kept memory after its outputs and gradients were freed, call after call."""

    def __init__(self, variant: str, first: int, second: int, device: str) -> None:
        how = "the CUDA allocator's live bytes" if str(device).startswith("cuda") else "glibc's bytes in use"
        super().__init__(
            f"{variant} keeps memory after each call: {second / 2**20:.1f} MiB more held once the call's outputs and "
            f"gradients were freed and garbage collected ({how}; {first / 2**20:.1f} MiB on the call before): memory "
            "that grows with every call (a cache or a list that keeps tensors), so a caller's loop fills the device "
            f"(the limit is {HELD_MIN_BYTES >> 20} MiB a call)")


def _poisoned_call(case: Case, step: Callable[[], Any], setup: Optional[Callable[[], None]], backward: bool,
                   device: str, collect: bool = False) -> Optional[int]:
    """One call of the step whose output and gradients are then filled with NaN and freed; returns the
    bytes the process holds more after it than before it (None where :func:`memory.held_bytes`
    cannot tell), its setup excluded.

    The checked call after it allocates the same sizes in the same order, so the allocator hands it
    these blocks and an element it never writes reads NaN. Without this call such an element held
    what the last timed call, or another variant's call on the same inputs, had left there: the right
    value, so a kernel that never wrote its last query row was benchmarked ``ok`` after a correct
    variant of the same problem (found by a first-time user's trial).

    What it holds after: a variant that kept 16 MiB per call had been benchmarked ``ok`` with no word
    (a hostile-kernel trial). The garbage collector is off during the call, so cycles of earlier calls
    freed in the middle cannot hide what this one keeps (they had read a 4 MiB leak as 0.8 MiB on the
    CPU); with ``collect`` (the confirming call) it collects before and after, so the reading is this
    call's alone, cycles of its own included. A backward's reading is its setup's forward activations
    freed, less what it keeps: a leak in the forward shows in the fwd and fwd+bwd cases.
    """
    if setup is not None:
        setup()
    if collect:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _held_by(case, step, backward, device, collect)
    finally:
        if enabled:
            gc.enable()


def _held_by(case: Case, step: Callable[[], Any], backward: bool, device: str, collect: bool) -> Optional[int]:
    """The body of :func:`_poisoned_call`, under its garbage-collector setting."""
    before = memory.held_bytes(device)
    out = step()
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    grads = [g for g in case.grads().values() if g is not None] if backward else []
    # a gradient may alias the output gradient (a variant returning a view of q passes it through as
    # dq): filled with NaN, that shared tensor had failed every later case of the problem in this worker
    owned = list(caller_tensors(case).values())
    if case.module is not None:
        owned += [*case.module.parameters(), *case.module.buffers()]
    memory.poison_tensors([*outs, *grads], owned)
    del out, outs, grads
    case.zero_grads()
    if before is None:
        return None
    if collect:  # tensors in this call's reference cycles go at a collection, not at `del`
        gc.collect()
    after = memory.held_bytes(device)
    return None if after is None else after - before


BACKWARD_ONCE = "the backward cannot run again over one forward"
NO_GRAPH_DECLARED = "graph capture not tried (the variant's no_graph_capture)"


class InputsWritten(RuntimeError):
    """A benchmarked call wrote into its input tensors (the case's ``error``, said as such)."""


GRAD_OUT = "<output gradient>"  # caller_tensors' name for the case's output gradient


def caller_tensors(case: Case) -> dict[str, Any]:
    """The tensors a case hands its variant that are not the variant's to write: its inputs and the
    output gradient of its backward. The output gradient is the one tensor of them that the worker
    shares with every case of the problem (:class:`~attnsuite.case.DeviceInputs`; inputs are copied
    per case), so a write into it, or a NaN fill of a gradient aliasing it, reaches the cases after."""
    return {**case.inputs, GRAD_OUT: case.grad_out}


def input_marks(inputs: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """Per input tensor, (sum in float64, max, min): computed without a copy of the tensor, so a
    large case's memory is not doubled, and moved by any write a kernel makes in practice (a scale,
    a shift, a zeroing)."""
    out = {}
    with torch.no_grad():
        for name, t in inputs.items():
            if isinstance(t, torch.Tensor) and t.numel() and (t.is_floating_point() or t.is_complex()):
                x = t.detach()
                out[name] = (float(torch.sum(x, dtype=torch.float64)), float(x.amax()), float(x.amin()))
    return out


def changed_inputs(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """The inputs whose marks moved (a relative 1e-9 allows a reduction's last-bit noise)."""
    def same(a: float, b: float) -> bool:
        return a == b or (a != a and b != b) or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return [name for name, old in before.items()
            if name in after and not all(same(a, b) for a, b in zip(old, after[name]))]


def _device_call(case: Case, device: str, injected_s: float, mode: str,
                 repeat_backward: bool = True) -> tuple[Callable[[], Any], Optional[Callable[[], None]]]:
    """(the call device time measures, its untimed per-call setup or None) for a case's ``mode``:
    the same device work as the timed step, where possible in a form that runs again and again
    without a setup between calls, so a CUDA graph can capture it.

    fwd: the forward; decode: the step with a fresh copy of the prefilled cache as its setup (so
    kernel-sum). fwd+bwd: drop the gradients, forward, backward (dropping ``.grad`` is host
    work only). bwd: the forward runs once, here, untimed; each call drops the gradients and runs
    the backward over the retained autograd graph, so it launches the kernels the timed backward
    launches (no gradient accumulation: the gradients start from None as after the timed step's
    setup). Some backwards refuse a retained graph (torch.compile's donated buffers): with
    ``repeat_backward`` False, bwd is the timed step itself, a forward as its setup before each
    call, which only kernel-sum can measure.
    """
    delay = timing.make_delay(device, injected_s) if injected_s else None
    setup = None
    if mode in ("fwd", "decode") or (mode == "bwd" and not repeat_backward):
        step, setup = _step(case, mode)
    elif mode == "fwd+bwd":
        def step():
            case.zero_grads()
            out = case.forward()
            case.backward(out)
            return out
    else:
        case.zero_grads()
        with timing.capture_stream(device):  # the backward's kernels go where its forward's went
            out = case.forward()

        def step():
            case.zero_grads()
            case.backward(out, retain_graph=True)
            return out

    def call():
        result = step()
        if delay is not None:  # an injected slowdown is device work, so device time must see it
            delay()
        return result

    return call, setup


def _fill_device_time(rec: CaseRecord, dt: timing.DeviceTiming) -> None:
    rec.device_ms, rec.device_iqr_ms, rec.device_min_ms = dt.median_s * 1e3, dt.iqr_s * 1e3, dt.min_s * 1e3
    rec.device_method = dt.method
    if rec.median_ms is not None:
        rec.host_overhead_ms = rec.median_ms - rec.device_ms
    rec.extra.pop("device_time_pending", None)
    if dt.note:
        rec.extra["device_time_note"] = dt.note
    if dt.breakdown is not None:
        rec.extra["device_kernels"] = dt.breakdown


def _measure_device_time(rec: CaseRecord, case: Case, device: str, result: timing.Timing, mode: str) -> None:
    """Add the host-independent device time (and the host's overhead) to a CUDA record.

    Graph replay happens now. A step that needs the profiler (kernel-sum) is only marked
    ``extra["device_time_pending"]``: :func:`measure_deferred_device_time` measures it after every
    other case of the run, because the profiler slows the process's later launches.
    """
    if case.variant.no_graph_capture:  # kernel-sum, as a failed capture would end: not tried on every case
        rec.extra["device_time_pending"] = f"{NO_GRAPH_DECLARED}: {case.variant.no_graph_capture}"[:300]
        return
    try:
        call, setup = _device_call(case, device, result.injected_s, mode)
        config = dataclasses.replace(timing.DEVICE_DEFAULT, estimate_s=result.median_s)
        dt = timing.device_time(call, device, setup=setup, config=config, defer_kernel_sum=True)
    except timing.KernelSumDeferred as exc:
        rec.extra["device_time_pending"] = str(exc)
        return
    except Exception as exc:  # device time is an extra figure: its failure must not lose the case
        if mode == "bwd":  # the timed backward ran, so it is the retained graph that failed
            rec.extra["device_time_pending"] = f"{BACKWARD_ONCE} ({timing.first_line(exc)})"[:300]
        elif memory.is_oom(exc):  # a graph's private pool on top of the case's memory: try kernel-sum
            rec.extra["device_time_pending"] = f"out of memory measuring it with the case ({timing.first_line(exc)})"[:300]
        else:
            rec.extra["device_time_note"] = f"not measured: {exception_text(exc)}"[:300]
        exc = None  # its traceback holds the failed attempt's tensors
        _recover(device)
        return
    _fill_device_time(rec, dt)


def measure_deferred_device_time(bc: BenchCase, settings: Settings, rec: CaseRecord,
                                 on_error: Optional[Callable[[BaseException], None]] = None) -> CaseRecord:
    """Kernel-sum device time of a case whose record says ``device_time_pending`` (see above).

    The case is built again and warmed with a few calls, then profiled; the record gets the device
    fields (or a ``device_time_note`` saying why not). Never raises for the case's own failures;
    ``on_error`` sees the exception first (the worker asks whether it ran out of memory).
    """
    p = bc.problem
    why = rec.extra.get("device_time_pending", "")
    t0 = time.perf_counter()
    before = _dynamo_counts()
    _enter_problem(bc, settings)
    try:
        variant = registry.get(bc.variant or "")
        case = prepare(variant, p, requires_grad=has_backward(bc.mode), device_inputs=settings.device_inputs)
        injected = (rec.extra.get("injected_ms") or 0.0) / 1e3
        call, setup = _device_call(case, p.device, injected, bc.mode,
                                   repeat_backward=not why.startswith(BACKWARD_ONCE))
        # compiled kernels and autotuning were paid in the case's own run: one call re-warms (the
        # rebuilt inputs' memory, a recompile of a step that compiles itself), and the profiler's
        # session starts with an untimed call of its own (timing.profiled_calls)
        if setup is not None:
            setup()
        call()
        config = dataclasses.replace(timing.DEVICE_DEFAULT, estimate_s=(rec.median_ms or 0.0) / 1e3 or None)
        dt = timing.device_time(call, p.device, setup=setup, config=config, allow_graph=False)
        dt.note = why or dt.note
        _fill_device_time(rec, dt)
        # what dynamo did while the case was rebuilt and re-warmed here, late in the worker's life:
        # a step that compiles itself (uncompiled flex_attention) may recompile or hit the
        # recompile limit here and run other kernels than in its own run
        rec.extra["deferred_dynamo"] = _delta(before, _dynamo_counts())
    except Exception as exc:  # noqa: BLE001 - the figure is missing, the case's outcome stands
        if on_error is not None:
            on_error(exc)
        rec.extra.pop("device_time_pending", None)
        rec.extra["device_time_note"] = f"not measured ({why}): {exception_text(exc)}"[:300]
        exc = None  # its traceback holds the case's tensors
        case = None
        _recover(p.device)  # a failure may leave cycles and a full allocator behind
    finally:
        case = None
        # its own phase: the deferred pass's cost per case (building the case again, warming, profiling)
        rec.extra.setdefault("suite_s", {})["deferred-device-time"] = round(time.perf_counter() - t0, 4)
    return rec
