"""Placement (netplugin/backup/placement.py) over MemoryKV: eligibility by
label, most free slots first, ties spread, a burst shared between equal hosts,
agents' labels published on their lease, and queued jobs of a dead host
re-placed once each, by a guarded transaction."""

from __future__ import annotations

import threading

import pytest

from netplugin.backup.config import BackupConfig
from netplugin.backup.jobs import submit
from netplugin.backup.model import QUEUED, JobSpec
from netplugin.backup.placement import Host, Placer, choose, eligible, label_map
from netplugin.backup.scheduler import Agent
from netplugin.backup.store import BackupStore
from netplugin.errors import InvalidRequest

from .fakes import MemoryKV

PREFIX = "/netplugin/t"
SPEC = JobSpec(network="prod", db_host="10.10.0.10", option_file="/etc/drctl/x.cnf", volume="backups",
               database="shop").__dict__


def spec(n: int) -> dict:
    return dict(SPEC, db_host=f"10.10.0.{n}")


def test_label_map_refuses_what_is_not_key_value():
    assert label_map(["site=dr", "disk=ssd"]) == {"site": "dr", "disk": "ssd"}
    with pytest.raises(InvalidRequest, match="KEY=VALUE"):
        label_map(["site"])
    with pytest.raises(InvalidRequest, match="value of label site"):
        label_map(["site=a b"])


def test_eligible_needs_every_pair_and_a_sound_record():
    agents = {"a": {"max_jobs": 5, "labels": {"site": "dr", "disk": "ssd"}},
              "b": {"max_jobs": 5, "labels": {"site": "main"}},
              "c": {"max_jobs": "5", "labels": {"site": "dr"}},             # bad cap
              "d": {"max_jobs": 5, "labels": {"site": "../x"}},             # bad label
              "e": {"max_jobs": 5}}
    assert set(eligible(agents, {"site": "dr"})) == {"a"}
    assert set(eligible(agents, {"site": "dr", "disk": "ssd"})) == {"a"}
    assert set(eligible(agents, {})) == {"a", "b", "e"}


def test_most_free_slots_wins_then_fewest_used_then_spread():
    assert choose([Host("a", 5, 4, {}), Host("b", 5, 1, {})], "j") == "b"
    assert choose([Host("a", 10, 5, {}), Host("b", 5, 1, {})], "j") == "a"     # 5 free against 4
    assert choose([Host("a", 6, 2, {}), Host("b", 5, 1, {})], "j") == "b"      # equal free: fewer used
    picks = {choose([Host("a", 5, 0, {}), Host("b", 5, 0, {})], f"job{i}") for i in range(20)}
    assert picks == {"a", "b"}                                                   # equal hosts share
    assert choose([], "j") is None


class World:
    def __init__(self):
        self.kv = MemoryKV()
        self.store = BackupStore(self.kv, PREFIX)

    def agent(self, host: str, labels: list[str], max_jobs: int = 5) -> Agent:
        cfg = BackupConfig(max_jobs=max_jobs, poll=0.01, lease_ttl=5, labels=labels)
        a = Agent(self.store, host, cfg, lambda: None)
        a.start(wait_previous=0)
        return a


def test_agents_publish_their_labels_and_a_burst_is_shared():
    w = World()
    w.agent("dr1", ["site=dr"])
    w.agent("dr2", ["site=dr"])
    w.agent("main1", ["site=main"])
    cfg = BackupConfig()
    jobs = [submit(w.store, "backup", f"t{i}", "", spec(i), cfg, place={"site": "dr"}) for i in range(12)]
    hosts = [j.host for j in jobs]
    assert hosts.count("dr1") == hosts.count("dr2") == 6
    assert all(j.place == {"site": "dr"} for j in jobs)
    assert sorted(w.store.queued("dr1") + w.store.queued("dr2")) == sorted(j.id for j in jobs)


def test_no_eligible_host_is_a_clear_error_and_nothing_is_written():
    w = World()
    w.agent("main1", ["site=main"])
    with pytest.raises(InvalidRequest, match="no live drctl agent carries site=dr"):
        submit(w.store, "backup", "t", "", spec(1), BackupConfig(), place={"site": "dr"})
    assert w.store.list_jobs() == []


def test_queued_jobs_of_a_dead_host_are_re_placed_once_each():
    w = World()
    dead = w.agent("dr1", ["site=dr"])
    w.agent("dr2", ["site=dr"])
    w.agent("dr3", ["site=dr"])
    cfg = BackupConfig()
    jobs = [submit(w.store, "backup", f"t{i}", "", spec(i), cfg, place={"site": "dr"}) for i in range(9)]
    on_dead = sorted(j.id for j in jobs if j.host == "dr1")
    pinned = submit(w.store, "backup", "pinned", "dr1", spec(99), cfg)        # named host: never moved
    assert on_dead
    dead.keeper.revoke()                                                       # its lease is gone: host died
    assert not w.store.agent_alive("dr1")
    placers = [Placer(BackupStore(w.kv, PREFIX)) for _ in range(4)]
    moved: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(placers))

    def run(p: Placer) -> None:
        barrier.wait()
        got = p.rehome(1.0)
        with lock:
            moved.extend(got)
    threads = [threading.Thread(target=run, args=(p,)) for p in placers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(moved) == on_dead                                            # each moved once
    assert w.store.queued("dr1") == [pinned.id]
    for job_id in on_dead:
        job = w.store.get(job_id)[0]
        assert job.host in ("dr2", "dr3") and job.state == QUEUED and "re-placed from host dr1" in job.message
        assert w.store.queued(job.host).count(job_id) == 1


def test_a_host_back_before_the_move_keeps_its_jobs():
    w = World()
    a = w.agent("dr1", ["site=dr"])
    w.agent("dr2", ["site=dr"])
    job = submit(w.store, "backup", "t", "dr1", spec(1), BackupConfig())
    job = w.store.update(job.id, lambda j: setattr(j, "place", {"site": "dr"}))
    found, rev = w.store.get(job.id)
    # the agent is alive: the guarded move refuses
    assert a.lease is not None and not w.store.move_job(found, rev, "dr2", 1.0)
    assert w.store.queued("dr1") == [job.id]
