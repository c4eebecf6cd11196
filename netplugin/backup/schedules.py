"""Backup schedules: a cron expression and a time zone per schedule, kept in
etcd, fired by whichever agent sees a due time first.

Exactly once per due time, fleet-wide: an agent that finds a schedule due
submits its job in ONE etcd transaction that also creates the claim key
``fired/<schedule>/<due time>`` (only if absent) and advances the schedule's
``last_due`` (only if the schedule record is unchanged since it was read).
Any number of agents may race; one transaction wins, the others change
nothing and see the time settled at their next pass.

Time. etcd has no clock to ask, so due times are cron times: each agent
compares its own clock with the cron times of the expression only, never
with a time another host wrote (``last_due`` is itself a cron time, not a
clock reading). A host whose clock is off fires a schedule early or late by
its error, never twice nor never: the claim key and the guarded ``last_due``
settle each due time once. Hosts are expected to run NTP; the skew only moves
when a job starts.

Reading. An agent follows the schedule records through a list-and-watch
cache (cache.py, built by fleet.py): one read when it starts, then only the
changes, so an idle fleet's passes read nothing from etcd however many
schedules there are. Each record is checked once, when it arrives; a bad one
is skipped and counted. A cached record a pass acts on may be a moment old:
the guarded transaction (the record's revision) refuses it then, and the
next pass sees the change.

Missed times: when every agent was down past one or more due times, the
first agent back runs the newest of them once if it is at most
``missed_window`` seconds old, and records the others (and that one, when
older) as missed. A new or resumed schedule is first armed: its last due time
is set to the newest one already past, so it starts with the next.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..errors import InvalidRequest, NetpluginError, NotFound
from ..kv import Item
from . import trust
from .config import BackupConfig
from .drills import check_drill_spec
from .model import BACKUP, Job, _Record, check_name

DRILL = "drill"

log = logging.getLogger(__name__)

KEEP_MISSED = 20            # missed due times listed in the record (all are counted)
KEEP_FIRED = 10             # claim keys kept per schedule (older ones are redundant with last_due)
FIRST_READ_WAIT = 5.0       # seconds an agent's first pass waits for the schedule cache's first read
MAX_WALK = 10_000           # due times counted one by one between two passes; beyond, said as "at least"


@dataclass
class Schedule(_Record):
    name: str
    cron: str
    tz: str
    kind: str                                   # backup
    target: str
    spec: dict                                  # a checked JobSpec, as ``drctl run`` makes it
    host: str = ""                              # the agent that runs the jobs; "" when placed
    place: dict = field(default_factory=dict)   # LABEL: VALUE an eligible host must carry
    paused: bool = False
    created: float = 0.0
    created_by: str = ""
    last_due: float | None = None               # newest due time settled (run or missed); None: not armed
    last_job: str = ""                          # the job of the newest due time run
    last_fired: float | None = None             # that due time
    runs: int = 0
    missed: list = field(default_factory=list)  # newest missed due times, with why
    missed_count: int = 0
    fired: list = field(default_factory=list)   # due times whose claim key is kept


def check_cron(expr: object) -> str:
    """Five fields (minute hour day month weekday), as croniter reads them."""
    if not isinstance(expr, str) or len(expr) > 200 or len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise InvalidRequest(f"cron {str(expr)[:80]!r} is not a cron expression of five fields "
                             "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'")
    return expr


def zone(name: object) -> ZoneInfo:
    """The time zone named (IANA, e.g. Europe/Berlin or UTC)."""
    if not isinstance(name, str) or not name or len(name) > 64 or ".." in name or name.startswith("/"):
        raise InvalidRequest(f"time zone {str(name)[:80]!r} is not an IANA zone name such as Europe/Berlin or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"time zone {name[:80]!r} is not known here (an IANA name such as Europe/Berlin; "
                             "is the tzdata package installed?)") from None


def check_place(place: object) -> dict:
    if not isinstance(place, dict) or len(place) > 16:
        raise InvalidRequest("place must be at most 16 LABEL=VALUE pairs")
    for key, value in place.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequest(f"place {str(key)[:40]}={str(value)[:40]} must be text")
        check_name(key, "place label")
        check_name(value, "place value")
    return place


def _time(value: object, what: str, optional: bool = True) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{what} {str(value)[:40]!r} must be a time in epoch seconds")


def check_schedule(s: Schedule, cfg: BackupConfig) -> Schedule:
    """The one validation of a schedule record (the CLI before writing, an agent on reading)."""
    check_name(s.name, "schedule name")
    check_cron(s.cron)
    zone(s.tz)
    if s.kind not in (BACKUP, DRILL):
        raise InvalidRequest(f"schedule kind {str(s.kind)[:20]!r} must be {BACKUP} or {DRILL}")
    check_name(s.target, "target")
    if s.host:
        trust.check_host(s.host)
    check_place(s.place)
    if not s.host and not s.place:
        raise InvalidRequest("a schedule names a host or a placement (--host or --place LABEL=VALUE)")
    if not isinstance(s.paused, bool):
        raise InvalidRequest("paused must be true or false")
    for name in ("last_due", "last_fired"):
        _time(getattr(s, name), name)
    _time(s.created, "created", optional=False)
    if not isinstance(s.fired, list) or not isinstance(s.missed, list):
        raise InvalidRequest("fired and missed must be lists")
    for t in s.fired:
        _time(t, "fired due time", optional=False)
    if s.last_job:
        trust.check_id(s.last_job, "last job")
    if s.kind == DRILL:
        check_drill_spec(s.spec)
    else:
        trust.check_spec(s.kind, s.spec, cfg)
    return s


# -- due times ------------------------------------------------------------------------------

def _iter(s: Schedule, start: float) -> croniter:
    return croniter(s.cron, datetime.fromtimestamp(start, zone(s.tz)))


def due_at_or_before(s: Schedule, now: float) -> float:
    """The newest due time not after now."""
    return float(_iter(s, math.floor(now) + 1).get_prev(float))


def due_after(s: Schedule, t: float) -> float:
    """The first due time strictly after t."""
    return float(_iter(s, t).get_next(float))


@dataclass
class Plan:
    """What one pass decides for a schedule: settle ``last_due`` at ``settle``;
    run the due time ``run`` (None: none); record ``missed`` (newest last) and
    count ``missed_count`` of them (more than listed when many were missed)."""

    settle: float
    run: float | None = None
    missed: list = field(default_factory=list)
    missed_count: int = 0
    arm: bool = False


def plan(s: Schedule, now: float, window: float) -> Plan | None:
    """None when nothing is due. Pure: now is the deciding agent's clock, compared
    with cron times only."""
    newest = due_at_or_before(s, now)
    if s.last_due is None:
        return Plan(settle=newest, arm=True)
    if newest <= s.last_due:
        return None
    missed: list[float] = []
    count = 0
    t = due_after(s, s.last_due)
    while t < newest and count < MAX_WALK:
        missed.append(t)
        count += 1
        t = due_after(s, t)
    if t < newest:                              # more than MAX_WALK: listed ones are the oldest; say the newest
        missed = []
        count = MAX_WALK
    if now - newest <= window:
        return Plan(settle=newest, run=newest, missed=missed[-KEEP_MISSED:], missed_count=count)
    missed.append(newest)
    return Plan(settle=newest, missed=missed[-KEEP_MISSED:], missed_count=count + 1)


def apply(s: Schedule, p: Plan, job_id: str | None, why_missed: str = "no agent was up inside the window") -> None:
    """Write the plan's outcome into the schedule record."""
    s.last_due = p.settle
    if job_id is not None and p.run is not None:
        s.last_job, s.last_fired, s.runs = job_id, p.run, s.runs + 1
        s.fired = [*s.fired, p.run][-KEEP_FIRED:]
    if p.missed_count:
        s.missed = [*s.missed, *({"due": t, "why": why_missed} for t in p.missed)][-KEEP_MISSED:]
        s.missed_count += p.missed_count


def next_run(s: Schedule, now: float) -> float | None:
    if s.paused:
        return None
    return due_after(s, max(now, s.last_due or 0.0))


# -- the agents' pass -----------------------------------------------------------------------

class Firing:
    """One agent's pass over the schedules: arm, fire or record missed, each in
    one guarded transaction (store.fire). ``place(schedule)`` picks the host of
    a placed schedule's job, or None when no host is eligible; ``new_job`` makes
    the checked job (jobs.new_job). cached: follow the records through the
    store's list-and-watch cache (the agent's way) rather than read them all
    on every pass."""

    def __init__(self, store, cfg: BackupConfig, new_job: Callable[..., Job],
                 place: Callable[[Schedule], str | None] | None = None,
                 drill_job: Callable[[Schedule, str, float], Job] | None = None, cached: bool = False):
        self.store = store
        self.cfg = cfg
        self.new_job = new_job
        self.place = place
        self.drill_job = drill_job          # drills.drill_job for kind drill
        self.bad = 0                         # records skipped as bad, over the agent's life
        self._said: set[str] = set()
        self._waited = False
        self._next: dict[str, tuple[int, float]] = {}   # name -> (record revision, its next due time)
        self.cache = store.cache_schedules(self.decode).start() if cached else None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def decode(self, item: Item) -> tuple[Schedule, int] | None:
        """The checked schedule of a record and the record's revision; None (counted,
        said once per key) when it is bad."""
        try:
            s = check_schedule(Schedule.from_json(item.value), self.cfg)
            if item.key != self.store.k_schedule(s.name):
                raise InvalidRequest(f"filed under {item.key[:120]!r}, not under its name {s.name!r}")
        except InvalidRequest as exc:
            self.bad += 1
            if item.key not in self._said:
                self._said.add(item.key)
                log.warning("agent: schedule record %r skipped: %s", item.key[:200], exc.message)
            return None
        return s, item.mod_revision

    def schedules(self) -> list[tuple[Schedule, int]]:
        """Every sound schedule with its record's revision: from the cache once it
        holds its first read (nothing before), else read from etcd."""
        if self.cache is not None:
            if not self._waited:                # the agent's first pass waits a little for the first read
                self._waited = True
                self.cache.wait_ready(FIRST_READ_WAIT)
            return [v for _, v in sorted(self.cache.items().items())] if self.cache.ready.is_set() else []
        return [got for item in self.store.schedule_items() if (got := self.decode(item)) is not None]

    def _not_due(self, s: Schedule, rev: int, now: float) -> bool:
        """Whether nothing is due; the next due time of each record revision is
        remembered, so an idle pass evaluates no cron expression."""
        known = self._next.get(s.name)
        if known is not None and known[0] == rev:
            return now < known[1]
        if s.last_due is None:
            return False                        # to be armed
        nxt = due_after(s, s.last_due)
        self._next[s.name] = (rev, nxt)
        return now < nxt

    def tick(self, now: float) -> list[str]:
        """One pass; returns the ids of the jobs this agent submitted."""
        submitted = []
        records = self.schedules()
        if len(self._next) > len(records):      # schedules removed: forget their due times
            names = {s.name for s, _ in records}
            self._next = {k: v for k, v in self._next.items() if k in names}
        for cached, rev in records:
            if cached.paused or self._not_due(cached, rev, now):
                continue                        # nothing due: the common case, read-only
            s = copy.deepcopy(cached)           # the cache's record stays as etcd holds it
            try:
                job = self._one(s, rev, now)
            except NetpluginError as exc:
                log.warning("agent: schedule %s: %s", s.name, exc.message)
                continue
            if job is not None:
                submitted.append(job)
        return submitted

    def _one(self, s: Schedule, rev: int, now: float) -> str | None:
        if s.paused:
            return None
        p = plan(s, now, self.cfg.missed_window)
        if p is None:
            return None
        job = None
        why = "no agent was up inside the window"
        if p.run is not None:
            host = s.host or (self.place(s) if self.place else None)
            if host is None:
                p.missed, p.missed_count = [*p.missed, p.run][-KEEP_MISSED:], p.missed_count + 1
                p.run = None
                why = f"no live agent carries {', '.join(f'{k}={v}' for k, v in sorted(s.place.items()))}"
            elif s.kind == DRILL:
                try:
                    if self.drill_job is None:
                        raise NotFound("this agent does not run drills")
                    job = self.drill_job(s, host, now)
                    job.place = dict(s.place)
                except NotFound as exc:
                    p.missed, p.missed_count = [*p.missed, p.run][-KEEP_MISSED:], p.missed_count + 1
                    p.run = None
                    why = exc.message
            else:
                job = self.new_job(BACKUP, s.target, host, dict(s.spec), now, f"schedule {s.name}")
                job.place = dict(s.place)
        before = list(s.fired)
        apply(s, p, job.id if job else None, why)
        dropped = [t for t in before if t not in s.fired]
        if not self.store.fire(s, rev, p.run if job else None, job, dropped=dropped):
            return None                      # another agent settled it first
        if job is not None:
            log.info("agent: schedule %s: due %s: job %s for host %s", s.name, p.run, job.id, job.host)
        elif p.arm:
            log.info("agent: schedule %s armed: next due %s", s.name, due_after(s, p.settle))
        return job.id if job else None
