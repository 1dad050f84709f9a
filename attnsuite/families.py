"""The kernel-level attention family: q, k, v to o under the Problem's mask and score mods.

Every kernel variant of standard attention (dense, GQA/MQA, structured masks, ALiBi, softcap)
computes this one function. Other families (layers, MLA, dilated) register their own
:class:`attnsuite.registry.Family` next to their references.
"""

from __future__ import annotations

from functools import partial

from . import oracle, reference_math
from .family_glue import autograd_base, device_kernel_inputs, kernel_family_inputs
from .problem import Problem
from .registry import Family, register_family


def _reference(problem: Problem):
    r = oracle.solve(problem)
    return r.out, {"q": r.dq, "k": r.dk, "v": r.dv}


def _base(problem: Problem):
    return autograd_base(problem, partial(reference_math.attention, problem), *kernel_family_inputs(problem))


def _problems(device: str, dtypes: tuple) -> list[Problem]:
    from .problems_dense import dense_problems

    problems = dense_problems(device, dtypes)
    try:
        from .problems_structured import structured_problems
    except ImportError:  # structured masks not built yet
        return problems
    return problems + structured_problems(device, dtypes)


ATTENTION = register_family(
    Family(
        name="attention",
        level="kernel",
        inputs=kernel_family_inputs,
        device_inputs=device_kernel_inputs,
        reference=_reference,
        base=_base,
        problems=_problems,
        description="softmax(mods(scale q k^T) + mask) v, GQA head mapping h -> h*hkv//hq",
    )
)
