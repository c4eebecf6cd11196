"""The etcd layout of drctl, under the configured prefix (``/netplugin/v1``)::

    backup/jobs/<job-id>             Job: spec, state, history, results (kept after it ends)
    backup/queue/<host>/<job-id>     present while the job waits for that host's agent
    backup/slots/<host>/<n>          -> job id; n < the host's cap; bound to the JOB's lease
    backup/locks/<server>            -> job id; one active job per database server (Job.lock_key:
                                     network@address:port); bound to the job's lease
    backup/leases/<job-id>           -> the job's lease id, on that lease (to give it back)
    backup/agents/<host>             the agent of that host and its instance (identity.py), claimed
                                     create-if-absent on its lease: alive while present
    backup/catalog/<target>/<name>   Backup: a verified backup (only verified ones are written)
    backup/schedules/<name>          Schedule: cron, time zone, the job to submit, what was run and missed
    backup/fired/<name>/<due>        -> job id; the claim of one due time (epoch seconds, 12 digits),
                                     created with the job in one transaction (schedules.py)
    backup/drills/<target>           DrillResult: the target's last restore drill (drills.py)
    backup/senders/<host>/<job-id>   Sender: the sending side of a physical backup, asked of the agent of
                                     the host that holds the server's data (physical_sender.py)
    backup/binlogs/<target>/<file>   BinlogFile: an archived, complete binlog file of the target's
                                     server with its positions and event times (binlog.py)

Admission is one transaction: the job is still queued and unchanged, a slot
of the host is free, the target is free; it writes the job as starting, the
slot, the lock and removes the queue entry. So two agents (or two threads)
can never run more than the cap, nor two jobs on one target.

Slots and locks live as long as the JOB, not as long as the agent: each
admitted job gets its own lease, whose TTL is the job's whole deadline
(``timeout``) plus ``LOCK_GRACE``, and nobody renews it. Why not the agent's
lease: an agent killed or restarting mid-job lost its lease after ``lease_ttl``
seconds while the container kept working, and another host could then take the
server. Why not a renewed job lease: it lapses the same way while no agent
renews it. A lease that lives to the job's deadline needs no renewal, measures
time by etcd's clock (no host's clock is compared), survives any agent outage,
and still frees a server whose host died for good (within the deadline plus
the grace). The job's end gives the lease back (``release``), freeing the slot
and the lock at once; an agent that restarts adopts its active jobs, whose
locks are still there, before it admits anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from .. import jsondepth
from ..cache import Cache
from ..errors import Conflict, InvalidRequest, NetpluginError, NotFound, StoreUnavailable
from ..identity import Instance
from ..kv import KV, Compare, Delete, Item, Put, absent, unchanged
from ..lease import LeaseKeeper
from ..store import Change, Family, Reading, Store, compare_and_swap, follow_changes
from .binlog import BinlogFile
from .binlog import check_record as check_binlog
from .drills import DrillResult, check_result
from .model import QUEUED, STARTING, Backup, BadRecord, Job
from .physical import Sender, check_sender
from .schedules import Schedule

R = TypeVar("R", Job, Backup)
C = TypeVar("C")
log = logging.getLogger(__name__)

# Seconds a job's slot and server lock outlive its deadline when no agent ends
# the job (its host died): the runner expires a job at its deadline, so a live
# agent always ends it, and gives the lock back, before this.
LOCK_GRACE = 300


class BackupStore:
    def __init__(self, kv: KV, prefix: str = "/netplugin/v1"):
        self.kv = kv
        self.root = f"{prefix}/backup"
        self._bad: set[str] = set()             # keys of records that did not parse, logged once
        self.bad_drills = 0                      # drill results skipped as bad
        self.bad_binlogs = 0                     # binlog records skipped as bad

    @classmethod
    def beside(cls, store: Store) -> BackupStore:
        """drctl's records in the same etcd, under the same prefix, as netplugin's."""
        return cls(store.kv, store.prefix)

    # -- keys -----------------------------------------------------------------------------
    def k_job(self, job_id: str = "") -> str:
        return f"{self.root}/jobs/{job_id}"

    def k_queue(self, host: str, job_id: str = "") -> str:
        return f"{self.root}/queue/{host}/{job_id}"

    def k_slot(self, host: str, n: int | None = None) -> str:
        return f"{self.root}/slots/{host}/" + ("" if n is None else f"{n:03d}")

    def k_lock(self, key: str) -> str:
        return f"{self.root}/locks/{key}"

    def k_job_lease(self, job_id: str) -> str:
        return f"{self.root}/leases/{job_id}"

    def k_agent(self, host: str = "") -> str:
        return f"{self.root}/agents/{host}"

    def k_catalog(self, target: str = "", name: str = "") -> str:
        if not target:
            return f"{self.root}/catalog/"
        return f"{self.root}/catalog/{target}/{name}"

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if not self.kv.txn([absent(self.k_job(job.id))],
                           [Put(self.k_job(job.id), job.to_json()), Put(self.k_queue(job.host, job.id), job.id)]):
            raise Conflict(f"job {job.id} exists already")

    def get(self, job_id: str) -> tuple[Job, int] | None:
        item = self.kv.get(self.k_job(job_id))
        return (Job.from_json(item.value), item.mod_revision) if item else None

    def find(self, ref: str) -> Job:
        """By id or unique prefix (at least 4 characters), or the last part of the id."""
        found = self.get(ref)
        if found:
            return found[0]
        jobs = self.list_jobs()
        matches = [j for j in jobs if len(ref) >= 4 and ref in j.id]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"job {ref!r} does not exist: see 'drctl ls'")
        raise NotFound(f"job {ref!r} is ambiguous ({len(matches)} jobs match): give more of its id")

    def list_jobs(self) -> list[Job]:
        """Every job record that parses; one that does not is skipped (logged once)."""
        return sorted(self._parsed(Job, self.kv.get_prefix(self.k_job())), key=_when)

    def queued(self, host: str) -> list[str]:
        return [i.key.rsplit("/", 1)[1] for i in self.kv.get_prefix(self.k_queue(host), keys_only=True)]

    def update(self, job_id: str, change: Callable[[Job], None], tries: int = 8) -> Job:
        """Read, change(job), write back guarded by the revision read; retried on a
        concurrent write. change may raise (e.g. Conflict on an illegal move).
        The queue entry follows the state: it goes when the job leaves queued."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], Job]:
            item = read.get(self.k_job(job_id))
            if item is None:
                raise NotFound(f"job {job_id} does not exist")
            job = Job.from_json(item.value)
            was = job.state
            change(job)
            ops: list[Put | Delete] = [Put(self.k_job(job.id), job.to_json())]
            if was == QUEUED and job.state != QUEUED:
                ops.append(Delete(self.k_queue(job.host, job.id)))
            return ops, job
        return compare_and_swap(self.kv, attempt, Conflict(f"job {job_id} kept changing: retry"), tries=tries)

    def admit(self, job: Job, rev: int, slot: int, now: float, run_timeout: float) -> Job | None:
        """queued -> starting with a slot and the target lock, at once, both on a
        new lease of the job's own that lasts until its deadline (see above);
        None when the job changed, the slot or the target was taken meanwhile."""
        job.move(STARTING, f"admitted to slot {slot}", now=now)
        job.slot = slot
        job.run_by = now + run_timeout
        lease = self.kv.grant_lease(self.lease_ttl(run_timeout))
        ok = self.kv.txn(
            [unchanged(self.k_job(job.id), rev), absent(self.k_slot(job.host, slot)),
             absent(self.k_lock(job.lock_key))],
            [Put(self.k_job(job.id), job.to_json()), Delete(self.k_queue(job.host, job.id)),
             *self._held(job, lease)])
        if not ok:
            self._give_back(lease)
        return job if ok else None

    @staticmethod
    def lease_ttl(remaining: float) -> int:
        """The TTL of a job's lease for ``remaining`` seconds of its deadline."""
        return max(60, int(remaining) + 1) + LOCK_GRACE

    def _held(self, job: Job, lease: int) -> list[Put | Delete]:
        """The keys a job holds while active, on its lease."""
        return [Put(self.k_slot(job.host, job.slot or 0), job.id, lease=lease),
                Put(self.k_lock(job.lock_key), job.id, lease=lease),
                Put(self.k_job_lease(job.id), str(lease), lease=lease)]

    def _give_back(self, lease: int) -> None:
        # A lease not given back lapses by itself; its keys hold no running job.
        with contextlib.suppress(NetpluginError):
            self.kv.revoke_lease(lease)

    def reclaim(self, job: Job, remaining: float) -> bool:
        """An agent adopting an active job keeps its slot and lock. They are on
        the job's own lease and normally still there; any that went (a record
        from before job leases, or a job past its deadline and grace) is taken
        again on a new job lease, in one transaction, only while absent or still
        naming this job. False when another job holds either."""
        compares = []
        missing = False
        for key in (self.k_slot(job.host, job.slot or 0), self.k_lock(job.lock_key)):
            item = self.kv.get(key)
            if item is not None and item.value.decode() != job.id:
                return False
            compares.append(unchanged(key, item.mod_revision if item else 0))
            missing = missing or item is None
        if not missing and self.kv.get(self.k_job_lease(job.id)) is not None:
            return True
        lease = self.kv.grant_lease(self.lease_ttl(remaining))
        if self.kv.txn(compares, self._held(job, lease)):
            return True
        self._give_back(lease)
        return False

    def release(self, job: Job) -> None:
        """Free the job's slot and lock: give its lease back (they go at once),
        then delete any still naming this job (a record from before job leases)."""
        item = self.kv.get(self.k_job_lease(job.id))
        if item is not None and item.value.isdigit():
            self._give_back(int(item.value))
        for key in (self.k_slot(job.host, job.slot if job.slot is not None else -1), self.k_lock(job.lock_key)):
            self.kv.txn([Compare(key, "value", "==", job.id)], [Delete(key)])

    def requeue(self, job: Job, rev: int, now: float, message: str) -> bool:
        """starting -> queued for a job whose start was interrupted before
        anything ran, in ONE transaction: the job unchanged since ``rev``, its
        slot and lock deleted only while unchanged and still naming it (one
        another job holds is left alone), its lease key deleted, its queue entry
        put back. Then its lease is given back. False when anything changed."""
        job.move(QUEUED, message, now=now)
        job.slot = None
        job.run_by = 0.0
        compares: list[Compare] = [unchanged(self.k_job(job.id), rev)]
        ops: list[Put | Delete] = [Put(self.k_job(job.id), job.to_json()), Put(self.k_queue(job.host, job.id), job.id),
                                   Delete(self.k_job_lease(job.id))]
        held = [self.k_slot(job.host, n) for n, holder in self.slots(job.host).items() if holder == job.id]
        for key in [*held, self.k_lock(job.lock_key)]:
            item = self.kv.get(key)
            if item is not None and item.value.decode() == job.id:
                compares.append(unchanged(key, item.mod_revision))
                ops.append(Delete(key))
        lease = self.kv.get(self.k_job_lease(job.id))
        if not self.kv.txn(compares, ops):
            return False
        if lease is not None and lease.value.isdigit():
            self._give_back(int(lease.value))
        return True

    def slots(self, host: str) -> dict[int, str]:
        return {int(i.key.rsplit("/", 1)[1]): i.value.decode() for i in self.kv.get_prefix(self.k_slot(host))}

    def lock_holder(self, key: str) -> str | None:
        """The job active on a server (key: Job.lock_key)."""
        item = self.kv.get(self.k_lock(key))
        return item.value.decode() if item else None

    def delete_job(self, job: Job) -> None:
        self.kv.txn([], [Delete(self.k_job(job.id)), Delete(self.k_queue(job.host, job.id))])

    # -- agents ---------------------------------------------------------------------------
    def register_agent(self, host: str, info: dict, lease: int, exclusive: bool = False) -> bool:
        """Announce the agent; exclusive: only if no live agent of that host is announced."""
        compares = [absent(self.k_agent(host))] if exclusive else []
        return self.kv.txn(compares, [Put(self.k_agent(host), json.dumps(info, sort_keys=True), lease=lease)])

    def claim_agent(self, host: str, info: dict, instance: Instance, lease: int,
                    may_take: Callable[[Instance | None], bool]) -> tuple[bool, Instance | None]:
        """Take ``agents/<host>`` on ``lease`` for this instance, as a daemon
        claims its host id (Store.claim_host): created when absent, replaced
        only when ``may_take`` accepts its holder, in one guarded transaction.
        Returns (True, None), or (False, holder): holder None when the record
        there names no valid instance (an older agent's: left to lapse)."""
        key = self.k_agent(host)

        def attempt(read: Reading) -> tuple[list[Put | Delete], tuple[bool, Instance | None]]:
            item = read.get(key)
            if item is not None:
                try:
                    found: Instance | None = Instance.from_dict(jsondepth.loads(item.value).get("instance"))
                except (ValueError, AttributeError):
                    return [], (False, None)
                if not may_take(found):
                    return [], (False, found)
            value = json.dumps({**info, "instance": instance.to_dict()}, sort_keys=True)
            return [Put(key, value, lease=lease)], (True, None)
        return compare_and_swap(self.kv, attempt, Conflict(f"the agent key of host {host} kept changing: retry"))

    def agent_token(self, host: str) -> str | None:
        """The token of the instance holding a host's agent key, if any."""
        item = self.kv.get(self.k_agent(host))
        try:
            return Instance.from_dict(jsondepth.loads(item.value).get("instance")).token if item else None
        except (ValueError, AttributeError):
            return None

    def agents(self) -> dict[str, dict]:
        """Live agents by host; a record that is not a JSON object is left out."""
        found = {}
        for item in self.kv.get_prefix(self.k_agent()):
            try:
                info = jsondepth.loads(item.value)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(info, dict):
                found[item.key.rsplit("/", 1)[1]] = info
        return found

    def agent_alive(self, host: str) -> bool:
        return self.kv.get(self.k_agent(host)) is not None

    def lease_keeper(self, ttl: int, every: float, name: str, logger: logging.Logger | None = None) -> LeaseKeeper:
        """A lease (not granted yet) for the agent's key (jobs hold their own); see lease.py."""
        return LeaseKeeper(self.kv, ttl, every, name, logger=logger)

    def agent_hosts(self) -> list[str]:
        """The hosts whose agent is alive."""
        return [i.key.rsplit("/", 1)[1] for i in self.kv.get_prefix(self.k_agent(), keys_only=True)]

    # -- reading records again only when they changed (backup/summary.py) ----------------
    def _family(self, family: str) -> str:
        return {"jobs": self.k_job(), "catalog": self.k_catalog()}[family]

    def revisions(self, family: str) -> dict[str, int]:
        """Key -> mod revision of every record of a family ("jobs" or "catalog"),
        keys only: a reader that keeps what it read fetches only what moved."""
        return {i.key: i.mod_revision for i in self.kv.get_prefix(self._family(family), keys_only=True)}

    def fetch(self, family: str, keys: list[str] | None = None) -> list[Item]:
        """The records of a family: every one (one request), or those keys (of
        ``revisions``) that still exist."""
        if keys is None:
            return self.kv.get_prefix(self._family(family))
        return [i for i in (self.kv.get(k) for k in keys if k.startswith(self._family(family))) if i is not None]

    # -- placement ------------------------------------------------------------------------
    def host_load(self, host: str) -> int:
        """Jobs holding a slot of host or queued for it (two counts, keys only)."""
        return self.kv.count_prefix(self.k_slot(host)) + self.kv.count_prefix(self.k_queue(host))

    def queue_entries(self) -> list[tuple[str, str]]:
        """(host, job id) of every queue entry, keys only."""
        out = []
        for item in self.kv.get_prefix(f"{self.root}/queue/", keys_only=True):
            parts = item.key[len(f"{self.root}/queue/"):].split("/")
            if len(parts) == 2 and all(parts):
                out.append((parts[0], parts[1]))
        return out

    def move_job(self, job: Job, rev: int, host: str, now: float) -> bool:
        """Re-place a queued job from a host without a live agent to host, in one
        transaction: the job unchanged, its queue entry there, that host's agent
        key still absent. False when any of those changed."""
        old = job.host
        job.host = host
        job.updated = now
        job.message = f"re-placed from host {old} (its agent is gone) to {host}"
        job.history.append({"state": QUEUED, "time": now, "message": job.message})
        return self.kv.txn(
            [unchanged(self.k_job(job.id), rev), Compare(self.k_queue(old, job.id), "create", "!=", 0),
             absent(self.k_agent(old))],
            [Put(self.k_job(job.id), job.to_json()), Delete(self.k_queue(old, job.id)),
             Put(self.k_queue(host, job.id), job.id)])

    # -- schedules ------------------------------------------------------------------------
    def k_schedule(self, name: str = "") -> str:
        return f"{self.root}/schedules/{name}"

    def k_fired(self, name: str, due: float | None = None) -> str:
        return f"{self.root}/fired/{name}/" + ("" if due is None else f"{int(due):012d}")

    def create_schedule(self, schedule: Schedule) -> None:
        if not self.kv.txn([absent(self.k_schedule(schedule.name))],
                           [Put(self.k_schedule(schedule.name), schedule.to_json())]):
            raise Conflict(f"schedule {schedule.name} exists already: 'drctl schedule rm {schedule.name}' first")

    def schedule_items(self) -> list[Item]:
        """The raw schedule records: the reader checks each (schedules.check_schedule)."""
        return self.kv.get_prefix(self.k_schedule())

    def cache_schedules(self, decode: Callable[[Item], C | None]) -> Cache[C]:
        """A list-and-watch cache (cache.py) of the schedule records, each
        checked by decode (schedules.Firing.decode); not started."""
        return Cache(self.kv, self.k_schedule(), decode, "drctl:schedules")

    def get_schedule(self, name: str) -> tuple[Schedule, int]:
        item = self.kv.get(self.k_schedule(name))
        if item is None:
            raise NotFound(f"schedule {name!r} does not exist: see 'drctl schedule ls'")
        return Schedule.from_json(item.value), item.mod_revision

    def update_schedule(self, name: str, change: Callable[[Schedule], None]) -> Schedule:
        """Read, change, write back guarded by the revision read."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], Schedule]:
            item = read.get(self.k_schedule(name))
            if item is None:
                raise NotFound(f"schedule {name!r} does not exist: see 'drctl schedule ls'")
            schedule = Schedule.from_json(item.value)
            change(schedule)
            return [Put(self.k_schedule(name), schedule.to_json())], schedule
        return compare_and_swap(self.kv, attempt, Conflict(f"schedule {name} kept changing: retry"))

    def delete_schedule(self, name: str) -> None:
        """The schedule and its claim keys, at once; its jobs stay."""
        if self.kv.get(self.k_schedule(name)) is None:
            raise NotFound(f"schedule {name!r} does not exist: see 'drctl schedule ls'")
        self.kv.txn([], [Delete(self.k_schedule(name)), Delete(self.k_fired(name), prefix=True)])

    def fire(self, schedule: Schedule, rev: int, due: float | None, job: Job | None,
             dropped: list[float] | None = None) -> bool:
        """Settle a schedule's due times in ONE transaction: the record is
        unchanged since revision ``rev`` and, when a job is submitted for ``due``,
        the claim of that due time is absent; writes the changed record, the
        claim, the job and its queue entry, and deletes the claims ``dropped``.
        False when another writer won (nothing was written)."""
        compares = [unchanged(self.k_schedule(schedule.name), rev)]
        ops: list[Put | Delete] = [Put(self.k_schedule(schedule.name), schedule.to_json())]
        if job is not None and due is not None:
            compares += [absent(self.k_fired(schedule.name, due)), absent(self.k_job(job.id))]
            ops += [Put(self.k_fired(schedule.name, due), job.id), Put(self.k_job(job.id), job.to_json()),
                    Put(self.k_queue(job.host, job.id), job.id)]
        ops += [Delete(self.k_fired(schedule.name, t)) for t in dropped or []]
        return self.kv.txn(compares, ops)

    def fired(self, name: str) -> dict[float, str]:
        """The claim keys kept of a schedule: due time -> job id."""
        out = {}
        for item in self.kv.get_prefix(self.k_fired(name)):
            tail = item.key.rsplit("/", 1)[1]
            if tail.isdigit():
                out[float(tail)] = item.value.decode(errors="replace")
        return out

    # -- drills ---------------------------------------------------------------------------
    def k_drill(self, target: str = "") -> str:
        return f"{self.root}/drills/{target}"

    def put_drill_result(self, result: DrillResult) -> None:
        """The last drill of a target (a newer one replaces it)."""
        self.kv.txn([], [Put(self.k_drill(result.target), result.to_json())])

    def drill_results(self) -> list[DrillResult]:
        """The last drill of each target; a bad record is skipped, logged once and counted in ``bad_drills``."""
        out = []
        for item in self.kv.get_prefix(self.k_drill()):
            try:
                r = check_result(DrillResult.from_json(item.value))
                if item.key != self.k_drill(r.target):
                    raise BadRecord(f"filed under {item.key[:120]!r}, not under its target {r.target!r}")
                out.append(r)
            except NetpluginError as exc:          # BadRecord, or a check that failed
                self.bad_drills += 1
                if item.key not in self._bad:
                    self._bad.add(item.key)
                    log.warning("drctl record %r skipped: %s", item.key[:200], exc.message)
        return sorted(out, key=lambda r: r.target)

    # -- catalog --------------------------------------------------------------------------
    def add_backup(self, backup: Backup) -> None:
        self.kv.txn([], [Put(self.k_catalog(backup.target, backup.name), backup.to_json())])

    def backups(self, target: str | None = None) -> list[Backup]:
        """Newest first."""
        prefix = self.k_catalog(target, "") if target else self.k_catalog()
        found = self._parsed(Backup, self.kv.get_prefix(prefix))
        return sorted(found, key=lambda b: (_when(b), str(b.name)), reverse=True)

    def _parsed(self, cls: type[R], items: list[Item]) -> list[R]:
        """The records of items that parse; each bad key is logged once."""
        out = []
        for i in items:
            try:
                out.append(cls.from_json(i.value))
            except BadRecord as exc:
                if i.key not in self._bad:
                    self._bad.add(i.key)
                    log.warning("drctl record %r skipped: %s", i.key[:200], exc.message)
        return out

    def find_backup(self, name: str) -> Backup:
        for b in self.backups():
            if b.name == name:
                return b
        raise NotFound(f"backup {name!r} is not in the catalog: see 'drctl backups'")

    def remove_backup(self, backup: Backup) -> None:
        self.kv.txn([], [Delete(self.k_catalog(backup.target, backup.name))])

    def targets(self) -> list[str]:
        return sorted({i.key[len(self.k_catalog()):].split("/", 1)[0]
                       for i in self.kv.get_prefix(self.k_catalog(), keys_only=True)})

    # -- physical backups' senders (physical_sender.py) -----------------------------------
    def k_sender(self, host: str = "", job_id: str = "") -> str:
        return f"{self.root}/senders/{host}/{job_id}" if host else f"{self.root}/senders/"

    def request_sender(self, sender: Sender) -> None:
        """Ask host's agent to run the sending side of a physical backup (create-if-absent)."""
        key = self.k_sender(sender.host, sender.job)
        if not self.kv.txn([absent(key)], [Put(key, sender.to_json())]):
            raise Conflict(f"the sender of job {sender.job} was asked already")

    def senders(self, host: str) -> list[tuple[Sender, int]]:
        """host's sender records that parse and pass check_sender; a bad one is skipped (logged once)."""
        out = []
        for item in self.kv.get_prefix(self.k_sender(host, "")):
            try:
                out.append((check_sender(Sender.from_json(item.value)), item.mod_revision))
            except (BadRecord, InvalidRequest) as exc:
                if item.key not in self._bad:
                    self._bad.add(item.key)
                    log.warning("sender record %r skipped: %s", item.key[:200], exc.message)
        return out

    def get_sender(self, host: str, job_id: str) -> Sender | None:
        item = self.kv.get(self.k_sender(host, job_id))
        return check_sender(Sender.from_json(item.value)) if item else None

    def update_sender(self, host: str, job_id: str, change: Callable[[Sender], None]) -> Sender:
        """Read, change, write back guarded by the revision read."""
        def attempt(read: Reading) -> tuple[list[Put | Delete], Sender]:
            item = read.get(self.k_sender(host, job_id))
            if item is None:
                raise NotFound(f"no sender of job {job_id} on host {host}")
            sender = Sender.from_json(item.value)
            change(sender)
            return [Put(self.k_sender(host, job_id), sender.to_json())], sender
        return compare_and_swap(self.kv, attempt, Conflict(f"the sender of job {job_id} kept changing: retry"))

    def remove_sender(self, host: str, job_id: str) -> None:
        self.kv.txn([], [Delete(self.k_sender(host, job_id))])

    # -- binlog archive ---------------------------------------------------------------------
    def k_binlog(self, target: str = "", file: str = "") -> str:
        return f"{self.root}/binlogs/{target}/{file}" if target else f"{self.root}/binlogs/"

    def add_binlog(self, rec: BinlogFile) -> None:
        """Record an archived file (checked first); the same file again replaces its record."""
        check_binlog(rec)
        self.kv.txn([], [Put(self.k_binlog(rec.target, rec.file), rec.to_json())])

    def binlogs(self, target: str | None = None) -> list[BinlogFile]:
        """Archived files, by target then index; a bad record (or one filed under
        another key) is skipped, logged once and counted in ``bad_binlogs``."""
        out = []
        for item in self.kv.get_prefix(self.k_binlog(target) if target else self.k_binlog()):
            try:
                rec = check_binlog(BinlogFile.from_json(item.value))
                if item.key != self.k_binlog(rec.target, rec.file):
                    raise BadRecord(f"filed under {item.key[:120]!r}, not under {rec.target}/{rec.file}")
                out.append(rec)
            except NetpluginError as exc:
                self.bad_binlogs += 1
                if item.key not in self._bad:
                    self._bad.add(item.key)
                    log.warning("drctl record %r skipped: %s", item.key[:200], exc.message)
        return sorted(out, key=lambda r: (r.target, r.seq))

    def remove_binlog(self, rec: BinlogFile) -> None:
        self.kv.txn([], [Delete(self.k_binlog(rec.target, rec.file))])

    def remove_binlog_if_unchanged(self, rec: BinlogFile) -> bool:
        """Delete rec's record only while it still holds rec (one transaction
        guarded by the revision read); False when it changed or went."""
        key = self.k_binlog(rec.target, rec.file)
        item = self.kv.get(key)
        if item is None:
            return False
        try:
            if check_binlog(BinlogFile.from_json(item.value)) != rec:
                return False
        except NetpluginError:
            return False
        return bool(self.kv.txn([unchanged(key, item.mod_revision)], [Delete(key)]))


    # -- following changes: drctl run --wait, drctl events ------------------------------
    def watch_job(self, job_id: str, stop: threading.Event) -> Iterator[Job]:
        """The job as it is now, then after each change, fed by an etcd watch,
        until stop is set. NotFound when it does not exist or is deleted; a
        broken watch is taken again from a fresh read."""
        key = self.k_job(job_id)
        while not stop.is_set():
            items, rev = self.kv.snapshot(key)
            item = next((i for i in items if i.key == key), None)
            if item is None:
                raise NotFound(f"job {job_id} does not exist: see 'drctl ls'")
            yield from self._parsed(Job, [item])
            try:
                for ev in self.kv.watch_prefix(key, rev + 1, stop):
                    if ev.key != key:
                        continue
                    if ev.kind == "delete":
                        raise NotFound(f"job {job_id} was deleted while followed")
                    yield from self._parsed(Job, [Item(ev.key, ev.value, 0, ev.mod_revision)])
                return
            except StoreUnavailable:
                stop.wait(1.0)

    def change_families(self) -> list[Family]:
        """What ``drctl events`` follows: jobs, the catalog, schedules, agents."""
        name = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}")

        def key_id(family: str, parts: int = 1) -> Callable[[str], str | None]:
            def get(key: str) -> str | None:
                tail = key[len(f"{self.root}/{family}/"):].split("/")
                return tail[-1] if len(tail) == parts and all(name.fullmatch(t) for t in tail) else None
            return get

        def job_attrs(item: Item) -> dict | None:
            found = self._parsed(Job, [item])
            if not found:
                return None
            j = found[0]
            return {"kind": j.kind, "target": j.target, "host": j.host, "state": j.state, "message": j.message,
                    "bytes": (j.progress or {}).get("bytes")}

        def backup_attrs(item: Item) -> dict | None:
            found = self._parsed(Backup, [item])
            return {"target": found[0].target, "size": found[0].size} if found else None

        def schedule_attrs(item: Item) -> dict | None:
            try:
                sc = Schedule.from_json(item.value)
            except (BadRecord, NetpluginError):
                log.warning("drctl record %r skipped: not a schedule", item.key[:200])
                return None
            return {"target": sc.target, "cron": sc.cron, "paused": sc.paused}
        return [Family(self.k_job(), "job", key_id("jobs"), job_attrs),
                Family(self.k_catalog(), "backup", key_id("catalog", 2), backup_attrs),
                Family(self.k_schedule(), "schedule", key_id("schedules"), schedule_attrs),
                Family(self.k_agent(), "agent", key_id("agents"), lambda item: {})]

    def follow_changes(self, start_revision: int, stop: threading.Event) -> Iterator[Change]:
        """drctl's changes from start_revision (0: from now) on, until stop."""
        return follow_changes(self.kv, self.root, self.change_families(), start_revision, stop)

def _when(record: Job | Backup) -> float:
    """A record's creation time for sorting; a crafted non-number sorts first."""
    c = record.created
    return float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else 0.0


def now() -> float:
    return time.time()
