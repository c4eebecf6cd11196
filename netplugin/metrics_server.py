"""The loopback-only HTTP listener for Prometheus (``/metrics``) and probes
(``/health``). It refuses any address that is not loopback: the plugin has
no business listening on the network."""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from .errors import InvalidRequest

log = logging.getLogger(__name__)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # scrapes every few seconds would flood the log
        pass


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            raise ValueError
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise InvalidRequest(f"metrics_address {text!r} must be a loopback address and port, "
                             "such as 127.0.0.1:9109 (or empty to turn metrics off)") from None
    return host.strip("[]"), number


def make_app(registry, health_probe):
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/health":
            report = health_probe()
            status = "200 OK" if report["healthy"] else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(report).encode()]
        if environ.get("PATH_INFO") in ("/metrics", "/"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"netplugin serves /metrics and /health\n"]
    return app


def serve(address: str, registry, health_probe) -> _Server:
    host, port = parse_address(address)
    server = make_server(host, port, make_app(registry, health_probe), server_class=_Server,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics and health on http://%s:%d/metrics", host, port)
    return server
