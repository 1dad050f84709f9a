"""A function the suite has no family for, brought in from outside: attention with rotary position
embeddings (RoPE) on q and k. It is a family of its own (its float64 oracle, its same-dtype base,
its problems) with one variant, all in this file, loaded like any outside variant:

    .venv/bin/pytest test_correctness -n 1 --attn-variants examples/external_rope_family.py --attn-only rope-sdpa

Every check of the suite (forward and backward against the oracle, future keys, repeat, strided
inputs) then holds ``rope-sdpa`` to ``rope-attention``'s oracle. The family declares the problem
argument its function reads (``Family.args``: ``rope_theta``), so a problems file may add
``rope-attention`` problems that set it (``--attn-problems``), while an argument that no family or
variant reads is refused. RoPE here is the rotate-half form (GPT-NeoX, Llama): the head dim's two
halves are rotated by position * theta^(-2j/d) at query and key positions 0..L-1 (self-attention).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attnsuite import oracle, reference_math
from attnsuite.family_glue import autograd_base, device_kernel_inputs, kernel_family_inputs
from attnsuite.problem import Mask, Problem, ProblemError
from attnsuite.registry import Family, KernelVariant, register, register_family

THETA = 10000.0  # when a problem does not set rope_theta


def _angles(problem: Problem) -> np.ndarray:
    """(L, d/2) rotation angles in float64: position * theta^(-2j/d)."""
    half = problem.dqk // 2
    inv_freq = float(problem.arg("rope_theta", THETA)) ** (-np.arange(half, dtype=np.float64) * 2.0 / problem.dqk)
    return np.arange(problem.lq, dtype=np.float64)[:, None] * inv_freq[None, :]


def _rotate_np(x: np.ndarray, angles: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Rotate-half RoPE of (b, h, L, d) ``x``; ``sign`` -1 applies the inverse (its transpose)."""
    half = x.shape[-1] // 2
    cos, sin = np.cos(angles), sign * np.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def rotate(x: torch.Tensor, problem: Problem) -> torch.Tensor:
    """RoPE of (b, h, L, d) ``x`` in its own dtype and device (angles from the float64 table)."""
    angles = torch.from_numpy(_angles(problem)).to(device=x.device, dtype=torch.float32)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _reference(problem: Problem):
    """The float64 oracle: the suite's attention oracle on rotated q and k; the gradients of q and k
    rotated back (a rotation's transpose is its inverse)."""
    inputs, do = kernel_family_inputs(problem)
    angles = _angles(problem)
    q, k = _rotate_np(inputs["q"], angles), _rotate_np(inputs["k"], angles)
    out, _, _, _ = oracle.forward(problem, q, k, inputs["v"])
    dq, dk, dv = oracle.backward(problem, q, k, inputs["v"], do)
    return out, {"q": _rotate_np(dq, angles, -1.0), "k": _rotate_np(dk, angles, -1.0), "v": dv}


def _base(problem: Problem):
    """Plain math in the problem's dtype: the tolerance rule's measure of that dtype's rounding."""
    def fn(q, k, v):
        return reference_math.attention(problem, rotate(q, problem), rotate(k, problem), v)
    return autograd_base(problem, fn, *kernel_family_inputs(problem))


def _rows(problem: Problem, inputs, positions: np.ndarray):
    """The output at query positions ``positions`` from the case's own inputs, for the benchmarks'
    check of problems too large for the whole oracle: the suite's float64 attention oracle over
    those rows of every (batch, head) on rotated q and k, and the same rows by plain math in the
    problem's dtype. An output row depends on its own query row and every key, so a few are exact."""
    b, hq, lk = problem.batch, problem.hq, problem.lk
    angles, kv_of = _angles(problem), oracle.kv_head_index(problem.hq, problem.hkv)
    q, k, v = (inputs[n].detach() for n in ("q", "k", "v"))
    at = torch.as_tensor(positions, device=q.device)
    q_rows = _rotate_np(q[:, :, at].double().cpu().numpy(), angles[positions])
    k_all = _rotate_np(k.double().cpu().numpy(), angles)[:, kv_of].reshape(b * hq, lk, -1)
    v_all = v.double().cpu().numpy()[:, kv_of].reshape(b * hq, lk, -1)
    ref = oracle.forward_rows(problem, q_rows.reshape(b * hq, len(positions), -1), k_all, v_all, positions,
                              np.tile(np.arange(hq), b)).reshape(b, hq, len(positions), -1)
    with torch.no_grad():
        base = reference_math.attention(problem, rotate(q, problem)[:, :, at], rotate(k, problem), v, rows=at)
    return ref, base


def _check(problem: Problem) -> None:
    theta = problem.arg("rope_theta", THETA)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise ProblemError(f"rope-attention: rope_theta must be a positive number, got {theta!r}")
    if problem.lq != problem.lk:
        raise ProblemError(f"rope-attention is self-attention: lq={problem.lq} != lk={problem.lk}")
    if problem.dqk % 2:
        raise ProblemError(f"rope-attention rotates pairs of dims: dqk={problem.dqk} is odd")


def _problems(device: str, dtypes: tuple) -> list[Problem]:
    base = [Problem(batch=1, lq=33, lk=33, hq=4, hkv=2, dqk=32, dv=32, mask=Mask("causal"),
                    args=(("rope_theta", 10000.0),)),
            Problem(batch=2, lq=16, lk=16, hq=2, hkv=2, dqk=16, dv=16, args=(("rope_theta", 500.0),))]
    return [p.with_(device=device, dtype=dtype) for dtype in dtypes for p in base]


ROPE_ATTENTION = register_family(Family(
    name="rope-attention",
    level="kernel",
    inputs=kernel_family_inputs,
    device_inputs=device_kernel_inputs,
    reference=_reference,
    base=_base,
    problems=_problems,
    check=_check,
    rows=_rows,
    args=frozenset({"rope_theta"}),
    description="softmax(scale RoPE(q) RoPE(k)^T + mask) v, rotate-half RoPE at positions 0..L-1",
))


@register
class RopeSdpa(KernelVariant):
    """RoPE on q and k in their dtype, then SDPA (GQA by SDPA's enable_gqa)."""

    name = "rope-sdpa"
    family = "rope-attention"
    description = "rotate-half RoPE on q and k, then F.scaled_dot_product_attention"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "custom_scale"})
    backend = "sdpa"

    def build(self, problem: Problem):
        causal = problem.mask.kind == "causal"

        def run(q, k, v):
            return F.scaled_dot_product_attention(rotate(q, problem), rotate(k, problem), v, is_causal=causal,
                                                  scale=problem.scale, enable_gqa=problem.hq != problem.hkv)
        return run
