"""drctl schedules at fleet size: what one agent's firing pass costs over N
schedules on real etcd (nothing due: a prefix read and a check of each record,
against the agent's way, the records followed by a list-and-watch cache; all
due: one transaction per schedule), and K agents racing over N due
schedules, with the count of jobs they submitted (exactly N is right).

Prints figures; never passes or fails on time.

    python bench/bench_schedules.py [--sizes 100,500] [--agents 4] [--repeat 3]
"""

from __future__ import annotations

import secrets
import threading
import time

from _common import ETCD, etcd_delete_prefix, machine, machine_line, median, parser, rnd, table

from netplugin.backup.config import BackupConfig
from netplugin.backup.jobs import new_job
from netplugin.backup.model import BACKUP, JobSpec
from netplugin.backup.schedules import Firing, Schedule
from netplugin.backup.store import BackupStore
from netplugin.kv import EtcdKV

SPEC = JobSpec(network="prod", db_host="10.10.0.10", option_file="/etc/drctl/x.cnf", volume="backups",
               database="shop").__dict__
T0 = 1_767_232_800.0
IDLE_PASSES = 10            # idle passes timed, read from etcd each time and from the cache


def firing(store: BackupStore, cfg: BackupConfig) -> Firing:
    return Firing(store, cfg, lambda kind, target, host, spec, now, by: new_job(cfg, kind, target, host, spec, now,
                                                                                  by))


def one_size(n: int, agents: int) -> dict:
    prefix = f"/netplugin/bench-{secrets.token_hex(4)}"
    cfg = BackupConfig()
    kvs = [EtcdKV([ETCD], timeout=10) for _ in range(agents)]
    try:
        stores = [BackupStore(kv, prefix) for kv in kvs]
        for i in range(n):
            stores[0].create_schedule(Schedule(name=f"s{i:05d}", cron="* * * * *", tz="UTC", kind=BACKUP,
                                               target=f"t{i}", spec=dict(SPEC, db_host=f"10.10.{i // 250}.{i % 250}"),
                                               host="h1", created=T0, last_due=T0))
        f = firing(stores[0], cfg)
        t = time.perf_counter()
        for _ in range(IDLE_PASSES):
            assert f.tick(T0 + 30) == []
        idle = (time.perf_counter() - t) / IDLE_PASSES
        # the agent's way: the records followed by a list-and-watch cache (read once, before the clock)
        cached = Firing(stores[0], cfg, f.new_job, cached=True)
        try:
            assert cached.cache is not None and cached.cache.wait_ready(60)
            t = time.perf_counter()
            for _ in range(IDLE_PASSES):
                assert cached.tick(T0 + 30) == []
            idle_cached = (time.perf_counter() - t) / IDLE_PASSES
        finally:
            cached.close()
        t = time.perf_counter()
        fired = len(f.tick(T0 + 61))
        one = time.perf_counter() - t
        passes = [firing(s, cfg) for s in stores]
        barrier = threading.Barrier(agents)
        got: list[str] = []
        lock = threading.Lock()

        def run(p: Firing, i: int) -> None:
            barrier.wait()
            ids = p.tick(T0 + 121 + i)
            with lock:
                got.extend(ids)
        threads = [threading.Thread(target=run, args=(p, i)) for i, p in enumerate(passes)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        race = time.perf_counter() - t
        return {"n": n, "idle_pass_s": idle, "idle_cached_s": idle_cached, "due_pass_s": fired and one,
                "fired": fired, "race_s": race, "race_jobs": len(got), "race_unique": len(set(got))}
    finally:
        for kv in kvs:
            kv.close()
        etcd_delete_prefix(prefix + "/")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", default="100,500")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    m = machine()
    print(machine_line(m))
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        runs = [one_size(n, args.agents) for _ in range(args.repeat)]
        rows.append([n, rnd(median([r["idle_pass_s"] for r in runs])), rnd(median([r["idle_cached_s"] for r in runs])),
                     rnd(median([r["due_pass_s"] for r in runs])),
                     min(r["fired"] for r in runs), rnd(median([r["race_s"] for r in runs])),
                     f"{min(r['race_jobs'] for r in runs)}-{max(r['race_jobs'] for r in runs)}",
                     all(r["race_jobs"] == r["race_unique"] == n for r in runs)])
    print(table(["schedules", "idle pass s", "idle pass, cached s", "all-due pass s", "fired",
                 f"{args.agents} racing s", "jobs", "exactly once"], rows))


if __name__ == "__main__":
    main()
