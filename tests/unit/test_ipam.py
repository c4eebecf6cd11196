"""IPAM on the real Store over MemoryKV: ranges, static addresses, release
rules, high fill, random picks and concurrent allocation."""

from __future__ import annotations

import math
import random
import sys
import threading

import netaddr
import pytest

from netplugin.errors import Conflict, InvalidRequest, NotFound, PoolExhausted, StoreUnavailable
from netplugin.ipam import Ipam, Pool, pool_id_for
from netplugin.model import Allocation, Endpoint
from netplugin.networks import remove
from netplugin.store import Store

from .conftest import did
from .fakes import MemoryKV

P = "/netplugin/v1"


def ip_of(address: str) -> netaddr.IPAddress:
    return netaddr.IPAddress(address.split("/")[0])


# -- PoolIDs and ranges ----------------------------------------------------------------------

def test_pool_id_parsing():
    pool = Pool("10.10.0.0/24@10.10.0.128/25")
    assert (str(pool.subnet), str(pool.range), pool.cidr) == ("10.10.0.0/24", "10.10.0.128/25", "10.10.0.0/24")
    assert Pool("10.10.0.0/24").range is None
    assert pool_id_for(netaddr.IPNetwork("10.10.0.0/24"), netaddr.IPNetwork("10.10.0.128/25")) == \
        "10.10.0.0/24@10.10.0.128/25"
    for bad in ("", None, 5, "10.10.0.0/24@10.10.1.0/25", "10.10.0.0/24@10.10.0.0/16", "10.10.0.9/24"):
        with pytest.raises((NotFound, InvalidRequest)):
            Pool(bad)


def test_ip_range_is_respected(np):
    net = np.create_network(subnet="10.10.0.0/24", ip_range="10.10.0.128/26")
    assert net.pool_id == "10.10.0.0/24@10.10.0.128/26"
    got = [ip_of(np.ipam.request_address(net.pool_id, "", False)) for _ in range(40)]
    assert len(set(got)) == 40
    assert all(ip in netaddr.IPNetwork("10.10.0.128/26") for ip in got)


def test_range_of_network_used_by_host_without_sub_pool(np, np2):
    """Another host's RequestPool has no --ip-range; the network's recorded
    range still bounds dynamic addresses."""
    np.create_network(subnet="10.10.0.0/24", ip_range="10.10.0.192/27")
    net2 = np2.create_network(subnet="10.10.0.0/24", vlan=None)
    assert net2.pool_id == "10.10.0.0/24"
    got = [ip_of(np2.ipam.request_address(net2.pool_id, "", False)) for _ in range(20)]
    assert all(ip in netaddr.IPNetwork("10.10.0.192/27") for ip in got)


def test_static_address_outside_range_is_allowed(np):
    net = np.create_network(subnet="10.10.0.0/24", ip_range="10.10.0.128/25")
    c = np.run_container(net, ip="10.10.0.20")
    assert c.address == "10.10.0.20/24"
    held = np.allocation("10.10.0.0/24", "10.10.0.20")
    assert (held.kind, held.endpoint) == ("endpoint", c.endpoint)


def test_dynamic_allocation_skips_static_addresses(np):
    net = np.create_network(subnet="10.10.0.0/29")          # .1 gw, .2-.6 usable
    np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "10.10.0.4"})
    got = {str(ip_of(np.ipam.request_address(net.pool_id, "", False))) for _ in range(4)}
    assert got == {"10.10.0.2", "10.10.0.3", "10.10.0.5", "10.10.0.6"}


# -- release rules ---------------------------------------------------------------------------

def test_release_is_idempotent(np):
    net = np.create_network()
    addr = np.ipam.request_address(net.pool_id, "", False)
    ip = str(ip_of(addr))
    assert np.ipam.release_address(net.pool_id, ip) is True
    snap = np.kv.dump()
    assert np.ipam.release_address(net.pool_id, ip) is False
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": ip})
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.200"})   # never held
    assert np.kv.dump() == snap


def test_release_accepts_address_with_prefix(np):
    net = np.create_network()
    addr = np.ipam.request_address(net.pool_id, "", False)
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": addr})
    assert np.allocation("10.10.0.0/24", str(ip_of(addr))) is None


def test_gateway_not_released_while_network_exists(np):
    net = np.create_network()
    snap = np.kv.dump()
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.1"})
    assert np.kv.dump() == snap
    assert np.allocation("10.10.0.0/24", "10.10.0.1").kind == "gateway"


def test_aux_not_released_while_network_exists(np):
    from .test_errors import netctl_network_with_aux
    netctl_network_with_aux(np)
    snap = np.kv.dump()
    assert np.ipam.release_address("10.10.0.0/24", "10.10.0.2") is False
    assert np.kv.dump() == snap


def test_gateway_of_a_network_never_created_is_released(np):
    pool = np.request_pool("10.10.0.0/24")
    np.request_gateway(pool["PoolID"])
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.10.0.1"})
    assert np.kv.dump() == {}


def test_late_release_does_not_free_another_hosts_address(np, np2):
    net = np.create_network()
    net2 = np2.create_network(vlan=None)
    c2 = np2.run_container(net2, ip="10.10.0.50")
    snap = np.kv.dump()
    # h1 gets a late (wrong) ReleaseAddress for an address h2 holds
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.50"})
    assert np.kv.dump() == snap
    assert np.allocation("10.10.0.0/24", "10.10.0.50").endpoint == c2.endpoint
    # even when h2's endpoint is gone, h1 may not free h2's address
    np2.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": net2.id, "EndpointID": c2.endpoint})
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.50"})
    assert np.allocation("10.10.0.0/24", "10.10.0.50") is not None
    np2.ok("IpamDriver.ReleaseAddress", {"PoolID": net2.pool_id, "Address": "10.10.0.50"})
    assert np.allocation("10.10.0.0/24", "10.10.0.50") is None


def test_late_release_does_not_free_a_live_endpoints_address(np):
    net = np.create_network()
    c = np.run_container(net)
    snap = np.kv.dump()
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": c.ip})
    assert np.kv.dump() == snap
    np.ok("NetworkDriver.Join", {"NetworkID": net.id, "EndpointID": c.endpoint, "SandboxKey": ""})


def test_release_address_loses_a_race_cleanly(np):
    """release_address deletes only if the allocation is unchanged since read."""
    net = np.create_network()
    addr = np.ipam.request_address(net.pool_id, "", False)
    offset = int(ip_of(addr)) - netaddr.IPNetwork("10.10.0.0/24").first
    alloc, rev = np.store.get_allocation("10.10.0.0/24", offset)
    np.store.kv.txn([], [])   # no-op
    alloc.endpoint = did("x")
    assert np.kv.txn([], [__import__("netplugin.kv", fromlist=["Put"]).Put(
        np.store.k_alloc("10.10.0.0/24", offset), alloc.to_json())])
    assert np.store.release_address("10.10.0.0/24", offset, rev) is False
    assert np.store.get_allocation("10.10.0.0/24", offset) is not None


def test_delete_network_frees_the_whole_pool(np):
    net = np.create_network()
    a = np.run_container(net)
    np.stop_container(net, a)
    np.ipam.request_address(net.pool_id, "10.10.0.9", False)   # claimed, never used
    np.remove_network(net)
    assert np.store.network_by_name("prod") is not None, "a claimed address keeps the network"
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": "10.10.0.9"})
    remove(np.store, "prod")
    assert np.kv.keys(f"{P}/ipam/") == []


# -- high fill and random picks ---------------------------------------------------------------

def prefill(kv: MemoryKV, store: Store, subnet: str, offsets) -> None:
    """Write allocation keys straight into the fake etcd (fast)."""
    value = Allocation("", "endpoint", "other-host", endpoint=did("filler")).to_json()
    kv.load((store.k_alloc(subnet, o), value) for o in offsets)


def test_slash16_at_95_percent_still_allocates(np):
    net = np.create_network(subnet="10.16.0.0/16")
    subnet = netaddr.IPNetwork("10.16.0.0/16")
    usable = list(range(2, subnet.size - 1))                  # .0.1 is the gateway
    rng = random.Random(7)
    taken = set(rng.sample(usable, math.ceil(0.95 * (subnet.size - 2)) - 1))
    prefill(np.kv, np.store, "10.16.0.0/16", taken)
    assert np.kv.count_prefix(f"{P}/ipam/10.16.0.0-16/") >= 0.95 * (subnet.size - 2)
    got = set()
    for _ in range(30):
        ip = ip_of(np.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": ""})["Address"])
        offset = int(ip) - subnet.first
        assert offset not in taken and offset not in (0, 1, subnet.size - 1)
        got.add(offset)
    assert len(got) == 30


def test_slash16_with_only_the_last_chunk_free(np):
    """Chunks that are full are skipped; the one free chunk is found."""
    net = np.create_network(subnet="10.16.0.0/16")
    subnet = netaddr.IPNetwork("10.16.0.0/16")
    last_chunk = (subnet.size >> 8) - 1
    prefill(np.kv, np.store, "10.16.0.0/16", range(2, last_chunk << 8))
    got = {ip_of(np.ipam.request_address(net.pool_id, "", False)) for _ in range(10)}
    assert len(got) == 10
    assert all(int(ip) - subnet.first >= last_chunk << 8 for ip in got)
    assert all(ip != subnet.broadcast for ip in got)


def test_slash16_full_reports_exhaustion(np):
    net = np.create_network(subnet="10.16.0.0/16")
    subnet = netaddr.IPNetwork("10.16.0.0/16")
    prefill(np.kv, np.store, "10.16.0.0/16", range(2, subnet.size - 1))
    with pytest.raises(PoolExhausted) as exc:
        np.ipam.request_address(net.pool_id, "", False)
    assert exc.value.message.startswith(
        f"network prod has no free address in 10.16.0.0/16 ({subnet.size - 2} in use)")


@pytest.mark.parametrize("subnet,ip_range", [("10.10.0.0/30", ""), ("10.10.0.0/29", ""), ("10.10.0.0/28", ""),
                                             ("10.10.0.0/24", "10.10.0.0/24"), ("10.10.0.0/24", "10.10.0.0/28"),
                                             ("10.10.0.0/24", "10.10.0.240/28"), ("10.10.0.0/23", "")])
def test_random_picks_never_network_or_broadcast(subnet, ip_range):
    net = netaddr.IPNetwork(subnet)
    rng_net = netaddr.IPNetwork(ip_range) if ip_range else net
    pool_id = f"{subnet}@{ip_range}" if ip_range else subnet
    expected = {ip for ip in rng_net if ip not in (net.network, net.broadcast)}
    for seed in range(20 if len(expected) <= 16 else 3):
        store = Store(MemoryKV())
        ipam = Ipam(store, "h1", rng=random.Random(seed))
        got = []
        with pytest.raises(PoolExhausted):
            for _ in range(len(expected) + 1):
                got.append(ip_of(ipam.request_address(pool_id, "", False)))
        assert set(got) == expected and len(got) == len(expected)


def test_allocators_of_different_hosts_start_in_different_chunks(np):
    """Each allocator starts from a random chunk, so hosts sharing a pool
    rarely race for the same addresses."""
    net = np.create_network(subnet="10.20.0.0/20")
    chunks = set()
    for seed in range(8):
        ipam = Ipam(np.store, f"h{seed}", rng=random.Random(seed))
        chunks.add((int(ip_of(ipam.request_address(net.pool_id, "", False))) >> 8) & 0xF)
    assert len(chunks) > 1


def test_steady_allocation_is_one_transaction_and_no_read(np):
    """After the first allocation has cached the network and a chunk's free
    list, each further allocation is the claim alone."""
    net = np.create_network(subnet="10.20.0.0/20")
    first = ip_of(np.ipam.request_address(net.pool_id, "", False))
    reads, txns = np.kv.read_count, np.kv.txn_count
    got = [ip_of(np.ipam.request_address(net.pool_id, "", False)) for _ in range(50)]
    assert np.kv.read_count == reads and np.kv.txn_count == txns + 50
    assert len(set(got + [first])) == 51
    net_id = np.store.network_by_subnet(net.subnet).id
    assert all(a.network == net_id for _, a in np.store.list_allocations(net.subnet) if a.kind == "endpoint")


def test_stale_free_list_never_gives_an_address_twice(np, np2):
    """Another host takes every address this one remembered as free: the
    claims are refused, the chunk is read again, and no address is doubled."""
    net = np.create_network(subnet="10.20.0.0/24")
    first = ip_of(np.ipam.request_address(net.pool_id, "", False))
    taken = {first}
    for _ in range(200):
        taken.add(ip_of(np2.ipam.request_address(net.pool_id, "", False)))
    mine = [ip_of(np.ipam.request_address(net.pool_id, "", False)) for _ in range(20)]
    assert not set(mine) & taken and len(set(mine)) == 20
    assert len(np.store.list_allocations(net.subnet)) == len(taken) + 20 + 1   # + the gateway


def test_cached_network_replaced_is_noticed_by_the_claim(np, np2):
    """The network is deleted and another host makes one with the same subnet: the next
    allocation is refused by the guard, re-reads, and is stamped with the new one."""
    old = np.create_network(subnet="10.20.0.0/24", name="first")
    old_id = np.store.network_by_subnet(old.subnet).id
    first = np.ipam.request_address(old.pool_id, "", False)
    np.ok("IpamDriver.ReleaseAddress", {"PoolID": old.pool_id, "Address": str(ip_of(first))})
    np.remove_network(old)
    new = np2.create_network(subnet="10.20.0.0/24", name="second")   # h1's cache is not told
    new_id = np.store.network_by_name("second").id
    assert new_id != old_id
    ip = ip_of(np.ipam.request_address(new.pool_id, "", False))
    held = {a.ip: a for _, a in np.store.list_allocations(new.subnet)}
    assert held[str(ip)].network == new_id


# -- concurrency ---------------------------------------------------------------------------------

def test_concurrent_allocation_is_unique_then_exhausted(np):
    net = np.create_network(subnet="10.10.0.0/24")
    results: list[list[str]] = [[] for _ in range(8)]
    errors: list[tuple[int, str]] = []
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        client = np.app.test_client()
        start.wait()
        while True:
            resp = client.post("/IpamDriver.RequestAddress",
                               json={"PoolID": net.pool_id, "Address": "", "Options": {}})
            body = resp.get_json(force=True)
            if resp.status_code != 200:
                errors.append((resp.status_code, body["Error"]))
                return
            results[i].append(body["Address"])

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)     # switch threads often: make races likely
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    got = [a for r in results for a in r]
    assert len(got) == len(set(got)) == 253, f"{len(got)} addresses, {len(set(got))} unique"
    assert "10.10.0.1/24" not in got
    assert np.kv.count_prefix(f"{P}/ipam/10.10.0.0-24/") == 254
    assert len(errors) == 8
    for status, message in errors:
        assert status == 409
        assert message.startswith("network prod has no free address in 10.10.0.0/24 (254 in use)"), message


def test_concurrent_claims_from_two_ipams_on_one_store(kv):
    """Two daemons (two Ipam objects) on one etcd never hand out one address twice."""
    store = Store(kv)
    ipams = [Ipam(store, f"h{i}", rng=random.Random(i)) for i in range(2)]
    got: list[str] = []
    lock = threading.Lock()

    def worker(ipam):
        for _ in range(100):
            a = ipam.request_address("10.10.0.0/24", "", False)
            with lock:
                got.append(a)
    threads = [threading.Thread(target=worker, args=(ip,)) for ip in ipams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == len(set(got)) == 200


# -- usage ---------------------------------------------------------------------------------------

def test_usage_counts(np):
    from .test_errors import netctl_network_with_aux
    netctl_network_with_aux(np)
    net = np.create_network(vlan=None)
    np.run_container(net)
    np.run_container(net)
    usage = np.ipam.usage(np.store.network_by_name("prod"))
    assert usage == {"subnet": "10.10.0.0/24", "size": 254, "used": 4, "free": 250, "ranges": [],
                     "reserved": ["10.10.0.1", "10.10.0.2"]}


def test_request_address_errors_are_typed(np):
    net = np.create_network()
    with pytest.raises(Conflict):
        np.ipam.request_address(net.pool_id, "10.10.0.1", False)
    with pytest.raises(InvalidRequest):
        np.ipam.request_address(net.pool_id, "10.10.0.0", False)
    with pytest.raises(NotFound):
        np.ipam.request_address("nonsense", "", False)


class RacingKV(MemoryKV):
    """A fake etcd where another host wins the next `steal` address claims:
    just before each of our create-if-absent claims lands, a competitor
    writes the same key."""

    def __init__(self, steal: int):
        super().__init__()
        self.steal = steal

    def txn(self, compares, success, idempotent=False):
        compares, success = list(compares), list(success)
        if (self.steal > 0 and len(compares) == 1 and compares[0].target == "create"
                and "/ipam/" in compares[0].key and len(success) == 1):
            self.steal -= 1
            rival = Allocation("", "endpoint", "rival-host").to_json()
            from netplugin.kv import Put
            super().txn([], [Put(compares[0].key, rival)])
        return super().txn(compares, success, idempotent)


def test_lost_races_do_not_declare_a_pool_with_free_addresses_exhausted():
    """/29: gateway .1, five free addresses. Another host wins our first four
    claims; one address is still free, so the allocation must succeed (read
    the chunk again) rather than report exhaustion."""
    kv = RacingKV(steal=0)
    store = Store(kv)
    ipam = Ipam(store, "h1", rng=random.Random(3))
    ipam.request_address("10.10.0.0/29", "", True)          # the gateway, .1
    kv.steal = 4
    address = ipam.request_address("10.10.0.0/29", "", False)
    assert ip_of(address) in netaddr.IPNetwork("10.10.0.0/29")
    assert store.count_allocations("10.10.0.0/29") == 6


def test_lost_races_then_truly_full_is_exhausted():
    kv = RacingKV(steal=0)
    store = Store(kv)
    ipam = Ipam(store, "h1", rng=random.Random(3))
    ipam.request_address("10.10.0.0/29", "", True)
    kv.steal = 5
    with pytest.raises(PoolExhausted) as exc:
        ipam.request_address("10.10.0.0/29", "", False)
    assert "(6 in use)" in exc.value.message


@pytest.mark.parametrize("n", [1, 2, 3, 4, 16, 60, 256, 257])
def test_scan_order_visits_every_chunk_once_in_varied_orders(n):
    ipam = Ipam(Store(MemoryKV()), "h1", rng=random.Random(n))
    chunks = list(range(100, 100 + n))
    orders = [ipam._scan_order(chunks) for _ in range(20)]
    assert all(sorted(o) == chunks for o in orders)
    if n >= 16:   # not all the same walk: allocators that start at once spread out
        assert len({tuple(o[:3]) for o in orders}) > 10


class LostAnswerKV(MemoryKV):
    """The next transactions raise StoreUnavailable as when a member dies
    mid-call: 'applied' ones took effect first, 'lost' ones never arrived,
    'rival' ones lost to another host's write of the same key."""

    def __init__(self, plan: list[str]):
        super().__init__()
        self.plan = plan
        self.attempts = 0

    def txn(self, compares, success, idempotent=False):
        compares, success = list(compares), list(success)
        self.attempts += 1
        what = self.plan.pop(0) if self.plan else "ok"
        if what == "rival":
            from netplugin.kv import Put
            super().txn([], [Put(success[0].key, Allocation("", "endpoint", "rival-host").to_json())])
        if what == "applied":
            super().txn(compares, success)
        if what in ("applied", "lost", "rival"):
            raise StoreUnavailable("store unavailable: etcd did not answer (connection lost)")
        return super().txn(compares, success, idempotent)


@pytest.mark.parametrize("plan,claimed,sent", [
    (["applied"], True, 1),          # applied, answer lost: read back, ours
    (["lost"], True, 2),             # never arrived: read back, absent, sent again
    (["rival"], False, 1),           # someone else's: refused
])
def test_a_claim_whose_answer_is_lost_is_settled_by_reading_back(plan, claimed, sent):
    kv = LostAnswerKV(plan)
    store = Store(kv)
    alloc = Allocation("10.9.0.5", "endpoint", "h1")
    assert store.claim_address("10.9.0.0/24", 5, alloc) is claimed
    item = kv.get(store.k_alloc("10.9.0.0/24", 5))
    assert (Allocation.from_json(item.value).host == "h1") is claimed
    assert kv.attempts == sent


def test_a_claim_fails_clearly_when_etcd_stays_away():
    kv = LostAnswerKV(["lost"])
    kv_get = kv.get
    kv.get = lambda key: (_ for _ in ()).throw(StoreUnavailable("store unavailable: etcd is down"))
    with pytest.raises(StoreUnavailable):
        Store(kv).claim_address("10.9.0.0/24", 5, Allocation("10.9.0.5", "endpoint", "h1"))
    kv.get = kv_get
