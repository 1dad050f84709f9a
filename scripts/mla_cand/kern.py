"""Experimental absorbed-MLA kernels (not shipped; docs/triton.md "MLA", session s38): a lazy softmax
rescale (LAZY: the running max moves only when it grows by more than 2**8) and a value-column split
(SPLIT 2: each program owns half of the value columns, recomputing the scores). scripts/mla_tune.py
times them beside the shipped kernel with --kernel-file scripts/mla_cand/<base|lazy|split|lazysplit>.py;
layer_probe.py puts them in the layer."""
import math
import torch
import triton
import triton.language as tl


@triton.jit
def mla_x(Q, QR, KV, O, sqb, sqh, sqm, sqd, srb, srh, srm, srd, skb, skn, skd, sob, soh, som, sod,
          H, LQ, LK, OFF, qk_scale, DL: tl.constexpr, DR: tl.constexpr, CAUSAL: tl.constexpr,
          LAZY: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid
    b = tl.program_id(1)
    g = tl.program_id(2)
    DV: tl.constexpr = DL // SPLIT
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < LQ * H
    qi = rows // H
    h = rows % H
    offs_v = g * DV + tl.arange(0, DV)
    offs_r = tl.arange(0, DR)
    offs_n = tl.arange(0, BLOCK_N)
    q_row = Q + b * sqb + h[:, None] * sqh + qi[:, None] * sqm
    q_v = tl.load(q_row + offs_v[None, :] * sqd, mask=live[:, None], other=0.0)
    if SPLIT == 2:
        offs_o = (1 - g) * DV + tl.arange(0, DV)
        q_o = tl.load(q_row + offs_o[None, :] * sqd, mask=live[:, None], other=0.0)
    q_pe = tl.load(QR + b * srb + h[:, None] * srh + qi[:, None] * srm + offs_r[None, :] * srd,
                   mask=live[:, None], other=0.0)
    hi = LK
    full = (LK // BLOCK_N) * BLOCK_N
    if CAUSAL:
        first = (pid * BLOCK_M) // H
        last = tl.minimum(pid * BLOCK_M + BLOCK_M - 1, LQ * H - 1) // H
        hi = tl.minimum(LK, tl.maximum(last + OFF + 1, 0))
        full = tl.minimum(full, (tl.maximum(first + OFF + 1, 0) // BLOCK_N) * BLOCK_N)
    pos = qi + OFF
    kv_b = KV + b * skb
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV], tl.float32)
    for start in range(0, hi, BLOCK_N):
        n = start + offs_n
        kmask = n[:, None] < hi
        c_v = tl.load(kv_b + n[:, None] * skn + offs_v[None, :] * skd, mask=kmask, other=0.0)
        pe = tl.load(kv_b + n[:, None] * skn + (DL + offs_r[None, :]) * skd, mask=kmask, other=0.0)
        s = tl.dot(q_v, tl.trans(c_v))
        if SPLIT == 2:
            c_o = tl.load(kv_b + n[:, None] * skn + offs_o[None, :] * skd, mask=kmask, other=0.0)
            s = tl.dot(q_o, tl.trans(c_o), s)
        s = tl.dot(q_pe, tl.trans(pe), s) * qk_scale
        if start >= full:
            ok = n[None, :] < hi
            if CAUSAL:
                ok = ok & (n[None, :] <= pos[:, None])
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if LAZY:
            grow = tl.max(tl.where(m_new > m_i, m_new - m_i, 0.0), 0)
            if grow > 8.0:
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_use)
                acc = acc * alpha[:, None]
                l_i = l_i * alpha
                m_i = m_new
            m_cur = tl.where(m_i == float("-inf"), 0.0, m_i)
            p = tl.exp2(s - m_cur[:, None])
            l_i = l_i + tl.sum(p, 1)
            acc = tl.dot(p.to(c_v.dtype), c_v, acc)
        else:
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(c_v.dtype), c_v, acc * alpha[:, None])
            m_i = m_new
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + b * sob + h[:, None] * soh + qi[:, None] * som + offs_v[None, :] * sod, o.to(O.dtype.element_ty),
             mask=live[:, None])


def make(lazy: bool, split: int, default=(64, 64, 8, 2)):
    def launch(q_lat, q_pe, kv, o, scale, causal, config=None):
        bsz, heads, lq, dl = q_lat.shape
        lk, dr = kv.shape[1], q_pe.shape[-1]
        bm, bn, warps, stages = config or default
        grid = (triton.cdiv(lq * heads, bm), bsz, split)
        return mla_x[grid](q_lat, q_pe, kv, o, *q_lat.stride(), *q_pe.stride(), *kv.stride(), *o.stride(),
                           heads, lq, lk, lk - lq, scale * math.log2(math.e), DL=dl, DR=dr, CAUSAL=bool(causal),
                           LAZY=lazy, SPLIT=split, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)

    def mla_forward(q_lat, q_pe, kv, scale, causal):
        o = torch.empty_like(q_lat)
        launch(q_lat, q_pe, kv, o, scale, causal)
        return o
    return launch, mla_forward
