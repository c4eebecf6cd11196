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
* the runner prunes only after a verified success (a failed job never prunes).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Conflict, InvalidRequest
from . import ondisk, trust
from .model import Backup

log = logging.getLogger(__name__)


@dataclass
class Plan:
    keep: list[Backup]
    delete: list[Backup]
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def plan(backups: list[Backup], keep_last: int | None, max_age: float | None, now: float) -> Plan:
    if keep_last is not None and keep_last < 1:
        raise InvalidRequest("keep-last must be at least 1: the last good backup is always kept")
    if max_age is not None and max_age < 0:
        raise InvalidRequest("max-age cannot be negative")
    ordered = sorted(backups, key=lambda b: (b.created, b.name), reverse=True)
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
    return Plan(keep, delete, reasons)


def prune(store, target: str, keep_last: int | None, max_age: float | None, now: float,
          volume_path: Callable[[str], str | None], host: str, dry_run: bool = False) -> Report:
    """Apply the plan to one target's backups written by host (this host)."""
    backups = [b for b in trust.valid_backups(store.backups(target), log) if b.host == host]
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
    p = plan(backups, keep_last, max_age, now)
    report.kept = [b.name for b in p.keep]
    for b in p.delete:
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
    return report
