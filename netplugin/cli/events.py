"""``netctl events`` and ``drctl events``: changes streamed as they happen, as
``docker events`` streams them, fed by an etcd watch (the stores'
``follow_changes``).

``--since`` is a revision of etcd (``--since 1234``) or a duration
(``--since 10m``), turned into a revision by the store from etcd's own history
(``Store.revision_ago``): no clock of this host is compared with another's.
An event has no wall-clock time (etcd keeps none); its revision orders it.
One line per event, or ``--json`` one JSON object per line, or ``--format``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator

from ..errors import HistoryCompacted, InvalidRequest, NetpluginError
from ..store import Change
from .filters import filter_arg

_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BASE_KEYS = ("type", "action", "id")


def since_arg(text: str) -> tuple[str, float]:
    """--since: ('revision', N) or ('ago', seconds); anything else is a usage error."""
    if text.isdigit():
        return "revision", int(text)
    m = _SINCE.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a revision (1234) nor a duration (30s, 10m, 2h, 1d)")
    return "ago", float(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub, common, prog: str, types: Iterable[str], attribute_keys: Iterable[str]):
    keys = sorted({*BASE_KEYS, *attribute_keys})
    p = sub.add_parser("events", help="stream changes as they happen (as docker events)", parents=[common])
    p.add_argument("--since", type=since_arg, metavar="REV|DURATION",
                   help="start from etcd revision REV, or from DURATION ago (30s, 10m, 2h), "
                        "measured by etcd's history, not this host's clock")
    p.add_argument("--filter", "-f", dest="filters", action="append", default=[], type=filter_arg,
                   metavar="KEY=VALUE", help=f"only matching events (repeatable); keys: {', '.join(keys)}; "
                                             f"types: {', '.join(types)}")
    p.set_defaults(event_keys=keys)
    return p


def as_record(change: Change) -> dict:
    return {"revision": change.revision, "type": change.type, "action": change.action, "id": change.id,
            "attributes": change.attrs}


def matches(record: dict, wanted: dict[str, list[str]]) -> bool:
    for key, values in wanted.items():
        have = record.get(key) if key in BASE_KEYS else record["attributes"].get(key)
        if have is None or str(have) not in values:
            return False
    return True


def line(record: dict) -> str:
    """rev 1234 network create 3f2a9c... (name=prod, subnet=10.1.0.0/24)"""
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(record["attributes"].items()) if v not in (None, ""))
    return f"rev {record['revision']}  {record['type']} {record['action']} {record['id']}" + \
        (f" ({attrs})" if attrs else "")


class JobStates:
    """drctl's job events say the state a job moved to (running, succeeded ...)
    rather than 'update', as docker's container events say start or die."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}

    def __call__(self, record: dict) -> dict:
        if record["type"] != "job":
            return record
        before = self.state.pop(record["id"], None) if record["action"] == "delete" else \
            self.state.get(record["id"])
        now = record["attributes"].get("state")
        if record["action"] == "update" and now and before and now != before:
            record = dict(record, action=now)
        elif record["action"] == "update" and before == now:
            record = dict(record, action="progress")
        if now and record["action"] != "delete":
            self.state[record["id"]] = now
        return record


def stream(changes: Iterator[Change], ctx, event_keys: Iterable[str], filters: list[tuple[str, str]],
           emit: Callable[[str], None], shape: Callable[[dict], dict] = lambda r: r) -> None:
    """Print each change that passes the filters, as ctx asks, until changes end."""
    wanted: dict[str, list[str]] = {}
    for key, value in filters:
        if key not in event_keys:
            raise InvalidRequest(f"--filter: unknown key {key!r}: the keys are {', '.join(sorted(event_keys))}")
        wanted.setdefault(key, []).append(value)
    template = None
    if ctx.custom:
        from .template import Template
        template = Template(ctx.custom)
    for change in changes:
        record = shape(as_record(change))
        if not matches(record, wanted):
            continue
        if template is not None:
            emit(template.render(record))
        elif ctx.json:
            emit(json.dumps(record, sort_keys=True))
        else:
            emit(line(record))


def run(args, ctx, store, prog: str, revision_ago: Callable[[float, threading.Event], tuple[int, str]],
        shape: Callable[[dict], dict] = lambda r: r, stop: threading.Event | None = None) -> int:
    """The events command over store (netplugin's or drctl's), until ^C;
    revision_ago: netplugin's Store.revision_ago (drctl's share its etcd)."""
    stop = stop or threading.Event()
    start = 0
    if args.since is not None:
        kind, value = args.since
        if kind == "revision":
            start = int(value)
        else:
            start, how = revision_ago(value, stop)
            print(f"{prog}: --since {value:g} s: from {how}", file=sys.stderr, flush=True)

    def emit(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    try:
        stream(store.follow_changes(start, stop), ctx, args.event_keys, args.filters, emit, shape)
    except HistoryCompacted as exc:
        raise NetpluginError(f"etcd no longer holds revision {start} (compacted up to "
                             f"{exc.compacted_revision}): give a later --since") from None
    except KeyboardInterrupt:
        stop.set()
    return 0
