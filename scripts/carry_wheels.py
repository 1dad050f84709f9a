"""Carry a set of files larger than one device call allows, in several calls.

The device tool carries at most 64 MiB per call, the working tree (about 16 MB) included, and
FlashAttention 4's wheels for CUDA 13 come to 106 MiB (one of them, nvidia-cutlass-dsl-libs-cu13,
is 88 MiB alone). The machine keeps its disk between calls while it stays warm, so the set goes
over in parts:

    python scripts/carry_wheels.py pack .carry/fa4 .carry/fa4-parts --max-mib 40
        # here: .carry/fa4-parts/part-1, part-2, ... each at most 40 MiB, files split into chunks
    # device call k (carry [".carry/fa4-parts/part-k"]):
    python3 scripts/carry_wheels.py stash .carry/fa4-parts/part-k /tmp/attnsuite-carry
    # the last call, after the last stash:
    python3 scripts/carry_wheels.py unpack /tmp/attnsuite-carry /tmp/attnsuite-wheels

Every part holds the same manifest (each file's size, SHA-256 and chunks). ``unpack`` joins the
chunks, checks each file's size and digest, and writes it atomically; a missing or damaged chunk
is an error that names the file and the part it was in, and nothing half-joined is left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"
MiB = 1 << 20


class CarryError(Exception):
    """A part, chunk or file that is missing, damaged or of the wrong set."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def plan(sizes: dict[str, int], max_bytes: int) -> list[list[tuple[str, int, int]]]:
    """Parts as lists of (file, offset, length) chunks, each part at most ``max_bytes``.

    Files go in name order; a file that does not fit in what is left of the current part is split,
    its first chunk filling that part. Deterministic: the same sizes give the same parts.
    """
    if max_bytes <= 0:
        raise ValueError(f"max part size must be positive, got {max_bytes}")
    parts: list[list[tuple[str, int, int]]] = [[]]
    room = max_bytes
    for name in sorted(sizes):
        offset, left = 0, sizes[name]
        while True:
            if room == 0:
                parts.append([])
                room = max_bytes
            take = min(left, room)
            parts[-1].append((name, offset, take))
            offset, left, room = offset + take, left - take, room - take
            if left == 0:
                break
    return [p for p in parts if p]


def pack(src: Path, dest: Path, max_mib: float) -> list[Path]:
    """Split the files of ``src`` into ``dest/part-1..N``; returns the part folders."""
    files = {p.name: p for p in sorted(src.iterdir()) if p.is_file()}
    if not files:
        raise CarryError(f"{src}: no files to pack")
    parts = plan({n: p.stat().st_size for n, p in files.items()}, int(max_mib * MiB))
    manifest = {"files": {n: {"size": p.stat().st_size, "sha256": _sha256(p)} for n, p in files.items()},
                "parts": len(parts), "chunks": []}
    for index, chunks in enumerate(parts, start=1):
        for name, offset, length in chunks:
            manifest["chunks"].append({"file": name, "part": index, "offset": offset, "length": length,
                                       "chunk": f"{name}.{offset}"})
    if dest.exists():
        shutil.rmtree(dest)
    out = []
    for index, chunks in enumerate(parts, start=1):
        folder = dest / f"part-{index}"
        folder.mkdir(parents=True)
        for name, offset, length in chunks:
            with open(files[name], "rb") as fh:
                fh.seek(offset)
                (folder / f"{name}.{offset}").write_bytes(fh.read(length))
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        out.append(folder)
    return out


def stash(part: Path, into: Path) -> None:
    """Copy one carried part's chunks and manifest into the machine's collecting folder."""
    if not (part / MANIFEST).is_file():
        raise CarryError(f"{part}: not a part of a carried set (no {MANIFEST})")
    into.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((part / MANIFEST).read_text())
    existing = into / MANIFEST
    if existing.is_file() and json.loads(existing.read_text()) != manifest:
        raise CarryError(f"{part} belongs to another set than the parts already in {into}: empty {into} first")
    for item in part.iterdir():
        shutil.copyfile(item, into / item.name)


def unpack(collected: Path, dest: Path) -> list[Path]:
    """Join every file of the set collected in ``collected`` into ``dest``; returns the files written."""
    if not (collected / MANIFEST).is_file():
        raise CarryError(f"{collected}: no {MANIFEST}: no part was stashed there")
    manifest = json.loads((collected / MANIFEST).read_text())
    missing = sorted({c["part"] for c in manifest["chunks"] if not (collected / c["chunk"]).is_file()})
    if missing:
        raise CarryError(f"{collected}: part(s) {missing} of {manifest['parts']} not stashed yet")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, info in sorted(manifest["files"].items()):
        chunks = sorted((c for c in manifest["chunks"] if c["file"] == name), key=lambda c: c["offset"])
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for c in chunks:
                    data = (collected / c["chunk"]).read_bytes()
                    if len(data) != c["length"]:
                        raise CarryError(f"{name}: chunk at offset {c['offset']} (part {c['part']}) has "
                                         f"{len(data)} bytes, the manifest says {c['length']}")
                    out.write(data)
            if os.path.getsize(tmp) != info["size"] or _sha256(Path(tmp)) != info["sha256"]:
                raise CarryError(f"{name}: joined file does not match its size or SHA-256 in the manifest")
            os.replace(tmp, dest / name)
        except BaseException:
            os.unlink(tmp)
            raise
        written.append(dest / name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="split a folder's files into parts")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--max-mib", type=float, default=40.0)
    s = sub.add_parser("stash", help="copy one carried part into the collecting folder")
    s.add_argument("part", type=Path)
    s.add_argument("into", type=Path)
    u = sub.add_parser("unpack", help="join the collected parts' files")
    u.add_argument("collected", type=Path)
    u.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            for folder in pack(args.src, args.dest, args.max_mib):
                size = sum(f.stat().st_size for f in folder.iterdir()) / MiB
                print(f"{folder}: {size:.1f} MiB")
        elif args.cmd == "stash":
            stash(args.part, args.into)
            print(f"stashed {args.part} in {args.into}")
        else:
            for path in unpack(args.collected, args.dest):
                print(f"joined {path}")
    except (CarryError, OSError, ValueError) as exc:
        print(f"carry_wheels: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
