"""POST JSON to the plugin's unix socket, the way dockerd does."""

from __future__ import annotations

import http.client
import json
import socket


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock_path: str, method: str, body: dict | bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    """POST /<method>; returns (status, parsed JSON reply)."""
    conn = _UnixConnection(sock_path, timeout)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        conn.request("POST", f"/{method}", body=data,
                     headers={"Content-Type": "application/json",
                              "Accept": "application/vnd.docker.plugins.v1.2+json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else {})
    finally:
        conn.close()
