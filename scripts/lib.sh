# shellcheck shell=bash disable=SC2034 # its variables are used by the scripts that source it
# Shared helpers for the CI/dev scripts. Source it, do not run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set -euo pipefail

# Repo root = parent of this file's folder, so every script works from any cwd.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export REPO

# Debian's 20.10 client matches the 20.10 daemon; /usr/local/bin/docker (28.x)
# is first on PATH but refuses flags such as --mac-address against API 1.41.
DOCKER=/usr/bin/docker

# Our own state lives outside /run/netplugin*, which reset-state.sh wipes.
NP_CI_STATE=/var/lib/netplugin-ci
NP_CI_LOGS=/var/log/netplugin-ci
NP_CI_PIDS=$NP_CI_STATE/pids

# etcd is loopback only, never anything else.
ETCD_ENDPOINT=http://127.0.0.1:2379
export ETCDCTL_API=3

log() { printf '[%s] %s: %s\n' "$(date +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (needs apt, OVS, netns, dockerd)"
}

# wait_for CMD [ARGS...] TIMEOUT
# Runs CMD (argv, never eval'd) until it succeeds or TIMEOUT seconds pass.
# The LAST argument is the timeout. Returns 1 on timeout; callers say what failed.
# CMD itself must be bounded (e.g. `timeout 5 ...`) so one attempt cannot hang.
wait_for() {
    (($# >= 2)) || die "usage: wait_for CMD [ARGS...] TIMEOUT"
    local timeout=${!#}
    local -a cmd=("${@:1:$#-1}")
    [[ $timeout =~ ^[0-9]+$ ]] || die "wait_for: timeout '$timeout' is not a number of seconds"
    # Microsecond clock: $SECONDS ticks whole seconds and would cut up to 1 s short.
    local deadline=$((${EPOCHREALTIME//[!0-9]/} + timeout * 1000000))
    while :; do
        "${cmd[@]}" >/dev/null 2>&1 && return 0
        ((${EPOCHREALTIME//[!0-9]/} < deadline)) || return 1
        sleep 0.2
    done
}

# tcp_listener_pid PORT / unix_listener_pid PATH: pid of the listening process
# (empty if none). Always succeed, so they are safe in $(...) under set -e.
tcp_listener_pid() {
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1
}
unix_listener_pid() {
    ss -Hxlp src "$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1
}

# Health probes shared by services.sh and reset-state.sh (each bounded).
ovs_up() { ovs-vsctl --timeout=5 show >/dev/null 2>&1; }
# Listener check first: etcdctl would otherwise spend its whole dial timeout
# retrying a port nobody listens on.
etcd_up() {
    [[ -n $(tcp_listener_pid 2379) ]] \
        && etcdctl --endpoints="$ETCD_ENDPOINT" --dial-timeout=2s --command-timeout=3s \
            endpoint health >/dev/null 2>&1
}
docker_up() { timeout 10 "$DOCKER" info >/dev/null 2>&1; }
