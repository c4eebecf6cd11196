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
"""

from __future__ import annotations

import shlex

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
fail() {
    printf '%s\n' "$1" >"$OUT/error"
    log "FAILED: $1"
    [[ -n ${PARTIAL:-} ]] && rm -f "$PARTIAL"
    exit "${2:-1}"
}
errtail() { [[ -s $1 ]] && tail -n 3 "$1" | tr '\n' ' '; }

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

if [[ $KIND == backup ]]; then
    exists=$("${SQL[@]}" -e "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='$DATABASE'") \
        || fail "cannot read the schema list: $(errtail "$OUT/connect.err")"
    [[ $exists == 1 ]] || fail "database $DATABASE does not exist on $DB_HOST:$DB_PORT" 2
    if [[ $CHECKSUMS == 1 ]]; then
        checksums "$DATABASE" "$OUT/checksums.before" \
            || fail "checksums before the dump failed: $(errtail "$OUT/checksum.err")"
        log "checksums of $(wc -l <"$OUT/checksums.before") tables taken"
    fi
    mkdir -p "${PARTIAL%/*}"
    rm -f "$PARTIAL"
    TMP=/tmp/drctl
    mkdir -p "$TMP"
    for f in raw_tail raw_count out_sha out_count; do mkfifo "$TMP/$f"; done
    tail -c 1024 <"$TMP/raw_tail" >"$OUT/dump_tail" & p_tail=$!
    wc -c <"$TMP/raw_count" >"$OUT/raw_bytes" & p_raw=$!
    sha256sum <"$TMP/out_sha" >"$OUT/sha256" & p_sha=$!
    wc -c <"$TMP/out_count" >"$OUT/bytes" & p_count=$!
    case $COMPRESSION in
        zstd) COMPRESS=(zstd -q -c -3 -T1) ;;
        gzip) COMPRESS=(gzip -c -6) ;;
        *) fail "unknown compression $COMPRESSION" ;;
    esac
    WRITE=(dd "of=$PARTIAL" bs=512k iflag=fullblock conv=fsync status=none)
    [[ $DIRECT == 1 ]] && WRITE+=(oflag=direct)
    log "dumping $DATABASE to ${PARTIAL#/backup/} ($COMPRESSION$([[ $DIRECT == 1 ]] && echo ', direct I/O'))"
    mariadb-dump "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --single-transaction \
        --routines --triggers --events --hex-blob --quick --default-character-set=utf8mb4 \
        --max-allowed-packet=1G "$DATABASE" 2>"$OUT/dump.err" \
        | tee "$TMP/raw_tail" "$TMP/raw_count" \
        | "${COMPRESS[@]}" \
        | tee "$TMP/out_sha" "$TMP/out_count" \
        | "${WRITE[@]}" 2>"$OUT/write.err"
    st=("${PIPESTATUS[@]}")
    wait "$p_tail"; s_tail=$?
    wait "$p_raw"; s_raw=$?
    wait "$p_sha"; s_sha=$?
    wait "$p_count"; s_count=$?
    printf 'dump=%s tee_raw=%s compress=%s tee_out=%s write=%s tail=%s raw_count=%s sha256=%s count=%s\n' \
        "${st[0]}" "${st[1]}" "${st[2]}" "${st[3]}" "${st[4]}" "$s_tail" "$s_raw" "$s_sha" "$s_count" \
        >"$OUT/status"
    for s in "${st[@]}" "$s_tail" "$s_raw" "$s_sha" "$s_count"; do
        [[ $s == 0 ]] || fail "a stage of the dump failed ($(<"$OUT/status")): $(errtail "$OUT/dump.err")$(errtail "$OUT/write.err")"
    done
    grep -q -- '-- Dump completed' "$OUT/dump_tail" \
        || fail "the dump has no completion marker: it stopped early: $(errtail "$OUT/dump.err")"
    if [[ $CHECKSUMS == 1 ]]; then
        checksums "$DATABASE" "$OUT/checksums.after" \
            || fail "checksums after the dump failed: $(errtail "$OUT/checksum.err")"
    fi
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
tables=$("${SQL[@]}" -e "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='$DATABASE'") \
    || fail "cannot read the tables of $DATABASE: $(errtail "$OUT/connect.err")"
if ((tables > 0)); then
    [[ $REPLACE == 1 ]] || fail "database $DATABASE on $DB_HOST:$DB_PORT has $tables tables or views: refusing to load into it (use --replace to drop it first)" 2
    log "dropping database $DATABASE ($tables tables or views): --replace"
    "${SQL[@]}" -e "DROP DATABASE \`$DATABASE\`" 2>"$OUT/connect.err" || fail "cannot drop $DATABASE: $(errtail "$OUT/connect.err")"
fi
"${SQL[@]}" -e "CREATE DATABASE IF NOT EXISTS \`$DATABASE\`" 2>"$OUT/connect.err" \
    || fail "cannot create database $DATABASE: $(errtail "$OUT/connect.err")"
case $COMPRESSION in
    zstd) DECOMPRESS=(zstd -q -d -c) ;;
    gzip) DECOMPRESS=(gzip -d -c) ;;
    *) fail "unknown compression $COMPRESSION" ;;
esac
log "loading $REL into $DATABASE on $DB_HOST:$DB_PORT"
"${READ[@]}" 2>"$OUT/read.err" | "${DECOMPRESS[@]}" 2>"$OUT/decompress.err" \
    | mariadb "--defaults-file=$CNF" "--host=$DB_HOST" "--port=$DB_PORT" --batch --max-allowed-packet=1G \
        --default-character-set=utf8mb4 "$DATABASE" 2>"$OUT/load.err"
st=("${PIPESTATUS[@]}")
printf 'read=%s decompress=%s load=%s\n' "${st[0]}" "${st[1]}" "${st[2]}" >"$OUT/status"
for s in "${st[@]}"; do
    [[ $s == 0 ]] || fail "a stage of the load failed ($(<"$OUT/status")): $(errtail "$OUT/load.err")$(errtail "$OUT/decompress.err")"
done
if [[ $CHECKSUMS == 1 ]]; then
    checksums "$DATABASE" "$OUT/checksums.restored" \
        || fail "checksums after the load failed: $(errtail "$OUT/checksum.err")"
fi
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


def parse_status(text: str) -> dict[str, int]:
    """``stage=code ...`` -> {stage: code}."""
    out = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else -1
    return out
