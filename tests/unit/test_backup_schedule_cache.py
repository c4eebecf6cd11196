"""The schedule pass follows the schedule records by a list-and-watch cache
(schedules.Firing with cached=True, as fleet.py builds it): idle passes read
nothing from etcd whatever the number of schedules, a new or changed record
reaches the pass by the watch, a bad one is skipped and counted, and a pass
acting on a cached record a moment old still fires nothing twice (the guarded
transaction refuses it). The control: the pass without the cache reads every
record on every pass."""

from __future__ import annotations

import time
from collections.abc import Callable

from netplugin.backup.config import BackupConfig
from netplugin.backup.jobs import new_job
from netplugin.backup.model import BACKUP, JobSpec
from netplugin.backup.schedules import Firing, Schedule
from netplugin.backup.store import BackupStore
from netplugin.kv import Put

from .fakes import MemoryKV

PREFIX = "/netplugin/t"
T0 = 1_767_232_800.0                        # 2026-01-01T02:00:00Z
SPEC = JobSpec(network="prod", db_host="10.10.0.10", option_file="/etc/drctl/x.cnf", volume="backups",
               database="shop").__dict__
CFG = BackupConfig()


def schedule(name: str, cron: str = "0 2 * * *", **kw) -> Schedule:
    return Schedule(name=name, cron=cron, tz="UTC", kind=BACKUP, target=name, spec=dict(SPEC), host="h1",
                    created=T0, last_due=T0, **kw)


def firing(store: BackupStore, cached: bool) -> Firing:
    return Firing(store, CFG, lambda kind, target, host, spec, now, by:
                  new_job(CFG, kind, target, host, spec, now, by), cached=cached)


def until(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "the cache did not catch up within 5 s"
        time.sleep(0.01)


def cached_last_due(f: Firing, name: str, store: BackupStore) -> float | None:
    assert f.cache is not None
    got = f.cache.get(store.k_schedule(name))
    return None if got is None else got[0].last_due


def test_idle_passes_read_nothing_and_changes_come_by_the_watch():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    for i in range(50):
        store.create_schedule(schedule(f"nightly{i}"))
    f = firing(store, cached=True)
    try:
        assert f.cache is not None and f.cache.wait_ready(5)
        reads = kv.read_count
        for n in range(100):                                  # nothing is due before tomorrow 02:00
            assert f.tick(T0 + 1 + n * 60) == []
        assert kv.read_count == reads, "an idle pass read etcd"

        # a new per-minute schedule reaches the pass by the watch, and fires once per due time
        store.create_schedule(schedule("minutely", "* * * * *"))
        until(lambda: len(f.cache) == 51)
        assert len(f.tick(T0 + 61)) == 1
        until(lambda: cached_last_due(f, "minutely", store) == T0 + 60)
        assert f.tick(T0 + 62) == []
        # a pause made elsewhere: the next due time is not fired
        store.update_schedule("minutely", lambda s: setattr(s, "paused", True))
        until(lambda: f.cache.get(store.k_schedule("minutely"))[0].paused)
        assert f.tick(T0 + 125) == []
        assert len(store.list_jobs()) == 1 and store.get_schedule("minutely")[0].runs == 1

        # a bad record is skipped and counted, never cached; the others go on
        kv.txn([], [Put(store.k_schedule("broken"), b'{"name": "broken"}')])
        until(lambda: f.bad == 1)
        assert f.cache.get(store.k_schedule("broken")) is None and len(f.cache) == 51
        assert f.tick(T0 + 126) == []
    finally:
        f.close()


def test_the_pass_without_the_cache_reads_every_pass():
    """The control of the test above: the same idle passes, read from etcd."""
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    for i in range(50):
        store.create_schedule(schedule(f"nightly{i}"))
    f = firing(store, cached=False)
    reads = kv.read_count
    for n in range(40):
        assert f.tick(T0 + 1 + n * 60) == []
    assert kv.read_count - reads == 40


def test_a_pass_on_a_stale_cached_record_fires_nothing_twice():
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    store.create_schedule(schedule("minutely", "* * * * *"))
    cached = firing(store, cached=True)
    try:
        assert cached.cache is not None and cached.cache.wait_ready(5)
        for n in range(1, 6):
            # another agent fires the due time first; this agent's cache may not have seen it yet
            other = firing(store, cached=False)
            first = other.tick(T0 + n * 60 + 1)
            second = cached.tick(T0 + n * 60 + 2)
            assert len(first) == 1 and second == [], (n, first, second)
        assert len(store.list_jobs()) == 5
        assert sorted(store.fired("minutely")) == [T0 + n * 60 for n in range(1, 6)]
    finally:
        cached.close()


def test_an_idle_pass_evaluates_no_cron_expression_until_a_record_changes(monkeypatch):
    from netplugin.backup import schedules
    kv = MemoryKV()
    store = BackupStore(kv, PREFIX)
    for i in range(20):
        store.create_schedule(schedule(f"nightly{i}"))
    f = firing(store, cached=False)
    assert f.tick(T0 + 1) == []                               # learns each record's next due time
    calls: list[float] = []
    after, before = schedules.due_after, schedules.due_at_or_before
    monkeypatch.setattr(schedules, "due_after", lambda s, t: calls.append(t) or after(s, t))
    monkeypatch.setattr(schedules, "due_at_or_before", lambda s, t: calls.append(t) or before(s, t))
    for n in range(50):
        assert f.tick(T0 + 2 + n * 60) == []
    assert calls == []
    store.update_schedule("nightly3", lambda s: setattr(s, "cron", "30 2 * * *"))   # a new revision
    assert f.tick(T0 + 1000) == [] and len(calls) == 1
    assert len(f.tick(T0 + 1801)) == 1                                              # 02:30 is due: fired
    assert [j.target for j in store.list_jobs()] == ["nightly3"]
    assert store.get_schedule("nightly3")[0].last_fired == T0 + 1800
