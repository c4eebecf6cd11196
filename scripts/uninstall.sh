#!/usr/bin/env bash
# Remove what scripts/install.sh installed, and stop the daemon.
#
#   sudo bash scripts/uninstall.sh [options]
#
# Stops netplugin.service and the reconcile timer (systemd), or, without
# systemd, the daemon processes that run from PREFIX (matched by pid on their
# exact command line, never by name alone); then removes the spec file, the
# units, the links, the docs and PREFIX. The settings in ETC_DIR stay unless
# --purge.
#
# It never touches the datapath: OVS bridges, ports, flows, meters and the
# veths of running containers stay exactly as they are, so their traffic goes
# on (OVS forwards it, not the daemon). Nor etcd (the cluster's networks and
# pools are shared by every host) nor Docker's networks. Until netplugin is
# installed again, Docker cannot start or stop containers on its networks.
#
# Options: --prefix, --bin-dir, --etc-dir, --spec-dir, --name, --unit-dir,
# --doc-dir, --systemd auto|yes|no (as for install.sh), and --purge (also remove
# ETC_DIR with netplugin.toml).
set -euo pipefail

PREFIX=/opt/netplugin
BIN_DIR=/usr/local/bin
ETC_DIR=/etc/netplugin
SPEC_DIR=/etc/docker/plugins
NAME=netplugin
UNIT_DIR=/etc/systemd/system
DOC_DIR=/usr/share/doc/netplugin
SYSTEMD=auto
PURGE=0
SCRIPTS=(netplugin netctl netplugin-reconcile drctl)
UNITS=(drctl-agent.service netplugin-reconcile.timer netplugin-reconcile.service netplugin.service)
STOP_WAIT=15

log() { printf '[%s] uninstall.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }

while (($#)); do
    case $1 in
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?}; shift 2 ;;
        --etc-dir) ETC_DIR=${2:?}; shift 2 ;;
        --spec-dir) SPEC_DIR=${2:?}; shift 2 ;;
        --name) NAME=${2:?}; shift 2 ;;
        --unit-dir) UNIT_DIR=${2:?}; shift 2 ;;
        --doc-dir) DOC_DIR=${2:?}; shift 2 ;;
        --systemd) SYSTEMD=${2:?}; shift 2 ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage 0 ;;
        *) log "unknown option $1"; usage ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ $SYSTEMD =~ ^(auto|yes|no)$ ]] || die "--systemd must be auto, yes or no"
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--name '$NAME': letters, digits, '.', '_' and '-' only"
for d in PREFIX BIN_DIR ETC_DIR SPEC_DIR UNIT_DIR DOC_DIR; do
    [[ ${!d} == /* && ${!d} != / ]] || die "$d must be an absolute path other than /, not '${!d}'"
done
PREFIX=${PREFIX%/}
systemd_runs() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }

# The socket the daemon listens on, while the installed Python can still tell.
SOCKET=
if [[ -x $PREFIX/current/bin/python && -f $ETC_DIR/netplugin.toml ]]; then
    SOCKET=$("$PREFIX/current/bin/python" -c 'import sys
from netplugin.config import load
print(load(sys.argv[1], env={}).socket)' "$ETC_DIR/netplugin.toml" 2>/dev/null || true)
fi

# --- 1. stop: systemd units first, then any daemon started by hand from PREFIX
if systemd_runs && [[ $SYSTEMD != no ]]; then
    for u in "${UNITS[@]}"; do
        if systemctl cat "$u" >/dev/null 2>&1; then
            systemctl disable --now "$u" >/dev/null 2>&1 || log "WARNING: could not stop $u"
            log "stopped and disabled $u"
        fi
    done
fi

# is_ours PID: the process runs the netplugin daemon, the reconciler or the drctl agent
# with PREFIX's Python (argv[0] is PREFIX/.../bin/python*, the script is one of ours
# or -m netplugin.daemon). drctl's other commands are an operator's, left alone.
is_ours() {
    local -a argv
    mapfile -d '' -t argv 2>/dev/null <"/proc/$1/cmdline" || return 1
    ((${#argv[@]} >= 2)) || return 1
    [[ ${argv[0]} == "$PREFIX"/*/bin/python* ]] || return 1
    case ${argv[1]##*/} in
        netplugin | netplugin-reconcile) return 0 ;;
        drctl) [[ ${argv[2]:-} == agent ]] && return 0 ;;
    esac
    [[ ${argv[1]} == -m && ${argv[2]:-} == netplugin.daemon ]]
}
ours() {
    local p pid
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [[ $pid != "$$" ]] && is_ours "$pid" && echo "$pid"
    done
    return 0
}
mapfile -t PIDS < <(ours)
if ((${#PIDS[@]})); then
    log "stopping netplugin processes from $PREFIX: ${PIDS[*]}"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    deadline=$((SECONDS + STOP_WAIT))
    while ((SECONDS < deadline)); do
        mapfile -t LEFT < <(ours)
        ((${#LEFT[@]})) || break
        sleep 0.2
    done
    mapfile -t LEFT < <(ours)
    if ((${#LEFT[@]})); then
        log "WARNING: ${LEFT[*]} ignored SIGTERM for ${STOP_WAIT}s: SIGKILL (the datapath is not affected)"
        kill -KILL "${LEFT[@]}" 2>/dev/null || true
    fi
fi
# A daemon killed hard leaves its socket; Docker would keep retrying it.
if [[ -n $SOCKET && -S $SOCKET ]] && ! ss -Hxl src "$SOCKET" 2>/dev/null | grep -q .; then
    rm -f -- "$SOCKET"
    log "removed the stale socket $SOCKET"
fi

# --- 2. files
SPEC=$SPEC_DIR/$NAME.json
if [[ -f $SPEC ]]; then
    rm -f -- "$SPEC"
    log "removed $SPEC"
fi
removed_units=0
for u in "${UNITS[@]}"; do
    if [[ -f $UNIT_DIR/$u ]]; then
        rm -f -- "$UNIT_DIR/$u"
        removed_units=1
    fi
done
if ((removed_units)); then
    log "removed the units from $UNIT_DIR"
    if systemd_runs && [[ $SYSTEMD != no ]]; then
        systemctl daemon-reload || true
    fi
fi
for s in "${SCRIPTS[@]}"; do
    link=$BIN_DIR/$s
    if [[ -L $link && $(readlink "$link") == "$PREFIX"/* ]]; then
        rm -f -- "$link"
    elif [[ -e $link || -L $link ]]; then
        log "WARNING: $link does not point into $PREFIX: left alone"
    fi
done
if [[ -d $DOC_DIR && -f $DOC_DIR/README.md ]]; then
    rm -rf -- "$DOC_DIR"
fi
if [[ -d $PREFIX ]]; then
    if [[ -d $PREFIX/releases || -L $PREFIX/current ]]; then
        rm -rf -- "$PREFIX"
        log "removed $PREFIX"
    else
        log "WARNING: $PREFIX does not look like a netplugin install (no releases/): left alone"
    fi
fi
if ((PURGE)) && [[ -d $ETC_DIR ]]; then
    if [[ -f $ETC_DIR/netplugin.toml || -z $(ls -A "$ETC_DIR") ]]; then
        rm -rf -- "$ETC_DIR"
        log "removed $ETC_DIR"
    else
        log "WARNING: $ETC_DIR has no netplugin.toml: left alone"
    fi
elif [[ -d $ETC_DIR ]]; then
    log "kept the settings in $ETC_DIR (--purge removes them)"
fi

log "done. Left alone: OVS bridges, ports, flows and veths (running containers keep their traffic), etcd, Docker networks."
log "Docker cannot start or stop containers on netplugin networks until netplugin is installed again."
