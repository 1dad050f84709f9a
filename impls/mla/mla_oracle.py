"""Multi-head latent attention (DeepSeek-V3 MLA) and plain latent attention: float64 NumPy references.

Two layer families are registered here, each with its canonical parameters, a float64 oracle
(forward AND backward written out from the math) and a plain-math base in the problem's dtype:

``mla-layer`` (DeepSeek-V3). With x of shape (b, L, d_model), H heads, per-head dims nope, rope, v::

    cq   = RMSNorm(x wq_a^T) * q_norm                      (b, L, q_lora)
    q    = cq wq_b^T  -> (b, L, H, nope + rope) = [q_nope, q_pe];  q_pe <- RoPE(q_pe)
    kv   = x wkv_a^T  -> (b, L, kv_lora + rope) = [c_kv, k_pe];   k_pe <- RoPE(k_pe)  (one per token,
                                                                  shared by every head)
    c_kv = RMSNorm(c_kv) * kv_norm
    kvb  = c_kv wkv_b^T -> (b, L, H, nope + v) = [k_nope, v]
    k    = [k_nope, k_pe]  per head;  O = softmax(scale q k^T + mask) v,  scale = 1/sqrt(nope + rope)
    y    = O (b, L, H*v) wo^T

RMSNorm(z) = z / sqrt(mean(z^2) + RMS_EPS). RoPE rotates interleaved pairs (z[2p], z[2p+1]) of the
rope part by the angle pos * ROPE_BASE^(-2p/rope), positions 0..L-1 (DeepSeek-V3's convention,
without its long-context YaRN rescaling).

``latent-layer`` (plain low-rank latent attention, no decoupled RoPE, no norms)::

    q = x wq^T (b, L, H, dqk);  c = x wkv_a^T (b, L, kv_lora);  [k, v] = c wkv_b^T (b, L, H, dqk + dv)
    y = softmax(scale q k^T + mask) v  wo^T

The attention core reuses :func:`attnsuite.oracle.forward` / :func:`attnsuite.oracle.backward`;
everything around it (linears, RMSNorm, RoPE, the shared k_pe head) is differentiated here by hand.
The problem's ``args`` carry the ranks and dims: ``q_lora, kv_lora, nope_dim, rope_dim, v_dim`` for
MLA, ``kv_lora`` for the latent layer; ``hq`` is the head count, ``dqk``/``dv`` the per-head dims.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import torch

from attnsuite import oracle
from attnsuite.family_glue import autograd_base, device_layer_inputs, layer_family_inputs
from attnsuite.inputs import finish, layer_inputs_np, rng_for
from attnsuite.problem import Mask, Problem, ProblemError
from attnsuite.registry import Family, register_family

RMS_EPS = 1e-6
ROPE_BASE = 10000.0
MLA_ARGS = ("kv_lora", "nope_dim", "q_lora", "rope_dim", "v_dim")
MLA_PARAM_NAMES = ("wq_a", "q_norm", "wq_b", "wkv_a", "kv_norm", "wkv_b", "wo")
LATENT_PARAM_NAMES = ("wq", "wkv_a", "wkv_b", "wo")


# ----------------------------------------------------------------------------- problem helpers


def mla_dims(problem: Problem) -> dict[str, int]:
    """The MLA dims of a problem (``args`` plus heads and d_model), validated against each other."""
    missing = [name for name in MLA_ARGS if problem.arg(name) is None]
    if missing:
        raise ProblemError(f"MLA problem {problem.id} lacks args {missing} (needs {list(MLA_ARGS)})")
    dims = {name: int(problem.arg(name)) for name in MLA_ARGS}
    if problem.d_model is None:
        raise ProblemError(f"MLA problem {problem.id} is not a layer problem (d_model is None)")
    if problem.dqk != dims["nope_dim"] + dims["rope_dim"]:
        raise ProblemError(
            f"MLA problem {problem.id}: dqk={problem.dqk} must equal nope_dim + rope_dim = "
            f"{dims['nope_dim']} + {dims['rope_dim']}"
        )
    if problem.dv != dims["v_dim"]:
        raise ProblemError(f"MLA problem {problem.id}: dv={problem.dv} must equal v_dim={dims['v_dim']}")
    if dims["rope_dim"] % 2:
        raise ProblemError(f"MLA problem {problem.id}: rope_dim={dims['rope_dim']} must be even (RoPE rotates pairs)")
    if problem.hkv != problem.hq:
        raise ProblemError(f"MLA problem {problem.id}: hkv must equal hq (every head decompresses its own K/V)")
    return dims


def mla_problem(
    batch: int,
    seq: int,
    d_model: int,
    heads: int,
    q_lora: int,
    kv_lora: int,
    nope_dim: int,
    rope_dim: int,
    v_dim: int,
    mask: Mask = Mask(),
    dtype: str = "float32",
    device: str = "cpu",
    tag: str = "",
) -> Problem:
    """An ``mla-layer`` problem with its args filled in (and validated)."""
    p = Problem(
        batch=batch, lq=seq, lk=seq, hq=heads, hkv=heads, dqk=nope_dim + rope_dim, dv=v_dim,
        d_model=d_model, mask=mask, dtype=dtype, device=device, tag=tag,
        args=tuple(sorted(dict(q_lora=q_lora, kv_lora=kv_lora, nope_dim=nope_dim, rope_dim=rope_dim,
                               v_dim=v_dim).items())),
    )
    mla_dims(p)
    return p


def latent_problem(batch: int, seq: int, d_model: int, heads: int, kv_lora: int, dqk: int, dv: int,
                   mask: Mask = Mask(), dtype: str = "float32", device: str = "cpu", tag: str = "") -> Problem:
    """A ``latent-layer`` problem (plain low-rank latent attention)."""
    return Problem(batch=batch, lq=seq, lk=seq, hq=heads, hkv=heads, dqk=dqk, dv=dv, d_model=d_model,
                   mask=mask, dtype=dtype, device=device, tag=tag, args=(("kv_lora", kv_lora),))


def latent_rank(problem: Problem) -> int:
    """The kv_lora rank of a latent-layer problem, validated."""
    r = problem.arg("kv_lora")
    if r is None or problem.d_model is None:
        raise ProblemError(f"latent-layer problem {problem.id} needs d_model and args kv_lora")
    if problem.hkv != problem.hq:
        raise ProblemError(f"latent-layer problem {problem.id}: hkv must equal hq")
    return int(r)


def core_problem(problem: Problem) -> Problem:
    """The kernel-level problem of the attention core inside a layer problem."""
    return problem.with_(d_model=None, args=(), tag="")


def deepseek_v3_problem(dtype: str = "bfloat16", device: str = "cuda", quick: bool = False,
                        mask: Mask = Mask("causal")) -> Problem:
    """The deepseek-v3 workload's MLA layer: B 2, L 2048, hidden 7168, 128 heads, real MLA dims.

    ``quick`` keeps the structure (ratios of ranks and dims) at a size two CPU cores run in seconds.
    """
    if quick:
        return mla_problem(1, 64, 112, 2, 24, 16, 8, 4, 8, mask=mask, dtype=dtype, device=device,
                           tag="deepseek-v3-quick")
    return mla_problem(2, 2048, 7168, 128, 1536, 512, 128, 64, 128, mask=mask, dtype=dtype, device=device,
                       tag="deepseek-v3")


# ----------------------------------------------------------------------------- small float64 pieces


def rope_tables(length: int, rope_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of shape (length, rope_dim // 2): angle pos * base^(-2p / rope_dim)."""
    freq = ROPE_BASE ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)
    ang = np.arange(length, dtype=np.float64)[:, None] * freq[None, :]
    return np.cos(ang), np.sin(ang)


def rope_apply(z: np.ndarray, cos: np.ndarray, sin: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Rotate interleaved pairs of the last axis; ``inverse`` rotates back (the transpose: RoPE's VJP)."""
    a, b = z[..., 0::2], z[..., 1::2]
    s = -sin if inverse else sin
    out = np.empty_like(z)
    out[..., 0::2] = a * cos - b * s
    out[..., 1::2] = a * s + b * cos
    return out


def rms_forward(z: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm(z) * g and the reciprocal rms r (kept for the backward)."""
    r = 1.0 / np.sqrt(np.mean(z * z, axis=-1, keepdims=True) + RMS_EPS)
    return z * r * g, r


def rms_backward(z: np.ndarray, g: np.ndarray, r: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dz, dg) of y = z * r(z) * g, r = (mean(z^2) + eps)^(-1/2).

    dr/dz_k = -r^3 z_k / n, so dz = r (g dy) - z r^3 mean(g dy z).
    """
    u = g * dy
    dz = r * u - z * r**3 * np.mean(u * z, axis=-1, keepdims=True)
    dg = np.sum(dy * z * r, axis=tuple(range(dy.ndim - 1)))
    return dz, dg


def _lin_grad(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dW of y = x W^T summed over the leading axes."""
    return dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------- parameters


def _weight(rng, out_f: int, in_f: int):
    # variance 1/fan_in keeps activations O(1) through every projection
    return rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)


def mla_params_stream(problem: Problem) -> str:
    """The seed stream of the MLA parameters (names the dims, so other dims draw other weights)."""
    d = mla_dims(problem)
    return "mla-params/" + "/".join(f"{k}{v}" for k, v in sorted(d.items()))


def draw_mla_params(rng, problem: Problem) -> dict:
    """The MLA parameter recipe (torch Linear layout (out, in)), unrounded; NumPy or device draws."""
    d = mla_dims(problem)
    h, dm = problem.hq, problem.d_model
    return {
        "wq_a": _weight(rng, d["q_lora"], dm),
        "q_norm": 1.0 + 0.2 * rng.standard_normal(d["q_lora"]),
        "wq_b": _weight(rng, h * (d["nope_dim"] + d["rope_dim"]), d["q_lora"]),
        "wkv_a": _weight(rng, d["kv_lora"] + d["rope_dim"], dm),
        "kv_norm": 1.0 + 0.2 * rng.standard_normal(d["kv_lora"]),
        "wkv_b": _weight(rng, h * (d["nope_dim"] + d["v_dim"]), d["kv_lora"]),
        "wo": _weight(rng, dm, h * d["v_dim"]),
    }


@lru_cache(maxsize=32)
def mla_params_np(problem: Problem) -> dict[str, np.ndarray]:
    """Canonical float64 MLA parameters (torch Linear layout (out, in)), representable in the dtype."""
    return finish(draw_mla_params(rng_for(problem, mla_params_stream(problem)), problem), problem)


def latent_params_stream(problem: Problem) -> str:
    """The seed stream of the latent-layer parameters."""
    return f"latent-params/{latent_rank(problem)}"


def draw_latent_params(rng, problem: Problem) -> dict:
    """The latent-layer parameter recipe, unrounded; NumPy or device draws."""
    r = latent_rank(problem)
    h, dm = problem.hq, problem.d_model
    return {
        "wq": _weight(rng, h * problem.dqk, dm),
        "wkv_a": _weight(rng, r, dm),
        "wkv_b": _weight(rng, h * (problem.dqk + problem.dv), r),
        "wo": _weight(rng, dm, h * problem.dv),
    }


@lru_cache(maxsize=32)
def latent_params_np(problem: Problem) -> dict[str, np.ndarray]:
    """Canonical float64 latent-layer parameters, representable in the dtype."""
    return finish(draw_latent_params(rng_for(problem, latent_params_stream(problem)), problem), problem)


# ----------------------------------------------------------------------------- MLA oracle


def mla_forward(problem: Problem, x: np.ndarray, params: dict[str, np.ndarray]):
    """Float64 MLA layer forward. Returns (y, saved) with the intermediates the backward needs."""
    d = mla_dims(problem)
    b, L, _ = x.shape
    h, dn, dr, dvv, rq = problem.hq, d["nope_dim"], d["rope_dim"], d["v_dim"], d["kv_lora"]
    x = np.asarray(x, dtype=np.float64)
    cos, sin = rope_tables(L, dr)
    cq_raw = x @ params["wq_a"].T
    cq, r_q = rms_forward(cq_raw, params["q_norm"])
    qf = (cq @ params["wq_b"].T).reshape(b, L, h, dn + dr)
    q_pe = rope_apply(qf[..., dn:], cos[:, None, :], sin[:, None, :])
    q = np.concatenate([qf[..., :dn], q_pe], axis=-1)
    kv = x @ params["wkv_a"].T
    ckv_raw, kpe_raw = kv[..., :rq], kv[..., rq:]
    k_pe = rope_apply(kpe_raw, cos, sin)  # (b, L, rope): one per token, shared by the heads
    ckv, r_kv = rms_forward(ckv_raw, params["kv_norm"])
    kvb = (ckv @ params["wkv_b"].T).reshape(b, L, h, dn + dvv)
    k = np.concatenate([kvb[..., :dn], np.broadcast_to(k_pe[:, :, None, :], (b, L, h, dr))], axis=-1)
    v = kvb[..., dn:]
    qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    core = core_problem(problem)
    o, _, _, _ = oracle.forward(core, qt, kt, vt)
    o2 = o.transpose(0, 2, 1, 3).reshape(b, L, h * dvv)
    y = o2 @ params["wo"].T
    saved = dict(x=x, cos=cos, sin=sin, cq_raw=cq_raw, cq=cq, r_q=r_q, ckv_raw=ckv_raw, ckv=ckv, r_kv=r_kv,
                 qt=qt, kt=kt, vt=vt, o2=o2)
    return y, saved


def mla_backward(problem: Problem, x: np.ndarray, params: dict[str, np.ndarray], dy: np.ndarray):
    """Float64 gradients of sum(y * dy) for x and every MLA parameter (keys as in MLA_PARAM_NAMES + 'x')."""
    d = mla_dims(problem)
    b, L, _ = np.shape(x)
    h, dn, dr, dvv = problem.hq, d["nope_dim"], d["rope_dim"], d["v_dim"]
    _, s = mla_forward(problem, x, params)
    dy = np.asarray(dy, dtype=np.float64)
    g = {"wo": _lin_grad(dy, s["o2"])}
    do = (dy @ params["wo"]).reshape(b, L, h, dvv).transpose(0, 2, 1, 3)
    dq, dk, dv = oracle.backward(core_problem(problem), s["qt"], s["kt"], s["vt"], do)
    dq, dk, dv = (a.transpose(0, 2, 1, 3) for a in (dq, dk, dv))  # (b, L, h, .)
    cos, sin = s["cos"], s["sin"]
    # query side: undo RoPE on the rope slice, then wq_b, RMSNorm, wq_a
    dq_pe_raw = rope_apply(dq[..., dn:], cos[:, None, :], sin[:, None, :], inverse=True)
    dqf = np.concatenate([dq[..., :dn], dq_pe_raw], axis=-1).reshape(b, L, h * (dn + dr))
    g["wq_b"] = _lin_grad(dqf, s["cq"])
    dcq = dqf @ params["wq_b"]
    dcq_raw, g["q_norm"] = rms_backward(s["cq_raw"], params["q_norm"], s["r_q"], dcq)
    g["wq_a"] = _lin_grad(dcq_raw, s["x"])
    dx = dcq_raw @ params["wq_a"]
    # key/value side: the shared k_pe collects the gradient of every head
    dkpe_raw = rope_apply(dk[..., dn:].sum(axis=2), cos, sin, inverse=True)
    dkvb = np.concatenate([dk[..., :dn], dv], axis=-1).reshape(b, L, h * (dn + dvv))
    g["wkv_b"] = _lin_grad(dkvb, s["ckv"])
    dckv = dkvb @ params["wkv_b"]
    dckv_raw, g["kv_norm"] = rms_backward(s["ckv_raw"], params["kv_norm"], s["r_kv"], dckv)
    dkv = np.concatenate([dckv_raw, dkpe_raw], axis=-1)
    g["wkv_a"] = _lin_grad(dkv, s["x"])
    dx = dx + dkv @ params["wkv_a"]
    g["x"] = dx
    return g


# ----------------------------------------------------------------------------- latent-layer oracle


def latent_forward(problem: Problem, x: np.ndarray, params: dict[str, np.ndarray]):
    """Float64 plain latent attention layer forward. Returns (y, saved)."""
    latent_rank(problem)
    b, L, _ = np.shape(x)
    h, dqk, dvv = problem.hq, problem.dqk, problem.dv
    x = np.asarray(x, dtype=np.float64)
    q = (x @ params["wq"].T).reshape(b, L, h, dqk)
    c = x @ params["wkv_a"].T
    kvb = (c @ params["wkv_b"].T).reshape(b, L, h, dqk + dvv)
    qt = q.transpose(0, 2, 1, 3)
    kt = kvb[..., :dqk].transpose(0, 2, 1, 3)
    vt = kvb[..., dqk:].transpose(0, 2, 1, 3)
    o, _, _, _ = oracle.forward(core_problem(problem), qt, kt, vt)
    o2 = o.transpose(0, 2, 1, 3).reshape(b, L, h * dvv)
    return o2 @ params["wo"].T, dict(x=x, c=c, qt=qt, kt=kt, vt=vt, o2=o2)


def latent_backward(problem: Problem, x: np.ndarray, params: dict[str, np.ndarray], dy: np.ndarray):
    """Float64 gradients of sum(y * dy) for x and every latent-layer parameter."""
    b, L, _ = np.shape(x)
    h, dqk, dvv = problem.hq, problem.dqk, problem.dv
    _, s = latent_forward(problem, x, params)
    dy = np.asarray(dy, dtype=np.float64)
    g = {"wo": _lin_grad(dy, s["o2"])}
    do = (dy @ params["wo"]).reshape(b, L, h, dvv).transpose(0, 2, 1, 3)
    dq, dk, dv = oracle.backward(core_problem(problem), s["qt"], s["kt"], s["vt"], do)
    dq, dk, dv = (a.transpose(0, 2, 1, 3) for a in (dq, dk, dv))
    dqf = dq.reshape(b, L, h * dqk)
    g["wq"] = _lin_grad(dqf, s["x"])
    dkvb = np.concatenate([dk, dv], axis=-1).reshape(b, L, h * (dqk + dvv))
    g["wkv_b"] = _lin_grad(dkvb, s["c"])
    dc = dkvb @ params["wkv_b"]
    g["wkv_a"] = _lin_grad(dc, s["x"])
    g["x"] = dqf @ params["wq"] + dc @ params["wkv_a"]
    return g


# ----------------------------------------------------------------------------- torch plain math (the base)


def _t_rms(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return z * torch.rsqrt(z.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS) * g


def _t_rope(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = z[..., 0::2], z[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _t_attention(problem: Problem, q, k, v):
    """Unfused attention with the mask of the core problem, (b, L, h, d) layout in and out."""
    from attnsuite import mask_mods

    qt, kt, vt = (a.transpose(1, 2) for a in (q, k, v))
    s = (qt @ kt.transpose(-2, -1)) * problem.softmax_scale
    allowed = mask_mods.dense_bool_mask(core_problem(problem), str(q.device))
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(s, dim=-1) @ vt).transpose(1, 2)


def mla_torch(problem: Problem, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain-math MLA in x's dtype (the tolerance rule's base; independent of impls/mla/mla.py)."""
    d = mla_dims(problem)
    b, L, _ = x.shape
    h, dn, dr, rq = problem.hq, d["nope_dim"], d["rope_dim"], d["kv_lora"]
    cos_np, sin_np = rope_tables(L, dr)
    cos = torch.from_numpy(cos_np).to(x.device, x.dtype)
    sin = torch.from_numpy(sin_np).to(x.device, x.dtype)
    q = (_t_rms(x @ p["wq_a"].T, p["q_norm"]) @ p["wq_b"].T).view(b, L, h, dn + dr)
    q = torch.cat([q[..., :dn], _t_rope(q[..., dn:], cos[:, None], sin[:, None])], dim=-1)
    kv = x @ p["wkv_a"].T
    k_pe = _t_rope(kv[..., rq:], cos, sin)
    kvb = (_t_rms(kv[..., :rq], p["kv_norm"]) @ p["wkv_b"].T).view(b, L, h, -1)
    k = torch.cat([kvb[..., :dn], k_pe[:, :, None, :].expand(b, L, h, dr)], dim=-1)
    o = _t_attention(problem, q, k, kvb[..., dn:])
    return o.reshape(b, L, -1) @ p["wo"].T


def latent_torch(problem: Problem, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain-math latent attention layer in x's dtype (the base)."""
    b, L, _ = x.shape
    h, dqk = problem.hq, problem.dqk
    q = (x @ p["wq"].T).view(b, L, h, dqk)
    kvb = ((x @ p["wkv_a"].T) @ p["wkv_b"].T).view(b, L, h, -1)
    o = _t_attention(problem, q, kvb[..., :dqk], kvb[..., dqk:])
    return o.reshape(b, L, -1) @ p["wo"].T


# ----------------------------------------------------------------------------- family glue


def _reference_with(forward, backward, params_np):
    """The family's float64 (y, grads) on its seeded inputs and canonical parameters (cached)."""

    @lru_cache(maxsize=32)
    def reference(problem: Problem):
        x, dy = layer_inputs_np(problem)
        params = params_np(problem)
        y, _ = forward(problem, x, params)
        return y, backward(problem, x, params, dy)

    return reference


def _base_with(fn, params_np):
    """The family's base: ``fn(problem, x, params)`` in the problem's dtype, gradients by autograd."""

    def base(problem: Problem):
        return autograd_base(problem, partial(fn, problem), *layer_family_inputs(problem), params=params_np(problem))

    return base


def _spread(shapes: list, n: int) -> list:
    """The first dtype gets every shape causal and unmasked; later ones one mask per shape, alternating."""
    masks = (Mask("causal"), Mask())
    if n == 0:
        return [(s, m) for s in shapes for m in masks]
    return [(s, masks[(i + n) % 2]) for i, s in enumerate(shapes)]


def _spread_problems(make, shapes: list, device: str, dtypes: tuple) -> list[Problem]:
    """``make(*shape, mask=..., dtype=..., device=...)`` for every dtype, the masks spread by :func:`_spread`."""
    return [make(*shape, mask=mask, dtype=dtype, device=device)
            for n, dtype in enumerate(dtypes) for shape, mask in _spread(shapes, n)]


def mla_problems(device: str, dtypes: tuple) -> list[Problem]:
    """Correctness problems of ``mla-layer``: tiny dims (CPU) or a mid size (CUDA), causal and not."""
    if device.startswith("cuda"):
        shapes = [(2, 128, 512, 4, 96, 64, 32, 16, 32), (1, 97, 256, 2, 48, 32, 16, 8, 24)]
    else:
        shapes = [(2, 13, 64, 2, 24, 16, 8, 4, 8), (1, 17, 48, 3, 20, 12, 6, 6, 10)]
    return _spread_problems(mla_problem, shapes, device, dtypes)


def latent_problems(device: str, dtypes: tuple) -> list[Problem]:
    """Correctness problems of ``latent-layer``."""
    if device.startswith("cuda"):
        shapes = [(2, 128, 512, 4, 64, 64, 64), (1, 97, 256, 2, 32, 48, 24)]
    else:
        shapes = [(2, 13, 48, 2, 12, 16, 16), (1, 17, 40, 3, 10, 12, 8)]
    return _spread_problems(latent_problem, shapes, device, dtypes)


def _layer_family(name: str, params_np, draw, stream, forward, backward, torch_fn, problems,
                  description: str, args: tuple[str, ...], check=None) -> Family:
    """Register a layer family of this module: float64 ``forward``/``backward``, ``torch_fn`` as the base.

    ``draw(rng, problem)`` is its parameter recipe and ``stream(problem)`` the recipe's seed stream.
    """
    return register_family(
        Family(
            name=name,
            level="layer",
            inputs=layer_family_inputs,
            reference=_reference_with(forward, backward, params_np),
            base=_base_with(torch_fn, params_np),
            params=params_np,
            device_inputs=device_layer_inputs(draw, stream),
            problems=problems,
            description=description,
            check=check,
            args=frozenset(args),
        )
    )


MLA_FAMILY = _layer_family(
    "mla-layer", mla_params_np, draw_mla_params, mla_params_stream,
    mla_forward, mla_backward, mla_torch, mla_problems,
    "DeepSeek-V3 MLA: compressed q and kv (RMSNorm), decoupled RoPE part shared by heads",
    MLA_ARGS, check=mla_dims,
)

LATENT_FAMILY = _layer_family(
    "latent-layer", latent_params_np, draw_latent_params, latent_params_stream,
    latent_forward, latent_backward, latent_torch, latent_problems,
    "plain low-rank latent attention: K/V decompressed from one latent, no decoupled RoPE",
    ("kv_lora",),  # no query compression: q = x wq^T (a q_lora would be read by nothing)
)
