#!/usr/bin/env bash
# Bring the machine to a known state before a test run: no plugin processes,
# no netplugin networks/containers in Docker, no test bridges/veths in OVS or
# the kernel, no plugin sockets or run files, no /netplugin/ keys in etcd.
# Every step tolerates absence (and a service being down), so it is safe to
# run at any time and repeatedly.
set -euo pipefail
shopt -s nullglob
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

PLUGIN_DIR=/run/docker/plugins
STUB_PID=
start=$SECONDS

# --- 0. the multi-host rig (scripts/rig.sh) -----------------------------------------
# Two dockerds in their own mount namespaces (data roots under /var/lib/netplugin-rig,
# exec roots under /run/netplugin-rig), their plugin daemons, the bridges nprig-a/b and
# the trunk veth nptrunk-a/b. rig.sh stop removes all of it (containers first, while the
# rig's own plugins still answer) and tolerates any part being gone; so it runs first.
clean_rig() {
    [[ -f $REPO/scripts/rig.sh ]] || return 0
    timeout 300 bash "$REPO/scripts/rig.sh" stop || log "WARNING: scripts/rig.sh stop failed"
}

# --- 1. plugin processes ---------------------------------------------------------
# The plugin's daemon: gunicorn serving netplugin, `python -m netplugin.daemon`,
# or the `netplugin` console script. Matched on the exact argv, killed by pid.
is_plugin_process() {
    local -a argv
    mapfile -d '' -t argv 2>/dev/null <"/proc/$1/cmdline" || return 1
    ((${#argv[@]})) || return 1 # kernel threads, zombies
    local all=" ${argv[*]} "
    [[ $all == *gunicorn* && $all == *netplugin* ]] && return 0
    [[ $all == *netplugin.daemon* ]] && return 0
    [[ ${argv[0]##*/} == netplugin || ${argv[1]:-} == */netplugin ]] && return 0
    return 1
}

kill_plugin_processes() {
    local -a pids=()
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        ((pid == $$ || pid == PPID)) && continue
        if is_plugin_process "$pid"; then pids+=("$pid"); fi
    done
    if ((${#pids[@]} == 0)); then log "no plugin processes"; return; fi
    log "stopping plugin processes: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 5)) alive
    while :; do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        ((${#alive[@]} == 0)) && return
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    log "WARNING: SIGKILL to plugin processes that ignored SIGTERM: ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

# --- 2. Docker ----------------------------------------------------------------------
# Docker asks the network's driver before it forgets an endpoint or a network,
# and with the plugin's socket gone it retries each call with backoff (one
# `docker network rm` took 45 s here). So while removing, a tiny stand-in
# (scripts/plugin_standin.py) answers the teardown calls with success in
# milliseconds (and refuses any create); the later steps remove what the real
# plugin left behind.
#
# Ours are the legacy (socket-file) plugins named netplugin* (the product and
# the demo) or np* (the test rings: npfa*, npfb*, nprig*...). Never another
# plugin's socket, nor a managed plugin ("name:tag").
OUR_PLUGIN_RE='^(netplugin|np)[A-Za-z0-9._-]*$'

start_stub() {
    local -a socks=()
    local name
    for name in "$@"; do socks+=("$PLUGIN_DIR/$name.sock"); done
    mkdir -p "$PLUGIN_DIR"
    log "stand-in plugin for teardown on: ${socks[*]}"
    # Debian's python3 (stdlib only): present before any venv exists.
    /usr/bin/python3 "$REPO/scripts/plugin_standin.py" "${socks[@]}" &
    STUB_PID=$!
    trap stop_stub EXIT
    local s
    for s in "${socks[@]}"; do
        wait_for test -S "$s" 5 || die "stand-in plugin did not create $s"
    done
}

stop_stub() {
    [[ -n $STUB_PID ]] || return 0
    kill -TERM "$STUB_PID" 2>/dev/null || true
    wait "$STUB_PID" 2>/dev/null || true
    STUB_PID=
}

clean_docker() {
    if ! docker_up; then log "docker not running: skipping containers/networks"; return; fi

    # Networks whose driver is netplugin (or a test-named netplugin-*).
    local -a nets=() names=() drivers=() ctrs=()
    local id driver name ipam
    while read -r id driver name; do
        [[ $driver =~ $OUR_PLUGIN_RE ]] || continue
        nets+=("$id")
        names+=("$name")
        drivers+=("$driver")
        ipam=$("$DOCKER" network inspect -f '{{.IPAM.Driver}}' "$id" 2>/dev/null || true)
        if [[ -n $ipam && $ipam != default && $ipam != null ]]; then drivers+=("$ipam"); fi
    done < <("$DOCKER" network ls --no-trunc --format '{{.ID}} {{.Driver}} {{.Name}}')

    # Test containers, plus every container on those networks. By ID for
    # containers that ran; by name too, because a created-but-never-started
    # container records only the network's name.
    mapfile -t ctrs < <("$DOCKER" ps -aq --no-trunc --filter label=netplugin.test=1)
    for id in "${nets[@]}" "${names[@]}"; do
        mapfile -t -O "${#ctrs[@]}" ctrs < <("$DOCKER" ps -aq --no-trunc --filter "network=$id")
    done
    if ((${#ctrs[@]})); then
        mapfile -t ctrs < <(printf '%s\n' "${ctrs[@]}" | sort -u)
    fi

    if ((${#nets[@]} + ${#ctrs[@]} == 0)); then
        log "no netplugin containers or networks"
        return
    fi

    local -a plugins=()
    for driver in "${drivers[@]}"; do
        if [[ $driver =~ $OUR_PLUGIN_RE ]]; then plugins+=("$driver"); fi
    done
    if ((${#plugins[@]})); then
        mapfile -t plugins < <(printf '%s\n' "${plugins[@]}" | sort -u)
        start_stub "${plugins[@]}"
    fi

    if ((${#ctrs[@]})); then
        log "removing ${#ctrs[@]} container(s)"
        timeout 120 "$DOCKER" rm -f "${ctrs[@]}" >/dev/null \
            || log "WARNING: some containers could not be removed"
    fi
    if ((${#nets[@]})); then
        log "removing ${#nets[@]} network(s): ${names[*]}"
        # One at a time: `docker network rm A B` stops at the first failure.
        for id in "${nets[@]}"; do
            timeout 60 "$DOCKER" network rm "$id" >/dev/null \
                || log "WARNING: network $id could not be removed"
        done
    fi
    stop_stub
}

# --- 3. OVS and kernel links ----------------------------------------------------------
clean_ovs() {
    if ! ovs_up; then log "ovs not running: skipping bridges"; return; fi
    local br port n=0
    while read -r br; do
        [[ -n $br ]] || continue
        # The demo's bridge and those the test rings and benchmarks make (a prefix and random hex).
        if [[ $br == netplugin0 || $br =~ ^(nptest|nprig-|npe2e|npfa|nprec|nprlbench) \
              || $br =~ ^np[mi][0-9a-f]{6}$ ]]; then
            if ovs-vsctl --timeout=10 --if-exists del-br "$br"; then
                n=$((n + 1))
            else
                log "WARNING: could not delete bridge $br"
            fi
            continue
        fi
        # Plugin ports left on any other bridge (host-side veths are np*).
        while read -r port; do
            [[ $port == np* ]] || continue
            ovs-vsctl --timeout=10 --if-exists del-port "$br" "$port" \
                || log "WARNING: could not delete port $port on $br"
        done < <(ovs-vsctl --timeout=5 list-ports "$br" 2>/dev/null || true)
    done < <(ovs-vsctl --timeout=5 list-br 2>/dev/null || true)
    log "deleted $n OVS bridge(s)"
}

clean_links() {
    local name n=0
    # `ip -o link` prints "IDX: NAME@PEER: <...>"; deleting one end removes the pair.
    while read -r name; do
        name=${name%%@*}
        [[ $name == np* ]] || continue
        if ip link del dev "$name" 2>/dev/null; then n=$((n + 1)); fi
    done < <(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}')
    log "deleted $n np* veth(s)"
    # Test namespaces share the nptest prefix with the test bridges.
    for name in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        if [[ $name == nptest* ]]; then ip netns del "$name" 2>/dev/null || true; fi
    done
}

# --- 4. files and etcd ------------------------------------------------------------------
clean_files() {
    local -a files=("$PLUGIN_DIR"/np*.sock /run/netplugin*)
    if ((${#files[@]})); then
        log "removing ${files[*]}"
        rm -rf -- "${files[@]}"
    fi
}

clean_etcd() {
    if ! etcd_up; then log "etcd not running: skipping /netplugin/ keys"; return; fi
    local n
    n=$(etcdctl --endpoints="$ETCD_ENDPOINT" --dial-timeout=2s --command-timeout=10s \
        del --prefix /netplugin/) || die "etcdctl del --prefix /netplugin/ failed"
    log "deleted ${n:-0} etcd key(s) under /netplugin/"
}

# Plugin first (so nothing re-creates state behind us), then Docker's view
# (needs the stand-in), then the datapath and the store.
clean_rig
kill_plugin_processes
rm -f -- "$PLUGIN_DIR"/np*.sock
clean_docker
clean_ovs
clean_links
clean_files
clean_etcd
log "reset done in $((SECONDS - start)) s"
