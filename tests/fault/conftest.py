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
import subprocess
from pathlib import Path

from netplugin.config import Config
from tests.e2e.conftest import DOCKER, IMAGE
from tests.harness import proc
from tests.harness.daemon import Daemon, settings_env
from tests.harness.etcd import ETCD
from tests.harness.proc import free_port

__all__ = ["DOCKER", "ETCD", "IMAGE", "PLUGIN_DIR", "FaultDaemon", "docker", "free_port", "links", "run"]

PLUGIN_DIR = os.path.dirname(Config.socket)      # where Docker looks for plugin sockets
run = proc.run


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], check=check, timeout=timeout)


class FaultDaemon(Daemon):
    """One netplugin daemon serving driver `name` on /run/docker/plugins/<name>.sock.

    Settings come only from the environment given here (NETPLUGIN_CONFIG=/dev/null),
    so /etc/netplugin/netplugin.toml on the machine cannot leak in. The metrics
    port is off unless `metrics` is given."""

    def __init__(self, tmp: Path, name: str, etcd: str = ETCD, prefix: str | None = None,
                 metrics: str = "off", env: dict[str, str] | None = None):
        self.name = name
        self.host_id = f"{name}-" + secrets.token_hex(3)
        self.bridge = name + secrets.token_hex(2)
        self.prefix = prefix or f"/netplugin/fault-{name}-" + secrets.token_hex(4)
        self.etcd = etcd
        socket = f"{PLUGIN_DIR}/{name}.sock"
        super().__init__(socket, tmp / f"{self.host_id}.log", settings_env(
            etcd_endpoints=etcd, etcd_prefix=self.prefix, host_id=self.host_id, bridge=self.bridge,
            datapath_type="netdev", socket=socket, metrics_address=metrics))
        self.env.update(env or {})

    def start(self, within: float = 15) -> float:
        assert not self.answers(), f"{self.socket} is already served"
        return super().start(within)

    def ovs_ports(self) -> list[str]:
        """The bridge's ports but the warm pool's parked ones (np-pool=1), which the daemon keeps."""
        parked = set(run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find", "Port",
                          "external_ids:np-pool=1"], check=False).stdout.split())
        return sorted(p for p in run(["ovs-vsctl", "--timeout=10", "list-ports", self.bridge],
                                     check=False).stdout.split() if p and p not in parked)

    def port_of(self, endpoint_id: str) -> list[str]:
        """The port(s) whose np-endpoint external id is endpoint_id."""
        return sorted(run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find", "Port",
                           f"external_ids:np-endpoint={endpoint_id}"], check=False).stdout.split())

    def remove_bridge(self) -> None:
        run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.bridge], check=False)


def links() -> list[str]:
    """Every network interface name of the host's namespace."""
    return sorted(os.listdir("/sys/class/net"))
