#!/usr/bin/env python3
"""Multi-host endpoint creation: two daemons creating endpoints at the same
moment from one global pool, against one daemon alone, in the same run.

The two "hosts" are those of scripts/rig.sh (docs/multihost.md): daemons
rig-a and rig-b, each with its own OVS bridge (netdev), joined by a VLAN
trunk, sharing one etcd and one prefix (/netplugin/rig-bench-<random>). One
global network (a /22, VLAN 3950) is bound on both daemons as Docker binds it
on every host. An "endpoint creation" is what Docker sends for one container
before Join: IpamDriver.RequestAddress + NetworkDriver.CreateEndpoint (the
veth pair, the OVS access port, the flows, the etcd records). Callers are
threads with keep-alive connections, as dockerd keeps one.

Phases, measured in the same run and alternated round by round (single then
pair, then pair then single; with several ARP modes, every round measures
every mode, their order alternating too) so that drift of this noisy machine
hits all alike:

  single  daemon a alone creates COUNT endpoints (daemon b idle but running)
  pair    daemons a and b each create COUNT endpoints, at the same moment

Throughput is endpoints per second of wall time (for the pair: both daemons'
endpoints over the time until the last one is made). After each phase the
endpoints are deleted (DeleteEndpoint + ReleaseAddress, not timed) and the
pool is checked to be back to the gateway alone; in the pair phase no address
may have been given twice.

On one machine the two "hosts" share 2 cores, one ovs-vswitchd and one etcd:
the ratio pair/single says how much the second daemon's work adds when
nothing but the shared etcd pool is shared in production; here the CPU is
shared too, so a ratio near 1 means "the pool does not serialize them, the
CPU does". See docs/benchmarks.md.

    sudo /tmp/venv/bin/python bench/bench_multihost.py [--count 150] [--callers 8] [--rounds 3]
                                                      [--arp-modes proxy,flood] [--json]

The rig is one per machine: this takes its lock (/run/lock/netplugin-rig.lock),
waits while the multi-host tests hold it, starts the rig with its own prefix
and stops it at the end (--keep-rig leaves it up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from tests.harness import rig
from tests.harness.daemon import settings_env

RIG = rig.RIG
SUBNET = "10.211.0.0/22"        # 1,021 usable: a pair phase of 2 x 150 fills 29%
VLAN = 3950
NAME = "npbench-mh"


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--count", type=int, default=150, help="endpoints per daemon per phase (default 150)")
    p.add_argument("--callers", type=int, default=8, help="concurrent callers per daemon (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (single, pair), order alternating (default 3)")
    p.add_argument("--arp-modes", default="proxy",
                   help="comma-separated cluster ARP modes to measure in turn: proxy, flood (default proxy)")
    p.add_argument("--keep-rig", action="store_true", help="leave the rig running at the end")
    args = C.parse(p, argv)
    args.arp_modes = [m.strip() for m in args.arp_modes.split(",") if m.strip()]
    if not set(args.arp_modes) <= {"proxy", "flood"} or not args.arp_modes:
        p.error("--arp-modes takes proxy and/or flood")
    if args.count < 1 or args.callers < 1 or args.rounds < 1:
        p.error("--count, --callers and --rounds must be at least 1")
    if 2 * args.count > 1000:
        p.error("--count at most 500 (the /22 holds 1,021)")
    return args


# -- the rig ----------------------------------------------------------------------------------

def netctl(prefix: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "netplugin.cli.main", *args], check=False, capture_output=True,
                          env=settings_env(etcd_endpoints=C.ETCD, etcd_prefix=prefix), text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"netctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


class HostNet:
    """The global network bound on one daemon, as Docker on that host binds it."""

    def __init__(self, name: str, sock: str, log: str):
        self.name = name
        self.sock = sock
        self.log = Path(log)
        self.client = C.Client(sock)
        self.docker_id = C.hex64()
        self.pool_id = ""
        self.gateway = ""

    def create(self) -> None:
        self.pool_id = self.client.ok("IpamDriver.RequestPool", {
            "AddressSpace": C.ADDRESS_SPACE, "Pool": SUBNET, "SubPool": "", "Options": {}, "V6": False})["PoolID"]
        self.gateway = self.client.ok("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})["Address"]
        self.client.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": self.docker_id,
            "Options": {"com.docker.network.generic": {"vlan": str(VLAN), "name": NAME}},
            "IPv4Data": [{"AddressSpace": C.ADDRESS_SPACE, "Pool": SUBNET, "Gateway": self.gateway,
                          "AuxAddresses": {}}], "IPv6Data": []})

    def delete(self) -> None:
        self.client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": self.docker_id})
        self.client.ok("IpamDriver.ReleaseAddress", {"PoolID": self.pool_id, "Address": self.gateway.split("/")[0]})
        self.client.ok("IpamDriver.ReleasePool", {"PoolID": self.pool_id})


STOP = threading.Event()


def create_many(net: HostNet, count: int, callers: int, start: threading.Barrier,
                made: list[tuple[str, str]], lat: list[float]) -> float:
    """count creations over `callers` threads; returns the seconds from the barrier to the last one."""
    per = [count // callers + (1 if i < count % callers else 0) for i in range(callers)]
    lock = threading.Lock()
    t0 = [0.0]

    def worker(n: int) -> None:
        client = C.Client(net.sock)
        try:
            start.wait(60)
            if not t0[0]:
                t0[0] = time.perf_counter()
            for _ in range(n):
                if STOP.is_set():
                    return
                ep = C.hex64()
                s = time.perf_counter()
                addr = client.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "",
                                                               "Options": {}})["Address"]
                with lock:
                    made.append((ep, addr.split("/")[0]))          # to delete even if the next call fails
                client.ok("NetworkDriver.CreateEndpoint", {
                    "NetworkID": net.docker_id, "EndpointID": ep, "Options": {},
                    "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
                with lock:
                    lat.append(time.perf_counter() - s)
        finally:
            client.close()

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(worker, n) for n in per]
        for f in futures:
            f.result()
    return time.perf_counter() - t0[0]


def delete_many(net: HostNet, made: list[tuple[str, str]], callers: int) -> None:
    def one(item):
        ep, ip = item
        client = local.__dict__.setdefault("c", C.Client(net.sock))
        status, reply = client.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net.docker_id, "EndpointID": ep})
        if status not in (200, 404):
            raise RuntimeError(f"DeleteEndpoint answered {status}: {reply}")
        client.ok("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": ip})
    local = threading.local()
    with ThreadPoolExecutor(callers) as pool:
        for f in [pool.submit(one, item) for item in made]:
            f.result()
    made.clear()


def run_phase(kind: str, nets: list[HostNet], count: int, callers: int, out: C.Out,
              pending: dict[str, list], quiet: bool = False, label: str = "") -> dict:
    workers = nets[:1] if kind == "single" else nets
    barrier = threading.Barrier(len(workers) * callers)
    mades = [pending[n.name] for n in workers]
    lats: list[list[float]] = [[] for _ in workers]
    walls: list[float] = [0.0] * len(workers)

    def go(i: int) -> None:
        walls[i] = create_many(workers[i], count, callers, barrier, mades[i], lats[i])

    marks = [C.log_size(n.log) for n in workers]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(len(m) for m in mades)
    wall = max(walls)
    ips = [ip for m in mades for _, ip in m]
    dupes = len(ips) - len(set(ips))
    if dupes:
        raise RuntimeError(f"{dupes} address(es) given twice in the {kind} phase")
    if total != count * len(workers):
        raise RuntimeError(f"{kind}: {total} endpoints made, expected {count * len(workers)}")
    row = {"phase": kind, "daemons": len(workers), "endpoints": total, "wall_s": C.rnd(wall),
           "per_s": C.rnd(total / wall, 1),
           "per_daemon_per_s": [C.rnd(len(m) / w, 1) for m, w in zip(mades, walls)],
           "p50_ms": C.rnd(C.pct([x for lat in lats for x in lat], 50) * 1000, 1),
           "p95_ms": C.rnd(C.pct([x for lat in lats for x in lat], 95) * 1000, 1)}
    # Server-side time of each call, from the daemons' logs (one line per call).
    calls = [c for n, m in zip(workers, marks) for c in C.parse_calls(C.read_from(n.log, m))]
    for method, key in (("IpamDriver.RequestAddress", "server_request_address_ms"),
                        ("NetworkDriver.CreateEndpoint", "server_create_endpoint_ms")):
        ms = [c["ms"] for c in calls if c["method"] == method and c["status"] == 200]
        row[key] = {"p50": C.rnd(C.pct(ms, 50), 1), "p95": C.rnd(C.pct(ms, 95), 1)}
    if not quiet:
        out.progress(f"  {label} {kind}: {total} endpoints in {wall:.1f} s = {row['per_s']}/s "
                     f"(p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms)")
    t0 = time.perf_counter()
    dels = [threading.Thread(target=delete_many, args=(n, m, callers)) for n, m in zip(workers, mades)]
    for t in dels:
        t.start()
    for t in dels:
        t.join()
    row["teardown_s"] = C.rnd(time.perf_counter() - t0)
    return row


def lock_rig(out: C.Out, timeout: float = 900):
    try:
        return rig.lock(timeout, lambda: out.progress(
            f"waiting for the rig ({rig.LOCK} is held: multi-host tests running?)"))
    except TimeoutError:
        raise RuntimeError(f"the rig stayed busy for {timeout:.0f} s") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    if os.geteuid() != 0:
        out.say("bench_multihost: must run as root")
        return 1
    machine = C.machine()
    prefix = "/netplugin/rig-bench-" + C.tag()
    results: dict = {"benchmark": "multihost_endpoint_creation", "machine": machine,
                     "settings": {"count": args.count, "callers": args.callers, "rounds": args.rounds,
                                  "arp_modes": args.arp_modes, "subnet": SUBNET, "prefix": prefix},
                     "modes": {}}
    finished = False
    lock = None
    with C.Cleanup(out) as cleanup:
        try:
            lock = lock_rig(out)
            cleanup.add("release the rig lock", lock.close)
            out.progress(f"starting the rig (prefix {prefix})")
            C.run("bash", str(RIG), "start", "--python", sys.executable, "--etcd-endpoints", C.ETCD,
                  "--etcd-prefix", prefix, timeout=300)
            if not args.keep_rig:
                cleanup.add("stop the rig", lambda: C.run("bash", str(RIG), "stop", timeout=300))
            env = rig.rig_env()
            nets = [HostNet("a", env["RIG_A_SOCKET"], env["RIG_A_LOG"]),
                    HostNet("b", env["RIG_B_SOCKET"], env["RIG_B_LOG"])]
            for n in nets:
                n.create()
                cleanup.add(f"delete the network on host {n.name}", n.delete)
            pending: dict[str, list] = {"a": [], "b": []}
            cleanup.add("delete endpoints left by a failed phase",
                        lambda: [delete_many(n, pending[n.name], args.callers) for n in nets])
            # Untimed warm-up: first OVSDB/OpenFlow use, Python imports, etcd connections.
            run_phase("pair", nets, 2 * args.callers, args.callers, out, pending, quiet=True)
            out.progress(f"{args.rounds} round(s) of {args.count} endpoints per daemon, {args.callers} callers "
                         f"each, ARP mode(s) {', '.join(args.arp_modes)}")
            rows: dict[str, list] = {m: [] for m in args.arp_modes}
            # Every round measures every mode, and the order of modes and of phases
            # alternates from round to round: drift of the machine's load hits all alike.
            for r in range(args.rounds):
                modes = args.arp_modes if r % 2 == 0 else args.arp_modes[::-1]
                for mode in modes:
                    netctl(prefix, "global", "set", "--arp-mode", mode)
                    time.sleep(1.0)                   # the daemons follow the setting through etcd
                    order = ("single", "pair") if r % 2 == 0 else ("pair", "single")
                    for kind in order:
                        row = run_phase(kind, nets, args.count, args.callers, out, pending, label=mode)
                        row["round"] = r + 1
                        rows[mode].append(row)
                        used = json.loads(netctl(prefix, "ipam", "show", NAME, "--json"))["used"]
                        if used != 1:
                            raise RuntimeError(f"after the {kind} phase the pool holds {used} addresses, not 1")
            for mode, mrows in rows.items():
                single = [x["per_s"] for x in mrows if x["phase"] == "single"]
                pair = [x["per_s"] for x in mrows if x["phase"] == "pair"]
                summary = {"single_per_s": C.rnd(C.median(single), 1), "pair_per_s": C.rnd(C.median(pair), 1),
                           "ratio": C.rnd(C.median(pair) / C.median(single), 2)}
                results["modes"][mode] = {"rows": mrows, "summary": summary}
            results["machine"]["loadavg_end"] = C._loadavg()
            finished = True
        except KeyboardInterrupt:
            STOP.set()
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then cleaned up
            STOP.set()
            out.progress(f"FAILED: {exc}")
    report(out, results)
    out.result(results)
    return 0 if finished and not cleanup.failures else 1


def report(out: C.Out, r: dict) -> None:
    out.say(C.machine_line(r["machine"]) + f"  load at the end={r['machine'].get('loadavg_end', '?')}")
    s = r["settings"]
    out.say(f"endpoint creation (RequestAddress + CreateEndpoint), {s['count']} per daemon per phase, "
            f"{s['callers']} callers per daemon, {s['rounds']} round(s)")
    for mode, m in r["modes"].items():
        out.say(f"\nARP mode: {mode}")
        out.say(C.table(["round", "phase", "daemons", "endpoints", "wall s", "endpoints/s", "per daemon/s",
                         "p50 ms", "p95 ms", "srv RA p50", "srv CE p50", "srv CE p95", "teardown s"],
                        [[x["round"], x["phase"], x["daemons"], x["endpoints"], x["wall_s"], x["per_s"],
                          " / ".join(str(v) for v in x["per_daemon_per_s"]), x["p50_ms"], x["p95_ms"],
                          x["server_request_address_ms"]["p50"], x["server_create_endpoint_ms"]["p50"],
                          x["server_create_endpoint_ms"]["p95"], x["teardown_s"]] for x in m["rows"]]))
        out.say("(p50/p95 ms: one RequestAddress + CreateEndpoint as the caller saw it; srv RA / srv CE: the "
                "daemons' own time for RequestAddress / CreateEndpoint, from their logs)")
        sm = m["summary"]
        out.say(f"median: 1 daemon {sm['single_per_s']}/s, 2 daemons {sm['pair_per_s']}/s "
                f"together: ratio {sm['ratio']}")


if __name__ == "__main__":
    sys.exit(main())
