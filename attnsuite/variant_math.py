"""Torch building blocks that variants of several families share (never an oracle or a base).

The float64 oracles and the same-dtype bases are written independently of these (a variant
sharing its reference's code would be compared against itself); these are the variants' own
pieces, kept in the core so that a family folder imports only the core, never another family.
"""

from __future__ import annotations

import torch

from . import mask_mods
from .problem import Mask, Problem


# The devices on which SDPA's backward is not bitwise repeatable (Variant.nondeterministic_backward_devices):
# its flash, efficient and cuDNN backwards on CUDA add up dq in a varying order, and identical calls
# differed in up to 1662 elements of dq on an H200 (scripts/bwd_determinism_probe.py,
# docs/evidence/h200-2026-12-04-s36); its math backend does not. Every variant whose attention is SDPA
# with the default dispatch declares it.
SDPA_NONDETERMINISTIC_BACKWARD = frozenset({"cuda"})


def dead_rows(allowed):
    """(lq, 1) mask of the query rows that may attend to no key, or None when every row has one."""
    if allowed is None:
        return None
    live = allowed.any(dim=-1, keepdim=True)
    return None if bool(live.all()) else ~live


def softmax_rows(s, dead):
    """Softmax over the keys; a row with no allowed key (``dead``) gets zero probabilities, the
    oracle's convention, instead of the NaN that softmax of an all -inf row gives (and that NaN
    reaches every gradient through the backward)."""
    if dead is None:
        return torch.softmax(s, dim=-1)
    return torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def explicit_attention(q, k, v, scale: float, allowed, bias, softcap, dropout=None, dead=None):
    """Matmul-softmax attention; ``allowed`` boolean (lq, lk) or None, ``bias`` additive or None.

    ``dropout``, when given, maps the softmax probabilities to the ones applied to V (the hook
    the dropout variant uses; None leaves them as they are). ``dead`` is
    :func:`dead_rows` of ``allowed`` (rows with no key output zeros).
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if bias is not None:
        s = s + bias
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    probs = softmax_rows(s, dead)
    if dropout is not None:
        probs = dropout(probs)
    return torch.matmul(probs, v)


def decode_mask(lq: int, lk: int, device) -> torch.Tensor:
    """(lq, lk) causal mask, True = allowed, for ``lq`` new queries after ``lk - lq`` cached keys.

    Decoding aligns the causal corner bottom-right (new query r sits at position lk - lq + r); the
    mask comes from the suite's one mask rule (:func:`attnsuite.mask_mods.dense_bool_mask`).
    """
    return mask_mods.dense_bool_mask(Problem(lq=lq, lk=lk, mask=Mask("causal", align="bottom_right")), device)


def causal_lower_right(lq: int, lk: int):
    """SDPA's bottom-right causal bias (``torch.nn.attention.bias.causal_lower_right``), imported on
    first use: that module imports TorchDynamo (1.6 s of start-up on this project's CPU machine), and
    every process that loads the built-in variants (each benchmark worker, each test run) paid it."""
    from torch.nn.attention.bias import causal_lower_right as bias

    return bias(lq, lk)
