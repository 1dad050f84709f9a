"""Optional attention libraries, found automatically: import each one, register its variants if it
imports, and remember why it did not otherwise.

A :class:`Library` names the module to import and a ``register`` callback that receives the
imported module and registers that library's variants (see ``impls/attention/libraries.py``). :func:`load`
tries each library once per process; a library that fails to import registers nothing and its
failure (the first line of the exception) is kept for the run header (:func:`header_line`), so a
missing or broken library never stops collection. Which exceptions count: any ``Exception`` raised
while importing (ImportError, but also the RuntimeError or OSError a library with a broken CUDA
build raises at import time).

A library can also import and still have no kernel for a device (a wheel built without CUDA
kernels for this torch: xformers 0.0.35 from the package index on an H200 raised "No operator
found ... xFormers wasn't build with CUDA support" on every call). :func:`device_reason` makes one
tiny call per variant and device and keeps why it failed: the variant's cases on that device are
skipped with that reason (one environment fault, said once per case, not hundreds of failures),
and a library that runs is judged on every case like any other variant.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections import Counter
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterable, Optional

from . import registry


@dataclass(frozen=True)
class Library:
    """One optional library: its display name, the module to import and how to register it."""

    name: str  # as shown in the header, e.g. "flash_attn"
    module: str  # the module imported, e.g. "flash_attn" or "xformers.ops"
    register: Callable[[ModuleType], list[str]]  # registers the variants; returns their names
    package: str = ""  # the pip package that provides it (docs and messages)


@dataclass(frozen=True)
class Status:
    """What happened when a library was tried: the variants it registered, or why it could not."""

    library: str
    loaded: bool
    detail: str  # the version when loaded, the exception's first line otherwise
    variants: tuple[str, ...] = ()


_STATUS: dict[str, Status] = {}


def first_line(exc: BaseException) -> str:
    """The exception's first message line, prefixed by its type unless it is an ImportError."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, ImportError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def try_import(module: str) -> tuple[Optional[ModuleType], str]:
    """Import ``module``: (the module, "") or (None, why it failed in one line). Never raises."""
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # a broken library (not only a missing one) must not stop the run
        return None, first_line(exc)


def load_library(lib: Library) -> Status:
    """Try one library: register its variants when it imports. The status is kept for the header."""
    module, why = try_import(lib.module)
    previous = _STATUS.get(lib.name)
    if previous is not None and previous.loaded:  # loaded again (a module swapped in): its variants are replaced
        registry.forget(previous.variants)
    if module is None:
        status = Status(lib.name, False, why)
    else:
        try:
            names = tuple(lib.register(module))
        except Exception as exc:  # imported, but its API is not what the wrapper expects
            status = Status(lib.name, False, f"imported but could not register: {first_line(exc)}")
        else:
            version = _installed_version(lib.package) or getattr(module, "__version__", "") or _top_version(lib.module)
            status = Status(lib.name, True, version, names)
    _STATUS[lib.name] = status
    return status


def _installed_version(package: str) -> str:
    """The version pip installed of ``package`` (its distribution's metadata), "" when there is none.

    Preferred over the module's own ``__version__``: ``flash_attn.cute`` from flash-attn-4 4.0.0b36
    says 0.0.0 (seen on an H200, 2026-12-01)."""
    if not package:
        return ""
    try:
        return importlib.metadata.version(package)
    except Exception:  # not installed as a distribution (a fake in the tests, a source tree); decoration only
        return ""


def _top_version(module: str) -> str:
    """``__version__`` of the top-level package of ``module`` (``xformers`` for ``xformers.ops``)."""
    try:
        return str(getattr(importlib.import_module(module.split(".")[0]), "__version__", ""))
    except Exception:  # the version is decoration; never fail over it
        return ""


def load(libraries: Iterable[Library]) -> list[Status]:
    """Try every library (each import is attempted again, so a test can swap a fake module in)."""
    return [load_library(lib) for lib in libraries]


def statuses() -> list[Status]:
    """Every library tried so far, in the order tried."""
    return list(_STATUS.values())


def header_line(found: Optional[Iterable[Status]] = None) -> Optional[str]:
    """One line for the run header: each library found (with its variants) and each one missing, and
    why; None when no library was tried."""
    found = list(statuses() if found is None else found)
    if not found:
        return None
    parts = []
    for s in found:
        if s.loaded:
            version = f" {s.detail}" if s.detail else ""
            parts.append(f"{s.library}{version} loaded ({', '.join(s.variants) or 'no variants'})")
        else:
            parts.append(f"{s.library} missing ({s.detail})")
    return "libraries: " + "; ".join(parts)


_DEVICE_REASONS: dict[tuple[str, str], str] = {}


def failure_summary(exc: BaseException) -> str:
    """:func:`first_line` and, when the message repeats a line (a dispatcher listing why each of its
    kernels declined, like xformers'), that recurring line: usually the actual cause."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    recurring = [line for line, n in Counter(lines).most_common() if n > 1]
    head = first_line(exc)
    return f"{head} [{recurring[0]}]" if recurring else head


def device_reason(variant: str, library: str, device: str, probe: Callable[[], object]) -> str:
    """Why ``variant`` (of ``library``) cannot run on ``device`` here, or "" when it can.

    ``probe`` makes one tiny call on the device; it runs once per process for each (variant, device)
    and its outcome is kept. Any exception counts: a library without kernels for this device raises
    on every input, so a tiny call is enough to tell.
    """
    key = (variant, device)
    if key not in _DEVICE_REASONS:
        try:
            probe()
        except Exception as exc:  # the library's own failure, whatever its type: reported, not raised
            _DEVICE_REASONS[key] = (f"{variant}: {library} imports but a tiny call on {device} failed, "
                                    f"so it has no usable kernel here: {failure_summary(exc)}")
        else:
            _DEVICE_REASONS[key] = ""
    return _DEVICE_REASONS[key]
