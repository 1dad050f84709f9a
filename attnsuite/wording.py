"""How counts read in the suite's messages: "1 case", "2 cases" (never "1 cases")."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1 (``plural`` when it is not noun + "s")."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def none_of(n: int, noun: str, whose: str = "the") -> str:
    """The subject of a singular verb saying that none of ``n`` things does something: "none of the 3
    cases" (is in X), and for one "no case (of 1)", where "none of the 1 case" would read wrong."""
    return f"none of {whose} {count(n, noun)}" if n != 1 else f"no {noun} (of 1)"


def clip(text: str, limit: int) -> str:
    """``text`` on one line, cut at a word to at most ``limit`` characters with " ..." where it was
    cut (a message cut mid-word with no mark had read as the whole of it)."""
    import textwrap

    return textwrap.shorten(text, limit, placeholder=" ...") if text.strip() else ""
