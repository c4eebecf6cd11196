"""The only module that knows the etcd key layout. Everything above it speaks
in records (model.py); everything below it is the KV boundary (kv.py).

Layout under the versioned prefix (default ``/netplugin/v1``)::

    networks/<id>                  Network record
    index/name/<name>              -> network id  (names are unique)
    index/subnet/<a.b.c.d-len>     -> network id  (subnets are unique)
    index/vlan/<vlan>              -> network id  (VLANs are unique)
    meta/networks                  touched by every network create/delete, so
                                   the overlap check and the write are atomic
    meta/pool/<a.b.c.d-len>        touched by every address claim, endpoint
                                   create and binding of that subnet's network,
                                   so a network delete that compares it deletes
                                   nothing that appeared after its check
    ipam/<a.b.c.d-len>/<offset>    Allocation, one key per address in use;
                                   offset is 8 hex digits from the subnet start
    net-endpoints/<network-id>/<host>/<endpoint-id>
                                   Endpoint record, filed under its network and host, so
                                   a host follows only the networks it has bound
    index/endpoint/<endpoint-id>   -> "<network-id>/<host>": where the record is filed
    endpoints/<endpoint-id>        the layout before: read until migrated (each daemon
                                   moves its own host's records at start, migrate_endpoints)
    bindings/<host>/<docker-net>   Binding: a host's Docker network -> global network
    hosts/<host>                   the daemon's claim of its host id (identity.Registration: the
                                   host's record, its published settings, the instance), bound
                                   to its lease: present while alive, taken create-if-absent
    hostinfo/<host>                the same with last_seen, kept after the host dies
    hostgone/<host>/<observer>/*   since + timer: how long a host has been gone, by etcd's
                                   lease clock (host_gone_for)
    release/<host>/<endpoint-id>   a request for that host to release one of its endpoints
    released/<endpoint-id>         tombstone: when and by whom an endpoint was released
    profiles/<name>                Profile: rate and burst
    settings/<name>                cluster-wide settings (arp-mode)
    locks/<name>                   a lease-bound lock (the reconciler's)
    reconcile/<host>/last          the last reconcile report of that host
    reconcile/<host>/counters      its running totals, for metrics

Every record read is checked (``Record.load``): a bad one is skipped, noted
in ``bad`` (logged once per key, counted for the metrics) and treated as
absent, never handed on. ``scan_bad_records`` lists every bad record of
every key family, for ``netctl status``.

One key per address keeps every allocation a single-key create-if-absent
transaction: two daemons can never both win the same address, releasing is a
plain delete, and the holder of any address can be named.

No other module builds a key or calls the KV: following a kind of record
(``cache_networks``, ``cache_network_endpoints`` ...), leases (``lease_keeper``) and locks are store
calls too. A record changed in place is read, changed and written back
guarded by the revision read, by one helper (``compare_and_swap``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import netaddr

from .badrecords import BadRecords
from .cache import Cache
from .errors import Conflict, HistoryCompacted, InvalidRequest, NetpluginError, NotFound, StoreUnavailable
from .identity import BadRecord as IdentityBadRecord
from .identity import Instance, Registration
from .jsondepth import loads as json_loads
from .kv import KV, Compare, Delete, Item, Put, absent, unchanged
from .lease import LeaseKeeper
from .model import (
    ALLOC_AUX,
    ALLOC_GATEWAY,
    CHECK_ERRORS,
    DOCKER_ID_RE,
    HOST_RE,
    NETWORK_ID_RE,
    Allocation,
    BadRecord,
    Binding,
    Endpoint,
    Host,
    Network,
    Profile,
    Record,
    check_reconcile_counters,
    check_release_request,
    check_tombstone,
)

CHUNK_BITS = 8   # the pool is scanned 256 addresses at a time
OFFSET_RE = re.compile(r"[0-9a-f]{8}")

T = TypeVar("T")
R = TypeVar("R", bound=Record)


def subnet_key(subnet: str) -> str:
    return subnet.replace("/", "-")


class Reading:
    """What one compare-and-swap attempt read: every key read with ``get``
    (and every item passed to ``guard``) must be unchanged for the write to apply."""

    def __init__(self, kv: KV):
        self.kv = kv
        self.guards: list[Compare] = []

    def get(self, key: str) -> Item | None:
        item = self.kv.get(key)
        self.guards.append(unchanged(key, item.mod_revision if item else 0))
        return item

    def guard(self, item: Item) -> None:
        self.guards.append(unchanged(item.key, item.mod_revision))


def compare_and_swap(kv: KV, attempt: Callable[[Reading], tuple[list[Put | Delete], T]],
                     gave_up: NetpluginError, tries: int = 5) -> T:
    """Read, change, write back guarded by the revisions read; again on a lost race.

    ``attempt(reading)`` reads through ``reading`` and returns the writes and
    the result (it may raise, e.g. NotFound, which ends the swap). After
    ``tries`` lost races, ``gave_up`` is raised."""
    for _ in range(tries):
        reading = Reading(kv)
        ops, result = attempt(reading)
        if kv.txn(reading.guards, ops):
            return result
    raise gave_up


@dataclass(frozen=True)
class Family:
    """A kind of record that events follow: its keys are under prefix; key_id(key)
    is the object's id in a key (None: not one of its records, or a bad key,
    counted by key_id); attrs(item) what an event shows of a record (None: a
    bad record, skipped and counted)."""

    prefix: str
    type: str
    key_id: Callable[[str], str | None]
    attrs: Callable[[Item], dict | None]


@dataclass(frozen=True)
class Change:
    """One change of a followed record: action is create, update or delete."""

    revision: int
    type: str
    action: str
    id: str
    attrs: dict


def head_revision(kv: KV, root: str) -> int:
    """etcd's current revision, read from a range that holds no key."""
    return kv.snapshot(f"{root}/\x00")[1]


def follow_changes(kv: KV, root: str, families: list[Family], start_revision: int,
                   stop: threading.Event) -> Iterator[Change]:
    """Every change of the families' records from start_revision on (0: from
    now), until stop is set, through one watch on root, taken again after the
    last change handed on when it breaks. create or update: a key that exists
    now is known from its create revision, any other from the changes seen
    (one deleted since start_revision and put again reads as a create).
    HistoryCompacted when etcd no longer holds start_revision."""
    alive: set[str] = set()
    head = head_revision(kv, root)
    start = start_revision or head + 1
    for fam in families:
        alive |= {i.key for i in kv.get_prefix(fam.prefix, keys_only=True) if i.create_revision < start}
    last, done_in_last = start - 1, 0          # the last revision handed on, and how many of its changes
    while not stop.is_set():
        seen_in_rev = 0
        try:
            for ev in kv.watch_prefix(f"{root}/", max(start, last), stop):
                seen_in_rev = seen_in_rev + 1 if ev.mod_revision == last else 1
                if ev.mod_revision == last and seen_in_rev <= done_in_last:
                    continue                    # handed on before the watch broke
                last, done_in_last = ev.mod_revision, seen_in_rev
                of = next((f for f in families if ev.key.startswith(f.prefix)), None)
                obj = of.key_id(ev.key) if of else None
                if of is None or obj is None:
                    continue
                if ev.kind == "delete":
                    alive.discard(ev.key)
                    yield Change(ev.mod_revision, of.type, "delete", obj, {})
                    continue
                attrs = of.attrs(Item(ev.key, ev.value, 0, ev.mod_revision))
                action = "update" if ev.key in alive else "create"
                alive.add(ev.key)
                if attrs is not None:
                    yield Change(ev.mod_revision, of.type, action, obj, attrs)
        except HistoryCompacted:
            raise
        except StoreUnavailable:
            if stop.wait(1.0):
                return
            logging.getLogger(__name__).info("the watch of %s broke: taking it again from revision %s", root, last)


class Store:
    """Records in, records out. ``kv``, ``prefix`` and the ``k_*`` key builders
    are public for the tests and benchmarks that look at raw keys; the product's
    other modules use the record calls only."""

    def __init__(self, kv: KV, prefix: str = "/netplugin/v1", bad: BadRecords | None = None):
        self.kv = kv
        self.prefix = prefix
        self.bad = bad if bad is not None else BadRecords()

    # -- checked reads ----------------------------------------------------------
    def _load(self, cls: type[R], item: Item | None, also: Callable[[R, str], None] | None = None) -> R | None:
        """The record in item, checked (and by ``also(record, key)``); None (and noted) when it is bad."""
        if item is None:
            return None
        try:
            rec = cls.load(item.value)
            if also is not None:
                also(rec, item.key)
        except BadRecord as exc:
            self.bad.found(item.key, cls.__name__.lower(), str(exc))
            return None
        self.bad.fine(item.key)
        return rec

    def _load_alloc(self, item: Item | None) -> Allocation | None:
        """An allocation, checked, and its address the one its key stands for."""
        def at_its_key(alloc: Allocation, key: str) -> None:
            pool, _, offset = key.rpartition("/")
            try:
                subnet = netaddr.IPNetwork(pool.rpartition("/")[2].replace("-", "/"))
                right = bool(OFFSET_RE.fullmatch(offset)) and \
                    str(netaddr.IPAddress(subnet.first + int(offset, 16))) == alloc.ip
            except (netaddr.AddrFormatError, ValueError, TypeError):
                right = False
            if not right:
                raise BadRecord(f"ip {alloc.ip} is not the address its key stands for")
        return self._load(Allocation, item, at_its_key)

    def _items(self, cls: type[R], prefix: str) -> list[tuple[Item, R]]:
        """Every good record under prefix, with its item; bad ones skipped."""
        out = []
        for item in self.kv.get_prefix(prefix):
            rec = self._load(cls, item)
            if rec is not None:
                out.append((item, rec))
        return out

    def _records(self, cls: type[R], prefix: str) -> list[R]:
        return [rec for _, rec in self._items(cls, prefix)]

    def _load_dict(self, item: Item | None, kind: str, check: Callable[[dict], None] | None = None) -> dict | None:
        """A plain JSON object record (tombstone, request, report), checked by check."""
        if item is None:
            return None
        try:
            data = json_loads(item.value)
            if not isinstance(data, dict):
                raise BadRecord(f"a JSON {type(data).__name__}, not an object")
            if check is not None:
                check(data)
        except (*CHECK_ERRORS, NetpluginError) as exc:   # BadRecord is a ValueError
            self.bad.found(item.key, kind, getattr(exc, "message", None) or str(exc))
            return None
        self.bad.fine(item.key)
        return data

    # -- key layout -----------------------------------------------------------
    def k_network(self, net_id: str) -> str:
        return f"{self.prefix}/networks/{net_id}"

    def k_index(self, kind: str, value: str | int) -> str:
        return f"{self.prefix}/index/{kind}/{value}"

    def k_meta_networks(self) -> str:
        return f"{self.prefix}/meta/networks"

    def k_pool(self, subnet: str) -> str:
        return f"{self.prefix}/ipam/{subnet_key(subnet)}/"

    def k_alloc(self, subnet: str, offset: int) -> str:
        return f"{self.k_pool(subnet)}{offset:08x}"

    def k_chunk(self, subnet: str, chunk: int) -> str:
        return f"{self.k_pool(subnet)}{chunk:06x}"

    def k_member(self, network: str, host: str = "", endpoint_id: str = "") -> str:
        """An endpoint's key under its network and host (or the prefix of either)."""
        if not host:
            return f"{self.prefix}/net-endpoints/{network}/"
        return f"{self.prefix}/net-endpoints/{network}/{host}/{endpoint_id}"

    def k_endpoint_at(self, ep: Endpoint) -> str:
        return self.k_member(ep.network, ep.host, ep.id)

    def k_locator(self, endpoint_id: str) -> str:
        return f"{self.prefix}/index/endpoint/{endpoint_id}"

    def k_legacy_endpoint(self, endpoint_id: str) -> str:
        """The key of the layout before net-endpoints/ (read until migrated)."""
        return f"{self.prefix}/endpoints/{endpoint_id}"

    def _endpoint_at_its_key(self, ep: Endpoint, key: str) -> None:
        if key not in (self.k_endpoint_at(ep), self.k_legacy_endpoint(ep.id)):
            raise BadRecord(f"endpoint {ep.id[:12]} of network {ep.network} on host {ep.host} is not filed "
                            "under its own key")

    def _load_endpoint(self, item: Item | None) -> Endpoint | None:
        return self._load(Endpoint, item, self._endpoint_at_its_key)

    def decode_endpoint(self, item: Item) -> Endpoint | None:
        """A followed endpoint record, checked (for the caches)."""
        return self._load_endpoint(item)

    def _endpoint_key(self, endpoint_id: str, read: Reading | None = None) -> str:
        """Where the endpoint's record is (or would be, if gone: the locator's
        place, else the old layout's key). Read through ``read`` when given,
        so the locator's revision guards the caller's write."""
        item = read.get(self.k_locator(endpoint_id)) if read is not None else self.kv.get(self.k_locator(endpoint_id))
        where = item.value.decode(errors="replace") if item is not None else ""
        network, _, host = where.partition("/")
        if item is not None and NETWORK_ID_RE.fullmatch(network) and HOST_RE.fullmatch(host):
            return self.k_member(network, host, endpoint_id)
        if item is not None:
            self.bad.found(item.key, "index", f"{where!r} is not <network-id>/<host>")
        return self.k_legacy_endpoint(endpoint_id)

    def k_binding(self, host: str, docker_network: str) -> str:
        return f"{self.prefix}/bindings/{host}/{docker_network}"

    # -- networks -------------------------------------------------------------
    def list_networks(self) -> list[Network]:
        return self._records(Network, self.k_network(""))

    def get_network(self, net_id: str) -> Network | None:
        return self._load(Network, self.kv.get(self.k_network(net_id)))

    def _index(self, kind: str, value: str | int) -> str | None:
        item = self.kv.get(self.k_index(kind, value))
        if item is None:
            return None
        net_id = item.value.decode(errors="replace")
        if not NETWORK_ID_RE.fullmatch(net_id):
            self.bad.found(item.key, "index", f"{net_id!r} is not a network id")
            return None
        return net_id

    def network_by_name(self, name: str) -> Network | None:
        net_id = self._index("name", name)
        return self.get_network(net_id) if net_id else None

    def network_by_subnet(self, subnet: str) -> Network | None:
        found = self.network_rev_by_subnet(subnet)
        return found[0] if found else None

    def network_rev_by_subnet(self, subnet: str) -> tuple[Network, int] | None:
        """The network of a subnet and the revision of its record, so a caller
        can cache it and make a later write conditional on it being unchanged."""
        net_id = self._index("subnet", subnet_key(subnet))
        item = self.kv.get(self.k_network(net_id)) if net_id else None
        net = self._load(Network, item)
        return (net, item.mod_revision) if net is not None and item is not None else None

    def network_revision(self, net_id: str) -> int:
        """The mod revision of a network record; 0 when it no longer exists."""
        item = self.kv.get(self.k_network(net_id))
        return item.mod_revision if item else 0

    def find_network(self, ref: str) -> Network:
        """By name or id, for netctl and the admin API."""
        net = self.network_by_name(ref) or (self.get_network(ref) if ref.startswith("n-") else None)
        if net is None:
            raise NotFound(f"network {ref!r} does not exist: see 'netctl network ls'")
        return net

    def create_network(self, net: Network, reserved: list[Allocation]) -> None:
        """Write the network, its indexes and its reserved addresses at once.

        Refused with Conflict when the name, VLAN or an overlapping subnet is
        taken, or when a reserved address is held by someone else.
        """
        meta = self.kv.get(self.k_meta_networks())
        meta_rev = meta.mod_revision if meta else 0
        subnet = netaddr.IPNetwork(net.subnet)
        existing = self.list_networks()
        for other in existing:
            if other.id == net.id:
                raise Conflict(f"network id {net.id} exists already")
            if net.name and other.name == net.name:
                raise Conflict(f"network {net.name} exists already with subnet {other.subnet} and VLAN {other.vlan}")
            if other.vlan == net.vlan:
                raise Conflict(f"VLAN {net.vlan} is used by network {other.label} ({other.subnet}): "
                               "choose another VLAN")
            o = netaddr.IPNetwork(other.subnet)
            if o.first <= subnet.last and subnet.first <= o.last:
                raise Conflict(f"subnet {net.subnet} overlaps network {other.label} ({other.subnet}): "
                               "choose another subnet")
        compares = [unchanged(self.k_meta_networks(), meta_rev),
                    absent(self.k_network(net.id)),
                    absent(self.k_index("subnet", subnet_key(net.subnet))),
                    absent(self.k_index("vlan", net.vlan))]
        ops: list[Put | Delete] = [
            Put(self.k_meta_networks(), str(time.time())),
            Put(self.k_pool_guard(net.subnet), net.id),
            Put(self.k_network(net.id), net.to_json()),
            Put(self.k_index("subnet", subnet_key(net.subnet)), net.id),
            Put(self.k_index("vlan", net.vlan), net.id),
        ]
        if net.name:
            compares.append(absent(self.k_index("name", net.name)))
            ops.append(Put(self.k_index("name", net.name), net.id))
        for alloc in reserved:
            key = self.k_alloc(net.subnet, int(netaddr.IPAddress(alloc.ip)) - subnet.first)
            held = self.kv.get(key)
            if held is not None:
                holder = self._load_alloc(held)
                if holder is None:
                    raise Conflict(f"address {alloc.ip} is held by a bad record {held.key}: see 'netctl status'")
                if adoptable(holder, alloc):
                    compares.append(unchanged(key, held.mod_revision))
                else:
                    raise Conflict(f"address {alloc.ip} is held by {describe_holder(holder)}")
            else:
                compares.append(absent(key))
            ops.append(Put(key, alloc.to_json()))
        if not self.kv.txn(compares, ops):
            raise Conflict(f"network {net.label} was changed by someone else at the same moment: retry")

    def set_network_name(self, net: Network, name: str) -> bool:
        """Name a Docker-made network once Docker tells its name. False when taken."""
        item = self.kv.get(self.k_network(net.id))
        current = self._load(Network, item)
        if item is None or current is None:
            return False
        current.name = name
        current.name_conflict = ""
        return self.kv.txn([unchanged(self.k_network(net.id), item.mod_revision),
                            absent(self.k_index("name", name))],
                           [Put(self.k_network(net.id), current.to_json()),
                            Put(self.k_index("name", name), net.id)])

    def mark_name_conflict(self, net: Network, message: str) -> None:
        item = self.kv.get(self.k_network(net.id))
        current = self._load(Network, item)
        if item is None or current is None:
            return
        current.name_conflict = message
        self.kv.txn([unchanged(self.k_network(net.id), item.mod_revision)],
                    [Put(self.k_network(net.id), current.to_json())])

    def k_pool_guard(self, subnet: str) -> str:
        return f"{self.prefix}/meta/pool/{subnet_key(subnet)}"

    def delete_network(self, net: Network, force: bool = False, unbound: bool = False) -> list[Endpoint]:
        """Remove the network, its indexes, bindings and every address of its
        pool in ONE transaction, guarded by the revisions it checked: the
        network record and the pool's guard key (bumped by every claim,
        endpoint create and binding of the subnet), so nothing that appeared
        after the check is ever deleted; a lost race checks again.

        Conflict, naming them, while an endpoint record or an address other
        than the gateway and aux ones exists (``force`` deletes those endpoint
        records too) or, with ``unbound``, while any host's Docker network is
        bound to it. Returns the endpoints whose records went."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], list[Endpoint]]:
            read.get(self.k_pool_guard(net.subnet))     # first: anything written after bumps it
            current = self._load(Network, read.get(self.k_network(net.id)))
            if current is None:
                raise NotFound(f"network {net.label} does not exist: see 'netctl network ls'")
            endpoints = [(i, ep) for i, ep in self._endpoint_items(current.id)]
            bindings = [b for b in self._records(Binding, f"{self.prefix}/bindings/") if b.network == net.id]
            in_use = []
            for item in self.kv.get_prefix(self.k_pool(current.subnet)):
                alloc = self._load_alloc(item)
                if alloc is None or alloc.endpoint or alloc.kind not in (ALLOC_GATEWAY, ALLOC_AUX):
                    in_use.append(f"{alloc.ip} ({describe_holder(alloc)})" if alloc else f"bad record {item.key}")
            if unbound and bindings:
                raise Conflict(f"network {current.label} is still used by Docker networks on host(s) "
                               f"{', '.join(sorted({b.host for b in bindings}))}")
            if endpoints and not force:
                hosts = sorted({ep.host for _, ep in endpoints})
                raise Conflict(f"network {current.label} still has {len(endpoints)} endpoint(s) on host(s) "
                               f"{', '.join(hosts)}: stop those containers first, or remove them with it "
                               "(netctl network rm --with-endpoints)")
            if in_use and not force:
                raise Conflict(f"network {current.label} still has {len(in_use)} address(es) in use: "
                               f"{', '.join(in_use[:5])}{' ...' if len(in_use) > 5 else ''}: "
                               "stop those containers first, or remove them with it "
                               "(netctl network rm --with-endpoints)")
            ops: list[Put | Delete] = [
                Put(self.k_meta_networks(), str(time.time())),
                Delete(self.k_network(current.id)),
                Delete(self.k_index("subnet", subnet_key(current.subnet))),
                Delete(self.k_index("vlan", current.vlan)),
                Delete(self.k_pool(current.subnet), prefix=True),
                Delete(self.k_pool_guard(current.subnet)),
            ]
            if current.name:
                ops.append(Delete(self.k_index("name", current.name)))
            for item, ep in endpoints:
                read.guard(item)
                ops += [Delete(item.key), Delete(self.k_locator(ep.id))]
            ops += [Delete(self.k_binding(b.host, b.docker_network)) for b in bindings]
            return ops, [ep for _, ep in endpoints]
        return compare_and_swap(self.kv, attempt, Conflict(
            f"network {net.label} kept changing while being removed: retry"), tries=3)

    # -- addresses ------------------------------------------------------------
    def claim_address(self, subnet: str, offset: int, alloc: Allocation,
                      network: tuple[str, int] | None = None) -> bool:
        """Create-if-absent: True when this caller now holds the address.

        ``network`` = (network id, mod revision) adds a guard: the claim only
        happens while that network record is unchanged, so an allocator working
        from a cached network can never stamp an address with a deleted one;
        and it bumps the pool guard, so a network delete that checked the pool
        before this claim fails.
        """
        guards = [absent(self.k_alloc(subnet, offset))]
        if network is not None:
            guards.append(unchanged(self.k_network(network[0]), network[1]))
        key, value = self.k_alloc(subnet, offset), alloc.to_json()
        ops = [Put(key, value)]
        if network is not None:     # the pool guard lives as long as the network: never made without one
            ops.append(Put(self.k_pool_guard(subnet), ""))
        return self._txn_read_back(guards, ops, key, value)

    def _txn_read_back(self, compares: list[Compare], ops: list, key: str, value: str) -> bool:
        """A transaction that writes ``value`` at ``key``; when its answer is
        lost (a member died mid-call, an election), the key is read back: our
        value means it was applied, no key means it was not (it is sent once
        more), anything else means someone else's write won."""
        try:
            return self.kv.txn(compares, ops)
        except StoreUnavailable as lost:
            try:
                item = self.kv.get(key)
            except StoreUnavailable:
                raise lost from None
            if item is None:
                return self.kv.txn(compares, ops)
            return item.value == value.encode()

    def get_allocation(self, subnet: str, offset: int) -> tuple[Allocation, int] | None:
        item = self.kv.get(self.k_alloc(subnet, offset))
        alloc = self._load_alloc(item)
        return (alloc, item.mod_revision) if alloc is not None and item is not None else None

    def used_offsets_in_chunk(self, subnet: str, chunk: int) -> set[int]:
        items = self.kv.get_prefix(self.k_chunk(subnet, chunk), keys_only=True)
        return {int(tail, 16) for tail in (i.key.rsplit("/", 1)[1] for i in items) if OFFSET_RE.fullmatch(tail)}

    def count_allocations(self, subnet: str) -> int:
        return self.kv.count_prefix(self.k_pool(subnet))

    def list_allocations(self, subnet: str) -> list[tuple[int, Allocation]]:
        found = []
        for item in self.kv.get_prefix(self.k_pool(subnet)):
            tail = item.key.rsplit("/", 1)[1]
            if not OFFSET_RE.fullmatch(tail):
                self.bad.found(item.key, "allocation", "the key's offset is not 8 hex digits")
            elif (alloc := self._load_alloc(item)) is not None:
                found.append((int(tail, 16), alloc))
        return found

    def release_address(self, subnet: str, offset: int, mod_revision: int, endpoint_gone: str = "") -> bool:
        """Delete the allocation if nobody changed it since it was read (and,
        with ``endpoint_gone``, only while that endpoint has no record)."""
        key = self.k_alloc(subnet, offset)
        compares = [unchanged(key, mod_revision)]
        if endpoint_gone:
            compares += [absent(self.k_locator(endpoint_gone)), absent(self.k_legacy_endpoint(endpoint_gone))]
        return self.kv.txn(compares, [Delete(key)])

    # -- endpoints ------------------------------------------------------------
    def create_endpoint(self, ep: Endpoint, subnet: str, offset: int, alloc_rev: int,
                        alloc: Allocation) -> bool:
        """Write the endpoint, its locator, and stamp its allocation with the endpoint id, at once."""
        value = ep.to_json()
        key = self.k_endpoint_at(ep)
        return self._txn_read_back(
            [absent(self.k_locator(ep.id)), absent(self.k_legacy_endpoint(ep.id)),
             unchanged(self.k_alloc(subnet, offset), alloc_rev)],
            [Put(key, value), Put(self.k_locator(ep.id), f"{ep.network}/{ep.host}"),
             Put(self.k_alloc(subnet, offset), alloc.to_json()), Put(self.k_pool_guard(subnet), "")],
            key, value)

    def get_endpoint(self, endpoint_id: str) -> tuple[Endpoint, int] | None:
        item = self.kv.get(self._endpoint_key(endpoint_id))
        ep = self._load_endpoint(item)
        return (ep, item.mod_revision) if ep is not None and item is not None else None

    def update_endpoint(self, ep: Endpoint, mod_revision: int) -> bool:
        key = self._endpoint_key(ep.id)
        return self.kv.txn([unchanged(key, mod_revision)], [Put(key, ep.to_json())])

    def _endpoint_items(self, network: str = "", host: str = "") -> list[tuple[Item, Endpoint]]:
        """Every good endpoint record (of network, and of host, when given), in
        either layout. The old layout's prefix is empty once every host migrated."""
        if network:
            new = self._items_checked(self.k_member(network, host) if host else self.k_member(network))
        else:
            new = self._items_checked(f"{self.prefix}/net-endpoints/")
            if host:
                new = [(i, ep) for i, ep in new if ep.host == host]
        old = [(i, ep) for i, ep in self._items_checked(self.k_legacy_endpoint(""))
               if (not network or ep.network == network) and (not host or ep.host == host)]
        return new + old

    def _items_checked(self, prefix: str) -> list[tuple[Item, Endpoint]]:
        out = []
        for item in self.kv.get_prefix(prefix):
            ep = self._load_endpoint(item)
            if ep is not None:
                out.append((item, ep))
        return out

    def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint of the cluster (netctl; the daemon follows only its networks: hostview.py)."""
        return [ep for _, ep in self._endpoint_items()]

    def list_network_endpoints(self, network: str) -> list[Endpoint]:
        return [ep for _, ep in self._endpoint_items(network)]

    def list_host_endpoints(self, host: str) -> list[Endpoint]:
        """A host's endpoints: one small read per network (its key range), never the whole cluster."""
        out = []
        for net in self.list_networks():
            out += [ep for _, ep in self._items_checked(self.k_member(net.id, host))]
        return out + [ep for _, ep in self._items_checked(self.k_legacy_endpoint("")) if ep.host == host]

    def delete_endpoint(self, endpoint_id: str) -> None:
        key = self._endpoint_key(endpoint_id)
        self.kv.txn([], [Delete(key), Delete(self.k_locator(endpoint_id))], idempotent=True)

    def migrate_endpoints(self, host: str) -> tuple[int, int]:
        """Move this host's records of the old layout (endpoints/<id>) under
        net-endpoints/, each in one transaction guarded by the old record's
        revision. Returns (moved, left: changed meanwhile, tried again at the next start)."""
        moved = left = 0
        for item, ep in self._items_checked(self.k_legacy_endpoint("")):
            if ep.host != host:
                continue
            if self.kv.txn([unchanged(item.key, item.mod_revision), absent(self.k_locator(ep.id))],
                           [Delete(item.key), Put(self.k_endpoint_at(ep), item.value),
                            Put(self.k_locator(ep.id), f"{ep.network}/{ep.host}")]):
                moved += 1
            else:
                left += 1
        return moved, left

    # -- bindings -------------------------------------------------------------
    def put_binding(self, binding: Binding, subnet: str = "") -> None:
        """Bind a host's Docker network to its network (of ``subnet``, default
        the binding's pool), only while that network exists, bumping the pool
        guard so a delete that checked for bindings fails: NotFound once the
        network was deleted."""
        ops: list[Put | Delete] = [Put(self.k_binding(binding.host, binding.docker_network), binding.to_json())]
        if subnet or binding.pool:
            ops.append(Put(self.k_pool_guard(subnet or binding.pool), ""))
        if not self.kv.txn([Compare(self.k_network(binding.network), "create", "!=", 0)], ops, idempotent=True):
            raise NotFound(f"network {binding.network} was deleted at the same moment: retry")

    def get_binding(self, host: str, docker_network: str) -> Binding | None:
        return self._load(Binding, self.kv.get(self.k_binding(host, docker_network)))

    def list_bindings(self) -> list[Binding]:
        return self._records(Binding, f"{self.prefix}/bindings/")

    def delete_binding(self, host: str, docker_network: str) -> None:
        self.kv.txn([], [Delete(self.k_binding(host, docker_network))], idempotent=True)

    # -- releasing endpoints whole ----------------------------------------------
    def k_release(self, host: str, endpoint_id: str = "") -> str:
        return f"{self.prefix}/release/{host}/{endpoint_id}"

    def k_tombstone(self, endpoint_id: str) -> str:
        return f"{self.prefix}/released/{endpoint_id}"

    def release_endpoint(self, ep: Endpoint, by: str, host_gone: bool = False) -> tuple[bool, str | None]:
        """Delete the endpoint record and its address at once, leaving a tombstone.

        Returns (record deleted, address released). The address goes only if
        it is still this endpoint's (or an unstamped claim of the same host).
        ``host_gone``: only while the endpoint's host has no live claim
        (Conflict otherwise: it came back).
        """
        subnet = netaddr.IPNetwork(f"{ep.ip}/{ep.prefixlen}").cidr
        alloc_key = self.k_alloc(str(subnet), int(netaddr.IPAddress(ep.ip)) - subnet.first)

        def attempt(read: Reading) -> tuple[list[Put | Delete], tuple[bool, str | None]]:
            if host_gone and read.get(self.k_host(ep.host)) is not None:
                raise Conflict(f"host {ep.host} is alive again: endpoint {ep.id[:12]} is its own to release")
            key = self._endpoint_key(ep.id, read)
            rec = read.get(key)
            item = read.get(alloc_key)
            held = self._load_alloc(item)
            ops: list[Put | Delete] = [Put(self.k_tombstone(ep.id), json.dumps(
                {"endpoint": ep.id, "host": ep.host, "ip": ep.ip, "network": ep.network, "by": by,
                 "time": time.time()}))]
            if rec is not None:
                ops += [Delete(key), Delete(self.k_locator(ep.id))]
            mine = held is not None and (held.endpoint == ep.id or (
                not held.endpoint and held.host == ep.host and held.kind == "endpoint"))
            if mine:
                ops.append(Delete(alloc_key))
            return ops, (rec is not None, ep.ip if mine else None)
        return compare_and_swap(self.kv, attempt, Conflict(
            f"endpoint {ep.id[:12]} kept changing while being released: retry"), tries=3)

    def tombstone(self, endpoint_id: str) -> dict | None:
        return self._load_dict(self.kv.get(self.k_tombstone(endpoint_id)), "tombstone", check_tombstone)

    def list_tombstones(self) -> list[tuple[str, dict]]:
        """(endpoint id, tombstone) of every released endpoint."""
        return self._keyed_dicts(self.k_tombstone(""), "tombstone", check_tombstone)

    def _keyed_dicts(self, prefix: str, kind: str, check: Callable[[dict], None]) -> list[tuple[str, dict]]:
        """(endpoint id, record) under prefix; bad ids and bad records skipped."""
        found = []
        for item in self.kv.get_prefix(prefix):
            endpoint_id = item.key.rsplit("/", 1)[1]
            if not DOCKER_ID_RE.fullmatch(endpoint_id):
                self.bad.found(item.key, kind, "the key does not end in an endpoint id (64 hex digits)")
                continue
            data = self._load_dict(item, kind, check)
            if data is not None:
                found.append((endpoint_id, data))
        return found

    def delete_tombstone(self, endpoint_id: str) -> None:
        self.kv.txn([], [Delete(self.k_tombstone(endpoint_id))])

    def delete_key(self, key: str) -> None:
        self.kv.txn([], [Delete(key)])

    def request_release(self, host: str, endpoint_id: str, force: bool, by: str) -> None:
        self.kv.txn([], [Put(self.k_release(host, endpoint_id),
                             json.dumps({"state": "pending", "force": force, "by": by, "time": time.time()}))])

    def release_request(self, host: str, endpoint_id: str) -> dict | None:
        return self._load_dict(self.kv.get(self.k_release(host, endpoint_id)), "release", check_release_request)

    def pending_release_requests(self, host: str) -> list[tuple[str, dict]]:
        """(endpoint id, request) of every request queued for a host, answered or not."""
        return self._keyed_dicts(self.k_release(host), "release", check_release_request)

    def answer_release_request(self, host: str, endpoint_id: str, answer: dict | None,
                               asked: dict | None = None) -> bool:
        """Remove a request once carried out, or keep it with the reason it was
        refused; with ``asked``, only while the request is still the one carried
        out (a newer one written meanwhile is kept). False when it was not."""
        key = self.k_release(host, endpoint_id)

        def attempt(read: Reading) -> tuple[list[Put | Delete], bool]:
            if asked is not None and self._load_dict(read.get(key), "release", check_release_request) != asked:
                return [], False
            return ([Delete(key)] if answer is None else [Put(key, json.dumps(answer))]), True
        return compare_and_swap(self.kv, attempt, Conflict(f"release request {key} kept changing: retry"))

    # -- bandwidth profiles -----------------------------------------------------------
    def k_profile(self, name: str = "") -> str:
        return f"{self.prefix}/profiles/{name}"

    def list_profiles(self) -> dict[str, Profile]:
        return {p.name: p for p in self._records(Profile, self.k_profile())}

    def put_profile(self, profile: Profile, create: bool) -> None:
        """Create (refused if it exists) or change (refused if it does not) a profile."""
        key = self.k_profile(profile.name)
        guard = absent(key) if create else Compare(key, "create", "!=", 0)
        if not self.kv.txn([guard], [Put(key, profile.to_json())]):
            raise Conflict(f"profile {profile.name} exists already: use 'netctl profile set'") if create else \
                NotFound(f"profile {profile.name!r} does not exist: see 'netctl profile ls'")

    def delete_profile(self, name: str) -> list[str]:
        """Delete a profile and detach it from networks and endpoints, at once.
        Returns what it was attached to."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], list[str]]:
            if read.get(self.k_profile(name)) is None:
                raise NotFound(f"profile {name!r} does not exist: see 'netctl profile ls'")
            ops: list[Put | Delete] = [Delete(self.k_profile(name))]
            users = []
            for item, net in self._items(Network, self.k_network("")):
                if net.profile == name:
                    net.profile = ""
                    read.guard(item)
                    ops.append(Put(item.key, net.to_json()))
                    users.append(f"network {net.label}")
            for item, ep in self._endpoint_items():
                if ep.limit.get("profile") == name:
                    ep.limit = {}
                    read.guard(item)
                    ops.append(Put(item.key, ep.to_json()))
                    users.append(f"endpoint {ep.id[:12]}")
            return ops, users
        return compare_and_swap(self.kv, attempt, Conflict(f"profile {name} kept changing while being removed: retry"))

    def update_network(self, net_id: str, change: Callable[[Network], None]) -> Network:
        """Apply change(network) and write it back, retrying on a concurrent write."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], Network]:
            item = read.get(self.k_network(net_id))
            net = self._load(Network, item)
            if item is None or net is None:
                raise NotFound(f"network {net_id} does not exist" + ("" if item is None else
                               ": its record is bad, see 'netctl status'"))
            change(net)
            return [Put(item.key, net.to_json())], net
        return compare_and_swap(self.kv, attempt, Conflict(f"network {net_id} kept changing: retry"))

    def change_endpoint(self, endpoint_id: str, change: Callable[[Endpoint], None], tries: int = 5) -> Endpoint:
        """Apply change(endpoint) and write it back, retrying on a concurrent write."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], Endpoint]:
            item = read.get(self._endpoint_key(endpoint_id, read))
            ep = self._load_endpoint(item)
            if item is None or ep is None:
                raise NotFound(f"endpoint {endpoint_id[:12]} does not exist" + ("" if item is None else
                               ": its record is bad, see 'netctl status'"))
            change(ep)
            return [Put(item.key, ep.to_json())], ep
        return compare_and_swap(self.kv, attempt, Conflict(f"endpoint {endpoint_id[:12]} kept changing: retry"),
                                tries=tries)

    def record_sandbox(self, endpoint_id: str, sandbox_key: str) -> bool:
        """Note a container's network namespace in its endpoint's record (a
        concurrent 'netctl endpoint set' may win twice); False when the record
        kept changing. Nothing is written for a record that is gone or says so already."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], bool]:
            key = self._endpoint_key(endpoint_id, read)
            ep = self._load_endpoint(read.get(key))
            if ep is None or ep.sandbox == sandbox_key:
                return [], True
            ep.sandbox = sandbox_key
            return [Put(key, ep.to_json())], True
        try:
            return compare_and_swap(self.kv, attempt, Conflict("the record kept changing"), tries=3)
        except Conflict:
            return False

    # -- cluster-wide settings ------------------------------------------------------------
    def k_setting(self, name: str) -> str:
        return f"{self.prefix}/settings/{name}"

    def arp_mode(self) -> str:
        item = self.kv.get(self.k_setting("arp-mode"))
        if item is None:
            return "proxy"
        mode = item.value.decode(errors="replace")
        if mode not in ("proxy", "flood"):
            self.bad.found(item.key, "setting", f"arp-mode {mode!r} is neither proxy nor flood")
            return "proxy"
        self.bad.fine(item.key)
        return mode

    def set_arp_mode(self, mode: str) -> None:
        self.kv.txn([], [Put(self.k_setting("arp-mode"), mode)])

    # -- following a kind of record --------------------------------------------------------
    # Each call builds a list-and-watch cache (cache.py) of one key range,
    # decoded by the same checked loaders as the reads above; hostview.py
    # holds a host's set of them.
    def _cache(self, prefix: str, decode: Callable[[Item], R | None], name: str,
               on_change: Callable[[str, R | None, R | None], None] | None) -> Cache[R]:
        return Cache(self.kv, prefix, decode, name, on_change, forget=self.bad.fine)

    def cache_networks(self, on_change=None) -> Cache[Network]:
        return self._cache(self.k_network(""), lambda item: self._load(Network, item), "networks", on_change)

    def cache_profiles(self, on_change=None) -> Cache[Profile]:
        return self._cache(self.k_profile(), lambda item: self._load(Profile, item), "profiles", on_change)

    def cache_settings(self, on_change=None) -> Cache[str]:
        return self._cache(self.k_setting(""), self._decode_setting, "settings", on_change)

    def cache_bindings(self, host: str, on_change=None) -> Cache[Binding]:
        return self._cache(f"{self.prefix}/bindings/{host}/", lambda item: self._load(Binding, item),
                           "bindings", on_change)

    def cache_network_endpoints(self, network: str, on_change=None) -> Cache[Endpoint]:
        return self._cache(self.k_member(network), self._load_endpoint, f"endpoints:{network}", on_change)

    def cache_legacy_endpoints(self, on_change=None) -> Cache[Endpoint]:
        return self._cache(self.k_legacy_endpoint(""), self._load_endpoint, "endpoints:old-layout", on_change)

    def cache_release_requests(self, host: str, on_change=None) -> Cache[tuple[str, dict]]:
        """(endpoint id, request) by key."""
        def decode(item: Item) -> tuple[str, dict] | None:
            endpoint_id = item.key.rsplit("/", 1)[1]
            if not DOCKER_ID_RE.fullmatch(endpoint_id):
                self.bad.found(item.key, "release", "the key does not end in an endpoint id (64 hex digits)")
                return None
            data = self._load_dict(item, "release", check_release_request)
            return None if data is None else (endpoint_id, data)
        return self._cache(self.k_release(host), decode, "release-requests", on_change)

    @staticmethod
    def setting_name(key: str) -> str:
        return key.rsplit("/", 1)[1]

    def _decode_setting(self, item: Item) -> str | None:
        name, value = self.setting_name(item.key), item.value.decode(errors="replace")
        if name == "arp-mode" and value not in ("proxy", "flood"):
            self.bad.found(item.key, "setting", f"arp-mode {value!r} is neither proxy nor flood")
            return None
        self.bad.fine(item.key)
        return value

    # -- bad records ---------------------------------------------------------------------
    def scan_bad_records(self) -> list[tuple[str, str, str]]:
        """(key, kind, what is wrong) of every bad record under the prefix, each
        key family checked as its readers check it; for ``netctl status``."""
        probe = Store(self.kv, self.prefix, BadRecords(quiet=True))
        records: dict[str, type[Record]] = {"networks": Network, "bindings": Binding,
                                            "profiles": Profile, "hostinfo": Host}
        for item in self.kv.get_prefix(f"{self.prefix}/"):
            family, _, rest = item.key[len(self.prefix) + 1:].partition("/")
            if family in ("endpoints", "net-endpoints"):
                probe._load_endpoint(item)
            elif family == "index" and rest.startswith("endpoint/"):
                probe._endpoint_key(rest.partition("/")[2])
            elif family in records:
                probe._load(records[family], item)
            elif family == "ipam":
                if not OFFSET_RE.fullmatch(rest.rpartition("/")[2]):
                    probe.bad.found(item.key, "allocation", "the key's offset is not 8 hex digits")
                else:
                    probe._load_alloc(item)
            elif family == "index":
                kind, _, value = rest.partition("/")
                probe._index(kind, value)
            elif family in ("release", "released"):
                kind, check = (("release", check_release_request) if family == "release"
                               else ("tombstone", check_tombstone))
                if not DOCKER_ID_RE.fullmatch(item.key.rsplit("/", 1)[1]):
                    probe.bad.found(item.key, kind, "the key does not end in an endpoint id (64 hex digits)")
                else:
                    probe._load_dict(item, kind, check)
            elif family == "settings" and rest == "arp-mode":
                probe.arp_mode()
            elif family in ("reconcile", "hosts"):
                probe._load_dict(item, "report" if family == "reconcile" else "host",
                                 check_reconcile_counters if item.key.endswith("/counters") else None)
        return sorted((key, kind, problem) for key, (kind, problem) in probe.bad.current().items())

    # -- health ------------------------------------------------------------------------
    def ping(self) -> None:
        """One small read; raises StoreUnavailable when etcd does not answer."""
        self.kv.get(self.k_meta_networks())

    # -- leases ------------------------------------------------------------------------
    def lease_keeper(self, ttl: int, every: float, name: str, on_grant: Callable[[int], None] | None = None,
                     proof: Callable[[], bool] | None = None, logger: logging.Logger | None = None,
                     proof_every: float = 0.0) -> LeaseKeeper:
        """A lease (not granted yet) to hold keys on; see lease.py."""
        return LeaseKeeper(self.kv, ttl, every, name, on_grant, proof, logger, proof_every)

    # -- hosts ----------------------------------------------------------------------
    def k_host(self, host: str) -> str:
        return f"{self.prefix}/hosts/{host}"

    def k_hostinfo(self, host: str) -> str:
        return f"{self.prefix}/hostinfo/{host}"

    def register_host(self, host: Host, lease: int) -> None:
        """Write a host record unguarded (tests and tools that stand in for a
        daemon); a daemon claims its id with ``claim_host``."""
        self.kv.txn([], [Put(self.k_host(host.host), host.to_json(), lease=lease),
                         Put(self.k_hostinfo(host.host), host.to_json())])

    def claim_host(self, reg: Registration, lease: int,
                   may_take: Callable[[Instance | None], bool]) -> tuple[bool, Instance | None]:
        """Take ``hosts/<host>`` on ``lease`` with ``reg`` (and ``hostinfo/<host>``)
        in one transaction guarded by what was read there: created when
        absent, replaced only when ``may_take`` accepts its holder.

        Returns (True, None) when claimed, else (False, holder); holder is None
        when the record there is not a valid claim (never taken)."""
        key = self.k_host(reg.host)

        def attempt(read: Reading) -> tuple[list[Put | Delete], tuple[bool, Instance | None]]:
            item = read.get(key)
            if item is not None:
                try:
                    found: Instance | None = Registration.from_json(item.value).instance
                except IdentityBadRecord as exc:
                    self.bad.found(key, "registration", str(exc))
                    return [], (False, None)
                if not may_take(found):
                    return [], (False, found)
            value = reg.to_json()
            return [Put(key, value, lease=lease), Put(self.k_hostinfo(reg.host), value)], (True, None)
        return compare_and_swap(self.kv, attempt, Conflict(f"host id {reg.host} kept changing while it was "
                                                           "claimed: retry"))

    def stamp_claim(self, reg: Registration, claimed: str) -> bool:
        """Write a live host's durable record (its last_seen), only while
        ``hosts/<host>`` still holds the claim written as ``claimed``: False
        when the lease ran out or another instance holds the id."""
        return self.kv.txn([Compare(self.k_host(reg.host), "value", "==", claimed)],
                           [Put(self.k_hostinfo(reg.host), reg.to_json())], idempotent=True)

    def host_registration(self, host: str) -> tuple[Registration | None, bool]:
        """A host's registration and whether it is alive: its live claim, else
        the last one it wrote (``hostinfo/``); (None, False) when it never
        registered. A record that is not a registration raises InvalidRequest."""
        for key, alive in ((self.k_host(host), True), (self.k_hostinfo(host), False)):
            item = self.kv.get(key)
            if item is None:
                continue
            try:
                return Registration.from_json(item.value), alive
            except IdentityBadRecord as exc:
                self.bad.found(key, "registration", str(exc))
                raise InvalidRequest(f"the registration of host {host} ({key}) is not one written by this "
                                     f"version of netplugin ({exc}): restart that host's daemon to write it "
                                     "again") from None
        return None, False

    # -- how long a host has been gone, by etcd's clock ---------------------------------
    def k_gone(self, host: str, observer: str, what: str) -> str:
        return f"{self.prefix}/hostgone/{host}/{observer}/{what}"

    def host_gone_for(self, host: str, observer: str, seconds: float) -> bool:
        """Whether ``host`` has been without a live claim for at least
        ``seconds``, measured by etcd alone: the first time ``observer`` finds
        it gone, a timer key is put on a new lease of that TTL beside a durable
        ``since`` key; the host is gone long enough once etcd has expired that
        lease. The count starts again if the host wrote anything since (its
        ``hostinfo/`` revision moved) or ``seconds`` changed. A host that never
        registered is never gone. No clock of any host is read."""
        ttl = max(1, int(-(-seconds // 1)))
        since_key, timer_key = self.k_gone(host, observer, "since"), self.k_gone(host, observer, "timer")
        if self.kv.get(self.k_host(host)) is not None:
            stale = f"{self.prefix}/hostgone/{host}/"
            if self.kv.count_prefix(stale):
                self.kv.txn([], [Delete(stale, prefix=True)])
            return False
        info = self.kv.get(self.k_hostinfo(host))
        if info is None:
            return False
        since = self.kv.get(since_key)
        mark = {"ttl": ttl, "hostinfo_revision": info.mod_revision}
        if since is not None:
            try:
                same = json.loads(since.value) == mark
            except ValueError:
                same = False
            if same:
                return self.kv.get(timer_key) is None
        lease = self.kv.grant_lease(ttl)
        if not self.kv.txn([absent(self.k_host(host)), unchanged(info.key, info.mod_revision),
                            unchanged(since_key, since.mod_revision if since else 0)],
                           [Put(since_key, json.dumps(mark, sort_keys=True)), Put(timer_key, "", lease=lease)]):
            self.kv.revoke_lease(lease)
        return False

    def list_hosts(self) -> list[tuple[Host, bool]]:
        """Every host ever registered, with whether its lease is alive."""
        alive = {i.key.rsplit("/", 1)[1] for i in self.kv.get_prefix(f"{self.prefix}/hosts/", keys_only=True)}
        return [(h, h.host in alive) for h in self._records(Host, f"{self.prefix}/hostinfo/")]

    def hosts_without_claim(self) -> set[str]:
        """Hosts that registered once and hold no live claim now: two keys-only
        reads, whatever the number of endpoints."""
        def names(family: str) -> set[str]:
            return {i.key.rsplit("/", 1)[1] for i in self.kv.get_prefix(f"{self.prefix}/{family}/", keys_only=True)}
        return {h for h in names("hostinfo") - names("hosts") if HOST_RE.fullmatch(h)}

    def host_alive(self, host: str) -> bool:
        return self.kv.get(self.k_host(host)) is not None

    def stamp_host(self, host: Host) -> bool:
        """Write a live host's durable record (its last_seen), only while its
        leased record exists: False when the lease ran out."""
        return self.kv.txn([Compare(self.k_host(host.host), "create", "!=", 0)],
                           [Put(self.k_hostinfo(host.host), host.to_json())], idempotent=True)

    # -- locks and reports -------------------------------------------------------------
    def k_lock(self, name: str) -> str:
        return f"{self.prefix}/locks/{name}"

    def try_lock(self, name: str, owner: str, lease: int) -> bool:
        return self.kv.txn([absent(self.k_lock(name))], [Put(self.k_lock(name), owner, lease=lease)])

    def lock_owner(self, name: str) -> str | None:
        item = self.kv.get(self.k_lock(name))
        return item.value.decode(errors="replace") if item else None

    def k_reconcile(self, host: str, what: str) -> str:
        return f"{self.prefix}/reconcile/{host}/{what}"

    def last_reconcile(self, host: str) -> dict | None:
        """The report of a host's last reconcile run."""
        return self.get_json(self.k_reconcile(host, "last"))

    def reconcile_counters(self, host: str) -> dict | None:
        """A host's running reconcile totals."""
        return self._load_dict(self.kv.get(self.k_reconcile(host, "counters")), "report", check_reconcile_counters)

    def save_reconcile(self, host: str, last: dict, counters: dict) -> None:
        self.put_json(self.k_reconcile(host, "last"), last)
        self.put_json(self.k_reconcile(host, "counters"), counters)

    def put_json(self, key: str, obj: dict) -> None:
        self.kv.txn([], [Put(key, json.dumps(obj, sort_keys=True))])

    def get_json(self, key: str) -> dict | None:
        return self._load_dict(self.kv.get(key), "report")


    # -- events: changes as they happen, and etcd's revision some time ago -----------------------
    def _key_id(self, kind: str, pattern: re.Pattern, part: int = -1, parts: int = 1) -> Callable[[str], str | None]:
        """key_id of a Family: the key's part-th part after its family's prefix,
        which must have ``parts`` parts, each checked against pattern."""
        def key_id(key: str) -> str | None:
            tail = key.split("/")[-parts:] if key.count("/") >= parts else []
            if len(tail) != parts or not all(pattern.fullmatch(t) for t in tail):
                self.bad.found(key, kind, "the key is not one of this family's")
                return None
            return tail[part]
        return key_id

    def change_families(self) -> list[Family]:
        """What ``netctl events`` follows: networks, endpoints, profiles,
        settings, hosts coming and going, reconcile reports, release requests."""
        any_id = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
        ep_id = self._key_id("endpoint", any_id, -1, 3)

        def endpoint_attrs(item: Item) -> dict | None:
            ep = self._load_endpoint(item)
            return None if ep is None else {"network": ep.network_name or ep.network, "network_id": ep.network,
                                            "host": ep.host, "ip": ep.ip}

        def network_attrs(item: Item) -> dict | None:
            n = self._load(Network, item)
            return None if n is None else {"name": n.label, "subnet": n.subnet, "vlan": n.vlan}

        def profile_attrs(item: Item) -> dict | None:
            p = self._load(Profile, item)
            return None if p is None else {"rate_kbps": p.rate_kbps, "burst_kb": p.burst_kb}

        def setting_attrs(item: Item) -> dict | None:
            value = self._decode_setting(item)
            return None if value is None else {"value": value}

        def report_attrs(item: Item) -> dict | None:
            if not item.key.endswith("/last"):
                return None
            rep = self._load_dict(item, "report")
            return None if rep is None else {"host": item.key.split("/")[-2], "status": rep.get("status", ""),
                                             "findings": len(rep.get("findings") or []),
                                             "released": rep.get("released", 0), "errors": rep.get("errors", 0)}
        return [
            Family(self.k_network(""), "network", self._key_id("network", NETWORK_ID_RE), network_attrs),
            Family(f"{self.prefix}/net-endpoints/", "endpoint", ep_id, endpoint_attrs),
            Family(self.k_legacy_endpoint(""), "endpoint", self._key_id("endpoint", DOCKER_ID_RE), endpoint_attrs),
            Family(self.k_profile(), "profile", self._key_id("profile", any_id), profile_attrs),
            Family(self.k_setting(""), "setting", self._key_id("setting", any_id), setting_attrs),
            Family(f"{self.prefix}/hosts/", "host", self._key_id("host", HOST_RE), lambda item: {}),
            Family(f"{self.prefix}/reconcile/", "reconcile", self._key_id("reconcile", any_id, 0, 2), report_attrs),
            Family(f"{self.prefix}/release/", "release", self._key_id("release", any_id, -1, 2),
                   lambda item: {"host": item.key.split("/")[-2]}),
        ]

    def follow_changes(self, start_revision: int, stop: threading.Event) -> Iterator[Change]:
        """netplugin's changes from start_revision (0: from now) on, until stop."""
        return follow_changes(self.kv, self.prefix, self.change_families(), start_revision, stop)

    def head_revision(self) -> int:
        return head_revision(self.kv, self.prefix)

    def revision_ago(self, seconds: float, stop: threading.Event, window: int = 4096) -> tuple[int, str]:
        """The first revision of the last ``seconds`` and how it was found. No
        clock is compared with another's: each live host's heartbeat stamps
        (``hostinfo/``, its own clock) are read back from etcd's history and
        compared with that host's newest stamp only; the latest revision that
        every such host puts before the moment is taken (to within a
        heartbeat). The history is read in growing windows back from now."""
        items, head = self.kv.snapshot(f"{self.prefix}/hostinfo/")
        alive = {i.key.rsplit("/", 1)[1] for i in self.kv.get_prefix(f"{self.prefix}/hosts/", keys_only=True)}
        newest = {}
        for item in items:
            host = self._load(Host, item)
            if host is not None and host.host in alive:
                newest[item.key] = (host.last_seen, item.mod_revision)
        if not newest:
            raise InvalidRequest("no live host stamps etcd to measure time by: give --since as a revision "
                                 f"(the current one is {head})")
        last_stamp = max(rev for _, rev in newest.values())
        while True:
            start = max(1, head - window)
            before: dict[str, int] = {}           # host key -> its last stamp at or before the moment
            done = threading.Event()
            try:
                for ev in self.kv.watch_prefix(f"{self.prefix}/hostinfo/", start, done):
                    host = self._load(Host, Item(ev.key, ev.value, 0, ev.mod_revision)) if ev.kind == "put" else None
                    if host is not None and ev.key in newest and host.last_seen <= newest[ev.key][0] - seconds:
                        before[ev.key] = ev.mod_revision
                    if ev.mod_revision >= last_stamp or stop.is_set():
                        break
            except HistoryCompacted as exc:
                start = exc.compacted_revision + 1
                return start, f"etcd's history starts at revision {start}: every change it still holds"
            finally:
                done.set()
            if before:
                rev = max(before.values()) + 1
                return rev, f"revision {rev}, by the heartbeats of {len(newest)} live host(s)"
            if start == 1:
                return 1, "the whole of etcd's history is younger than that"
            window *= 4

def adoptable(holder: Allocation, reservation: Allocation) -> bool:
    """May a new network take over this claim for its gateway or aux address?

    Docker claims the gateway and aux addresses through IPAM before
    CreateNetwork: the gateway of a network being created (by any host, since
    several hosts may create the same network at once), and an aux address
    claimed by this host as a plain address (IPAM cannot tell it from --ip).
    """
    if holder.endpoint:
        return False
    if reservation.kind == "gateway":
        return holder.kind == "gateway"
    return holder.host == reservation.host and holder.kind in (reservation.kind, "endpoint")


def describe_holder(alloc: Allocation) -> str:
    """Who holds an address, in words an operator can act on."""
    if alloc.kind == "gateway":
        return "the gateway of its network"
    if alloc.kind == "aux":
        return "an auxiliary address of its network"
    if alloc.endpoint:
        return f"endpoint {alloc.endpoint[:12]} on host {alloc.host}"
    return f"a container being created on host {alloc.host} (claimed {time.ctime(alloc.created)})"

