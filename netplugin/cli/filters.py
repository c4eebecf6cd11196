"""``--filter key=value`` on listings, as docker reads it: the same key given
twice matches either value, different keys must all match. Each listing
names its keys and how an item's value is read; an unknown key is an error
that lists the valid ones. ``name`` (where a listing has it) matches part of
the name, as docker's does; every other key matches the whole value."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from ..errors import InvalidRequest

T = TypeVar("T")
# how one key reads an item: its value(s) as text
Reader = Callable[[T], "str | int | Iterable[str] | None"]
SUBSTRING_KEYS = ("name",)


def filter_arg(text: str) -> tuple[str, str]:
    """--filter KEY=VALUE; a malformed one is a usage error (exit 2)."""
    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} must look like KEY=VALUE, e.g. host=h1")
    return key, value


def add_filter_option(p: argparse.ArgumentParser, keys: Sequence[str]) -> None:
    p.add_argument("--filter", "-f", dest="filters", action="append", default=[], type=filter_arg,
                   metavar="KEY=VALUE", help="only matching items (repeatable); keys: " + ", ".join(keys))


def _values(raw) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, (str, int, float, bool)):
        return [str(raw).lower() if isinstance(raw, bool) else str(raw)]
    return [str(v) for v in raw]


def apply(items: Iterable[T], given: Sequence[tuple[str, str]], readers: Mapping[str, Reader]) -> list[T]:
    """The items matching every key of given (any of the values given for a key)."""
    wanted: dict[str, list[str]] = {}
    for key, value in given:
        if key not in readers:
            raise InvalidRequest(f"--filter: unknown key {key!r}: the keys are {', '.join(sorted(readers))}")
        wanted.setdefault(key, []).append(value)

    def matches(item: T) -> bool:
        for key, values in wanted.items():
            have = _values(readers[key](item))
            if key in SUBSTRING_KEYS:
                if not any(v in h for v in values for h in have):
                    return False
            elif not any(v in have for v in values):
                return False
        return True
    return [item for item in items if matches(item)]
