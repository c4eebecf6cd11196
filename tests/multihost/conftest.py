"""Fixtures of the multi-host ring: two netplugin "hosts" on this machine,
built by scripts/rig.sh (see docs/multihost.md).

    host a: dockerd in its own mount namespace  + netplugin rig-a + bridge nprig-a, uplink nptrunk-a
    host b: dockerd in its own mount namespace  + netplugin rig-b + bridge nprig-b, uplink nptrunk-b
    nptrunk-a <-> nptrunk-b: a veth pair, the VLAN trunk between the two hosts

Both daemons use the real etcd with one prefix per test session. The rig is
one per machine: a lock file keeps two sessions from sharing it, and the
session stops it at the end (NETPLUGIN_RIG_KEEP=1 leaves it running to look
at). Nothing here skips: a missing dockerd, OVS or etcd fails the ring.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netplugin.unixhttp import call
from tests.harness import rig as rigkit
from tests.harness.daemon import settings_env
from tests.harness.etcd import ETCD, keys
from tests.harness.proc import run

__all__ = ["DOCKER", "ETCD", "LABEL", "RIG", "netctl_env", "run"]

RIG = rigkit.RIG
DOCKER = "/usr/bin/docker"          # the 20.10 client that matches the daemons
LABEL = "netplugin.rig-test=1"


def netctl_env(etcd: str, prefix: str, docker_host: str | None = None, socket: str | None = None) -> dict:
    """The environment netctl runs with: only our settings, never the caller's NETPLUGIN_*."""
    more = {"docker_url": docker_host, "socket": socket}
    return settings_env(etcd_endpoints=etcd, etcd_prefix=prefix, **{k: v for k, v in more.items() if v})


class Host:
    """One rig host: its dockerd, its plugin daemon, its bridge and trunk end."""

    def __init__(self, rig: Rig, letter: str, env: dict[str, str]):
        up = letter.upper()
        self.rig = rig
        self.letter = letter
        self.host_id = env[f"RIG_{up}_HOST_ID"]
        self.docker_host = env[f"RIG_{up}_DOCKER_HOST"]
        self.socket = env[f"RIG_{up}_SOCKET"]
        self.bridge = env[f"RIG_{up}_BRIDGE"]
        self.trunk = env[f"RIG_{up}_TRUNK"]
        self.log = Path(env[f"RIG_{up}_LOG"])

    def __repr__(self) -> str:
        return f"<host {self.host_id}>"

    # -- Docker on this host -------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return run([DOCKER, "-H", self.docker_host, *args], check=check, timeout=timeout)

    def network(self, name: str, subnet: str, vlan: int | None = None, *extra: str) -> str:
        args = ["network", "create", "-d", "netplugin", "--ipam-driver", "netplugin", "--subnet", subnet]
        if vlan is not None:
            args += ["-o", f"vlan={vlan}"]
        return self.docker(*args, *extra, name).stdout.strip()

    def start(self, name: str, network: str, *extra: str, cmd: tuple[str, ...] = ("sleep", "600")) -> str:
        return self.docker("run", "-d", "--label", LABEL, "--name", name, "--network", network, *extra,
                           self.rig.image, *cmd).stdout.strip()

    def ip_of(self, container: str, network: str) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        return self.docker("inspect", "-f", fmt, container).stdout.strip()

    def exec(self, container: str, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.docker("exec", container, *cmd, check=check, timeout=timeout)

    def pings(self, container: str, address: str, count: int = 2, wait: int = 2) -> bool:
        return self.exec(container, "ping", "-c", str(count), "-W", str(wait), address).returncode == 0

    def ping_until(self, container: str, address: str, within: float = 10.0) -> bool:
        """The first packets can go to ARP and MAC learning: retry a little."""
        deadline = time.monotonic() + within
        while True:
            if self.pings(container, address, count=1, wait=1):
                return True
            if time.monotonic() > deadline:
                return False

    def clean(self) -> None:
        """No containers and no netplugin networks in this host's Docker."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, timeout=120)
        for net in self.docker("network", "ls", "-q", "--filter", "driver=netplugin").stdout.split():
            self.docker("network", "rm", net, check=False)

    # -- the plugin daemon -------------------------------------------------------------------
    def call(self, method: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
        return call(self.socket, method, body, timeout=timeout)

    def netctl(self, *args: str, check: bool = True, timeout: float = 60,
               env: dict | None = None) -> subprocess.CompletedProcess:
        """netctl run "on this host": its Docker (for container names) and its daemon's socket."""
        proc = run([sys.executable, "-m", "netplugin.cli.main", *args], check=False, timeout=timeout,
                   env=env or netctl_env(self.rig.etcd, self.rig.prefix, self.docker_host, self.socket))
        if check and proc.returncode != 0:
            raise AssertionError(f"netctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def netctl_json(self, *args: str):
        return json.loads(self.netctl(*args, "--json").stdout)

    # -- OVS ---------------------------------------------------------------------------------
    def ports(self) -> list[str]:
        """Endpoint ports on this host's bridge (not the trunk, not the bridge's own port)."""
        names = run(["ovs-vsctl", "--timeout=10", "list-ports", self.bridge]).stdout.split()
        parked = set(run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find", "Port",
                          "external_ids:np-pool=1"]).stdout.split())      # the warm pool's, kept by the daemon
        return [p for p in names if p != self.trunk and p not in parked]

    def flows(self) -> list[str]:
        """Every OpenFlow flow of the bridge, without counters (OpenFlow 1.3: the pipeline uses it)."""
        out = run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--no-stats", self.bridge]).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip() and "_FLOW reply" not in line)


class Rig:
    def __init__(self, env: dict[str, str], etcd: str, prefix: str):
        self.env = env
        self.etcd = etcd
        self.prefix = prefix
        self.image = env["RIG_IMAGE"]
        self.a = Host(self, "a", env)
        self.b = Host(self, "b", env)
        self.hosts = (self.a, self.b)

    def netctl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.a.netctl(*args, **kw)

    def etcd_keys(self, sub: str) -> list[str]:
        return keys(self.etcd, f"{self.prefix}/{sub}")

    def clean(self) -> None:
        """Both hosts without containers or netplugin networks; no global network left."""
        for host in self.hosts:
            host.clean()
        for name in self.netctl("network", "ls", "-q").stdout.split():
            self.netctl("network", "rm", "--force", name, check=False)

    def logs(self) -> str:
        return "\n".join(f"--- {h.log} (tail)\n{h.log.read_text(errors='replace')[-3000:]}"
                         for h in self.hosts if h.log.exists())


@pytest.fixture(scope="session")
def rig():
    os.environ["ETCDCTL_API"] = "3"
    if os.geteuid() != 0:
        pytest.fail("the multi-host ring needs root (dockerd, OVS, veths)", pytrace=False)
    try:
        lock = rigkit.lock(600)
    except TimeoutError as exc:
        pytest.fail(str(exc), pytrace=False)
    prefix = "/netplugin/rig-" + secrets.token_hex(4)
    started = time.monotonic()
    proc = run(["bash", str(RIG), "start", "--python", sys.executable, "--etcd-endpoints", ETCD,
                "--etcd-prefix", prefix], check=False, timeout=240)
    if proc.returncode != 0:
        lock.close()
        pytest.fail(f"scripts/rig.sh start failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout}",
                    pytrace=False)
    env = rigkit.rig_env()
    r = Rig(env, ETCD, prefix)
    r.start_seconds = time.monotonic() - started
    try:
        yield r
    finally:
        if os.environ.get("NETPLUGIN_RIG_KEEP") != "1":
            run(["bash", str(RIG), "stop"], check=False, timeout=240)
        lock.close()


@pytest.fixture
def clean_rig(rig):
    """Each test starts and ends with empty Dockers and no global networks."""
    rig.clean()
    yield rig
    rig.clean()
