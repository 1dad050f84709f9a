"""The workloads (docs/benchmarks.md, "Workloads") as named presets, each with a full and a quick tier.

A workload is a list of :class:`Entry` per tier: a family (every registered variant of it that
supports the problem runs) or an explicit list of variants, a :class:`Problem`, and the modes.
Full tiers carry the published sizes and run on the GPU; quick tiers keep the structure (mask
kind, GQA ratio, head-dim split, MLA ranks, dilation pattern) at sizes that run in seconds on two
CPU cores.

Compiled variants cost a compilation per problem and mode (5-20 s on a CPU, more for backward), so
an entry says in which modes compiled variants run (``compiled_modes``) and optionally which
(``compiled_only``); a compiled variant left out is reported skipped with that reason, never
dropped silently.

Problems here are stored with device "cpu" and their tier's default dtype; :func:`expand` sets the
device and dtype of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from .problem import Mask, Problem
from .record import DECODE_STEP_ARG, MODES

TIERS = ("full", "quick")
KERNEL_FAMILIES = ("attention", "dilated")
LAYER_FAMILIES = ("mha-layer", "qknorm-ln-layer", "qknorm-rms-layer", "gqa-layer", "mla-layer", "latent-layer")
ALL = ("fwd", "bwd", "fwd+bwd")
NO_COMPILED: tuple = ()


@dataclass(frozen=True)
class Entry:
    """One problem of a workload tier and what runs on it."""

    family: str
    problem: Problem
    modes: tuple[str, ...] = ALL
    variants: tuple[str, ...] = ()  # empty: every registered variant of the family
    compiled_modes: Optional[tuple[str, ...]] = None  # None: same as modes
    compiled_only: tuple[str, ...] = ()  # empty: every compiled variant (in compiled_modes)
    note: str = ""
    world_size: int = 0  # ranks of the distributed variants the entry names (0: none)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"workload entry {self.problem.id}: unknown modes {bad}; known {MODES}")

    def compiled_skip_reason(self, variant_name: str, mode: str, tier: str,
                             siblings: Sequence["Entry"] = ()) -> Optional[str]:
        """Why a compiled variant does not run here (None when it does). ``siblings`` are the other
        entries of the workload's tier: the reason says whether any of them runs the variant."""
        modes = self._compiled_modes()
        if mode not in modes:
            where = f"modes {', '.join(modes)}" if modes else "no mode"
            why = f"compiled variants run in {where} on this problem (each compilation costs seconds)"
        elif self.compiled_only and variant_name not in self.compiled_only:
            why = f"only {', '.join(self.compiled_only)} of the compiled variants run on this problem"
        else:
            return None
        runs = [e for e in (self, *siblings) for m in e.modes
                if (not e.variants or variant_name in e.variants) and e._runs_compiled(variant_name, m)]
        rest = "other entries of this workload cover the rest" if runs else \
            f"no entry of this workload's {tier} tier runs {variant_name}"
        return f"{tier} tier budget: {why}; {rest}"

    def _compiled_modes(self) -> tuple[str, ...]:
        """The modes compiled variants run in on this entry."""
        return self.modes if self.compiled_modes is None else self.compiled_modes

    def _runs_compiled(self, variant_name: str, mode: str) -> bool:
        return mode in self._compiled_modes() and (not self.compiled_only or variant_name in self.compiled_only)


@dataclass(frozen=True)
class Workload:
    """A named configuration from the systems this suite replaces."""

    name: str
    description: str
    full: tuple[Entry, ...]
    quick: tuple[Entry, ...]
    source: str = ""
    # an opt-in workload runs only when named (--attn-workload): one that needs a whole host's
    # GPUs in one worker would otherwise change what a spread run of the tier can run
    opt_in: bool = False

    def tier(self, tier: str) -> tuple[Entry, ...]:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
        return self.full if tier == "full" else self.quick


def _k(batch, l, h, d, mask=Mask("causal"), hkv=None, lk=None, dv=None, dtype="bfloat16", tag="", args=()):
    """A kernel problem."""
    return Problem(batch=batch, lq=l, lk=lk or l, hq=h, hkv=hkv or h, dqk=d, dv=dv or d, dtype=dtype,
                   mask=mask, tag=tag, args=tuple(sorted(args)))


def _layer(batch, l, d_model, h, d, mask=Mask("causal"), hkv=None, dv=None, dtype="bfloat16", args=()):
    """A layer problem (self-attention, x of shape (batch, l, d_model))."""
    return Problem(batch=batch, lq=l, lk=l, hq=h, hkv=hkv or h, dqk=d, dv=dv or d, d_model=d_model,
                   dtype=dtype, mask=mask, args=tuple(sorted(args)))


FP32 = "float32"
LAYER_MODES = ("fwd", "fwd+bwd")


def _mla_args(q_lora, kv_lora, nope, rope, v):
    return (("kv_lora", kv_lora), ("nope_dim", nope), ("q_lora", q_lora), ("rope_dim", rope), ("v_dim", v))


def _latent_args(kv_lora):
    # the plain latent layer has no query compression (q = x wq^T): these entries had carried
    # DeepSeek-V3's q_lora, which nothing read but the FLOP count, which then credited a compressed q
    return (("kv_lora", kv_lora),)


def _dilated_args(segments, dilations):
    return (("dilations", tuple(dilations)), ("segments", tuple(segments)))


FRAME = Mask("block_causal", block=65)
FRAME_Q = Mask("block_causal", block=13)
DECODE = Mask("causal", align="bottom_right")

WORKLOADS: dict[str, Workload] = {}


def _add(w: Workload) -> None:
    WORKLOADS[w.name] = w


_add(Workload(
    name="gpt2-mha",
    description="GPT-2 small attention: B 8, L 1024, d_model 768, 12 heads; MHA layer forms, eager and compiled",
    source="nanoGPT-style MHA benchmarks (nine layer forms, fwd and fwd+bwd)",
    full=(
        Entry("attention", _k(8, 1024, 12, 64)),
        Entry("mha-layer", _layer(8, 1024, 768, 12, 64), modes=LAYER_MODES),
    ),
    quick=(
        Entry("attention", _k(2, 128, 4, 32, dtype=FP32), compiled_modes=("fwd",),
              compiled_only=("flex", "compiled-explicit")),
        Entry("mha-layer", _layer(2, 128, 128, 4, 32, dtype=FP32), modes=LAYER_MODES, compiled_modes=NO_COMPILED),
    ),
))

_add(Workload(
    name="video-wm",
    description="video world model: B 32, L 1950 = 30 frames x 65 tokens, d_model 384, 6 heads, QK-norm, bf16; "
                "causal and frame-causal",
    source="video world-model attention benchmarks (uncompiled FlexAttention ran out of memory there)",
    full=(
        Entry("attention", _k(32, 1950, 6, 64, mask=FRAME)),
        Entry("attention", _k(32, 1950, 6, 64), compiled_modes=("fwd",)),
        Entry("qknorm-ln-layer", _layer(32, 1950, 384, 6, 64, mask=FRAME), modes=LAYER_MODES),
        Entry("qknorm-rms-layer", _layer(32, 1950, 384, 6, 64, mask=FRAME), modes=LAYER_MODES),
        Entry("qknorm-ln-layer", _layer(32, 1950, 384, 6, 64), modes=LAYER_MODES, compiled_modes=("fwd",)),
        Entry("qknorm-rms-layer", _layer(32, 1950, 384, 6, 64), modes=LAYER_MODES, compiled_modes=("fwd",)),
    ),
    quick=(
        # 6 frames x 13 tokens: same frame structure (L not a multiple of the 128 BlockMask tile)
        Entry("attention", _k(2, 78, 2, 32, mask=FRAME_Q, dtype=FP32), compiled_modes=NO_COMPILED),
        Entry("attention", _k(2, 78, 2, 32, dtype=FP32), compiled_modes=NO_COMPILED),
        Entry("qknorm-ln-layer", _layer(2, 78, 64, 2, 32, mask=FRAME_Q, dtype=FP32), modes=LAYER_MODES,
              compiled_modes=NO_COMPILED),
        Entry("qknorm-rms-layer", _layer(2, 78, 64, 2, 32, mask=FRAME_Q, dtype=FP32), modes=LAYER_MODES,
              compiled_modes=NO_COMPILED),
    ),
))

_add(Workload(
    name="deepseek-v3",
    description="DeepSeek-V3 attention: B 2, L 2048, hidden 7168, 128 heads; MHA at head dim 56 as published, "
                "and MLA with its real dims (q_lora 1536, kv_lora 512, nope 128, rope 64, v 128)",
    source="DeepSeek-V3 attention benchmarks",
    full=(
        Entry("attention", _k(2, 2048, 128, 56), compiled_modes=("fwd",)),
        Entry("mha-layer", _layer(2, 2048, 7168, 128, 56), modes=LAYER_MODES, compiled_modes=("fwd",)),
        Entry("mla-layer", _layer(2, 2048, 7168, 128, 192, dv=128, args=_mla_args(1536, 512, 128, 64, 128)),
              modes=LAYER_MODES),
        Entry("latent-layer", _layer(2, 2048, 7168, 128, 128, args=_latent_args(512)), modes=LAYER_MODES),
    ),
    quick=(
        Entry("attention", _k(1, 128, 8, 56, dtype=FP32), compiled_modes=NO_COMPILED),
        Entry("mha-layer", _layer(1, 128, 448, 8, 56, dtype=FP32), modes=LAYER_MODES, compiled_modes=NO_COMPILED),
        Entry("mla-layer", _layer(1, 128, 256, 4, 48, dv=32, dtype=FP32, args=_mla_args(96, 32, 32, 16, 32)),
              modes=LAYER_MODES, compiled_modes=NO_COMPILED),
        Entry("latent-layer", _layer(1, 128, 256, 4, 32, dtype=FP32, args=_latent_args(32)),
              modes=LAYER_MODES, compiled_modes=NO_COMPILED),
    ),
))

_add(Workload(
    name="llama3-70b",
    description="Llama 3 70B attention: B 1, L 4096, hidden 8192, 64 query heads, 8 KV heads (GQA 8:1)",
    full=(
        Entry("attention", _k(1, 4096, 64, 128, hkv=8), compiled_modes=("fwd",)),
        Entry("gqa-layer", _layer(1, 4096, 8192, 64, 128, hkv=8), modes=LAYER_MODES, compiled_modes=("fwd",)),
    ),
    quick=(
        Entry("attention", _k(1, 256, 8, 32, hkv=1, dtype=FP32), compiled_modes=NO_COMPILED,
              note="MQA-like extreme of the GQA ratio"),
        Entry("gqa-layer", _layer(1, 128, 256, 8, 32, hkv=1, dtype=FP32), modes=LAYER_MODES,
              compiled_modes=NO_COMPILED),
    ),
))

_add(Workload(
    name="llama3-405b",
    description="Llama 3 405B attention: B 1, L 2048, hidden 16384, 128 query heads, 8 KV heads (GQA 16:1)",
    full=(
        Entry("attention", _k(1, 2048, 128, 128, hkv=8), compiled_modes=("fwd",), compiled_only=("flex",)),
        Entry("gqa-layer", _layer(1, 2048, 16384, 128, 128, hkv=8), modes=LAYER_MODES, compiled_modes=("fwd",)),
    ),
    quick=(
        Entry("attention", _k(1, 128, 16, 32, hkv=2, dtype=FP32), compiled_modes=NO_COMPILED),
        Entry("gqa-layer", _layer(1, 128, 256, 16, 16, hkv=2, dtype=FP32), modes=LAYER_MODES,
              compiled_modes=NO_COMPILED),
    ),
))

_add(Workload(
    name="longnet",
    description="LongNet dilated attention: B 1-2, L 8K-16K, 8 heads, d 64, segments up to 4K, dilations 1/2/4",
    source="LongNet (dilated attention) benchmarks",
    full=(
        Entry("dilated", _k(2, 8192, 8, 64, mask=Mask(), args=_dilated_args((1024, 2048, 4096), (1, 2, 4)))),
        Entry("dilated", _k(1, 16384, 8, 64, args=_dilated_args((1024, 2048, 4096), (1, 2, 4)))),
        Entry("attention", _k(1, 16384, 8, 64), compiled_modes=("fwd",), compiled_only=("flex",),
              note="dense causal at the same length, the baseline dilated attention is sold against"),
    ),
    quick=(
        Entry("dilated", _k(1, 256, 4, 32, mask=Mask(), dtype=FP32, args=_dilated_args((64, 128, 256), (1, 2, 4))),
              compiled_modes=NO_COMPILED),
        Entry("dilated", _k(1, 200, 4, 32, dtype=FP32, args=_dilated_args((64, 128, 256), (1, 2, 4))),
              compiled_modes=NO_COMPILED, note="shorter than the longest segment"),
        Entry("attention", _k(1, 256, 4, 32, dtype=FP32), compiled_modes=NO_COMPILED),
    ),
))


def _fa_sweep_full():
    entries = []
    for d in (64, 128):
        for l in (1024, 4096, 16384):
            reference_point = d == 128 and l == 4096
            entries.append(Entry(
                "attention", _k(16384 // l, l, 16, d),
                compiled_modes=None if reference_point else ("fwd",),
                compiled_only=() if reference_point else ("flex",),
            ))
    return tuple(entries)


_add(Workload(
    name="fa-sweep",
    description="FlashAttention-style sweep: head dim 64/128, L 1K-16K, B*L = 16K tokens, 16 heads, causal; "
                "FLOP/s against the chip's peak",
    source="FlashAttention benchmark_flash_attention.py",
    full=_fa_sweep_full(),
    quick=(
        Entry("attention", _k(4, 128, 4, 64, dtype=FP32), compiled_modes=NO_COMPILED),
        Entry("attention", _k(1, 512, 4, 64, dtype=FP32), compiled_modes=NO_COMPILED),
    ),
))

_add(Workload(
    name="decode",
    description="KV-cache decode: B 8, 1 new query (and 4 for speculative steps) against 4K-32K cached keys, "
                "GQA 32:8, bottom-right causal",
    full=(
        Entry("attention", _k(8, 1, 32, 128, hkv=8, lk=4096, mask=DECODE), modes=("fwd",), compiled_only=("flex",)),
        Entry("attention", _k(8, 1, 32, 128, hkv=8, lk=32768, mask=DECODE), modes=("fwd",), compiled_only=("flex",)),
        Entry("attention", _k(8, 4, 32, 128, hkv=8, lk=32768, mask=DECODE), modes=("fwd",), compiled_modes=NO_COMPILED),
    ),
    quick=(
        Entry("attention", _k(2, 1, 8, 32, hkv=2, lk=512, mask=DECODE, dtype=FP32), modes=("fwd",),
              compiled_modes=NO_COMPILED),
        Entry("attention", _k(2, 4, 8, 32, hkv=2, lk=512, mask=DECODE, dtype=FP32), modes=("fwd",),
              compiled_modes=NO_COMPILED),
    ),
))


def _step(s: int) -> tuple:
    return ((DECODE_STEP_ARG, s),)


_add(Workload(
    name="layer-decode",
    description="incremental decoding of the layers that declare it (docs/decode.md): one step of 1 token (and 4 for "
                "speculative steps) after a prefill of the rest of 1K-4K tokens, with the layer's own cache",
    # MLA and latent layers at the deepseek-v3 workload's size: their absorbed variants prefill through
    # SDPA's math path (15.8 GB at B 2, L 2048 on an H200), which B 8, L 4096 would take 16 times over
    full=tuple(
        Entry(family, _layer(batch, length, d_model, h, d, hkv=hkv, dv=dv, args=args + _step(s)), modes=("decode",))
        for family, batch, length, d_model, h, d, hkv, dv, args in (
            ("mha-layer", 8, 1024, 768, 12, 64, None, None, ()),  # GPT-2 small
            ("qknorm-ln-layer", 8, 1024, 768, 12, 64, None, None, ()),
            ("qknorm-rms-layer", 8, 1024, 768, 12, 64, None, None, ()),
            ("gqa-layer", 8, 4096, 8192, 64, 128, 8, None, ()),  # Llama 3 70B
            ("mla-layer", 2, 2048, 7168, 128, 192, None, 128, _mla_args(1536, 512, 128, 64, 128)),  # DeepSeek-V3
            ("latent-layer", 2, 2048, 7168, 128, 128, None, None, _latent_args(512)),
        )
        for s in (1, 4)
    ),
    quick=tuple(
        Entry(family, _layer(2, 64, d_model, h, d, hkv=hkv, dv=dv, dtype=FP32, args=args + _step(s)), modes=("decode",))
        for family, d_model, h, d, hkv, dv, args in (
            ("mha-layer", 128, 4, 32, None, None, ()),
            ("qknorm-ln-layer", 128, 4, 32, None, None, ()),
            ("qknorm-rms-layer", 128, 4, 32, None, None, ()),
            ("gqa-layer", 256, 8, 32, 2, None, ()),
            ("mla-layer", 256, 4, 48, None, 32, _mla_args(96, 32, 32, 16, 32)),
            ("latent-layer", 256, 4, 32, None, None, _latent_args(32)),
        )
        for s in (1, 4)
    ),
    source="served models' decode loop: prefill once, then steps that read and grow a KV or latent cache",
))

def duplicate_of(name: str, tier: str, entry: Entry, also: Sequence[Entry] = ()) -> Optional[str]:
    """Why ``entry`` would repeat a problem that workload ``name``'s ``tier`` (or ``also``, entries being
    added with it) already has, or None. Two entries of one problem would be measured twice under one
    case key, and the gate would keep only the last."""
    old = WORKLOADS.get(name)
    for e in (*(old.tier(tier) if old is not None else ()), *also):
        if e.family == entry.family and e.problem == entry.problem:
            return (f"workload {name!r} ({tier} tier) already has problem {entry.problem.id} of family "
                    f"{entry.family!r}: one problem is one case key")
        if e.problem.id == entry.problem.id:  # two problems whose ids round alike: one case key for both
            return (f"workload {name!r} ({tier} tier) already has a problem with the id {entry.problem.id}, which "
                    f"differs in {', '.join(entry.problem.differs_in(e.problem))} (ids show scale, softcap and dropout to 3 significant figures): "
                    "one id is one case key; change a field so that the ids differ")
    return None


def add_entries(name: str, tier: str, entries: Sequence[Entry], description: str = "", source: str = "") -> Workload:
    """Add benchmark entries to workload ``name``'s ``tier`` (a new workload needs a description).

    For code and files outside the repository (``--attn-problems``); the entries run like the
    built-in ones. Returns the workload as it is now.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Entry):
            raise TypeError(f"workload {name!r}: expected Entry objects, got {type(entry).__name__}")
        why = duplicate_of(name, tier, entry, entries[:i])
        if why:
            raise ValueError(why)
    old = WORKLOADS.get(name)
    if old is None:
        if not description:
            raise ValueError(f"workload {name!r} is new: it needs a description")
        old = Workload(name=name, description=description, full=(), quick=(), source=source)
    changed = replace(old, **{tier: old.tier(tier) + tuple(entries)})
    WORKLOADS[name] = changed
    return changed


_CP_VARIANTS = ("ring", "ring-zigzag", "ulysses", "context-parallel-flash", "context-parallel-efficient",
                "context-parallel-cudnn")


def _cp_entries(lengths, heads, d, dtype, single, world_size=2):
    """Context-parallel entries: the distributed variants on ``world_size`` ranks beside the
    single-device variants whose best time is the scaling efficiency's reference."""
    return tuple(
        Entry("attention", _k(1, n, h, d, mask=m, dtype=dtype, tag=f"p{world_size}"), modes=("fwd", "fwd+bwd"),
              variants=_CP_VARIANTS + single, compiled_modes=NO_COMPILED, world_size=world_size)
        for n in lengths for h in heads for m in (Mask("causal"), Mask()))


_add(Workload(
    name="context-parallel",
    description="long context split over one host's GPUs (P = 2): ring, zigzag ring, Ulysses and PyTorch's "
                "context parallel against the best single-GPU SDPA backend; L 16K-128K, 16 heads, d 128",
    source="ring attention; torch.distributed.tensor.experimental.context_parallel",
    full=_cp_entries((16384, 32768, 65536, 131072), (16,), 128, "bfloat16", ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient")),
    quick=_cp_entries((256,), (4,), 32, FP32, ("sdpa", "explicit")),
    opt_in=True,
))


def get(name: str) -> Workload:
    """The workload called ``name``; an unknown name lists the known ones."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None


@dataclass(frozen=True)
class ExpandedEntry:
    """A workload entry with the run's device and dtype applied."""

    workload: str
    entry: Entry
    problem: Problem = field(compare=False)


def expand(tier: str, device: str, dtype: Optional[str] = None, names: tuple[str, ...] = ()) -> list[ExpandedEntry]:
    """Entries of ``tier`` for the chosen workloads (all when ``names`` is empty), on ``device``.

    ``dtype`` None keeps each entry's own dtype (bf16 in the full tier, fp32 in the quick tier).
    """
    for name in names:
        get(name)  # unknown names are an error, not an empty run
    out = []
    for name, w in WORKLOADS.items():
        if (names and name not in names) or (not names and w.opt_in):
            continue
        for entry in w.tier(tier):
            changes = {"device": device}
            if dtype is not None:
                changes["dtype"] = dtype
            out.append(ExpandedEntry(name, entry, entry.problem.with_(**changes)))
    return out
