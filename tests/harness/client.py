"""Plugin-socket clients beyond the product's one-shot `netplugin.unixhttp.call`,
on its connection class: a keep-alive client (as dockerd keeps one) and GET."""

from __future__ import annotations

import http.client
import json

from netplugin.unixhttp import _UnixConnection

HEADERS = {"Content-Type": "application/json", "Accept": "application/vnd.docker.plugins.v1.2+json"}


class Client:
    """A keep-alive connection, as dockerd's plugin client keeps one (Go's
    http.Transport). One per thread. Reconnects once if the server closed it."""

    def __init__(self, sock_path: str, timeout: float = 60):
        self.sock_path = sock_path
        self.timeout = timeout
        self.conn: _UnixConnection | None = None

    def call(self, method: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body or {}).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = _UnixConnection(self.sock_path, self.timeout)
            try:
                self.conn.request("POST", f"/{method}", body=data, headers=HEADERS)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, (json.loads(raw) if raw else {})
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method: str, body: dict | None = None) -> dict:
        status, reply = self.call(method, body)
        if status != 200:
            raise RuntimeError(f"{method} answered {status}: {reply.get('Err') or reply}")
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def get(sock_path: str, url: str, timeout: float = 10) -> tuple[int, dict]:
    """GET url on the socket (e.g. /health); (status, parsed JSON)."""
    conn = _UnixConnection(sock_path, timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()
