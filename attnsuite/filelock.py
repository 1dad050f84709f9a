"""An exclusive lock on a folder, for writers that read, merge and write a file in it.

Two ``attnsuite record`` runs (or two pytest sessions with ``--attn-record-baseline``) writing
into one baseline must not lose each other's cases: each holds this lock from reading the file
until its new version is in place. The lock is ``flock`` on the folder itself, so no lock file
is left in ``baselines/`` (nothing for git to see, nothing for a scan to read as a baseline).
Where a file system cannot lock a folder (some network mounts) it falls back to ``flock`` on a
hidden file ``LOCK_FILE_NAME`` in that folder, which ``.gitignore`` lists.

The lock is advisory and held by the open file, so a killed writer releases it at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented in baselines/README.md)
    fcntl = None  # type: ignore[assignment]

LOCK_FILE_NAME = ".attnsuite.lock"


def _flock(fd: int) -> bool:
    """Take the exclusive lock on ``fd``, waiting for it; False where the file system refuses."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def exclusive(directory: os.PathLike | str) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if absent) for the ``with`` block.

    Blocks until other holders (other processes, or other ``with`` blocks of this process on
    another open file) release it. Not re-entrant: do not nest two blocks on one folder.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    cloexec = getattr(os, "O_CLOEXEC", 0)
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | cloexec)
    try:
        if not _flock(fd):
            os.close(fd)
            fd = -1
            fd = os.open(d / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | cloexec, 0o666)
            if not _flock(fd):
                raise OSError(f"cannot lock {d} (neither the folder nor {LOCK_FILE_NAME} in it)")
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the lock (also on Ctrl-C while waiting)


class HeldElsewhere(Exception):
    """Another process holds the lock; the message says which (pid, start, command) when it wrote that."""


def hold_exclusive_file(path: os.PathLike | str, owner: str) -> int:
    """Take an exclusive lock on the file ``path`` (created) without waiting, write ``owner`` into it
    and return the open descriptor that holds the lock (close it, or let the process end, to release).

    Raises :class:`HeldElsewhere` with what the holder wrote when another open file holds it. Where
    there is no ``fcntl`` or the file system refuses locks, returns -1 (no lock, as :func:`exclusive`)."""
    if fcntl is None:
        return -1
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", errors="replace").strip()
        os.close(fd)
        raise HeldElsewhere(holder or "a process that did not say which") from None
    except OSError:
        os.close(fd)
        return -1
    os.ftruncate(fd, 0)
    os.write(fd, owner.encode("utf-8"))
    return fd
