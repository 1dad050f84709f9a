"""Ulysses-style head parallelism: trade sequence shards of every head for the whole sequence of some heads.

Rank r holds rows ``layout.q[r]`` of every head. :func:`seq_to_heads` sends head group j (hq/P
heads) of its rows to rank j and receives, from every rank, that rank's rows of its own head
group: afterwards it holds the whole sequence (in rank order, which is global order for a
contiguous layout) of hq/P heads and can attend locally. :func:`heads_to_seq` is the inverse.
Both are differentiable: the gradient of an all-to-all is the all-to-all with the splits swapped.
Uneven shards are fine (the splits are per rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .variant import RankContext


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], rank_ctx: RankContext):
        ctx.send, ctx.recv, ctx.rank_ctx = send, recv, rank_ctx
        return _exchange(x, send, recv, rank_ctx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad.contiguous(), ctx.recv, ctx.send, ctx.rank_ctx), None, None, None


def _exchange(x: torch.Tensor, send: list[int], recv: list[int], ctx: RankContext) -> torch.Tensor:
    out = x.new_empty(sum(recv))
    dist.all_to_all_single(out, x.contiguous().view(-1), recv, send, group=ctx.group)
    ctx.bytes_sent += (sum(send) - send[ctx.rank]) * x.element_size()  # what leaves this rank
    return out


def seq_to_heads(x: torch.Tensor, rows: list[int], ctx: RankContext) -> torch.Tensor:
    """(b, h, rows[rank], d) on each rank -> (b, h/P, sum(rows), d): all rows of this rank's head group."""
    P = ctx.world_size
    b, h, n, d = x.shape
    hp = h // P
    parts = x.view(b, P, hp, n, d).transpose(0, 1).contiguous()  # (P, b, hp, n, d): part j goes to rank j
    got = _AllToAll.apply(parts.view(-1), [b * hp * n * d] * P, [b * hp * m * d for m in rows], ctx)
    pieces = torch.split(got, [b * hp * m * d for m in rows])
    return torch.cat([p.view(b, hp, m, d) for p, m in zip(pieces, rows)], dim=2)


def heads_to_seq(y: torch.Tensor, rows: list[int], ctx: RankContext) -> torch.Tensor:
    """(b, h/P, sum(rows), d) -> (b, h, rows[rank], d): the inverse of :func:`seq_to_heads`."""
    P = ctx.world_size
    b, hp, _, d = y.shape
    parts = torch.cat([p.reshape(-1) for p in torch.split(y, rows, dim=2)])  # part j: rank j's rows
    n = rows[ctx.rank]
    got = _AllToAll.apply(parts, [b * hp * m * d for m in rows], [b * hp * n * d] * P, ctx)
    return got.view(P, b, hp, n, d).transpose(0, 1).reshape(b, P * hp, n, d)
