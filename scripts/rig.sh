#!/usr/bin/env bash
# rig.sh start|stop|status|env: two netplugin "hosts" on this one machine,
# joined by a VLAN trunk, each driven by its own dockerd. Used by
# tests/multihost, scripts/demo-multihost.sh and bench/bench_multihost.py.
# Design and reasons: docs/multihost.md.
#
#   host a                                     host b
#   dockerd (own mount ns, data root,          dockerd (same, for b)
#     exec root, containerd namespace)
#     sees /run/docker/plugins = $RIG_RUN/a/run-docker/plugins
#   netplugin --host-id rig-a                  netplugin --host-id rig-b
#     socket .../a/run-docker/plugins/netplugin.sock
#   OVS bridge nprig-a (netdev)                OVS bridge nprig-b (netdev)
#     uplink nptrunk-a (trunk) <---- veth ----> nptrunk-b (trunk)
#
# Both daemons share one etcd (or cluster) and one prefix. Each Docker calls its
# driver 'netplugin', exactly as on a real host, and neither touches the main
# dockerd, the default plugin socket, nor the npe2e*/nptest* names that other
# suites use at the same time.
#
# Options (or environment), for start:
#   --etcd-endpoints URLS   (RIG_ETCD_ENDPOINTS, default http://127.0.0.1:2379)
#   --etcd-prefix P         (RIG_ETCD_PREFIX, default /netplugin/rig; must start /netplugin/rig)
#   --python PY             (RIG_PYTHON, default $REPO/.venv/bin/python, else /tmp/venv/bin/python)
# start is idempotent: what is healthy is reused; plugin daemons running with
# other settings are restarted. stop removes everything the rig made,
# including its etcd prefix and the dockerds' data roots; it is safe to run
# at any time and repeatedly. status exits 0 when every piece is up.
set -euo pipefail
shopt -s nullglob
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HOSTS=(a b)
RIG_RUN=/run/netplugin-rig              # sockets, exec roots, pid files (wiped by reset-state too)
RIG_LIB=/var/lib/netplugin-rig          # dockerd data roots (must be a disk for overlay2)
RIG_LOGS=$NP_CI_LOGS
IMAGE=netplugin/busybox:latest
CONTAINERD_SOCK=/run/containerd/containerd.sock

host_id() { echo "rig-$1"; }
bridge_of() { echo "nprig-$1"; }
trunk_of() { echo "nptrunk-$1"; }
# Each rig dockerd's default "bridge" network: a Linux bridge of its own. Never
# --bridge=none: a dockerd started with it DELETES the link docker0 on start-up
# (moby's removeDefaultBridgeInterface), which is the main dockerd's bridge.
dbridge_of() { echo "nprigd-$1"; }
dbridge_addr() { if [[ $1 == a ]]; then echo 10.238.1.1/24; else echo 10.238.2.1/24; fi; }
docker_sock() { echo "$RIG_RUN/$1/docker.sock"; }
plugin_dir() { echo "$RIG_RUN/$1/run-docker/plugins"; }     # what host $1's dockerd sees as /run/docker/plugins
plugin_sock() { echo "$(plugin_dir "$1")/netplugin.sock"; }
data_root() { echo "$RIG_LIB/$1/docker"; }
ctrd_ns() { echo "netplugin-rig-$1"; }
rdocker() {   # rdocker HOST ARGS...: the 20.10 client against that host's dockerd, bounded
    local h=$1
    shift
    timeout 60 "$DOCKER" -H "unix://$(docker_sock "$h")" "$@"
}

# --- helpers ---------------------------------------------------------------------

# alive_pid FILE WORD: the pid in FILE if that process lives and its argv contains WORD.
alive_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
    echo "$pid"
}

# rig_pids KIND HOST: pids of the rig's processes found by what they run with, for
# when the pid files are gone (say /run was wiped): dockerds by their exec root in
# argv, plugin daemons by their socket in the environment.
rig_pids() {
    local kind=$1 h=$2 d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        case $kind in
            dockerd)
                tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -q -- "^dockerd .*--exec-root $RIG_RUN/$h/exec " \
                    && echo "$pid" ;;
            plugin)
                tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -q -- "-m netplugin.daemon" \
                    && tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qx -- "NETPLUGIN_SOCKET=$(plugin_sock "$h")" \
                    && echo "$pid" ;;
        esac
    done
    return 0
}

# stop_group PID NAME SECS: TERM the process group led by PID, wait, then KILL it.
stop_group() {
    local pid=$1 name=$2 secs=$3
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "WARNING: $name (pid $pid) ignored SIGTERM for ${secs}s, sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    fi
}

rig_docker_up() { [[ -S $(docker_sock "$1") ]] && rdocker "$1" info >/dev/null 2>&1; }

plugin_answers() {
    local sock
    sock=$(plugin_sock "$1")
    [[ -S $sock ]] || return 1
    # Plugin.Activate, as dockerd sends it; Debian's python3 (stdlib only), so
    # this also works in stop when no venv exists.
    timeout 5 /usr/bin/python3 - "$sock" <<'EOF' >/dev/null 2>&1
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
ok = head.split()[1] == b"200" and "NetworkDriver" in json.loads(body).get("Implements", [])
sys.exit(0 if ok else 1)
EOF
}

uplink_on_bridge() {
    [[ $(ovs-vsctl --timeout=5 port-to-br "$(trunk_of "$1")" 2>/dev/null) == "$(bridge_of "$1")" ]]
}

pick_python() {
    if [[ -n ${OPT_PYTHON:-} ]]; then
        PY=$OPT_PYTHON
    elif [[ -x $REPO/.venv/bin/python ]]; then
        PY=$REPO/.venv/bin/python
    else
        PY=/tmp/venv/bin/python
    fi
    [[ -x $PY ]] || die "no python at $PY: run scripts/install-deps.sh or give --python"
    "$PY" -c 'import netplugin' 2>/dev/null || die "$PY cannot import netplugin (install the package into it)"
}

# --- the trunk ---------------------------------------------------------------------

start_trunk() {
    local a b
    a=$(trunk_of a)
    b=$(trunk_of b)
    if ! ip link show dev "$a" >/dev/null 2>&1; then
        ip link del dev "$b" 2>/dev/null || true
        log "trunk: veth $a <-> $b"
        ip link add "$a" type veth peer name "$b"
    fi
    local end
    for end in "$a" "$b"; do
        ip link set dev "$end" up
        # Userspace datapath: TCP fails unless tx checksum offload is off on
        # every veth it sends into (docs/design.md, platform notes).
        ethtool -K "$end" tx off >/dev/null 2>&1 || die "ethtool -K $end tx off failed"
        # No IPv6 link-local chatter (router solicitations) in trunk captures.
        sysctl -q -w "net.ipv6.conf.$end.disable_ipv6=1" 2>/dev/null || true
    done
}

# --- one host's dockerd --------------------------------------------------------------

start_dockerd() {
    local h=$1 run=$RIG_RUN/$1 root
    root=$(data_root "$h")
    if rig_docker_up "$h"; then log "host $h: dockerd already up"; return; fi
    # A dead dockerd's leftovers: its pid file (a new one refuses to start), its
    # containerd tasks, its mounts. stop_host clears all of it.
    stop_dockerd "$h"
    mkdir -p "$run/run-docker/plugins" "$run/exec" "$root" "$RIG_LOGS" /run/docker
    chmod 700 "$run"
    echo '{}' >"$run/daemon.json"    # never read the host's /etc/docker/daemon.json
    # overlay2 mounts a container's root inside dockerd's mount namespace, but
    # runc runs in containerd's (the root one): the data root must be a shared
    # mount whose peer lives in the root namespace, made BEFORE the unshare.
    if ! mountpoint -q "$root"; then mount --bind "$root" "$root"; fi
    mount --make-shared "$root"
    local dbr
    dbr=$(dbridge_of "$h")
    ip link show dev "$dbr" >/dev/null 2>&1 || ip link add "$dbr" type bridge
    ip addr replace "$(dbridge_addr "$h")" dev "$dbr"
    ip link set dev "$dbr" up
    local logf=$RIG_LOGS/rig-dockerd-$h.log
    printf '\n==== %s starting rig dockerd %s\n' "$(date -Is)" "$h" >>"$logf"
    log "host $h: dockerd (mount namespace, data $root, socket $(docker_sock "$h"))"
    # In the new mount namespace only: /run/docker is a private directory, so
    # this dockerd finds its plugins in $run/run-docker/plugins. The mount that
    # holds /run/docker is made private first so the bind never propagates back.
    # setsid execs unshare in place, which execs sh, which execs dockerd: $! is dockerd.
    setsid unshare --mount --propagation unchanged -- /bin/sh -euc '
        mount --make-private "$(findmnt -n -o TARGET --target /run/docker)"
        mount --bind "$1" /run/docker
        shift
        exec "$@"' rig-mountns "$run/run-docker" \
        dockerd \
        --config-file "$run/daemon.json" \
        --host "unix://$(docker_sock "$h")" \
        --data-root "$root" \
        --exec-root "$run/exec" \
        --pidfile "$run/docker.pid" \
        --containerd "$CONTAINERD_SOCK" \
        --containerd-namespace "$(ctrd_ns "$h")" \
        --containerd-plugins-namespace "$(ctrd_ns "$h")-plugins" \
        --storage-driver overlay2 \
        --exec-opt native.cgroupdriver=cgroupfs \
        --bridge "$dbr" --iptables=false --ip-forward=false --ip-masq=false \
        >>"$logf" 2>&1 </dev/null &
    echo $! >"$run/dockerd.pid"
    wait_for rig_docker_up "$h" 60 || die "host $h: dockerd not answering after 60 s; see $logf"
}

ensure_image() {
    local h=$1
    if rdocker "$h" image inspect "$IMAGE" >/dev/null 2>&1; then return; fi
    docker_up || die "the main dockerd is not answering: it holds $IMAGE (scripts/services.sh start)"
    "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "$IMAGE is missing: run scripts/make-images.sh"
    log "host $h: loading $IMAGE"
    timeout 60 "$DOCKER" save "$IMAGE" | rdocker "$h" load >/dev/null \
        || die "host $h: could not load $IMAGE"
}

stop_dockerd() {
    local h=$1 run=$RIG_RUN/$1 pid ns
    pid=$(alive_pid "$run/dockerd.pid" dockerd || alive_pid "$run/docker.pid" dockerd || true)
    if [[ -n $pid ]]; then
        # With live-restore off, dockerd stops its containers on SIGTERM.
        stop_group "$pid" "host $h dockerd" 30
    fi
    for pid in $(rig_pids dockerd "$h"); do
        if kill -0 "$pid" 2>/dev/null; then stop_group "$pid" "host $h dockerd (no pid file)" 30; fi
    done
    rm -f "$run/dockerd.pid" "$run/docker.pid"
    # Tasks left in containerd by a dockerd that died hard.
    ns=$(ctrd_ns "$h")
    if timeout 5 ctr --address "$CONTAINERD_SOCK" namespaces ls -q 2>/dev/null | grep -qx "$ns"; then
        local c
        for c in $(timeout 10 ctr -n "$ns" tasks ls -q 2>/dev/null || true); do
            timeout 10 ctr -n "$ns" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
            timeout 10 ctr -n "$ns" tasks rm -f "$c" >/dev/null 2>&1 || true
        done
        for c in $(timeout 10 ctr -n "$ns" containers ls -q 2>/dev/null || true); do
            timeout 10 ctr -n "$ns" containers rm "$c" >/dev/null 2>&1 || true
        done
        timeout 5 ctr namespaces rm "$ns" >/dev/null 2>&1 || true
        timeout 5 ctr namespaces rm "$ns-plugins" >/dev/null 2>&1 || true
    fi
    # The shared data root and whatever container mounts propagated out of it.
    local root
    root=$(data_root "$h")
    if mountpoint -q "$root"; then umount -R -l "$root" 2>/dev/null || log "WARNING: could not unmount $root"; fi
    ip link del dev "$(dbridge_of "$h")" 2>/dev/null || true
}

# --- one host's plugin daemon --------------------------------------------------------

settings_line() { printf 'etcd=%s prefix=%s python=%s' "$ETCD_ENDPOINTS" "$ETCD_PREFIX" "$PY"; }

start_plugin() {
    local h=$1 run=$RIG_RUN/$1 pid
    pid=$(alive_pid "$run/plugin.pid" netplugin.daemon || true)
    if [[ -n $pid ]] && plugin_answers "$h" \
        && [[ $(cat "$run/plugin.settings" 2>/dev/null) == "$(settings_line)" ]]; then
        log "host $h: netplugin already up (pid $pid)"
        return
    fi
    stop_plugin "$h"
    local logf=$RIG_LOGS/rig-netplugin-$h.log
    mkdir -p "$(plugin_dir "$h")" "$run/xdg"
    printf '\n==== %s starting netplugin %s (%s)\n' "$(date -Is)" "$(host_id "$h")" "$(settings_line)" >>"$logf"
    log "host $h: netplugin $(host_id "$h"), bridge $(bridge_of "$h") uplink $(trunk_of "$h"), prefix $ETCD_PREFIX"
    # NETPLUGIN_CONFIG=/dev/null: no host config file leaks in. XDG_RUNTIME_DIR:
    # gunicorn's control socket, private to this daemon. NETPLUGIN_OVS_TIMEOUT:
    # the daemon's OVSDB client loads the whole database when it connects, and
    # on a machine shared with other suites (thousands of ports on their
    # bridges) that took 13 s, more than the 5 s default (docs/multihost.md).
    env NETPLUGIN_CONFIG=/dev/null \
        NETPLUGIN_OVS_TIMEOUT="${RIG_OVS_TIMEOUT:-30}" \
        NETPLUGIN_ETCD_ENDPOINTS="$ETCD_ENDPOINTS" \
        NETPLUGIN_ETCD_PREFIX="$ETCD_PREFIX" \
        NETPLUGIN_HOST_ID="$(host_id "$h")" \
        NETPLUGIN_BRIDGE="$(bridge_of "$h")" \
        NETPLUGIN_DATAPATH_TYPE=netdev \
        NETPLUGIN_UPLINK="$(trunk_of "$h")" \
        NETPLUGIN_SOCKET="$(plugin_sock "$h")" \
        NETPLUGIN_DOCKER_URL="unix://$(docker_sock "$h")" \
        XDG_RUNTIME_DIR="$run/xdg" \
        setsid "$PY" -m netplugin.daemon >>"$logf" 2>&1 </dev/null &
    echo $! >"$run/plugin.pid"
    settings_line >"$run/plugin.settings"
    wait_for plugin_answers "$h" 20 || die "host $h: netplugin not answering on $(plugin_sock "$h") after 20 s; see $logf"
}

stop_plugin() {
    local h=$1 run=$RIG_RUN/$1 pid
    pid=$(alive_pid "$run/plugin.pid" netplugin.daemon || true)
    if [[ -n $pid ]]; then stop_group "$pid" "host $h netplugin" 10; fi
    for pid in $(rig_pids plugin "$h"); do
        if kill -0 "$pid" 2>/dev/null; then stop_group "$pid" "host $h netplugin (no pid file)" 10; fi
    done
    rm -f "$run/plugin.pid" "$run/plugin.settings" "$(plugin_sock "$h")"
}

# --- Docker objects on the rig (needs the plugin alive to go quickly) ----------------

clean_rig_docker() {
    local h=$1
    rig_docker_up "$h" || return 0
    if ! plugin_answers "$h"; then
        # Docker would retry every call to a missing plugin with back-off; the
        # dockerd stop and the data-root removal below clear it all instead.
        log "host $h: netplugin not answering, leaving containers to the dockerd stop"
        return 0
    fi
    local -a ids nets
    mapfile -t ids < <(rdocker "$h" ps -aq 2>/dev/null || true)
    if ((${#ids[@]})); then
        log "host $h: removing ${#ids[@]} container(s)"
        timeout 120 "$DOCKER" -H "unix://$(docker_sock "$h")" rm -f "${ids[@]}" >/dev/null 2>&1 \
            || log "WARNING: host $h: some containers could not be removed"
    fi
    mapfile -t nets < <(rdocker "$h" network ls -q --filter driver=netplugin 2>/dev/null || true)
    local n
    for n in "${nets[@]}"; do
        timeout 60 "$DOCKER" -H "unix://$(docker_sock "$h")" network rm "$n" >/dev/null 2>&1 \
            || log "WARNING: host $h: network $n could not be removed"
    done
}

# --- OVS -----------------------------------------------------------------------------

remove_bridge() {
    local br=$1 port
    ovs_up || return 0
    # Endpoint veths (np<hex>) that were ports of the bridge: del-br leaves the links.
    for port in $(ovs-vsctl --timeout=5 list-ports "$br" 2>/dev/null || true); do
        [[ $port == np* && $port != nptrunk-* ]] && ip link del dev "$port" 2>/dev/null || true
    done
    ovs-vsctl --timeout=10 --if-exists del-br "$br" || log "WARNING: could not delete bridge $br"
}

# --- commands ------------------------------------------------------------------------

# each FUNC: run FUNC a and FUNC b at once (the hosts are independent); fail if either failed.
each() {
    local fn=$1 h rc=0
    local -a pids=()
    for h in "${HOSTS[@]}"; do
        "$fn" "$h" &
        pids+=($!)
    done
    for h in "${pids[@]}"; do wait "$h" || rc=1; done
    return "$rc"
}

load_settings() {
    ETCD_ENDPOINTS=${OPT_ETCD:-${RIG_ETCD_ENDPOINTS:-$ETCD_ENDPOINT}}
    ETCD_PREFIX=${OPT_PREFIX:-${RIG_ETCD_PREFIX:-/netplugin/rig}}
    [[ $ETCD_PREFIX =~ ^/netplugin/rig[A-Za-z0-9._-]*$ ]] \
        || die "etcd prefix '$ETCD_PREFIX' must look like /netplugin/rig[-NAME] (stop deletes it)"
}

# delete_prefix PREFIX ENDPOINTS: the rig's keys (only ever a /netplugin/rig* prefix).
delete_prefix() {
    [[ $1 =~ ^/netplugin/rig[A-Za-z0-9._-]*$ ]] || return 0
    timeout 20 etcdctl --endpoints="${2:-$ETCD_ENDPOINT}" --dial-timeout=2s --command-timeout=10s \
        del --prefix "$1/" >/dev/null 2>&1 || log "WARNING: could not delete etcd prefix $1/"
}

cmd_start() {
    need_root
    local t0=$SECONDS
    pick_python
    load_settings
    ovs_up || die "Open vSwitch is not answering: run scripts/services.sh start"
    [[ -S $CONTAINERD_SOCK ]] || die "containerd is not running: run scripts/services.sh start"
    mkdir -p "$RIG_RUN" "$RIG_LIB" "$RIG_LOGS"
    # Ask for everything needed before starting anything that needs it.
    start_trunk
    each start_dockerd || die "a rig dockerd did not start (see above)"
    each ensure_image || die "the image could not be loaded (see above)"
    # Other etcd settings than the running daemons': what Docker knows on the rig
    # belongs to the old prefix, so it goes first (while the old daemons still
    # answer), then the old prefix itself.
    local old_prefix old_endpoints h
    old_prefix=$(cat "$RIG_RUN/etcd.prefix" 2>/dev/null || true)
    old_endpoints=$(cat "$RIG_RUN/etcd.endpoints" 2>/dev/null || true)
    if [[ -n $old_prefix && ($old_prefix != "$ETCD_PREFIX" || $old_endpoints != "$ETCD_ENDPOINTS") ]]; then
        log "etcd settings change ($old_prefix at $old_endpoints -> $ETCD_PREFIX at $ETCD_ENDPOINTS): clearing the rig"
        each clean_rig_docker || true
        each stop_plugin || true
        delete_prefix "$old_prefix" "$old_endpoints"
        # The new daemons make the bridges again: waiting for them below then
        # proves they reach OVS.
        for h in "${HOSTS[@]}"; do remove_bridge "$(bridge_of "$h")"; done
    fi
    # The prefix in use is what stop deletes.
    printf '%s\n' "$ETCD_PREFIX" >"$RIG_RUN/etcd.prefix"
    printf '%s\n' "$ETCD_ENDPOINTS" >"$RIG_RUN/etcd.endpoints"
    each start_plugin || die "a rig netplugin did not start (see above)"
    # The daemons make their bridge and add the uplink trunk in the background.
    for h in "${HOSTS[@]}"; do
        wait_for uplink_on_bridge "$h" 60 \
            || die "host $h: bridge $(bridge_of "$h") with uplink $(trunk_of "$h") not there after 60 s; see $RIG_LOGS/rig-netplugin-$h.log"
    done
    log "rig up in $((SECONDS - t0)) s"
    cmd_status
}

cmd_stop() {
    need_root
    local t0=$SECONDS h
    each clean_rig_docker || true
    each stop_plugin || true
    each stop_dockerd || true
    for h in "${HOSTS[@]}"; do remove_bridge "$(bridge_of "$h")"; done
    ip link del dev "$(trunk_of a)" 2>/dev/null || true
    ip link del dev "$(trunk_of b)" 2>/dev/null || true
    local prefix endpoints
    prefix=$(cat "$RIG_RUN/etcd.prefix" 2>/dev/null || true)
    endpoints=$(cat "$RIG_RUN/etcd.endpoints" 2>/dev/null || true)
    delete_prefix "$prefix" "$endpoints"
    rm -rf -- "$RIG_RUN" "$RIG_LIB"
    log "rig stopped in $((SECONDS - t0)) s"
}

cmd_status() {
    local rc=0 h pid
    printf '%-28s %s\n' "etcd prefix" "$(cat "$RIG_RUN/etcd.prefix" 2>/dev/null || echo -)"
    printf '%-28s %s\n' "etcd endpoints" "$(cat "$RIG_RUN/etcd.endpoints" 2>/dev/null || echo -)"
    if ip link show dev "$(trunk_of a)" >/dev/null 2>&1; then
        printf '%-28s up\n' "trunk $(trunk_of a)<->$(trunk_of b)"
    else
        printf '%-28s DOWN\n' "trunk $(trunk_of a)<->$(trunk_of b)"
        rc=1
    fi
    for h in "${HOSTS[@]}"; do
        if rig_docker_up "$h"; then
            printf '%-28s up (%s)\n' "host $h dockerd" "unix://$(docker_sock "$h")"
        else
            printf '%-28s DOWN\n' "host $h dockerd"
            rc=1
        fi
        pid=$(alive_pid "$RIG_RUN/$h/plugin.pid" netplugin.daemon || true)
        if [[ -n $pid ]] && plugin_answers "$h"; then
            printf '%-28s up (pid %s, %s)\n' "host $h netplugin $(host_id "$h")" "$pid" "$(plugin_sock "$h")"
        else
            printf '%-28s DOWN\n' "host $h netplugin $(host_id "$h")"
            rc=1
        fi
        if uplink_on_bridge "$h"; then
            printf '%-28s up (uplink %s)\n' "host $h bridge $(bridge_of "$h")" "$(trunk_of "$h")"
        else
            printf '%-28s DOWN\n' "host $h bridge $(bridge_of "$h")"
            rc=1
        fi
    done
    return "$rc"
}

# The layout, as KEY=VALUE lines, for tests, the demo and the benchmark.
cmd_env() {
    local h H
    echo "RIG_RUN=$RIG_RUN"
    echo "RIG_IMAGE=$IMAGE"
    echo "RIG_ETCD_PREFIX=$(cat "$RIG_RUN/etcd.prefix" 2>/dev/null || true)"
    echo "RIG_ETCD_ENDPOINTS=$(cat "$RIG_RUN/etcd.endpoints" 2>/dev/null || true)"
    for h in "${HOSTS[@]}"; do
        H=${h^^}
        echo "RIG_${H}_HOST_ID=$(host_id "$h")"
        echo "RIG_${H}_DOCKER_HOST=unix://$(docker_sock "$h")"
        echo "RIG_${H}_SOCKET=$(plugin_sock "$h")"
        echo "RIG_${H}_BRIDGE=$(bridge_of "$h")"
        echo "RIG_${H}_TRUNK=$(trunk_of "$h")"
        echo "RIG_${H}_LOG=$RIG_LOGS/rig-netplugin-$h.log"
        echo "RIG_${H}_DOCKERD_LOG=$RIG_LOGS/rig-dockerd-$h.log"
    done
}

usage() {
    echo "usage: $0 start [--etcd-endpoints URLS] [--etcd-prefix /netplugin/rig-NAME] [--python PY] | stop | status | env" >&2
    exit 2
}

CMD=${1:-}
(($#)) && shift
OPT_ETCD= OPT_PREFIX= OPT_PYTHON=
while (($#)); do
    case $1 in
        --etcd-endpoints) OPT_ETCD=${2:?}; shift 2 ;;
        --etcd-prefix) OPT_PREFIX=${2:?}; shift 2 ;;
        --python) OPT_PYTHON=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done
case $CMD in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) usage ;;
esac
