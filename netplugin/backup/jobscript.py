"""What runs inside a job container: one bash script for backups and restores,
and the SQL that builds per-table checksums.

The runner writes these into the job's folder on the host (mounted at /job),
with ``/job/params`` (plain settings, shell-quoted, never a secret). The image
is only binaries (scripts/make-db-images.sh), so the logic is versioned with
drctl, not with the image.

Credentials: every client reads ``--defaults-file=/run/drctl/client.cnf``, the
operator's option file mounted read-only: no password on a command line (``ps``)
or in the environment (``docker inspect``).

The gate: the script waits for ``/job/go`` before connecting to anything. The
runner opens it only after it has checked every limit in the cgroup files and
the bandwidth profile on the switch, so no byte moves unlimited.

Every stage's exit status is recorded (``/job/out/status``), never only the
pipeline's: ``dump | gzip`` returns gzip's status, and a failed dump would look
like a success.

The checksums of a backup are taken in the dump's own snapshot, so that they
describe exactly the rows in the file, however busy the source: a control
session takes ``FLUSH TABLES WITH READ LOCK`` (no commit can happen), a
checksum session opens ``START TRANSACTION WITH CONSISTENT SNAPSHOT``, the
dump starts with ``--single-transaction`` and the lock is released as soon as
the dump reports (``--verbose``: "Setting savepoint") that its transaction is
open. The lock waits at most ``LOCK_TIMEOUT`` seconds (``lock_wait_timeout``)
and is held at most that long; any failure drops the control session, and the
server releases the lock with it. The checksums then run in the snapshot while
the dump runs.
"""

from __future__ import annotations

import re
import shlex

from .model import check_database

SCRIPT = r"""#!/bin/bash
# drctl job: backup or restore. Written by drctl's runner; runs in the job container.
set -uo pipefail
umask 077
KIND=$1
OUT=/job/out
CNF=/run/drctl/client.cnf
# shellcheck disable=SC1091
source /job/params

log() { printf '%s drctl %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$KIND" "$*" >&2; }
# ON_FAIL: a function whose output (what it undid) ends the failure message.
ON_FAIL=
fail() {
    local msg=$1 undo=$ON_FAIL
    ON_FAIL=
    [[ -n $undo ]] && msg+=$($undo)
    printf '%s\n' "$msg" >"$OUT/error"
    log "FAILED: $msg"
    [[ -n ${PARTIAL:-} ]] && rm -f "$PARTIAL"
    exit "${2:-1}"
}
errtail() { [[ -s $1 ]] && grep -v -e '^-*$' "$1" | tail -n 3 | tr '\n' ' '; }

n=0
until [[ -e /job/go ]]; do
    [[ -e /job/abort ]] && fail "stopped by the runner before the start" 3
    ((n++ < 6000)) || fail "the runner did not open the gate within 10 minutes" 3
    sleep 0.1
done
[[ -e /job/abort ]] && fail "stopped by the runner before the start" 3
log "limits checked by the runner; starting"

SQL=(mariadb "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --batch --skip-column-names
    --connect-timeout=10 --default-character-set=utf8mb4)

# checksums SCHEMA FILE: per table "name engine rows checksum", all in one
# consistent snapshot. The checksum is SUM over rows of the first 64 bits of
# MD5(all columns, NULL flags): independent of row format, engine and row order.
checksums() {
    local gen q
    q=$(</job/bin/checksum-gen.sql)
    q=${q//@SCHEMA@/$1}
    gen=$("${SQL[@]}" --raw -e "$q" 2>"$OUT/checksum.err") || return 1
    {
        echo "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;"
        echo "START TRANSACTION WITH CONSISTENT SNAPSHOT;"
        printf '%s\n' "$gen"
        echo "COMMIT;"
    } | "${SQL[@]}" "$1" >"$2.tmp" 2>"$OUT/checksum.err" || return 1
    mv "$2.tmp" "$2"
}

"${SQL[@]}" -e 'SELECT VERSION()' >"$OUT/server_version" 2>"$OUT/connect.err" \
    || fail "cannot log in to $DB_HOST:$DB_PORT: $(errtail "$OUT/connect.err")" 2
log "connected to $DB_HOST:$DB_PORT, server $(<"$OUT/server_version")"

# A mariadb session fed statement by statement through a FIFO, its output in
# $TMP/NAME.out (flushed after every statement): session_open NAME [DB].
declare -A S_FD=() S_PID=()
# closefds: in a child, drop the sessions' input ends (a session sees the end
# of its input only when every copy of its FIFO's write end is closed).
closefds() {
    local fd
    for fd in "${S_FD[@]}"; do
        [[ -n $fd ]] && exec {fd}>&-
    done
    return 0
}
session_open() {
    local name=$1 fd
    shift
    mkfifo "$TMP/$name.in"
    (closefds; exec "${SQL[@]}" --unbuffered "$@") <"$TMP/$name.in" >"$TMP/$name.out" 2>"$OUT/$name.err" &
    S_PID[$name]=$!
    exec {fd}>"$TMP/$name.in"
    S_FD[$name]=$fd
}
# session_send NAME STATEMENT...: a session that died makes this fail, not the script.
session_send() {
    local name=$1
    shift
    [[ -n ${S_FD[$name]:-} ]] || return 1
    (trap '' PIPE; printf '%s\n' "$@" >&"${S_FD[$name]}") 2>/dev/null
}
# session_wait NAME MARKER SECONDS: until the session printed MARKER; 1 if it
# ended or the time ran out.
session_wait() {
    local name=$1 marker=$2 end=$((SECONDS + $3))
    until grep -qxF -- "$marker" "$TMP/$name.out" 2>/dev/null; do
        kill -0 "${S_PID[$name]}" 2>/dev/null || return 1
        ((SECONDS < end)) || return 1
        sleep 0.02
    done
}
# session_close NAME: end its input, wait for it; its exit status.
session_close() {
    local name=$1 fd=${S_FD[$1]:-}
    [[ -n $fd ]] || return 0
    exec {fd}>&-
    S_FD[$name]=
    wait "${S_PID[$name]}"
}
# session_kill NAME: drop the connection now (the server then releases its locks).
session_kill() {
    local name=$1 fd=${S_FD[$1]:-}
    [[ -n $fd ]] && exec {fd}>&-
    S_FD[$name]=
    [[ -n ${S_PID[$name]:-} ]] && kill "${S_PID[$name]}" 2>/dev/null
    return 0
}
# The global read lock must never outlive a failure.
unlock() { [[ -n ${S_FD[ctl]:-} ]] && session_kill ctl; return 0; }
# lapse START END: seconds between two `date +%s%N` readings, to the millisecond.
lapse() { local d=$(($2 - $1)); printf '%d.%03d' $((d / 1000000000)) $((d / 1000000 % 1000)); }
dumperr() { [[ -s $OUT/dump.err ]] && grep -v '^-- ' "$OUT/dump.err" | tail -n 3 | tr '\n' ' '; }

if [[ $KIND == backup ]]; then
    exists=$("${SQL[@]}" -e "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='$DATABASE'") \
        || fail "cannot read the schema list: $(errtail "$OUT/connect.err")"
    [[ $exists == 1 ]] || fail "database $DATABASE does not exist on $DB_HOST:$DB_PORT" 2
    # With the binary log on, the dump records its binlog coordinates (file,
    # position, GTID) read inside its own consistent snapshot: the start of a
    # point-in-time replay (binlog.py).
    log_bin=$("${SQL[@]}" -e 'SELECT @@log_bin' 2>"$OUT/connect.err") \
        || fail "cannot read @@log_bin: $(errtail "$OUT/connect.err")"
    COORDS=()
    [[ $log_bin == 1 ]] && COORDS=(--master-data=2 --gtid)
    mkdir -p "${PARTIAL%/*}"
    rm -f "$PARTIAL"
    TMP=/tmp/drctl
    mkdir -p "$TMP"
    trap unlock EXIT
    if [[ $CHECKSUMS == 1 ]]; then
        # The checksums must describe exactly the data in the dump: they are taken
        # in a snapshot opened together with the dump's. Under a short global read
        # lock (no commit can happen), the checksum session opens its snapshot, the
        # dump opens its own, and the lock is released as soon as the dump reports
        # that its transaction is open.
        t_lock=$(date +%s%N)
        session_open ctl
        session_send ctl "SET SESSION lock_wait_timeout=$LOCK_TIMEOUT, wait_timeout=$((LOCK_TIMEOUT * 2 + 30));" \
            "FLUSH TABLES WITH READ LOCK;" "SELECT UNIX_TIMESTAMP();" "SELECT 'drctl:locked';"
        session_wait ctl drctl:locked $((LOCK_TIMEOUT + 5)) \
            || fail "cannot take the global read lock on $DB_HOST:$DB_PORT within ${LOCK_TIMEOUT} s (it needs the RELOAD privilege and no long-running statement): $(errtail "$OUT/ctl.err")"
        t_locked=$(date +%s%N)
        # The server's clock while no commit can happen: the snapshot's time,
        # on the clock binlog events carry (a PITR's --at is compared to it).
        grep -xE '[0-9]{9,11}' "$TMP/ctl.out" | tail -n 1 >"$OUT/server_time"
        session_open chk "$DATABASE"
        session_send chk "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;" \
            "START TRANSACTION WITH CONSISTENT SNAPSHOT;" "SELECT 'drctl:snapshot';"
        session_wait chk drctl:snapshot "$LOCK_TIMEOUT" \
            || fail "cannot open the checksum snapshot: $(errtail "$OUT/chk.err")"
    fi
    for f in raw_head raw_tail raw_count out_sha out_count; do mkfifo "$TMP/$f"; done
    (closefds; head -c 16384 >"$OUT/dump_head"; exec cat >/dev/null) <"$TMP/raw_head" & p_head=$!
    (closefds; exec tail -c 4096) <"$TMP/raw_tail" >"$OUT/dump_tail" & p_tail=$!
    (closefds; exec wc -c) <"$TMP/raw_count" >"$OUT/raw_bytes" & p_raw=$!
    (closefds; exec sha256sum) <"$TMP/out_sha" >"$OUT/sha256" & p_sha=$!
    (closefds; exec wc -c) <"$TMP/out_count" >"$OUT/bytes" & p_count=$!
    case $COMPRESSION in
        zstd) COMPRESS=(zstd -q -c -3 -T1) ;;
        gzip) COMPRESS=(gzip -c -6) ;;
        *) fail "unknown compression $COMPRESSION" ;;
    esac
    WRITE=(dd "of=$PARTIAL" bs=512k iflag=fullblock conv=fsync status=none)
    [[ $DIRECT == 1 ]] && WRITE+=(oflag=direct)
    log "dumping $DATABASE to ${PARTIAL#/backup/} ($COMPRESSION$([[ $DIRECT == 1 ]] && echo ', direct I/O'))"
    # --verbose: the dump says on stderr when its transaction is open ("Setting
    # savepoint" follows START TRANSACTION WITH CONSISTENT SNAPSHOT).
    DUMP=(mariadb-dump "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --single-transaction
        --routines --triggers --events --hex-blob --quick --default-character-set=utf8mb4
        --max-allowed-packet=1G "${COORDS[@]}" --verbose "$DATABASE")
    printf '%s\n' "${DUMP[*]}" >"$OUT/dump_command"
    mariadb-dump --version >"$OUT/dump_version" 2>/dev/null
    (
        closefds
        "${DUMP[@]}" 2>"$OUT/dump.err" \
            | tee "$TMP/raw_head" "$TMP/raw_tail" "$TMP/raw_count" \
            | "${COMPRESS[@]}" \
            | tee "$TMP/out_sha" "$TMP/out_count" \
            | "${WRITE[@]}" 2>"$OUT/write.err"
        echo "${PIPESTATUS[*]}" >"$TMP/pipestatus"
    ) &
    p_dump=$!
    if [[ $CHECKSUMS == 1 ]]; then
        end=$((SECONDS + LOCK_TIMEOUT))
        until grep -qE '^-- (Setting savepoint|Retrieving table structure|Disconnecting from)' "$OUT/dump.err" 2>/dev/null; do
            kill -0 "$p_dump" 2>/dev/null || { unlock; wait "$p_dump"; fail "the dump ended before its transaction was open: $(dumperr)"; }
            ((SECONDS < end)) || { unlock; fail "the dump did not open its transaction within ${LOCK_TIMEOUT} s: $(dumperr)"; }
            sleep 0.02
        done
        session_send ctl "UNLOCK TABLES;" "SELECT 'drctl:unlocked';"
        session_wait ctl drctl:unlocked 10 || { unlock; fail "UNLOCK TABLES failed: $(errtail "$OUT/ctl.err")"; }
        session_close ctl || true
        t_unlock=$(date +%s%N)
        printf 'wait=%s held=%s\n' "$(lapse "$t_lock" "$t_locked")" "$(lapse "$t_locked" "$t_unlock")" >"$OUT/lock"
        log "global read lock: waited $(lapse "$t_lock" "$t_locked") s, held $(lapse "$t_locked" "$t_unlock") s"
        # Per table "name engine rows checksum", in the dump's snapshot, while the dump runs.
        q=$(</job/bin/checksum-gen.sql)
        gen=$("${SQL[@]}" --raw -e "${q//@SCHEMA@/$DATABASE}" 2>"$OUT/checksum.err") \
            || { session_kill chk; fail "cannot list the tables of $DATABASE: $(errtail "$OUT/checksum.err")"; }
        (session_send chk "$gen" "COMMIT;" "SELECT 'drctl:done';") &
        p_send=$!
    fi
    wait "$p_dump"
    read -r -a st <"$TMP/pipestatus" || st=(-1 -1 -1 -1 -1)
    wait "$p_head"; s_head=$?
    wait "$p_tail"; s_tail=$?
    wait "$p_raw"; s_raw=$?
    wait "$p_sha"; s_sha=$?
    wait "$p_count"; s_count=$?
    printf 'dump=%s tee_raw=%s compress=%s tee_out=%s write=%s head=%s tail=%s raw_count=%s sha256=%s count=%s\n' \
        "${st[0]}" "${st[1]}" "${st[2]}" "${st[3]}" "${st[4]}" "$s_head" "$s_tail" "$s_raw" "$s_sha" "$s_count" \
        >"$OUT/status"
    for s in "${st[@]}" "$s_head" "$s_tail" "$s_raw" "$s_sha" "$s_count"; do
        [[ $s == 0 ]] || fail "a stage of the dump failed ($(<"$OUT/status")): $(dumperr)$(errtail "$OUT/write.err")"
    done
    grep -q -- '-- Dump completed' "$OUT/dump_tail" \
        || fail "the dump has no completion marker: it stopped early: $(dumperr)"
    if [[ $CHECKSUMS == 1 ]]; then
        wait "$p_send"
        session_close chk || fail "checksums in the dump's snapshot failed: $(errtail "$OUT/chk.err")"
        grep -qxF drctl:done "$TMP/chk.out" || fail "checksums in the dump's snapshot did not finish: $(errtail "$OUT/chk.err")"
        grep -vxE 'drctl:(snapshot|done)' "$TMP/chk.out" >"$OUT/checksums"
        log "checksums of $(wc -l <"$OUT/checksums") tables taken in the dump's snapshot"
    fi
    # No lock: the server's clock after the dump, a bound the snapshot is not later than.
    [[ -s $OUT/server_time ]] || "${SQL[@]}" -e 'SELECT UNIX_TIMESTAMP()' >"$OUT/server_time" 2>/dev/null
    log "dump done: $(<"$OUT/raw_bytes") bytes of SQL, $(<"$OUT/bytes") bytes written"
    echo ok >"$OUT/done"
    exit 0
fi

# restore
FILE=/backup/$REL
[[ -f $FILE ]] || fail "backup file $REL is not in the volume" 2
size=$(stat -c %s "$FILE")
[[ $size == "$SIZE" ]] || fail "backup file $REL has $size bytes, the manifest says $SIZE: it is damaged" 2
READ=(dd "if=$FILE" bs=512k status=none)
[[ $DIRECT == 1 ]] && READ+=(iflag=direct)
log "checking the sha256 of $REL"
"${READ[@]}" 2>"$OUT/read.err" | sha256sum >"$OUT/file_sha256"
st=("${PIPESTATUS[@]}")
[[ ${st[0]} == 0 && ${st[1]} == 0 ]] || fail "cannot read $REL: $(errtail "$OUT/read.err")"
sum=$(<"$OUT/file_sha256")
[[ ${sum%% *} == "$SHA256" ]] || fail "backup file $REL has sha256 ${sum%% *}, the manifest says $SHA256: it is damaged" 2
# objects SCHEMA: "tables views triggers routines events" (counts).
objects() {
    "${SQL[@]}" -e "SELECT
        (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='$1' AND TABLE_TYPE='BASE TABLE'),
        (SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA='$1'),
        (SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='$1'),
        (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='$1'),
        (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA='$1')" 2>"$OUT/connect.err"
}
describe() { printf '%s tables, %s views, %s triggers, %s routines, %s events' "$@"; }
NOT_SWAPPED="--replace swaps base tables only: views, triggers, routines and events cannot move between schemas \
in one atomic step. Restore into a new schema (--database NEW_NAME) and switch to it, or drop them first"
# drop_work: drop the staging and old-table schemas (neither holds live data
# until the swap); prints what it did for the failure message.
drop_work() {
    local s left=()
    for s in "$STAGE" "$OLD"; do
        "${SQL[@]}" -e "DROP DATABASE IF EXISTS \`$s\`" 2>>"$OUT/cleanup.err" || left+=("$s")
    done
    if ((${#left[@]})); then
        printf '%s\n' "${left[@]}" >"$OUT/left_schemas"
        printf '; the live schema %s is unchanged; schema(s) %s could NOT be dropped (%s): drop them by hand' \
            "$DATABASE" "${left[*]}" "$(errtail "$OUT/cleanup.err")"
    else
        printf '; the live schema %s is unchanged and the staging schema %s was dropped' "$DATABASE" "$STAGE"
    fi
}
# undo_fresh: a load into a schema that had nothing leaves it as it was: gone,
# or empty again with its character set and collation.
undo_fresh() {
    local how
    if [[ -z $FRESH_CHARSET ]]; then
        how="DROP DATABASE IF EXISTS \`$DATABASE\`"
    else
        how="DROP DATABASE IF EXISTS \`$DATABASE\`; CREATE DATABASE \`$DATABASE\` CHARACTER SET $FRESH_CHARSET COLLATE $FRESH_COLLATION"
    fi
    if "${SQL[@]}" -e "$how" 2>>"$OUT/cleanup.err"; then
        printf '; schema %s is as it was before the restore (%s)' "$DATABASE" \
            "$([[ -z $FRESH_CHARSET ]] && echo 'absent' || echo 'empty')"
    else
        printf '; schema %s holds a partial load and could NOT be reset (%s): drop it by hand' "$DATABASE" \
            "$(errtail "$OUT/cleanup.err")"
    fi
}
# verify_loaded FILE: the loaded tables (FILE: name engine rows checksum) are
# the backup's, each with its rows and checksum (/job/expected_tables and
# /job/expected_checksums, from the manifest). Plain bash: nothing to be missing
# from the image, and any doubt fails.
verify_loaded() {
    local -A named=() want=() got=()
    local name engine rows sum missing=() extra=() bad=()
    while IFS= read -r name; do [[ -n $name ]] && named[$name]=1; done </job/expected_tables \
        || fail "cannot read the manifest's table list"
    while IFS=$'\t' read -r name rows sum; do [[ -n $name ]] && want[$name]="$rows $sum"; done \
        </job/expected_checksums || fail "cannot read the manifest's checksums"
    while IFS=$'\t' read -r name engine rows sum; do
        [[ -n $name ]] || continue
        got[$name]=1
        if [[ -z ${named[$name]:-} ]]; then
            extra+=("$name")
        elif [[ -n ${want[$name]:-} && ${want[$name]} != "$rows $sum" ]]; then
            bad+=("$name")
        fi
    done <"$1" || fail "cannot read the checksums of the load"
    for name in "${!named[@]}"; do
        [[ -n ${got[$name]:-} ]] || missing+=("$name")
    done
    ((${#missing[@]} + ${#extra[@]} == 0)) \
        || fail "the loaded tables are not the backup's (missing: ${missing[*]:-none}; not in the backup: ${extra[*]:-none})"
    ((${#bad[@]} == 0)) || fail "rows or checksums of the loaded tables differ from the manifest: ${bad[*]}"
}

TMP=/tmp/drctl
mkdir -p "$TMP"
live=$(objects "$DATABASE") || fail "cannot read the objects of $DATABASE: $(errtail "$OUT/connect.err")"
read -r l_tab l_view l_trg l_rtn l_evt <<<"$live"
if ((l_tab + l_view + l_trg + l_rtn + l_evt > 0)); then
    [[ $REPLACE == 1 ]] || fail "database $DATABASE on $DB_HOST:$DB_PORT has $(describe $live): refusing to load into it (use --replace to load into a staging schema, check it, then swap its tables in)" 2
    ((l_view + l_trg + l_rtn + l_evt == 0)) \
        || fail "database $DATABASE on $DB_HOST:$DB_PORT has $(describe $live): $NOT_SWAPPED; nothing was changed" 2
    [[ $CHECKSUMS == 1 ]] \
        || fail "--replace swaps tables in only once their rows and checksums match the backup's manifest, and this backup has none (made with --no-checksums, or --no-checksums was asked): restore into a new schema (--database NEW_NAME); nothing was changed" 2
    MODE=swap
    INTO=$STAGE
    ON_FAIL=drop_work
    log "loading into the staging schema $STAGE; $DATABASE ($l_tab tables) stays as it is until the swap"
    "${SQL[@]}" -e "DROP DATABASE IF EXISTS \`$STAGE\`; DROP DATABASE IF EXISTS \`$OLD\`; CREATE DATABASE \`$STAGE\`" \
        2>"$OUT/connect.err" || fail "cannot create the staging schema $STAGE: $(errtail "$OUT/connect.err")"
else
    MODE=fresh
    INTO=$DATABASE
    charset=$("${SQL[@]}" -e "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='$DATABASE'" 2>"$OUT/connect.err") \
        || fail "cannot read schema $DATABASE: $(errtail "$OUT/connect.err")"
    read -r FRESH_CHARSET FRESH_COLLATION <<<"$charset"
    [[ -z $FRESH_CHARSET || ($FRESH_CHARSET =~ ^[a-z0-9_]+$ && $FRESH_COLLATION =~ ^[a-z0-9_]+$) ]] \
        || fail "schema $DATABASE has an unexpected character set or collation"
    ON_FAIL=undo_fresh
    "${SQL[@]}" -e "CREATE DATABASE IF NOT EXISTS \`$DATABASE\`" 2>"$OUT/connect.err" \
        || fail "cannot create database $DATABASE: $(errtail "$OUT/connect.err")"
fi
case $COMPRESSION in
    zstd) DECOMPRESS=(zstd -q -d -c) ;;
    gzip) DECOMPRESS=(gzip -d -c) ;;
    *) fail "unknown compression $COMPRESSION" ;;
esac
log "loading $REL into $INTO on $DB_HOST:$DB_PORT"
# status=progress: dd says every second how many bytes it read, which the
# agent reads back as the restore's progress (runner._bytes_so_far).
"${READ[@]}" status=progress 2>"$OUT/read.err" | "${DECOMPRESS[@]}" 2>"$OUT/decompress.err" \
    | mariadb "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --batch --max-allowed-packet=1G \
        --default-character-set=utf8mb4 "$INTO" 2>"$OUT/load.err"
st=("${PIPESTATUS[@]}")
printf 'read=%s decompress=%s load=%s\n' "${st[0]}" "${st[1]}" "${st[2]}" >"$OUT/status"
for s in "${st[@]}"; do
    [[ $s == 0 ]] || fail "a stage of the load failed ($(<"$OUT/status")): $(errtail "$OUT/load.err")$(errtail "$OUT/decompress.err")"
done
if [[ $MODE == swap ]]; then
    staged=$(objects "$STAGE") || fail "cannot read the objects of $STAGE: $(errtail "$OUT/connect.err")"
    read -r s_tab s_view s_trg s_rtn s_evt <<<"$staged"
    ((s_view + s_trg + s_rtn + s_evt == 0)) || fail "the backup holds $(describe $staged): $NOT_SWAPPED" 2
fi
if [[ $CHECKSUMS == 1 ]]; then
    checksums "$INTO" "$OUT/checksums.restored" \
        || fail "checksums after the load failed: $(errtail "$OUT/checksum.err")"
    verify_loaded "$OUT/checksums.restored"
    log "every table's rows and checksum match the manifest"
fi
if [[ ${REPLAY:-0} == 1 ]]; then
    # Point in time: the archived binlogs from the backup's position up to the
    # first event at or after the asked time (pitr.py), into the loaded schema;
    # a failure leaves it as it was before the restore (undo_fresh).
    mapfile -t RARGV </job/replay.argv
    log "replaying: ${RARGV[*]:1}"
    (cd "$REPLAY_DIR" && TZ=UTC exec "${RARGV[@]}") 2>"$OUT/replay.err" \
        | "${SQL[@]}" --max-allowed-packet=1G "$INTO" 2>"$OUT/replay_load.err"
    st=("${PIPESTATUS[@]}")
    printf 'decode=%s apply=%s\n' "${st[0]}" "${st[1]}" >"$OUT/replay_status"
    [[ ${st[0]} == 0 && ${st[1]} == 0 ]] \
        || fail "the binlog replay failed ($(<"$OUT/replay_status")): $(errtail "$OUT/replay.err")$(errtail "$OUT/replay_load.err")"
    checksums "$INTO" "$OUT/checksums.replayed" || fail "checksums after the replay failed: $(errtail "$OUT/checksum.err")"
    log "replayed; $(wc -l <"$OUT/checksums.replayed") tables checksummed"
fi
if [[ $MODE == swap ]]; then
    # One RENAME TABLE moves every live table out to $OLD and every staged one in:
    # atomic in the server, so the live schema is either all old or all new.
    q="SET SESSION group_concat_max_len = 16777216;
SELECT CONCAT('RENAME TABLE ', GROUP_CONCAT(r ORDER BY o, t SEPARATOR ', '), ';') FROM (
  SELECT 1 o, TABLE_NAME t, CONCAT('\`$DATABASE\`.\`', REPLACE(TABLE_NAME, '\`', '\`\`'), '\` TO \`$OLD\`.\`',
    REPLACE(TABLE_NAME, '\`', '\`\`'), '\`') r
  FROM information_schema.TABLES WHERE TABLE_SCHEMA = '$DATABASE' AND TABLE_TYPE = 'BASE TABLE'
  UNION ALL
  SELECT 2, TABLE_NAME, CONCAT('\`$STAGE\`.\`', REPLACE(TABLE_NAME, '\`', '\`\`'), '\` TO \`$DATABASE\`.\`',
    REPLACE(TABLE_NAME, '\`', '\`\`'), '\`')
  FROM information_schema.TABLES WHERE TABLE_SCHEMA = '$STAGE' AND TABLE_TYPE = 'BASE TABLE') s;"
    rename=$("${SQL[@]}" --raw -e "$q" 2>"$OUT/connect.err") || fail "cannot list the tables to swap: $(errtail "$OUT/connect.err")"
    "${SQL[@]}" -e "CREATE DATABASE \`$OLD\`" 2>"$OUT/connect.err" \
        || fail "cannot create schema $OLD for the old tables: $(errtail "$OUT/connect.err")"
    "${SQL[@]}" -e "SET SESSION foreign_key_checks = 0; $rename" 2>"$OUT/swap.err" \
        || fail "the swap (one RENAME TABLE) failed, so nothing moved: $(errtail "$OUT/swap.err")"
    ON_FAIL=
    log "swapped: $s_tab tables of the backup are in $DATABASE; its $l_tab old tables are in $OLD"
    left=()
    for s in "$OLD" "$STAGE"; do
        "${SQL[@]}" -e "DROP DATABASE IF EXISTS \`$s\`" 2>>"$OUT/cleanup.err" || left+=("$s")
    done
    ((${#left[@]} == 0)) || printf '%s\n' "${left[@]}" >"$OUT/left_schemas"
    printf 'in=%s out=%s\n' "$s_tab" "$l_tab" >"$OUT/swap"
    log "old tables dropped${left[*]:+; NOT dropped: ${left[*]} ($(errtail "$OUT/cleanup.err"))}"
fi
ON_FAIL=
log "load done"
echo ok >"$OUT/done"
"""

CHECKSUM_GEN_SQL = r"""SET SESSION group_concat_max_len = 16777216;
SELECT CONCAT(
  'SELECT ', QUOTE(t.TABLE_NAME), ', ', QUOTE(IFNULL(t.ENGINE, '')), ', COUNT(*), ',
  'COALESCE(SUM(CAST(CONV(SUBSTRING(MD5(CONCAT_WS(''#'', ',
  GROUP_CONCAT(CONCAT('`', REPLACE(c.COLUMN_NAME, '`', '``'), '`') ORDER BY c.ORDINAL_POSITION SEPARATOR ', '),
  ', CONCAT(',
  GROUP_CONCAT(CONCAT('ISNULL(`', REPLACE(c.COLUMN_NAME, '`', '``'), '`)') ORDER BY c.ORDINAL_POSITION SEPARATOR ', '),
  '))), 1, 16), 16, 10) AS UNSIGNED)), 0) FROM `', REPLACE(t.TABLE_NAME, '`', '``'), '`;')
FROM information_schema.TABLES t
JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME
WHERE t.TABLE_SCHEMA = '@SCHEMA@' AND t.TABLE_TYPE = 'BASE TABLE'
GROUP BY t.TABLE_NAME, t.ENGINE
ORDER BY t.TABLE_NAME;
"""


def staging_names(database: str, job_id: str) -> tuple[str, str]:
    """The schemas a ``--replace`` restore of job_id uses beside ``database``:
    (staging, old tables), e.g. ``shop__drctl_stage_a1b2c3``; within MariaDB's
    64 characters (the database's name is shortened to fit) and checked as
    plain identifiers, since they go into SQL."""
    short = job_id.rsplit("-", 1)[-1]
    if not re.fullmatch(r"[0-9a-f]{1,12}", short):
        raise ValueError(f"job id {job_id!r} does not end in -<hex> (as drctl's job ids do)")
    names = []
    for kind in ("stage", "old"):
        suffix = f"__drctl_{kind}_{short}"
        names.append(check_database(database[:64 - len(suffix)] + suffix, "staging schema"))
    return names[0], names[1]


def expected_files(manifest: dict) -> tuple[str, str]:
    """What a restore must find after its load, from the backup's manifest:
    every table's name (one a line), and ``name<TAB>rows<TAB>checksum`` of each
    table whose checksum describes the dumped rows (format 1 may lack some)."""
    tables: dict = manifest.get("tables") or {}
    names, sums = [], []
    for name, want in sorted(tables.items()):
        if "\n" in name or "\t" in name:
            raise ValueError(f"table name {name!r} in the manifest holds a tab or newline")
        names.append(name)
        if want.get("consistent") is not False:
            sums.append(f"{name}\t{int(want['rows'])}\t{want['checksum']}")
    return "".join(n + "\n" for n in names), "".join(x + "\n" for x in sums)


def params_text(values: dict) -> str:
    """``KEY='value'`` lines for bash's ``source``; only plain, non-secret settings."""
    lines = []
    for key, value in sorted(values.items()):
        if not key.isidentifier() or not key.isupper():
            raise ValueError(f"bad parameter name {key!r}")
        if isinstance(value, bool):
            value = int(value)
        lines.append(f"{key}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def parse_checksums(text: str) -> dict[str, dict]:
    """``name<TAB>engine<TAB>rows<TAB>checksum`` lines -> {name: {engine, rows, checksum}}."""
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise ValueError(f"unexpected checksum line {line!r}")
        out[parts[0]] = {"engine": parts[1], "rows": int(parts[2]), "checksum": parts[3]}
    return out


def parse_lock(text: str) -> dict[str, float]:
    """``wait=0.031 held=0.120`` (seconds) -> {"wait": 0.031, "held": 0.12}."""
    out = {}
    for word in text.split():
        key, _, value = word.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def parse_status(text: str) -> dict[str, int]:
    """``stage=code ...`` -> {stage: code}."""
    out = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else -1
    return out
