"""Plain math dense layers in the problem's own dtype: the ``X_base`` of the tolerance rule for layers.

Written independently of the variants in ``impls`` (a variant sharing this code would be compared
against itself): projections as plain matmuls, the QK norms spelled out as mean/variance
arithmetic in the dtype (no fused norm kernel), attention from :mod:`attnsuite.reference_math`.
Gradients come from autograd. ``|X_base - X_ref|`` is what an unfused layer in that dtype costs.
"""

from __future__ import annotations

import torch

from attnsuite import reference_math
from attnsuite.problem import Problem


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(b, l, h*d) -> (b, h, l, d)."""
    b, l, hd = t.shape
    return t.reshape(b, l, h, hd // h).transpose(1, 2)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis in x's dtype, as plain arithmetic."""
    mu = x.mean(dim=-1, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(dim=-1, keepdim=True)
    return xc / torch.sqrt(var + eps) * w + b


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis in x's dtype, as plain arithmetic."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def layer(problem: Problem, norm: str, x: torch.Tensor, params: dict[str, torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """y = (o_proj . attention . [QK norm] . qkv_proj)(x) for x of shape (batch, l, d_model).

    ``norm`` is "none", "layernorm" (params qn_w, qn_b, kn_w, kn_b) or "rmsnorm" (qn_w, kn_w);
    ``params`` holds the canonical weights (nn.Linear convention y = x W^T + b).
    """
    p = params
    h = problem.hq
    q = _heads(x @ p["wq"].transpose(0, 1) + p["bq"], h)
    k = _heads(x @ p["wk"].transpose(0, 1) + p["bk"], h)
    v = _heads(x @ p["wv"].transpose(0, 1) + p["bv"], h)
    if norm == "layernorm":
        q = layer_norm(q, p["qn_w"], p["qn_b"], eps)
        k = layer_norm(k, p["kn_w"], p["kn_b"], eps)
    elif norm == "rmsnorm":
        q = rms_norm(q, p["qn_w"], eps)
        k = rms_norm(k, p["kn_w"], eps)
    elif norm != "none":
        raise ValueError(f"unknown QK norm {norm!r}; known: none, layernorm, rmsnorm")
    o = reference_math.attention(problem, q, k, v)  # (b, h, l, dv)
    b, _, l, dv = o.shape
    o = o.transpose(1, 2).reshape(b, l, h * dv)
    return o @ p["wo"].transpose(0, 1) + p["bo"]
