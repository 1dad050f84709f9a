"""Which backward path ``triton-flash`` takes: the one rule, in one place (no triton import).

Paths (kernels in :mod:`.flash`):
  "split"  dK/dV kernel per key block + dQ kernel per query block: no atomics, bitwise deterministic;
  "fused"  one kernel per key block for dK, dV and dQ (dQ by fp32 atomic adds): fewer matmuls,
           dQ not bitwise deterministic.

Precedence: an explicit request (``FlashOptions.bwd``, a pinned variant) over the environment
variable ATTNSUITE_TRITON_BWD over the default rule. The default rule is "split" everywhere for
now; it takes the mask code and shape so it can pick "fused" where the H200 figures of both paths
show it faster (docs/triton.md records the rule and the figures behind it).
"""

from __future__ import annotations

import os

BWD_ENV = "ATTNSUITE_TRITON_BWD"
BWD_PATHS = ("split", "fused")
DEFAULT_BWD = "split"


def check_bwd_path(path: str, source: str) -> str:
    """``path`` if it names a backward path; else ValueError naming ``source`` and the valid values."""
    if path not in BWD_PATHS:
        raise ValueError(f"triton-flash backward path {path!r} from {source} is not one of "
                         f"{', '.join(BWD_PATHS)} (leave it unset for the default rule, {DEFAULT_BWD!r})")
    return path


def default_bwd_path(mask: int, lq: int, lk: int, d: int) -> str:
    """The default rule: the deterministic "split" path for every mask code and shape (for now)."""
    return DEFAULT_BWD


def choose_bwd_path(requested: str | None, mask: int, lq: int, lk: int, d: int) -> str:
    """The backward path of one call: ``requested``, else $ATTNSUITE_TRITON_BWD, else :func:`default_bwd_path`.

    ``mask`` is the kernels' mask code (0 none, 1 causal, 2 window), ``d`` the q/k head dim. The
    variable is read at every call (an empty value counts as unset).
    """
    if requested is not None:
        return check_bwd_path(requested, "the bwd argument (FlashOptions.bwd)")
    env = os.environ.get(BWD_ENV, "").strip()
    if env:
        return check_bwd_path(env, f"the environment variable {BWD_ENV}")
    return default_bwd_path(mask, lq, lk, d)
