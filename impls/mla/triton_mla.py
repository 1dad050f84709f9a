"""``triton-mla-absorbed``: DeepSeek-V3 MLA in its absorbed form, the attention core a Triton kernel.

The layer is :class:`.mla.MLA` with ``absorbed=True`` (the key up-projection folded into the
query, the value up-projection applied after attention); only the attention core changes: instead
of SDPA's math path over a (q, k, v) with k = [c_kv, k_pe] and v = c_kv (576/512 at DeepSeek-V3
size, which no fused SDPA kernel takes), :mod:`.triton_kernels.mla` reads the latent cache
once per tile for both the scores and the values and never materialises the score matrix. The
module's ``decode`` (new tokens against the latent cache, bottom-right causal) goes through the
same kernel.

Forward only: the kernel has no backward yet, so the variant declares none (backward_devices is
empty) and a backward through it raises instead of returning silently wrong gradients.
Deterministic (no atomics). bf16 and fp16 on CUDA; fp32 too on the CPU interpreter.
"""

from __future__ import annotations

import torch

from attnsuite.problem import Problem
from attnsuite.registry import register
from attnsuite.triton_support import interpreter_budget, triton_reasons

from .mla import MLA, _LatentVariant
from .triton_kernels import kernels


CPU_MAX_MLA_STEPS = 8  # interpreter budget (64x64 tile steps): the CPU correctness problems take 1-2


# Bytes of one head chunk's latent query (B, heads, LQ, kv_lora) in the absorbed core: the heads go
# through the kernel in chunks of at most this size, so the latent query and output of all 128
# DeepSeek-V3 heads (0.5 GiB each at B 2, L 2048) never live at once (docs/triton.md, MLA).
HEAD_CHUNK_BYTES = 128 * 2**20


class _MLACore(torch.autograd.Function):
    """The Triton core as an autograd node whose backward says it does not exist."""

    @staticmethod
    def forward(ctx, q_lat, q_pe, kv, scale: float, causal: bool):
        return kernels("mla", q_lat.device.type).mla_forward(q_lat, q_pe, kv, scale, causal)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("triton-mla-absorbed has no backward kernel (forward only; see impls/mla/triton_mla.py)")


class TritonAbsorbedMLA(MLA):
    """MLA, absorbed form, attention core in Triton."""

    def _attend_absorbed(self, q_nope, q_pe, c_kv, k_pe) -> torch.Tensor:
        # Heads lead every tensor of the core (h, b * lq, ...): the per-head up-projections are then
        # batched matmuls, and the kernel writes its output in that layout (it follows q_lat's
        # strides). Both matmuls read and write the layer's own layouts through strides: q_nope's
        # heads are a strided batch of it, and the value up-projection writes each head's rows
        # straight into o (b, lq, h, dv); a copy into o after it had cost 0.18 ms of the 6.6 ms
        # DeepSeek-V3 forward on an H200 (scripts/mla_cand/layer_probe.py, docs/triton.md).
        b, lq = q_nope.shape[0], q_nope.shape[1]
        w = self.wkv_b.view(self.h, self.dn + self.dv, self.kv_lora)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn :]
        kv = torch.cat([c_kv, k_pe], dim=-1)  # (b, lk, kv_lora + rope): the one shared head
        q_h = q_nope.permute(2, 0, 1, 3).reshape(self.h, b * lq, self.dn)
        o = q_nope.new_empty((b, lq, self.h, self.dv))
        per_head = b * lq * self.kv_lora * q_nope.element_size()
        chunk = max(1, min(self.h, HEAD_CHUNK_BYTES // max(per_head, 1)))
        for h0 in range(0, self.h, chunk):
            heads = slice(h0, min(h0 + chunk, self.h))
            n = heads.stop - heads.start
            q_lat = torch.bmm(q_h[heads], w_uk[heads]).view(n, b, lq, self.kv_lora)
            o_lat = _MLACore.apply(q_lat.transpose(0, 1), q_pe[:, :, heads].transpose(1, 2), kv, self.scale,
                                   self.causal)
            o_lat = o_lat.transpose(0, 1).reshape(n, b * lq, self.kv_lora)
            if torch.is_grad_enabled() and (o_lat.requires_grad or w_uv.requires_grad):
                # autograd refuses out=; recorded this way, a backward reaches the core's, which says it has none
                o[:, :, heads] = torch.bmm(o_lat, w_uv[heads].transpose(1, 2)).view(n, b, lq, self.dv).permute(1, 2, 0, 3)
            else:
                # a view, never a copy (view raises where reshape would copy and leave o unwritten)
                o_heads = o[:, :, heads].permute(2, 0, 1, 3).view(n, b * lq, self.dv)
                torch.bmm(o_lat, w_uv[heads].transpose(1, 2), out=o_heads)
            q_lat = o_lat = None  # this chunk's latent tensors go before the next chunk's are made
        return o.reshape(b, lq, self.h * self.dv)


@register
class TritonMLAAbsorbed(_LatentVariant):
    name = "triton-mla-absorbed"
    family = "mla-layer"
    description = "DeepSeek-V3 MLA, absorbed form, attention core a Triton kernel over the latent cache (forward only)"
    backend = "triton"
    module = TritonAbsorbedMLA
    absorbed = True
    dtypes = frozenset({"bfloat16", "float16", "float32"})
    backward_devices = frozenset()  # the kernel is forward only (see the module docstring)
    fused = True
    # the module's prefill/step over its latent cache: every decode step through the kernel (it had not
    # been declared, so the layer-decode workload and the decode checks skipped this variant)
    decodes = True

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        # one tile stream per batch over the (query position, head) rows
        budget = interpreter_budget(problem.device, problem.batch, problem.lq * problem.hq, problem.lk,
                                    limit=CPU_MAX_MLA_STEPS)
        return super().extra_reasons(problem, backward) + triton_reasons(problem) + budget
