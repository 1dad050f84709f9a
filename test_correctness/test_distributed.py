"""Distributed variants on P ranks, checked like every other variant (docs/distributed.md).

Each registered distributed variant runs on P ranks of one process group (gloo on CPU, NCCL on
CUDA); the ranks' output, log-sum-exp and dq/dk/dv shards are gathered and put through the
suite's own checks (attnsuite/checks.py, attnsuite/tolerance.py): forward, lse, backward,
causality by perturbation, repeat and backward-repeat, every element written. Ids read
``<variant>[P=<n>]@<problem>-<check>``. Mutants of the ring (a K/V block dropped, a merge with a
stale maximum, key positions off by one, a receive buffer kept from the first call, gradients added
into a buffer never cleared) must be caught, and a rank that hangs, dies or raises must come back as
an error naming the variant, the rank and the world size.

Device switch: ATTNSUITE_DIST_DEVICE=cuda (default cpu), ATTNSUITE_DIST_DTYPES=bfloat16,float16
(default: the problems' own dtypes), ATTNSUITE_DIST_WORLD=2 (default 2,3,4 on CPU, 2 on CUDA).
One pool of ranks per world size serves every test of that size (rank start-up is the cost).
"""

from __future__ import annotations

import os
import time
import types
from typing import Optional

import pytest
import torch

from attnsuite import checks, registry
from attnsuite.distributed.bench import scaling_efficiency
from attnsuite.distributed.check import CHECKS, OnRanks, run_check, skip_reason
from attnsuite.distributed.launch import HUNG, RankError, RankPool
from attnsuite.distributed.ring_attention import FAULTS, STATE_FAULTS
from attnsuite.distributed.run import call
from attnsuite.distributed.shard import contiguous, layout, validate, zigzag
from attnsuite.distributed.variant import DistributedVariant, refusal
from attnsuite.inputs import kernel_inputs
from attnsuite.isolation import OTHERS_NOT_RUN
from attnsuite.plugin import nothing_selected, selected_variants
from attnsuite.problem import Mask, Problem

# the built-in variants these tests are about: --attn-only keeps them when one of these is selected
pytestmark = pytest.mark.attn_variants("ring", "ring-zigzag")

registry.load_builtin()

DEVICE = os.environ.get("ATTNSUITE_DIST_DEVICE", "cpu")
_world = os.environ.get("ATTNSUITE_DIST_WORLD", "2,3,4" if DEVICE == "cpu" else "2")
WORLD_SIZES = tuple(int(p) for p in _world.split(",") if p.strip())
_dtypes = tuple(d for d in os.environ.get("ATTNSUITE_DIST_DTYPES", "").split(",") if d)
CAUSAL, CAUSAL_BR, NONE = Mask("causal"), Mask("causal", align="bottom_right"), Mask()


def _problems(device: str = DEVICE, dtypes: bool = True) -> list[Problem]:
    """Small shapes on CPU (even, uneven, GQA, Lq != Lk, fewer positions than chunks); small and medium on CUDA."""
    if device == "cpu":
        shapes = [
            dict(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=NONE, dtype="float32"),
            dict(batch=2, lq=23, lk=23, hq=4, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="float32"),  # GQA, uneven
            dict(batch=1, lq=13, lk=29, hq=2, hkv=1, dqk=16, dv=8, mask=CAUSAL_BR, dtype="float64"),  # Lq != Lk
            dict(batch=1, lq=32, lk=32, hq=2, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="bfloat16"),
            dict(batch=1, lq=5, lk=5, hq=2, hkv=2, dqk=8, dv=8, mask=CAUSAL, dtype="float32"),  # empty shards
            dict(batch=1, lq=22, lk=22, hq=12, hkv=12, dqk=8, dv=8, mask=CAUSAL, dtype="float32"),  # heads split by 2, 3, 4
        ]
    else:
        shapes = [
            dict(batch=1, lq=256, lk=256, hq=4, hkv=4, dqk=64, dv=64, mask=NONE, dtype="bfloat16"),
            dict(batch=1, lq=256, lk=256, hq=4, hkv=4, dqk=64, dv=64, mask=CAUSAL, dtype="float16"),
            dict(batch=2, lq=1000, lk=1000, hq=8, hkv=2, dqk=128, dv=128, mask=CAUSAL, dtype="bfloat16"),  # uneven, GQA
            dict(batch=1, lq=1024, lk=1024, hq=8, hkv=8, dqk=128, dv=128, mask=CAUSAL, dtype="bfloat16"),
            dict(batch=1, lq=1024, lk=1024, hq=8, hkv=8, dqk=128, dv=128, mask=NONE, dtype="float16"),
        ]
    out = [Problem(device=device, **s) for s in shapes]
    if _dtypes and dtypes:  # ATTNSUITE_DIST_DTYPES
        out = [p.with_(dtype=d) for p in out for d in _dtypes]
    return list(dict.fromkeys(out))


# PyTorch's context_parallel on CPU: seen to refuse (no sharding strategy for the CPU SDPA op) and,
# on some shapes, to hang in its collectives until our timeout; one problem shows the reason seen.
CP_CPU_PROBE = Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="float32")


def _cases(config: pytest.Config):
    """(variant, P, problem, check) for the distributed variants the run selects (``--attn-only``)."""
    for P in WORLD_SIZES:
        for variant in selected_variants(config):
            if not isinstance(variant, DistributedVariant):
                continue
            problems = _problems()
            if DEVICE == "cpu" and variant.name.startswith("context-parallel"):
                problems = [CP_CPU_PROBE]
            for problem in problems:
                for check in CHECKS:
                    yield pytest.param(variant.name, P, problem, check, id=f"{variant.name}[P={P}]@{problem.id}-{check}")


# (variant, P) -> the test in which its ranks hung: each hang costs the whole rank timeout, so the
# variant's other tests on that world size are skipped with the reason (one test per variant and world
# size pays it, not every one: a hung variant had cost about 33 minutes with the default world sizes)
HUNG_IN: dict[tuple[str, int], str] = {}

# (variant, P, problem id) -> why its forward check was refused on those ranks: the problem's other
# checks each start with a forward call on it, so they are skipped with that reason instead of tried
# again (each try restarts the ranks: context_parallel's refusal on CPU cost 6-12 s a check on a
# 2-core machine, 2026-12-04). A refusal in another check says nothing of the forward and is not kept.
REFUSED_FORWARD: dict[tuple[str, int, str], str] = {}


def note_refusal(name: str, P: int, problem: Problem, check: str, reason: str,
                 refusals: dict = REFUSED_FORWARD) -> None:
    """Keep the reason of a refused forward check (only the forward's: see REFUSED_FORWARD)."""
    if check == "forward":
        refusals[(name, P, problem.id)] = reason


def refused_forward(name: str, P: int, problem: Problem, check: str, refusals: dict = REFUSED_FORWARD) -> Optional[str]:
    """The skip reason of a check whose problem's forward check was refused on P ranks, or None."""
    why = refusals.get((name, P, problem.id)) if check != "forward" else None
    return None if why is None else (f"{name} refused on {DEVICE} with P={P} in its forward check of this problem: "
                                     f"{why} (not tried again: this check starts with a forward call on it)")


def rank_timeout(config: pytest.Config) -> float:
    """``--attn-rank-timeout``, else 60 s on CPU and 120 s on CUDA."""
    given = config.getoption("--attn-rank-timeout")
    if given is not None and not given > 0:
        raise pytest.UsageError(f"--attn-rank-timeout {given:g}: expected a number of seconds above 0")
    return given if given is not None else (60.0 if DEVICE == "cpu" else 120.0)


@pytest.fixture(scope="module")
def pools(request):
    """One RankPool per world size, started on first use and shared by the module's tests."""
    made: dict[int, RankPool] = {}
    timeout_s = rank_timeout(request.config)

    def get(P: int) -> RankPool:
        gpus = torch.cuda.device_count() if DEVICE == "cuda" else 0
        if DEVICE == "cuda" and gpus < P:
            # NCCL runs one rank per GPU: a one-GPU runner of the GPU job skips, and says why
            pytest.skip(f"P={P} ranks on cuda need {P} GPUs; this host has {gpus}")
        if P not in made:
            made[P] = RankPool(P, DEVICE, timeout_s=timeout_s)
        return made[P]

    yield get
    for pool in made.values():
        pool.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ == "test_distributed_variant_on_P_ranks_passes_the_check":
        params = list(_cases(metafunc.config))
        metafunc.parametrize("name,P,problem,check", params or [nothing_selected(metafunc.config, 4)])


def test_distributed_variant_on_P_ranks_passes_the_check(name, P, problem, check, pools, request):
    variant = OnRanks(registry.get(name), pools(P))
    reason = skip_reason(check, variant, problem)
    if reason:
        pytest.skip(reason)
    if (name, P) in HUNG_IN:
        # in the isolation plugin's words (OTHERS_NOT_RUN): the end of the run then says why the variant's
        # dtypes went unchecked, not that no problem of them was selected (an outside tester's trial)
        pytest.skip(f"{name} hung on P={P} ranks in {HUNG_IN[(name, P)]}: {OTHERS_NOT_RUN} on P={P} "
                    "(--attn-rank-timeout sets how long ranks may take)")
    why = refused_forward(name, P, problem, check)
    if why:
        pytest.skip(why)
    seen = variant.inner.known_defect(check, problem)  # declared by the variant (Variant.known_defects)
    if seen:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"known defect of {name}: {seen}"))
    result = run_check(check, variant, problem)
    if not result.passed and refusal(result.message):
        note_refusal(name, P, problem, check, refusal(result.message))
        pytest.skip(f"{name} refused on {DEVICE} with P={P}: {refusal(result.message)}")
    if not result.passed and HUNG in result.message:
        HUNG_IN[(name, P)] = f"{problem.id}-{check}"
    if not result.passed:  # the check's own message: not pytest's rewrite of the test's source
        pytest.fail(result.message, pytrace=False)


@pytest.mark.parametrize("refused_in,asked,P,problem_id,expected", [
    ("forward", "backward", 2, "p1", "skip"), ("forward", "causality", 2, "p1", "skip"),
    ("forward", "forward", 2, "p1", "try"), ("forward", "backward", 3, "p1", "try"),
    ("forward", "backward", 2, "p2", "try"), ("backward", "causality", 2, "p1", "try"),
], ids=["same-problem-backward", "same-problem-causality", "the-forward-itself", "another-world-size",
        "another-problem", "refused-in-backward-only"])
def test_a_refused_forward_skips_that_problems_other_checks_on_that_world_size_and_nothing_else(
        refused_in, asked, P, problem_id, expected):
    refusals: dict = {}
    note_refusal("cp", 2, types.SimpleNamespace(id="p1"), refused_in, "no CPU op", refusals)
    why = refused_forward("cp", P, types.SimpleNamespace(id=problem_id), asked, refusals)
    if expected == "skip":
        assert why is not None and "no CPU op" in why and "not tried again" in why, why
    else:
        assert why is None, why


# ---- mutants: each must fail the checks --------------------------------------------------------
MUTANT_PROBLEM = Problem(batch=2, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="float32", device=DEVICE)


@pytest.mark.parametrize("sharding", ["ring", "ring-zigzag"])
@pytest.mark.parametrize("P", [p for p in (2, 3) if p in WORLD_SIZES] or list(WORLD_SIZES)[:1])
@pytest.mark.parametrize("fault", FAULTS)
def test_ring_mutant_is_caught_by_the_forward_check(fault, P, sharding, pools):
    honest = OnRanks(type(registry.get(sharding))(), pools(P))
    mutant = OnRanks(type(registry.get(sharding))(fault=fault), pools(P))
    assert run_check("forward", honest, MUTANT_PROBLEM).passed  # the problem itself is fine
    result = run_check("forward", mutant, MUTANT_PROBLEM)
    assert not result.passed, f"mutant {mutant.name} went unnoticed:\n{result.message}"
    assert "output: max error" in result.message and f"[mutant={fault}][P={P}]" in result.message


@pytest.mark.parametrize("fault", FAULTS)
def test_ring_mutant_is_caught_by_the_backward_check_too(fault, pools):
    P = WORLD_SIZES[0]
    mutant = OnRanks(type(registry.get("ring"))(fault=fault), pools(P))
    result = run_check("backward", mutant, MUTANT_PROBLEM)
    assert not result.passed and "grad " in result.message, result.message


# Mutants whose first call is right (state kept on the ranks, which outlive the variant's instances):
# every single-call check passes them, so each is caught by its repeat check (a fresh pool: the state
# is kept per rank process, and a first call must be the mutant's first)
STATE_MUTANT_CHECK = {"stale-block": ("repeat", "outside the built function"),
                      "kept-grads": ("backward-repeat", "the backward depends on earlier calls")}


@pytest.mark.parametrize("fault", STATE_FAULTS)
def test_ring_mutant_keeping_state_on_its_ranks_is_caught_by_the_repeat_checks(fault):
    P = WORLD_SIZES[0]
    pool = RankPool(P, DEVICE, timeout_s=60.0 if DEVICE == "cpu" else 120.0)
    try:
        mutant = OnRanks(type(registry.get("ring"))(fault=fault), pool)
        for single in ("forward", "backward"):  # one call each: the first is right
            assert run_check(single, mutant, MUTANT_PROBLEM).passed, single
        check, words = STATE_MUTANT_CHECK[fault]
        result = run_check(check, mutant, MUTANT_PROBLEM)
    finally:
        pool.close()
    assert not result.passed and words in result.message, result.message
    assert f"[mutant={fault}][P={P}]" in result.message


def test_a_mutant_needs_a_known_fault():
    with pytest.raises(ValueError, match="unknown fault 'late-merge'; known: drop-block, stale-max, shift-positions, "
                                         "stale-block, kept-grads"):
        type(registry.get("ring"))(fault="late-merge")


# ---- ranks that misbehave -------------------------------------------------------------------------
class _Misbehaving(DistributedVariant):
    """Rank 1 hangs, dies or raises; the other ranks answer at once. Not registered."""

    name = "misbehaving"

    def __init__(self, how: str) -> None:
        self.how = how

    def build_rank(self, problem, ctx):
        def run(q, k, v):
            if ctx.rank == 1:
                if self.how == "hang":
                    time.sleep(600)
                if self.how == "die":
                    os._exit(7)
                if self.how in ("float64", "meta"):  # an output of another dtype or on another device
                    return q.new_zeros((*q.shape[:3], problem.dv), dtype=torch.float64 if self.how == "float64"
                                       else q.dtype, device="meta" if self.how == "meta" else q.device), None
                raise ValueError("rank one disagrees")
            return q.new_zeros((*q.shape[:3], problem.dv)), None

        return run


@pytest.mark.parametrize("how,expected", [
    ("hang", r"misbehaving on .* with P=2: rank 1 of P=2 did not answer within 3 s \(hung\)"),
    ("die", r"misbehaving on .* with P=2: rank 1 of P=2 died \(exit code 7\)"),
    ("raise", r"misbehaving on .* with P=2: rank 1 of P=2 raised ValueError: rank one disagrees"),
])
def test_a_rank_that_hangs_dies_or_raises_is_an_error_naming_variant_rank_and_world_size(how, expected):
    if DEVICE != "cpu":
        pytest.skip("rank failures are exercised on CPU (gloo ranks start in milliseconds there)")
    problem = Problem(batch=1, lq=8, lk=8, hq=2, hkv=2, dqk=8, dv=8, dtype="float32")
    q, k, v, _ = kernel_inputs(problem)
    with RankPool(2, "cpu", timeout_s=3.0) as pool:
        with pytest.raises(RankError, match=expected):
            call(pool, _Misbehaving(how), problem, {"q": q, "k": k, "v": v})
        assert not pool.alive  # the ranks were stopped, not left behind
        got = call(pool, registry.get("ring"), problem, {"q": q, "k": k, "v": v})  # a fresh pool serves the next call
        assert pool.starts == 2 and got.out.isfinite().all()


@pytest.mark.parametrize("how,error,expected", [
    # rank 0's output set the gathered dtype and the others were converted to it: rank 1's float64 passed
    ("float64", ValueError, r"misbehaving on .* with P=2: rank 1 returned output in torch.float64, the problem's "
                            r"dtype is torch.float32"),
    # each rank's output came back to the parent on the CPU, whatever device it was on
    ("meta", RankError, r"rank 1 of P=2 raised ValueError: rank 1 returned its output on meta, its shards are on cpu"),
    # not picklable: the ranks never got the task, and had read as hung after the whole rank timeout
    ("local class", ValueError, r"misbehaving on .* with P=2: the variant cannot be sent to the ranks: "
                                r"(AttributeError|PicklingError): .*define its class at a module's top level"),
], ids=["another dtype on rank 1", "another device on rank 1", "not picklable"])
def test_a_rank_output_off_the_contract_or_a_variant_that_cannot_reach_the_ranks_is_named(how, error, expected):
    if DEVICE != "cpu":
        pytest.skip("exercised on CPU (gloo ranks start in milliseconds there)")
    problem = Problem(batch=1, lq=8, lk=8, hq=2, hkv=2, dqk=8, dv=8, dtype="float32")
    q, k, v, _ = kernel_inputs(problem)
    variant = _Misbehaving(how)
    if how == "local class":
        class Local(_Misbehaving):  # defined in a function: pickle cannot find it by name
            pass
        variant = Local("raise")
    started = time.monotonic()
    with RankPool(2, "cpu", timeout_s=30.0) as pool:
        with pytest.raises(error, match=expected):
            call(pool, variant, problem, {"q": q, "k": k, "v": v})
    assert time.monotonic() - started < 25  # said at once, not after the rank timeout


# ---- layouts, bytes, one-process behaviour, efficiency ---------------------------------------------
def test_zigzag_gives_rank_r_chunks_r_and_2P_minus_1_minus_r():
    assert zigzag(10, 2) == (((0, 3), (8, 10)), ((3, 6), (6, 8)))
    assert zigzag(3, 2) == (((0, 1),), ((1, 2), (2, 3)))  # chunks of 1, 1, 1, 0: the empty one left out
    assert contiguous(5, 3) == (((0, 2),), ((2, 4),), ((4, 5),))
    assert layout("zigzag", 7, 9, 3).kv == zigzag(9, 3)


def test_a_layout_that_misses_or_repeats_a_position_is_refused():
    with pytest.raises(ValueError, match="do not partition 0..5"):
        validate((((0, 3),), ((2, 6),)), 6, "test")
    with pytest.raises(ValueError, match="cover 0..4, not 0..5"):
        validate((((0, 3),), ((3, 5),)), 6, "test")
    with pytest.raises(ValueError, match="unknown sharding 'striped'"):
        layout("striped", 4, 4, 2)


def test_ring_sends_P_minus_1_kv_blocks_per_rank_forward(pools):
    P = WORLD_SIZES[0]
    pool = pools(P)  # first: it skips where the host has too few GPUs
    problem = Problem(batch=1, lq=8 * P, lk=8 * P, hq=2, hkv=1, dqk=16, dv=8, dtype="float32", device=DEVICE)
    q, k, v, _ = kernel_inputs(problem)
    got = call(pool, registry.get("ring"), problem, {"q": q, "k": k, "v": v})
    block = 1 * 1 * 8 * (16 + 8) * 4  # one rank's K and V shard, fp32, one kv head
    assert got.bytes_sent == [(P - 1) * block] * P


def test_in_one_process_a_distributed_variant_declines_and_says_where_it_runs():
    reason = checks.skip_reason("forward", registry.get("ring-zigzag"), MUTANT_PROBLEM)
    assert reason and "distributed variant" in reason and "test_distributed.py" in reason


@pytest.mark.parametrize("t1,p,tp,expected", [(1.0, 2, 0.5, 1.0), (1.0, 2, 0.625, 0.8), (3.0, 4, 1.0, 0.75)])
def test_scaling_efficiency_is_single_time_over_P_times_parallel_time(t1, p, tp, expected):
    assert scaling_efficiency(t1, p, tp) == pytest.approx(expected)


def test_scaling_efficiency_refuses_nonsense():
    with pytest.raises(ValueError, match="p must be a positive int"):
        scaling_efficiency(1.0, 0, 1.0)
    with pytest.raises(ValueError, match="times must be positive"):
        scaling_efficiency(1.0, 2, 0.0)


@pytest.mark.parametrize("check", ["forward", "lse", "backward", "causality"])
@pytest.mark.parametrize("sharding", ["ring", "ring-zigzag"])
def test_ring_plain_math_path_passes_where_the_fused_path_would_run(sharding, check, pools):
    problem = Problem(batch=2, lq=23, lk=23, hq=4, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="float32", device=DEVICE)
    P = WORLD_SIZES[-1]
    variant = OnRanks(type(registry.get(sharding))(fused=False), pools(P))
    assert variant.name == f"{sharding}[math][P={P}]"
    result = run_check(check, variant, problem)
    assert result.passed, result.message


def test_the_lse_check_run_directly_on_a_variant_without_one_says_it_declares_none(pools):
    # the pytest path skips it (skip_reason); called directly it had said "declares returns_lse but returned none"
    problem = Problem(batch=1, lq=16, lk=16, hq=4, hkv=4, dqk=16, dv=16, dtype="float32", device=DEVICE)
    variant = OnRanks(registry.get("ulysses"), pools(WORLD_SIZES[0]))
    assert skip_reason("lse", variant, problem) == "ulysses does not return a log-sum-exp"
    result = run_check("lse", variant, problem)
    assert not result.passed and "ulysses does not declare returns_lse" in result.message, result.message


def test_fused_kernels_are_used_only_where_they_compute_the_same_function():
    import torch

    from attnsuite.distributed.ring_attention import fused_allowed

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fused_allowed(MUTANT_PROBLEM, cpu)
    assert not fused_allowed(MUTANT_PROBLEM, cuda)  # fp32 on CUDA: flash has no fp32 kernel
    assert fused_allowed(MUTANT_PROBLEM.with_(dtype="bfloat16"), cuda)
    assert not fused_allowed(MUTANT_PROBLEM.with_(mask=Mask("window", window=3)), cpu)
    assert not fused_allowed(MUTANT_PROBLEM.with_(dv=8), cpu)
    assert not fused_allowed(MUTANT_PROBLEM.with_(dtype="float64"), cpu)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_run_distributed_case_reports_slowest_rank_memory_and_bytes(mode, pools):
    from attnsuite import timing
    from attnsuite.distributed.bench import run_distributed_case

    P = WORLD_SIZES[0]
    problem = Problem(batch=1, lq=16 * P, lk=16 * P, hq=2, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="float32", device=DEVICE)
    rec = run_distributed_case("ring-zigzag", problem, mode, P, timing.QUICK_CPU, pool=pools(P), samples=3)
    assert rec["outcome"] == "ok", rec["detail"]
    assert rec["time_s"] == max(rec["rank_median_s"]) and len(rec["rank_median_s"]) == P
    assert rec["sharding"] == "zigzag" and rec["bytes_estimated"] is False
    kv_block = 2 * 2 * 8 * 16 * 4 * 2  # K and V, 2 heads, 2 zigzag chunks of 8 rows (P=2), d 16, fp32
    fwd_bytes = (P - 1) * kv_block
    # fwd+bwd: the forward's P - 1 hops; the backward starts from the block the forward ended with and
    # ends on its own, so P - 2 K/V hops, and P - 1 hops of fp32 dK/dV (fp32 problem: a K/V block's size)
    bwd_bytes = max(P - 2, 0) * kv_block + (P - 1) * kv_block
    assert rec["bytes_sent_per_rank"] == [fwd_bytes if mode == "fwd" else fwd_bytes + bwd_bytes] * P
    assert (rec["peak_bytes_per_rank"] == [None] * P) == (DEVICE == "cpu")


def test_run_distributed_case_skips_what_the_variant_declines(pools):
    from attnsuite import timing
    from attnsuite.distributed.bench import run_distributed_case

    problem = Problem(batch=1, lq=8, lk=8, hq=3, hkv=3, dqk=8, dv=8, dtype="float32", device=DEVICE)
    rec = run_distributed_case("ulysses", problem, "fwd", 2, timing.QUICK_CPU, pool=pools(2))
    assert rec["outcome"] == "skip" and "hq=3 is not a multiple of P=2" in rec["detail"]
    assert run_distributed_case("ring", problem, "bwd", 2, timing.QUICK_CPU)["outcome"] == "skip"


@pytest.mark.parametrize("P,start", [(2, "forkserver"), (3, "forkserver"), (2, "spawn")])
def test_the_documented_example_variant_passes_every_check_on_P_ranks(P, start, monkeypatch):
    # "spawn" is how ranks start on a host with an accelerator, "forkserver" on one without
    # (launch.start_method): either way the ranks load the example file again, under the parent's
    # module name, and its backward works there too
    from pathlib import Path

    from attnsuite.distributed import launch

    monkeypatch.setattr(launch, "accelerator_present", lambda: start == "spawn")
    registry.load_external(str(Path(__file__).resolve().parents[1] / "examples" / "distributed_variant.py"))
    example = registry.get("example-gather-kv")
    problem = Problem(batch=2, lq=24, lk=24, hq=4, hkv=2, dqk=16, dv=16, mask=CAUSAL, dtype="float32")
    # every CPU problem of the built-ins too (a spawned start once: it costs seconds): the example
    # had passed on this GQA problem alone while its dK was wrong wherever hq == hkv
    problems = [problem] + (_problems("cpu", dtypes=False) if start != "spawn" else [])
    checked = []
    with RankPool(P, "cpu", timeout_s=30.0) as pool:  # started after the load, so the ranks know the class
        assert pool.start_method == start
        variant = OnRanks(example, pool)
        for p in problems:
            for check in CHECKS:
                if skip_reason(check, variant, p):
                    continue
                result = run_check(check, variant, p)
                assert result.passed, result.message
                checked.append((check, p.hq == p.hkv))
        assert ("backward", False) in checked
        if start != "spawn":
            assert ("backward", True) in checked, checked
        assert "lk=23 is not a multiple of P=2" in skip_reason("forward", OnRanks(example, RankPool(2)),
                                                              problem.with_(lq=23, lk=23))


@pytest.mark.parametrize("device,mask,check,expected", [
    ("cuda", CAUSAL, "backward", True),
    ("cuda", CAUSAL, "forward", False),  # its causal forward is right: still checked as a pass
    ("cuda", Mask("none"), "backward", False),
    ("cpu", CAUSAL, "backward", False),
])
def test_a_known_third_party_defect_is_expected_only_where_it_was_seen(device, mask, check, expected):
    problem = Problem(batch=1, lq=8, lk=8, hq=2, hkv=2, dqk=8, dv=8, mask=mask, dtype="bfloat16", device=device)
    assert bool(registry.get("context-parallel-efficient").known_defect(check, problem)) is expected
    assert registry.get("ring-zigzag").known_defect(check, problem) is None


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ring_backward_starts_from_the_forwards_last_block_and_ends_on_its_own(world_size):
    from attnsuite.distributed.ring_attention import backward_order

    for rank in range(world_size):
        order = backward_order(rank, world_size)
        assert sorted(order) == list(range(world_size)), "every block once"
        assert order[-1] == rank, "the own block last: its gathered dK/dV arrive while it is computed"
        # the forward's last step holds rank - (P - 1) = rank + 1's block: the backward needs no transfer first
        assert order[0] == (rank - (world_size - 1)) % world_size
        # each block goes from this rank to rank - 1, who visits it one step later
        for step in range(world_size - 1):
            assert backward_order((rank - 1) % world_size, world_size)[step + 1] == order[step]


@pytest.mark.parametrize("order", ["left-first", "right-first", "whole-then-halves"])
def test_online_softmax_merges_blocks_into_exact_softmax_whatever_rows_come_first(order):
    """The first block of a row range is copied in, later ones merged: the result is the softmax of
    all keys, and a row no block lets see any key comes out as 0 with lse -inf."""
    import torch

    from attnsuite.distributed.ring_attention import OnlineSoftmax

    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 2, 6, 10, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 10, 3, generator=g, dtype=torch.float64)
    s[..., 5, :] = float("-inf")  # row 5 sees no key at all
    state = OnlineSoftmax(1, 2, 6, 3, torch.float64, "cpu")

    def merge(rows: slice, keys: slice) -> None:
        blk = s[..., rows, keys]
        m_b = blk.amax(-1)
        p = torch.exp(blk - torch.where(torch.isfinite(m_b), m_b, torch.zeros_like(m_b)).unsqueeze(-1))
        state.merge(m_b, p.sum(-1), p @ v[..., keys, :], rows)

    halves = [(slice(0, 3), slice(0, 4)), (slice(3, 6), slice(0, 4)), (slice(0, 3), slice(4, 10)),
              (slice(3, 6), slice(4, 10))]
    steps = {"left-first": halves, "right-first": halves[2:] + halves[:2],
             "whole-then-halves": [(slice(None), slice(0, 4)), (slice(0, 3), slice(4, 10)), (slice(3, 6), slice(4, 10))]}
    for rows, keys in steps[order]:
        merge(rows, keys)
    out, lse = state.result()
    live = torch.isfinite(s).any(-1)
    expected = torch.where(live.unsqueeze(-1), torch.softmax(s, -1).nan_to_num() @ v, torch.zeros(()))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse[live], torch.logsumexp(s, -1)[live], rtol=1e-12, atol=1e-12)
    assert torch.isneginf(lse[~live]).all() and (out[~live.unsqueeze(-1).expand_as(out)] == 0).all()
