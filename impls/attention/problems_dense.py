"""Adversarial problems for the kernel-level attention family (README, "Correctness": awkward lengths, Lq != Lk, odd head dims, GQA).

Lengths 1, 3, 17, 97, 113 and one above 1000; Lq != Lk both ways; head dims 16 to 256 with
non-powers of two; GQA and MQA ratios; batch 1; both causal corners; a pinned scale; logits of a
hundred and more (inputs drawn larger); an arbitrary
boolean mask (the mask-convention check: every variant taking a mask must read True as "attend").
"""

from __future__ import annotations

from attnsuite.problem import LARGE_LOGITS, Mask, Problem

CAUSAL = Mask("causal")
CAUSAL_BR = Mask("causal", align="bottom_right")
NONE = Mask()


def _shapes(device: str) -> list[dict]:
    big = 1031 if device == "cpu" else 4099
    shapes = [
        dict(batch=1, lq=1, lk=1, hq=2, hkv=2, dqk=16, dv=16, mask=NONE),
        dict(batch=2, lq=3, lk=3, hq=2, hkv=2, dqk=32, dv=32, mask=CAUSAL),
        dict(batch=1, lq=17, lk=97, hq=4, hkv=4, dqk=64, dv=64, mask=NONE),
        dict(batch=1, lq=97, lk=17, hq=2, hkv=2, dqk=40, dv=40, mask=CAUSAL),  # Lq > Lk, top-left
        dict(batch=1, lq=17, lk=97, hq=2, hkv=2, dqk=24, dv=24, mask=CAUSAL_BR),  # decode-like corner
        dict(batch=1, lq=113, lk=113, hq=4, hkv=1, dqk=48, dv=48, mask=CAUSAL),  # MQA
        dict(batch=2, lq=97, lk=113, hq=8, hkv=2, dqk=80, dv=80, mask=CAUSAL_BR),  # GQA 4:1
        dict(batch=1, lq=33, lk=33, hq=2, hkv=2, dqk=256, dv=256, mask=NONE),
        dict(batch=1, lq=33, lk=47, hq=2, hkv=2, dqk=32, dv=16, mask=NONE),  # dv != dqk
        dict(batch=2, lq=33, lk=41, hq=2, hkv=2, dqk=16, dv=16, mask=Mask("random", seed=5)),
        dict(batch=1, lq=29, lk=29, hq=2, hkv=2, dqk=32, dv=32, mask=CAUSAL, scale=0.3),
        dict(batch=1, lq=big, lk=big, hq=2, hkv=2, dqk=16, dv=16, mask=CAUSAL),
        dict(batch=1, lq=20, lk=8, hq=2, hkv=2, dqk=16, dv=16, mask=CAUSAL_BR),  # 12 fully masked rows
    ]
    if device != "cpu":
        # Lq == Lk at head dim 128, both masks: the one kind of shape that library kernels with a short
        # list of head dims and a causal mask only for equal lengths (SageAttention: 64/96/128,
        # FlashInfer: 64/128/256, FA4: 64/96/128) all accept. Without it the H200 run of 2026-11-30
        # checked sage-attention on no problem at all. CUDA only: on CPU no library kernel runs.
        shapes += [dict(batch=2, lq=129, lk=129, hq=4, hkv=2, dqk=128, dv=128, mask=CAUSAL),  # GQA 2:1
                   dict(batch=1, lq=200, lk=200, hq=2, hkv=2, dqk=128, dv=128, mask=NONE),
                   # a sliding window at a head dim FA4 and FlashInfer take (64): their window path had
                   # no CUDA problem to be checked on (MQA, a window that is not a power of two)
                   dict(batch=1, lq=160, lk=160, hq=4, hkv=1, dqk=64, dv=64, mask=Mask("window", window=37))]
    return shapes


# Logits up to about 170 (q and k drawn larger, problem.LARGE_LOGITS_QK): exp() without the row
# maximum taken off overflows in fp16, bf16 and fp32 alike. In every dtype but fp64 (whose exp() does not overflow
# there), with nothing to declare but the mask: equal lengths, one head per key/value head, the
# default scale, no mask or a top-left causal one (a pinned scale on a bottom-right Lq != Lk problem
# had reached only variants declaring three features, and no bf16 run: found by a fresh-user test).
LARGE_LOGITS_SHAPES = [dict(batch=1, lq=29, lk=29, hq=2, hkv=2, dqk=32, dv=32, mask=m, tag=LARGE_LOGITS)
                       for m in (NONE, CAUSAL)]


def dense_problems(device: str, dtypes: tuple) -> list[Problem]:
    """The dense catalogue for ``device``: every shape in the first dtype, a spread in the others,
    and the large-logits problems in every dtype but fp64."""
    shapes = _shapes(device)
    out = []
    for n, dtype in enumerate(dtypes):
        # the first dtype gets every shape; the others every second one, to bound the run time
        chosen = shapes if n == 0 else shapes[n % 2 :: 2]
        if dtype != "float64":
            chosen = chosen + LARGE_LOGITS_SHAPES
        out.extend(Problem(dtype=dtype, device=device, **s) for s in chosen)
    return out
