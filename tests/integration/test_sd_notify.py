"""The daemon under systemd's Type=notify: started for real with NOTIFY_SOCKET
naming a datagram socket of the test's own (systemd's side, played by the
test), it sends READY=1 exactly once, and only when its plugin socket already
listens with its final mode. The same start proves that with JSON logs chosen,
gunicorn's own lines ("Listening at", "Booting worker") are JSON too."""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import time

import pytest

from netplugin.unixhttp import call
from tests.harness.daemon import Daemon, settings_env
from tests.harness.proc import run

pytestmark = pytest.mark.integration


@pytest.fixture
def notified(tmp_path):
    """A daemon with etcd unreachable (nothing here needs it), NOTIFY_SOCKET set, JSON logs."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    listener.bind(address)
    sock = f"/run/netplugin-test-{secrets.token_hex(3)}.sock"
    bridge = "nptest" + secrets.token_hex(3)
    env = settings_env(isolated=True, etcd_endpoints="http://127.0.0.1:1", etcd_timeout=1, socket=sock,
                       host_id="notify-test", bridge=bridge, datapath_type="netdev", log_format="json",
                       metrics_address="off")
    env["NOTIFY_SOCKET"] = address
    daemon = Daemon(sock, tmp_path / "daemon.log", env)
    daemon.launch()
    try:
        yield daemon, listener
    finally:
        daemon.stop()
        listener.close()
        run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=False)


def test_ready_once_and_only_once_the_socket_listens(notified):
    daemon, listener = notified
    listener.settimeout(15)
    started = time.monotonic()
    message = listener.recv(4096).decode()
    # What systemd would do at this moment: Docker, ordered after the unit, connects.
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(daemon.socket)          # refused (ECONNREFUSED) if nothing listened yet
    probe.close()
    assert message.split("\n")[0] == "READY=1", message
    assert daemon.socket in message       # STATUS= names the socket
    assert mode == 0o660, oct(mode)       # secured before READY, not after
    assert time.monotonic() - started < 10
    status, reply = call(daemon.socket, "Plugin.Activate", timeout=10)
    assert status == 200 and "NetworkDriver" in reply["Implements"]
    # The worker has booted and served a call: had it (or the arbiter) notified as well,
    # a second datagram would be waiting by now.
    listener.settimeout(1.0)
    with pytest.raises(TimeoutError):
        extra = listener.recv(4096)
        pytest.fail(f"a second notification: {extra!r}")
    assert daemon.alive()


def test_gunicorn_lines_are_json_when_json_is_chosen(notified):
    daemon, listener = notified
    listener.settimeout(15)
    listener.recv(4096)
    deadline = time.monotonic() + 10
    while "Booting worker" not in daemon.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in daemon.log.read_text().splitlines() if line.strip()]
    gunicorn_lines = []
    for line in lines:
        record = json.loads(line)          # any line that is not JSON fails here, with its text
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        if record["logger"].startswith("gunicorn"):
            gunicorn_lines.append(record["message"])
    assert any(m.startswith("Listening at:") for m in gunicorn_lines), lines
    assert any(m.startswith("Booting worker") for m in gunicorn_lines), lines
