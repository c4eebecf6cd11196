"""Fakes at the boundaries of netplugin, and nothing else.

- MemoryKV: the KV protocol of netplugin/kv.py with etcd v3 semantics
  (one global revision, create/mod revisions per key, compare-and-swap
  transactions, prefix deletes, leases that run out).
- FakeLinks / FakeSwitch: the public methods of dataplane Links and Switch,
  recording state in dicts; ``fail_next(method, exc)`` makes the next call of
  that method raise, so rollback paths can be driven.
- FakeDockerNames / FakeDockerView: Docker network names and live endpoints.
- FakeFlows: OpenFlow on one bridge (dataplane Flows).

Each answers as the real thing does: the suites in tests/contract run against
the fake here (tests/unit/test_contract_*.py) and against the real thing in
the integration and e2e rings. Everything above these boundaries (Store,
Ipam, the endpoint and network use cases, the Flask app) is the real code
under test.
"""

from __future__ import annotations

import bisect
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from netplugin.dataplane.flows import ENDPOINT_MASK, PRIO_PORT, TABLE_ARP, TABLE_CLASSIFY, Flows, cookie_for
from netplugin.dataplane.links import _checked as checked_name
from netplugin.errors import (DataplaneError, DataplaneUnavailable, HistoryCompacted, InvalidRequest, NetpluginError,
                             StoreUnavailable)
from netplugin.kv import Compare, Delete, Event, Item, Put

FAKE_ENDPOINTS = "http://127.0.0.1:2379"


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class MemoryKV:
    """In-memory etcd v3. Thread-safe; ``down = True`` makes every call fail
    (and breaks open watches). A lease runs out ``ttl`` seconds of ``clock``
    after it was granted or last refreshed, and its keys go in one revision,
    as in etcd. ``compact(revision)`` drops the history before revision: a
    watch asked to start below it is refused with HistoryCompacted, as
    EtcdKV answers. tests/contract/kv_suite.py holds it to etcd's answers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._events: list[Event] = []         # every change, in revision order (never compacted)
        self._data: dict[str, Item] = {}
        self._key_lease: dict[str, int] = {}
        self._leases: dict[int, int] = {}      # lease id -> ttl
        self._expires: dict[int, float] = {}   # lease id -> clock time it runs out
        self._next_lease = 0x694D0000
        self._sorted: list[str] | None = []
        self.revision = 1                      # an empty etcd cluster is at revision 1
        self.compacted = 0                     # history before this revision is gone (compact())
        self.down = False
        self.calls: list[str] = []
        self.txn_count = 0
        self.read_count = 0

    # -- helpers --------------------------------------------------------------
    def _check_up(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise self._unavailable()
        self._expire()

    @staticmethod
    def _unavailable(detail: str = "fake etcd is down") -> StoreUnavailable:
        return StoreUnavailable(
            f"store unavailable: etcd did not answer at {FAKE_ENDPOINTS} ({detail}); "
            "check that etcd is running and reachable, then retry")

    def _lease_not_found(self) -> StoreUnavailable:
        """What EtcdKV raises when etcd answers NOT_FOUND for a lease."""
        return self._unavailable("etcdserver: requested lease not found")

    def _expire(self) -> None:
        """Revoke the leases whose time ran out (the caller holds the lock)."""
        now = self._clock()
        for lease_id in [i for i, at in self._expires.items() if at <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        """Forget the lease and delete its keys in one revision."""
        self._leases.pop(lease_id, None)
        self._expires.pop(lease_id, None)
        keys = [k for k, lease in self._key_lease.items() if lease == lease_id]
        if keys:
            self.revision += 1
            for key in keys:
                self._delete(key, self.revision)
            self._cond.notify_all()

    def _keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        return self._sorted

    def _range(self, prefix: str) -> list[str]:
        keys = self._keys()
        start = bisect.bisect_left(keys, prefix)
        out = []
        for key in keys[start:]:
            if not key.startswith(prefix):
                break
            out.append(key)
        return out

    def _put(self, key: str, value: bytes, lease: int | None, rev: int) -> None:
        old = self._data.get(key)
        create = old.create_revision if old else rev
        if old is None:
            self._sorted = None
        self._data[key] = Item(key, value, create, rev)
        self._events.append(Event("put", key, value, rev))
        if lease:
            self._key_lease[key] = lease
        else:
            self._key_lease.pop(key, None)

    def _delete(self, key: str, rev: int) -> bool:
        if key in self._data:
            del self._data[key]
            self._events.append(Event("delete", key, b"", rev))
            self._key_lease.pop(key, None)
            self._sorted = None
            return True
        return False

    @staticmethod
    def _compare_ok(cmp: Compare, item: Item | None) -> bool:
        if cmp.op not in ("==", "!="):
            raise ValueError(f"unsupported compare op {cmp.op!r}")
        actual: bytes | int
        wanted: bytes | int
        if cmp.target == "value":
            if item is None:
                return False           # etcd: a value compare on a missing key always fails
            actual, wanted = item.value, _bytes(str(cmp.value) if isinstance(cmp.value, int) else cmp.value)
        elif cmp.target == "create":
            actual, wanted = (item.create_revision if item else 0), int(cmp.value)
        elif cmp.target == "mod":
            actual, wanted = (item.mod_revision if item else 0), int(cmp.value)
        else:
            raise ValueError(f"unsupported compare target {cmp.target!r}")
        return actual == wanted if cmp.op == "==" else actual != wanted

    # -- the KV protocol ------------------------------------------------------
    def get(self, key: str) -> Item | None:
        with self._lock:
            self._check_up("get")
            self.read_count += 1
            return self._data.get(key)

    def get_prefix(self, prefix: str, keys_only: bool = False) -> list[Item]:
        with self._lock:
            self._check_up("get_prefix")
            self.read_count += 1
            items = [self._data[k] for k in self._range(prefix)]
            if keys_only:
                items = [Item(i.key, b"", i.create_revision, i.mod_revision) for i in items]
            return items

    def count_prefix(self, prefix: str) -> int:
        with self._lock:
            self._check_up("count_prefix")
            return len(self._range(prefix))

    def txn(self, compares: Iterable[Compare], success: Iterable[Put | Delete], idempotent: bool = False) -> bool:
        compares, success = list(compares), list(success)
        with self._lock:
            self._check_up("txn")
            self.txn_count += 1
            if not all(self._compare_ok(c, self._data.get(c.key)) for c in compares):
                return False
            for op in success:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise self._lease_not_found()
            rev = self.revision + 1
            changed = False
            for op in success:
                if isinstance(op, Put):
                    self._put(op.key, _bytes(op.value), op.lease, rev)
                    changed = True
                elif op.prefix:
                    for key in self._range(op.key):
                        changed = self._delete(key, rev) or changed
                else:
                    changed = self._delete(op.key, rev) or changed
            if changed:
                self.revision = rev
                self._cond.notify_all()
            return True

    def snapshot(self, prefix: str) -> tuple[list[Item], int]:
        """Every item under prefix and the revision they were read at."""
        with self._lock:
            self._check_up("snapshot")
            return [self._data[k] for k in self._range(prefix)], self.revision

    def watch_prefix(self, prefix: str, start_revision: int, stop: threading.Event) -> Iterator[Event]:
        """Changes under prefix from start_revision on, until stop is set;
        StoreUnavailable when the fake goes down (a broken watch)."""
        with self._lock:
            self._check_up("watch_prefix")
            if 0 < start_revision < self.compacted:       # etcd keeps the compacted revision itself
                raise HistoryCompacted(
                    f"the watch on {prefix} from revision {start_revision} came too late: etcd compacted its "
                    f"history up to revision {self.compacted}; reading everything again", self.compacted)
        seen = 0
        while not stop.is_set():
            with self._cond:
                if self.down:
                    raise self._unavailable()
                self._expire()
                batch = self._events[seen:]
                seen = len(self._events)
                if not batch:
                    self._cond.wait(0.02)
                    continue
            for event in batch:
                if event.mod_revision >= start_revision and event.key.startswith(prefix):
                    yield event
                    if stop.is_set():
                        return

    def watch_prefix_cb(self, prefix: str, start_revision: int,
                        deliver: Callable[[list[Event] | NetpluginError], None]) -> Callable[[], None]:
        """The callback form of watch_prefix, as EtcdKV has it: a refused start
        raises at once; later, each event is delivered as a batch of one, and a
        break as its error (from a pump thread of the fake's own)."""
        with self._lock:
            self._check_up("watch_prefix")
            if 0 < start_revision < self.compacted:
                raise HistoryCompacted(
                    f"the watch on {prefix} from revision {start_revision} came too late: etcd compacted its "
                    f"history up to revision {self.compacted}; reading everything again", self.compacted)
        stop = threading.Event()

        def pump() -> None:
            try:
                for event in self.watch_prefix(prefix, start_revision, stop):
                    if stop.is_set():
                        return
                    deliver([event])
            except NetpluginError as exc:
                if not stop.is_set():
                    deliver(exc)
        threading.Thread(target=pump, name=f"fake-watch:{prefix}", daemon=True).start()
        return stop.set

    def set_down(self, down: bool) -> None:
        """Like assigning ``down``, and wakes watchers so they notice at once."""
        with self._cond:
            self.down = down
            self._cond.notify_all()

    def grant_lease(self, ttl: int) -> int:
        with self._lock:
            self._check_up("grant_lease")
            self._next_lease += 1
            self._leases[self._next_lease] = ttl
            self._expires[self._next_lease] = self._clock() + ttl
            return self._next_lease

    def refresh_lease(self, lease_id: int) -> int:
        """As etcd: a lease that ran out or was revoked is not an error here
        (etcd answers a keep-alive of an unknown lease with TTL 0)."""
        with self._lock:
            self._check_up("refresh_lease")
            self._expire()
            if lease_id not in self._leases:
                return 0
            self._expires[lease_id] = self._clock() + self._leases[lease_id]
            return self._leases[lease_id]

    def revoke_lease(self, lease_id: int) -> None:
        with self._lock:
            self._check_up("revoke_lease")
            if lease_id not in self._leases:
                raise self._lease_not_found()
            self._drop_lease(lease_id)

    def close(self) -> None:
        pass

    # -- test helpers (not part of the KV protocol) ---------------------------
    def dump(self) -> dict[str, tuple[bytes, int]]:
        """Every key with its value and mod revision: equal snapshots mean no write."""
        with self._lock:
            self._expire()
            return {k: (i.value, i.mod_revision) for k, i in self._data.items()}

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            self._expire()
            return list(self._range(prefix))

    def load(self, pairs: Iterable[tuple[str, bytes | str]]) -> None:
        """Bulk-write many keys in one revision (fast pre-filling for tests)."""
        with self._lock:
            rev = self.revision + 1
            for key, value in pairs:
                self._put(key, _bytes(value), None, rev)
            self.revision = rev
            self._cond.notify_all()

    def compact(self, revision: int) -> None:
        """As `etcdctl compaction revision`: the history before revision is
        gone (a watch from an earlier revision is refused; open watches go on)."""
        with self._lock:
            if revision > self.revision:
                raise ValueError(f"revision {revision} is in the future (now {self.revision})")
            if revision <= self.compacted:
                raise ValueError(f"revision {revision} has been compacted already (up to {self.compacted})")
            self.compacted = revision        # _events stays whole: open watches index into it

    def leases(self) -> dict[int, int]:
        """Live lease id -> the ttl it was granted with."""
        with self._lock:
            self._expire()
            return dict(self._leases)


class _Failing:
    """fail_next(method, exc): the next call of method raises exc."""

    def __init__(self):
        self._fail: dict[str, list[Exception]] = {}
        self.calls: list[tuple] = []
        self._flock = threading.Lock()

    def fail_next(self, method: str, exc: Exception | None = None, times: int = 1) -> None:
        if not hasattr(self, method):
            raise AttributeError(f"{type(self).__name__} has no method {method}")
        exc = exc or DataplaneError(f"fake {type(self).__name__}.{method} failed")
        with self._flock:
            self._fail.setdefault(method, []).extend([exc] * times)

    def _enter(self, method: str, *args) -> None:
        with self._flock:
            self.calls.append((method, *args))
            pending = self._fail.get(method)
            exc = pending.pop(0) if pending else None
        if exc is not None:
            raise exc


class FakeLinks(_Failing):
    """Kernel links: veth pairs as dicts. Same public methods as Links, and
    the same refusal of names the kernel must never see."""

    def __init__(self):
        super().__init__()
        self.links: dict[str, dict] = {}
        self.netns: dict[str, dict[str, dict]] = {}     # netns path -> name -> link moved there

    def exists(self, name: str) -> bool:
        self._enter("exists", name)
        return checked_name(name) in self.links

    def list_names(self, prefix: str = "np") -> list[str]:
        self._enter("list_names", prefix)
        return sorted(n for n in self.links if n.startswith(prefix))

    def create_veth(self, host: str, peer: str, mtu: int, peer_mac: str, tx_checksum_off: bool,
                    host_up: bool = True) -> None:
        self._enter("create_veth", host, peer, mtu, peer_mac, tx_checksum_off)
        checked_name(host), checked_name(peer)
        if host in self.links and self.links[host]["peer"] != peer:
            raise DataplaneError(f"veth {host} exists without its peer {peer}: delete {host} and retry")
        self.links[host] = {"kind": "veth", "peer": peer, "mtu": mtu, "up": host_up, "mac": None,
                            "tx_checksum": not tx_checksum_off}
        self.links[peer] = {"kind": "veth", "peer": host, "mtu": mtu, "up": False, "mac": peer_mac,
                            "tx_checksum": not tx_checksum_off}

    def activate(self, host: str, peer: str, peer_mac: str, alias: str) -> None:
        self._enter("activate", host, peer, peer_mac, alias)
        checked_name(host), checked_name(peer)
        if not re.fullmatch(r"[0-9a-f]{64}", alias or ""):
            raise InvalidRequest(f"alias {alias!r} is not an endpoint id")
        if host not in self.links or peer not in self.links:
            raise DataplaneError(f"veth pair {host}/{peer} is incomplete")
        self.links[peer]["mac"] = peer_mac
        self.links[host].update(alias=alias, up=True)

    def is_up(self, name: str) -> bool | None:
        self._enter("is_up", name)
        link = self.links.get(checked_name(name))
        return None if link is None else bool(link["up"])

    def alias(self, name: str) -> str:
        self._enter("alias", name)
        return (self.links.get(checked_name(name)) or {}).get("alias", "")

    def disable_tx_checksum(self, name: str) -> None:
        self._enter("disable_tx_checksum", name)
        if checked_name(name) not in self.links:
            raise DataplaneError(f"cannot turn off tx checksum offload on {name}: no such device")
        self.links[name]["tx_checksum"] = False

    def plug_into_netns(self, peer: str, netns_path: str, ip: str, prefixlen: int,
                        gateway: str | None) -> str:
        self._enter("plug_into_netns", peer, netns_path, ip, prefixlen, gateway)
        if checked_name(peer) not in self.links:
            raise DataplaneError(f"cannot move {peer} into {netns_path}: no such device")
        ns = self.netns.setdefault(netns_path, {})
        name = next(f"eth{i}" for i in range(64) if f"eth{i}" not in ns)
        ns[name] = dict(self.links.pop(peer), ip=ip, prefixlen=prefixlen, gateway=gateway, up=True, was=peer)
        return name

    def delete(self, name: str) -> bool:
        self._enter("delete", name)
        link = self.links.pop(checked_name(name), None)
        if link is None:
            return False
        self.links.pop(link["peer"], None)
        for ns in self.netns.values():          # the peer goes with it, wherever it was moved
            for inner in [n for n, link in ns.items() if link.get("peer") == name]:
                del ns[inner]
        return True


class FakeSwitch(_Failing):
    """Open vSwitch: bridges and ports as dicts. Same public methods as Switch.
    Its vswitchd opens every port at once, device or not."""

    def __init__(self):
        super().__init__()
        self.bridges: dict[str, dict] = {}
        self.ports: dict[str, dict] = {}
        self._ofports: dict[str, int] = {}          # a port keeps its number until it is deleted
        self.cfg = 0                                # OVSDB's next_cfg, bumped by a claim
        self._next_ofport = itertools.count(1)

    def _numbered(self, port: str) -> None:
        if port not in self._ofports:
            self._ofports[port] = next(self._next_ofport)

    def ensure_bridge(self, bridge: str, datapath_type: str, uplink: str | None = None) -> None:
        self._enter("ensure_bridge", bridge, datapath_type, uplink)
        self.bridges.setdefault(bridge, {"datapath_type": datapath_type, "uplink": uplink,
                                         "protocols": ["OpenFlow10", "OpenFlow13"]})
        if uplink:
            self.ports[uplink] = {"bridge": bridge, "tag": None, "vlan_mode": "trunk", "external_ids": {}}
            self._numbered(uplink)

    def add_access_port(self, bridge: str, port: str, vlan: int, external_ids: dict[str, str],
                        wait_vswitchd: bool = True) -> None:
        self._enter("add_access_port", bridge, port, vlan, external_ids)
        if bridge not in self.bridges:
            raise DataplaneError(f"Open vSwitch refused to add port {port} to {bridge}: no bridge named {bridge}")
        self.ports[port] = {"bridge": bridge, "tag": vlan, "vlan_mode": "access",
                            "external_ids": dict(external_ids)}
        self._numbered(port)

    def add_parked_port(self, bridge: str, port: str, external_ids: dict[str, str]) -> None:
        self._enter("add_parked_port", bridge, port, external_ids)
        if bridge not in self.bridges:
            raise DataplaneError(f"Open vSwitch refused to add pool port {port} to {bridge}: no bridge named {bridge}")
        if port in self.ports:
            raise DataplaneError(f"Open vSwitch refused to add pool port {port} to {bridge}: it exists")
        self.ports[port] = {"bridge": bridge, "tag": None, "vlan_mode": "trunk", "trunks": [4095],
                            "external_ids": {**external_ids, "np-pool": "1"}}
        self._numbered(port)

    def claim_port(self, port: str, vlan: int, external_ids: dict[str, str]) -> int:
        """As OVSDB: one transaction, refused unless the port is still parked."""
        self._enter("claim_port", port, vlan, external_ids)
        row = self.ports.get(port)
        if row is None or row["external_ids"].get("np-pool") != "1":
            raise DataplaneError(f"Open vSwitch refused to claim pool port {port}: "
                                 f"port {port} is not a parked pool port")
        row.update(tag=vlan, vlan_mode="access", trunks=[], external_ids=dict(external_ids))
        self.cfg += 1
        return self.cfg

    def wait_applied(self, cfg: int, patience: float) -> None:
        """The fake's vswitchd applies every change at once."""
        self._enter("wait_applied", cfg)

    def port_of_endpoint(self, endpoint_id: str) -> str | None:
        self._enter("port_of_endpoint", endpoint_id)
        return next((name for name, p in sorted(self.ports.items())
                     if p["external_ids"].get("np-endpoint") == endpoint_id), None)

    def list_pool_ports(self, bridge: str) -> list[dict]:
        self._enter("list_pool_ports", bridge)
        return [{"name": name, "tag": p["tag"], "vlan_mode": p["vlan_mode"], "trunks": list(p.get("trunks", [])),
                 "external_ids": dict(p["external_ids"])}
                for name, p in sorted(self.ports.items())
                if p["bridge"] == bridge and p["external_ids"].get("np-pool") == "1"]

    def delete_port(self, port: str, wait_vswitchd: bool = False) -> bool:
        self._enter("delete_port", port, wait_vswitchd)
        self._ofports.pop(port, None)
        return self.ports.pop(port, None) is not None

    def port_exists(self, port: str) -> bool:
        self._enter("port_exists", port)
        return port in self.ports

    def bridge_exists(self, bridge: str) -> bool:
        self._enter("bridge_exists", bridge)
        return bridge in self.bridges

    def port_bridges(self) -> dict[str, str]:
        self._enter("port_bridges")
        return {name: p["bridge"] for name, p in self.ports.items()}

    def list_ports(self, bridge: str) -> list[dict]:
        self._enter("list_ports", bridge)
        return [{"name": name, "tag": p["tag"], "external_ids": dict(p["external_ids"])}
                for name, p in sorted(self.ports.items())
                if p["bridge"] == bridge and "np-endpoint" in p["external_ids"]]

    def ofport(self, port: str) -> int | None:
        """OpenFlow port numbers in the order ports were added, as vswitchd gives them."""
        self._enter("ofport", port)
        return self._ofports.get(port)

    def wait_ofport(self, port: str, patience: float) -> int:
        """The fake's vswitchd opens a port at once."""
        self._enter("wait_ofport", port)
        if port not in self.ports:
            raise DataplaneError(f"port {port} is not on the switch: remove the container and start it again")
        return self._ofports[port]

    def set_policing(self, port: str, rate_kbps: int, burst_kb: int) -> None:
        """As OVSDB: policing a port that is not there changes nothing and is no error."""
        self._enter("set_policing", port, rate_kbps, burst_kb)
        if port in self.ports:
            self.ports[port]["policing"] = (int(rate_kbps), int(burst_kb))

    def close(self) -> None:
        pass


def ovs_down() -> DataplaneUnavailable:
    return DataplaneUnavailable("Open vSwitch unavailable: cannot reach OVSDB at unix:/fake/db.sock "
                                "(fake); check that ovsdb-server and ovs-vswitchd are running")


class FakeDockerNames:
    """Docker network id -> name; None while Docker does not know the network."""

    def __init__(self, names: dict[str, str] | None = None):
        self.names: dict[str, str] = dict(names or {})
        self.calls: list[str] = []

    def network_name(self, docker_network_id: str) -> str | None:
        self.calls.append(docker_network_id)
        return self.names.get(docker_network_id)


class FakeDockerView:
    """Docker's view of live endpoints (docker_api.DockerView.live_endpoints):
    endpoint id -> {container, name, network, ip, mac, sandbox} for the Docker
    networks asked about. ``reachable = False`` makes it answer None, as the
    real view does when Docker cannot be asked."""

    def __init__(self):
        self.live: dict[str, dict] = {}
        self.reachable = True
        self.calls: list[list[str]] = []

    def attach(self, endpoint_id: str, docker_network: str, ip: str, mac: str = "", name: str = "web",
               container: str | None = None, sandbox: int = 4242) -> dict:
        """A running container on the network; without a mac, the one Docker
        derives from the address (02:42 and the address's four bytes)."""
        ip = ip.split("/")[0]
        mac = mac or "02:42:" + ":".join(f"{int(octet):02x}" for octet in ip.split("."))
        self.live[endpoint_id] = {"container": container or ("c" * 52 + endpoint_id[:12]), "name": name,
                                  "network": docker_network, "ip": ip, "mac": mac, "sandbox": sandbox}
        return self.live[endpoint_id]

    def detach(self, endpoint_id: str) -> None:
        self.live.pop(endpoint_id, None)

    def running_endpoints(self) -> set[str] | None:
        """Every live endpoint, on any network (Docker lists all running containers)."""
        self.calls.append(["*"])
        return set(self.live) if self.reachable else None

    def live_endpoints(self, docker_networks: list[str]) -> dict[str, dict] | None:
        self.calls.append(list(docker_networks))
        if not self.reachable:
            return None
        nets = set(docker_networks)
        return {eid: dict(info) for eid, info in self.live.items() if info["network"] in nets}


# -- OpenFlow --------------------------------------------------------------------------------------


class FakeFlows:
    """OpenFlow on one bridge (dataplane.flows.Flows): flows by table and cookie,
    meters by id (a port's meter id is its OpenFlow number), and the packets sent.
    The calls that change a port's flows or meters (set_port, clear_port,
    delete_endpoint_flows, del_meter) are recorded in ``calls``. Same public
    methods as Flows."""

    def __init__(self, bridge: str = "nptest0", meters_supported: bool = True):
        self.bridge = bridge
        self.calls: list[tuple] = []
        self.meter_ports: set[int] = set()                  # meter ids on the bridge
        self.bands: dict[int, tuple[int, int]] = {}          # meter id -> (rate kbit/s, burst kbit)
        self.tables: dict[int, dict[int, str]] = {}          # table -> cookie -> flow text
        self.pipeline = False
        self.packets: list[tuple[int, str]] = []
        self._supported = meters_supported
        self._lock = threading.Lock()

    def ensure_pipeline(self) -> None:
        self.pipeline = True

    def close(self) -> None:
        """Flows closes its OpenFlow connection; the fake has none."""

    # -- ports and meters
    def set_port(self, endpoint_id: str, ofport: int, vlan: int, limit: tuple[int, int] | None) -> None:
        self.calls.append(("set_port", endpoint_id, ofport, limit))
        port = int(ofport)
        if port <= 0 or not 1 <= int(vlan) <= 4094:
            raise InvalidRequest(f"port {port} or VLAN {vlan} is out of range")
        meter = ""
        with self._lock:
            if limit:
                rate, burst = (int(x) for x in limit)
                if rate <= 0 or burst <= 0:
                    raise InvalidRequest("a meter needs a positive rate and burst")
                self.meter_ports.add(port)
                self.bands[port] = (rate, burst)
                meter = f"meter:{port},"
            else:
                self.meter_ports.discard(port)
            cookie = cookie_for(endpoint_id)
            self.tables.setdefault(TABLE_CLASSIFY, {})[cookie] = (
                f"table={TABLE_CLASSIFY},priority={PRIO_PORT},cookie={cookie:#x},in_port={port},"
                f"actions={meter}write_metadata:{int(vlan):#x}/0xfff,goto_table:{TABLE_ARP}")

    def clear_port(self, endpoint_id: str, ofport: int | None) -> None:
        self.calls.append(("clear_port", endpoint_id, ofport))
        self._delete_endpoint(endpoint_id)
        if ofport:
            with self._lock:
                self.meter_ports.discard(int(ofport))

    def delete_endpoint_flows(self, endpoint_id: str) -> None:
        self.calls.append(("delete_endpoint_flows", endpoint_id))
        self._delete_endpoint(endpoint_id)

    def _delete_endpoint(self, endpoint_id: str) -> None:
        want = cookie_for(endpoint_id) & ENDPOINT_MASK
        with self._lock:
            for flows in self.tables.values():
                for cookie in [c for c in flows if c & ENDPOINT_MASK == want]:
                    del flows[cookie]

    def has_meter(self, ofport: int | None) -> bool:
        return bool(ofport) and int(ofport) in self.meter_ports

    def del_meter(self, meter: int) -> None:
        """The meter and, as OpenFlow does, every flow that uses it."""
        self.calls.append(("del_meter", meter))
        with self._lock:
            self.meter_ports.discard(int(meter))
            for flows in self.tables.values():
                for cookie in [c for c, text in flows.items() if f"meter:{int(meter)}," in text]:
                    del flows[cookie]

    def meters_supported(self) -> bool:
        return self._supported

    def meter_ids(self) -> set[int]:
        return set(self.meter_ports)

    def meters(self) -> dict[int, dict]:
        with self._lock:
            return {m: {"rate_kbps": self.bands.get(m, (None, None))[0],
                        "burst_kb": self.bands.get(m, (None, None))[1]} for m in self.meter_ports}

    # -- the ARP proxy
    arp_answer = Flows.arp_answer      # the flow text only: no bridge is asked

    def add_flows(self, flows: list[str]) -> None:
        with self._lock:
            for text in flows:
                table = int(re.search(r"table=(\d+)", text).group(1))
                cookie = int(re.search(r"cookie=(0x[0-9a-f]+)", text).group(1), 16)
                self.tables.setdefault(table, {})[cookie] = text

    def delete_cookies(self, cookies: list[int]) -> None:
        with self._lock:
            for flows in self.tables.values():
                for cookie in cookies:
                    flows.pop(cookie, None)

    def cookies(self, table: int) -> set[int]:
        with self._lock:
            return {c for c in self.tables.get(int(table), {}) if c >> 63}

    def count(self, table: int, ours: bool = True) -> int:
        """netplugin's flows in the table; ``ours=False``: with the pipeline's table-miss flow."""
        with self._lock:
            mine = sum(1 for c in self.tables.get(int(table), {}) if c >> 63)
            return mine if ours else mine + int(self.pipeline)

    def dump_flows(self) -> str:
        with self._lock:
            return "".join(f" {text}\n" for flows in self.tables.values() for text in flows.values())

    def packet_out(self, in_port: int, packet_hex: str) -> None:
        if not re.fullmatch(r"[0-9a-f]+", packet_hex):
            raise InvalidRequest("packet must be hex")
        self.packets.append((int(in_port), packet_hex))
