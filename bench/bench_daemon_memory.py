#!/usr/bin/env python3
"""A real daemon's memory with a fleet's endpoints in etcd (issue 15's target:
at most 200 MB per daemon at 50,000 endpoints).

The fleet's records are written as the fleet simulation writes them
(tests/harness/fleet.py: --hosts hosts x 50 endpoints, one network per 10
hosts, through the hosts' own IPAM and ``Store.create_endpoint``), under a
private prefix of the real etcd; no simulated host is started. Then one real
``netplugin.daemon`` (bench/_common.Daemon, its own bridge on the real Open
vSwitch) runs on that prefix, and the memory of its processes is read (RSS
and PSS, summed over its process group: gunicorn's arbiter and its worker):

  idle      started, nothing bound: it follows the cluster's networks,
            profiles, settings and its own bindings only;
  typical   bound to --typical networks (a host with containers on 2
            networks: about 1,000 endpoints);
  all       bound to every network: it holds every endpoint of the cluster
            in its caches (the worst case; per-host interest makes it rare).

Bindings are written as CreateNetwork writes them (``Store.put_binding``); each
state is read once the daemon's ``/health`` says its view is ready and holds
every endpoint of its bound networks, and after a settling pause. The daemon
has no container here, so its ARP proxy installs no answer (it answers only
on VLANs with a local port): the switch's memory for 50,000 answers is
bench_arp_scale.py's subject, and it is ovs-vswitchd's, not the daemon's.

    sudo .venv/bin/python bench/bench_daemon_memory.py [--hosts 1000] [--typical 2] [--json]

Prints figures; never passes or fails on size. Exit 1 when the setup broke or
the view did not come to hold its endpoints.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from netplugin.model import Binding
from tests.harness import fleet as F

BRIDGE = "npbenchmem0"
SOCKET = "/run/docker/plugins/npbenchmem.sock"
METRICS = "127.0.0.1:9119"


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over pids, KiB. RSS counts pages the processes share
    (gunicorn's arbiter and its worker, libraries) once per process; PSS
    divides each shared page among its sharers, so the sum is what they use."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for name, m in (("Rss", re.search(r"^Rss:\s+(\d+) kB", text, re.M)),
                        ("Pss", re.search(r"^Pss:\s+(\d+) kB", text, re.M))):
            if m and name == "Rss":
                rss += int(m.group(1))
            elif m:
                pss += int(m.group(1))
    return rss, pss


def held() -> int:
    """The endpoints the daemon's view holds, by its /health (-1 before it is ready)."""
    try:
        with urllib.request.urlopen(f"http://{METRICS}/health", timeout=10) as resp:
            view = json.loads(resp.read())["view"]
    except (OSError, ValueError, KeyError):
        return -1
    return int(view["endpoints"]) if view.get("ready") else -1


def settle(daemon: C.Daemon, want: int, timeout: float, pause: float) -> tuple[float, tuple[int, int]]:
    """Wait until the view holds ``want`` endpoints, then ``pause`` s; (seconds, (RSS, PSS) KiB)."""
    t0 = time.monotonic()
    while held() != want:
        if not daemon.alive():
            raise RuntimeError(f"the daemon exited:\n{daemon.log_tail()}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the view holds {held()} of {want} endpoints after {timeout:.0f} s")
        time.sleep(0.5)
    took = time.monotonic() - t0
    time.sleep(pause)
    return took, memory_kib(daemon.pids())


def main() -> int:
    p = C.parser(__doc__)
    p.add_argument("--hosts", type=int, default=1000, help="fleet hosts x 50 endpoints (default 1000)")
    p.add_argument("--typical", type=int, default=2, help="networks a typical host binds (default 2)")
    p.add_argument("--workers", type=int, default=4, help="processes writing the records (default 4)")
    p.add_argument("--pause", type=float, default=10.0, help="seconds to settle before each reading")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answers")
    args = C.parse(p)
    out = C.Out(args.json)
    m = C.machine()
    out.say(C.machine_line(m))
    res: dict = {"machine": m, "hosts": args.hosts, "endpoints": args.hosts * 50}
    fleet = F.Fleet(C.ETCD, hosts=args.hosts, workers=args.workers, prefix=f"/netplugin/bench-mem-{C.tag()}/v1")
    logdir = Path(tempfile.mkdtemp(prefix="npbench-mem-"))
    with C.Cleanup(out) as cleanup:
        cleanup.add("delete the fleet's keys", lambda: C.etcd_delete_prefix(fleet.prefix.rsplit("/v1", 1)[0] + "/"))
        cleanup.add(f"remove bridge {BRIDGE}", lambda: C.remove_bridge(BRIDGE))
        cleanup.add("stop the fleet's writers", fleet.close)
        t0 = time.monotonic()
        fleet.build()
        res["load_s"] = time.monotonic() - t0
        out.say(f"{res['endpoints']} endpoints in {len(fleet.nets)} networks written in {res['load_s']:.0f} s")
        fleet.close()
        assert fleet.store is not None
        daemon = C.Daemon(logdir / "daemon.log", socket=SOCKET, bridge=BRIDGE,
                          extra_env={"NETPLUGIN_ETCD_PREFIX": fleet.prefix, "NETPLUGIN_PORT_POOL_SIZE": "0",
                                     "NETPLUGIN_METRICS_ADDRESS": METRICS})
        cleanup.add("stop the daemon", daemon.stop)
        daemon.start(within=60)
        daemon.wait_bridge()
        rows = []
        bound: list = []
        plan = [("idle", []), ("typical", fleet.nets[:args.typical]), ("all", fleet.nets)]
        for name, nets in plan:
            for net in nets:
                if net not in bound:
                    fleet.store.put_binding(Binding(C.hex64(), net.id, daemon.host_id, pool=net.subnet), net.subnet)
                    bound.append(net)
            want = sum(fleet.per_net.get(n.id, 0) for n in bound)
            took, (rss, pss) = settle(daemon, want, args.timeout, args.pause)
            row = {"state": name, "networks": len(bound), "endpoints_held": want, "held_in_s": round(took, 1),
                   "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}
            rows.append(row)
            out.say(f"{name}: {len(bound)} networks, {want} endpoints held in {took:.1f} s, "
                    f"RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB")
        res["states"] = rows
        out.say(C.table(["state", "networks bound", "endpoints held", "held in s", "RSS MiB", "PSS MiB"],
                        [[r["state"], r["networks"], r["endpoints_held"], r["held_in_s"], r["rss_mib"], r["pss_mib"]]
                         for r in rows]))
    out.result(res)
    return 0


if __name__ == "__main__":
    C.exit_with(main)
