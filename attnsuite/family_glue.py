"""Glue shared by the families' registrations: their ``inputs`` (float64, and drawn on the device for
benchmarks) and the autograd run behind ``base``.

A family's ``base(problem)`` is plain math in the problem's own dtype and device with gradients
from autograd (see :class:`attnsuite.registry.Family`); :func:`autograd_base` is that run, given
the math as a function of fresh leaf tensors.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from .inputs import device_rng_for, finish, kernel_inputs_device, kernel_inputs_np, layer_inputs_device, layer_inputs_np, to_torch
from .problem import Problem


def kernel_family_inputs(problem: Problem) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A kernel family's inputs: ({"q", "k", "v"}, do), float64 and seeded by the problem."""
    q, k, v, do = kernel_inputs_np(problem)
    return {"q": q, "k": k, "v": v}, do


def layer_family_inputs(problem: Problem) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A layer family's inputs: ({"x"}, dy), float64 and seeded by the problem."""
    x, dy = layer_inputs_np(problem)
    return {"x": x}, dy


DeviceInputsFn = Callable[[Problem], tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]]


def device_kernel_inputs(problem: Problem) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict]:
    """A kernel family's ``device_inputs``: ({"q", "k", "v"}, do, no parameters) drawn on the device."""
    q, k, v, do = kernel_inputs_device(problem)
    return {"q": q, "k": k, "v": v}, do, {}


def device_layer_inputs(draw_params: Callable[[Any, Problem], dict], stream: Callable[[Problem], str]) -> DeviceInputsFn:
    """A layer family's ``device_inputs``: x, dy and the parameter recipe ``draw_params`` drawn on the device.

    ``stream(problem)`` names the recipe's seed stream (the one its float64 ``params`` use).
    """
    def device_inputs(problem: Problem):
        x, dy = layer_inputs_device(problem)
        params = finish(draw_params(device_rng_for(problem, stream(problem)), problem), problem)
        return {"x": x}, dy, params
    return device_inputs


def autograd_base(
    problem: Problem,
    fn: Callable[..., torch.Tensor],
    inputs: dict[str, Any],
    grad_out: Any,
    params: Optional[dict[str, Any]] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``fn`` on fresh leaf tensors in the problem's dtype and device, then backward with ``grad_out``.

    ``inputs`` (name -> float64 array) are passed to ``fn`` positionally, in order; ``params``, when
    given, follow as one dict of leaf tensors (name -> tensor). Returns the detached output and the
    gradients keyed by the input and parameter names.
    """
    leaves = {name: to_torch(a, problem, requires_grad=True) for name, a in inputs.items()}
    weights = {name: to_torch(a, problem, requires_grad=True) for name, a in (params or {}).items()}
    args = [*leaves.values(), weights] if params is not None else list(leaves.values())
    with torch.enable_grad():
        out = fn(*args)
        out.backward(to_torch(grad_out, problem))
    return out.detach(), {name: t.grad for name, t in {**leaves, **weights}.items()}
