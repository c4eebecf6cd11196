#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine: sets everything up, starts netplugin,
# creates two VLAN networks, shows two containers pinging each other on one and
# a container on the other VLAN failing to reach them.
# Usage (as root): bash scripts/demo.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
cd "$REPO"

bash scripts/install-deps.sh
bash scripts/services.sh start
bash scripts/make-images.sh
bash scripts/reset-state.sh

IMAGE=netplugin/busybox:latest
NETCTL="$REPO/.venv/bin/netctl"
DEMO_LOG=$NP_CI_LOGS/netplugin-demo.log
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting netplugin (log: $DEMO_LOG)"
setsid "$REPO/.venv/bin/netplugin" --host-id demo-host --bridge netplugin0 --datapath-type netdev \
    --etcd-endpoints "$ETCD_ENDPOINT" >>"$DEMO_LOG" 2>&1 < /dev/null &
wait_for test -S /run/docker/plugins/netplugin.sock 10 || die "netplugin did not listen; see $DEMO_LOG"
ls -l /run/docker/plugins/netplugin.sock

say "netctl creates global network prod (VLAN 100); Docker binds to it"
"$NETCTL" network create prod --subnet 10.10.0.0/24 --gateway 10.10.0.1 --vlan 100
$DOCKER network create -d netplugin --ipam-driver netplugin --subnet 10.10.0.0/24 --gateway 10.10.0.1 prod

say "Docker alone creates global network dr (VLAN 200)"
$DOCKER network create -d netplugin --ipam-driver netplugin --subnet 10.20.0.0/24 --gateway 10.20.0.1 \
    -o vlan=200 dr

say "two containers on prod, one on dr"
$DOCKER run -d --name demo-web --network prod $IMAGE sleep 3600 >/dev/null
$DOCKER run -d --name demo-db --network prod --ip 10.10.0.50 $IMAGE sleep 3600 >/dev/null
$DOCKER run -d --name demo-intruder --cap-add NET_ADMIN --network dr $IMAGE sleep 3600 >/dev/null
"$NETCTL" network ls
ovs-vsctl show

say "demo-web -> demo-db (10.10.0.50), same VLAN: must answer"
$DOCKER exec demo-web ping -c 3 -W 2 10.10.0.50

say "demo-intruder on VLAN 200 takes an address in prod's subnet and tries: must fail"
$DOCKER exec demo-intruder ip addr add 10.10.0.99/24 dev eth0
if $DOCKER exec demo-intruder ping -c 3 -W 2 10.10.0.50; then
    die "VLAN isolation failed: a container on VLAN 200 reached VLAN 100"
fi
echo "no answer across VLANs, as it should be"

say "demo done"
cat <<MSG
netplugin keeps running (log: $DEMO_LOG). Try:
  $NETCTL network inspect prod
  $DOCKER run --rm --network prod $IMAGE ip addr show eth0
Clean up with (as root): bash scripts/reset-state.sh
MSG
