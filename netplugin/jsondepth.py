"""JSON with a nesting cap, checked before the parser runs: a request or a
record nested a thousand deep is refused with a message, never a
RecursionError (a 500) deep inside the json module."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


def depth(text: str) -> int:
    """How deep arrays and objects nest in text, strings not counted."""
    deepest = level = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            level += 1
            deepest = max(deepest, level)
        elif ch in "]}":
            level -= 1
    return deepest


def loads(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """json.loads, refused with ValueError when nested deeper than limit."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if depth(text) > limit:
        raise ValueError(f"JSON nested deeper than {limit} levels")
    return json.loads(text)
