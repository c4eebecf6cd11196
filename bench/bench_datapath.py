#!/usr/bin/env python3
"""TCP through the userspace datapath with userspace TSO off and on, in one run:
netplugin's pipeline, a bare NORMAL OVS bridge and Docker's bridge network.

Cases, each two network namespaces joined by veths, measured with iperf3 (one
TCP stream, read at the receiver):

  netplugin    a real daemon's endpoint pair: CreateEndpoint and Join through
               its socket, its table-0 flows and ARP answers (meters off); the
               daemon runs with userspace_tso as the phase says, so its veths
               get the offloads it sets
  ovs-bare     a netdev bridge with only its NORMAL flow; veth tx checksum
               offload off without TSO (what TCP needs then), kept with it
  ovs-bare-txoff  (TSO phase only) the same with the offload off: TSO with
               veths made the old way
  docker-bridge  a Docker bridge network (docker network create -d bridge):
               its Linux bridge and iptables rules, with the namespaces plugged
               in as Docker plugs containers (a veth on the bridge, offloads on).
               Containers running iperf3 would need an image built from host
               binaries, and cross the same bridge

Phases: ``off`` then ``on``: ovs-vswitchd is restarted with
other_config:userspace-tso-enable set for the phase (ovs-ctl saves and restores
flows), and everything of the phase is made after it. The setting found at
start is put back at the end (one more restart if it differs). This restarts
ovs-vswitchd: on a shared machine run it under the real-ring lock,

    sudo flock /tmp/np-real.lock .venv/bin/python bench/bench_datapath.py [--rounds 3] [--seconds 4] [--json]

Rounds interleave the cases; the median per case is reported, and each case
against Docker's bridge in the same phase.
"""

from __future__ import annotations

import random
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from tests.harness.iperf import iperf
from tests.harness.netns import Namespaces, adopt, reach

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
KEY = "other_config:userspace-tso-enable"
SOCKET = "/run/docker/plugins/npdpbench.sock"
BRIDGE = "npbench0dp"
GENERIC = "com.docker.network.generic"


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every case once (default 3)")
    p.add_argument("--seconds", type=float, default=4, help="iperf3 seconds per run, after 1 s omitted (default 4)")
    p.add_argument("--phases", default="off,on", help="TSO settings to measure, in order (default off,on)")
    return C.parse(p, argv, keep_log="keep the daemon logs")


# -- OVS -------------------------------------------------------------------------------

def tso_setting() -> str:
    out = C.run("ovs-vsctl", "--timeout=10", "--if-exists", "get", "Open_vSwitch", ".", KEY).stdout
    return out.strip().strip('"') or "false"


def set_tso(value: str, out: C.Out) -> None:
    """Set the key and restart ovs-vswitchd when it differs from what runs."""
    if tso_setting() == value:
        return
    out.progress(f"userspace TSO -> {value}: restarting ovs-vswitchd")
    C.run("ovs-vsctl", "--timeout=10", "set", "Open_vSwitch", ".", f"{KEY}={value}")
    C.run(OVS_CTL, "--no-ovsdb-server", "restart", timeout=120)
    deadline = time.monotonic() + 30
    while C.run("ovs-vsctl", "--timeout=5", "show", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("ovs-vswitchd did not answer 30 s after its restart")
        time.sleep(0.2)


# -- the cases -----------------------------------------------------------------------------

class Pair:
    """Two namespaces (client, server) and what to undo."""

    def __init__(self, client: str, server: str, server_ip: str, undo):
        self.client, self.server, self.server_ip, self.undo = client, server, server_ip, undo


def veth(host: str, peer: str, tx_off: bool) -> None:
    C.run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
    if tx_off:
        for name in (host, peer):
            C.run("ethtool", "-K", name, "tx", "off")
    C.run("ip", "link", "set", host, "up")


def ovs_bare(ns: Namespaces, tag: str, octet: int, tx_off: bool) -> Pair:
    bridge = f"npbdp{tag}"
    C.run("ovs-vsctl", "--timeout=10", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev")
    names = []
    for i in (1, 2):
        host, peer = f"npbh{tag}{i}", f"npbc{tag}{i}"
        veth(host, peer, tx_off)
        C.run("ovs-vsctl", "--timeout=10", "add-port", bridge, host)
        names.append((ns.new(), host, peer))
    for i, (space, _, peer) in enumerate(names, 1):
        adopt(space, peer, f"10.{octet}.0.{i}/24")

    def undo():
        for _, host, _ in names:
            C.run("ip", "link", "del", host, check=False)
        C.run("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge, check=False)
    try:
        reach(names[0][0], f"10.{octet}.0.2")
    except Exception:
        undo()
        raise
    return Pair(names[0][0], names[1][0], f"10.{octet}.0.2", undo)


def docker_bridge(ns: Namespaces, tag: str, octet: int) -> Pair:
    """A Docker bridge network (docker network create -d bridge): its Linux bridge
    and Docker's iptables rules for it, namespaces plugged in as Docker plugs
    containers (a veth on the bridge, an address of the network's subnet)."""
    name = f"npbench-dp-{tag}"
    net = C.docker("network", "create", "-d", "bridge", "--subnet", f"10.{octet}.1.0/24", name).stdout.strip()
    bridge = "br-" + net[:12]
    names = []
    try:
        for i in (1, 2):
            host, peer = f"npbq{tag}{i}", f"npbr{tag}{i}"
            veth(host, peer, tx_off=False)
            names.append((ns.new(), host, peer))
            C.run("ip", "link", "set", host, "master", bridge)
        for i, (space, _, peer) in enumerate(names, 2):
            adopt(space, peer, f"10.{octet}.1.{i}/24")
    except Exception:
        for _, host, _ in names:
            C.run("ip", "link", "del", host, check=False)
        C.docker("network", "rm", name, check=False)
        raise

    def undo():
        for _, host, _ in names:
            C.run("ip", "link", "del", host, check=False)
        C.docker("network", "rm", name, check=False)
    try:
        reach(names[0][0], f"10.{octet}.1.3")
    except Exception:
        undo()
        raise
    return Pair(names[0][0], names[1][0], f"10.{octet}.1.3", undo)


class Plugin:
    """A netplugin daemon on its own socket and bridge, and two endpoints of one network."""

    def __init__(self, logdir: Path, tso: bool, octet: int):
        self.daemon = C.Daemon(logdir / f"netplugin-tso-{tso}.log", socket=SOCKET, bridge=BRIDGE,
                               extra_env={"NETPLUGIN_USERSPACE_TSO": "true" if tso else "false",
                                          "NETPLUGIN_PORT_POOL_SIZE": "0",
                                          "NETPLUGIN_METRICS_ADDRESS": f"127.0.0.1:{random.randint(19800, 19899)}"})
        self.octet = octet

    def ok(self, method: str, body: dict) -> dict:
        status, reply = self.daemon.call(method, body, timeout=60)
        if status != 200:
            raise RuntimeError(f"{method} answered {status}: {reply}\n{self.daemon.tail(1500)}")
        return reply

    def pair(self, ns: Namespaces) -> Pair:
        try:
            return self._pair(ns)
        except BaseException:
            self.undo()
            raise

    def undo(self) -> None:
        self.daemon.stop()
        C.remove_bridge(BRIDGE)
        C.etcd_delete_prefix(self.daemon.prefix + "/")

    def _pair(self, ns: Namespaces) -> Pair:
        self.daemon.start()
        self.daemon.wait_bridge()
        subnet = f"10.{self.octet}.2.0/24"
        pool = self.ok("IpamDriver.RequestPool", {"AddressSpace": C.ADDRESS_SPACE, "Pool": subnet, "SubPool": "",
                                                   "Options": {}, "V6": False})["PoolID"]
        gateway = self.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {
            "RequestAddressType": "com.docker.network.gateway"}})["Address"]
        net = secrets.token_hex(32)
        self.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": net, "Options": {GENERIC: {"vlan": str(C.pick_vlan()), "name": f"npbench-dp-{C.tag()}"}},
            "IPv4Data": [{"AddressSpace": C.ADDRESS_SPACE, "Pool": subnet, "Gateway": gateway, "AuxAddresses": {}}],
            "IPv6Data": []})
        spaces, ips = [], []
        for _ in (1, 2):
            address = self.ok("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})["Address"]
            endpoint = secrets.token_hex(32)
            reply = self.ok("NetworkDriver.CreateEndpoint", {
                "NetworkID": net, "EndpointID": endpoint, "Options": {},
                "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}})
            space = ns.new()
            join = self.ok("NetworkDriver.Join", {"NetworkID": net, "EndpointID": endpoint,
                                                  "SandboxKey": f"/var/run/netns/{space}", "Options": {}})
            adopt(space, join["InterfaceName"]["SrcName"], address, reply["Interface"]["MacAddress"])
            spaces.append(space)
            ips.append(address.split("/")[0])

        reach(spaces[0], ips[1])
        return Pair(spaces[0], spaces[1], ips[1], self.undo)


def offload_of(pair: Pair) -> str:
    out = C.run("ip", "netns", "exec", pair.client, "ethtool", "-k", "eth0", check=False).stdout
    line = next((x for x in out.splitlines() if x.startswith("tx-checksumming:")), "?: ?")
    return line.split(":", 1)[1].split()[0]


# -- main --------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if any(p not in ("off", "on") for p in phases):
        raise SystemExit(f"--phases takes off and on, not {args.phases!r}")
    logdir = Path(tempfile.mkdtemp(prefix="npbench-datapath-"))
    info = C.machine()
    original = tso_setting()
    result: dict = {"benchmark": "datapath_tcp", "machine": info,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "settings": {"rounds": args.rounds, "seconds": args.seconds, "phases": phases,
                                 "tso_at_start": original}, "phases": {}}
    finished = {"ok": False}
    rows = []
    with C.Cleanup(out) as cleanup:
        cleanup.add("remove the logs", lambda: C.drop_log(logdir, args.keep_log, finished["ok"], out))
        cleanup.add(f"put userspace TSO back to {original}", lambda: set_tso(original, out))
        for phase in phases:
            set_tso("true" if phase == "on" else "false", out)
            ns = Namespaces("npbench-dp-")
            tag = secrets.token_hex(2)
            a, b, c, d = C.pick_octets(4)
            pairs: dict[str, Pair] = {}
            try:
                pairs["docker-bridge"] = docker_bridge(ns, tag, a)
                pairs["ovs-bare"] = ovs_bare(ns, tag + "a", b, tx_off=phase == "off")
                if phase == "on":
                    pairs["ovs-bare-txoff"] = ovs_bare(ns, tag + "b", c, tx_off=True)
                pairs["netplugin"] = Plugin(logdir, phase == "on", d).pair(ns)
                runs: dict[str, list[float]] = {k: [] for k in pairs}
                for r in range(args.rounds):
                    order = list(pairs)
                    order = order[r % len(order):] + order[:r % len(order)]
                    for case in order:
                        p = pairs[case]
                        mbit = iperf(p.server, p.server_ip, p.client, seconds=args.seconds, omit=1).mbit
                        runs[case].append(round(mbit, 1))
                        out.progress(f"TSO {phase} round {r + 1} {case}: {mbit:.0f} Mbit/s")
                base = C.median(runs["docker-bridge"]) or 1.0
                result["phases"][phase] = {
                    case: {"runs": v, "median_mbit": C.median(v), "vs_docker_bridge": C.rnd(C.median(v) / base, 3),
                           "veth_tx_checksumming": offload_of(pairs[case])} for case, v in runs.items()}
                for case, s in result["phases"][phase].items():
                    rows.append([phase, case, s["veth_tx_checksumming"], s["median_mbit"], s["vs_docker_bridge"],
                                 " ".join(f"{x:.0f}" for x in s["runs"])])
            finally:
                for p in pairs.values():
                    p.undo()
                ns.cleanup()
        info["loadavg_end"] = C._loadavg()
        out.say(C.machine_line(info) + f" load_end={info['loadavg_end']}")
        out.say(C.table(["TSO", "case", "veth tx csum", "median Mbit/s", "vs docker bridge", "runs"], rows))
        out.result(result)
        finished["ok"] = True
    return 0


if __name__ == "__main__":
    C.exit_with(lambda: main())
