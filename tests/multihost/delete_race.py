"""A network delete racing container starts on both rig hosts (issue #14, item 3).

One round: the same global network made by Docker's calls on both hosts,
then ``starts`` container starts per host (RequestAddress, CreateEndpoint:
a real veth and OVS port; a failed CreateEndpoint releases its address, as
Docker does) while ``netctl network rm`` (networks.remove, the very code
netctl runs, here in-process so its moment can be varied) deletes the
network. Either may win; what must never happen is an endpoint whose network
is gone or an address held twice. Used by test_delete_race.py (small) and
bench/bench_delete_race.py (full size).
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from netplugin.errors import Conflict, NotFound
from netplugin.kv import EtcdKV
from netplugin.networks import remove
from netplugin.store import Store

ADDRESS_SPACE = "netplugin"
SUBNET = "10.233.0.0/24"
VLAN = 333
NAME = "mh-delete-race"


@dataclass
class Round:
    deleted: bool = False
    refused: str = ""
    started: int = 0
    failed_starts: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def call(host, method: str, body: dict) -> tuple[int, dict]:
    return host.call(method, body)


def ok(host, method: str, body: dict) -> dict:
    status, reply = call(host, method, body)
    assert status == 200, f"{host.host_id} {method} -> {status}: {reply}"
    return reply


class HostNet:
    """The network as Docker on one host makes it, and the containers it starts."""

    def __init__(self, host):
        self.host = host
        self.docker_id = secrets.token_hex(32)
        self.pool_id = ok(host, "IpamDriver.RequestPool", {"AddressSpace": ADDRESS_SPACE, "Pool": SUBNET,
                                                           "SubPool": "", "Options": {}, "V6": False})["PoolID"]
        self.gateway = ok(host, "IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
        ok(host, "NetworkDriver.CreateNetwork", {
            "NetworkID": self.docker_id,
            "Options": {"com.docker.network.generic": {"vlan": str(VLAN), "name": NAME}},
            "IPv4Data": [{"AddressSpace": ADDRESS_SPACE, "Pool": SUBNET, "Gateway": self.gateway,
                          "AuxAddresses": {}}], "IPv6Data": []})
        self.endpoints: dict[str, str] = {}
        self.failed = 0
        self.lock = threading.Lock()

    def start_one(self, delay: float) -> None:
        """After delay, RequestAddress then CreateEndpoint; on a refusal the address goes back, as Docker does."""
        time.sleep(delay)
        status, reply = call(self.host, "IpamDriver.RequestAddress", {"PoolID": self.pool_id, "Address": "",
                                                                      "Options": {}})
        if status != 200:
            with self.lock:
                self.failed += 1
            return
        addr, ep = reply["Address"], secrets.token_hex(32)
        status, _ = call(self.host, "NetworkDriver.CreateEndpoint", {
            "NetworkID": self.docker_id, "EndpointID": ep, "Options": {},
            "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
        with self.lock:
            if status == 200:
                self.endpoints[ep] = addr.split("/")[0]
            else:
                self.failed += 1
        if status != 200:
            call(self.host, "IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": addr.split("/")[0]})

    def tear_down(self) -> None:
        for ep, ip in self.endpoints.items():
            call(self.host, "NetworkDriver.DeleteEndpoint", {"NetworkID": self.docker_id, "EndpointID": ep})
            call(self.host, "IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": ip})
        call(self.host, "NetworkDriver.DeleteNetwork", {"NetworkID": self.docker_id})
        call(self.host, "IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": self.gateway.split("/")[0]})
        call(self.host, "IpamDriver.ReleasePool", {"PoolID": self.pool_id})


def store_of(rig) -> Store:
    return Store(EtcdKV([rig.etcd]), rig.prefix)


def invariants(store: Store) -> list[str]:
    """Orphaned endpoints, addresses held twice, allocations without their endpoint."""
    problems = []
    networks = {n.id: n for n in store.list_networks()}
    endpoints = [ep for ep in store.list_endpoints() if ep.ip.startswith("10.233.0.")]
    for ep in endpoints:
        if ep.network not in networks:
            problems.append(f"orphaned endpoint {ep.id[:12]} ({ep.ip} on {ep.host}): network {ep.network} is gone")
    ips = [ep.ip for ep in endpoints]
    problems += [f"address {ip} held by {ips.count(ip)} endpoints" for ip in sorted(set(ips)) if ips.count(ip) > 1]
    ids = {ep.id for ep in endpoints}
    for _, alloc in store.list_allocations(SUBNET):
        if alloc.kind == "endpoint" and alloc.endpoint not in ids:
            problems.append(f"allocation {alloc.ip} of host {alloc.host} without its endpoint")
    return problems


def one_round(rig, starts: int, rng: random.Random) -> Round:
    """One race; the rig is left clean of it whatever happened."""
    store = store_of(rig)
    result = Round()
    nets = [HostNet(rig.a), HostNet(rig.b)]
    pool = ThreadPoolExecutor(2 * starts + 1, thread_name_prefix="race")
    t0 = time.monotonic()
    try:
        # Every start and the delete wait a moment of their own, so the delete
        # lands before, among or after the starts from round to round.
        spread = 0.15
        delays = [rng.uniform(0, spread) for _ in range(2 * starts + 1)]

        def delete() -> None:
            time.sleep(delays[-1])
            try:
                remove(store, NAME)
                result.deleted = True
            except (Conflict, NotFound) as exc:
                result.refused = exc.message
        futures = [pool.submit(delete)]
        futures += [pool.submit(n.start_one, delays[2 * i + k]) for i in range(starts) for k, n in enumerate(nets)]
        for f in futures:
            f.result(timeout=300)
        result.seconds = time.monotonic() - t0
        result.started = sum(len(n.endpoints) for n in nets)
        result.failed_starts = sum(n.failed for n in nets)
        result.problems = invariants(store)
    finally:
        pool.shutdown(wait=True)
        for n in nets:
            n.tear_down()
        with contextlib.suppress(NotFound):
            remove(store, NAME, force=True)
    return result
