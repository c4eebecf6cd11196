"""Printing for netctl: aligned tables for people, JSON for programs, and ages."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() + "\n")


def print_listing(ctx, items: Sequence, ident: Callable[[Any], object], as_json: Callable[[Any], object],
                  headers: Sequence[str], as_row: Callable[[Any], Sequence[object]]) -> None:
    """A listing as ctx asks: -q one ident(item) a line, --json the list of
    as_json(item), --format TEMPLATE each as_json(item) through it, else a
    table of as_row(item) under headers."""
    if ctx.quiet:
        for item in items:
            print(ident(item))
    elif ctx.custom:
        from .template import print_formatted
        print_formatted(ctx.custom, [as_json(item) for item in items])
    elif ctx.json:
        print_json([as_json(item) for item in items])
    else:
        print_table(headers, [as_row(item) for item in items])


def print_inspect(ctx, records: Sequence[dict], human: Callable[[dict], None] | None = None) -> None:
    """What inspect prints, as docker's does: the JSON list of the records, or
    each through --format TEMPLATE; --format table: human(record) for each,
    a blank line between."""
    if ctx.table and human is not None:
        for i, record in enumerate(records):
            if i:
                print()
            human(record)
    elif ctx.custom:
        from .template import print_formatted
        print_formatted(ctx.custom, records)
    else:
        print_json(list(records))


def print_fields(pairs: Sequence[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        sys.stdout.write(f"{key.ljust(width)}  {'-' if value in (None, '', [], {}) else value}\n")


def ago(ts: float) -> str:
    """'5m ago' for a time stamp; a clock a little ahead is "0s ago", not negative."""
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
