"""A variant that lives outside the suite's repository.

Register it without editing the suite:

    pytest test_correctness --attn-variants examples/external_variant.py --attn-only chunked-queries
    ATTNSUITE_VARIANTS=examples/external_variant.py pytest bench --benchmark-only

or, from an installed package, with an entry point in its pyproject.toml:

    [project.entry-points."attnsuite.variants"]
    mine = "my_package.attention_variants"

It computes attention a block of queries at a time (bounded memory for long query lengths), so it
declares which masks and features it takes and is checked like any built-in variant.
"""

from __future__ import annotations

import torch

from attnsuite import mask_mods
from attnsuite.registry import KernelVariant, register


@register
class ChunkedQueries(KernelVariant):
    name = "chunked-queries"
    description = "explicit attention over blocks of 16 queries"
    masks = frozenset({"none", "causal", "window", "random"})
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    chunk = 16

    def build(self, problem):
        allowed = mask_mods.dense_bool_mask(problem)
        scale, chunk = problem.softmax_scale, self.chunk

        def run(q, k, v):
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            outs = []
            for start in range(0, q.shape[2], chunk):
                s = q[:, :, start : start + chunk] @ k.transpose(-1, -2) * scale
                if allowed is None:
                    outs.append(torch.softmax(s, -1) @ v)
                    continue
                rows = allowed[start : start + chunk]
                dead = ~rows.any(-1, keepdim=True)  # a query that may see no key outputs zeros, not NaN
                s = s.masked_fill(~rows, float("-inf")).masked_fill(dead, 0.0)
                outs.append(torch.softmax(s, -1).masked_fill(dead, 0.0) @ v)
            return torch.cat(outs, dim=2)

        return run
