"""Exactly one job per due time over real etcd: several agents, each with its
own etcd connection and a clock a few seconds off the others, pass over the
same per-minute schedules at the same moments (schedules.Firing, the pass the
agent runs); the guarded transaction on the due time lets one of them submit
and the others write nothing. And placed queued jobs of a host whose agent
lease is gone are moved once each by racing agents."""

from __future__ import annotations

import threading

import pytest

from netplugin.backup.config import BackupConfig
from netplugin.backup.jobs import new_job, submit
from netplugin.backup.model import BACKUP, JobSpec
from netplugin.backup.placement import Placer
from netplugin.backup.schedules import Firing, Schedule
from netplugin.backup.store import BackupStore
from netplugin.kv import EtcdKV

pytestmark = pytest.mark.integration

SPEC = JobSpec(network="prod", db_host="10.10.0.10", option_file="/etc/drctl/x.cnf", volume="backups",
               database="shop").__dict__
T0 = 1_767_232_800.0                       # 2026-01-01T02:00:00Z, a whole minute


def firing(store: BackupStore, cfg: BackupConfig) -> Firing:
    """The pass the agent makes (fleet.fleet_passes builds it the same way)."""
    return Firing(store, cfg, lambda kind, target, host, spec, now, by:
                  new_job(cfg, kind, target, host, spec, now, by))


def race(workers: list, steps: int, step) -> list:
    """Run step(i, worker, n) for n in range(steps) on every worker at once, in lockstep."""
    barrier = threading.Barrier(len(workers))
    out: list = []
    lock = threading.Lock()
    errors: list = []

    def run(i: int, w) -> None:
        try:
            for n in range(steps):
                barrier.wait(30)
                got = step(i, w, n)
                with lock:
                    out.extend(got)
        except Exception as exc:  # noqa: BLE001 - a worker's failure fails the test below
            errors.append(exc)
            barrier.abort()
    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    return out


def test_racing_agents_submit_exactly_one_job_per_due_time(etcd_endpoint, prefix):
    cfg = BackupConfig()
    kvs = [EtcdKV([etcd_endpoint], timeout=5) for _ in range(5)]
    try:
        stores = [BackupStore(kv, prefix) for kv in kvs]
        for name in ("every-minute", "every-2-minutes"):
            stores[0].create_schedule(Schedule(name=name, cron="* * * * *" if name == "every-minute" else "*/2 * * * *",
                                               tz="UTC", kind=BACKUP, target=name, spec=dict(SPEC), host="h1",
                                               created=T0, last_due=T0))
        firings = [firing(s, cfg) for s in stores]
        # 10 simulated minutes in 21 steps; agent i's clock is i seconds ahead
        got = race(firings, 21, lambda i, f, n: f.tick(T0 + 15 + n * 30 + i))
        jobs = stores[0].list_jobs()
        assert len(got) == len(set(got)) == len(jobs) == 10 + 5
        by_schedule = {n: stores[0].get_schedule(n)[0] for n in ("every-minute", "every-2-minutes")}
        assert by_schedule["every-minute"].runs == 10 and by_schedule["every-2-minutes"].runs == 5
        assert all(s.missed_count == 0 for s in by_schedule.values())
        # every job is queued for its host once, and each kept claim names its job
        assert sorted(stores[0].queued("h1")) == sorted(j.id for j in jobs)
        claims = stores[0].fired("every-minute")
        assert len(claims) == 10 and set(claims.values()) <= {j.id for j in jobs}
        assert sorted(claims) == [T0 + 60 * m for m in range(1, 11)]
    finally:
        for kv in kvs:
            kv.close()


def test_placed_jobs_of_a_dead_host_move_once_each(etcd_endpoint, prefix):
    kvs = [EtcdKV([etcd_endpoint], timeout=5) for _ in range(4)]
    try:
        store = BackupStore(kvs[0], prefix)
        leases = {}
        for host in ("dr1", "dr2", "dr3"):
            leases[host] = kvs[0].grant_lease(30)
            store.register_agent(host, {"host": host, "max_jobs": 5, "labels": {"site": "dr"}}, leases[host])
        jobs = [submit(store, "backup", f"t{i}", "", dict(SPEC, db_host=f"10.10.0.{i}"), BackupConfig(),
                       place={"site": "dr"}) for i in range(9)]
        assert {j.host for j in jobs} == {"dr1", "dr2", "dr3"}
        on_dead = sorted(j.id for j in jobs if j.host == "dr1")
        kvs[0].revoke_lease(leases["dr1"])              # dr1 died: its agent key goes with its lease
        placers = [Placer(BackupStore(kv, prefix)) for kv in kvs]
        moved = race(placers, 1, lambda i, p, n: p.rehome(T0))
        assert sorted(moved) == on_dead
        assert store.queued("dr1") == []
        for job_id in on_dead:
            job = store.get(job_id)[0]
            assert job.host in ("dr2", "dr3") and store.queued(job.host).count(job_id) == 1
    finally:
        for kv in kvs:
            kv.close()


def test_firing_uses_only_the_given_clock(etcd_endpoint, prefix, kv):
    """An agent whose clock is a minute behind the one that fired does not fire that minute again."""
    store = BackupStore(kv, prefix)
    store.create_schedule(Schedule(name="s", cron="* * * * *", tz="UTC", kind=BACKUP, target="s", spec=dict(SPEC),
                                   host="h1", created=T0, last_due=T0))
    cfg = BackupConfig()
    fast = firing(store, cfg)
    assert len(fast.tick(T0 + 125)) == 1                # back at 02:02:05: runs 02:02, records 02:01 missed
    s, _ = store.get_schedule("s")
    assert s.last_fired == T0 + 120 and s.missed_count == 1
    slow = firing(BackupStore(kv, prefix), cfg)
    assert slow.tick(T0 + 65) == []                     # 02:01 is settled already
    assert len(store.list_jobs()) == 1
