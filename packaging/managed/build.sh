#!/usr/bin/env bash
# Build netplugin as a managed (v2) Docker plugin, from local files only (no
# image registry): the rootfs is assembled from this host's Python interpreter
# and standard library, the shared libraries they and the Python packages
# link (found with ldd), ovs-ofctl, the netplugin package of this checkout, and
# its dependencies (pip install --target, from the configured index or a local
# wheel folder; or copied from an existing venv with --site-from). Then
# `docker plugin create NAME DIR` with packaging/managed/config.json.
#
# Usage: sudo bash packaging/managed/build.sh [options]
#   --name NAME        plugin name (default netplugin; Docker adds :latest)
#   --out DIR          build here and keep it (default: a temporary folder, removed)
#   --python PY        interpreter copied into the rootfs (default /usr/bin/python3)
#   --site-from VENV   copy the packages of this venv (same Python X.Y) instead of pip
#   --no-create        build the folder only; do not call docker plugin create
#   --docker CLI       docker client (default /usr/bin/docker, else docker)
# Offline pip: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels bash build.sh
#
# Then:   docker plugin set NAME NETPLUGIN_ETCD_ENDPOINTS=http://10.0.0.1:2379 ...
#         (etcd TLS and password: files in /etc/netplugin/etcd, the etcd-credentials mount;
#          NETPLUGIN_ETCD_CACERT=/etc/netplugin/etcd/ca.pem ... and
#          args="--password-file /etc/netplugin/etcd/password" with NETPLUGIN_ETCD_USER=...)
#         python3 packaging/managed/check_settings.py NAME    (netplugin's own checks, before enable)
#         docker plugin enable NAME
#         docker network create -d NAME:latest --ipam-driver NAME:latest --subnet ... -o vlan=100 prod
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
NAME=netplugin
OUT=
KEEP=0
PY=/usr/bin/python3
SITE_FROM=
CREATE=1
DOCKER=/usr/bin/docker
[[ -x $DOCKER ]] || DOCKER=docker
SITE=/opt/netplugin/site        # PYTHONPATH in config.json

log() { printf '[%s] build.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }

while (($#)); do
    case $1 in
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a folder}; KEEP=1; shift 2 ;;
        --python) PY=${2:?--python needs a path}; shift 2 ;;
        --site-from) SITE_FROM=${2:?--site-from needs a venv}; shift 2 ;;
        --no-create) CREATE=0; shift ;;
        --docker) DOCKER=${2:?}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) log "unknown option $1"; usage ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (docker plugin create, and root-owned files in the rootfs)"
[[ $NAME =~ ^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$ ]] || die "plugin name '$NAME' is not a valid Docker plugin name"
[[ -f $HERE/config.json ]] || die "missing $HERE/config.json"
PY_ASKED=$PY
PY=$(readlink -f "$(command -v "$PY" || true)" || true)
[[ -n $PY && -x $PY ]] || die "no Python interpreter at '$PY_ASKED' (give --python)"
# One socket name for both ways of running: the spec file template at the top of the
# repository (install.sh) and the managed plugin's interface must agree.
"$PY" - "$REPO/plugin.json" "$HERE/config.json" <<'PYEOF' || die "plugin.json and config.json disagree (see above)"
import json, os, sys
spec, config = (json.load(open(p)) for p in sys.argv[1:])
addr = spec.get("Addr", "")
if not addr.startswith("unix://"):
    sys.exit(f"{sys.argv[1]}: Addr {addr!r} is not unix://PATH")
want, have = os.path.basename(addr), config.get("interface", {}).get("socket")
if want != have:
    sys.exit(f"the managed plugin's socket {have!r} (config.json) is not the spec file's {want!r} (plugin.json)")
PYEOF
command -v ldd >/dev/null || die "ldd is missing (package libc-bin)"
command -v chroot >/dev/null || die "chroot is missing (package coreutils)"

read -r PYVER STDLIB < <("$PY" -c 'import sys, sysconfig
assert sys.version_info >= (3, 11), "netplugin needs Python 3.11 or later"
print("%d.%d" % sys.version_info[:2], sysconfig.get_paths()["stdlib"])') \
    || die "$PY is not a usable Python 3.11+"

if ((CREATE)); then
    "$DOCKER" version >/dev/null 2>&1 || die "docker is not answering ($DOCKER version failed)"
    if "$DOCKER" plugin inspect "$NAME" >/dev/null 2>&1; then
        die "a plugin named $NAME exists already: 'docker plugin disable $NAME && docker plugin rm $NAME' first"
    fi
fi

# The etcd-credentials mount's default source: Docker refuses to enable a plugin whose
# mount source is missing, so it exists (empty, root's only) even without TLS or a password.
if [[ ! -e /etc/netplugin/etcd ]]; then
    install -d -m 0700 /etc/netplugin/etcd
    log "created /etc/netplugin/etcd (etcd TLS files and password file for the plugin go there)"
fi

if [[ -z $OUT ]]; then
    OUT=$(mktemp -d /tmp/netplugin-managed.XXXXXX)
    trap 'rm -rf -- "$OUT"' EXIT
else
    [[ ! -e $OUT/rootfs ]] || die "$OUT/rootfs exists already: give an empty or new --out folder"
    mkdir -p "$OUT"
fi
ROOT=$OUT/rootfs
t0=$SECONDS

# --- layout: merged /usr like Debian 12, so the paths ldd prints work as they are
log "rootfs in $ROOT (Python $PYVER from $PY)"
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,root,run/docker/plugins,proc,sys,dev} "$ROOT$SITE"
install -d -m 1777 "$ROOT/tmp"
for d in bin sbin lib lib64; do ln -sfn "usr/$d" "$ROOT/$d"; done
mkdir -p "$ROOT/var"
ln -sfn ../run "$ROOT/var/run"

# --- the interpreter and its standard library (without tests, GUI and tools)
cp -L "$PY" "$ROOT/usr/bin/python$PYVER"
ln -sfn "python$PYVER" "$ROOT/usr/bin/python3"
mkdir -p "$ROOT$STDLIB"
tar -C "$STDLIB" --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo \
    --exclude=./lib2to3 --exclude=./ensurepip --exclude=./site-packages --exclude=./dist-packages \
    -cf - . | tar -C "$ROOT$STDLIB" -xf -

# --- Python packages: netplugin's dependencies, then netplugin itself from this checkout
if [[ -n $SITE_FROM ]]; then
    vpy=$SITE_FROM/bin/python
    [[ -x $vpy ]] || die "--site-from $SITE_FROM: no bin/python there"
    read -r VVER VSITE < <("$vpy" -c 'import sys, sysconfig
print("%d.%d" % sys.version_info[:2], sysconfig.get_paths()["purelib"])')
    [[ $VVER == "$PYVER" ]] || die "--site-from $SITE_FROM is Python $VVER, the rootfs Python is $PYVER"
    log "copying the packages of $SITE_FROM"
    # Not the project (it comes from this checkout), nor tools and test libraries.
    tar -C "$VSITE" --exclude='./netplugin' --exclude='./netplugin-*' --exclude='./__editable__*' \
        --exclude='./_netplugin*' --exclude='./*.egg-link' --exclude='./pip' --exclude='./pip-*' \
        --exclude='./setuptools' --exclude='./setuptools-*' --exclude='./_distutils_hack' \
        --exclude='./distutils-precedence.pth' --exclude='./pkg_resources' --exclude='./pytest' \
        --exclude='./_pytest' --exclude='./pytest-*' --exclude='./hypothesis' --exclude='./hypothesis-*' \
        --exclude='./_hypothesis*' --exclude='./pluggy*' --exclude='./iniconfig*' --exclude='./py.py' \
        --exclude='./scapy' --exclude='./scapy-*' \
        -cf - . | tar -C "$ROOT$SITE" -xf -
else
    mapfile -t REQS < <("$PY" - "$REPO/setup.cfg" <<'PYEOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
for line in cfg["options"]["install_requires"].splitlines():
    if line.strip():
        print(line.strip())
PYEOF
    )
    ((${#REQS[@]})) || die "no install_requires in $REPO/setup.cfg"
    log "pip install --target: ${REQS[*]}"
    # --target works with Debian's pip too (PEP 668 only guards the system site).
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        "$PY" -m pip install -q --no-warn-script-location --target "$ROOT$SITE" \
        -c "$REPO/requirements/constraints.txt" "${REQS[@]}" \
        || die "pip could not install the dependencies (offline? use PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR or --site-from VENV)"
    rm -rf -- "${ROOT:?}$SITE/bin"
fi
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - netplugin | tar -C "$ROOT$SITE" -xf -
"$PY" -m compileall -q "$ROOT$SITE/netplugin" >&2 || die "the netplugin package of $REPO does not compile (see above)"

# --- ovs-vsctl: the userspace TSO setting of a netdev datapath goes through it
if VSCTL=$(command -v ovs-vsctl); then
    cp -L "$VSCTL" "$ROOT/usr/bin/ovs-vsctl"
else
    log "WARNING: ovs-vsctl not found on this host: a netdev datapath with userspace_tso will not start in the plugin"
fi
# --- ovs-ofctl: meters and flows (rate limits, ARP proxy) go through it
if OFCTL=$(command -v ovs-ofctl); then
    cp -L "$OFCTL" "$ROOT/usr/bin/ovs-ofctl"
else
    log "WARNING: ovs-ofctl not found on this host: rate limits and the ARP proxy will not work in the plugin"
fi

# --- shared libraries: everything ldd lists for every ELF file in the rootfs,
# plus what glibc loads at run time without telling ldd.
declare -A LIBS=()
is_elf() { [[ $(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ') == 177ELF ]]; }
while IFS= read -r -d '' f; do
    is_elf "$f" || continue
    while read -r lib; do
        [[ -n $lib ]] && LIBS[$lib]=1
    done < <(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(/{print $1}')
done < <(find "$ROOT/usr/bin" "$ROOT$STDLIB" "$ROOT$SITE" -type f \( -name '*.so' -o -name '*.so.*' -o -path '*/usr/bin/*' \) -print0)
for extra in libgcc_s.so.1 libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    # awk reads to the end (no early exit): ldconfig would die of SIGPIPE, and pipefail
    # would make the whole build fail with 141 whenever the match came early.
    path=$(ldconfig -p | awk -v n="$extra" '$1 == n && /x86-64|x86_64|64bit/ && !found {print $NF; found = 1}')
    [[ -n $path ]] && LIBS[$path]=1
done
for lib in "${!LIBS[@]}"; do
    [[ $lib == "$ROOT"* ]] && continue   # a package's own bundled library, already there
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done
log "${#LIBS[@]} shared libraries copied"

# --- the few files programs expect in /etc (Docker mounts hosts and resolv.conf)
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
: >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
cp "$HERE/config.json" "$OUT/config.json"

# --- smoke test: the rootfs runs the daemon's imports on its own
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH="$SITE" chroot "$ROOT" /usr/bin/python3 -c '
import netplugin.daemon, netplugin.wiring, netplugin.api, grpc, pyetcd, ovsdbapp.backend.ovs_idl
import pyroute2, gunicorn.app.base, flask, prometheus_client, docker, netaddr
print("rootfs ok: netplugin", netplugin.__version__)' >&2 \
    || die "the rootfs cannot import netplugin and its dependencies (see above)"
for tool in ovs-ofctl ovs-vsctl; do
    if [[ -x $ROOT/usr/bin/$tool ]]; then
        chroot "$ROOT" "/usr/bin/$tool" --version >/dev/null || die "$tool does not run in the rootfs"
    fi
done
log "rootfs built in $((SECONDS - t0)) s: $(du -sh "$ROOT" | cut -f1)"

if ((CREATE)); then
    log "docker plugin create $NAME $OUT"
    "$DOCKER" plugin create "$NAME" "$OUT" >&2 || die "docker plugin create failed"
    log "created; next: docker plugin set $NAME NETPLUGIN_ETCD_ENDPOINTS=... NETPLUGIN_HOST_ID=...; docker plugin enable $NAME"
fi
if ((KEEP)); then
    log "plugin folder kept in $OUT"
fi
