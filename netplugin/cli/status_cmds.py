"""``netctl status``: the cluster on one screen, from etcd.

Hosts alive and dead, endpoints, records in etcd that fail their checks
(key, kind and what is wrong: every reader skips them), the last reconcile and the hosts whose
reconciler has not run lately, backup jobs, and every network with its pool
fill. ``--json`` gives the same and more (every host's last reconcile).

Backup jobs are drctl's, read through ``ctx.backup_jobs`` (cli/main.py
builds it, so this module knows nothing of drctl): counts by state in the
order of a job's life, the jobs queued for or active on a host whose agent is
not alive, and the targets whose last backup job did not succeed. ``--json``
adds bytes backed up and per target the newest verified backup, what the
catalog holds and the last backup job.
"""

from __future__ import annotations

import time

from .. import poolspan
from ..logs import escape
from .output import ago, print_fields, print_json, print_table

# The reconcile timer runs every 5 minutes (systemd/netplugin-reconcile.timer):
# a host whose last run is older than three rounds is worth a look.
RECONCILE_STALE = 15 * 60
NAMES_SHOWN = 5


def register(sub, common) -> None:
    st = sub.add_parser("status", help="the cluster on one screen: hosts, networks and pools, "
                                       "endpoints, reconciler, backup jobs", parents=[common])
    st.set_defaults(run=status)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _reconcile_summary(report: dict) -> dict:
    """The part of a stored reconcile report that status shows."""
    return {"started": report.get("started"), "status": report.get("status", ""),
            "findings": len(report.get("findings") or []), "released": report.get("released", 0),
            "repaired": report.get("repaired", 0), "errors": report.get("errors", 0),
            "dry_run": bool(report.get("dry_run"))}


def collect(ctx, now: float | None = None) -> dict:
    """Everything ``netctl status`` shows, read from etcd in one pass."""
    now = time.time() if now is None else now
    store = ctx.store
    hosts = sorted(store.list_hosts(), key=lambda pair: pair[0].host)
    endpoints = store.list_endpoints()
    per_host: dict[str, int] = {}
    per_net: dict[str, int] = {}
    for ep in endpoints:
        per_host[ep.host] = per_host.get(ep.host, 0) + 1
        per_net[ep.network] = per_net.get(ep.network, 0) + 1

    host_rows = []
    for h, alive in hosts:
        last = store.last_reconcile(h.host)
        host_rows.append({"host": h.host, "alive": alive, "last_seen": h.last_seen,
                          "endpoints": per_host.get(h.host, 0), "version": h.version,
                          "last_reconcile": _reconcile_summary(last) if last else None})

    networks = []
    for net in sorted(store.list_networks(), key=lambda n: n.label):
        # Over what the allocator can give out: a count of the subnet's allocations
        # when the whole subnet is the pool, else the ones inside its --ip-range.
        parts = poolspan.spans(net)
        size = poolspan.size(parts)
        used = (store.count_allocations(net.subnet) if not net.ranges else
                sum(1 for _, a in store.list_allocations(net.subnet) if poolspan.inside(parts, a.ip)))
        networks.append({"name": net.label, "id": net.id, "subnet": net.subnet, "vlan": net.vlan,
                         "endpoints": per_net.get(net.id, 0), "used": used, "size": size,
                         "fill": round(100.0 * used / size, 1) if size else 0.0,
                         "problem": net.name_conflict or None})

    runs = [(r["host"], r["last_reconcile"]) for r in host_rows if r["last_reconcile"]]
    latest = max(runs, key=lambda pair: pair[1]["started"] or 0, default=None)
    alive_rows = [r for r in host_rows if r["alive"]]
    return {
        "time": now,
        "etcd": {"endpoints": list(ctx.cfg.etcd_endpoints), "prefix": ctx.cfg.etcd_prefix},
        "hosts": {"alive": len(alive_rows), "dead": len(host_rows) - len(alive_rows), "list": host_rows},
        "endpoints": {"total": len(endpoints), "hosts": len(per_host)},
        "networks": networks,
        "reconcile": {
            "last": dict(latest[1], host=latest[0]) if latest else None,
            "never": [r["host"] for r in alive_rows if not r["last_reconcile"]],
            "stale": [r["host"] for r in alive_rows if r["last_reconcile"]
                      and now - (r["last_reconcile"]["started"] or 0) > RECONCILE_STALE],
            "with_errors": [r["host"] for r in host_rows if r["last_reconcile"] and r["last_reconcile"]["errors"]],
        },
        "backup_jobs": ctx.backup_jobs(),
        "bad_records": [{"key": key, "kind": kind, "problem": problem}
                        for key, kind, problem in store.scan_bad_records()],
    }


def _hosts_line(info: dict) -> str:
    hosts = info["hosts"]
    if not hosts["list"]:
        return "none registered (no daemon has reached etcd yet)"
    line = f"{hosts['alive']} alive, {hosts['dead']} dead"
    dead = [r for r in hosts["list"] if not r["alive"]]
    if dead:
        line += ": " + _names([f"{r['host']} (last seen {ago(r['last_seen'])})" for r in dead])
    return line


def _reconcile_lines(info: dict) -> list[str]:
    rec = info["reconcile"]
    last = rec["last"]
    if not last:
        return ["never run on any host"]
    lines = [f"last run {ago(last['started'])} on {last['host']}: {last['status']}"
             + (" (dry run)" if last["dry_run"] else "")
             + f", {_plural(last['findings'], 'finding')}, {last['released']} released, "
               f"{last['repaired']} repaired, {_plural(last['errors'], 'error')}"]
    if rec["never"]:
        lines.append("never run on " + _names(rec["never"]))
    if rec["stale"]:
        lines.append(f"no run for over {RECONCILE_STALE // 60} min on " + _names(rec["stale"]))
    if rec["with_errors"]:
        lines.append("errors in the last run on " + _names(rec["with_errors"]))
    return lines


def _backup_lines(jobs: dict) -> list[str]:
    if not jobs["total"]:
        return ["none"]
    lines = [", ".join(f"{n} {state}" for state, n in jobs["states"].items() if n)]
    if jobs["orphaned"]:
        lines.append(f"no live agent for {_plural(len(jobs['orphaned']), 'job')}: "
                     + _names([f"{j['id']} {j['state']} on {j['host']}" for j in jobs["orphaned"]]))
    bad = [t for t in jobs["targets"] if t["last_job"] and not t["last_job"]["succeeded"]]
    if bad:
        lines.append("last backup job did not succeed: "
                     + _names([f"{t['target']} ({t['last_job']['state']})" for t in bad]))
    return lines


def status(args, ctx) -> int:
    info = collect(ctx)
    if ctx.json:
        print_json(info)
        return 0
    eps = info["endpoints"]
    rec = _reconcile_lines(info)
    bk = _backup_lines(info["backup_jobs"])
    pairs = [("Cluster", f"{info['etcd']['prefix']} at {', '.join(info['etcd']['endpoints'])}"),
             ("Hosts", _hosts_line(info)),
             ("Endpoints", f"{eps['total']} on {_plural(eps['hosts'], 'host')}" if eps["total"] else "0"),
             ("Reconcile", rec[0])] + [("", more) for more in rec[1:]] + \
            [("Backup jobs", bk[0])] + [("", more) for more in bk[1:]]
    bad = info["bad_records"]
    pairs.insert(3, ("Bad records", f"{len(bad)}, skipped by every reader: fix or delete them (etcdctl del KEY)"
                     if bad else "none"))
    print_fields(pairs)
    print()
    if bad:
        print_table(["BAD KEY", "KIND", "PROBLEM"],
                    [[escape(r["key"], 120), r["kind"], escape(r["problem"], 160)] for r in bad])
        print()
    if not info["networks"]:
        print("No networks: create one with 'netctl network create' or 'docker network create -d netplugin'.")
        return 0
    print_table(["NETWORK", "SUBNET", "VLAN", "ENDPOINTS", "USED", "SIZE", "FILL"],
                [[n["name"], n["subnet"], n["vlan"], n["endpoints"], n["used"], n["size"],
                  f"{n['fill']:.1f}%" + (" (name conflict)" if n["problem"] else "")]
                 for n in info["networks"]])
    return 0
