"""Two hosts, two VLANs, real containers: a network on VLAN 100 and one on
VLAN 200, each created once and used on both hosts. Containers of one VLAN on
different hosts reach each other over the trunk; nothing crosses VLANs; the
trunk carries 802.1Q-tagged frames; and no host has a flow per remote container.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.multihost

V100, SUBNET100 = "mh-v100", "10.231.100.0/24"
V200, SUBNET200 = "mh-v200", "10.231.200.0/24"


class Topology:
    """a100, a200 on host a; b100, b200 on host b (a100 and a200 may add addresses: NET_ADMIN)."""

    def __init__(self, rig):
        self.rig = rig
        a, b = rig.a, rig.b
        # Docker creates the global networks on host a (-o vlan) and binds to them on host b.
        for host in (a, b):
            host.network(V100, SUBNET100, 100)
            host.network(V200, SUBNET200, 200)
        a.start("a100", V100, "--cap-add", "NET_ADMIN")
        a.start("a200", V200, "--cap-add", "NET_ADMIN")
        b.start("b100", V100)
        b.start("b200", V200)
        self.ip = {"a100": a.ip_of("a100", V100), "a200": a.ip_of("a200", V200),
                   "b100": b.ip_of("b100", V100), "b200": b.ip_of("b200", V200)}
        assert all(self.ip.values()), self.ip

    def free_address(self, subnet_prefix: str) -> str:
        used = set(self.ip.values())
        for last in range(250, 2, -1):
            cand = f"{subnet_prefix}.{last}"
            if cand not in used:
                return cand
        raise AssertionError("no free address")


@pytest.fixture(scope="module")
def topo(rig):
    rig.clean()
    t = Topology(rig)
    # Learn the MACs once: the first packets of each pair go to ARP.
    assert rig.a.ping_until("a100", t.ip["b100"]), rig.logs()
    assert rig.a.ping_until("a200", t.ip["b200"]), rig.logs()
    yield t
    rig.clean()


def test_one_network_per_vlan_used_on_both_hosts(topo, rig):
    nets = {n["name"]: n for n in rig.a.netctl_json("network", "ls")}
    assert {V100, V200} <= set(nets)
    assert (nets[V100]["vlan"], nets[V100]["subnet"]) == (100, SUBNET100)
    assert (nets[V200]["vlan"], nets[V200]["subnet"]) == (200, SUBNET200)
    info = rig.b.netctl_json("network", "inspect", V100)[0]
    assert info["hosts"] == ["rig-a", "rig-b"]
    assert sorted(e["host"] for e in info["endpoints"]) == ["rig-a", "rig-b"]


def test_same_vlan_reaches_across_hosts(topo, rig):
    a, b, ip = rig.a, rig.b, topo.ip
    assert a.pings("a100", ip["b100"]), "VLAN 100: host a -> host b failed"
    assert b.pings("b100", ip["a100"]), "VLAN 100: host b -> host a failed"
    assert a.pings("a200", ip["b200"]), "VLAN 200: host a -> host b failed"
    assert b.pings("b200", ip["a200"]), "VLAN 200: host b -> host a failed"
    # Full-size frames: 1500-byte packets plus the 4-byte tag cross the trunk.
    assert a.exec("a100", "ping", "-c", "1", "-W", "2", "-s", "1472", ip["b100"]).returncode == 0


def test_other_vlan_unreachable_across_hosts(topo, rig):
    """Plain ping across subnets proves nothing (no route). So the container on
    VLAN 100 takes an address in VLAN 200's subnet: it then ARPs for its target
    on its own VLAN, and must get no answer; the same the other way round."""
    a, ip = rig.a, topo.ip
    borrowed = topo.free_address("10.231.200")
    a.exec("a100", "ip", "addr", "add", f"{borrowed}/24", "dev", "eth0", check=True)
    try:
        assert not a.pings("a100", ip["b200"], count=2, wait=1), "VLAN 100 reached VLAN 200 on the other host"
        assert not a.pings("a100", ip["a200"], count=2, wait=1), "VLAN 100 reached VLAN 200 on its own host"
    finally:
        a.exec("a100", "ip", "addr", "del", f"{borrowed}/24", "dev", "eth0")
    borrowed = topo.free_address("10.231.100")
    a.exec("a200", "ip", "addr", "add", f"{borrowed}/24", "dev", "eth0", check=True)
    try:
        assert not a.pings("a200", ip["b100"], count=2, wait=1), "VLAN 200 reached VLAN 100 on the other host"
    finally:
        a.exec("a200", "ip", "addr", "del", f"{borrowed}/24", "dev", "eth0")
    # Control: the same containers still reach their own VLAN.
    assert a.pings("a100", ip["b100"]) and a.pings("a200", ip["b200"])


def test_trunk_carries_vlan_tagged_frames(topo, rig):
    a, ip = rig.a, topo.ip
    cap = subprocess.Popen(["tcpdump", "-e", "-n", "-l", "-i", rig.a.trunk, "-s", "128"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        line = ""
        while "listening on" not in line:          # tcpdump says so on stderr once it captures
            assert time.monotonic() < deadline and cap.poll() is None, f"tcpdump did not start: {line}"
            line = cap.stderr.readline()
        assert a.pings("a100", ip["b100"], count=2)
        assert a.pings("a200", ip["b200"], count=2)
        borrowed = topo.free_address("10.231.200")
        a.exec("a100", "ip", "addr", "add", f"{borrowed}/24", "dev", "eth0", check=True)
        try:
            a.exec("a100", "arping", "-c", "2", "-w", "2", "-I", "eth0", "-s", borrowed, ip["b200"])
        finally:
            a.exec("a100", "ip", "addr", "del", f"{borrowed}/24", "dev", "eth0")
        time.sleep(0.3)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    lines = out.splitlines()

    def frames(*words: str) -> list[str]:
        return [ln for ln in lines if all(w in ln for w in words)]

    v100 = frames("ethertype 802.1Q", "vlan 100,", f"{ip['a100']} > {ip['b100']}: ICMP echo request")
    v100 += frames("ethertype 802.1Q", "vlan 100,", f"{ip['b100']} > {ip['a100']}: ICMP echo reply")
    v200 = frames("ethertype 802.1Q", "vlan 200,", f"{ip['a200']} > {ip['b200']}: ICMP echo request")
    v200 += frames("ethertype 802.1Q", "vlan 200,", f"{ip['b200']} > {ip['a200']}: ICMP echo reply")
    assert len(v100) >= 4 and len(v200) >= 4, f"expected tagged ICMP both ways on both VLANs:\n{out}"
    # Container traffic never crosses the trunk untagged.
    untagged = [ln for ln in lines if "10.231." in ln and "802.1Q" not in ln]
    assert not untagged, "untagged frames on the trunk:\n" + "\n".join(untagged)
    # The cross-VLAN attempt left on VLAN 100 and nobody on VLAN 200 answered it.
    asked = frames("vlan 100,", f"Request who-has {ip['b200']}")
    assert asked, f"the ARP request for {ip['b200']} should cross the trunk tagged 100:\n{out}"
    answered = frames(f"Reply {ip['b200']} is-at") + frames(f"{ip['b200']} > {borrowed}")
    assert not answered, "VLAN 200 answered a VLAN 100 request:\n" + "\n".join(answered)
    # Nothing of VLAN 200's subnet travelled tagged 100 except that request.
    stray = [ln for ln in frames("vlan 100,") if ip["b200"] in ln and "Request who-has" not in ln]
    assert not stray, "\n".join(stray)


def test_tcp_across_hosts(topo, rig):
    """4 MB over TCP from host b to host a (TCP fails on the userspace datapath
    when a veth on the path keeps tx checksum offload; the trunk is one)."""
    a, b, ip = rig.a, rig.b, topo.ip
    size = 4000 * 1024
    b.docker("exec", "-d", "b100", "nc", "-l", "-p", "7100", "-e", "sh", "-c",
             f"dd if=/dev/zero bs=1024 count={size // 1024} 2>/dev/null")
    deadline = time.monotonic() + 10
    got = ""
    while time.monotonic() < deadline:
        proc = a.exec("a100", "sh", "-c", f"nc -w 5 {ip['b100']} 7100 -e sh -c 'wc -c > /tmp/n'; cat /tmp/n",
                      timeout=30)
        got = proc.stdout.strip()
        if got and got != "0":
            break
        time.sleep(0.3)                 # the listener may not be up yet
    assert got == str(size), f"received {got!r} of {size} bytes"


def wait_arp_answers(host, present: bool, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any("arp_tpa=" in f for f in host.flows()) == present:
            return True
        time.sleep(0.2)
    return False


def test_no_flow_per_remote_container(topo, rig):
    """Contiv kept a forwarding flow per container on every node and had to remove
    it. Here forwarding is OVS's NORMAL action (MAC learning + VLAN tags): a
    container starting on host b adds no flow on host a. The only per-endpoint
    flows a host holds for other hosts' containers are the ARP proxy's answers
    (one per endpoint of a VLAN the host uses, see docs/arp-proxy.md); with
    --arp-mode flood there are none, and forwarding still works."""
    rig.a.netctl("global", "set", "--arp-mode", "flood")
    try:
        assert wait_arp_answers(rig.a, present=False), "flood mode must remove every ARP answer"
        before = rig.a.flows()
        ports = rig.a.ports()
        rig.b.start("b100x", V100)
        try:
            x = rig.b.ip_of("b100x", V100)
            assert rig.a.ping_until("a100", x), "a new container on host b is not reachable from host a"
            time.sleep(1.0)        # anything following etcd has had its moment
            during = rig.a.flows()
            assert rig.a.ports() == ports
        finally:
            rig.b.docker("rm", "-f", "b100x")
        added = sorted(set(during) - set(before))
        assert not added, (f"host a added {len(added)} flow(s) for a container of host b:\n" + "\n".join(added))
        assert any(f.endswith("actions=NORMAL") or f.endswith(",NORMAL") for f in before), before
    finally:
        rig.a.netctl("global", "set", "--arp-mode", "proxy")
    assert wait_arp_answers(rig.a, present=True), "proxy mode must bring the ARP answers back"
    # In proxy mode a remote container adds exactly its ARP answer(s) on host a, in table 10.
    before = rig.a.flows()
    rig.b.start("b100y", V100)
    try:
        y = rig.b.ip_of("b100y", V100)
        deadline = time.monotonic() + 5
        added: list[str] = []
        while time.monotonic() < deadline and not added:
            added = sorted(set(rig.a.flows()) - set(before))
            time.sleep(0.2)
    finally:
        rig.b.docker("rm", "-f", "b100y")
    assert added and all("table=10" in f and f"arp_tpa={y}" in f for f in added), added


def test_trunk_and_access_ports(topo, rig):
    for host in rig.hosts:
        get = lambda *a: subprocess.run(["ovs-vsctl", "--timeout=10", "get", *a], capture_output=True,  # noqa: E731
                                        text=True, check=True).stdout.strip()
        assert get("Port", host.trunk, "vlan_mode") == "trunk"
        assert get("Port", host.trunk, "tag") == "[]"
        assert get("Port", host.trunk, "trunks") == "[]"          # every VLAN
        tags = sorted(int(get("Port", p, "tag")) for p in host.ports())
        assert tags == [100, 200]
        assert get("Bridge", host.bridge, "datapath_type") == "netdev"


def test_hosts_registered(topo, rig):
    hosts = {h["host"]: h for h in rig.a.netctl_json("host", "ls")}
    for host in rig.hosts:
        h = hosts[host.host_id]
        assert h["alive"] is True
        assert (h["bridge"], h["uplink"], h["datapath_type"]) == (host.bridge, host.trunk, "netdev")
        assert h["endpoints"] == 2


V330, SUBNET330 = "mh-v330", "10.231.33.0/24"


def answers_for(host, ip: str) -> list[str]:
    """host's ARP answers for ip (the flow text ends the match with 'arp_tpa=IP,')."""
    return [f for f in host.flows() if f"arp_tpa={ip}," in f or f.endswith(f"arp_tpa={ip}")]


def wait_answers(host, ip: str, present: bool, within: float = 5.0) -> float | None:
    """Seconds until host holds (present) or no longer holds an answer for ip; None if it never did."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if bool(answers_for(host, ip)) == present:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def test_arp_answers_only_for_vlans_with_a_local_endpoint(topo, rig):
    """The ARP proxy answers, on a host, for the endpoints of the VLANs that have a
    local endpoint there (docs/arp-proxy.md): a container of host b in a VLAN where
    host a has no endpoint adds NO flow on host a, although host a's Docker knows
    the network. Once a container of that VLAN runs on host a, host a answers for
    host b's container too; when it leaves, that answer goes again."""
    a, b = rig.a, rig.b
    assert rig.a.netctl_json("global", "show")["arp_mode"] == "proxy"
    assert wait_arp_answers(a, present=True), "proxy mode: host a must answer for its own VLANs"
    for host in (a, b):
        host.network(V330, SUBNET330, 330)
    started: list[tuple[object, str]] = []
    try:
        before = a.flows()
        b.start("b330", V330)
        started.append((b, "b330"))
        ip_b = b.ip_of("b330", V330)
        # Control: host b, which has the endpoint, answers for it, so both proxies
        # have seen the record by now (they follow the same etcd watch).
        assert wait_answers(b, ip_b, present=True) is not None, f"host b never answered for {ip_b}"
        time.sleep(1.0)
        after = a.flows()
        added = sorted(set(after) - set(before))
        assert not added, ("host a added flow(s) for a container of host b in VLAN 330, which host a "
                           "does not use:\n" + "\n".join(added))
        assert not any(",dl_vlan=330," in f or "metadata=0x14a/" in f for f in after), after

        a.start("a330", V330)
        started.append((a, "a330"))
        ip_a = a.ip_of("a330", V330)
        appeared = wait_answers(a, ip_b, present=True)
        assert appeared is not None, f"host a has an endpoint of VLAN 330 now, but no answer for {ip_b}"
        assert all("table=10" in f and "metadata=0x14a/0xfff" in f for f in answers_for(a, ip_b)), \
            answers_for(a, ip_b)
        assert answers_for(a, ip_a), f"host a does not answer for its own {ip_a}"

        a.docker("rm", "-f", "a330")
        started.remove((a, "a330"))
        gone = wait_answers(a, ip_b, present=False)
        assert gone is not None, f"host a left VLAN 330 but still answers for {ip_b}:\n{answers_for(a, ip_b)}"
        assert not any("metadata=0x14a/" in f or ",dl_vlan=330," in f for f in a.flows())
        assert answers_for(b, ip_b), "host b must keep answering for its own endpoint"
        print(f"host a: answer for host b's container in {appeared:.2f} s after joining VLAN 330, "
              f"gone {gone:.2f} s after leaving it")
    finally:
        for host, name in started:
            host.docker("rm", "-f", name, check=False)
        for host in (a, b):
            host.docker("network", "rm", V330, check=False)
        rig.netctl("network", "rm", "--force", V330, check=False)
