"""Pruning the binlog archive: a file goes once no kept backup can need it
for a point-in-time restore.

- The cut: the binlog coordinates (file, position) of the OLDEST kept backup
  of the target that a replay can start from (pitr.choose_backup's rule: a
  backup without valid coordinates cannot, and holds nothing). Every backup
  with coordinates has a position, so the cut is always a position, never a
  host's clock. A file whose index is below the cut file's ended before the
  cut; the cut file itself is needed (its events from the position on).
- Never the newest archived file of the target; nothing at all while the
  target has no kept backup with coordinates, or while an active restore job
  replays the target's archive (pitr does not lock files: its job names them).
- Only this host's files (``BinlogFile.host``), in its local volumes, as
  retention deletes only this host's backups. Files of another binlog base
  name than the cut's are left alone.
- Order: the etcd record goes first, in a transaction guarded by the revision
  read, then the file. A kill -9 between the two leaves a file without a
  record: no restore can plan with it (plans read the catalog), and the next
  pass sweeps it (an uncatalogued file below both the cut and the newest
  record, which a collector never writes again). The other order would leave
  a record without its file: restores would be planned from it and fail on
  the agent, and another host could not tell it from a file still there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from . import binlog, trust
from .binlog import BinlogFile
from .model import RESTORE, Backup, Job, check_name
from .pitr import check_replay

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What one pass did (or, dry, would do) for one target."""

    target: str
    removed: list[str] = field(default_factory=list)        # file names
    swept: list[str] = field(default_factory=list)          # files without a record, left by a stopped pass
    skipped: list[str] = field(default_factory=list)        # "<file> (why)"
    reasons: dict[str, str] = field(default_factory=dict)   # why each file went, or why nothing did
    kept: int = 0
    bad: int = 0                                            # binlog records skipped as bad


def cut_of(backups: list[Backup]) -> tuple[str, int, str] | None:
    """(file, position, backup name) of the oldest backup a replay can start
    from, or None when no backup has valid coordinates."""
    best: tuple[tuple[int, int], str, int, str] | None = None
    for b in backups:
        try:
            c = binlog.check_coordinates(b.binlog)
        except InvalidRequest:
            continue
        key = (binlog.split_file(c["file"])[1], c["pos"])
        if best is None or key < best[0]:
            best = (key, c["file"], c["pos"], b.name)
    return None if best is None else best[1:]


def plan(records: list[BinlogFile], backups: list[Backup]) -> tuple[list[BinlogFile], dict[str, str]]:
    """The records to remove, and why each goes (or, under "", why none does).
    records: the target's archive; backups: its kept backups."""
    if not records:
        return [], {"": "the archive is empty"}
    cut = cut_of(backups)
    if cut is None:
        return [], {"": "no kept backup has binlog coordinates: a point-in-time restore could need every file"}
    file, pos, name = cut
    base, seq = binlog.split_file(file)
    newest = max(records, key=lambda r: r.seq)
    out, why = [], {}
    for r in records:
        if r is newest or binlog.split_file(r.file)[0] != base or r.seq >= seq:
            continue
        out.append(r)
        why[r.file] = f"ends before {file}:{pos}, where the oldest kept backup {name} starts"
    if not out:
        why[""] = f"every file is at or after {file}:{pos} (oldest kept backup {name}), or the newest"
    return out, why


def replaying(jobs: list[Job], target: str) -> str | None:
    """The id of an active restore job that replays target's archive, if any.
    A replay field that does not pass pitr.check_replay counts as reading it
    (safe side)."""
    for j in jobs:
        if j.kind != RESTORE or j.terminal or not isinstance(j.spec, dict) or not j.spec.get("replay"):
            continue
        try:
            if check_replay(j.spec["replay"])["source_target"] == target:
                return j.id
        except InvalidRequest:
            return j.id
    return None


def prune(store, target: str, volume_path: Callable[[str], str | None], host: str, dry_run: bool = False,
          backups: list[Backup] | None = None, jobs: list[Job] | None = None) -> Report:
    """One pass over target's archive on this host. backups: the kept backups
    (default: the catalog's, every host's: any of them may start a replay);
    jobs: every job (default: read from the store), for the active restores."""
    report = Report(target)
    check_name(target, "target")
    bad = store.bad_binlogs
    records = store.binlogs(target)
    report.bad = store.bad_binlogs - bad
    if backups is None:
        backups = trust.valid_backups(store.backups(target), log)
    job = replaying(store.list_jobs() if jobs is None else jobs, target)
    if job is not None:
        report.reasons[""] = f"restore job {job} replays the archive of {target}: nothing removed until it ends"
        report.kept = len(records)
        return report
    drop, report.reasons = plan(records, backups)
    for r in drop:
        if r.host != host:
            report.skipped.append(f"{r.file} (on host {r.host}: prune there)")
            continue
        base = volume_path(r.volume)
        if base is None:
            report.skipped.append(f"{r.file} (volume {r.volume} is not on this host)")
            continue
        try:
            path = trust.inside(base, r.path, "binlog file")
        except InvalidRequest as exc:
            report.skipped.append(f"{r.file} ({exc.message})")
            continue
        if not dry_run:
            if not store.remove_binlog_if_unchanged(r):
                report.skipped.append(f"{r.file} (its record changed or went meanwhile: next pass)")
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.info("binlog prune: removed %s of %s (%s)", r.file, target, report.reasons.get(r.file))
        report.removed.append(r.file)
    report.kept = len(records) - len(report.removed)
    cut = cut_of(backups)
    if cut is not None and records:
        _sweep(report, records, cut[0], volume_path, host, dry_run)
    return report


def _sweep(report: Report, records: list[BinlogFile], cut_file: str, volume_path: Callable[[str], str | None],
           host: str, dry_run: bool) -> None:
    """Remove this host's archive files that have no record, of the cut's base,
    below the newest remaining record and the cut: left by a pass stopped
    between a record's removal and its file's. Never a file the collector may
    still write (the newest, or any after the newest record)."""
    base, cut = binlog.split_file(cut_file)
    gone = set(report.removed)
    left = [r for r in records if r.file not in gone]
    same = [r.seq for r in left if binlog.split_file(r.file)[0] == base]
    if not same:
        return          # no catalogued file of this base after them: the collector may be writing one
    cut = min(cut, *same)
    catalogued = {r.file for r in records}
    for volume in sorted({r.volume for r in left if r.host == host}):
        vbase = volume_path(volume)
        if vbase is None:
            continue
        try:
            folder = trust.inside(vbase, f"{report.target}/binlog", "binlog archive")
            names = sorted(os.listdir(folder)) if not os.path.islink(folder) else []
        except (InvalidRequest, OSError):
            continue
        for name in names:
            try:
                b, n = binlog.split_file(name)
            except InvalidRequest:
                continue
            if b != base or n >= cut or name in catalogued or not os.path.isfile(os.path.join(folder, name)):
                continue
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                log.info("binlog prune: swept %s of %s (a file without a record)", name, report.target)
            report.swept.append(name)
            report.reasons[name] = "no record (a pass stopped after removing it), before the oldest kept file"


def prune_all(store, volume_path: Callable[[str], str | None], host: str, target: str | None = None,
              dry_run: bool = False) -> list[Report]:
    """Every target with archived files (or one), this host's files."""
    targets = [target] if target else sorted({r.target for r in store.binlogs()})
    return [prune(store, t, volume_path, host, dry_run) for t in targets]
