"""The float64 oracle: attention forward and backward written out from the math, in NumPy.

Independent of torch and of every variant. Conventions (see :class:`attnsuite.problem.Problem`):
t = scale * q.k^T + alibi; s = softcap * tanh(t / softcap) (when set); disallowed s = -inf;
P = softmax(s) over keys; O = P V. A fully masked query row has no softmax: its output and its
gradients are defined as zero here, and the checks report such rows instead of comparing them.

Backward (dO given): dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dO * O));
dT = dS * (1 - tanh^2(t / softcap)) with softcap, else dS; dQ = scale * dT K; dK = scale * dT^T Q.
GQA: key/value head g serves query heads h with h * hkv // hq == g; its gradients sum over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from . import oracle_mask
from .problem import Problem


@dataclass(frozen=True)
class OracleResult:
    """Float64 output and gradients for one problem (kernel level)."""

    out: np.ndarray  # (b, hq, lq, dv)
    lse: np.ndarray  # (b, hq, lq) log-sum-exp of the scores, -inf on fully masked rows
    dq: Optional[np.ndarray] = None
    dk: Optional[np.ndarray] = None
    dv: Optional[np.ndarray] = None


def split_heads(t: np.ndarray, h: int) -> np.ndarray:
    """(b, l, h*d) -> (b, h, l, d): the heads of a projection, laid out contiguously (layer oracles)."""
    b, l, hd = t.shape
    return t.reshape(b, l, h, hd // h).transpose(0, 2, 1, 3)


def merge_heads(t: np.ndarray) -> np.ndarray:
    """(b, h, l, d) -> (b, l, h*d)."""
    b, h, l, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, l, h * d)


def kv_head_index(hq: int, hkv: int) -> np.ndarray:
    """For each query head, the key/value head it reads: floor(h * hkv / hq)."""
    return (np.arange(hq) * hkv) // hq


def _scores(q, k, problem: Problem):
    """Return (s, t) where t is the scaled+biased score and s after softcap, mask not yet applied."""
    t = problem.softmax_scale * np.einsum("bhqd,bhkd->bhqk", q, k)
    if problem.alibi:
        t = t + oracle_mask.alibi_bias(problem)[None]
    s = problem.softcap * np.tanh(t / problem.softcap) if problem.softcap is not None else t
    return s, t


def forward(problem: Problem, q: np.ndarray, k: np.ndarray, v: np.ndarray):
    """Float64 forward. Returns (out, lse, P, t) with P the (b, hq, lq, lk) probabilities."""
    idx = kv_head_index(problem.hq, problem.hkv)
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)[:, idx]
    v = np.asarray(v, dtype=np.float64)[:, idx]
    s, t = _scores(q, k, problem)
    p, lse = _masked_softmax(s, oracle_mask.allowed(problem)[None, None])
    out = np.einsum("bhqk,bhkd->bhqd", p, v)
    return out, lse, p, t


def _masked_softmax(s: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, log-sum-exp) over the last axis where ``allowed``; a row with no allowed key gets P = 0
    and lse = -inf."""
    s = np.where(allowed, s, -np.inf)
    row_max = s.max(axis=-1, keepdims=True)
    live = np.isfinite(row_max)
    e = np.where(allowed, np.exp(s - np.where(live, row_max, 0.0)), 0.0)
    denom = e.sum(axis=-1, keepdims=True)
    p = np.where(live, e / np.where(live, denom, 1.0), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(live, row_max + np.log(np.where(live, denom, 1.0)), -np.inf)[..., 0]
    return p, lse


def forward_rows(problem: Problem, q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray,
                 heads: np.ndarray) -> np.ndarray:
    """Float64 output of a few query rows of a few heads: ``q`` (n, r, d) holds positions ``rows``
    of query head ``heads[i]`` for each slice i, ``k`` and ``v`` (n, lk, d) the key/value head that
    query head reads. The same math as :func:`forward`, for checking problems whose lq x lk whole
    is too large (attnsuite/spot_check.py)."""
    p, _ = _probabilities_rows(problem, q, k, rows, heads)
    return p @ np.asarray(v, dtype=np.float64)


def _probabilities_rows(problem: Problem, q, k, rows: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, t) of a few query rows of a few heads (shapes as :func:`forward_rows`), in float64."""
    q, k = (np.asarray(a, dtype=np.float64) for a in (q, k))
    t = problem.softmax_scale * (q @ k.transpose(0, 2, 1))
    if problem.alibi:
        t = t + oracle_mask.alibi_bias_rows(problem, rows, heads)
    s = problem.softcap * np.tanh(t / problem.softcap) if problem.softcap is not None else t
    p, _ = _masked_softmax(s, oracle_mask.allowed_rows(problem, rows)[None])
    return p, t


def backward_rows(problem: Problem, q: np.ndarray, k: np.ndarray, v: np.ndarray, do: np.ndarray,
                  rows: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 gradients of sum(out * do) over a few query rows of a few heads (shapes as
    :func:`forward_rows`; ``do`` (n, r, dv) the output gradient of those rows): dq of those rows and
    each slice's share of dk and dv of the key/value head it reads, (n, lk, d). An output gradient
    that is zero on every other row makes these the whole problem's gradients, since a row reaches
    dk and dv only through its own probabilities (attnsuite/spot_check.py). The math of :func:`backward`."""
    q, k, v, do = (np.asarray(a, dtype=np.float64) for a in (q, k, v, do))
    p, t = _probabilities_rows(problem, q, k, rows, heads)
    out = p @ v
    dv = p.transpose(0, 2, 1) @ do
    ds = p * (do @ v.transpose(0, 2, 1) - np.sum(do * out, axis=-1, keepdims=True))
    if problem.softcap is not None:
        ds = ds * (1.0 - np.tanh(t / problem.softcap) ** 2)
    dq = problem.softmax_scale * (ds @ k)
    dk = problem.softmax_scale * (ds.transpose(0, 2, 1) @ q)
    return dq, dk, dv


def backward(problem: Problem, q, k, v, do):
    """Float64 gradients (dq, dk, dv) of sum(out * do) with respect to q, k, v."""
    idx = kv_head_index(problem.hq, problem.hkv)
    out, _, p, t = forward(problem, q, k, v)
    q = np.asarray(q, dtype=np.float64)
    kx = np.asarray(k, dtype=np.float64)[:, idx]
    vx = np.asarray(v, dtype=np.float64)[:, idx]
    do = np.asarray(do, dtype=np.float64)
    dvx = np.einsum("bhqk,bhqd->bhkd", p, do)
    dp = np.einsum("bhqd,bhkd->bhqk", do, vx)
    ds = p * (dp - np.sum(do * out, axis=-1, keepdims=True))
    if problem.softcap is not None:
        ds = ds * (1.0 - np.tanh(t / problem.softcap) ** 2)
    scale = problem.softmax_scale
    dq = scale * np.einsum("bhqk,bhkd->bhqd", ds, kx)
    dkx = scale * np.einsum("bhqk,bhqd->bhkd", ds, q)
    # fold the repeated key/value heads back onto the heads they came from
    dk = np.zeros(np.shape(k), dtype=np.float64)
    dv = np.zeros(np.shape(v), dtype=np.float64)
    np.add.at(dk, (slice(None), idx), dkx)
    np.add.at(dv, (slice(None), idx), dvx)
    return dq, dk, dv


@lru_cache(maxsize=64)
def solve(problem: Problem, with_grad: bool = True) -> OracleResult:
    """Oracle answer for the seeded inputs of ``problem`` (cached: problems are immutable)."""
    from .inputs import kernel_inputs_np

    q, k, v, do = kernel_inputs_np(problem)
    out, lse, _, _ = forward(problem, q, k, v)
    if not with_grad:
        return OracleResult(out=out, lse=lse)
    dq, dk, dv = backward(problem, q, k, v, do)
    return OracleResult(out=out, lse=lse, dq=dq, dk=dk, dv=dv)
