"""Read-only figures about drctl's jobs and catalog, for ``netctl status`` and
the netplugin daemon's Prometheus metrics.

``summarize`` is a pure function over job views, catalog records and the set
of hosts with a live agent. ``read_once`` reads them in one pass (netctl);
``BackupReader`` keeps them between scrapes and reads again only what changed
(a keys-only listing with revisions, then the records whose revision moved),
so a daemon scraped every 15 s does not pull every job's history and log tail
from etcd each time. Nothing here writes to etcd.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..kv import Item
from .model import ACTIVE, BACKUP, QUEUED, STATES, SUCCEEDED, Backup, Job
from .store import BackupStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobView:
    """What the figures need of a job (not its spec, history or log tail)."""

    id: str
    kind: str
    state: str
    target: str
    host: str
    created: float
    ended: float | None
    size: int                      # bytes of the backup file, for a succeeded backup; else 0

    @classmethod
    def of(cls, job: Job) -> JobView:
        size = 0
        if job.kind == BACKUP and job.state == SUCCEEDED:
            try:
                size = int((job.result or {}).get("size") or 0)
            except (TypeError, ValueError):
                size = 0
        return cls(id=job.id, kind=job.kind, state=job.state, target=job.target, host=job.host,
                   created=job.created, ended=job.entered(job.state) if job.terminal else None, size=size)


def summarize(jobs: Iterable[JobView], backups: Iterable[Backup], agents: Iterable[str]) -> dict:
    """Jobs per state (every state, zeros included), bytes of succeeded backup
    jobs, jobs left without a live agent, and per target: the newest verified
    backup, what the catalog holds, and how the last ended backup job went."""
    alive = set(agents)
    states = {s: 0 for s in STATES}
    backup_bytes = 0
    orphaned: list[dict] = []
    last_job: dict[str, JobView] = {}
    for j in sorted(jobs, key=lambda v: (v.created, v.id)):
        states[j.state] = states.get(j.state, 0) + 1
        backup_bytes += j.size
        if (j.state in ACTIVE or j.state == QUEUED) and j.host not in alive:
            orphaned.append({"id": j.id, "state": j.state, "host": j.host, "target": j.target})
        if j.kind == BACKUP and j.ended is not None:
            last_job[j.target] = j                     # the latest created wins, as in 'drctl check'
    targets: dict[str, dict] = {}
    for b in backups:
        t = targets.setdefault(b.target, {"target": b.target, "last_success": None, "newest": None,
                                          "backups": 0, "bytes": 0, "last_job": None})
        t["backups"] += 1
        t["bytes"] += b.size
        if t["last_success"] is None or b.created > t["last_success"]:
            t["last_success"], t["newest"] = b.created, b.name
    for target, j in last_job.items():
        t = targets.setdefault(target, {"target": target, "last_success": None, "newest": None,
                                        "backups": 0, "bytes": 0, "last_job": None})
        t["last_job"] = {"id": j.id, "state": j.state, "ended": j.ended, "succeeded": j.state == SUCCEEDED}
    return {"total": sum(states.values()), "states": states, "backup_bytes": backup_bytes,
            "agents": sorted(alive), "orphaned": orphaned,
            "targets": [targets[t] for t in sorted(targets)]}


def _parse_job(item: Item) -> JobView:
    return JobView.of(Job.from_json(item.value))


def _parse_backup(item: Item) -> Backup:
    return Backup.from_json(item.value)


def read_once(store: BackupStore) -> dict:
    """One full read (for netctl status): jobs, catalog, live agents."""
    jobs = [JobView.of(j) for j in store.list_jobs()]
    return summarize(jobs, store.backups(), store.agents())


class BackupReader:
    """The same figures, kept between reads. Only records whose mod revision
    changed are read again; when more than ``full_read`` changed (the first
    read, say) the whole prefix is read in one request instead.

    ``backup_bytes_total`` never goes down in one process: the bytes of job
    records that the agent's clean-up removes (``keep_history``) are kept, so
    Prometheus never sees a counter reset that did not happen."""

    def __init__(self, store: BackupStore, full_read: int = 64):
        self.store = store
        self.full_read = full_read
        self._jobs: dict[str, tuple[int, JobView | None]] = {}
        self._catalog: dict[str, tuple[int, Backup | None]] = {}
        self._gone_bytes = 0
        self._lock = threading.Lock()
        self.reads = 0                     # records fetched with their values, for tests and debugging

    def _sync(self, family: str, cache: dict, parse: Callable[[Item], object]) -> list:
        """Bring cache (key -> (revision, parsed)) up to the family's records;
        return the values of keys that disappeared."""
        current = self.store.revisions(family)
        gone = [cache.pop(k)[1] for k in [k for k in cache if k not in current]]
        stale = [k for k, rev in current.items() if k not in cache or cache[k][0] != rev]
        fetched = self.store.fetch(family, None if len(stale) > self.full_read else stale)
        self.reads += len(fetched)
        for item in fetched:
            if item.key in cache and cache[item.key][0] == item.mod_revision:
                continue
            try:
                cache[item.key] = (item.mod_revision, parse(item))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("backup figures: cannot read %s: %s", item.key, exc)
                cache[item.key] = (item.mod_revision, None)   # not read again until it changes
        return [v for v in gone if v is not None]

    def read(self) -> dict:
        """Raises StoreUnavailable (a NetpluginError) when etcd does not answer;
        what was read before is kept for the next call."""
        with self._lock:
            for gone in self._sync("jobs", self._jobs, _parse_job):
                self._gone_bytes += gone.size
            self._sync("catalog", self._catalog, _parse_backup)
            agents = self.store.agent_hosts()
            info = summarize([v for _, v in self._jobs.values() if v is not None],
                             [v for _, v in self._catalog.values() if v is not None], agents)
            info["backup_bytes_total"] = self._gone_bytes + info["backup_bytes"]
            return info
