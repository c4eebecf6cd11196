"""OVS restart: ovsdb-server and ovs-vswitchd are stopped and started again
(with the commands scripts/services.sh uses: ``ovs-ctl stop``, then
``services.sh start``, which runs ``ovs-ctl --system-id=random start``) while
a netplugin daemon serves running containers with rate limits.

OVSDB keeps the bridge and its ports in its database, so vswitchd makes them
again, with the same OpenFlow port numbers; but flows and meters live only in
vswitchd and are gone. The daemon must put back from etcd, by itself: the
table-0 flow of every local port (with its meter), the ARP answers of table
10, the table-miss flows, and every meter with its rate. Then the containers
ping again and a new container can be started (the daemon's OVSDB connection
came back too).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from .faultkit import (
    IMAGE,
    LABEL,
    docker,
    host_veths,
    ofctl_lines,
    remove_containers,
    run,
    serving,
    start_services,
    wait_until,
)

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
SUBNET = "10.251.20.0/24"           # VLAN 3620
RESTORE_WITHIN = 6.0                # seconds after OVS answers again (netplugin/ovs_restart.py)


def ovs_up() -> bool:
    return run("ovs-vsctl", "--timeout=5", "show", check=False).returncode == 0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("ovs"), "npfb4", repair=lambda: ovs_up() or start_services()) as d:
        yield d


def ip_of(name: str) -> str:
    return docker("inspect", "-f", '{{(index .NetworkSettings.Networks "fb-ovs").IPAddress}}', name).stdout.strip()


def pings(name: str, address: str) -> bool:
    return docker("exec", name, "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def test_flows_meters_and_ports_come_back_after_ovs_restart(daemon):
    daemon.netctl("profile", "create", "fb-ovs-cap", "--rate", "50mbit")
    daemon.network("fb-ovs", SUBNET, "vlan=3620", "profile=fb-ovs-cap")
    veths0 = host_veths()
    names = ["fbovs-1", "fbovs-2", "fbovs-3"]
    for name in names:
        docker("run", "-d", "--label", LABEL, "--name", name, "--network", "fb-ovs", IMAGE, "sleep", "600")
    daemon.netctl("endpoint", "set", "fbovs-3", "--rate", "30mbit")       # one meter with a rate of its own
    ips = {name: ip_of(name) for name in names}
    assert wait_until(lambda: pings("fbovs-1", ips["fbovs-2"]), 10)

    def state():
        return sorted(daemon.ports()), sorted(daemon.flows()), sorted(daemon.meters())
    # Wait until the limit of fbovs-3 is applied, then take what must come back.
    assert wait_until(lambda: any("rate=30000" in m for m in daemon.meters()), 10), daemon.meters()
    ports0, flows0, meters0 = state()
    table0 = [f for f in daemon.endpoint_flows() if "table=0" in f or "table=" not in f]
    table10 = [f for f in daemon.endpoint_flows() if "table=10" in f]
    assert len(ports0) == 3 and len(meters0) == 3, (ports0, meters0)
    assert len(table0) == 3 and all("meter:" in f for f in table0), table0
    assert len(table10) == 3 and all("arp" in f for f in table10), table10
    ofports0 = {p: run("ovs-vsctl", "get", "Interface", p, "ofport").stdout.strip() for p in ports0}

    t0 = time.monotonic()
    try:
        proc = subprocess.run([OVS_CTL, "stop"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not ovs_up()
        stopped = time.monotonic()
        # Traffic of a netdev bridge stops with vswitchd: no ping can pass now.
        assert not pings("fbovs-1", ips["fbovs-2"])
    finally:
        start_services()
    up = time.monotonic()
    assert ovs_up()
    lost = ofctl_lines("dump-meters", daemon.bridge)
    print(f"\nOVS down {up - stopped:.1f} s (stop+start {up - t0:.1f} s); right after start: "
          f"{len([m for m in lost if m.startswith('meter=')])} meters")

    # The daemon notices the restart (vswitchd's pid changed, table 10 empty)
    # within a second and puts everything back: well before the sync loops'
    # 10 s full pass would.
    restored = wait_until(lambda: state() == (ports0, flows0, meters0), RESTORE_WITHIN, every=0.5)
    took = time.monotonic() - up
    assert restored, (f"not restored {took:.0f} s after OVS came back:\n"
                      f"ports {state()[0]} vs {ports0}\nflows {sorted(set(state()[1]) ^ set(flows0))}\n"
                      f"meters {state()[2]} vs {meters0}\n{daemon.tail()}")
    assert {p: run("ovs-vsctl", "get", "Interface", p, "ofport").stdout.strip() for p in ports0} == ofports0
    print(f"ports, {len(flows0)} flows and {len(meters0)} meters restored {took:.1f} s after OVS was up")

    assert wait_until(lambda: pings("fbovs-1", ips["fbovs-2"]) and pings("fbovs-3", ips["fbovs-1"]), 15), \
        "containers do not ping after the OVS restart"
    # The daemon reconnected to OVSDB: a new container gets a port, its flows and its meter.
    docker("run", "-d", "--label", LABEL, "--name", "fbovs-4", "--network", "fb-ovs", IMAGE, "sleep", "600")
    assert wait_until(lambda: pings("fbovs-4", ips["fbovs-1"]), 10)
    assert len(daemon.ports()) == 4 and len(daemon.meters()) == 4
    report = daemon.reconcile("--grace", "0", "--dry-run")
    assert daemon.own_findings(report, veths0) == [], report["findings"]
    remove_containers()
