"""Correctness problems for structured masks, score modifiers and GQA/MQA (kernel level).

:func:`structured_problems` is appended to the ``attention`` family's problems, so every kernel
variant that declares a mask kind or feature is checked on it. Sizes are small enough for 2 CPU
cores: the lengths are the awkward ones of README's correctness section (1, 3, 17, 97, 113, one above the
default FlexAttention block size of 128), with Lq != Lk both ways and both causal corners.
"""

from __future__ import annotations

from attnsuite.problem import Mask, Problem


def _base_problems() -> list[Problem]:
    """The structured problems in fp32 on CPU; :func:`structured_problems` retargets them."""
    P, M = Problem, Mask
    return [
        # sliding window i - w <= j <= i
        P(batch=2, lq=97, lk=97, hq=2, hkv=2, dqk=32, dv=32, mask=M("window", window=5)),
        P(lq=17, lk=113, hq=4, hkv=2, dqk=32, dv=32, mask=M("window", window=7, align="bottom_right")),
        P(lq=3, lk=3, hq=2, hkv=1, dqk=16, dv=16, mask=M("window", window=0)),
        # top-left window with lq > lk: rows i >= lk + w see no key (reported as fully masked)
        P(lq=113, lk=97, hq=2, hkv=2, dqk=16, dv=16, mask=M("window", window=8), tag="masked-rows"),
        # frame-causal floor(j/F) <= floor(i/F): video-wm's 30 frames x 65 tokens scaled to 3 x 13
        P(batch=2, lq=39, lk=39, hq=2, hkv=2, dqk=32, dv=32, mask=M("block_causal", block=13), tag="video-wm"),
        P(lq=4, lk=39, hq=2, hkv=2, dqk=32, dv=32, mask=M("block_causal", block=13, align="bottom_right"),
          tag="video-wm"),
        P(lq=97, lk=97, hq=4, hkv=1, dqk=16, dv=16, mask=M("block_causal", block=16)),
        # block-sparse tiles (+ the diagonal tiles), lengths not multiples of the tile
        P(lq=113, lk=97, hq=2, hkv=2, dqk=32, dv=32, mask=M("block_sparse", block=16, seed=1)),
        P(lq=17, lk=113, hq=2, hkv=2, dqk=16, dv=16, mask=M("block_sparse", block=8, seed=2)),
        # document / packed sequences, bidirectional and causal inside each document
        P(lq=113, lk=113, hq=2, hkv=2, dqk=32, dv=32, mask=M("document", doc_lens=(30, 50, 33))),
        P(batch=2, lq=97, lk=97, hq=4, hkv=2, dqk=32, dv=32, mask=M("document", doc_lens=(5, 40, 52), causal=True)),
        P(lq=4, lk=97, hq=2, hkv=2, dqk=16, dv=16,
          mask=M("document", doc_lens=(60, 37), causal=True, align="bottom_right")),
        # longer than one 128-token FlexAttention block, so the BlockMask has several blocks
        P(lq=260, lk=260, hq=2, hkv=1, dqk=16, dv=16, mask=M("document", doc_lens=(100, 90, 70), causal=True)),
        # prefix-LM: j < prefix or j <= i
        P(lq=97, lk=97, hq=2, hkv=2, dqk=32, dv=32, mask=M("prefix", prefix=10)),
        P(lq=17, lk=113, hq=2, hkv=2, dqk=32, dv=16, mask=M("prefix", prefix=50, align="bottom_right")),
        # arbitrary seeded boolean pattern: catches an inverted or transposed mask convention
        P(lq=113, lk=97, hq=2, hkv=2, dqk=16, dv=16, mask=M("random", seed=1)),
        P(lq=1, lk=17, hq=2, hkv=2, dqk=16, dv=16, mask=M("random", seed=2)),
        # ALiBi -m_h |i - j| (with the alignment offset), alone and with masks
        P(lq=97, lk=97, hq=4, hkv=4, dqk=32, dv=32, alibi=True),
        P(lq=17, lk=113, hq=4, hkv=2, dqk=32, dv=32, alibi=True, mask=M("causal", align="bottom_right")),
        P(lq=97, lk=97, hq=2, hkv=2, dqk=16, dv=16, alibi=True, mask=M("window", window=9)),
        # softcap c * tanh(s / c): a cap below the typical score range so it changes the result
        P(lq=97, lk=97, hq=2, hkv=2, dqk=32, dv=32, softcap=2.0, mask=M("causal")),
        P(lq=113, lk=97, hq=4, hkv=1, dqk=32, dv=32, softcap=3.0, alibi=True),
        # GQA ratios 2 and 4, MQA, with causal corners both ways and decode-like shapes
        P(batch=2, lq=97, lk=113, hq=8, hkv=2, dqk=32, dv=32, mask=M("causal", align="bottom_right")),
        P(lq=113, lk=97, hq=8, hkv=4, dqk=16, dv=16, mask=M("causal")),
        P(lq=1, lk=113, hq=4, hkv=1, dqk=32, dv=32, mask=M("causal", align="bottom_right")),
        P(lq=3, lk=17, hq=6, hkv=1, dqk=16, dv=32, mask=M("window", window=4, align="bottom_right")),
        # KV-cache decode shapes: 1 and 4 new queries against 300 cached keys, bottom-right
        P(batch=2, lq=1, lk=300, hq=8, hkv=2, dqk=32, dv=32, mask=M("causal", align="bottom_right"), tag="decode"),
        P(batch=2, lq=4, lk=300, hq=8, hkv=2, dqk=32, dv=32, mask=M("causal", align="bottom_right"), tag="decode"),
    ]


# Indices into _base_problems() kept for dtypes other than fp32: one problem per mask kind and score
# mod, GQA and MQA, a decode shape (the fp32 set is the full sweep; the others mainly add rounding).
_LOW_COST = (1, 4, 8, 11, 14, 15, 19, 21, 24, 27)


def structured_problems(device: str, dtypes: tuple) -> list["Problem"]:
    """Structured-mask, score-mod and GQA/MQA problems for every dtype in ``dtypes`` on ``device``.

    fp32 gets the full set (28); every other dtype the 10-problem subset ``_LOW_COST`` covering each
    mask kind, ALiBi, softcap, GQA, MQA and decode. Ids carry the mask, the score mods, the head
    layout and a tag naming the workload a problem is scaled from.
    """
    base = _base_problems()
    out = []
    for dtype in dtypes:
        chosen = base if dtype == "float32" else [base[i] for i in _LOW_COST]
        out.extend(p.with_(device=device, dtype=dtype) for p in chosen)
    return out
