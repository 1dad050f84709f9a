"""How a sequence is split over P ranks: contiguous chunks, or zigzag (head-tail) chunks for causal balance.

A rank's share of a sequence is a tuple of half-open global ranges (``Segments``); its shard is
the concatenation of those ranges along the sequence axis, in order. A :class:`Layout` holds the
segments of every rank for the queries and for the keys/values; every rank can compute every
other rank's segments, so no sizes need to be exchanged.

Zigzag splits the sequence into 2P chunks (as even as possible) and gives rank r chunks r and
2P-1-r: under a causal mask every rank then owns one early and one late chunk, so the work of
the ring is balanced (chunk r sees r+1 chunks, chunk 2P-1-r sees 2P-r).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Segments = tuple[tuple[int, int], ...]
SHARDINGS = ("contiguous", "zigzag")


def chunk_sizes(length: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous chunks covering ``length`` (the first ones one longer; some may be 0)."""
    base, extra = divmod(length, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _chunks(length: int, parts: int) -> list[tuple[int, int]]:
    out, at = [], 0
    for n in chunk_sizes(length, parts):
        out.append((at, at + n))
        at += n
    return out


def contiguous(length: int, world_size: int) -> tuple[Segments, ...]:
    """Rank r holds the r-th of P contiguous chunks."""
    return tuple((c,) if c[1] > c[0] else () for c in _chunks(length, world_size))


def zigzag(length: int, world_size: int) -> tuple[Segments, ...]:
    """Rank r holds chunks r and 2P-1-r of 2P chunks (empty chunks left out)."""
    chunks = _chunks(length, 2 * world_size)
    return tuple(
        tuple(c for c in (chunks[r], chunks[2 * world_size - 1 - r]) if c[1] > c[0]) for r in range(world_size)
    )


def size(segments: Segments) -> int:
    """Number of positions in ``segments``."""
    return sum(b - a for a, b in segments)


def validate(per_rank: tuple[Segments, ...], length: int, what: str) -> None:
    """Raise ValueError unless the ranks' segments cover 0..length-1 exactly once."""
    seen = sorted(r for segs in per_rank for r in segs)
    at = 0
    for a, b in seen:
        if a != at or b < a:
            raise ValueError(f"{what}: segments {per_rank} do not partition 0..{length - 1} (gap or overlap at {at})")
        at = b
    if at != length:
        raise ValueError(f"{what}: segments {per_rank} cover 0..{at - 1}, not 0..{length - 1}")


@dataclass(frozen=True)
class Layout:
    """Which global query and key/value positions each of ``world_size`` ranks holds."""

    sharding: str
    q: tuple[Segments, ...]
    kv: tuple[Segments, ...]

    @property
    def world_size(self) -> int:
        return len(self.q)


def layout(sharding: str, lq: int, lk: int, world_size: int) -> Layout:
    """The layout named ``sharding`` ('contiguous' or 'zigzag') for lq queries and lk keys on P ranks."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    split = {"contiguous": contiguous, "zigzag": zigzag}.get(sharding)
    if split is None:
        raise ValueError(f"unknown sharding {sharding!r}; known: {', '.join(SHARDINGS)}")
    out = Layout(sharding, split(lq, world_size), split(lk, world_size))
    validate(out.q, lq, f"{sharding} queries")
    validate(out.kv, lk, f"{sharding} keys")
    return out


def positions(segments: Segments, device=None) -> torch.Tensor:
    """The global positions of ``segments`` in order, as a long tensor."""
    parts = [torch.arange(a, b, device=device) for a, b in segments]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)


def take(x: torch.Tensor, segments: Segments, dim: int) -> torch.Tensor:
    """The shard of ``x`` (the full sequence along ``dim``) that ``segments`` name, contiguous."""
    parts = [x.narrow(dim, a, b - a) for a, b in segments]
    if not parts:
        shape = list(x.shape)
        shape[dim] = 0
        return x.new_empty(shape)
    return torch.cat(parts, dim=dim).contiguous()


def place(full: torch.Tensor, shard: torch.Tensor, segments: Segments, dim: int) -> None:
    """Write ``shard`` into ``full`` at the global positions ``segments`` name (in place)."""
    if shard.shape[dim] != size(segments):
        raise ValueError(f"shard has {shard.shape[dim]} positions along dim {dim}, segments {segments} name {size(segments)}")
    at = 0
    for a, b in segments:
        full.narrow(dim, a, b - a).copy_(shard.narrow(dim, at, b - a))
        at += b - a
