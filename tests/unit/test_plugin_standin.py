"""scripts/plugin_standin.py: answers teardown, refuses creates, never takes a live socket."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plugin_standin.py"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def post(path: str, call: str) -> tuple[int, dict]:
    conn = UnixHTTP(path)
    try:
        conn.request("POST", call, body=b"{}")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def wait_listening(path: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            post(path, "/Plugin.Activate")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"stand-in never answered on {path}")


@pytest.fixture
def sockdir():
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="npsi") as d:
        yield Path(d)


def start(*paths: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, paths)])


def test_stale_socket_gets_teardown_answers_and_creates_are_refused(sockdir):
    stale = sockdir / "npx.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays; nobody listens: what a killed plugin leaves
    proc = start(stale)
    try:
        wait_listening(str(stale))
        assert post(str(stale), "/Plugin.Activate")[1]["Implements"] == ["NetworkDriver", "IpamDriver"]
        assert post(str(stale), "/NetworkDriver.DeleteEndpoint") == (200, {})
        assert post(str(stale), "/IpamDriver.ReleaseAddress") == (200, {})
        status, body = post(str(stale), "/NetworkDriver.CreateEndpoint")
        assert status == 500 and "only teardown" in body["Err"]
        assert post(str(stale), "/IpamDriver.RequestAddress")[0] == 500
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
    assert not stale.exists(), "the stand-in removes its socket when it stops"


def test_live_plugin_socket_is_left_alone(sockdir):
    live = sockdir / "nplive.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(live))
    srv.listen(4)
    inode = os.stat(live).st_ino
    proc = start(live)
    try:
        time.sleep(0.5)
        assert os.stat(live).st_ino == inode, "a live plugin's socket was replaced"
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(str(live))
        conn, _ = srv.accept()  # the connection reached the live plugin, not the stand-in
        conn.close()
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        srv.close()
    assert live.exists(), "the stand-in removed a socket it never served"


def _standin_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plugin_standin", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fixed_answers_are_the_real_plugins(np):
    """dockerd keeps what activation told it: a stand-in that answered otherwise
    would break the real plugin's next network create (it once did: 'address
    space netplugin-local is unknown')."""
    fixed = _standin_module().FIXED
    for path, answer in fixed.items():
        if path == "/NetworkDriver.EndpointOperInfo":
            continue  # per endpoint; the stand-in's empty Value is the teardown-time answer
        assert np.ok(path.lstrip("/"), {}) == answer, path
