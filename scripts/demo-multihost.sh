#!/usr/bin/env bash
# The multi-host demo on one machine: two netplugin "hosts" (scripts/rig.sh),
# each with its own dockerd, plugin daemon and OVS bridge, joined by a VLAN
# trunk. A network is created once and used on both hosts: a container on
# host a reaches a container on host b directly over the trunk, tagged with
# its VLAN, and a container on another VLAN reaches nothing.
# Usage: sudo bash scripts/demo-multihost.sh      (the rig stays up; see the end)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
cd "$REPO"

bash scripts/install-deps.sh
bash scripts/services.sh start
bash scripts/make-images.sh

PREFIX=/netplugin/rig-demo
IMAGE=netplugin/busybox:latest
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting the two-host rig (etcd prefix $PREFIX)"
bash scripts/rig.sh start --etcd-prefix "$PREFIX"
# shellcheck disable=SC1090 # RIG_* variables: sockets, bridges, trunk ends
source <(bash scripts/rig.sh env)
export NETPLUGIN_CONFIG=/dev/null NETPLUGIN_ETCD_ENDPOINTS=$ETCD_ENDPOINT NETPLUGIN_ETCD_PREFIX=$PREFIX
NETCTL="$REPO/.venv/bin/netctl"
A=("$DOCKER" -H "$RIG_A_DOCKER_HOST")
B=("$DOCKER" -H "$RIG_B_DOCKER_HOST")

say "two hosts registered in etcd, each with its bridge and uplink trunk"
"$NETCTL" host ls

# A demo that ran before left its containers and networks: start clean.
for d in A B; do
    declare -n dk=$d
    mapfile -t old < <("${dk[@]}" ps -aq --filter label=netplugin.demo=1)
    ((${#old[@]} == 0)) || "${dk[@]}" rm -f "${old[@]}" >/dev/null
    for n in prod dr; do "${dk[@]}" network rm "$n" >/dev/null 2>&1 || true; done
done
"$NETCTL" network rm -f --with-endpoints prod >/dev/null 2>&1 || true

say "netctl creates global network prod (VLAN 100) once; Docker on each host binds to it"
"$NETCTL" network create prod --subnet 10.10.0.0/24 --gateway 10.10.0.1 --vlan 100
"${A[@]}" network create -d netplugin --ipam-driver netplugin --subnet 10.10.0.0/24 --gateway 10.10.0.1 prod
"${B[@]}" network create -d netplugin --ipam-driver netplugin --subnet 10.10.0.0/24 --gateway 10.10.0.1 prod

say "Docker on host a creates network dr (VLAN 200); host b binds to it by its subnet"
"${A[@]}" network create -d netplugin --ipam-driver netplugin --subnet 10.20.0.0/24 -o vlan=200 dr
"${B[@]}" network create -d netplugin --ipam-driver netplugin --subnet 10.20.0.0/24 dr

say "web on host a; db (10.10.0.50) on host b; intruder on host b's VLAN 200"
"${A[@]}" run -d --label netplugin.demo=1 --name web --network prod "$IMAGE" sleep 3600 >/dev/null
"${B[@]}" run -d --label netplugin.demo=1 --name db --network prod --ip 10.10.0.50 "$IMAGE" sleep 3600 >/dev/null
"${B[@]}" run -d --label netplugin.demo=1 --name intruder --cap-add NET_ADMIN --network dr "$IMAGE" sleep 3600 >/dev/null
"$NETCTL" endpoint ls

CAP=$(mktemp /tmp/netplugin-demo-trunk.XXXXXX)
trap 'rm -f "$CAP"; [[ -n ${TCPDUMP:-} ]] && kill "$TCPDUMP" 2>/dev/null || true' EXIT
# "vlan and ...": frames OVS sends out of the trunk carry their tag inline, and a
# plain "icmp" filter would not match them.
timeout 30 tcpdump -e -n -l -i "$RIG_A_TRUNK" -s 128 'icmp or arp or (vlan and (icmp or arp))' >"$CAP" 2>/dev/null &
TCPDUMP=$!
sleep 1

say "web (host a) -> db (host b, 10.10.0.50), same VLAN: must answer"
"${A[@]}" exec web ping -c 3 -W 2 10.10.0.50

say "intruder on VLAN 200 takes an address in prod's subnet and tries: must fail"
"${B[@]}" exec intruder ip addr add 10.10.0.99/24 dev eth0
if "${B[@]}" exec intruder ping -c 2 -W 2 10.10.0.50; then
    die "VLAN isolation failed: a container on VLAN 200 reached VLAN 100"
fi
echo "no answer across VLANs, as it should be"

sleep 0.5
kill "$TCPDUMP" 2>/dev/null || true
wait "$TCPDUMP" 2>/dev/null || true
TCPDUMP=
say "what crossed the trunk ($RIG_A_TRUNK <-> $RIG_B_TRUNK): 802.1Q frames; VLAN 200's ARP finds no one"
grep -E 'vlan [0-9]+' "$CAP" | head -12 || true

say "each bridge: its ports (the trunk and its own containers) and its OpenFlow table"
for br in "$RIG_A_BRIDGE" "$RIG_B_BRIDGE"; do
    printf '%s: ports %s; %s flows\n' "$br" "$(ovs-vsctl list-ports "$br" | tr '\n' ' ')" \
        "$(ovs-ofctl -O OpenFlow13 dump-flows --no-stats "$br" | grep -vc 'reply')"
done
ovs-ofctl -O OpenFlow13 dump-flows --no-stats "$RIG_A_BRIDGE" | grep -v reply | cut -c1-150
"$NETCTL" network inspect prod

say "demo done"
cat <<MSG
The rig keeps running (logs: $RIG_A_LOG, $RIG_B_LOG). Try:
  $DOCKER -H $RIG_B_DOCKER_HOST exec db ping -c 2 \$($DOCKER -H $RIG_A_DOCKER_HOST inspect -f '{{.NetworkSettings.Networks.prod.IPAddress}}' web)
  NETPLUGIN_ETCD_PREFIX=$PREFIX $NETCTL endpoint ls --host rig-b
Stop it with: sudo bash scripts/rig.sh stop
MSG
