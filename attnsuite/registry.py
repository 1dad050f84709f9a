"""The variant registry: what implementations exist and what each can run.

A variant is an object of a :class:`KernelVariant` or :class:`LayerVariant` subclass that declares
its name, family, level, devices, dtypes and supported features, and says *why* it cannot run a
given problem (:meth:`Variant.unsupported`). Register one with :func:`register`. Variants living
outside this repository are loaded by :func:`load_external` (a module name, a ``.py`` path or a
package folder, as given to ``pytest --attn-variants=...`` or the ``ATTNSUITE_VARIANTS`` environment
variable) or by the ``attnsuite.variants`` entry-point group. The built-in ones (the repository's
``impls/`` folder, one folder per family) go through the same :func:`load_external`.

The registry dict is the only global mutable state of the suite.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional

import numpy as np
import torch

from . import frames, import_limit
from .exits import OsExitCalled, os_exit_raises
from .problem import MASK_KINDS, Problem
from .tolerance import ACCURACY_CLASSES
from .wording import exception_text

KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

ALL_DTYPES = frozenset({"float64", "float32", "bfloat16", "float16"})
DEVICES = frozenset({"cpu", "cuda"})  # device types a variant may declare (problem.device before any ":N")
# Feature names a variant may declare; each gates one kind of problem (see Variant.unsupported).
FEATURES = frozenset(
    {
        "gqa",  # hkv < hq
        "lq_ne_lk",  # query length differs from key length
        "dv_ne_dqk",  # value head dim differs from q/k head dim
        "bottom_right",  # causal corner aligned bottom-right (KV-cache decoding)
        "alibi",
        "softcap",
        "dropout",
        "custom_scale",  # an explicit scale other than 1/sqrt(d)
    }
)

_REGISTRY: dict[str, "Variant"] = {}
_FAMILIES: dict[str, "Family"] = {}
# what load_external loaded in this process, in order: (spec, module name for a file or folder)
_EXTERNAL_SOURCES: list[tuple[str, Optional[str]]] = []
# variant name -> where load_all loaded it from: BUILTIN_ORIGIN, "--attn-variants '...'",
# "ATTNSUITE_VARIANTS '...'" or "entry point 'NAME' (distribution DIST) 'module'"
_ORIGINS: dict[str, str] = {}
# installed packages whose entry point failed to import, one line each (:func:`broken_entry_points`)
_BROKEN_ENTRY_POINTS: list[str] = []
BUILTIN_ORIGIN = "built-in"
LEVELS = ("kernel", "layer")


@dataclass(frozen=True)
class Family:
    """The function a group of variants computes, with its independent references.

    ``inputs(problem)`` gives the float64 inputs (ordered dict name -> array, values representable
    in the problem's dtype) and the output gradient; ``params(problem)`` the canonical parameters of
    a layer family (every layer variant of the family loads these, so all compute one function);
    ``reference(problem)`` the float64 oracle output and gradients (keyed by input and parameter
    names); ``base(problem)`` plain math in the problem's own dtype and device, same keys, torch
    tensors: the noise level of the tolerance rule.
    """

    name: str
    level: str  # "kernel" or "layer"
    inputs: Callable[[Problem], tuple[dict[str, Any], Any]]
    reference: Callable[[Problem], tuple[Any, dict[str, Any]]]
    base: Callable[[Problem], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    params: Optional[Callable[[Problem], dict[str, Any]]] = None
    # problems(device, dtypes) -> the correctness problems every variant of the family is checked on
    problems: Optional[Callable[[str, tuple], list]] = None
    description: str = ""
    # device_inputs(problem) -> (inputs, grad_out, params) as tensors on the problem's device, drawn
    # there by the same recipe (other values): benchmarks of problems too large for the oracle use it
    device_inputs: Optional[Callable[[Problem], tuple[dict, Any, dict]]] = None
    # check(problem) raises ProblemError naming what makes a problem unfit for this family (its args,
    # shapes it cannot take): a problems file's entry is refused at load, not skipped in every test
    check: Optional[Callable[[Problem], Any]] = None
    # the problem ``args`` the family's function reads (its oracle and every variant): any other arg
    # is refused (:func:`unread_args`), as it would be carried in the case's name and read by nothing
    args: frozenset = frozenset()
    # flops(problem, mode) -> the FLOPs of one call in mode "fwd", "bwd", "fwd+bwd" or "decode", for a
    # function whose cost is not softmax attention's (or a layer's): TFLOP/s and % of peak read it
    flops: Optional[Callable[[Problem, str], float]] = None
    # rows(problem, inputs, positions) -> (float64 oracle, same-dtype base) of the forward output's
    # query positions ``positions`` (the output's axis -2), computed from the case's own input
    # tensors: the benchmarks judge an output too large for the whole oracle at those rows (as the
    # attention family's spot check does, attnsuite/spot_check.py); without it, only its finiteness
    rows: Optional[Callable[[Problem, Mapping[str, torch.Tensor], np.ndarray], tuple[Any, Any]]] = None


class UnknownVariantError(KeyError):
    """A variant name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; this reads better
        return str(self.args[0])


class Variant:
    """Base of every variant. Subclasses set the class attributes and implement ``build``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "attention"  # names a registered Family: the function computed
    level: ClassVar[str] = "kernel"
    description: ClassVar[str] = ""
    devices: ClassVar[frozenset] = frozenset({"cpu", "cuda"})
    dtypes: ClassVar[frozenset] = ALL_DTYPES
    masks: ClassVar[frozenset] = frozenset({"none", "causal"})
    features: ClassVar[frozenset] = frozenset()
    # Devices on which backward works; None means every device the variant runs on.
    backward_devices: ClassVar[Optional[frozenset]] = None
    compiled: ClassVar[bool] = False  # goes through torch.compile (first call compiles)
    fused: ClassVar[bool] = False  # must not materialise the (lq, lk) score matrix
    # Two identical calls must agree bit for bit: the forward (test_two_runs_agree) and, on every device
    # not in nondeterministic_backward_devices, the gradients (test_two_backward_runs_agree).
    deterministic: ClassVar[bool] = True
    # Devices on which two identical backward calls may give other bits: kernels that add up gradients
    # with atomics, whose order varies between runs (SDPA's flash, efficient and cuDNN backwards on CUDA
    # do, in dq). There each run's gradients are held to the oracle's tolerance instead.
    nondeterministic_backward_devices: ClassVar[frozenset] = frozenset()
    # Why a CUDA graph cannot capture this variant's step ("" when it can): its device time then goes
    # straight to kernel-sum (the profiler, after every other case), without a capture attempt that
    # fails on every case (flex-eager's attempts were 13 s of a full tier on an H200, each failing
    # on the same host-to-GPU copy). A test on a GPU keeps such a declaration true.
    no_graph_capture: ClassVar[str] = ""
    # the backend this variant means to use: free text ("triton", "flex:compiled", ...), except that
    # "sdpa:<kind>[+...]" names one of SDPA_BACKENDS, which the benchmarks compare with the kernel that ran
    backend: ClassVar[str] = ""
    # "exact" is judged by the pass rule (tolerance.compare); an approximate kernel (FP8, INT8) declares
    # its class ("fp8", "int8") and is judged by that class's budget (tolerance.APPROXIMATE_BUDGET)
    accuracy: ClassVar[str] = "exact"
    # Defects of third-party code that the suite found, by check name ("forward", "backward",
    # "causality", "repeat", "backward-repeat", "strided"): what was seen, where and when. The correctness tests keep running that
    # check and expect it to fail (a strict expected failure): the run stays green while the defect
    # lasts, and the release that fixes it turns up as an unexpected pass, the cue to delete the entry.
    known_defects: ClassVar[dict] = {}
    # problem ``args`` this variant reads beyond its family's (:attr:`Family.args`): settings of how it
    # computes, never of what (ring-sim's "ranks"); a problem may carry them (:func:`unread_args`)
    args: ClassVar[frozenset] = frozenset()

    def known_defect(self, check: str, problem: Problem) -> Optional[str]:
        """What was seen, when ``check`` on ``problem`` is a declared known defect (else None).

        By default every problem of a declared check; a variant whose defect shows only on some
        problems (one device, one mask) overrides this to say which.
        """
        return self.known_defects.get(check)

    def unsupported(self, problem: Problem, backward: bool = False) -> list[str]:
        """Reasons this variant cannot run ``problem`` (empty when it can)."""
        reasons = []
        device = problem.device.split(":")[0]
        if problem.level != self.level:
            reasons.append(f"{self.name} is a {self.level}-level variant; the problem is {problem.level}-level")
        if device not in self.devices:
            reasons.append(f"{self.name} runs on {sorted(self.devices)}, not {device}")
        if device == "cuda" and not torch.cuda.is_available():
            reasons.append("no CUDA device on this machine")
        if problem.dtype not in self.dtypes:
            reasons.append(f"{self.name} does not support dtype {problem.dtype}")
        if problem.mask.kind not in self.masks:
            reasons.append(f"{self.name} does not support mask kind {problem.mask.kind!r}")
        needs = {
            "gqa": problem.hkv != problem.hq,
            "lq_ne_lk": problem.lq != problem.lk,
            "dv_ne_dqk": problem.dv != problem.dqk,
            "bottom_right": problem.mask.align == "bottom_right"
            and problem.lq != problem.lk
            and problem.mask.kind != "none",
            "alibi": problem.alibi,
            "softcap": problem.softcap is not None,
            "dropout": problem.dropout > 0,
            "custom_scale": problem.scale is not None,
        }
        for feature, needed in needs.items():
            if needed and feature not in self.features:
                reasons.append(f"{self.name} does not support {feature}")
        if backward and device in self.devices:
            allowed = self.backward_devices if self.backward_devices is not None else self.devices
            if device not in allowed:
                reasons.append(f"{self.name} has no backward on {device}")
        reasons.extend(self.extra_reasons(problem, backward))
        return reasons

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        """Variant-specific reasons beyond the declared capabilities (head-dim limits, ...)."""
        return []

    def reset(self, built: Any) -> None:
        """Forget what earlier calls left behind; the suite calls it before every call (default: nothing).

        ``built`` is what ``build`` returned: the function of a kernel variant, the module of a layer
        variant. A module that keeps state between calls (its own KV cache, a call counter) clears it
        here, so every call computes the same function. It runs inside timed calls: keep it cheap.
        A variant whose output depends on earlier calls and that declares no reset is reported by the
        repeat check (:func:`attnsuite.checks.check_repeat`).
        """

    def __repr__(self) -> str:
        return f"<{self.level} variant {self.name} ({self.family})>"


def sets_itself(variant: Any, attribute: str) -> bool:
    """Whether the variant's own class (or a base class of its author's) sets ``attribute``, rather than
    taking :class:`Variant`'s default: a message about a default the author never wrote says so."""
    return attribute in vars(variant) or any(attribute in vars(cls) for cls in type(variant).__mro__
                                             if cls not in (Variant, KernelVariant, LayerVariant, object))


class KernelVariant(Variant):
    """q, k, v (SDPA layout) to o. ``build`` does the one-off work (mask building) and returns the call."""

    level: ClassVar[str] = "kernel"

    def build(self, problem: Problem) -> KernelFn:
        """Prepare for ``problem`` (build masks, compile wrappers) and return ``fn(q, k, v) -> o``."""
        raise NotImplementedError


class LayerVariant(Variant):
    """x (batch, l, d_model) to y, with its own projections loaded from the family's canonical weights.

    Incremental decoding (optional; docs/decode.md). A variant that sets ``decodes = True`` can run
    a causal self-attention problem token by token with its own cache:

    - ``prefill(module, x_prefix) -> (y_prefix, cache)``: the layer on the first tokens;
    - ``step(module, x_new, cache) -> (y_new, cache)``: the outputs of one or more new tokens that
      follow every cached one (causal corner bottom-right), and the cache grown by them.

    ``module`` is what ``build`` returned for the full-length problem. The cache is the variant's own
    object (a ``past_key_value`` tuple, a KV cache class, a latent cache); the suite never looks
    inside, it only hands back what the last call returned. By default both delegate to methods of
    the same names on the module (``module.prefill(x)``, ``module.step(x_new, cache)``), so either
    the variant or its module may implement them. :mod:`attnsuite.decode_check` checks that the
    concatenated outputs equal the rows of the full forward.
    """

    level: ClassVar[str] = "layer"
    decodes: ClassVar[bool] = False  # implements prefill/step (incremental decoding with a cache)

    def prefill(self, module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Run the layer on the prefix ``x`` (batch, p, d_model); return (y, cache of those p tokens)."""
        return module.prefill(x)

    def step(self, module: torch.nn.Module, x_new: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Outputs of the new tokens ``x_new`` (batch, s, d_model) after the cached ones; the grown cache."""
        return module.step(x_new, cache)

    def build(self, problem: Problem, params: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A module computing the layer, its parameters copied from the canonical ``params``."""
        raise NotImplementedError

    def canonical_grads(self, module: torch.nn.Module) -> dict[str, Optional[torch.Tensor]]:
        """The module's parameter gradients, keyed and shaped like the canonical parameters.

        The default assumes the module's parameters carry the canonical names; variants that
        fuse or reshape parameters override it.
        """
        return {name: p.grad for name, p in module.named_parameters()}


# The correctness checks by name (attnsuite/checks.py's CHECKS): the keys a variant's known_defects may use.
CHECK_NAMES = ("forward", "backward", "causality", "repeat", "backward-repeat", "strided")
# the SDPA kernels a declared backend "sdpa:<kind>" may name (runner.SDPA_OPS tells which one ran;
# "default" is SDPA's own choice, never held to one)
SDPA_BACKENDS = frozenset({"default", "flash", "efficient", "cudnn", "math", "overrideable"})


# Characters a variant name may hold besides ASCII letters and digits: see register().
NAME_EXTRA = "-_.+"


def name_faults(name: str) -> list[str]:
    """The characters of ``name`` a variant name may not hold, sorted (none: a valid name).

    The rule is the one the error states, letters, digits and - _ . +: the characters that had been
    refused one by one (',' split selections, '/' case keys, '=' --attn-inject-slowdown, brackets
    pytest ids) left others through, and a name with '@' registered and then hid its tests from the
    correctness suite's "named but nothing ran" check, which reads the variant from a test id up to
    its '@' (an outside tester's trial); ':', '*' and '?' mean something to -k and to the thresholds'
    case globs; pytest writes other letters than ASCII's escaped in its ids.
    """
    return sorted({c for c in name if not ((c.isascii() and c.isalnum()) or c in NAME_EXTRA)})


def register(variant):
    """Register a variant instance or class (usable as a class decorator). Returns its argument."""
    instance = variant() if isinstance(variant, type) else variant
    if not isinstance(instance, Variant):
        raise TypeError(f"register() takes a Variant subclass or instance, got {variant!r}")
    if not instance.name:
        raise ValueError(f"variant {type(instance).__name__} has no name")
    if not isinstance(instance.name, str):
        raise ValueError(f"variant {type(instance).__name__}: name must be a string, got {instance.name!r}")
    bad = name_faults(instance.name)
    if bad:
        held = ", ".join(map(repr, bad))
        raise ValueError(f"variant name {instance.name!r} ({type(instance).__name__}) holds {held}: "
                         "a name is one word of ASCII letters, digits and - _ . + (selection options split on ',', "
                         "case keys on '/', --attn-inject-slowdown on '=', pytest ids bracket their parameters "
                         "and end the variant at '@')")
    existing = _REGISTRY.get(instance.name)
    if existing is not None and type(existing) is not type(instance):
        where = _source_file(existing)
        if where is not None and where == _source_file(instance) \
                and type(existing).__module__ == type(instance).__module__:
            # two classes of one module claim one name
            raise ValueError(f"variant name {instance.name!r}: two classes in {where} register it, "
                             f"{type(existing).__name__} and {type(instance).__name__}: give each its own name")
        if where is not None and where == _source_file(instance):
            # one file imported twice under two module names (an installed package's entry point and
            # --attn-variants naming its folder): said as such, not as two variants with one name
            raise ValueError(
                f"variant name {instance.name!r}: {where} was imported twice, as module "
                f"{type(existing).__module__} and again as {type(instance).__module__} (named two ways, e.g. "
                "an installed package's entry point and --attn-variants with its folder or file, or one "
                "--attn-variants file that imports another file also given): name it one way (for the latter, "
                "give only the file that imports the other)")
        # both by their files: "already registered by attnsuite_external_my_kernel.MyKernel" had named
        # neither of two --attn-variants files with one name
        raise ValueError(
            f"variant name {instance.name!r} is already registered by {type(existing).__name__} in "
            f"{_defined_in(existing)}; {type(instance).__name__} in {_defined_in(instance)} registers it again: "
            "give one of them another name"
        )
    if existing is not None and not _same_state(existing, instance):
        # two configurations of one class under one name: the first would be dropped unchecked
        raise ValueError(
            f"variant name {instance.name!r} is already registered by another {type(instance).__name__} "
            f"instance in {_defined_in(existing)} with other settings; give each configuration its own name"
        )
    # A misspelt declaration (masks={"causl"}, devices={"CPU"}, dtypes={"fp32"}) would make every
    # problem "unsupported": all of the variant's tests skipped, and the run green having checked nothing.
    for attr, known in (("features", FEATURES), ("masks", frozenset(MASK_KINDS)), ("dtypes", ALL_DTYPES),
                        ("devices", DEVICES), ("backward_devices", DEVICES),
                        ("nondeterministic_backward_devices", DEVICES)):
        declared = getattr(instance, attr)
        if declared is None and attr == "backward_devices":
            continue
        if isinstance(declared, (str, bytes)) or not all(isinstance(x, str) for x in declared):
            raise ValueError(f"variant {instance.name!r}: {attr} must be a set of names, got {declared!r}")
        bad = set(declared) - known
        if bad:
            raise ValueError(f"variant {instance.name!r} declares unknown {attr} {sorted(bad)}; known: "
                             f"{', '.join(sorted(known))}")
        if not declared and attr in ("masks", "dtypes", "devices"):
            # as a misspelt name: nothing would be checked, and the run would end green
            raise ValueError(f"variant {instance.name!r} declares no {attr} (an empty set): every problem would "
                             f"skip and nothing of it be checked; name at least one of {', '.join(sorted(known))}")
    if not isinstance(instance.known_defects, dict) or set(instance.known_defects) - set(CHECK_NAMES):
        # a misspelt key ("fwd") had been ignored: the declared defect failed the run as if undeclared
        raise ValueError(f"variant {instance.name!r}: known_defects keys must be check names "
                         f"({', '.join(CHECK_NAMES)}), got {sorted(map(str, instance.known_defects))}")
    if not isinstance(instance.no_graph_capture, str):
        raise ValueError(f"variant {instance.name!r}: no_graph_capture is the reason a CUDA graph cannot capture its "
                         f"step, as text (\"\" when it can), got {instance.no_graph_capture!r}")
    if not isinstance(instance.backend, str):
        raise ValueError(f"variant {instance.name!r}: backend is a name, as text, got {instance.backend!r}")
    sdpa_kind = instance.backend.split("+")[0].removeprefix("sdpa:") if instance.backend.startswith("sdpa:") else None
    if sdpa_kind is not None and sdpa_kind not in SDPA_BACKENDS:
        # the benchmarks hold an "sdpa:..." declaration to the SDPA kernel that ran: a misspelt one
        # ("sdpa:flahs") had mismatched on every case without a word
        raise ValueError(f"variant {instance.name!r} declares backend {instance.backend!r}: unknown SDPA backend "
                         f"{sdpa_kind!r}; known: {', '.join(f'sdpa:{k}' for k in sorted(SDPA_BACKENDS))} (a suffix "
                         "after '+' says more, e.g. sdpa:default+gqa), or a name without 'sdpa:' for another kind")
    if instance.accuracy not in ACCURACY_CLASSES:
        raise ValueError(f"variant {instance.name!r} declares unknown accuracy class {instance.accuracy!r}; "
                         f"known: {', '.join(ACCURACY_CLASSES)} (attnsuite/tolerance.py)")
    _check_level(instance)
    # the family itself may be registered later in the same load (check_families, after load_all);
    # when it is already known, a level that differs from it is refused here
    if instance.family in _FAMILIES:
        _check_family(instance)
    _REGISTRY[instance.name] = instance
    return variant


def forget(names: Iterable[str]) -> None:
    """Unregister the variants ``names`` (those not registered are ignored): for a loader that
    replaces what it registered itself, such as a library loaded again around a new module."""
    for name in names:
        _REGISTRY.pop(name, None)
        _ORIGINS.pop(name, None)


def _same_state(a: "Variant", b: "Variant") -> bool:
    """Whether two instances of one class hold the same settings: registering such a twin again is
    harmless (a registrar run twice), registering another configuration under the taken name is not."""
    if a is b:
        return True
    va, vb = vars(a), vars(b)
    if va.keys() != vb.keys():
        return False
    for key, x in va.items():
        y = vb[key]
        if x is y:
            continue
        try:
            if not bool(x == y):
                return False
        except Exception:  # values without a plain equality (tensors, arrays): unequal unless identical
            return False
    return True


def _source_file(variant: "Variant") -> Optional[str]:
    """The real path of the file that defines a variant's class (None when unknown)."""
    path = getattr(sys.modules.get(type(variant).__module__), "__file__", None)
    return os.path.realpath(path) if path else None


def _defined_in(variant: "Variant") -> str:
    """Where a variant's class lives, for error messages: its module, and the module's file when known."""
    module = type(variant).__module__
    path = getattr(sys.modules.get(module), "__file__", None)
    return f"{module} ({path})" if path else module


def _check_level(variant: "Variant") -> None:
    """Refuse a level that is not the variant class's kind (a kernel variant declaring "layer" would
    be skipped on every problem of its family: a green run having checked nothing)."""
    for base, kind in ((KernelVariant, "kernel"), (LayerVariant, "layer")):
        if isinstance(variant, base) and variant.level != kind:
            raise ValueError(f"variant {variant.name!r} in {_defined_in(variant)} declares level {variant.level!r}, "
                             f"but it is a {base.__name__}: its level is {kind!r}")
    if variant.level not in LEVELS:
        raise ValueError(f"variant {variant.name!r} in {_defined_in(variant)} declares unknown level "
                         f"{variant.level!r}; known: {', '.join(LEVELS)}")
    # without its own build every test of the variant had failed with a bare NotImplementedError
    build = getattr(type(variant), "build", None)
    if isinstance(variant, (KernelVariant, LayerVariant)) and build in (KernelVariant.build, LayerVariant.build):
        how = "build(problem) -> fn(q, k, v)" if isinstance(variant, KernelVariant) else "build(problem, params) -> module"
        raise ValueError(f"variant {variant.name!r} in {_defined_in(variant)} does not implement {how}: "
                         "the method that makes the call every check and benchmark runs")


def register_family(family: Family) -> Family:
    """Register the reference semantics of a family (re-registering the same name replaces it)."""
    if family.level not in ("kernel", "layer"):
        raise ValueError(f"family {family.name!r}: level must be 'kernel' or 'layer'")
    if family.level == "layer" and family.params is None:
        raise ValueError(f"layer family {family.name!r} needs canonical params")
    _FAMILIES[family.name] = family
    return family


# read by the benchmarks' decode mode, of a layer problem (attnsuite.decode_bench)
HARNESS_ARGS = frozenset({"decode_step"})


def unread_args(family: Family, problem: Problem) -> Optional[str]:
    """Why ``problem``'s ``args`` do not fit ``family``, or None: an arg that neither the family
    (:attr:`Family.args`), nor a registered variant of it (:attr:`Variant.args`), nor the benchmarks'
    decode mode (:data:`HARNESS_ARGS`, layer families) reads. Such an arg had been accepted and named
    in every test id while nothing read it: ``rope_theta`` on a gqa-layer problem passed its checks
    with no RoPE anywhere, and the built-in latent-layer entries carried a ``q_lora`` that the layer
    does not have (and the FLOP count credited it with a compressed query)."""
    read = set(family.args) | {a for v in _REGISTRY.values() if v.family == family.name for a in v.args}
    if family.level == "layer":
        read |= HARNESS_ARGS
    unread = sorted(name for name, _ in problem.args if name not in read)
    if not unread:
        return None
    return (f"args {', '.join(map(repr, unread))}: not read by family {family.name!r} or any of its variants "
            f"(they read: {', '.join(sorted(read)) or 'no args'}); the checks would run without it, so the "
            "problem is refused (a new setting of the function needs a family that computes it)")


def family_flops(name: str) -> Optional[Callable[[Problem, str], float]]:
    """The FLOP count a registered family gives of its own (:attr:`Family.flops`), or None (none
    given, or no family of that name registered: the suite's model counts)."""
    found = _FAMILIES.get(name)
    return found.flops if found is not None else None


def family(name: str) -> Family:
    """The registered family called ``name``; a clear error when there is none."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnknownVariantError(
            f"family {name!r} is not registered (known: {', '.join(sorted(_FAMILIES)) or 'none'})"
        ) from None


def families() -> list[Family]:
    """Every registered family, in name order."""
    return [f for _, f in sorted(_FAMILIES.items())]


_EXTRA_PROBLEMS: dict[str, list[tuple[Problem, tuple[str, ...], str]]] = {}


def add_problems(family: str, problems: Iterable[Problem], dtypes: Iterable[str] = (), source: str = "") -> None:
    """Check every variant of ``family`` on these problems too (code or data outside the repository).

    Each problem runs on the run's device, in each of ``dtypes`` the run also checks (every dtype of
    the run when empty). ``source`` says where they came from (a file, a module) in error messages.
    """
    if family not in _FAMILIES:
        raise KeyError(f"add_problems: unknown family {family!r}; known: {', '.join(sorted(_FAMILIES))}")
    level = _FAMILIES[family].level
    added = []
    for problem in problems:
        if not isinstance(problem, Problem):
            raise TypeError(f"add_problems({family!r}): expected Problem objects, got {type(problem).__name__}")
        if problem.level != level:
            raise ValueError(f"add_problems({family!r}): {problem.id} is {problem.level}-level, the family {level}-level")
        added.append((problem, tuple(dtypes), source))
    _EXTRA_PROBLEMS.setdefault(family, []).extend(added)


def problems_of(family: Family, device: str, dtypes: tuple) -> list[Problem]:
    """The problems every variant of ``family`` is checked on: the family's own, then added ones."""
    out = list(family.problems(device, dtypes)) if family.problems is not None else []
    seen = {p.id for p in out}
    for problem, wanted, _ in _EXTRA_PROBLEMS.get(family.name, []):
        for dtype in dtypes:
            if wanted and dtype not in wanted:
                continue
            candidate = problem.with_(device=device, dtype=dtype)
            if candidate.id not in seen:
                seen.add(candidate.id)
                out.append(candidate)
    return out


def problems_left_out(device: str, dtypes: tuple) -> list[str]:
    """One line per added problem that adds no test to this run: it names only dtypes the run does
    not check (e.g. ``"dtypes": ["float16"]`` in a problems file, on CPU, which checks fp32, fp64 and
    bf16). Without it such a problem vanished without a word."""
    out = []
    for family_name, added in sorted(_EXTRA_PROBLEMS.items()):
        for problem, wanted, source in added:
            if wanted and not set(wanted) & set(dtypes):
                shown = problem.with_(device=device, dtype=wanted[0]).id
                out.append(f"{source or 'add_problems'}: {family_name} problem {shown} asks for "
                           f"{', '.join(wanted)}, which this run ({device}: {', '.join(dtypes)}) does not check: "
                           "it adds no test (--attn-dtype chooses the run's dtypes)")
    return out


def family_of(variant: "Variant") -> Family:
    """The family a variant belongs to; a clear error naming the variant when it is unknown."""
    try:
        return family(variant.family)
    except UnknownVariantError as exc:
        raise UnknownVariantError(f"variant {variant.name!r}: {exc}") from None


def _check_family(variant: "Variant") -> None:
    """Refuse a variant whose family is not registered, or whose level is not its family's.

    An unknown family (a typo) had passed register() and then broken the collection of every
    variant's correctness tests; a level other than the family's skipped every one of its tests.
    """
    known = _FAMILIES.get(variant.family)
    if known is None:
        close = difflib.get_close_matches(variant.family, list(_FAMILIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"variant {variant.name!r} in {_defined_in(variant)} names unknown family "
                         f"{variant.family!r}{hint}; known: {', '.join(sorted(_FAMILIES)) or 'none'}")
    if known.level != variant.level:
        raise ValueError(f"variant {variant.name!r} in {_defined_in(variant)} is {variant.level}-level, but its "
                         f"family {variant.family!r} is {known.level}-level")


def check_families() -> None:
    """Every registered variant names a registered family of its own level (ValueError otherwise).

    Called once every module is loaded (:func:`load_all`): a variant may be registered before the
    family it computes (another module, loaded later, registers that)."""
    for variant in variants():
        _check_family(variant)


def get(name: str) -> Variant:
    """The registered variant called ``name``; an unknown name names its closest matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        by_lower = {n.lower(): n for n in _REGISTRY}
        close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3)]
        # a name of the user's own that was never loaded is the likelier mistake when nothing is close
        hint = (f"; did you mean {', '.join(close)}?" if close else
                "; a variant of your own is registered by loading its file with --attn-variants PATH")
        raise UnknownVariantError(f"unknown variant {name!r}{hint} ({len(_REGISTRY)} registered)") from None


def variants(level: Optional[str] = None, family: Optional[str] = None) -> list[Variant]:
    """Registered variants, optionally of one level and family, in name order."""
    return [
        v
        for _, v in sorted(_REGISTRY.items())
        if (level is None or v.level == level) and (family is None or v.family == family)
    ]


BUILTIN_PACKAGE = "attnsuite_impls"  # the module name of the repository's impls/ folder (also in the wheel)


def builtin_folder() -> Path:
    """The folder of the built-in families: ``impls/`` of the checkout this package runs from, else
    the ``attnsuite_impls`` package a (non-editable) install put next to it."""
    root = Path(__file__).resolve().parents[1]
    # a checkout: the suite's own pyproject.toml next to the attnsuite package (never some other
    # project's impls folder in site-packages)
    if (root / "pyproject.toml").is_file() and (root / "impls" / "__init__.py").is_file():
        return root / "impls"
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the built-in families are missing: neither {root / 'impls'} nor an installed "
                          f"{BUILTIN_PACKAGE} package exists (reinstall attnsuite)")
    return Path(list(spec.submodule_search_locations)[0])


def load_builtin() -> None:
    """Load the built-in families and variants: the ``impls`` folder, through :func:`load_external`
    like any package of variants from outside the repository (the core never names a family).
    Their origin is :data:`BUILTIN_ORIGIN` however they were loaded (a script that calls this alone
    had left it None, as if they were registered by hand)."""
    _load_from(BUILTIN_ORIGIN, lambda: load_external(str(builtin_folder()), module_name=BUILTIN_PACKAGE))


def _is_path(spec: str) -> bool:
    """A spec naming a file or a folder (rather than a dotted module name)."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return spec.endswith(".py") or any(sep in spec for sep in seps)


class NothingRegistered(UserWarning):
    """A variant module file or folder that was imported and registered nothing."""


class ShadowedPackage(UserWarning):
    """A variant file that lies inside a package's folder while ``import <package>`` loads another copy
    of that package (an installed one): the variants' own imports then run the other copy's code."""


def shadowed_package(path: Path) -> Optional[str]:
    """Why the variants of the file ``path`` may run another copy of the package it lies in, or None.

    ``src/teamattn/variants.py`` doing ``from teamattn.kernels import ...`` with an installed
    ``teamattn`` imports the installed kernels, not the ones beside the file: a kernel made wrong in
    the working tree had passed every check, unseen."""
    top = None
    folder = path.parent
    while (folder / "__init__.py").is_file():
        top, folder = folder, folder.parent
    if top is None:
        return None
    module = sys.modules.get(top.name)
    where = [Path(p).resolve() for p in getattr(module, "__path__", None) or []]
    if module is None or not where or top.resolve() in where:
        return None
    return (f"variant file {path} lies in package {top.name!r} at {top}, but `import {top.name}` loaded it from "
            f"{where[0]}: the variants' imports of {top.name} run that copy's code, not the code beside the file "
            f"(an installed copy? put {folder} first on PYTHONPATH, or install the working tree with pip install -e)")


def _imported_top_names(path: Path) -> set[str]:
    """The top-level module names a Python file imports anywhere in it (absolute imports only)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):  # the import itself reports it, with the line
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def neighbour_conflicts(path: Path) -> list[str]:
    """Modules beside the variant file ``path`` that it imports but that ``import`` would not take
    from beside it: one of that name is already imported, or comes first on the import path (another
    variant file's folder, joined earlier; an installed module). Python keeps one module per name in
    a process, so two variant files in two folders that each ``import helper`` from beside them had
    both run the first folder's helper, silently."""
    folder = path.parent
    out = []
    for name in sorted(_imported_top_names(path)):
        mine = next((f for f in (folder / f"{name}.py", folder / name / "__init__.py") if f.is_file()), None)
        if mine is None:
            continue
        module = sys.modules.get(name)
        try:
            origin = getattr(module, "__file__", None) if module is not None else getattr(
                importlib.util.find_spec(name), "origin", None)
        except (ImportError, ValueError):
            continue
        if origin and Path(origin).resolve() != mine.resolve():
            how = "is already imported from" if module is not None else "would be imported from"
            out.append(f"{path.name} imports {name!r} and {mine} lies beside it, but {name!r} {how} {origin}: "
                       f"Python keeps one module per name in a process, so this file would run that one. Rename "
                       f"one of the two, or make the folder a package (__init__.py; --attn-variants FOLDER)")
    return out


class VariantLoadError(ImportError):
    """A variants module named by ``--attn-variants``, ``ATTNSUITE_VARIANTS`` or an entry point failed
    to load; the message names it, where it was named, and the error it raised."""


def load_external(spec: str, module_name: Optional[str] = None) -> None:
    """Import variants from outside the suite's core: a dotted module name, a ``.py`` file (its folder
    joins the end of the import path, so it can import a module beside it), or a package folder (a
    directory with ``__init__.py``; its modules import each other relatively).

    A file or folder is imported under ``module_name`` (default ``attnsuite_external_<name>``),
    once: loading it again does nothing. Its modules register as they import; when one raises, what
    the file or folder registered and imported is forgotten before the error propagates.
    """
    spec = spec.strip()
    if not spec:
        return
    if Path(spec).expanduser().is_file() and Path(spec).suffix != ".py":
        # "notes.txt" had been read as the module name "notes" ("No module named 'notes'"), and
        # "dir/notes.txt" failed inside importlib
        raise ImportError(f"variant file {spec!r} is not a .py file: variants load from a Python file (.py), a "
                          "package folder (with an __init__.py) or an importable module name")
    if not _is_path(spec):
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (spec == exc.name or spec.startswith(exc.name + ".")):
                raise  # the module was found and one of its own imports is missing: its error says which
            if spec == exc.name and os.path.isdir(spec):
                # "ext3", a folder here, had been told to name "a path to the package folder" it had named
                raise ModuleNotFoundError(
                    f"{exc}: {spec!r} is read as a module name; it is also a folder here: to load the folder, "
                    f"write it as a path ({os.path.join(spec, '')}), a package folder with an __init__.py",
                    name=exc.name) from None
            raise ModuleNotFoundError(
                f"{exc}: a module name is imported from this Python's path; make the package importable "
                f"(PYTHONPATH=<the folder that holds {exc.name}>, or pip install -e . in this environment), "
                "or name the file itself (a path to the .py file or package folder)", name=exc.name) from None
        _remember((spec, None))
        return
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        init = path / "__init__.py"
        if not init.is_file():
            raise FileNotFoundError(f"variant package folder {spec!r} has no __init__.py")
        search = [str(path)]
    elif path.is_file():
        init, search = path, None
        # as Python runs a script: its folder is importable, so the file can import a helper module
        # beside it ("import kernel_utils"); appended, so it never shadows an installed package
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))
        conflicts = neighbour_conflicts(path)
        if conflicts:
            raise ImportError("; ".join(conflicts))
    else:
        raise FileNotFoundError(f"variant module file {spec!r} does not exist")
    # never a generic top-level name: another project's module of the same name must not collide
    default = f"attnsuite_external_{path.name if search else path.stem}"
    mod_name = module_name or default
    loaded = sys.modules.get(mod_name)
    if loaded is not None and _loaded_from(loaded) != path:
        if module_name is not None:
            raise ImportError(f"cannot load {path} as {mod_name}: that module is already imported from "
                              f"{_loaded_from(loaded)}")
        # variants.py in two folders: the second gets a name of its own (it was once skipped unseen)
        mod_name = f"{default}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        loaded = sys.modules.get(mod_name)
    if loaded is not None:
        return
    module_spec = importlib.util.spec_from_file_location(mod_name, init, submodule_search_locations=search)
    module = importlib.util.module_from_spec(module_spec)
    variants_before, families_before = dict(_REGISTRY), dict(_FAMILIES)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: nothing half-loaded stays
        # forget the package, whatever of it did import and what it registered: a fixed retry starts clean
        for name in [n for n in sys.modules if n == mod_name or n.startswith(mod_name + ".")]:
            del sys.modules[name]
        _REGISTRY.clear()
        _REGISTRY.update(variants_before)
        _FAMILIES.clear()
        _FAMILIES.update(families_before)
        if isinstance(exc, (SystemExit, OsExitCalled)):
            raise _exit_at_import(exc) from None
        raise
    shadowed = shadowed_package(path) if not search else None
    if shadowed:
        warnings.warn(f"attnsuite: {shadowed}", ShadowedPackage, stacklevel=2)
    if _REGISTRY == variants_before and _FAMILIES == families_before:
        # a forgotten @register would otherwise show only as "unknown variant" or an empty selection
        warnings.warn(f"attnsuite: variant module {spec!r} registered no variant and no family "
                      "(is the register() call or @register decorator missing?)", NothingRegistered, stacklevel=2)
    _remember((str(path), mod_name))


def _loaded_from(module: ModuleType) -> Optional[Path]:
    """The folder of a package module, or the file of a plain one, resolved (None when it has neither)."""
    where = list(getattr(module, "__path__", []) or []) or [getattr(module, "__file__", None)]
    return Path(where[0]).resolve() if where[0] else None


def _remember(source: tuple[str, Optional[str]]) -> None:
    if source not in _EXTERNAL_SOURCES:
        _EXTERNAL_SOURCES.append(source)


def external_sources() -> list[tuple[str, Optional[str]]]:
    """What :func:`load_external` loaded in this process and is still imported, in order, as (spec,
    module name); a module a test took out of ``sys.modules`` again is left out."""
    return [(spec, name) for spec, name in _EXTERNAL_SOURCES if (name or spec) in sys.modules]


def load_like(sources: Iterable[tuple[str, Optional[str]]]) -> list[str]:
    """In a new process (a spawned rank), load what a parent had: the built-in variants, entry
    points and ``sources`` (its :func:`external_sources`), each file under the parent's module
    name, so that variant objects the parent pickles unpickle here. A source that fails to load
    is left out (a task that needs it then fails to unpickle, naming the module); the errors are
    returned, one line each."""
    load_builtin()
    load_entry_points()
    errors = []
    for spec, module_name in sources:
        try:
            load_external(spec, module_name)
        except Exception as exc:  # noqa: BLE001 - one bad source must not keep the rank from starting
            errors.append(f"{spec}: {exception_text(exc)}")
    return errors


def _entry_point_origin(ep: Any) -> str:
    """How an entry point is named in messages: its name, its distribution and the module it names."""
    dist = getattr(ep, "dist", None)
    dist_name = getattr(dist, "name", None) or "unknown"
    return f"entry point {ep.name!r} (distribution {dist_name}) {ep.value!r}"


NO_ENTRY_POINTS = "ATTNSUITE_NO_ENTRY_POINTS"  # set to 1: installed packages' variants are not loaded


def load_entry_points() -> None:
    """Import every module named in the ``attnsuite.variants`` entry-point group (none when the
    environment variable ``ATTNSUITE_NO_ENTRY_POINTS`` is 1).

    One that fails to import is left out, with whatever it registered before it failed, and is
    remembered (:func:`broken_entry_points`: the entry point, its distribution and its module, which
    an installed package's import error alone does not name): the run goes on with every other
    variant, and the pytest plugin fails the session at its end naming it. A broken package had
    stopped every run, the suite's own tests included, with no way around it but uninstalling."""
    if os.environ.get(NO_ENTRY_POINTS, "").strip() in ("1", "true", "yes", "on"):
        return
    for ep in entry_points(group="attnsuite.variants"):
        where = _entry_point_origin(ep)
        before = set(_REGISTRY)
        try:
            _load_from(where, ep.load)
        except Exception as exc:
            forget(set(_REGISTRY) - before)  # half a package would read as all of it
            line = (f"{where}: {exception_text(exc)} (fix or uninstall that package, or set "
                    f"{NO_ENTRY_POINTS}=1 to run without installed packages' variants)")
            if line not in _BROKEN_ENTRY_POINTS:
                _BROKEN_ENTRY_POINTS.append(line)


def broken_entry_points() -> list[str]:
    """The installed packages whose ``attnsuite.variants`` entry point failed to import in this
    process, one line each naming the entry point, its distribution, its module and the error."""
    return list(_BROKEN_ENTRY_POINTS)


def entry_point_modules() -> list[str]:
    """The modules the ``attnsuite.variants`` entry points name (what :func:`load_entry_points` imports)."""
    return [ep.module for ep in entry_points(group="attnsuite.variants")]


def _exit_at_import(exc: SystemExit | OsExitCalled) -> ImportError:
    """An ImportError for a module that called sys.exit or os._exit while imported (left alone,
    pytest would report sys.exit as an internal error blaming its own command line, and os._exit
    ended the run at once: with status 0, silently, as if it had passed)."""
    call, status = (("os._exit", exc.status) if isinstance(exc, OsExitCalled) else ("sys.exit", exc.code))
    return ImportError(f"the module called {call}({status!r}) while being imported: does it parse the "
                       "command line or run a script at import? Put that under if __name__ == '__main__':")


def _load_from(origin: str, load: Callable[[], Any]) -> None:
    """Run ``load`` (code from outside within the import time limit: the built-ins, the suite's own, start
    no watcher in every process) and remember ``origin`` for each variant it registered."""
    before = set(_REGISTRY)
    try:
        with os_exit_raises(), import_limit.crash_traced(), \
                import_limit.limited(origin, None if origin == BUILTIN_ORIGIN else IMPORT_LIMIT_S):
            load()
    except (SystemExit, OsExitCalled) as exc:
        raise _exit_at_import(exc) from None
    for name in set(_REGISTRY) - before:
        _ORIGINS[name] = origin


def origin(name: str) -> Optional[str]:
    """Where :func:`load_all` loaded variant ``name`` from (:data:`BUILTIN_ORIGIN`, an entry point,
    ``--attn-variants`` or ``ATTNSUITE_VARIANTS`` and the module); None for one registered otherwise."""
    return _ORIGINS.get(name)


def external_variants() -> list[Variant]:
    """The registered variants loaded from outside the repository: by entry point, ``--attn-variants``
    or ``ATTNSUITE_VARIANTS`` (code the suite has never seen), in name order."""
    return [v for v in variants() if origin(v.name) not in (None, BUILTIN_ORIGIN)]


def _named(external: Iterable[str]) -> list[tuple[str, str]]:
    """The external sources a run names, with where each was named: ``ATTNSUITE_VARIANTS`` first, then
    ``external`` (``--attn-variants``)."""
    named = [("ATTNSUITE_VARIANTS", spec) for spec in os.environ.get("ATTNSUITE_VARIANTS", "").split(",")]
    return [(where, spec) for where, spec in named + [("--attn-variants", spec) for spec in external]
            if spec.strip()]


def named_sources(external: Iterable[str] = ()) -> tuple[str, ...]:
    """The external sources :func:`load_all` would load, each named so that two runs naming the same
    code agree: a path resolved to an absolute one (``../k.py`` from here is ``/x/k.py`` from
    anywhere), a module name as given. A run's journal compares these, so a resume cannot pick up
    other code named through the variable, or refuse the same files named another way."""
    out: list[str] = []
    for _, spec in _named(external):
        spec = spec.strip()
        name = str(Path(spec).expanduser().resolve()) if _is_path(spec) else spec
        if name not in out:
            out.append(name)
    return tuple(out)


# How long one variants module (an entry point, ATTNSUITE_VARIANTS, --attn-variants) may take to import
# (import_limit); the pytest plugin sets it from --attn-import-timeout.
IMPORT_LIMIT_S: Optional[float] = import_limit.DEFAULT_S


def _raised_in_loaded_code(exc: BaseException) -> str:
    """" (at FILE line N: CODE)" for the innermost frame of ``exc`` in the loaded code itself
    (:func:`frames.own_frames`), or "": a package folder whose submodule imported a missing module had
    been refused naming the folder and the missing module only."""
    own = frames.own_frames(exc)
    if not own:
        return ""
    last = own[-1]
    code = f": {last.line.strip()}" if last.line else ""
    return f" (at {last.filename} line {last.lineno}{code})"


def load_all(external: Iterable[str] = ()) -> None:
    """Built-in variants, entry points, the ``ATTNSUITE_VARIANTS`` variable, then ``external``; then
    every variant's family is checked (:func:`check_families`). Each module from outside is imported
    within :data:`IMPORT_LIMIT_S`."""
    load_builtin()
    load_entry_points()
    for where, spec in _named(external):
        source = f"{where} {spec.strip()!r}"
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                _load_from(source, lambda: load_external(spec))
        except Exception as exc:  # which of several modules failed, and where it was named
            raise VariantLoadError(f"{source}: {exception_text(exc)}{_raised_in_loaded_code(exc)}") from exc
        for w in seen:
            if issubclass(w.category, NothingRegistered):
                # named on purpose and registering nothing is a mistake (a forgotten @register): the
                # run had gone on with the other variants and passed, the warning at its top
                raise VariantLoadError(f"{source}: registered no variant and no family (is the register() "
                                       "call or @register decorator missing?)")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    check_families()
