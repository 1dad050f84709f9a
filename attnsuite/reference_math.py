"""Plain math attention in the variant's own dtype: the ``X_base`` of the tolerance rule.

Written independently of every registered variant (a variant that shared this code would be
compared against itself). Scores are formed in the problem's dtype exactly as an unfused
implementation would, so ``|X_base - X_ref|`` measures what that dtype costs on that device.
"""

from __future__ import annotations

import torch

from . import mask_mods
from .problem import Problem


def attention(problem: Problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(mods(scale * q k^T) + mask) v in q's dtype; fully masked rows come out as zeros."""
    group = problem.hq // problem.hkv
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    s = (q * problem.softmax_scale) @ k.transpose(-2, -1)
    if problem.alibi:
        qi = torch.arange(problem.lq, device=q.device)[:, None] + problem.align_offset
        kj = torch.arange(problem.lk, device=q.device)[None, :]
        slopes = mask_mods.alibi_slopes(problem.hq, str(q.device), s.dtype)
        s = s - slopes[:, None, None] * (qi - kj).abs().to(s.dtype)
    if problem.softcap is not None:
        s = problem.softcap * torch.tanh(s / problem.softcap)
    allowed = mask_mods.dense_bool_mask(problem, str(q.device))
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # fully masked rows
    return p @ v
