"""A follower whose watch finds its start revision compacted reads again at
once and counts it (netplugin/watch.py Relists, watch_metrics.py), over MemoryKV
with a watch that etcd's compaction answer stands in for."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, generate_latest

from netplugin.errors import HistoryCompacted, StoreUnavailable
from netplugin.kv import Put
from netplugin.watch import PrefixFollower, Relists
from netplugin.watch_metrics import WatchCollector

from .fakes import MemoryKV


class Compacting(MemoryKV):
    """Its first ``fail`` watches answer as etcd does for a compacted revision."""

    def __init__(self, fail: int, error=HistoryCompacted):
        super().__init__()
        self.fail = fail
        self.error = error
        self.watches = 0

    def watch_prefix(self, prefix, start_revision, stop):
        self.watches += 1
        if self.watches <= self.fail:
            raise self.error("compacted" if self.error is HistoryCompacted else "etcd did not answer")
        yield from super().watch_prefix(prefix, start_revision, stop)


def follow(kv, relists: Relists, view: dict, retry: float) -> PrefixFollower:
    def snapshot(items):
        view.clear()
        view.update({i.key: i.value for i in items})

    def event(ev):
        if ev.kind == "delete":
            view.pop(ev.key, None)
        else:
            view[ev.key] = ev.value
    return PrefixFollower(kv, "/p/", snapshot, event, name="t:p", retry=retry, relists=relists).start()


def wait_for(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.005)
    return cond()


def test_a_compacted_watch_reads_again_at_once_and_is_counted():
    kv, relists, view = Compacting(fail=2), Relists(), {}
    kv.txn([], [Put("/p/a", b"1")])
    t0 = time.monotonic()
    f = follow(kv, relists, view, retry=30.0)          # a retry pause would stall the test for a minute
    try:
        assert wait_for(lambda: kv.watches == 3)
        kv.txn([], [Put("/p/b", b"2")])
        assert wait_for(lambda: view == {"/p/a": b"1", "/p/b": b"2"}), view
        assert time.monotonic() - t0 < 5
        assert relists.counts() == {("t:p", "compacted"): 2}
    finally:
        f.close()


def test_a_broken_watch_waits_its_retry_and_is_counted_as_broken():
    kv, relists, view = Compacting(fail=1, error=StoreUnavailable), Relists(), {}
    f = follow(kv, relists, view, retry=0.05)
    try:
        assert wait_for(lambda: kv.watches == 2)
        assert relists.counts() == {("t:p", "broken"): 1}
    finally:
        f.close()


def test_a_failing_handler_is_counted_as_error():
    kv, relists = MemoryKV(), Relists()
    calls = []

    def snapshot(items):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
    f = PrefixFollower(kv, "/p/", snapshot, lambda ev: None, name="t:e", retry=0.01, relists=relists).start()
    try:
        assert wait_for(lambda: len(calls) >= 2)
        assert relists.counts() == {("t:e", "error"): 1}
    finally:
        f.close()


def test_closing_is_not_a_relist():
    kv, relists, stopped = MemoryKV(), Relists(), threading.Event()
    f = PrefixFollower(kv, "/p/", lambda items: stopped.set(), lambda ev: None, name="t:c", relists=relists).start()
    assert stopped.wait(3)
    f.close()
    assert f._thread is not None
    f._thread.join(3)
    assert not f._thread.is_alive()
    assert relists.counts() == {}


def test_the_counter_on_the_metrics_port():
    relists = Relists()
    relists.add("arp-proxy:endpoints", "compacted")
    relists.add("arp-proxy:endpoints", "compacted")
    relists.add("limit-sync:profiles", "broken")
    registry = CollectorRegistry()
    registry.register(WatchCollector(relists))
    text = generate_latest(registry).decode()
    assert 'netplugin_watch_relists_total{follower="arp-proxy:endpoints",reason="compacted"} 2.0' in text
    assert 'netplugin_watch_relists_total{follower="limit-sync:profiles",reason="broken"} 1.0' in text


def test_compaction_after_compaction_pauses_after_a_few():
    """etcd compacting faster than a follower can start its watch does not make it spin."""
    kv, relists, view = Compacting(fail=100), Relists(), {}
    f = follow(kv, relists, view, retry=30.0)
    try:
        assert wait_for(lambda: kv.watches == 4)
        time.sleep(0.3)
        assert kv.watches == 4               # three at once, then the retry pause
        assert relists.counts() == {("t:p", "compacted"): 4}
    finally:
        f.close()
