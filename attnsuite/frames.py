"""Which frames of a traceback are the code under test's own: not this suite's machinery, torch, triton
or the standard library. Errors and crashes are placed at the innermost such frame (the correctness
checks, the benchmarks' crash reports, a variants module that fails to import)."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
import traceback


def library_roots() -> tuple[str, ...]:
    """The folders of the code around a variant's own (this suite's machinery, torch, triton when
    imported, the standard library): a frame there is not the variant's own. By the packages'
    locations, not by a folder name, so a checkout that happens to be called "attnsuite" keeps its
    built-in variants' frames."""
    roots = [os.path.dirname(os.path.abspath(__file__)), sysconfig.get_paths()["stdlib"]]
    for name in ("torch", "triton"):
        where = getattr(sys.modules.get(name), "__file__", None)
        if not where:
            # found without importing it: the xdist controller that words a worker's crash never imports
            # triton, and a segfault inside Triton's interpreter had been placed at interpreter.py
            # instead of the kernel's own line
            spec = importlib.util.find_spec(name) if name not in sys.modules else None
            where = spec.origin if spec is not None else None
        if where:
            roots.append(os.path.dirname(os.path.abspath(where)))
    return tuple(os.path.join(r, "") for r in roots)


def own_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``exc``'s traceback outside :func:`library_roots` and outside the interpreter's
    frozen modules (``<frozen importlib._bootstrap>``: the import machinery), outermost first."""
    roots = library_roots()
    return [f for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith("<") and not os.path.abspath(f.filename).startswith(roots)]
