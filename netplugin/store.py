"""The only module that knows the etcd key layout. Everything above it speaks
in records (model.py); everything below it is the KV boundary (kv.py).

Layout under the versioned prefix (default ``/netplugin/v1``)::

    networks/<id>                  Network record
    index/name/<name>              -> network id  (names are unique)
    index/subnet/<a.b.c.d-len>     -> network id  (subnets are unique)
    index/vlan/<vlan>              -> network id  (VLANs are unique)
    meta/networks                  touched by every network create/delete, so
                                   the overlap check and the write are atomic
    ipam/<a.b.c.d-len>/<offset>    Allocation, one key per address in use;
                                   offset is 8 hex digits from the subnet start
    endpoints/<endpoint-id>        Endpoint record
    bindings/<host>/<docker-net>   Binding: a host's Docker network -> global network
    hosts/<host>                   Host, bound to the daemon's lease: present while alive
    hostinfo/<host>                Host with last_seen, kept after the host dies
    release/<host>/<endpoint-id>   a request for that host to release one of its endpoints
    released/<endpoint-id>         tombstone: when and by whom an endpoint was released
    profiles/<name>                Profile: rate and burst
    settings/<name>                cluster-wide settings (arp-mode)
    locks/<name>                   a lease-bound lock (the reconciler's)
    reconcile/<host>/last          the last reconcile report of that host
    reconcile/<host>/counters      its running totals, for metrics

One key per address keeps every allocation a single-key create-if-absent
transaction: two daemons can never both win the same address, releasing is a
plain delete, and the holder of any address can be named.

No other module builds a key or calls the KV: following a kind of record
(``follow_endpoints`` ...), leases (``lease_keeper``) and locks are store
calls too. A record changed in place is read, changed and written back
guarded by the revision read, by one helper (``compare_and_swap``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import netaddr

from .errors import Conflict, NetpluginError, NotFound, StoreUnavailable
from .kv import KV, Compare, Delete, Event, Item, Put, absent, unchanged
from .lease import LeaseKeeper
from .model import Allocation, Binding, Endpoint, Host, Network, Profile
from .watch import SyncLoop

CHUNK_BITS = 8   # the pool is scanned 256 addresses at a time

T = TypeVar("T")


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


class Store:
    """Records in, records out. ``kv``, ``prefix`` and the ``k_*`` key builders
    are public for the tests and benchmarks that look at raw keys; the product's
    other modules use the record calls only."""

    def __init__(self, kv: KV, prefix: str = "/netplugin/v1"):
        self.kv = kv
        self.prefix = prefix

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

    def k_endpoint(self, endpoint_id: str) -> str:
        return f"{self.prefix}/endpoints/{endpoint_id}"

    def k_binding(self, host: str, docker_network: str) -> str:
        return f"{self.prefix}/bindings/{host}/{docker_network}"

    # -- networks -------------------------------------------------------------
    def list_networks(self) -> list[Network]:
        return [Network.from_json(i.value) for i in self.kv.get_prefix(self.k_network(""))]

    def get_network(self, net_id: str) -> Network | None:
        item = self.kv.get(self.k_network(net_id))
        return Network.from_json(item.value) if item else None

    def _index(self, kind: str, value: str | int) -> str | None:
        item = self.kv.get(self.k_index(kind, value))
        return item.value.decode() if item else None

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
        return (Network.from_json(item.value), item.mod_revision) if item else None

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
                holder = Allocation.from_json(held.value)
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
        if item is None:
            return False
        current = Network.from_json(item.value)
        current.name = name
        current.name_conflict = ""
        return self.kv.txn([unchanged(self.k_network(net.id), item.mod_revision),
                            absent(self.k_index("name", name))],
                           [Put(self.k_network(net.id), current.to_json()),
                            Put(self.k_index("name", name), net.id)])

    def mark_name_conflict(self, net: Network, message: str) -> None:
        item = self.kv.get(self.k_network(net.id))
        if item is None:
            return
        current = Network.from_json(item.value)
        current.name_conflict = message
        self.kv.txn([unchanged(self.k_network(net.id), item.mod_revision)],
                    [Put(self.k_network(net.id), current.to_json())])

    def delete_network(self, net: Network) -> None:
        """Remove the network, its indexes and every address of its pool."""
        ops: list[Put | Delete] = [
            Put(self.k_meta_networks(), str(time.time())),
            Delete(self.k_network(net.id)),
            Delete(self.k_index("subnet", subnet_key(net.subnet))),
            Delete(self.k_index("vlan", net.vlan)),
            Delete(self.k_pool(net.subnet), prefix=True),
        ]
        if net.name:
            ops.append(Delete(self.k_index("name", net.name)))
        self.kv.txn([], ops)

    # -- addresses ------------------------------------------------------------
    def claim_address(self, subnet: str, offset: int, alloc: Allocation,
                      network: tuple[str, int] | None = None) -> bool:
        """Create-if-absent: True when this caller now holds the address.

        ``network`` = (network id, mod revision) adds a guard: the claim only
        happens while that network record is unchanged, so an allocator working
        from a cached network can never stamp an address with a deleted one.
        """
        guards = [absent(self.k_alloc(subnet, offset))]
        if network is not None:
            guards.append(unchanged(self.k_network(network[0]), network[1]))
        key, value = self.k_alloc(subnet, offset), alloc.to_json()
        return self._txn_read_back(guards, [Put(key, value)], key, value)

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
        return (Allocation.from_json(item.value), item.mod_revision) if item else None

    def used_offsets_in_chunk(self, subnet: str, chunk: int) -> set[int]:
        items = self.kv.get_prefix(self.k_chunk(subnet, chunk), keys_only=True)
        return {int(i.key.rsplit("/", 1)[1], 16) for i in items}

    def count_allocations(self, subnet: str) -> int:
        return self.kv.count_prefix(self.k_pool(subnet))

    def list_allocations(self, subnet: str) -> list[tuple[int, Allocation]]:
        return [(int(i.key.rsplit("/", 1)[1], 16), Allocation.from_json(i.value))
                for i in self.kv.get_prefix(self.k_pool(subnet))]

    def release_address(self, subnet: str, offset: int, mod_revision: int, endpoint_gone: str = "") -> bool:
        """Delete the allocation if nobody changed it since it was read (and,
        with ``endpoint_gone``, only while that endpoint has no record)."""
        key = self.k_alloc(subnet, offset)
        compares = [unchanged(key, mod_revision)]
        if endpoint_gone:
            compares.append(absent(self.k_endpoint(endpoint_gone)))
        return self.kv.txn(compares, [Delete(key)])

    # -- endpoints ------------------------------------------------------------
    def create_endpoint(self, ep: Endpoint, subnet: str, offset: int, alloc_rev: int,
                        alloc: Allocation) -> bool:
        """Write the endpoint and stamp its allocation with the endpoint id, at once."""
        value = ep.to_json()
        return self._txn_read_back(
            [absent(self.k_endpoint(ep.id)), unchanged(self.k_alloc(subnet, offset), alloc_rev)],
            [Put(self.k_endpoint(ep.id), value), Put(self.k_alloc(subnet, offset), alloc.to_json())],
            self.k_endpoint(ep.id), value)

    def get_endpoint(self, endpoint_id: str) -> tuple[Endpoint, int] | None:
        item = self.kv.get(self.k_endpoint(endpoint_id))
        return (Endpoint.from_json(item.value), item.mod_revision) if item else None

    def update_endpoint(self, ep: Endpoint, mod_revision: int) -> bool:
        return self.kv.txn([unchanged(self.k_endpoint(ep.id), mod_revision)],
                           [Put(self.k_endpoint(ep.id), ep.to_json())])

    def list_endpoints(self) -> list[Endpoint]:
        return [Endpoint.from_json(i.value) for i in self.kv.get_prefix(self.k_endpoint(""))]

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.kv.txn([], [Delete(self.k_endpoint(endpoint_id))], idempotent=True)

    # -- bindings -------------------------------------------------------------
    def put_binding(self, binding: Binding) -> None:
        self.kv.txn([], [Put(self.k_binding(binding.host, binding.docker_network), binding.to_json())],
                    idempotent=True)

    def get_binding(self, host: str, docker_network: str) -> Binding | None:
        item = self.kv.get(self.k_binding(host, docker_network))
        return Binding.from_json(item.value) if item else None

    def list_bindings(self) -> list[Binding]:
        return [Binding.from_json(i.value) for i in self.kv.get_prefix(f"{self.prefix}/bindings/")]

    def delete_binding(self, host: str, docker_network: str) -> None:
        self.kv.txn([], [Delete(self.k_binding(host, docker_network))], idempotent=True)

    # -- releasing endpoints whole ----------------------------------------------
    def k_release(self, host: str, endpoint_id: str = "") -> str:
        return f"{self.prefix}/release/{host}/{endpoint_id}"

    def k_tombstone(self, endpoint_id: str) -> str:
        return f"{self.prefix}/released/{endpoint_id}"

    def release_endpoint(self, ep: Endpoint, by: str) -> tuple[bool, str | None]:
        """Delete the endpoint record and its address at once, leaving a tombstone.

        Returns (record deleted, address released). The address goes only if
        it is still this endpoint's (or an unstamped claim of the same host).
        """
        subnet = netaddr.IPNetwork(f"{ep.ip}/{ep.prefixlen}").cidr
        alloc_key = self.k_alloc(str(subnet), int(netaddr.IPAddress(ep.ip)) - subnet.first)

        def attempt(read: Reading) -> tuple[list[Put | Delete], tuple[bool, str | None]]:
            rec = read.get(self.k_endpoint(ep.id))
            item = read.get(alloc_key)
            held = Allocation.from_json(item.value) if item else None
            ops: list[Put | Delete] = [Put(self.k_tombstone(ep.id), json.dumps(
                {"endpoint": ep.id, "host": ep.host, "ip": ep.ip, "network": ep.network, "by": by,
                 "time": time.time()}))]
            if rec is not None:
                ops.append(Delete(self.k_endpoint(ep.id)))
            mine = held is not None and (held.endpoint == ep.id or (
                not held.endpoint and held.host == ep.host and held.kind == "endpoint"))
            if mine:
                ops.append(Delete(alloc_key))
            return ops, (rec is not None, ep.ip if mine else None)
        return compare_and_swap(self.kv, attempt, Conflict(
            f"endpoint {ep.id[:12]} kept changing while being released: retry"), tries=3)

    def tombstone(self, endpoint_id: str) -> dict | None:
        item = self.kv.get(self.k_tombstone(endpoint_id))
        return json.loads(item.value) if item else None

    def list_tombstones(self) -> list[tuple[str, dict]]:
        """(endpoint id, tombstone) of every released endpoint."""
        return [(i.key.rsplit("/", 1)[1], json.loads(i.value)) for i in self.kv.get_prefix(self.k_tombstone(""))]

    def delete_tombstone(self, endpoint_id: str) -> None:
        self.kv.txn([], [Delete(self.k_tombstone(endpoint_id))])

    def delete_key(self, key: str) -> None:
        self.kv.txn([], [Delete(key)])

    def request_release(self, host: str, endpoint_id: str, force: bool, by: str) -> None:
        self.kv.txn([], [Put(self.k_release(host, endpoint_id),
                             json.dumps({"state": "pending", "force": force, "by": by, "time": time.time()}))])

    def release_request(self, host: str, endpoint_id: str) -> dict | None:
        item = self.kv.get(self.k_release(host, endpoint_id))
        return json.loads(item.value) if item else None

    def pending_release_requests(self, host: str) -> list[tuple[str, dict]]:
        """(endpoint id, request) of every request queued for a host, answered or not."""
        return [(i.key.rsplit("/", 1)[1], json.loads(i.value)) for i in self.kv.get_prefix(self.k_release(host))]

    def answer_release_request(self, host: str, endpoint_id: str, answer: dict | None) -> None:
        """Remove a request once carried out, or keep it with the reason it was refused."""
        key = self.k_release(host, endpoint_id)
        self.kv.txn([], [Delete(key)] if answer is None else [Put(key, json.dumps(answer))])

    # -- bandwidth profiles -----------------------------------------------------------
    def k_profile(self, name: str = "") -> str:
        return f"{self.prefix}/profiles/{name}"

    def list_profiles(self) -> dict[str, Profile]:
        return {p.name: p for p in (Profile.from_json(i.value) for i in self.kv.get_prefix(self.k_profile()))}

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
            for item in self.kv.get_prefix(self.k_network("")):
                net = Network.from_json(item.value)
                if net.profile == name:
                    net.profile = ""
                    read.guard(item)
                    ops.append(Put(item.key, net.to_json()))
                    users.append(f"network {net.label}")
            for item in self.kv.get_prefix(self.k_endpoint("")):
                ep = Endpoint.from_json(item.value)
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
            if item is None:
                raise NotFound(f"network {net_id} does not exist")
            net = Network.from_json(item.value)
            change(net)
            return [Put(item.key, net.to_json())], net
        return compare_and_swap(self.kv, attempt, Conflict(f"network {net_id} kept changing: retry"))

    def change_endpoint(self, endpoint_id: str, change: Callable[[Endpoint], None], tries: int = 5) -> Endpoint:
        """Apply change(endpoint) and write it back, retrying on a concurrent write."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], Endpoint]:
            item = read.get(self.k_endpoint(endpoint_id))
            if item is None:
                raise NotFound(f"endpoint {endpoint_id[:12]} does not exist")
            ep = Endpoint.from_json(item.value)
            change(ep)
            return [Put(item.key, ep.to_json())], ep
        return compare_and_swap(self.kv, attempt, Conflict(f"endpoint {endpoint_id[:12]} kept changing: retry"),
                                tries=tries)

    def record_sandbox(self, endpoint_id: str, sandbox_key: str) -> bool:
        """Note a container's network namespace in its endpoint's record (a
        concurrent 'netctl endpoint set' may win twice); False when the record
        kept changing. Nothing is written for a record that is gone or says so already."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], bool]:
            item = read.get(self.k_endpoint(endpoint_id))
            ep = Endpoint.from_json(item.value) if item else None
            if ep is None or ep.sandbox == sandbox_key:
                return [], True
            ep.sandbox = sandbox_key
            return [Put(self.k_endpoint(endpoint_id), ep.to_json())], True
        try:
            return compare_and_swap(self.kv, attempt, Conflict("the record kept changing"), tries=3)
        except Conflict:
            return False

    # -- cluster-wide settings ------------------------------------------------------------
    def k_setting(self, name: str) -> str:
        return f"{self.prefix}/settings/{name}"

    def arp_mode(self) -> str:
        item = self.kv.get(self.k_setting("arp-mode"))
        return item.value.decode() if item else "proxy"

    def set_arp_mode(self, mode: str) -> None:
        self.kv.txn([], [Put(self.k_setting("arp-mode"), mode)])

    # -- following a kind of record --------------------------------------------------------
    # Each call adds a follower to a SyncLoop: on_event (default: wake the loop)
    # sees every change, and the loop is woken after every fresh read.
    def follow_endpoints(self, loop: SyncLoop, on_event: Callable[[Event], None] | None = None) -> SyncLoop:
        return loop.follow(self.kv, self.k_endpoint(""), on_event)

    def follow_networks(self, loop: SyncLoop, on_event: Callable[[Event], None] | None = None) -> SyncLoop:
        return loop.follow(self.kv, self.k_network(""), on_event)

    def follow_profiles(self, loop: SyncLoop, on_event: Callable[[Event], None] | None = None) -> SyncLoop:
        return loop.follow(self.kv, self.k_profile(), on_event)

    def follow_setting(self, loop: SyncLoop, name: str) -> SyncLoop:
        return loop.follow(self.kv, self.k_setting(name))

    def follow_release_requests(self, loop: SyncLoop, host: str) -> SyncLoop:
        return loop.follow(self.kv, self.k_release(host))

    # -- health ------------------------------------------------------------------------
    def ping(self) -> None:
        """One small read; raises StoreUnavailable when etcd does not answer."""
        self.kv.get(self.k_meta_networks())

    # -- leases ------------------------------------------------------------------------
    def lease_keeper(self, ttl: int, every: float, name: str, on_grant: Callable[[int], None] | None = None,
                     proof: Callable[[], bool] | None = None, logger: logging.Logger | None = None) -> LeaseKeeper:
        """A lease (not granted yet) to hold keys on; see lease.py."""
        return LeaseKeeper(self.kv, ttl, every, name, on_grant, proof, logger)

    # -- hosts ----------------------------------------------------------------------
    def k_host(self, host: str) -> str:
        return f"{self.prefix}/hosts/{host}"

    def k_hostinfo(self, host: str) -> str:
        return f"{self.prefix}/hostinfo/{host}"

    def register_host(self, host: Host, lease: int) -> None:
        self.kv.txn([], [Put(self.k_host(host.host), host.to_json(), lease=lease),
                         Put(self.k_hostinfo(host.host), host.to_json())])

    def list_hosts(self) -> list[tuple[Host, bool]]:
        """Every host ever registered, with whether its lease is alive."""
        alive = {i.key.rsplit("/", 1)[1] for i in self.kv.get_prefix(f"{self.prefix}/hosts/", keys_only=True)}
        return [(h, h.host in alive) for h in
                (Host.from_json(i.value) for i in self.kv.get_prefix(f"{self.prefix}/hostinfo/"))]

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
        return item.value.decode() if item else None

    def k_reconcile(self, host: str, what: str) -> str:
        return f"{self.prefix}/reconcile/{host}/{what}"

    def last_reconcile(self, host: str) -> dict | None:
        """The report of a host's last reconcile run."""
        return self.get_json(self.k_reconcile(host, "last"))

    def reconcile_counters(self, host: str) -> dict | None:
        """A host's running reconcile totals."""
        return self.get_json(self.k_reconcile(host, "counters"))

    def save_reconcile(self, host: str, last: dict, counters: dict) -> None:
        self.put_json(self.k_reconcile(host, "last"), last)
        self.put_json(self.k_reconcile(host, "counters"), counters)

    def put_json(self, key: str, obj: dict) -> None:
        self.kv.txn([], [Put(key, json.dumps(obj, sort_keys=True))])

    def get_json(self, key: str) -> dict | None:
        item = self.kv.get(key)
        return json.loads(item.value) if item else None


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

