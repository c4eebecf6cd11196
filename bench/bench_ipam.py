#!/usr/bin/env python3
"""IPAM throughput: allocations per second from one /16 pool, against the raw
etcd single-key create-if-absent transaction rate measured in the same run,
the same way.

Each allocator is its own PROCESS with its own EtcdKV, Store and Ipam (as
separate daemons would be), started once and kept warm. A phase makes every
allocator in it start together, do --count operations back to back, and
report its per-operation latencies (a phase stops early after --max-seconds,
so a pathological case cannot run for hours):

  raw   EtcdKV.txn([absent(key)], [Put(key, value)]) on distinct new keys,
        value an Allocation JSON of the usual size: the etcd floor;
  ipam  Ipam.request_address(PoolID, "", gateway=False), the call behind
        IpamDriver.RequestAddress, on a network created through
        netplugin.networks (so the lookups Docker's path makes are made).

There is one /16 network (netplugin.networks.create) per fill level
(--fills, default 5% and 95%), pre-filled by writing allocation keys
directly through the store's layout (Store.k_alloc + Allocation JSON, 128
puts per transaction). --layout random spreads the pre-filled addresses
uniformly (what random allocation and churn produce); --layout packed fills
the lowest offsets first (a pool filled in order, the worst case for a
chunk scan).

For 1 and 4 allocators (--concurrency), --rounds rounds each run one raw
phase and one ipam phase per pool, their order rotating from round to
round, so the raw baseline and both fill levels see the same noise. The
figures: median rate over rounds, the median over rounds of (ipam rate /
raw rate of the same round), the median over rounds of (rate at the high
fill / rate at the low fill), and p50/p99 latency over all operations. Each
allocator also counts its etcd round trips by kind and the time spent in
them, and its CPU time; etcd's CPU time is read from /proc over each phase.

After each ipam phase the allocators release what they got
(Ipam.release_address, timed separately) and the pool is checked to be back
at its fill and free of duplicates. Everything is deleted at the end.

    sudo /tmp/venv/bin/python bench/bench_ipam.py [--count 400] [--rounds 3] [--json]
"""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MAX_TXN_OPS = 128      # etcd's default --max-txn-ops


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--count", type=int, default=400, help="operations per allocator per phase (default 400)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds (raw + ipam on each pool) per concurrency level (default 3)")
    p.add_argument("--concurrency", default="1,4", help="comma-separated allocator counts (default 1,4)")
    p.add_argument("--fills", default="5,95",
                   help="comma-separated pool fill percentages, one pool each, low to high (default 5,95)")
    p.add_argument("--prefixlen", type=int, default=16, help="pool size (default /16)")
    p.add_argument("--layout", choices=["random", "packed"], default="random",
                   help="where the pre-filled addresses sit (default random)")
    p.add_argument("--max-seconds", type=float, default=30,
                   help="an allocator stops a phase early after this long (default 30; the rate counts what it did)")
    p.add_argument("--warmup", type=int, default=5, help="untimed operations per allocator per phase (default 5)")
    return C.parse(p, argv)


# -- a KV that counts what it is asked ------------------------------------------------

class CountingKV:
    """Wraps a KV; counts round trips by kind (and refused transactions) and
    adds up the time spent in each kind."""

    def __init__(self, kv):
        self.kv = kv
        self.counts: Counter = Counter()
        self.secs: Counter = Counter()

    def _timed(self, kind, fn, *a, **kw):
        t0 = time.monotonic()
        try:
            return fn(*a, **kw)
        finally:
            self.counts[kind] += 1
            self.secs[kind] += time.monotonic() - t0

    def get(self, key):
        return self._timed("get", self.kv.get, key)

    def get_prefix(self, prefix, keys_only=False):
        return self._timed("range", self.kv.get_prefix, prefix, keys_only=keys_only)

    def count_prefix(self, prefix):
        return self._timed("count", self.kv.count_prefix, prefix)

    def txn(self, compares, success):
        ok = self._timed("txn", self.kv.txn, compares, success)
        if not ok:
            self.counts["txn_refused"] += 1
        return ok

    def clear(self):
        self.counts.clear()
        self.secs.clear()

    def __getattr__(self, name):
        return getattr(self.kv, name)


def etcd_pid() -> int | None:
    """The etcd serving 127.0.0.1:2379, for its CPU time."""
    import re
    out = C.run("ss", "-Hltnp", "sport = :2379", check=False).stdout
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


def cpu_secs(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# -- the allocator processes ----------------------------------------------------------------

def worker_main(idx: int, conf: dict, jobs, results) -> None:
    """One allocator: its own EtcdKV/Store/Ipam, kept across phases."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent cleans up
    from netplugin.ipam import Ipam
    from netplugin.kv import EtcdKV, Put, absent
    from netplugin.model import Allocation
    from netplugin.store import Store

    kv = CountingKV(EtcdKV([C.ETCD], timeout=10.0))
    store = Store(kv, conf["prefix"])
    ipam = Ipam(store, conf["host_id"])
    value = Allocation("10.200.255.254", "endpoint", conf["host_id"], network="n-000000000000").to_json()
    results.put(("up", idx, None))
    while True:
        job = jobs.get()
        if job is None:
            break
        kind, phase, pool_id, count, warmup, max_secs = job
        try:
            if kind == "raw":
                def op(i, _p=phase):
                    key = f"{conf['prefix']}/raw/{_p}/{idx}/{i:08d}"
                    if not kv.txn([absent(key)], [Put(key, value)]):
                        raise RuntimeError(f"raw create-if-absent on new key {key} was refused")
                    return None
            else:
                def op(i, _pool=pool_id):
                    return ipam.request_address(_pool, "", False)
            got = [op(-1 - i) for i in range(warmup)]
            if kind == "ipam":
                for addr in got:
                    ipam.release_address(pool_id, addr.split("/")[0])
            results.put(("ready", idx, None))
            if jobs.get() != "go":
                break
            kv.clear()
            lat, addrs = [], []
            cpu0 = time.process_time()
            t_start = time.monotonic()
            stop_at = t_start + max_secs
            for i in range(count):
                if i and time.monotonic() > stop_at:
                    break
                t0 = time.monotonic()
                a = op(i)
                lat.append(time.monotonic() - t0)
                if a:
                    addrs.append(a)
            t_end = time.monotonic()
            cpu = time.process_time() - cpu0
            results.put(("done", idx, {"start": t_start, "end": t_end, "lat": lat, "addrs": addrs,
                                       "counts": dict(kv.counts), "secs": dict(kv.secs), "cpu": cpu}))
            if jobs.get() != "release":
                break
            rel_lat = []
            for a in addrs:
                t0 = time.monotonic()
                if not ipam.release_address(pool_id, a.split("/")[0]):
                    raise RuntimeError(f"release of {a} deleted nothing")
                rel_lat.append(time.monotonic() - t0)
            results.put(("released", idx, rel_lat))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    kv.close()


class Allocators:
    def __init__(self, n: int, conf: dict):
        ctx = mp.get_context("spawn")          # no gRPC state may cross a fork
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=worker_main, args=(i, conf, self.jobs[i], self.results), daemon=True)
                      for i in range(n)]
        for p in self.procs:
            p.start()
        self._expect("up", range(n), 60)

    def _expect(self, what: str, idxs, timeout: float) -> dict:
        want, got = set(idxs), {}
        deadline = time.monotonic() + timeout
        while want - set(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"allocators {sorted(want - set(got))} did not report {what!r} in {timeout} s")
            try:
                kind, idx, data = self.results.get(timeout=min(left, 1.0))
            except Exception:  # queue.Empty
                dead = [i for i in want if not self.procs[i].is_alive()]
                if dead:
                    raise RuntimeError(f"allocator process(es) {dead} died") from None
                continue
            if kind == "error":
                raise RuntimeError(f"allocator {idx}: {data}")
            if kind != what:
                raise RuntimeError(f"allocator {idx} said {kind!r}, expected {what!r}")
            got[idx] = data
        return got

    def phase(self, kind: str, phase: str, pool_id: str, n: int, count: int, warmup: int, max_secs: float,
              etcd: int | None) -> dict:
        for i in range(n):
            self.jobs[i].put((kind, phase, pool_id, count, warmup, max_secs))
        self._expect("ready", range(n), 120)
        cpu0 = cpu_secs(etcd)
        for i in range(n):
            self.jobs[i].put("go")
        got = self._expect("done", range(n), 600)
        cpu1 = cpu_secs(etcd)
        for i in range(n):
            self.jobs[i].put("release")
        released = self._expect("released", range(n), 600)
        for i in range(n):
            got[i]["release_lat"] = released[i]
            got[i]["etcd_cpu"] = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
        return got

    def stop(self) -> None:
        for q in self.jobs:
            try:
                q.put(None)
            except Exception:  # noqa: BLE001
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)


# -- pre-fill ----------------------------------------------------------------------------------

def prefill(kv, store, subnet, offsets: list[int], host: str, threads: int = 4) -> float:
    """Write allocation keys straight through the store layout, MAX_TXN_OPS per transaction."""
    import netaddr

    from netplugin.kv import Put
    from netplugin.model import Allocation
    net = netaddr.IPNetwork(subnet)
    batches = [offsets[i:i + MAX_TXN_OPS] for i in range(0, len(offsets), MAX_TXN_OPS)]
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def work(part):
        for batch in part:
            ops = [Put(store.k_alloc(subnet, o),
                       Allocation(str(netaddr.IPAddress(net.first + o)), "endpoint", host,
                                  endpoint=C.hex64(), network="n-prefill").to_json()) for o in batch]
            try:
                kv.txn([], ops)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(str(exc))
                return

    parts = [batches[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=work, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError("pre-fill failed: " + errors[0])
    return time.monotonic() - t0


# -- the run -------------------------------------------------------------------------------------

def summarize_phase(kind: str, got: dict) -> dict:
    starts = [d["start"] for d in got.values()]
    ends = [d["end"] for d in got.values()]
    lat = [x for d in got.values() for x in d["lat"]]
    span = max(ends) - min(starts)
    counts: Counter = Counter()
    for d in got.values():
        counts.update(d["counts"])
    addrs = [a for d in got.values() for a in d["addrs"]]
    secs: Counter = Counter()
    for d in got.values():
        secs.update(d["secs"])
    rel = [x for d in got.values() for x in d["release_lat"]]
    etcd_cpu = next(iter(got.values()))["etcd_cpu"]
    return {"kind": kind, "ops": len(lat), "span_s": span, "rate": len(lat) / span if span > 0 else None,
            "lat": lat, "counts": dict(counts), "secs": dict(secs), "addrs": addrs, "release_lat": rel,
            "client_cpu": sum(d["cpu"] for d in got.values()), "etcd_cpu": etcd_cpu}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    import netaddr

    from netplugin import networks
    from netplugin.kv import Delete, EtcdKV
    from netplugin.store import Store

    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    fills = [float(x) for x in args.fills.split(",") if x.strip()]
    if len(set(fills)) != len(fills) or len(fills) > len(C.SUBNET_OCTETS):
        raise SystemExit("--fills: give distinct fill percentages (one pool each)")
    info = C.machine()
    rtag = C.tag()
    prefix = f"/netplugin/bench-{rtag}"
    host_id = f"bench-{rtag}"
    octets = C.pick_octets(len(fills))
    vlans = random.sample(list(C.VLANS), len(fills))
    pools = {fill: f"10.{o}.0.0/{args.prefixlen}" for fill, o in zip(fills, octets)}
    net_size = netaddr.IPNetwork(pools[fills[0]]).size
    usable = net_size - 2
    result: dict = {"benchmark": "ipam", "machine": info,
                    "command": " ".join([sys.executable] + sys.argv),
                    "settings": {"count_per_allocator": args.count, "rounds": args.rounds, "concurrency": levels,
                                 "fills_pct": fills, "pools": {f"{k:g}": v for k, v in pools.items()},
                                 "layout": args.layout, "warmup": args.warmup, "max_seconds": args.max_seconds,
                                 "etcd_prefix": prefix,
                                 "host_id": host_id},
                    "results": []}
    kv = EtcdKV([C.ETCD], timeout=30.0)
    store = Store(kv, prefix)
    checks: list[str] = []
    with C.Cleanup(out) as cleanup:
        cleanup.add("close the etcd client", kv.close)
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(prefix + "/"))
        held: dict[float, int] = {}
        for (fill, subnet), vlan in zip(pools.items(), vlans):
            networks.create(store, f"npbench-ipam-{rtag}-{fill:g}", subnet, vlan)      # gateway at offset 1
            free = list(range(2, net_size - 1))                 # not network, gateway, broadcast
            if args.layout == "random":
                random.shuffle(free)
            add = sorted(free[:max(0, round(usable * fill / 100) - 1)])
            secs = prefill(kv, store, subnet, add, "bench-prefill-" + rtag)
            held[fill] = 1 + len(add)
            if store.count_allocations(subnet) != held[fill]:
                raise RuntimeError(f"pre-fill of {subnet}: {store.count_allocations(subnet)} keys, "
                                   f"expected {held[fill]}")
            out.progress(f"pool {subnet} (vlan {vlan}) at {100 * held[fill] / usable:.1f}% "
                         f"({held[fill]} of {usable}); pre-filled {len(add)} keys in {secs:.1f} s")
        out.progress(f"starting {max(levels)} allocator processes")
        alloc = Allocators(max(levels), {"prefix": prefix, "host_id": host_id})
        cleanup.add("stop the allocator processes", alloc.stop)
        etcd = etcd_pid()
        phase_no = 0
        arms = ["raw"] + [f"ipam@{fill:g}" for fill in fills]
        for n in levels:
            rounds = []
            for rnd_i in range(args.rounds):
                order = arms[rnd_i % len(arms):] + arms[:rnd_i % len(arms)]
                one = {}
                for arm in order:
                    phase_no += 1
                    kind, _, fill_s = arm.partition("@")
                    fill = float(fill_s) if fill_s else None
                    pool = pools[fill] if fill is not None else ""
                    got = alloc.phase(kind, f"p{phase_no}", pool, n, args.count, args.warmup, args.max_seconds,
                                      etcd)
                    sm = summarize_phase(kind, got)
                    if kind == "raw":
                        kv.txn([], [Delete(f"{prefix}/raw/", prefix=True)])
                    else:
                        if len(set(sm["addrs"])) != len(sm["addrs"]):
                            checks.append(f"{arm} x{n}: an address was handed out twice")
                        after = store.count_allocations(pool)
                        if after != held[fill]:
                            checks.append(f"{arm} x{n}: {after} keys after release, expected {held[fill]}")
                    one[arm] = sm
                    out.progress(f"x{n} round {rnd_i + 1}: {arm:9} {sm['rate']:7.1f}/s "
                                 f"p50 {1000 * C.pct(sm['lat'], 50):.2f} ms")
                rounds.append(one)
            result["results"].append(summarize_level(n, fills, held, usable, rounds))
        result["machine"]["loadavg_end"] = C._loadavg()
        for fill, subnet in pools.items():   # everything released: only the pre-filled keys remain
            if store.count_allocations(subnet) != held[fill]:
                checks.append(f"pool {subnet} does not hold exactly its pre-filled keys at the end")
    result["checks_failed"] = checks
    result["cleanup_failures"] = cleanup.failures
    report(out, result)
    out.result(result)
    return 1 if checks or cleanup.failures else 0


def summarize_level(n, fills, held, usable, rounds) -> dict:
    def agg(arm):
        kind = arm.partition("@")[0]
        rates = [r[arm]["rate"] for r in rounds]
        lat_ms = [x * 1000 for r in rounds for x in r[arm]["lat"]]
        ops = sum(r[arm]["ops"] for r in rounds)
        counts: Counter = Counter()
        secs: Counter = Counter()
        for r in rounds:
            counts.update(r[arm]["counts"])
            secs.update(r[arm]["secs"])
        refused = counts.pop("txn_refused", 0)
        client_cpu = sum(r[arm]["client_cpu"] for r in rounds)
        etcd_cpu = [r[arm]["etcd_cpu"] for r in rounds]
        d = {"rate_median": C.rnd(C.median(rates), 1), "rates": [C.rnd(x, 1) for x in rates],
             "p50_ms": C.rnd(C.pct(lat_ms, 50), 2), "p99_ms": C.rnd(C.pct(lat_ms, 99), 2), "ops": ops,
             "round_trips_per_op": {k: C.rnd(v / ops, 3) for k, v in sorted(counts.items())},
             "refused_txns": refused,
             "ms_in_round_trips_per_op": {k: C.rnd(1000 * v / ops, 3) for k, v in sorted(secs.items())},
             "client_cpu_ms_per_op": C.rnd(1000 * client_cpu / ops, 3),
             "etcd_cpu_ms_per_op": (C.rnd(1000 * sum(etcd_cpu) / ops, 3) if None not in etcd_cpu else None)}
        if kind == "ipam":
            rel = [x * 1000 for r in rounds for x in r[arm]["release_lat"]]
            d["release_p50_ms"] = C.rnd(C.pct(rel, 50), 2)
        return d
    raw = agg("raw")
    per_fill = []
    for fill in fills:
        arm = f"ipam@{fill:g}"
        d = agg(arm)
        ratios = [r[arm]["rate"] / r["raw"]["rate"] for r in rounds]
        d.update({"fill_pct": fill, "fill_actual_pct": C.rnd(100 * held[fill] / usable, 2),
                  "ratio_to_raw_median_of_rounds": C.rnd(C.median(ratios), 3),
                  "ratios_to_raw": [C.rnd(x, 3) for x in ratios]})
        per_fill.append(d)
    lo, hi = f"ipam@{fills[0]:g}", f"ipam@{fills[-1]:g}"
    fill_ratio = [r[hi]["rate"] / r[lo]["rate"] for r in rounds]
    return {"allocators": n, "raw": raw, "ipam": per_fill,
            "high_over_low_fill_median_of_rounds": C.rnd(C.median(fill_ratio), 3),
            "high_over_low_fill": [C.rnd(x, 3) for x in fill_ratio]}


def report(out: C.Out, r: dict) -> None:
    s = r["settings"]
    out.say(f"IPAM throughput  ({C.machine_line(r['machine'])})")
    out.say(f"pools {', '.join(f'{v} at {k}%' for k, v in s['pools'].items())} ({s['layout']} pre-fill); "
            f"{s['count_per_allocator']} ops per allocator per phase; {s['rounds']} rounds of raw + one ipam "
            "phase per pool, order rotating")
    rows = []
    for lv in r["results"]:
        raw = lv["raw"]
        rows.append([lv["allocators"], "raw txn", raw["rate_median"], None, raw["p50_ms"], raw["p99_ms"],
                     " ".join(f"{k}={v:g}" for k, v in raw["round_trips_per_op"].items())])
        for d in lv["ipam"]:
            rows.append([lv["allocators"], f"alloc @{d['fill_pct']:g}%", d["rate_median"],
                         d["ratio_to_raw_median_of_rounds"], d["p50_ms"], d["p99_ms"],
                         " ".join(f"{k}={v:g}" for k, v in d["round_trips_per_op"].items())
                         + (f" (+{d['refused_txns']} refused)" if d["refused_txns"] else "")])
    out.say(C.table(["procs", "what", "per s", "/ raw", "p50 ms", "p99 ms", "etcd calls per op"], rows,
                    "rlrrrrl"))
    out.say("per s = median over rounds; / raw = median over rounds of (alloc/s / raw/s of the same round); "
            "latency over all rounds")
    for lv in r["results"]:
        fl = lv["ipam"]
        out.say(f"x{lv['allocators']}: alloc/s at {fl[-1]['fill_pct']:g}% / at {fl[0]['fill_pct']:g}% "
                f"(median of rounds) = {lv['high_over_low_fill_median_of_rounds']}")
    out.say("")
    rows = []
    for lv in r["results"]:
        for name, d in [("raw txn", lv["raw"])] + [(f"alloc @{d['fill_pct']:g}%", d) for d in lv["ipam"]]:
            rows.append([lv["allocators"], name, d["client_cpu_ms_per_op"], d["etcd_cpu_ms_per_op"],
                         " ".join(f"{k}={v:g}" for k, v in d["ms_in_round_trips_per_op"].items())])
    out.say(C.table(["procs", "what", "client CPU ms/op", "etcd CPU ms/op", "ms waiting per op, by call"],
                    rows, "rlrrl"))
    out.say("CPU = process CPU time per operation (all allocators together; etcd's over the phase, which "
            "includes any other client of this etcd). 2 cores: (client + etcd CPU ms/op) x ops/s near 2000 "
            "means the CPUs are the limit")
    if r["checks_failed"]:
        out.say("CHECKS FAILED: " + "; ".join(r["checks_failed"]))
    C.say_cleanup_failures(out, r)


if __name__ == "__main__":
    C.exit_with(main)
