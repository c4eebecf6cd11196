#!/usr/bin/env python3
"""API latency: what Docker sends for a container's life, straight to the
plugin socket (no Docker involved).

A daemon is started on /run/docker/plugins/npbench.sock (prefix
/netplugin/bench-<random>, bridge npbench0, netdev datapath). A network is
made through the protocol as Docker makes one (RequestPool, gateway
RequestAddress, CreateNetwork), then each "container" is

    RequestAddress, CreateEndpoint, Join, Leave, DeleteEndpoint, ReleaseAddress

with random 64-hex endpoint ids. CreateEndpoint + Join + Leave + DeleteEndpoint
are timed together (the "lifecycle"), at 1 and at N (default 20) concurrent
callers, each a thread with its own keep-alive connection, as dockerd keeps one.

Baselines measured in the same run:
  * transport: NetworkDriver.GetCapabilities, a call that does no work, at the
    same concurrency: the floor of HTTP + gunicorn + Flask on this machine;
  * dataplane: the datapath work of CreateEndpoint, Join and DeleteEndpoint
    (veth pair, OVS access port, the port's table-0 flow, Join's gratuitous
    ARP packet-out, flow removal, port and veth removal), done in this process
    with the same library calls (netplugin.dataplane, one shared OVSDB
    connection as in the daemon), at the same concurrency, without HTTP, etcd
    or the daemon's background work. Each step is timed.

Afterwards it checks that nothing is left: no OVS port on npbench0 with
external_ids np-endpoint, no endpoint keys, no veths, no allocations besides
the gateway, and no flow with an endpoint cookie nor meter on npbench0 (the
daemon's background work may lag: flows of endpoints without a limit and the
veths go after DeleteEndpoint answers, so it waits up to --settle seconds for
those, and reports what was there right after the last DeleteEndpoint). Then
it deletes the network through the protocol and removes everything it made.

    sudo /tmp/venv/bin/python bench/bench_api.py [--count 200] [--concurrency 1,20] [--json]
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TIMED = ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
         "NetworkDriver.DeleteEndpoint")
ALL = ("IpamDriver.RequestAddress",) + TIMED + ("IpamDriver.ReleaseAddress",)


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--count", type=int, default=200,
                   help="lifecycles per concurrency level, split across the callers (default 200)")
    p.add_argument("--concurrency", default="1,20", help="comma-separated caller counts (default 1,20)")
    p.add_argument("--warmup", type=int, default=10, help="untimed lifecycles first (default 10)")
    p.add_argument("--baseline-count", type=int, default=100,
                   help="transport / dataplane baseline operations per level (default 100)")
    p.add_argument("--max-failures", type=int, default=10,
                   help="failed lifecycles (e.g. OVS timeouts on a loaded machine) counted and skipped per level "
                        "before the run is declared broken (default 10)")
    p.add_argument("--settle", type=float, default=45,
                   help="seconds to wait for endpoint flows/meters to go after the last endpoint (default 45)")
    return C.parse(p, argv, daemon_src=True, keep_log="keep the daemon log and print its path")


class Net:
    """The network under test, as Docker would have made it."""

    def __init__(self, client: C.Client, subnet: str, vlan: int, name: str):
        self.client = client
        self.subnet = subnet
        self.vlan = vlan
        self.name = name
        self.docker_id = C.hex64()
        self.pool_id = None
        self.gateway = None

    def create(self) -> None:
        r = self.client.ok("IpamDriver.RequestPool", {"AddressSpace": C.ADDRESS_SPACE, "Pool": self.subnet,
                                                       "SubPool": "", "Options": {}, "V6": False})
        self.pool_id = r["PoolID"]
        r = self.client.ok("IpamDriver.RequestAddress", {
            "PoolID": self.pool_id, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        self.gateway = r["Address"]
        # -o name=...: Docker would name it within ~0.2 s (the daemon asks
        # Docker for the name); with no Docker network of this id, naming it
        # up front keeps every CreateEndpoint from asking Docker again.
        self.client.ok("NetworkDriver.CreateNetwork", {
            "NetworkID": self.docker_id,
            "Options": {"com.docker.network.generic": {"vlan": str(self.vlan), "name": self.name},
                        "com.docker.network.enable_ipv6": False},
            "IPv4Data": [{"AddressSpace": C.ADDRESS_SPACE, "Pool": self.subnet, "Gateway": self.gateway,
                          "AuxAddresses": {}}],
            "IPv6Data": []})

    def delete(self) -> None:
        self.client.ok("NetworkDriver.DeleteNetwork", {"NetworkID": self.docker_id})
        self.client.ok("IpamDriver.ReleaseAddress", {"PoolID": self.pool_id,
                                                     "Address": self.gateway.split("/")[0]})
        self.client.ok("IpamDriver.ReleasePool", {"PoolID": self.pool_id})


class LifecycleFailed(Exception):
    pass


def lifecycle(client: C.Client, net: Net, times: dict[str, list[float]], made: list[str]) -> float:
    """One container's life; returns the timed part (seconds).

    When a call fails, the rest is torn down as Docker would (best effort:
    DeleteEndpoint, ReleaseAddress) and LifecycleFailed says which call failed."""
    ep = C.hex64()
    made.append(ep)
    MADE.append(ep)
    addr = None

    def timed(method, body):
        t0 = time.perf_counter()
        try:
            reply = client.ok(method, body)
        except Exception as exc:
            raise LifecycleFailed(f"{method}: {exc}"[:600]) from None
        times[method].append(time.perf_counter() - t0)
        return reply

    try:
        addr = timed("IpamDriver.RequestAddress",
                     {"PoolID": net.pool_id, "Address": "", "Options": {}})["Address"]
        t0 = time.perf_counter()
        timed("NetworkDriver.CreateEndpoint", {"NetworkID": net.docker_id, "EndpointID": ep, "Options": {},
                                               "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
        timed("NetworkDriver.Join", {"NetworkID": net.docker_id, "EndpointID": ep,
                                     "SandboxKey": f"/var/run/docker/netns/{secrets.token_hex(6)}", "Options": {}})
        timed("NetworkDriver.Leave", {"NetworkID": net.docker_id, "EndpointID": ep})
        timed("NetworkDriver.DeleteEndpoint", {"NetworkID": net.docker_id, "EndpointID": ep})
        span = time.perf_counter() - t0
        timed("IpamDriver.ReleaseAddress", {"PoolID": net.pool_id, "Address": addr.split("/")[0]})
        return span
    except LifecycleFailed:
        for method, body in (("NetworkDriver.DeleteEndpoint", {"NetworkID": net.docker_id, "EndpointID": ep}),
                             ("IpamDriver.ReleaseAddress",
                              {"PoolID": net.pool_id, "Address": addr.split("/")[0]} if addr else None)):
            if body is not None:
                try:
                    client.call(method, body)
                except Exception:  # noqa: BLE001 - best effort; the final checks will tell
                    client.close()
        raise


STOP = threading.Event()       # set on Ctrl-C: callers finish the lifecycle they are in and stop
MADE: list[str] = []           # every endpoint id used, for the cleanup of stray veths
FLOOR: list[str] = []          # veths of the dataplane baseline


def run_level(net: Net, callers: int, count: int, max_failures: int = 0) -> dict:
    """count lifecycles spread over `callers` threads, all started together.
    Up to max_failures failed lifecycles are counted and skipped."""
    per = [count // callers + (1 if i < count % callers else 0) for i in range(callers)]
    times: list[dict[str, list[float]]] = [defaultdict(list) for _ in range(callers)]
    spans: list[list[float]] = [[] for _ in range(callers)]
    made: list[list[str]] = [[] for _ in range(callers)]
    errors: list[str] = []
    failed: list[str] = []
    barrier = threading.Barrier(callers + 1)

    def worker(i):
        client = C.Client(C.SOCKET)
        try:
            client.ok("Plugin.Activate")          # open the connection before the clock starts
            barrier.wait()
            for _ in range(per[i]):
                if STOP.is_set():
                    break
                try:
                    spans[i].append(lifecycle(client, net, times[i], made[i]))
                except LifecycleFailed as exc:       # counted and reported; the caller goes on
                    failed.append(str(exc))
                    if len(failed) > max_failures:
                        raise RuntimeError(f"more than {max_failures} lifecycles failed; last: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - reported, and the run is marked broken
            errors.append(f"caller {i}: {exc}")
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        STOP.set()
        for t in threads:
            t.join(30)
        raise
    wall = time.perf_counter() - t0
    all_spans = [s for lst in spans for s in lst]
    merged: dict[str, list[float]] = defaultdict(list)
    for d in times:
        for k, v in d.items():
            merged[k].extend(v)
    return {"callers": callers, "lifecycles": len(all_spans), "wall_s": wall, "spans": all_spans,
            "methods": merged, "errors": errors, "failed": failed,
            "endpoints": [e for lst in made for e in lst]}


def transport_baseline(callers: int, count: int) -> list[float]:
    """GetCapabilities round trips: no etcd, no OVS, just the way in and out."""
    per = [count // callers + (1 if i < count % callers else 0) for i in range(callers)]
    lat: list[list[float]] = [[] for _ in range(callers)]
    barrier = threading.Barrier(callers)

    def worker(i):
        client = C.Client(C.SOCKET)
        try:
            client.ok("Plugin.Activate")
            barrier.wait()
            for _ in range(per[i]):
                t0 = time.perf_counter()
                client.ok("NetworkDriver.GetCapabilities")
                lat[i].append(time.perf_counter() - t0)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for lst in lat for x in lst]


def dataplane_baseline(callers: int, count: int, vlan: int,
                       max_failures: int = 0) -> tuple[list[float], float, dict, list[str]]:
    """The datapath work of CreateEndpoint, Join and DeleteEndpoint, with
    netplugin's own dataplane classes, in this process: no HTTP, no etcd, no
    daemon. Veth pair + OVS access port, and (when this netplugin has them) the
    port's table-0 flow, the gratuitous ARP packet-out of Join and the flow
    removal of DeleteEndpoint, then port and veth removal. Like the daemon, all
    callers share one Switch (one OVSDB connection). Each step is timed."""
    from netplugin.dataplane.links import Links
    from netplugin.dataplane.ovs import Switch
    switch = Switch()
    flows = garp = None
    try:   # the OpenFlow work CreateEndpoint/Join/DeleteEndpoint do since the rate-limit and ARP-proxy work
        from netplugin.arp_proxy import garp_packet
        from netplugin.dataplane.flows import Flows
        flows = Flows(C.BRIDGE)
        if not all(hasattr(flows, m) for m in ("set_port", "clear_port", "delete_endpoint_flows", "packet_out")) \
                or not hasattr(switch, "ofport"):
            flows = None
        garp = garp_packet("02:4e:0a:c8:00:02", "10.200.0.2")
    except ImportError:
        flows = None
    per = [count // callers + (1 if i < count % callers else 0) for i in range(callers)]
    lat: list[list[float]] = [[] for _ in range(callers)]
    errors: list[str] = []
    steps: dict[str, list[float]] = defaultdict(list)
    switch.bridge_exists(C.BRIDGE)              # connect before the clock starts
    barrier = threading.Barrier(callers)

    def worker(i):
        links = Links()
        barrier.wait()
        for _ in range(per[i]):
            if STOP.is_set():
                return
            short = secrets.token_hex(5)
            host, peer = "nbf" + short, "nbg" + short   # never np*/nc*: those are the daemon's
            FLOOR.append(host)
            ep_id = "f100d" + secrets.token_hex(30)[:59]    # cookie-able id, never a real endpoint's
            ofport: list[int | None] = [None]
            plan = [("create_veth", lambda: links.create_veth(host, peer, 1500, "02:4e:0a:c8:00:02", True)),
                    ("add_access_port", lambda: switch.add_access_port(C.BRIDGE, host, vlan,
                                                                       {"npbench-floor": "1"}))]
            if flows is not None:
                plan += [("port_flow", lambda: (ofport.__setitem__(0, switch.ofport(host)),
                                                ofport[0] and flows.set_port(ep_id, ofport[0], vlan, None))),
                         ("garp_packet_out", lambda: ofport[0] and flows.packet_out(ofport[0], garp))]
            plan += [("clear_flows", lambda: flows.clear_port(ep_id, ofport[0])) if flows is not None else None,
                     ("delete_port", lambda: switch.delete_port(host)),
                     ("delete_veth", lambda: links.delete(host))]
            t0 = time.perf_counter()
            try:
                for step, fn in [p for p in plan if p]:
                    t1 = time.perf_counter()
                    fn()
                    steps[step].append(time.perf_counter() - t1)
                lat[i].append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted; the port/veth are removed below
                errors.append(str(exc)[:300])
                try:
                    if flows is not None:
                        flows.clear_port(ep_id, ofport[0])
                    if switch.port_exists(host):
                        switch.delete_port(host)
                except Exception:  # noqa: BLE001
                    pass
                links.delete(host)
                if len(errors) > max_failures:   # reported; the level is marked broken
                    return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(callers)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    except KeyboardInterrupt:
        STOP.set()
        for t in threads:
            t.join(30)
        raise
    finally:
        switch.close()
    return [x for lst in lat for x in lst], wall, steps, errors


def remove_stray_veths() -> None:
    """Host ends of this run's endpoints that are still there (only after an interrupt)."""
    from netplugin.dataplane.links import veth_names
    names = C.run("ip", "-o", "link", "show").stdout
    for host in [veth_names(ep)[0] for ep in MADE] + FLOOR:
        if f" {host}@" in names or f" {host}:" in names:
            C.run("ip", "link", "del", host, check=False)


def leftovers(daemon: C.Daemon, endpoints: list[str]) -> dict:
    from netplugin.dataplane.links import veth_names
    ports = [name for name, ext in C.bridge_ports() if "np-endpoint" in ext]
    ep_keys = C.etcd_keys(daemon.prefix + "/net-endpoints/")
    mine = {veth_names(e)[0] for e in endpoints} | {veth_names(e)[1] for e in endpoints}
    links = C.run("ip", "-o", "link", "show").stdout
    veths = sorted(n for n in mine if f" {n}@" in links or f" {n}:" in links)
    return {"ovs_ports_with_np_endpoint": ports, "endpoint_keys": ep_keys, "veths": veths, **C.endpoint_flows()}


def summarize(lat: list[float]) -> dict:
    ms = [x * 1000 for x in lat]
    return {"n": len(ms), "p50_ms": C.rnd(C.pct(ms, 50), 2), "p99_ms": C.rnd(C.pct(ms, 99), 2)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    info = C.machine()
    octet = C.pick_octets(1)[0]
    subnet = f"10.{octet}.0.0/22"
    vlan = C.pick_vlan()
    logdir = Path(tempfile.mkdtemp(prefix="npbench-api-"))
    daemon = C.Daemon(logdir / "netplugin.log", threads=max(32, max(levels) + 4), src=args.daemon_src)
    result: dict = {"benchmark": "api", "machine": info, "command": " ".join([sys.executable] + sys.argv),
                    "settings": {"count": args.count, "concurrency": levels, "warmup": args.warmup,
                                 "subnet": subnet, "vlan": vlan, "socket": C.SOCKET, "bridge": C.BRIDGE,
                                 "etcd_prefix": daemon.prefix, "host_id": daemon.host_id,
                                 "client": "one keep-alive connection per caller thread",
                                 "daemon_src": args.daemon_src or "installed package"}}
    net = None
    all_endpoints: list[str] = []
    broken = False
    state = {"finished": False}
    with C.Cleanup(out) as cleanup:
        cleanup.add("remove the daemon log", lambda: C.drop_log(logdir, args.keep_log, state["finished"], out))
        cleanup.add("delete the etcd prefix", lambda: C.etcd_delete_prefix(daemon.prefix + "/"))
        cleanup.add("remove bridge npbench0", C.remove_bridge)
        cleanup.add("remove stray veths of this run", remove_stray_veths)
        cleanup.add("stop the daemon", daemon.stop)
        out.progress(f"starting the daemon (log {daemon.log_path})")
        daemon.start()
        result["settings"]["daemon_package"] = daemon.package
        daemon.wait_bridge()
        admin = C.Client(C.SOCKET)
        net = Net(admin, subnet, vlan, "npbench-api-" + C.tag())
        net.create()

        def drop_network():
            if daemon.alive():
                net.delete()
        cleanup.add("delete the network through the protocol", drop_network)
        out.progress(f"network {net.name}: {subnet} vlan {vlan}, gateway {net.gateway}")

        # warm-up: connections, the OVSDB and etcd clients inside the daemon
        warm = run_level(net, 1, args.warmup, args.max_failures) if args.warmup else None
        if warm:
            all_endpoints += warm["endpoints"]
            if warm["errors"]:
                raise RuntimeError("warm-up failed: " + "; ".join(warm["errors"]))

        log_mark = C.log_size(daemon.log_path)
        levels_out = []
        for callers in levels:
            out.progress(f"baseline: GetCapabilities x{args.baseline_count} at {callers} caller(s)")
            base = transport_baseline(callers, args.baseline_count)
            out.progress(f"lifecycles: {args.count} at {callers} caller(s)")
            mark = C.log_size(daemon.log_path)
            r = run_level(net, callers, args.count, args.max_failures)
            all_endpoints += r["endpoints"]
            if r["errors"]:
                broken = True
                out.progress("ERRORS: " + "; ".join(r["errors"][:5]))
            if r["failed"]:
                out.progress(f"{len(r['failed'])} lifecycle(s) failed, e.g. {r['failed'][0][:300]}")
            server = defaultdict(list)
            for c in C.parse_calls(C.read_from(daemon.log_path, mark)):
                if c["status"] == 200:
                    server[c["method"]].append(c["ms"] / 1000)
            out.progress(f"baseline: dataplane alone x{args.baseline_count} at {callers} caller(s)")
            dp, dp_wall, dp_steps, dp_fail = dataplane_baseline(callers, args.baseline_count, vlan,
                                                                args.max_failures)
            if len(dp_fail) > args.max_failures:
                broken = True
                out.progress(f"dataplane baseline: {len(dp_fail)} failures, e.g. {dp_fail[0][:300]}")
            lv = {"callers": callers, "lifecycles": r["lifecycles"], "wall_s": C.rnd(r["wall_s"], 3),
                  "lifecycles_per_s": C.rnd(r["lifecycles"] / r["wall_s"], 1) if r["wall_s"] else None,
                  "lifecycle": summarize(r["spans"]),
                  "methods": {m: {**summarize(r["methods"][m]),
                                  "server_p50_ms": C.rnd(C.pct([x * 1000 for x in server[m]], 50), 2)}
                              for m in ALL},
                  "baseline_transport": summarize(base), "baseline_dataplane": summarize(dp),
                  "baseline_dataplane_per_s": C.rnd(len(dp) / dp_wall, 1) if dp_wall else None,
                  "baseline_dataplane_steps": {k: summarize(v) for k, v in dp_steps.items()},
                  "failed_lifecycles": len(r["failed"]), "failures": r["failed"][:10],
                  "dataplane_baseline_failures": len(dp_fail), "dataplane_failures": dp_fail[:3],
                  "errors": r["errors"][:20]}
            levels_out.append(lv)
        result["levels"] = levels_out

        # nothing may be left. Flows are also kept by the daemon's background
        # ARP-proxy sync, which may lag: wait up to --settle seconds for them.
        time.sleep(0.5)
        left = leftovers(daemon, all_endpoints)
        result["right_after"] = {k: (len(v) if isinstance(v, list) and k != "flow_endpoints" else v)
                                 for k, v in left.items()}
        # (flow_kinds: "port" = table-0 flows, "arp_local"/"arp_uplink" = ARP-proxy answers)
        t_settle = time.monotonic()
        # Flows of endpoints without a limit, and veths, go right after DeleteEndpoint
        # answers, on the daemon's background threads: how long they took is reported.
        while (left["flows_with_endpoint_cookie"] or left["meters"] or left["veths"]) and \
                time.monotonic() - t_settle < args.settle:
            time.sleep(0.2)
            left = leftovers(daemon, all_endpoints)
        result["flows_settled_after_s"] = C.rnd(time.monotonic() - t_settle, 1)
        alloc_keys = [k for k in C.etcd_keys(f"{daemon.prefix}/ipam/")]
        left["allocation_keys_besides_gateway"] = len(alloc_keys) - 1
        result["leftovers"] = left
        clean = not (left["ovs_ports_with_np_endpoint"] or left["endpoint_keys"] or left["veths"]
                     or left["allocation_keys_besides_gateway"] or left["flows_with_endpoint_cookie"]
                     or left["meters"])
        result["clean_after"] = clean
        result["daemon_errors"] = sum(1 for c in C.parse_calls(C.read_from(daemon.log_path, log_mark))
                                      if c["status"] != 200)
        admin.close()
        result["machine"]["loadavg_end"] = C._loadavg()
        state["finished"] = clean and not broken      # else the daemon log is kept for a look

    result["cleanup_failures"] = cleanup.failures
    result["broken"] = broken
    report(out, result)
    out.result(result)
    return 1 if broken or not result["clean_after"] or cleanup.failures else 0


def report(out: C.Out, r: dict) -> None:
    out.say(f"API latency  ({C.machine_line(r['machine'])})")
    if r["settings"].get("daemon_src", "installed package") != "installed package":
        out.say(f"daemon run from {r['settings']['daemon_src']} (not the installed package): "
                f"{r['settings'].get('daemon_package')}")
    out.say(f"subnet {r['settings']['subnet']} vlan {r['settings']['vlan']}; lifecycle = CreateEndpoint + Join + "
            "Leave + DeleteEndpoint, client side, ms")
    rows = []
    for lv in r["levels"]:
        rows.append([lv["callers"], lv["lifecycles"], lv["failed_lifecycles"], lv["lifecycles_per_s"],
                     lv["lifecycle"]["p50_ms"],
                     lv["lifecycle"]["p99_ms"], lv["baseline_transport"]["p50_ms"],
                     lv["baseline_transport"]["p99_ms"], lv["baseline_dataplane"]["p50_ms"],
                     lv["baseline_dataplane"]["p99_ms"], lv["baseline_dataplane_per_s"]])
    out.say(C.table(["callers", "lifecycles", "failed", "lifecycles/s", "p50 ms", "p99 ms", "no-op p50", "no-op p99",
                     "dataplane p50", "dataplane p99", "dataplane/s"], rows))
    out.say("")
    headers = ["method"] + [f"{h} @{lv['callers']}" for lv in r["levels"] for h in ("p50", "p99", "srv p50")]
    rows = []
    for m in ALL:
        row = [m.split(".")[1]]
        for lv in r["levels"]:
            s = lv["methods"][m]
            row += [s["p50_ms"], s["p99_ms"], s["server_p50_ms"]]
        rows.append(row)
    out.say(C.table(headers, rows))
    out.say("")
    out.say("baselines at the same concurrency: no-op = NetworkDriver.GetCapabilities through the socket; "
            "dataplane = veth pair + OVS access port made and removed in this process (netplugin.dataplane, "
            "one shared OVSDB connection), no HTTP, no etcd")
    out.say("srv p50 = the daemon's own ms= log figure (handler time, without the socket round trip)")
    out.say("dataplane steps, p50 ms: " + "; ".join(
        f"@{lv['callers']}: " + ", ".join(f"{k} {v['p50_ms']}" for k, v in lv["baseline_dataplane_steps"].items())
        for lv in r["levels"]))
    for lv in r["levels"]:
        if lv["failed_lifecycles"] or lv["dataplane_baseline_failures"]:
            out.say(f"@{lv['callers']}: {lv['failed_lifecycles']} lifecycle(s) failed (torn down, left out of the "
                    f"figures), {lv['dataplane_baseline_failures']} dataplane baseline failure(s); first: "
                    f"{(lv['failures'] or lv['dataplane_failures'])[0][:300]}")
    left = r["leftovers"]
    out.say(f"left afterwards: {len(left['ovs_ports_with_np_endpoint'])} OVS ports with np-endpoint, "
            f"{len(left['endpoint_keys'])} endpoint keys, {len(left['veths'])} veths, "
            f"{left['allocation_keys_besides_gateway']} allocations besides the gateway, "
            f"{left['flows_with_endpoint_cookie']} endpoint flows, {left['meters']} meters -> "
            f"{'clean' if r['clean_after'] else 'NOT CLEAN'}; daemon non-200 replies: {r['daemon_errors']}")
    ra = r["right_after"]
    if ra["flows_with_endpoint_cookie"] or ra["meters"] or ra["veths"]:
        out.say(f"0.5 s after the last DeleteEndpoint: {ra['flows_with_endpoint_cookie']} endpoint flows, "
                f"{ra['meters']} meters and {ra['veths']} veths were still there (flow kinds {ra['flow_kinds']}); "
                f"waited {r['flows_settled_after_s']} s for them")
    if r["leftovers"]["flows_with_endpoint_cookie"]:
        out.say(f"endpoint flows left at the end, by endpoint id: {', '.join(r['leftovers']['flow_endpoints'])} "
                "(f100d... = the dataplane baseline's own)")
    C.say_cleanup_failures(out, r)


if __name__ == "__main__":
    C.exit_with(main)
