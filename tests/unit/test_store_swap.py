"""The store's one compare-and-swap helper (netplugin/store.py compare_and_swap)
and the record changes built on it, over MemoryKV: a lost race is tried
again on the fresh record, and a record that keeps changing ends with the
caller's error after a bounded number of tries."""

from __future__ import annotations

import pytest

from netplugin.backup.model import QUEUED, Job
from netplugin.backup.store import BackupStore
from netplugin.errors import Conflict, NotFound
from netplugin.kv import Put
from netplugin.model import Allocation, Endpoint, Network, Profile
from netplugin.store import Reading, Store, compare_and_swap

from .fakes import MemoryKV


@pytest.fixture
def store(kv) -> Store:
    return Store(kv)


class Racer:
    """Someone else writes ``key`` right before each of the next ``times``
    transactions: the guard of a swap that read it before then fails."""

    def __init__(self, kv: MemoryKV, monkeypatch, key: str, value, times: int):
        self.kv, self.key, self.value, self.left = kv, key, value, times
        self.txns = 0
        self._txn = kv.txn
        monkeypatch.setattr(kv, "txn", self.txn)

    def txn(self, compares, success, idempotent=False):
        self.txns += 1
        if self.left > 0:
            self.left -= 1
            value = self.value() if callable(self.value) else self.value
            assert self._txn([], [Put(self.key, value)])
        return self._txn(compares, success, idempotent)


def network(net_id: str = "n-000000000001", **kw) -> Network:
    return Network(id=net_id, name=kw.pop("name", "prod"), subnet="10.10.0.0/24", gateway="10.10.0.1", vlan=100, **kw)


def endpoint(eid: str = "e" * 64, **kw) -> Endpoint:
    return Endpoint(id=eid, network="n-000000000001", docker_network="d" * 64, host="h1", ip="10.10.0.5", prefixlen=24,
                    mac="02:4e:0a:0a:00:05", port="np" + eid[:11], peer="nc" + eid[:11], vlan=100, **kw)


# -- the helper ---------------------------------------------------------------------------------

def test_a_swap_writes_guarded_by_what_it_read(kv):
    kv.txn([], [Put("/a", "1")])

    def attempt(read: Reading):
        item = read.get("/a")
        missing = read.get("/b")
        assert item is not None and missing is None
        return [Put("/a", item.value + b"2"), Put("/b", "new")], "done"
    assert compare_and_swap(kv, attempt, Conflict("gave up")) == "done"
    assert kv.get("/a").value == b"12" and kv.get("/b").value == b"new"


def test_a_lost_race_is_tried_again_on_the_fresh_record(kv, monkeypatch):
    kv.txn([], [Put("/a", "1")])
    racer = Racer(kv, monkeypatch, "/a", "10", times=1)
    seen = []

    def attempt(read: Reading):
        value = int(read.get("/a").value)
        seen.append(value)
        return [Put("/a", str(value + 1))], value + 1
    assert compare_and_swap(kv, attempt, Conflict("gave up")) == 11
    assert seen == [1, 10] and racer.txns == 2          # a lost try, then a win
    assert kv.get("/a").value == b"11"


def test_a_key_created_meanwhile_is_a_lost_race_too(kv, monkeypatch):
    Racer(kv, monkeypatch, "/b", "theirs", times=1)

    def attempt(read: Reading):
        item = read.get("/b")
        return ([Put("/b", "mine")], "created") if item is None else ([], item.value.decode())
    assert compare_and_swap(kv, attempt, Conflict("gave up")) == "theirs"
    assert kv.get("/b").value == b"theirs"


def test_a_swap_gives_up_with_the_callers_error_after_its_tries(kv, monkeypatch):
    kv.txn([], [Put("/a", "1")])
    Racer(kv, monkeypatch, "/a", "x", times=100)
    tries = []

    def attempt(read: Reading):
        tries.append(read.get("/a"))
        return [Put("/a", "mine")], None
    with pytest.raises(Conflict, match=r"^it kept changing$"):
        compare_and_swap(kv, attempt, Conflict("it kept changing"), tries=4)
    assert len(tries) == 4 and kv.get("/a").value == b"x"


def test_an_error_raised_by_the_change_ends_the_swap(kv):
    def attempt(read: Reading):
        read.get("/nothing")
        raise NotFound("no such thing")
    with pytest.raises(NotFound, match="no such thing"):
        compare_and_swap(kv, attempt, Conflict("gave up"))
    assert kv.txn_count == 0


def test_only_guarded_items_guard_the_write(kv, monkeypatch):
    """Items read from a prefix guard the write only when the attempt says so."""
    kv.txn([], [Put("/p/1", "a"), Put("/p/2", "b")])
    Racer(kv, monkeypatch, "/p/2", "changed", times=1)

    def attempt(read: Reading):
        first = next(i for i in kv.get_prefix("/p/") if i.key == "/p/1")
        read.guard(first)
        return [Put("/p/1", "A")], True
    assert compare_and_swap(kv, attempt, Conflict("gave up"))
    assert kv.get("/p/1").value == b"A"


# -- the record changes built on it ----------------------------------------------------------

def test_update_network_retries_then_gives_up_with_its_message(kv, store, monkeypatch):
    net = network()
    store.create_network(net, [])
    key = store.k_network(net.id)
    racer = Racer(kv, monkeypatch, key, lambda: kv.get(key).value, times=1)
    got = store.update_network(net.id, lambda n: setattr(n, "profile", "gold"))
    assert got.profile == "gold" and store.get_network(net.id).profile == "gold"
    racer.left = 100
    with pytest.raises(Conflict, match=r"^network n-000000000001 kept changing: retry$"):
        store.update_network(net.id, lambda n: setattr(n, "profile", "silver"))
    with pytest.raises(NotFound, match=r"^network n-2 does not exist$"):
        store.update_network("n-2", lambda n: None)


def test_change_endpoint_retries_then_gives_up_with_its_message(kv, store, monkeypatch):
    ep = endpoint()
    kv.txn([], [Put(store.k_legacy_endpoint(ep.id), ep.to_json())])
    key = store.k_legacy_endpoint(ep.id)
    racer = Racer(kv, monkeypatch, key, lambda: kv.get(key).value, times=2)
    assert store.change_endpoint(ep.id, lambda e: setattr(e, "limit", {"rate_kbps": 1000, "burst_kb": 100})).limit == \
        {"rate_kbps": 1000, "burst_kb": 100}
    assert racer.txns == 3
    racer.left = 100
    with pytest.raises(Conflict, match=rf"^endpoint {ep.id[:12]} kept changing: retry$"):
        store.change_endpoint(ep.id, lambda e: None)
    with pytest.raises(NotFound, match=r"^endpoint ffffffffffff does not exist$"):
        store.change_endpoint("f" * 64, lambda e: None)


def test_record_sandbox_writes_once_and_gives_up_quietly(kv, store, monkeypatch):
    ep = endpoint()
    key = store.k_legacy_endpoint(ep.id)
    kv.txn([], [Put(key, ep.to_json())])
    assert store.record_sandbox(ep.id, "/var/run/docker/netns/abc")
    assert store.get_endpoint(ep.id)[0].sandbox == "/var/run/docker/netns/abc"
    rev = kv.revision
    assert store.record_sandbox(ep.id, "/var/run/docker/netns/abc") and kv.revision == rev   # said already
    assert store.record_sandbox("f" * 64, "/x") and kv.revision == rev                         # no record
    racer = Racer(kv, monkeypatch, key, lambda: kv.get(key).value, times=100)
    assert store.record_sandbox(ep.id, "/var/run/docker/netns/new") is False
    assert racer.txns == 3                              # three tries, each after someone else's write


def test_delete_profile_retries_when_a_user_changes(kv, store, monkeypatch):
    store.put_profile(Profile(name="gold", rate_kbps=1000, burst_kb=100), create=True)
    net = network(profile="gold")
    store.create_network(net, [])
    key = store.k_network(net.id)
    racer = Racer(kv, monkeypatch, key, lambda: kv.get(key).value, times=1)
    assert store.delete_profile("gold") == ["network prod"]
    assert store.get_network(net.id).profile == "" and store.list_profiles() == {}
    assert racer.txns == 2
    store.put_profile(Profile(name="gold", rate_kbps=1000, burst_kb=100), create=True)
    store.update_network(net.id, lambda n: setattr(n, "profile", "gold"))
    racer.left = 100
    with pytest.raises(Conflict, match=r"^profile gold kept changing while being removed: retry$"):
        store.delete_profile("gold")


def test_release_endpoint_gives_up_after_three_lost_races(kv, store, monkeypatch):
    ep = endpoint()
    alloc = Allocation(ep.ip, "endpoint", "h1", endpoint=ep.id, network="n-000000000001")
    alloc_key = store.k_alloc("10.10.0.0/24", 5)
    kv.txn([], [Put(store.k_legacy_endpoint(ep.id), ep.to_json()), Put(alloc_key, alloc.to_json())])
    racer = Racer(kv, monkeypatch, alloc_key, lambda: kv.get(alloc_key).value, times=3)
    with pytest.raises(Conflict, match=rf"^endpoint {ep.id[:12]} kept changing while being released: retry$"):
        store.release_endpoint(ep, "test")
    assert racer.txns == 3 and store.get_endpoint(ep.id) is not None
    assert store.release_endpoint(ep, "test") == (True, ep.ip)
    assert kv.get(alloc_key) is None and store.tombstone(ep.id)["by"] == "test"


def test_backup_job_update_tries_eight_times(kv, monkeypatch):
    bstore = BackupStore(kv)
    job = Job(id="j-1", kind="backup", target="db1", host="h1", spec={}, state=QUEUED, created=1.0)
    bstore.submit(job)
    key = bstore.k_job(job.id)
    racer = Racer(kv, monkeypatch, key, lambda: kv.get(key).value, times=100)
    with pytest.raises(Conflict, match=r"^job j-1 kept changing: retry$"):
        bstore.update(job.id, lambda j: setattr(j, "message", "x"))
    assert racer.txns == 8
    racer.left = 0
    with pytest.raises(NotFound, match=r"^job j-2 does not exist$"):
        bstore.update("j-2", lambda j: None)
