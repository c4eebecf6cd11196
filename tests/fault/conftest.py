"""Generic helpers of the fault ring (tests/fault): a netplugin daemon on a
socket and driver name of its own, and small command helpers.

Each fault test starts its own daemon(s) on /run/docker/plugins/<name>.sock,
so Docker finds them as driver <name> beside the e2e ring's daemon on the
default socket, each with its own etcd prefix, bridge and host id.
Nothing here skips: a missing service fails the test.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from netplugin.unixhttp import call

DOCKER = "/usr/bin/docker"
IMAGE = os.environ.get("NETPLUGIN_TEST_IMAGE", "netplugin/busybox:latest")
ETCD = os.environ.get("NETPLUGIN_TEST_ETCD", "http://127.0.0.1:2379")
PLUGIN_DIR = "/run/docker/plugins"


def run(args: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run an argument list (never a shell string); on failure show its output."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                             f"stderr: {proc.stderr}")
    return proc


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], check=check, timeout=timeout)


def free_port() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class FaultDaemon:
    """One netplugin daemon serving driver `name` on /run/docker/plugins/<name>.sock.

    Settings come only from the environment given here (NETPLUGIN_CONFIG=/dev/null),
    so /etc/netplugin/netplugin.toml on the machine cannot leak in. The metrics
    port is off unless `metrics` is given."""

    def __init__(self, tmp: Path, name: str, etcd: str = ETCD, prefix: str | None = None,
                 metrics: str = "off", env: dict[str, str] | None = None):
        self.name = name
        self.socket = f"{PLUGIN_DIR}/{name}.sock"
        self.host_id = f"{name}-" + secrets.token_hex(3)
        self.bridge = name + secrets.token_hex(2)
        self.prefix = prefix or f"/netplugin/fault-{name}-" + secrets.token_hex(4)
        self.etcd = etcd
        self.log = tmp / f"{self.host_id}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NETPLUGIN_")}
        self.env.update(NETPLUGIN_CONFIG="/dev/null", NETPLUGIN_ETCD_ENDPOINTS=etcd, NETPLUGIN_ETCD_PREFIX=self.prefix,
                        NETPLUGIN_HOST_ID=self.host_id, NETPLUGIN_BRIDGE=self.bridge,
                        NETPLUGIN_DATAPATH_TYPE="netdev", NETPLUGIN_SOCKET=self.socket,
                        NETPLUGIN_METRICS_ADDRESS=metrics, **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self, within: float = 15) -> None:
        assert not os.path.exists(self.socket) or not self.answers(), f"{self.socket} is already served"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "netplugin.daemon"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"netplugin exited at start:\n{self.tail()}")
            if os.path.exists(self.socket) and self.answers():
                return
            time.sleep(0.05)
        raise AssertionError(f"netplugin did not listen on {self.socket} within {within} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def call(self, method: str, body: dict | bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
        return call(self.socket, method, body, timeout=timeout)

    def answers(self) -> bool:
        try:
            status, reply = call(self.socket, "Plugin.Activate", timeout=2)
        except OSError:
            return False
        return status == 200 and "NetworkDriver" in reply.get("Implements", [])

    def pids(self) -> list[int]:
        """The daemon's processes (gunicorn's arbiter and its worker): its process group."""
        assert self.proc is not None
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == self.proc.pid:
                        out.append(int(entry))
                except ProcessLookupError:
                    pass
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def netctl(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "netplugin.cli.main", *args], check=False, timeout=timeout,
                   env={**self.env, **(env or {})})

    def ovs_ports(self) -> list[str]:
        return sorted(p for p in run(["ovs-vsctl", "--timeout=10", "list-ports", self.bridge],
                                     check=False).stdout.split() if p)

    def remove_bridge(self) -> None:
        run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.bridge], check=False)


def links() -> list[str]:
    """Every network interface name of the host's namespace."""
    return sorted(os.listdir("/sys/class/net"))
