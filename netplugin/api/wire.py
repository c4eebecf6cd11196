"""What every protocol handler shares: reading the JSON body, checking
fields, the per-call deadline, the reply's content type and one log line."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from .. import deadline, jsondepth
from ..errors import InvalidRequest
from ..logs import escape

log = logging.getLogger("netplugin.api")
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"


def reply(obj: dict, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype=CONTENT_TYPE)


def backend(name: str) -> Any:
    return current_app.extensions["netplugin"][name]


def field(body: dict, name: str, kind: type | tuple = str, required: bool = True, default: Any = None) -> Any:
    """body[name], checked for presence and type, with a message that names it."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidRequest(f"field {name} is missing from the request")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidRequest(f"field {name} must be a {want}, not {type(value).__name__}")
    return value


def _read_limited() -> bytes:
    """The body, refused with 413 over MAX_CONTENT_LENGTH. Werkzeug refuses a
    Content-Length over the limit, but a chunked body is only cut at the limit,
    silently: look one byte beyond it in the server's own stream."""
    raw = request.get_data(cache=False)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if (limit is not None and request.content_length is None and len(raw) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return raw


def _body() -> dict:
    raw = _read_limited()
    if not raw.strip():
        return {}
    try:
        body = jsondepth.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:   # nested too deep included: a 400, never a 500
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def protocol(fn: Callable[[dict], dict]) -> Callable[[], Response]:
    """Wrap a handler taking the parsed body: deadline, reply, one log line."""
    @functools.wraps(fn)
    def handler() -> Response:
        body = g.body = _body()
        with deadline.within(backend("cfg").handler_deadline):
            result = fn(body)
        log_call(200)
        return reply(result)
    return handler


def log_call(status: int, error: str = "", exc: BaseException | None = None) -> None:
    """One line per protocol call (method, ids, outcome, duration), and its metrics."""
    body = getattr(g, "body", None) or {}
    seconds = time.monotonic() - getattr(g, "started", time.monotonic())
    method = request.path.lstrip("/")
    fields = {"NetworkID": "network", "EndpointID": "endpoint", "PoolID": "pool", "Address": "address"}
    call: dict[str, object] = {name: escape(body[k][:64]) for k, name in fields.items()
                               if isinstance(body.get(k), str) and body.get(k)}
    call.update(method=escape(method, 64), status=status, ms=round(seconds * 1000, 1), error=escape(error))
    ids = " ".join(f"{k}={escape(body[k][:12] if k in ('NetworkID', 'EndpointID') else body[k], 64)}"
                   for k in fields if k in body and isinstance(body[k], str) and body[k])
    level = logging.INFO if status < 500 else logging.ERROR
    log.log(level, "%s %s status=%d ms=%.1f%s", escape(method, 64), ids, status, seconds * 1000,
            f" error={escape(error)!r}" if error else "", extra={"call": call})
    metrics = current_app.extensions["netplugin"].get("metrics")
    if metrics is not None:
        metrics.observe_call(method if request.url_rule is not None else "unknown", status, seconds, exc)
