"""End-to-end fixtures: a real netplugin daemon on the default socket, driven
by the real dockerd, with containers from the local busybox image.

Nothing here skips: CI starts dockerd, etcd and OVS before the tests, and a
missing piece must fail loudly.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netplugin.unixhttp import call

DOCKER = "/usr/bin/docker"          # the 20.10 client that matches the daemon
IMAGE = os.environ.get("NETPLUGIN_TEST_IMAGE", "netplugin/busybox:latest")
SOCKET = "/run/docker/plugins/netplugin.sock"
ETCD = os.environ.get("NETPLUGIN_TEST_ETCD", "http://127.0.0.1:2379")
LABEL = "netplugin.test=1"


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, check=check, timeout=timeout)


class Plugin:
    """One netplugin daemon process and what the tests need to look at its state."""

    def __init__(self, tmp: Path, socket: str = SOCKET, prefix: str | None = None):
        self.host_id = "e2e-" + secrets.token_hex(3)
        self.bridge = "npe2e" + secrets.token_hex(2)
        self.prefix = prefix or "/netplugin/e2e-" + secrets.token_hex(4)
        self.socket = socket
        self.log = tmp / f"netplugin-{self.host_id}.log"
        self.env = dict(os.environ, NETPLUGIN_ETCD_ENDPOINTS=ETCD, NETPLUGIN_ETCD_PREFIX=self.prefix,
                        NETPLUGIN_HOST_ID=self.host_id, NETPLUGIN_BRIDGE=self.bridge,
                        NETPLUGIN_DATAPATH_TYPE="netdev", NETPLUGIN_SOCKET=socket)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "netplugin.daemon"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"netplugin exited at start:\n{self.log.read_text()[-3000:]}")
            if os.path.exists(self.socket) and self.answers():
                return
            time.sleep(0.05)
        raise AssertionError(f"netplugin did not listen on {self.socket} within 10 s:\n{self.log.read_text()[-3000:]}")

    def call(self, method: str, body: dict | None = None) -> tuple[int, dict]:
        return call(self.socket, method, body)

    def reconcile(self, *args: str) -> dict:
        """One reconcile pass of this host; the parsed one-line JSON report."""
        proc = subprocess.run([sys.executable, "-m", "netplugin.reconcile_cli", "--json", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, f"the report must be one line: {proc.stdout!r}"
        return json.loads(lines[0])

    def answers(self) -> bool:
        try:
            status, reply = call(self.socket, "Plugin.Activate", timeout=2)
        except OSError:
            return False
        return status == 200 and "NetworkDriver" in reply.get("Implements", [])

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def netctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "netplugin.cli.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def etcd_keys(self, sub: str = "") -> list[str]:
        out = run("etcdctl", f"--endpoints={ETCD}", "get", "--prefix", "--keys-only", f"{self.prefix}/{sub}").stdout
        return [line for line in out.splitlines() if line.strip()]

    def ovs_ports(self) -> list[str]:
        return [p for p in run("ovs-vsctl", "list-ports", self.bridge, check=False).stdout.split() if p]

    def veths(self) -> list[str]:
        links = json.loads(run("ip", "-j", "link", "show").stdout)
        return [link["ifname"] for link in links if link["ifname"].startswith(("np", "nc"))
                and not link["ifname"].startswith(("npe2e", "nptest"))]


@pytest.fixture(scope="session")
def plugin(tmp_path_factory):
    os.environ["ETCDCTL_API"] = "3"
    docker("info", timeout=30)
    docker("image", "inspect", IMAGE)
    p = Plugin(tmp_path_factory.mktemp("plugin"))
    p.start()
    yield p
    cleanup_docker()
    p.stop()
    run("ovs-vsctl", "--if-exists", "del-br", p.bridge, check=False)
    run("etcdctl", f"--endpoints={ETCD}", "del", "--prefix", p.prefix + "/", check=False)


def cleanup_docker() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    for net in docker("network", "ls", "-q", "--filter", "driver=netplugin").stdout.split():
        docker("network", "rm", net, check=False)


@pytest.fixture
def clean(plugin):
    """Each test starts and ends with no test containers and no netplugin networks."""
    cleanup_docker()
    yield plugin
    cleanup_docker()


def new_network(name: str, subnet: str, vlan: int | None = None, *extra: str) -> str:
    args = ["network", "create", "-d", "netplugin", "--ipam-driver", "netplugin", "--subnet", subnet]
    if vlan is not None:
        args += ["-o", f"vlan={vlan}"]
    return docker(*args, *extra, name).stdout.strip()


def start(name: str, network: str, *extra: str, cmd: tuple[str, ...] = ("sleep", "600")) -> str:
    return docker("run", "-d", "--label", LABEL, "--name", name, "--network", network, *extra, IMAGE,
                  *cmd).stdout.strip()


def ip_of(container: str, network: str) -> str:
    out = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', container)
    return out.stdout.strip()


def pings(container: str, address: str, count: int = 2) -> bool:
    return docker("exec", container, "ping", "-c", str(count), "-W", "2", address, check=False).returncode == 0
