"""One pool across hosts: the daemons of host a and host b each create 200
endpoints at the same moment, from one global network, through the protocol
Docker speaks (RequestAddress + CreateEndpoint on each daemon's socket, 8
callers per daemon, as 8 `docker run` at once would). No address may be given
twice, and etcd, netctl and OVS must agree on the result."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.multihost

SUBNET = "10.232.0.0/23"        # 509 usable addresses: 400 endpoints fill it to 79%
VLAN = 300
NAME = "mh-pool"
PER_HOST = 200
CALLERS = 8
ADDRESS_SPACE = "netplugin"


def ok(host, method: str, body: dict) -> dict:
    status, reply = host.call(method, body)
    assert status == 200, f"{host.host_id} {method} -> {status}: {reply}"
    return reply


class HostNet:
    """The network as Docker on one host makes it: RequestPool, the gateway, CreateNetwork."""

    def __init__(self, host):
        self.host = host
        self.docker_id = secrets.token_hex(32)
        self.pool_id = ok(host, "IpamDriver.RequestPool", {"AddressSpace": ADDRESS_SPACE, "Pool": SUBNET,
                                                           "SubPool": "", "Options": {}, "V6": False})["PoolID"]
        self.gateway = ok(host, "IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
        # -o name=: no Docker network of this id exists to be named after.
        ok(host, "NetworkDriver.CreateNetwork", {
            "NetworkID": self.docker_id,
            "Options": {"com.docker.network.generic": {"vlan": str(VLAN), "name": NAME}},
            "IPv4Data": [{"AddressSpace": ADDRESS_SPACE, "Pool": SUBNET, "Gateway": self.gateway,
                          "AuxAddresses": {}}], "IPv6Data": []})
        self.endpoints: dict[str, str] = {}        # endpoint id -> address (a.b.c.d)
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def create_one(self, _i: int) -> None:
        ep = secrets.token_hex(32)
        try:
            addr = ok(self.host, "IpamDriver.RequestAddress", {"PoolID": self.pool_id, "Address": "",
                                                               "Options": {}})["Address"]
            ok(self.host, "NetworkDriver.CreateEndpoint", {
                "NetworkID": self.docker_id, "EndpointID": ep, "Options": {},
                "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
            with self.lock:
                self.endpoints[ep] = addr.split("/")[0]
        except AssertionError as exc:
            with self.lock:
                self.errors.append(str(exc))

    def delete_one(self, item: tuple[str, str]) -> None:
        ep, ip = item
        try:
            ok(self.host, "NetworkDriver.DeleteEndpoint", {"NetworkID": self.docker_id, "EndpointID": ep})
            ok(self.host, "IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": ip})
        except AssertionError as exc:
            with self.lock:
                self.errors.append(str(exc))

    def delete_network(self) -> None:
        ok(self.host, "NetworkDriver.DeleteNetwork", {"NetworkID": self.docker_id})
        ok(self.host, "IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": self.gateway.split("/")[0]})
        ok(self.host, "IpamDriver.ReleasePool", {"PoolID": self.pool_id})


def on_both(nets: list[HostNet], fn_name: str, items_of, callers: int = CALLERS) -> None:
    """Run fn over the items of each host's net, both hosts at once, `callers` threads each."""
    pools = [ThreadPoolExecutor(callers, thread_name_prefix=n.host.host_id) for n in nets]
    try:
        futures = [pool.submit(getattr(n, fn_name), item) for n, pool in zip(nets, pools) for item in items_of(n)]
        for f in futures:
            f.result(timeout=600)
    finally:
        for pool in pools:
            pool.shutdown(wait=True)


def test_two_daemons_never_give_an_address_twice(clean_rig):
    rig = clean_rig
    nets = [HostNet(rig.a), HostNet(rig.b)]
    assert nets[0].gateway == nets[1].gateway
    try:
        # Interleave the submissions so both daemons work from the first moment.
        on_both(nets, "create_one", lambda n: range(PER_HOST))
        errors = nets[0].errors + nets[1].errors
        assert not errors, f"{len(errors)} calls failed, e.g. {errors[:3]}"
        a_ips, b_ips = list(nets[0].endpoints.values()), list(nets[1].endpoints.values())
        assert len(a_ips) == len(b_ips) == PER_HOST
        every = a_ips + b_ips
        dupes = sorted({ip for ip in every if every.count(ip) > 1})
        assert not dupes, f"addresses given twice: {dupes}"
        assert nets[0].gateway.split("/")[0] not in every

        # etcd, netctl and OVS tell the same story.
        usage = rig.a.netctl_json("ipam", "show", NAME)
        assert usage["used"] == 2 * PER_HOST + 1, usage             # + the gateway
        eps = rig.b.netctl_json("endpoint", "ls", "--network", NAME)
        assert len(eps) == 2 * PER_HOST
        assert sorted(e["ip"] for e in eps) == sorted(every)
        for host, net in zip(rig.hosts, nets):
            mine = rig.a.netctl_json("endpoint", "ls", "--network", NAME, "--host", host.host_id)
            assert {e["id"] for e in mine} == set(net.endpoints)
            assert len(host.ports()) == PER_HOST
        info = rig.a.netctl_json("network", "inspect", NAME)[0]
        assert info["hosts"] == ["rig-a", "rig-b"]
    finally:
        for n in nets:
            n.errors.clear()
        on_both(nets, "delete_one", lambda n: list(n.endpoints.items()), callers=16)
        errors = nets[0].errors + nets[1].errors
        for n in nets:
            n.delete_network()
    assert not errors, f"{len(errors)} teardown calls failed, e.g. {errors[:3]}"
    for host in rig.hosts:
        assert host.ports() == []
    # The network was Docker's (origin docker): it went with its last binding.
    assert NAME not in [n["name"] for n in rig.a.netctl_json("network", "ls")]
    assert rig.etcd_keys("net-endpoints/") == [] and rig.etcd_keys("index/endpoint/") == []
    assert rig.etcd_keys("endpoints/") == []
