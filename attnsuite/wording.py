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


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, or what its ``__str__`` raised: a variant's exception class whose ``__str__`` raised
    had been reported as that second error, its own type and line lost (a fresh-user trial)."""
    try:
        return str(exc)
    except Exception as inner:  # noqa: BLE001 - any error of the variant's own __str__
        return f"<its str() raised {type(inner).__name__}>"


def exception_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, whatever its ``__str__`` does (:func:`exception_message`)."""
    return f"{type(exc).__name__}: {exception_message(exc)}"
