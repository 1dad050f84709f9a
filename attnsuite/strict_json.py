"""JSON that refuses a key given twice in one object, for the files a user writes by hand.

Python's json keeps the last of two equal keys without a word, so a thresholds or problem file with
``"time_floor": 0.5, "time_floor": 0.7`` had been read as 0.7 and the 0.5 the user also wrote was lost
unnoticed. (Baselines have their own stricter reader, which names every duplicate with its path.)
"""

from __future__ import annotations

import json
from typing import Any


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: ValueError naming a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads(text: str) -> Any:
    """:func:`json.loads`, with ValueError for a key given twice in one object."""
    return json.loads(text, object_pairs_hook=no_duplicates)
