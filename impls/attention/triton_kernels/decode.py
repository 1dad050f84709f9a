"""Split-KV decoding kernels: a few queries against a long key/value cache, in two passes.

Imported through this package's :func:`kernels`. Pass 1 gives each (batch, KV head, split)
one program: it packs the GQA group's query rows (group * lq rows, query head h = kvh * group + g)
into one tile, so every key and value of the split is read from memory once for the whole group,
and writes the split's normalised partial output and its log-sum-exp (base 2) per row. Pass 2
merges the splits of a row with the usual log-sum-exp rescaling. Deterministic: fixed split
boundaries and a fixed merge order, no atomics.

Masks as in :mod:`.flash` (0 none, 1 causal, 2 window; query row i at
position i + OFF).
"""


import math

import torch
import triton
import triton.language as tl
from triton import knobs

from attnsuite.triton_support import StepTuner

INTERPRET = bool(knobs.runtime.interpret)
DOT_F32 = INTERPRET  # see flash.py: the interpreter's bf16 tl.dot is wrong
INTERP_BLOCK_N = 64
INTERP_SPLITS = 3


def _cfg(bn, warps, stages):
    return triton.Config({"BLOCK_N": bn}, num_warps=warps, num_stages=stages)


SPLIT_CONFIGS = [_cfg(64, 4, 3), _cfg(64, 4, 4), _cfg(128, 4, 3), _cfg(128, 8, 3), _cfg(32, 4, 4)]


@triton.jit
def decode_split(Q, K, V, OP, LSEP,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                 HKV, LQ, LK, OFF, WIN, qk_scale, NSPLIT,
                 R, CHUNK, D, DV,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 MASK: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr):
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    group = R // LQ
    rows = tl.arange(0, BLOCK_R)
    g = rows // LQ
    qi = rows % LQ
    live = rows < R
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b * sqb + (kvh * group + g)[:, None] * sqh + qi[:, None] * sqm + offs_d[None, :] * sqd,
                mask=live[:, None] & (offs_d[None, :] < D), other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    pos = qi + OFF  # each row's position on the key axis
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, LK)
    if MASK != 0:
        hi = tl.minimum(hi, tl.maximum(LQ - 1 + OFF + 1, 0))  # the last query's last key
    if MASK == 2:
        # the first row's first key, on the BLOCK_N grid (CHUNK is a multiple of BLOCK_N)
        lo = tl.maximum(lo, (tl.maximum(OFF - WIN, 0) // BLOCK_N) * BLOCK_N)
    kt_ptrs = K + b * skb + kvh * skh + offs_n[None, :] * skn + offs_d[:, None] * skd
    v_ptrs = V + b * svb + kvh * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + offs_n
        kt = tl.load(kt_ptrs + start * skn, mask=(offs_d[:, None] < D) & (n[None, :] < hi), other=0.0)
        v = tl.load(v_ptrs + start * svn, mask=(n[:, None] < hi) & (offs_dv[None, :] < DV), other=0.0)
        if DOT_F32:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kt) * qk_scale
        ok = n[None, :] < hi
        if MASK != 0:
            ok = ok & (n[None, :] <= pos[:, None])
        if MASK == 2:
            ok = ok & (n[None, :] >= pos[:, None] - WIN)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # -inf: the split has no key for the row
    base = (pid_bh * NSPLIT + split) * R
    tl.store(LSEP + base + rows, lse, mask=live)
    tl.store(OP + (base + rows[:, None]) * DV + offs_dv[None, :], acc / l_safe[:, None],
             mask=live[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def decode_merge(OP, LSEP, O, sob, soh, som, sod, HKV, LQ, NSPLIT,
                 R, DV, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_DV: tl.constexpr):
    pid_bh = tl.program_id(0)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    group = R // LQ
    rows = tl.arange(0, BLOCK_R)
    splits = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    live = rows < R
    lse = tl.load(LSEP + (pid_bh * NSPLIT + splits[:, None]) * R + rows[None, :],
                  mask=(splits[:, None] < NSPLIT) & live[None, :], other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m[None, :])  # (splits, rows); empty splits weigh 0
    denom = tl.sum(w, 0)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)
    for s in range(0, NSPLIT):  # a fixed order: deterministic
        ws = tl.sum(tl.where(splits[:, None] == s, w, 0.0), 0)
        part = tl.load(OP + ((pid_bh * NSPLIT + s) * R + rows[:, None]) * DV + offs_dv[None, :],
                       mask=live[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc += ws[:, None] * part
    o = acc / tl.where(denom == 0.0, 1.0, denom)[:, None]
    g = rows // LQ
    qi = rows % LQ
    tl.store(O + b * sob + (kvh * group + g)[:, None] * soh + qi[:, None] * som + offs_dv[None, :] * sod,
             o.to(O.dtype.element_ty), mask=live[:, None] & (offs_dv[None, :] < DV))


# The split kernel's config is chosen on the whole step (split and merge): the merge's time moves with
# the split's config, and the split alone ranked BLOCK_N=64 with 32 where the step ran 6% slower with
# it (attnsuite.triton_support.StepTuner). Compiled kernels only: the interpreter runs INTERP_BLOCK_N.
SPLIT_TUNER = None if INTERPRET else StepTuner(decode_split, SPLIT_CONFIGS)


def _splits(lk: int, programs: int, device) -> tuple[int, int]:
    """(number of splits, keys per split): enough programs to fill the GPU, at least 256 keys a split."""
    if INTERPRET:
        chunk = max(INTERP_BLOCK_N, -(-lk // INTERP_SPLITS))
        chunk = -(-chunk // INTERP_BLOCK_N) * INTERP_BLOCK_N
        return -(-lk // chunk), chunk

    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, min(-(-4 * sms // programs), -(-lk // 256)))
    chunk = -(-lk // want)
    chunk = -(-chunk // 256) * 256  # a multiple of every BLOCK_N in the configs
    return -(-lk // chunk), chunk


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: int, off: int, win: int,
           scale: float, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Attention of few queries against a long cache, split over the keys and merged.

    ``config`` (BLOCK_N, num_warps, num_stages) runs the split kernel with that config instead of
    :data:`SPLIT_TUNER`'s choice (scripts/decode_tune_probe.py times each candidate that way);
    ignored under the interpreter.
    """

    bsz, hq, lq, d = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    dtype = q.dtype
    if INTERPRET and dtype == torch.bfloat16:  # see flash._interp_upcast
        q, k, v = q.float(), k.float(), v.float()
    r = (hq // hkv) * lq
    nsplit, chunk = _splits(lk, bsz * hkv, q.device)
    op = torch.empty((bsz * hkv * nsplit * r, dv), dtype=torch.float32, device=q.device)
    lsep = torch.empty((bsz * hkv * nsplit * r,), dtype=torch.float32, device=q.device)
    o = torch.empty((bsz, hq, lq, dv), dtype=q.dtype, device=q.device)
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    br = max(16, triton.next_power_of_2(r))

    def step(cfg) -> None:  # both passes, into op, lsep and o (the tuner times this whole)
        tiles = (dict(BLOCK_N=cfg.kwargs["BLOCK_N"], num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                 if cfg is not None else {"BLOCK_N": INTERP_BLOCK_N})
        decode_split[(nsplit, bsz * hkv)](q, k, v, op, lsep, *q.stride(), *k.stride(), *v.stride(),
                                          hkv, lq, lk, off, win, scale * math.log2(math.e), nsplit,
                                          R=r, CHUNK=chunk, D=d, DV=dv, BLOCK_R=br, BLOCK_D=bd, BLOCK_DV=bdv,
                                          MASK=mask, DOT_F32=DOT_F32, **tiles)
        decode_merge[(bsz * hkv,)](op, lsep, o, *o.stride(), hkv, lq, nsplit, R=r, DV=dv,
                                   BLOCK_S=max(2, triton.next_power_of_2(nsplit)), BLOCK_R=br, BLOCK_DV=bdv)

    if INTERPRET:
        step(None)
    elif config is not None:
        step(_cfg(*config))
    else:
        # what decides the fastest config: the code-selecting sizes, then the problem's sizes and dtypes
        key = (bd, bdv, br, mask, chunk, bsz, hkv, lq, lk, r, nsplit, off, win, q.dtype, k.dtype, v.dtype)
        step(SPLIT_TUNER.choose(key, step))
    return o.to(dtype)
