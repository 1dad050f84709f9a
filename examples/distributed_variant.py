"""A minimal distributed variant (docs/distributed.md): every rank gathers all K/V, then attends locally.

Load it like any external variant (``--attn-variants examples/distributed_variant.py`` or
``registry.load_external``); test_correctness/test_distributed.py runs it on 2 and 3 ranks through
the suite's checks. It is a teaching example, not a fast one: it holds the whole K/V on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from attnsuite import mask_mods
from attnsuite.distributed.shard import positions
from attnsuite.distributed.variant import DistributedVariant
from attnsuite.registry import register


class GatherSequence(torch.autograd.Function):
    """All-gather the ranks' shards along the sequence (dim 2), differentiably: in backward each
    rank's gradient for the whole sequence is summed over the ranks and each keeps its own shard.

    Written out rather than torch.distributed.nn.functional.all_gather: on gloo (torch 2.13) that
    one's backward returned a wrong gradient when the incoming gradient was not contiguous (here dK
    when hq == hkv: the scores' transpose leaves it so), and the suite's backward check caught it.
    """

    @staticmethod
    def forward(fctx, x, group, world_size, rank):
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        fctx.group, fctx.rank, fctx.n = group, rank, x.shape[2]
        return torch.cat(parts, dim=2)  # contiguous shards: rank order = global order

    @staticmethod
    def backward(fctx, grad):
        total = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: never autograd's own
        dist.all_reduce(total, group=fctx.group)  # every rank used every shard
        return total.narrow(2, fctx.rank * fctx.n, fctx.n), None, None, None


@register
class GatherKV(DistributedVariant):
    name = "example-gather-kv"
    description = "example: all-gather K/V, attend locally with the mask at global positions"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa"})
    sharding = "contiguous"
    returns_lse = True

    def world_reasons(self, problem, world_size, device):
        # all_gather needs equal shards: refuse, with the reason, what it cannot split evenly
        if problem.lk % world_size:
            return [f"{self.name}: lk={problem.lk} is not a multiple of P={world_size} (all_gather needs equal shards)"]
        return []

    def build_rank(self, problem, ctx):
        allowed = None
        mod = mask_mods.mask_mod(problem, str(ctx.device))
        if mod is not None:  # this rank's query rows against every key, at global positions
            qi = positions(ctx.layout.q[ctx.rank], ctx.device)[:, None]
            kj = torch.arange(problem.lk, device=ctx.device)[None, :]
            zero = torch.zeros((), dtype=torch.long, device=ctx.device)
            allowed = mod(zero, zero, qi, kj)

        def run(q, k, v):
            k_all = GatherSequence.apply(k, ctx.group, ctx.world_size, ctx.rank)
            v_all = GatherSequence.apply(v, ctx.group, ctx.world_size, ctx.rank)
            ctx.bytes_sent += (ctx.world_size - 1) * (k.numel() * k.element_size() + v.numel() * v.element_size())
            g = problem.hq // problem.hkv
            k_all, v_all = k_all.repeat_interleave(g, dim=1), v_all.repeat_interleave(g, dim=1)
            s = (q.float() @ k_all.float().transpose(-2, -1)) * problem.softmax_scale
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            lse = torch.logsumexp(s, dim=-1)
            out = torch.exp(s - lse.unsqueeze(-1)) @ v_all.float()
            return out.to(q.dtype), lse.detach()

        return run
