"""The kernel-level attention family: q, k, v to o under the Problem's mask and score mods.

Every kernel variant of standard attention (dense, GQA/MQA, structured masks, ALiBi, softcap)
computes this one function. Other families (layers, MLA, dilated, GQA layer) register their own
:class:`attnsuite.registry.Family` in their own folders under ``impls/``.
"""

from __future__ import annotations

from functools import partial

from attnsuite import oracle, reference_math
from attnsuite.family_glue import autograd_base, device_kernel_inputs, kernel_family_inputs
from attnsuite.problem import Problem
from attnsuite.registry import Family, register_family

from .problems_dense import dense_problems
from .problems_structured import structured_problems


def _reference(problem: Problem):
    r = oracle.solve(problem)
    return r.out, {"q": r.dq, "k": r.dk, "v": r.dv}


def _base(problem: Problem):
    return autograd_base(problem, partial(reference_math.attention, problem), *kernel_family_inputs(problem))


def _problems(device: str, dtypes: tuple) -> list[Problem]:
    return dense_problems(device, dtypes) + structured_problems(device, dtypes)


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
