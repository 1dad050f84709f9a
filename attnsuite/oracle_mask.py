"""The oracle's definition of each mask kind, in NumPy.

This is deliberately a second, independent implementation of the mask semantics: the variants
build their masks from :mod:`attnsuite.mask_mods` (torch), and the tests check that both agree for
every kind and many lengths. A bug in one shows up as a disagreement rather than hiding in both.
"""

from __future__ import annotations

import numpy as np

from .problem import Problem


RANDOM_PRIME = 9973  # positions are folded mod this prime so every product fits in int32


def random_keep(i: np.ndarray, j: np.ndarray, seed: int, lk: int) -> np.ndarray:
    """The seeded 'random' mask as a pure function of positions (about half kept, >= 1 per row).

    Every intermediate stays below 2**31 for positions below 2**24 and any seed, because the
    Triton FlexAttention kernels evaluate mask_mods on int32 indices: a hash that overflows int32
    (as an earlier multiply-xor hash did) gives a different mask on CUDA than on CPU.
    """
    x = (i * 37 + (seed % RANDOM_PRIME) * 101 + 1) % RANDOM_PRIME
    y = (j * 53 + 17) % RANDOM_PRIME
    h = (x * y + 3 * x + 5 * y) % 97
    return (h < 48) | (j == (i * 7 + seed % lk) % lk)


def allowed(problem: Problem) -> np.ndarray:
    """Boolean (lq, lk) array: True where query i may attend to key j."""
    return allowed_rows(problem, np.arange(problem.lq, dtype=np.int64))


def allowed_rows(problem: Problem, rows: np.ndarray) -> np.ndarray:
    """Boolean (len(rows), lk) array: the rows of :func:`allowed` for query positions ``rows``
    (what a check of a few rows of a long sequence needs, without the lq x lk whole)."""
    m = problem.mask
    lq, lk = len(rows), problem.lk
    raw_i = np.asarray(rows, dtype=np.int64)[:, None]
    i = raw_i + problem.align_offset  # query position on the key axis
    j = np.arange(lk, dtype=np.int64)[None, :]
    if m.kind == "none":
        out = np.ones((lq, lk), dtype=bool)
    elif m.kind == "causal":
        out = j <= i
    elif m.kind == "window":
        out = (j <= i) & (j >= i - m.window)
    elif m.kind == "block_causal":
        out = (j // m.block) <= np.floor_divide(i, m.block)
    elif m.kind == "block_sparse":
        qb, kb = raw_i // m.block, j // m.block
        out = (qb == kb) | (((qb * 7 + kb * 13 + m.seed) % 3) == 0)
    elif m.kind == "document":
        doc_of_key = np.repeat(np.arange(len(m.doc_lens)), m.doc_lens)
        pos = i[:, 0]
        valid = (pos >= 0) & (pos < lk)
        doc_q = np.where(valid, doc_of_key[np.clip(pos, 0, lk - 1)], -1)[:, None]
        out = doc_q == doc_of_key[None, :]
        if m.causal:
            out = out & (j <= i)
    elif m.kind == "prefix":
        out = (j < m.prefix) | (j <= i)
    elif m.kind == "random":
        out = random_keep(raw_i, j, m.seed, lk)
    else:  # Mask validates its kind, so this is a programming error
        raise AssertionError(m.kind)
    return np.broadcast_to(out, (lq, lk)).copy()


def live_among(problem: Problem, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Boolean, one per entry of ``rows``: whether that query position may attend to a key at all,
    a chunk of rows at a time (never the lq x lk whole of a long problem)."""
    rows = np.asarray(rows, dtype=np.int64)
    parts = [allowed_rows(problem, part).any(axis=1) for part in np.array_split(rows, max(1, -(-len(rows) // chunk)))]
    return np.concatenate(parts) if len(rows) else np.zeros(0, dtype=bool)


def alibi_slopes(hq: int) -> np.ndarray:
    """ALiBi slopes m_h = 2^(-8 (h+1) / H), the geometric sequence of the ALiBi paper."""
    return 2.0 ** (-8.0 * (np.arange(hq, dtype=np.float64) + 1.0) / hq)


def alibi_bias(problem: Problem) -> np.ndarray:
    """(hq, lq, lk) additive bias -m_h * |i - j| with i on the key axis (alignment applied)."""
    return alibi_bias_rows(problem, np.arange(problem.lq), np.arange(problem.hq))


def alibi_bias_rows(problem: Problem, rows: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """(len(heads), len(rows), lk): :func:`alibi_bias` for query heads ``heads`` and positions ``rows``."""
    i = np.asarray(rows, dtype=np.int64)[:, None] + problem.align_offset
    j = np.arange(problem.lk)[None, :]
    return -alibi_slopes(problem.hq)[np.asarray(heads)][:, None, None] * np.abs(i - j)[None].astype(np.float64)


def fully_masked_rows(problem: Problem) -> np.ndarray:
    """Indices of query rows that may attend to no key at all."""
    return np.flatnonzero(~allowed(problem).any(axis=1))
