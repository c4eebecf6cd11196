"""One active job per database server: the lock is keyed on the resolved
server (network, address, port), not on the free-text --target name, which
stays the display name (netplugin/backup/model.py server_key, store.py,
scheduler.py, jobs.py resolve_server)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from netplugin.backup.jobs import resolve_server
from netplugin.backup.model import (
    QUEUED,
    STARTING,
    SUCCEEDED,
    Job,
    JobSpec,
    new_job_id,
    server_key,
)
from netplugin.backup.store import BackupStore

from .fakes import MemoryKV
from .test_backup_scheduler import World


def test_server_key_is_network_address_and_port():
    assert server_key("prod", "10.10.0.5", 3306) == "prod@10.10.0.5:3306"
    assert server_key("prod", "DB.Example.COM.", 3306) == "prod@db.example.com:3306"
    assert server_key("prod", "fd00::0001", 3306) == "prod@fd00::1:3306"
    assert server_key("prod", "10.10.0.5", 3306) != server_key("dr", "10.10.0.5", 3306)
    assert server_key("prod", "10.10.0.5", 3306) != server_key("prod", "10.10.0.5", 3307)


def test_resolve_server_resolves_names_and_keeps_addresses():
    asked = []

    def resolver(host, port, family, kind):
        asked.append(host)
        if host == "prod-db.example":
            return [(family, kind, 6, "", ("10.10.0.5", port))]
        raise socket.gaierror(-2, "Name or service not known")
    assert resolve_server("prod", "prod-db.example", 3306, resolver) == "prod@10.10.0.5:3306"
    assert resolve_server("prod", "10.10.0.5", 3306, resolver) == "prod@10.10.0.5:3306"
    assert resolve_server("prod", "Unknown-Host", 3306, resolver) == "prod@unknown-host:3306"
    assert asked == ["prod-db.example", "Unknown-Host"]      # an address is never looked up


def _job(world_or_store, target: str, server: str, now: float) -> Job:
    spec = JobSpec(network="prod", db_host="10.10.0.5", option_file="/etc/drctl/x.cnf", volume="v", database="d")
    return Job(id=new_job_id(now), kind="backup", target=target, host="h1", spec=spec.__dict__, created=now,
               start_by=now + 600, server=server, history=[{"state": QUEUED, "time": now, "message": "submitted"}])


def test_two_target_names_for_one_server_never_run_at_once():
    world = World()
    agent = world.agent()
    key = server_key("prod", "10.10.0.5", 3306)
    world.now += 1
    a = _job(world, "shop-nightly", key, world.now)
    world.now += 1
    b = _job(world, "shop-adhoc", key, world.now)             # another name, the same server
    world.now += 1
    c = _job(world, "billing", server_key("prod", "10.10.0.6", 3306), world.now)
    for j in (a, b, c):
        world.store.submit(j)
        world.release[j.id] = threading.Event()
    assert agent.tick() == [a.id, c.id]                       # b waits; c, behind it, goes
    assert world.state(b.id) == QUEUED
    msg = world.store.get(b.id)[0].message
    assert f"job {a.id} is active" in msg and "prod@10.10.0.5:3306" in msg and "shop-adhoc" in msg
    assert world.store.lock_holder(key) == a.id
    assert world.store.get(a.id)[0].target == "shop-nightly"  # the name stays for display
    world.release[a.id].set()
    world.wait_for(lambda: world.state(a.id) == SUCCEEDED and world.store.lock_holder(key) is None)
    assert agent.tick() == [b.id]
    for j in (b, c):
        world.release[j.id].set()
    agent.join(5)
    assert world.state(b.id) == SUCCEEDED


@pytest.mark.parametrize("attempt", range(5))
def test_racing_admissions_of_one_server_under_two_names(attempt):
    kv = MemoryKV()
    store = BackupStore(kv, "/p")
    key = server_key("prod", "10.10.0.5", 3306)
    now = time.time()
    jobs = [_job(store, f"name{i}", key, now + i) for i in range(6)]
    for j in jobs:
        store.submit(j)
    won, barrier = [], threading.Barrier(len(jobs))

    def admit(i):
        found, rev = store.get(jobs[i].id)
        barrier.wait()
        if store.admit(found, rev, i, now, 60) is not None:
            won.append(i)
    threads = [threading.Thread(target=admit, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert store.get(jobs[won[0]].id)[0].state == STARTING and store.lock_holder(key) == jobs[won[0]].id


def test_jobs_recorded_before_the_server_key_lock_on_their_target():
    j = Job(id="x", kind="backup", target="legacy", host="h1", spec={})
    assert j.lock_key == "legacy"
    assert Job.from_json(j.to_json()).server == ""
    j.server = "prod@10.10.0.5:3306"
    assert Job.from_json(j.to_json()).lock_key == "prod@10.10.0.5:3306"
