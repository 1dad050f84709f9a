"""One runnable case: a variant built for a problem, with its inputs on the device.

The correctness checks and the benchmarks both go through :func:`prepare`, so what is checked is
exactly what is timed. Building (mask construction, module set-up) happens in ``prepare`` and is
timed apart (``build_seconds``); the first call (compilation, autotuning) is the caller's to time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import registry
from .inputs import to_torch
from .problem import Problem
from .registry import KernelVariant, LayerVariant, Variant


class OutputContractError(TypeError):
    """A variant's output is not what the contract says (not a tensor, or of another shape)."""


@dataclass
class Case:
    """A built variant, its leaf inputs (and parameters) and the output gradient."""

    variant: Variant
    problem: Problem
    inputs: dict[str, torch.Tensor]
    grad_out: torch.Tensor
    call: Callable[[], torch.Tensor]
    module: Optional[torch.nn.Module] = None
    build_seconds: float = 0.0
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    # the variant's reset hook bound to what it built; None when the variant declares none
    reset: Optional[Callable[[], None]] = None
    # a kernel variant's built function, to call on other views of the inputs (checks.check_strided)
    kernel: Optional[Callable[..., torch.Tensor]] = None

    def forward(self) -> torch.Tensor:
        """Run the variant once on the case's inputs (after its reset hook, when it declares one)."""
        if self.reset is not None:
            self.reset()
        return self.call()

    def output_problem(self, out: object) -> Optional[str]:
        """Why ``out`` breaks the output contract that backward relies on (a tensor of the output
        gradient's shape, on its device), or None. Said in the contract's words: a tuple or a wrong shape had surfaced
        as torch's "'tuple' object has no attribute 'backward'" or "Mismatch in shape"."""
        if not isinstance(out, torch.Tensor):
            return f"{self.variant.name} returned {type(out).__name__}, not a tensor"
        if out.shape != self.grad_out.shape:
            return (f"{self.variant.name}: output is {tuple(out.shape)}, the contract says "
                    f"{tuple(self.grad_out.shape)}")
        return self.device_problem(out)

    def device_problem(self, out: torch.Tensor) -> Optional[str]:
        """Why ``out`` lies on another device than the problem's, or None. In backward torch's words had
        been "invalid gradient at index 0"; in a forward benchmark the suite's own finiteness check had
        raised torch's NotImplementedError on a meta output."""
        if out.device != self.grad_out.device:
            return f"{self.variant.name}: output on {out.device}, the problem on {self.grad_out.device}"
        return None

    def backward(self, out: torch.Tensor, retain_graph: bool = False) -> None:
        """Backpropagate the case's output gradient from ``out`` (``retain_graph``: keep the autograd
        graph so the same backward can run again, as device time's graph capture does).
        :class:`OutputContractError` when ``out`` is not a tensor of the output's shape."""
        broken = self.output_problem(out)
        if broken:
            raise OutputContractError(broken)
        out.backward(self.grad_out, retain_graph=retain_graph)

    def zero_grads(self) -> None:
        """Forget gradients from earlier calls."""
        for t in self.inputs.values():
            t.grad = None
        if self.module is not None:
            for p in self.module.parameters():
                p.grad = None

    def grads(self) -> dict[str, Optional[torch.Tensor]]:
        """Gradients of inputs and (for layers) canonical parameters, after :meth:`backward`."""
        out = {name: t.grad for name, t in self.inputs.items()}
        if self.module is not None:
            out.update(self.variant.canonical_grads(self.module))
        return out


class DeviceInputs:
    """A family's seeded inputs, output gradient and parameters for one problem, on its device.

    Full-tier inputs hold 100M+ values: converting the float64 arrays once per problem instead
    of once per case takes most of the benchmarks' per-case overhead away, and for problems where
    ``on_device(problem)`` holds (those too large for the float64 oracle) the family's
    ``device_inputs`` draws them on the device instead (same recipe, other values, milliseconds
    instead of tens of seconds). Only the most recent problem is held (benchmarks run every variant
    and mode of a problem before the next), so device memory does not grow over a run.
    """

    def __init__(self, on_device: Optional[Callable[[Problem], bool]] = None) -> None:
        self._key: Optional[tuple] = None
        self._tensors: Optional[tuple] = None
        self._on_device = on_device
        self.drawn_on_device = False  # how the held problem's inputs were made

    def get(self, family: registry.Family, problem: Problem) -> tuple[dict, torch.Tensor, dict]:
        """(inputs, grad_out, params) as tensors that callers must not modify."""
        key = (family.name, problem)
        if self._key != key:
            self._key = self._tensors = None  # free the previous problem's tensors first
            self.drawn_on_device = bool(family.device_inputs is not None and self._on_device
                                        and self._on_device(problem))
            if self.drawn_on_device:
                self._tensors = family.device_inputs(problem)
            else:
                arrays, grad_out = family.inputs(problem)
                params = family.params(problem) if family.params is not None else {}
                self._tensors = (
                    {name: to_torch(a, problem) for name, a in arrays.items()},
                    to_torch(grad_out, problem),
                    {name: to_torch(a, problem) for name, a in params.items()},
                )
            self._key = key
        return self._tensors

    def forget(self) -> None:
        """Drop the held tensors (a variant wrote into them): the next case draws its own."""
        self._key = self._tensors = None


# The suite builds one compiled function per problem. Dynamo's default limit of 8 recompiles per
# code object would silently turn the 9th problem into an eager fallback; the suite lifts it for
# its own runs (and the benchmarks still detect and report any fallback that happens).
RECOMPILE_LIMIT = 512
ACCUMULATED_RECOMPILE_LIMIT = 4096


def lift_recompile_limits() -> None:
    """Raise TorchDynamo's recompile limits to the suite's (never lowers them). Called before a variant
    that declares ``compiled`` is built: setting them at import had imported TorchDynamo (1.6 s on
    this project's CPU machine) into every process that loaded the built-in variants."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, ACCUMULATED_RECOMPILE_LIMIT)


def prepare(
    variant: Variant,
    problem: Problem,
    requires_grad: bool,
    inputs_np: Optional[dict] = None,
    cache: Optional[dict] = None,
    device_inputs: Optional[DeviceInputs] = None,
) -> Case:
    """Build ``variant`` for ``problem`` and put the family's seeded inputs on the device.

    ``inputs_np`` (name -> float64 array) overrides the family's inputs, e.g. for perturbation.
    ``cache`` (a dict owned by the caller, e.g. a session fixture) keeps built functions and
    modules per (variant, problem), so repeated checks do not rebuild masks or recompile.
    ``device_inputs`` reuses the device tensors of the problem's default inputs and parameters
    (each case still gets its own leaf copies of the inputs).
    """
    family = registry.family_of(variant)
    if device_inputs is not None and inputs_np is None:
        shared, grad_out, shared_params = device_inputs.get(family, problem)
        inputs = {name: t.detach().clone().requires_grad_(requires_grad) for name, t in shared.items()}
        params = dict(shared_params)
    else:
        default_inputs, grad_out_np = family.inputs(problem)
        arrays = inputs_np if inputs_np is not None else default_inputs
        inputs = {name: to_torch(a, problem, requires_grad) for name, a in arrays.items()}
        grad_out = to_torch(grad_out_np, problem)
        params = ({name: to_torch(a, problem) for name, a in family.params(problem).items()}
                  if isinstance(variant, LayerVariant) else {})
    key = (variant.name, problem)
    if variant.compiled:
        lift_recompile_limits()
    start = time.perf_counter()
    if isinstance(variant, KernelVariant):
        fn = cache.get(key) if cache is not None else None
        if fn is None:
            fn = variant.build(problem)
            if cache is not None:
                cache[key] = fn
        build = time.perf_counter() - start
        args = tuple(inputs.values())
        return Case(variant, problem, inputs, grad_out, lambda: fn(*args), build_seconds=build,
                    reset=_reset_hook(variant, fn), kernel=fn)
    if isinstance(variant, LayerVariant):
        module = cache.get(key) if cache is not None else None
        if module is None:
            module = variant.build(problem, params)
            if cache is not None:
                cache[key] = module
        else:
            module.zero_grad(set_to_none=True)
        build = time.perf_counter() - start
        x = inputs["x"]
        return Case(variant, problem, inputs, grad_out, lambda: module(x), module=module,
                    build_seconds=build, params=params, reset=_reset_hook(variant, module))
    raise TypeError(f"{variant!r} is neither a KernelVariant nor a LayerVariant")


def _reset_hook(variant: Variant, built) -> Optional[Callable[[], None]]:
    """``variant.reset`` bound to ``built``, or None when the variant keeps the default no-op
    (so a variant without state adds no call to its timed steps)."""
    if type(variant).reset is Variant.reset:
        return None
    return lambda: variant.reset(built)
