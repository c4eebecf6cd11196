"""Global address pools on top of the store.

Every address in use is one etcd key, claimed with a create-if-absent
transaction, so any number of daemons can allocate from one pool at once and
never hand out an address twice. To find a free address quickly at any fill,
the pool is scanned 256 addresses (one "chunk") at a time, starting from a
random chunk. Chunks seen full are skipped for a moment; exhaustion is only
declared after every chunk was read.

The common case is one etcd round trip per allocation, the claim itself:
- the network of a pool is cached per process, and every claim carries a
  guard that its record is unchanged, so a deleted or changed network is
  noticed by the claim that would have used it (then re-read, and retried);
- the free offsets of the last chunk read are kept, so the next allocations
  claim from that list without reading the chunk again. The list may be stale
  (another host took an address meanwhile): the claim is create-if-absent, so
  a stale entry costs one refused transaction, never a duplicate, and sends
  this allocator to another chunk. Each process works from its own random
  chunk, so allocators rarely collide.

PoolID on the wire is the subnet, or ``subnet@ip-range`` when Docker passed
``--ip-range``: identical requests give identical PoolIDs, as Docker expects.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import TYPE_CHECKING

import netaddr

from . import poolspan
from .errors import Conflict, InvalidRequest, NetpluginError, NotFound, PoolExhausted
from .model import (
    ALLOC_AUX,
    ALLOC_ENDPOINT,
    ALLOC_GATEWAY,
    Allocation,
    Network,
    check_address,
    check_range,
    check_subnet,
)
from .store import CHUNK_BITS, Store, describe_holder

if TYPE_CHECKING:
    from .naming import NetworkNamer

log = logging.getLogger(__name__)

ADDRESS_SPACE = "netplugin"
GATEWAY_REQUEST = "com.docker.network.gateway"
FULL_CHUNK_MEMORY = 30.0     # seconds a chunk seen full is skipped on a first pass (never on the last look)
PICKS_PER_CHUNK = 4          # random free addresses tried in a chunk before moving on
PLANS_KEPT = 1024            # parsed PoolIDs and their chunk lists kept per process (then all forgotten)


class _StaleNetwork(Exception):
    """A claim was refused because the cached network record changed."""


class Pool:
    """A parsed PoolID."""

    def __init__(self, pool_id: str):
        if not isinstance(pool_id, str) or not pool_id:
            raise InvalidRequest(f"PoolID {pool_id!r} is missing or not a string")
        subnet, _, rng = pool_id.partition("@")
        try:
            self.subnet = check_subnet(subnet)
            self.range = check_range(rng, self.subnet) if rng else None
        except InvalidRequest:
            raise NotFound(f"pool {pool_id!r} is unknown to netplugin: it was not made by this IPAM driver") from None
        self.id = pool_id

    @property
    def cidr(self) -> str:
        return str(self.subnet)


def pool_id_for(subnet: netaddr.IPNetwork, rng: netaddr.IPNetwork | None) -> str:
    return f"{subnet}@{rng}" if rng else str(subnet)


class Ipam:
    def __init__(self, store: Store, host_id: str, rng: random.Random | None = None,
                 namer: NetworkNamer | None = None):
        """``namer`` names a Docker-made network that is still unnamed, so that an
        error about it says "prod", not "n-48a7..." (None: errors use the id)."""
        self.store = store
        self.host_id = host_id
        self.namer = namer
        self.random = rng or random.Random()  # noqa: S311 - spreads picks over a pool; no secret
        self._full: dict[tuple[str, int], float] = {}
        self._sub_pools: dict[str, str] = {}
        self._networks: dict[str, tuple[Network, int]] = {}          # subnet -> (network, revision)
        self._free: dict[tuple[str, tuple], list[int]] = {}           # (subnet, spans) -> free offsets
        self._pools: dict[str, Pool] = {}                            # PoolID -> parsed
        self._plans: dict[tuple, tuple[list, list[int]]] = {}        # (subnet, ranges) -> (spans, chunks)
        self._lock = threading.Lock()

    # -- pools ----------------------------------------------------------------
    def request_pool(self, pool: str, sub_pool: str, v6: bool) -> tuple[str, str, dict]:
        """Validate a pool request; returns (PoolID, Pool, Data)."""
        if v6:
            raise InvalidRequest("netplugin serves IPv4 pools only: create the network without --ipv6")
        if not pool:
            raise InvalidRequest("netplugin needs an explicit pool: pass --subnet (for example --subnet 10.10.0.0/24)")
        subnet = check_subnet(pool)
        rng = check_range(sub_pool, subnet) if sub_pool else None
        data: dict[str, str] = {}
        for net in self.store.list_networks():
            other = netaddr.IPNetwork(net.subnet)
            if other == subnet:
                data[GATEWAY_REQUEST] = f"{net.gateway}/{subnet.prefixlen}"
            elif other.first <= subnet.last and subnet.first <= other.last:
                raise Conflict(f"subnet {subnet} overlaps network {self._named(net).label} ({net.subnet}): "
                               "choose another subnet")
        with self._lock:   # CreateNetwork, which follows, is not told the --ip-range
            self._sub_pools[str(subnet)] = str(rng) if rng else ""
        return pool_id_for(subnet, rng), str(subnet), data

    def _named(self, net: Network) -> Network:
        if net.name is None and self.namer is not None:
            try:
                return self.namer.name_now(net)
            except NetpluginError:
                pass                      # the id will do; the error being raised matters more
        return net

    def recent_sub_pool(self, subnet: str) -> str:
        """The --ip-range of the last RequestPool for subnet, or ''."""
        with self._lock:
            return self._sub_pools.get(subnet, "")

    # -- addresses ------------------------------------------------------------
    def request_address(self, pool_id: str, address: str, gateway: bool) -> str:
        """Claim an address; returns 'ip/len'."""
        pool = self._pool(pool_id)
        for fresh in (gateway, True):      # a gateway request is rare: always read it afresh
            found = self._network(pool.cidr, fresh)
            net = found[0] if found else None
            guard = (found[0].id, found[1]) if found else None
            try:
                if gateway:
                    ip = self._gateway(pool, net, address, guard)
                elif address:
                    ip = self._claim_static(pool, net, address, guard)
                else:
                    ip = self.allocate(pool.subnet, self._dynamic_ranges(pool, net), net, guard)
                return f"{ip}/{pool.subnet.prefixlen}"
            except _StaleNetwork:
                continue
        raise Conflict(f"the network of pool {pool.cidr} changed twice while an address was being claimed: retry")

    def _pool(self, pool_id: str) -> Pool:
        """The parsed PoolID, parsed once per process: an allocation whose
        etcd part is one transaction should not spend as long parsing."""
        with self._lock:
            pool = self._pools.get(pool_id) if isinstance(pool_id, str) else None
        if pool is None:
            pool = Pool(pool_id)
            with self._lock:
                if len(self._pools) >= PLANS_KEPT:
                    self._pools.clear()
                self._pools[pool_id] = pool
        return pool

    def _network(self, cidr: str, fresh: bool) -> tuple[Network, int] | None:
        """The pool's network and its revision, from the cache unless fresh."""
        if not fresh:
            with self._lock:
                cached = self._networks.get(cidr)
            if cached:
                return cached
        found = self.store.network_rev_by_subnet(cidr)
        with self._lock:
            if found:
                self._networks[cidr] = found
            else:
                self._networks.pop(cidr, None)
        return found

    def _claim(self, cidr: str, offset: int, alloc: Allocation, guard: tuple[str, int] | None) -> bool:
        """Create-if-absent under the network guard. A refusal is normally a
        rival's claim; callers that then find the address free call
        _check_guard, so the usual race costs no extra read."""
        return self.store.claim_address(cidr, offset, alloc, guard)

    def _check_guard(self, cidr: str, guard: tuple[str, int] | None) -> None:
        """Raise _StaleNetwork when the cached network record changed."""
        if guard is not None and self.store.network_revision(guard[0]) != guard[1]:
            with self._lock:
                self._networks.pop(cidr, None)
            raise _StaleNetwork(cidr)

    def _gateway(self, pool: Pool, net: Network | None, address: str, guard: tuple[str, int] | None) -> str:
        if net is not None:
            if address and str(check_address(address, pool.subnet, "gateway")) != net.gateway:
                raise Conflict(f"network {net.label} has gateway {net.gateway}, not {address}: "
                               f"pass --gateway {net.gateway} or leave --gateway out")
            return net.gateway
        ip = check_address(address, pool.subnet, "gateway") if address else netaddr.IPAddress(pool.subnet.first + 1)
        offset = int(ip) - pool.subnet.first
        alloc = Allocation(str(ip), ALLOC_GATEWAY, self.host_id)
        if self._claim(pool.cidr, offset, alloc, guard):
            return str(ip)
        held = self.store.get_allocation(pool.cidr, offset)
        if held is None:
            self._check_guard(pool.cidr, guard)
        if held and held[0].kind == ALLOC_GATEWAY:
            return str(ip)          # another host is creating the same network right now
        raise Conflict(f"gateway {ip} is already held by {describe_holder(held[0]) if held else 'someone'}")

    def _claim_static(self, pool: Pool, net: Network | None, address: str, guard: tuple[str, int] | None) -> str:
        ip = check_address(address, pool.subnet)
        if net is not None and str(ip) in net.aux.values():
            return str(ip)          # Docker reserving an aux address the network already holds
        offset = int(ip) - pool.subnet.first
        alloc = Allocation(str(ip), ALLOC_ENDPOINT, self.host_id, network=net.id if net else "")
        if self._claim(pool.cidr, offset, alloc, guard):
            return str(ip)
        held = self.store.get_allocation(pool.cidr, offset)
        if held is None:
            self._check_guard(pool.cidr, guard)
        where = f" in network {net.label}" if net else ""
        holder = describe_holder(held[0]) if held else "an allocation that was just released: retry"
        raise Conflict(f"address {ip}{where} is already in use by {holder}: choose another --ip")

    def _dynamic_ranges(self, pool: Pool, net: Network | None) -> list[netaddr.IPNetwork]:
        if pool.range is not None:
            return [pool.range]
        if net is not None and net.ranges:
            return [netaddr.IPNetwork(r) for r in net.ranges]
        return [pool.subnet]

    def allocate(self, subnet: netaddr.IPNetwork, ranges: list[netaddr.IPNetwork], net: Network | None,
                 guard: tuple[str, int] | None = None) -> str:
        """Claim one free address from ranges (all inside subnet)."""
        cidr = str(subnet)
        spans, chunks = self._plan(subnet, ranges)
        if not chunks:
            raise PoolExhausted(f"network {self._label(net, cidr)} has no usable address in {cidr}")
        alloc = Allocation("", ALLOC_ENDPOINT, self.host_id, network=net.id if net else "")
        cache_key = (cidr, tuple(spans))
        refused: set[int] = set()                   # offsets whose claim was refused in this call
        ip = self._from_free_list(subnet, cache_key, alloc, guard, refused)
        if ip:
            return ip
        order = self._scan_order(chunks)
        skipped: list[int] = []
        for chunk in order:
            if self._recently_full(cidr, chunk):
                skipped.append(chunk)
                continue
            ip = self._try_chunk(subnet, chunk, spans, alloc, guard, refused)
            if ip:
                return ip
        for chunk in skipped:                       # second look before saying "full"
            ip = self._try_chunk(subnet, chunk, spans, alloc, guard, refused)
            if ip:
                return ip
        in_use = sum(len(self._used_in_spans(cidr, c, spans)) for c in chunks)
        where = cidr if ranges == [subnet] else ", ".join(str(r) for r in ranges)
        raise PoolExhausted(f"network {self._label(net, cidr)} has no free address in {where} ({in_use} in use): "
                            "release unused endpoints (netctl endpoint ls) or widen the range")

    def _plan(self, subnet: netaddr.IPNetwork, ranges: list[netaddr.IPNetwork]) -> tuple[list, list[int]]:
        """The offset spans of ranges and the chunks they cover, worked out once."""
        key = (subnet.first, subnet.prefixlen, tuple((r.first, r.last) for r in ranges))
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            lo_ok, hi_ok = 1, subnet.size - 2          # never the network or broadcast address
            spans = [(max(r.first - subnet.first, lo_ok), min(r.last - subnet.first, hi_ok)) for r in ranges]
            spans = [(a, b) for a, b in spans if a <= b]
            chunks = sorted({c for a, b in spans for c in range(a >> CHUNK_BITS, (b >> CHUNK_BITS) + 1)})
            plan = (spans, chunks)
            with self._lock:
                if len(self._plans) >= PLANS_KEPT:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def _scan_order(self, chunks: list[int]) -> list[int]:
        """Every chunk once, in an order of this call's own: a random start and
        a random step prime to the count. Allocators that walked in address
        order from random starts all met at the first free chunk after a full
        run (a pool filled in order), and raced for it."""
        n = len(chunks)
        start, step = self.random.randrange(n), 1
        if n > 2:
            step = self.random.randrange(1, n)
            while math.gcd(step, n) != 1:
                step = self.random.randrange(1, n)
        return [chunks[(start + i * step) % n] for i in range(n)]

    def _label(self, net: Network | None, cidr: str) -> str:
        return net.label if net else cidr

    def _used_in_spans(self, cidr: str, chunk: int, spans) -> set[int]:
        used = self.store.used_offsets_in_chunk(cidr, chunk)
        return {o for o in used if any(a <= o <= b for a, b in spans)}

    def _pop_free(self, cache_key: tuple) -> int | None:
        with self._lock:
            free = self._free.get(cache_key)
            if not free:
                return None
            return free.pop(self.random.randrange(len(free)))

    def _from_free_list(self, subnet: netaddr.IPNetwork, cache_key: tuple, alloc: Allocation,
                        guard: tuple[str, int] | None, refused: set[int]) -> str | None:
        """Claim an offset remembered free from the last chunk read. A refusal
        means another allocator works in this chunk too: the list is dropped,
        so this one moves to a chunk of its own instead of racing on."""
        offset = self._pop_free(cache_key)
        if offset is None:
            return None
        if self._claim_offset(subnet, offset, alloc, guard):
            return alloc.ip
        refused.add(offset)
        with self._lock:
            self._free.pop(cache_key, None)
        return None

    def _claim_offset(self, subnet: netaddr.IPNetwork, offset: int, alloc: Allocation,
                      guard: tuple[str, int] | None) -> bool:
        alloc.ip = str(netaddr.IPAddress(subnet.first + offset))
        alloc.created = time.time()
        return self._claim(str(subnet), offset, alloc, guard)

    def _try_chunk(self, subnet: netaddr.IPNetwork, chunk: int, spans, alloc: Allocation,
                   guard: tuple[str, int] | None = None, refused: set[int] | None = None) -> str | None:
        """Claim a random free address of the chunk; None only once a fresh read finds it full.

        Losing a race re-reads the chunk, so concurrent allocators can never
        make a pool with free addresses look exhausted. What is left free is
        remembered for the next allocations. An address refused earlier that
        the read shows free was refused by the network guard, not a rival
        (or its holder let it go since): the guard is checked then.
        """
        cidr = str(subnet)
        base = chunk << CHUNK_BITS
        refused = set() if refused is None else refused
        while True:
            used = self.store.used_offsets_in_chunk(cidr, chunk)
            mine = {o for o in refused if base <= o < base + (1 << CHUNK_BITS)}
            if mine - used:
                self._check_guard(cidr, guard)
                refused -= mine
            free = [o for a, b in spans for o in range(max(a, base), min(b, base + (1 << CHUNK_BITS) - 1) + 1)
                    if o not in used]
            if not free:
                with self._lock:
                    self._full[(cidr, chunk)] = time.monotonic()
                return None
            for _ in range(min(PICKS_PER_CHUNK, len(free))):
                offset = free.pop(self.random.randrange(len(free)))
                if self._claim_offset(subnet, offset, alloc, guard):
                    with self._lock:
                        self._free[(cidr, tuple(spans))] = free
                    return alloc.ip
                refused.add(offset)

    def _recently_full(self, cidr: str, chunk: int) -> bool:
        with self._lock:
            seen = self._full.get((cidr, chunk))
            if seen is None:
                return False
            if time.monotonic() - seen > FULL_CHUNK_MEMORY:
                del self._full[(cidr, chunk)]
                return False
            return True

    def release_address(self, pool_id: str, address: str) -> bool:
        """Free an address. Idempotent: an address nobody holds is already free.

        Returns True when an allocation was deleted. Addresses that belong to a
        live network (gateway, aux), to another host, or to an endpoint whose
        record still exists are kept: a late or repeated release must never
        free an address that someone holds.
        """
        pool = Pool(pool_id)
        ip = check_address(address, pool.subnet)
        offset = int(ip) - pool.subnet.first
        held = self.store.get_allocation(pool.cidr, offset)
        if held is None:
            return False
        alloc, rev = held
        if alloc.kind in (ALLOC_GATEWAY, ALLOC_AUX):
            if self.store.network_by_subnet(pool.cidr) is not None:
                return False
        elif alloc.host != self.host_id:
            log.warning("not releasing %s: it is held by host %s", ip, alloc.host)
            return False
        with self._lock:
            self._full.pop((pool.cidr, offset >> CHUNK_BITS), None)
        # An endpoint's address goes only once its record has: one transaction checks both.
        if self.store.release_address(pool.cidr, offset, rev, endpoint_gone=alloc.endpoint):
            return True
        if alloc.endpoint and self.store.get_endpoint(alloc.endpoint) is not None:
            log.warning("not releasing %s: endpoint %s still exists", ip, alloc.endpoint[:12])
        return False

    def usage(self, net: Network) -> dict:
        """Size, used and free counts of a network's pool, for netctl: over the
        addresses the allocator can give out (its --ip-range, else its subnet),
        so a full range reads full whatever the rest of the subnet holds."""
        parts = poolspan.spans(net)
        allocs = self.store.list_allocations(net.subnet)
        usable = poolspan.size(parts)
        used = sum(1 for _, a in allocs if poolspan.inside(parts, a.ip))
        return {"subnet": net.subnet, "size": usable, "used": used, "free": usable - used,
                "ranges": net.ranges,
                "reserved": sorted((a.ip for _, a in allocs if a.kind in (ALLOC_GATEWAY, ALLOC_AUX)),
                                   key=lambda s: int(netaddr.IPAddress(s)))}
