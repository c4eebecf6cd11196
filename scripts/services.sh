#!/usr/bin/env bash
# services.sh start|stop|status: Open vSwitch, etcd, containerd, dockerd.
# No systemd on these machines, so each daemon is started by hand in its own
# session (setsid: no controlling terminal, so no SIGHUP/^C when the caller
# exits), logging under $NP_CI_LOGS, pid files under $NP_CI_PIDS.
# "start" reuses anything already healthy, so it is safe to run repeatedly.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

ETCD_DATA=$NP_CI_STATE/etcd
CONTAINERD_SOCK=/run/containerd/containerd.sock
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl

# dockerd flags, each checked on this platform (Debian 12, cgroup v1, no modules):
DOCKERD_FLAGS=(
    # Use the containerd we start and supervise, not a child dockerd spawns itself.
    --containerd="$CONTAINERD_SOCK"
    # Local unix socket only; never a TCP listener.
    --host=unix:///var/run/docker.sock
    # overlay2 works on this ext4 root; pin it so a silent fallback to the
    # (much slower) vfs driver becomes a loud start failure instead.
    --storage-driver=overlay2
    # No systemd: the cgroupfs driver on the cgroup v1 hierarchy.
    --exec-opt=native.cgroupdriver=cgroupfs
    # iptables (nf_tables backend) works here, and Docker's default bridge (the
    # benchmark's baseline) needs its NAT/forwarding rules: keep them on, explicitly.
    --iptables=true
    --ip-forward=true
)

mkdir -p "$NP_CI_LOGS" "$NP_CI_PIDS"

# --- process helpers ---------------------------------------------------------

# pid_of NAME COMM: the pid in our pid file, if that process is alive and is COMM.
pid_of() {
    local pid
    pid=$(cat "$NP_CI_PIDS/$1.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    echo "$pid"
}

# start_bg NAME LOG CMD...: run CMD detached, record its pid.
start_bg() {
    local name=$1 logf=$2
    shift 2
    printf '\n==== %s starting %s\n' "$(date -Is)" "$name" >>"$logf"
    # In a non-interactive shell the job is not a group leader, so setsid
    # execs in place and $! is the daemon's own pid.
    setsid "$@" >>"$logf" 2>&1 </dev/null &
    echo $! >"$NP_CI_PIDS/$name.pid"
}

# stop_pid NAME PID SECONDS: TERM, wait, then KILL.
stop_pid() {
    local name=$1 pid=$2 secs=$3
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "WARNING: $name (pid $pid) ignored SIGTERM for ${secs}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$NP_CI_PIDS/$name.pid"
}

# --- Open vSwitch --------------------------------------------------------------

start_ovs() {
    if ovs_up; then log "ovs: already running"; return; fi
    log "ovs: starting (userspace datapath only on this kernel)"
    # --system-id=random: fresh machines have no /etc/openvswitch/system-id.conf.
    # The 'ulimit' / module warnings it prints are expected here.
    "$OVS_CTL" --system-id=random start >>"$NP_CI_LOGS/ovs-ctl.log" 2>&1 \
        || die "ovs-ctl start failed; see $NP_CI_LOGS/ovs-ctl.log and /var/log/openvswitch/"
    wait_for ovs_up 30 \
        || die "ovsdb/ovs-vswitchd not answering after 30 s; see $NP_CI_LOGS/ovs-ctl.log and /var/log/openvswitch/ovs-vswitchd.log"
    log "ovs: up"
}

# Userspace TSO (netplugin/dataplane/tso.py): TCP through the netdev datapath
# goes from ~0.85 to ~9.6 Gbit/s here. ovs-vswitchd reads it only at start, so
# it is restarted (flows saved and restored by ovs-ctl) only when the value
# changes. NP_OVS_USERSPACE_TSO=false turns it off again.
ensure_ovs_tso() {
    local want=${NP_OVS_USERSPACE_TSO:-true} cur
    [[ $want == true || $want == false ]] || die "NP_OVS_USERSPACE_TSO must be true or false, not '$want'"
    cur=$(ovs-vsctl --timeout=10 --if-exists get Open_vSwitch . other_config:userspace-tso-enable) \
        || die "cannot read other_config from OVSDB; see /var/log/openvswitch/ovsdb-server.log"
    cur=${cur//\"/}
    [[ ${cur:-false} == "$want" ]] && { log "ovs: userspace TSO already $want"; return; }
    log "ovs: userspace TSO ${cur:-unset} -> $want, restarting ovs-vswitchd"
    ovs-vsctl --timeout=10 set Open_vSwitch . other_config:userspace-tso-enable="$want"
    "$OVS_CTL" --no-ovsdb-server restart >>"$NP_CI_LOGS/ovs-ctl.log" 2>&1 \
        || die "ovs-ctl restart failed; see $NP_CI_LOGS/ovs-ctl.log and /var/log/openvswitch/ovs-vswitchd.log"
    wait_for ovs_up 30 || die "ovs-vswitchd not answering 30 s after its restart; see /var/log/openvswitch/"
}

stop_ovs() {
    if ! ovs_up && ! pgrep -x ovsdb-server >/dev/null && ! pgrep -x ovs-vswitchd >/dev/null; then
        log "ovs: not running"; return
    fi
    log "ovs: stopping"
    "$OVS_CTL" stop >>"$NP_CI_LOGS/ovs-ctl.log" 2>&1 || log "WARNING: ovs-ctl stop failed; see $NP_CI_LOGS/ovs-ctl.log"
}

# --- etcd ------------------------------------------------------------------------

start_etcd() {
    if etcd_up; then
        log "etcd: already healthy on $ETCD_ENDPOINT (pid $(tcp_listener_pid 2379)), reusing"
        return
    fi
    local logf=$NP_CI_LOGS/etcd.log
    if [[ -n $(tcp_listener_pid 2379) ]]; then
        # Something holds the port: maybe an etcd still starting. Give it a moment.
        log "etcd: port 2379 is taken but not healthy yet, waiting"
        wait_for etcd_up 15 \
            || die "a process (pid $(tcp_listener_pid 2379)) holds 127.0.0.1:2379 but is not a healthy etcd"
        log "etcd: reusing the existing member"
        return
    fi
    log "etcd: starting, data $ETCD_DATA"
    mkdir -p "$ETCD_DATA"
    chmod 700 "$ETCD_DATA"
    start_bg etcd "$logf" etcd \
        --name netplugin-ci \
        --data-dir "$ETCD_DATA" \
        --listen-client-urls http://127.0.0.1:2379 \
        --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster netplugin-ci=http://127.0.0.1:2380 \
        --logger zap --log-outputs stderr
    wait_for etcd_up 30 || die "etcd not healthy after 30 s; see $logf"
    log "etcd: up (pid $(pid_of etcd etcd || echo '?'))"
}

stop_etcd() {
    local pid
    # Our pid file first; else whichever etcd serves our port (started by an
    # earlier run whose pid file is gone). Never anything by name alone.
    pid=$(pid_of etcd etcd || true)
    if [[ -z $pid ]]; then
        pid=$(tcp_listener_pid 2379)
        [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == etcd ]] || pid=
    fi
    if [[ -z $pid ]]; then log "etcd: not running"; rm -f "$NP_CI_PIDS/etcd.pid"; return; fi
    stop_pid etcd "$pid" 20
}

# --- containerd + dockerd ----------------------------------------------------------

# Listener check first: ctr would otherwise retry a missing socket for the whole timeout.
containerd_up() {
    [[ -n $(unix_listener_pid "$CONTAINERD_SOCK") ]] \
        && timeout 5 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1
}

start_containerd() {
    if containerd_up; then log "containerd: already running"; return; fi
    local logf=$NP_CI_LOGS/containerd.log
    log "containerd: starting"
    start_bg containerd "$logf" containerd
    wait_for containerd_up 30 || die "containerd not answering after 30 s; see $logf"
    log "containerd: up"
}

start_dockerd() {
    if docker_up; then log "dockerd: already running"; return; fi
    local logf=$NP_CI_LOGS/dockerd.log
    # A dockerd killed with kill -9 leaves its pid file, and a new one refuses to
    # start. Give a dying dockerd up to 10 s to go, then drop a stale file.
    if [[ -f /var/run/docker.pid ]]; then
        local old state i
        old=$(cat /var/run/docker.pid 2>/dev/null || true)
        for ((i = 0; i < 50; i++)); do
            state=$(ps -o stat= -p "${old:-0}" 2>/dev/null || true)
            [[ -z $state || $state == Z* ]] && break
            sleep 0.2
        done
        if [[ -z $state || $state == Z* ]]; then
            log "dockerd: removing the stale /var/run/docker.pid"
            rm -f /var/run/docker.pid
        fi
    fi
    # dockerd activates the driver of every network it holds before it answers,
    # retrying a plugin socket nobody listens on for about 15 s per network: a
    # machine that went down with test networks on it (a copy of a machine, a
    # crash mid-run) took over a minute. Our own such sockets get a stand-in
    # that answers at once while dockerd loads; reset-state.sh then removes
    # those networks. A live plugin's socket is never touched.
    local -a stale=()
    local sock standin=
    for sock in /run/docker/plugins/np*.sock; do
        [[ -S $sock && -z $(unix_listener_pid "$sock") ]] && stale+=("$sock")
    done
    if ((${#stale[@]})); then
        log "dockerd: stand-in plugin while loading, for sockets nobody serves: ${stale[*]}"
        /usr/bin/python3 "$REPO/scripts/plugin_standin.py" "${stale[@]}" >>"$logf" 2>&1 &
        standin=$!
    fi
    log "dockerd: starting ${DOCKERD_FLAGS[*]}"
    start_bg dockerd "$logf" dockerd "${DOCKERD_FLAGS[@]}"
    # Restoring many containers can take a while: wait as long as dockerd lives,
    # up to 5 minutes, and say so every 30 s.
    local waited=0 ok=
    while ((waited < 300)); do
        if wait_for docker_up 30; then ok=1; break; fi
        waited=$((waited + 30))
        [[ -n $(pid_of dockerd dockerd) ]] || break
        log "dockerd: still loading after ${waited} s (see $logf)"
    done
    if [[ -n $standin ]]; then
        kill -TERM "$standin" 2>/dev/null || true
        wait "$standin" 2>/dev/null || true
    fi
    [[ -n $ok ]] || die "'$DOCKER info' still failing after ${waited} s; see $logf"
    log "dockerd: up ($("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
}

stop_dockerd() {
    local pid
    pid=$(pid_of dockerd dockerd || true)
    if [[ -z $pid ]]; then
        pid=$(cat /var/run/docker.pid 2>/dev/null || true)
        [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || pid=
    fi
    if [[ -z $pid ]]; then log "dockerd: not running"; rm -f "$NP_CI_PIDS/dockerd.pid"; return; fi
    # dockerd stops running containers first (up to 10 s each, in parallel).
    stop_pid dockerd "$pid" 45
}

stop_containerd() {
    local pid
    pid=$(pid_of containerd containerd || true)
    if [[ -z $pid ]]; then
        pid=$(unix_listener_pid "$CONTAINERD_SOCK")
        [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == containerd ]] || pid=
    fi
    if [[ -z $pid ]]; then log "containerd: not running"; rm -f "$NP_CI_PIDS/containerd.pid"; return; fi
    stop_pid containerd "$pid" 20
}

# --- commands ----------------------------------------------------------------------

status() {
    local rc=0 name
    for name in ovs etcd containerd docker; do
        if "${name}_up"; then
            printf '%-10s up\n' "$name"
        else
            printf '%-10s DOWN\n' "$name"
            rc=1
        fi
    done
    return "$rc"
}

case ${1:-} in
start)
    start=$SECONDS
    start_ovs
    ensure_ovs_tso
    start_etcd
    start_containerd
    start_dockerd
    log "all services up in $((SECONDS - start)) s"
    ;;
stop)
    # Reverse order: dockerd needs containerd to stop its containers.
    stop_dockerd
    stop_containerd
    stop_etcd
    stop_ovs
    ;;
status)
    status
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
