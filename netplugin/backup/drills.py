"""Restore drills: on a schedule, prove that a target's latest good backup restores.

A drill is a schedule of kind ``drill`` (schedules.py): at each due time the
firing agent queues a restore job of the target's newest good backup, marked
with the label ``drctl.drill`` and aimed at a scratch server that does not
exist yet (``db_host`` drctl-drill-<job id>, so its server lock is its own).
The agent that admits it runs it through ``Drilling``:

1. start a scratch MariaDB server container on the drill's network (the
   ``drill_image`` setting, built locally by scripts/make-db-images.sh, never
   pulled), with a one-time user made by its init file, and wait until its
   log says it is ready for connections;
2. point the job at the server's address and a one-time option file, and run
   it as any restore: the runner loads the dump and compares every table's
   checksum and row count with the backup's manifest;
3. record the result per target (``backup/drills/<target>``): ok or why not,
   the RTO (seconds from the start of the load to the verified end), the RPO
   (the backup's age when the drill began: the drilling agent's clock against
   the backup record's time, so it carries the two hosts' clock skew);
4. remove the scratch server, its init file and the option file, whatever
   happened.

An agent killed mid-drill leaves its scratch server behind. When this host's
agent comes back it adopts the drill's job (``Drilling.adopt``): a drill
whose restore was under way is carried to its end by the runner, recorded
(its RTO then counted from the job's running time on this host's clock) and
its server removed; one still setting up its server is ended as failed, in
one guarded update of its record, its server removed and nothing recorded
(the previous result stands until the next due time). ``sweep_scratch``
removes, at the agent's start and every clean-up pass, any scratch server of
this host (found by its labels) whose drill job has ended or is gone.

``drctl check`` fails a target whose last drill failed or is older than its
limit; the metrics expose the last drill's result, RTO and RPO per target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass

from ..errors import InvalidRequest, NetpluginError, NotFound
from . import trust
from .config import BackupConfig
from .containers import Containers, is_not_found
from .model import RESTORE, STARTING, SUCCEEDED, Job, _Record, check_name, server_key

log = logging.getLogger(__name__)

DRILL_LABEL = "drctl.drill"
JOB_LABEL = "drctl.job"            # on a scratch server: the drill job it serves
READY = "ready for connections"


@dataclass
class DrillResult(_Record):
    target: str
    drill: str
    job: str
    backup: str
    ok: bool
    message: str
    rto: float | None          # seconds: load and verification
    rpo: float | None          # seconds: the restored data's age when the drill began
    finished: float
    host: str


def check_result(r: DrillResult) -> DrillResult:
    check_name(r.target, "target")
    check_name(r.drill, "drill")
    if not isinstance(r.ok, bool):
        raise InvalidRequest("drill result ok must be true or false")
    for name in ("rto", "rpo"):
        v = getattr(r, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise InvalidRequest(f"drill result {name} must be seconds")
    if isinstance(r.finished, bool) or not isinstance(r.finished, (int, float)):
        raise InvalidRequest("drill result finished must be a time")
    return r


def drill_spec(network: str, target: str) -> dict:
    """What a drill schedule keeps: the network of its scratch servers and the target drilled."""
    if not isinstance(network, str) or not trust.VOLUME_RE.fullmatch(network):
        raise InvalidRequest(f"network {str(network)[:80]!r} is not a network name")
    check_name(target, "target")
    return {"network": network, "source_target": target}


def check_drill_spec(spec: object) -> dict:
    if not isinstance(spec, dict) or set(spec) != {"network", "source_target"}:
        raise InvalidRequest("a drill's spec holds its network and source_target only")
    return drill_spec(spec["network"], spec["source_target"])


def drill_job(store, cfg: BackupConfig, new_job, name: str, spec: dict, host: str, now: float) -> Job:
    """The restore job of one drill run: the newest good backup of its target,
    into the scratch server this job will start. Raises NotFound when the
    target has no good backup."""
    target = spec["source_target"]
    good = trust.valid_backups(store.backups(target), log)
    if not good:
        raise NotFound(f"drill {name}: no good backup of {target} to restore")
    b = good[0]
    options = os.path.normpath(cfg.option_dir)
    job_spec = {"network": spec["network"], "db_host": "drctl-drill-pending", "db_port": 3306,
                "option_file": os.path.join(options, "drill-pending.cnf"),
                "volume": b.volume, "database": b.database, "compression": b.compression, "backup": b.name,
                "source_target": b.target, "labels": {DRILL_LABEL: name}, "start_timeout": cfg.start_timeout,
                "timeout": cfg.timeout, "limits": {}, "checksums": True, "strict": cfg.strict}
    job = new_job(RESTORE, f"drill-{name}"[:63], host, job_spec, now, f"drill {name}")
    job.spec.update(db_host=f"drctl-drill-{job.id}", option_file=os.path.join(options, f"drill-{job.id}.cnf"))
    job.server = server_key(spec["network"], job.spec["db_host"], 3306)     # the drill's own lock
    trust.check_job(job, cfg)
    return job


def is_drill(job: Job) -> bool:
    return job.kind == RESTORE and isinstance(job.spec, dict) and \
        isinstance(job.spec.get("labels"), dict) and DRILL_LABEL in job.spec["labels"]


class Drilling:
    """The agent's runner: a drill job gets its scratch server around the
    restore (``inner``, the Runner); any other job goes to ``inner`` as is."""

    def __init__(self, inner, store, docker, cfg: BackupConfig, host: str, clock=time.time,
                 sleep=time.sleep, ready_timeout: float = 120.0):
        self.inner = inner
        self.store = store
        self.client = docker
        self.containers = Containers(docker)
        self.cfg = cfg
        self.host = host
        self.clock = clock
        self.sleep = sleep
        self.ready_timeout = ready_timeout

    def adopt(self, job: Job) -> Job:
        """Carry on a job a killed agent of this host left. A drill whose restore
        was under way ends through the runner and is recorded; one still setting
        up its scratch server is failed. The server goes either way."""
        if not is_drill(job):
            return self.inner.adopt(job)
        name = job.spec["labels"][DRILL_LABEL]
        if job.state == STARTING:
            try:
                self._end(job, "the agent stopped while the drill set up its scratch server; "
                               "the next due time drills again")
            finally:
                self._remove_scratch(job)
            log.info("drill %s: job %s ended: its agent stopped before the restore began", name, job.id)
            found = self.store.get(job.id)
            return found[0] if found else job
        try:
            final = self.inner.adopt(job)
        finally:
            self._remove_scratch(job)
        ok = final.state == SUCCEEDED
        loaded, ended = final.entered("running"), final.entered(final.state)
        rto = ended - loaded if ok and loaded is not None and ended is not None else None
        began = job.entered(STARTING)
        try:
            backup = self.store.find_backup(job.spec["backup"])
        except NetpluginError:
            backup = None
        message = ("restored and verified" if ok else f"restore {final.state}: {final.message}") + \
            " (adopted after an agent restart)"
        self._record(job, name, ok, message, rto,
                     began - backup.created if backup is not None and began is not None else None)
        return final

    def _remove_scratch(self, job: Job) -> None:
        """The drill's scratch server (only a container labelled as this job's) and its one-time files."""
        remove_scratch(self.client, job.id)
        for path in self._paths(job).values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _record(self, job: Job, name: str, ok: bool, message: str, rto: float | None, rpo: float | None) -> None:
        result = DrillResult(target=job.spec["source_target"], drill=name, job=job.id, backup=job.spec["backup"],
                             ok=ok, message=message[:500], rto=rto if ok else None, rpo=rpo,
                             finished=self.clock(), host=self.host)
        try:
            self.store.put_drill_result(result)
        except NetpluginError as exc:
            log.warning("drill %s: result not recorded: %s", name, exc.message)
        log.info("drill %s of %s: %s (RTO %s s, RPO %s s)", name, result.target, message,
                 f"{rto:.1f}" if rto is not None else "-", f"{rpo:.0f}" if rpo is not None else "-")

    def run(self, job: Job) -> Job:
        if not is_drill(job):
            return self.inner.run(job)
        name = job.spec["labels"][DRILL_LABEL]
        began = self.clock()
        paths = self._paths(job)
        server = None
        final = job
        rto: float | None = None
        try:
            backup = self.store.find_backup(job.spec["backup"])
            password = secrets.token_hex(16)
            self._write(paths["init"], f"CREATE USER 'drill'@'%' IDENTIFIED BY '{password}';\n"
                                       "GRANT ALL PRIVILEGES ON *.* TO 'drill'@'%';\n")
            self._write(paths["cnf"], f"[client]\nuser=drill\npassword={password}\n")
            server = self._create_server(job, paths["init"])
            ip = self._ready(job, server)
            self.store.update(job.id, lambda j: j.spec.update(db_host=ip))
            found = self.store.get(job.id)
            if found is None:
                raise NotFound(f"job {job.id} went away")
            loading = time.monotonic()
            final = self.inner.run(found[0])
            rto = time.monotonic() - loading
            ok = final.state == SUCCEEDED
            message = "restored and verified" if ok else f"restore {final.state}: {final.message}"
        except NetpluginError as exc:
            ok, message = False, exc.message
            backup = None
            self._end(job, message)
        except Exception as exc:  # noqa: BLE001 - Docker's own errors: the drill fails, saying why
            ok, message = False, f"{type(exc).__name__}: {exc}"
            backup = None
            self._end(job, message)
        finally:
            if server is not None:
                with contextlib.suppress(Exception):
                    self.client.remove_container(server, v=True, force=True)
            for path in paths.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._record(job, name, ok, message, rto, began - backup.created if backup is not None else None)
        found = self.store.get(job.id)
        return found[0] if found else final

    def _paths(self, job: Job) -> dict[str, str]:
        trust.check_id(job.id)
        return {"cnf": os.path.join(os.path.normpath(self.cfg.option_dir), f"drill-{job.id}.cnf"),
                "init": os.path.join(os.path.normpath(self.cfg.work_dir), f"drill-{job.id}.sql")}

    @staticmethod
    def _write(path: str, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def _create_server(self, job: Job, init: str) -> str:
        """The scratch server's container, not started yet."""
        network = job.spec["network"]
        d = self.client
        host_config = d.create_host_config(
            network_mode=network, auto_remove=False, restart_policy={"Name": "no"},
            mounts=[{"Type": "bind", "Source": init, "Target": "/run/secrets/db-init.sql", "ReadOnly": True}],
            mem_limit=self.cfg.drill_memory)
        resp = d.create_container(self.cfg.drill_image, name=f"drctl-drill-{job.id}", host_config=host_config,
                                  labels={DRILL_LABEL: job.spec["labels"][DRILL_LABEL], JOB_LABEL: job.id},
                                  use_config_proxy=False)
        return resp["Id"]

    def _ready(self, job: Job, cid: str) -> str:
        """Start the scratch server and wait until it says it is ready; returns its address."""
        network = job.spec["network"]
        self.containers.start(cid)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            info = self.containers.inspect(cid)
            if not (info.get("State") or {}).get("Running"):
                tail = " | ".join(self.containers.log_tail(cid, 5))
                raise InvalidRequest(f"the scratch server exited before it was ready: {tail[:300]}")
            ip = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(network, {}).get("IPAddress")
            if ip and any(READY in line for line in self.containers.log_tail(cid, 50)):
                return str(ip)
            self.sleep(0.5)
        raise InvalidRequest(f"the scratch server was not ready within {self.ready_timeout:.0f} s")

    def _end(self, job: Job, message: str) -> None:
        """A drill that failed before its restore ran: its job fails with the reason."""
        def change(j: Job) -> None:
            if not j.terminal:
                j.move("failed", f"drill: {message}"[:500], now=self.clock())
        with contextlib.suppress(NetpluginError):
            self.store.update(job.id, change)


def remove_scratch(client, job_id: str) -> bool:
    """Remove the scratch server of drill job job_id, if it exists and carries
    that job's labels (a container of the same name but other labels is left
    alone). True when one was removed."""
    try:
        info = client.inspect_container(f"drctl-drill-{job_id}")
    except Exception as exc:  # noqa: BLE001 - Docker's own errors: "not found" is the common answer
        if not is_not_found(exc):
            log.warning("drill job %s: cannot look for its scratch server: %s", job_id, exc)
        return False
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(JOB_LABEL) != job_id or DRILL_LABEL not in labels:
        log.warning("container drctl-drill-%s is not that drill job's scratch server: left alone", job_id)
        return False
    try:
        client.remove_container(info.get("Id") or f"drctl-drill-{job_id}", v=True, force=True)
    except Exception as exc:  # noqa: BLE001 - retried at the next clean-up pass
        if not is_not_found(exc):
            log.warning("drill job %s: cannot remove its scratch server: %s", job_id, exc)
        return False
    return True


def sweep_scratch(store, client, cfg: BackupConfig) -> list[str]:
    """Remove this host's scratch servers (found by their labels: a drill's
    restore job container carries the drill's label too, never the job label)
    whose drill job has ended or is gone, with their one-time files; returns
    those jobs' ids. A server whose job is still active is its agent's (or
    adoption's)."""
    removed: list[str] = []
    try:
        found = client.containers(all=True, filters={"label": [DRILL_LABEL, JOB_LABEL]})
    except Exception as exc:  # noqa: BLE001 - Docker's own errors: the next pass tries again
        log.warning("drill clean-up: cannot list scratch servers: %s", exc)
        return removed
    for c in found:
        job_id = str(((c.get("Labels") or {}).get(JOB_LABEL)) or "")
        try:
            trust.check_id(job_id, "drill job")
            record = store.get(job_id)
        except InvalidRequest as exc:
            log.warning("drill clean-up: container %s: %s: left alone", str(c.get("Id"))[:12], exc.message)
            continue
        if record is not None and not record[0].terminal:
            continue
        if remove_scratch(client, job_id):
            removed.append(job_id)
            log.info("drill clean-up: removed the scratch server of drill job %s (%s)", job_id,
                     "ended" if record is not None else "its record is gone")
        for path in (os.path.join(os.path.normpath(cfg.option_dir), f"drill-{job_id}.cnf"),
                     os.path.join(os.path.normpath(cfg.work_dir), f"drill-{job_id}.sql")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return removed


def check_drills(results: list[DrillResult], targets: list[str], max_age: float, now: float) -> list[dict]:
    """Per drilled target (or those asked): problems when its last drill failed or is too old."""
    by_target = {r.target: r for r in results}
    rows = []
    for t in targets or sorted(by_target):
        r = by_target.get(t)
        problems = []
        if r is None:
            if targets:
                problems.append("never drilled")
        elif not r.ok:
            problems.append(f"last drill {r.drill} failed: {r.message}")
        elif now - r.finished > max_age:
            problems.append(f"last drill is {(now - r.finished) / 86400:.1f} days old")
        rows.append({"target": t, "ok": not problems, "problems": problems,
                     "drill": None if r is None else {"ok": r.ok, "rto": r.rto, "rpo": r.rpo,
                                                      "finished": r.finished, "job": r.job}})
    return rows
