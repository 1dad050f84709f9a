"""The pass rule, written once. Every numerical comparison in the suite goes through :func:`compare`.

For bf16/fp16 it is the rule of the FlashAttention-3 test suite: with ``X_ref`` the float64 oracle
and ``X_base`` plain math attention computed in the variant's own dtype on the same device,

    err      = max|X - X_ref|
    err_base = max|X_base - X_ref|
    pass  iff  err <= rtol * err_base + floor

with rtol 2 for the output and 3 for gradients, and ``floor`` two rounding steps of the dtype at
the reference's magnitude (2 * eps * max|X_ref|), so an exact base cannot make the bound zero.
For fp32 and fp64 the same formula holds with a tight relative floor instead (1e-5 and 1e-10 of
max|X_ref|): far below any real defect (a scale off by 1% moves outputs by ~1e-3 relative),
well above honest fp32 reduction-order noise. NaN or Inf never passes.

The rule holds only while the base measures rounding: a family whose base and oracle compute
different functions (an outside family's oracle with a bug the base does not share) makes err_base,
and so the bound, as large as the outputs, and every variant passed. So an fp32 or fp64 output whose
base is further from the oracle than :data:`BASE_LIMIT` (of max|X_ref|) is refused as a family
defect (:class:`BaseDisagrees`); half types round too coarsely at large logits for such a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

RTOL = {"output": 2.0, "grad": 3.0}
# Relative floor per dtype: two rounding steps (2 * machine epsilon) for half types, tight for fp32/fp64.
FLOOR = {
    "bfloat16": 2 * 2.0**-7,
    "float16": 2 * 2.0**-10,
    "float32": 1e-5,
    "float64": 1e-10,
}


# An error this many times the reference's largest magnitude (at least 1) is no rounding: the element
# was never written (memory from torch.empty, a row or block the kernel skips). Said in the message.
UNWRITTEN = 1e3
# The most an fp32/fp64 base output may differ from the oracle, as a share of max|X_ref| (half types are
# not held to one). The built-in families' CPU correctness problems reached 1.6e-6 (fp32, GQA causal
# attention at head dim 80) and 3.9e-9 (fp64, dilated attention): margins of 600x and 250x; an oracle
# with the keys left unrotated (an outside tester's RoPE family) was off by order 1.
BASE_LIMIT = {"float32": 1e-3, "float64": 1e-6}


class BaseDisagrees(ValueError):
    """A family's base output is further from its oracle than rounding allows (:data:`BASE_LIMIT`)."""


@dataclass(frozen=True)
class Comparison:
    """One comparison of a result with the oracle: numbers and verdict."""

    what: str  # "output", "dq", "grad wq", ...
    err: float  # max |X - X_ref|
    err_base: float  # max |X_base - X_ref|
    bound: float  # rtol * err_base + floor
    ref_max: float  # max |X_ref|
    finite: bool
    where: Optional[tuple] = None  # index of the largest error

    @property
    def passed(self) -> bool:
        return self.finite and self.err <= self.bound

    def describe(self) -> str:
        """One line: what, how far off, against which bound."""
        if not self.finite:
            return f"{self.what}: contains NaN or Inf (first at index {self.where})"
        ratio = self.err / self.bound if self.bound > 0 else math.inf
        times = f"{ratio:.2f}" if ratio < 1e6 else f"{ratio:.3g}"  # an unwritten element can be 1e43 times off
        unwritten = ": far beyond any rounding, an element the call never wrote?" \
            if self.err > UNWRITTEN * max(self.ref_max, 1.0) else ""
        return (
            f"{self.what}: max error {self.err:.3g} at {self.where} vs bound {self.bound:.3g} "
            f"({times}x the bound; base error {self.err_base:.3g}, |ref| max {self.ref_max:.3g}){unwritten}"
        )


def as_float64(x) -> np.ndarray:
    """A float64 NumPy array from a torch tensor or array-like."""
    if hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _compared_rows(rows: Optional[np.ndarray], *arrays: np.ndarray) -> tuple[list[np.ndarray], Optional[np.ndarray]]:
    """``arrays`` cut to the compared query rows (second-to-last axis; ``rows`` a boolean mask or
    indices, None for all), and those rows' own indices (None for all): where errors are reported."""
    if rows is None:
        return list(arrays), None
    kept = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows).reshape(-1)
    return [a[..., rows, :] for a in arrays], kept


def _in_whole(index: tuple, kept: Optional[np.ndarray]) -> tuple:
    """An index into the compared rows as an index into the whole tensor: a row index counted among the
    compared rows only had named row 4 where row 16 was wrong (12 fully masked rows before it)."""
    if kept is None or len(index) < 2:
        return index
    return index[:-2] + (int(kept[index[-2]]), index[-1])


def _first_non_finite(x: np.ndarray, kept: Optional[np.ndarray]) -> tuple:
    return _in_whole(tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0]), kept)


def _largest(diff: np.ndarray, kept: Optional[np.ndarray]) -> Optional[tuple]:
    if not diff.size:
        return None
    return _in_whole(tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)), kept)


def compare(
    what: str,
    x,
    x_ref,
    x_base,
    dtype: str,
    kind: str = "output",
    rows: Optional[np.ndarray] = None,
    magnitude: float = 0.0,
) -> Comparison:
    """Compare ``x`` (variant) with ``x_ref`` (float64 oracle), using ``x_base`` for the noise level.

    ``kind`` is "output" or "grad" (picks rtol). ``rows``, when given, is a boolean mask over the
    second-to-last axis selecting the query rows that are compared (fully masked rows are reported
    by the checks rather than compared). ``magnitude`` raises the scale of the floor above
    max|X_ref|: a gradient that is analytically zero (dq with a single key) still carries rounding
    noise at the scale of its sibling gradients, so the checks pass the largest of those.
    """
    x, x_ref, x_base = as_float64(x), as_float64(x_ref), as_float64(x_base)
    if x.shape != x_ref.shape:
        raise ValueError(f"{what}: shape {x.shape} differs from the reference's {x_ref.shape}")
    (x, x_ref, x_base), kept = _compared_rows(rows, x, x_ref, x_base)
    ref_max = float(np.max(np.abs(x_ref))) if x_ref.size else 0.0
    if not np.isfinite(x).all():
        return Comparison(what, math.inf, math.nan, math.nan, ref_max, False, _first_non_finite(x, kept))
    diff = np.abs(x - x_ref)
    err = float(diff.max()) if diff.size else 0.0
    where = _largest(diff, kept)
    base_diff = np.abs(x_base - x_ref)
    err_base = float(np.nanmax(base_diff)) if base_diff.size else 0.0
    if not math.isfinite(err_base):
        raise ValueError(f"{what}: the low-precision base computation is not finite; cannot set a bound")
    limit = BASE_LIMIT.get(dtype)
    if kind == "output" and limit is not None and ref_max > 0 and err_base > limit * ref_max:
        raise BaseDisagrees(
            f"{what}: the family's base (its plain computation in {dtype}) is {err_base:.3g} from its float64 oracle "
            f"(|ref| max {ref_max:.3g}), beyond any rounding in {dtype} (at most {limit:g} of |ref| max): the "
            "family's oracle and base compute different functions, a bug in one of them, and no variant can be "
            "judged against them (attnsuite/tolerance.py)")
    bound = RTOL[kind] * err_base + FLOOR[dtype] * max(ref_max, magnitude, 1e-30)
    return Comparison(what, err, err_base, bound, ref_max, True, where)


# --------------------------------------------------------------------------- approximate kernels
# A variant declaring an approximate accuracy class (``Variant.accuracy``, attnsuite/registry.py) is
# judged by its class's budget instead of the rule above, which never loosens: pass iff
#     max|X - X_ref| <= budget * max(max|X_ref|, magnitude)
# against the same float64 oracle (no same-dtype base: an 8-bit kernel is far from it by design).
# The budgets are relative to the reference's largest magnitude, per class and kind; each is about
# twice the largest error of the class's reference fake-quant kernel (impls/attention/approximate.py) over
# every CPU problem of the attention family, measured by scripts/measure_approximate.py
# (docs/approximate.md has the numbers, the machine and why a real bug still fails).
APPROXIMATE_BUDGET = {
    "fp8": {"output": 0.25, "grad": 0.30},
    "int8": {"output": 0.06, "grad": 0.06},
}
ACCURACY_CLASSES = ("exact", *APPROXIMATE_BUDGET)


@dataclass(frozen=True)
class ApproximateComparison(Comparison):
    """A comparison against an accuracy class's budget; ``err_base`` holds the relative budget."""

    accuracy: str = ""

    def describe(self) -> str:
        if not self.finite:
            return f"{self.what}: contains NaN or Inf (first at index {self.where})"
        ratio = self.err / self.bound if self.bound > 0 else math.inf
        return (
            f"{self.what}: max error {self.err:.3g} at {self.where} vs the {self.accuracy} budget "
            f"{self.bound:.3g} ({ratio:.2f}x; budget {self.err_base:g} x max|ref| {self.ref_max:.3g})"
        )


def compare_approximate(
    what: str,
    x,
    x_ref,
    accuracy: str,
    kind: str = "output",
    rows: Optional[np.ndarray] = None,
    magnitude: float = 0.0,
) -> Comparison:
    """Compare ``x`` with the float64 oracle ``x_ref`` against the budget of ``accuracy`` ("fp8", ...).

    ``kind``, ``rows`` and ``magnitude`` mean what they mean in :func:`compare`. The result's
    ``err_base`` is the budget (relative), so a failure reads as the error against what the class
    promises. An unknown class is an error, never a pass.
    """
    if accuracy not in APPROXIMATE_BUDGET:
        raise ValueError(f"{what}: unknown approximate accuracy class {accuracy!r}; "
                         f"known: {', '.join(APPROXIMATE_BUDGET)}")
    x, x_ref = as_float64(x), as_float64(x_ref)
    if x.shape != x_ref.shape:
        raise ValueError(f"{what}: shape {x.shape} differs from the reference's {x_ref.shape}")
    (x, x_ref), kept = _compared_rows(rows, x, x_ref)
    ref_max = float(np.max(np.abs(x_ref))) if x_ref.size else 0.0
    budget = APPROXIMATE_BUDGET[accuracy][kind]
    if not np.isfinite(x).all():
        return ApproximateComparison(what, math.inf, budget, math.nan, ref_max, False, _first_non_finite(x, kept),
                                     accuracy)
    diff = np.abs(x - x_ref)
    err = float(diff.max()) if diff.size else 0.0
    where = _largest(diff, kept)
    bound = budget * max(ref_max, magnitude, 1e-30)
    return ApproximateComparison(what, err, budget, bound, ref_max, True, where, accuracy)


@dataclass(frozen=True)
class ValueRangeComparison(Comparison):
    """An output held to the values' range: ``err`` is the largest excursion past it, ``bound`` the slack."""

    accuracy: str = ""

    def describe(self) -> str:
        if not self.finite:
            return (f"{self.what}: contains NaN or Inf (first at index {self.where}): at these logits an exp() "
                    "without the row maximum overflows")
        return (f"{self.what}: {self.err:.3g} outside the range of the values it averages at {self.where} (a "
                f"softmax average stays inside it; the {self.accuracy} class allows {self.bound:.3g}, its budget "
                f"{self.err_base:g} x max|v| {self.ref_max:.3g})")


def compare_within_values(accuracy: str, what: str, x, v, hq: int, rows: Optional[np.ndarray] = None) -> Comparison:
    """Hold ``x`` (B, Hq, Lq, Dv) to what any softmax average of the values ``v`` (B, Hkv, Lk, Dv) is,
    whatever its rounding: finite, and per column inside [min v, max v] of its key/value head, give or
    take the class's output budget times max|v|.

    For an approximate class on the large-logits problems, where its budget (measured at ordinary
    logit sizes) does not apply: without any check there, a softmax without the row maximum, which
    overflows to NaN, had passed green under ``accuracy = "fp8"``.
    """
    x, v = as_float64(x), as_float64(v)
    (x,), kept = _compared_rows(rows, x)
    budget = APPROXIMATE_BUDGET[accuracy]["output"]
    v_max = float(np.max(np.abs(v))) if v.size else 0.0
    if not np.isfinite(x).all():
        return ValueRangeComparison(what, math.inf, budget, math.nan, v_max, False, _first_non_finite(x, kept), accuracy)
    group = hq // v.shape[1]
    lo = np.repeat(v.min(axis=2, keepdims=True), group, axis=1)  # (B, Hq, 1, Dv): head h reads kv head h // group
    hi = np.repeat(v.max(axis=2, keepdims=True), group, axis=1)
    excess = np.maximum(np.maximum(lo - x, x - hi), 0.0)
    err = float(excess.max()) if excess.size else 0.0
    return ValueRangeComparison(what, err, budget, budget * max(v_max, 1e-30), v_max, True, _largest(excess, kept),
                                accuracy)


def compare_as(accuracy: str, what: str, x, x_ref, x_base, dtype: str, kind: str = "output",
               rows: Optional[np.ndarray] = None, magnitude: float = 0.0) -> Comparison:
    """The rule a variant of ``accuracy`` is judged by: :func:`compare` for "exact" (unchanged),
    :func:`compare_approximate` with the class's budget otherwise."""
    if accuracy == "exact":
        return compare(what, x, x_ref, x_base, dtype, kind, rows, magnitude)
    return compare_approximate(what, x, x_ref, accuracy, kind, rows, magnitude)
