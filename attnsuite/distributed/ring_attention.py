"""Ring attention over a real process group: K/V blocks travel around the ring, outputs merge in fp32.

Rank r holds its query rows and its key/value block. At step s it holds the block that started
on rank (r - s) mod P; while it computes with that block, the next one is already on its way
(``batch_isend_irecv`` posted before the compute, waited after it). Each block's contribution is
folded into a running online-softmax state (running max, running denominator, unnormalised
accumulator) in float32 (float64 for float64 problems), and the output is divided once at the
end; the log-sum-exp of every row comes out of the same state. The mask is evaluated at GLOBAL
positions (the layout's positions of the query rows and of the block's keys), so contiguous and
zigzag shards mean the same attention; a block the mask hides entirely is not computed.

Backward (:class:`RingAttention`, a ``torch.autograd.Function``) passes the blocks around the ring
again, in the other direction and in the order of :func:`backward_order`: first the block the
forward ended with (no transfer), its own block last. Each block carries its dK/dV (in the
accumulation dtype): a rank computes its share, adds what the block gathered on the ranks before
(in flight while it computed) and passes block and sum on; the block reaches its owner at the last
step with every other rank's share, so the last transfer overlaps the owner's compute and nothing
waits at the end. dQ stays local.

GQA: query head h reads key/value head h // (hq / hkv); queries are viewed as (hkv, group) and
the K/V blocks are used as they are, never repeated (neither on the wire nor in memory).

Full and diagonal pairs go through SDPA's fused kernels (cuDNN's on CUDA where it runs, else
FlashAttention-2's: :class:`FusedOps`) where the problem allows (:func:`fused_allowed`: none/causal
masks, bf16/fp16, and fp32 on CPU); every other pair, and every pair with ``fused=False``, through
the plain-math path with the mask at global positions.

``fault`` (None in every registered variant) injects one of the defects the tests must catch:
'drop-block' (the block received at step 1 is never merged), 'stale-max' (the running state is
not rescaled to the new maximum, i.e. rescaled against the stale one) and 'shift-positions'
(keys' global positions off by one).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

from .. import mask_mods
from ..problem import Problem
from .shard import Layout, size
from .variant import RankContext

FAULTS = ("drop-block", "stale-max", "shift-positions")


class Exchange:
    """Posted sends to rank ``to`` and receives from rank ``frm``; wait() completes them.

    By default the ring's direction: send to the next rank, receive from the previous one.
    """

    def __init__(self, ctx: RankContext, send: list[torch.Tensor], recv: list[torch.Tensor],
                 to: Optional[int] = None, frm: Optional[int] = None) -> None:
        nxt = (ctx.rank + 1) % ctx.world_size if to is None else to
        prev = (ctx.rank - 1) % ctx.world_size if frm is None else frm
        # empty blocks are neither sent nor received: both sides know the sizes from the layout
        ops = [dist.P2POp(dist.isend, t, nxt, ctx.group) for t in send if t.numel()]
        ops += [dist.P2POp(dist.irecv, t, prev, ctx.group) for t in recv if t.numel()]
        ctx.bytes_sent += sum(t.numel() * t.element_size() for t in send if t.numel())
        self._reqs = dist.batch_isend_irecv(ops) if ops else []
        self._keep = send  # the buffers being sent stay alive until the transfer is waited for

    def wait(self) -> None:
        for req in self._reqs:
            req.wait()
        self._reqs, self._keep = [], []


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class OnlineSoftmax:
    """Running (max m, denominator l, accumulator) of one rank's rows over the blocks merged so far."""

    def __init__(self, b: int, hq: int, n: int, dv: int, dtype: torch.dtype, device, stale_max: bool = False) -> None:
        self.m = torch.full((b, hq, n), float("-inf"), dtype=dtype, device=device)
        self.l = torch.zeros((b, hq, n), dtype=dtype, device=device)
        self.acc = torch.zeros((b, hq, n, dv), dtype=dtype, device=device)
        self.stale_max = stale_max
        self.n = n
        self._merged: list[tuple[int, int]] = []  # row ranges some block was merged into

    def merge(self, m_b: torch.Tensor, l_b: torch.Tensor, acc_b: torch.Tensor, rows: slice = slice(None)) -> None:
        """Fold in one block for ``rows``, given relative to its own max m_b: l_b = sum exp(s - m_b), acc_b = sum exp(s - m_b) v.

        ``acc_b`` may be in a lower precision than the state (a fused pair's bf16 output): the
        product with its fp32 weight is taken in the state's dtype. The accumulator, the largest
        tensor here, is updated in place through a view (one scale, one add), not rebuilt.
        """
        m, l, acc = self.m[..., rows], self.l[..., rows], self.acc[..., rows, :]
        lo, hi, _ = rows.indices(self.n)
        if not any(a < hi and lo < b for a, b in self._merged):
            # the rows' first block: the merge below would give exactly this (alpha 0, beta 1, or
            # both 0 for a row the block hides entirely), in three copies instead of a dozen passes
            self._merged.append((lo, hi))
            m.copy_(m_b)
            l.copy_(l_b)
            acc.copy_(acc_b)
            return
        m_new = torch.maximum(m, m_b)
        safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # rows that saw no key yet
        # the mutant rescales the old state against its own (stale) max: a factor of exactly 1
        alpha = torch.ones_like(m) if self.stale_max else torch.exp(m - safe)
        beta = torch.exp(m_b - safe)
        l.mul_(alpha).add_(beta * l_b)
        acc.mul_(alpha.unsqueeze(-1)).add_(beta.unsqueeze(-1) * acc_b)
        m.copy_(m_new)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, log-sum-exp); rows that saw no key come out as 0 and -inf.

        Ends the state: the output is the accumulator, normalised in place (no second copy of the
        largest tensor here).
        """
        live = self.l > 0
        l_safe = torch.where(live, self.l, torch.ones_like(self.l))
        out = self.acc.div_(l_safe.unsqueeze(-1)).masked_fill_(~live.unsqueeze(-1), 0.0)
        lse = torch.where(live, self.m + torch.log(l_safe), torch.full_like(self.l, float("-inf")))
        return out, lse


def _with_offsets(segments) -> list[tuple[int, int, int]]:
    """(global start, global end, offset in the shard) of each segment."""
    out, at = [], 0
    for a, b in segments:
        out.append((a, b, at))
        at += b - a
    return out


class FusedOps:
    """SDPA's fused kernels for one (query chunk, key chunk) pair: forward with its log-sum-exp, and
    the backward given the FINAL output and log-sum-exp (so the pair's share of the gradients).

    On CUDA the pair kernels are cuDNN's where they work, else FlashAttention-2's. The ring is as
    fast as its pair kernel: on an H200 (2 GPUs, B1 H16 d128 causal, L 64K, fwd+bwd) the ring over
    flash pairs reached 49% scaling efficiency against one GPU's cuDNN, and PyTorch's own context
    parallel 54% over flash and 89% over cuDNN. Which kernel a run uses is decided once per process
    by :func:`cudnn_pairs_work` (a forward and a backward on a small input of the same dtype and
    head dim) and named in ``kernel``.
    """

    def __init__(self, device: torch.device, scale: float, dtype: torch.dtype, head_dim: int,
                 kernel: Optional[str] = None) -> None:
        """``kernel`` forces "cudnn" or "flash" on CUDA (the probe's own use); by default it is probed."""
        self.cuda, self.scale = device.type == "cuda", scale
        self.kernel = "cpu-flash"
        if self.cuda:
            self.kernel = kernel or ("cudnn" if cudnn_pairs_work(device, dtype, head_dim) else "flash")

    def forward(self, q, k, v, causal: bool):
        """(out in q's dtype, lse float32 of shape (b, h, n), aux for the backward)."""
        if self.kernel == "cudnn":
            r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False,
                                                                   scale=self.scale)
            # (lse's shape as cuDNN gave it, cum_seq_q, cum_seq_k, max_q, max_k, philox seed, philox offset)
            return r[0], r[1].reshape(q.shape[:3]), (r[1].shape, *r[2:8])
        if self.cuda:
            r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=self.scale)
            return r[0], r[1], r[2:8]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=None,
                                                                             scale=self.scale)
        return out, lse, None

    def backward(self, do, q, k, v, out, lse, causal: bool, aux):
        """(dq, dk, dv) of the pair."""
        if self.kernel == "cudnn":
            lse_shape, cum_q, cum_k, max_q, max_k, seed, offset = aux
            r = torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
                do, q, k, v, out, lse.reshape(lse_shape), seed, offset, None, cum_q, cum_k, max_q, max_k, 0.0,
                causal, scale=self.scale)
        elif self.cuda:
            cum_q, cum_k, max_q, max_k, seed, offset = aux
            r = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                do, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, causal, seed, offset, scale=self.scale)
        else:
            r = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                do, q, k, v, out, lse, 0.0, causal, attn_mask=None, scale=self.scale)
        return r[0], r[1], r[2]


_CUDNN_WORKS: dict[tuple, bool] = {}


def cudnn_pairs_work(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether cuDNN's attention runs forward and backward here for this dtype and head dim (cached).

    Set ``ATTNSUITE_RING_KERNEL=flash`` to keep the ring on flash pairs (for comparison).
    """
    if os.environ.get("ATTNSUITE_RING_KERNEL", "") == "flash":
        return False
    key = (str(device), dtype, head_dim)
    if key not in _CUDNN_WORKS:
        try:
            q = torch.full((1, 2, 128, head_dim), 0.5, device=device, dtype=dtype)  # no draw: the RNG stays put
            ops = FusedOps(device, head_dim ** -0.5, dtype, head_dim, kernel="cudnn")
            out, lse, aux = ops.forward(q, q, q, True)
            grads = ops.backward(torch.ones_like(out), q, q, q, out, lse, True, aux)
            _CUDNN_WORKS[key] = bool(all(torch.isfinite(t).all() for t in (out, lse, *grads)))
        except Exception:  # no cuDNN attention for this dtype / head dim / build: flash pairs
            _CUDNN_WORKS[key] = False
    return _CUDNN_WORKS[key]


def fused_allowed(problem: Problem, device: torch.device) -> bool:
    """Whether the fused kernels can compute this problem's full and diagonal pairs (else all is math)."""
    dtypes = ("bfloat16", "float16") if device.type == "cuda" else ("bfloat16", "float16", "float32")
    return (problem.dtype in dtypes and problem.dqk == problem.dv and problem.dqk <= 256
            and problem.mask.kind in ("none", "causal") and not problem.alibi and problem.softcap is None)


class _Pairs:
    """One rank's (query segment, key segment) pairs with one K/V block, classified at GLOBAL positions.

    A pair is 'hidden' (the mask hides it all: not computed), 'full' (nothing hidden), 'diag' (the
    same positions on both sides under a causal mask: top-left causal within the pair) or
    'partial' (anything else: computed with the mask evaluated position by position).
    """

    def __init__(self, problem: Problem, ctx: RankContext, layout: Layout, q: torch.Tensor, fault: Optional[str],
                 fused: bool = True) -> None:
        self.problem, self.layout = problem, layout
        self.shift = 1 if fault == "shift-positions" else 0
        self.mod = mask_mods.mask_mod(problem, str(q.device))
        self.qsegs = _with_offsets(layout.q[ctx.rank])
        self.group = problem.hq // problem.hkv
        self.acc = _acc_dtype(q.dtype)
        self.q = q
        self._qg: Optional[torch.Tensor] = None
        self.zero = torch.zeros((), dtype=torch.long, device=q.device)
        self.fused = (FusedOps(q.device, problem.softmax_scale, q.dtype, problem.dqk)
                      if fused and fused_allowed(problem, q.device) else None)
        self.device = q.device

    @property
    def qg(self) -> torch.Tensor:
        """q in the accumulation dtype as (b, hkv, g, nq, d), for the math pairs only: made on first
        use, so a ring whose pairs all run fused never converts (or keeps) a float32 copy of q."""
        if self._qg is None:
            b, hq, n, d = self.q.shape
            self._qg = self.q.to(self.acc).view(b, self.problem.hkv, self.group, n, d)
        return self._qg

    def kind(self, qa: int, qb: int, ka: int, kb: int) -> str:
        kind = self.problem.mask.kind
        if kind == "none":
            return "full"
        if kind != "causal":
            return "partial"
        qa, qb = qa + self.problem.align_offset, qb + self.problem.align_offset  # key j visible iff j <= i + off
        if ka > qb - 1:
            return "hidden"
        if kb - 1 <= qa:
            return "full"
        return "diag" if (qa, qb) == (ka, kb) and self.shift == 0 else "partial"

    def pairs(self, src: int):
        """(query rows slice, key slice, kind, query positions, key positions) of the block of rank ``src``.

        Pairs with nothing masked need no positions, so neighbouring ones are merged into one call
        (a whole block per query segment without a mask; the late zigzag chunk against an earlier
        block under a causal mask): fewer, larger kernel calls.
        """
        ksegs = _with_offsets(self.layout.kv[src])
        if self.problem.mask.kind == "none" and self.shift == 0:
            nq, nk = sum(b - a for a, b, _ in self.qsegs), sum(b - a for a, b, _ in ksegs)
            if nq and nk:
                yield slice(0, nq), slice(0, nk), "full", None, None
            return
        for qa, qb, qo in self.qsegs:
            run = None  # a pending merged run of 'full' pairs: (start, stop) in the block
            for ka, kb, ko in ksegs:
                kind = self.kind(qa, qb, ka + self.shift, kb + self.shift)
                if kind == "full" and run is not None and run[1] == ko:
                    run = (run[0], ko + kb - ka)
                    continue
                if run is not None:
                    yield slice(qo, qo + qb - qa), slice(*run), "full", None, None
                    run = None
                if kind == "full":
                    run = (ko, ko + kb - ka)
                elif kind != "hidden":
                    qpos = torch.arange(qa, qb, device=self.device)
                    kpos = torch.arange(ka, kb, device=self.device) + self.shift
                    yield slice(qo, qo + qb - qa), slice(ko, ko + kb - ka), kind, qpos, kpos
            if run is not None:
                yield slice(qo, qo + qb - qa), slice(*run), "full", None, None

    def scores(self, qsl: slice, k: torch.Tensor, kind: str, qpos, kpos) -> Optional[torch.Tensor]:
        """Masked scores (b, hkv, g, nq, nk) in the accumulation dtype; None when the mask hides every one."""
        s = torch.matmul(self.qg[..., qsl, :], k.to(self.acc).unsqueeze(2).transpose(-2, -1)) * self.problem.softmax_scale
        if kind == "full" or self.mod is None:
            return s
        allowed = torch.broadcast_to(self.mod(self.zero, self.zero, qpos[:, None], kpos[None, :]), s.shape[-2:])
        if not bool(allowed.any()):
            return None
        return s.masked_fill(~allowed, float("-inf"))

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        """K or V with each head repeated for its query group, for the fused kernels only (never sent)."""
        return t if self.group == 1 else t.repeat_interleave(self.group, dim=1)


def ring_forward(problem: Problem, ctx: RankContext, layout: Layout, q, k, v, fault: Optional[str] = None,
                 fused: bool = True):
    """One rank's ring attention forward: (output in q's dtype, lse in the accumulation dtype, the
    fused pairs' aux by (source block, pair index), the K/V block held at the end).

    The block held at the end (rank r + 1's, for P > 1) is where the backward starts.
    """
    P, r = ctx.world_size, ctx.rank
    pairs = _Pairs(problem, ctx, layout, q, fault, fused)
    if pairs.fused is not None:
        ctx.notes["pair_kernel"] = pairs.fused.kernel
    b, hq, nq, _ = q.shape
    state = OnlineSoftmax(b, hq, nq, v.shape[-1], pairs.acc, q.device, stale_max=fault == "stale-max")
    aux: dict = {}
    kb, vb = k.contiguous(), v.contiguous()
    for step in range(P):
        src = (r - step) % P
        pending = None
        if step < P - 1:  # post the next block's transfer before computing with this one
            n_next = size(layout.kv[(r - step - 1) % P])
            k_next = kb.new_empty((*kb.shape[:2], n_next, kb.shape[-1]))
            v_next = vb.new_empty((*vb.shape[:2], n_next, vb.shape[-1]))
            pending = (Exchange(ctx, [kb, vb], [k_next, v_next]), k_next, v_next)
        if not (fault == "drop-block" and step == 1):
            ke = ve = None
            for i, (qsl, ksl, kind, qpos, kpos) in enumerate(pairs.pairs(src)):
                if pairs.fused is not None and kind in ("full", "diag"):
                    if ke is None:
                        ke, ve = pairs.expand(kb), pairs.expand(vb)
                    o_p, lse_p, aux[(src, i)] = pairs.fused.forward(
                        q[:, :, qsl], ke[:, :, ksl], ve[:, :, ksl], kind == "diag")
                    # a normalised pair result is a block with max lse, denominator 1, accumulator o
                    state.merge(lse_p.to(pairs.acc), torch.ones_like(lse_p, dtype=pairs.acc), o_p, qsl)
                    continue
                s = pairs.scores(qsl, kb[:, :, ksl], kind, qpos, kpos)
                if s is None:
                    continue
                m_b = s.amax(dim=-1)
                p = torch.exp(s - torch.where(torch.isfinite(m_b), m_b, torch.zeros_like(m_b)).unsqueeze(-1))
                pv = torch.matmul(p, vb[:, :, ksl].to(pairs.acc).unsqueeze(2))
                n = qsl.stop - qsl.start
                state.merge(m_b.reshape(b, hq, n), p.sum(-1).reshape(b, hq, n), pv.reshape(b, hq, n, -1), qsl)
        if pending is not None:
            pending[0].wait()
            kb, vb = pending[1], pending[2]
    out, lse = state.result()
    return out.to(q.dtype), lse, aux, (kb, vb)


def backward_order(rank: int, world_size: int) -> list[int]:
    """The K/V blocks in the order rank ``rank``'s backward visits them: rank + 1's first (the block
    the forward ended with), then rank + 2's, ..., its own last.

    Each block travels from rank to rank - 1 with its accumulated dK/dV and reaches its owner at the
    last step, where the owner adds its own share: the last transfer overlaps that compute and no
    gradient hop is left waiting at the end (visiting the own block first would leave one).
    """
    return [(rank + 1 + s) % world_size for s in range(world_size)]


def ring_backward(problem: Problem, ctx: RankContext, layout: Layout, q, k, v, out, lse, do, aux: dict,
                  last_kv: tuple, fault: Optional[str] = None, fused: bool = True):
    """One rank's (dq, dk, dv) of ring attention.

    Blocks are visited in :func:`backward_order`, passed against the forward's direction (received
    from the next rank, sent to the previous one). A block's dK/dV (float32) follow it: at each step a
    rank computes its share into a fresh buffer, then adds what the block has gathered so far (sent
    by the next rank one step earlier, so in flight during this compute) and passes the sum on.
    """
    P, r = ctx.world_size, ctx.rank
    prev, nxt = (r - 1) % P, (r + 1) % P
    pairs = _Pairs(problem, ctx, layout, q, fault, fused)
    acc, g, scale = pairs.acc, pairs.group, problem.softmax_scale
    b, hq, nq, _ = q.shape
    hkv = problem.hkv
    lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    lse_f = lse_safe.float().contiguous()  # the fused backward takes the final lse in float32
    terms: dict = {}

    def math_terms() -> dict:
        """dO, rowsum(dO * O) and the lse per query group, in the accumulation dtype: made for the
        first math pair only (a ring whose pairs all run fused never needs them)."""
        if not terms:
            terms["do"] = do.to(acc).view(b, hkv, g, nq, -1)
            terms["delta"] = (do.to(acc) * out.to(acc)).sum(-1).view(b, hkv, g, nq, 1)
            terms["lse"] = lse_safe.view(b, hkv, g, nq, 1)
        return terms

    dq = torch.zeros((b, hkv, g, nq, q.shape[-1]), dtype=acc, device=q.device)
    order = backward_order(r, P)
    kb, vb = (last_kv[0], last_kv[1]) if P > 1 else (k.contiguous(), v.contiguous())
    grads_in = None  # (exchange, dK, dV) gathered so far for this step's block, arriving from the next rank
    q_rows: dict = {}  # (start, stop) -> contiguous (do, q, out, lse) of those query rows, for the fused pairs
    for step, src in enumerate(order):
        kv_pending = None
        n_next = size(layout.kv[order[step + 1]]) if step < P - 1 else 0  # rows of the next block
        if step < P - 2:  # the next block comes from the next rank (the last one, our own, is here)
            k_next = kb.new_empty((*kb.shape[:2], n_next, kb.shape[-1]))
            v_next = vb.new_empty((*vb.shape[:2], n_next, vb.shape[-1]))
            kv_pending = (Exchange(ctx, [kb, vb], [k_next, v_next], to=prev, frm=nxt), k_next, v_next)
        dk_b = torch.zeros(kb.shape, dtype=acc, device=q.device)
        dv_b = torch.zeros(vb.shape, dtype=acc, device=q.device)
        if not (fault == "drop-block" and step == 1):
            ke = ve = None
            for i, (qsl, ksl, kind, qpos, kpos) in enumerate(pairs.pairs(src)):
                if pairs.fused is not None and kind in ("full", "diag"):
                    if ke is None:
                        ke, ve = pairs.expand(kb), pairs.expand(vb)
                    rows = (qsl.start, qsl.stop)
                    if rows not in q_rows:  # the same query rows meet every block: copied once
                        q_rows[rows] = tuple(t[:, :, qsl].contiguous() for t in (do, q, out, lse_f))
                    do_r, q_r, out_r, lse_r = q_rows[rows]
                    dq_p, dk_p, dv_p = pairs.fused.backward(
                        do_r, q_r, ke[:, :, ksl].contiguous(), ve[:, :, ksl].contiguous(), out_r, lse_r,
                        kind == "diag", aux.get((src, i)))
                    n = qsl.stop - qsl.start
                    # in place through views, each sum in the accumulation dtype (no converted copies)
                    dq[..., qsl, :].add_(dq_p.reshape(b, hkv, g, n, -1))
                    if g == 1:  # no group to sum over: added straight in, converted on the way
                        dk_b[:, :, ksl].add_(dk_p)
                        dv_b[:, :, ksl].add_(dv_p)
                    else:
                        dk_b[:, :, ksl].add_(dk_p.reshape(b, hkv, g, *dk_p.shape[2:]).sum(2, dtype=acc))
                        dv_b[:, :, ksl].add_(dv_p.reshape(b, hkv, g, *dv_p.shape[2:]).sum(2, dtype=acc))
                    continue
                s = pairs.scores(qsl, kb[:, :, ksl], kind, qpos, kpos)
                if s is None:
                    continue
                t = math_terms()
                kg, vg = kb[:, :, ksl].to(acc).unsqueeze(2), vb[:, :, ksl].to(acc).unsqueeze(2)  # shared by the group
                p = torch.exp(s - t["lse"][..., qsl, :])  # the final probabilities of this pair
                dv_b[:, :, ksl] += torch.matmul(p.transpose(-2, -1), t["do"][..., qsl, :]).sum(2)
                ds = p * (torch.matmul(t["do"][..., qsl, :], vg.transpose(-2, -1)) - t["delta"][..., qsl, :])
                dq[..., qsl, :] += torch.matmul(ds, kg) * scale
                dk_b[:, :, ksl] += torch.matmul(ds.transpose(-2, -1), pairs.qg[..., qsl, :]).sum(2) * scale
        if grads_in is not None:  # what this block gathered on the ranks before us
            grads_in[0].wait()
            dk_b.add_(grads_in[1])
            dv_b.add_(grads_in[2])
            grads_in = None
        if step < P - 1:  # pass the block's dK/dV on with it; receive the next block's from the next rank
            dk_next = torch.empty((b, hkv, n_next, k.shape[-1]), dtype=acc, device=q.device)
            dv_next = torch.empty((b, hkv, n_next, v.shape[-1]), dtype=acc, device=q.device)
            grads_in = (Exchange(ctx, [dk_b, dv_b], [dk_next, dv_next], to=prev, frm=nxt), dk_next, dv_next)
        if kv_pending is not None:
            kv_pending[0].wait()
            kb, vb = kv_pending[1], kv_pending[2]
        elif step == P - 2:
            kb, vb = k.contiguous(), v.contiguous()
    # the last block visited is our own, with every rank's share added
    return dq.view(b, hq, nq, -1).to(q.dtype), dk_b.to(k.dtype), dv_b.to(v.dtype)


class RingAttention(torch.autograd.Function):
    """Ring attention with a ring backward; returns (output, lse), the lse not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, problem: Problem, rank_ctx: RankContext, layout: Layout, fault: Optional[str],
                fused: bool = True):
        out, lse, aux, last_kv = ring_forward(problem, rank_ctx, layout, q, k, v, fault, fused)
        ctx.save_for_backward(q, k, v, out, lse, *last_kv)
        ctx.problem, ctx.rank_ctx, ctx.layout, ctx.fault, ctx.aux, ctx.fused = problem, rank_ctx, layout, fault, aux, fused
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, k_last, v_last = ctx.saved_tensors
        dq, dk, dv = ring_backward(ctx.problem, ctx.rank_ctx, ctx.layout, q, k, v, out, lse, dout.contiguous(), ctx.aux,
                                   (k_last, v_last), ctx.fault, ctx.fused)
        return dq, dk, dv, None, None, None, None, None
