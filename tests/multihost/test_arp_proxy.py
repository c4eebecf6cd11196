"""The ARP proxy on two hosts, with real packets, real OVS and real dockerds
(issue 6, docs/arp-proxy.md).

One network on VLAN 360, created by Docker on host a and bound on host b;
containers a1, a2 on host a and b1 on host b. ARP requests are built with scapy
and sent from inside a container's network namespace (nsenter, a raw socket on
its eth0), or put on the trunk tagged; what comes back is parsed with scapy.
tcpdump on the trunk (nptrunk-a, whose peer is host b's uplink) and on the
endpoints' host-side veths tells where a request went.

Every "nothing crossed" assertion is paired with a control in the same capture
that must be seen (a request for an unknown address), so a capture that
missed everything cannot pass a test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netplugin.kv import EtcdKV
from netplugin.store import Store

from .conftest import RIG, run

pytestmark = pytest.mark.multihost

NET, SUBNET, VLAN = "arp-v360", "10.236.60.0/24", 360
GATEWAY = "10.236.60.1"
UNKNOWN = "10.236.60.251"           # inside the subnet, never given to anyone here
STRANGER_MAC, STRANGER_IP = "02:aa:36:00:00:01", "10.236.60.240"   # a host beyond the trunk
FIXED = {"a1": "10.236.60.11", "a2": "10.236.60.12", "a3": "10.236.60.13", "b1": "10.236.60.21",
         "b2": "10.236.60.22"}      # fixed addresses: UNKNOWN and STRANGER_IP can never be given out
DELETE_BOUND = 2.0                  # the issue: an endpoint's answer is gone within 2 s on every host

# Runs inside a network namespace (nsenter --net): sends ARP requests built with
# scapy on a raw socket and prints every ARP reply addressed to the sender, as JSON.
# Tags that the kernel moved into packet metadata (veths untag on receive) are put
# back from PACKET_AUXDATA, as tcpdump does.
PROBE = r"""
import json, socket, struct, sys, time
from scapy.layers.l2 import ARP, Dot1Q, Ether
iface, smac, sip, tip, count, interval, wait, vlan = sys.argv[1:9]
count, interval, wait, vlan = int(count), float(interval), float(wait), int(vlan)
SOL_PACKET, PACKET_AUXDATA, TP_STATUS_VLAN_VALID, OUTGOING = 263, 8, 0x10, 4
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
s.bind((iface, 0))
req = Ether(src=smac, dst="ff:ff:ff:ff:ff:ff")
if vlan:
    req = req / Dot1Q(vlan=vlan)
req = bytes(req / ARP(op=1, hwsrc=smac, psrc=sip, hwdst="00:00:00:00:00:00", pdst=tip))
replies, sent, t0 = [], [], time.monotonic()
next_send, end = t0, None
s.settimeout(0.02)
while True:
    now = time.monotonic()
    if len(sent) < count and now >= next_send:
        s.send(req)
        sent.append(now)
        next_send = now + interval
        if len(sent) == count:
            end = now + wait
    if end is not None and now >= end:
        break
    try:
        data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(20))
    except socket.timeout:
        continue
    if addr[2] == OUTGOING:
        continue
    for level, kind, blob in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(blob) >= 20:
            status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", blob[:20])
            if status & TP_STATUS_VLAN_VALID:
                data = data[:12] + struct.pack("!HH", tpid or 0x8100, tci) + data[12:]
    pkt = Ether(data)
    if ARP not in pkt or pkt[ARP].op != 2 or pkt[ARP].pdst != sip:
        continue
    replies.append({"t": time.monotonic() - t0, "eth_src": pkt.src, "eth_dst": pkt.dst,
                    "vlan": pkt[Dot1Q].vlan if Dot1Q in pkt else None, "hwsrc": pkt[ARP].hwsrc,
                    "psrc": pkt[ARP].psrc, "hwdst": pkt[ARP].hwdst, "pdst": pkt[ARP].pdst})
print(json.dumps({"sent": len(sent), "replies": replies}))
"""


# -- helpers --------------------------------------------------------------------------------

class Capture:
    """tcpdump -e -n on one interface, from before the test's packets to after them;
    its lines can be read while it runs."""

    def __init__(self, iface: str):
        self.iface = iface
        self.lines: list[str] = []

    def __enter__(self) -> "Capture":
        self.proc = subprocess.Popen(["tcpdump", "-e", "-n", "-l", "-U", "-s", "160", "-i", self.iface],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        line = ""
        while "listening on" not in line:       # tcpdump says so on stderr once it captures
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                f"tcpdump on {self.iface} did not start: {line}"
            line = self.proc.stderr.readline()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)                         # what is in flight lands
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(5)

    def who_has(self, target: str) -> list[str]:
        return [ln for ln in list(self.lines) if f"Request who-has {target} " in ln]

    def text(self) -> str:
        return "\n".join(self.lines[-60:])


class ArpNet:
    """The network and containers of this module, and what etcd says of them."""

    def __init__(self, rig):
        self.rig = rig
        self.store = Store(EtcdKV([rig.etcd]), rig.prefix)
        rig.a.network(NET, SUBNET, VLAN)
        rig.b.network(NET, SUBNET, VLAN)
        self.host_of = {"a1": rig.a, "a2": rig.a, "b1": rig.b}
        for name, host in self.host_of.items():
            host.start(name, NET, "--ip", FIXED[name])
        self.ip = {name: host.ip_of(name, NET) for name, host in self.host_of.items()}
        self.mac = {name: self.real_mac(name) for name in self.host_of}

    def real_mac(self, name: str) -> str:
        """The MAC of the container's eth0, as its kernel has it."""
        return self.host_of[name].exec(name, "cat", "/sys/class/net/eth0/address", check=True).stdout.strip()

    def endpoint(self, ip: str):
        found = [ep for ep in self.store.list_endpoints() if ep.ip == ip]
        assert len(found) == 1, f"{len(found)} endpoint records hold {ip}"
        return found[0]

    def pid(self, name: str) -> int:
        return int(self.host_of[name].docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())

    def probe(self, name: str, target: str, count: int = 3, interval: float = 0.05, wait: float = 1.0) -> dict:
        """ARP requests for target from container name's eth0, with its own address and MAC."""
        return self._probe(["nsenter", f"--net=/proc/{self.pid(name)}/ns/net"], "eth0", self.mac[name],
                           self.ip[name], target, count, interval, wait, 0)

    def probe_trunk(self, target: str, count: int = 3, wait: float = 1.0) -> dict:
        """Tagged ARP requests put on host b's end of the trunk: they arrive at host a's
        bridge on its uplink, as from a host beyond the trunk."""
        return self._probe([], self.rig.b.trunk, STRANGER_MAC, STRANGER_IP, target, count, 0.05, wait, VLAN)

    @staticmethod
    def _probe(prefix: list[str], iface: str, smac: str, sip: str, target: str, count: int, interval: float,
               wait: float, vlan: int) -> dict:
        proc = run([*prefix, sys.executable, "-c", PROBE, iface, smac, sip, target, str(count), str(interval),
                    str(wait), str(vlan)], timeout=60)
        return json.loads(proc.stdout)

    def answers(self, host, ip: str) -> list[str]:
        return [f for f in host.flows() if "table=10" in f and re.search(rf"arp_tpa={re.escape(ip)}[, ]", f)]

    def wait_answers(self, ip: str, present: bool, hosts=None, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        for host in hosts or self.rig.hosts:
            while bool(self.answers(host, ip)) != present:
                assert time.monotonic() < deadline, \
                    f"{host}: answer for {ip} {'missing' if present else 'still there'}:\n" + "\n".join(host.flows())
                time.sleep(0.1)


def mentions(line: str, ip: str) -> bool:
    """The line names this address (10.0.0.2 is not named by 10.0.0.25)."""
    return re.search(rf"(?<![0-9.]){re.escape(ip)}(?![0-9])", line) is not None


def assert_answered(result: dict, target_ip: str, target_mac: str, asker_ip: str, asker_mac: str,
                    vlan: int | None = None) -> None:
    """One correct reply per request, and nothing else."""
    replies = result["replies"]
    assert result["sent"] > 0
    assert len(replies) == result["sent"], f"{result['sent']} requests for {target_ip}, replies: {replies}"
    for r in replies:
        assert (r["psrc"], r["hwsrc"], r["eth_src"]) == (target_ip, target_mac, target_mac), r
        assert (r["pdst"], r["hwdst"], r["eth_dst"]) == (asker_ip, asker_mac, asker_mac), r
        assert r["vlan"] == vlan, r


@pytest.fixture(scope="module")
def arpnet(rig):
    rig.clean()
    rig.a.netctl("global", "set", "--arp-mode", "proxy")
    net = ArpNet(rig)
    for ip in net.ip.values():                       # every endpoint answered on both hosts
        net.wait_answers(ip, present=True)
    yield net
    rig.clean()


# -- the tests ------------------------------------------------------------------------------

def test_local_endpoint_answered_by_the_switch(arpnet, rig):
    """a1 asks for a2 (same host): the reply is a2's real MAC, once per request, and
    the request reached neither a2's port (a2's kernel would have answered too) nor
    the trunk."""
    ep = arpnet.endpoint(arpnet.ip["a2"])
    assert ep.mac == arpnet.mac["a2"] and ep.host == rig.a.host_id
    with Capture(rig.a.trunk) as trunk, Capture(ep.port) as port:
        result = arpnet.probe("a1", arpnet.ip["a2"], count=5)
        control = arpnet.probe("a1", UNKNOWN, count=1, wait=0.3)
    assert_answered(result, arpnet.ip["a2"], arpnet.mac["a2"], arpnet.ip["a1"], arpnet.mac["a1"])
    assert not control["replies"]
    assert trunk.who_has(UNKNOWN) and port.who_has(UNKNOWN), \
        f"control: the unknown request must flood to the trunk and to a2's port\n{trunk.text()}\n{port.text()}"
    assert not port.who_has(arpnet.ip["a2"]), "the request reached a2's port:\n" + port.text()
    assert not trunk.who_has(arpnet.ip["a2"]), "the request crossed the trunk:\n" + trunk.text()


def test_remote_endpoint_answered_locally_nothing_on_trunk(arpnet, rig):
    """a1 asks for b1 (host b), and b1 for a1: each bridge answers for the other
    host's endpoint and not one ARP packet of theirs crosses the trunk."""
    with Capture(rig.a.trunk) as trunk:
        a_to_b = arpnet.probe("a1", arpnet.ip["b1"], count=5)
        b_to_a = arpnet.probe("b1", arpnet.ip["a1"], count=5)
        control = arpnet.probe("a1", UNKNOWN, count=1, wait=0.3)
    assert_answered(a_to_b, arpnet.ip["b1"], arpnet.mac["b1"], arpnet.ip["a1"], arpnet.mac["a1"])
    assert_answered(b_to_a, arpnet.ip["a1"], arpnet.mac["a1"], arpnet.ip["b1"], arpnet.mac["b1"])
    assert trunk.who_has(UNKNOWN), "control: the unknown request must be on the trunk:\n" + trunk.text()
    crossed = [ln for ln in trunk.lines if "ARP" in ln and f"who-has {UNKNOWN} " not in ln        # the control
               and (mentions(ln, arpnet.ip["a1"]) or mentions(ln, arpnet.ip["b1"]))]
    assert not crossed, "ARP for a proxied address crossed the trunk:\n" + "\n".join(crossed)


def test_unknown_target_goes_to_the_trunk(arpnet, rig):
    """Requests for addresses nobody here holds (an unused address, the gateway) are
    switched normally: out of the uplink, tagged with the network's VLAN, and no
    one answers them."""
    with Capture(rig.a.trunk) as trunk:
        unknown = arpnet.probe("a1", UNKNOWN, count=2, wait=0.5)
        gateway = arpnet.probe("a1", GATEWAY, count=2, wait=0.5)
    assert not unknown["replies"] and not gateway["replies"], (unknown, gateway)
    for target in (UNKNOWN, GATEWAY):
        seen = [ln for ln in trunk.who_has(target) if f"vlan {VLAN}," in ln and f"tell {arpnet.ip['a1']}" in ln]
        assert len(seen) >= 2, f"requests for {target} not seen on the trunk tagged {VLAN}:\n{trunk.text()}"


def test_request_from_trunk_answered_for_local_endpoint_only(arpnet, rig):
    """A tagged request arriving on host a's uplink for a2 is answered by host a's
    bridge out of the uplink, and reaches none of host a's ports; one for b1
    (not host a's) is left to host b."""
    ports = {name: arpnet.endpoint(arpnet.ip[name]).port for name in ("a1", "a2")}
    with Capture(ports["a1"]) as p1, Capture(ports["a2"]) as p2:
        result = arpnet.probe_trunk(arpnet.ip["a2"], count=3)
    assert_answered(result, arpnet.ip["a2"], arpnet.mac["a2"], STRANGER_IP, STRANGER_MAC, vlan=VLAN)
    for cap in (p1, p2):
        assert not cap.who_has(arpnet.ip["a2"]), f"flooded to {cap.iface}:\n{cap.text()}"
    # b1 belongs to host b: host a has no uplink answer for it.
    uplink_answers = [f for f in arpnet.answers(rig.a, arpnet.ip["b1"]) if "dl_vlan=" in f]
    assert not uplink_answers, uplink_answers
    assert any("dl_vlan=" in f for f in arpnet.answers(rig.b, arpnet.ip["b1"]))


def test_trunk_answers_follow_the_uplink_port_number(arpnet, rig):
    """The uplink gets another OpenFlow port number (the trunk re-added, or given an
    ofport_request): within the sync loop's full pass (10 s), host a's trunk answers
    match on the new number, and a request from the trunk is again answered by the
    switch rather than flooded to host a's ports."""
    def ofport() -> int:
        return int(run(["ovs-vsctl", "--timeout=10", "get", "Interface", rig.a.trunk, "ofport"]).stdout)

    old = ofport()
    used = {int(x) for x in run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=ofport", "find", "Interface",
                                 f"name!={rig.a.trunk}"]).stdout.split() if x.strip().lstrip("-").isdigit()}
    new = next(n for n in range(3600, 3700) if n not in used and n != old)
    run(["ovs-vsctl", "--timeout=10", "set", "Interface", rig.a.trunk, f"ofport_request={new}"])
    try:
        deadline = time.monotonic() + 10
        while ofport() != new:
            assert time.monotonic() < deadline, f"OVS did not move {rig.a.trunk} to ofport {new}"
            time.sleep(0.1)
        ip = arpnet.ip["a2"]

        def trunk_ports() -> list[str]:
            return [m for f in arpnet.answers(rig.a, ip) for m in re.findall(r"in_port=\"?([^,\s\"]+)", f)]

        deadline = time.monotonic() + 15
        while trunk_ports() not in ([str(new)], [rig.a.trunk]):
            assert time.monotonic() < deadline, \
                f"trunk answer for {ip} still matches {trunk_ports()}, uplink is now {new} (was {old})"
            time.sleep(0.2)
        port = arpnet.endpoint(ip).port
        with Capture(port) as cap:
            result = arpnet.probe_trunk(ip, count=2)
        assert_answered(result, ip, arpnet.mac["a2"], STRANGER_IP, STRANGER_MAC, vlan=VLAN)
        assert not cap.who_has(ip), "the request from the trunk was flooded to a2's port:\n" + cap.text()
    finally:
        run(["ovs-vsctl", "--timeout=10", "remove", "Interface", rig.a.trunk, "ofport_request", str(new)],
            check=False)


def test_gratuitous_arp_on_trunk_at_join(arpnet, rig):
    """A container that joins announces its address: a gratuitous ARP (sender =
    target = its address, from its MAC) leaves host a tagged with the VLAN."""
    with Capture(rig.a.trunk) as trunk:
        rig.a.start("a3", NET, "--ip", FIXED["a3"])
        ip = rig.a.ip_of("a3", NET)
        mac = rig.a.exec("a3", "cat", "/sys/class/net/eth0/address", check=True).stdout.strip()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.2)
    try:
        garp = [ln for ln in trunk.who_has(ip) if f"tell {ip}," in ln and f"vlan {VLAN}," in ln
                and ln.split()[1] == mac and "ff:ff:ff:ff:ff:ff" in ln]
        assert garp, f"no gratuitous ARP for {ip} ({mac}) on the trunk:\n{trunk.text()}"
    finally:
        rig.a.docker("rm", "-f", "a3")


def test_deleted_endpoint_answer_gone_within_2s_on_every_host(arpnet, rig):
    """b2 starts on host b and is answered on both hosts; it is removed: from the
    moment its record leaves etcd, its answers are gone from both bridges within
    2 s, and a request for its address is then flooded, not answered."""
    rig.b.start("b2", NET, "--ip", FIXED["b2"])
    ip = rig.b.ip_of("b2", NET)
    ep = arpnet.endpoint(ip)
    arpnet.wait_answers(ip, present=True)
    assert len(arpnet.probe("a1", ip, count=1)["replies"]) == 1
    key = arpnet.store.k_endpoint_at(ep)
    gone_at: dict[str, float] = {}

    def watch_host(host, since: float):
        while arpnet.answers(host, ip):
            if time.monotonic() - since > 10:
                return
            time.sleep(0.02)
        gone_at[host.host_id] = time.monotonic()

    deleted_at: list[float] = []
    rm = subprocess.Popen(["/usr/bin/docker", "-H", rig.b.docker_host, "rm", "-f", "b2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while arpnet.store.kv.get(key) is not None:
            assert time.monotonic() < deadline and (rm.poll() is None or rm.returncode == 0), \
                f"endpoint record still in etcd; docker rm: {rm.poll()} {rm.stderr.read() if rm.poll() else ''}"
            time.sleep(0.005)
        deleted_at.append(time.monotonic())
        watchers = [threading.Thread(target=watch_host, args=(h, deleted_at[0])) for h in rig.hosts]
        for w in watchers:
            w.start()
        for w in watchers:
            w.join(15)
    finally:
        rm.communicate(timeout=60)
    delays = {h: round(t - deleted_at[0], 3) for h, t in gone_at.items()}
    print(f"answers for {ip} gone after (s): {delays}")
    assert set(delays) == {rig.a.host_id, rig.b.host_id}, \
        f"answers for {ip} still there 10 s after the record went: {delays}\n" + \
        "\n".join(arpnet.answers(rig.a, ip) + arpnet.answers(rig.b, ip))
    assert all(d <= DELETE_BOUND for d in delays.values()), f"answers removed after {delays} s (bound {DELETE_BOUND})"
    with Capture(rig.a.trunk) as trunk:
        after = arpnet.probe("a1", ip, count=2, wait=0.5)
    assert not after["replies"], after
    assert trunk.who_has(ip), "a request for the deleted address must now go to the trunk:\n" + trunk.text()


def _plugin_pid(rig, host) -> int:
    return int(Path(rig.env["RIG_RUN"], host.letter, "plugin.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_answers_survive_kill_9_of_the_daemon(arpnet, rig):
    """Host a's daemon (gunicorn and its worker) is killed with SIGKILL: host a keeps
    answering for its own and for host b's endpoints, for as long as it stays down.
    Started again, it changes none of the answers and announces its endpoints."""
    table10 = lambda host: sorted(f for f in host.flows() if "table=10" in f)   # noqa: E731
    before = table10(rig.a)
    pid = _plugin_pid(rig, rig.a)
    assert _alive(pid)
    os.killpg(pid, signal.SIGKILL)
    restarted = False
    try:
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"daemon {pid} survived SIGKILL"
            time.sleep(0.05)
        try:
            status = rig.a.call("Plugin.Activate", {}, timeout=2)[0]
        except OSError:
            status = None
        assert status is None, f"host a's daemon still answers ({status})"
        for _ in range(3):               # answers keep coming over seconds, not once
            assert_answered(arpnet.probe("a1", arpnet.ip["a2"], count=2), arpnet.ip["a2"], arpnet.mac["a2"],
                            arpnet.ip["a1"], arpnet.mac["a1"])
            assert_answered(arpnet.probe("a1", arpnet.ip["b1"], count=2), arpnet.ip["b1"], arpnet.mac["b1"],
                            arpnet.ip["a1"], arpnet.mac["a1"])
            assert_answered(arpnet.probe_trunk(arpnet.ip["a1"], count=2), arpnet.ip["a1"], arpnet.mac["a1"],
                            STRANGER_IP, STRANGER_MAC, vlan=VLAN)
            time.sleep(0.5)
        assert table10(rig.a) == before
        with Capture(rig.a.trunk) as trunk:
            run(["bash", str(RIG), "start", "--python", sys.executable, "--etcd-endpoints", rig.etcd,
                 "--etcd-prefix", rig.prefix], timeout=240)
            restarted = True
            garp = lambda n: [ln for ln in trunk.who_has(arpnet.ip[n])           # noqa: E731
                              if f"tell {arpnet.ip[n]}," in ln and f"vlan {VLAN}," in ln]
            deadline = time.monotonic() + 20
            while not (garp("a1") and garp("a2")) and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        if not restarted:
            run(["bash", str(RIG), "start", "--python", sys.executable, "--etcd-endpoints", rig.etcd,
                 "--etcd-prefix", rig.prefix], check=False, timeout=240)
    for name in ("a1", "a2"):
        assert garp(name), f"no gratuitous ARP for {name} after the daemon started again:\n{trunk.text()}"
    assert table10(rig.a) == before, "the restarted daemon changed the ARP answers"
