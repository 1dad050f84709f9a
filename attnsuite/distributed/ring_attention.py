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

Bookkeeping around the pair kernels is kept to what the result needs (on a GPU it shows up as fill,
copy and add kernels next to the attention kernels): accumulators start uninitialised and take their
first contribution by a (converting) copy, never a zero fill plus an add (:class:`RowSum`,
:class:`OnlineSoftmax`); the output is normalised and converted in one pass; the fused pairs read
query rows and key slices as views where the kernel takes strided inputs (:func:`strided_pairs_work`).
scripts/ring_kernel_counts.py counts these ops per rank on CPU.

GQA: query head h reads key/value head h // (hq / hkv); queries are viewed as (hkv, group) and
the K/V blocks are used as they are, never repeated (neither on the wire nor in memory).

Full and diagonal pairs go through SDPA's fused kernels (cuDNN's on CUDA where it runs, else
FlashAttention-2's: :class:`FusedOps`) where the problem allows (:func:`fused_allowed`: none/causal
masks, bf16/fp16, and fp32 on CPU); every other pair, and every pair with ``fused=False``, through
the plain-math path with the mask at global positions.

``fault`` (None in every registered variant) injects one of the defects the tests must catch:
'drop-block' (the block received at step 1 is never merged), 'stale-max' (the running state is
not rescaled to the new maximum, i.e. rescaled against the stale one) and 'shift-positions'
(keys' global positions off by one). Two more keep state on the rank between calls, so a first
call is right and only a later one is wrong (:data:`STATE_FAULTS`, caught by the repeat checks):
'stale-block' (the block received at step 1 is kept from the first call of its shapes and used in
place of every later call's, a receive buffer never refilled) and 'kept-grads' (dq added into a
buffer kept from call to call and never cleared).
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
# faults whose first call is right: only a second call (the repeat checks) shows them
STATE_FAULTS = ("stale-block", "kept-grads")
# where those two mutants keep their state: module-level, so it outlives the call (a rank's
# RankContext is made afresh for every task)
_KEPT: dict = {}


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


class _Covered:
    """Which row ranges of an axis of length ``n`` have been written: buffers start uninitialised
    (no fill pass) and only the rows nothing reached are filled, once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._ranges: list[tuple[int, int]] = []  # disjoint, in no particular order

    def gaps(self, lo: int = 0, hi: Optional[int] = None) -> list[tuple[int, int]]:
        """The parts of [lo, hi) not written yet, in order."""
        hi = self.n if hi is None else hi
        out, at = [], lo
        for a, b in sorted(self._ranges):
            if b <= at or a >= hi:
                continue
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < hi:
            out.append((at, hi))
        return out

    def mark(self, lo: int, hi: int) -> None:
        if hi > lo:
            self._ranges.append((lo, hi))

    @property
    def empty(self) -> bool:
        return not self._ranges


class RowSum:
    """A buffer that contributions are summed into by ranges along axis ``dim`` (dQ rows, a block's dK/dV).

    Allocated empty: the first contribution to a range is written into it (converted to the
    buffer's dtype on the way), later ones are added, and the rows no contribution reached are
    zeroed once in :meth:`finish`. Against a zero-filled buffer this saves the fill and one
    read-modify-write pass per range.
    """

    def __init__(self, shape, dtype: torch.dtype, device, dim: int) -> None:
        self.buf = torch.empty(shape, dtype=dtype, device=device)
        self.dim = dim
        self.covered = _Covered(shape[dim])

    def add(self, rows: slice, t: torch.Tensor) -> None:
        """Add ``t`` (broadcastable to the buffer's ``rows`` along ``dim``, any float dtype) into those rows."""
        lo, hi, _ = rows.indices(self.covered.n)
        if hi <= lo:
            return
        view = self.buf.narrow(self.dim, lo, hi - lo)
        gaps = self.covered.gaps(lo, hi)
        if gaps == [(lo, hi)]:
            view.copy_(t)
        else:
            for a, b in gaps:  # rows of this range nothing reached yet (only when ranges overlap partly)
                self.buf.narrow(self.dim, a, b - a).zero_()
            view.add_(t)
        self.covered.mark(lo, hi)

    def add_whole(self, t: torch.Tensor) -> None:
        """Add ``t`` (the buffer's shape and dtype, owned by the caller and not used after) to every row:
        if nothing was written yet, ``t`` becomes the buffer (no copy)."""
        if self.covered.empty and t.shape == self.buf.shape and t.dtype == self.buf.dtype:
            self.buf = t
            self.covered.mark(0, self.covered.n)
        else:
            self.add(slice(None), t)

    def finish(self) -> torch.Tensor:
        """The buffer, rows nothing reached set to zero."""
        for a, b in self.covered.gaps():
            self.buf.narrow(self.dim, a, b - a).zero_()
        self.covered.mark(0, self.covered.n)
        return self.buf


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every non-finite entry (a row that saw no key: -inf) replaced by 0, in one pass."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


class OnlineSoftmax:
    """Running (max m, denominator l, accumulator) of one rank's rows over the blocks merged so far.

    The state starts uninitialised: a row range's first block is copied in, and rows no block
    reached are set (max -inf, denominator 0, accumulator 0) only at the end or when a later block
    overlaps them partly; no fill pass over the accumulator.
    """

    def __init__(self, b: int, hq: int, n: int, dv: int, dtype: torch.dtype, device, stale_max: bool = False) -> None:
        self.m = torch.empty((b, hq, n), dtype=dtype, device=device)
        self.l = torch.empty((b, hq, n), dtype=dtype, device=device)
        self.acc = torch.empty((b, hq, n, dv), dtype=dtype, device=device)
        self.stale_max = stale_max
        self.n = n
        self._merged = _Covered(n)  # row ranges some block was merged into

    def _init_rows(self, lo: int, hi: int) -> None:
        """The state of rows that saw no key: max -inf, denominator 0, accumulator 0."""
        self.m[..., lo:hi].fill_(float("-inf"))
        self.l[..., lo:hi].zero_()
        self.acc[..., lo:hi, :].zero_()

    def merge(self, m_b: torch.Tensor, l_b: Optional[torch.Tensor], acc_b: torch.Tensor,
              rows: slice = slice(None)) -> None:
        """Fold in one block for ``rows``, given relative to its own max m_b: l_b = sum exp(s - m_b), acc_b = sum exp(s - m_b) v.

        ``l_b`` None means a normalised block (a fused pair's output with its lse as m_b): l_b = 1.
        ``acc_b`` may be in a lower precision than the state (a fused pair's bf16 output): the
        product with its fp32 weight is taken in the state's dtype, inside the one ``addcmul_``.
        The accumulator, the largest tensor here, is updated in place through a view (one scale,
        one fused multiply-add), not rebuilt.
        """
        m, l, acc = self.m[..., rows], self.l[..., rows], self.acc[..., rows, :]
        lo, hi, _ = rows.indices(self.n)
        gaps = self._merged.gaps(lo, hi)
        if gaps == [(lo, hi)]:
            # the rows' first block: the merge below would give exactly this (alpha 0, beta 1, or
            # both 0 for a row the block hides entirely), in three copies instead of a dozen passes
            self._merged.mark(lo, hi)
            m.copy_(m_b)
            if l_b is None:
                l.fill_(1.0)
            else:
                l.copy_(l_b)
            acc.copy_(acc_b)
            return
        for a, b in gaps:  # a block reaching rows partly merged before: start its new rows empty
            self._init_rows(a, b)
        self._merged.mark(lo, hi)
        m_new = torch.maximum(m, m_b)
        safe = _finite_or_zero(m_new)  # rows that saw no key yet
        # the mutant rescales the old state against its own (stale) max: a factor of exactly 1
        alpha = torch.ones_like(m) if self.stale_max else torch.exp(m - safe)
        beta = torch.exp(m_b - safe)
        if l_b is None:
            l.mul_(alpha).add_(beta)
        else:
            l.mul_(alpha).addcmul_(beta, l_b)
        acc.mul_(alpha.unsqueeze(-1)).addcmul_(beta.unsqueeze(-1), acc_b)
        m.copy_(m_new)

    def result(self, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(output in ``dtype``, default the state's; log-sum-exp); rows that saw no key come out as 0 and -inf.

        The output is the accumulator times 1/l, written straight in ``dtype`` (normalised and
        converted in one pass). A row that saw no key has l = 0 and accumulator 0: its factor is 0,
        and m + log(l) = -inf + -inf = -inf is its lse without a select.
        """
        for a, b in self._merged.gaps():
            self._init_rows(a, b)
        self._merged.mark(0, self.n)
        inv = torch.where(self.l > 0, self.l.reciprocal(), 0.0)
        out = torch.empty(self.acc.shape, dtype=dtype or self.acc.dtype, device=self.acc.device)
        torch.mul(self.acc, inv.unsqueeze(-1), out=out)
        lse = torch.log(self.l).add_(self.m)
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
        # whether the backward may take row slices of contiguous tensors as they are (views) instead of
        # contiguous copies: on CPU the kernel gives identical results for both (tests/test_ring_elementwise.py);
        # on CUDA it is probed once per process (strided_pairs_work); the forward always takes views
        self.strided = (not self.cuda) or (kernel is None and strided_pairs_work(device, dtype, head_dim, self.kernel))

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


_STRIDED_WORKS: dict[tuple, bool] = {}


def strided_pairs_work(device: torch.device, dtype: torch.dtype, head_dim: int, kernel: str) -> bool:
    """Whether the pair backward of ``kernel`` gives the same gradients for row slices (views) of
    contiguous tensors as for contiguous copies of them, here (cached per process).

    A kernel that ignored or refused the strides would give other numbers or raise: then the ring
    keeps copying. Set ``ATTNSUITE_RING_STRIDED=0`` to keep the copies regardless.
    """
    if os.environ.get("ATTNSUITE_RING_STRIDED", "") == "0":
        return False
    key = (str(device), dtype, head_dim, kernel)
    if key not in _STRIDED_WORKS:
        try:
            ops = FusedOps(device, head_dim ** -0.5, dtype, head_dim, kernel=kernel)
            n, rows, keys = 256, slice(64, 192), slice(0, 128)
            # fixed, non-constant inputs without drawing (the RNG stays put)
            base = torch.arange(2 * n * head_dim, device=device, dtype=torch.float32).view(1, 2, n, head_dim)
            q, k, v, do = (torch.sin(base * f).to(dtype) for f in (0.37, 0.61, 0.83, 1.19))
            out_p, lse_p, aux = ops.forward(q[:, :, rows].contiguous(), k[:, :, keys].contiguous(),
                                            v[:, :, keys].contiguous(), False)
            out, lse = torch.zeros_like(q), torch.zeros(q.shape[:3], device=device, dtype=torch.float32)
            out[:, :, rows], lse[:, :, rows] = out_p, lse_p.float()
            lse_rows = lse[:, :, rows].contiguous()  # the ring copies the lse rows (small) in both cases
            got = ops.backward(do[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys], out[:, :, rows],
                               lse_rows, False, aux)
            want = ops.backward(*(t.contiguous() for t in (do[:, :, rows], q[:, :, rows], k[:, :, keys],
                                                           v[:, :, keys], out[:, :, rows])), lse_rows, False, aux)
            # a strided read gone wrong gives other numbers, not rounding: a loose bound separates the two
            _STRIDED_WORKS[key] = bool(all(
                torch.isfinite(a).all() and (a.float() - b.float()).abs().max() <= 1e-2 * (1 + b.float().abs().max())
                for a, b in zip(got, want)))
        except Exception:  # the kernel refuses strided inputs here: copies
            _STRIDED_WORKS[key] = False
    return _STRIDED_WORKS[key]


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
        self._zero: Optional[torch.Tensor] = None
        self.fused = (FusedOps(q.device, problem.softmax_scale, q.dtype, problem.dqk)
                      if fused and fused_allowed(problem, q.device) else None)
        self.device = q.device

    @property
    def qg(self) -> torch.Tensor:
        """q times the softmax scale in the accumulation dtype, as (b, hkv, g, nq, d), for the math pairs
        only: made on first use, so a ring whose pairs all run fused never converts (or keeps) a float32
        copy of q."""
        if self._qg is None:
            b, hq, n, d = self.q.shape
            # scaled by the softmax scale here, once, in the accumulation dtype: the scores and dK then
            # need no pass of their own for the scale (the scores, nq x nk, are the larger tensor)
            qs = self.q.to(self.acc)
            qs = qs * self.problem.softmax_scale if qs is self.q else qs.mul_(self.problem.softmax_scale)
            self._qg = qs.view(b, self.problem.hkv, self.group, n, d)
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
        """(query rows slice, key slice, kind, query positions, key positions) of the block of rank ``src``;
        positions are (start, stop) global ranges (None for a 'full' pair, which needs none).

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
                    # positions as ranges: made into tensors only by the math pairs that mask (scores)
                    yield (slice(qo, qo + qb - qa), slice(ko, ko + kb - ka), kind, (qa, qb),
                           (ka + self.shift, kb + self.shift))
            if run is not None:
                yield slice(qo, qo + qb - qa), slice(*run), "full", None, None

    def scores(self, qsl: slice, k: torch.Tensor, kind: str, qpos, kpos) -> Optional[torch.Tensor]:
        """Masked scores (b, hkv, g, nq, nk) in the accumulation dtype; None when the mask hides every one.

        ``qpos``/``kpos``: the pair's global (start, stop) ranges, as :meth:`pairs` gives them."""
        s = torch.matmul(self.qg[..., qsl, :], k.to(self.acc).unsqueeze(2).transpose(-2, -1))  # qg carries the scale
        if kind == "full" or self.mod is None:
            return s
        if self._zero is None:
            self._zero = torch.zeros((), dtype=torch.long, device=self.device)
        qpos, kpos = torch.arange(*qpos, device=self.device), torch.arange(*kpos, device=self.device)
        allowed = torch.broadcast_to(self.mod(self._zero, self._zero, qpos[:, None], kpos[None, :]), s.shape[-2:])
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
        ctx.notes["pair_views"] = pairs.fused.strided  # backward reads row/key slices as views (no copies)
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
                    # a normalised pair result is a block with max lse, denominator 1 (None), accumulator o
                    state.merge(lse_p.to(pairs.acc), None, o_p, qsl)
                    continue
                s = pairs.scores(qsl, kb[:, :, ksl], kind, qpos, kpos)
                if s is None:
                    continue
                m_b = s.amax(dim=-1)
                p = torch.exp(s - _finite_or_zero(m_b).unsqueeze(-1))
                pv = torch.matmul(p, vb[:, :, ksl].to(pairs.acc).unsqueeze(2))
                n = qsl.stop - qsl.start
                state.merge(m_b.reshape(b, hq, n), p.sum(-1).reshape(b, hq, n), pv.reshape(b, hq, n, -1), qsl)
        if pending is not None:
            pending[0].wait()
            kb, vb = pending[1], pending[2]
            if fault == "stale-block" and step == 0:  # the mutant: the first call's block, kept on the rank
                kb, vb = _KEPT.setdefault(("stale-block", ctx.rank, kb.shape, vb.shape), (kb.clone(), vb.clone()))
    out, lse = state.result(q.dtype)  # normalised and converted in one pass
    return out, lse, aux, (kb, vb)


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
    Every gradient buffer is a :class:`RowSum`: no zero fill, the first contribution to a range
    written (converted) rather than added; a block this rank's rows never see passes on the
    received buffer itself.
    """
    P, r = ctx.world_size, ctx.rank
    prev, nxt = (r - 1) % P, (r + 1) % P
    pairs = _Pairs(problem, ctx, layout, q, fault, fused)
    acc, g, scale = pairs.acc, pairs.group, problem.softmax_scale
    b, hq, nq, _ = q.shape
    hkv = problem.hkv
    lse_safe = _finite_or_zero(lse)
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

    def group_sum(x: torch.Tensor) -> torch.Tensor:
        """A (b, hkv, g, n, d) per-query-head gradient summed over the group (a view when g is 1: no pass)."""
        return x[:, :, 0] if g == 1 else x.sum(2)

    dq = RowSum((b, hkv, g, nq, q.shape[-1]), acc, q.device, dim=3)
    order = backward_order(r, P)
    kb, vb = (last_kv[0], last_kv[1]) if P > 1 else (k.contiguous(), v.contiguous())
    grads_in = None  # (exchange, dK, dV) gathered so far for this step's block, arriving from the next rank
    q_rows: dict = {}  # (start, stop) -> (do, q, out, lse) of those query rows, for the fused pairs
    views = pairs.fused is not None and pairs.fused.strided
    dk_b = dv_b = None
    for step, src in enumerate(order):
        kv_pending = None
        n_next = size(layout.kv[order[step + 1]]) if step < P - 1 else 0  # rows of the next block
        if step < P - 2:  # the next block comes from the next rank (the last one, our own, is here)
            k_next = kb.new_empty((*kb.shape[:2], n_next, kb.shape[-1]))
            v_next = vb.new_empty((*vb.shape[:2], n_next, vb.shape[-1]))
            kv_pending = (Exchange(ctx, [kb, vb], [k_next, v_next], to=prev, frm=nxt), k_next, v_next)
        dk_b = RowSum(kb.shape, acc, q.device, dim=2)
        dv_b = RowSum(vb.shape, acc, q.device, dim=2)
        if not (fault == "drop-block" and step == 1):
            ke = ve = None
            for i, (qsl, ksl, kind, qpos, kpos) in enumerate(pairs.pairs(src)):
                if pairs.fused is not None and kind in ("full", "diag"):
                    if ke is None:
                        ke, ve = pairs.expand(kb), pairs.expand(vb)
                    rows = (qsl.start, qsl.stop)
                    if rows not in q_rows:
                        # row slices of contiguous (b, h, n, d) tensors: passed as views where the pair
                        # kernel takes strided inputs (FusedOps.strided), else copied once per row range;
                        # the lse rows (small) are always copied: the stats layout cuDNN was probed with
                        q_rows[rows] = (*(t[:, :, qsl] if views else t[:, :, qsl].contiguous() for t in (do, q, out)),
                                        lse_f[:, :, qsl].contiguous())
                    do_r, q_r, out_r, lse_r = q_rows[rows]
                    k_p, v_p = ke[:, :, ksl], ve[:, :, ksl]
                    if not views:
                        k_p, v_p = k_p.contiguous(), v_p.contiguous()
                    dq_p, dk_p, dv_p = pairs.fused.backward(do_r, q_r, k_p, v_p, out_r, lse_r, kind == "diag",
                                                            aux.get((src, i)))
                    n = qsl.stop - qsl.start
                    # written or added in place through views, converted on the way (no converted copies)
                    dq.add(qsl, dq_p.reshape(b, hkv, g, n, -1))
                    if g == 1:  # no group to sum over
                        dk_b.add(ksl, dk_p)
                        dv_b.add(ksl, dv_p)
                    else:
                        dk_b.add(ksl, dk_p.reshape(b, hkv, g, *dk_p.shape[2:]).sum(2, dtype=acc))
                        dv_b.add(ksl, dv_p.reshape(b, hkv, g, *dv_p.shape[2:]).sum(2, dtype=acc))
                    continue
                s = pairs.scores(qsl, kb[:, :, ksl], kind, qpos, kpos)
                if s is None:
                    continue
                t = math_terms()
                kg, vg = kb[:, :, ksl].to(acc).unsqueeze(2), vb[:, :, ksl].to(acc).unsqueeze(2)  # shared by the group
                p = torch.exp(s - t["lse"][..., qsl, :])  # the final probabilities of this pair
                dv_b.add(ksl, group_sum(torch.matmul(p.transpose(-2, -1), t["do"][..., qsl, :])))
                ds = p * (torch.matmul(t["do"][..., qsl, :], vg.transpose(-2, -1)) - t["delta"][..., qsl, :])
                dq.add(qsl, torch.matmul(ds, kg).mul_(scale))  # scaled after the product: ds is the larger tensor
                dk_b.add(ksl, group_sum(torch.matmul(ds.transpose(-2, -1), pairs.qg[..., qsl, :])))  # qg is scaled
        if grads_in is not None:  # what this block gathered on the ranks before us
            grads_in[0].wait()
            dk_b.add_whole(grads_in[1])
            dv_b.add_whole(grads_in[2])
            grads_in = None
        if step < P - 1:  # pass the block's dK/dV on with it; receive the next block's from the next rank
            dk_next = torch.empty((b, hkv, n_next, k.shape[-1]), dtype=acc, device=q.device)
            dv_next = torch.empty((b, hkv, n_next, v.shape[-1]), dtype=acc, device=q.device)
            grads_in = (Exchange(ctx, [dk_b.finish(), dv_b.finish()], [dk_next, dv_next], to=prev, frm=nxt),
                        dk_next, dv_next)
        if kv_pending is not None:
            kv_pending[0].wait()
            kb, vb = kv_pending[1], kv_pending[2]
        elif step == P - 2:
            kb, vb = k.contiguous(), v.contiguous()
    # the last block visited is our own, with every rank's share added
    dq_out = dq.finish().view(b, hq, nq, -1)
    if fault == "kept-grads":  # the mutant: dq added into a buffer kept on the rank and never cleared
        kept = _KEPT.setdefault(("kept-grads", ctx.rank, dq_out.shape), torch.zeros_like(dq_out))
        dq_out = kept.add_(dq_out).clone()
    return dq_out.to(q.dtype), dk_b.finish().to(k.dtype), dv_b.finish().to(v.dtype)


class RingAttention(torch.autograd.Function):
    """Ring attention with a ring backward; returns (output, lse), the lse not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, problem: Problem, rank_ctx: RankContext, layout: Layout, fault: Optional[str],
                fused: bool = True):
        out, lse, aux, last_kv = ring_forward(problem, rank_ctx, layout, q, k, v, fault, fused)
        ctx.save_for_backward(q, k, v, out, lse, *last_kv)
        ctx.problem, ctx.rank_ctx, ctx.layout, ctx.fault, ctx.aux, ctx.fused = problem, rank_ctx, layout, fault, aux, fused
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)  # the lse's gradient is never used: no zero tensor made for it
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, k_last, v_last = ctx.saved_tensors
        if dout is None:  # only the lse was used downstream: the output's gradient is zero
            dout = torch.zeros_like(out)
        dq, dk, dv = ring_backward(ctx.problem, ctx.rank_ctx, ctx.layout, q, k, v, out, lse, dout.contiguous(), ctx.aux,
                                   (k_last, v_last), ctx.fault, ctx.fused)
        return dq, dk, dv, None, None, None, None, None
