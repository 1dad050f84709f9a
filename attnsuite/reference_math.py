"""Plain math attention in the variant's own dtype: the ``X_base`` of the tolerance rule.

Written independently of every registered variant (a variant that shared this code would be
compared against itself). Scores are formed in the problem's dtype exactly as an unfused
implementation would, so ``|X_base - X_ref|`` measures what that dtype costs on that device.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import mask_mods
from .problem import Problem


def attention(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rows: Optional[torch.Tensor] = None, heads: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(mods(scale * q k^T) + mask) v in q's dtype; fully masked rows come out as zeros.

    For a few rows of a long problem (attnsuite/spot_check.py): ``rows`` gives the query positions
    of q's rows, and ``heads`` the query head of each slice along q's second axis, k and v then
    holding the key/value head each of those reads (no repeat)."""
    if heads is None:
        group = problem.hq // problem.hkv
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        heads = torch.arange(problem.hq, device=q.device)
    s = (q * problem.softmax_scale) @ k.transpose(-2, -1)
    qpos = rows if rows is not None else torch.arange(problem.lq, device=q.device)
    kj = torch.arange(problem.lk, device=q.device)[None, :]
    if problem.alibi:
        qi = qpos[:, None] + problem.align_offset
        slopes = mask_mods.alibi_slopes(problem.hq, str(q.device), s.dtype)[heads]
        s = s - slopes[:, None, None] * (qi - kj).abs().to(s.dtype)
    if problem.softcap is not None:
        s = problem.softcap * torch.tanh(s / problem.softcap)
    if rows is None:
        allowed = mask_mods.dense_bool_mask(problem, str(q.device))
    else:
        mod = mask_mods.mask_mod(problem, str(q.device))
        zero = torch.zeros((), dtype=torch.long, device=q.device)
        allowed = None if mod is None else torch.broadcast_to(mod(zero, zero, qpos[:, None], kj), (len(qpos), problem.lk))
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully masked rows
    return p @ v
