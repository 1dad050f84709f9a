"""Correctness-run configuration: device and dtypes, the hypothesis profiles, the build cache."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" bounds hypothesis so the CPU run stays within budget; "dev" digs deeper locally.
settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # fp32 on CUDA means fp32: TF32 would be a silent precision drop the fp32 bound would flag
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--attn-compiled-problems",
        type=int,
        default=None,
        help="on CPU, check torch.compile'd variants on only the first N problems of each family "
        "and dtype (compiling costs 5-20 s per shape on 2 cores; default 2 on CPU, all on CUDA)",
    )


@pytest.fixture(scope="session")
def build_cache() -> dict:
    """Built variant functions/modules per (variant, problem), shared by the checks of a session."""
    return {}
