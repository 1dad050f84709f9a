"""The absorbed MLA attention core: many query heads against one shared latent K/V head.

Imported through this package's :func:`kernels`. Queries come in two tensors, each read through
its own strides: the latent part (B, H, LQ, DL) (the key up-projection folded into q) and the RoPE
part (B, H, LQ, DR); the cache is (B, LK, DL + DR): the normalised latent c_kv then the roped
k_pe, and the values are the cache's first DL columns. A program owns BLOCK_M rows of the
(query position, head) grid, row r = (r // H, r % H): with DeepSeek-V3's 128 heads a tile's rows
share one query position, so every latent tile loaded serves all of them, for the scores (with the
RoPE part) and then as the values, without a copy.

Causal masks are bottom-right (query i at position i + LK - LQ), as in decoding. The key blocks
every row of a tile may see run without a mask; only the blocks past the tile's first query
position (at most BLOCK_M / H + 1 of them) are masked. Deterministic: each program owns its output
rows, no atomics. Forward only.
"""


import math

import torch
import triton
import triton.language as tl
from triton import knobs

from attnsuite.triton_support import autotuned

INTERPRET = bool(knobs.runtime.interpret)
DOT_F32 = INTERPRET  # see flash.py: the interpreter's bf16 tl.dot is wrong
INTERP_TILE = dict(BLOCK_M=32, BLOCK_N=32)


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# The fp32 accumulator is BLOCK_M x 512: 64 rows over 8 warps is 128 registers a thread already, and
# every config compiles to 255 registers with some spilled. scripts/mla_tune.py on an H200
# (docs/triton.md, MLA) put 64x64 over 8 warps, 2 stages first at DeepSeek-V3 size (~300 TFLOP/s),
# 64x32 3 stages and 32x64 over 4 warps next; the last is the small-grid choice (decode steps).
MLA_CONFIGS = [_cfg(64, 64, 8, 2), _cfg(64, 32, 8, 3), _cfg(32, 64, 4, 2)]


@triton.jit
def _mla_block(acc, m_i, l_i, q_lat, q_pe, kv_b, skd, start, offs_n, offs_l, offs_r, pos, hi, skn, DL, DR,
               qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, EVEN_D: tl.constexpr,
               DOT_F32: tl.constexpr):
    """One key block of the online softmax; MASKED: the block holds keys some row may not see."""
    n = start + offs_n
    # addresses formed per block from the batch's base (not a loop-carried pointer tensor of the
    # whole tile): fewer registers spilled, 1-3% faster on an H200 (scripts/mla_tune.py)
    c_ptrs = kv_b + n[:, None] * skn + offs_l[None, :] * skd
    pe_ptrs = kv_b + n[:, None] * skn + (DL + offs_r[None, :]) * skd
    if EVEN_D and not MASKED:
        c = tl.load(c_ptrs)
        pe = tl.load(pe_ptrs)
    else:
        c = tl.load(c_ptrs, mask=(n[:, None] < hi) & (offs_l[None, :] < DL), other=0.0)
        pe = tl.load(pe_ptrs, mask=(n[:, None] < hi) & (offs_r[None, :] < DR), other=0.0)
    if DOT_F32:
        c = c.to(tl.float32)
        pe = pe.to(tl.float32)
    s = tl.dot(q_lat, tl.trans(c))
    s = tl.dot(q_pe, tl.trans(pe), s) * qk_scale
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
    acc = tl.dot(p.to(c.dtype), c, acc * alpha[:, None])  # the latent tile is also the value tile
    return acc, m_new, l_i


# the autotune key (attnsuite.triton_support.autotuned): code-selecting arguments, then the sizes
# that decide the fastest config; BATCH is passed for the key alone (unused in the kernel)
@autotuned(MLA_CONFIGS, ("BLOCK_DL", "BLOCK_DR", "CAUSAL", "EVEN_D"), ("BATCH", "H", "LQ", "LK"))
@triton.jit(do_not_specialize=["BATCH"])
def mla_fwd(Q, QR, KV, O, sqb, sqh, sqm, sqd, srb, srh, srm, srd, skb, skn, skd, sob, soh, som, sod,
            H, LQ, LK, OFF, qk_scale,
            DL, DR, BATCH, BLOCK_DL: tl.constexpr, BLOCK_DR: tl.constexpr,
            CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, DOT_F32: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid  # the longest causal rows first
    b = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < LQ * H
    qi = rows // H
    h = rows % H
    offs_l = tl.arange(0, BLOCK_DL)
    offs_r = tl.arange(0, BLOCK_DR)
    offs_n = tl.arange(0, BLOCK_N)
    q_row = Q + b * sqb + h[:, None] * sqh + qi[:, None] * sqm
    q_lat = tl.load(q_row + offs_l[None, :] * sqd, mask=live[:, None] & (offs_l[None, :] < DL), other=0.0)
    qr_row = QR + b * srb + h[:, None] * srh + qi[:, None] * srm
    q_pe = tl.load(qr_row + offs_r[None, :] * srd, mask=live[:, None] & (offs_r[None, :] < DR), other=0.0)
    if DOT_F32:
        q_lat = q_lat.to(tl.float32)
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
    acc = tl.zeros([BLOCK_M, BLOCK_DL], tl.float32)
    for start in range(0, full, BLOCK_N):
        acc, m_i, l_i = _mla_block(acc, m_i, l_i, q_lat, q_pe, kv_b, skd, start, offs_n, offs_l, offs_r, pos,
                                   hi, skn, DL, DR, qk_scale, False, CAUSAL, EVEN_D, DOT_F32)
    for start in range(full, hi, BLOCK_N):
        acc, m_i, l_i = _mla_block(acc, m_i, l_i, q_lat, q_pe, kv_b, skd, start, offs_n, offs_l, offs_r, pos,
                                   hi, skn, DL, DR, qk_scale, True, CAUSAL, EVEN_D, DOT_F32)
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + b * sob + h[:, None] * soh + qi[:, None] * som + offs_l[None, :] * sod, o.to(O.dtype.element_ty),
             mask=live[:, None] & (offs_l[None, :] < DL))


def launch(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor, o: torch.Tensor, scale: float, causal: bool,
           config: tuple[int, int, int, int] | None = None):
    """Run the kernel into ``o``; ``config`` (BLOCK_M, BLOCK_N, num_warps, num_stages) bypasses the
    autotuner (scripts/mla_tune.py times each candidate that way). Returns what Triton's launch
    returns (the compiled kernel, with its register and shared-memory figures, for a fixed config)."""
    bsz, heads, lq, d_latent = q_lat.shape
    lk, dr = kv.shape[1], q_pe.shape[-1]
    bdl, bdr = max(16, triton.next_power_of_2(d_latent)), max(16, triton.next_power_of_2(dr))
    if INTERPRET:
        tiles = dict(INTERP_TILE)
    elif config is not None:
        bm, bn, warps, stages = config
        tiles = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    else:
        tiles = {}
    kernel = mla_fwd.fn if (config is not None and not INTERPRET) else mla_fwd

    def grid(meta):
        return (triton.cdiv(lq * heads, meta["BLOCK_M"]), bsz)

    return kernel[grid](q_lat, q_pe, kv, o, *q_lat.stride(), *q_pe.stride(), *kv.stride(), *o.stride(), heads, lq, lk, lk - lq,
                 scale * math.log2(math.e), DL=d_latent, DR=dr, BATCH=bsz, BLOCK_DL=bdl, BLOCK_DR=bdr,
                 CAUSAL=bool(causal), EVEN_D=(bdl == d_latent and bdr == dr), DOT_F32=DOT_F32, **tiles)


def mla_forward(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """o (B, H, LQ, DL) = softmax(scale [q_lat, q_pe] kv^T, bottom-right causal) kv[..., :DL].

    The query comes in its two parts, q_lat (B, H, LQ, DL) and q_pe (B, H, LQ, DR), each read
    through its own strides (q_pe may be a transposed view of the projection's output), so the
    (B, H, LQ, DL + DR) concatenation is never built; kv is (B, LK, DL + DR). The output has
    q_lat's memory layout (a head-major q_lat gives a head-major o, ready for a batched matmul
    over heads without a copy).
    """
    dtype = q_lat.dtype
    if INTERPRET and dtype == torch.bfloat16:  # see flash._interp_upcast
        q_lat, q_pe, kv = q_lat.float(), q_pe.float(), kv.float()
    o = torch.empty_like(q_lat)  # q_lat's strides (a permuted dense layout is kept)
    launch(q_lat, q_pe, kv, o, scale, causal)
    return o.to(dtype)
