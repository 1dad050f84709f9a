"""The suite's JSON input files: the one reader every file the suite is given goes through, and what
kind of file a JSON object is (a baseline, a result file, thresholds, a gate JSON, a problems file).

A leaf module: the baseline store (:mod:`attnsuite.baseline`) and the verdict rule
(:mod:`attnsuite.verdict`) both read files through it, and it imports neither.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

SCHEMA_TAG = "attnsuite-baseline"  # a baseline file's "schema"
# Reading limits. A baseline of the full GPU tier is ~0.5 MB and a result file ~30 MB; anything
# larger is not ours, and reading it whole could exhaust memory.
MAX_FILE_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64  # ours nest 6 deep; deeper input would only serve to exhaust the stack later


class InputFileError(ValueError):
    """A result or baseline file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: os.PathLike | str, problem: str, kind: str = "file") -> None:
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{kind} {self.path}: {problem}")


# --------------------------------------------------------------------------- reading files safely

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))
# an InputFileError class (or one with its kind set), or another reader's own error naming its file
ErrorType = Callable[[Any, str], Exception]


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"not a regular file: it is {kind}"


def _link_note(path: Path) -> str:
    return f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""


def read_input_bytes(path: os.PathLike | str, err: ErrorType = InputFileError) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_FILE_BYTES`, or ``err`` naming the file.

    Symlinks are followed and their target checked. A FIFO, a device (``/dev/zero``), a directory
    or a socket is refused before any read, and the file is opened non-blocking and checked again,
    so a file swapped for a FIFO in between cannot hang the read either.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise err(p, "no such file" + _link_note(p)) from None
    except (OSError, ValueError) as exc:  # ELOOP, EACCES, a NUL in the name
        raise err(p, f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise err(p, _not_regular(st.st_mode) + _link_note(p))
    if st.st_size > MAX_FILE_BYTES:
        raise err(p, f"{st.st_size} bytes, more than the {MAX_FILE_BYTES // 2**20} MiB the suite reads from one "
                     "file (its largest, a full tier's result file, is about 30 MB)" + _link_note(p))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise err(p, f"cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise err(p, _not_regular(st.st_mode) + _link_note(p))
        chunks, total = [], 0
        while total <= MAX_FILE_BYTES:  # bounded even if the file grows while we read
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise err(p, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if total > MAX_FILE_BYTES:
        raise err(p, f"more than the {MAX_FILE_BYTES // 2**20} MiB the suite reads from one file (it grew while read)")
    return b"".join(chunks)


class _Duplicates(dict):
    """A JSON object in which some key appeared twice (the keys are in ``duplicates``)."""

    duplicates: list[str]


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    dups = []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
        obj[k] = v
    if dups:
        marked = _Duplicates(obj)
        marked.duplicates = dups
        return marked
    return obj


def _walk(obj: Any) -> Iterable[tuple[Any, list[Any], int]]:
    """Every object and list in ``obj`` with its path and depth (iterative: deep input is safe)."""
    stack: list[tuple[Any, list[Any]]] = [(obj, [])]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        yield node, path, len(path) + 1
        if len(path) + 1 > MAX_JSON_DEPTH:
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, (dict, list)):
                stack.append((v, path + [k]))


def _where(path: list[Any]) -> str:
    """A JSON path in words: ``cases["fa-sweep/x/fwd/p"].median_ms`` or ``benchmarks[3]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part[:80], ensure_ascii=False)}]"
    return out or "the top level"


GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip stream


def _gunzip(raw: bytes, path: os.PathLike | str, err: ErrorType, limit: int) -> bytes:
    """The content of a gzip-compressed input, never more than ``limit`` bytes of it."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            data = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise err(path, f"not a readable gzip file: {exc}") from None
    if len(data) > limit:  # a small file can expand to gigabytes: stop at the limit
        raise err(path, f"more than {limit >> 20} MiB once decompressed")
    return data


def parse_json_bytes(raw: bytes, path: os.PathLike | str, err: ErrorType = InputFileError,
                     limit: Optional[int] = None, duplicates: bool = False) -> Any:
    """Strict JSON from the bytes of a JSON file the suite reads (:func:`read_json_file`): UTF-8, no duplicate keys, at most
    :data:`MAX_JSON_DEPTH` levels. The one decoder every reader of such a file goes through.

    Gzip-compressed bytes (they start with :data:`GZIP_MAGIC`) are decompressed first, whatever
    the file is called: evidence files are kept compressed, and a compressed file named ``.json``
    had read as "not UTF-8". NaN and Infinity are parsed (and refused later by the field they sit
    in, which names the entry); every other problem is ``err`` naming the file. ``limit`` (default
    :data:`MAX_FILE_BYTES`) bounds the decompressed content of a compressed file as the file's size
    bounds a plain one (a caller with a smaller limit checks the plain file's size itself).
    ``duplicates=True`` lets a key named twice pass (the last value kept): only for telling what
    kind of file it is, whose own reader then refuses the duplicate naming the file as that kind.
    """
    if raw.startswith(GZIP_MAGIC):
        raw = _gunzip(raw, path, err, MAX_FILE_BYTES if limit is None else limit)
    if not raw.strip():
        raise err(path, "file is empty (truncated?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise err(path, f"not UTF-8 text (corrupt?): byte {exc.start}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_strict_object)
    except json.JSONDecodeError as exc:
        # the text ends inside a value (or a string that never closes): most likely cut short
        truncated = exc.pos >= len(text.rstrip()) - 1 or (exc.msg.startswith("Unterminated string")
                                                          and '"' not in text[exc.pos + 1:])
        hint = "truncated?" if truncated else "corrupt?"
        at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at" had read "at at line"
        raise err(path, f"not valid JSON ({hint}): {exc.msg}{at} line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise err(path, f"not usable JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # e.g. an integer over Python's int-str limit (4300 digits)
        raise err(path, f"not usable JSON: {str(exc)[:120]}") from None
    for node, where, depth in _walk(obj):
        if depth > MAX_JSON_DEPTH:
            raise err(path, f"not usable JSON: nested more than {MAX_JSON_DEPTH} levels deep at {_where(where[:8])}...")
        if isinstance(node, _Duplicates) and not duplicates:
            keys = ", ".join(repr(k) for k in node.duplicates[:5])
            raise err(path, f"duplicate key {keys} in {_where(where)}: a JSON object must name each field once")
    return obj


def read_json_file(path: os.PathLike | str, err: ErrorType = InputFileError, duplicates: bool = False) -> Any:
    """THE reader of every JSON file the suite is given (results, baselines, thresholds, gate JSON,
    problems files): a regular file of bounded size (:func:`read_input_bytes`), gzip-compressed or
    not, whatever its name, parsed strictly (:func:`parse_json_bytes`; ``duplicates`` there). Every
    problem is ``err`` naming the file: a gzipped thresholds file had been refused with a raw codec error."""
    return parse_json_bytes(read_input_bytes(path, err), path, err, duplicates=duplicates)


# --------------------------------------------------------------------------- file kinds

def is_baseline_json(obj: Any) -> bool:
    """Whether a JSON object claims to be a baseline (valid or not)."""
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA_TAG


THRESHOLDS_SECTIONS = frozenset({"version", "default", "device", "workload", "case", "comment"})


def looks_like_thresholds(obj: Any) -> bool:
    """Whether a JSON object is a thresholds file by its content (thresholds sections only), whatever
    its name: so a copy is checked as what it is, and one given where a baseline belongs is named."""
    return isinstance(obj, dict) and bool(obj) and set(obj) <= THRESHOLDS_SECTIONS and set(obj) != {"version"}


# what each of the suite's JSON files is, in the words messages use (json_kind's names)
FILE_KINDS = {
    "baseline": "an attnsuite baseline",
    "results": "a benchmark result file",
    "thresholds": "a thresholds file (the gate's noise floors, --attn-thresholds)",
    "gate": "a gate JSON (a run's verdicts, --attn-gate-json)",
    "problems": "a problems file (--attn-problems)",
}


def wrong_kind(obj: Any, expected: str) -> str:
    """"this is <what obj is>, not <expected>" when ``obj`` is another of the suite's JSON files
    (``expected``: a :data:`FILE_KINDS` name), else "": a message then names the file that was given,
    not only the one that was wanted."""
    kind = json_kind(obj)
    return f"this is {FILE_KINDS[kind]}, not {FILE_KINDS[expected]}" if kind and kind != expected else ""


def json_kind(obj: Any) -> str:
    """Which of the suite's JSON files ``obj`` is by its content (a :data:`FILE_KINDS` name), or ""."""
    if not isinstance(obj, dict):
        return ""
    if is_baseline_json(obj):
        return "baseline"
    if isinstance(obj.get("benchmarks"), list):
        return "results"
    if looks_like_thresholds(obj):
        return "thresholds"
    if "compared" in obj and isinstance(obj.get("cases"), list):
        return "gate"
    if "version" in obj and ("problems" in obj or "workloads" in obj):
        return "problems"
    return ""
