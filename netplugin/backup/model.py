"""Jobs, their states and what may follow what; backups in the catalog.

A job is one backup or one restore, run by the drctl agent of one host::

    queued -> starting -> running -> verifying -> succeeded
       |  ^      |           |           |
       |  +------+ interrupted before anything ran: queued again (MAX_START_ATTEMPTS)
       +---------+-----------+-----------+----> failed | expired | cancelled

``starting`` covers creating the container, starting it and checking every
limit; the job's own work begins only when it is ``running``. ``expired``
means a deadline passed (not started in time, or the whole run took too long);
``cancelled`` means someone asked. Terminal states never change again.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Self

from .. import jsondepth
from ..errors import Conflict, InvalidRequest

QUEUED, STARTING, RUNNING, VERIFYING = "queued", "starting", "running", "verifying"
SUCCEEDED, FAILED, EXPIRED, CANCELLED = "succeeded", "failed", "expired", "cancelled"
STATES = (QUEUED, STARTING, RUNNING, VERIFYING, SUCCEEDED, FAILED, EXPIRED, CANCELLED)
ACTIVE = frozenset({STARTING, RUNNING, VERIFYING})          # holding a slot and the target lock
TERMINAL = frozenset({SUCCEEDED, FAILED, EXPIRED, CANCELLED})
ENDINGS = frozenset({FAILED, EXPIRED, CANCELLED})

# Admissions of one job that an agent stop may interrupt while the job is
# starting before the job fails. Each such attempt ran nothing (runner.py proves
# it), so retrying is safe; the bound keeps a job whose start kills the agent
# (or a host that keeps restarting) from looping forever, and 3 rides out one
# restart plus one more while still failing within minutes of a real fault.
MAX_START_ATTEMPTS = 3

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({STARTING}) | ENDINGS,
    STARTING: frozenset({RUNNING, QUEUED}) | ENDINGS,    # queued: its start was interrupted, nothing ran
    RUNNING: frozenset({VERIFYING}) | ENDINGS,
    VERIFYING: frozenset({SUCCEEDED}) | ENDINGS,
    SUCCEEDED: frozenset(), FAILED: frozenset(), EXPIRED: frozenset(), CANCELLED: frozenset(),
}



class JobEnded(Exception):
    """Ends the job in state with message (failed, expired or cancelled)."""

    def __init__(self, state: str, message: str):
        super().__init__(message)
        self.state = state
        self.message = message


BACKUP, RESTORE = "backup", "restore"
BINLOG = "binlog"             # a binlog collector (binlog_runner.py): runs until stopped
KINDS = (BACKUP, RESTORE, BINLOG)
COMPRESSIONS = {"zstd": ".sql.zst", "gzip": ".sql.gz"}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DB_RE = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidRequest(f"{what} {value!r} must be 1-63 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
    return value


def check_database(value: object, what: str = "database") -> str:
    """A schema name we put in SQL and file names: plain identifiers only."""
    if not isinstance(value, str) or not _DB_RE.fullmatch(value):
        raise InvalidRequest(f"{what} {value!r} must be 1-64 letters, digits, '_' or '$' "
                             "(other names are not supported by drctl)")
    return value


def check_db_host(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value):
        raise InvalidRequest(f"database host {value!r} is not a host name or address")
    return value


def server_key(network: str, address: str, port: int) -> str:
    """The lock name of a database server: the network the job reaches it on, its
    address and its port (``prod@10.10.0.5:3306``). Two --target names for one
    server give one key, so they never run at once. address is an IP (in its
    canonical form) or, when the name could not be resolved, the lower-cased name."""
    try:
        addr = str(ipaddress.ip_address(address))
    except ValueError:
        addr = address.lower().rstrip(".")
    return f"{network}@{addr}:{int(port)}"


def new_job_id(now: float | None = None) -> str:
    """Sortable by submission time: 20261126-041300-a1b2c3."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass
class Limits:
    """What a job container may use. None: not limited (strict mode refuses
    nothing here: leaving a limit off is a choice; dropping one is not)."""

    cpus: float | None = None                 # nano_cpus = cpus * 1e9
    memory: int | None = None                 # bytes; swap is always equal to it (no swap)
    pids: int | None = None
    read_bps: int | None = None               # on the disk that backs the backup volume
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None
    profile: str = ""                         # netplugin bandwidth profile for the job's endpoint

    def disk_limited(self) -> bool:
        return any((self.read_bps, self.write_bps, self.read_iops, self.write_iops))

    @classmethod
    def from_dict(cls, data: dict | None) -> Limits:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})


@dataclass
class JobSpec:
    """What was asked. Never holds a secret: credentials stay in the option file."""

    network: str
    db_host: str
    option_file: str                          # host path of a MySQL option file, mounted read-only
    volume: str                               # named Docker volume holding the backups
    database: str                             # backup: the schema to dump; restore: the schema to load into
    db_port: int = 3306
    ip: str = ""                              # fixed address on the network, optional
    image: str = ""                           # tools image ("" = the configured one)
    limits: dict = field(default_factory=dict)
    start_timeout: float = 600.0              # from submission until running
    timeout: float = 6 * 3600.0               # from admission until the end
    labels: dict = field(default_factory=dict)
    compression: str = "zstd"
    keep_last: int | None = None              # retention, backups only
    max_age: float | None = None              # seconds
    keep_daily: int | None = None             # tiered retention (retention.Tiers)
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    budget: int | None = None                 # bytes this host's backups may take in the volume
    backup: str = ""                          # restore: the backup's name
    source_target: str = ""                   # restore: the target the backup was made of
    replace: bool = False                     # restore: load into a staging schema, check, swap the tables in
    into_source: bool = False                 # restore: allowed into the server the backup was taken from
    checksums: bool = True                    # per-table checksums and row counts in the manifest
    replay: dict = field(default_factory=dict)  # restore --at: archived binlogs replayed after the load (pitr.py)
    strict: bool = True
    method: str = "logical"                   # logical (mariadb-dump) or physical (mariadb-backup)
    incremental: bool = False                 # physical backup: against the target's newest physical backup
    data_volume: str = ""                     # physical: the server's data volume (backup), or the fresh one (restore)
    db_host_id: str = ""                      # physical backup: the host whose agent runs the sender
    server_image: str = ""                    # physical restore: the server started on the restored data

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class BadRecord(InvalidRequest, ValueError):
    """A record read from etcd that is not one (not JSON, not an object, fields
    missing): an InvalidRequest, and a ValueError for readers that catch those."""


class _Record:
    """A dataclass kept in etcd as compact JSON; fields it no longer has are
    ignored when an older record is read."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))  # type: ignore[call-overload]  # every _Record is a dataclass

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        """Raises BadRecord when raw is not a JSON object with every required field."""
        try:
            data = jsondepth.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRecord(f"not a {cls.__name__.lower()} record: {exc}") from None
        if not isinstance(data, dict):
            raise BadRecord(f"not a {cls.__name__.lower()} record: not a JSON object")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # every _Record is a dataclass
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise BadRecord(f"not a {cls.__name__.lower()} record: {exc}") from None


@dataclass
class Job(_Record):
    id: str
    kind: str
    target: str                               # what is backed up or restored into: the display name
    host: str                                 # whose agent runs it
    spec: dict
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    updated: float = 0.0
    start_by: float = 0.0                     # deadline for reaching running
    run_by: float = 0.0                       # deadline for the whole run, set at admission
    history: list = field(default_factory=list)        # [{"state", "time", "message"}]
    message: str = ""                         # why it ended (or what it waits for)
    slot: int | None = None
    container: str = ""
    container_name: str = ""
    endpoint: str = ""
    ip: str = ""
    exit_code: int | None = None
    oom_killed: bool | None = None
    log_tail: str = ""
    limits_applied: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)         # backup: name, file, size, sha256; restore: verification
    progress: dict = field(default_factory=dict)       # bytes so far, updated while running
    cancel_requested: str = ""                # who asked, empty if nobody
    submitted_by: str = ""
    removed: float = 0.0                      # when its container was removed (drctl rm, clean-up)
    server: str = ""                          # the lock name: server_key(); one active job per server
    place: dict = field(default_factory=dict)          # LABEL: VALUE its host was chosen by (placement.py)
    start_attempts: int = 0                   # admissions interrupted while starting (MAX_START_ATTEMPTS)

    @property
    def lock_key(self) -> str:
        """At most one active job per key: the resolved server (records made
        before the server was recorded: their target)."""
        return self.server or self.target

    @property
    def job_spec(self) -> JobSpec:
        return JobSpec.from_dict(self.spec)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def entered(self, state: str) -> float | None:
        """When the job last entered that state."""
        for h in reversed(self.history):
            if h["state"] == state:
                return h["time"]
        return None

    def interrupted_starts(self) -> int:
        """start_attempts as a count; a record with anything else counts as
        having used every attempt (a crafted value never buys a retry)."""
        n = self.start_attempts
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else MAX_START_ATTEMPTS

    def refuse(self, reason: str, now: float) -> None:
        """End a job whose record cannot be trusted: failed, whatever state it
        claims (a crafted one may claim any), unless it already ended."""
        if isinstance(self.state, str) and self.state in TERMINAL:
            return
        if not isinstance(self.history, list):
            self.history = []
        self.state, self.updated, self.message = FAILED, now, f"refused: {reason}"
        self.history.append({"state": FAILED, "time": now, "message": self.message})

    def move(self, state: str, message: str = "", now: float | None = None) -> None:
        """Change state, or raise Conflict naming the illegal transition."""
        if state not in TRANSITIONS.get(self.state, ()):
            raise Conflict(f"job {self.id} is {self.state}: it cannot become {state}")
        now = time.time() if now is None else now
        self.state = state
        self.updated = now
        if message:
            self.message = message
        self.history.append({"state": state, "time": now, "message": message})


@dataclass
class Backup(_Record):
    """A verified backup in the catalog. Only the runner writes these, and only
    after every check passed: what is in the catalog is good."""

    name: str
    target: str
    database: str
    volume: str
    path: str                                 # inside the volume: <target>/<name><ext>
    manifest_path: str
    size: int
    sha256: str
    created: float
    host: str
    job: str
    compression: str = "zstd"
    server_version: str = ""
    tables: int = 0
    rows: int = 0
    binlog: dict | None = None                # the manifest's binlog coordinates (binlog.py), None without
    method: str = "logical"                   # physical: a mariadb-backup stream (physical_chain.py)
    parent: str = ""                          # physical incremental: the backup it was taken against


def backup_name(target: str, job_id: str) -> str:
    """<target>-<job id>: unique, and sorts by time within a target."""
    return f"{target}-{job_id}"
