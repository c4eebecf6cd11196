"""A fleet of simulated hosts over one real etcd: the core of bench/bench_fleet.py
and of the integration ring's small simulation.

Each simulated host runs the product's own host-side code, built by
``wiring.assemble`` as the daemon builds it (its view of etcd with its
list-and-watch caches, heartbeat, ARP proxy and limit sync, IPAM), over the
in-memory switch of the unit ring (FakeSwitch, FakeFlows, FakeLinks: they pass
the same contract suites as the real switch). There is no Docker: endpoints
are written by the product's IPAM and ``Store.create_endpoint``, as
CreateEndpoint writes them, without veths.

Hosts share an etcd client (one ``EtcdKV``, one gRPC channel and watch
stream) per group of ``group`` hosts: a client per host would be a thousand
channels in one process, one client for all would put every watch of the
fleet on one stream, which a real fleet never does.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import netaddr

from netplugin.config import Config
from netplugin.dataplane.flows import KIND_ARP_LOCAL, TABLE_ARP, cookie_for
from netplugin.kv import EtcdKV
from netplugin.model import Binding, Endpoint, Network, Profile
from netplugin.networks import create as create_network
from netplugin.store import Store
from netplugin.wiring import Components, assemble
from tests.unit.fakes import FakeDockerNames, FakeFlows, FakeLinks, FakeSwitch

BRIDGE = "npsim0"
PROFILE = "sim-gold"


def hex64() -> str:
    return secrets.token_hex(32)


def mac_of(ip: str) -> str:
    return "02:42:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


@dataclass
class SimEndpoint:
    ep: Endpoint
    subnet: str
    offset: int


class SimHost:
    """One host: the product's components over an in-memory switch."""

    def __init__(self, host_id: str, store: Store, prefix: str):
        self.host_id = host_id
        self.cfg = Config(host_id=host_id, bridge=BRIDGE, datapath_type="netdev", etcd_prefix=prefix)
        self.switch = FakeSwitch()
        self.switch.ensure_bridge(BRIDGE, "netdev")
        self.flows = FakeFlows(BRIDGE)
        self.parts: Components = assemble(self.cfg, store, self.switch, FakeLinks(), self.flows,
                                           FakeDockerNames(), None, rng=random.Random(host_id))
        self.store = store
        self.networks: list[Network] = []
        self.local: list[SimEndpoint] = []
        self.started = False

    def start(self) -> None:
        self.parts.view.start()
        self.parts.heartbeat.start()
        self.parts.arp.start()
        self.parts.limits.start()
        self.started = True

    def close(self) -> None:
        for part in (self.parts.arp, self.parts.limits):
            part.close()
        self.parts.view.close()
        with contextlib.suppress(Exception):    # the lease lapses on its own when etcd is gone
            self.parts.heartbeat.keeper.stop(wait=2)

    def has_answer(self, endpoint_id: str) -> bool:
        return cookie_for(endpoint_id, KIND_ARP_LOCAL) in self.flows.tables.get(TABLE_ARP, {})

    def answers(self) -> int:
        return len(self.flows.tables.get(TABLE_ARP, {}))

    def meter_rate(self, port: str) -> int | None:
        ofport = self.switch.ofport(port)
        band = self.flows.bands.get(ofport) if ofport else None
        return band[0] if band and ofport in self.flows.meter_ports else None

    # -- writing, as the daemon does -------------------------------------------------
    def bind(self, net: Network) -> None:
        self.store.put_binding(Binding(docker_network=hex64(), network=net.id, host=self.host_id, pool=net.subnet))
        self.networks.append(net)

    def new_endpoint(self, net: Network, limited: bool = False) -> SimEndpoint:
        """Allocate an address through the product's IPAM and write the endpoint
        (CreateEndpoint's transaction), with its port on the in-memory switch."""
        subnet = netaddr.IPNetwork(net.subnet)
        ip = self.parts.ipam.allocate(subnet, [subnet], net).split("/")[0]
        offset = int(netaddr.IPAddress(ip)) - subnet.first
        held = self.store.get_allocation(net.subnet, offset)
        assert held is not None, f"{ip} was allocated but holds no record"
        alloc, rev = held
        eid = hex64()
        port, peer = f"vnp{eid[:10]}", f"vnq{eid[:10]}"
        ep = Endpoint(id=eid, network=net.id, docker_network=hex64(), host=self.host_id, ip=ip,
                      prefixlen=subnet.prefixlen, mac=mac_of(ip), port=port, peer=peer, vlan=net.vlan,
                      network_name=net.label, limit={"profile": PROFILE} if limited else {})
        self.switch.add_access_port(BRIDGE, port, net.vlan, {"np-endpoint": eid})
        alloc.endpoint, alloc.network = eid, net.id
        if not self.store.create_endpoint(ep, net.subnet, offset, rev, alloc):
            raise RuntimeError(f"endpoint {eid[:12]} at {ip} was refused")
        sim = SimEndpoint(ep, net.subnet, offset)
        self.local.append(sim)
        return sim

    def release(self, sim: SimEndpoint) -> None:
        """The endpoint goes and its address is released (DeleteEndpoint, ReleaseAddress)."""
        self.store.delete_endpoint(sim.ep.id)
        held = self.store.get_allocation(sim.subnet, sim.offset)
        if held is not None:
            self.store.release_address(sim.subnet, sim.offset, held[1])
        self.switch.delete_port(sim.ep.port)
        self.local.remove(sim)


@dataclass
class Fleet:
    """N hosts, M networks (one per ``hosts_per_net`` hosts), E endpoints per host."""

    endpoints: str                      # etcd client URLs, comma-separated
    hosts: int
    per_host: int = 50
    hosts_per_net: int = 10
    group: int = 25
    prefix: str = field(default_factory=lambda: f"/np-fleet-{secrets.token_hex(4)}/v1")
    octet: int = 0                      # subnets 10.<octet+i>.0.0/16 (default: random 100-190)
    vlan_base: int = 3000
    seed: int = 15
    sims: list[SimHost] = field(default_factory=list)
    nets: list[Network] = field(default_factory=list)
    kvs: list[EtcdKV] = field(default_factory=list)

    def kv(self) -> EtcdKV:
        kv = EtcdKV(self.endpoints.split(","), timeout=10.0)
        self.kvs.append(kv)
        return kv

    def build(self) -> None:
        """Networks, hosts, bindings (each host binds 1 or 2 networks) and the
        local endpoints, written from the hosts' own IPAM; nothing started."""
        rnd = random.Random(self.seed)
        base = self.octet or rnd.randrange(100, 190)
        loader = Store(self.kv(), self.prefix)
        loader.put_profile(Profile(PROFILE, 10_000, 1_000), create=True)
        count = max(1, -(-self.hosts // self.hosts_per_net))
        for i in range(count):
            self.nets.append(create_network(loader, f"sim-net-{i}", self._subnet(base, i), self.vlan_base + i))
        store: Store | None = None
        for h in range(self.hosts):
            if h % self.group == 0:
                store = Store(self.kv(), self.prefix)
            assert store is not None
            sim = SimHost(f"sim-{h:04d}", store, self.prefix)
            first = self.nets[h // self.hosts_per_net % count]
            sim.bind(first)
            if rnd.random() < 0.5 and count > 1:
                sim.bind(self.nets[(h // self.hosts_per_net + 1) % count])
            self.sims.append(sim)
        self.load()

    @staticmethod
    def _subnet(base: int, i: int) -> str:
        """A /20 (4,094 addresses) per network, 16 per /16."""
        return f"10.{(base + i // 16) % 250}.{i % 16 * 16}.0/20"

    def load(self) -> None:
        """E endpoints per host, spread over its networks, the first one limited by the profile."""
        def one(sim: SimHost) -> None:
            for k in range(self.per_host):
                sim.new_endpoint(sim.networks[k % len(sim.networks)], limited=k == 0)
        parallel([lambda s=sim: one(s) for sim in self.sims], workers=16)

    def start(self, sims: list[SimHost] | None = None) -> None:
        for sim in sims or self.sims:
            sim.start()

    def ready(self, timeout: float) -> bool:
        """Every host's view has its first reads in and its ARP proxy holds an
        answer for every endpoint of its networks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.parts.view.ready() and s.answers() >= self.expected_answers(s) for s in self.sims):
                return True
            time.sleep(0.2)
        return False

    def expected_answers(self, sim: SimHost) -> int:
        nets = {n.id for n in sim.networks}
        return sum(1 for s in self.sims for e in s.local if e.ep.network in nets)

    def foreign(self) -> int:
        """Endpoints held by a host's view that belong to a network it has not
        bound (per-host interest says none: a watch told the wrong cache)."""
        return sum(1 for s in self.sims for ep in s.parts.view.endpoints()
                   if ep.network not in {n.id for n in s.networks})

    def interested(self, net_id: str) -> list[SimHost]:
        return [s for s in self.sims if any(n.id == net_id for n in s.networks)]

    def close(self) -> None:
        for sim in self.sims:
            sim.close()
        for kv in self.kvs:
            with contextlib.suppress(Exception):    # closing a client of a cluster already gone
                kv.close()


def parallel(jobs: list, workers: int = 16) -> list:
    """Run callables on ``workers`` threads; returns their results, re-raising the first error."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = iter(enumerate(jobs))

    def work() -> None:
        while True:
            with lock:
                nxt = next(todo, None)
            if nxt is None or errors:
                return
            i, job = nxt
            try:
                results[i] = job()
            except BaseException as exc:  # noqa: BLE001  handed to the caller below
                with lock:
                    errors.append(exc)
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# -- measuring ----------------------------------------------------------------------------

def convergence(fleet: Fleet, sim: SimHost, net: Network, timeout: float = 10.0) -> tuple[SimEndpoint, dict]:
    """Write a new endpoint on sim and time, from the write's return, until
    each host bound to its network holds its ARP answer. Returns the endpoint
    and host id -> seconds (None: not within timeout)."""
    hosts = [s for s in fleet.interested(net.id) if s.started]
    t0 = time.monotonic()
    new = sim.new_endpoint(net)
    t0 = time.monotonic()
    got: dict[str, float | None] = {s.host_id: None for s in hosts}
    while time.monotonic() - t0 < timeout and any(v is None for v in got.values()):
        for s in hosts:
            if got[s.host_id] is None and s.has_answer(new.ep.id):
                got[s.host_id] = time.monotonic() - t0
        time.sleep(0.002)
    return new, got


def profile_convergence(fleet: Fleet, rate: int, timeout: float = 15.0) -> dict:
    """Change the profile's rate and time until each host with a limited
    endpoint has the new rate on its meter: host id -> seconds or None."""
    limited = [(s, e) for s in fleet.sims if s.started for e in s.local if e.ep.limit]
    fleet.sims[0].store.put_profile(Profile(PROFILE, rate, 1_000), create=False)
    t0 = time.monotonic()
    got: dict[str, float | None] = {f"{s.host_id}/{e.ep.id[:8]}": None for s, e in limited}
    while time.monotonic() - t0 < timeout and any(v is None for v in got.values()):
        for s, e in limited:
            key = f"{s.host_id}/{e.ep.id[:8]}"
            if got[key] is None and s.meter_rate(e.ep.port) == rate:
                got[key] = time.monotonic() - t0
        time.sleep(0.005)
    return got


def allocate_together(fleet: Fleet, per_host: int, subnet: str = "") -> dict:
    """Every host allocates per_host addresses from ONE pool at the same time,
    through its own IPAM; returns the rate and the duplicates found (addresses
    handed out twice, and allocation keys not held exactly once)."""
    loader = fleet.sims[0].store
    net = create_network(loader, "sim-shared", subnet or f"10.{random.randrange(191, 250)}.0.0/16", fleet.vlan_base
                         + 999)
    cidr = netaddr.IPNetwork(net.subnet)
    start = threading.Barrier(len(fleet.sims))

    def run(sim: SimHost) -> list[str]:
        start.wait(60)
        return [sim.parts.ipam.allocate(cidr, [cidr], net).split("/")[0] for _ in range(per_host)]
    t0 = time.monotonic()
    got = parallel([lambda s=sim: run(s) for sim in fleet.sims], workers=len(fleet.sims))
    took = time.monotonic() - t0
    ips = [ip for chunk in got for ip in chunk]
    held = [a.ip for _, a in loader.list_allocations(net.subnet) if a.kind == "endpoint"]
    return {"allocations": len(ips), "seconds": took, "per_second": len(ips) / took if took else None,
            "duplicates": len(ips) - len(set(ips)), "held": len(held), "held_twice": len(held) - len(set(held)),
            "unheld": len(set(ips) - set(held))}


def metrics(url: str) -> dict[str, float]:
    """An etcd member's /metrics, summed by metric name (labels dropped)."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_part, _, value = line.rpartition(" ")
            name = name_part.split("{")[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
    return out


def cluster_metrics(urls: list[str]) -> dict[str, float]:
    """Sums over the members of what the benchmark reads."""
    names = ("etcd_network_client_grpc_sent_bytes_total", "etcd_network_client_grpc_received_bytes_total",
             "etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_watcher_total",
             "etcd_debugging_mvcc_watch_stream_total")
    total = dict.fromkeys(names, 0.0)
    for url in urls:
        m = metrics(url)
        for name in names:
            total[name] += m.get(name, 0.0)
    return total


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int | str = "self") -> int:
    """Resident memory of a process, bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]
