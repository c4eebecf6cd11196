"""A fleet of simulated hosts over one real etcd: the core of bench/bench_fleet.py
and of the integration ring's small simulation.

Each simulated host runs the product's own host-side code, built by
``wiring.assemble`` as the daemon builds it (its view of etcd with its
list-and-watch caches, heartbeat, ARP proxy and limit sync, IPAM), over the
in-memory switch of the unit ring (FakeSwitch, FakeFlows, FakeLinks: they pass
the same contract suites as the real switch). There is no Docker: endpoints
are written by the product's IPAM and ``Store.create_endpoint``, as
CreateEndpoint writes them, without veths.

Hosts are split into ``workers`` processes (0: all in this one), each a
``HostGroup``: a thousand hosts' threads on one interpreter would measure the
interpreter, not the product. Inside a group, hosts share an etcd client (one
``EtcdKV``: one gRPC channel and watch stream) per ``group`` hosts: a client
per host would be a thousand channels, one client for all would put every
watch on one stream, which a real fleet never does. Times taken in different
processes are compared on CLOCK_MONOTONIC, one clock for the whole machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import secrets
import threading
import time
import traceback
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

    def bound(self, net_id: str) -> bool:
        return any(n.id == net_id for n in self.networks)

    # -- writing, as the daemon does -------------------------------------------------
    def bind(self, net: Network) -> None:
        self.store.put_binding(Binding(docker_network=hex64(), network=net.id, host=self.host_id, pool=net.subnet))
        self.networks.append(net)

    def new_endpoint(self, net: Network, limited: bool = False, eid: str = "") -> SimEndpoint:
        """Allocate an address through the product's IPAM and write the endpoint
        (CreateEndpoint's transaction), with its port on the in-memory switch."""
        subnet = netaddr.IPNetwork(net.subnet)
        ip = self.parts.ipam.allocate(subnet, [subnet], net).split("/")[0]
        offset = int(netaddr.IPAddress(ip)) - subnet.first
        held = self.store.get_allocation(net.subnet, offset)
        assert held is not None, f"{ip} was allocated but holds no record"
        alloc, rev = held
        eid = eid or hex64()
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
class GroupSpec:
    """What one group of hosts is: its hosts (id and the indexes of the
    networks it binds) and what they need to reach etcd."""

    endpoints: str
    prefix: str
    nets: list[Network]
    hosts: list[tuple[str, list[int]]]
    per_host: int
    group: int


class HostGroup:
    """Some of the fleet's hosts, in one process. Every method is what the
    coordinator asks of a group; results are plain data."""

    def __init__(self, spec: GroupSpec):
        self.spec = spec
        self.kvs: list[EtcdKV] = []
        self.sims: list[SimHost] = []
        self._armed: dict[str, dict[str, float | None]] = {}
        self._meters: dict[str, float | None] = {}
        self._rss0 = proc_rss()
        store: Store | None = None
        for i, (host_id, nets) in enumerate(spec.hosts):
            if i % spec.group == 0:
                kv = EtcdKV(spec.endpoints.split(","), timeout=10.0)
                self.kvs.append(kv)
                store = Store(kv, spec.prefix)
            assert store is not None
            sim = SimHost(host_id, store, spec.prefix)
            for n in nets:
                sim.bind(spec.nets[n])
            self.sims.append(sim)
        self._by_id = {s.host_id: s for s in self.sims}

    def load(self) -> int:
        """E endpoints per host, spread over its networks, the first one limited by the profile."""
        def one(sim: SimHost) -> None:
            for k in range(self.spec.per_host):
                sim.new_endpoint(sim.networks[k % len(sim.networks)], limited=k == 0)
        parallel([lambda s=sim: one(s) for sim in self.sims], workers=8)
        return sum(len(s.local) for s in self.sims)

    def counts(self) -> dict[str, int]:
        """network id -> this group's endpoints on it."""
        out: dict[str, int] = {}
        for s in self.sims:
            for e in s.local:
                out[e.ep.network] = out.get(e.ep.network, 0) + 1
        return out

    def start(self, interval: float = 0.0) -> None:
        """Start every host, ``interval`` seconds apart (a fleet coming up, not one instant)."""
        self._rss0 = proc_rss()
        for sim in self.sims:
            sim.start()
            if interval:
                time.sleep(interval)

    def ready(self, per_net: dict[str, int]) -> int:
        """How many of this group's hosts have their view in and an answer for every endpoint of their networks."""
        return sum(1 for s in self.sims if s.parts.view.ready()
                   and s.answers() >= sum(per_net.get(n.id, 0) for n in s.networks))

    def interested(self, net_id: str) -> list[str]:
        return [s.host_id for s in self.sims if s.bound(net_id)]

    def hosts(self) -> list[tuple[str, list[str]]]:
        return [(s.host_id, [n.id for n in s.networks]) for s in self.sims]

    def foreign(self) -> int:
        """Endpoints held by a host's view that belong to a network it has not
        bound (per-host interest says none: a watch told the wrong cache)."""
        return sum(1 for s in self.sims for ep in s.parts.view.endpoints() if not s.bound(ep.network))

    def holders(self, endpoint_id: str) -> list[str]:
        """This group's hosts that hold endpoint_id's ARP answer."""
        return [s.host_id for s in self.sims if s.has_answer(endpoint_id)]

    def answers_ok(self, per_net: dict[str, int]) -> bool:
        return all(s.answers() == sum(per_net.get(n.id, 0) for n in s.networks) for s in self.sims)

    # -- convergence: armed before the write, collected after --------------------------------
    def arm(self, endpoint_id: str, net_id: str, until: float) -> int:
        """Watch (every 2 ms, until the monotonic time ``until``) for the answer
        of endpoint_id on this group's started hosts bound to net_id."""
        hosts = [s for s in self.sims if s.started and s.bound(net_id)]
        got: dict[str, float | None] = {s.host_id: None for s in hosts}
        self._armed[endpoint_id] = got

        def poll() -> None:
            while time.monotonic() < until and any(v is None for v in got.values()):
                for s in hosts:
                    if got[s.host_id] is None and s.has_answer(endpoint_id):
                        got[s.host_id] = time.monotonic()
                time.sleep(0.002)
        threading.Thread(target=poll, daemon=True).start()
        return len(hosts)

    def collect(self, endpoint_id: str, until: float) -> dict[str, float | None]:
        """Host id -> monotonic arrival time (None: not by ``until``)."""
        got = self._armed[endpoint_id]
        while time.monotonic() < until and any(v is None for v in got.values()):
            time.sleep(0.01)
        return dict(self._armed.pop(endpoint_id))

    def new_endpoint(self, host_id: str, net_id: str, endpoint_id: str = "", limited: bool = False) -> float:
        """Write a new endpoint on host_id; the monotonic time the write returned."""
        sim = self._by_id[host_id]
        sim.new_endpoint(next(n for n in sim.networks if n.id == net_id), limited, endpoint_id)
        return time.monotonic()

    def arm_meters(self, rate: int, until: float) -> int:
        limited = [(s, e) for s in self.sims if s.started for e in s.local if e.ep.limit]
        got = self._meters = {f"{s.host_id}/{e.ep.id[:8]}": None for s, e in limited}

        def poll() -> None:
            while time.monotonic() < until and any(v is None for v in got.values()):
                for s, e in limited:
                    key = f"{s.host_id}/{e.ep.id[:8]}"
                    if got[key] is None and s.meter_rate(e.ep.port) == rate:
                        got[key] = time.monotonic()
                time.sleep(0.005)
        threading.Thread(target=poll, daemon=True).start()
        return len(got)

    def collect_meters(self, until: float) -> dict[str, float | None]:
        while time.monotonic() < until and any(v is None for v in self._meters.values()):
            time.sleep(0.01)
        return dict(self._meters)

    def churn_one(self, seed: int) -> None:
        """A new endpoint on a random host of the group and the release of one of its old ones."""
        rnd = random.Random(seed)
        sim = rnd.choice([s for s in self.sims if s.local])
        sim.new_endpoint(rnd.choice(sim.networks))
        sim.release(rnd.choice([e for e in sim.local if not e.ep.limit]))

    def allocate(self, net: Network, per_host: int, start_at: float, callers: int = 0) -> list[str]:
        """Every host allocates per_host addresses from net from the monotonic
        time start_at on, ``callers`` hosts of the group at a time (0: all at
        once, a thread each)."""
        cidr = netaddr.IPNetwork(net.subnet)

        def run(sim: SimHost) -> list[str]:
            time.sleep(max(0.0, start_at - time.monotonic()))
            return [sim.parts.ipam.allocate(cidr, [cidr], net).split("/")[0] for _ in range(per_host)]
        got = parallel([lambda s=sim: run(s) for sim in self.sims],
                       workers=min(len(self.sims), callers) if callers else len(self.sims))
        return [ip for chunk in got for ip in chunk]

    def usage(self) -> dict:
        return {"rss_delta": proc_rss() - self._rss0, "threads": threading.active_count()}

    def close(self) -> None:
        for sim in self.sims:
            sim.close()
        close_clients(self.kvs)


def _serve(spec: GroupSpec, conn) -> None:
    """A worker process: build the group, then run what the coordinator asks."""
    try:
        group: HostGroup | None = HostGroup(spec)
        conn.send(("ok", os.getpid()))
    except Exception:  # noqa: BLE001  sent to the coordinator, which raises it
        conn.send(("err", traceback.format_exc()))
        return
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            method, args = "close", ()
        try:
            result = getattr(group, method)(*args)
            conn.send(("ok", result))
        except Exception:  # noqa: BLE001  sent to the coordinator, which raises it
            conn.send(("err", traceback.format_exc()))
        if method == "close":
            group = None
            return


class _Remote:
    """A HostGroup in a worker process."""

    def __init__(self, spec: GroupSpec):
        ctx = multiprocessing.get_context("spawn")      # no fork of a process holding gRPC threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(spec, child), daemon=True)
        self.proc.start()
        self.pid = self.recv()

    def send(self, method: str, *args) -> None:
        self.conn.send((method, args))

    def recv(self):
        kind, value = self.conn.recv()
        if kind == "err":
            raise RuntimeError(f"fleet worker {self.proc.pid}:\n{value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):    # a worker already gone
            self.send("close")
            self.recv()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


class _Local:
    """A HostGroup in this process, behind the same send/recv."""

    def __init__(self, spec: GroupSpec):
        self.group = HostGroup(spec)
        self.pid = os.getpid()
        self._result = None

    def send(self, method: str, *args) -> None:
        self._result = getattr(self.group, method)(*args)

    def recv(self):
        return self._result

    def close(self) -> None:
        self.group.close()


@dataclass
class Fleet:
    """N hosts, M networks (one per ``hosts_per_net`` hosts), E endpoints per
    host, in ``workers`` processes (0: this one)."""

    endpoints: str                      # etcd client URLs, comma-separated
    hosts: int
    per_host: int = 50
    hosts_per_net: int = 10
    group: int = 25
    workers: int = 0
    prefix: str = field(default_factory=lambda: f"/np-fleet-{secrets.token_hex(4)}/v1")
    octet: int = 0                      # subnets 10.<octet+i>.0.0/16 (default: random 100-190)
    vlan_base: int = 3000
    seed: int = 15
    nets: list[Network] = field(default_factory=list)
    parts: list = field(default_factory=list)
    layout: list[tuple[str, list[str]]] = field(default_factory=list)    # host id -> network ids
    owner: dict[str, int] = field(default_factory=dict)                 # host id -> its part
    per_net: dict[str, int] = field(default_factory=dict)               # network id -> endpoints on it
    store: Store | None = None
    kvs: list[EtcdKV] = field(default_factory=list)

    def build(self) -> None:
        """Networks, hosts, bindings (each host binds 1 or 2 networks) and the
        local endpoints, written from the hosts' own IPAM; nothing started."""
        rnd = random.Random(self.seed)
        base = self.octet or rnd.randrange(100, 190)
        kv = EtcdKV(self.endpoints.split(","), timeout=10.0)
        self.kvs.append(kv)
        self.store = Store(kv, self.prefix)
        self.store.put_profile(Profile(PROFILE, 10_000, 1_000), create=True)
        count = max(1, -(-self.hosts // self.hosts_per_net))
        for i in range(count):
            self.nets.append(create_network(self.store, f"sim-net-{i}", self._subnet(base, i), self.vlan_base + i))
        hosts: list[tuple[str, list[int]]] = []
        for h in range(self.hosts):
            nets = [h // self.hosts_per_net % count]
            if rnd.random() < 0.5 and count > 1:
                nets.append((h // self.hosts_per_net + 1) % count)
            hosts.append((f"sim-{h:04d}", nets))
        n_parts = max(1, self.workers)
        size = -(-len(hosts) // n_parts)
        specs = [GroupSpec(self.endpoints, self.prefix, self.nets, hosts[i:i + size], self.per_host, self.group)
                 for i in range(0, len(hosts), size)]
        make = _Remote if self.workers else _Local
        self.parts = parallel([lambda s=spec: make(s) for spec in specs], workers=len(specs))
        for i, spec in enumerate(specs):
            for host_id, _ in spec.hosts:
                self.owner[host_id] = i
        self.layout = [h for chunk in self.all("hosts") for h in chunk]
        self.all("load")
        self.per_net = {}
        for counts in self.all("counts"):
            for net_id, n in counts.items():
                self.per_net[net_id] = self.per_net.get(net_id, 0) + n

    @staticmethod
    def _subnet(base: int, i: int) -> str:
        """A /20 (4,094 addresses) per network, 16 per /16."""
        return f"10.{(base + i // 16) % 250}.{i % 16 * 16}.0/20"

    def all(self, method: str, *args) -> list:
        """Ask every part at once; their answers, in order."""
        for part in self.parts:
            part.send(method, *args)
        return [part.recv() for part in self.parts]

    def pids(self) -> list[int]:
        return [p.pid for p in self.parts]

    def start(self, per_second: float = 0.0) -> None:
        """Start every host, ``per_second`` hosts a second across the fleet (0: all at once)."""
        self.all("start", len(self.parts) / per_second if per_second else 0.0)

    def ready(self, timeout: float) -> bool:
        """Every host's view has its first reads in and its ARP proxy holds an
        answer for every endpoint of its networks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(self.all("ready", self.per_net)) == self.hosts:
                return True
            time.sleep(0.2)
        return False

    def interested(self, net_id: str) -> list[str]:
        return [h for h, nets in self.layout if net_id in nets]

    def networks_of(self, host_id: str) -> list[str]:
        return next(nets for h, nets in self.layout if h == host_id)

    def foreign(self) -> int:
        return sum(self.all("foreign"))

    def leaked(self, endpoint_id: str, net_id: str) -> list[str]:
        """Hosts holding endpoint_id's answer that are not bound to its network net_id."""
        bound = set(self.interested(net_id))
        return [h for chunk in self.all("holders", endpoint_id) for h in chunk if h not in bound]

    def answers_ok(self) -> bool:
        return all(self.all("answers_ok", self.per_net))

    def close(self) -> None:
        for part in self.parts:
            part.close()
        close_clients(self.kvs)


def close_clients(kvs: list[EtcdKV]) -> None:
    for kv in kvs:
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
    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# -- measuring ----------------------------------------------------------------------------

def convergence(fleet: Fleet, host_id: str, net_id: str, timeout: float = 10.0) -> tuple[str, dict]:
    """Write a new endpoint on host_id and time, from the write's return, until
    each host bound to its network holds its ARP answer. Returns the endpoint
    id and host id -> seconds (None: not within timeout)."""
    eid = hex64()
    until = time.monotonic() + timeout + 30          # the poll's own end: collect bounds the wait
    fleet.all("arm", eid, net_id, until)
    owner = fleet.parts[fleet.owner[host_id]]
    owner.send("new_endpoint", host_id, net_id, eid)
    t0 = owner.recv()
    got: dict[str, float | None] = {}
    for chunk in fleet.all("collect", eid, t0 + timeout):
        got.update({h: (t - t0 if t is not None and t - t0 <= timeout else None) for h, t in chunk.items()})
    return eid, got


def profile_convergence(fleet: Fleet, rate: int, timeout: float = 15.0) -> dict:
    """Change the profile's rate and time until each host with a limited
    endpoint has the new rate on its meter: host/endpoint -> seconds or None."""
    assert fleet.store is not None
    fleet.all("arm_meters", rate, time.monotonic() + timeout + 30)
    fleet.store.put_profile(Profile(PROFILE, rate, 1_000), create=False)
    t0 = time.monotonic()
    got: dict[str, float | None] = {}
    for chunk in fleet.all("collect_meters", t0 + timeout):
        got.update({k: (t - t0 if t is not None and t - t0 <= timeout else None) for k, t in chunk.items()})
    return got


def allocate_together(fleet: Fleet, per_host: int, subnet: str = "", callers: int = 0) -> dict:
    """Every host allocates per_host addresses from ONE pool at the same time,
    through its own IPAM, ``callers`` hosts per worker process at a time (0:
    all); returns the rate and the duplicates found (addresses handed out
    twice, and allocation keys not held exactly once)."""
    assert fleet.store is not None
    net = create_network(fleet.store, "sim-shared", subnet or f"10.{random.randrange(191, 250)}.0.0/16",
                         fleet.vlan_base + 999)
    start_at = time.monotonic() + 2.0
    got = fleet.all("allocate", net, per_host, start_at, callers)
    took = time.monotonic() - start_at
    ips = [ip for chunk in got for ip in chunk]
    held = [a.ip for _, a in fleet.store.list_allocations(net.subnet) if a.kind == "endpoint"]
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
