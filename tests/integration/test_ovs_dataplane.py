"""Open vSwitch (userspace datapath) and veth handling against the real thing:
netplugin.dataplane.ovs.Switch and netplugin.dataplane.links.Links."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from netplugin.dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK, Switch
from netplugin.errors import DataplaneUnavailable

pytestmark = pytest.mark.integration


def _bridge_row(h, bridge):
    rows = h.ovs_find("Bridge", f"name={bridge}", columns=["name", "datapath_type", "protocols"])
    assert len(rows) == 1, rows
    return rows[0]


def _port_row(h, port):
    rows = h.ovs_find("Port", f"name={port}", columns=["name", "tag", "vlan_mode", "trunks", "external_ids"])
    return rows[0] if rows else None


def _iface_row(h, port):
    rows = h.ovs_find("Interface", f"name={port}", columns=["name", "external_ids", "error"])
    return rows[0] if rows else None


def _features(h, ifname, ns=None):
    """`ethtool -k` as {feature: 'on'/'off'}."""
    args = ["ethtool", "-k", ifname]
    if ns:
        args = ["ip", "netns", "exec", ns] + args
    out = h.run(args).stdout
    feats = {}
    for line in out.splitlines()[1:]:
        if ":" in line:
            key, _, val = line.strip().partition(":")
            feats[key] = val.split()[0] if val.split() else ""
    return feats


def _link(h, ifname, ns=None):
    args = ["ip", "-j", "-d", "link", "show", "dev", ifname]
    if ns:
        args = ["ip", "-n", ns, "-j", "-d", "link", "show", "dev", ifname]
    return json.loads(h.run(args).stdout)[0]


def _random_mac():
    return "02:4e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))


# -- bridge ----------------------------------------------------------------------------

def test_ensure_bridge_makes_a_netdev_bridge_with_openflow13_and_is_repeatable(h, switch, bridge):
    assert not switch.bridge_exists(bridge)
    switch.ensure_bridge(bridge, "netdev")
    row = _bridge_row(h, bridge)
    assert row["datapath_type"] == "netdev"
    assert "OpenFlow13" in row["protocols"], row
    assert switch.bridge_exists(bridge)
    switch.ensure_bridge(bridge, "netdev")               # twice is fine
    assert _bridge_row(h, bridge) == row
    # ovs-vswitchd really made it (not only the database row): OpenFlow 1.3 answers.
    h.run(["ovs-ofctl", "-O", "OpenFlow13", "show", bridge])


def test_ensure_bridge_adds_the_uplink_as_a_trunk_port(h, switch, bridge, veths):
    uplink, _ = veths.pair()
    switch.ensure_bridge(bridge, "netdev", uplink=uplink)
    port = _port_row(h, uplink)
    assert port is not None
    assert port["vlan_mode"] == "trunk"
    assert port["tag"] == [], f"a trunk uplink must have no tag: {port}"
    assert port["trunks"] == [], "an empty trunks set carries every VLAN"
    assert uplink in h.vsctl("list-ports", bridge).stdout.split()
    switch.ensure_bridge(bridge, "netdev", uplink=uplink)   # again: still one trunk port
    assert h.vsctl("list-ports", bridge).stdout.split().count(uplink) == 1
    assert _port_row(h, uplink)["vlan_mode"] == "trunk"
    # The uplink is not a netplugin endpoint port.
    assert switch.list_ports(bridge) == []


# -- veth ------------------------------------------------------------------------------

@pytest.mark.parametrize("tx_off", [True, False], ids=["tx-checksum-off", "tx-checksum-kept"])
def test_create_veth_sets_mtu_mac_state_and_offload_and_is_idempotent(h, links, veths, tx_off):
    _, host, peer = veths.names()
    mac = _random_mac()
    links.create_veth(host, peer, 1400, mac, tx_off)
    links.create_veth(host, peer, 1400, mac, tx_off)     # a retry after a crash lands here
    hl, pl = _link(h, host), _link(h, peer)
    assert hl["linkinfo"]["info_kind"] == pl["linkinfo"]["info_kind"] == "veth"
    assert hl["mtu"] == pl["mtu"] == 1400
    assert pl["address"] == mac
    assert "UP" in hl["flags"], hl["flags"]
    assert hl.get("link") == peer and pl.get("link") == host
    want = "off" if tx_off else "on"
    assert _features(h, host)["tx-checksumming"] == want
    assert _features(h, peer)["tx-checksumming"] == want
    assert links.exists(host) and links.exists(peer)
    assert host in links.list_names()
    # Settings are applied again on the second call: change them and call once more.
    h.run(["ip", "link", "set", "dev", peer, "address", _random_mac(), "mtu", "1300"])
    links.create_veth(host, peer, 1400, mac, tx_off)
    assert _link(h, peer)["address"] == mac and _link(h, peer)["mtu"] == 1400
    assert links.delete(host) is True
    assert not links.exists(host) and not links.exists(peer)
    assert links.delete(host) is False


# -- access ports ------------------------------------------------------------------------

def test_access_port_tag_mode_external_ids_listing_and_delete(h, switch, bridge, links, veths):
    switch.ensure_bridge(bridge, "netdev")
    endpoint_id, host, peer = veths.names()
    links.create_veth(host, peer, 1500, _random_mac(), True)
    ext = {EXT_ENDPOINT: endpoint_id, EXT_NETWORK: "n-" + secrets.token_hex(6), EXT_HOST: "nptest-host"}
    switch.add_access_port(bridge, host, 10, ext)
    port = _port_row(h, host)
    assert port["tag"] == 10 and port["vlan_mode"] == "access"
    assert port["external_ids"] == ext
    iface = _iface_row(h, host)
    assert iface["external_ids"] == ext
    assert iface["error"] in ([], ""), f"vswitchd could not open {host}: {iface['error']}"
    assert switch.port_exists(host)
    assert switch.list_ports(bridge) == [{"name": host, "tag": 10, "external_ids": ext}]
    # Adding it again (a retry) is fine and may move it to another VLAN.
    switch.add_access_port(bridge, host, 20, ext)
    assert _port_row(h, host)["tag"] == 20
    assert h.vsctl("list-ports", bridge).stdout.split() == [host]
    assert switch.delete_port(host) is True
    assert _port_row(h, host) is None and _iface_row(h, host) is None
    assert switch.list_ports(bridge) == []
    assert switch.delete_port(host) is False
    assert links.exists(host), "deleting the OVS port must leave the veth alone"


def test_list_ports_of_another_bridge_are_not_listed(h, switch, bridge, links, veths):
    other = h.new_bridge_name()
    try:
        switch.ensure_bridge(bridge, "netdev")
        switch.ensure_bridge(other, "netdev")
        ids = []
        for br in (bridge, other):
            endpoint_id, host, peer = veths.names()
            links.create_veth(host, peer, 1500, _random_mac(), True)
            switch.add_access_port(br, host, 30, {EXT_ENDPOINT: endpoint_id})
            ids.append(host)
        assert [p["name"] for p in switch.list_ports(bridge)] == [ids[0]]
        assert [p["name"] for p in switch.list_ports(other)] == [ids[1]]
    finally:
        h.vsctl("--if-exists", "del-br", other, check=False)
    assert switch.list_ports(h.new_bridge_name()) == []        # a missing bridge has no ports


# -- the datapath --------------------------------------------------------------------------

@pytest.fixture
def wired(h, switch, bridge, links, veths, netns):
    """Returns wire(vlan, last_octet, tx_off) -> (ns, ip): a veth pair whose peer sits in a
    fresh namespace with 10.250.N.last/24 and whose host end is an access port of vlan."""
    switch.ensure_bridge(bridge, "netdev")
    third = secrets.randbelow(250) + 1

    def wire(vlan: int, last: int, tx_off: bool = True):
        endpoint_id, host, peer = veths.names()
        ip = f"10.250.{third}.{last}"
        links.create_veth(host, peer, 1500, _random_mac(), tx_off)
        switch.add_access_port(bridge, host, vlan, {EXT_ENDPOINT: endpoint_id})
        ns = netns.new()
        h.move_into(ns, peer, f"{ip}/24", new_name="eth0")
        return ns, ip

    return wire


def test_same_vlan_pings_other_vlan_does_not_and_tcp_flows(h, wired):
    ns1, ip1 = wired(10, 11)
    ns2, ip2 = wired(10, 12)
    ns3, ip3 = wired(20, 13)
    t0 = time.monotonic()
    proc = h.ping_until(ns1, ip2)
    assert proc.returncode == 0, f"no ping from {ip1} to {ip2} on VLAN 10:\n{proc.stdout}{proc.stderr}"
    ping_s = time.monotonic() - t0
    assert h.ping(ns2, ip1).returncode == 0
    # The tx checksum offload was turned off inside the namespace too (it moved with the link).
    assert _features(h, "eth0", ns=ns1)["tx-checksumming"] == "off"
    size = 16 << 20
    got, seconds = h.tcp_transfer(ns2, ip2, ns1, size)
    assert got == size
    print(f"\n[dataplane] first ping after {ping_s:.2f} s; TCP {size >> 20} MiB over the netdev bridge in "
          f"{seconds:.2f} s = {size * 8 / seconds / 1e6:.0f} Mbit/s")
    # VLAN 20 is another layer-2 domain even though the subnet is the same.
    proc = h.ping(ns3, ip1, count=2, wait=1)
    assert proc.returncode != 0, f"VLAN 20 reached VLAN 10:\n{proc.stdout}"
    proc = h.ping(ns1, ip3, count=2, wait=1)
    assert proc.returncode != 0, f"VLAN 10 reached VLAN 20:\n{proc.stdout}"


def _tso_on(h) -> bool:
    """userspace-tso-enable as OVSDB has it (ovs-vswitchd runs with it: services.sh
    and the daemon restart vswitchd whenever they change it)."""
    out = h.vsctl("--if-exists", "get", "Open_vSwitch", ".", "other_config:userspace-tso-enable").stdout
    return out.strip().strip('"') == "true"


def test_veths_that_keep_tx_checksum_carry_tcp_only_with_userspace_tso(h, wired):
    """The control experiment for the TCP check above, both ways of this datapath:
    without userspace TSO a veth that keeps tx checksum offload passes ICMP but not
    TCP (if it ever passes TCP, the offload test above proves nothing); with it, the
    same veths carry TCP, faster than veths with the offload off (what links.py
    relies on when it keeps the offloads). CI runs with TSO on (services.sh)."""
    tso = _tso_on(h)
    ns1, ip1 = wired(10, 21, tx_off=False)
    ns2, ip2 = wired(10, 22, tx_off=False)
    assert h.ping_until(ns1, ip2).returncode == 0
    if not tso:
        try:
            got, _ = h.tcp_transfer(ns2, ip2, ns1, 1 << 20, timeout=2)
        except AssertionError as exc:
            assert "TCP client failed" in str(exc), exc
        else:
            pytest.fail(f"TCP carried {got} bytes with tx checksum offload ON and userspace TSO off: this "
                        "datapath does not need the offload off, so the TCP check of the netdev test proves "
                        "nothing here")
        return
    ns3, ip3 = wired(10, 23, tx_off=True)
    ns4, _ = wired(10, 24, tx_off=True)
    size = 64 << 20
    got, kept_s = h.tcp_transfer(ns2, ip2, ns1, size)
    assert got == size
    got, off_s = h.tcp_transfer(ns3, ip3, ns4, size)
    assert got == size, "with userspace TSO on, veths with the offload off must still carry TCP"
    kept, off = size * 8 / kept_s / 1e6, size * 8 / off_s / 1e6
    print(f"\n[dataplane] userspace TSO on: TCP {kept:.0f} Mbit/s with veth offloads kept, {off:.0f} with tx "
          f"checksum off")
    # 9.6 against 0.85 Gbit/s measured (iperf3); a Python sender is slower, so ask only for 2x.
    assert kept > 2 * off, (f"offloads kept gave {kept:.0f} Mbit/s, offload off {off:.0f}: userspace TSO is "
                            "set in OVSDB but does not seem to be in effect (was ovs-vswitchd restarted?)")


def test_switch_without_ovsdb_raises_dataplane_unavailable_quickly():
    switch = Switch("unix:/nonexistent.sock", timeout=2)
    for call in (lambda: switch.bridge_exists("nptest000000"),
                 lambda: switch.ensure_bridge("nptest000000", "netdev"),
                 lambda: switch.delete_port("np00000000000")):
        t0 = time.monotonic()
        with pytest.raises(DataplaneUnavailable) as exc:
            call()
        took = time.monotonic() - t0
        assert took < 3.0, f"DataplaneUnavailable took {took:.2f} s"
        msg = exc.value.message
        assert "unix:/nonexistent.sock" in msg and "ovsdb-server" in msg, msg
        assert exc.value.status == 503
    switch.close()


# -- the OVSDB connection's life cycle ---------------------------------------------------

REOPEN_SCRIPT = r"""
import json, sys, time
from netplugin.dataplane.ovs import Switch
out = []
for i in range(4):
    s = Switch(sys.argv[1], timeout=3)       # "one OVSDB connection, opened on first use"
    t = time.monotonic()
    try:
        s.bridge_exists(sys.argv[2])
        r = "ok"
    except BaseException as e:
        r = f"{type(e).__module__}.{type(e).__name__}"
    out.append([r, round(time.monotonic() - t, 2)])
    s.close()
print(json.dumps(out))
"""


def test_switch_reopens_quickly_after_close(h, ovs_ready):
    """A Switch that was closed, or a new Switch after it, must work again at once.

    Run in a child process: ovsdbapp keeps one connection per process, and a
    failure here would slow every later Switch of the test process."""
    import sys
    proc = h.run([sys.executable, "-c", REOPEN_SCRIPT, ovs_ready, h.new_bridge_name()], check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = [(i, r, s) for i, (r, s) in enumerate(calls) if r != "ok" or s > 1.5]
    assert not bad, (f"open/close cycles of Switch against a healthy OVSDB gave (result, seconds) {calls}: "
                     f"after Switch.close() the next Switch reuses ovsdbapp's stopped class-level connection and "
                     f"waits through OVS's reconnect back-off; once that exceeds the timeout it fails, and not even "
                     f"with DataplaneUnavailable")


def test_switch_with_an_ovsdb_that_never_answers_gives_up_within_its_timeout():
    """A wedged ovsdb-server (socket accepts, nothing answers: e.g. stopped or
    overloaded) must give DataplaneUnavailable after Switch.connect_timeout, not hang
    the Docker call that is waiting (Docker sets no timeout on plugin calls)."""
    import os
    import socket
    import tempfile
    import threading
    folder = tempfile.mkdtemp(prefix="nptest-")
    path = os.path.join(folder, "silent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    outcome: dict = {}

    def call():
        t0 = time.monotonic()
        try:
            Switch("unix:" + path, timeout=2, connect_timeout=2).bridge_exists("nptest000000")
            outcome["result"] = "answered"
        except BaseException as exc:   # noqa: BLE001
            outcome["result"] = exc
        outcome["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=call, daemon=True)
    try:
        worker.start()
        worker.join(2 + 3)
        hung = worker.is_alive()
    finally:
        srv.close()              # frees a hung call: its connection is reset
        worker.join(10)
        os.unlink(path)
        os.rmdir(folder)
    assert not hung, "Switch(timeout=2) still waited after 5 s on an OVSDB socket that never answers"
    assert isinstance(outcome["result"], DataplaneUnavailable), outcome
