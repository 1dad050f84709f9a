"""Imported once by the fork server that CPU ranks start from: torch, the rank loop and the variants.

A rank forked straight from the process that owns the pool inherits that process's threads' locks:
after a ``torch.compile`` had left its compile threads there, 1 of 40 starts of 4 gloo ranks hung
before a rank reached the store (docs/distributed.md). The fork server is a fresh interpreter that
has run nothing but these imports, so a rank forked from it starts clean, and in milliseconds,
since torch and the built-in variants are imported here once rather than in every rank.
"""

from .. import registry
from . import worker  # noqa: F401 - imported for the ranks forked from this process

registry.load_builtin()
registry.load_entry_points()
