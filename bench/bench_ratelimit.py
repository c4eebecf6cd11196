#!/usr/bin/env python3
"""Rate limits (issue 5): accuracy, how fast a live change applies, and what
the pipeline costs an endpoint that has no limit.

A daemon of its own is started (socket /run/netplugin-rlbench-<hex>.sock,
etcd prefix /netplugin/bench-rl-<hex>, bridge nprlbench<hex>, netdev datapath,
so it can run beside the other benchmarks and the tests). A network is made
through the protocol as Docker makes one (RequestPool, gateway RequestAddress,
CreateNetwork -o vlan -o name), and three "containers" (RequestAddress,
CreateEndpoint, Join, then the container end moved into a network namespace
with its address and MAC, as Docker does): a sender that gets the limits, a
receiver, and a sender that never has a limit. Limits are set with netctl, the
operator's path (a profile attached with `netctl endpoint set`).

1. Accuracy: for each rate (default 10, 50, 200 Mbit/s; burst = the default
   250 ms of the rate) iperf3 from the limited sender to the receiver, read at
   the receiver: UDP offered at twice the rate (`-u -b 2xRATE -t 5 -O 2`) and
   TCP (`-t 5 -O 2`: slow start and the initial full bucket omitted), --runs
   times each; median, min, max and the error of the median. Before each rate,
   one unlimited TCP run on the same path says what the machine could carry at
   that moment (a result below the limit while that is not well above it is
   the machine, not the meter).
2. Live change: a profile at 50 Mbit/s, UDP offered at 100 Mbit/s with
   0.25 s intervals at the receiver; 3 s in, `netctl profile set P --rate
   10mbit`. Timed: netctl itself (start to return; the etcd write is its last
   step), from netctl returning to `ovs-ofctl dump-meters` showing 10000 kbps
   (polled every 10 ms), and from netctl returning to the start of the first
   receiver interval at or below 10 Mbit/s + 15 % (0.25 s resolution), both also
   from before netctl started (what the 2 s of the issue count); then the
   mean and the largest interval from 2 s after netctl returned. --changes times.
4. CreateEndpoint: a port whose network has a profile (so CreateEndpoint
   sets its meter and flow before it answers) against one without, alternated
   (--creates pairs); medians, p90 and their ratio.
3. Overhead: TCP from the never-limited sender (table 0 in_port flow ->
   table 10 -> NORMAL, the ARP proxy's flows present) against a bare netdev
   bridge with only its default NORMAL flow and two namespaces on veths made
   the same way (MTU 1500, tx checksum off), alternated run by run, who goes
   first alternating too (--pairs, `-t 3 -O 1`); the ratio of the medians.

    sudo /tmp/venv/bin/python bench/bench_ratelimit.py [--rates 10,50,200] [--runs 3] [--changes 5]
                                                       [--pairs 7] [--creates 20] [--json]

Exit 0 when the run completed and cleaned up, whatever the figures; 1 when the
setup broke, an iperf3 run failed or something could not be removed.

Everything is removed on the way out, also on Ctrl-C or SIGTERM. After a SIGKILL,
by hand: the daemon (`ss -xlp src /run/netplugin-rlbench-HEX.sock` names it),
`ovs-vsctl del-br nprlbenchHHHH` and `nprlbareHHHH`, `ip netns del nprlbench-*`,
`ip link del nprlbbHEX1` / `nprlbbHEX2`, `etcdctl del --prefix /netplugin/bench-rl-HEX/`.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from tests.harness.daemon import Daemon, settings_env
from tests.harness.iperf import iperf
from tests.harness.netns import Namespaces, adopt, reach

GENERIC = "com.docker.network.generic"
TOLERANCE = 0.15


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return C.run(*args, check=check, timeout=timeout)


def meters(bridge: str) -> dict[int, tuple[int, int]]:
    """The bridge's meters as the daemon itself reads them: {id: (rate kbps, burst kb)}."""
    from netplugin.dataplane.flows import Flows
    return {ident: (m["rate_kbps"] or 0, m["burst_kb"] or 0) for ident, m in Flows(bridge).meters().items()}


def metered(bridge: str, ofport: int) -> bool:
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge).stdout
    return f"meter:{ofport}," in out


# -- the rig ----------------------------------------------------------------------------------

class Rig:
    def __init__(self, workdir: Path, out: C.Out):
        self.hex = secrets.token_hex(3)
        self.out = out
        self.workdir = workdir
        self.socket = f"/run/netplugin-rlbench-{self.hex}.sock"
        self.prefix = f"/netplugin/bench-rl-{self.hex}"
        self.bridge = "nprlbench" + self.hex[:4]
        self.bare = "nprlbare" + self.hex[:4]
        self.host_id = f"bench-rl-{self.hex}"
        self.log_path = workdir / "netplugin.log"
        self.env = settings_env(isolated=False, etcd_endpoints=C.ETCD, etcd_prefix=self.prefix,
                                host_id=self.host_id, bridge=self.bridge, datapath_type="netdev",
                                socket=self.socket, config="/dev/null", ovs_timeout=15,
                                base=dict(os.environ, XDG_RUNTIME_DIR=str(workdir)))
        self.daemon = Daemon(self.socket, self.log_path, self.env)
        self.namespaces = Namespaces("nprlbench-", hex_chars=6)
        self.links: list[str] = []
        self.bridges: list[str] = []          # only those this run made
        self.octet = 1 + secrets.randbelow(250)

    def start(self) -> None:
        if sh("ovs-vsctl", "--timeout=10", "br-exists", self.bridge, check=False).returncode != 2:
            raise RuntimeError(f"bridge {self.bridge} exists already: another run? (not touching it)")
        self.bridges.append(self.bridge)      # the daemon makes it
        self.daemon.start(within=20)

    def stop(self) -> None:
        self.daemon.stop()
        Path(self.socket).unlink(missing_ok=True)

    def call(self, method: str, body: dict) -> dict:
        status, reply = self.daemon.call(method, body, timeout=30)
        if status != 200:
            raise RuntimeError(f"{method} answered {status}: {reply}")
        return reply

    def netctl(self, *args: str) -> str:
        proc = self.daemon.netctl(*args, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"netctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def network(self, octet: int | None = None, profile: str = "") -> tuple[str, str]:
        subnet = f"10.209.{octet or self.octet}.0/24"      # inside the benchmarks' 10.200-10.210
        pool = self.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": subnet, "SubPool": "",
                                                    "Options": {}, "V6": False})["PoolID"]
        gw = self.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {
            "RequestAddressType": "com.docker.network.gateway"}})["Address"]
        net = secrets.token_hex(32)
        self.call("NetworkDriver.CreateNetwork", {
            "NetworkID": net, "Options": {GENERIC: {"vlan": str(C.pick_vlan()), "name": f"nprlbench-{net[:6]}",
                                                    **({"profile": profile} if profile else {})}},
            "IPv4Data": [{"AddressSpace": "netplugin", "Pool": subnet, "Gateway": gw, "AuxAddresses": {}}],
            "IPv6Data": []})
        return net, pool

    def container(self, net: str, pool: str) -> dict:
        address = self.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})["Address"]
        ep = secrets.token_hex(32)
        self.links.append("np" + ep[:11])
        mac = self.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": net, "EndpointID": ep, "Options": {},
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}})["Interface"]["MacAddress"]
        ns = self.namespaces.new()
        src = self.call("NetworkDriver.Join", {"NetworkID": net, "EndpointID": ep, "SandboxKey": f"/var/run/netns/{ns}",
                                               "Options": {}})["InterfaceName"]["SrcName"]
        adopt(ns, src, address, mac)
        port = "np" + ep[:11]
        ofport = int(sh("ovs-vsctl", "--timeout=10", "get", "Interface", port, "ofport").stdout)
        return {"endpoint": ep, "ip": address.split("/")[0], "ns": ns, "port": port, "ofport": ofport}

    def bare_pair(self) -> tuple[str, str, str, str]:
        if sh("ovs-vsctl", "--timeout=10", "br-exists", self.bare, check=False).returncode != 2:
            raise RuntimeError(f"bridge {self.bare} exists already: another run? (not touching it)")
        sh("ovs-vsctl", "--timeout=20", "add-br", self.bare, "--", "set", "bridge", self.bare, "datapath_type=netdev")
        self.bridges.append(self.bare)
        out = []
        for i in (1, 2):
            host, peer = f"nprlbb{self.hex}{i}", f"nprlbc{self.hex}{i}"
            self.links.append(host)
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            for name in (host, peer):
                sh("ethtool", "-K", name, "tx", "off")
            sh("ip", "link", "set", host, "up")
            sh("ovs-vsctl", "--timeout=20", "add-port", self.bare, host)
            ns = self.namespaces.new()
            ip = f"10.210.{self.octet}.{i}"
            adopt(ns, peer, f"{ip}/24")
            out += [ns, ip]
        return tuple(out)

    def wait_limit(self, c: dict, want: tuple[int, int] | None, within: float = 10) -> float:
        started = time.monotonic()
        while True:
            if (meters(self.bridge).get(c["ofport"]), metered(self.bridge, c["ofport"])) == (want, want is not None):
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise RuntimeError(f"port {c['port']} did not reach limit {want} within {within} s")
            time.sleep(0.02)

    def cleanup_steps(self, cleanup: C.Cleanup) -> None:
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(self.prefix + "/"))
        cleanup.add(f"remove bridges {self.bridge}, {self.bare}", lambda: [
            sh("ovs-vsctl", "--timeout=20", "--if-exists", "del-br", b) for b in self.bridges])
        cleanup.add("remove veths", lambda: [sh("ip", "link", "del", n, check=False) for n in self.links
                                             if sh("ip", "link", "show", n, check=False).returncode == 0])
        cleanup.add("remove namespaces", self.namespaces.cleanup)
        cleanup.add("stop the daemon", self.stop)


def ping_until(ns: str, ip: str, within: float = 15) -> None:
    reach(ns, ip, within)


# -- the three measurements ---------------------------------------------------------------------

def accuracy(rig: Rig, sender: dict, receiver: dict, rates: list[int], runs: int) -> list[dict]:
    rows = []
    for rate in rates:
        # What the same path carries without a limit, just before: a shortfall below the
        # limit when this is not well above it is the machine, not the meter.
        rig.out.progress(f"accuracy: {rate} Mbit/s, the unlimited path first")
        capacity = iperf(receiver["ns"], receiver["ip"], sender["ns"], seconds=3, omit=1).mbit
        name = f"acc{rate}"
        rig.netctl("profile", "create", name, "--rate", f"{rate}mbit")
        rig.netctl("endpoint", "set", sender["endpoint"][:12], "--profile", name)
        rig.wait_limit(sender, (rate * 1000, max(12, rate * 250)))
        for proto in ("udp", "tcp"):
            got, offered = [], []
            for i in range(runs):
                rig.out.progress(f"accuracy: {rate} Mbit/s {proto} run {i + 1}/{runs}")
                res = iperf(receiver["ns"], receiver["ip"], sender["ns"], seconds=5, omit=2,
                            udp_mbit=2 * rate if proto == "udp" else None)
                got.append(res.mbit)
                offered.append(res.sent_mbit)
            med = statistics.median(got)
            rows.append({"rate_mbit": rate, "burst_kbit": max(12, rate * 250), "proto": proto, "runs": len(got),
                         "median_mbit": C.rnd(med, 2), "min_mbit": C.rnd(min(got), 2), "max_mbit": C.rnd(max(got), 2),
                         "error_pct": C.rnd(100 * (med - rate) / rate, 1),
                         "within_15pct": abs(med - rate) <= TOLERANCE * rate,
                         "offered_mbit": C.rnd(statistics.median(offered), 1) if proto == "udp" else None,
                         "unlimited_tcp_mbit": C.rnd(capacity, 1),
                         "all_mbit": [C.rnd(g, 2) for g in got]})
        rig.netctl("endpoint", "set", sender["endpoint"][:12], "--clear")
        rig.netctl("profile", "rm", name)
        rig.wait_limit(sender, None)
    return rows


def live_change(rig: Rig, sender: dict, receiver: dict, changes: int, step: float = 0.25) -> list[dict]:
    out = []
    for i in range(changes):
        name = f"live{i}"
        rig.netctl("profile", "create", name, "--rate", "50mbit")
        rig.netctl("endpoint", "set", sender["endpoint"][:12], "--profile", name)
        rig.wait_limit(sender, (50_000, 12_500))
        marks: dict = {}

        def change(launched: float) -> None:
            time.sleep(3.0)
            t0 = time.monotonic()
            marks["asked"] = t0 - launched
            try:
                rig.netctl("profile", "set", name, "--rate", "10mbit")
            except RuntimeError as exc:
                marks["error"] = str(exc)
                return
            t1 = time.monotonic()
            marks["done"] = t1 - launched
            while time.monotonic() - t1 < 10:
                if meters(rig.bridge).get(sender["ofport"]) == (10_000, 2_500):
                    marks["meter"] = time.monotonic() - launched
                    return
                time.sleep(0.01)

        rig.out.progress(f"live change {i + 1}/{changes}")
        res = iperf(receiver["ns"], receiver["ip"], sender["ns"], seconds=8, omit=0, udp_mbit=100, interval=step,
                    during=change)
        if "error" in marks:
            raise RuntimeError(marks["error"])
        whole = [iv for iv in res.intervals if iv[1] - iv[0] >= 0.8 * step]
        # The first receiver interval after netctl started that is at the new rate (+15 %): its
        # start is when the new limit held, to one interval (an interval the change fell inside
        # is far above 11.5 Mbit/s, so the one found starts at or after the change).
        settled = next((a for a, _, m in whole if a >= marks["asked"] and m <= 10 * (1 + TOLERANCE)), None)
        after = [m for a, _, m in whole if a >= marks["done"] + 2.0]
        before = [m for a, b, m in whole if a >= 1.0 and b <= marks["asked"]]
        out.append({"netctl_s": C.rnd(marks["done"] - marks["asked"], 3),
                    "meter_after_netctl_s": C.rnd(marks["meter"] - marks["done"], 3) if "meter" in marks else None,
                    # what the 2 s count: from before netctl started
                    "meter_after_start_s": C.rnd(marks["meter"] - marks["asked"], 3) if "meter" in marks else None,
                    "traffic_after_start_s": C.rnd(settled - marks["asked"], 2) if settled is not None else None,
                    "traffic_after_netctl_s": C.rnd(settled - marks["done"], 2) if settled is not None else None,
                    "before_mbit": C.rnd(statistics.median(before), 1) if before else None,
                    "after_2s_mbit": C.rnd(statistics.mean(after), 2) if after else None,
                    "after_2s_max_mbit": C.rnd(max(after), 2) if after else None})
        rig.netctl("endpoint", "set", sender["endpoint"][:12], "--clear")
        rig.netctl("profile", "rm", name)
        rig.wait_limit(sender, None)
    return out


def overhead(rig: Rig, free: dict, receiver: dict, pairs: int) -> dict:
    b1, ip1, b2, ip2 = rig.bare_pair()
    ping_until(b1, ip2)
    ours, bare = [], []
    for i in range(pairs):
        rig.out.progress(f"overhead pair {i + 1}/{pairs}")
        runs = [lambda: ours.append(iperf(receiver["ns"], receiver["ip"], free["ns"], seconds=3, omit=1).mbit),
                lambda: bare.append(iperf(b2, ip2, b1, seconds=3, omit=1).mbit)]
        for run in (runs if i % 2 == 0 else runs[::-1]):     # who goes first alternates too
            run()
    return {"pairs": pairs, "netplugin_mbit": [C.rnd(x, 1) for x in ours], "bare_mbit": [C.rnd(x, 1) for x in bare],
            "netplugin_median_mbit": C.rnd(statistics.median(ours), 1),
            "bare_median_mbit": C.rnd(statistics.median(bare), 1),
            "ratio": C.rnd(statistics.median(ours) / statistics.median(bare), 3),
            "pairwise_ratio_median": C.rnd(statistics.median(o / b for o, b in zip(ours, bare)), 3)}


def create_timing(rig: Rig, net: str, pool: str, pairs: int) -> dict:
    """CreateEndpoint of a port with a limit (its network has a profile) against
    one without, alternated, who goes first alternating too; each endpoint is
    deleted and its address released before the next."""
    name = f"rlcreate{rig.hex}"
    rig.netctl("profile", "create", name, "--rate", "50mbit")
    limited_net, limited_pool = rig.network(octet=(rig.octet % 250) + 1, profile=name)
    times: dict[str, list[float]] = {"limited": [], "unlimited": []}

    def once(kind: str) -> None:
        n, p = (limited_net, limited_pool) if kind == "limited" else (net, pool)
        address = rig.call("IpamDriver.RequestAddress", {"PoolID": p, "Address": "", "Options": {}})["Address"]
        ep = secrets.token_hex(32)
        rig.links.append("np" + ep[:11])
        started = time.perf_counter()
        rig.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": n, "EndpointID": ep, "Options": {},
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}})
        times[kind].append(time.perf_counter() - started)
        rig.call("NetworkDriver.DeleteEndpoint", {"NetworkID": n, "EndpointID": ep})
        rig.call("IpamDriver.ReleaseAddress", {"PoolID": p, "Address": address.split("/")[0]})

    for i in range(pairs):
        for kind in (("limited", "unlimited") if i % 2 else ("unlimited", "limited")):
            once(kind)
    lim, unl = statistics.median(times["limited"]), statistics.median(times["unlimited"])
    return {"pairs": pairs, "limited_ms": [C.rnd(x * 1000, 1) for x in times["limited"]],
            "unlimited_ms": [C.rnd(x * 1000, 1) for x in times["unlimited"]],
            "limited_median_ms": C.rnd(lim * 1000, 1), "unlimited_median_ms": C.rnd(unl * 1000, 1),
            "limited_p90_ms": C.rnd(C.pct(times["limited"], 90) * 1000, 1),
            "unlimited_p90_ms": C.rnd(C.pct(times["unlimited"], 90) * 1000, 1),
            "ratio": C.rnd(lim / unl, 2)}


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--rates", default="10,50,200", help="Mbit/s, comma-separated (default 10,50,200)")
    p.add_argument("--runs", type=int, default=3, help="iperf3 runs per rate and protocol (default 3)")
    p.add_argument("--changes", type=int, default=5, help="live changes 50 -> 10 Mbit/s (default 5)")
    p.add_argument("--pairs", type=int, default=7, help="alternated overhead run pairs (default 7)")
    p.add_argument("--creates", type=int, default=20, help="alternated CreateEndpoint pairs (default 20)")
    p.add_argument("--only", default="accuracy,live,overhead,create",
                   help="which parts, comma-separated (default accuracy,live,overhead,create)")
    return C.parse(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    workdir = Path(tempfile.mkdtemp(prefix="nprlbench-"))
    rig = Rig(workdir, out)
    result: dict = {"benchmark": "ratelimit", "machine": C.machine(),
                    "command": " ".join([Path(sys.executable).name] + sys.argv),
                    "settings": {"rates": args.rates, "runs": args.runs, "changes": args.changes,
                                 "pairs": args.pairs, "bridge": rig.bridge, "socket": rig.socket,
                                 "etcd_prefix": rig.prefix}}
    finished = False
    with C.Cleanup(out) as cleanup:
        rig.cleanup_steps(cleanup)
        out.progress(f"starting the daemon (log {rig.log_path})")
        rig.start()
        net, pool = rig.network()
        sender, receiver, free = (rig.container(net, pool) for _ in range(3))
        for c in (sender, free):
            ping_until(c["ns"], receiver["ip"])
        parts = {x.strip() for x in args.only.split(",")}
        result["load_at"] = {}
        if "accuracy" in parts:
            result["load_at"]["accuracy"] = C._loadavg()
            result["accuracy"] = accuracy(rig, sender, receiver, [int(x) for x in args.rates.split(",")], args.runs)
        if "live" in parts:
            result["load_at"]["live_change"] = C._loadavg()
            result["live_change"] = live_change(rig, sender, receiver, args.changes)
        if "overhead" in parts:
            result["load_at"]["overhead"] = C._loadavg()
            result["overhead"] = overhead(rig, free, receiver, args.pairs)
        if "create" in parts:
            result["load_at"]["create"] = C._loadavg()
            result["create"] = create_timing(rig, net, pool, args.creates)
        result["machine"]["loadavg_end"] = C._loadavg()
        finished = True
    result["cleanup_failures"] = cleanup.failures
    if finished and not cleanup.failures:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    report(out, result)
    out.result(result)
    return 0 if finished and not cleanup.failures else 1


def report(out: C.Out, r: dict) -> None:
    out.say(f"Rate limits  ({C.machine_line(r['machine'])}, load at end {r['machine'].get('loadavg_end')})")
    out.say(f"load average when each part started: {r.get('load_at')}")
    if "accuracy" in r:
        report_accuracy(out, r)
    if "live_change" in r:
        report_live(out, r)
    if "overhead" in r:
        report_overhead(out, r)
    if "create" in r:
        c = r["create"]
        out.say(f"CreateEndpoint, {c['pairs']} alternated pairs: with a limit median {c['limited_median_ms']} ms "
                f"(p90 {c['limited_p90_ms']}), without {c['unlimited_median_ms']} ms (p90 {c['unlimited_p90_ms']}): "
                f"ratio {c['ratio']}")


def report_accuracy(out: C.Out, r: dict) -> None:
    out.say("accuracy (receiver side; burst = 250 ms of the rate; UDP offered at 2x the rate):")
    out.say(C.table(["rate Mbit/s", "proto", "runs", "median", "min", "max", "error %", "within 15%", "offered",
                     "unlimited TCP"],
                    [[a["rate_mbit"], a["proto"], a["runs"], a["median_mbit"], a["min_mbit"], a["max_mbit"],
                      a["error_pct"], "yes" if a["within_15pct"] else "NO", a["offered_mbit"],
                      a["unlimited_tcp_mbit"]] for a in r["accuracy"]]))
    out.say("")


def report_live(out: C.Out, r: dict) -> None:
    lc = r["live_change"]
    out.say("live change 50 -> 10 Mbit/s (seconds; UDP offered at 100 Mbit/s, 0.25 s receiver intervals):")
    out.say(C.table(["#", "netctl", "meter after netctl", "traffic after netctl", "meter after start",
                     "traffic after start", "before Mbit/s", "2 s on: mean", "2 s on: max"],
                    [[i + 1, x["netctl_s"], x["meter_after_netctl_s"], x["traffic_after_netctl_s"],
                      x.get("meter_after_start_s"), x.get("traffic_after_start_s"), x["before_mbit"],
                      x["after_2s_mbit"], x["after_2s_max_mbit"]] for i, x in enumerate(lc)]))
    meter = [x["meter_after_netctl_s"] for x in lc if x["meter_after_netctl_s"] is not None]
    traffic = [x["traffic_after_netctl_s"] for x in lc if x["traffic_after_netctl_s"] is not None]
    if meter:
        out.say(f"median: netctl {statistics.median(x['netctl_s'] for x in lc):.2f} s, meter {statistics.median(meter):.3f} s"
                f" (max {max(meter):.3f}), traffic {statistics.median(traffic) if traffic else float('nan'):.2f} s"
                f" (max {max(traffic) if traffic else float('nan'):.2f}) after netctl returned")
    out.say("")


def report_overhead(out: C.Out, r: dict) -> None:
    o = r["overhead"]
    out.say(f"overhead: TCP, endpoint without a limit {o['netplugin_mbit']} vs bare NORMAL bridge {o['bare_mbit']} "
            f"Mbit/s")
    out.say(f"medians {o['netplugin_median_mbit']} vs {o['bare_median_mbit']}: ratio {o['ratio']} "
            f"(median of pairwise ratios {o['pairwise_ratio_median']})")


if __name__ == "__main__":
    C.exit_with(main)
