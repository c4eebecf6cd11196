"""Commands that take several names (inspect, rm), as docker's do: each name
in turn; one that fails is said on stderr and the others still go; exit 1
if any failed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from ..errors import NetpluginError


def each_name(prog: str, names: Iterable[str], act: Callable[[str], None]) -> int:
    """act(name) for each name; 1 if any raised a NetpluginError (said on stderr)."""
    rc = 0
    for name in dict.fromkeys(names):            # a name given twice is done once
        try:
            act(name)
        except NetpluginError as exc:
            print(f"{prog}: {exc.message}", file=sys.stderr, flush=True)
            rc = 1
    return rc
