"""The list-and-watch cache (netplugin/cache.py) over MemoryKV: it lists, then
applies puts and deletes; ``on_change`` is told every difference exactly once,
after a watch event and after a re-read alike (a compacted watch, a broken
one, a count check that found a difference); bad records are never cached but
their keys count; the backoff between failed reads; close() ends the thread."""

from __future__ import annotations

import threading
import time

import pytest

from netplugin.cache import Backoff, Cache, Hub
from netplugin.errors import HistoryCompacted, StoreUnavailable
from netplugin.kv import Delete, Event, Item, Put
from netplugin.watch import Relists

from .fakes import MemoryKV

P = "/c/"


def decode(item: Item) -> bytes | None:
    """The raw value; a value that starts with b"bad" is a record that fails its checks."""
    return None if item.value.startswith(b"bad") else item.value


def wait_for(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.005)
    return cond()


class Told:
    """Every on_change call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | None, bytes | None]] = []
        self.lock = threading.Lock()

    def __call__(self, key, old, new) -> None:
        with self.lock:
            self.calls.append((key, old, new))

    def take(self) -> set[tuple[str, bytes | None, bytes | None]]:
        """The calls so far (each at most once: a repeat fails the test), and forget them."""
        with self.lock:
            calls, self.calls = self.calls, []
        assert len(calls) == len(set(calls)), f"told twice: {calls}"
        return set(calls)


def fresh(kv: MemoryKV) -> dict[str, bytes]:
    """What a fresh list of the prefix decodes to."""
    return {i.key: v for i in kv.get_prefix(P) if (v := decode(i)) is not None}


def make(kv, told: Told | None = None, relists: Relists | None = None, backoff: Backoff | None = None,
         forget=None) -> Cache[bytes]:
    """A started cache on P, no periodic check (tests call _check() themselves)."""
    cache: Cache[bytes] = Cache(kv, P, decode, "t:c", on_change=told, forget=forget,
                                relists=relists or Relists(), backoff=backoff or Backoff(0.01, 0.05),
                                resync_every=0)
    cache.start()
    assert cache.wait_ready(3)
    return cache


def close(cache: Cache) -> None:
    cache.close()


def test_lists_then_applies_puts_and_deletes_telling_each_change_once():
    kv, told = MemoryKV(), Told()
    kv.txn([], [Put(P + "a", b"1"), Put(P + "b", b"2"), Put("/other/x", b"9")])
    forgotten: list[str] = []
    cache = make(kv, told, forget=forgotten.append)
    try:
        assert cache.items() == {P + "a": b"1", P + "b": b"2"}
        assert told.take() == {(P + "a", None, b"1"), (P + "b", None, b"2")}
        assert cache.revision == kv.revision
        kv.txn([], [Put(P + "a", b"1x")])
        kv.txn([], [Delete(P + "b")])
        kv.txn([], [Put(P + "c", b"3")])
        kv.txn([], [Put(P + "c", b"3")])            # rewritten, same value: nothing to tell
        kv.txn([], [Put("/other/y", b"9")])         # outside the prefix
        assert wait_for(lambda: cache.revision == kv.revision - 1)
        assert wait_for(lambda: cache.items() == fresh(kv))
        assert cache.items() == {P + "a": b"1x", P + "c": b"3"}
        assert told.take() == {(P + "a", b"1", b"1x"), (P + "b", b"2", None), (P + "c", None, b"3")}
        assert forgotten == [P + "b"]
        assert cache.get(P + "a") == b"1x" and cache.get(P + "b") is None and len(cache) == 2
    finally:
        close(cache)


class CompactsDuringRead(MemoryKV):
    """Its first snapshot is followed, before the cache can start its watch, by
    ``writes`` and a compaction at the newest revision: the watch comes too late."""

    def __init__(self, writes: list) -> None:
        super().__init__()
        self.writes = writes
        self.snapshots = 0

    def snapshot(self, prefix):
        items, rev = super().snapshot(prefix)
        self.snapshots += 1
        if self.snapshots == 1:
            for op in self.writes:
                self.txn([], [op])
            self.compact(self.revision)
            assert self.compacted > rev + 1             # the watch would start at rev + 1
        return items, rev


def test_a_compacted_watch_is_read_again_and_only_the_difference_is_told():
    kv = CompactsDuringRead([Put(P + "a", b"1x"), Delete(P + "b"), Put(P + "d", b"4"), Put(P + "c", b"3")])
    kv.txn([], [Put(P + "a", b"1"), Put(P + "b", b"2"), Put(P + "c", b"3")])
    told, relists = Told(), Relists()
    cache = make(kv, told, relists, backoff=Backoff(30.0, 30.0))   # a backoff pause would stall the test
    try:
        assert wait_for(lambda: kv.snapshots == 2)
        assert wait_for(lambda: cache.items() == fresh(kv))
        assert cache.items() == {P + "a": b"1x", P + "c": b"3", P + "d": b"4"}
        assert relists.counts() == {("t:c", "compacted"): 1}
        # The first list told a, b, c; the re-read tells only what changed (c was rewritten, same value).
        assert told.take() == {(P + "a", None, b"1"), (P + "b", None, b"2"), (P + "c", None, b"3"),
                               (P + "a", b"1", b"1x"), (P + "b", b"2", None), (P + "d", None, b"4")}
        kv.txn([], [Put(P + "e", b"5")])            # and it follows by watch again
        assert wait_for(lambda: cache.get(P + "e") == b"5")
        assert told.take() == {(P + "e", None, b"5")}
        assert kv.snapshots == 2
    finally:
        close(cache)


def test_the_fake_refuses_a_watch_below_its_compaction_as_etcd_does():
    kv = MemoryKV()
    for i in range(4):
        kv.txn([], [Put(P + str(i), b"v")])
    kv.compact(4)
    stop = threading.Event()
    stop.set()
    assert list(kv.watch_prefix(P, 4, stop)) == []          # the compacted revision itself is kept
    with pytest.raises(HistoryCompacted) as err:
        next(kv.watch_prefix(P, 3, stop))
    assert err.value.compacted_revision == 4
    with pytest.raises(ValueError):
        kv.compact(3)
    with pytest.raises(ValueError):
        kv.compact(kv.revision + 1)


def while_down(kv: MemoryKV, ops: list) -> None:
    """Apply ops as one etcd would while this client cannot reach it: the
    cache's calls all fail before and after, and nothing of it sees these writes."""
    with kv._cond:
        kv.down = False
        for op in ops:
            kv.txn([], [op])
        kv.down = True


def test_a_broken_watch_backs_off_reads_again_and_tells_only_the_difference():
    kv, told, relists = MemoryKV(), Told(), Relists()
    kv.txn([], [Put(P + "a", b"1"), Put(P + "b", b"2"), Put(P + "c", b"3")])
    cache = make(kv, told, relists)
    try:
        told.take()
        kv.set_down(True)
        assert wait_for(lambda: relists.counts().get(("t:c", "broken"), 0) >= 2)    # backs off, tries again
        while_down(kv, [Put(P + "a", b"1x"), Delete(P + "b"), Put(P + "d", b"4")])
        assert cache.items() == {P + "a": b"1", P + "b": b"2", P + "c": b"3"}        # the last it knew
        kv.set_down(False)
        assert wait_for(lambda: cache.items() == fresh(kv))
        assert told.take() == {(P + "a", b"1", b"1x"), (P + "b", b"2", None), (P + "d", None, b"4")}
        assert set(relists.counts()) == {("t:c", "broken")}
        kv.txn([], [Delete(P + "c")])
        assert wait_for(lambda: cache.get(P + "c") is None)
        assert told.take() == {(P + "c", b"3", None)}
    finally:
        close(cache)


def test_bad_records_are_not_cached_nor_told_but_their_keys_count():
    kv, told, relists = MemoryKV(), Told(), Relists()
    kv.txn([], [Put(P + "a", b"1"), Put(P + "x", b"bad-1")])
    cache = make(kv, told, relists)
    try:
        assert cache.items() == {P + "a": b"1"}
        assert told.take() == {(P + "a", None, b"1")}
        snapshots = kv.calls.count("snapshot")
        assert cache._check() is not None
        time.sleep(0.1)
        assert kv.calls.count("snapshot") == snapshots and relists.counts() == {}   # 2 keys in etcd, 2 held
        kv.txn([], [Put(P + "y", b"bad-2")])           # a bad record arrives by watch
        kv.txn([], [Put(P + "a", b"bad-3")])           # a good one turns bad: it leaves the cache
        kv.txn([], [Put(P + "x", b"fixed")])           # a bad one is fixed: it enters
        assert wait_for(lambda: cache.items() == {P + "x": b"fixed"})
        assert told.take() == {(P + "a", b"1", None), (P + "x", None, b"fixed")}
        cache._check()
        time.sleep(0.1)
        assert kv.calls.count("snapshot") == snapshots and relists.counts() == {}   # 3 keys in etcd, 3 held
    finally:
        close(cache)


class LosesEvents(MemoryKV):
    """Its watch drops the events of keys that contain 'lost' (a cache that
    missed something, however it happened)."""

    def watch_prefix(self, prefix, start_revision, stop):
        for event in super().watch_prefix(prefix, start_revision, stop):
            if "lost" not in event.key:
                yield event


def test_the_count_check_reads_again_only_when_the_counts_differ():
    kv, told, relists = LosesEvents(), Told(), Relists()
    kv.txn([], [Put(P + "a", b"1")])
    cache = make(kv, told, relists)
    try:
        told.take()
        kv.txn([], [Put(P + "b", b"2")])
        assert wait_for(lambda: cache.get(P + "b") == b"2")
        snapshots = kv.calls.count("snapshot")
        cache._check()
        time.sleep(0.1)
        assert kv.calls.count("snapshot") == snapshots and relists.counts() == {}
        kv.txn([], [Put(P + "lost", b"3")])
        kv.txn([], [Put(P + "c", b"4")])
        assert wait_for(lambda: cache.get(P + "c") == b"4")
        assert cache.get(P + "lost") is None           # missed
        told.take()
        cache._check()                                 # etcd has 4 keys, the cache 3
        assert wait_for(lambda: cache.get(P + "lost") == b"3")
        assert cache.items() == fresh(kv)
        assert kv.calls.count("snapshot") == snapshots + 1
        assert relists.counts() == {("t:c", "drift"): 1}
        assert told.take() == {(P + "lost", None, b"3")}
        # Counts equal again: no further read, whatever the check is asked.
        cache._check()
        time.sleep(0.1)
        assert kv.calls.count("snapshot") == snapshots + 1
    finally:
        close(cache)


def test_the_count_check_before_the_first_read_or_without_etcd_reads_nothing():
    kv, relists = MemoryKV(), Relists()
    kv.txn([], [Put(P + "a", b"1")])
    kv.set_down(True)
    cache: Cache[bytes] = Cache(kv, P, decode, "t:c", relists=relists, backoff=Backoff(30.0, 30.0),
                                resync_every=60)
    cache.start()
    assert wait_for(lambda: relists.counts() == {("t:c", "broken"): 1})
    calls = len(kv.calls)
    again = cache._check()                             # nothing read yet: nothing to compare
    assert again is not None and 60 * 0.8 <= again <= 60 * 1.2 and len(kv.calls) == calls
    close(cache)
    assert cache._check() is None                      # a closed cache is checked no more


def test_backoff_grows_exponentially_within_half_and_all_of_its_step_caps_and_resets():
    low, high = Backoff(0.5, 8.0, rng=lambda: 0.0), Backoff(0.5, 8.0, rng=lambda: 0.999999)
    tops = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [low.next() for _ in tops] == [t / 2 for t in tops]
    assert [high.next() for _ in tops] == pytest.approx(tops, rel=1e-5)
    drawn = Backoff(0.5, 8.0)
    for top in tops * 20:
        if top == 0.5:
            drawn.reset()
        pause = drawn.next()
        assert top / 2 <= pause <= top, (top, pause)
    low.reset()
    assert low.next() == 0.25
    pauses = {Backoff(0.5, 8.0).next() for _ in range(50)}
    assert len(pauses) > 40                            # jitter: hosts do not all come back together


def test_close_ends_following_and_is_not_a_relist():
    kv, relists = MemoryKV(), Relists()
    cache = make(kv, relists=relists)
    close(cache)
    assert relists.counts() == {}
    kv.txn([], [Put(P + "late", b"1")])
    time.sleep(0.1)
    assert cache.get(P + "late") is None
    snapshots = kv.calls.count("snapshot")
    cache._read()                                      # a read scheduled before the close
    assert kv.calls.count("snapshot") == snapshots


def test_close_while_backing_off_reads_no_more():
    kv, relists = MemoryKV(), Relists()
    cache = make(kv, relists=relists, backoff=Backoff(0.3, 0.3))
    kv.set_down(True)
    assert wait_for(lambda: relists.counts() == {("t:c", "broken"): 1})
    close(cache)                                       # before the 0.15-0.3 s pause ends
    kv.set_down(False)
    snapshots = kv.calls.count("snapshot")
    time.sleep(0.6)
    assert kv.calls.count("snapshot") == snapshots and relists.counts() == {("t:c", "broken"): 1}


def test_caches_on_one_client_share_three_threads_whatever_their_number():
    kv = MemoryKV()
    hub = Hub()
    caches = [Cache(kv, f"/t/{i}/", decode, f"t:{i}", relists=Relists(), resync_every=0, hub=hub).start()
              for i in range(30)]
    try:
        assert all(cache.wait_ready(3) for cache in caches)
        for i in range(30):
            kv.txn([], [Put(f"/t/{i}/k", b"v")])
        assert wait_for(lambda: all(cache.get(f"/t/{i}/k") == b"v" for i, cache in enumerate(caches)))
        names = [t.name for t in threading.enumerate() if t.name.endswith(":" + hub.tag)]
        assert names.count("cache-apply:" + hub.tag) == 1 and len(names) <= 3
    finally:
        for cache in caches:
            cache.close()


def test_a_reply_of_a_dropped_round_is_ignored():
    kv, told = MemoryKV(), Told()
    cache = make(kv, told)
    try:
        told.take()
        stale = cache._round - 1
        cache._on_reply(stale, [Event("put", P + "ghost", b"1", 99)])
        cache._on_reply(stale, StoreUnavailable("an old watch broke"))
        assert cache.get(P + "ghost") is None and told.take() == set()
        kv.txn([], [Put(P + "b", b"2")])               # the current round's watch still applies
        assert wait_for(lambda: cache.get(P + "b") == b"2")
    finally:
        close(cache)


def test_a_failing_listener_does_not_stop_following():
    kv, relists = MemoryKV(), Relists()
    calls: list[str] = []

    def listener(key, old, new):
        calls.append(key)
        if key == P + "boom":
            raise RuntimeError("a bug in a listener")
    kv.txn([], [Put(P + "a", b"1")])
    cache = make(kv, told=listener, relists=relists)
    try:
        kv.txn([], [Put(P + "boom", b"2")])
        assert wait_for(lambda: relists.counts().get(("t:c", "error"), 0) >= 1)
        kv.txn([], [Put(P + "b", b"3")])
        assert wait_for(lambda: cache.get(P + "b") == b"3")
        assert cache.items() == fresh(kv)
    finally:
        close(cache)

