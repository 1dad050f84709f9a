"""Seeded input generation with realistic magnitudes.

Inputs are drawn in float64 from a NumPy generator seeded by the problem, rounded once to the
problem's dtype, and handed to the oracle as those rounded values, so that input rounding is never
counted as the variant's error. Values are standard normal (signed, never zero blocks, never
all-positive noise) with a per-token magnitude spread so some rows have peaked softmaxes.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import torch

from .problem import Problem

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a problem's dtype name."""
    return TORCH_DTYPES[name]


def rng_for(problem: Problem, stream: str) -> np.random.Generator:
    """A generator that depends on the shapes, the seed and the stream name, not on the dtype/device."""
    key = f"{problem.batch}/{problem.lq}/{problem.lk}/{problem.hq}/{problem.hkv}/{problem.dqk}/{problem.dv}/{problem.d_model}/{problem.seed}/{stream}"
    return np.random.default_rng(zlib.crc32(key.encode()))


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to ``dtype`` and back, so both sides see the same numbers."""
    return torch.from_numpy(array).to(torch_dtype(dtype)).to(torch.float64).numpy()


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws in float64."""
    return rng.standard_normal(shape)


def realistic(rng: np.random.Generator, shape: tuple[int, ...], token_axis: int) -> np.ndarray:
    """Standard normal values, each token scaled by a factor in about [0.5, 2]."""
    x = normal(rng, shape)
    scale_shape = [1] * len(shape)
    scale_shape[token_axis] = shape[token_axis]
    if len(shape) == 4:  # (b, h, l, d): vary per batch and token
        scale_shape[0] = shape[0]
    return x * np.exp(rng.uniform(-0.7, 0.7, size=scale_shape))


# small: a full-tier problem holds ~1 GB of float64 inputs; callers go problem by problem
@lru_cache(maxsize=8)
def kernel_inputs_np(problem: Problem):
    """Float64 (q, k, v, do) holding values exactly representable in the problem's dtype."""
    p = problem
    rng = rng_for(p, "qkv")
    q = realistic(rng, (p.batch, p.hq, p.lq, p.dqk), 2)
    k = realistic(rng, (p.batch, p.hkv, p.lk, p.dqk), 2)
    v = normal(rng, (p.batch, p.hkv, p.lk, p.dv))
    do = normal(rng, (p.batch, p.hq, p.lq, p.dv))
    arrays = tuple(round_to(a, p.dtype) for a in (q, k, v, do))
    for a in arrays:
        a.setflags(write=False)
    return arrays


def to_torch(array: np.ndarray, problem: Problem, requires_grad: bool = False) -> torch.Tensor:
    """A fresh tensor on the problem's device and dtype holding ``array``'s values."""
    t = torch.from_numpy(np.array(array, dtype=np.float64, copy=True)).to(device=problem.device, dtype=torch_dtype(problem.dtype))
    return t.requires_grad_(requires_grad)


def kernel_inputs(problem: Problem, requires_grad: bool = False):
    """Fresh torch (q, k, v, do) for the problem; q, k, v require grad when asked."""
    q, k, v, do = kernel_inputs_np(problem)
    return (
        to_torch(q, problem, requires_grad),
        to_torch(k, problem, requires_grad),
        to_torch(v, problem, requires_grad),
        to_torch(do, problem),
    )


@lru_cache(maxsize=8)
def layer_inputs_np(problem: Problem):
    """Float64 (x, dy) of shape (batch, lq, d_model) for layer problems, dtype-representable."""
    if problem.d_model is None:
        raise ValueError(f"problem {problem.id} is not a layer problem (d_model is None)")
    rng = rng_for(problem, "x")
    x = realistic(rng, (problem.batch, problem.lq, problem.d_model), 1)
    dy = normal(rng, (problem.batch, problem.lq, problem.d_model))
    arrays = (round_to(x, problem.dtype), round_to(dy, problem.dtype))
    for a in arrays:
        a.setflags(write=False)
    return arrays
