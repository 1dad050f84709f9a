"""pytest-benchmark's ``--benchmark-json`` made safe on the versions that open the file while parsing.

pytest-benchmark 5.3 takes the option as a path and writes it after every case has run. Versions
before 5.3 (5.2.3 is preinstalled on the H200 image) declare ``type=argparse.FileType("wb")``:
argparse opens the file while parsing the command line, so

- a folder that does not exist yet is a usage error (argparse names the path), and
- an existing file is emptied at once.

Both happen in pytest's first parse of the command line, before any conftest (this plugin
included) is loaded: nothing here can prevent them, which is why the suite asks for
pytest-benchmark 5.3.1 or later (pyproject.toml). What this sub-plugin does, first among the
``pytest_configure`` hooks (before pytest-benchmark's own reads the option), is the rest: the
emptied file is closed and removed, and the option becomes a :class:`DeferredJsonFile` that opens
nothing until pytest-benchmark writes its JSON, then writes it atomically. So a run that is stopped,
killed or refused leaves no empty file behind, and the file is whole or absent, as with 5.3.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest

from . import baseline


class DeferredJsonFile:
    """A binary file-like that pytest-benchmark before 5.3 writes its JSON into; the file is written on close.

    ``name`` is the path as given (what ``argparse.FileType`` files carry, read by
    ``plugin_bench.benchmark_json_path``). Its folder is made when it is written.
    """

    def __init__(self, path: str) -> None:
        self.name = path
        self._buffer = io.BytesIO()
        self.closed = False

    def write(self, data: bytes | str) -> int:
        return self._buffer.write(data.encode() if isinstance(data, str) else data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._buffer.tell():
                baseline.atomic_write_text(self.name, self._buffer.getvalue().decode("utf-8"))

    def __enter__(self) -> "DeferredJsonFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __str__(self) -> str:
        return self.name

    __fspath__ = __str__



@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("benchmark_json", default=None)
    if value is not None and not isinstance(value, (str, os.PathLike)) and hasattr(value, "write"):
        config.option.benchmark_json = defer(value)


def defer(opened: Any) -> DeferredJsonFile:
    """The :class:`DeferredJsonFile` for a file argparse opened (and emptied) for writing: the open file
    is closed, and removed while it is still empty, so that only a finished run's JSON appears there."""
    path = str(opened.name)
    opened.close()
    try:
        if os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:  # not a regular file (a pipe, /dev/stdout): left as it is
        pass
    return DeferredJsonFile(path)
