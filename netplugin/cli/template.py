"""A docker-style ``--format`` for netctl and drctl: ``json``, ``table``, or a
small subset of Go templates, rendered without running any code.

A template is text with actions in ``{{ }}``. An action is a field path
(``{{.Name}}``, ``{{.Pool.Used}}``, ``{{.}}``), optionally after ``json``
(``{{json .}}``, ``{{json .Ranges}}``). Field names match an item's keys
without regard to case or underscores (``.VLAN`` finds ``vlan``,
``.NetworkId`` finds ``network_id``). A template starting with ``table``
prints a header line made of the field names, then one line per item; ``\\t``
and ``\\n`` in the text are a tab and a newline, as docker reads them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)
_PATH = re.compile(r"\.|(\.[A-Za-z_][A-Za-z0-9_]*)+")
WORDS = ("json", "table")


@dataclass(frozen=True)
class Action:
    path: tuple[str, ...]       # () is the item itself
    as_json: bool

    @property
    def header(self) -> str:
        return (self.path[-1] if self.path else "ITEM").upper()


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _parse_action(text: str, template: str) -> Action:
    words = text.split()
    as_json = bool(words) and words[0] == "json"
    if as_json:
        words = words[1:]
    if len(words) != 1 or not _PATH.fullmatch(words[0]):
        raise InvalidRequest(f"--format: {{{{{text}}}}} in {template!r} is not a field (like {{{{.Name}}}}) "
                             "or json of one (like {{json .}}): only these two are understood")
    path = tuple(p for p in words[0].split(".") if p)
    return Action(path, as_json)


class Template:
    """A parsed template: literal text and actions, alternating."""

    def __init__(self, template: str):
        self.source = template
        text = template.replace("\\t", "\t").replace("\\n", "\n")
        self.table = text.startswith("table ") or text == "table"
        if self.table:
            text = text[len("table"):].lstrip(" ")
        self.parts: list[str | Action] = []
        pos = 0
        for m in _ACTION.finditer(text):
            self.parts.append(text[pos:m.start()])
            self.parts.append(_parse_action(m.group(1), template))
            pos = m.end()
        rest = text[pos:]
        if "{{" in rest or "}}" in rest:
            raise InvalidRequest(f"--format: {template!r} has an unclosed {{{{ or a stray }}}}")
        self.parts.append(rest)

    def check(self, fields: Sequence[str]) -> None:
        """Say which field is unknown, listing those there are, before printing anything."""
        known = {_norm(f): f for f in fields}
        for part in self.parts:
            if isinstance(part, Action) and part.path and _norm(part.path[0]) not in known:
                raise InvalidRequest(f"--format: no field {part.path[0]!r}: the fields are "
                                     + ", ".join(sorted(fields)))

    def render(self, item: object) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = lookup(item, part.path)
                out.append(json.dumps(value, sort_keys=True) if part.as_json else _text(value))
        return "".join(out)

    def header(self) -> str:
        return "".join(p if isinstance(p, str) else p.header for p in self.parts)


def lookup(item: object, path: tuple[str, ...]) -> object:
    value = item
    for i, name in enumerate(path):
        if not isinstance(value, dict):
            raise InvalidRequest(f"--format: .{'.'.join(path[:i])} is not a record: it has no field {name!r}")
        keys = {_norm(k): k for k in value}
        if _norm(name) not in keys:
            raise InvalidRequest(f"--format: no field {'.'.join(path[:i + 1])!r}: the fields there are "
                                 + ", ".join(sorted(value)))
        value = value[keys[_norm(name)]]
    return value


def _text(value: object) -> str:
    """As Go prints a value: maps and lists in brackets, nothing for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _aligned(lines: list[list[str]]) -> list[str]:
    """Tab-separated cells in aligned columns, as docker's tabwriter does."""
    widths: dict[int, int] = {}
    for cells in lines:
        for i, cell in enumerate(cells[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return ["   ".join(c.ljust(widths[i]) if i < len(cells) - 1 else c for i, c in enumerate(cells)).rstrip()
            for cells in lines]


def print_formatted(fmt: str, items: Sequence[Any], fields: Sequence[str] | None = None) -> None:
    """Print items (JSON-like dicts) through a --format template; fields, when
    given, are the names a template may use (checked up front)."""
    tpl = Template(fmt)
    if fields is not None:
        tpl.check(fields)
    rendered = [tpl.render(item) for item in items]     # every lookup before any output
    if tpl.table:
        rows = [tpl.header(), *rendered]
        text = "\n".join(rows)
        lines = [line.split("\t") for line in text.split("\n")]
        sys.stdout.write("\n".join(_aligned(lines)) + "\n")
    else:
        for line in rendered:
            sys.stdout.write(line + "\n")
