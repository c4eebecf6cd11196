"""A stand-in for a plugin whose daemon is gone, answering on its socket.

Docker asks a network's driver before it forgets an endpoint or a network,
and while it loads its networks at start. With the plugin's socket left
behind but nobody listening, each call is retried with backoff for about
15 s: one `docker network rm` took 45 s here, and a dockerd holding five
networks of dead test plugins took over a minute to answer `docker info`.

This stand-in answers activation and the teardown calls with success in
milliseconds and refuses every create, so nothing new is ever built on it.
It binds only sockets nobody listens on: a live plugin is never replaced.
Usage: python3 plugin_standin.py SOCKET... (stdlib only: it runs before any
venv exists). It removes its sockets on SIGTERM or SIGINT.
"""

import contextlib
import json
import os
import signal
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler

# The same answers as the real plugin (netplugin/api/): dockerd keeps a driver's
# capabilities and default address spaces from its first activation until it
# restarts, so a stand-in that answered differently would break the real
# plugin's next `docker network create`. tests/unit/test_plugin_standin.py
# compares them with the real handlers'.
FIXED = {
    "/Plugin.Activate": {"Implements": ["NetworkDriver", "IpamDriver"]},
    "/NetworkDriver.GetCapabilities": {"Scope": "local", "ConnectivityScope": "global"},
    "/IpamDriver.GetCapabilities": {"RequiresMACAddress": False, "RequiresRequestReplay": False},
    "/IpamDriver.GetDefaultAddressSpaces": {
        "LocalDefaultAddressSpace": "netplugin",
        "GlobalDefaultAddressSpace": "netplugin",
    },
    "/NetworkDriver.EndpointOperInfo": {"Value": {}},
}
TEARDOWN = {
    "/NetworkDriver.Leave",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.RevokeExternalConnectivity",
    "/NetworkDriver.DiscoverDelete",
    "/IpamDriver.ReleaseAddress",
    "/IpamDriver.ReleasePool",
}
REFUSAL = "netplugin stand-in: only teardown calls are served; start the real plugin"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path in FIXED:
            status, body = 200, FIXED[self.path]
        elif self.path in TEARDOWN:
            status, body = 200, {}
        else:
            status, body = 500, {"Err": REFUSAL, "Error": REFUSAL}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1.2+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # unix peers have no address to print
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def someone_listens(path: str) -> bool:
    """True when a process accepts connections on the unix socket PATH."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def main(paths: list[str]) -> None:
    servers = []
    for path in paths:
        if os.path.exists(path):
            if someone_listens(path):
                print(f"plugin_standin: {path} is served by a live plugin; left alone", flush=True)
                continue
            os.unlink(path)
        srv = Server(path, Handler)
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(*_: object) -> None:
        for srv in servers:
            with contextlib.suppress(OSError):
                os.unlink(srv.server_address)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])
