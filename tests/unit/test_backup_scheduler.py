"""The agent (netplugin/backup/scheduler.py) and the etcd transactions behind it
(store.py): the per-host cap, one active job per target, first come first
served without head-of-line blocking, deadlines in the queue, cancelling,
leases and adoption. Runners are fakes that hold a job until told to finish;
the real Runner is covered by test_backup_runner.py."""

from __future__ import annotations

import threading
import time

import pytest

from netplugin.backup.config import BackupConfig
from netplugin.backup.model import (ACTIVE, CANCELLED, EXPIRED, QUEUED, RUNNING, STARTING, SUCCEEDED, VERIFYING,
                                    Job, JobSpec, new_job_id)
from netplugin.backup.scheduler import Agent
from netplugin.backup.store import BackupStore
from netplugin.errors import Conflict

from .fakes import MemoryKV

PREFIX = "/netplugin/t"


class HoldingRunner:
    """Moves the job to running, then holds it until released; counts concurrency."""

    def __init__(self, world: "World"):
        self.world = world

    def _hold(self, job: Job) -> Job:
        w = self.world
        with w.lock:
            w.active.add(job.id)
            w.max_active = max(w.max_active, len(w.active))
            w.per_target[job.target] = w.per_target.get(job.target, 0) + 1
            assert w.per_target[job.target] == 1, f"two jobs active on {job.target}"
            w.started.append(job.id)
        w.store.update(job.id, lambda j: j.move(RUNNING, "working"))
        w.release[job.id].wait(10)
        with w.lock:
            w.active.discard(job.id)
            w.per_target[job.target] -= 1
        return w.store.update(job.id, lambda j: (j.move(VERIFYING, "checking"), j.move(SUCCEEDED, "done")))

    def run(self, job: Job) -> Job:
        return self._hold(job)

    def adopt(self, job: Job) -> Job:
        self.world.adopted.append(job.id)
        return self._hold(job) if job.state == STARTING else self._finish(job)

    def _finish(self, job: Job) -> Job:
        self.world.release[job.id].wait(10)
        return self.world.store.update(job.id, lambda j: (j.move(VERIFYING, "checking"),
                                                          j.move(SUCCEEDED, "done after adoption")))


class World:
    def __init__(self, max_jobs: int = 5):
        self.kv = MemoryKV()
        self.store = BackupStore(self.kv, PREFIX)
        self.cfg = BackupConfig(max_jobs=max_jobs, poll=0.01, lease_ttl=5)
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.per_target: dict[str, int] = {}
        self.max_active = 0
        self.started: list[str] = []
        self.adopted: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.now = time.time()

    def agent(self, host: str = "h1") -> Agent:
        a = Agent(self.store, host, self.cfg, lambda: HoldingRunner(self), clock=lambda: self.now)
        a.start(wait_previous=0)
        return a

    def submit(self, target: str, host: str = "h1", start_timeout: float = 600) -> Job:
        self.now += 0.001
        spec = JobSpec(network="prod", db_host="db", option_file="/etc/drctl/x.cnf", volume="v", database="d",
                       start_timeout=start_timeout)
        job = Job(id=new_job_id(self.now), kind="backup", target=target, host=host, spec=spec.__dict__,
                  created=self.now, start_by=self.now + start_timeout,
                  history=[{"state": QUEUED, "time": self.now, "message": "submitted"}])
        self.store.submit(job)
        self.release[job.id] = threading.Event()
        return job

    def state(self, job_id: str) -> str:
        return self.store.get(job_id)[0].state

    def wait_for(self, pred, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)


@pytest.fixture
def world():
    return World()


def test_eight_jobs_never_more_than_five_and_all_finish(world):
    agent = world.agent()
    jobs = [world.submit(f"db{i}") for i in range(8)]
    assert len(agent.tick()) == 5
    world.wait_for(lambda: len(world.active) == 5)
    assert agent.tick() == []                                 # full: the rest wait
    assert all(world.state(j.id) == QUEUED for j in jobs[5:])
    assert "waiting for a slot: 5 of 5" in world.store.get(jobs[5].id)[0].message
    for j in jobs:                                            # finish them one by one
        world.release[j.id].set()
        world.wait_for(lambda: world.state(j.id) == SUCCEEDED)
        agent.tick()
    agent.join(5)
    assert world.max_active == 5
    assert all(world.state(j.id) == SUCCEEDED for j in jobs)
    assert world.store.slots("h1") == {}


def test_the_cap_is_configurable(world):
    world.cfg.max_jobs = 2
    agent = world.agent()
    for i in range(4):
        world.submit(f"db{i}")
    assert len(agent.tick()) == 2
    assert agent.tick() == []


def test_one_active_job_per_target_and_no_head_of_line_blocking(world):
    agent = world.agent()
    a1 = world.submit("prod-db")
    a2 = world.submit("prod-db")                              # same target: must wait
    b1 = world.submit("other-db")                             # behind it in the queue, free to go
    assert agent.tick() == [a1.id, b1.id]
    assert world.state(a2.id) == QUEUED
    assert f"job {a1.id} is active" in world.store.get(a2.id)[0].message
    world.release[a1.id].set()
    world.wait_for(lambda: world.state(a1.id) == SUCCEEDED and world.store.lock_holder("prod-db") is None)
    assert agent.tick() == [a2.id]
    for j in (a2, b1):
        world.release[j.id].set()
    agent.join(5)


def test_queue_is_first_come_first_served(world):
    world.cfg.max_jobs = 1
    agent = world.agent()
    jobs = [world.submit(f"db{i}") for i in range(3)]
    for j in jobs:
        world.wait_for(lambda: agent.tick() or world.state(j.id) != QUEUED)
        world.wait_for(lambda: j.id in world.active)
        world.release[j.id].set()
        world.wait_for(lambda: world.state(j.id) == SUCCEEDED and not world.store.slots("h1"))
    assert world.started == [j.id for j in jobs]


def test_a_job_waiting_beyond_its_start_deadline_expires_saying_why(world):
    world.cfg.max_jobs = 1
    agent = world.agent()
    first = world.submit("db1")
    late = world.submit("db2", start_timeout=30)
    agent.tick()
    agent.tick()
    world.now += 31
    agent.tick()
    job = world.store.get(late.id)[0]
    assert job.state == EXPIRED and "start deadline" in job.message and "waiting for a slot" in job.message
    world.release[first.id].set()
    agent.join(5)


def test_cancelling_a_queued_job(world):
    world.cfg.max_jobs = 1
    agent = world.agent()
    first = world.submit("db1")
    second = world.submit("db2")
    agent.tick()
    world.store.update(second.id, lambda j: setattr(j, "cancel_requested", "op"))
    agent.tick()
    assert world.state(second.id) == CANCELLED
    assert world.store.queued("h1") == []
    world.release[first.id].set()
    agent.join(5)


def test_agents_only_run_their_own_hosts_jobs(world):
    a = world.agent("h1")
    b = world.agent("h2")
    j1 = world.submit("db1", host="h1")
    j2 = world.submit("db2", host="h2")
    assert a.tick() == [j1.id] and b.tick() == [j2.id]
    for j in (j1, j2):
        world.release[j.id].set()
    a.join(5)
    b.join(5)


def test_the_target_lock_holds_across_hosts(world):
    a = world.agent("h1")
    b = world.agent("h2")
    j1 = world.submit("shared", host="h1")
    j2 = world.submit("shared", host="h2")
    assert a.tick() == [j1.id]
    assert b.tick() == []
    world.release[j1.id].set()
    a.join(5)
    assert b.tick() == [j2.id]
    world.release[j2.id].set()
    b.join(5)


def test_admission_is_one_transaction_a_stale_read_cannot_overbook(world):
    """Two admissions racing for the last slot: the second transaction fails."""
    world.cfg.max_jobs = 1
    j1, j2 = world.submit("db1"), world.submit("db2")
    f1, r1 = world.store.get(j1.id)
    f2, r2 = world.store.get(j2.id)
    assert world.store.admit(f1, r1, 0, world.now, 60) is not None
    assert world.store.admit(f2, r2, 0, world.now, 60) is None       # slot 0 taken
    f2, r2 = world.store.get(j2.id)
    assert f2.state == QUEUED


def test_a_second_agent_for_the_same_host_is_refused(world):
    world.agent("h1")
    with pytest.raises(Conflict, match="another drctl agent"):
        world.agent("h1")


def test_a_dead_agents_jobs_keep_their_server_until_the_next_agent_adopts_them():
    """The lock lives as long as the job: an agent killed mid-job loses its own
    lease, but the job's slot and server lock stay on the job's lease; an agent
    of another host cannot take the server meanwhile; the next agent of the
    host adopts the job, and when it ends the other host's job runs."""
    clock = [1000.0]
    world = World()
    world.kv = MemoryKV(clock=lambda: clock[0])
    world.store = BackupStore(world.kv, PREFIX)
    agent = world.agent()
    job = world.submit("db1")
    assert agent.tick() == [job.id]
    world.wait_for(lambda: world.state(job.id) == RUNNING)
    agent.stopping.set()                          # killed: nobody renews its lease
    clock[0] += world.cfg.lease_ttl + 1           # ... which lapses
    assert not world.store.agent_alive("h1")
    assert world.store.slots("h1") == {0: job.id} and world.store.lock_holder("db1") == job.id
    other = world.agent("h2")
    second = world.submit("db1", host="h2")       # the same server, from another host
    assert other.tick() == []
    clock[0] += 200                               # long past any agent lease
    assert other.tick() == []
    assert world.state(second.id) == QUEUED
    assert "job " + job.id in world.store.get(second.id)[0].message
    # The killed agent's thread never acts again: it keeps waiting on the old event
    # (past this test), and the job's end is the adopter's alone.
    world.release[job.id] = threading.Event()
    with world.lock:                              # the job's place on db1 passes to the adopter
        world.active.discard(job.id)
        world.per_target[job.target] -= 1
    agent.threads.clear()
    new = world.agent()                           # the host's next agent adopts before it admits
    world.wait_for(lambda: job.id in world.adopted)
    assert new.tick() == []
    world.release[job.id].set()
    world.wait_for(lambda: world.state(job.id) == SUCCEEDED)
    world.wait_for(lambda: world.store.lock_holder("db1") is None)
    assert world.store.slots("h1") == {}
    assert other.tick() == [second.id]
    world.release[second.id].set()
    other.join(5)
    assert world.state(second.id) == SUCCEEDED


def test_a_job_lock_lapses_only_after_the_jobs_deadline():
    """A host that never comes back: its job's server frees after the job's
    deadline and the grace, by etcd's clock, not before."""
    from netplugin.backup.store import LOCK_GRACE
    clock = [1000.0]
    kv = MemoryKV(clock=lambda: clock[0])
    store = BackupStore(kv, PREFIX)
    world = World()
    world.kv, world.store = kv, store
    job = world.submit("db1")
    found, rev = store.get(job.id)
    assert store.admit(found, rev, 0, world.now, 600) is not None
    clock[0] += 600 + LOCK_GRACE - 5
    assert store.lock_holder("db1") == job.id
    clock[0] += 10
    assert store.lock_holder("db1") is None and store.slots("h1") == {}


def test_an_adopted_job_without_its_lock_takes_it_again():
    """A job record from before job leases (its lock gone with the dead agent's
    lease) is adopted with its slot and lock taken again, on a job lease."""
    world = World()
    job = world.submit("db2")
    found, rev = world.store.get(job.id)
    world.store.admit(found, rev, 0, world.now, 60)
    world.store.update(job.id, lambda j: j.move(RUNNING, "working"))
    world.kv.revoke_lease(int(world.kv.get(world.store.k_job_lease(job.id)).value))
    assert world.store.lock_holder("db2") is None
    new = world.agent()
    world.wait_for(lambda: job.id in world.adopted)
    assert world.store.slots("h1") == {0: job.id}
    assert world.store.lock_holder("db2") == job.id
    world.release[job.id].set()
    new.join(5)
    assert world.state(job.id) == SUCCEEDED
    assert world.store.slots("h1") == {} and world.store.lock_holder("db2") is None


def test_closing_with_no_active_job_frees_the_agent_key(world):
    agent = world.agent()
    assert world.store.agent_alive("h1")
    agent.close()
    assert not world.store.agent_alive("h1")


def test_closing_with_active_jobs_keeps_the_lease_for_adoption(world):
    agent = world.agent()
    job = world.submit("db1")
    agent.tick()
    world.wait_for(lambda: world.state(job.id) == RUNNING)
    agent.close()
    assert world.store.agent_alive("h1") and world.store.lock_holder("db1") == job.id
    assert agent.tick() == []                                   # a closed agent admits nothing
    world.release[job.id].set()
    agent.join(5)


def test_serve_loop_admits_and_stops(world):
    agent = world.agent()
    t = threading.Thread(target=agent.serve, daemon=True)
    t.start()
    jobs = [world.submit(f"db{i}") for i in range(7)]
    world.wait_for(lambda: len(world.active) == 5)
    for j in jobs:
        world.release[j.id].set()
    world.wait_for(lambda: all(world.state(j.id) == SUCCEEDED for j in jobs))
    agent.close()
    t.join(5)
    assert world.max_active == 5 and not t.is_alive()


def test_gc_removes_old_containers_and_records(world):
    class D:
        removed = []

        def remove_container(self, cid, v=False, force=False):
            assert v is False                                      # volumes always stay
            self.removed.append(cid)

        def inspect_container(self, cid):
            return {"Config": {"Labels": {"netplugin.backup.job": job.id}}}
    agent = world.agent()
    agent.docker = D()
    job = world.submit("db1")
    world.store.update(job.id, lambda j: (j.move(CANCELLED, "x", now=world.now), setattr(j, "container", "c1")))
    agent.gc(world.now + world.cfg.keep_containers + 1)
    assert D.removed == ["c1"] and world.store.get(job.id)[0].removed
    agent.gc(world.now + world.cfg.keep_history + 1)
    assert world.store.get(job.id) is None


# -- a job whose start an agent stop interrupted: queued again --------------------------------

def _admitted(world: World, target: str = "db1") -> Job:
    job = world.submit(target)
    found, rev = world.store.get(job.id)
    admitted = world.store.admit(found, rev, 0, world.now, 60)
    assert admitted is not None
    return admitted


def test_queuing_an_interrupted_start_again_frees_slot_lock_and_lease_in_one_transaction(world):
    job = _admitted(world)
    lease = int(world.kv.get(world.store.k_job_lease(job.id)).value)
    found, rev = world.store.get(job.id)
    world.store.update(job.id, lambda j: setattr(j, "message", "changed meanwhile"))
    assert not world.store.requeue(found, rev, world.now, "again")          # stale revision: nothing written
    assert world.state(job.id) == STARTING and world.store.slots("h1") == {0: job.id}
    assert world.store.lock_holder("db1") == job.id and world.store.queued("h1") == []
    found, rev = world.store.get(job.id)
    assert world.store.requeue(found, rev, world.now, "again")
    again = world.store.get(job.id)[0]
    assert again.state == QUEUED and again.slot is None and again.history[-1]["message"] == "again"
    assert world.store.queued("h1") == [job.id]
    assert world.store.slots("h1") == {} and world.store.lock_holder("db1") is None
    assert world.kv.get(world.store.k_job_lease(job.id)) is None
    assert world.kv.refresh_lease(lease) == 0                               # given back


def test_queuing_again_never_frees_a_lock_another_job_holds(world):
    job = _admitted(world)
    world.kv.revoke_lease(int(world.kv.get(world.store.k_job_lease(job.id)).value))   # its lease lapsed
    other = _admitted(world)                                                # ... and another job took db1
    found, rev = world.store.get(job.id)
    assert world.store.requeue(found, rev, world.now, "again")
    assert world.store.lock_holder("db1") == other.id and world.store.slots("h1") == {0: other.id}


def test_two_agents_racing_for_a_job_queued_again_admit_it_once(world):
    job = _admitted(world)
    found, rev = world.store.get(job.id)
    assert world.store.requeue(found, rev, world.now, "again")
    found, rev = world.store.get(job.id)
    barrier = threading.Barrier(2)
    won: list[Job | None] = []

    def admit(slot: int) -> None:
        mine = Job.from_json(found.to_json())
        barrier.wait()
        won.append(world.store.admit(mine, rev, slot, world.now, 60))
    threads = [threading.Thread(target=admit, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(w is not None for w in won) == [False, True]
    assert len(world.store.slots("h1")) == 1 and world.store.lock_holder("db1") == job.id
    assert [h["state"] for h in world.store.get(job.id)[0].history] == [QUEUED, STARTING, QUEUED, STARTING]


class RequeueingRunner(HoldingRunner):
    """Adopts a starting job as the real runner does when nothing ran: queues it again."""

    def adopt(self, job: Job) -> Job:
        w = self.world
        w.adopted.append(job.id)
        found, rev = w.store.get(job.id)
        assert w.store.requeue(found, rev, w.now, "attempt 1 of 3 interrupted while starting")
        w.requeued.set()
        w.readmitted.wait(5)          # the next tick admits it before this thread ends
        return found                  # as queued again, as Runner.adopt returns it


def test_an_agent_admits_a_job_queued_again_and_the_old_thread_leaves_its_new_slot(world):
    world.requeued, world.readmitted = threading.Event(), threading.Event()
    job = _admitted(world)
    agent = Agent(world.store, "h1", world.cfg, lambda: RequeueingRunner(world), clock=lambda: world.now)
    agent.start(wait_previous=0)
    assert world.requeued.wait(5)
    with agent._lock:
        agent.threads.pop(job.id)     # as if its thread ended; it still runs its finally below
    assert agent.tick() == [job.id]
    world.readmitted.set()
    world.wait_for(lambda: job.id in world.started)
    time.sleep(0.1)                   # the adopting thread's finally has run
    assert world.store.slots("h1") == {0: job.id} and world.store.lock_holder("db1") == job.id
    world.release[job.id].set()
    agent.join(5)
    assert world.state(job.id) == SUCCEEDED
    assert world.store.slots("h1") == {} and world.store.lock_holder("db1") is None
