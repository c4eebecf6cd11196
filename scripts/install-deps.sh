#!/usr/bin/env bash
# Install the Debian packages and the Python venv the tests need.
# Idempotent and fast on re-run: apt only when a package is missing,
# pip only when the packaging files changed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

PACKAGES=(
    openvswitch-switch etcd-server etcd-client docker.io containerd
    busybox-static iperf3 arping tcpdump ethtool iputils-ping iproute2
    procps psmisc python3-venv python3-pip
    prometheus # promtool: the alert rules' checks and unit tests (packaging/prometheus/)
    mariadb-server mariadb-client zstd # drctl: its images are built from these binaries
    mariadb-backup socat # drctl --method physical: mariadb-backup, mbstream and the receiver's listener (tools image)
    python3-openvswitch # its ovs._json (the C JSON parser) is linked into the venv below
)
# Nice to have (MariaDB backup companion); a failure here must not fail CI.
OPTIONAL_PACKAGES=(mariadb-client)

missing_from() {
    local p
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] \
            || printf '%s\n' "$p"
    done
}

POLICY_RC=/usr/sbin/policy-rc.d
OUR_POLICY_RC=0
remove_policy_rc() {
    if ((OUR_POLICY_RC)); then rm -f "$POLICY_RC"; fi
}

apt_install() {
    # No systemd here: package postinsts (docker.io, etcd-server, openvswitch-switch)
    # try to start their services and would fail or start etcd on the wrong data dir.
    # policy-rc.d exit 101 tells invoke-rc.d "not allowed"; services.sh starts them.
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\n# netplugin install-deps: no service starts during install\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        OUR_POLICY_RC=1
        trap remove_policy_rc EXIT
    fi
    # needrestart (a docker.io Recommends) would otherwise ask questions.
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l \
        apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

mapfile -t missing < <(missing_from "${PACKAGES[@]}")
mapfile -t missing_opt < <(missing_from "${OPTIONAL_PACKAGES[@]}")
if ((${#missing[@]} + ${#missing_opt[@]})); then
    log "installing: ${missing[*]} ${missing_opt[*]}"
    start=$SECONDS
    # Lists may be absent or stale on a fresh machine; only pay for update when needed.
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
    if ((${#missing_opt[@]})); then
        apt_install "${missing_opt[@]}" || log "WARNING: optional packages not installed: ${missing_opt[*]}"
    fi
    log "apt done in $((SECONDS - start)) s"
else
    log "all Debian packages present"
fi

# --- Python venv -----------------------------------------------------------
VENV=$REPO/.venv
PY=$VENV/bin/python
# Recreate when missing or broken (e.g. the base interpreter it points at is gone).
if ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    log "creating venv $VENV with $(command -v python3) ($(python3 --version 2>&1))"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
fi

if [[ -f $REPO/pyproject.toml ]]; then
    # The hash covers what decides the installed set: packaging files + interpreter.
    want=$(
        cd "$REPO"
        {
            "$PY" -c 'import sys; print(sys.version)'
            for f in pyproject.toml setup.cfg setup.py requirements/constraints.txt; do
                if [[ -f $f ]]; then echo "== $f"; cat "$f"; fi
            done
        } | sha256sum | cut -d' ' -f1
    )
    have=$(cat "$VENV/.deps-hash" 2>/dev/null || true)
    if [[ $want != "$have" ]]; then
        log "pip install -e .[test] -c requirements/constraints.txt"
        start=$SECONDS
        # The exact versions CI ran (scripts/refresh-constraints.sh makes the file).
        "$PY" -m pip install -q --disable-pip-version-check -c "$REPO/requirements/constraints.txt" -e "${REPO}[test]"
        printf '%s\n' "$want" >"$VENV/.deps-hash"
        log "pip done in $((SECONDS - start)) s"
    else
        log "venv up to date"
    fi
else
    log "no pyproject.toml yet: venv created, nothing to pip install"
fi

# --- the ovs package's C JSON parser ------------------------------------------
# PyPI's ovs builds ovs._json only against libopenvswitch's headers and library,
# which Debian 12 does not package (docs/dependencies.md). Debian's
# python3-openvswitch ships that module built from the OVS that runs the switch,
# with libopenvswitch linked in: it goes into the venv's ovs package when the
# interpreter's ABI tag matches, and stays only if it parses a document.
if [[ -f $PY ]] && "$PY" -c 'import ovs' >/dev/null 2>&1; then
    site=$("$PY" -c 'import os, ovs; print(os.path.dirname(ovs.__file__))')
    suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    debian=/usr/lib/python3/dist-packages/ovs/_json$suffix
    if [[ -f $debian && ! -f $site/_json$suffix ]]; then
        ln -sfn "$debian" "$site/_json$suffix"
    fi
    if "$PY" -c 'import ovs.json, ovs._json
assert ovs.json.PARSER == ovs.json.PARSER_C
assert ovs.json.from_string("{\"a\": [1, \"x\", null]}") == {"a": [1, "x", None]}' >/dev/null 2>&1; then
        log "ovs._json: the C JSON parser is in use"
    else
        [[ -L $site/_json$suffix ]] && rm -f "$site/_json$suffix"
        log "WARNING: ovs._json unavailable for $("$PY" --version 2>&1) (no $debian): OVSDB JSON is parsed in Python"
    fi
fi
