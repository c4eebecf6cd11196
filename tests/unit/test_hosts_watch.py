"""This host in the registry (netplugin/hosts.py HostHeartbeat, Store.list_hosts)
and following a prefix (netplugin/watch.py PrefixFollower), over MemoryKV."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

import netplugin.hosts as hosts_mod
import netplugin.lease as lease_mod
from netplugin import __version__
from netplugin.config import Config
from netplugin.errors import StoreUnavailable
from netplugin.hosts import HostHeartbeat
from netplugin.kv import Delete, Put
from netplugin.model import Host
from netplugin.store import Store
from netplugin.watch import PrefixFollower

from .fakes import MemoryKV


def wait_for(cond, timeout: float = 3.0) -> bool:
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def store(kv) -> Store:
    return Store(kv)


@pytest.fixture
def cfg() -> Config:
    return Config(host_id="h1", bridge="nptest0", datapath_type="netdev", uplink="eth9")


@pytest.fixture
def clock(monkeypatch):
    """hosts.py's and lease.py's time.time and time.monotonic, moved by the test."""
    now = {"t": 1_800_000_000.0}
    fake = SimpleNamespace(time=lambda: now["t"], monotonic=lambda: now["t"])
    monkeypatch.setattr(hosts_mod, "time", fake)
    monkeypatch.setattr(lease_mod, "time", fake)
    return now


# -- HostHeartbeat --------------------------------------------------------------------------

def test_first_beat_registers_under_a_lease(kv, store, cfg, clock):
    hb = HostHeartbeat(cfg, store)
    hb.beat()
    assert hb.lease in kv.leases() and kv.leases()[hb.lease] == hosts_mod.LEASE_TTL
    assert kv._key_lease[store.k_host("h1")] == hb.lease                 # present while the lease lives
    assert store.k_hostinfo("h1") not in kv._key_lease                    # kept after death
    info = Host.from_json(kv.get(store.k_hostinfo("h1")).value)
    assert info == Host(host="h1", bridge="nptest0", datapath_type="netdev", uplink="eth9", version=__version__,
                        started=clock["t"], last_seen=clock["t"])
    assert kv.get(store.k_host("h1")).value == kv.get(store.k_hostinfo("h1")).value
    assert store.host_alive("h1")


def test_beats_refresh_the_lease_and_stamp_the_time_once_a_minute(kv, store, cfg, clock):
    """A beat is a lease renewal, which writes nothing; the durable last_seen
    is stamped (one guarded transaction) every LAST_SEEN_EVERY seconds, so an
    idle host costs etcd a write a minute, not one per beat."""
    hb = HostHeartbeat(cfg, store)
    hb.beat()
    lease, started = hb.lease, clock["t"]
    leased_value = kv.get(store.k_host("h1")).value
    stamps = []
    for _ in range(2 * int(hosts_mod.LAST_SEEN_EVERY // hosts_mod.HEARTBEAT)):
        clock["t"] += hosts_mod.HEARTBEAT
        kv.calls.clear()
        rev = kv.revision
        hb.beat()
        assert "refresh_lease" in kv.calls and hb.lease == lease
        if kv.revision != rev:
            assert kv.revision == rev + 1                                 # the stamp: one transaction
            stamps.append(clock["t"])
            info = Host.from_json(kv.get(store.k_hostinfo("h1")).value)
            assert (info.last_seen, info.started) == (clock["t"], started)
            assert info.bridge == "nptest0" and info.uplink == "eth9"
    assert stamps == [started + hosts_mod.LAST_SEEN_EVERY, started + 2 * hosts_mod.LAST_SEEN_EVERY]
    assert kv.get(store.k_host("h1")).value == leased_value               # the leased record is not rewritten
    assert kv._key_lease[store.k_host("h1")] == lease and store.k_hostinfo("h1") not in kv._key_lease


def test_a_dead_hosts_last_seen_is_within_a_minute_of_its_last_beat(kv, store, cfg, clock):
    hb = HostHeartbeat(cfg, store)
    hb.beat()
    for _ in range(30):
        clock["t"] += hosts_mod.HEARTBEAT
        hb.beat()
    last_beat = clock["t"]
    kv.revoke_lease(hb.lease)                                             # the host dies; its lease runs out
    clock["t"] += 3600
    [(info, alive)] = store.list_hosts()
    assert alive is False and last_beat - hosts_mod.LAST_SEEN_EVERY < info.last_seen <= last_beat


def test_a_lapsed_lease_registers_again_without_a_stamp(kv, store, cfg, clock, monkeypatch):
    """etcd answers the renewal of a lapsed lease with TTL 0, not an error:
    the beat takes a new lease and registers under it at once, stamping that
    time, and writes no stamp for a host that is not registered."""
    hb = HostHeartbeat(cfg, store)
    hb.beat()
    old = hb.lease
    kv.revoke_lease(old)
    assert not store.host_alive("h1")
    writes = []
    real_txn = kv.txn
    monkeypatch.setattr(kv, "txn", lambda c, s, idempotent=False: writes.append((list(c), list(s))) or
                        real_txn(c, s, idempotent))
    clock["t"] += 20
    hb.beat()
    [register] = writes
    assert {op.key for op in register[1]} == {store.k_host("h1"), store.k_hostinfo("h1")}
    assert hb.lease not in (None, old) and kv._key_lease[store.k_host("h1")] == hb.lease
    assert store.host_alive("h1")
    assert Host.from_json(kv.get(store.k_hostinfo("h1")).value).last_seen == clock["t"]


def test_a_claim_removed_under_a_live_lease_is_taken_again_at_the_next_stamp(kv, store, cfg, clock):
    """The renewal cannot see a claim deleted by hand while its lease lives:
    the next stamp's guard does, within LAST_SEEN_EVERY seconds."""
    hb = HostHeartbeat(cfg, store)
    hb.beat()
    old = hb.lease
    kv.txn([], [Delete(store.k_host("h1"))])
    beats = 0
    while not store.host_alive("h1"):
        clock["t"] += hosts_mod.HEARTBEAT
        hb.beat()
        beats += 1
        assert beats * hosts_mod.HEARTBEAT <= hosts_mod.LAST_SEEN_EVERY
    assert hb.lease != old and kv._key_lease[store.k_host("h1")] == hb.lease


def test_heartbeat_loop_reregisters_after_the_lease_was_revoked(kv, store, cfg, monkeypatch):
    """MemoryKV refuses to refresh a revoked lease (StoreUnavailable): the loop
    drops the lease and registers again at the next beat."""
    monkeypatch.setattr(hosts_mod, "HEARTBEAT", 0.01)
    hb = HostHeartbeat(cfg, store).start()
    try:
        assert wait_for(lambda: store.host_alive("h1"))
        old = hb.lease
        kv.revoke_lease(old)
        assert wait_for(lambda: store.host_alive("h1") and hb.lease not in (None, old))
        assert kv._key_lease[store.k_host("h1")] == hb.lease
    finally:
        hb.stop.set()


def test_heartbeat_loop_survives_etcd_down(kv, store, cfg, monkeypatch):
    monkeypatch.setattr(hosts_mod, "HEARTBEAT", 0.01)
    kv.set_down(True)
    hb = HostHeartbeat(cfg, store).start()
    try:
        time.sleep(0.05)
        assert hb.lease is None
        kv.set_down(False)
        assert wait_for(lambda: store.host_alive("h1"))
    finally:
        hb.stop.set()


def test_beat_with_etcd_down_raises_store_unavailable(kv, store, cfg):
    kv.down = True
    with pytest.raises(StoreUnavailable, match="store unavailable"):
        HostHeartbeat(cfg, store).beat()


# -- Store.list_hosts ------------------------------------------------------------------------------

def test_list_hosts_alive_and_dead(kv, store):
    alive = kv.grant_lease(15)
    store.register_host(Host(host="h1", bridge="b1"), alive)
    dead = kv.grant_lease(15)
    store.register_host(Host(host="h2", bridge="b2", last_seen=123.0), dead)
    kv.revoke_lease(dead)
    hosts = {h.host: (h, up) for h, up in store.list_hosts()}
    assert set(hosts) == {"h1", "h2"}
    assert hosts["h1"][1] is True and hosts["h2"][1] is False
    assert hosts["h2"][0].bridge == "b2" and hosts["h2"][0].last_seen == 123.0
    assert store.host_alive("h1") and not store.host_alive("h2") and not store.host_alive("h3")


def test_list_hosts_empty(store):
    assert store.list_hosts() == []


# -- PrefixFollower ------------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.log: list[tuple] = []
        self.lock = threading.Lock()

    def snapshot(self, items):
        with self.lock:
            self.log.append(("snapshot", tuple(sorted((i.key, i.value) for i in items))))

    def event(self, ev):
        with self.lock:
            self.log.append((ev.kind, ev.key, ev.value))

    def entries(self):
        with self.lock:
            return list(self.log)


def follow(kv, rec: Recorder, prefix: str = "/p/", **kw) -> PrefixFollower:
    return PrefixFollower(kv, prefix, rec.snapshot, rec.event, name="test-follower",
                          retry=kw.get("retry", 0.01)).start()


def test_follower_delivers_the_snapshot_then_the_events(kv):
    kv.load([("/p/a", "1"), ("/p/b", "2"), ("/q/x", "no")])
    rec = Recorder()
    f = follow(kv, rec)
    try:
        assert wait_for(lambda: rec.entries())
        assert rec.entries() == [("snapshot", (("/p/a", b"1"), ("/p/b", b"2")))]
        kv.txn([], [Put("/p/c", "3")])
        kv.txn([], [Put("/q/y", "not mine")])
        kv.txn([], [Delete("/p/a")])
        kv.txn([], [Put("/p/b", "22"), Put("/p/d", "4")])
        assert wait_for(lambda: len(rec.entries()) == 5)
        time.sleep(0.05)
        assert rec.entries()[1:] == [("put", "/p/c", b"3"), ("delete", "/p/a", b""), ("put", "/p/b", b"22"),
                                     ("put", "/p/d", b"4")]
    finally:
        f.close()


def test_follower_misses_nothing_written_right_after_its_snapshot(kv):
    """The watch starts at the snapshot's revision + 1: a write made at once
    after the read (here from inside on_snapshot) still arrives as an event."""
    rec = Recorder()
    written = []

    def on_snapshot(items):
        rec.snapshot(items)
        if not written:
            written.append(kv.txn([], [Put("/p/late", "x")]))
    f = PrefixFollower(kv, "/p/", on_snapshot, rec.event, name="t", retry=0.01).start()
    try:
        assert wait_for(lambda: len(rec.entries()) == 2)
        assert rec.entries() == [("snapshot", ()), ("put", "/p/late", b"x")]
    finally:
        f.close()


def test_follower_starts_over_from_a_fresh_snapshot_after_the_watch_breaks(kv):
    kv.load([("/p/a", "1")])
    rec = Recorder()
    f = follow(kv, rec)
    try:
        assert wait_for(lambda: len(rec.entries()) == 1)
        kv.txn([], [Put("/p/b", "2")])
        assert wait_for(lambda: len(rec.entries()) == 2)
        kv.set_down(True)                                 # the watch raises StoreUnavailable
        time.sleep(0.05)                                  # snapshots fail while etcd is down
        kv.load([("/p/c", "3")])                          # changed while the follower could not see
        kv.set_down(False)
        assert wait_for(lambda: len(rec.entries()) == 3)
        assert rec.entries()[2] == ("snapshot", (("/p/a", b"1"), ("/p/b", b"2"), ("/p/c", b"3")))
        kv.txn([], [Put("/p/d", "4")])                    # and follows again, without repeating old events
        assert wait_for(lambda: len(rec.entries()) == 4)
        time.sleep(0.05)
        assert rec.entries()[3:] == [("put", "/p/d", b"4")]
    finally:
        f.close()


def test_follower_starts_over_after_a_handler_fails(kv):
    kv.load([("/p/a", "1")])
    rec = Recorder()
    calls = []

    def flaky(ev):
        calls.append(ev.key)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        rec.event(ev)
    f = PrefixFollower(kv, "/p/", rec.snapshot, flaky, name="t", retry=0.01).start()
    try:
        assert wait_for(lambda: len(rec.entries()) == 1)
        kv.txn([], [Put("/p/b", "2")])
        assert wait_for(lambda: len(rec.entries()) == 2)
        assert rec.entries()[1] == ("snapshot", (("/p/a", b"1"), ("/p/b", b"2")))     # read again
    finally:
        f.close()


def test_follower_close_stops_its_thread(kv):
    rec = Recorder()
    f = follow(kv, rec)
    assert wait_for(lambda: rec.entries())
    f.close()
    f._thread.join(2)
    assert not f._thread.is_alive()
    kv.txn([], [Put("/p/after", "x")])
    time.sleep(0.03)
    assert rec.entries() == [("snapshot", ())]


def test_follower_with_etcd_down_at_start_waits_for_it(kv):
    kv.set_down(True)
    rec = Recorder()
    f = follow(kv, rec)
    try:
        time.sleep(0.05)
        assert rec.entries() == []
        kv.set_down(False)
        assert wait_for(lambda: rec.entries() == [("snapshot", ())])
    finally:
        f.close()


def test_memorykv_watch_is_what_the_follower_relies_on():
    """Sanity of the fake: events from the start revision on, only under the prefix."""
    kv = MemoryKV()
    kv.txn([], [Put("/p/a", "1")])
    rev = kv.revision
    kv.txn([], [Put("/p/b", "2")])
    stop = threading.Event()
    got = []
    for ev in kv.watch_prefix("/p/", rev + 1, stop):
        got.append((ev.kind, ev.key))
        stop.set()
    assert got == [("put", "/p/b")]
