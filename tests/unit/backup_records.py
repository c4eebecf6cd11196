"""Writes drctl job and catalog records through the real BackupStore, the way
the agent and the runner do (submit, admit, update with legal moves,
add_backup), for the tests of the backup figures (metrics, netctl status)."""

from __future__ import annotations

import itertools

from netplugin.backup.model import (BACKUP, QUEUED, RUNNING, STARTING, SUCCEEDED, VERIFYING, Backup, Job, JobSpec,
                                    backup_name)
from netplugin.backup.store import BackupStore

_seq = itertools.count(1)

# the path a job takes to reach each state (endings are reached from running)
PATH = {QUEUED: [], STARTING: [STARTING], RUNNING: [STARTING, RUNNING], VERIFYING: [STARTING, RUNNING, VERIFYING],
        SUCCEEDED: [STARTING, RUNNING, VERIFYING, SUCCEEDED], "failed": [STARTING, RUNNING, "failed"],
        "expired": ["expired"], "cancelled": [STARTING, "cancelled"]}


def put_job(store: BackupStore, state: str, target: str = "shop-db", host: str = "h1", kind: str = BACKUP,
            size: int = 0, created: float = 1_700_000_000.0) -> Job:
    """A job submitted, admitted and moved to state; a succeeded backup records
    its size in result as the runner does. Active jobs hold their target's lock:
    give each a target of its own."""
    n = next(_seq)
    spec = JobSpec(network="prod", db_host="10.10.0.10", option_file="/etc/drctl/x.cnf", volume="backups",
                   database="shop")
    job = Job(id=f"20261126-0000{n:02d}-{n:06x}", kind=kind, target=target, host=host, spec=spec.__dict__,
              created=created, start_by=created + 600)
    store.submit(job)
    steps = PATH[state]
    t = created
    for i, step in enumerate(steps):
        t += 10
        if step == STARTING:
            found, rev = store.get(job.id)
            slot = n % 1000
            admitted = store.admit(found, rev, slot, t, 3600)
            assert admitted is not None
            continue
        last = i == len(steps) - 1

        def change(j: Job, step=step, t=t, last=last) -> None:
            if last and step == SUCCEEDED and kind == BACKUP:
                j.result = {"backup": backup_name(target, j.id), "size": size, "sha256": "0" * 64}
            elif last and step == SUCCEEDED:          # a restore records the size of the backup it loaded
                j.result = {"backup": "loaded", "database": "shop", "size": size, "tables_verified": 1}
            j.move(step, f"now {step}", now=t)
        store.update(job.id, change)
    job = store.get(job.id)[0]
    if job.terminal:
        store.release(job)          # as the agent does: the slot and the target lock are free again
    return job


def put_backup(store: BackupStore, target: str, created: float, size: int, job_id: str = "") -> Backup:
    n = next(_seq)
    job_id = job_id or f"20261126-0100{n:02d}-{n:06x}"
    name = backup_name(target, job_id)
    backup = Backup(name=name, target=target, database="shop", volume="backups", path=f"{target}/{name}.sql.zst",
                    manifest_path=f"{target}/{name}.manifest.json", size=size, sha256="0" * 64, created=created,
                    host="h1", job=job_id)
    store.add_backup(backup)
    return backup
