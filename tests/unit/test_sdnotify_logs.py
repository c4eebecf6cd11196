"""Readiness notification and gunicorn's log lines, without a daemon: the
notification is one datagram on the socket NOTIFY_SOCKET names (taken out of
the environment so nothing else notifies), and gunicorn's Logger, as the
daemon configures it, writes through the root handler (JSON when chosen).
tests/integration/test_sd_notify.py proves both on the real daemon."""

from __future__ import annotations

import io
import json
import logging
import socket

import pytest
from gunicorn.config import Config

from netplugin import logs
from netplugin.gunicorn_logs import ThroughRoot
from netplugin.sdnotify import notify, take_socket


def test_take_socket_removes_the_variable():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "PATH": "/bin"}
    assert take_socket(env) == "/run/systemd/notify"
    assert env == {"PATH": "/bin"}
    assert take_socket(env) is None
    assert take_socket({"NOTIFY_SOCKET": ""}) is None


def test_notify_sends_one_datagram(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(2)
        assert notify(path, "READY=1\nSTATUS=listening") is True
        assert listener.recv(4096) == b"READY=1\nSTATUS=listening"


def test_notify_abstract_name():
    name = f"@netplugin-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name[1:])
        listener.settimeout(2)
        assert notify(name, "READY=1") is True
        assert listener.recv(64) == b"READY=1"


def test_notify_without_socket_or_with_a_bad_one_says_so(tmp_path, caplog):
    assert notify(None, "READY=1") is False
    assert notify("relative/path", "READY=1") is False
    assert notify(str(tmp_path / "absent.sock"), "READY=1") is False
    assert "could not notify systemd" in caplog.text


@pytest.fixture
def root_json():
    """logs.setup('INFO', 'json') with its stream captured; the root logger restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("INFO", "json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def test_gunicorn_lines_go_through_the_root_handler_as_json(root_json):
    cfg = Config()
    cfg.set("loglevel", "info")
    glog = ThroughRoot(cfg)
    glog.info("Listening at: %s (%s)", "unix:/run/x.sock", 42)
    glog.error("Worker (pid:%s) was sent SIGKILL!", 43)
    lines = [json.loads(line) for line in root_json.getvalue().splitlines()]
    assert [(r["logger"], r["level"], r["message"]) for r in lines] == [
        ("gunicorn.error", "INFO", "Listening at: unix:/run/x.sock (42)"),
        ("gunicorn.error", "ERROR", "Worker (pid:43) was sent SIGKILL!")]
