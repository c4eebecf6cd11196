"""Submitting and following jobs, the domain side of ``drctl`` (cli.py only
parses and prints): what an operator asked for becomes a checked JobSpec and
a queued Job; cancel requests, the catalog pick of a restore, and the health
of each target for ``drctl check``.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from ..errors import InvalidRequest, NetpluginError, NotFound
from . import trust
from .config import BackupConfig
from .drills import check_drills
from .model import (
    BACKUP,
    CANCELLED,
    QUEUED,
    SUCCEEDED,
    Backup,
    Job,
    check_database,
    check_db_host,
    check_name,
    new_job_id,
    server_key,
)
from .placement import Placer
from .resources import make_limits, parse_size
from .store import BackupStore

_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def parse_duration(text: str, what: str = "duration") -> float:
    """'90' / '90s' / '10m' / '6h' / '7d' / '2w' -> seconds."""
    m = _DURATION_RE.fullmatch(str(text))
    if m is None:
        raise InvalidRequest(f"{what} {text!r} is not a duration such as 90s, 10m, 6h or 7d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[(m.group(2) or "s").lower()]


def parse_time(text: str) -> float:
    """An ISO time (2026-11-26T04:00, UTC unless an offset is given) or epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"time {text!r} is not ISO 8601 (2026-11-26T04:00) or epoch seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)  # noqa: UP017 - the name datetime.timezone.utc says what it is
    return t.timestamp()


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def fmt_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def who() -> str:
    """user@host, for submitted_by and cancel requests."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass
class Request:
    """What ``drctl run`` or ``drctl restore`` was asked (their options, by name)."""

    network: str
    db_host: str
    option_file: str
    db_port: int = 3306
    ip: str | None = None
    host: str | None = None
    target: str | None = None
    label: list[str] = field(default_factory=list)
    image: str | None = None
    cpus: str | None = None
    memory: str | None = None
    pids: str | None = None
    read_bps: str | None = None
    write_bps: str | None = None
    read_iops: str | None = None
    write_iops: str | None = None
    profile: str | None = None
    no_strict: bool = False
    start_timeout: str | None = None
    timeout: str | None = None
    no_checksums: bool = False
    place: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, options: object) -> Request:
        """From parsed options (an argparse Namespace): the attributes named as the fields."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)})


def _labels(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"label {item!r} must be KEY=VALUE")
        out[key] = value
    return out


def common_spec(req: Request, cfg: BackupConfig, this_host: str,
                profiles: Callable[[], dict]) -> tuple[dict, str, str]:
    """The spec fields both kinds share, checked, with drctl's settings as the
    defaults; and the job's target and host. profiles: netplugin's, by name."""
    check_db_host(req.db_host)
    if not 1 <= req.db_port <= 65535:
        raise InvalidRequest(f"db-port {req.db_port} is not a port")
    if req.ip:
        try:
            ipaddress.IPv4Address(req.ip)
        except ValueError:
            raise InvalidRequest(f"ip {req.ip!r} is not an IPv4 address") from None
    if not os.path.isabs(req.option_file):
        raise InvalidRequest(f"option file {req.option_file!r} must be an absolute path (it is mounted)")
    if req.place and req.host:
        raise InvalidRequest("give --host or --place, not both: --place picks the host")
    host = "" if req.place else (req.host or this_host)
    if host == this_host:
        trust.option_file(req.option_file, cfg)          # in option_dir, also once links are followed
        if not os.path.isfile(req.option_file):
            raise InvalidRequest(f"option file {req.option_file} does not exist")
        if os.stat(req.option_file).st_mode & 0o077:
            raise InvalidRequest(f"option file {req.option_file} is readable by others: it holds a password; "
                                 f"chmod 600 {req.option_file}")
    limits = make_limits(**{name: getattr(req, name) if getattr(req, name) is not None else getattr(cfg, name)
                            for name in ("cpus", "memory", "pids", "read_bps", "write_bps", "read_iops",
                                         "write_iops", "profile")})
    if limits.profile and limits.profile not in profiles():
        raise NotFound(f"profile {limits.profile!r} does not exist: see 'netctl profile ls'")
    spec = {
        "network": req.network, "ip": req.ip or "", "db_host": req.db_host, "db_port": req.db_port,
        "option_file": req.option_file, "image": req.image or "", "limits": asdict(limits),
        "start_timeout": parse_duration(req.start_timeout, "start-timeout") if req.start_timeout else cfg.start_timeout,
        "timeout": parse_duration(req.timeout, "timeout") if req.timeout else cfg.timeout,
        "labels": _labels(req.label), "checksums": not req.no_checksums, "strict": cfg.strict and not req.no_strict,
    }
    target = req.target or re.sub(r"[^A-Za-z0-9_.-]", "-", f"{req.db_host}-{req.db_port}")
    check_name(target, "target")
    return spec, target, host


def backup_fields(database: str, volume: str, compression: str, keep_last: int | None,
                  max_age: str | None, keep_daily: int | None = None, keep_weekly: int | None = None,
                  keep_monthly: int | None = None, budget: str | None = None) -> dict:
    """The spec fields of a backup job, checked."""
    check_database(database)
    if not _VOLUME_RE.fullmatch(volume):
        raise InvalidRequest(f"volume {volume!r} is not a Docker volume name")
    if keep_last is not None and keep_last < 1:
        raise InvalidRequest("keep-last must be at least 1: the last good backup is always kept")
    for name, value in (("keep-daily", keep_daily), ("keep-weekly", keep_weekly), ("keep-monthly", keep_monthly)):
        if value is not None and value < 0:
            raise InvalidRequest(f"{name} must be 0 or more")
    return {"database": database, "volume": volume, "compression": compression, "keep_last": keep_last,
            "max_age": parse_duration(max_age, "max-age") if max_age else None, "keep_daily": keep_daily,
            "keep_weekly": keep_weekly, "keep_monthly": keep_monthly,
            "budget": parse_size(budget, "budget") if budget else None}


def pick_backup(store: BackupStore, name: str | None, latest: str | None, at: float | None) -> Backup:
    if name:
        return store.find_backup(name)
    found = [b for b in store.backups(latest) if at is None or b.created <= at]
    if not found:
        when = f" made at or before {fmt_time(at)}" if at is not None else ""
        raise NotFound(f"no good backup of {latest}{when}: see 'drctl backups {latest}'")
    return found[0]


def restore_fields(backup: Backup, database: str | None, volume: str | None, replace: bool,
                   into_source: bool = False) -> dict:
    """The spec fields of a restore of backup, checked."""
    return {"backup": backup.name, "source_target": backup.target, "volume": volume or backup.volume,
            "database": check_database(database or backup.database), "compression": backup.compression,
            "replace": bool(replace), "into_source": bool(into_source)}


def check_not_source(store: BackupStore, spec: dict) -> None:
    """Refuse, before queueing, a restore into the server its backup was read
    from unless ``into_source``: known here while the backup job's record is
    kept; the agent checks the backup's manifest in any case."""
    if spec.get("into_source"):
        return
    try:
        found = store.get(store.find_backup(spec["backup"]).job)
    except NetpluginError:
        return
    server = resolve_server(spec["network"], spec["db_host"], spec["db_port"])
    if found is not None and found[0].server == server:
        raise InvalidRequest(f"backup {spec['backup']} was taken from this very server ({server}): restoring "
                             "into it needs --into-source (with --replace, its tables are swapped only once the "
                             "backup is loaded and checked beside them)")


def resolve_server(network: str, db_host: str, db_port: int, resolve=socket.getaddrinfo) -> str:
    """The lock name of the server a job talks to (model.server_key): a host name is
    resolved to its IPv4 address when this host can; else the name itself is used."""
    address = db_host
    try:
        ipaddress.ip_address(db_host)
    except ValueError:
        try:
            found = resolve(db_host, db_port, socket.AF_INET, socket.SOCK_STREAM)
            if found:
                address = found[0][4][0]
        except (OSError, UnicodeError):
            pass
    return server_key(network, address, db_port)


def submit(store: BackupStore, kind: str, target: str, host: str, spec: dict, cfg: BackupConfig,
           place: dict | None = None) -> Job:
    """Queue a job for host's agent, checked as that agent will check it
    (trust.check_job); with place, for the eligible host placement picks."""
    now = time.time()
    job = new_job(cfg, kind, target, host or "placing", spec, now, who())
    if place:
        job.place = dict(place)
        job.host = Placer(store).pick_or_fail(job.place, job.id)
        trust.check_job(job, cfg)
    store.submit(job)
    return job


def new_job(cfg: BackupConfig, kind: str, target: str, host: str, spec: dict, now: float, by: str) -> Job:
    """A queued job, checked as its agent will check it (trust.check_job); not yet written."""
    job = Job(id=new_job_id(now), kind=kind, target=target, host=host, spec=spec, created=now, updated=now,
              server=resolve_server(spec["network"], spec["db_host"], spec["db_port"]),
              start_by=now + spec["start_timeout"],
              history=[{"state": QUEUED, "time": now, "message": f"submitted by {by}"}],
              submitted_by=by)
    trust.check_job(job, cfg)
    return job


def follow(store: BackupStore, job_id: str, seen: Callable[[dict], None] | None = None, poll: float = 0.5) -> Job:
    """Wait for the job's end; seen(entry) for each history entry as it appears."""
    count = 0
    while True:
        found = store.get(job_id)
        if found is None:
            raise NotFound(f"job {job_id} does not exist")
        job = found[0]
        for h in job.history[count:]:
            if seen is not None:
                seen(h)
        count = len(job.history)
        if job.terminal:
            return job
        time.sleep(poll)


def request_cancel(store: BackupStore, job_id: str, by: str) -> Job:
    """Mark the job for cancelling (its agent ends it); a queued job ends at once."""
    def change(job: Job):
        if job.terminal:
            return
        job.cancel_requested = by
        if job.state == QUEUED:
            job.move(CANCELLED, f"cancelled by {by} while queued")
    return store.update(job_id, change)


def check_targets(store: BackupStore, targets: list[str], max_age: float, now: float,
                  drill_max_age: float | None = None) -> list[dict]:
    """Per target: its newest good backup, and what is wrong (no good backup,
    the newest too old, the last backup job not succeeded; with drill_max_age,
    its last restore drill failed or older than that); every target with a
    backup, a backup job or a drill when targets is empty."""
    jobs = store.list_jobs()
    drilled = {r.target: r for r in store.drill_results()} if drill_max_age is not None else {}
    targets = targets or sorted(set(store.targets()) | {j.target for j in jobs if j.kind == BACKUP} | set(drilled))
    rows = []
    for t in targets:
        newest = store.backups(t)[:1]
        last_job = next((j for j in reversed(jobs) if j.target == t and j.kind == BACKUP and j.terminal), None)
        problems = []
        if not newest:
            problems.append("no good backup")
        elif now - newest[0].created > max_age:
            problems.append(f"newest good backup is {fmt_age(now - newest[0].created)} old")
        if last_job and last_job.state != SUCCEEDED:
            problems.append(f"last backup job {last_job.id} {last_job.state}")
        drill = check_drills([drilled[t]], [t], drill_max_age or 0.0, now)[0] if t in drilled else None
        if drill:
            problems += drill["problems"]
        rows.append({"target": t, "ok": not problems, "newest": newest[0].name if newest else None,
                     "age": now - newest[0].created if newest else None, "problems": problems,
                     "drill": drill["drill"] if drill else None})
    return rows
