"""The list-and-watch cache (netplugin/cache.py) against a real 3-member etcd
cluster of this module's own, through what a fleet meets: a compaction past
its watch's start, a member killed and restarted, a leader moved, and a
quorum lost. After each, with writes during and after the disturbance, the
cache equals a fresh list of its prefix, and RELISTS counts the re-read
under the reason it had (or none, where the watch must survive).

The cache runs without its periodic count check (resync_every=0): what
brings it back is the relist, not a later check."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from netplugin.cache import Backoff, Cache
from netplugin.errors import StoreUnavailable
from netplugin.kv import Delete, EtcdKV, Item, Put
from netplugin.watch import RELISTS
from tests.harness.etcd import Cluster, Member, etcdctl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cache-etcd"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def spec(cluster: Cluster) -> str:
    return ",".join(f"{m.name}={m.peer}" for m in cluster.members)


def restart(cluster: Cluster, member: Member) -> None:
    """Start a stopped member again on its data directory and wait until it answers."""
    member.start(spec(cluster), cluster.token)
    member.wait_healthy()


@pytest.fixture(autouse=True)
def every_member_up(cluster):
    """Each test starts with all three members up, whatever the last one left."""
    for m in cluster.members:
        if not m.alive():
            restart(cluster, m)
    yield


@pytest.fixture
def writer(cluster) -> Iterator[EtcdKV]:
    """The client that writes and makes the fresh lists; the caches have their own."""
    kv = EtcdKV(cluster.endpoints.split(","), timeout=3)
    yield kv
    kv.close()


@pytest.fixture
def prefix() -> str:
    return f"/cache-resilience/{uuid.uuid4().hex[:8]}/"


def decode(item: Item) -> bytes:
    return item.value


def follow(kv: EtcdKV, prefix: str, name: str) -> Cache[bytes]:
    """A started, ready cache; its backoff is short so the test does not wait out 30 s pauses."""
    cache: Cache[bytes] = Cache(kv, prefix, decode, name, backoff=Backoff(0.1, 1.0), resync_every=0)
    cache.start()
    assert cache.wait_ready(10), f"{name} never read its prefix"
    return cache


def write(kv: EtcdKV, *ops, within: float = 20.0) -> None:
    """Apply ops (each one transaction; a put or a delete is safe to send twice),
    retrying while the cluster elects a leader."""
    deadline = time.monotonic() + within
    for op in ops:
        while True:
            try:
                kv.txn([], [op], idempotent=True)
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def churn(kv: EtcdKV, prefix: str, tag: str, n: int = 5) -> None:
    """n new keys, one changed, one deleted."""
    write(kv, *[Put(f"{prefix}{tag}-{i}", f"{tag}-{i}") for i in range(n)])
    write(kv, Put(f"{prefix}{tag}-0", f"{tag}-changed"), Delete(f"{prefix}{tag}-1"))


def fresh(kv: EtcdKV, prefix: str) -> dict[str, bytes]:
    return {i.key: i.value for i in kv.get_prefix(prefix)}


def equals_fresh_list(cache: Cache, kv: EtcdKV, prefix: str, within: float = 15.0) -> None:
    """The cache equals a fresh list of its prefix within ``within`` seconds."""
    deadline = time.monotonic() + within
    held, listed = cache.items(), {}
    while time.monotonic() < deadline:
        try:
            listed = fresh(kv, prefix)
        except StoreUnavailable:
            time.sleep(0.1)
            continue
        held = cache.items()
        if held == listed:
            return
        time.sleep(0.05)
    missing = sorted(set(listed) - set(held))
    extra = sorted(set(held) - set(listed))
    stale = sorted(k for k in set(held) & set(listed) if held[k] != listed[k])
    pytest.fail(f"{cache.name} differs from a fresh list after {within:g} s: missing {missing}, "
                f"extra {extra}, stale {stale}; relists {relists_of(cache.name)}")


def relists_of(name: str) -> dict[str, int]:
    return {reason: n for (follower, reason), n in RELISTS.counts().items() if follower == name}


# -- compaction ---------------------------------------------------------------------------

class CompactsAfterRead(EtcdKV):
    """A real client whose first snapshot is followed, before its caller can
    watch, by writes of another client and a compaction at the newest revision
    (etcdctl compaction --physical): the watch from the snapshot's revision + 1
    asks for history etcd no longer holds."""

    def __init__(self, cluster: Cluster, writer: EtcdKV, prefix: str):
        super().__init__(cluster.endpoints.split(","), timeout=3)
        self.cluster, self.writer, self.prefix = cluster, writer, prefix
        self.snapshots = 0
        self.read_at = self.compacted_at = 0

    def snapshot(self, prefix):
        items, rev = super().snapshot(prefix)
        self.snapshots += 1
        if self.snapshots == 1:
            self.read_at = rev
            churn(self.writer, self.prefix, "during")
            _, self.compacted_at = self.writer.snapshot(self.prefix)
            etcdctl(self.cluster.endpoints, "compaction", "--physical", str(self.compacted_at))
        return items, rev


def test_a_watch_behind_a_compaction_relists_and_equals_a_fresh_list(cluster, writer, prefix):
    churn(writer, prefix, "before")
    kv = CompactsAfterRead(cluster, writer, prefix)
    name = "resilience:compaction"
    before = relists_of(name)
    cache = follow(kv, prefix, name)
    try:
        equals_fresh_list(cache, writer, prefix)
        assert kv.compacted_at > kv.read_at + 1, (kv.read_at, kv.compacted_at)
        assert kv.snapshots == 2
        assert relists_of(name) == {"compacted": before.get("compacted", 0) + 1}
        churn(writer, prefix, "after")                  # followed by watch again, no further read
        equals_fresh_list(cache, writer, prefix)
        assert kv.snapshots == 2
        assert f"{prefix}during-0" in cache.items() and f"{prefix}during-1" not in cache.items()
    finally:
        cache.close()
        kv.close()


# -- a member killed and restarted ----------------------------------------------------------

def test_each_member_killed_and_restarted_in_turn_the_cache_equals_a_fresh_list(cluster, writer, prefix):
    kv = EtcdKV(cluster.endpoints.split(","), timeout=3)
    name = "resilience:restart"
    before = relists_of(name).get("broken", 0)
    churn(writer, prefix, "before")
    cache = follow(kv, prefix, name)
    try:
        for m in cluster.members:
            m.kill()                                         # SIGKILL, as a crash
            churn(writer, prefix, f"without-{m.name}")       # through the two others
            restart(cluster, m)
            churn(writer, prefix, f"back-{m.name}")
            equals_fresh_list(cache, writer, prefix)
        # The cache's own member was among them: its watch broke at least once and was read again.
        assert relists_of(name).get("broken", 0) > before, relists_of(name)
        assert set(relists_of(name)) <= {"broken"}, relists_of(name)
    finally:
        cache.close()
        kv.close()


# -- a leader change ------------------------------------------------------------------------

def leader(cluster: Cluster) -> Member:
    for s in cluster.status():
        if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
            return next(m for m in cluster.members if m.client == s["Endpoint"])
    raise AssertionError(f"no leader: {cluster.status()}")


def test_a_leader_change_keeps_the_watch_and_the_cache_equals_a_fresh_list(cluster, writer, prefix):
    kv = EtcdKV(cluster.endpoints.split(","), timeout=3)
    name = "resilience:leader"
    churn(writer, prefix, "before")
    cache = follow(kv, prefix, name)
    try:
        for step in range(2):
            old = leader(cluster)
            new = next(m for m in cluster.members if m is not old)
            churn(writer, prefix, f"before-move-{step}")
            cluster.make_leader(new)
            assert leader(cluster) is new
            churn(writer, prefix, f"after-move-{step}")
            equals_fresh_list(cache, writer, prefix)
        # A moved leader is not a lost one: the watch went on, nothing was read again.
        assert relists_of(name) == {}, relists_of(name)
    finally:
        cache.close()
        kv.close()


# -- no leader ------------------------------------------------------------------------------

def test_a_member_without_a_leader_ends_the_watch_and_the_cache_comes_back(cluster, writer, prefix):
    """Two of three members stopped: the survivor has no leader. A cache whose
    only endpoint is the survivor must see its watch end (the watch asks for a
    leader), not sit on a silent stream; one on all three members as well.
    Once the members are back, both equal a fresh list."""
    survivor, others = cluster.members[0], cluster.members[1:]
    alone = EtcdKV([survivor.client], timeout=3)
    every = EtcdKV(cluster.endpoints.split(","), timeout=3)
    churn(writer, prefix, "before")
    names = ("resilience:minority", "resilience:all")
    before = {n: sum(relists_of(n).values()) for n in names}
    caches = [follow(alone, prefix, names[0]), follow(every, prefix, names[1])]
    try:
        churn(writer, prefix, "watched")
        for cache in caches:                               # both watches are live
            equals_fresh_list(cache, writer, prefix)
        lost = time.monotonic()
        for m in others:
            m.kill()
        # The first re-read of a cache whose watch was live is that watch's end. etcd ends
        # a leader-requiring watch after three election timeouts without a leader (~4 s).
        ended = None
        while time.monotonic() - lost < 15:
            if all(sum(relists_of(n).values()) > before[n] for n in names):
                ended = time.monotonic() - lost
                break
            time.sleep(0.1)
        assert ended is not None, (f"the watches did not end within 15 s of the quorum's loss: relists "
                                   f"{ {n: relists_of(n) for n in names} }")
        assert ended <= 10, f"the watch on the member without a leader ended only after {ended:.1f} s"
        # A lost leader is a broken watch, read again after a backoff (never a listener's 'error').
        assert set(relists_of(names[0])) == {"broken"}, relists_of(names[0])
        threads = [threading.Thread(target=restart, args=(cluster, m)) for m in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        churn(writer, prefix, "after")
        for cache in caches:
            equals_fresh_list(cache, writer, prefix, within=20)
        assert set(relists_of(names[0])) == {"broken"}, relists_of(names[0])
        assert set(relists_of(names[1])) == {"broken"}, relists_of(names[1])
    finally:
        for cache in caches:
            cache.close()
        alone.close()
        every.close()
