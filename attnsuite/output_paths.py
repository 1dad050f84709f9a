"""Output options checked before any work: each names a file that can be written, and none of them
names a file the run reads or another output writes.

One rule for every command that writes files (the pytest options, ``attnsuite compare``, ``report``
and ``ab``): a bad output option costs no benchmark time, and never replaces what the user recorded.
An output naming an input had done exactly that, silently: ``--attn-markdown`` given the shipped
baseline's path wrote the markdown diff over it and exited 0 (found by a first-time-user trial).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from .json_files import FILE_KINDS, GZIP_MAGIC, json_kind, parse_json_bytes

PathLike = Union[os.PathLike, str]

# the options that write benchmark results, and so may replace an earlier result file
RESULT_WRITERS = frozenset({"--benchmark-json"})
RESULTS = FILE_KINDS["results"]
# the options that write a gate JSON (pytest's, and `attnsuite ab`'s --json), and so may replace one: a
# markdown or a log written over a run's verdicts had lost them (`report --markdown results/gate.json`)
GATE_WRITERS = frozenset({"--attn-gate-json", "--json"})
GATE = FILE_KINDS["gate"]
REPLACED_ONLY_BY = {RESULTS: RESULT_WRITERS, GATE: GATE_WRITERS}
RECORDED = ("baseline", "results", "thresholds", "problems", "gate")  # json_kind names
_READ_LIMIT = 512 << 20  # larger than any recorded file; a file beyond it is not read to be recognised


def recorded_kind(path: PathLike) -> Optional[str]:
    """What of the user's recorded files ``path`` holds, by its content: a baseline, benchmark
    results, a thresholds file, a problems file or a gate JSON; None for anything else (a markdown
    diff, a file that does not exist or is not JSON).

    An output option naming such a file had replaced it whenever this command did not happen to read
    it: ``--attn-markdown`` given a baseline of another folder, ``attnsuite ab --json`` given the
    shipped baseline (ab had even deleted it before failing on a bad ref; found by a fresh-user trial)."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > _READ_LIMIT:
            return None
        with open(p, "rb") as fh:
            head = fh.read(4096)
            # gzip-compressed like the evidence files (every reader takes them, whatever the name):
            # unrecognised, a compressed baseline had been deleted by `ab --json` (a fresh-user trial)
            if not head.startswith(GZIP_MAGIC) and head.lstrip()[:1] != b"{":
                return None
            fh.seek(0)
            obj = parse_json_bytes(fh.read(), p)
    except (OSError, ValueError):
        return None
    kind = json_kind(obj)
    return FILE_KINDS[kind] if kind in RECORDED else None


def output_problem(path: os.PathLike | str) -> Optional[str]:
    """Why a file cannot be written at ``path`` (checked before a run, so a bad output option costs no
    benchmark time), or None. A missing folder is fine (the writers create it); the nearest folder
    that exists must take a new file, which is tried, not guessed from mode bits (root passes those)."""
    p = Path(os.path.realpath(path))
    if p.is_dir():
        return "is a folder, expected a file to write"
    folder = p.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".attnsuite-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc})"
    return None


def same_file(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    """Whether two paths name one file: the same path once links are resolved, or (both existing)
    one inode under two names (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def output_options_problem(files: Mapping[str, Optional[PathLike]], folders: Mapping[str, Optional[PathLike]] = {},
                           inputs: Union[Mapping[str, Optional[PathLike]],
                                         Iterable[tuple[str, Optional[PathLike]]]] = {}) -> Optional[str]:
    """Why one of a command's output options cannot be used, or None.

    ``files`` maps each output option to the file it names (``{"--markdown": path}``), ``folders``
    each option naming a folder to fill, ``inputs`` each thing the command reads to its file
    (``{"the baseline": path}``, or (label, path) pairs where a label repeats; the label reads as
    written in the message). Refused: an output that cannot be
    written, one that holds a recorded file (:func:`recorded_kind`; benchmark results and a gate
    JSON only by an option that writes them), one that is an input (it would be replaced by the output), and two
    outputs naming one file (one would be lost).
    """
    for option, path in files.items():
        why = output_problem(path) if path else None
        if why:
            return f"{option} {path}: {why}"
    for option, path in folders.items():
        if not path:
            continue
        p = Path(os.path.realpath(path))
        why = f"{p} exists and is not a folder" if p.exists() and not p.is_dir() else \
            output_problem(p / ".attnsuite-output-check")
        if why:
            return f"{option} {path}: {why}"
    named = [(option, path) for option, path in files.items() if path]
    read_files = list(inputs.items() if isinstance(inputs, Mapping) else inputs)
    for option, path in named:
        for label, read in read_files:
            if read and same_file(path, read):
                what = label if str(read) == str(path) else f"{label} ({read})"
                return f"{option} {path}: is {what}, which this command reads; writing there would replace it " \
                       "(name another file)"
    for option, path in named:
        kind = recorded_kind(path)
        if kind and option not in REPLACED_ONLY_BY.get(kind, ()):
            only = REPLACED_ONLY_BY.get(kind)
            which = f"only {' or '.join(sorted(only))} replaces" if only else "an output never replaces"
            return f"{option} {path}: holds {kind}, which {which} (name another file)"
    for i, (option, path) in enumerate(named):
        for other, other_path in named[i + 1:]:
            if same_file(path, other_path):
                return f"{option} {path}: {other} names the same file; one output would replace the other " \
                       "(name two files)"
    return None
