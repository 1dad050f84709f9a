"""Whether torch.compile can build C++ here: Inductor's CPU build passes paths to the compiler unquoted.

A checkout (or its ``.venv``) under a folder whose name holds a space puts torch's include and library
folders in the g++ command line split in two, so every compiled variant fails on the CPU with a C++
compile error whose cause ("cannot find -ltorch") lies past the part of the message a record keeps
(found by a trial in such a folder). The suite says so in the run header and in each such record.
"""

from __future__ import annotations

import os
import sysconfig
from typing import Optional


def inductor_cache_dir() -> Optional[str]:
    """The folder Inductor builds in: TORCHINDUCTOR_CACHE_DIR, else its default under the temporary
    folder (TMPDIR), asked of torch without its side effects (torch's ``cache_dir()`` creates the folder
    and sets the variable); None where this torch has no such function."""
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given:
        return given
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without it: only the variable is known
        return None
    return default_cache_dir()


def spaced_build_path() -> Optional[str]:
    """The first folder Inductor's C++ build names on its command line that holds whitespace (torch's
    install, Python's include or library folder, Inductor's cache: TORCHINDUCTOR_CACHE_DIR or its default
    under TMPDIR, where g++ had failed with "input file '/tmp/my' is the same as output file" on a trial
    with TMPDIR="/tmp/my tmp"), or None when there is none."""
    import torch

    folders = [os.path.dirname(torch.__file__), sysconfig.get_paths().get("include"),
               sysconfig.get_config_var("LIBDIR"), inductor_cache_dir()]
    for folder in folders:
        if folder and any(ch.isspace() for ch in folder):
            return folder
    return None


def advice(folder: str) -> str:
    """The words for a build folder with whitespace in it."""
    return (f"{folder!r} holds a space, and Inductor's C++ build (torch.compile on the CPU) passes it to the compiler "
            "unquoted, so the build fails: move the checkout (or its .venv, or TORCHINDUCTOR_CACHE_DIR, or TMPDIR "
            "where Inductor's cache lies) to a path without spaces")


def explain_compile_error(text: str) -> str:
    """``text`` (an exception's), led by :func:`advice` when it is a C++ compile error and a build
    folder holds whitespace; else unchanged."""
    if "CppCompileError" not in text:
        return text
    folder = spaced_build_path()
    return f"{advice(folder)}. {text}" if folder else text
