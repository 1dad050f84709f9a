"""Benchmark options, the case runner and the pytest-benchmark integration (measurement issue).

Every benchmark case is (workload, variant, mode, problem). :func:`run_case` turns one into a
:class:`~attnsuite.record.CaseRecord`: it builds the case with :func:`attnsuite.case.prepare` (what
is checked is what is timed; the build time is the mask-build time), times it with
:mod:`attnsuite.timing`, measures its peak memory with :mod:`attnsuite.memory`, reads which backend
ran from a profiled call and dynamo's counters, checks the output's numerics, and credits FLOPs
from :mod:`attnsuite.flops`. Skips, out-of-memory, numerics failures and errors are records too.

pytest-benchmark integration: the stats pytest-benchmark reports and writes are fed from the
suite's own device-correct samples (its stock clock would time only the launch on a GPU); the
record goes in ``extra_info``; cases without samples (skipped, out of memory, error) are added to
the JSON's ``benchmarks`` list by :func:`pytest_benchmark_update_json` with zero rounds, so they
never vanish from the results. The machine fingerprint goes in ``machine_info`` and at top level.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import torch

from . import flops as flopmod
from . import fingerprint, memory, registry, timing, tolerance, workloads
from .case import Case, DeviceInputs, prepare
from .inputs import torch_dtype
from .problem import Problem
from .record import MODES, CaseRecord

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


# ----------------------------------------------------------------------------------------- options

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnsuite-bench", "attention suite benchmarks")
    group.addoption("--attn-tier", choices=workloads.TIERS, default=None,
                    help="workload tier: quick (default on CPU) or full (default when CUDA is present)")
    group.addoption("--attn-device", default=None,
                    help="device to benchmark on: cpu or cuda[:i] (default: cuda when present, else cpu)")
    group.addoption("--attn-dtype", default=None, choices=("float32", "bfloat16", "float16", "float64"),
                    help="run every workload in this dtype (default: each entry's own; bf16 full, fp32 quick)")
    group.addoption("--attn-workload", action="append", default=[], metavar="NAME",
                    help=f"benchmark only these workloads (repeatable): {', '.join(workloads.WORKLOADS)}")
    group.addoption("--attn-mode", action="append", default=[], choices=MODES,
                    help="benchmark only these modes (repeatable): fwd, bwd, fwd+bwd")
    group.addoption("--attn-mem-cap", default=None, metavar="BYTES",
                    help="memory cap, e.g. 24GiB: on CUDA the allocator is capped so a large GPU stands in "
                         "for a smaller one; on CPU it is the out-of-memory guard's budget "
                         "(default: half of the available memory)")
    group.addoption("--attn-inject-slowdown", action="append", default=[], metavar="VARIANT=FRACTION",
                    help="make VARIANT really slower by FRACTION inside the timed region (GPU spin kernel / "
                         "CPU busy-wait); for measuring the gate's detection rate. Off by default")
    group.addoption("--attn-cpu-threads", type=int, default=1, metavar="N",
                    help="torch CPU threads while benchmarking on CPU (default 1: OpenMP threads spinning on a "
                         "shared or oversubscribed machine make CPU timings swing by 10x or more; 0 keeps "
                         "torch's default)")


def _fail_usage(message: str) -> None:
    raise pytest.UsageError(f"attnsuite: {message}")


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


def settings_from_config(config: pytest.Config) -> Settings:
    """Read and validate the benchmark options (errors name the option at fault)."""
    device = config.getoption("--attn-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail_usage(f"--attn-device {device}: no CUDA device on this machine")
    if device.split(":")[0] not in ("cpu", "cuda"):
        _fail_usage(f"--attn-device must be cpu or cuda[:i], got {device!r}")
    on_gpu = device.startswith("cuda")
    tier = config.getoption("--attn-tier") or ("full" if on_gpu else "quick")
    names = tuple(config.getoption("--attn-workload"))
    for name in names:
        if name not in workloads.WORKLOADS:
            _fail_usage(f"--attn-workload {name!r} is unknown; known: {', '.join(workloads.WORKLOADS)}")
    modes = tuple(config.getoption("--attn-mode")) or MODES
    cap = None
    if config.getoption("--attn-mem-cap"):
        try:
            cap = memory.parse_bytes(config.getoption("--attn-mem-cap"))
        except ValueError as exc:
            _fail_usage(f"--attn-mem-cap: {exc}")
    inject: dict[str, float] = {}
    for spec in config.getoption("--attn-inject-slowdown"):
        name, sep, frac = spec.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name or not 0 < value < 100:
            _fail_usage(f"--attn-inject-slowdown expects VARIANT=FRACTION with 0 < FRACTION, got {spec!r}")
        inject[name] = value
    if on_gpu:
        timer = timing.FULL_GPU
        guard = None
    else:
        timer = timing.QUICK_CPU if tier == "quick" else timing.TimerConfig(flush_l2=False, min_sample_s=0.0005)
        guard = memory.CpuGuard(cap if cap is not None else memory.default_cpu_budget())
    threads = config.getoption("--attn-cpu-threads")
    if threads < 0:
        _fail_usage(f"--attn-cpu-threads must be >= 0, got {threads}")
    return Settings(tier, device, config.getoption("--attn-dtype"), names, modes, cap, inject, timer, guard,
                    cpu_threads=threads if not on_gpu else 0)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # Validate the options up front (a bad one is a usage error before any collection); side effects
    # (thread count, GPU cap) wait for the first benchmark, so correctness runs are left alone.
    settings_from_config(config)


_SETTINGS = pytest.StashKey[Settings]()
_RUNNER = pytest.StashKey["BenchRunner"]()


def get_settings(config: pytest.Config) -> Settings:
    """The run's settings (read on first use, after the variants are loaded)."""
    if _SETTINGS not in config.stash:
        settings = settings_from_config(config)
        for name in settings.inject:
            try:
                registry.get(name)
            except registry.UnknownVariantError as exc:
                _fail_usage(f"--attn-inject-slowdown: {exc}")
        if settings.mem_cap is not None and settings.device.startswith("cuda"):
            memory.set_gpu_cap(settings.mem_cap, settings.device)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        config.stash[_SETTINGS] = settings
    return config.stash[_SETTINGS]


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


def bench_cases(config: pytest.Config) -> list[BenchCase]:
    """Every (workload entry, variant, mode) of the chosen tier after the command-line filters."""
    from .plugin import selected_variants  # the --attn-only filter lives with the main plugin

    settings = get_settings(config)
    chosen = {v.name for v in selected_variants(config)}
    only_given = bool(config.getoption("--attn-only"))
    cases = []
    for ex in workloads.expand(settings.tier, settings.device, settings.dtype, settings.workloads):
        entry = ex.entry
        family_variants = [v.name for v in registry.variants(family=entry.family)]
        modes = [m for m in entry.modes if m in settings.modes]
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
    if not parts:
        parts.append("eager")
    relevant = [n for n in op_names if "attention" in n.lower() or any(m in n for m in COMPILED_MARKERS)]
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


def _expected_shape(problem: Problem) -> tuple[int, ...]:
    if problem.d_model is not None:
        return (problem.batch, problem.lq, problem.d_model)
    return (problem.batch, problem.hq, problem.lq, problem.dv)


def oracle_checks(problem: Problem, oracle_limit: int = ORACLE_LIMIT) -> bool:
    """Is the problem small enough (score elements b*hq*lq*lk) for the benchmarks' float64 oracle check?"""
    return problem.batch * problem.hq * problem.lq * problem.lk <= oracle_limit


def check_numerics(case: Case, mode: str, out: torch.Tensor, oracle_limit: int) -> tuple[Optional[str], str]:
    """(failure message or None, which check ran) for a benchmarked output (and gradients)."""
    p = case.problem
    expected = _expected_shape(p)
    if tuple(out.shape) != expected or out.dtype != torch_dtype(p.dtype):
        return (f"output is {tuple(out.shape)} {out.dtype}, the contract says {expected} {torch_dtype(p.dtype)}",
                "contract")
    rows = None
    cheap = oracle_checks(p, oracle_limit)
    if cheap and case.variant.family == "attention":
        from .oracle_mask import allowed
        rows = allowed(p).any(axis=1)
    finite = torch.isfinite(out if rows is None else out[..., torch.as_tensor(rows, device=out.device), :])
    if not bool(finite.all()):
        return f"output has {int((~finite).sum())} NaN/Inf values", "finite"
    if mode != "fwd":
        for name, g in case.grads().items():
            if name in case.inputs and g is None:
                return f"no gradient reached input {name}", "finite"
            if g is not None and not bool(torch.isfinite(g).all()):
                return f"gradient {name} has NaN/Inf values", "finite"
    if not cheap:
        return None, "finite (too large for the float64 oracle)"
    family = registry.family_of(case.variant)
    key = (family.name, p)
    if key not in _REF_CACHE:
        if len(_REF_CACHE) >= 16:
            _REF_CACHE.pop(next(iter(_REF_CACHE)))
        _REF_CACHE[key] = (family.reference(p)[0], tolerance.as_float64(family.base(p)[0]))
    ref, base = _REF_CACHE[key]
    comp = tolerance.compare("output", out, ref, base, p.dtype, "output", rows=rows)
    return (None if comp.passed else comp.describe()), "oracle"


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
    reasons = variant.unsupported(p, backward=bc.mode != "fwd")
    if reasons:
        return _skip(rec, "; ".join(reasons)), None
    if variant.compiled:
        why = bc.entry.compiled_skip_reason(variant.name, bc.mode, settings.tier)
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
    case = None
    phases: dict[str, float] = {}  # where the suite's own time went (seconds), for suite-speed work
    clock = _PhaseClock(phases)
    problem_key = (bc.entry.family, p)
    if settings.current_problem != problem_key:
        # a new problem: free what the last one left (cycles, cached blocks) before its inputs load
        memory.recover(p.device)
        settings.current_problem = problem_key
        clock.lap("recover")
    try:
        case = prepare(variant, p, requires_grad=bc.mode != "fwd", device_inputs=settings.device_inputs)
        clock.lap("prepare")
        rec.extra["inputs"] = "drawn on the device" if settings.device_inputs.drawn_on_device else "float64 recipe"
        rec.mask_build_ms = case.build_seconds * 1e3
        step, setup = _step(case, bc.mode)
        before = _dynamo_counts()
        result = timing.measure(step, p.device, settings.timer, setup=setup,
                                inject_fraction=settings.inject.get(variant.name, 0.0))
        clock.lap("timing")
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

        # one more call serves peak memory, the op names that tell the backend, and the numerics check
        if setup is not None:
            setup()
        out, mem = memory.measure_peak(step, p.device)
        rec.peak_mem_bytes, rec.mem_method = mem.peak_bytes, mem.method
        dyn = _delta(before, _dynamo_counts())
        rec.backend, facts = detect_backend(mem.op_names, variant, dyn)
        rec.extra.update(facts)
        rec.extra["dynamo"] = dyn
        if variant.fused:
            rec.materialises = memory.materialises(rec.peak_mem_bytes, p, bc.mode)
        rec.extra["score_matrix_bytes"] = memory.score_matrix_bytes(p)
        clock.lap("memory+backend")

        # numerics sanity of what was benchmarked: that call's output (and gradients, backward modes)
        problem_msg, check = check_numerics(case, bc.mode, out.detach(), settings.oracle_limit)
        rec.extra["numerics_check"] = check
        if problem_msg:
            rec.outcome, rec.detail = "numerics", problem_msg
        del out
        clock.lap("numerics")
    except Exception as exc:  # the case's failure is its outcome; the run goes on
        failed = True
        if memory.is_oom(exc):
            text = f"{type(exc).__name__}: {exc}"
            rec.outcome, rec.oom_bytes = "oom", memory.parse_oom_bytes(str(exc))
            rec.detail = text.splitlines()[0][:400]
        else:
            rec.outcome, rec.detail = "error", f"{type(exc).__name__}: {exc}"[:1000]
        result = None
    finally:
        case = None
        if failed:  # the exception's traceback holds tensors in cycles; the allocator may be full
            memory.recover(p.device)
            clock.lap("recover")
    rec.extra["suite_s"] = {k: round(v, 4) for k, v in phases.items()}

    if result is not None:
        peak, source = settings.peak(p.device, p.dtype)
        rec.tflops, rec.pct_peak = flopmod.throughput(rec.flops or 0.0, result.median_s, peak)
        rec.extra["peak_tflops"], rec.extra["peak_source"] = peak, source
    return rec, result


# ------------------------------------------------------------------------ pytest-benchmark bridge

def feed_benchmark(benchmark, result: timing.Timing) -> None:
    """Put the suite's device-correct samples into pytest-benchmark's stats (one call per sample).

    pytest-benchmark 5.x has no public way to add externally timed samples; this uses the fixture's
    ``_make_stats`` (the same call its ``pedantic`` mode makes) and records the timer used.
    """
    if not hasattr(benchmark, "_make_stats"):
        raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._make_stats; attnsuite needs 5.x")
    benchmark._mode = "attnsuite device timer"
    stats = benchmark._make_stats(1)
    stats.options["timer"] = result.timer
    stats.options["warmup"] = result.warmup_calls
    for sample in result.samples_s:
        stats.update(sample)


def mark_unmeasured(benchmark) -> None:
    """Register a case without samples so pytest-benchmark writes its JSON even if no case had any.

    The stats entry stays empty and is flagged ``has_error`` so pytest-benchmark itself neither
    shows nor serialises it; :func:`pytest_benchmark_update_json` writes the record instead.
    """
    benchmark._mode = "attnsuite (no samples)"
    benchmark._make_stats(1)
    benchmark.has_error = True


@dataclass
class Landed:
    """A record and where it came from in the pytest run."""

    nodeid: str
    name: str
    param: Optional[str]
    group: str
    record: CaseRecord
    measured: bool


class BenchRunner:
    """Session object behind the ``attn_bench`` fixture: runs cases and keeps every record."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.settings = get_settings(config)
        self.landed: list[Landed] = []
        self._cases: Optional[dict[str, BenchCase]] = None

    def case(self, key: str) -> BenchCase:
        """The benchmark case with this key (the pytest parameter)."""
        if self._cases is None:
            self._cases = {c.id: c for c in bench_cases(self.config)}
        try:
            return self._cases[key]
        except KeyError:
            raise KeyError(f"no benchmark case {key!r} in this run's tier and filters") from None

    def run(self, bc: BenchCase, benchmark, request: pytest.FixtureRequest) -> CaseRecord:
        """Run a case, hand its samples and record to pytest-benchmark, and end the test accordingly."""
        rec, result = run_case(bc, self.settings)
        benchmark.group = bc.group
        benchmark.extra_info.update(rec.to_extra_info())
        measured = result is not None and bool(result.samples_s)
        if benchmark.enabled:
            if measured:
                feed_benchmark(benchmark, result)
            else:
                mark_unmeasured(benchmark)
        self.landed.append(Landed(request.node.nodeid, request.node.name, getattr(benchmark, "param", None),
                                  bc.group, rec, measured and benchmark.enabled))
        if rec.outcome == "skipped":
            pytest.skip(rec.detail)
        if rec.outcome == "oom":
            asked = f"{rec.oom_bytes / 2**30:.2f} GiB" if rec.oom_bytes else "unknown size"
            pytest.skip(f"out of memory (asked for {asked}): {rec.detail}")
        if rec.outcome in ("numerics", "error"):
            pytest.fail(f"{bc.id}: {rec.outcome}: {rec.detail}", pytrace=False)
        return rec


def _runner(config: pytest.Config) -> BenchRunner:
    if _RUNNER not in config.stash:
        config.stash[_RUNNER] = BenchRunner(config)
    return config.stash[_RUNNER]


@pytest.fixture(scope="session")
def attn_bench(request: pytest.FixtureRequest) -> BenchRunner:
    """The session's benchmark runner (options read, memory cap applied)."""
    return _runner(request.config)


@pytest.fixture(scope="session")
def attn_settings(request: pytest.FixtureRequest) -> Settings:
    """The benchmark settings of this run."""
    return get_settings(request.config)


# ---------------------------------------------------------------------------------------- JSON

def _empty_stats() -> dict[str, Any]:
    fields = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "ops", "total")
    stats: dict[str, Any] = {name: 0.0 for name in fields}
    stats.update({"rounds": 0, "iterations": 1, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0", "data": []})
    return stats


def _fingerprint(config: pytest.Config) -> dict[str, Any]:
    key = "_attnsuite_fingerprint"
    cached = getattr(config, key, None)
    if cached is None:
        settings = get_settings(config)
        info = fingerprint.machine_info(settings.device)
        cached = {"id": info["id"], "info": info}
        setattr(config, key, cached)
    return cached


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    fp = _fingerprint(config)
    machine_info["attnsuite_fingerprint_id"] = fp["id"]
    machine_info["attnsuite_fingerprint"] = fp["info"]


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    runner = config.stash.get(_RUNNER, None)
    settings = config.stash.get(_SETTINGS, None)
    fp = _fingerprint(config)
    output_json["attnsuite"] = {
        "schema": 1,
        "fingerprint_id": fp["id"],
        "fingerprint": fp["info"],
        "tier": settings.tier if settings else None,
        "device": settings.device if settings else None,
        "torch_threads": torch.get_num_threads(),
        "mem_cap_bytes": settings.mem_cap if settings else None,
        "inject_slowdown": dict(settings.inject) if settings else {},
        "peaks_tflops": {f"{d}/{t}": {"value": v, "source": s} for (d, t), (v, s) in (settings.peaks.items() if settings else [])},
        "outcomes": {},
    }
    if runner is None:
        return
    present = {b.get("fullname") for b in output_json.get("benchmarks", [])}
    for landed in runner.landed:
        if landed.nodeid in present:
            continue
        output_json["benchmarks"].append({
            "group": landed.group,
            "name": landed.name,
            "fullname": landed.nodeid,
            "params": {"bench_case": landed.record.key},
            "param": landed.param,
            "extra_info": landed.record.to_extra_info(),
            "options": {"timer": "none (no samples: " + landed.record.outcome + ")"},
            "stats": _empty_stats(),
        })
    counts: dict[str, int] = {}
    for landed in runner.landed:
        counts[landed.record.outcome] = counts.get(landed.record.outcome, 0) + 1
    output_json["attnsuite"]["outcomes"] = counts


# ------------------------------------------------------------------------------- terminal summary

def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def summary_lines(records: list[CaseRecord]) -> list[str]:
    """A compact table per workload: variant, mode, problem, outcome, ms, TFLOP/s, % peak, MiB, backend."""
    lines = []
    header = f"{'variant':<22} {'mode':<8} {'outcome':<8} {'median ms':>10} {'iqr ms':>8} {'TFLOP/s':>8} " \
             f"{'%peak':>6} {'peak MiB':>9} {'fused L^2?':>10}  backend"
    by_workload: dict[str, list[CaseRecord]] = {}
    for rec in records:
        by_workload.setdefault(rec.workload, []).append(rec)
    for name, recs in by_workload.items():
        problems = sorted({r.problem for r in recs})
        for problem in problems:
            lines.append(f"{name}  {problem}")
            lines.append("  " + header)
            for r in sorted((r for r in recs if r.problem == problem), key=lambda r: (r.mode, r.variant)):
                mib = None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20
                mat = "-" if r.materialises is None else ("YES" if r.materialises else "no")
                lines.append(
                    f"  {r.variant:<22} {r.mode:<8} {r.outcome:<8} {_fmt(r.median_ms, '10.4f')} "
                    f"{_fmt(r.iqr_ms, '8.4f')} {_fmt(r.tflops, '8.4f')} {_fmt(r.pct_peak, '6.1f')} "
                    f"{_fmt(mib, '9.2f')} {mat:>10}  {r.backend}"
                )
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER, None)
    if runner is None or not runner.landed:
        return
    terminalreporter.section("attnsuite measurements")
    for line in summary_lines([landed.record for landed in runner.landed]):
        terminalreporter.write_line(line)
