"""End-to-end fixtures: a real netplugin daemon on the default socket, driven
by the real dockerd, with containers from the local busybox image.

Nothing here skips: CI starts dockerd, etcd and OVS before the tests, and a
missing piece must fail loudly.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.harness import etcd, proc
from tests.harness.daemon import Daemon, settings_env

DOCKER = "/usr/bin/docker"          # the 20.10 client that matches the daemon
IMAGE = os.environ.get("NETPLUGIN_TEST_IMAGE", "netplugin/busybox:latest")
SOCKET = "/run/docker/plugins/netplugin.sock"
ETCD = etcd.ETCD
LABEL = "netplugin.test=1"


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return proc.run(list(args), check=check, timeout=timeout)


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, check=check, timeout=timeout)


class Plugin(Daemon):
    """One netplugin daemon process and what the tests need to look at its state."""

    def __init__(self, tmp: Path, socket: str = SOCKET, prefix: str | None = None):
        self.host_id = "e2e-" + secrets.token_hex(3)
        self.bridge = "npe2e" + secrets.token_hex(2)
        self.prefix = prefix or "/netplugin/e2e-" + secrets.token_hex(4)
        super().__init__(socket, tmp / f"netplugin-{self.host_id}.log", settings_env(
            isolated=False, etcd_endpoints=ETCD, etcd_prefix=self.prefix, host_id=self.host_id,
            bridge=self.bridge, datapath_type="netdev", socket=socket))

    def start(self, within: float = 10) -> float:
        return super().start(within)

    def netctl(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        done = super().netctl(*args, **kw)
        if check and done.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def etcd_keys(self, sub: str = "") -> list[str]:
        return etcd.keys(ETCD, f"{self.prefix}/{sub}")

    def parked(self) -> set[str]:
        """The warm pool's parked pairs (both ends): the daemon keeps them, they are no endpoint's."""
        out = run("ovs-vsctl", "--bare", "--columns=name", "find", "Port", "external_ids:np-pool=1",
                  check=False).stdout.split()
        return {name for host in out if host.startswith("npp") for name in (host, "ncp" + host[3:])}

    def port_of(self, endpoint_id: str) -> str:
        """The name of an endpoint's OVS port (a pool pair's npp… or np<id>), by its external id."""
        out = run("ovs-vsctl", "--bare", "--columns=name", "find", "Port",
                  f"external_ids:np-endpoint={endpoint_id}").stdout.split()
        assert len(out) == 1, f"endpoint {endpoint_id[:12]} has ports {out}"
        return out[0]

    def ovs_ports(self) -> list[str]:
        """The bridge's ports but the parked pool ports."""
        parked = self.parked()
        return [p for p in run("ovs-vsctl", "list-ports", self.bridge, check=False).stdout.split()
                if p and p not in parked]

    def veths(self) -> list[str]:
        """np…/nc… links but the pool's: a pair whose host end is down and whose both
        ends are in this namespace (parked, or being made by the filler) is the
        pool's; a claimed pair's host end is up."""
        links = json.loads(run("ip", "-j", "link", "show").stdout)
        names = {link["ifname"] for link in links}
        down = {link["ifname"] for link in links if "UP" not in link.get("flags", [])}
        pool = {n for n in names if n.startswith("npp") and n in down and "ncp" + n[3:] in names}
        pool |= {"ncp" + n[3:] for n in pool}
        return [name for name in sorted(names) if name.startswith(("np", "nc"))
                and not name.startswith(("npe2e", "nptest")) and name not in pool]


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
    etcd.delete_prefix(ETCD, p.prefix + "/")


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
