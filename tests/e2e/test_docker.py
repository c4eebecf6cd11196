"""The core against a real dockerd: containers on netplugin networks pass
real traffic, VLANs isolate, addresses are unique, nothing is left behind."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import subprocess
import time

import pytest

from .conftest import DOCKER, IMAGE, LABEL, docker, ip_of, new_network, pings, start

pytestmark = pytest.mark.e2e


def test_same_vlan_pings_other_vlan_does_not(clean):
    new_network("e2e-a", "10.61.0.0/24", 161)
    new_network("e2e-b", "10.62.0.0/24", 162)
    start("a1", "e2e-a")
    start("a2", "e2e-a")
    start("b1", "e2e-b", "--cap-add", "NET_ADMIN")
    a2 = ip_of("a2", "e2e-a")
    assert pings("a1", a2), "two containers on one netplugin network must reach each other"
    # b1 gets an address in a1's subnet on another VLAN: layer 2 alone decides.
    docker("exec", "b1", "ip", "addr", "add", "10.61.0.250/24", "dev", "eth0")
    assert not pings("b1", a2, count=2), "a container on another VLAN must not reach the network"
    assert pings("a1", ip_of("a1", "e2e-a"))   # and the container itself is fine


def test_tcp_works_across_the_bridge(clean):
    """A userspace datapath drops TCP unless tx checksum offload is off on the veths."""
    new_network("e2e-tcp", "10.63.0.0/24", 163)
    start("srv", "e2e-tcp", cmd=("sh", "-c", "while true; do echo hello-over-tcp | nc -l -p 7000; done"))
    start("cli", "e2e-tcp")
    srv = ip_of("srv", "e2e-tcp")
    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline and "hello-over-tcp" not in out:
        out = docker("exec", "cli", "sh", "-c", f"nc -w 3 {srv} 7000 </dev/null", check=False).stdout
    assert "hello-over-tcp" in out


def test_static_ip_and_duplicate_refused(clean):
    new_network("e2e-ip", "10.64.0.0/24", 164)
    start("fixed", "e2e-ip", "--ip", "10.64.0.50")
    assert ip_of("fixed", "e2e-ip") == "10.64.0.50"
    dup = docker("run", "--rm", "--label", LABEL, "--network", "e2e-ip", "--ip", "10.64.0.50", IMAGE, "true",
                 check=False)
    assert dup.returncode != 0
    assert "10.64.0.50" in dup.stderr and "already in use by endpoint" in dup.stderr, dup.stderr


def test_ip_range_is_respected(clean):
    new_network("e2e-range", "10.65.0.0/24", 165, "--ip-range", "10.65.0.192/28")
    for i in range(4):
        start(f"r{i}", "e2e-range")
    for i in range(4):
        assert ipaddress.ip_address(ip_of(f"r{i}", "e2e-range")) in ipaddress.ip_network("10.65.0.192/28")


def test_mac_address_is_honoured(clean):
    new_network("e2e-mac", "10.66.0.0/24", 166)
    start("mac1", "e2e-mac", "--mac-address", "02:aa:bb:cc:dd:01")
    out = docker("exec", "mac1", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert out == "02:aa:bb:cc:dd:01"


def test_connect_and_disconnect_running_container(clean):
    new_network("e2e-c1", "10.67.0.0/24", 167)
    new_network("e2e-c2", "10.68.0.0/24", 168)
    start("hub", "e2e-c1")
    start("peer", "e2e-c2")
    peer = ip_of("peer", "e2e-c2")
    assert not pings("hub", peer, count=1)
    docker("network", "connect", "e2e-c2", "hub")
    assert pings("hub", peer), "after network connect the container must reach the second network"
    docker("network", "disconnect", "e2e-c2", "hub")
    assert not pings("hub", peer, count=1)
    assert "eth1" not in docker("exec", "hub", "ip", "link").stdout


def test_network_rm_leaves_nothing(clean):
    new_network("e2e-rm", "10.69.0.0/24", 169)
    for i in range(3):
        start(f"x{i}", "e2e-rm")
    assert len(clean.ovs_ports()) == 3
    endpoint_ids = [docker("inspect", "-f", '{{(index .NetworkSettings.Networks "e2e-rm").EndpointID}}',
                           f"x{i}").stdout.strip() for i in range(3)]
    names = {clean.port_of(e) for e in endpoint_ids}
    names |= {"nc" + n[2:] for n in names}
    docker("rm", "-f", "x0", "x1", "x2")
    docker("network", "rm", "e2e-rm")
    assert clean.ovs_ports() == []
    # The veths go right after DeleteEndpoint answers (off the switch they carry nothing).
    give_up = time.monotonic() + 2
    while (left := [v for v in clean.veths() if v in names]) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert left == [], f"veths left behind 2 s after the containers went: {left}"
    # Other tests leave their own records (hosts, profiles, backup jobs): look at what a network owns.
    left = [k for sub in ("networks/", "index/", "ipam/", "endpoints/", "bindings/") for k in clean.etcd_keys(sub)]
    assert left == [], f"etcd records left behind: {left}"


def test_thirty_parallel_containers_get_unique_addresses(clean):
    new_network("e2e-par", "10.70.0.0/24", 170)

    def launch(i: int) -> subprocess.CompletedProcess:
        return docker("run", "-d", "--label", LABEL, "--name", f"p{i}", "--network", "e2e-par", IMAGE,
                      "sleep", "600", check=False, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(launch, range(30)))
    failed = [r.stderr for r in results if r.returncode != 0]
    assert failed == []
    running = docker("ps", "-q", "--filter", "label=netplugin.test=1", "--filter", "status=running").stdout.split()
    assert len(running) == 30
    addresses = [ip_of(f"p{i}", "e2e-par") for i in range(30)]
    assert len(set(addresses)) == 30
    assert pings("p0", addresses[29])


def test_bad_vlan_and_overlap_refused(clean):
    bad = docker("network", "create", "-d", "netplugin", "--ipam-driver", "netplugin", "--subnet", "10.71.0.0/24",
                 "-o", "vlan=5000", "e2e-bad", check=False)
    assert bad.returncode != 0 and "vlan 5000 is out of range" in bad.stderr
    new_network("e2e-ok", "10.72.0.0/24", 172)
    overlap = docker("network", "create", "-d", "netplugin", "--ipam-driver", "netplugin", "--subnet",
                     "10.72.0.0/16", "-o", "vlan=173", "e2e-overlap", check=False)
    assert overlap.returncode != 0 and "overlaps network e2e-ok" in overlap.stderr, overlap.stderr
    assert "e2e-overlap" not in docker("network", "ls", "--format", "{{.Name}}").stdout


def test_existing_global_network_binds_and_other_subnet_refused(clean):
    clean.netctl("network", "create", "e2e-glob", "--subnet", "10.73.0.0/24", "--gateway", "10.73.0.1",
                 "--vlan", "174")
    try:
        new_network("e2e-glob", "10.73.0.0/24", None, "--gateway", "10.73.0.1")   # VLAN from the record
        start("g1", "e2e-glob")
        port = [p for p in clean.ovs_ports()]
        tag = subprocess.run(["ovs-vsctl", "get", "port", port[0], "tag"], capture_output=True, text=True).stdout
        assert tag.strip() == "174"
        wrong = docker("network", "create", "-d", "netplugin", "--ipam-driver", "netplugin", "--subnet",
                       "10.74.0.0/24", "-o", "name=e2e-glob", "-o", "vlan=175", "e2e-glob2", check=False)
        assert wrong.returncode != 0 and "exists with subnet 10.73.0.0/24" in wrong.stderr, wrong.stderr
    finally:
        docker("rm", "-f", "g1", check=False)
        docker("network", "rm", "e2e-glob", check=False)
        clean.netctl("network", "rm", "e2e-glob", check=False)


def test_traffic_survives_daemon_kill(clean):
    new_network("e2e-kill", "10.75.0.0/24", 176)
    start("k1", "e2e-kill")
    start("k2", "e2e-kill")
    k2 = ip_of("k2", "e2e-kill")
    clean.kill9()
    try:
        assert pings("k1", k2, count=3), "running containers must keep talking while the daemon is down"
    finally:
        clean.start()
    assert pings("k1", k2)
