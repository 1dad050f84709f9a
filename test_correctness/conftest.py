"""Correctness-run configuration: device and dtypes, the hypothesis profiles, the build cache."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import hypothesis.configuration
import pytest
import torch
from hypothesis import HealthCheck, settings

from attnsuite.triton_support import choose_mode

# GPU runs compile dozens of (head dim, mask, dtype) keys: one tile config each, no autotune sweep.
os.environ.setdefault("ATTNSUITE_TRITON_AUTOTUNE", "0")

# Hypothesis keeps its files (examples, constants) in this checkout's .hypothesis/, not in the folder the
# run was started from: run from a kernel author's own project, it had left a .hypothesis/ there.
_home = getattr(hypothesis.configuration, "set_hypothesis_home_dir", None)
if _home is not None:
    _home(Path(__file__).resolve().parents[1] / ".hypothesis")

# "ci" bounds hypothesis so the CPU run stays within budget; "dev" digs deeper locally.
settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILES = ("ci", "dev")


def _load_profile() -> None:
    # an unknown name had surfaced as an ImportError traceback of this conftest
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in PROFILES:
        raise pytest.UsageError(f"HYPOTHESIS_PROFILE={name!r}: no such hypothesis profile here "
                                f"(this suite has {', '.join(PROFILES)}: ci bounds the drawn problems, dev digs deeper)")
    settings.load_profile(name)

CPU_DTYPES = ("float32", "float64", "bfloat16")
# fp32 runs on CUDA too (TF32 off): a scale a few percent off can hide inside the bf16 rule, not fp32's.
CUDA_DTYPES = ("float16", "bfloat16", "float32")


def correctness_device(config: pytest.Config) -> str:
    """--attn-device if given, else cpu (the GPU run passes --attn-device cuda)."""
    return config.getoption("--attn-device", default=None) or "cpu"


def correctness_dtypes(config: pytest.Config, device: str) -> tuple:
    """--attn-dtype values if given, else the device's default set."""
    chosen = config.getoption("--attn-dtype", default=None)
    if chosen:
        return tuple(chosen) if isinstance(chosen, (list, tuple)) else (chosen,)
    return CUDA_DTYPES if device.startswith("cuda") else CPU_DTYPES


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _load_profile()
    # Triton takes CPU tensors only in its interpreter, chosen at triton's first import (torch._dynamo
    # imports it while the plugin loads the variants, in the plugin's pytest_configure): decide
    # before that, from the device this run checks, not from whether a GPU is present.
    choose_mode(correctness_device(config))

    # fp32 on CUDA means fp32: TF32 would be a silent precision drop the fp32 bound would flag
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _left_out(config: pytest.Config) -> list[str]:
    from attnsuite import registry

    device = correctness_device(config)
    return [f"attnsuite: {line}" for line in registry.problems_left_out(device, correctness_dtypes(config, device))]


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """Added problems (--attn-problems, add_problems) that this run's dtypes leave without a test."""
    return _left_out(config) or None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for line in _left_out(config):  # again at the end: the header has scrolled away by then
        terminalreporter.write_line(line)
    for line in config.stash.get(_UNEXERCISED, []):
        terminalreporter.write_line(line, yellow=True)


_UNEXERCISED = pytest.StashKey[list]()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_UNEXERCISED] = unexercised_defects(session.items)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    group_variant_checks(items)


def group_variant_checks(items: list) -> None:
    """Put test_variants.py's tests in order of variant, then problem, then check, in the places its
    tests held: collected, they run check by check (every forward test, then every backward one, ...),
    so under xdist the checks of one variant on one problem were spread over both workers, and each
    worker built, and compiled (dynamo traces even the uncompiled ``flex_attention`` per shape), what
    the other had already built. Together, they share one worker's build cache (worksteal hands out
    and steals runs of neighbouring tests), as in a run without xdist. Each check's order on one
    problem is unchanged: forward, backward, causality, repeat, backward-repeat, strided."""
    from .test_variants import CHECK_OF_TEST  # not at import: that module imports this one

    checks = list(CHECK_OF_TEST)
    places, ours = [], []
    for place, item in enumerate(items):
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "originalname", "") in CHECK_OF_TEST and getattr(params.get("variant"), "name", None):
            places.append(place)
            ours.append(item)
    variant_at: dict[str, int] = {}
    problem_at: dict[tuple, int] = {}
    for item in ours:
        params = item.callspec.params
        variant_at.setdefault(params["variant"].name, len(variant_at))
        problem_at.setdefault((params["variant"].name, params["problem"].id), len(problem_at))

    def key(item):
        variant, problem = item.callspec.params["variant"].name, item.callspec.params["problem"].id
        return variant_at[variant], problem_at[(variant, problem)], checks.index(item.originalname)

    for place, item in zip(places, sorted(ours, key=key)):
        items[place] = item


def unexercised_defects(items) -> list[str]:
    """A line per ``known_defects`` entry whose check this run selects for its variant but never runs
    as the declared expected failure (every such test skipped, or the entry's ``known_defect()``
    declining every problem): such an entry can neither fail nor clear, and had passed in silence
    (a fresh-user test declared a causality defect on a variant with no causal mask)."""
    from .test_variants import CHECK_OF_TEST  # not at import: that module imports this one

    seen: dict[tuple[str, str], list[int]] = {}  # (variant, check) -> [selected, exercised]
    for item in items:
        check = CHECK_OF_TEST.get(getattr(item, "originalname", ""))
        variant = getattr(getattr(item, "callspec", None), "params", {}).get("variant")
        if check is None or variant is None or check not in (getattr(variant, "known_defects", None) or {}):
            continue
        counts = seen.setdefault((variant.name, check), [0, 0])
        counts[0] += 1
        if item.get_closest_marker("skip") is None and any(m.kwargs.get("strict") for m in item.iter_markers("xfail")):
            counts[1] += 1
    return [f"attnsuite: known_defects[{check!r}] of {name}: none of the {n} {check} test(s) of this run "
            "exercises it (each is skipped, or known_defect() declines its problem): the entry can neither "
            "fail nor clear here" for (name, check), (n, exercised) in sorted(seen.items()) if not exercised]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--attn-rank-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="distributed checks: how long every rank of a variant may take to answer one call before it is "
        "called hung and the ranks are stopped (default 60 on CPU, 120 on CUDA); after a hang the variant's "
        "other distributed tests on that world size are skipped",
    )
    parser.addoption(
        "--attn-compiled-problems",
        type=int,
        default=None,
        help="on CPU, check torch.compile'd variants on only the first N of each family's own problems "
        "per dtype, and the large-logits ones of the first dtype (compiling costs 5-20 s per shape on 2 "
        "cores; default 2 on CPU, all on CUDA); problems added with --attn-problems are always checked",
    )


@pytest.fixture(scope="session")
def build_cache() -> dict:
    """Built variant functions/modules per (variant, problem), shared by the checks of a session."""
    return {}


def skip_if_nothing_ran(ran: int, declined: Counter, what: str) -> None:
    """Skip (never fail) a drawn-problem test in which every draw was a limitation the variants
    declared (``Variant.unsupported``): ``declined`` counts those reasons, the skip names them."""
    if ran == 0:
        reasons = "; ".join(f"{reason} ({n}x)" for reason, n in declined.most_common(3))
        pytest.skip(f"{what}: every drawn problem is a declared limitation: {reasons or 'none drawn'}")
