"""Physical backups with mariadb-backup: what the job containers run, and
reading what they wrote. No Docker, no etcd.

Three scripts, written by drctl into a job folder (mounted at /job) with
``/job/params`` (plain settings, shell-quoted, never a secret; credentials in
the mounted option file, as for logical jobs):

* SENDER, on the database server's host, in a container that mounts the
  server's data volume read-only at /var/lib/mysql: ``mariadb-backup --backup
  --stream=mbstream`` connecting to the server over the network, compressed by
  zstd, sent with socat to the receiver. The bandwidth profile is on its port.
  Per-table checksums are taken in a snapshot opened while mariadb-backup holds
  ``BACKUP STAGE BLOCK_COMMIT`` (no commit can happen): when it says it has
  the lock, it is stopped (SIGSTOP) until the checksum session has opened its
  snapshot, then continued; the snapshot's binlog position is recorded and
  compared with the backup's as a check. The checkpoints and the backup's
  binlog coordinates come from ``--extra-lsndir``.
* RECEIVER, the job's own container on the backup host: listens on the job's
  network, writes the stream to ``<name>.mbstream.zst.partial`` in the backup
  volume and hashes what it wrote; the runner compares the hash with the
  sender's before anything is catalogued.
* PREPARE, a restore: each backup of the chain re-hashed while mbstream
  unpacks it into a scratch folder of the FRESH data volume, ``--prepare`` of
  the full one, then of each incremental onto it in order, ``--move-back`` into
  the volume. The backup files are only ever read.

Why ``--prepare`` at restore time, not at backup time: the stored stream stays
byte for byte what the server gave (its hash proves it, and an incremental can
still be applied to its base, which a prepared base no longer allows in
general), a backup job costs one read of the data and no second copy of it,
and the restore prepares on a scratch copy anyway, so nothing stored is ever
changed. The cost is paid at restore time: redo applied on a copy, which is
still far faster than replaying INSERTs (docs/benchmarks.md).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from .model import _Record, check_database, check_name

EXT = ".mbstream.zst"
RECV_PORT = 4444
DATA_MOUNT = "/var/lib/mysql"      # the sender: the server's data volume, read-only
RESTORE_MOUNT = "/data"            # the restore: the fresh data volume

_LSN_RE = re.compile(r"^\s*(backup_type|from_lsn|to_lsn|last_lsn)\s*=\s*(\S+)\s*$")
_BINLOG_RE = re.compile(r"filename '([^']+)', position '(\d+)'(?:, GTID of the last change '([^']*)')?")
_BINLOG_FILE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
_GTID_RE = re.compile(r"^[0-9]+-[0-9]+-[0-9]+(,[0-9]+-[0-9]+-[0-9]+)*$")


REQUESTED, SENDING, SENT, SEND_FAILED, SEND_CANCELLED = "requested", "sending", "sent", "failed", "cancelled"
SENDER_STATES = (REQUESTED, SENDING, SENT, SEND_FAILED, SEND_CANCELLED)
SENDER_ENDED = frozenset({SENT, SEND_FAILED, SEND_CANCELLED})


@dataclass
class Sender(_Record):
    """A physical backup's sending side, asked of the agent of the host that
    holds the server's data (``backup/senders/<host>/<job>``): written by the
    backup job's runner, run and answered by that agent (physical_sender.py)."""

    job: str
    host: str                                 # whose agent runs it: where the data volume is
    network: str
    db_host: str
    db_port: int
    database: str
    data_volume: str
    option_file: str
    image: str
    recv_host: str                            # the receiver's address on the network
    recv_port: int = RECV_PORT
    limits: dict = field(default_factory=dict)
    checksums: bool = True
    base_checkpoints: str = ""                # an incremental: xtrabackup_checkpoints of its base
    state: str = REQUESTED
    message: str = ""
    container: str = ""
    outputs: dict = field(default_factory=dict)   # what the sender's script wrote (small files)
    cancel: bool = False


def check_sender(s: Sender) -> Sender:
    """A sender record as it must be before an agent acts on it (names that
    reach mounts and a command line); raises InvalidRequest."""
    from . import trust
    trust.check_id(s.job)
    trust.check_host(s.host)
    for what, value in (("network", s.network), ("data volume", s.data_volume)):
        if not isinstance(value, str) or not trust.VOLUME_RE.fullmatch(value):
            raise InvalidRequest(f"sender of {s.job}: {what} {str(value)[:80]!r} is not a Docker name")
    from .model import check_db_host
    check_db_host(s.db_host)
    check_database(s.database)
    try:
        ipaddress.IPv4Address(s.recv_host)
    except (ValueError, TypeError):
        raise InvalidRequest(f"sender of {s.job}: receiver address {str(s.recv_host)[:40]!r} is not IPv4") from None
    for what, port in (("db port", s.db_port), ("receiver port", s.recv_port)):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidRequest(f"sender of {s.job}: {what} {port!r} is not a port")
    if s.state not in SENDER_STATES:
        raise InvalidRequest(f"sender of {s.job}: state {str(s.state)[:40]!r} is not a sender state")
    if not isinstance(s.limits, dict) or not isinstance(s.outputs, dict):
        raise InvalidRequest(f"sender of {s.job}: limits and outputs must be mappings")
    if not isinstance(s.base_checkpoints, str) or len(s.base_checkpoints) > 4096:
        raise InvalidRequest(f"sender of {s.job}: base checkpoints must be a short text")
    if s.base_checkpoints:
        parse_checkpoints(s.base_checkpoints)
    check_name(s.image.replace("/", "-").replace(":", "-")[:63] or "-", "image")
    return s


def parse_checkpoints(text: str) -> dict:
    """``xtrabackup_checkpoints`` -> {backup_type, from_lsn, to_lsn, last_lsn};
    raises InvalidRequest when a field is missing or not a number."""
    out: dict = {}
    for line in text.splitlines():
        m = _LSN_RE.match(line)
        if m:
            key, value = m.groups()
            if key == "backup_type":
                out[key] = value
            elif value.isdigit():
                out[key] = int(value)
            else:
                raise InvalidRequest(f"xtrabackup_checkpoints: {key} {value[:40]!r} is not a number")
    missing = [k for k in ("backup_type", "from_lsn", "to_lsn", "last_lsn") if k not in out]
    if missing:
        raise InvalidRequest(f"xtrabackup_checkpoints lacks {', '.join(missing)}")
    if out["backup_type"] not in ("full-backuped", "incremental"):
        raise InvalidRequest(f"xtrabackup_checkpoints: unexpected backup_type {out['backup_type'][:40]!r}")
    if out["from_lsn"] > out["to_lsn"]:
        raise InvalidRequest("xtrabackup_checkpoints: from_lsn is after to_lsn")
    return out


def parse_binlog(text: str) -> dict | None:
    """The binlog coordinates of the backup point, from ``xtrabackup_info``'s
    ``binlog_pos`` line (or mariadb-backup's own log line): {"file", "pos",
    "gtid"}; None when the server writes no binlog."""
    for line in text.splitlines():
        if "binlog_pos" not in line and "binlog position" not in line:
            continue
        m = _BINLOG_RE.search(line)
        if not m:
            continue
        file, pos, gtid = m.group(1), int(m.group(2)), m.group(3) or None
        if not _BINLOG_FILE_RE.fullmatch(file):
            raise InvalidRequest(f"binlog file name {file[:80]!r} is not a plain file name")
        if gtid is not None and not _GTID_RE.fullmatch(gtid):
            raise InvalidRequest(f"binlog GTID {gtid[:80]!r} is not a MariaDB GTID list")
        return {"file": file, "pos": pos, "gtid": gtid}
    return None


def parse_snapshot(text: str) -> dict | None:
    """``SHOW STATUS LIKE 'binlog_snapshot_%'`` lines (name TAB value) -> the
    checksum snapshot's binlog {"file", "pos"}; None without a binlog."""
    values = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 2:
            values[parts[0].strip().lower()] = parts[1].strip()
    file, pos = values.get("binlog_snapshot_file", ""), values.get("binlog_snapshot_position", "")
    if not file or not pos.isdigit():
        return None
    return {"file": file, "pos": int(pos)}


def checksum_point(binlog: dict | None, snapshot: dict | None, in_block_commit: bool) -> dict:
    """Whether the checksums describe exactly the backup: taken in a snapshot
    opened while mariadb-backup held BLOCK_COMMIT, and (with a binlog) at the
    same binlog position as the backup."""
    same = bool(binlog and snapshot and binlog["file"] == snapshot["file"] and binlog["pos"] == snapshot["pos"])
    exact = same or (in_block_commit and binlog is None and snapshot is None)
    if binlog and snapshot and not same:
        exact = False
    return {"exact": exact, "in_block_commit": in_block_commit, "snapshot_binlog": snapshot}


def chain_file(rows: list[tuple[str, int, str]]) -> str:
    """What PREPARE reads: ``rel<TAB>size<TAB>sha256`` a line, the full backup first."""
    out = []
    for rel, size, sha in rows:
        if any(c in rel for c in "\t\n") or rel.startswith("/") or ".." in rel.split("/"):
            raise InvalidRequest(f"backup file {rel[:120]!r} is not a plain path inside the volume")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise InvalidRequest(f"sha256 {sha[:80]!r} of {rel[:120]} is not 64 hex digits")
        out.append(f"{rel}\t{int(size)}\t{sha}\n")
    return "".join(out)


_COMMON = r"""#!/bin/bash
set -uo pipefail
umask 077
OUT=/job/out
CNF=/run/drctl/client.cnf
# shellcheck disable=SC1091
source /job/params
log() { printf '%s drctl %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$ROLE" "$*" >&2; }
fail() { printf '%s\n' "$1" >"$OUT/error"; log "FAILED: $1"; exit "${2:-1}"; }
errtail() { [[ -s $1 ]] && grep -v -e '^-*$' "$1" | tail -n 3 | tr '\n' ' '; }
n=0
until [[ -e /job/go ]]; do
    [[ -e /job/abort ]] && fail "stopped by drctl before the start" 3
    ((n++ < 6000)) || fail "drctl did not open the gate within 10 minutes" 3
    sleep 0.1
done
[[ -e /job/abort ]] && fail "stopped by drctl before the start" 3
TMP=/tmp/drctl
mkdir -p "$TMP"
"""

_SENDER = r"""
log "limits checked; backing up the server at $DB_HOST:$DB_PORT for $RECV_HOST:$RECV_PORT"
SQL=(mariadb "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --batch --skip-column-names
    --connect-timeout=10 --default-character-set=utf8mb4)
"${SQL[@]}" -e 'SELECT VERSION()' >"$OUT/server_version" 2>"$OUT/connect.err" \
    || fail "cannot log in to $DB_HOST:$DB_PORT: $(errtail "$OUT/connect.err")" 2
exists=$("${SQL[@]}" -e "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='$DATABASE'") \
    || fail "cannot read the schema list: $(errtail "$OUT/connect.err")"
[[ $exists == 1 ]] || fail "database $DATABASE does not exist on $DB_HOST:$DB_PORT" 2
CHK=
if [[ $CHECKSUMS == 1 ]]; then
    q=$(</job/bin/checksum-gen.sql)
    "${SQL[@]}" --raw -e "${q//@SCHEMA@/$DATABASE}" >"$TMP/gen.sql" 2>"$OUT/checksum.err" \
        || fail "cannot list the tables of $DATABASE: $(errtail "$OUT/checksum.err")"
    mkfifo "$TMP/chk.in"
    "${SQL[@]}" --unbuffered "$DATABASE" <"$TMP/chk.in" >"$TMP/chk.out" 2>"$OUT/chk.err" &
    p_chk=$!
    exec {CHK}>"$TMP/chk.in"
fi
BACKUP=(mariadb-backup "--defaults-file=$CNF" --backup --stream=mbstream "--host=$DB_HOST" "--port=$DB_PORT"
    "--datadir=$DATA" "--target-dir=$TMP/target" "--extra-lsndir=$TMP/lsn" "--parallel=$PARALLEL")
[[ $INCREMENTAL == 1 ]] && BACKUP+=(--incremental-basedir=/job/base)
printf '%s\n' "${BACKUP[*]}" >"$OUT/backup_command"
mariadb-backup --version >"$OUT/backup_version" 2>&1
mkdir -p "$TMP/lsn"
mkfifo "$TMP/stream" "$TMP/berr" "$TMP/out_sha" "$TMP/out_count"
sha256sum <"$TMP/out_sha" >"$OUT/sha256" & p_sha=$!
wc -c <"$TMP/out_count" >"$OUT/bytes" & p_count=$!
"${BACKUP[@]}" >"$TMP/stream" 2>"$TMP/berr" {CHK}>&- &
p_mb=$!
(
    exec {CHK}>&-
    zstd -q -c -3 -T1 <"$TMP/stream" | tee "$TMP/out_sha" "$TMP/out_count" \
        | socat -u STDIN "TCP:$RECV_HOST:$RECV_PORT,connect-timeout=10" 2>"$OUT/send.err"
    echo "${PIPESTATUS[*]}" >"$TMP/pipestatus"
) &
p_pipe=$!
# mariadb-backup's log, line by line: at BLOCK_COMMIT (no commit can happen on
# the server) it is stopped while the checksum session opens its snapshot.
stopped=0
trap '((stopped)) && kill -CONT "$p_mb" 2>/dev/null' EXIT
while IFS= read -r line; do
    printf '%s\n' "$line" >>"$OUT/backup.log"
    if [[ -n $CHK && ! -e $OUT/snapshot && $line == *"Acquired locks for BACKUP STAGE BLOCK_COMMIT"* ]]; then
        kill -STOP "$p_mb" && stopped=1
        printf '%s\n' "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;" \
            "START TRANSACTION WITH CONSISTENT SNAPSHOT;" "SHOW STATUS LIKE 'binlog_snapshot_%';" \
            "SELECT 'drctl:time', UNIX_TIMESTAMP();" "SELECT 'drctl:snapshot';" >&"$CHK"
        end=$((SECONDS + 10))
        until grep -qxF drctl:snapshot "$TMP/chk.out" 2>/dev/null || ((SECONDS > end)); do sleep 0.01; done
        kill -CONT "$p_mb"
        stopped=0
        grep -qxF drctl:snapshot "$TMP/chk.out" && grep -i '^binlog_snapshot' "$TMP/chk.out" >"$OUT/snapshot"
        grep '^drctl:time' "$TMP/chk.out" | cut -f2 >"$OUT/point_time"
        echo 1 >"$OUT/in_block_commit"
    fi
done <"$TMP/berr"
wait "$p_mb"; s_mb=$?
wait "$p_pipe"
read -r -a st <"$TMP/pipestatus" || st=(-1 -1 -1)
wait "$p_sha"; s_sha=$?
wait "$p_count"; s_count=$?
printf 'backup=%s compress=%s tee=%s send=%s sha256=%s count=%s\n' "$s_mb" "${st[0]}" "${st[1]}" "${st[2]}" \
    "$s_sha" "$s_count" >"$OUT/status"
for s in "$s_mb" "${st[@]}" "$s_sha" "$s_count"; do
    why=$(grep -iE 'error|fail' "$OUT/backup.log" | tail -n 2 | tr '\n' ' ')$(errtail "$OUT/send.err")
    [[ $s == 0 ]] || fail "a stage of the physical backup failed ($(<"$OUT/status")): $why"
done
tail -n 1 "$OUT/backup.log" | grep -q 'completed OK!' || fail "mariadb-backup did not say 'completed OK!'"
cp "$TMP/lsn/xtrabackup_checkpoints" "$OUT/checkpoints" || fail "mariadb-backup wrote no xtrabackup_checkpoints"
cp "$TMP/lsn/xtrabackup_info" "$OUT/info" || fail "mariadb-backup wrote no xtrabackup_info"
if [[ -n $CHK ]]; then
    [[ -e $OUT/snapshot || -e $OUT/in_block_commit ]] || fail "the checksum snapshot was not opened at the backup point"
    printf '%s\n' "$(<"$TMP/gen.sql")" "COMMIT;" "SELECT 'drctl:done';" >&"$CHK"
    exec {CHK}>&-
    wait "$p_chk" || fail "checksums in the backup's snapshot failed: $(errtail "$OUT/chk.err")"
    grep -qxF drctl:done "$TMP/chk.out" || fail "checksums in the backup's snapshot did not finish"
    grep -vxE 'drctl:(snapshot|done)' "$TMP/chk.out" | grep -vi -e '^binlog_snapshot' -e '^drctl:time' \
        >"$OUT/checksums"
    log "checksums of $(wc -l <"$OUT/checksums") tables taken at the backup point"
fi
log "sent $(<"$OUT/bytes") bytes"
echo ok >"$OUT/done"
"""

_RECEIVER = r"""
mkdir -p "${PARTIAL%/*}"
rm -f "$PARTIAL"
mkfifo "$TMP/out_sha" "$TMP/out_count"
sha256sum <"$TMP/out_sha" >"$OUT/sha256" & p_sha=$!
wc -c <"$TMP/out_count" >"$OUT/bytes" & p_count=$!
WRITE=(dd "of=$PARTIAL" bs=512k iflag=fullblock conv=fsync status=none)
[[ $DIRECT == 1 ]] && WRITE+=(oflag=direct)
log "listening on port $RECV_PORT for the sender; writing ${PARTIAL#/backup/}"
echo listening >"$OUT/listening"
socat -u -T 600 "TCP-LISTEN:$RECV_PORT,reuseaddr,accept-timeout=$WAIT" STDOUT 2>"$OUT/recv.err" \
    | tee "$TMP/out_sha" "$TMP/out_count" | "${WRITE[@]}" 2>"$OUT/write.err"
st=("${PIPESTATUS[@]}")
wait "$p_sha"; s_sha=$?
wait "$p_count"; s_count=$?
printf 'receive=%s tee=%s write=%s sha256=%s count=%s\n' "${st[0]}" "${st[1]}" "${st[2]}" "$s_sha" "$s_count" \
    >"$OUT/status"
for s in "${st[@]}" "$s_sha" "$s_count"; do
    why=$(errtail "$OUT/recv.err")$(errtail "$OUT/write.err")
    [[ $s == 0 ]] || fail "a stage of the receiver failed ($(<"$OUT/status")): $why"
done
log "received $(<"$OUT/bytes") bytes"
echo ok >"$OUT/done"
"""

_PREPARE = r"""
SCRATCH=$DATA/.drctl-prepare
rm -rf "$SCRATCH"
shopt -s dotglob nullglob
left=("$DATA"/*)
[[ ${#left[@]} == 0 ]] || fail "the data volume is not empty: a physical restore needs a fresh one" 2
cleanup() { rm -rf "$SCRATCH"; }
trap cleanup EXIT
mkdir -p "$SCRATCH"
i=0
total=0
while IFS=$'\t' read -r rel size sha; do
    [[ -n $rel ]] || continue
    FILE=/backup/$rel
    [[ -f $FILE ]] || fail "backup file $rel is not in the volume" 2
    have=$(stat -c %s "$FILE")
    [[ $have == "$size" ]] || fail "backup file $rel has $have bytes, the catalog says $size: it is damaged" 2
    mkdir -p "$SCRATCH/$i"
    mkfifo "$TMP/sha$i"
    sha256sum <"$TMP/sha$i" >"$OUT/sha256.$i" & p_sha=$!
    log "unpacking $rel ($size bytes) into a scratch copy"
    READ=(dd "if=$FILE" bs=512k status=progress)
    [[ $DIRECT == 1 ]] && READ+=(iflag=direct)
    "${READ[@]}" 2>>"$OUT/read.err" | tee "$TMP/sha$i" | zstd -q -d -c 2>"$OUT/decompress.err" \
        | mbstream -x -C "$SCRATCH/$i" 2>"$OUT/unpack.err"
    st=("${PIPESTATUS[@]}")
    wait "$p_sha"
    why=$(errtail "$OUT/decompress.err")$(errtail "$OUT/unpack.err")
    [[ ${st[*]} == "0 0 0 0" ]] || fail "cannot unpack $rel (read tee decompress unpack: ${st[*]}): $why"
    sum=$(<"$OUT/sha256.$i")
    [[ ${sum%% *} == "$sha" ]] || fail "backup file $rel has sha256 ${sum%% *}, the catalog says $sha: it is damaged" 2
    i=$((i + 1))
    total=$((total + size))
done </job/chain
((i > 0)) || fail "the chain to restore is empty"
log "preparing the full backup"
mariadb-backup --prepare "--target-dir=$SCRATCH/0" "--use-memory=$USE_MEMORY" >>"$OUT/prepare.log" 2>&1 \
    || fail "mariadb-backup --prepare of the full backup failed: $(tail -n 3 "$OUT/prepare.log" | tr '\n' ' ')"
for ((k = 1; k < i; k++)); do
    log "applying incremental $k of $((i - 1))"
    mariadb-backup --prepare "--target-dir=$SCRATCH/0" "--incremental-dir=$SCRATCH/$k" "--use-memory=$USE_MEMORY" \
        >>"$OUT/prepare.log" 2>&1 \
        || fail "mariadb-backup --prepare of incremental $k failed: $(tail -n 3 "$OUT/prepare.log" | tr '\n' ' ')"
    rm -rf "${SCRATCH:?}/$k"
done
cp "$SCRATCH/0/xtrabackup_checkpoints" "$OUT/checkpoints" 2>/dev/null || true
log "moving the prepared files into the data volume"
mariadb-backup --move-back --force-non-empty-directories "--target-dir=$SCRATCH/0" "--datadir=$DATA" \
    >>"$OUT/prepare.log" 2>&1 \
    || fail "mariadb-backup --move-back failed: $(tail -n 3 "$OUT/prepare.log" | tr '\n' ' ')"
echo "prepare=0 move=0" >"$OUT/status"
log "prepared $i backup(s), $total bytes read"
echo ok >"$OUT/done"
"""

SENDER = "".join((_COMMON, _SENDER))
RECEIVER = "".join((_COMMON, _RECEIVER))
PREPARE = "".join((_COMMON, _PREPARE))
