#!/usr/bin/env python3
"""Reconcile scan time: one ``Reconciler.run(dry_run=True, grace=0)`` of a host
with 1,000 and with 10,000 endpoints, on real etcd and a real OVSDB, with the
time split into its parts (etcd reads, the OVS port list, the veth list).

What is real and what is not:

  etcd     real (127.0.0.1:2379), through netplugin's own EtcdKV and Store, on a
           private prefix /netplugin/bench-rec-<hex>. Per endpoint: an Endpoint
           record and its Allocation (stamped with the endpoint id), written
           directly in batched transactions (64 endpoints, 128 ops, per txn),
           plus one network and one binding of this host.
  OVS      real ovsdb-server, read by netplugin's Switch (ovsdbapp), one access
           port per endpoint on a netdev bridge 'nprec<4 hex>', with the tag and
           the external_ids np-endpoint/np-network/np-host the driver sets,
           created with ovs-vsctl (argument lists, --batch ports per call).
           Two OVSDBs:
             system   the machine's own ovsdb-server with ovs-vswitchd attached;
                      only for sizes up to --system-ovs-max (default 1,000)
             private  a separate ovsdb-server on a fresh vswitch.ovsschema DB in
                      a temporary folder, with no ovs-vswitchd; every size
           The interfaces are of type 'patch' with a peer that does not exist,
           so they need no kernel device. Why not 10,000 ports on the shared
           vswitchd: measured on this machine, 10,000 no-type ports (no device)
           took 164 s to add, 58 s of ovs-vswitchd CPU and ~490 MB of its log
           (it retries and logs every missing device on every reconfigure);
           10,000 patch ports added in 8 s but adding and deleting them cost
           ovs-vswitchd ~110 s of CPU, with multi-second poll loops that stall
           every other ovs-vsctl on the machine. The reconciler only reads the
           OVSDB, never ovs-vswitchd, so the private server measures the same
           code path; the 1,000 run on both shows how close they are.
  veths    real veth pairs listed by netplugin's Links, but in a private
           network namespace 'nprec-<hex>' holding the host end of one pair per
           endpoint (np + 11 hex, as the driver names it), whose other end
           (nc...) sits in a second namespace 'nprec-<hex>-c' as it would in
           the containers. So the scan sees a consistent host, other suites'
           link listings in the root namespace are not slowed, and no other
           reconciler on the machine takes these veths for its leaks. Links
           lists names from sysfs: a sysfs of the private namespace is mounted
           in a temporary folder (nsenter --net ... mount -t sysfs) and Links
           reads its class/net, the same directory listing as /sys/class/net.
  Docker   a fake view that says every endpoint is attached to a running
           container, so nothing is released (and a dry run anyway).

Expected findings: none. A finding means the scan saw something inconsistent;
the counts are printed.

How the pass reads the OVSDB (--variants, all three by default, in the same run):
  select   what netplugin-reconcile ships: Switch(snapshot_reads=True), one select
           transaction of the needed columns per read (dataplane/ovsdb_select.py);
  idl-c    the way before it, ovsdbapp's replica of four whole tables, with the
           ovs package's C JSON parser (ovs._json, see docs/dependencies.md);
  idl-py   the same with the ovs package's pure-Python parser (what a venv without
           ovs._json does).
The OVS time is split into ovs_connect (the replica's connection and first dump),
ovs_check (bridge_exists), ovs_list (list_ports), ovs_bridges (port_bridges), and,
inside those three, (select): the select transactions' transfer and decode.

Each size is measured --runs times "cold" (new EtcdKV, Switch and Links per run,
as each netplugin-reconcile invocation is a new process: the OVSDB connection
and its full initial sync are part of the time) and --runs times "warm" (the
same clients again). Parts are timed by wrapping the calls: etcd_read (range
reads and gets: endpoints, networks, bindings, allocations, the lock owner and
counters), etcd_write (lease, lock, report, counters), ovs_list
(Switch.list_ports), veth_list (Links.list_names), docker (the fake: ~0).
'other' is the rest of the wall time (Python: decoding records, comparing).

The clients are made exactly as netplugin-reconcile makes them, with the
shipped settings: backends.make_store, and backends.make_switch on
backends.reconcile_settings (the reconciler's OVSDB connect patience,
reconcile_ovs_connect_timeout). No limit is raised by the bench; a scan that
fails is reported as failed.

Before the scans, the biggest etcd read (Store.list_endpoints, every endpoint
record of the cluster) is also made alone with the shipped client, since the
scan reads the OVSDB first and an OVSDB failure would hide an etcd one.

Prints figures and never passes or fails on time. Exit 0 when the run completed
and cleaned up; 1 when setup or cleanup broke, or something made was still
there afterwards; 130 on Ctrl-C. Everything made is removed on the way out: the
bridge (system OVSDB), the private ovsdb-server and its folder, the sysfs mount,
the two network namespaces (and with them the veths), the etcd prefix; then
each is checked to be gone.

    sudo .venv/bin/python bench/bench_reconcile.py [--sizes 1000,10000] [--runs 3] [--variants ...] [--json]
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from tests.harness.ovsdb import PrivateOvsdb

EPS_PER_TXN = 42                    # 3 puts each: etcd's default --max-txn-ops is 128
SYSTEM_DB = "unix:/var/run/openvswitch/db.sock"
PARTS = ("etcd_read", "etcd_write", "ovs_connect", "ovs_check", "ovs_list", "ovs_bridges", "veth_list", "docker",
         "other")
NESTED = ("ovs_select",)            # inside the ovs_* parts: not added again into 'other'
# How the pass reads the OVSDB: 'select' is what netplugin-reconcile ships (Switch
# snapshot_reads: one select of the needed columns per read, stdlib JSON); the 'idl'
# variants are the way before it (ovsdbapp's replica of four whole tables), with the
# ovs package's C JSON parser ('idl-c', when ovs._json imports) and without ('idl-py').
VARIANTS = ("idl-py", "idl-c", "select")


def parse_args(argv=None):
    p = C.parser(__doc__)
    p.add_argument("--sizes", default="1000,10000", help="comma-separated endpoint counts (default 1000,10000)")
    p.add_argument("--runs", type=int, default=3, help="cold and warm scans per size and OVSDB (default 3 each)")
    p.add_argument("--system-ovs-max", type=int, default=1000,
                   help="also use the machine's own OVSDB (ovs-vswitchd attached) for sizes up to this (default 1000)")
    p.add_argument("--batch", type=int, default=1000, help="ports per ovs-vsctl call (default 1000)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"OVSDB read variants to measure, in this order (default {','.join(VARIANTS)})")
    return C.parse(p, argv)


# -- timing wrappers ------------------------------------------------------------------------------

class Parts:
    def __init__(self):
        self.secs = {k: 0.0 for k in PARTS + NESTED}
        self.calls = {k: 0 for k in PARTS + NESTED}

    def wrap(self, obj, method: str, part: str) -> None:
        real = getattr(obj, method)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                self.secs[part] += time.perf_counter() - t0
                self.calls[part] += 1
        setattr(obj, method, timed)


class LiveView:
    """Docker's view: every endpoint of this host attached to a running container."""

    def __init__(self, live: dict[str, dict]):
        self.live = live

    def live_endpoints(self, docker_networks):
        return dict(self.live)


def mount_netns_sysfs(ns: str, folder: Path) -> None:
    """A sysfs of network namespace ns at folder: its class/net lists ns's links."""
    folder.mkdir(parents=True, exist_ok=True)
    C.run("nsenter", f"--net=/run/netns/{ns}", "mount", "-t", "sysfs", "nprec-sysfs", str(folder))


def unmount(folder: Path) -> None:
    if os.path.ismount(folder):
        C.run("umount", str(folder))
    folder.rmdir()


def ns_links_class(ns: str, sysfs: Path):
    """Links that list the links of network namespace ns: through its sysfs at
    sysfs (Links reads names from SYS_CLASS_NET), and, where it falls back to
    netlink or changes links, with its netlink socket in ns: this thread
    enters ns (setns) for the duration of one 'with _ipr()' and then returns.
    pyroute2's NetNS is not used: it forks a helper, which both adds its own
    cost to the listing and would inherit this script's signal handlers."""
    import contextlib
    import ctypes

    from pyroute2 import IPRoute

    from netplugin.dataplane.links import Links

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    clone_newnet = 0x40000000

    def setns(fd: int) -> None:
        if libc.setns(fd, clone_newnet) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    import netplugin.dataplane.links as links_module
    if hasattr(links_module, "SYS_CLASS_NET"):
        links_module.SYS_CLASS_NET = str(sysfs / "class" / "net")

    class NsLinks(Links):
        @contextlib.contextmanager
        def _ipr(self):
            with open(f"/run/netns/{ns}") as target, open("/proc/thread-self/ns/net") as mine:
                setns(target.fileno())
                try:
                    with IPRoute() as ipr:
                        yield ipr
                finally:
                    setns(mine.fileno())
    return NsLinks


# -- setup -----------------------------------------------------------------------------------------------

def write_records(store, net, host: str, docker_net: str, n: int, out: C.Out) -> list:
    """n endpoint records with their stamped allocations, in batched transactions."""
    import netaddr

    from netplugin.dataplane.links import veth_names
    from netplugin.kv import Put
    from netplugin.model import ALLOC_ENDPOINT, Allocation, Endpoint, mac_for

    subnet = netaddr.IPNetwork(net.subnet)
    created = time.time() - 3600
    eps, seen_ports = [], set()
    while len(eps) < n:
        eid = secrets.token_hex(32)
        port, peer = veth_names(eid)
        if port in seen_ports:
            continue
        seen_ports.add(port)
        offset = 2 + len(eps)                               # .0 network, .1 gateway
        ip = str(netaddr.IPAddress(subnet.first + offset))
        eps.append((Endpoint(id=eid, network=net.id, docker_network=docker_net, host=host, ip=ip,
                             prefixlen=subnet.prefixlen, mac=mac_for(ip), port=port, peer=peer, vlan=net.vlan,
                             network_name=net.name, sandbox=f"/var/run/docker/netns/{eid[:12]}", created=created),
                    offset, Allocation(ip, ALLOC_ENDPOINT, host, endpoint=eid, network=net.id, created=created)))
    t0 = time.monotonic()
    for i in range(0, n, EPS_PER_TXN):
        ops = []
        for ep, offset, alloc in eps[i:i + EPS_PER_TXN]:
            ops.append(Put(store.k_endpoint_at(ep), ep.to_json()))
            ops.append(Put(store.k_locator(ep.id), f"{ep.network}/{ep.host}"))
            ops.append(Put(store.k_alloc(net.subnet, offset), alloc.to_json()))
        if not store.kv.txn([], ops):
            raise RuntimeError("an unconditional etcd transaction was refused")
    out.progress(f"wrote {n} endpoint records and allocations in {time.monotonic() - t0:.1f} s")
    return [ep for ep, _, _ in eps]


def vsctl(db: str, *args: str, timeout: float = 600) -> None:
    wait = ["--no-wait"] if db != SYSTEM_DB else ["--timeout=600"]
    C.run("ovs-vsctl", f"--db={db}", *wait, *args, timeout=timeout)


def add_bridge_and_ports(db: str, bridge: str, eps: list, batch: int, out: C.Out) -> float:
    """The bridge, then one access port per endpoint, many per ovs-vsctl call.

    Generic create/add commands: ovs-vsctl's add-port rebuilds its whole cache
    after every port, which makes thousands of ports in one call quadratic."""
    vsctl(db, "add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev")
    t0 = time.monotonic()
    for i in range(0, len(eps), batch):
        args, refs = [], []
        for j, ep in enumerate(eps[i:i + batch]):
            ext = [f"external_ids:np-endpoint={ep.id}", f"external_ids:np-network={ep.network}",
                   f"external_ids:np-host={ep.host}"]
            args += ["--", f"--id=@i{j}", "create", "Interface", f"name={ep.port}", "type=patch",
                     f"options:peer={ep.port}-none", *ext,
                     "--", f"--id=@p{j}", "create", "Port", f"name={ep.port}", f"interfaces=@i{j}",
                     f"tag={ep.vlan}", "vlan_mode=access", *ext]
            refs.append(f"@p{j}")
        vsctl(db, *args, "--", "add", "Bridge", bridge, "ports", *refs)
    secs = time.monotonic() - t0
    out.progress(f"added {len(eps)} ports to {bridge} ({'system' if db == SYSTEM_DB else 'private'} OVSDB) "
                 f"in {secs:.1f} s")
    return secs


def make_netns(ns: str, peers_ns: str, eps: list, out: C.Out) -> None:
    """One veth pair per endpoint: the host end (np...) in ns, the container end
    (nc...) in peers_ns, as on a host whose containers hold the other ends."""
    C.run("ip", "netns", "add", ns)
    C.run("ip", "netns", "add", peers_ns)
    t0 = time.monotonic()
    lines = "".join(f"link add {ep.port} type veth peer name {ep.peer} netns {peers_ns}\n" for ep in eps)
    proc = subprocess.run(["ip", "-n", ns, "-batch", "-"], input=lines, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {proc.stderr.strip()[-500:]}")
    out.progress(f"made {len(eps)} veth pairs (host ends in netns {ns}) in {time.monotonic() - t0:.1f} s")


# -- one scan --------------------------------------------------------------------------------------------

class Scanner:
    """The clients exactly as netplugin-reconcile makes them, shipped settings."""

    def __init__(self, cfg, ns: str, sysfs: Path, live: dict, variant: str = "select"):
        from netplugin.wiring import reconcile_settings
        self.cfg, self.ns, self.sysfs, self.live = reconcile_settings(cfg), ns, sysfs, live
        self.variant = variant
        self.clients = None

    def _clients(self, fresh: bool):
        from netplugin.wiring import make_store, make_switch
        if fresh or self.clients is None:
            self.close()
            self.clients = (make_store(self.cfg), make_switch(self.cfg, snapshot_reads=self.variant == "select"),
                            ns_links_class(self.ns, self.sysfs)())
        return self.clients

    def close(self) -> None:
        if self.clients is not None:
            store, switch, _ = self.clients
            switch.close()
            store.kv.close()
            self.clients = None

    def scan(self, fresh: bool) -> dict:
        from netplugin.background import Background
        from netplugin.reconcile import Reconciler
        from netplugin.release import Releaser
        from netplugin.wiring import make_flows, make_limits
        store, switch, links = self._clients(fresh)
        parts = Parts()
        # wrap per scan on thin proxies so the wrappers do not pile up on reused clients
        kv_proxy = _Proxy(store.kv)
        switch_proxy, links_proxy, view = _Proxy(switch), _Proxy(links), LiveView(self.live)
        for method in ("get", "get_prefix", "count_prefix", "snapshot"):
            parts.wrap(kv_proxy, method, "etcd_read")
        for method in ("txn", "grant_lease", "revoke_lease", "refresh_lease"):
            parts.wrap(kv_proxy, method, "etcd_write")
        parts.wrap(switch_proxy, "list_ports", "ovs_list")
        parts.wrap(switch_proxy, "port_bridges", "ovs_bridges")
        parts.wrap(switch_proxy, "bridge_exists", "ovs_check")
        parts.wrap(links_proxy, "list_names", "veth_list")
        # the IDL's connection and first dump, and the select's transfer and decode, inside the ovs_* parts
        parts.wrap(switch, "api", "ovs_connect")
        import netplugin.dataplane.ovsdb_select as ovsdb_select
        real_select = ovsdb_select.select
        parts.wrap(ovsdb_select, "select", "ovs_select")
        parts.wrap(view, "live_endpoints", "docker")
        from netplugin.hostview import HostView
        from netplugin.store import Store
        tstore = Store(kv_proxy, store.prefix)
        # as wiring.make_reconciler builds them, over the timed proxies (a dry run changes no limit)
        hostview = HostView(tstore, self.cfg.host_id)       # never started, as in make_reconciler
        limits = make_limits(self.cfg, tstore, hostview, switch_proxy, make_flows(self.cfg), Background())
        releaser = Releaser(self.cfg, tstore, hostview, links_proxy, switch_proxy, view, limits)
        t0 = time.perf_counter()
        try:
            report = Reconciler(self.cfg, tstore, links_proxy, switch_proxy, view, releaser, limits).run(
                dry_run=True, grace=0)
        except Exception as exc:  # noqa: BLE001 - a failed scan is a result
            self.close()
            return {"error": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}",
                    "wall": time.perf_counter() - t0}
        finally:
            ovsdb_select.select = real_select
            vars(switch).pop("api", None)               # the class's method again
        wall = time.perf_counter() - t0
        secs = dict(parts.secs)
        # ovs_connect happens inside the first ovs_* call: shown apart, taken out of that call's part
        first = "ovs_check" if parts.calls["ovs_check"] else "ovs_list"
        secs[first] = max(0.0, secs[first] - secs["ovs_connect"])
        secs["other"] = max(0.0, wall - sum(v for k, v in secs.items() if k not in ("other", *NESTED)))
        return {"wall": wall, "parts": secs, "calls": {k: v for k, v in parts.calls.items() if v},
                "status": report["status"], "findings": len(report["findings"]), "counts": report["counts"]}


class _Proxy:
    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        return getattr(self._target, name)


def probe_etcd(cfg) -> dict:
    """The reconciler's biggest etcd read, alone: every endpoint record
    (Store.list_endpoints), with the client as shipped; and the reply's size."""
    from netplugin.wiring import make_store
    out: dict = {"reply_bytes": 0}
    store = make_store(cfg)
    t0 = time.perf_counter()
    try:
        out["endpoints_read"] = len(store.list_endpoints())
        out["shipped_s"] = round(time.perf_counter() - t0, 3)
        items = store.kv.get_prefix(f"{cfg.etcd_prefix}/net-endpoints/")
        out["reply_bytes"] = sum(len(i.key) + len(i.value) for i in items)
    except Exception as exc:  # noqa: BLE001 - a failed read is a result
        out["shipped_error"] = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    finally:
        store.kv.close()
    return out


def summarize(scans: list[dict]) -> dict:
    ok = [s for s in scans if "error" not in s]
    out = {"runs": len(scans), "failed": len(scans) - len(ok)}
    if scans and not ok:
        out["error"] = scans[0]["error"]
        out["wall_until_error_s"] = round(statistics.median(s["wall"] for s in scans), 3)
        return out
    out["wall_s"] = round(statistics.median(s["wall"] for s in ok), 3)
    out["wall_min_s"] = round(min(s["wall"] for s in ok), 3)
    out["wall_max_s"] = round(max(s["wall"] for s in ok), 3)
    out["parts_s"] = {k: round(statistics.median(s["parts"][k] for s in ok), 3) for k in PARTS + NESTED}
    out["findings"] = ok[-1]["findings"]
    out["counts"] = ok[-1]["counts"]
    out["calls"] = ok[-1]["calls"]
    return out


def use_parser(variant: str) -> str:
    """Make the ovs package parse JSON as the variant says; returns the parser in use."""
    import ovs.json
    if variant == "idl-py":
        ovs.json.PARSER = ovs.json.PARSER_PY
    elif variant == "idl-c":
        try:
            import ovs._json
        except ImportError:
            return "unavailable"
        ovs.json.PARSER = ovs.json.PARSER_C
    return ovs.json.PARSER if variant != "select" else "stdlib json"


def measure(cfg, ns: str, sysfs: Path, live: dict, runs: int, out: C.Out, label: str,
            variant: str = "select") -> dict:
    parser = use_parser(variant)
    if parser == "unavailable":
        out.progress(f"{label}: skipped, ovs._json does not import (see docs/dependencies.md)")
        return {"parser": parser}
    scanner = Scanner(cfg, ns, sysfs, live, variant)
    result: dict = {"parser": parser}
    try:
        for mode, fresh in (("cold", True), ("warm", False)):
            scans = []
            if mode == "warm":
                first = scanner.scan(fresh=True)           # connect once, untimed
                if "error" in first:
                    scans.append(first)
            for _ in range(runs if not scans else 0):
                scans.append(scanner.scan(fresh=fresh))
                s = scans[-1]
                out.progress(f"{label} {mode}: " + (f"FAILED after {s['wall']:.2f} s: {s['error']}" if "error" in s
                                                    else f"{s['wall']:.2f} s, {s['findings']} finding(s)"))
                if "error" in s:
                    break
            result[mode] = summarize(scans)
            if "error" in result[mode]:
                break
    finally:
        scanner.close()
    return result


# -- main ----------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    out = C.Out(args.json)

    from netplugin import networks
    from netplugin.config import Config
    from netplugin.kv import EtcdKV
    from netplugin.model import Binding
    from netplugin.store import Store

    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: choose from {', '.join(VARIANTS)}")
    info = C.machine()
    result: dict = {"benchmark": "reconcile", "machine": info,
                    "command": " ".join([Path(sys.executable).name] + sys.argv),
                    "settings": {"sizes": sizes, "runs": args.runs, "system_ovs_max": args.system_ovs_max,
                                 "batch": args.batch, "variants": variants},
                    "results": []}
    finished = False
    leftovers: list[str] = []
    with C.Cleanup(out) as cleanup:
        for n in sizes:
            rtag = secrets.token_hex(4)
            prefix = f"/netplugin/bench-rec-{rtag}"
            host = f"bench-rec-{rtag}"
            bridge = "nprec" + secrets.token_hex(2)
            ns = f"nprec-{rtag}"
            kv = EtcdKV([C.ETCD], timeout=30.0)
            store = Store(kv, prefix)
            cleanup.add(f"delete etcd prefix {prefix}", lambda p=prefix: C.etcd_delete_prefix(p + "/"))
            cleanup.add("close the etcd client", kv.close)
            subnet = f"10.{C.pick_octets(1)[0]}.0.0/16"
            net = networks.create(store, f"bench-rec-{rtag}", subnet, C.pick_vlan())
            docker_net = C.hex64()
            store.put_binding(Binding(docker_net, net.id, host, pool=subnet))
            eps = write_records(store, net, host, docker_net, n, out)
            live = {ep.id: {"container": C.hex64(), "name": f"c{i}", "network": docker_net, "ip": ep.ip,
                            "mac": ep.mac, "sandbox": 1000 + i} for i, ep in enumerate(eps)}
            for name in (ns, ns + "-c"):
                cleanup.add(f"delete netns {name}",
                            lambda name=name: C.run("ip", "netns", "del", name) if Path(f"/run/netns/{name}").exists()
                            else None)
            make_netns(ns, ns + "-c", eps, out)
            sysfs = Path(tempfile.mkdtemp(prefix="nprec-sysfs-"))
            cleanup.add(f"unmount and remove {sysfs}", lambda f=sysfs: unmount(f))
            mount_netns_sysfs(ns, sysfs)

            dbs = []
            folder = Path(tempfile.mkdtemp(prefix="nprec-ovsdb-"))
            cleanup.add(f"remove {folder}", lambda f=folder: shutil.rmtree(f, ignore_errors=True))
            private = PrivateOvsdb(folder)
            cleanup.add("stop the private ovsdb-server", private.stop)
            private.start()
            dbs.append(("private", private.remote, add_bridge_and_ports(private.remote, bridge, eps, args.batch, out)))
            if n <= args.system_ovs_max:
                cleanup.add(f"delete bridge {bridge} (system OVSDB)",
                            lambda b=bridge: C.run("ovs-vsctl", "--timeout=600", "--if-exists", "del-br", b,
                                                   timeout=700))
                dbs.append(("system", SYSTEM_DB, add_bridge_and_ports(SYSTEM_DB, bridge, eps, args.batch, out)))
                time.sleep(2)                           # let ovs-vswitchd settle before timing

            probe = probe_etcd(Config(etcd_endpoints=[C.ETCD], etcd_prefix=prefix, host_id=host))
            out.progress(f"{n} eps: list_endpoints with the shipped etcd client: "
                         + (f"{probe['shipped_s']:.3f} s" if "shipped_s" in probe else f"FAILED: {probe['shipped_error']}")
                         + f" (reply ~{probe['reply_bytes'] / 1e6:.2f} MB of keys and values)")
            result.setdefault("etcd_probe", {})[str(n)] = probe
            for db_name, remote, ports_secs in dbs:
                cfg = Config(etcd_endpoints=[C.ETCD], etcd_prefix=prefix, host_id=host, bridge=bridge,
                             datapath_type="netdev", ovsdb=remote).validate()
                row = {"endpoints": n, "ovsdb": db_name, "setup_ports_s": round(ports_secs, 2)}
                for variant in variants:
                    row[variant] = measure(cfg, ns, sysfs, live, args.runs, out,
                                           f"{n} eps, {db_name} OVSDB, {variant}", variant)
                result["results"].append(row)
            if n <= args.system_ovs_max:
                t0 = time.monotonic()
                C.run("ovs-vsctl", "--timeout=600", "--if-exists", "del-br", bridge, timeout=700)
                out.progress(f"deleted {bridge} from the system OVSDB in {time.monotonic() - t0:.1f} s")
            cleanup.run()                               # this size's things, before the next size
            leftovers += left_behind(prefix, bridge, ns, sysfs)
        finished = True
    result["cleanup_failures"] = cleanup.failures
    result["leftovers"] = leftovers
    report(result, out)
    out.say("left behind: " + ("; ".join(leftovers) if leftovers else "nothing (bridge, netns, sysfs mount, "
                                                                         "etcd prefix checked)"))
    out.result(result)
    return 0 if finished and not cleanup.failures and not leftovers else 1


def left_behind(prefix: str, bridge: str, ns: str, sysfs: Path) -> list[str]:
    """What of one size's things is still there after its cleanup."""
    found = []
    if C.run("ovs-vsctl", "br-exists", bridge, check=False).returncode == 0:
        found.append(f"bridge {bridge}")
    for name in (ns, ns + "-c"):
        if Path(f"/run/netns/{name}").exists():
            found.append(f"netns {name}")
    if sysfs.exists():
        found.append(f"folder {sysfs}")
    if C.etcd_keys(prefix + "/"):
        found.append(f"etcd keys under {prefix}/")
    return found


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(result: dict, out: C.Out) -> None:
    out.say(C.machine_line(result["machine"]))
    rows = []
    for r in result["results"]:
        for variant in VARIANTS:
            if variant not in r:
                continue
            if r[variant].get("parser") == "unavailable":
                rows.append([f"{r['endpoints']:>6} {r['ovsdb']:<7} {variant:<6}", "n/a"] + [""] * 10
                            + ["ovs._json does not import"])
            for mode in ("cold", "warm"):
                s = r[variant].get(mode)
                if s is None:
                    continue
                label = f"{r['endpoints']:>6} {r['ovsdb']:<7} {variant:<6} {mode:<4}"
                if "error" in s:
                    rows.append([label, "FAILED"] + [""] * 10 + [s["error"][:90]])
                    continue
                p = s["parts_s"]
                rows.append([label, _fmt(s["wall_s"]), _fmt(p["etcd_read"]), _fmt(p["etcd_write"]),
                             _fmt(p["ovs_connect"]), _fmt(p["ovs_check"]), _fmt(p["ovs_list"]),
                             _fmt(p["ovs_select"]), _fmt(p["ovs_bridges"]), _fmt(p["veth_list"]), _fmt(p["other"]),
                             f"{_fmt(s['wall_min_s'])}-{_fmt(s['wall_max_s'])}",
                             f"{s['findings']} {s['counts'] or ''}"])
    for n, probe in result.get("etcd_probe", {}).items():
        out.say(f"{n:>6} endpoints: Store.list_endpoints with the shipped etcd client: "
                + (f"{probe['shipped_s']:.3f} s" if "shipped_s" in probe else f"FAILED ({probe['shipped_error'][:200]})")
                + f"; reply ~{probe['reply_bytes'] / 1e6:.2f} MB")
    out.say(C.table(["size ovsdb variant mode", "wall s", "etcd rd", "etcd wr", "ovs connect", "ovs check",
                     "ovs list", "(select)", "ovs bridges", "veth list", "other", "wall range", "findings"],
                    rows, aligns="lrrrrrrrrrrll"))
    out.say("(select): the select transactions' transfer and decode, inside ovs check, ovs list and ovs bridges")


if __name__ == "__main__":
    C.exit_with(main)
