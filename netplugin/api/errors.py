"""The one error handler: every failure becomes a non-200 status with
``{"Err": msg, "Error": msg}`` (the network driver reads Err, IPAM reads Error).
An unknown method gets 404, which Docker reads as "not implemented"."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from ..errors import NetpluginError
from .wire import log_call, reply

log = logging.getLogger("netplugin.api")


def error_reply(status: int, message: str, exc: BaseException | None = None):
    log_call(status, message, exc)
    return reply({"Err": message, "Error": message}, status)


def register(app: Flask) -> None:
    @app.errorhandler(Exception)
    def handle(exc: Exception):
        if isinstance(exc, NetpluginError):
            return error_reply(exc.status, exc.message, exc)
        if isinstance(exc, HTTPException):
            if exc.code == 404:
                from flask import request
                return error_reply(404, f"unknown method {request.path}: netplugin does not implement it")
            if exc.code == 413:
                return error_reply(413, "the request body is larger than 1 MiB: refused")
            return error_reply(exc.code or 400, f"{exc.name}: {exc.description}")
        log.exception("unexpected error")
        return error_reply(500, f"internal error ({type(exc).__name__}: {exc}); see the netplugin log")
