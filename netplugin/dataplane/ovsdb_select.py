"""One read-only OVSDB transaction: "select" the named columns of some
tables, over a connection of its own, parsed with the standard library's C
JSON decoder (RFC 7047, section 5.2.2).

A reader that needs a few columns once (the reconciler) pays for those
columns only: no schema download, no replica of every column of every row,
no Python JSON parser. A result is a snapshot: one transaction, so the
tables agree with each other.
"""

from __future__ import annotations

import json
import re
import select as _select
import socket
import time
from typing import Any

DATABASE = "Open_vSwitch"
RECV_BYTES = 1 << 20
_TCP = re.compile(r"tcp:(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")


class SelectUnavailable(Exception):
    """OVSDB could not be reached, or did not answer in time."""


class SelectRefused(Exception):
    """OVSDB answered with an error, or with something that is not a reply."""


def supports(remote: str) -> bool:
    """Whether select() can open this remote (unix: and tcp:; not ssl:)."""
    return remote.startswith("unix:") or _TCP.fullmatch(remote) is not None


def _open(remote: str, timeout: float) -> socket.socket:
    if remote.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = remote[len("unix:"):]
    else:
        m = _TCP.fullmatch(remote)
        if m is None:
            raise SelectRefused(f"remote {remote!r} is neither unix:PATH nor tcp:HOST:PORT")
        v6 = m.group("v6")
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        address = (v6 or m.group("host"), int(m.group("port")))
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise SelectUnavailable(f"cannot connect: {exc.strerror or exc}") from None
    return sock


def _messages(sock: socket.socket, give_up: float):
    """JSON-RPC messages as they arrive. A reply is one JSON object with no
    framing, so the buffer is decoded once it ends with '}' and nothing more
    is waiting: a proper prefix of one object never decodes."""
    decoder = json.JSONDecoder()
    buf = b""
    while True:
        left = give_up - time.monotonic()
        if left <= 0:
            raise SelectUnavailable("no complete answer in time")
        sock.settimeout(left)
        try:
            data = sock.recv(RECV_BYTES)
        except TimeoutError:
            raise SelectUnavailable("no complete answer in time") from None
        except OSError as exc:
            raise SelectUnavailable(f"connection failed: {exc.strerror or exc}") from None
        if not data:
            raise SelectUnavailable("the server closed the connection before answering")
        buf += data
        if not buf.rstrip().endswith(b"}") or _select.select([sock], [], [], 0)[0]:
            continue
        try:
            text = buf.decode()
        except UnicodeDecodeError:
            continue                                   # a multi-byte character cut in two
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                buf = b""
                break
            try:
                msg, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                buf = text[pos:].encode()
                break
            yield msg


def select(remote: str, queries: dict[str, list[str]], timeout: float) -> dict[str, list[dict]]:
    """The rows of each table of ``queries`` (table -> columns), as OVSDB
    sends them (sets, maps and uuids in their RFC 7047 form)."""
    give_up = time.monotonic() + timeout
    ops = [{"op": "select", "table": table, "where": [], "columns": columns} for table, columns in queries.items()]
    sock = _open(remote, timeout)
    try:
        sock.sendall(json.dumps({"method": "transact", "params": [DATABASE, *ops], "id": 1}).encode())
        for msg in _messages(sock, give_up):
            if not isinstance(msg, dict):
                raise SelectRefused("the server sent something that is not a JSON-RPC message")
            if msg.get("method") == "echo":            # a liveness probe: answer it, as any client must
                sock.sendall(json.dumps({"id": msg.get("id"), "result": msg.get("params"), "error": None}).encode())
                continue
            if msg.get("id") != 1:
                continue                               # a notification: nothing asked for it
            return _rows(msg, list(queries))
    finally:
        sock.close()
    raise SelectUnavailable("no answer")               # _messages only ends by raising


def _rows(msg: dict, tables: list[str]) -> dict[str, list[dict]]:
    if msg.get("error") is not None:
        raise SelectRefused(f"the transaction failed: {msg['error']}")
    result = msg.get("result")
    if not isinstance(result, list) or len(result) < len(tables):
        raise SelectRefused("the answer does not have one result per table")
    out: dict[str, list[dict]] = {}
    for table, res in zip(tables, result, strict=False):
        if not isinstance(res, dict) or "error" in res:
            detail = res.get("details") or res.get("error") if isinstance(res, dict) else res
            raise SelectRefused(f"reading table {table} failed: {detail}")
        rows = res.get("rows")
        if not isinstance(rows, list):
            raise SelectRefused(f"the answer for table {table} has no rows")
        out[table] = [row for row in rows if isinstance(row, dict)]
    return out


# -- RFC 7047 values ---------------------------------------------------------------

def uuid(value) -> str | None:
    """A ["uuid", "..."] atom's uuid, else None."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "uuid" and isinstance(value[1], str):
        return value[1]
    return None


def members(value) -> list:
    """The atoms of a set column: ["set", [...]], or one atom on its own."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set" and isinstance(value[1], list):
        return value[1]
    return [value]


def optional(value):
    """An optional scalar column's value (an empty set: None)."""
    atoms = members(value)
    return atoms[0] if len(atoms) == 1 else None


def string_map(value) -> dict[str, str] | None:
    """A map of strings to strings, or None when it is not one."""
    if not (isinstance(value, list) and len(value) == 2 and value[0] == "map" and isinstance(value[1], list)):
        return None
    out = {}
    for pair in value[1]:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)):
            return None
        out[pair[0]] = pair[1]
    return out
