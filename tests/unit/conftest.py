"""The unit ring's fixture: the real Flask app and every component, built by
``wiring.assemble`` as the daemon builds them, over the fakes in fakes.py
(etcd, the switch, links, flows, Docker); and helpers that speak Docker's
protocol in the order Docker calls it."""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field

import pytest

import netplugin.naming as naming_mod
from netplugin.api import create_app
from netplugin.api.wire import CONTENT_TYPE
from netplugin.config import Config
from netplugin.store import Store
from netplugin.wiring import assemble

from .fakes import (
    FakeDockerNames,
    FakeDockerView,
    FakeFlows,
    FakeLinks,
    FakeSwitch,
    MemoryKV,
)

GATEWAY_TYPE = "com.docker.network.gateway"
GENERIC = "com.docker.network.generic"


def did(label: str) -> str:
    """A realistic Docker id (64 lowercase hex) derived from a label."""
    return hashlib.sha256(label.encode()).hexdigest()


@dataclass
class DockerNet:
    id: str
    pool_id: str
    subnet: str
    gateway: str          # "ip/len", as Docker holds it
    aux: dict = field(default_factory=dict)

    @property
    def gateway_ip(self) -> str:
        return self.gateway.split("/")[0]


@dataclass
class Container:
    endpoint: str
    address: str          # "ip/len"
    create_reply: dict
    join_reply: dict

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


class Harness:
    """One netplugin host: its app, its fakes, and the shared fake etcd."""

    def __init__(self, kv: MemoryKV, host_id: str = "h1", seed: int = 1234):
        self.cfg = Config(host_id=host_id, bridge="nptest0", datapath_type="netdev")
        self.kv = kv
        self.links = FakeLinks()
        self.switch = FakeSwitch()
        self.flows = FakeFlows(self.cfg.bridge)
        self.docker = FakeDockerNames()
        self.view = FakeDockerView()
        self.parts = assemble(self.cfg, Store(kv, self.cfg.etcd_prefix), self.switch, self.links, self.flows,
                              self.docker, self.view, rng=random.Random(seed))
        self.store, self.ipam, self.namer = self.parts.store, self.parts.ipam, self.parts.namer
        self.networks, self.endpoints, self.bridge = self.parts.networks, self.parts.endpoints, self.parts.bridge
        self.limits, self.arp, self.background = self.parts.limits, self.parts.arp, self.parts.background
        self.parts.view.start()
        self.app = create_app(self.parts)
        self.client = self.app.test_client()
        self._n = 0

    # -- raw protocol -----------------------------------------------------------
    # Calls that leave work to the background thread right after they answer
    # (the sandbox record after Join, the veth after DeleteEndpoint): the harness waits
    # for it, so that tests look at the state those calls lead to.
    SETTLES = ("NetworkDriver.Join", "NetworkDriver.DeleteEndpoint")

    def post(self, method: str, body=None, *, data: bytes | str | None = None, content_type="application/json"):
        payload = data if data is not None else json.dumps({} if body is None else body)
        resp = self.client.post("/" + method, data=payload, content_type=content_type,
                                headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        if method in self.SETTLES:
            self.settle()
        else:
            self.sync()
        return resp

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until the background thread has done what was queued so far,
        and this host's view of etcd has caught up."""
        self.background.drain(timeout)
        self.sync(timeout)

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until this host's view equals the fake etcd (the ARP proxy and
        the limit sync read the view, kept by watches)."""
        if self.kv.down:
            return
        calls = len(self.kv.calls)          # the harness's own reads are not the code's
        stop = time.monotonic() + timeout
        while not self.parts.view.in_step():
            assert time.monotonic() < stop, "the host's view of etcd did not catch up"
            time.sleep(0.005)
        del self.kv.calls[calls:]

    def ok(self, method: str, body=None) -> dict:
        resp = self.post(method, body)
        assert resp.status_code == 200, f"{method}: {resp.status_code} {resp.get_data(as_text=True)}"
        assert resp.mimetype == CONTENT_TYPE
        out = resp.get_json()
        assert isinstance(out, dict)
        assert not out.get("Err") and not out.get("Error"), out
        return out

    def fail(self, method: str, body=None, status: int | None = None, *, data=None) -> str:
        """Assert an error reply (4xx/5xx, Err == Error, non-empty); return the message."""
        resp = self.post(method, body, data=data)
        assert 400 <= resp.status_code < 600, f"{method}: expected an error, got {resp.status_code} " \
                                              f"{resp.get_data(as_text=True)}"
        if status is not None:
            assert resp.status_code == status, f"{method}: {resp.status_code} {resp.get_data(as_text=True)}"
        assert resp.mimetype == CONTENT_TYPE
        out = json.loads(resp.get_data(as_text=True))
        assert isinstance(out.get("Err"), str) and out["Err"].strip(), out
        assert isinstance(out.get("Error"), str) and out["Error"].strip(), out
        assert out["Err"] == out["Error"]
        return out["Err"]

    # -- Docker's call sequences --------------------------------------------------
    def new_id(self, kind: str) -> str:
        self._n += 1
        return did(f"{self.cfg.host_id}-{kind}-{self._n}")

    def request_pool(self, subnet: str, ip_range: str = "") -> dict:
        return self.ok("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": subnet,
                                                  "SubPool": ip_range, "Options": {}, "V6": False})

    def request_gateway(self, pool_id: str, address: str = "") -> dict:
        return self.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": address,
                                                     "Options": {"RequestAddressType": GATEWAY_TYPE}})

    def create_network_body(self, docker_net: str, subnet: str, gateway: str, vlan=100, name="prod",
                            aux=None, extra=None) -> dict:
        generic = {}
        if vlan is not None:
            generic["vlan"] = str(vlan)
        if name is not None:
            generic["name"] = name
        generic.update(extra or {})
        return {"NetworkID": docker_net,
                "Options": {GENERIC: generic, "com.docker.network.enable_ipv6": False},
                "IPv4Data": [{"AddressSpace": "netplugin", "Pool": subnet, "Gateway": gateway,
                              "AuxAddresses": aux or {}}],
                "IPv6Data": []}

    def create_network(self, subnet: str = "10.10.0.0/24", vlan=100, name="prod", gateway: str = "",
                       ip_range: str = "", aux: dict | None = None, docker_net: str | None = None) -> DockerNet:
        """docker network create -d netplugin --ipam-driver netplugin --subnet ... -o vlan=... -o name=..."""
        docker_net = docker_net or self.new_id("net")
        pool = self.request_pool(subnet, ip_range)
        gw = pool["Data"].get(GATEWAY_TYPE)
        if gw is None:
            gw = self.request_gateway(pool["PoolID"], gateway)["Address"]
        for ip in (aux or {}).values():
            self.ok("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ip, "Options": None})
        self.ok("NetworkDriver.CreateNetwork",
                self.create_network_body(docker_net, pool["Pool"], gw, vlan, name, aux))
        return DockerNet(docker_net, pool["PoolID"], pool["Pool"], gw, dict(aux or {}))

    def remove_network(self, net: DockerNet) -> None:
        """docker network rm: DeleteNetwork, release gateway and aux, ReleasePool."""
        self.ok("NetworkDriver.DeleteNetwork", {"NetworkID": net.id})
        self.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": net.gateway_ip})
        for ip in net.aux.values():
            self.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": ip})
        self.ok("IpamDriver.ReleasePool", {"PoolID": net.pool_id})

    def endpoint_body(self, net: DockerNet, endpoint: str, address: str, mac: str = "") -> dict:
        return {"NetworkID": net.id, "EndpointID": endpoint,
                "Options": {"com.docker.network.endpoint.exposedports": [],
                            "com.docker.network.portmap": []},
                "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac}}

    def run_container(self, net: DockerNet, ip: str = "", mac: str = "", endpoint: str | None = None) -> Container:
        """docker run --network ...: RequestAddress, CreateEndpoint, Join."""
        endpoint = endpoint or self.new_id("ep")
        address = self.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ip, "Options": {}})["Address"]
        created = self.ok("NetworkDriver.CreateEndpoint", self.endpoint_body(net, endpoint, address, mac))
        joined = self.ok("NetworkDriver.Join", {"NetworkID": net.id, "EndpointID": endpoint,
                                                "SandboxKey": f"/var/run/docker/netns/{endpoint[:12]}",
                                                "Options": {}})
        return Container(endpoint, address, created, joined)

    def stop_container(self, net: DockerNet, c: Container) -> None:
        """docker rm: Leave, DeleteEndpoint, ReleaseAddress."""
        ids = {"NetworkID": net.id, "EndpointID": c.endpoint}
        self.ok("NetworkDriver.Leave", ids)
        self.ok("NetworkDriver.DeleteEndpoint", ids)
        self.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})

    # -- looking at state ----------------------------------------------------------
    def allocation(self, subnet: str, ip: str):
        import netaddr
        offset = int(netaddr.IPAddress(ip)) - netaddr.IPNetwork(subnet).first
        got = self.store.get_allocation(subnet, offset)
        return got[0] if got else None


@pytest.fixture
def kv() -> MemoryKV:
    return MemoryKV()


@pytest.fixture
def np(monkeypatch, kv) -> Harness:
    """Host h1 over a fresh fake etcd. The background namer of Docker-made
    networks is made to give up at once so it never races a test; tests of
    the namer turn it back on."""
    monkeypatch.setattr(naming_mod, "NAMING_PATIENCE", 0.0)
    h = Harness(kv, "h1")
    yield h
    h.parts.view.close()


@pytest.fixture
def np2(np) -> Harness:
    """A second host, h2, sharing h1's etcd."""
    h = Harness(np.kv, "h2", seed=99)
    yield h
    h.parts.view.close()
