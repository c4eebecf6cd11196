"""The warm port pool (netplugin/portpool.py) on real Open vSwitch (userspace
datapath) and the kernel: a parked pair lets nothing through, and is parked
from the transaction that puts it on the bridge; a claim makes it forward.

Frames of every kind (broadcast ARP untagged, tagged with a network's VLAN,
tagged 4095 and priority-tagged, and unicast IPv4 to a neighbour) are sent
into a parked pair's container end; captures on an access port of that VLAN,
on a trunk (the uplink) and on the bridge's own port must see none of them,
first as the pool leaves the pair (host end down) and again with its host end
forced up (the switch's parking alone). The same frames after a claim are
seen: the captures work."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from netplugin.bridge import Bridge
from netplugin.config import Config
from netplugin.dataplane.flows import Flows
from netplugin.dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK
from netplugin.portpool import PortPool

pytestmark = pytest.mark.integration

VLAN = 10
SENDER_MAC = "02:4e:0a:4d:00:63"
SEND = r"""
import sys
from scapy.all import ARP, Dot1Q, Ether, IP, UDP, sendp
iface, src, victim_mac = sys.argv[1:4]
frames = [
    Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=src, psrc="10.77.0.99", pdst="10.77.0.2"),
    Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / ARP(hwsrc=src, psrc="10.77.0.99", pdst="10.77.0.2"),
    Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=4095) / ARP(hwsrc=src, psrc="10.77.0.99", pdst="10.77.0.2"),
    Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=0) / ARP(hwsrc=src, psrc="10.77.0.99", pdst="10.77.0.2"),
    Ether(src=src, dst=victim_mac) / IP(src="10.77.0.99", dst="10.77.0.2") / UDP(dport=9),
]
sendp(frames * 5, iface=iface, verbose=False)
"""


class Capture:
    """tcpdump of frames from SENDER_MAC on one interface, in a namespace or not."""

    def __init__(self, h, iface: str, ns: str | None = None):
        cmd = ["tcpdump", "-l", "-n", "-e", "-i", iface, "ether", "src", SENDER_MAC]
        if ns:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.name = f"{iface}@{ns or 'host'}"

    def stop(self) -> list[str]:
        time.sleep(0.5)
        if self.proc.poll() is not None:       # tcpdump never ran: an empty capture would prove nothing
            raise AssertionError(f"tcpdump on {self.name} failed: {self.proc.stderr.read()}")
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [line for line in out.splitlines() if line.strip()]


def send_all(h, ns: str, iface: str, victim_mac: str) -> None:
    """25 frames (5 kinds, 5 times) from SENDER_MAC out of iface in ns."""
    h.run(["ip", "netns", "exec", ns, sys.executable, "-c", SEND, iface, SENDER_MAC, victim_mac], timeout=60)


def trunks(value) -> list:
    """An OVSDB set cell as a list, whether it came as one atom or ["set", [...]]."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return list(value[1])
    return value if isinstance(value, list) else [value]


def rx_packets(h, port: str) -> int:
    """Frames the kernel delivered to the port's device (the host end OVS reads)."""
    with open(f"/sys/class/net/{port}/statistics/rx_packets", encoding="ascii") as fh:
        return int(fh.read())


@pytest.fixture
def rig(h, switch, links, bridge, veths, netns, store):
    """A bridge with an uplink trunk (peer in ns 'up'), an access port of VLAN
    10 (peer in ns 'victim' at 10.77.0.2) and a pool of two parked pairs."""
    cfg = Config(host_id="pooltest-" + bridge[-6:], bridge=bridge, datapath_type="netdev", port_pool_size=2)
    uplink, uplink_peer = veths.pair()
    switch.ensure_bridge(bridge, "netdev", uplink=uplink)
    flows = Flows(bridge)
    pool = PortPool(cfg, store, switch, links, Bridge(cfg, store, switch, flows))
    pool.adopt()
    pairs = [pool.fill_once(), pool.fill_once()]
    eid, host, peer = veths.names()
    links.create_veth(host, peer, 1500, "02:4e:0a:4d:00:02", True)
    switch.add_access_port(bridge, host, VLAN, {EXT_ENDPOINT: eid, EXT_NETWORK: "n-000000000001", EXT_HOST: cfg.host_id})
    victim_ns, up_ns, sender_ns = netns.new(), netns.new(), netns.new()
    h.move_into(victim_ns, peer, "10.77.0.2/24", new_name="eth0")
    h.run(["ip", "link", "set", uplink_peer, "netns", up_ns])
    h.run(["ip", "-n", up_ns, "link", "set", uplink_peer, "up"])
    h.run(["ip", "link", "set", bridge, "up"])
    switch.wait_ofport(host, 10)
    yield dict(cfg=cfg, pool=pool, pairs=pairs, victim_ns=victim_ns, up_ns=up_ns, uplink_peer=uplink_peer,
               sender_ns=sender_ns, victim_host=host)
    for pair in pairs:
        switch.delete_port(pair.host)
        links.delete(pair.host)


def captured(h, rig, do) -> dict[str, list[str]]:
    caps = [Capture(h, "eth0", rig["victim_ns"]), Capture(h, rig["uplink_peer"], rig["up_ns"]),
            Capture(h, rig["cfg"].bridge)]
    time.sleep(1.0)                       # tcpdump is listening
    do()
    return {c.name: c.stop() for c in caps}


def test_a_parked_pair_lets_nothing_through_and_a_claimed_one_does(h, switch, links, rig):
    pool, (pair, other) = rig["pool"], rig["pairs"]
    row = h.ovs_find("Port", f"name={pair.host}", columns=["vlan_mode", "trunks", "tag", "external_ids"])[0]
    assert row["vlan_mode"] == "trunk" and trunks(row["trunks"]) == [4095] and row["tag"] == [], row
    assert links.is_up(pair.host) is False
    # the sender owns the container end, as a container would
    h.run(["ip", "link", "set", pair.peer, "netns", rig["sender_ns"]])
    h.run(["ip", "-n", rig["sender_ns"], "link", "set", pair.peer, "address", SENDER_MAC, "up"])
    before = rx_packets(h, pair.host)

    seen = captured(h, rig, lambda: send_all(h, rig["sender_ns"], pair.peer, "02:4e:0a:4d:00:02"))
    assert all(lines == [] for lines in seen.values()), f"a parked pair leaked: {seen}"
    assert rx_packets(h, pair.host) == before, "frames reached the switch through a down host end"

    # The switch's parking alone: the host end forced up, frames enter the switch and go nowhere.
    h.run(["ip", "link", "set", pair.host, "up"])
    time.sleep(0.5)
    seen = captured(h, rig, lambda: send_all(h, rig["sender_ns"], pair.peer, "02:4e:0a:4d:00:02"))
    assert all(lines == [] for lines in seen.values()), f"a parked port leaked: {seen}"
    entered = rx_packets(h, pair.host) - before
    assert entered >= 25, f"only {entered} frames reached the switch: the check above proved nothing"

    # Claimed into VLAN 10: the same frames now reach the VLAN's port and the trunk.
    h.run(["ip", "link", "set", pair.host, "down"])
    eid = h.random_endpoint_id()
    ext = {EXT_ENDPOINT: eid, EXT_NETWORK: "n-000000000001", EXT_HOST: rig["cfg"].host_id}
    applied = switch.claim_port(pair.host, VLAN, ext)
    h.run(["ip", "link", "set", pair.host, "up"])
    switch.wait_applied(applied, 10)
    seen = captured(h, rig, lambda: send_all(h, rig["sender_ns"], pair.peer, "02:4e:0a:4d:00:02"))
    assert seen[f"eth0@{rig['victim_ns']}"], f"the claimed port forwards nothing to its VLAN: {seen}"
    assert any("vlan 10" in line for line in seen[f"{rig['uplink_peer']}@{rig['up_ns']}"]), seen
    assert not any("vlan 4095" in line for lines in seen.values() for line in lines), seen
    row = h.ovs_find("Port", f"name={pair.host}", columns=["vlan_mode", "trunks", "tag", "external_ids"])[0]
    assert row["vlan_mode"] == "access" and row["tag"] == VLAN and row["trunks"] == [], row
    assert "np-pool" not in json.dumps(row["external_ids"]), row


def test_a_pool_port_is_parked_in_the_transaction_that_adds_it(h, switch, links, rig):
    """Every update ovsdb-server sends about a pool port, from its first, shows
    it parked; the host end is down before the port exists."""
    monitor = subprocess.Popen(["ovsdb-client", "monitor", h.ovsdb, "Open_vSwitch", "Port",
                                "name,vlan_mode,trunks,tag", "--format=json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    pool = rig["pool"]
    made = []
    for pair in rig["pairs"]:
        switch.delete_port(pair.host)
        links.delete(pair.host)
    pool._ready.clear()
    for _ in range(2):
        made.append(pool.fill_once())
    time.sleep(1.0)
    monitor.terminate()
    out, _ = monitor.communicate(timeout=10)
    rig["pairs"][:] = made
    first: dict[str, list] = {}
    for line in out.splitlines():
        try:
            update = json.loads(line)
        except ValueError:
            continue
        heads = update.get("headings") or []
        for row in update.get("data") or []:
            values = dict(zip(heads, row))
            name = values.get("name")
            if name in {p.host for p in made} and name not in first:
                first[name] = values
    assert set(first) == {p.host for p in made}, f"the monitor saw no insert of the pool ports: {out[:2000]}"
    for name, values in first.items():
        assert values.get("action") == "insert" and values["vlan_mode"] == "trunk" and \
            trunks(values["trunks"]) == [4095], \
            f"{name} was first seen unparked: {values}"
    for pair in made:
        assert links.is_up(pair.host) is False


def test_a_restart_adopts_the_parked_pairs_and_a_claim_gives_a_working_port(h, switch, links, rig, store):
    cfg = rig["cfg"]
    flows = Flows(cfg.bridge)
    fresh = PortPool(cfg, store, switch, links, Bridge(cfg, store, switch, flows))
    out = fresh.adopt()
    assert sorted(out["adopted"]) == sorted(p.host for p in rig["pairs"]) and out["removed"] == []
    pair = fresh.take()
    eid = h.random_endpoint_id()
    ext = {EXT_ENDPOINT: eid, EXT_NETWORK: "n-000000000001", EXT_HOST: cfg.host_id}
    applied = fresh.claim(pair, eid, VLAN, ext, "02:4e:0a:4d:00:07")
    switch.wait_applied(applied, 10)
    assert links.is_up(pair.host) is True and links.alias(pair.host) == eid
    ns = rig["sender_ns"]
    h.move_into(ns, pair.peer, "10.77.0.7/24", new_name="eth0")
    done = h.ping_until(ns, "10.77.0.2")
    assert done.returncode == 0, done.stdout + done.stderr
    mac = json.loads(h.run(["ip", "-n", ns, "-j", "link", "show", "dev", "eth0"]).stdout)[0]["address"]
    assert mac == "02:4e:0a:4d:00:07"
