"""Seeded input generation with realistic magnitudes.

Inputs are drawn in float64 from a NumPy generator seeded by the problem, rounded once to the
problem's dtype, and handed to the oracle as those rounded values, so that input rounding is never
counted as the variant's error. Values are standard normal (signed, never zero blocks, never
all-positive noise) with a per-token magnitude spread so some rows have peaked softmaxes.

The recipes (``draw_kernel``, ``draw_layer`` and the families' parameter recipes) take the
generator as an argument and use only ``standard_normal``, ``normal`` and ``uniform``, so the same
recipe also runs on a :class:`DeviceDraws`: the benchmarks' inputs for problems too large for the
float64 oracle, drawn on the device in milliseconds (the NumPy path takes 30 s for a 600M-value
layer). Those are the same shapes and scales, not the same values.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import torch

from .problem import LARGE_LOGITS, LARGE_LOGITS_QK, Problem

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a problem's dtype name."""
    return TORCH_DTYPES[name]


def _stream_key(problem: Problem, stream: str) -> str:
    p = problem
    return f"{p.batch}/{p.lq}/{p.lk}/{p.hq}/{p.hkv}/{p.dqk}/{p.dv}/{p.d_model}/{p.seed}/{stream}"


def rng_for(problem: Problem, stream: str) -> np.random.Generator:
    """A generator that depends on the shapes, the seed and the stream name, not on the dtype/device."""
    return np.random.default_rng(zlib.crc32(_stream_key(problem, stream).encode()))


class DeviceDraws:
    """The part of NumPy's ``Generator`` the recipes use, drawing float32 tensors on a torch device."""

    def __init__(self, seed: int, device: str):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def standard_normal(self, size) -> torch.Tensor:
        """N(0, 1) draws of shape ``size``."""
        return torch.randn(size, generator=self.generator, device=self.device, dtype=torch.float32)

    def normal(self, loc: float, scale: float, size) -> torch.Tensor:
        """N(loc, scale^2) draws of shape ``size``."""
        return self.standard_normal(size).mul_(float(scale)).add_(float(loc))

    def uniform(self, low: float, high: float, size) -> torch.Tensor:
        """Uniform draws in [low, high) of shape ``size``."""
        u = torch.rand(size, generator=self.generator, device=self.device, dtype=torch.float32)
        return u.mul_(float(high - low)).add_(float(low))


def device_rng_for(problem: Problem, stream: str) -> DeviceDraws:
    """Like :func:`rng_for`, but drawing on the problem's device (other values, same recipe)."""
    return DeviceDraws(zlib.crc32(_stream_key(problem, stream).encode()), problem.device)


def finish(arrays: dict, problem: Problem) -> dict:
    """Drawn arrays in their final form: NumPy ones rounded to the dtype and frozen, tensors cast."""
    out = {}
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            out[name] = a.to(torch_dtype(problem.dtype))
        else:
            out[name] = round_to(a, problem.dtype)
            out[name].setflags(write=False)
    return out


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to ``dtype`` and back, so both sides see the same numbers."""
    return torch.from_numpy(array).to(torch_dtype(dtype)).to(torch.float64).numpy()


def normal(rng, shape: tuple[int, ...]):
    """Standard normal draws (float64 from NumPy, float32 from :class:`DeviceDraws`)."""
    return rng.standard_normal(shape)


def realistic(rng, shape: tuple[int, ...], token_axis: int):
    """Standard normal values, each token scaled by a factor in about [0.5, 2]."""
    x = normal(rng, shape)
    scale_shape = [1] * len(shape)
    scale_shape[token_axis] = shape[token_axis]
    if len(shape) == 4:  # (b, h, l, d): vary per batch and token
        scale_shape[0] = shape[0]
    u = rng.uniform(-0.7, 0.7, size=scale_shape)
    return x * (u.exp() if isinstance(u, torch.Tensor) else np.exp(u))


def draw_kernel(rng, problem: Problem) -> dict:
    """The kernel inputs' recipe: q, k, v and the output gradient do, unrounded.

    A large-logits problem (``problem.LARGE_LOGITS``) has q and k ``LARGE_LOGITS_QK`` times larger.
    """
    p = problem
    qk = LARGE_LOGITS_QK if p.tag == LARGE_LOGITS else 1.0
    return {
        "q": realistic(rng, (p.batch, p.hq, p.lq, p.dqk), 2) * qk,
        "k": realistic(rng, (p.batch, p.hkv, p.lk, p.dqk), 2) * qk,
        "v": normal(rng, (p.batch, p.hkv, p.lk, p.dv)),
        "do": normal(rng, (p.batch, p.hq, p.lq, p.dv)),
    }


def draw_layer(rng, problem: Problem) -> dict:
    """The layer inputs' recipe: x and the output gradient dy of shape (batch, lq, d_model), unrounded."""
    if problem.d_model is None:
        raise ValueError(f"problem {problem.id} is not a layer problem (d_model is None)")
    shape = (problem.batch, problem.lq, problem.d_model)
    return {"x": realistic(rng, shape, 1), "dy": normal(rng, shape)}


# small: a full-tier problem holds ~1 GB of float64 inputs; callers go problem by problem
@lru_cache(maxsize=8)
def kernel_inputs_np(problem: Problem):
    """Float64 (q, k, v, do) holding values exactly representable in the problem's dtype."""
    a = finish(draw_kernel(rng_for(problem, "qkv"), problem), problem)
    return a["q"], a["k"], a["v"], a["do"]


def kernel_inputs_device(problem: Problem):
    """(q, k, v, do) drawn on the problem's device in its dtype: benchmark inputs, not oracle inputs."""
    a = finish(draw_kernel(device_rng_for(problem, "qkv"), problem), problem)
    return a["q"], a["k"], a["v"], a["do"]


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
    a = finish(draw_layer(rng_for(problem, "x"), problem), problem)
    return a["x"], a["dy"]


def layer_inputs_device(problem: Problem):
    """(x, dy) drawn on the problem's device in its dtype: benchmark inputs, not oracle inputs."""
    a = finish(draw_layer(device_rng_for(problem, "x"), problem), problem)
    return a["x"], a["dy"]
