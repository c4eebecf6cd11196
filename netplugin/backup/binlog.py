"""Binary logs for point-in-time recovery: names, positions and times, with
no Docker, no etcd and no files.

- A binlog file name (``mariadb-bin.000042``) is checked before it reaches a
  command line or a path: a base name of letters, digits, ``_`` and ``-``,
  then ``.`` and six or more digits (MariaDB's index).
- A dump's coordinates (``binlog`` in the manifest) come from the dump
  itself: ``mariadb-dump --single-transaction --master-data=2 --gtid`` reads
  ``binlog_snapshot_file``/``binlog_snapshot_position`` inside its own
  consistent snapshot, so the position is exactly the dump's data, with no
  lock, and it writes them as comments in the dump's head (file, position)
  and tail (GTID).
- An archived file's time range is read from the file by ``mariadb-binlog``
  (its ``#YYMMDD HH:MM:SS`` event headers, printed with ``TZ=UTC``), never
  from a host clock. Event times have one-second resolution.
- Resume after any stop (kill -9 included): the newest archived file may end
  in a partial event, so it is fetched again from its start (``--raw``
  rewrites it); every older file ended with its rotate event and is complete.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from ..errors import InvalidRequest
from .model import _Record, check_database, check_db_host, check_name

_FILE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,62})\.([0-9]{6,9})$")
_HEAD_RE = re.compile(r"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^']{1,80})', MASTER_LOG_POS=([0-9]{1,19});",
                      re.MULTILINE)
_GTID_RE = re.compile(r"^-- SET GLOBAL gtid_slave_pos='([0-9,-]{0,4000})';", re.MULTILINE)
_GTID_LIST_RE = re.compile(r"^(|[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20}(,[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20})*)$")
_EVENT_RE = re.compile(r"^#([0-9]{6}) +([0-9]{1,2}):([0-9]{2}):([0-9]{2}) server id ([0-9]+) +end_log_pos ([0-9]+)")
FIRST_POS = 4            # every binlog file's events start after its 4-byte magic


def check_file(value: object) -> str:
    """A binlog file name fit for a command line and a path, or InvalidRequest."""
    if not isinstance(value, str) or not _FILE_RE.fullmatch(value):
        raise InvalidRequest(f"binlog file name {value!r} is not <base>.<6-9 digits> (e.g. mariadb-bin.000042) "
                             "with a base of letters, digits, '_' or '-'")
    return value


def split_file(name: str) -> tuple[str, int]:
    """``mariadb-bin.000042`` -> ("mariadb-bin", 42)."""
    base, _, seq = check_file(name).rpartition(".")
    return base, int(seq)


def next_file(name: str) -> str:
    """The file the server writes after name (its rotate goes there)."""
    base, n = split_file(name)
    width = len(name) - len(base) - 1
    return f"{base}.{n + 1:0{width}d}"


def check_gtid(value: object) -> str:
    if not isinstance(value, str) or not _GTID_LIST_RE.fullmatch(value):
        raise InvalidRequest(f"GTID position {value!r} is not a list of domain-server-sequence")
    return value


def dump_coordinates(head: str, tail: str) -> dict | None:
    """{"file", "pos", "gtid"} of a dump made with --master-data=2 --gtid, from
    its first and last bytes; None when the dump has none (binary log off).
    InvalidRequest when they are there but malformed."""
    m = _HEAD_RE.search(head)
    if m is None:
        return None
    gm = _GTID_RE.search(tail)
    gtid = check_gtid(gm.group(1)) if gm else None
    return {"file": check_file(m.group(1)), "pos": int(m.group(2)), "gtid": gtid or None}


def check_coordinates(value: object, what: str = "binlog coordinates") -> dict:
    """A manifest's ``binlog`` field, checked: {"file", "pos", "gtid", "time"}."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} {value!r} is not an object")
    pos = value.get("pos")
    if not isinstance(pos, int) or isinstance(pos, bool) or pos < FIRST_POS:
        raise InvalidRequest(f"{what}: position {pos!r} is not an integer of at least {FIRST_POS}")
    gtid = value.get("gtid")
    when = value.get("time")
    if when is not None and (not isinstance(when, (int, float)) or isinstance(when, bool) or when < 0):
        raise InvalidRequest(f"{what}: snapshot time {when!r} is not epoch seconds")
    return {"file": check_file(value.get("file")), "pos": pos,
            "gtid": None if gtid is None else check_gtid(gtid), "time": when}


# -- reading mariadb-binlog's text --------------------------------------------------------------
@dataclass
class Events:
    """What a decoded binlog file says of itself."""

    first_time: float | None       # epoch seconds (UTC), of the first event after the header
    last_time: float | None
    end_pos: int                   # end_log_pos of the last event: the file's complete length
    count: int
    server_id: int | None
    rotated_to: str = ""           # the next file named by a final rotate event


def _epoch(day: str, hh: str, mm: str, ss: str) -> float:
    stamp = time.strptime(f"{day} {int(hh):02d}:{mm}:{ss}", "%y%m%d %H:%M:%S")
    return float(calendar.timegm(stamp))


def parse_events(text: str) -> Events:
    """The event headers of ``TZ=UTC mariadb-binlog FILE`` (``#261204  4:19:05
    server id 1  end_log_pos 256 ...``). InvalidRequest when there is none."""
    first = last = None
    end = count = 0
    server = None
    rotated = ""
    for line in text.splitlines():
        m = _EVENT_RE.match(line)
        if not m:
            continue
        when = _epoch(*m.group(1, 2, 3, 4))
        first = when if first is None else first
        last = when
        end = max(end, int(m.group(6)))
        server = int(m.group(5))
        count += 1
        rm = re.search(r"\tRotate to (\S+)\s+pos: ([0-9]+)", line)
        rotated = rm.group(1) if rm else ""
    if count == 0:
        raise InvalidRequest("mariadb-binlog printed no event header: not a binlog file, or an empty one")
    if rotated:
        check_file(rotated)
    return Events(first, last, end, count, server, rotated)


# -- the archive ---------------------------------------------------------------------------------
@dataclass
class BinlogFile(_Record):
    """One archived binlog file of a target: complete (it ends in its rotate
    event), with where it is and the times of its events."""

    target: str
    file: str                      # the server's name of it
    volume: str
    path: str                      # inside the volume: <target>/binlog/<file>
    host: str                      # whose volume holds it
    size: int
    sha256: str
    start_pos: int                 # FIRST_POS: a file is archived whole
    end_pos: int
    first_time: float              # event times, from the file (UTC epoch seconds)
    last_time: float
    server_id: int
    events: int
    job: str = ""                  # the collector job that archived it

    @property
    def seq(self) -> int:
        return split_file(self.file)[1]


def check_record(rec: BinlogFile) -> BinlogFile:
    """A catalog record read from etcd, checked before use; InvalidRequest names what is wrong."""
    check_name(rec.target, "target")
    check_file(rec.file)
    check_name(rec.volume, "volume")
    if rec.path != f"{rec.target}/binlog/{rec.file}":
        raise InvalidRequest(f"binlog record {rec.file}: path {rec.path!r} is not {rec.target}/binlog/{rec.file}")
    for name in ("size", "start_pos", "end_pos", "server_id", "events"):
        v = getattr(rec, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InvalidRequest(f"binlog record {rec.file}: {name} {v!r} is not a count")
    if not (FIRST_POS <= rec.start_pos <= rec.end_pos <= rec.size):
        raise InvalidRequest(f"binlog record {rec.file}: positions {rec.start_pos}-{rec.end_pos} do not fit "
                             f"its {rec.size} bytes")
    for name in ("first_time", "last_time"):
        v = getattr(rec, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise InvalidRequest(f"binlog record {rec.file}: {name} {v!r} is not a time")
    if rec.last_time < rec.first_time:
        raise InvalidRequest(f"binlog record {rec.file}: its last event is older than its first")
    if not isinstance(rec.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", rec.sha256):
        raise InvalidRequest(f"binlog record {rec.file}: sha256 {rec.sha256!r} is not one")
    return rec


def resume_file(archived: list[str], first: str) -> str:
    """The file a (re)started collector fetches from, whole: the newest one in
    the archive folder (it may end in a partial event: it is fetched again
    from its start, and rewritten), or ``first`` when the folder has none.
    Names that are not binlog files are ignored."""
    best: tuple[int, str] | None = None
    base = split_file(first)[0]
    for name in archived:
        try:
            b, n = split_file(name)
        except InvalidRequest:
            continue
        if b == base and (best is None or n > best[0]):
            best = (n, name)
    return best[1] if best else check_file(first)


def complete_files(archived: list[str], base: str) -> list[str]:
    """The archived files of base (``mariadb-bin``) that are whole: every one
    but the newest, which the collector may still be writing (or left
    partial). Sorted by index."""
    names = sorted((split_file(n)[1], n) for n in archived if _FILE_RE.fullmatch(n) and split_file(n)[0] == base)
    return [n for _, n in names[:-1]]


# -- command lines ---------------------------------------------------------------------------------
def collector_argv(*, cnf: str, host: str, port: int, start_file: str, out_dir: str, server_id: int) -> list[str]:
    """mariadb-binlog as the collector runs it: every file from start_file on,
    raw, waiting for more (argv; every value checked)."""
    check_db_host(host)
    if not (1 <= int(port) <= 65535):
        raise InvalidRequest(f"port {port!r} is not 1-65535")
    if not (1 <= int(server_id) < 2**32):
        raise InvalidRequest(f"collector server id {server_id!r} is not 1-4294967295")
    for p in (cnf, out_dir):
        if not re.fullmatch(r"/[A-Za-z0-9_./-]{1,200}", p) or ".." in p.split("/"):
            raise InvalidRequest(f"path {p!r} is not a plain absolute path")
    return ["mariadb-binlog", f"--defaults-file={cnf}", f"--host={host}", f"--port={int(port)}",
            "--read-from-remote-server", "--raw", "--stop-never", f"--stop-never-slave-server-id={int(server_id)}",
            f"--result-file={out_dir.rstrip('/')}/", check_file(start_file)]


def at_text(at: float) -> str:
    """An instant as ``--stop-datetime`` wants it, in UTC (the collector and
    replay containers run with TZ=UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def parse_at(text: str) -> float:
    """``--at``: ISO 8601 with an explicit UTC offset (``2026-12-04T05:10:00Z``,
    ``...+01:00``) or epoch seconds; a time without a zone is refused, since no
    host's local clock is trusted. Whole seconds only (binlog event times)."""
    import datetime as _dt

    t = text.strip()
    if re.fullmatch(r"[0-9]{9,11}", t):
        return float(int(t))
    try:
        when = _dt.datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"--at {text!r} is not a time: give ISO 8601 with its zone, e.g. "
                             "2026-12-04T05:10:00Z, or epoch seconds") from None
    if when.tzinfo is None:
        raise InvalidRequest(f"--at {text!r} has no time zone: add Z (UTC) or an offset such as +01:00; "
                             "drctl never reads a host's local zone")
    if when.microsecond:
        raise InvalidRequest(f"--at {text!r} has a fraction of a second: binlog event times are whole seconds")
    return when.timestamp()


def replay_argv(*, files: list[str], start_pos: int, stop_at: float, database: str | None) -> list[str]:
    """mariadb-binlog decoding the archived files from start_pos (in the first
    file) up to, not including, the first event at or after stop_at (UTC), of
    one schema only (row events by their table's schema, statements such as
    DDL by their default database: ``USE db`` first); database None: every
    schema (a whole server restored from a physical backup)."""
    if not files:
        raise InvalidRequest("no binlog file to replay")
    if not isinstance(start_pos, int) or start_pos < FIRST_POS:
        raise InvalidRequest(f"start position {start_pos!r} is not an integer of at least {FIRST_POS}")
    only = [] if database is None else [f"--database={check_database(database)}"]
    return ["mariadb-binlog", f"--start-position={start_pos}", f"--stop-datetime={at_text(stop_at)}", *only,
            *[check_file(f) for f in files]]
