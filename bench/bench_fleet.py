"""Fleet simulation: N simulated hosts, each running the product's host-side
code (view of etcd by list and watch, heartbeat, ARP proxy, limit sync, IPAM)
over an in-memory switch, against a 3-member etcd cluster this benchmark
starts on 127.0.0.1.

Per size (``--hosts 10,100,1000``, ``--endpoints 50`` per host, one network per
10 hosts, each host bound to 1 or 2): etcd bytes sent and received per host
per second, idle and under churn (``--churn`` endpoint create+release per
second, cluster-wide); a new endpoint's convergence to every host bound to
its network (its ARP answer in that host's flows) and a profile rate change's
convergence to every limited endpoint's meter, p50/p99/max; the cold start of
one host joining the full cluster; the simulating process's RSS per host;
etcd's CPU, RSS, database size and watchers; the allocation rate of every host
allocating from one pool at once, with duplicates counted.

The simulation core is tests/harness/fleet.py (the integration ring's small
simulation uses it too). The hosts of a size are split over worker
processes (one per 125 hosts by default), sharing one etcd client per 25
hosts. Figures only: nothing passes
or fails on time.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
from pathlib import Path

import _common as c

from tests.harness import fleet as F
from tests.harness.etcd import Cluster


def measure_window(urls: list[str], pids: list[int], seconds: float, hosts: int, sims: list[int]) -> dict:
    """etcd's traffic and CPU over a window, and the simulating processes' CPU per host."""
    before, cpu0, t0 = F.cluster_metrics(urls), sum(F.proc_cpu(p) for p in pids), time.monotonic()
    sim0 = sum(F.proc_cpu(p) for p in sims)
    time.sleep(seconds)
    after, cpu1, t1 = F.cluster_metrics(urls), sum(F.proc_cpu(p) for p in pids), time.monotonic()
    sim1 = sum(F.proc_cpu(p) for p in sims)
    span = t1 - t0
    sent = after["etcd_network_client_grpc_sent_bytes_total"] - before["etcd_network_client_grpc_sent_bytes_total"]
    recv = (after["etcd_network_client_grpc_received_bytes_total"]
            - before["etcd_network_client_grpc_received_bytes_total"])
    return {"seconds": round(span, 1), "sent_per_host_Bps": sent / span / hosts,
            "recv_per_host_Bps": recv / span / hosts,
            "sent_total_Bps": sent / span, "etcd_cpu_pct": (cpu1 - cpu0) / span * 100,
            "sim_cpu_pct_per_host": (sim1 - sim0) / span * 100 / hosts}


def churn(fleet: F.Fleet, rate: float, stop: threading.Event, done: list) -> None:
    """Cluster-wide, ``rate`` times a second: a new endpoint on a random host and the release of an old one."""
    rnd = random.Random(7)
    nxt = time.monotonic()
    while not stop.is_set():
        part = rnd.choice(fleet.parts)
        try:
            part.send("churn_one", rnd.randrange(1 << 30))
            part.recv()
            done.append(1)
        except Exception as exc:  # noqa: BLE001  counted and shown, the churn goes on
            done.append(exc)
        nxt += 1 / rate
        stop.wait(max(0.0, nxt - time.monotonic()))


def one_size(n: int, args, out: c.Out, tmp: Path) -> dict:
    cluster = Cluster(tmp / f"etcd-{n}", 3)
    cluster.start()
    urls = [m.client for m in cluster.members]
    pids = [m.proc.pid for m in cluster.members if m.proc is not None]
    workers = args.workers if args.workers >= 0 else max(1, n // 125)
    fleet = F.Fleet(cluster.endpoints, hosts=n, per_host=args.endpoints, hosts_per_net=args.hosts_per_net,
                    group=args.group, workers=workers)
    res: dict = {"hosts": n, "endpoints": n * args.endpoints, "workers": workers}
    try:
        t0 = time.monotonic()
        fleet.build()
        res["load_s"] = time.monotonic() - t0
        res["networks"] = len(fleet.nets)
        out.say(f"{n} hosts: {n * args.endpoints} endpoints loaded in {res['load_s']:.1f} s; starting the hosts")
        t0 = time.monotonic()
        fleet.start(args.start_rate)
        res["ready"] = fleet.ready(args.ready_timeout)
        res["start_all_s"] = time.monotonic() - t0
        time.sleep(2)
        usage = fleet.all("usage")
        res["rss_per_host_kib"] = sum(u["rss_delta"] for u in usage) / n / 1024
        res["threads"] = sum(u["threads"] for u in usage)
        out.say(f"{n} hosts in {workers or 1} process(es): loaded in {res['load_s']:.1f} s, all ready={res['ready']} "
                f"in {res['start_all_s']:.1f} s, {res['threads']} threads")
        res["idle"] = measure_window(urls, pids, args.idle, n, fleet.pids())
        out.say("idle: " + json.dumps(res["idle"], default=str))
        res["foreign_endpoints_held"] = fleet.foreign()
        changes = []
        pairs = []
        missed = 0
        rnd = random.Random(3)
        for _ in range(args.changes):
            host_id, nets = rnd.choice(fleet.layout)
            net_id = rnd.choice(nets)
            _, got = F.convergence(fleet, host_id, net_id, timeout=args.change_timeout)
            fleet.per_net[net_id] += 1
            missed += sum(1 for v in got.values() if v is None)
            seen = [v for v in got.values() if v is not None]
            pairs += seen
            if seen and len(seen) == len(got):
                changes.append(max(seen))
            time.sleep(0.2)
        res["arp_change"] = {"changes": args.changes, "hosts_reached": len(pairs), "missed": missed,
                             "all_p50": c.pct(changes, 50), "all_p99": c.pct(changes, 99),
                             "all_max": max(changes) if changes else None,
                             "host_p50": c.pct(pairs, 50), "host_p99": c.pct(pairs, 99)}
        out.say("arp_change: " + json.dumps(res["arp_change"], default=str))
        prof = F.profile_convergence(fleet, 20_000, timeout=args.change_timeout)
        pv = [v for v in prof.values() if v is not None]
        res["profile_change"] = {"meters": len(prof), "missed": len(prof) - len(pv), "p50": c.pct(pv, 50),
                                 "p99": c.pct(pv, 99), "max": max(pv) if pv else None}
        out.say("profile_change: " + json.dumps(res["profile_change"], default=str))
        stop, done = threading.Event(), []
        worker = threading.Thread(target=churn, args=(fleet, args.churn, stop, done), daemon=True)
        worker.start()
        res["churn"] = measure_window(urls, pids, args.churn_window, n, fleet.pids())
        out.say("churn: " + json.dumps(res["churn"], default=str))
        stop.set()
        worker.join(30)
        res["churn"]["done"] = sum(1 for d in done if d == 1)
        res["churn"]["errors"] = [str(d) for d in done if d != 1][:3]
        # cold start: one more host, in this process, bound to the first network, one endpoint of its own
        assert fleet.store is not None
        join = F.SimHost("sim-join", fleet.store, fleet.prefix)
        join.bind(fleet.nets[0])
        join.new_endpoint(fleet.nets[0])
        time.sleep(1.0)                  # the churn's last releases settle before counting what is wanted
        want = len(fleet.store.list_network_endpoints(fleet.nets[0].id))
        t0 = time.monotonic()
        join.start()
        view_s = None
        while time.monotonic() - t0 < 60 and join.answers() < want:
            if view_s is None and join.parts.view.ready():
                view_s = time.monotonic() - t0
            time.sleep(0.005)
        if view_s is None and join.parts.view.ready():
            view_s = time.monotonic() - t0           # ready by the time every answer was in
        res["cold_start"] = {"view_ready_s": view_s, "answers_s": time.monotonic() - t0, "answers": join.answers(),
                             "wanted": want}
        out.say("cold_start: " + json.dumps(res["cold_start"], default=str))
        join.close()
        res["alloc"] = F.allocate_together(fleet, args.alloc_per_host, callers=args.alloc_callers)
        out.say("alloc: " + json.dumps(res["alloc"], default=str))
        res["foreign_endpoints_held_end"] = fleet.foreign()
        m = F.cluster_metrics(urls)
        res["etcd"] = {"db_bytes_per_member": m["etcd_mvcc_db_total_size_in_bytes"] / len(urls),
                       "watchers": m["etcd_debugging_mvcc_watcher_total"],
                       "watch_streams": m["etcd_debugging_mvcc_watch_stream_total"],
                       "rss_mib": [F.proc_rss(p) / 2**20 for p in pids]}
        return res
    except Exception as exc:  # noqa: BLE001  a size that breaks is recorded, the next one still runs
        res["broke"] = f"{type(exc).__name__}: {exc}"
        return res
    finally:
        fleet.close()
        cluster.stop()


def main() -> int:
    p = c.parser(__doc__)
    p.add_argument("--hosts", default="10,100", help="sizes, comma-separated (default 10,100; the target is 1000)")
    p.add_argument("--endpoints", type=int, default=50, help="endpoints per host (default 50)")
    p.add_argument("--hosts-per-net", type=int, default=10)
    p.add_argument("--group", type=int, default=25, help="hosts sharing one etcd client (default 25)")
    p.add_argument("--start-rate", type=float, default=0.0,
                   help="hosts started per second, fleet-wide (default 0: all at once)")
    p.add_argument("--workers", type=int, default=-1,
                   help="worker processes the hosts are split over (default: one per 125 hosts; 0: this process)")
    p.add_argument("--idle", type=float, default=60.0, help="idle window, seconds (default 60)")
    p.add_argument("--churn", type=float, default=5.0, help="endpoint create+release per second (default 5)")
    p.add_argument("--churn-window", type=float, default=30.0)
    p.add_argument("--changes", type=int, default=30, help="new endpoints timed to every interested host")
    p.add_argument("--change-timeout", type=float, default=15.0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--alloc-per-host", type=int, default=5)
    p.add_argument("--alloc-callers", type=int, default=32,
                   help="hosts of a worker process allocating at the same moment (default 32; 0: all of them, "
                        "a thread each, which at 1,000 hosts is the machine's collapse, not etcd's or the IPAM's)")
    args = c.parse(p)
    out = c.Out(args.json)
    m = c.machine()
    out.say(c.machine_line(m))
    results = []
    with tempfile.TemporaryDirectory(prefix="npfleet-") as tmp:
        for n in [int(x) for x in args.hosts.split(",")]:
            res = one_size(n, args, out, Path(tmp))
            results.append(res)
            out.say(json.dumps(res, default=lambda v: round(v, 4) if isinstance(v, float) else str(v), indent=1))
    rows = []
    for r in results:
        rows.append([r["hosts"], r["endpoints"], r.get("idle", {}).get("sent_per_host_Bps"),
                     r.get("churn", {}).get("sent_per_host_Bps"), r.get("arp_change", {}).get("all_p50"),
                     r.get("arp_change", {}).get("all_p99"), r.get("arp_change", {}).get("all_max"),
                     r.get("profile_change", {}).get("p99"), r.get("cold_start", {}).get("answers_s"),
                     r.get("rss_per_host_kib"), r.get("alloc", {}).get("per_second"),
                     r.get("alloc", {}).get("duplicates"), r.get("broke", "")])
    out.say(c.table(["hosts", "eps", "idle B/s/host", "churn B/s/host", "arp p50", "arp p99", "arp max",
                     "rate p99", "join s", "KiB/host", "alloc/s", "dups", "broke"], rows))
    out.result({"machine": m, "results": results})
    return 0


if __name__ == "__main__":
    c.exit_with(main)
