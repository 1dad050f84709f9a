"""Experiment (session s39, not shipped): the shipped absorbed-MLA kernel with the score dot no longer
"chained" to the value dot, so that Triton stops computing every score twice.

Compiled offline for sm_90 with triton 3.6 (scripts/mla_cand/compile_sm90.py, no GPU needed), the
shipped kernel's score dots have warpsPerCTA [8, 1] on a 64-row tile: both warpgroups compute the whole
64 x 64 score tile (576 deep) and each then uses it for its half of the 512 value columns, so the
tensor cores do 2 x 576 + 512 multiply-adds per (row, key) for 1088 useful ones. Triton's
AccelerateMatmul gives every dot whose result reaches another dot (its forward slice, as in flash
attention) all warps along M. Here P and the rescaled accumulator reach the value dot through an
``if`` that is always taken (``hi > 0``): a forward slice stops at the branch's yield, so the score
dots take [4, 2] (each warpgroup half of the keys; row max and sum, and P, exchanged through shared
memory by Triton). The scores are scaled before they are summed, since Triton folds "s + dot" into a
dot accumulating into s, which is chained too. Offline figures at 64x64x8x2: [4, 2] for every dot,
224 bytes of stack (272 shipped), 224 KiB of shared memory (216 shipped; the H200 allows 227), the
latent tiles still loaded by asynchronous copies two stages deep. A first try that handed P over
through a global scratch buffer with a barrier (also [4, 2]) lost the asynchronous copies: the
pipeliner leaves a loop with a barrier alone. Whether this is faster is for an H200 to say:

    python3 scripts/mla_tune.py --kernel-file scripts/mla_cand/branch.py --only 64x64x8x2,64x32x8x3,64x32x8x2
    TRITON_INTERPRET=1 .venv/bin/python scripts/mla_cand/check_interp.py scripts/mla_cand/branch.py   # CPU
"""


import math

import torch
import triton
import triton.language as tl
from triton import knobs

from attnsuite.triton_support import autotuned

INTERPRET = bool(knobs.runtime.interpret)
DOT_F32 = INTERPRET  # see flash.py: the interpreter's bf16 tl.dot is wrong
# the interpreter runs unsplit (half the score work of SPLIT 2 on CPU); the core tests run both
INTERP_TILE = dict(BLOCK_M=32, BLOCK_N=32, SPLIT=1)


def _cfg(bm, bn, warps, stages, split=1):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "SPLIT": split}, num_warps=warps, num_stages=stages)


# The fp32 accumulator is BLOCK_M x 512: 64 rows over 8 warps is 128 registers a thread already, and
# every unsplit config compiles to 255 registers with some spilled. SPLIT=2 gives a program half of
# the value columns (grid axis 2) at the cost of computing each score twice (once per half; 1.53x the
# FLOPs): a decode step's few hundred (query, head) rows then fill twice the programs. On an H200
# (scripts/mla_tune.py, docs/triton.md "MLA"): for a DeepSeek-V3 prefill chunk 64x64 over 8 warps, 2
# stages, unsplit, stays first (~300 TFLOP/s; split 128x32 over 8 warps 257, each warpgroup then owning
# whole score rows); for a 4-token decode step against 2K cached tokens, split 32x64 over 4 warps took
# 0.101 ms against 0.133 ms for the best unsplit config. 32x64 unsplit is kept for tiny grids.
MLA_CONFIGS = [_cfg(64, 64, 8, 2), _cfg(64, 32, 8, 3), _cfg(32, 64, 4, 2, split=2), _cfg(64, 32, 4, 2, split=2),
               _cfg(32, 64, 4, 2)]


@triton.jit
def _mla_block(acc, m_i, l_i, q_v, q_o, q_pe, kv_b, skd, start, offs_n, offs_v, offs_o, offs_r, pos, hi, skn, DL,
               DR, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
               DOT_F32: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr = 64, BLOCK_N: tl.constexpr = 64):
    """One key block of the online softmax; MASKED: the block holds keys some row may not see.

    offs_v are the value columns this program owns (all of them unless SPLIT), offs_o the others,
    which enter the scores only."""
    n = start + offs_n
    # addresses formed per block from the batch's base (not a loop-carried pointer tensor of the
    # whole tile): fewer registers spilled, 1-3% faster on an H200 (scripts/mla_tune.py)
    row = kv_b + n[:, None] * skn
    if EVEN_D and not MASKED:
        c = tl.load(row + offs_v[None, :] * skd)
        pe = tl.load(row + (DL + offs_r[None, :]) * skd)
    else:
        c = tl.load(row + offs_v[None, :] * skd, mask=(n[:, None] < hi) & (offs_v[None, :] < DL), other=0.0)
        pe = tl.load(row + (DL + offs_r[None, :]) * skd, mask=(n[:, None] < hi) & (offs_r[None, :] < DR), other=0.0)
    if DOT_F32:
        c = c.to(tl.float32)
        pe = pe.to(tl.float32)
    s = tl.dot(q_v, tl.trans(c)) * qk_scale
    if SPLIT == 2:
        if EVEN_D and not MASKED:
            c_o = tl.load(row + offs_o[None, :] * skd)
        else:
            c_o = tl.load(row + offs_o[None, :] * skd, mask=(n[:, None] < hi) & (offs_o[None, :] < DL), other=0.0)
        if DOT_F32:
            c_o = c_o.to(tl.float32)
        s += tl.dot(q_o, tl.trans(c_o)) * qk_scale
    s += tl.dot(q_pe, tl.trans(pe)) * qk_scale
    if MASKED:
        ok = n[None, :] < hi
        if CAUSAL:
            ok = ok & (n[None, :] <= pos[:, None])
        s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN from -inf - -inf
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if hi > 0:  # always (a key block runs only below hi): the branch cuts the chain (module docstring)
        p_v = p.to(c.dtype)
        acc_s = acc * alpha[:, None]
    else:
        p_v = tl.zeros([BLOCK_M, BLOCK_N], c.dtype)
        acc_s = acc
    acc = tl.dot(p_v, c, acc_s)  # the latent tile is also the value tile
    return acc, m_new, l_i


# the autotune key (attnsuite.triton_support.autotuned): code-selecting arguments, then the sizes
# that decide the fastest config; BATCH is passed for the key alone (unused in the kernel)
@autotuned(MLA_CONFIGS, ("BLOCK_DL", "BLOCK_DR", "CAUSAL", "EVEN_D"), ("BATCH", "H", "LQ", "LK"))
@triton.jit(do_not_specialize=["BATCH"])
def mla_fwd(Q, QR, KV, O, sqb, sqh, sqm, sqd, srb, srh, srm, srd, skb, skn, skd, sob, soh, som, sod,
            H, LQ, LK, OFF, qk_scale,
            DL, DR, BATCH, BLOCK_DL: tl.constexpr, BLOCK_DR: tl.constexpr,
            CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, DOT_F32: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid  # the longest causal rows first
    b = tl.program_id(1)
    g = tl.program_id(2)  # which value columns (SPLIT 2: half of them; else g is 0)
    BLOCK_DV: tl.constexpr = BLOCK_DL // SPLIT
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < LQ * H
    qi = rows // H
    h = rows % H
    offs_v = g * BLOCK_DV + tl.arange(0, BLOCK_DV)
    offs_o = (1 - g) * BLOCK_DV + tl.arange(0, BLOCK_DV)  # the other half's columns (used with SPLIT 2)
    offs_r = tl.arange(0, BLOCK_DR)
    offs_n = tl.arange(0, BLOCK_N)
    q_row = Q + b * sqb + h[:, None] * sqh + qi[:, None] * sqm
    q_v = tl.load(q_row + offs_v[None, :] * sqd, mask=live[:, None] & (offs_v[None, :] < DL), other=0.0)
    q_o = q_v
    if SPLIT == 2:
        q_o = tl.load(q_row + offs_o[None, :] * sqd, mask=live[:, None] & (offs_o[None, :] < DL), other=0.0)
    qr_row = QR + b * srb + h[:, None] * srh + qi[:, None] * srm
    q_pe = tl.load(qr_row + offs_r[None, :] * srd, mask=live[:, None] & (offs_r[None, :] < DR), other=0.0)
    if DOT_F32:
        q_v = q_v.to(tl.float32)
        q_o = q_o.to(tl.float32)
        q_pe = q_pe.to(tl.float32)
    hi = LK
    full = (LK // BLOCK_N) * BLOCK_N  # key blocks every row of the tile sees whole
    if CAUSAL:
        first = (pid * BLOCK_M) // H  # the tile's first and last query
        last = tl.minimum(pid * BLOCK_M + BLOCK_M - 1, LQ * H - 1) // H
        hi = tl.minimum(LK, tl.maximum(last + OFF + 1, 0))
        full = tl.minimum(full, (tl.maximum(first + OFF + 1, 0) // BLOCK_N) * BLOCK_N)
    pos = qi + OFF
    kv_b = KV + b * skb
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start in range(0, full, BLOCK_N):
        acc, m_i, l_i = _mla_block(acc, m_i, l_i, q_v, q_o, q_pe, kv_b, skd, start, offs_n, offs_v, offs_o, offs_r,
                                   pos, hi, skn, DL, DR, qk_scale, False, CAUSAL, EVEN_D, DOT_F32, SPLIT,
                                   BLOCK_M, BLOCK_N)
    for start in range(full, hi, BLOCK_N):
        acc, m_i, l_i = _mla_block(acc, m_i, l_i, q_v, q_o, q_pe, kv_b, skd, start, offs_n, offs_v, offs_o, offs_r,
                                   pos, hi, skn, DL, DR, qk_scale, True, CAUSAL, EVEN_D, DOT_F32, SPLIT,
                                   BLOCK_M, BLOCK_N)
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + b * sob + h[:, None] * soh + qi[:, None] * som + offs_v[None, :] * sod, o.to(O.dtype.element_ty),
             mask=live[:, None] & (offs_v[None, :] < DL))


def launch(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor, o: torch.Tensor, scale: float, causal: bool,
           config: tuple[int, ...] | None = None):
    """Run the kernel into ``o``; ``config`` (BLOCK_M, BLOCK_N, num_warps, num_stages[, SPLIT]) bypasses
    the autotuner (scripts/mla_tune.py times each candidate that way; the tests run both SPLITs). Returns
    what Triton's launch returns (the compiled kernel, with its register and shared-memory figures, for a
    fixed config)."""
    bsz, heads, lq, d_latent = q_lat.shape
    lk, dr = kv.shape[1], q_pe.shape[-1]
    bdl, bdr = max(16, triton.next_power_of_2(d_latent)), max(16, triton.next_power_of_2(dr))
    if config is not None:
        bm, bn, warps, stages, *split = config
        tiles = dict(BLOCK_M=bm, BLOCK_N=bn, SPLIT=split[0] if split else 1, num_warps=warps, num_stages=stages)
    elif INTERPRET:
        tiles = dict(INTERP_TILE)
    else:
        tiles = {}
    if tiles.get("SPLIT", 1) not in (1, 2):
        raise ValueError(f"mla kernel: SPLIT must be 1 or 2, not {tiles['SPLIT']}")
    kernel = mla_fwd.fn if (config is not None and not INTERPRET) else mla_fwd

    def grid(meta):
        return (triton.cdiv(lq * heads, meta["BLOCK_M"]), bsz, meta["SPLIT"])

    return kernel[grid](q_lat, q_pe, kv, o, *q_lat.stride(), *q_pe.stride(), *kv.stride(), *o.stride(), heads, lq, lk, lk - lq,
                 scale * math.log2(math.e), DL=d_latent, DR=dr, BATCH=bsz, BLOCK_DL=bdl, BLOCK_DR=bdr,
                 CAUSAL=bool(causal), EVEN_D=(bdl == d_latent and bdr == dr), DOT_F32=DOT_F32, **tiles)


def mla_forward(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor, scale: float, causal: bool,
                config: tuple[int, ...] | None = None) -> torch.Tensor:
    """o (B, H, LQ, DL) = softmax(scale [q_lat, q_pe] kv^T, bottom-right causal) kv[..., :DL].

    The query comes in its two parts, q_lat (B, H, LQ, DL) and q_pe (B, H, LQ, DR), each read
    through its own strides (q_pe may be a transposed view of the projection's output), so the
    (B, H, LQ, DL + DR) concatenation is never built; kv is (B, LK, DL + DR). The output has
    q_lat's memory layout (a head-major q_lat gives a head-major o, ready for a batched matmul
    over heads without a copy). ``config``: see :func:`launch`.
    """
    dtype = q_lat.dtype
    if INTERPRET and dtype == torch.bfloat16:  # see flash._interp_upcast
        q_lat, q_pe, kv = q_lat.float(), q_pe.float(), kv.float()
    o = torch.empty_like(q_lat)  # q_lat's strides (a permuted dense layout is kept)
    launch(q_lat, q_pe, kv, o, scale, causal, config)
    return o.to(dtype)
