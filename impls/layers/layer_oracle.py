"""The float64 oracle of the dense layer families, and their registration.

Three layer families, all x (batch, l, d_model) -> y (batch, l, d_model), self-attention:

- ``mha-layer``: y = out_proj(Attn(q_proj(x), k_proj(x), v_proj(x))), every projection with a bias.
- ``qknorm-ln-layer``: as above, with a per-head LayerNorm (weight and bias) applied to q and k
  after the projection and before attention (the QK-norm block of video world models).
- ``qknorm-rms-layer``: the same with a per-head RMSNorm (weight only).

Canonical parameters use nn.Linear's convention y = x W^T + b: ``wq``/``wk`` are (hq*dqk, d_model),
``wv`` is (hq*dv, d_model), ``wo`` is (d_model, hq*dv); the norms' ``qn_w``, ``qn_b``, ``kn_w``,
``kn_b`` are (dqk,). Heads are laid out contiguously along the projection's output axis
(head h owns rows h*dqk .. (h+1)*dqk - 1), as in nn.MultiheadAttention.

Forward and backward are written out from the math in NumPy float64; the attention core reuses
:mod:`attnsuite.oracle` (the kernel oracle), so this module adds only the projections and the norms:

- linear y = x W^T + b:  dx = dy W,  dW = sum_tokens dy^T x,  db = sum_tokens dy
- LayerNorm (over the head dim, n = dqk): xh = (x - mean) / sqrt(var + eps), y = xh * w + b;
  g = dy * w;  dx = (g - mean(g) - xh * mean(g * xh)) / sqrt(var + eps);  dw = sum dy * xh;  db = sum dy
- RMSNorm: r = sqrt(mean(x^2) + eps), xh = x / r, y = xh * w;  g = dy * w;
  dx = (g - xh * mean(g * xh)) / r;  dw = sum dy * xh

Importing this module registers the three families (this folder's ``__init__`` imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Optional

import numpy as np

from attnsuite import oracle
from attnsuite.oracle import merge_heads, split_heads
from attnsuite.family_glue import autograd_base, device_layer_inputs, layer_family_inputs
from attnsuite.inputs import finish, layer_inputs_np, rng_for
from attnsuite.problem import Mask, Problem
from attnsuite.registry import Family, register_family

from . import layer_reference

NORM_EPS = 1e-6  # both QK norms (LayerNorm and RMSNorm)
# The pinned softmax scale of the QK-norm problems: deliberately not 1/sqrt(dqk), so a variant
# that ignores the pinned scale and falls back to the default one is caught.
QKNORM_SCALE = 0.1

PROJECTION_PARAMS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")
# family -> (norm kind, canonical parameter names in a stable order)
LAYER_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mha-layer": ("none", PROJECTION_PARAMS),
    "qknorm-ln-layer": ("layernorm", PROJECTION_PARAMS + ("qn_w", "qn_b", "kn_w", "kn_b")),
    "qknorm-rms-layer": ("rmsnorm", PROJECTION_PARAMS + ("qn_w", "kn_w")),
}


def _check_layer_problem(problem: Problem) -> None:
    if problem.d_model is None:
        raise ValueError(f"problem {problem.id} is not a layer problem (d_model is None)")
    if problem.hq != problem.hkv:
        raise ValueError(f"problem {problem.id}: the dense layer families have hq == hkv, got {problem.hq}:{problem.hkv}")


def check_added_problem(problem: Problem) -> None:
    """A problem from outside (``--attn-problems``) that the dense layer families can check: a layer
    problem with hq == hkv whose model width is heads x head dim (what nn.MultiheadAttention and
    every variant here take; another width had made every test of the problem a skip)."""
    _check_layer_problem(problem)
    if problem.d_model != problem.hq * problem.dqk:
        raise ValueError(f"field 'd_model': {problem.d_model} is not hq * dqk = {problem.hq} * {problem.dqk} = "
                         f"{problem.hq * problem.dqk}: the dense layer variants split the model width into the heads")


def norm_kind(family: str) -> str:
    """'none', 'layernorm' or 'rmsnorm': the QK norm of a dense layer family."""
    try:
        return LAYER_FAMILIES[family][0]
    except KeyError:
        raise KeyError(f"{family!r} is not a dense layer family (known: {', '.join(LAYER_FAMILIES)})") from None


def draw_params(family: str, rng, problem: Problem) -> dict:
    """The parameter recipe of a dense layer ``family`` (unrounded; NumPy or device draws)."""
    _check_layer_problem(problem)
    kind, names = LAYER_FAMILIES[family]
    d, h, dqk, dv = problem.d_model, problem.hq, problem.dqk, problem.dv
    std = 1.0 / np.sqrt(d)  # weights ~ N(0, 1/d_model): unit-variance inputs give unit-variance q, k, v
    out = {
        "wq": rng.normal(0.0, std, (h * dqk, d)),
        "bq": 0.1 * rng.standard_normal(h * dqk),
        "wk": rng.normal(0.0, std, (h * dqk, d)),
        "bk": 0.1 * rng.standard_normal(h * dqk),
        "wv": rng.normal(0.0, std, (h * dv, d)),
        "bv": 0.1 * rng.standard_normal(h * dv),
        "wo": rng.normal(0.0, 1.0 / np.sqrt(h * dv), (d, h * dv)),
        "bo": 0.1 * rng.standard_normal(d),
    }
    if kind != "none":
        # around 1 but never exactly 1, so a variant that drops the norm weight is caught
        out["qn_w"] = 1.0 + 0.2 * rng.standard_normal(dqk)
        out["kn_w"] = 1.0 + 0.2 * rng.standard_normal(dqk)
    if kind == "layernorm":
        out["qn_b"] = 0.1 * rng.standard_normal(dqk)
        out["kn_b"] = 0.1 * rng.standard_normal(dqk)
    return {name: out[name] for name in names}


PARAMS_STREAM = "params"


@lru_cache(maxsize=64)
def _params_np(family: str, problem: Problem) -> dict[str, np.ndarray]:
    return finish(draw_params(family, rng_for(problem, PARAMS_STREAM), problem), problem)


def params_np(family: str, problem: Problem) -> dict[str, np.ndarray]:
    """The canonical float64 parameters of ``family`` for ``problem`` (seeded, dtype-representable).

    The values depend on the shapes and seed only, so every dtype of one shape sees the same weights
    (up to rounding to that dtype). The arrays are read-only and shared: copy before changing.
    """
    norm_kind(family)
    return _params_np(family, problem)


# ---------------------------------------------------------------- NumPy building blocks


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x W^T + b over the last axis."""
    return x @ w.T + b


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dW, db) of sum(linear_forward(x, w, b) * dy)."""
    dx = dy @ w
    dw = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    db = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
    return dx, dw, db


@dataclass
class NormCache:
    """What the norm backward needs from the forward."""

    xhat: np.ndarray
    inv: np.ndarray  # 1 / sqrt(var + eps) (LayerNorm) or 1 / rms (RMSNorm), keepdims


def layernorm_forward(x, w, b, eps: float = NORM_EPS):
    """LayerNorm over the last axis; returns (y, cache)."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * inv
    return xhat * w + b, NormCache(xhat, inv)


def layernorm_backward(dy, cache: NormCache, w):
    """(dx, dw, db) of sum(layernorm_forward(x, w, b)[0] * dy)."""
    g = dy * w
    dx = (g - g.mean(axis=-1, keepdims=True) - cache.xhat * (g * cache.xhat).mean(axis=-1, keepdims=True)) * cache.inv
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * cache.xhat).sum(axis=lead), dy.sum(axis=lead)


def rmsnorm_forward(x, w, eps: float = NORM_EPS):
    """RMSNorm over the last axis; returns (y, cache)."""
    inv = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * inv
    return xhat * w, NormCache(xhat, inv)


def rmsnorm_backward(dy, cache: NormCache, w):
    """(dx, dw) of sum(rmsnorm_forward(x, w)[0] * dy)."""
    g = dy * w
    dx = (g - cache.xhat * (g * cache.xhat).mean(axis=-1, keepdims=True)) * cache.inv
    return dx, (dy * cache.xhat).sum(axis=tuple(range(dy.ndim - 1)))


# ---------------------------------------------------------------- the layer


def layer_forward(problem: Problem, norm: str, x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """Float64 layer forward. Returns (y, cache) with what :func:`layer_backward` needs."""
    _check_layer_problem(problem)
    x = np.asarray(x, dtype=np.float64)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    h = problem.hq
    q_raw = split_heads(linear_forward(x, p["wq"], p["bq"]), h)
    k_raw = split_heads(linear_forward(x, p["wk"], p["bk"]), h)
    v = split_heads(linear_forward(x, p["wv"], p["bv"]), h)
    qc = kc = None
    if norm == "layernorm":
        q, qc = layernorm_forward(q_raw, p["qn_w"], p["qn_b"])
        k, kc = layernorm_forward(k_raw, p["kn_w"], p["kn_b"])
    elif norm == "rmsnorm":
        q, qc = rmsnorm_forward(q_raw, p["qn_w"])
        k, kc = rmsnorm_forward(k_raw, p["kn_w"])
    elif norm == "none":
        q, k = q_raw, k_raw
    else:
        raise ValueError(f"unknown QK norm {norm!r}; known: none, layernorm, rmsnorm")
    o, _, _, _ = oracle.forward(problem, q, k, v)
    o_flat = merge_heads(o)
    y = linear_forward(o_flat, p["wo"], p["bo"])
    cache = dict(x=x, p=p, q=q, k=k, v=v, qc=qc, kc=kc, o_flat=o_flat)
    return y, cache


def layer_backward(problem: Problem, norm: str, cache: dict, dy: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 gradients of sum(y * dy), keyed "x" and every canonical parameter name."""
    p = cache["p"]
    dy = np.asarray(dy, dtype=np.float64)
    grads: dict[str, np.ndarray] = {}
    do_flat, grads["wo"], grads["bo"] = linear_backward(dy, cache["o_flat"], p["wo"])
    do = split_heads(do_flat, problem.hq)
    dq, dk, dv = oracle.backward(problem, cache["q"], cache["k"], cache["v"], do)
    if norm == "layernorm":
        dq, grads["qn_w"], grads["qn_b"] = layernorm_backward(dq, cache["qc"], p["qn_w"])
        dk, grads["kn_w"], grads["kn_b"] = layernorm_backward(dk, cache["kc"], p["kn_w"])
    elif norm == "rmsnorm":
        dq, grads["qn_w"] = rmsnorm_backward(dq, cache["qc"], p["qn_w"])
        dk, grads["kn_w"] = rmsnorm_backward(dk, cache["kc"], p["kn_w"])
    x = cache["x"]
    dx = np.zeros_like(x)
    for name, d in (("q", dq), ("k", dk), ("v", dv)):
        dxi, grads["w" + name], grads["b" + name] = linear_backward(merge_heads(d), x, p["w" + name])
        dx += dxi
    grads["x"] = dx
    return grads


@lru_cache(maxsize=64)
def solve(family: str, problem: Problem) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Oracle (y, grads) of ``family`` on the seeded inputs and canonical params of ``problem`` (cached)."""
    norm = norm_kind(family)
    x, dy = layer_inputs_np(problem)
    y, cache = layer_forward(problem, norm, x, params_np(family, problem))
    grads = layer_backward(problem, norm, cache, dy)
    for a in (y, *grads.values()):
        a.setflags(write=False)
    return y, grads


# ---------------------------------------------------------------- Family plumbing


def _base(family: str, problem: Problem):
    """Plain math layer in the problem's dtype and device, gradients by autograd (same keys)."""
    return autograd_base(problem, partial(layer_reference.layer, problem, norm_kind(family)),
                         *layer_family_inputs(problem), params=params_np(family, problem))


def _problem(batch: int, l: int, heads: int, head_dim: int, mask: str, dtype: str, device: str,
             scale: Optional[float]) -> Problem:
    return Problem(batch=batch, lq=l, lk=l, hq=heads, hkv=heads, dqk=head_dim, dv=head_dim, dtype=dtype,
                   device=device, scale=scale, mask=Mask(kind=mask), d_model=heads * head_dim)


# (batch, length, heads, head dim, mask): lengths 1, 3, 17, 97, non-power-of-two head dims, both
# masks. The most telling shapes come first: on CPU the generic test checks compiled variants
# (Flex, 5-20 s of compiling per shape) on only the first problems of each dtype.
MHA_SHAPES = ((2, 17, 2, 24, "causal"), (1, 97, 3, 40, "none"), (1, 1, 4, 16, "none"), (2, 3, 2, 32, "causal"))
# One long sequence (> 1000 tokens) in a single dtype: float64 where asked for (no compiled Flex
# kernel exists for it, so it adds no compile on CPU), else the first dtype.
MHA_LONG = (1, 1030, 2, 16, "causal")
# The QK-norm families share one shape list and one pinned scale, so their compiled Flex kernels
# are shared too (one compile per shape and dtype, not two).
QKNORM_SHAPES = ((2, 17, 2, 24, "causal"), (1, 97, 3, 40, "none"), (1, 3, 4, 16, "causal"))


def _problems(family: str, device: str, dtypes: tuple) -> list[Problem]:
    """The correctness problems of a dense layer family on ``device`` for each of ``dtypes``."""
    if family == "mha-layer":
        shapes, scale = MHA_SHAPES, None
    else:
        shapes, scale = QKNORM_SHAPES, QKNORM_SCALE
    out = [_problem(*s, dtype=dt, device=device, scale=scale) for dt in dtypes for s in shapes]
    if family == "mha-layer" and dtypes:
        long_dtype = "float64" if "float64" in dtypes else dtypes[0]
        out.append(_problem(*MHA_LONG, dtype=long_dtype, device=device, scale=scale))
    return out


_DESCRIPTIONS = {
    "mha-layer": "y = out_proj(attention(q_proj x, k_proj x, v_proj x)), biases everywhere",
    "qknorm-ln-layer": "MHA layer with per-head LayerNorm on q and k (eps 1e-6), pinned scale",
    "qknorm-rms-layer": "MHA layer with per-head RMSNorm on q and k (eps 1e-6), pinned scale",
}

FAMILIES = {
    name: register_family(
        Family(
            name=name,
            level="layer",
            inputs=layer_family_inputs,
            params=partial(params_np, name),
            device_inputs=device_layer_inputs(partial(draw_params, name), lambda p: PARAMS_STREAM),
            reference=partial(solve, name),
            base=partial(_base, name),
            problems=partial(_problems, name),
            description=_DESCRIPTIONS[name],
            check=check_added_problem,
        )
    )
    for name in LAYER_FAMILIES
}
