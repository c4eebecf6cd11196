"""The per-host agent (``drctl agent``): admits queued jobs up to the host's
cap, one active job per target, first come first served; expires jobs that
wait beyond their start deadline; runs each admitted job in a thread; adopts
the active jobs a previous agent of this host left; every ``schedule_poll``
seconds, makes the fleet-wide passes it was given (firing schedules,
re-placing the queued jobs of dead hosts).

Every decision is an etcd transaction (store.py): the cap and the per-target
lock hold across threads, processes and hosts. A job whose target is busy
does not block the jobs behind it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from ..errors import Conflict, InvalidRequest, NetpluginError
from ..identity import Instance, may_take, refusal, this_instance
from . import placement, trust
from .config import BackupConfig
from .model import CANCELLED, EXPIRED, QUEUED, Job
from .runner import LABEL_JOB
from .store import BackupStore

log = logging.getLogger(__name__)

GC_EVERY = 60.0


class Agent:
    def __init__(self, store: BackupStore, host: str, cfg: BackupConfig, runner_factory: Callable[[], object],
                 clock=time.time, docker=None, instance: Instance | None = None,
                 fleet: list[Callable[[float], list]] | None = None,
                 sweeps: list[Callable[[], object]] | None = None):
        self.store = store
        self.host = host
        self.cfg = cfg
        self.max_jobs = int(cfg.max_jobs)
        self.runner_factory = runner_factory
        self.clock = clock
        self.docker = docker            # for the clean-up of old containers; optional
        self.instance = instance or this_instance()
        self.keeper = store.lease_keeper(cfg.lease_ttl, max(1.0, cfg.lease_ttl / 3), "agent", logger=log)
        self.threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.host_lost = threading.Event()   # set when another agent took this host: serve() ends in error
        self._last_gc = 0.0
        self._said: dict[str, str] = {}
        # Fleet-wide passes any agent may make (schedules.Firing.tick, placement.Placer.rehome),
        # every cfg.schedule_poll seconds; each returns what it queued.
        self.fleet = list(fleet or [])
        # Clean-ups of what a killed agent of this host left (drills.sweep_scratch):
        # at start, after adoption, and at every clean-up pass.
        self.sweeps = list(sweeps or [])
        self._last_fleet = float("-inf")

    @property
    def lease(self) -> int | None:
        """The lease the agent's key, slots and locks are bound to."""
        return self.keeper.lease

    @property
    def held_lease(self) -> int:
        """The agent's lease, for a write bound to it; the agent registers before it writes any."""
        lease = self.keeper.lease
        if lease is None:
            raise NetpluginError("the drctl agent holds no etcd lease yet: it registers before it admits jobs")
        return lease

    # -- life cycle -------------------------------------------------------------------------
    def start(self, wait_previous: float | None = None) -> None:
        """Take the host's agent key (waiting for a dead predecessor's lease to
        lapse), then adopt what it left."""
        wait = self.cfg.lease_ttl + 2 if wait_previous is None else wait_previous
        deadline = time.monotonic() + wait
        lease = self.keeper.grant()
        while True:
            claimed, holder = self._claim(lease)
            if claimed:
                break
            if time.monotonic() > deadline:
                self.keeper.revoke()
                raise Conflict("another " + refusal("drctl agent", self.host, holder, "--host-id or host_id"))
            time.sleep(0.5)
        self.adopt()
        self.sweep()

    def sweep(self) -> None:
        for work in self.sweeps:
            self._guarded(work)

    def _claim(self, lease: int):
        """Claim this host's agent key for this instance (identity.py: an
        earlier agent of this machine whose process is gone is taken over at
        once; a live one, here or on a clone, never)."""
        info = {"host": self.host, "pid": os.getpid(), "node": socket.gethostname(), "max_jobs": self.max_jobs,
                "started": self.clock(), "labels": placement.label_map(self.cfg.labels)}
        return self.store.claim_agent(self.host, info, self.instance, lease,
                                      lambda found: may_take(found, self.instance))

    def close(self) -> None:
        """Stop admitting. Running jobs go on in their containers, holding their
        slots and server locks on their own leases; when jobs are active the
        agent's lease is left to lapse, so ``drctl ls`` shows them unadopted
        until the next agent adopts them."""
        self.stopping.set()
        self.wake.set()
        self.keeper.stop(wait=10)        # a renewal under way ends before the lease is given back
        with self._lock:
            busy = [t for t in self.threads.values() if t.is_alive()]
        if not busy and self.lease is not None:
            with contextlib.suppress(NetpluginError):
                self.keeper.revoke()

    def serve(self) -> None:
        """Tick until close(); the lease is refreshed every third of its TTL
        (at least every second) from the keeper's thread."""
        self.keeper.start(beat=self._keepalive)
        try:
            while not self.stopping.is_set():
                self._guarded(self.tick)
                self.wake.wait(self.cfg.poll)
                self.wake.clear()
        finally:
            self.keeper.stop()

    @staticmethod
    def _guarded(work: Callable[[], object]) -> None:
        try:
            work()
        except NetpluginError as exc:
            log.warning("agent: %s", exc.message)
        except Exception:
            log.exception("agent tick failed")

    def _keepalive(self) -> bool:
        """One beat of the keeper: renew the lease; when etcd does not take the
        renewal, take a new lease and announce the agent on it (the jobs' slots
        and locks are on their own leases). The lease is never dropped: a failed
        attempt is made again at the next beat."""
        if not self.stopping.is_set():
            self._guarded(self._renew)
        return not self.stopping.is_set()

    def _renew(self) -> None:
        try:
            self.keeper.renew()
            # etcd answers the renewal of a lapsed lease with TTL 0, not an
            # error: the agent key still naming this instance is the proof.
            if self.store.agent_token(self.host) == self.instance.token:
                return
            log.warning("agent: the agent key of host %s is gone or not this agent's: claiming it again", self.host)
        except NetpluginError as exc:
            log.warning("agent: lease refresh failed (%s): taking a new lease", exc.message)
        claimed, holder = self._claim(self.keeper.grant())
        if not claimed:      # another agent took this host meanwhile: this one stops admitting
            log.error("agent: %s", "another " + refusal("drctl agent", self.host, holder, "--host-id or host_id"))
            self.host_lost.set()
            self.stopping.set()
            self.wake.set()
        # The jobs' slots and locks are on their own leases (store.py): the
        # agent's lease going does not touch them.

    def adopt(self) -> list[str]:
        """Take over this host's active jobs with their slots and server locks;
        start() calls it before the first tick, so nothing new is admitted
        until every job a previous agent left holds its server again."""
        adopted = []
        for job in self.store.list_jobs():
            if job.host != self.host or not job.active:
                continue
            with self._lock:
                if job.id in self.threads:
                    continue
            if self._trusted(job.id) is None:
                with contextlib.suppress(NetpluginError):
                    self.store.release(job)     # refused and marked failed: never acted on
                continue
            # run_by was written by this host's agent: the same clock reads it.
            if not self.store.reclaim(job, max(0.0, job.run_by - self.clock())):
                log.warning("agent: job %s: its slot or target lock is held by another job; carrying on", job.id)
            log.info("agent: adopting job %s (%s)", job.id, job.state)
            self._spawn(job, adopt=True)
            adopted.append(job.id)
        return adopted

    # -- scheduling -------------------------------------------------------------------------
    def tick(self) -> list[str]:
        """One pass over the queue; returns the ids admitted."""
        if self.stopping.is_set():
            return []
        now = self.clock()
        queued = []
        for job_id in self.store.queued(self.host):
            found = self._trusted(job_id)
            if found is not None:
                queued.append(found)
        queued.sort(key=lambda jr: (jr[0].created, jr[0].id))
        slots = self.store.slots(self.host)
        free = [i for i in range(self.max_jobs) if i not in slots]
        admitted = []
        for job, rev in queued:
            if job.state != QUEUED:
                continue
            if job.cancel_requested:
                self._end_queued(job, CANCELLED, f"cancelled by {job.cancel_requested} while queued")
                continue
            if job.start_by and now > job.start_by:
                why = self._said.get(job.id) or "waiting"
                self._end_queued(job, EXPIRED, f"not started within its start deadline "
                                               f"({job.job_spec.start_timeout:.0f} s): {why}")
                continue
            if not free:
                self._say(job, f"waiting for a slot: {len(slots)} of {self.max_jobs} jobs running on {self.host}")
                continue
            holder = self.store.lock_holder(job.lock_key)
            if holder is not None:
                on = f"target {job.target}" + (f" (server {job.server})" if job.server else "")
                self._say(job, f"waiting for {on}: job {holder} is active on it")
                continue
            got = self.store.admit(job, rev, free[0], self.clock(), job.job_spec.timeout)
            if got is None:
                continue                        # changed meanwhile; next tick sees it
            slots[free.pop(0)] = got.id
            self._said.pop(got.id, None)
            admitted.append(got.id)
            log.info("agent: job %s (%s of %s) admitted to slot %s", got.id, got.kind, got.target, got.slot)
            self._spawn(got, adopt=False)
        if now - self._last_gc >= GC_EVERY:
            self._last_gc = now
            self.gc(now)
            self.sweep()
        if self.fleet and abs(now - self._last_fleet) >= self.cfg.schedule_poll:
            self._last_fleet = now
            for work in self.fleet:
                try:
                    if work(now):
                        self.wake.set()         # a job may have been queued for this host
                except NetpluginError as exc:
                    log.warning("agent: %s", exc.message)
        return admitted

    def _trusted(self, job_id: str) -> tuple[Job, int] | None:
        """The job, read and checked as the CLI checks it (trust.check_job); one
        that fails is marked failed with the reason (a guarded update) and never run."""
        try:
            found = self.store.get(job_id)
        except InvalidRequest as exc:
            self._refused(job_id, exc.message)
            return None
        if found is None:
            return None
        job = found[0]
        try:
            if job.id != job_id or job.host != self.host:
                raise InvalidRequest(f"queued for host {self.host} as {job_id[:80]!r}, the record names job "
                                     f"{str(job.id)[:80]!r} of host {str(job.host)[:80]!r}")
            trust.check_job(job, self.cfg)
        except InvalidRequest as exc:
            why = exc.message
            self._refused(job_id, why)

            def change(j: Job):
                j.refuse(why, self.clock())
            with contextlib.suppress(NetpluginError):
                self.store.update(job_id, change)
            return None
        return found

    def _refused(self, job_id: str, why: str) -> None:
        """Log a refused record once."""
        if self._said.get(job_id) != "refused":
            self._said[job_id] = "refused"
            log.warning("agent: job record %r refused: %s", job_id[:80], why)

    def _say(self, job: Job, message: str) -> None:
        """Record why a queued job waits (written only when it changes)."""
        if self._said.get(job.id) == message:
            return
        self._said[job.id] = message

        def change(j: Job):
            if j.state == QUEUED:
                j.message = message
        with contextlib.suppress(NetpluginError):
            self.store.update(job.id, change)

    def _end_queued(self, job: Job, state: str, message: str) -> None:
        def change(j: Job):
            if j.state == QUEUED:
                j.move(state, message, now=self.clock())
        try:
            self.store.update(job.id, change)
            self._said.pop(job.id, None)
            log.info("agent: job %s %s: %s", job.id, state, message)
        except NetpluginError as exc:
            log.warning("agent: cannot end job %s: %s", job.id, exc.message)

    def _spawn(self, job: Job, adopt: bool) -> None:
        def work():
            final = job
            try:
                runner = self.runner_factory()
                final = runner.adopt(job) if adopt else runner.run(job)
            except Exception:
                log.exception("agent: job %s: runner crashed", job.id)
            finally:
                try:
                    found = self.store.get(job.id)
                    # Queued again (runner._retry_start): its slot and lock went in that
                    # transaction, and a tick may have admitted it anew since: leave them.
                    if final.state != QUEUED:
                        self.store.release(found[0] if found else final)
                except NetpluginError as exc:
                    log.warning("agent: job %s: slot not released (%s); its lease will free it", job.id, exc.message)
                with self._lock:
                    if self.threads.get(job.id) is threading.current_thread():   # not a re-admission's
                        self.threads.pop(job.id, None)
                self.wake.set()
        thread = threading.Thread(target=work, name=f"job-{job.id}", daemon=True)
        with self._lock:
            self.threads[job.id] = thread
        thread.start()

    def active(self) -> int:
        with self._lock:
            return sum(1 for t in self.threads.values() if t.is_alive())

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self.threads.values())
            if not threads:
                return
            for t in threads:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return

    # -- clean-up ---------------------------------------------------------------------------
    def gc(self, now: float) -> None:
        """Remove ended jobs' containers after keep_containers, their records after keep_history.
        A container is removed only when it carries the job's label: a record
        naming another container (crafted, or stale) never removes it."""
        for job in self.store.list_jobs():
            try:
                if job.host != self.host or not job.terminal:
                    continue
                age = now - float(job.updated or job.created)
            except (TypeError, ValueError):
                continue                        # a crafted record: nothing of it is acted on
            if job.container and not job.removed and age > self.cfg.keep_containers and self.docker is not None:
                try:
                    labels = (self.docker.inspect_container(job.container).get("Config") or {}).get("Labels") or {}
                    if labels.get(LABEL_JOB) != job.id:
                        log.warning("agent: job %r names container %r, which is not its own: left alone",
                                    str(job.id)[:80], str(job.container)[:80])
                        continue
                    self.docker.remove_container(job.container, v=False, force=False)
                except Exception as exc:  # noqa: BLE001 - clean-up: any failure is logged and retried next pass
                    if "No such container" not in str(exc) and "404" not in str(exc):
                        log.warning("agent: cannot remove container of job %s: %s", job.id, exc)
                        continue
                with contextlib.suppress(NetpluginError):
                    self.store.update(job.id, lambda j: setattr(j, "removed", now))
            if age > self.cfg.keep_history and (job.removed or not job.container):
                self.store.delete_job(job)
