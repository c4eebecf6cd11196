#!/usr/bin/env bash
# Build the MariaDB images of the backup companion (drctl) from this host's
# Debian binaries. No registry is reachable, so each image is a root folder of
# host binaries plus the libraries `ldd` lists, imported with `docker import`.
#
#   netplugin/mariadb:10.11        mariadbd, a pre-initialised data folder, an entry script
#   netplugin/mariadb-tools:10.11  bash, coreutils, gzip, zstd, mariadb-dump, mariadb-binlog and mariadb:
#                                  what drctl's backup and restore jobs run
#
# Idempotent: an image whose label matches the inputs (package versions and this
# script) is kept; always smoke-tests both (cheap, catches a sick daemon).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

SERVER_IMAGE=${DRCTL_SERVER_IMAGE:-netplugin/mariadb:10.11}
TOOLS_IMAGE=${DRCTL_TOOLS_IMAGE:-netplugin/mariadb-tools:10.11}
DB_UID=999 # the mysql user inside the server image (not the host's)

docker_up || die "docker is not answering; run scripts/services.sh start"
for p in mariadb-server-core mariadb-client mariadb-client-core mariadb-backup socat coreutils bash gzip zstd grep; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || die "$p is not installed; run scripts/install-deps.sh"
done

# The inputs: every package we copy from, and this script itself.
VERSION=$({
    dpkg-query -W mariadb-server-core mariadb-client mariadb-client-core mariadb-backup socat coreutils bash gzip zstd grep libc6
    sha256sum "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)

WORKDIR=$(mktemp -d /tmp/netplugin-db-images.XXXXXX)
trap 'rm -rf "$WORKDIR"' EXIT

# add_bin ROOT PATH...: copy each binary and every library ldd lists (the
# dynamic loader included), at the same paths, symlinks resolved.
add_bin() {
    local root=$1 bin lib
    shift
    for bin in "$@"; do
        [[ -x $bin ]] || die "$bin is missing"
        mkdir -p "$root$(dirname "$bin")"
        cp -L "$bin" "$root$bin"
        while read -r lib; do
            [[ -e $root$lib ]] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done < <(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
    done
}

COREUTILS=(cat cp chmod chown date dd env head id ln ls mkdir mkfifo mv rm sha256sum sleep
    sort stat tail tee timeout touch tr wc cut sync)

base_root() {
    local root=$1 c
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,run,var/run}
    install -d -m 1777 "$root/tmp"
    add_bin "$root" /bin/bash /bin/grep
    for c in "${COREUTILS[@]}"; do add_bin "$root" "/bin/$c"; done
    ln -sfn bash "$root/bin/sh"
    printf 'root:x:0:0:root:/root:/bin/bash\nmysql:x:%d:%d:MariaDB:/nonexistent:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        "$DB_UID" "$DB_UID" >"$root/etc/passwd"
    printf 'root:x:0:\nmysql:x:%d:\nnogroup:x:65534:\n' "$DB_UID" >"$root/etc/group"
}

import_root() { # ROOT IMAGE ENTRYPOINT-JSON CMD-JSON
    tar -C "$1" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENTRYPOINT $3" \
        --change "CMD $4" \
        --change "LABEL netplugin.db-images.version=$VERSION" \
        - "$2" >/dev/null
}

MY_CNF='[client-server]
socket = /run/mysqld/mysqld.sock

[mariadbd]
user = mysql
datadir = /var/lib/mysql
pid-file = /run/mysqld/mysqld.pid
bind-address = 0.0.0.0
port = 3306
skip-name-resolve
lc-messages-dir = /usr/share/mysql
plugin-dir = /usr/lib/mysql/plugin
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
innodb_buffer_pool_size = 128M
innodb_log_file_size = 32M
max_allowed_packet = 64M
# Binary log, for point-in-time recovery (drctl binlog, drctl restore --at):
# row events with full before and after images, so a replay needs nothing
# but the log; a commit is on disk in the log before it is acknowledged. Every
# server of a replication topology needs its own server_id (1 is fine for
# servers that are not replicas of each other: the binlog collector connects
# with an id of its own). Logs are purged after 7 days: the archive must be
# collected before that.
log_bin = mariadb-bin
server_id = 1
binlog_format = ROW
binlog_row_image = FULL
sync_binlog = 1
expire_logs_days = 7
max_binlog_size = 64M
'

# The entry script: copy the pre-initialised data folder on first start, apply
# an optional init file (mounted secret: passwords never in argv or env), run.
# shellcheck disable=SC2016 # expanded by the container's bash, not here
DB_ENTRY='#!/bin/bash
set -euo pipefail
if [[ ! -d /var/lib/mysql/mysql ]]; then
    cp -a /usr/share/drdb/datadir/. /var/lib/mysql/
fi
chown -R mysql:mysql /var/lib/mysql /run/mysqld
args=()
if [[ -f /run/secrets/db-init.sql ]]; then # root-only secret: hand mariadbd a private copy
    cp /run/secrets/db-init.sql /run/mysqld/init.sql
    chown mysql:mysql /run/mysqld/init.sql
    chmod 600 /run/mysqld/init.sql
    args+=(--init-file=/run/mysqld/init.sql)
fi
exec /usr/sbin/mariadbd "${args[@]}" "$@"
'

build_server() {
    local root=$WORKDIR/server
    base_root "$root"
    add_bin "$root" /usr/sbin/mariadbd /usr/bin/mariadb /usr/bin/mariadb-admin
    mkdir -p "$root/usr/share" "$root/usr/lib/mysql" "$root/etc/mysql" "$root/var/lib/mysql" \
        "$root/run/mysqld" "$root/usr/share/drdb" "$root/usr/local/bin"
    cp -a /usr/share/mysql "$root/usr/share/mysql"
    cp -a /usr/lib/mysql/plugin "$root/usr/lib/mysql/plugin"
    # Plugins are loaded on demand; their libraries are copied too.
    local so
    for so in "$root"/usr/lib/mysql/plugin/*.so; do
        while read -r lib; do
            [[ -e $root$lib ]] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
        done < <(ldd "$so" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
    done
    printf '%s' "$MY_CNF" >"$root/etc/mysql/my.cnf"
    printf '%s' "$DB_ENTRY" >"$root/usr/local/bin/db-entry"
    chmod 755 "$root/usr/local/bin/db-entry"

    # The data folder, initialised once here with the same settings; each
    # container copies it on first start (about 0.1 s instead of a bootstrap).
    local data=$WORKDIR/datadir
    mkdir -p "$data"
    printf '%s' "$MY_CNF" | sed "s|^user = mysql|user = root|; s|^datadir = .*|datadir = $data|; /^socket/d; /^pid-file/d; /^log_bin/d" \
        >"$WORKDIR/install.cnf"
    mariadb-install-db --defaults-file="$WORKDIR/install.cnf" --user=root --datadir="$data" \
        --auth-root-authentication-method=normal --skip-test-db >"$WORKDIR/install-db.log" 2>&1 \
        || die "mariadb-install-db failed: $(tail -n 20 "$WORKDIR/install-db.log")"
    # install-db also makes password-less root@127.0.0.1, root@::1 and root@<this host>:
    # they would shadow a root@'%' made by the init file for TCP clients. Keep root@localhost
    # (the socket, for docker exec) only.
    printf "DELETE FROM mysql.global_priv WHERE User='root' AND Host<>'localhost';\nDELETE FROM mysql.proxies_priv WHERE Host<>'localhost';\n" \
        | mariadbd --defaults-file="$WORKDIR/install.cnf" --bootstrap --user=root --datadir="$data" \
            --log-warnings=0 >>"$WORKDIR/install-db.log" 2>&1 \
        || die "removing the extra root accounts failed: $(tail -n 20 "$WORKDIR/install-db.log")"
    cp -a "$data" "$root/usr/share/drdb/datadir"
    chown -R "$DB_UID:$DB_UID" "$root/usr/share/drdb/datadir" "$root/var/lib/mysql" "$root/run/mysqld"
    # docker run IMAGE --port=3307 ...: arguments go to mariadbd
    import_root "$root" "$SERVER_IMAGE" '["/usr/local/bin/db-entry"]' '[]'
}

build_tools() {
    local root=$WORKDIR/tools
    base_root "$root"
    add_bin "$root" /usr/bin/mariadb-dump /usr/bin/mariadb /usr/bin/mariadb-admin /usr/bin/mariadb-binlog /bin/gzip /usr/bin/zstd
    # physical backups (drctl run --method physical): mariadb-backup reads, mbstream
    # packs and unpacks, socat is the receiver's listener on the job's network
    add_bin "$root" /usr/bin/mariadb-backup /usr/bin/mbstream /usr/bin/socat
    mkdir -p "$root/usr/share/mysql"
    cp -a /usr/share/mysql/charsets "$root/usr/share/mysql/charsets"
    cp -a /usr/share/mysql/english "$root/usr/share/mysql/english"
    import_root "$root" "$TOOLS_IMAGE" '[]' '["/bin/bash"]'
}

for pair in "server:$SERVER_IMAGE" "tools:$TOOLS_IMAGE"; do
    kind=${pair%%:*} image=${pair#*:}
    have=$("$DOCKER" image inspect -f '{{index .Config.Labels "netplugin.db-images.version"}}' \
        "$image" 2>/dev/null || true)
    if [[ $have == "$VERSION" ]]; then
        log "$image present ($VERSION)"
    else
        log "building $image ($VERSION)"
        start=$SECONDS
        old=$("$DOCKER" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
        "build_$kind"
        log "$image built in $((SECONDS - start)) s"
        # the previous build, now untagged (kept if a container still uses it)
        if [[ -n $old ]]; then "$DOCKER" rmi "$old" >/dev/null 2>&1 || true; fi
    fi
done

# Smoke tests, without a network: the binaries start and find their libraries.
# shellcheck disable=SC2016 # the $c below is for the container's shell
"$DOCKER" run --rm --network none "$TOOLS_IMAGE" bash -c '
    set -e
    for c in mariadb-dump mariadb mariadb-binlog mariadb-backup mbstream socat gzip zstd sha256sum dd tee tail wc mkfifo timeout grep; do
        command -v "$c" >/dev/null || { echo "missing: $c"; exit 1; }
    done
    mariadb-dump --version >/dev/null && mariadb --version >/dev/null && zstd -V >/dev/null' \
    || die "$TOOLS_IMAGE smoke test failed (see the message above)"
"$DOCKER" run --rm --network none --entrypoint /usr/sbin/mariadbd "$SERVER_IMAGE" --version >/dev/null \
    || die "$SERVER_IMAGE smoke test failed"
log "$SERVER_IMAGE and $TOOLS_IMAGE ok"
