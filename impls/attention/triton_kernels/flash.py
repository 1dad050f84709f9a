"""FlashAttention-2 forward and backward kernels (written here from the algorithm).

Loaded through this package's :func:`kernels` (once per execution mode), never imported
directly. Layout is SDPA's: q (B, HQ, LQ, D), k (B, HKV, LK, D), v (B, HKV, LK, DV); query head h
reads key/value head h // (HQ // HKV), so GQA/MQA never repeat K/V.

Masks (constexpr MASK): 0 none, 1 causal, 2 sliding window. Query row i sits at position
i + OFF (OFF = LK - LQ for the bottom-right corner, 0 for top-left); causal keeps keys
j <= i + OFF, the window also drops j < i + OFF - WIN.

Scores live in the base-2 domain (scale * log2(e) folded into one multiplier) so the softmax
uses exp2. The forward saves the row's log-sum-exp (base 2) per query; a row that sees no key
stores +inf there, which makes every recomputed probability of that row 0 in the backward.

Backward paths (:func:`.bwd_path.choose_bwd_path` picks one per call):
- "split" (the default): one kernel per key block for dK/dV and one per query block for dQ. Every
  output is owned by one program (the GQA group's heads summed in a fixed order): no atomics, so
  two runs agree bit for bit.
- "fused": one kernel per key block that also computes dS @ K for every query block it visits and
  adds it into a zeroed fp32 dQ accumulator with atomic adds (5 matmuls per block pair instead of
  7). The order of the adds varies from run to run: dQ is NOT bitwise deterministic (dK/dV are).
Both start with :func:`flash_bwd_preprocess` (delta = rowsum(dO * O) in fp32; it also zeroes the
fused path's dQ accumulator). The forward is deterministic either way.

Mutant flags (constexpr, used only by the tests to show the checks catch each defect):
MUT_SKIP drops key block 0, MUT_CORNER uses the other causal corner, MUT_STALE saves the
log-sum-exp of the state before the last key block.
"""


import math

import torch
import triton
import triton.language as tl
from triton import knobs

from attnsuite.triton_support import autotuned

from .bwd_path import choose_bwd_path

INTERPRET = bool(knobs.runtime.interpret)
NONE, CAUSAL, WINDOW = 0, 1, 2
# The interpreter (triton 3.6-3.9) computes bf16 tl.dot on the raw 16-bit patterns: upcast there.
DOT_F32 = INTERPRET
# Interpreter tiles: NumPy is vectorised, so larger tiles cost less per element than many small ones.
INTERP_FWD = dict(BLOCK_M=64, BLOCK_N=64)
INTERP_BWD = dict(BLOCK_M=64, BLOCK_N=64)


def _smem_ok(bm: int, bn: int, stages: int, bd: int, bdv: int) -> bool:
    """A rough shared-memory fit: the streamed (smaller) tile of K/V or Q/dO, pipelined ``stages`` deep.

    Compiled sizes seen (sm_90, d 128): forward 128x64x3 stages 64 KB, dK/dV 32x128x3 80 KB.
    """
    return stages * min(bm, bn) * (bd + bdv) * 2 <= 160 * 1024


def _prune(configs, named_args, **kwargs):
    """Configs that fit shared memory; for d <= 128 only the large tiles (small ones never win there)."""
    bd = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    bdv = kwargs.get("BLOCK_DV", named_args.get("BLOCK_DV"))
    fits = [c for c in configs
            if _smem_ok(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, bd, bdv)]
    if max(bd, bdv) <= 128:
        fits = [c for c in fits if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] >= 64 * 64]
    else:  # d 256: the owned tile's fp32 accumulators alone would spill registers above 64 x 32
        fits = [c for c in fits if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32]
    return fits or configs[-1:]


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# A few configs each: every one costs a compilation (3-9 s) the first time its code (head dim, mask,
# dtype) runs; a new shape of compiled code costs only their timing. The last of each list is the
# small tile that head dim 256 falls back to.
FWD_CONFIGS = [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 4, 3), _cfg(64, 32, 4, 2)]
# dK/dV: BLOCK_N keys owned, BLOCK_M queries streamed; dQ: the reverse.
DKDV_CONFIGS = [_cfg(32, 128, 4, 3), _cfg(64, 128, 8, 3), _cfg(32, 64, 4, 2)]
DQ_CONFIGS = [_cfg(128, 32, 4, 3), _cfg(128, 64, 8, 3), _cfg(64, 32, 4, 2)]
# fused: BLOCK_N keys owned, BLOCK_M queries streamed; a wide BLOCK_N means fewer dQ atomics (one
# add per query row and column per key block). Two compiles per key at d <= 128 (the split path
# has 2 + 2). 8 warps: ptxas (triton 3.9, sm_90) spills least there (32x128: none at d 64).
FUSED_CONFIGS = [_cfg(32, 128, 8, 3), _cfg(64, 128, 8, 3), _cfg(32, 64, 4, 2)]
# The autotune key (attnsuite.triton_support.autotuned): the code-selecting arguments, then the
# sizes that decide the fastest config; BATCH is passed for the key alone (unused in the kernels).
TUNE_KEY = ("BLOCK_D", "BLOCK_DV", "MASK")  # the autotuner adds the tensors' dtypes to the key
Q_SHAPE = ("BATCH", "HQ", "GROUP", "LQ", "LK", "OFF", "WIN")  # one program per query block
KV_SHAPE = ("BATCH", "HKV", "GROUP", "LQ", "LK", "OFF", "WIN")  # one program per key block


@triton.jit
def _key_range(m0, LK, OFF, WIN, MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key-block bounds for query rows [m0, m0 + BLOCK_M): [lo, a) masked, [a, b) full, [b, hi) masked."""
    lo = 0
    hi = LK
    full_lo = 0
    full_hi = (LK // BLOCK_N) * BLOCK_N
    if MASK != 0:
        hi = tl.minimum(LK, tl.maximum(m0 + BLOCK_M + OFF, 0))
        # keys every row of the tile sees: j <= m0 + OFF (the tile's first row)
        full_hi = tl.minimum(full_hi, (tl.maximum(m0 + OFF + 1, 0) // BLOCK_N) * BLOCK_N)
    if MASK == 2:
        lo = tl.maximum(m0 + OFF - WIN, 0)
        full_lo = ((tl.maximum(m0 + BLOCK_M - 1 + OFF - WIN, 0) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    lo = (lo // BLOCK_N) * BLOCK_N
    hi_blk = ((hi + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    a = tl.minimum(tl.maximum(full_lo, lo), hi_blk)
    b = tl.minimum(tl.maximum(full_hi, a), hi_blk)
    return lo, a, b, hi


@triton.jit
def _allowed(offs_m, offs_n, LK, OFF, WIN, MASK: tl.constexpr):
    """(M, N) boolean: query rows offs_m may attend keys offs_n."""
    ok = offs_n[None, :] < LK
    if MASK != 0:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + OFF)
    if MASK == 2:
        ok = ok & (offs_n[None, :] >= offs_m[:, None] + OFF - WIN)
    return ok


@triton.jit
def _allowed_t(offs_m, offs_n, LK, OFF, WIN, MASK: tl.constexpr):
    """(N, M) boolean, the transpose of :func:`_allowed` built directly (no transposed i1 tile)."""
    ok = offs_n[:, None] < LK
    if MASK != 0:
        ok = ok & (offs_n[:, None] <= offs_m[None, :] + OFF)
    if MASK == 2:
        ok = ok & (offs_n[:, None] >= offs_m[None, :] + OFF - WIN)
    return ok


@triton.jit
def _fwd_block(acc, m_i, l_i, m_p, l_p, q, kt_ptrs, v_ptrs, start, offs_m, offs_n, offs_d, offs_dv,
               skn, svn, D, DV, LK, OFF, WIN, qk_scale,
               MASKED: tl.constexpr, MASK: tl.constexpr, DOT_F32: tl.constexpr,
               MUT_SKIP: tl.constexpr, MUT_STALE: tl.constexpr):
    n = start + offs_n
    if MASKED:
        kt = tl.load(kt_ptrs + start * skn, mask=(offs_d[:, None] < D) & (n[None, :] < LK), other=0.0)
        v = tl.load(v_ptrs + start * svn, mask=(n[:, None] < LK) & (offs_dv[None, :] < DV), other=0.0)
    else:
        kt = tl.load(kt_ptrs + start * skn, mask=offs_d[:, None] < D, other=0.0)
        v = tl.load(v_ptrs + start * svn, mask=offs_dv[None, :] < DV, other=0.0)
    if DOT_F32:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, kt) * qk_scale
    if MASKED:
        qk = tl.where(_allowed(offs_m, n, LK, OFF, WIN, MASK), qk, float("-inf"))
    if MUT_SKIP:
        qk = tl.where(start != 0, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN from -inf - -inf
    p = tl.exp2(qk - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    if MUT_STALE:
        m_p = m_i
        l_p = l_i
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i, m_p, l_p


@autotuned(FWD_CONFIGS, TUNE_KEY, Q_SHAPE, prune=_prune)
@triton.jit(do_not_specialize=["BATCH"])
def flash_fwd(Q, K, V, O, LSE,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
              HQ, GROUP, LQ, LK, OFF, WIN, qk_scale,
              D, DV, BATCH, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              MASK: tl.constexpr, DOT_F32: tl.constexpr,
              MUT_SKIP: tl.constexpr, MUT_CORNER: tl.constexpr, MUT_STALE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if MASK == 1:
        pid_m = tl.num_programs(0) - 1 - pid_m  # the longest causal rows first: a better tail
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    kvh = h // GROUP
    if MUT_CORNER:
        OFF = LK - LQ - OFF
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < LQ) & (offs_d[None, :] < D), other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    kt_ptrs = K + b * skb + kvh * skh + offs_n[None, :] * skn + offs_d[:, None] * skd
    v_ptrs = V + b * svb + kvh * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_p = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_p = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo, a, bb, hi = _key_range(m0, LK, OFF, WIN, MASK, BLOCK_M, BLOCK_N)
    for start in range(lo, a, BLOCK_N):
        acc, m_i, l_i, m_p, l_p = _fwd_block(acc, m_i, l_i, m_p, l_p, q, kt_ptrs, v_ptrs, start, offs_m, offs_n,
                                             offs_d, offs_dv, skn, svn, D, DV, LK, OFF, WIN, qk_scale,
                                             True, MASK, DOT_F32, MUT_SKIP, MUT_STALE)
    for start in range(a, bb, BLOCK_N):
        acc, m_i, l_i, m_p, l_p = _fwd_block(acc, m_i, l_i, m_p, l_p, q, kt_ptrs, v_ptrs, start, offs_m, offs_n,
                                             offs_d, offs_dv, skn, svn, D, DV, LK, OFF, WIN, qk_scale,
                                             False, MASK, DOT_F32, MUT_SKIP, MUT_STALE)
    for start in range(bb, hi, BLOCK_N):
        acc, m_i, l_i, m_p, l_p = _fwd_block(acc, m_i, l_i, m_p, l_p, q, kt_ptrs, v_ptrs, start, offs_m, offs_n,
                                             offs_d, offs_dv, skn, svn, D, DV, LK, OFF, WIN, qk_scale,
                                             True, MASK, DOT_F32, MUT_SKIP, MUT_STALE)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if MUT_STALE:
        m_i = m_p
        l_i = l_p
    lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(LSE + pid_bh * LQ + offs_m, lse, mask=offs_m < LQ)
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod, o.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < LQ) & (offs_dv[None, :] < DV))


@triton.jit
def _query_range(n0, LQ, OFF, WIN, MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query-block bounds seeing keys [n0, n0 + BLOCK_N): [lo, a) masked, [a, b) full, [b, hi) masked."""
    lo = 0
    hi = LQ
    full_lo = 0
    hi_blk = ((LQ + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    full_hi = hi_blk
    if MASK != 0:
        lo = tl.minimum(tl.maximum(n0 - OFF, 0), LQ)
        # rows that see the tile's last key see all of it: i >= n0 + BLOCK_N - 1 - OFF
        full_lo = ((tl.maximum(n0 + BLOCK_N - 1 - OFF, 0) + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    if MASK == 2:
        hi = tl.minimum(LQ, tl.maximum(n0 + BLOCK_N - OFF + WIN, 0))
        hi_blk = ((hi + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        # rows that see the tile's first key under the window: i <= n0 - OFF + WIN
        full_hi = (tl.maximum(n0 - OFF + WIN + 1, 0) // BLOCK_M) * BLOCK_M
    lo = (lo // BLOCK_M) * BLOCK_M
    a = tl.minimum(tl.maximum(full_lo, lo), hi_blk)
    b = tl.minimum(tl.maximum(full_hi, a), hi_blk)
    return lo, a, b, hi


@triton.jit
def _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, dq_ptrs, start, offs_m, offs_n, offs_d, offs_dv,
                sqm, sdom, D, DV, LQ, LK, OFF, WIN, qk_scale, sm_scale,
                MASKED: tl.constexpr, MASK: tl.constexpr, DOT_F32: tl.constexpr, FUSED: tl.constexpr):
    m = start + offs_m
    q = tl.load(q_ptrs + start * sqm, mask=(m[:, None] < LQ) & (offs_d[None, :] < D), other=0.0)
    do = tl.load(do_ptrs + start * sdom, mask=(m[:, None] < LQ) & (offs_dv[None, :] < DV), other=0.0)
    lse = tl.load(lse_ptr + m, mask=m < LQ, other=0.0)
    delta = tl.load(delta_ptr + m, mask=m < LQ, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    # padded rows load q = do = 0: their probabilities are finite and contribute nothing
    pt = tl.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
    if MASKED:
        pt = tl.where(_allowed_t(m, offs_n, LK, OFF, WIN, MASK), pt, 0.0)
    dv = tl.dot(pt.to(do.dtype), do, dv)
    dpt = tl.dot(v, tl.trans(do))
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    dk = tl.dot(dst, q, dk)
    if FUSED:
        # this key block's share of dQ for these rows; keys past LK are zero rows of k. Relaxed
        # order: nothing reads dQ before the kernel ends.
        dq = tl.dot(tl.trans(dst), k) * sm_scale
        tl.atomic_add(dq_ptrs + start * D, dq, mask=(m[:, None] < LQ) & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["BATCH"])
def flash_bwd_kv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdom, sdod,
                 HKV, GROUP, LQ, LK, OFF, WIN, qk_scale, sm_scale,
                 D, DV_, BATCH, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 MASK: tl.constexpr, DOT_F32: tl.constexpr, MUT_CORNER: tl.constexpr, FUSED: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (key block, batch, KV head): dK/dV of the block; with FUSED, dQ atomics too.

    DQ (FUSED only) is a zeroed contiguous fp32 (B, HQ, LQ, D) accumulator; it receives
    sm_scale * dS @ K, so the launcher only casts it.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    if MUT_CORNER:
        OFF = LK - LQ - OFF
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + b * skb + kvh * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=(offs_n[:, None] < LK) & (offs_d[None, :] < D), other=0.0)
    v = tl.load(V + b * svb + kvh * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                mask=(offs_n[:, None] < LK) & (offs_dv[None, :] < DV_), other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo, a, bb, hi = _query_range(n0, LQ, OFF, WIN, MASK, BLOCK_M, BLOCK_N)
    HQ = HKV * GROUP
    for g in range(0, GROUP):  # the group's query heads, in a fixed order: deterministic dK/dV sums
        h = kvh * GROUP + g
        q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
        do_ptrs = DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod
        lse_ptr = LSE + (b * HQ + h) * LQ
        delta_ptr = DELTA + (b * HQ + h) * LQ
        dq_ptrs = DQ + ((b * HQ + h) * LQ + offs_m[:, None]) * D + offs_d[None, :]
        for start in range(lo, a, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, dq_ptrs, start, offs_m, offs_n,
                                 offs_d, offs_dv, sqm, sdom, D, DV_, LQ, LK, OFF, WIN, qk_scale, sm_scale,
                                 True, MASK, DOT_F32, FUSED)
        for start in range(a, bb, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, dq_ptrs, start, offs_m, offs_n,
                                 offs_d, offs_dv, sqm, sdom, D, DV_, LQ, LK, OFF, WIN, qk_scale, sm_scale,
                                 False, MASK, DOT_F32, FUSED)
        for start in range(bb, hi, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, dq_ptrs, start, offs_m, offs_n,
                                 offs_d, offs_dv, sqm, sdom, D, DV_, LQ, LK, OFF, WIN, qk_scale, sm_scale,
                                 True, MASK, DOT_F32, FUSED)
    dk = dk * sm_scale
    # dK/dV are contiguous (B, HKV, LK, d) buffers allocated by the launcher
    row = (b * HKV + kvh) * LK + offs_n
    tl.store(DK + row[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=(offs_n[:, None] < LK) & (offs_d[None, :] < D))
    tl.store(DV + row[:, None] * DV_ + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=(offs_n[:, None] < LK) & (offs_dv[None, :] < DV_))


# The same kernel body, tuned separately per path: the split path's dK/dV kernel, and the fused
# one, whose dQ accumulator the autotuner zeroes between the configs it times.
flash_bwd_dkdv = autotuned(DKDV_CONFIGS, TUNE_KEY, KV_SHAPE, prune=_prune)(flash_bwd_kv)
flash_bwd_fused = autotuned(FUSED_CONFIGS, TUNE_KEY, KV_SHAPE, prune=_prune, reset_to_zero=["DQ"])(flash_bwd_kv)


@triton.jit
def flash_bwd_preprocess(O, DO, DELTA, DQ, sob, soh, som, sod, sdob, sdoh, sdom, sdod, HQ, LQ, D, DV,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                         ZERO_DQ: tl.constexpr):
    """delta_i = rowsum(dO_i * O_i) in fp32 for BLOCK_M query rows of one (batch, head); with ZERO_DQ
    it also zeroes those rows of the fused path's fp32 dQ accumulator (one launch, no memset)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    ok = (offs_m[:, None] < LQ) & (offs_dv[None, :] < DV)
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod, mask=ok, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod, mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * LQ + offs_m, delta, mask=offs_m < LQ)
    if ZERO_DQ:
        offs_d = tl.arange(0, BLOCK_D)
        tl.store(DQ + (pid_bh * LQ + offs_m[:, None]) * D + offs_d[None, :],
                 tl.zeros([BLOCK_M, BLOCK_D], tl.float32), mask=(offs_m[:, None] < LQ) & (offs_d[None, :] < D))


@triton.jit
def _dq_block(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, start, offs_m, offs_n, offs_d, offs_dv,
              skn, svn, D, DV, LK, OFF, WIN, qk_scale,
              MASKED: tl.constexpr, MASK: tl.constexpr, DOT_F32: tl.constexpr):
    n = start + offs_n
    kt = tl.load(kt_ptrs + start * skn, mask=(offs_d[:, None] < D) & (n[None, :] < LK), other=0.0)
    vt = tl.load(vt_ptrs + start * svn, mask=(offs_dv[:, None] < DV) & (n[None, :] < LK), other=0.0)
    if DOT_F32:
        kt = kt.to(tl.float32)
        vt = vt.to(tl.float32)
    p = tl.exp2(tl.dot(q, kt) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(_allowed(offs_m, n, LK, OFF, WIN, MASK), p, 0.0)
    dp = tl.dot(do, vt)
    ds = p * (dp - delta[:, None])
    # keys past LK load as 0: ds there multiplies a zero row of K
    dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    return dq


@autotuned(DQ_CONFIGS, TUNE_KEY, Q_SHAPE, prune=_prune)
@triton.jit(do_not_specialize=["BATCH"])
def flash_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdom, sdod,
                 HQ, GROUP, LQ, LK, OFF, WIN, qk_scale, sm_scale,
                 D, DV, BATCH, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 MASK: tl.constexpr, DOT_F32: tl.constexpr, MUT_CORNER: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if MASK == 1:
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    kvh = h // GROUP
    if MUT_CORNER:
        OFF = LK - LQ - OFF
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = offs_m[:, None] < LQ
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=rows & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                 mask=rows & (offs_dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + pid_bh * LQ + offs_m, mask=offs_m < LQ, other=0.0)
    delta = tl.load(DELTA + pid_bh * LQ + offs_m, mask=offs_m < LQ, other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    kt_ptrs = K + b * skb + kvh * skh + offs_n[None, :] * skn + offs_d[:, None] * skd
    vt_ptrs = V + b * svb + kvh * svh + offs_n[None, :] * svn + offs_dv[:, None] * svd
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, a, bb, hi = _key_range(m0, LK, OFF, WIN, MASK, BLOCK_M, BLOCK_N)
    for start in range(lo, a, BLOCK_N):
        dq = _dq_block(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, start, offs_m, offs_n, offs_d, offs_dv,
                       skn, svn, D, DV, LK, OFF, WIN, qk_scale, True, MASK, DOT_F32)
    for start in range(a, bb, BLOCK_N):
        dq = _dq_block(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, start, offs_m, offs_n, offs_d, offs_dv,
                       skn, svn, D, DV, LK, OFF, WIN, qk_scale, False, MASK, DOT_F32)
    for start in range(bb, hi, BLOCK_N):
        dq = _dq_block(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, start, offs_m, offs_n, offs_d, offs_dv,
                       skn, svn, D, DV, LK, OFF, WIN, qk_scale, True, MASK, DOT_F32)
    dq = dq * sm_scale
    tl.store(DQ + (pid_bh * LQ + offs_m[:, None]) * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=rows & (offs_d[None, :] < D))


# ----------------------------------------------------------------------------- host launchers


def _launch_kw(tuned_kw: dict) -> dict:
    """Fixed tiles under the interpreter; the autotuner picks them on CUDA."""
    return dict(tuned_kw) if INTERPRET else {}


def _interp_upcast(*tensors):
    """bf16 -> fp32 copies under the interpreter, whose bf16 emulation is ~10x slower than fp32.

    The kernels read bf16 values and compute in fp32 either way; only the output's final rounding
    moves to the host (``.to(bfloat16)`` after the call).
    """

    if INTERPRET and tensors[0].dtype == torch.bfloat16:
        return tuple(t.float() for t in tensors)
    return tensors


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: int, off: int, win: int, scale: float,
            mutants: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of attention; lse is (B, HQ, LQ) float32 in base 2, +inf for rows that see no key."""
    dtype = q.dtype
    q, k, v = _interp_upcast(q, k, v)

    bsz, hq, lq, d = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    o = torch.empty((bsz, hq, lq, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((bsz, hq, lq), dtype=torch.float32, device=q.device)
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))

    def grid(meta):
        return (triton.cdiv(lq, meta["BLOCK_M"]), bsz * hq)

    flash_fwd[grid](q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                    hq, hq // hkv, lq, lk, off, win, scale * math.log2(math.e),
                    D=d, DV=dv, BATCH=bsz, BLOCK_D=bd, BLOCK_DV=bdv, MASK=mask, DOT_F32=DOT_F32,
                    MUT_SKIP=bool(mutants.get("skip_block")), MUT_CORNER=bool(mutants.get("wrong_corner")),
                    MUT_STALE=bool(mutants.get("stale_lse")), **_launch_kw(INTERP_FWD))
    return o.to(dtype), lse


def _preprocess(do: torch.Tensor, o: torch.Tensor, dq_acc: torch.Tensor | None) -> torch.Tensor:
    """delta = rowsum(dO * O) as contiguous fp32 (B, HQ, LQ); zeroes ``dq_acc`` on the way if given."""
    bsz, hq, lq, dv = o.shape
    delta = torch.empty((bsz, hq, lq), dtype=torch.float32, device=o.device)
    d = dq_acc.shape[-1] if dq_acc is not None else 1
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    # a memory-bound pass: about 64 values of each tile per thread at 4 warps
    block_m = min(128, max(16, 8192 // max(bd, bdv)))
    flash_bwd_preprocess[(triton.cdiv(lq, block_m), bsz * hq)](
        o, do, delta, delta if dq_acc is None else dq_acc, *o.stride(), *do.stride(), hq, lq, d, dv,
        BLOCK_M=block_m, BLOCK_D=bd, BLOCK_DV=bdv, ZERO_DQ=dq_acc is not None, num_warps=4)
    return delta


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
             lse: torch.Tensor, mask: int, off: int, win: int, scale: float,
             mutants: dict, path: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) by the path :func:`choose_bwd_path` gives for ``path``.

    "split": dK/dV one program per key block, dQ one per query block (no atomics, bitwise
    deterministic). "fused": one program per key block for all three, dQ by fp32 atomic adds.
    """
    bsz, hq, lq, d = q.shape
    path = choose_bwd_path(path, mask, lq, k.shape[2], d)
    dtypes = (q.dtype, k.dtype, v.dtype)
    do, q, k, v, o = _interp_upcast(do, q, k, v, o)
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    fused = path == "fused"
    dq_acc = torch.empty((bsz, hq, lq, d), dtype=torch.float32, device=q.device) if fused else None
    delta = _preprocess(do, o, dq_acc)
    dk = torch.empty((bsz, hkv, lk, d), dtype=k.dtype, device=k.device)
    dvv = torch.empty((bsz, hkv, lk, dv), dtype=v.dtype, device=v.device)
    bd, bdv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(dv))
    qk_scale = scale * math.log2(math.e)
    corner = bool(mutants.get("wrong_corner"))
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    shape_kw = dict(D=d, BATCH=bsz, BLOCK_D=bd, BLOCK_DV=bdv, MASK=mask, DOT_F32=DOT_F32, MUT_CORNER=corner)

    def grid_kv(meta):
        return (triton.cdiv(lk, meta["BLOCK_N"]), bsz * hkv)

    kv_kernel = flash_bwd_fused if fused else flash_bwd_dkdv
    kv_kernel[grid_kv](q, k, v, do, lse, delta, dk, dvv, delta if dq_acc is None else dq_acc, *strides,
                       hkv, hq // hkv, lq, lk, off, win, qk_scale, scale, DV_=dv, FUSED=fused, **shape_kw,
                       **_launch_kw(INTERP_BWD))
    if fused:
        dq = dq_acc  # already scaled by the kernel: only the cast remains
    else:
        dq = torch.empty((bsz, hq, lq, d), dtype=q.dtype, device=q.device)

        def grid_q(meta):
            return (triton.cdiv(lq, meta["BLOCK_M"]), bsz * hq)

        flash_bwd_dq[grid_q](q, k, v, do, lse, delta, dq, *strides, hq, hq // hkv, lq, lk, off, win,
                             qk_scale, scale, DV=dv, **shape_kw, **_launch_kw(INTERP_BWD))
    return dq.to(dtypes[0]), dk.to(dtypes[1]), dvv.to(dtypes[2])
