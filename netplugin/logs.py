"""Logging set-up: text for people, or one JSON object per line for log
shippers (``log_format = "json"``). Protocol calls carry their method, ids,
status and duration as fields. Nothing secret is ever logged: settings are
logged without passwords or key paths' contents."""

from __future__ import annotations

import json
import logging
import sys
import time

MAX_LOGGED = 256


def escape(value: object, limit: int = MAX_LOGGED) -> str:
    """Text from a request or from etcd, made safe to log: control characters
    (a newline that would forge a log line, escape sequences) shown escaped,
    and cut at limit characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


CALL_FIELDS = ("method", "network", "endpoint", "pool", "address", "status", "ms", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        call = getattr(record, "call", None)
        if isinstance(call, dict):
            out.update({k: v for k, v in call.items() if k in CALL_FIELDS and v not in (None, "")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
