#!/usr/bin/env python3
"""ARP proxy: replies per second and reply latency with the daemon up and with
it killed (kill -9), against a real kernel neighbour answering on the same
bridge in the same run; and the flows one host holds at 100 and 1,000
endpoints in the cluster.

One daemon (the "host" under test) on a socket and bridge of its own
(/run/docker/plugins/npbench-arp.sock, npbencharp0, netdev; another benchmark may take
over the shared npbench socket while this one's daemon is killed), with an uplink trunk (a veth pair npbup0/npbup1) as on a
production host. Two endpoints are made through the plugin protocol
(RequestAddress, CreateEndpoint, Join) and their container ends moved into
network namespaces: the asker and the target, with their addresses
configured, so the target's kernel answers ARP like any container.

Replies, three ways, measured round after round in rotating order:

  kernel        arp-mode flood (the proxy off, `netctl global set --arp-mode flood`):
                the request is switched (NORMAL, flooded in the VLAN) and the
                target's kernel answers. The baseline.
  proxy         arp-mode proxy, daemon up: table 10 answers, nothing is flooded.
  proxy-killed  the same after kill -9 of the daemon's process group (started
                again after the measurement).

Latency: one request at a time from the asker's namespace (a raw socket in a
Python process, requests built with scapy), the time until its reply arrives.
Throughput: a closed loop keeping WINDOW requests outstanding for SECONDS;
replies per second of the asker's wall time (a request unanswered for 50 ms
counts as lost and is replaced). The asker is one Python process on a shared
2-core machine: it bounds the figures for all three ways alike, which is why
the baseline is measured the same way.

Flows per host: a cluster of HOSTS hosts in 4 VLANs, endpoints spread evenly
over hosts and VLANs; this host uses 2 of the 4 VLANs. This host's share is
made through the daemon socket (real veths and OVS ports); the other hosts'
endpoints are written to etcd as their daemons would write them (records
only: the ARP proxy reads nothing else). At 100 and at 1,000 endpoints it
counts this host's flows by kind and checks them against the design
(one answer per endpoint of a local VLAN, one trunk answer and one table-0
flow per local endpoint), times how long the answers took to follow the
records (and how many passes of the proxy that took, from the daemon's log), what one
pass costs at that size (the daemon's own ArpProxy class, run in this process: the read
of every endpoint, and a pass that finds nothing to change), the reply latency with the
bigger table against the kernel at the same size (arp-mode flood), and how long all
the answers take to go (flood) and come back at once (proxy).

    sudo /tmp/venv/bin/python bench/bench_arp.py [--rounds 3] [--latency-count 300]
                                                 [--seconds 3] [--window 16] [--scales 100,1000]
                                                 [--hosts 10] [--json] [--keep-log]

Prints figures; never passes or fails on time. Exit 1 when the setup broke, a
reply was wrong, the flow count differs from the design, or cleanup failed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

UPLINK, UPLINK_PEER = "npbup0", "npbup1"
# Its own socket and bridge, not the shared npbench ones: this benchmark kills its daemon
# on purpose, and while that socket does not answer another benchmark would take it over
# (and remove the bridge with this one's endpoints when it finishes).
C.SOCKET = "/run/docker/plugins/npbench-arp.sock"
C.BRIDGE = "npbencharp0"
MODES = ("kernel", "proxy", "proxy-killed")
VLANS_IN_CLUSTER = 4          # of which this host uses 2
LOST_AFTER = 0.05             # s without a reply: a request of the closed loop counts as lost


# -- the asker: runs inside the asker's network namespace ------------------------------------

def probe_main(argv: list[str]) -> None:
    """--probe latency|rate IFACE SMAC SIP TIP TMAC N WINDOW: prints one JSON object."""
    import socket

    from scapy.layers.l2 import ARP, Ether
    kind, iface, smac, sip, tip, tmac, n, window = argv
    n, window = float(n), int(window)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((iface, 0))
    req = bytes(Ether(src=smac, dst="ff:ff:ff:ff:ff:ff") /
                ARP(op=1, hwsrc=smac, psrc=sip, hwdst="00:00:00:00:00:00", pdst=tip))
    want_ip = socket.inet_aton(tip)
    want_mac = bytes.fromhex(tmac.replace(":", ""))
    me_ip = socket.inet_aton(sip)
    wrong = 0

    def is_reply(data: bytes) -> bool:
        nonlocal wrong
        # Ethernet(14) + ARP: op at 20, sha 22-28, spa 28-32, tha 32-38, tpa 38-42
        if len(data) < 42 or data[12:14] != b"\x08\x06" or data[20:22] != b"\x00\x02" or data[38:42] != me_ip:
            return False
        if data[28:32] != want_ip or data[22:28] != want_mac or data[6:12] != want_mac:
            wrong += 1
            return False
        return True

    def drain() -> None:
        s.setblocking(False)
        try:
            while True:
                s.recv(2048)
        except BlockingIOError:
            pass

    if kind == "latency":
        lat, lost = [], 0
        s.settimeout(0.5)
        for _ in range(int(n)):
            drain()
            s.settimeout(0.5)
            t0 = time.perf_counter()
            s.send(req)
            while True:
                try:
                    data = s.recv(2048)
                except socket.timeout:
                    lost += 1
                    break
                if is_reply(data):
                    lat.append((time.perf_counter() - t0) * 1e6)
                    break
        print(json.dumps({"latency_us": lat, "lost": lost, "wrong": wrong}))
        return
    # closed loop: keep `window` requests outstanding for n seconds
    drain()
    s.setblocking(False)
    sent = got = lost = 0
    outstanding = 0
    last_reply = time.perf_counter()
    t0 = time.perf_counter()
    end = t0 + n
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while outstanding < window:
            s.send(req)
            sent += 1
            outstanding += 1
        try:
            data = s.recv(2048)
        except BlockingIOError:
            if now - last_reply > LOST_AFTER:
                lost += outstanding
                outstanding = 0
                last_reply = now
            continue
        if is_reply(data):
            got += 1
            outstanding = max(0, outstanding - 1)
            last_reply = now
    wall = time.perf_counter() - t0
    print(json.dumps({"replies": got, "sent": sent, "lost": lost, "wall_s": wall, "wrong": wrong}))


# -- the host under test ------------------------------------------------------------------------

class Host:
    def __init__(self, out: C.Out, logdir: Path):
        self.out = out
        self.daemon = C.Daemon(logdir / "netplugin.log", extra_env={"NETPLUGIN_UPLINK": UPLINK})
        self.client: C.Client | None = None
        self.store = None
        self.netns: list[str] = []

    def start(self) -> None:
        self.daemon.start()
        self.daemon.wait_bridge()
        self.client = C.Client(C.SOCKET)
        deadline = time.monotonic() + 30
        while self.ofport(UPLINK) is None:            # the daemon adds the trunk in the background
            if time.monotonic() > deadline:
                raise RuntimeError(f"uplink {UPLINK} not on {C.BRIDGE} after 30 s:\n{self.daemon.log_tail()}")
            time.sleep(0.2)

    def restart(self) -> None:
        if self.client:
            self.client.close()
        self.daemon.start()
        self.client = C.Client(C.SOCKET)

    def kill9(self) -> None:
        pid = self.daemon.proc.pid
        os.killpg(pid, signal.SIGKILL)
        self.daemon.proc.wait(10)
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon's process group survived SIGKILL")
            time.sleep(0.05)
        if self.client:
            self.client.close()

    @staticmethod
    def ofport(name: str) -> int | None:
        r = C.run("ovs-vsctl", "--timeout=10", "get", "Interface", name, "ofport", check=False)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().lstrip("-").isdigit() \
            and int(r.stdout.strip()) > 0 else None

    def set_mode(self, mode: str) -> None:
        self.store.set_arp_mode(mode)

    def arp_flows(self) -> int:
        return self.flow_kinds().get("arp_local", 0) + self.flow_kinds().get("arp_uplink", 0)

    @staticmethod
    def flow_kinds() -> dict:
        return C.endpoint_flows(C.BRIDGE)["flow_kinds"]

    @staticmethod
    def total_flows() -> int:
        out = C.run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--no-stats", C.BRIDGE, timeout=60).stdout
        return sum(1 for ln in out.splitlines() if "actions=" in ln)     # (table 0 flows print no "table=")


class Net:
    """A network as Docker makes one; local endpoints come from the lower half of its subnet."""

    def __init__(self, client: C.Client, subnet: str, vlan: int, name: str):
        self.subnet, self.vlan, self.name = subnet, vlan, name
        net = ipaddress.ip_network(subnet)
        self.local_half, self.remote_half = list(net.subnets(prefixlen_diff=1))
        self.docker_id = C.hex64()
        r = client.ok("IpamDriver.RequestPool", {"AddressSpace": C.ADDRESS_SPACE, "Pool": subnet,
                                                 "SubPool": str(self.local_half), "Options": {}, "V6": False})
        self.pool_id = r["PoolID"]
        self.gateway = client.ok("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
        client.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": self.docker_id,
            "Options": {"com.docker.network.generic": {"vlan": str(vlan), "name": name},
                        "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": C.ADDRESS_SPACE, "Pool": subnet, "Gateway": self.gateway,
                          "AuxAddresses": {}}],
            "IPv6Data": []})
        self.remote_next = int(self.remote_half.network_address) + 1
        self.global_id: str | None = None

    def endpoint(self, client: C.Client) -> dict:
        """RequestAddress + CreateEndpoint + Join, as Docker does for one container."""
        ep = C.hex64()
        addr = client.ok("IpamDriver.RequestAddress", {"PoolID": self.pool_id, "Address": "", "Options": {}})["Address"]
        reply = client.ok("NetworkDriver.CreateEndpoint", {
            "NetworkID": self.docker_id, "EndpointID": ep, "Options": {},
            "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
        join = client.ok("NetworkDriver.Join", {"NetworkID": self.docker_id, "EndpointID": ep,
                                                "SandboxKey": "", "Options": {}})
        return {"id": ep, "address": addr, "ip": addr.split("/")[0], "mac": reply["Interface"]["MacAddress"],
                "peer": join["InterfaceName"]["SrcName"]}

    def remote_ip(self) -> str:
        ip = str(ipaddress.ip_address(self.remote_next))
        self.remote_next += 1
        return ip


def into_netns(host: Host, ep: dict, name: str) -> str:
    """Move the endpoint's container end into a new namespace and give it its address."""
    ns = f"npbench-arp-{name}-{C.tag()}"
    C.run("ip", "netns", "add", ns)
    host.netns.append(ns)
    C.run("ip", "link", "set", ep["peer"], "netns", ns)
    for args in (("link", "set", "lo", "up"), ("addr", "add", ep["address"], "dev", ep["peer"]),
                 ("link", "set", ep["peer"], "up")):
        C.run("ip", "-n", ns, *args)
    return ns


def probe(ns: str, kind: str, asker: dict, target: dict, n: float, window: int = 1) -> dict:
    proc = C.run("ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), "--probe", kind,
                 asker["peer"], asker["mac"], asker["ip"], target["ip"], target["mac"], str(n), str(window),
                 timeout=120 + n, check=False)
    if proc.returncode != 0:
        links = C.run("ip", "-n", ns, "-d", "link", "show", check=False).stdout
        raise RuntimeError(f"the {kind} probe failed: {proc.stderr.strip()[-600:]}\nlinks in {ns}:\n{links}")
    return json.loads(proc.stdout)


def wait_until(what: str, cond, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def measure_mode(host: Host, mode: str, ns: str, asker: dict, target: dict, args) -> dict:
    if mode == "kernel":
        host.set_mode("flood")
        wait_until("flood mode removes the answers", lambda: host.arp_flows() == 0)
    else:
        host.set_mode("proxy")
        wait_until("proxy mode installs the answers", lambda: host.arp_flows() >= 3)
    if mode == "proxy-killed":
        host.kill9()
    try:
        probe(ns, "latency", asker, target, 20)                         # warm: caches, learning
        lat = probe(ns, "latency", asker, target, args.latency_count)
        rate = probe(ns, "rate", asker, target, args.seconds, args.window)
    finally:
        if mode == "proxy-killed":
            host.restart()
    v = lat["latency_us"]
    return {"mode": mode, "latency_p50_us": C.rnd(C.pct(v, 50), 1), "latency_p90_us": C.rnd(C.pct(v, 90), 1),
            "latency_p99_us": C.rnd(C.pct(v, 99), 1), "latency_n": len(v), "latency_lost": lat["lost"],
            "replies_per_s": C.rnd(rate["replies"] / rate["wall_s"], 0), "replies": rate["replies"],
            "sent": rate["sent"], "lost": rate["lost"], "wrong": lat["wrong"] + rate["wrong"],
            "loadavg": C._loadavg()}


def remote_record(store, net: Net, host_id: str):
    from netplugin.kv import Put, absent
    from netplugin.model import Endpoint
    ip = net.remote_ip()
    eid = C.hex64()
    if net.global_id is None:
        net.global_id = store.network_by_subnet(net.subnet).id
    ep = Endpoint(id=eid, network=net.global_id, docker_network=C.hex64(), host=host_id, ip=ip,
                  prefixlen=net.local_half.prefixlen - 1, mac="02:4e:" + ":".join(f"{int(o):02x}" for o in ip.split(".")),
                  port=f"np{eid[:11]}", peer=f"nc{eid[:11]}", vlan=net.vlan, network_name=net.name)
    assert store.kv.txn([absent(store.k_legacy_endpoint(eid))], [Put(store.k_legacy_endpoint(eid), ep.to_json())])


def scale_to(host: Host, nets: list[Net], local_nets: list[Net], total: int, hosts: int, have: dict,
             callers: int, out: C.Out) -> dict:
    """Grow the cluster to `total` endpoints spread over `hosts` hosts and the VLANs.
    have: counts made so far {"local": {vlan: n}, "remote": {vlan: n}} (probe endpoints excluded)."""
    per_vlan = total // len(nets)
    local_per_vlan = total // hosts // len(local_nets)
    jobs_local = []
    for net in local_nets:
        jobs_local += [net] * (local_per_vlan - have["local"].get(net.vlan, 0))
    t0 = time.monotonic()

    def make(net: Net) -> None:
        client = C.Client(C.SOCKET)
        try:
            net.endpoint(client)
        finally:
            client.close()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(make, jobs_local))
    for net in local_nets:
        have["local"][net.vlan] = local_per_vlan
    local_s = time.monotonic() - t0
    out.progress(f"{len(jobs_local)} local endpoints in {local_s:.1f} s; writing the other hosts' records")
    t1 = time.monotonic()
    log_mark = C.log_size(host.daemon.log_path)
    n_remote = 0
    for net in nets:
        local_here = have["local"].get(net.vlan, 0)
        want_remote = per_vlan - local_here
        for i in range(have["remote"].get(net.vlan, 0), want_remote):
            remote_record(host.store, net, f"bench-remote-{i % (hosts - 1)}")
            n_remote += 1
        have["remote"][net.vlan] = want_remote
    written = time.monotonic()
    local_total = sum(have["local"].values()) + 2          # + asker and target
    local_vlan_eps = sum(have["local"][n.vlan] + have["remote"][n.vlan] for n in local_nets) + 2
    expect = {"arp_local": local_vlan_eps, "arp_uplink": local_total, "port": local_total}
    # when each kind of flow reached its count, from the last record written
    reached: dict[str, float] = {}
    while len(reached) < len(expect):
        now_kinds = host.flow_kinds()
        for k, v in expect.items():
            if k not in reached and now_kinds.get(k, 0) == v:
                reached[k] = time.monotonic() - written
        if time.monotonic() - written > 120:
            raise RuntimeError(f"flows did not follow the records within 120 s: {now_kinds} != {expect}")
        if len(reached) < len(expect):
            time.sleep(0.05)
    follow_s = max(reached.values())
    passes = proxy_passes(C.read_from(host.daemon.log_path, log_mark))
    kinds = host.flow_kinds()
    return {"endpoints_in_cluster": total + 2, "hosts": hosts, "vlans": len(nets), "local_vlans": len(local_nets),
            "local_endpoints": local_total, "endpoints_in_local_vlans": local_vlan_eps,
            "flows": {**kinds, "total_incl_table_miss": host.total_flows()}, "expected": expect,
            "as_designed": all(kinds.get(k, 0) == v for k, v in expect.items()),
            "local_made_s": C.rnd(local_s, 1), "remote_records": n_remote,
            "remote_written_s": C.rnd(written - t1, 1),
            "answers_followed_s": C.rnd(follow_s, 2),
            "kind_reached_s": {k: C.rnd(v, 2) for k, v in reached.items()},
            "proxy_passes_while_following": len(passes),
            "answers_added_while_following": sum(x[1] for x in passes)}


def proxy_passes(text: str) -> list[tuple[str, int, int, int]]:
    """(time, added, removed, held) of each pass of the daemon's ARP proxy that changed something."""
    import re
    pat = re.compile(r"^(\S+ \S+) .*ARP proxy: (\d+) answers added, (\d+) removed, (\d+) held")
    return [(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
            for m in map(pat.search, text.splitlines()) if m]


def pass_cost(host: Host, count: int = 5) -> dict:
    """What one pass of the ARP proxy costs at this size, measured in this process with
    the daemon's own classes: desired() (etcd read of every endpoint, one OVSDB lookup)
    and a resync() that finds nothing to change (plus the dump of table 10)."""
    from netplugin.arp_proxy import ArpProxy
    from netplugin.config import Config
    from netplugin.dataplane.flows import Flows
    from netplugin.dataplane.ovs import Switch
    cfg = Config(host_id=host.daemon.host_id, bridge=C.BRIDGE, uplink=UPLINK, etcd_prefix=host.daemon.prefix)
    proxy = ArpProxy(cfg, host.store, Switch(cfg.ovsdb, 30), Flows(C.BRIDGE, 30))
    proxy.desired()                                  # connect first
    desired, resync = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        proxy.desired()
        desired.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        changed = proxy.resync()
        resync.append(time.perf_counter() - t0)
        if changed != (0, 0):
            raise RuntimeError(f"a converged table changed on resync: {changed}")
    return {"desired_ms_median": C.rnd(C.median(desired) * 1000, 1),
            "resync_ms_median": C.rnd(C.median(resync) * 1000, 1)}


def latency_row(ns: str, asker: dict, target: dict, n: int) -> dict:
    lat = probe(ns, "latency", asker, target, n)
    return {"p50_us": C.rnd(C.pct(lat["latency_us"], 50), 1), "p99_us": C.rnd(C.pct(lat["latency_us"], 99), 1),
            "lost": lat["lost"], "wrong": lat["wrong"]}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2:])
        return 0
    p = C.parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three ways, order rotating (default 3)")
    p.add_argument("--latency-count", type=int, default=300, help="requests one at a time per measurement")
    p.add_argument("--seconds", type=float, default=3.0, help="closed-loop throughput duration (default 3)")
    p.add_argument("--window", type=int, default=16, help="requests outstanding in the closed loop (default 16)")
    p.add_argument("--scales", default="100,1000", help="cluster sizes for the flow count (default 100,1000)")
    p.add_argument("--hosts", type=int, default=10, help="hosts in the modelled cluster (default 10)")
    p.add_argument("--callers", type=int, default=4, help="concurrent protocol callers for local endpoints")
    args = C.parse(p, argv, keep_log="keep the daemon log and print its path")
    scales = [int(x) for x in args.scales.split(",") if x.strip()]
    out = C.Out(args.json)
    logdir = Path(tempfile.mkdtemp(prefix="npbench-arp-"))
    host = Host(out, logdir)
    octets = C.pick_octets(VLANS_IN_CLUSTER)
    vlan0 = C.pick_vlan() // 10 * 10
    vlans = [min(vlan0 + i, 3999) for i in range(VLANS_IN_CLUSTER)]
    result: dict = {"benchmark": "arp", "machine": C.machine(), "command": " ".join([sys.executable] + sys.argv),
                    "settings": {"rounds": args.rounds, "latency_count": args.latency_count,
                                 "seconds": args.seconds, "window": args.window, "scales": scales,
                                 "hosts": args.hosts, "bridge": C.BRIDGE, "uplink": UPLINK,
                                 "etcd_prefix": host.daemon.prefix, "host_id": host.daemon.host_id}}
    state = {"finished": False}
    broken = False
    with C.Cleanup(out) as cleanup:
        cleanup.add("remove the daemon log", lambda: C.drop_log(logdir, args.keep_log, state["finished"], out))
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(host.daemon.prefix + "/"))
        cleanup.add("remove the uplink veth", lambda: C.run("ip", "link", "del", UPLINK, check=False))
        cleanup.add(f"remove bridge {C.BRIDGE}", lambda: C.remove_bridge(C.BRIDGE))
        cleanup.add("delete the namespaces", lambda: [C.run("ip", "netns", "del", ns, check=False)
                                                      for ns in host.netns])
        cleanup.add("stop the daemon", host.daemon.stop)
        C.run("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK_PEER)
        for dev in (UPLINK, UPLINK_PEER):
            C.run("ip", "link", "set", dev, "up")
            C.run("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1", check=False)
        out.progress(f"starting the daemon (log {host.daemon.log_path})")
        host.start()
        from netplugin.kv import EtcdKV
        from netplugin.store import Store
        host.store = Store(EtcdKV([C.ETCD]), host.daemon.prefix)
        nets = [Net(host.client, f"10.{o}.0.0/16", v, f"npbench-arp-{v}") for o, v in zip(octets, vlans)]
        local_nets = nets[:2]
        asker = local_nets[0].endpoint(host.client)
        target = local_nets[0].endpoint(host.client)
        ns_asker = into_netns(host, asker, "asker")
        into_netns(host, target, "target")
        out.progress(f"asker {asker['ip']} target {target['ip']} on VLAN {local_nets[0].vlan}")

        rows = []
        for r in range(args.rounds):
            order = MODES[r % 3:] + MODES[:r % 3]
            for mode in order:
                out.progress(f"round {r + 1}: {mode}")
                row = measure_mode(host, mode, ns_asker, asker, target, args)
                row["round"] = r + 1
                rows.append(row)
                if row["wrong"] or row["latency_n"] == 0:
                    broken = True
        host.set_mode("proxy")
        result["replies"] = rows
        summary = {}
        for mode in MODES:
            mine = [x for x in rows if x["mode"] == mode]
            summary[mode] = {"replies_per_s_median": C.median([x["replies_per_s"] for x in mine]),
                             "latency_p50_us_median": C.median([x["latency_p50_us"] for x in mine]),
                             "latency_p99_us_median": C.median([x["latency_p99_us"] for x in mine])}
        result["summary"] = summary

        have = {"local": {}, "remote": {}}
        scale_rows = []
        for total in scales:
            out.progress(f"cluster of {total} endpoints on {args.hosts} hosts")
            row = scale_to(host, nets, local_nets, total, args.hosts, have, args.callers, out)
            row["pass_cost"] = pass_cost(host)
            # latency with the big table, against the kernel at the same size, then the
            # time to put every answer back at once (flood -> proxy)
            row["latency_proxy"] = latency_row(ns_asker, asker, target, args.latency_count)
            want = sum(row["expected"][k] for k in ("arp_local", "arp_uplink"))
            host.set_mode("flood")
            row["flood_removed_s"] = C.rnd(wait_until("flood removes the answers", lambda: host.arp_flows() == 0,
                                                      120), 2)
            row["latency_kernel"] = latency_row(ns_asker, asker, target, args.latency_count)
            host.set_mode("proxy")
            row["proxy_reinstalled_s"] = C.rnd(wait_until("proxy puts the answers back",
                                                          lambda: host.arp_flows() == want, 120), 2)
            row["latency_proxy_again"] = latency_row(ns_asker, asker, target, args.latency_count)
            row["loadavg"] = C._loadavg()
            if not row["as_designed"] or any(row[k]["wrong"] or row[k]["lost"] > args.latency_count // 10
                                             for k in ("latency_proxy", "latency_kernel", "latency_proxy_again")):
                broken = True
            scale_rows.append(row)
        result["scale"] = scale_rows
        result["machine"]["loadavg_end"] = C._loadavg()
        state["finished"] = not broken
    result["cleanup_failures"] = cleanup.failures
    result["broken"] = broken
    report(out, result)
    out.result(result)
    return 1 if broken or cleanup.failures else 0


def report(out: C.Out, r: dict) -> None:
    out.say(f"ARP proxy  ({C.machine_line(r['machine'])}, load at end {r['machine'].get('loadavg_end')})")
    s = r["settings"]
    out.say(f"replies: latency = {s['latency_count']} requests one at a time; throughput = closed loop, "
            f"{s['window']} outstanding, {s['seconds']} s")
    out.say(C.table(["round", "way", "p50 us", "p90 us", "p99 us", "lost", "replies/s", "sent", "lost (loop)",
                     "load"],
                    [[x["round"], x["mode"], x["latency_p50_us"], x["latency_p90_us"], x["latency_p99_us"],
                      x["latency_lost"], x["replies_per_s"], x["sent"], x["lost"], x["loadavg"]]
                     for x in r.get("replies", [])]))
    out.say("")
    if r.get("summary"):
        out.say(C.table(["way (median of rounds)", "replies/s", "p50 us", "p99 us"],
                        [[m, v["replies_per_s_median"], v["latency_p50_us_median"], v["latency_p99_us_median"]]
                         for m, v in r["summary"].items()]))
        out.say("")
    if r.get("scale"):
        out.say(C.table(["endpoints", "local", "in local VLANs", "arp_local", "arp_uplink", "table 0", "all flows",
                         "as designed", "followed s", "passes", "desired ms", "resync ms", "flood s", "proxy s"],
                        [[x["endpoints_in_cluster"], x["local_endpoints"], x["endpoints_in_local_vlans"],
                          x["flows"].get("arp_local", 0), x["flows"].get("arp_uplink", 0),
                          x["flows"].get("port", 0), x["flows"]["total_incl_table_miss"],
                          "yes" if x["as_designed"] else "NO", x["answers_followed_s"],
                          x["proxy_passes_while_following"], x["pass_cost"]["desired_ms_median"],
                          x["pass_cost"]["resync_ms_median"], x["flood_removed_s"], x["proxy_reinstalled_s"]]
                         for x in r["scale"]]))
        out.say("")
        out.say(C.table(["endpoints", "proxy p50 us", "p99", "kernel p50 us", "p99", "proxy again p50 us", "p99",
                         "load"],
                        [[x["endpoints_in_cluster"], x["latency_proxy"]["p50_us"], x["latency_proxy"]["p99_us"],
                          x["latency_kernel"]["p50_us"], x["latency_kernel"]["p99_us"],
                          x["latency_proxy_again"]["p50_us"], x["latency_proxy_again"]["p99_us"], x["loadavg"]]
                         for x in r["scale"]]))
    C.say_cleanup_failures(out, r)


if __name__ == "__main__":
    sys.exit(main())
