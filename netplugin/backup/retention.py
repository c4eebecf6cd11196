"""Which backups to delete, and deleting them.

Rules, per target, over the catalog (which holds verified backups only):

* a backup goes when it is beyond the newest ``keep_last``, or older than ``max_age``;
* the newest backup is never deleted, whatever its age: the last good backup
  survives even when backups stopped for longer than ``max_age``;
* nothing is deleted unless the newest backup's files are present and its
  dump re-hashes to the catalog's sha256 (not only the right size): retention
  must never leave a damaged backup as the only one;
* an agent prunes only the backups its own host wrote (``Backup.host``): another
  host's records are never dropped, nor its files in a same-named volume;
* every catalog record is checked (trust.check_backup) and every file removed
  is resolved inside its volume's folder; a bad record is skipped and logged;
* the runner prunes only after a verified success (a failed job never prunes);
* a backup that an active restore job is reading is never deleted;
* a backup that a kept physical incremental's chain needs (its base, and so
  on to the full one) is kept, whatever rule would delete it;
* then the binlog archive files that no kept backup needs for a point-in-time
  restore go too (binlog_prune.py), reported as ``binlog <file>``.

Tiered (grandfather-father-son) retention, as restic's ``forget``: with any of
``keep_daily``, ``keep_weekly``, ``keep_monthly``, a backup is kept when it is
the newest, one of the newest ``keep_last``, or the newest of one of the
newest N days, ISO weeks or months (UTC) that have a backup; every other goes.
``max_age`` then bounds what those keep (the newest is kept still). A
per-volume byte ``budget`` last deletes this target's oldest kept backups
(never the newest) while the volume's backups of this host exceed it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..errors import Conflict, InvalidRequest, NetpluginError
from . import binlog_prune, ondisk, physical_chain, trust
from .model import RESTORE, Backup

log = logging.getLogger(__name__)


@dataclass
class Plan:
    keep: list[Backup]
    delete: list[Backup]
    reasons: dict[str, str] = field(default_factory=dict)      # why each goes, or is kept


@dataclass
class Report:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class Tiers:
    """Grandfather-father-son counts: the newest backup of each of the newest N days, weeks, months."""

    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None

    def __bool__(self) -> bool:
        return any((self.daily, self.weekly, self.monthly))


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)  # noqa: UP017 - the name datetime.timezone.utc says what it is


BUCKETS: dict[str, Callable[[float], tuple]] = {
    "daily": lambda t: _utc(t).timetuple()[:3],
    "weekly": lambda t: tuple(_utc(t).isocalendar()[:2]),
    "monthly": lambda t: _utc(t).timetuple()[:2],
}


def tiered(ordered: list[Backup], keep_last: int | None, tiers: Tiers) -> dict[str, str]:
    """Name -> why kept, over backups newest first (restic's rule: per tier, the
    newest backup of each distinct bucket, for the newest N buckets)."""
    kept = {ordered[0].name: "the newest"}
    for b in ordered[:keep_last or 0]:
        kept.setdefault(b.name, f"one of the newest {keep_last}")
    for tier, count in (("daily", tiers.daily), ("weekly", tiers.weekly), ("monthly", tiers.monthly)):
        if not count:
            continue
        seen: list[tuple] = []
        for b in ordered:
            key = BUCKETS[tier](b.created)
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(key)
            kept.setdefault(b.name, f"{tier} {len(seen)} of {count}")
    return kept


def plan(backups: list[Backup], keep_last: int | None, max_age: float | None, now: float,
         tiers: Tiers | None = None) -> Plan:
    if keep_last is not None and keep_last < 1:
        raise InvalidRequest("keep-last must be at least 1: the last good backup is always kept")
    if max_age is not None and max_age < 0:
        raise InvalidRequest("max-age cannot be negative")
    t = tiers or Tiers()
    for name, value in (("keep-daily", t.daily), ("keep-weekly", t.weekly), ("keep-monthly", t.monthly)):
        if value is not None and value < 0:
            raise InvalidRequest(f"{name} cannot be negative")
    ordered = sorted(backups, key=lambda b: (b.created, b.name), reverse=True)
    if tiers and ordered:
        return keep_chains(_plan_tiered(ordered, keep_last, max_age, now, tiers), backups)
    keep, delete, reasons = [], [], {}
    for i, b in enumerate(ordered):
        if i == 0:
            keep.append(b)                          # the newest: never deleted
            continue
        if keep_last is not None and i >= keep_last:
            delete.append(b)
            reasons[b.name] = f"beyond the newest {keep_last}"
        elif max_age is not None and now - b.created > max_age:
            delete.append(b)
            reasons[b.name] = f"older than {max_age:.0f} s"
        else:
            keep.append(b)
    return keep_chains(Plan(keep, delete, reasons), backups)


def keep_chains(p: Plan, backups: list[Backup]) -> Plan:
    """Move back to keep every backup that a kept physical incremental's chain
    needs (its parent, that one's parent, ... the full one): deleting one would
    leave the kept backup impossible to restore."""
    need = physical_chain.needed(backups, [b.name for b in p.keep])
    for b in list(p.delete):
        if b.name in need:
            p.delete.remove(b)
            p.keep.append(b)
            p.reasons[b.name] = f"kept: the chain of {need[b.name]} needs it"
    return p


def _plan_tiered(ordered: list[Backup], keep_last: int | None, max_age: float | None, now: float,
                 tiers: Tiers) -> Plan:
    why = tiered(ordered, keep_last, tiers)
    keep, delete, reasons = [], [], {}
    for i, b in enumerate(ordered):
        if b.name not in why:
            delete.append(b)
            reasons[b.name] = "not kept by any rule (newest, keep-last, daily, weekly, monthly)"
        elif i > 0 and max_age is not None and now - b.created > max_age:
            delete.append(b)
            reasons[b.name] = f"older than max-age ({max_age:.0f} s), though {why[b.name]}"
        else:
            keep.append(b)
            reasons[b.name] = f"kept: {why[b.name]}"
    return Plan(keep, delete, reasons)


def over_budget(keep: list[Backup], others: int, budget: int) -> list[Backup]:
    """The oldest of keep (never the newest) to delete so that their sizes plus
    others (the volume's other backups) fit in budget bytes."""
    total = others + sum(b.size for b in keep)
    ordered = sorted(keep, key=lambda b: (b.created, b.name))
    out = []
    for b in ordered[:-1]:
        if total <= budget:
            break
        out.append(b)
        total -= b.size
    return out


def prune(store, target: str, keep_last: int | None, max_age: float | None, now: float,
          volume_path: Callable[[str], str | None], host: str, dry_run: bool = False,
          tiers: Tiers | None = None, budget: int | None = None) -> Report:
    """Apply the plan to one target's backups written by host (this host)."""
    catalog = trust.valid_backups(store.backups(), log)     # read and checked once: the binlog pass uses it too
    every = [b for b in catalog if b.host == host]
    backups = [b for b in every if b.target == target]
    report = Report()
    if not backups:
        return report
    newest = backups[0]
    base = volume_path(newest.volume)
    if base is None:
        raise Conflict(f"the newest backup of {target} ({newest.name}) is in volume {newest.volume}, which is not "
                       "a local volume of this host: prune on the host that holds it")
    try:
        damage = ondisk.intact(trust.inside(base, newest.path), newest.size, newest.sha256)
        if damage is None and not os.path.exists(trust.inside(base, newest.manifest_path)):
            damage = "its manifest is missing"
    except InvalidRequest as exc:
        damage = exc.message
    if damage is not None:
        raise Conflict(f"the newest backup of {target} ({newest.name}) is missing or damaged in volume "
                       f"{newest.volume} ({damage}): refusing to delete older backups")
    p = plan(backups, keep_last, max_age, now, tiers)
    if budget is not None:
        others = sum(b.size for b in every if b.volume == newest.volume and b.target != target)
        for b in over_budget([b for b in p.keep if b.volume == newest.volume], others, budget):
            p.keep.remove(b)
            p.delete.append(b)
            p.reasons[b.name] = f"volume {newest.volume} over its budget of {budget} bytes"
        p = keep_chains(p, backups)
    jobs = store.list_jobs()
    reading = {str(j.spec.get("backup")): j.id for j in jobs
               if j.kind == RESTORE and not j.terminal and isinstance(j.spec, dict)}
    for name, job in physical_chain.needed(backups, list(reading)).items():
        reading.setdefault(name, reading[job])          # a physical restore reads its whole chain
    report.kept = [b.name for b in p.keep]
    report.reasons = dict(p.reasons)
    for b in p.delete:
        if b.name in reading:
            report.skipped.append(f"{b.name} (restore job {reading[b.name]} is reading it)")
            report.kept.append(b.name)
            continue
        vbase = volume_path(b.volume)
        if vbase is None:
            report.skipped.append(f"{b.name} (volume {b.volume} not on this host)")
            continue
        if dry_run:
            report.deleted.append(b.name)
            continue
        try:
            paths = [trust.inside(vbase, rel) for rel in (b.path, b.manifest_path)]
        except InvalidRequest as exc:
            report.skipped.append(f"{b.name} ({exc.message})")
            continue
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        store.remove_backup(b)
        report.deleted.append(b.name)
        log.info("retention: deleted backup %s of %s (%s)", b.name, target, p.reasons.get(b.name))
    _prune_binlogs(store, target, report, [b for b in catalog if b.target == target], jobs, volume_path, host,
                   dry_run)
    return report


def _prune_binlogs(store, target: str, report: Report, backups: list[Backup], jobs: list,
                   volume_path: Callable[[str], str | None], host: str, dry_run: bool) -> None:
    """The binlog files no backup kept now needs (binlog_prune.py), as
    ``binlog <file>`` in the report; a failure there is reported, never raised:
    the backups' retention is done. backups: the target's, every host's."""
    gone = set(report.deleted)
    kept = [b for b in backups if b.name not in gone]
    try:
        bl = binlog_prune.prune(store, target, volume_path, host, dry_run=dry_run, backups=kept, jobs=jobs)
    except NetpluginError as exc:
        report.skipped.append(f"binlog archive ({exc.message})")
        return
    for name in bl.removed + bl.swept:
        report.deleted.append(f"binlog {name}")
        report.reasons[f"binlog {name}"] = bl.reasons.get(name, "")
    report.skipped.extend(f"binlog {s}" for s in bl.skipped)
    if bl.bad:
        report.skipped.append(f"binlog archive: {bl.bad} bad records skipped (see the log)")
