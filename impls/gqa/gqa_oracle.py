"""The ``gqa-layer`` family: a llama-style grouped-query attention layer, its oracle and registration.

x (batch, l, d_model) -> y (batch, l, d_model), self-attention, no biases (Llama convention):

    q = x Wq^T  (hq heads of dqk),  k = x Wk^T,  v = x Wv^T  (hkv heads; dqk and dv)
    o_h = Attn(q_h, k_g, v_g) with g = floor(h * hkv / hq)        (MQA: hkv = 1)
    y = concat_h(o_h) Wo^T

Canonical parameters (nn.Linear convention, heads contiguous along the output axis): ``wq``
(hq*dqk, d_model), ``wk`` (hkv*dqk, d_model), ``wv`` (hkv*dv, d_model), ``wo`` (d_model, hq*dv).
``hq * dqk`` need not equal ``d_model``. The reference is NumPy float64 built on the kernel oracle
(:func:`attnsuite.oracle.forward` / :func:`attnsuite.oracle.backward`) plus the projections'
chain rule; the base is the same plain math in torch in the problem's dtype. The variants are in
:mod:`.gqa`.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import torch

from attnsuite import oracle, reference_math
from attnsuite.family_glue import autograd_base, device_layer_inputs, layer_family_inputs
from attnsuite.inputs import finish, layer_inputs_np, rng_for
from attnsuite.oracle import merge_heads, split_heads
from attnsuite.problem import Mask, Problem
from attnsuite.registry import Family, register_family

PARAM_NAMES = ("wq", "wk", "wv", "wo")


def _check(problem: Problem) -> None:
    if problem.d_model is None:
        raise ValueError(f"problem {problem.id} is not a layer problem (d_model is None)")


def draw_params(rng, problem: Problem) -> dict:
    """The GQA layer's parameter recipe (unrounded; NumPy or device draws)."""
    _check(problem)
    d, hq, hkv, dqk, dv = problem.d_model, problem.hq, problem.hkv, problem.dqk, problem.dv
    std = 1.0 / np.sqrt(d)  # unit-variance x gives unit-variance q, k, v
    return {
        "wq": rng.normal(0.0, std, (hq * dqk, d)),
        "wk": rng.normal(0.0, std, (hkv * dqk, d)),
        "wv": rng.normal(0.0, std, (hkv * dv, d)),
        "wo": rng.normal(0.0, 1.0 / np.sqrt(hq * dv), (d, hq * dv)),
    }


PARAMS_STREAM = "gqa-params"


@lru_cache(maxsize=64)
def _params_np(problem: Problem) -> dict[str, np.ndarray]:
    return finish(draw_params(rng_for(problem, PARAMS_STREAM), problem), problem)


def params_np(problem: Problem) -> dict[str, np.ndarray]:
    """Canonical float64 weights for ``problem`` (seeded by its shapes, representable in its dtype)."""
    return _params_np(problem)


def reference_forward_backward(problem: Problem, x, params, dy):
    """Float64 y and the gradients of sum(y * dy) w.r.t. x and every canonical parameter."""
    wq, wk, wv, wo = (np.asarray(params[n], dtype=np.float64) for n in PARAM_NAMES)
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    q = split_heads(x @ wq.T, problem.hq)
    k = split_heads(x @ wk.T, problem.hkv)
    v = split_heads(x @ wv.T, problem.hkv)
    o, _, _, _ = oracle.forward(problem, q, k, v)
    om = merge_heads(o)
    y = om @ wo.T
    # y = om Wo^T: d(om) = dy Wo, dWo = sum_tokens dy^T om
    dom = dy @ wo
    dwo = np.einsum("blo,bli->oi", dy, om)
    dq, dk, dv = oracle.backward(problem, q, k, v, split_heads(dom, problem.hq))
    dqm, dkm, dvm = merge_heads(dq), merge_heads(dk), merge_heads(dv)
    dx = dqm @ wq + dkm @ wk + dvm @ wv
    grads = {
        "x": dx,
        "wq": np.einsum("blo,bli->oi", dqm, x),
        "wk": np.einsum("blo,bli->oi", dkm, x),
        "wv": np.einsum("blo,bli->oi", dvm, x),
        "wo": dwo,
    }
    return y, grads


@lru_cache(maxsize=32)
def _reference(problem: Problem):
    x, dy = layer_inputs_np(problem)
    return reference_forward_backward(problem, x, params_np(problem), dy)


def _torch_layer(problem: Problem, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain math in x's dtype and device (projections, repeat-free reference attention)."""
    b, l, _ = x.shape
    q = (x @ w["wq"].T).view(b, l, problem.hq, problem.dqk).transpose(1, 2)
    k = (x @ w["wk"].T).view(b, l, problem.hkv, problem.dqk).transpose(1, 2)
    v = (x @ w["wv"].T).view(b, l, problem.hkv, problem.dv).transpose(1, 2)
    o = reference_math.attention(problem, q, k, v)
    return o.transpose(1, 2).reshape(b, l, problem.hq * problem.dv) @ w["wo"].T


def _base(problem: Problem):
    """The base: :func:`_torch_layer` in the problem's dtype and device, gradients by autograd."""
    return autograd_base(problem, partial(_torch_layer, problem), *layer_family_inputs(problem),
                         params=params_np(problem))


def gqa_layer_problems(device: str, dtypes: tuple) -> list[Problem]:
    """Small CPU-sized GQA layer problems: ratios 1, 2, 4 and MQA, hq*dqk != d_model, masks."""
    P, M = Problem, Mask
    base = [
        P(batch=2, lq=17, lk=17, hq=4, hkv=2, dqk=16, dv=16, d_model=48, mask=M("causal")),
        P(batch=1, lq=33, lk=33, hq=4, hkv=1, dqk=16, dv=16, d_model=40, mask=M("none"), tag="mqa"),
        P(batch=1, lq=97, lk=97, hq=8, hkv=2, dqk=16, dv=16, d_model=64, mask=M("causal")),
        P(batch=1, lq=40, lk=40, hq=6, hkv=2, dqk=16, dv=24, d_model=48, mask=M("window", window=8)),
        P(batch=1, lq=3, lk=3, hq=2, hkv=2, dqk=16, dv=16, d_model=32, mask=M("causal"), tag="mha"),
    ]
    return [p.with_(device=device, dtype=dtype) for dtype in dtypes for p in base]


GQA_LAYER = register_family(
    Family(
        name="gqa-layer",
        level="layer",
        inputs=layer_family_inputs,
        reference=_reference,
        base=_base,
        params=params_np,
        device_inputs=device_layer_inputs(draw_params, lambda p: PARAMS_STREAM),
        problems=gqa_layer_problems,
        description="llama-style GQA layer, no biases: y = Attn(x Wq^T, x Wk^T, x Wv^T) Wo^T, "
        "query head h reads kv head h*hkv//hq",
    )
)
