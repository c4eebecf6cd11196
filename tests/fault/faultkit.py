"""What the load, daemon-crash, OVS-restart and Docker-restart tests share: a
netplugin daemon of their own, registered with the main dockerd under its own
driver name, and the views of one host's state that a leak check compares.

The e2e ring's daemon keeps the default socket for the whole session, so these
daemons answer on ``/run/docker/plugins/npfb*.sock`` (driver and IPAM name
``npfb``, ``npfb2``), with an etcd prefix ``/netplugin/fault-b-<hex>`` of their
own, bridges ``npfb-<hex>``, subnets in 10.251.0.0/16 and VLANs 3600-3699.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from netplugin.config import load
from netplugin.dataplane.links import HOST_END_RE
from netplugin.store import Store
from netplugin.wiring import make_store
from tests.e2e.conftest import DOCKER, ETCD, IMAGE, Plugin, docker, run
from tests.harness import REPO, etcd
from tests.harness.daemon import settings_env
from tests.harness.proc import wait_until

from .conftest import PLUGIN_DIR

__all__ = [
    "DOCKER",
    "ETCD",
    "IMAGE",
    "LABEL",
    "REPO",
    "Daemon",
    "delete_prefix",
    "docker",
    "host_veths",
    "ofctl_lines",
    "rm_networks",
    "run",
    "serving",
    "start_services",
    "wait_until",
]

LABEL = "netplugin.fault-b=1"


def start_services() -> float:
    """scripts/services.sh start, as CI runs it: starts whatever of OVS, etcd,
    containerd and dockerd is down (with their flags); the seconds it took."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "start"], check=False,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"services.sh start failed: {proc.stderr[-3000:]}"
    return time.monotonic() - t0


def ofctl_lines(*args: str) -> list[str]:
    """ovs-ofctl -O OpenFlow13 output lines without the reply header."""
    out = run("ovs-ofctl", "-O", "OpenFlow13", *args, check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and "reply" not in line]


def host_veths() -> set[str]:
    """Every host end of an endpoint veth on the machine (np + 11 hex), whoever made it."""
    links = json.loads(run("ip", "-j", "link", "show").stdout)
    return {link["ifname"] for link in links if HOST_END_RE.fullmatch(link["ifname"])}


def bridge_of_port(name: str) -> str | None:
    proc = run("ovs-vsctl", "--timeout=10", "port-to-br", name, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def delete_prefix(prefix: str) -> None:
    etcd.delete_prefix(ETCD, prefix + "/")


class Daemon(Plugin):
    """One netplugin daemon on /run/docker/plugins/<driver>.sock: Docker finds it
    as network and IPAM driver <driver>."""

    def __init__(self, tmp: Path, driver: str = "npfb", prefix: str | None = None):
        tag = secrets.token_hex(2)
        super().__init__(tmp, socket=f"{PLUGIN_DIR}/{driver}.sock",
                         prefix=prefix or "/netplugin/fault-b-" + secrets.token_hex(4))
        self.driver = driver
        self.host_id = f"fb-{driver}-{tag}"
        self.bridge = f"npfb-{tag}"
        self.log = tmp / f"netplugin-{self.host_id}.log"
        self.env = settings_env(etcd_endpoints=ETCD, etcd_prefix=self.prefix, host_id=self.host_id,
                                bridge=self.bridge, datapath_type="netdev", socket=self.socket,
                                metrics_address="off")
        self.env["ETCDCTL_API"] = "3"
        self._store: Store | None = None
        self.restarts = 0

    # -- the process ---------------------------------------------------------------------
    def restart_after_kill(self, down: float = 0.0) -> float:
        """kill -9, stay down ``down`` seconds, start again; returns how long the
        socket did not answer."""
        t0 = time.monotonic()
        self.kill9()
        time.sleep(down)
        self.start()
        self.restarts += 1
        return time.monotonic() - t0

    def cleanup(self) -> None:
        """Stop the daemon; remove its bridge and its etcd prefix."""
        self.stop()
        run("ovs-vsctl", "--timeout=20", "--if-exists", "del-br", self.bridge, check=False)
        delete_prefix(self.prefix)
        Path(self.socket).unlink(missing_ok=True)

    # -- Docker ----------------------------------------------------------------------------
    def network(self, name: str, subnet: str, *opts: str) -> str:
        """A Docker network of this driver (and IPAM driver)."""
        args = ["network", "create", "-d", self.driver, "--ipam-driver", self.driver, "--subnet", subnet]
        for opt in opts:
            args += ["-o", opt]
        return docker(*args, name).stdout.strip()

    # -- what this host holds -----------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            cfg = load(overrides={"etcd_endpoints": ETCD, "etcd_prefix": self.prefix, "host_id": self.host_id})
            self._store = make_store(cfg)
        return self._store

    def records(self) -> list:
        """Endpoint records of this host."""
        return [ep for ep in self.store.list_endpoints() if ep.host == self.host_id]

    def allocations(self, subnet: str) -> list:
        """(offset, Allocation) of endpoint addresses claimed by this host."""
        return [(o, a) for o, a in self.store.list_allocations(subnet)
                if a.kind == "endpoint" and a.host == self.host_id]

    def ports(self) -> list[str]:
        """Ports on this daemon's bridge (it has no uplink: every port is an endpoint's)."""
        return self.ovs_ports()

    def flows(self) -> list[str]:
        return ofctl_lines("dump-flows", "--no-stats", self.bridge)

    def endpoint_flows(self) -> list[str]:
        """Flows of endpoints: netplugin's cookies have the top bit set."""
        return [f for f in self.flows() if (m := re.search(r"cookie=(0x[0-9a-f]+)", f)) and int(m.group(1), 16) >> 63]

    def meters(self) -> list[str]:
        """One line per meter: ``meter=5 kbps burst bands= type=drop rate=20000 burst_size=5000``."""
        text = " ".join(ofctl_lines("dump-meters", self.bridge))
        return ["meter=" + block.strip() for block in text.split("meter=")[1:]]

    def loose_veths(self, before: set[str]) -> set[str]:
        """np-veths that appeared since ``before`` and are on no other bridge: ours.
        A veth is on no bridge for a few milliseconds while any daemon makes an
        endpoint, so only what stays loose across two looks a second apart counts."""
        def loose() -> set[str]:
            return {v for v in host_veths() - before if bridge_of_port(v) in (None, self.bridge)}
        first = loose()
        if not first:
            return first
        time.sleep(1)
        return first & loose()

    def own_findings(self, report: dict, veths_before: set[str]) -> list[dict]:
        """The report's findings that concern this daemon. A reconciler takes every
        np-veth of the machine that is neither its record's nor on its bridge for
        a leak of its own; on a machine shared with other test runs those are
        other daemons' (on their bridges, or made while this test ran)."""
        def foreign(f: dict) -> bool:
            name = f["id"]
            return (f["kind"] == "veth_without_endpoint"
                    and (name in veths_before or name not in host_veths()
                         or bridge_of_port(name) not in (None, self.bridge)))
        return [f for f in report["findings"] if not foreign(f)]

    def reconcile(self, *args: str, timeout: float = 180) -> dict:
        return super().reconcile(*args, timeout=timeout)


@contextmanager
def serving(tmp: Path, driver: str, repair: Callable[[], object] = lambda: None) -> Iterator[Daemon]:
    """A started Daemon for a test module. On the way out: ``repair`` (what the
    test broke on purpose), then its containers and networks (the daemon started
    again if it is down: Docker needs it to remove them), bridge and etcd prefix."""
    d = Daemon(tmp, driver)
    d.start()
    try:
        yield d
    finally:
        repair()
        remove_containers()
        if not d.alive():
            d.start()
        remove_networks(driver)
        d.cleanup()


def remove_containers(label: str = LABEL) -> int:
    """docker rm -f every container with the label, in parallel batches; how many."""
    ids = docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
    procs = [subprocess.Popen([DOCKER, "rm", "-f", *ids[i:i + 10]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(0, len(ids), 10)]
    for p in procs:
        p.wait(180)
    return len(ids)


def rm_networks(*names: str, patience: float = 20) -> list[str]:
    """docker network rm, retried a while: Docker may still count an endpoint of a
    container removed a moment ago ("has active endpoints"). Returns the networks
    Docker still refuses to remove although no container is attached to them:
    Docker 20.10's own endpoint count drifts when many containers of one network
    are removed at once, which is not the plugin's state (the caller checks that)."""
    deadline = time.monotonic() + patience
    while True:
        names = tuple(n for n in names if docker("network", "inspect", n, check=False).returncode == 0)
        if not names:
            return []
        proc = docker("network", "rm", *names, check=False)
        if proc.returncode == 0:
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    stuck = []
    for n in names:
        attached = docker("network", "inspect", "-f", "{{len .Containers}}", n, check=False).stdout.strip()
        assert attached == "0", f"docker network rm {n}: {attached} containers still attached: {proc.stderr}"
        stuck.append(n)
    return stuck


def remove_networks(*drivers: str) -> None:
    for driver in drivers:
        for net in docker("network", "ls", "-q", "--filter", f"driver={driver}", check=False).stdout.split():
            docker("network", "rm", net, check=False)
