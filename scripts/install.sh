#!/usr/bin/env bash
# Install or upgrade netplugin on this host, from this checkout.
#
#   sudo bash scripts/install.sh [options]
#
# What it does (each step is safe to repeat; a re-run is an upgrade):
#   1. builds a venv with the package and its dependencies under
#      PREFIX/releases/VERSION-TIMESTAMP and points PREFIX/current at it once it
#      works (the previous release stays for a rollback; older ones go);
#   2. links netplugin, netctl and netplugin-reconcile (and drctl if present)
#      into BIN_DIR;
#   3. writes ETC_DIR/netplugin.toml from packaging/netplugin.toml if absent
#      (an existing file is never changed);
#   4. writes the Docker plugin spec file SPEC_DIR/NAME.json with the socket
#      that the settings name, so Docker finds the plugin wherever it listens;
#   5. copies README and docs to DOC_DIR;
#   6. when systemd runs: copies the units to UNIT_DIR, reloads systemd, enables
#      netplugin.service, netplugin-reconcile.timer and drctl-agent.service, and
#      restarts the daemon and the agent if they were running (an upgrade) or
#      with --start. Restarting the daemon never touches the traffic of running
#      containers; restarting the agent never stops running jobs.
#
# Options (defaults in brackets):
#   --prefix DIR       [/opt/netplugin]
#   --python PY        interpreter of the venv, 3.11 or later [/usr/bin/python3]
#   --bin-dir DIR      [/usr/local/bin]
#   --etc-dir DIR      [/etc/netplugin]
#   --spec-dir DIR     [/etc/docker/plugins]
#   --name NAME        plugin name Docker knows it by (-d NAME) [netplugin]
#   --unit-dir DIR     [/etc/systemd/system]
#   --doc-dir DIR      [/usr/share/doc/netplugin]
#   --systemd MODE     auto: units when systemd runs; yes: copy units even
#                      without systemd (no systemctl then); no: never [auto]
#   --start            start (or restart) netplugin.service at the end
#   --wheelhouse DIR   offline: pip takes every package from DIR, no index
#   --keep N           releases kept, the current one included [2]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/.." && pwd -P)
PREFIX=/opt/netplugin
PY=/usr/bin/python3
BIN_DIR=/usr/local/bin
ETC_DIR=/etc/netplugin
SPEC_DIR=/etc/docker/plugins
NAME=netplugin
UNIT_DIR=/etc/systemd/system
DOC_DIR=/usr/share/doc/netplugin
SYSTEMD=auto
START=0
WHEELHOUSE=
KEEP=2
SCRIPTS=(netplugin netctl netplugin-reconcile)
OPTIONAL_SCRIPTS=(drctl)          # linked when the package has them
UNITS=(netplugin.service netplugin-reconcile.service netplugin-reconcile.timer drctl-agent.service)

log() { printf '[%s] install.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }

while (($#)); do
    case $1 in
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --python) PY=${2:?}; shift 2 ;;
        --bin-dir) BIN_DIR=${2:?}; shift 2 ;;
        --etc-dir) ETC_DIR=${2:?}; shift 2 ;;
        --spec-dir) SPEC_DIR=${2:?}; shift 2 ;;
        --name) NAME=${2:?}; shift 2 ;;
        --unit-dir) UNIT_DIR=${2:?}; shift 2 ;;
        --doc-dir) DOC_DIR=${2:?}; shift 2 ;;
        --systemd) SYSTEMD=${2:?}; shift 2 ;;
        --start) START=1; shift ;;
        --wheelhouse) WHEELHOUSE=${2:?}; shift 2 ;;
        --keep) KEEP=${2:?}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) log "unknown option $1"; usage ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ $SYSTEMD =~ ^(auto|yes|no)$ ]] || die "--systemd must be auto, yes or no"
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--name '$NAME': letters, digits, '.', '_' and '-' only"
[[ $KEEP =~ ^[1-9][0-9]*$ ]] || die "--keep must be 1 or more"
for d in PREFIX BIN_DIR ETC_DIR SPEC_DIR UNIT_DIR DOC_DIR; do
    [[ ${!d} == /* && ${!d} != / ]] || die "$d must be an absolute path other than /, not '${!d}'"
done
[[ -z $WHEELHOUSE || -d $WHEELHOUSE ]] || die "--wheelhouse $WHEELHOUSE is not a folder"
"$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PY is not Python 3.11+ with venv and ensurepip (Debian: apt-get install python3-venv)"
systemd_runs() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }

VERSION=$("$PY" - "$REPO/setup.cfg" <<'PYEOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
print(cfg["metadata"]["version"])
PYEOF
) || die "cannot read the version from $REPO/setup.cfg"
t0=$SECONDS

# --- 1. a new release, built aside; current switches to it only once it works
RELEASE=$PREFIX/releases/$VERSION-$(date +%Y%m%d%H%M%S)
[[ ! -e $RELEASE ]] || die "$RELEASE exists already: wait a second and run again"
mkdir -p "$PREFIX/releases"
BUILD=$(mktemp -d /tmp/netplugin-install.XXXXXX)
cleanup() { rm -rf -- "$BUILD"; if [[ -n ${RELEASE_OK:-} ]]; then return; fi; rm -rf -- "$RELEASE"; }
trap cleanup EXIT
# Build from a copy of what the package needs, so the checkout stays clean.
mkdir -p "$BUILD/src"
for f in setup.cfg pyproject.toml setup.py README.md; do
    [[ -f $REPO/$f ]] && cp "$REPO/$f" "$BUILD/src/"
done
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - netplugin | tar -C "$BUILD/src" -xf -

log "netplugin $VERSION: venv $RELEASE with $("$PY" --version 2>&1)"
"$PY" -m venv "$RELEASE" || die "python3 -m venv $RELEASE failed"
PIP=("$RELEASE/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location)
if [[ -n $WHEELHOUSE ]]; then
    PIP+=(--no-index --find-links "$WHEELHOUSE")
fi
# The versions CI ran, pinned by requirements/constraints.txt.
PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" -c "$REPO/requirements/constraints.txt" "$BUILD/src" \
    || die "pip could not install netplugin and its dependencies (offline? use --wheelhouse DIR)"
for s in "${SCRIPTS[@]}"; do
    [[ -x $RELEASE/bin/$s ]] || die "the venv has no $s script"
done
"$RELEASE/bin/netplugin" --version >/dev/null || die "the new netplugin does not start (see above)"
CONFIG=$ETC_DIR/netplugin.toml
# socket_of PYTHON: the socket the settings name, as that release reads them (it fails,
# saying why, if that release cannot load them).
socket_of() {
    "$1" - "$CONFIG" <<'PYEOF'
import os, sys
from netplugin.config import load
from netplugin.errors import NetpluginError
try:
    print(load(sys.argv[1] if os.path.exists(sys.argv[1]) else "/dev/null", env={}).socket)
except NetpluginError as exc:
    sys.exit(f"netplugin: {exc.message}")
PYEOF
}
# An upgrade must be able to read the settings in place before it becomes current.
socket_of "$RELEASE/bin/python" >/dev/null \
    || die "the new release cannot load $CONFIG (see above): fix it and run again; nothing was switched"
RELEASE_OK=1
ln -sfn "releases/${RELEASE##*/}" "$PREFIX/current.new"
mv -T "$PREFIX/current.new" "$PREFIX/current"
log "current -> ${RELEASE##*/}"
# Keep the newest KEEP releases (current among them): the one before is the rollback.
# Release folders end in their build time (-YYYYmmddHHMMSS): newest first by that.
mapfile -t OLD < <(find "$PREFIX/releases" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' \
    | awk -F- '{print $NF, $0}' | sort -rn | tail -n +$((KEEP + 1)) | cut -d' ' -f2-)
for old in "${OLD[@]}"; do
    [[ -n $old && $PREFIX/releases/$old != "$RELEASE" ]] && rm -rf -- "${PREFIX:?}/releases/$old"
done

# --- 2. console scripts
mkdir -p "$BIN_DIR"
LINKED=("${SCRIPTS[@]}")
for s in "${OPTIONAL_SCRIPTS[@]}"; do
    [[ -x $RELEASE/bin/$s ]] && LINKED+=("$s")
done
for s in "${LINKED[@]}"; do
    link=$BIN_DIR/$s
    if [[ -e $link && ! -L $link ]]; then
        die "$link exists and is not a link made by this script: move it away and run again"
    fi
    ln -sfn "$PREFIX/current/bin/$s" "$link"
done
log "linked ${LINKED[*]} in $BIN_DIR"

# --- 3. settings skeleton, only if absent
install -d -m 0755 "$ETC_DIR"
if [[ -e $CONFIG ]]; then
    log "$CONFIG exists: left as it is"
else
    install -m 0600 "$REPO/packaging/netplugin.toml" "$CONFIG"
    log "wrote $CONFIG: set etcd_endpoints, host_id and datapath_type there"
fi

# --- 4. Docker's spec file, with the socket the settings name
SOCKET=$(socket_of "$PREFIX/current/bin/python") \
    || die "the settings in $CONFIG do not load (see above): fix them and run again"
install -d -m 0755 "$SPEC_DIR"
SPEC=$SPEC_DIR/$NAME.json
"$PREFIX/current/bin/python" - "$REPO/plugin.json" "$NAME" "$SOCKET" "$SPEC.new" <<'PYEOF'
import json, sys
template, name, socket, out = sys.argv[1:]
spec = json.load(open(template))
spec.update(Name=name, Addr="unix://" + socket)
with open(out, "w") as fh:
    json.dump(spec, fh, indent=2)
    fh.write("\n")
PYEOF
chmod 0644 "$SPEC.new"
mv -f "$SPEC.new" "$SPEC"
log "wrote $SPEC: Docker finds plugin '$NAME' at unix://$SOCKET"

# drctl mounts job option files (credentials) only from this folder: root's alone.
install -d -m 0700 /etc/drctl

# --- 5. documentation (the units point at it)
install -d -m 0755 "$DOC_DIR"
install -m 0644 "$REPO/README.md" "$DOC_DIR/README.md"
for doc in "$REPO"/docs/*.md; do
    install -m 0644 "$doc" "$DOC_DIR/"
done

# --- 6. systemd
if [[ $SYSTEMD == yes ]] || { [[ $SYSTEMD == auto ]] && systemd_runs; }; then
    install -d -m 0755 "$UNIT_DIR"
    for u in "${UNITS[@]}"; do
        sed -e "s#/usr/local/bin/#$BIN_DIR/#g" -e "s#/etc/netplugin/#$ETC_DIR/#g" \
            -e "s#/usr/share/doc/netplugin/#$DOC_DIR/#g" "$REPO/systemd/$u" >"$UNIT_DIR/$u.new"
        chmod 0644 "$UNIT_DIR/$u.new"
        mv -f "$UNIT_DIR/$u.new" "$UNIT_DIR/$u"
    done
    log "units in $UNIT_DIR: ${UNITS[*]}"
    if systemd_runs; then
        systemctl daemon-reload
        systemctl enable netplugin.service netplugin-reconcile.timer drctl-agent.service >/dev/null \
            || die "systemctl enable failed"
        systemctl start netplugin-reconcile.timer || log "WARNING: netplugin-reconcile.timer did not start"
        if ((START)) || systemctl is-active --quiet netplugin.service; then
            systemctl restart netplugin.service || die "netplugin.service did not start: journalctl -u netplugin"
            log "netplugin.service (re)started"
            # After the daemon: the agent's jobs join netplugin networks.
            systemctl restart drctl-agent.service || log "WARNING: drctl-agent.service did not start: journalctl -u drctl-agent"
        else
            log "enabled; start it with: systemctl start netplugin"
        fi
    else
        log "systemd does not run here: units copied, not enabled"
    fi
else
    ((START)) && log "WARNING: --start needs systemd; start the daemon yourself: $BIN_DIR/netplugin --config $CONFIG"
    log "no systemd: start the daemon yourself, e.g. setsid $BIN_DIR/netplugin --config $CONFIG &"
fi
log "netplugin $VERSION installed in $((SECONDS - t0)) s"
