"""etcd under pressure, each case on a PRIVATE etcd member (tests/harness/etcd.py
Member) so the shared one is never compacted or filled:

* compaction past a watched revision: a follower (watch.py PrefixFollower,
  and the store's caches, Store.cache_*) stopped between its read
  and its watch while records are added, changed and deleted and etcd is
  compacted past its revision reads again at once (counted as 'compacted'),
  and its view then equals a fresh read; a follower whose handler is stalled
  while etcd compacts loses nothing either;
* the NOSPACE alarm: a member with a tiny --quota-backend-bytes filled until
  the alarm; the store's writes fail at once with StoreFull, whose message
  names the alarm and the way out, reads keep working, and after compaction,
  defragmentation and `etcdctl alarm disarm` the same client writes again.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from netplugin.errors import StoreFull
from netplugin.kv import Delete, EtcdKV, Put
from netplugin.store import Store
from netplugin.watch import RELISTS, PrefixFollower, Relists
from tests.harness.etcd import Member, etcdctl

PREFIX = "/pressure"


@pytest.fixture
def private_etcd(tmp_path):
    """start(*flags) -> a one-member etcd of this test's own, killed afterwards."""
    made: list[Member] = []

    def start(*extra: str) -> Member:
        m = Member.single(f"p{len(made)}", tmp_path / "etcd")
        made.append(m)
        m.start(extra=list(extra))
        m.wait_healthy()
        return m
    yield start
    for m in made:
        m.kill()


def revision(url: str) -> int:
    return json.loads(etcdctl(url, "endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"]["revision"]


def compact_all(url: str) -> int:
    rev = revision(url)
    etcdctl(url, "compact", str(rev))
    return rev


class PausedAfterRead(EtcdKV):
    """A real client whose first snapshot() returns only once released: its
    follower is held between its read and its watch, as a slow first pass holds it."""

    def __init__(self, url: str):
        super().__init__([url], timeout=3)
        self.read = threading.Event()
        self.release = threading.Event()
        self.first_revision = 0

    def snapshot(self, prefix):
        items, rev = super().snapshot(prefix)
        if not self.read.is_set():
            self.first_revision = rev
            self.read.set()
            assert self.release.wait(30), "never released"
        return items, rev


class View:
    """What a follower believes is under its prefix."""

    def __init__(self):
        self.items: dict[str, bytes] = {}
        self.snapshots = 0
        self.lock = threading.Lock()

    def snapshot(self, items):
        with self.lock:
            self.items = {i.key: i.value for i in items}
            self.snapshots += 1

    def event(self, ev):
        with self.lock:
            if ev.kind == "delete":
                self.items.pop(ev.key, None)
            else:
                self.items[ev.key] = ev.value


def fresh(kv: EtcdKV, prefix: str) -> dict[str, bytes]:
    return {i.key: i.value for i in kv.get_prefix(prefix)}


def settles(view: View, kv: EtcdKV, prefix: str, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        with view.lock:
            if view.items == fresh(kv, prefix):
                return True
        time.sleep(0.05)
    return False


def churn(kv: EtcdKV, prefix: str, n: int) -> None:
    """n more records, half of the first n changed, a quarter deleted."""
    for i in range(n, 2 * n):
        kv.txn([], [Put(f"{prefix}{i:04d}", f"new-{i}")])
    for i in range(n // 2):
        kv.txn([], [Put(f"{prefix}{i:04d}", f"changed-{i}")])
    for i in range(n // 2, 3 * n // 4):
        kv.txn([], [Delete(f"{prefix}{i:04d}")])


# -- compaction past a watched revision ------------------------------------------------------

def test_a_follower_whose_revision_was_compacted_reads_again_and_loses_nothing(private_etcd):
    m = private_etcd()
    plain, held = EtcdKV([m.client], timeout=3), PausedAfterRead(m.client)
    prefix, n = f"{PREFIX}/r/", 200
    for i in range(n):
        plain.txn([], [Put(f"{prefix}{i:04d}", f"old-{i}")])
    view, relists = View(), Relists()
    f = PrefixFollower(held, prefix, view.snapshot, view.event, name="pressure:r", retry=30.0,
                       relists=relists).start()
    try:
        assert held.read.wait(10)
        churn(plain, prefix, n)
        compacted = compact_all(plain.endpoints[0])
        assert compacted > held.first_revision + 1          # the follower's watch would start below it
        t0 = time.monotonic()
        held.release.set()
        assert settles(view, plain, prefix), "the follower's view differs from a fresh read"
        # At once, not after the 30 s retry pause of a broken watch.
        assert time.monotonic() - t0 < 8, f"took {time.monotonic() - t0:.1f} s"
        assert view.snapshots == 2 and relists.counts() == {("pressure:r", "compacted"): 1}, \
            (view.snapshots, relists.counts())
        assert len(view.items) == 2 * n - n // 4
        # And it is live again: later changes arrive by the watch.
        plain.txn([], [Put(f"{prefix}late", "x"), Delete(f"{prefix}0000")])
        assert settles(view, plain, prefix, within=5)
        assert f"{prefix}late" in view.items and f"{prefix}0000" not in view.items
        assert view.snapshots == 2
    finally:
        held.release.set()
        f.close()


def test_a_stalled_handler_loses_nothing_when_etcd_compacts(private_etcd):
    m = private_etcd()
    kv = EtcdKV([m.client], timeout=3)
    prefix, n = f"{PREFIX}/s/", 100
    for i in range(n):
        kv.txn([], [Put(f"{prefix}{i:04d}", f"old-{i}")])
    view, relists, stalled, go = View(), Relists(), threading.Event(), threading.Event()

    def slow_event(ev):
        if not stalled.is_set():
            stalled.set()
            assert go.wait(30)
        view.event(ev)
    f = PrefixFollower(kv, prefix, view.snapshot, slow_event, name="pressure:s", retry=30.0,
                       relists=relists).start()
    try:
        deadline = time.monotonic() + 10
        while view.snapshots == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        kv.txn([], [Put(f"{prefix}first", "1")])
        assert stalled.wait(10)
        churn(kv, prefix, n)
        compact_all(m.client)
        go.set()
        assert settles(view, kv, prefix)
        assert len(view.items) == 2 * n - n // 4 + 1
        assert relists.counts().get(("pressure:s", "broken"), 0) == 0
    finally:
        go.set()
        f.close()


def test_the_stores_caches_read_again_after_compaction(private_etcd):
    """A store cache (Store.cache_*), as the host's view holds them: a
    compaction past the revision its watch starts from makes it read again,
    and it then equals a fresh read, the writes made meanwhile and after included."""
    m = private_etcd()
    plain, held = EtcdKV([m.client], timeout=3), PausedAfterRead(m.client)
    store, plain_store = Store(held, PREFIX), Store(plain, PREFIX)
    name = "endpoints:old-layout"
    before = RELISTS.counts().get((name, "compacted"), 0)
    cache = store.cache_legacy_endpoints().start()
    try:
        assert held.read.wait(10)
        for i in range(30):
            plain.txn([], [Put(plain_store.k_legacy_endpoint(f"ep{i:02d}"), "{}")])
        compact_all(m.client)
        held.release.set()
        deadline = time.monotonic() + 8
        while RELISTS.counts().get((name, "compacted"), 0) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert RELISTS.counts().get((name, "compacted"), 0) == before + 1
        time.sleep(0.5)                       # the watch is set up again
        plain.txn([], [Put(plain_store.k_legacy_endpoint("after"), "{}")])
        deadline = time.monotonic() + 5
        while not cache.matches(plain.get_prefix(cache.prefix)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.matches(plain.get_prefix(cache.prefix))
        assert len(plain.get_prefix(cache.prefix)) == 31
    finally:
        held.release.set()
        cache.close()


# -- the NOSPACE alarm ---------------------------------------------------------------------

QUOTA = 8 << 20          # etcd 3.4 takes any positive quota; 8 MiB fills in about ten 1 MiB writes


def test_nospace_alarm_clear_errors_reads_work_and_writes_resume_after_defrag(private_etcd):
    m = private_etcd("--quota-backend-bytes", str(QUOTA))
    kv = EtcdKV([m.client], timeout=3)
    store = Store(kv, PREFIX)
    store.set_arp_mode("flood")
    big = b"x" * (1 << 20)
    full = None
    for i in range(4 * QUOTA // len(big)):
        try:
            kv.txn([], [Put(f"{PREFIX}/filler/{i:03d}", big)])
        except StoreFull as exc:
            full = exc
            break
    assert full is not None, "the quota was never reached"
    assert "NOSPACE" in etcdctl(m.client, "alarm", "list").stdout
    for words in ("space quota", "NOSPACE", "reads still work", "etcdctl compact", "etcdctl defrag",
                  "etcdctl alarm disarm", m.client):
        assert words in full.message, full.message

    # Every kind of write the daemon makes is refused at once and says why.
    for what, write in (("setting", lambda: store.set_arp_mode("proxy")),
                        ("lease", lambda: kv.grant_lease(15)),
                        ("guarded txn", lambda: kv.txn([], [Put(f"{PREFIX}/x", "1")], idempotent=True))):
        t0 = time.monotonic()
        with pytest.raises(StoreFull) as exc:
            write()
        assert "NOSPACE" in exc.value.message and exc.value.status == 503, what
        assert time.monotonic() - t0 < 2, f"{what}: {time.monotonic() - t0:.1f} s"
    # Reads keep working.
    assert store.arp_mode() == "flood"
    assert store.list_networks() == []
    assert len(kv.get_prefix(f"{PREFIX}/filler/", keys_only=True)) >= 1

    # The operator's way out, as the message says: free space, compact, defragment, disarm.
    kv.txn([], [Delete(f"{PREFIX}/filler/", prefix=True)], idempotent=True)    # deletes pass the alarm
    compact_all(m.client)
    etcdctl(m.client, "defrag", timeout=60, command_timeout=55)
    etcdctl(m.client, "alarm", "disarm")
    assert "NOSPACE" not in etcdctl(m.client, "alarm", "list").stdout
    # The same client, not restarted, writes again.
    store.set_arp_mode("proxy")
    assert store.arp_mode() == "proxy"
    kv.revoke_lease(kv.grant_lease(15))
