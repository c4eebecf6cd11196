"""Point-in-time restore, planned from the catalog alone (no Docker, no
files): which backup, which archived binlog files, from which position, up to
which time, or why it cannot be done.

- The backup: the newest good one of the target whose binlog snapshot time
  (``binlog["time"]``: the SOURCE server's clock, the clock its binlog events
  carry) is before TIME. A backup without coordinates or without that time
  cannot start a replay and is passed over. No host clock is compared.
- The files: from the backup's file on, with consecutive indexes, until one
  whose last event is at or after TIME. A missing index, or an archive that
  ends before TIME, is a gap: refused with the file, positions and times of
  the missing interval, before any job is submitted (nothing is touched).
- The replay stops before the first event at or after TIME (``mariadb-binlog
  --stop-datetime``, in UTC): event times are whole seconds, so TIME counts in
  whole seconds, and a transaction cut there is not applied at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidRequest
from . import binlog
from .binlog import BinlogFile
from .model import FAILED, Backup, JobEnded, check_database


class ArchiveGap(InvalidRequest):
    """The archive lacks events a replay needs; the message names the interval."""


@dataclass
class Plan:
    backup: Backup
    start_file: str
    start_pos: int
    files: list[BinlogFile]
    at: float

    def replay(self) -> dict:
        """The restore job's ``replay`` spec field."""
        return {"files": [f.file for f in self.files], "start_pos": self.start_pos, "stop_at": self.at,
                "source_target": self.backup.target}


def _when(t: float | None) -> str:
    return "?" if t is None else binlog.at_text(t) + " UTC"


def choose_backup(backups: list[Backup], at: float, target: str,
                  archive: list[BinlogFile] | None = None) -> tuple[Backup, dict]:
    """The newest backup whose snapshot is before at, with its coordinates. A
    backup without a snapshot time is bounded by the last event of its
    archived binlog file (every event before its position was logged before
    that file's rotate event): later than the snapshot, never earlier."""
    usable: list[tuple[float, int, Backup, dict]] = []
    rotated = {r.file: r.last_time for r in archive or []}
    passed = 0
    for b in backups:
        try:
            coords = binlog.check_coordinates(b.binlog)
        except InvalidRequest:
            passed += 1
            continue
        t = coords.get("time")
        if t is None:
            t = rotated.get(coords["file"])
        if t is None:
            passed += 1
            continue
        if t < at:
            usable.append((t, binlog.split_file(coords["file"])[1] * 2**40 + coords["pos"], b, coords))
    if not usable:
        why = f" ({passed} without binlog coordinates or snapshot time)" if passed else ""
        raise InvalidRequest(f"no good backup of {target} was taken before {_when(at)}{why}: a point-in-time "
                             f"restore starts from one (see 'drctl backups {target}')")
    usable.sort(key=lambda u: (u[0], u[1]))
    _, _, b, coords = usable[-1]
    return b, coords


def files_to(archive: list[BinlogFile], start_file: str, start_pos: int, at: float) -> list[BinlogFile]:
    """The archived files from start_file (its events from start_pos) until the
    one holding at; ArchiveGap naming the first missing interval."""
    base, seq = binlog.split_file(start_file)
    by_seq = {r.seq: r for r in archive if binlog.split_file(r.file)[0] == base}
    out: list[BinlogFile] = []
    prev: BinlogFile | None = None
    n = seq
    while True:
        rec = by_seq.get(n)
        name = f"{base}.{n:0{len(start_file) - len(base) - 1}d}"
        if rec is None:
            later = sorted(s for s in by_seq if s > n)
            pos = start_pos if n == seq else binlog.FIRST_POS
            since = f"after {_when(prev.last_time)}" if prev else "after the backup's snapshot"
            if later:
                nxt = by_seq[later[0]]
                raise ArchiveGap(
                    f"the binlog archive has a gap: {name} from position {pos}"
                    + (f" to {base}.{later[0] - 1:0{len(start_file) - len(base) - 1}d}" if later[0] - 1 > n else "")
                    + f" is missing, events {since} until {_when(nxt.first_time)} (where {nxt.file} begins); "
                    f"a restore to {_when(at)} needs them: choose a time before the gap or a backup taken after it")
            raise ArchiveGap(
                f"the binlog archive ends before {_when(at)}: {name} from position {pos} on is not archived "
                f"(events {since}); is the collector running ('drctl binlog ls')? The file being written is "
                "archived once the server rotates it (FLUSH BINARY LOGS, or max_binlog_size)")
        if n == seq and rec.end_pos < start_pos:
            raise InvalidRequest(f"backup position {start_file}:{start_pos} is past the end of the archived "
                                 f"file ({rec.end_pos} bytes): the archive is not of this server's log")
        out.append(rec)
        if rec.last_time >= at:
            return out
        prev = rec
        n += 1


def plan(backups: list[Backup], archive: list[BinlogFile], at: float, target: str) -> Plan:
    """Everything a point-in-time restore of target to at needs, or the reason it cannot be done."""
    backup, coords = choose_backup(backups, at, target, archive)
    files = files_to(archive, coords["file"], coords["pos"], at)
    return Plan(backup=backup, start_file=coords["file"], start_pos=coords["pos"], files=files, at=at)


def check_replay(value: object) -> dict:
    """A restore job's ``replay`` field as read from etcd: checked before any of
    it reaches a command line or a path."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"replay {value!r} is not a mapping")
    files = value.get("files")
    if not isinstance(files, list) or not files or len(files) > 100000:
        raise InvalidRequest("replay: files must be a non-empty list of binlog file names")
    for f in files:
        binlog.check_file(f)
    start = value.get("start_pos")
    if not isinstance(start, int) or isinstance(start, bool) or start < binlog.FIRST_POS:
        raise InvalidRequest(f"replay: start position {start!r} is not an integer of at least {binlog.FIRST_POS}")
    stop = value.get("stop_at")
    if not isinstance(stop, (int, float)) or isinstance(stop, bool) or stop <= 0:
        raise InvalidRequest(f"replay: stop time {stop!r} is not epoch seconds")
    src = value.get("source_target")
    if not isinstance(src, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", src):
        raise InvalidRequest(f"replay: source target {src!r} is not a target name")
    return {"files": list(files), "start_pos": start, "stop_at": float(stop), "source_target": src}


def restore_fields_at(store, target: str, at_text: str, database: str | None, volume: str | None, replace: bool,
                      into_source: bool, physical: Callable[[Backup], dict] | None = None) -> dict:
    """The spec fields of ``drctl restore --latest TARGET --at TIME``: the plan's
    backup restored, then its replay; refused here, before anything is
    submitted, when the catalog cannot give an exact result. physical(backup):
    the fields of a physical restore of backup (a fresh server of its own, then
    the whole server replayed: pitr_physical.py); None: logical backups only."""
    from .jobs import restore_fields

    at = binlog.parse_at(at_text)
    if replace:
        raise InvalidRequest("--at restores into a schema that is empty (no --replace): restore into a new schema "
                             "(--database NEW_NAME) and switch to it")
    backups = [b for b in store.backups(target) if physical or getattr(b, "method", "logical") == "logical"]
    p = plan(backups, store.binlogs(target), at, target)
    fields = restore_fields(p.backup, database, volume, False, into_source)
    if getattr(p.backup, "method", "logical") == "physical" and physical is not None:
        fields.update(physical(p.backup))
    away = [f.file for f in p.files if f.volume != fields["volume"] or f.host != p.backup.host]
    if away:
        raise InvalidRequest(f"binlog files {', '.join(away[:5])} are not in volume {fields['volume']} on host "
                             f"{p.backup.host}, where backup {p.backup.name} is: the replay reads both from one "
                             "volume (archive with 'drctl binlog start --volume' where the backups go)")
    fields["replay"] = p.replay()
    return fields


def replay_files(store, spec, manifest: dict, host: Callable[[str], str],
                 whole_server: bool = False) -> tuple[dict, str]:
    """What a restore job with ``replay`` needs on its host, checked before its
    container starts (nothing touched yet): every archived file in the volume
    with the catalog's size and sha256. Returns the script's params and the
    replay's argv file (one argument a line). host(rel): the file's path on
    this host, refused when it leads out of the volume."""
    import hashlib

    replay = check_replay(spec.replay)
    src = replay["source_target"]
    catalog = {r.file: r for r in store.binlogs(src)}
    for name in replay["files"]:
        rec = catalog.get(name)
        if rec is None:
            raise InvalidRequest(f"binlog file {name} of {src} is no longer in the catalog: the archive has a gap")
        path = host(rec.path)
        try:
            size = os.lstat(path).st_size
            digest = hashlib.sha256()
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise InvalidRequest(f"binlog file {rec.path} cannot be read in volume {spec.volume}: "
                                 f"{exc.strerror}: the archive has a gap") from None
        if size != rec.size or digest.hexdigest() != rec.sha256:
            raise InvalidRequest(f"binlog file {rec.path} has {size} bytes or a sha256 unlike the catalog's: "
                                 "it is damaged; nothing was restored")
    argv = binlog.replay_argv(files=replay["files"], start_pos=replay["start_pos"], stop_at=replay["stop_at"],
                              database=None if whole_server else check_database(str(manifest.get("database", ""))))
    # MariaDB's --database filters on the name before the rewrite
    if not whole_server and manifest["database"] != spec.database:
        argv.insert(-len(replay["files"]), f"--rewrite-db={manifest['database']}->{check_database(spec.database)}")
    params = {"REPLAY": True, "REPLAY_DIR": f"/backup/{src}/binlog"}
    return params, "".join(a + "\n" for a in argv)


def replay_result(replay: dict, out) -> dict:
    """What the job's result says of its replay: what was replayed, and each
    table's rows and checksum after it (taken in one snapshot: compare them
    with the source's at TIME)."""
    from .jobscript import parse_checksums, parse_status

    status = parse_status(out.get("replay_status") or "")
    if not status or any(v != 0 for v in status.values()):
        raise JobEnded(FAILED, f"verification: the replay's stages failed: {status or 'no status recorded'}")
    tables = parse_checksums(out.get("checksums.replayed") or "")
    return {"files": replay["files"], "start_pos": replay["start_pos"],
            "stop_at": binlog.at_text(replay["stop_at"]) + " UTC",
            "tables": {n: {"rows": t["rows"], "checksum": t["checksum"]} for n, t in tables.items()},
            "rows": sum(t["rows"] for t in tables.values())}
