"""torch's process-wide state: what every case starts from, and what a variant must leave alone.

A variant that switches grad mode off, changes the default dtype, the thread count, the
deterministic or TF32 flags, or an SDPA backend switch, and does not switch it back, would make
every later case run under its settings, and the blame (and wrong baselines) would land on those
cases. So each case starts from one known state (:func:`restore`, with its RNG seeded from the case
key by :func:`seed_for`), and the state after the case is compared with it (:func:`diff`): a change
is reported against the variant that made it, then undone.

The same holds for torch's functions: a variant that replaces one process-wide (``torch.softmax =
...`` in its build) while its own run calls the original passes its own checks, and the next
variant that calls ``torch.softmax`` fails with nothing naming the culprit. So the public attributes
of the modules and classes a variant plausibly patches (:data:`PATCHABLE`) are part of the state,
compared by identity: one replaced, added or deleted is named (``torch.softmax replaced by <lambda>
(monkey.py, line 19)``) and put back. One replaced while the variant's module is imported is not
seen: the known state is taken after the variants are loaded.
"""

from __future__ import annotations

import os
import sys
import types
import zlib
from typing import Any, Callable, Optional

import torch


def _set_default_device(device: torch.device) -> None:
    """Put the default device back. CPU is torch's own default: clear the setting rather than set
    "cpu", since a set default device is a function mode that adds a cost to every torch call."""
    torch.set_default_device(None if device == torch.device("cpu") else device)


_DENORMAL = 1e-39  # below float32's smallest normal: read as zero once denormals are flushed
_FULL = torch.full  # taken at import: a variant may replace torch.full itself (the attributes below name that)


def _flushes_denormals() -> Optional[bool]:
    """Whether the CPU flushes denormal floats to zero: torch.set_flush_denormal has no getter (its
    return value says whether the CPU supports the mode), so a denormal is multiplied and read; None
    where no tensor op can run now (a dispatch mode a variant left on: named by the other checks)."""
    try:
        return float((_FULL((1,), _DENORMAL, dtype=torch.float32, device="cpu") * 1.0).item()) == 0.0
    except Exception:  # noqa: BLE001 - a reading, never the reason a case's record is lost
        return None


def _set_flush_denormal(value: Optional[bool]) -> None:
    if value is not None:
        torch.set_flush_denormal(value)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the folder was removed: nothing to go back to but the change is still named
        return ""


def _chdir(path: str) -> None:
    if path:
        os.chdir(path)


# name -> (read, write). Each entry is a piece of global state a variant can change by accident.
_ITEMS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    # a variant that leaves "meta" (or another device) as the default moves every later tensor made
    # without a device there: the next variant would fail for it
    "default device": (torch.get_default_device, _set_default_device),
    "intra-op threads": (torch.get_num_threads, torch.set_num_threads),
    "deterministic algorithms": (
        lambda: (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1]),
    ),
    "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "cuda.matmul.allow_tf32": (lambda: torch.backends.cuda.matmul.allow_tf32,
                               lambda v: setattr(torch.backends.cuda.matmul, "allow_tf32", v)),
    "cuda.matmul.allow_fp16_reduced_precision_reduction": (
        lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        lambda v: setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", v)),
    "cuda.matmul.allow_bf16_reduced_precision_reduction": (
        lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        lambda v: setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", v)),
    "cudnn.allow_tf32": (lambda: torch.backends.cudnn.allow_tf32, lambda v: setattr(torch.backends.cudnn, "allow_tf32", v)),
    "cudnn.deterministic": (lambda: torch.backends.cudnn.deterministic,
                            lambda v: setattr(torch.backends.cudnn, "deterministic", v)),
    "cudnn.benchmark": (lambda: torch.backends.cudnn.benchmark, lambda v: setattr(torch.backends.cudnn, "benchmark", v)),
    "cudnn.enabled": (lambda: torch.backends.cudnn.enabled, lambda v: setattr(torch.backends.cudnn, "enabled", v)),
    "mkldnn.enabled": (lambda: torch.backends.mkldnn.enabled, lambda v: setattr(torch.backends.mkldnn, "enabled", v)),
    "sdpa flash enabled": (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.enable_flash_sdp),
    "sdpa mem-efficient enabled": (torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.enable_mem_efficient_sdp),
    "sdpa math enabled": (torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.enable_math_sdp),
    "sdpa cuDNN enabled": (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp),
    "dynamo automatic dynamic shapes": (lambda: torch._dynamo.config.automatic_dynamic_shapes,
                                        lambda v: setattr(torch._dynamo.config, "automatic_dynamic_shapes", v)),
    # a variant's torch.set_flush_denormal(True) changed every later CPU result near zero; its
    # os.chdir sent the run's relative output paths elsewhere (a hostile-kernel trial: neither was seen)
    "flush denormal": (_flushes_denormals, _set_flush_denormal),
    "working directory": (_cwd, _chdir),
}


def compile_per_shape() -> None:
    """Make every ``torch.compile`` graph of this process depend on its call's own shapes only.

    By default dynamo compiles a function's second distinct shape as a dynamic-shape graph, which
    then serves every later shape, so which graph a case runs depends on which cases ran before it
    in the same process: a benchmark worker runs hundreds. torch's own uncompiled ``flex_attention``
    wraps itself in such a compile (``flex-eager``): after other shapes, its dynamic-shape graph reads
    a tensor on the host in every call (``aten::item``, a device synchronisation on CUDA), which a
    fresh process's graph does not (tests/test_torch_state_compile.py). On one H200 two of its
    cases read 5.4% and 2.1% slower in the deferred device-time pass, where other shapes had run
    before them, than in their confirmation, on all three runs of one machine (docs/gate.md); this
    is one explanation that fits, not yet confirmed on a GPU. Off, each new shape gets its own static graph,
    as in a fresh process (costing that shape's compile, about 0.3 s for ``flex-eager`` on this
    project's CPU machine). A compile that asks for ``dynamic=True`` is unaffected.
    Benchmark workers call this before they take the torch state every case starts from, so a
    variant that turns it back on is reported like any other change of that state.
    """
    torch._dynamo.config.automatic_dynamic_shapes = False


# The modules and classes whose public attributes (names not starting with "_") are tracked by
# identity: where a variant replaces a function for everyone (torch.softmax,
# F.scaled_dot_product_attention, Tensor.softmax, ...). Private names are left out: torch sets and
# caches those itself, lazily (torch._dynamo's internals, first use of a feature). A submodule
# bound to its package by its first import (torch.nn.attention.flex_attention, torch.onnx) is an
# import, not a change, and is left out too. A class's own attributes are tracked (torch.Tensor's
# base, torch._C.TensorBase, cannot be written); one that shadows a base's is worded "replaced".
# Missing ones (an older torch without torch.nn.attention) are skipped.
PATCHABLE: tuple[str, ...] = (
    "torch", "torch.nn.functional", "torch.Tensor", "torch.linalg", "torch.special", "torch.fft",
    "torch.nn.attention",
)
# Public attributes torch itself sets from a tracked flag: torch.set_default_dtype makes torch.Storage
# the legacy storage class of the new dtype (DoubleStorage, ...). The flag is named and put back instead.
_FOLLOWS_A_FLAG = frozenset({("torch", "Storage")})
ATTRIBUTES = "attributes"  # the State key of the tracked attributes (an Attributes)
_MISSING = object()


def _resolve(qualname: str) -> Optional[Any]:
    """The module or class of that name, importing a module if needed; None where torch has none."""
    import importlib

    try:
        return importlib.import_module(qualname)
    except ImportError:
        pass
    module, _, attr = qualname.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


_OWNERS: Optional[list[tuple[str, Any]]] = None


def _owners() -> list[tuple[str, Any]]:
    """(qualified name, module or class) per tracked namespace, resolved once per process."""
    global _OWNERS
    if _OWNERS is None:
        _OWNERS = [(q, o) for q in PATCHABLE if (o := _resolve(q)) is not None]
    return _OWNERS


def _ignored(qualname: str, name: str, before: Any, now: Any) -> bool:
    """Whether a difference in this attribute is not a variant's doing: a private name, or a submodule
    bound to its package by its first import (compared the other way round: not bound yet).
    ``before`` or ``now`` is _MISSING where the name is absent."""
    if name.startswith("_") or (qualname, name) in _FOLLOWS_A_FLAG:
        return True
    module = sys.modules.get(f"{qualname}.{name}")
    return module is not None and (now is module or now is _MISSING and before is module)


class Attributes:
    """The tracked attributes at one moment: per qualified namespace, a copy of its ``__dict__``.

    The copy holds private names too (a plain dict copy is cheaper than filtering one); they are
    left out where a difference is found (:func:`_ignored`), which is rare. Compared by identity:
    no attribute's ``==`` is ever called."""

    __slots__ = ("items",)

    def __init__(self, items: dict[str, dict[str, Any]]) -> None:
        self.items = items

    @classmethod
    def take(cls) -> "Attributes":
        return cls({qualname: dict(vars(owner)) for qualname, owner in _owners()})

    def changes(self, after: Optional["Attributes"] = None) -> list[tuple[str, Any, str, str, Any, Any]]:
        """How ``after`` (default: the live attributes) differs from this snapshot: per change,
        (qualified namespace, owner, name, what, original, now), ``what`` being "replaced", "added"
        or "deleted", and ``original`` (for an added one) or ``now`` (for a deleted one) _MISSING."""
        found = []
        for qualname, owner in _owners():
            before = self.items.get(qualname)
            if before is None:
                continue
            live = vars(owner) if after is None else after.items.get(qualname, {})
            get, gone = live.get, 0
            for name, value in before.items():
                if get(name, _MISSING) is not value:
                    now = get(name, _MISSING)
                    gone += now is _MISSING
                    if not _ignored(qualname, name, value, now):
                        found.append((qualname, owner, name, "deleted" if now is _MISSING else "replaced",
                                      value, now))
            if len(live) != len(before) - gone:  # a name was added
                for name in live.keys() - before.keys():
                    if not _ignored(qualname, name, _MISSING, live[name]):
                        found.append((qualname, owner, name, "added", _MISSING, live[name]))
        return found

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attributes) and not self.changes(other) and not other.changes(self)

    def __repr__(self) -> str:
        return f"Attributes({', '.join(f'{q}: {len(d)}' for q, d in self.items.items())})"


def _describe(value: Any) -> str:
    """What an attribute now holds, in a few words: ``by <name> (<file>, line <n>)`` for a Python
    function, ``by <name> (<type>)`` for another callable, ``with <repr>`` for anything else."""
    try:
        if not callable(value):
            return f"with {value!r:.60}"
        code = getattr(value, "__code__", None)
        name = getattr(value, "__qualname__", None)
        name = name if isinstance(name, str) else type(value).__name__
        if isinstance(code, types.CodeType):
            return f"by {name} ({os.path.basename(code.co_filename)}, line {code.co_firstlineno})"
        return f"by {name} ({type(value).__name__})"
    except Exception:  # noqa: BLE001 - a variant's object whose repr or attributes raise still gets named
        return f"with a {type(value).__name__}"


def _inherited(owner: Any, name: str) -> bool:
    """Whether a class inherits ``name`` from a base: shadowing or deleting its own copy then replaces it."""
    return isinstance(owner, type) and any(name in vars(base) for base in owner.__mro__[1:])


def _attribute_lines(before: Attributes, after: Optional[Attributes] = None) -> list[str]:
    """One line per tracked attribute that differs: ``torch.softmax replaced by <lambda> (m.py, line 3)``."""
    lines = []
    for qualname, owner, name, what, _original, now in before.changes(after):
        if what != "replaced" and _inherited(owner, name):  # torch.Tensor.softmax: TensorBase's was shadowed
            what = "replaced"
        if now is _MISSING:
            now = getattr(owner, name, _MISSING) if after is None else _MISSING
        if what == "deleted" or now is _MISSING:
            lines.append(f"{qualname}.{name} {what}")
        else:
            lines.append(f"{qualname}.{name} {what} {_describe(now)}")
    return lines


def _restore_attributes(state: Attributes) -> None:
    """Put every tracked attribute back: the original object where it was replaced or deleted, none
    where it was added."""
    for _qualname, owner, name, _what, original, _now in state.changes():
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


State = dict[str, Any]


def _flags() -> State:
    return {name: read() for name, (read, _) in _ITEMS.items()}


def snapshot() -> State:
    """The current value of every tracked piece of global state; the attributes under ATTRIBUTES."""
    state = _flags()
    state[ATTRIBUTES] = Attributes.take()
    return state


def restore(state: State) -> None:
    """Set every tracked piece of global state back to ``state`` (only what differs is written)."""
    for name, value in state.items():
        if name == ATTRIBUTES:
            _restore_attributes(value)
            continue
        read, write = _ITEMS[name]
        if read() != value:
            write(value)


def _flag_lines(before: State, after: State) -> list[str]:
    return [f"{name}: {before[name]!r} -> {after[name]!r}" for name in before
            if name != ATTRIBUTES and after.get(name) != before[name]]


def diff(before: State, after: State) -> list[str]:
    """What changed between two snapshots: one ``name: old -> new`` string per flag, then one
    ``torch.softmax replaced by ...`` / ``torch.foo added by ...`` / ``torch.bar deleted`` string per
    tracked attribute."""
    lines = _flag_lines(before, after)
    if ATTRIBUTES in before and ATTRIBUTES in after:
        lines += _attribute_lines(before[ATTRIBUTES], after[ATTRIBUTES])
    return lines


def seed_for(key: str) -> int:
    """The RNG seed of a case: stable across runs and processes, different per case key."""
    return zlib.crc32(key.encode("utf-8"))


def start_case(state: State, key: str) -> None:
    """Put the process in ``state`` and seed torch's RNGs (CPU and every GPU) for case ``key``."""
    restore(state)
    torch.manual_seed(seed_for(key))


def end_case(state: State) -> list[str]:
    """Compare the process with ``state``; undo and return what the case left changed.

    It runs after every benchmark case and correctness test, so it is kept cheap: the attributes
    are compared with the live ``__dict__``s, by identity, with no copy taken. Measured on the
    project's 2-core CPU machine (torch 2.13, 7 namespaces, ~2,000 entries of which ~1,360 public):
    end_case ~84 µs (~69 µs of it the attributes), snapshot ~43 µs (~34 µs of it the attributes'
    copy), restore ~83 µs; so about 0.1 ms more per case or test than the flags alone
    (measured with timeit; no test asserts a time)."""
    changed = _flag_lines(state, _flags())
    if ATTRIBUTES in state:
        changed += _attribute_lines(state[ATTRIBUTES])
    if changed:
        restore(state)
    return changed
