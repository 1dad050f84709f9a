"""The problem model: one attention call, every field explicit.

A :class:`Problem` says everything a variant needs to compute one attention call and everything
the oracle needs to compute the right answer: shapes, heads, dtype, device, scale, the mask as a
named structure (:class:`Mask`) and the score modifiers. Problems are frozen and hashable so that
the oracle's answer can be cached per problem, and each prints as a short id used as the pytest
parameter id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Optional

DTYPE_SHORT = {
    "float64": "fp64",
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
}
ALIGNMENTS = ("top_left", "bottom_right")
MASK_KINDS = (
    "none",  # every key is visible
    "causal",  # j <= i (+ offset for bottom-right alignment)
    "window",  # i - window <= j <= i (aligned like causal)
    "block_causal",  # floor(j / block) <= floor(i / block): frame-causal video masks
    "block_sparse",  # a seeded pattern of (query block, key block) tiles plus the diagonal tiles
    "document",  # packed sequences: j and i in the same document (optionally causal too)
    "prefix",  # prefix-LM: j < prefix or j <= i
    "random",  # a seeded arbitrary boolean mask (every row keeps >= 1 key): the mask-convention check
)
# Mask kinds whose allowed set shrinks with "later" keys: causality is checked by perturbing the future.
CAUSAL_KINDS = ("causal", "window", "block_causal", "prefix")


class ProblemError(ValueError):
    """A problem that cannot exist (impossible shape, unknown mask kind, ...)."""


@dataclass(frozen=True)
class Mask:
    """The mask as a named structure.

    ``align`` states the causal corner: ``top_left`` is SDPA's ``is_causal`` (query i sees keys
    j <= i), ``bottom_right`` is KV-cache decoding (query i sees keys j <= i + Lk - Lq, so the last
    query sees every key). It applies to every kind built on the causal diagonal.
    """

    kind: str = "none"
    align: str = "top_left"
    window: int = 0  # window: how many earlier keys a query sees besides its own position
    block: int = 0  # block_causal: frame length; block_sparse: tile size
    doc_lens: tuple[int, ...] = ()  # document: lengths of the packed documents, summing to L
    causal: bool = False  # document: also causal inside each document
    prefix: int = 0  # prefix: length of the bidirectional prefix
    seed: int = 0  # block_sparse / random: pattern seed

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ProblemError(f"unknown mask kind {self.kind!r}; known kinds: {', '.join(MASK_KINDS)}")
        if self.align not in ALIGNMENTS:
            raise ProblemError(f"mask align must be one of {ALIGNMENTS}, got {self.align!r}")
        if self.kind == "window" and self.window < 0:
            raise ProblemError(f"window mask needs window >= 0, got {self.window}")
        if self.kind in ("block_causal", "block_sparse") and self.block <= 0:
            raise ProblemError(f"{self.kind} mask needs block > 0, got {self.block}")
        if self.kind == "document" and (not self.doc_lens or min(self.doc_lens) <= 0):
            raise ProblemError(f"document mask needs positive doc_lens, got {self.doc_lens}")
        if self.kind == "prefix" and self.prefix < 0:
            raise ProblemError(f"prefix mask needs prefix >= 0, got {self.prefix}")

    # the fields each kind reads (besides ``kind``); the others are ignored by it
    FIELDS_OF_KIND = {"none": (), "causal": ("align",), "window": ("align", "window"),
                      "block_causal": ("align", "block"), "block_sparse": ("block", "seed"),
                      "document": ("doc_lens", "causal"), "prefix": ("align", "prefix"), "random": ("seed",)}

    def ignored_fields(self) -> list[str]:
        """Fields set away from their default that this kind does not read (``window`` on a causal
        mask): a problems file naming one asked for a mask it would not get."""
        used = self.FIELDS_OF_KIND.get(self.kind, ())
        return [f.name for f in dataclass_fields(self) if f.name != "kind" and f.name not in used
                and getattr(self, f.name) != f.default]

    @property
    def is_causal_like(self) -> bool:
        """True when later keys are hidden from earlier queries (the perturbation check applies)."""
        return self.kind in CAUSAL_KINDS or (self.kind == "document" and self.causal)

    @property
    def id(self) -> str:
        al = "" if self.align == "top_left" else "-br"
        k = self.kind
        if k == "none":
            return "nomask"
        if k == "causal":
            return "causal" + ("-tl" if not al else al)
        if k == "window":
            return f"win{self.window}{al}"
        if k == "block_causal":
            return f"frame{self.block}{al}"
        if k == "block_sparse":
            return f"bsparse{self.block}s{self.seed}"
        if k == "document":
            return "doc" + "x".join(map(str, self.doc_lens)) + ("c" if self.causal else "")
        if k == "prefix":
            return f"prefix{self.prefix}{al}"
        return f"random{self.seed}"


@dataclass(frozen=True)
class Problem:
    """One attention call, fully specified.

    Tensor layout is SDPA's: q is (batch, hq, lq, dqk), k is (batch, hkv, lk, dqk), v is
    (batch, hkv, lk, dv). Query head h reads key/value head ``h * hkv // hq`` (GQA; MQA is hkv=1).
    ``d_model`` is set for layer-level problems (x of shape (batch, lq, d_model) to y of the same
    shape, self-attention so lq == lk); kernel problems leave it None.
    ``scale`` None means 1/sqrt(dqk). Score modifiers apply in this order to s = scale * q.k:
    ALiBi adds -m_h * |i - j| (with the alignment offset), then softcap maps s to
    softcap * tanh(s / softcap), then the mask sets disallowed scores to -inf.
    """

    batch: int = 1
    lq: int = 17
    lk: int = 17
    hq: int = 2
    hkv: int = 2
    dqk: int = 32
    dv: int = 32
    dtype: str = "float32"
    device: str = "cpu"
    scale: Optional[float] = None
    mask: Mask = field(default_factory=Mask)
    alibi: bool = False
    softcap: Optional[float] = None
    d_model: Optional[int] = None
    dropout: float = 0.0
    seed: int = 0
    # Family-specific settings as sorted (name, value) pairs, e.g. MLA ranks or dilated segments;
    # values must be hashable (ints, floats, strings, tuples).
    args: tuple = ()
    tag: str = ""  # free text appended to the id (e.g. the workload a problem comes from)

    def __post_init__(self) -> None:
        for name in ("batch", "lq", "lk", "hq", "hkv", "dqk", "dv"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ProblemError(f"problem field {name} must be a positive int, got {value!r}")
        if self.hq % self.hkv:
            raise ProblemError(f"hq={self.hq} is not a multiple of hkv={self.hkv}")
        if self.dtype not in DTYPE_SHORT:
            raise ProblemError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_SHORT)}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ProblemError(f"unknown device {self.device!r}")
        if self.scale is not None and not (self.scale > 0 and math.isfinite(self.scale)):
            raise ProblemError(f"scale must be positive and finite, got {self.scale}")
        if self.softcap is not None and not self.softcap > 0:
            raise ProblemError(f"softcap must be positive, got {self.softcap}")
        if not 0.0 <= self.dropout < 1.0:
            raise ProblemError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model is not None:
            if self.lq != self.lk:
                raise ProblemError(f"layer problems are self-attention: lq={self.lq} != lk={self.lk}")
            if self.d_model < 1:
                raise ProblemError(f"layer problem: d_model must be positive, got {self.d_model}")
        if list(self.args) != sorted(self.args) or any(len(a) != 2 for a in self.args):
            raise ProblemError(f"problem args must be sorted (name, value) pairs, got {self.args!r}")
        if self.mask.kind == "document" and sum(self.mask.doc_lens) != self.lk:
            raise ProblemError(f"document mask lengths sum to {sum(self.mask.doc_lens)}, not lk={self.lk}")

    def arg(self, name: str, default=None):
        """A family-specific setting from ``args``."""
        return dict(self.args).get(name, default)

    @property
    def level(self) -> str:
        """'layer' when the problem carries d_model, else 'kernel'."""
        return "kernel" if self.d_model is None else "layer"

    @property
    def softmax_scale(self) -> float:
        """The scale actually applied to q.k."""
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.dqk)

    @property
    def is_low_precision(self) -> bool:
        return self.dtype in ("bfloat16", "float16")

    @property
    def align_offset(self) -> int:
        """Offset added to query positions for the causal diagonal: 0 top-left, lk - lq bottom-right."""
        return self.lk - self.lq if self.mask.align == "bottom_right" else 0

    def with_(self, **changes) -> "Problem":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def differs_in(self, other: "Problem") -> list[str]:
        """The names of the fields in which ``other`` differs from this problem (say what two problems
        with one id have apart: ids show scale, softcap and dropout to 3 significant figures)."""
        return [f.name for f in dataclass_fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @property
    def id(self) -> str:
        """Short readable id, e.g. ``b2-q97k113-h4:2-d64-causal-br-fp32-cpu``."""
        lens = f"q{self.lq}" if self.lq == self.lk else f"q{self.lq}k{self.lk}"
        heads = f"h{self.hq}" if self.hq == self.hkv else f"h{self.hq}:{self.hkv}"
        dims = f"d{self.dqk}" if self.dqk == self.dv else f"d{self.dqk}v{self.dv}"
        parts = [f"b{self.batch}", lens, heads, dims]
        if self.d_model is not None:
            parts.append(f"m{self.d_model}")
        parts.append(self.mask.id)
        if self.alibi:
            parts.append("alibi")
        if self.softcap is not None:
            parts.append(f"cap{self.softcap:g}")
        if self.scale is not None:
            parts.append(f"s{self.scale:.3g}")
        if self.dropout:
            parts.append(f"drop{self.dropout:g}")
        parts.append(DTYPE_SHORT[self.dtype])
        parts.append(self.device.replace(":", ""))
        for name, value in self.args:
            text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts.append(f"{name}{text}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        if self.tag:
            parts.append(self.tag)
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id
# The tag of a problem whose logits pass 150: exp() without the row maximum taken off overflows
# there (fp32 and bf16 past 88.7, fp16 past 11). Approximate accuracy classes skip it
# (checks.skip_reason): their budgets were measured at ordinary logit sizes, where a quantised
# score moves the softmax less.
LARGE_LOGITS = "large-logits"
# How much larger q and k are in such a problem's inputs than in any other's (inputs.draw_kernel):
# logits up to about 170 at the default scale, so a kernel meets them without declaring a custom
# scale (a pinned scale of 12 had reached only variants declaring three features and fp32). Not
# larger: at 390 and 690 (6 and 8) the fp32 backward of PyTorch's own CPU flash kernel read 1.06x to
# 3.04x the fp32 bound on dV, whose probabilities it recomputes from a log-sum-exp that large
# (rounded to 3e-5), while the plain-math base keeps them to the scores' own rounding (s20).
LARGE_LOGITS_QK = 4.0

