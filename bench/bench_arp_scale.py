#!/usr/bin/env python3
"""ARP-proxy answers at scale on one switch: install N answer flows, change one
among them, read the table back, and ask for an address, at N = 100 (the
baseline), 1,000, 10,000 and 50,000, on the userspace datapath (netdev).

Everything goes through the product's own ``Flows`` class (netplugin/dataplane/
flows.py), so what is timed is the product's path: ``arp_answer`` builds the
flow texts, ``add_flows`` installs them in ONE ``ovs-ofctl --bundle add-flows``
run (what ``ArpProxy.resync`` does on a cold start: one call with every new
answer), ``add_flows([one])`` and ``delete_cookies([one])`` are one change
(what a pass woken by one endpoint's change does), and ``cookies(TABLE_ARP)``
(a dump of table 10) is the table read of every full pass (at least every 10 s).
No daemon and no etcd: the records the answers come from are not the subject.

Per size, on a fresh bridge of its own (npbenchscale0, netdev, removed after
each size and at the end) with the product's pipeline:

  install   the N answers (one VLAN: the worst case of one network spanning the
            fleet), first with the product's ``ovs_timeout`` (5 s: ovs-ofctl's
            own ``--timeout`` and the subprocess deadline); if that fails, the
            failure is recorded and the install timed again with a long timeout.
            Table 10 is then checked to hold exactly the N cookies. Also
            ovs-vswitchd's CPU during the install.
  memory    ovs-vswitchd's VmRSS (/proc/<pid>/status) before and after, and
            the rule count from ``ovs-appctl memory/show``. ovs-vswitchd gives
            the memory of a removed bridge back lazily (seen: some minutes
            later), so a size may reuse what the previous one freed and its
            delta is then a lower bound; "after" minus the RSS at the start of
            the run is the upper bound.
  idle CPU  ovs-vswitchd's utime+stime (/proc/<pid>/stat) over --idle-seconds
            with table 10 empty (the control) and again with the N answers in.
            ovs-vswitchd is shared with every other suite on the machine.
  change    --changes times: add one answer (time), delete one answer (time);
            table 10 is checked again afterwards.
  full pass ``cookies(TABLE_ARP)`` --dumps times: wall time (median), ovs-vswitchd's
            CPU during it, ovs-ofctl's CPU (children) and this process's CPU
            (the parse), each the mean (CPU comes in 10 ms ticks); and, as the
            cheap check a pass could start with, ``ovs-ofctl dump-aggregate``
            of table 10's netplugin cookies (a count, checked against N).
  latency   from a network namespace (an access port of the VLAN, its table-0
            flow made by ``Flows.set_port``), a raw socket sends scapy-built ARP
            requests, as bench_arp.py asks: for each of --targets answers picked
            at random, the FIRST request (nothing cached in the datapath: it goes
            up to the OpenFlow classifier with its N rules), then --repeat more
            (the datapath's cached megaflow). Every reply is checked (sender =
            the answer's address and MAC, addressed to the asker). Asked twice:
            after the quiet idle window, and right after the changes and the
            full-pass reads (other targets, so their first request is cold
            again). The datapath's upcall and megaflow-hit counters
            (dpif-netdev/pmd-stats-show) show which requests went up.

    sudo .venv/bin/python bench/bench_arp_scale.py [--sizes 100,1000,10000,50000]
        [--idle-seconds 10] [--changes 10] [--dumps 5] [--targets 30] [--repeat 10] [--json]

Prints figures; never passes or fails on time. Exit 1 when the setup broke,
table 10 did not hold exactly the expected answers, a reply was wrong, more
than a tenth of the requests went unanswered, ovs-vswitchd was restarted
during a size, or cleanup failed.
"""

from __future__ import annotations

import json
import os
import random
import resource
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from netplugin.config import Config
from netplugin.dataplane.flows import KIND_ARP_LOCAL, TABLE_ARP, Flows, cookie_for
from netplugin.errors import NetpluginError

BRIDGE = "npbenchscale0"
ASKER_HOST, ASKER_PEER = "npbscale-h", "npbscale-c"
PIDFILE = "/var/run/openvswitch/ovs-vswitchd.pid"
PRODUCT_TIMEOUT = Config().ovs_timeout
LONG_TIMEOUT = 600.0
TICK = os.sysconf("SC_CLK_TCK")


# -- the asker: runs inside the namespace ----------------------------------------------------

def probe_main(argv: list[str]) -> None:
    """--probe IFACE SMAC SIP REPEAT IP,MAC...: prints one JSON object.

    The first target only warms the socket and the asker's path; for each other
    target, the first request (cold) and then REPEAT more (warm)."""
    import socket

    from scapy.layers.l2 import ARP, Ether
    iface, smac, sip, repeat, *targets = argv
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((iface, 0))
    me_ip = socket.inet_aton(sip)
    me_mac = bytes.fromhex(smac.replace(":", ""))
    result: dict = {"cold_us": [], "warm_us": [], "lost": 0, "wrong": 0}

    def drain() -> None:
        s.setblocking(False)
        try:
            while True:
                s.recv(2048)
        except BlockingIOError:
            pass
        s.setblocking(True)

    def ask(tip: str, tmac: str) -> float | None:
        req = bytes(Ether(src=smac, dst="ff:ff:ff:ff:ff:ff") /
                    ARP(op=1, hwsrc=smac, psrc=sip, hwdst="00:00:00:00:00:00", pdst=tip))
        want_ip, want_mac = socket.inet_aton(tip), bytes.fromhex(tmac.replace(":", ""))
        drain()
        s.settimeout(0.5)
        t0 = time.perf_counter()
        s.send(req)
        while True:
            try:
                data = s.recv(2048)
            except TimeoutError:
                result["lost"] += 1
                return None
            # Ethernet(14) + ARP: op at 20, sha 22-28, spa 28-32, tha 32-38, tpa 38-42
            if len(data) < 42 or data[12:14] != b"\x08\x06" or data[20:22] != b"\x00\x02" \
                    or data[38:42] != me_ip:
                continue
            if data[28:32] != want_ip or data[22:28] != want_mac or data[6:12] != want_mac \
                    or data[0:6] != me_mac or data[32:38] != me_mac:
                result["wrong"] += 1
                continue
            return (time.perf_counter() - t0) * 1e6

    for i, target in enumerate(targets):
        tip, tmac = target.split(",")
        first = ask(tip, tmac)
        if i == 0:
            continue
        if first is not None:
            result["cold_us"].append(first)
        for _ in range(int(repeat)):
            again = ask(tip, tmac)
            if again is not None:
                result["warm_us"].append(again)
    print(json.dumps(result))


# -- ovs-vswitchd ------------------------------------------------------------------------------

def vswitchd_pid() -> int:
    return int(Path(PIDFILE).read_text().strip())


def vswitchd_cpu_s(pid: int) -> float:
    """utime + stime of ovs-vswitchd (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK       # fields 14 and 15 of stat(5)


def vswitchd_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in ovs-vswitchd's status")


def vswitchd_rules() -> int | None:
    out = C.run("ovs-appctl", "memory/show", check=False).stdout
    for word in out.split():
        if word.startswith("rules:"):
            return int(word.split(":")[1])
    return None


def idle_cpu(pid: int, seconds: float) -> float:
    """ovs-vswitchd's CPU over `seconds` of doing nothing here, in % of one core."""
    c0, t0 = vswitchd_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (vswitchd_cpu_s(pid) - c0) / (time.monotonic() - t0)


# -- the bridge under test -------------------------------------------------------------------

def vsctl(*args: str) -> None:
    C.run("ovs-vsctl", "--timeout=30", *args)


def remove_all(netns: list[str]) -> None:
    for ns in netns:
        C.run("ip", "netns", "del", ns, check=False)
    netns.clear()
    C.run("ip", "link", "del", ASKER_HOST, check=False)
    C.run("ovs-vsctl", "--timeout=30", "--if-exists", "del-br", BRIDGE)


def fresh_bridge(vlan: int, octet: int, netns: list[str]) -> tuple[Flows, dict, str]:
    """A new netdev bridge with the product's pipeline and one asker: an access
    port of the VLAN whose other end is in a namespace, with its table-0 flow."""
    remove_all(netns)
    vsctl("add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
          "protocols=OpenFlow10,OpenFlow13")
    flows = Flows(BRIDGE, PRODUCT_TIMEOUT)
    flows.ensure_pipeline()
    C.run("ip", "link", "add", ASKER_HOST, "type", "veth", "peer", "name", ASKER_PEER)
    C.run("ip", "link", "set", ASKER_HOST, "up")
    vsctl("add-port", BRIDGE, ASKER_HOST, "tag=" + str(vlan))
    ofport = 0
    deadline = time.monotonic() + 30
    while ofport <= 0:
        r = C.run("ovs-vsctl", "--timeout=10", "get", "Interface", ASKER_HOST, "ofport", check=False)
        ofport = int(r.stdout.strip()) if r.stdout.strip().lstrip("-").isdigit() else 0
        if ofport <= 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ASKER_HOST} got no OpenFlow port on {BRIDGE} within 30 s")
            time.sleep(0.05)
    asker_id = secrets.token_hex(32)
    flows.set_port(asker_id, ofport, vlan, None)
    ns = f"npbench-scale-{C.tag()}"
    C.run("ip", "netns", "add", ns)
    netns.append(ns)
    ip = f"10.{octet}.250.1"
    C.run("ip", "link", "set", ASKER_PEER, "netns", ns)
    for args in (("link", "set", "lo", "up"), ("addr", "add", f"{ip}/16", "dev", ASKER_PEER),
                 ("link", "set", ASKER_PEER, "up")):
        C.run("ip", "-n", ns, *args)
    mac_text = C.run("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{ASKER_PEER}/address").stdout.strip()
    return flows, {"ip": ip, "mac": mac_text, "iface": ASKER_PEER}, ns


def answers(n: int, octet: int) -> list[tuple[str, str, str]]:
    """(endpoint id, address, MAC) of n endpoints of one /16, MACs as the product derives them."""
    out = []
    for i in range(n):
        ip = f"10.{octet}.{i // 250}.{i % 250 + 1}"
        out.append((secrets.token_hex(32), ip, "02:4e:" + ":".join(f"{int(o):02x}" for o in ip.split("."))))
    return out


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def install(flows: Flows, texts: list[str]) -> dict:
    """The product's cold-start install: one add_flows call, with the product's timeout first."""
    t0 = time.perf_counter()
    try:
        flows.add_flows(texts)
        return {"install_s": time.perf_counter() - t0, "within_product_timeout": True}
    except NetpluginError as exc:
        failed_after = time.perf_counter() - t0
        failure = exc.message
    long = Flows(BRIDGE, LONG_TIMEOUT)
    t0 = time.perf_counter()
    long.add_flows(texts)
    return {"install_s": time.perf_counter() - t0, "within_product_timeout": False,
            "product_timeout_failed_after_s": failed_after, "product_timeout_error": failure[:300]}


def full_pass_cost(flows: Flows, pid: int, want: set[int], dumps: int) -> dict:
    """cookies(TABLE_ARP), dumps times: wall, ovs-vswitchd CPU, ovs-ofctl CPU, own CPU;
    then the cheap count (dump-aggregate) the same number of times."""
    rows = []
    for _ in range(dumps):
        v0, k0, s0, t0 = vswitchd_cpu_s(pid), children_cpu(), time.process_time(), time.perf_counter()
        try:
            got = flows.cookies(TABLE_ARP)
            error = None
        except NetpluginError as exc:            # at this size, under the product's timeout
            got, error = None, exc.message
        rows.append({"wall_s": time.perf_counter() - t0, "vswitchd_cpu_s": vswitchd_cpu_s(pid) - v0,
                     "ofctl_cpu_s": children_cpu() - k0, "parse_cpu_s": time.process_time() - s0,
                     "exact": got == want if got is not None else None, "error": error})
    agg, agg_cpu = [], []
    for _ in range(dumps):
        v0, k0, t0 = vswitchd_cpu_s(pid), children_cpu(), time.perf_counter()
        out = C.run("ovs-ofctl", "-O", "OpenFlow13", f"--timeout={int(PRODUCT_TIMEOUT)}", "dump-aggregate",
                    BRIDGE, f"table={TABLE_ARP},cookie={1 << 63:#x}/{1 << 63:#x}").stdout
        agg.append(time.perf_counter() - t0)
        agg_cpu.append(vswitchd_cpu_s(pid) - v0 + children_cpu() - k0)
    count = int(out.split("flow_count=")[1].split()[0]) if "flow_count=" in out else None
    if count != len(want):
        raise RuntimeError(f"dump-aggregate counted {count} answers in table 10, {len(want)} expected")

    def mean(key: str) -> float:            # CPU comes in clock ticks (10 ms): the mean, not the median
        return sum(r[key] for r in rows) / len(rows)
    return {"dump_wall_s": C.median([r["wall_s"] for r in rows]), "dump_vswitchd_cpu_s": mean("vswitchd_cpu_s"),
            "dump_ofctl_cpu_s": mean("ofctl_cpu_s"), "dump_parse_cpu_s": mean("parse_cpu_s"),
            "dump_cpu_total_s": mean("vswitchd_cpu_s") + mean("ofctl_cpu_s") + mean("parse_cpu_s"),
            "dump_exact": all(r["exact"] for r in rows), "dump_errors": [r["error"] for r in rows if r["error"]],
            "aggregate_wall_s": C.median(agg), "aggregate_cpu_s": sum(agg_cpu) / len(agg_cpu),
            "aggregate_flow_count": count}


def one_change(flows: Flows, texts_by_cookie: dict[int, str], octet: int, vlan: int, changes: int) -> dict:
    """add one answer, delete one answer, `changes` times, through the product's calls."""
    adds, dels = [], []
    for i in range(changes):
        eid = secrets.token_hex(32)
        ip = f"10.{octet}.240.{i % 250 + 1}"
        text = flows.arp_answer(eid, ip, "02:4e:" + ":".join(f"{int(o):02x}" for o in ip.split(".")), vlan, None)
        t0 = time.perf_counter()
        flows.add_flows([text])
        adds.append(time.perf_counter() - t0)
        texts_by_cookie[cookie_for(eid, KIND_ARP_LOCAL)] = text
        gone = random.choice(list(texts_by_cookie))
        t0 = time.perf_counter()
        flows.delete_cookies([gone])
        dels.append(time.perf_counter() - t0)
        del texts_by_cookie[gone]
    return {"add_one_ms_median": 1000 * C.median(adds), "add_one_ms_max": 1000 * max(adds),
            "delete_one_ms_median": 1000 * C.median(dels), "delete_one_ms_max": 1000 * max(dels)}


def datapath_stats() -> dict:
    """Upcalls and megaflow hits of the userspace datapath (shared by every netdev bridge here)."""
    import re
    text = C.run("ovs-appctl", "dpif-netdev/pmd-stats-show", check=False).stdout
    found = {}
    for key, pattern in (("upcalls", r"miss with success upcall:\s*(\d+)"),
                         ("megaflow_hits", r"megaflow hits:\s*(\d+)"), ("emc_hits", r"emc hits:\s*(\d+)")):
        found[key] = sum(int(x) for x in re.findall(pattern, text))
    return found


def latency(ns: str, asker: dict, picked: list[tuple[str, str, str]], repeat: int) -> dict:
    C.run("ovs-appctl", "dpif-netdev/pmd-stats-clear", check=False)
    proc = C.run("ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), "--probe",
                 asker["iface"], asker["mac"], asker["ip"], str(repeat),
                 *[f"{ip},{mac}" for _, ip, mac in picked], timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the probe failed: {proc.stderr.strip()[-800:]}")
    r = json.loads(proc.stdout)
    stats = datapath_stats()
    cold, warm = r["cold_us"], r["warm_us"]
    return {"cold_p50_us": C.pct(cold, 50), "cold_p90_us": C.pct(cold, 90), "cold_max_us": max(cold, default=None),
            "warm_p50_us": C.pct(warm, 50), "warm_p99_us": C.pct(warm, 99), "cold_n": len(cold), "warm_n": len(warm),
            "lost": r["lost"], "wrong": r["wrong"], "datapath": stats}


def measure(n: int, args, vlan: int, octet: int, pid: int, netns: list[str], out: C.Out) -> dict:
    flows, asker, ns = fresh_bridge(vlan, octet, netns)
    row: dict = {"n": n, "loadavg_start": C._loadavg()}
    out.progress(f"N={n}: idle control ({args.idle_seconds:.0f} s, table 10 empty)")
    row["idle_cpu_empty_pct"] = idle_cpu(pid, args.idle_seconds)
    eps = answers(n, octet)
    t0 = time.perf_counter()
    texts = [flows.arp_answer(eid, ip, mac, vlan, None) for eid, ip, mac in eps]
    row["flow_text_s"] = time.perf_counter() - t0
    want = {cookie_for(eid, KIND_ARP_LOCAL) for eid, _, _ in eps}
    row["rss_before_kib"] = vswitchd_rss_kib(pid)
    out.progress(f"N={n}: installing {n} answers in one add_flows call")
    v0 = vswitchd_cpu_s(pid)
    row.update(install(flows, texts))
    row["install_vswitchd_cpu_s"] = vswitchd_cpu_s(pid) - v0
    row["rss_after_kib"] = vswitchd_rss_kib(pid)
    row["rules_after"] = vswitchd_rules()
    check = Flows(BRIDGE, LONG_TIMEOUT)
    row["installed_exact"] = check.cookies(TABLE_ARP) == want
    out.progress(f"N={n}: idle with the answers ({args.idle_seconds:.0f} s)")
    row["idle_cpu_pct"] = idle_cpu(pid, args.idle_seconds)
    out.progress(f"N={n}: reply latency after the quiet window, {args.targets} targets")
    picked = random.sample(eps, args.targets + 1)
    row["latency"] = latency(ns, asker, picked, args.repeat)
    out.progress(f"N={n}: one change, {args.changes} times")
    by_cookie = {cookie_for(eid, KIND_ARP_LOCAL): t for (eid, _, _), t in zip(eps, texts, strict=True)}
    row.update(one_change(flows, by_cookie, octet, vlan, args.changes))
    want = set(by_cookie)
    row["changed_exact"] = check.cookies(TABLE_ARP) == want
    out.progress(f"N={n}: full-pass read of table 10, {args.dumps} times")
    row.update(full_pass_cost(flows, pid, want, args.dumps))
    if row["dump_errors"]:              # under the product's timeout: time it with a long one too
        row["dump_long_timeout"] = full_pass_cost(check, pid, want, 1)["dump_wall_s"]
    out.progress(f"N={n}: reply latency right after the changes and reads, {args.targets} other targets")
    asked = {e[0] for e in picked}
    still = [e for e in eps if cookie_for(e[0], KIND_ARP_LOCAL) in want and e[0] not in asked]
    row["latency_busy"] = latency(ns, asker, random.sample(still, args.targets + 1), args.repeat)
    row["loadavg_end"] = C._loadavg()
    row["ovs_ports_on_host"] = C._ovs_port_count()
    return row


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2:])
        return 0
    p = C.parser(__doc__)
    p.add_argument("--sizes", default="100,1000,10000,50000",
                   help="numbers of answers, run in this order (default 100,1000,10000,50000; 100 is the baseline)")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU window, each way (default 10)")
    p.add_argument("--changes", type=int, default=10, help="one-answer adds and deletes per size (default 10)")
    p.add_argument("--dumps", type=int, default=5, help="full-pass reads of table 10 per size (default 5)")
    p.add_argument("--targets", type=int, default=30, help="answers asked for, first request each (default 30)")
    p.add_argument("--repeat", type=int, default=10, help="requests again per target, datapath cached (default 10)")
    args = C.parse(p, argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    if not sizes or min(sizes) < 2 * args.targets + 2 + args.changes or max(sizes) > 60000:
        p.error(f"--sizes must each be between {2 * args.targets + 2 + args.changes} (twice --targets + 1, plus "
                "--changes) and 60000 (one /16, "
                "250 addresses per third octet below .240)")
    out = C.Out(args.json)
    vlan, octet = C.pick_vlan(), C.pick_octets(1)[0]
    pid = vswitchd_pid()
    result: dict = {"benchmark": "arp_scale", "machine": C.machine(), "command": " ".join([sys.executable, *sys.argv]),
                    "settings": {"sizes": sizes, "idle_seconds": args.idle_seconds, "changes": args.changes,
                                 "dumps": args.dumps, "targets": args.targets, "repeat": args.repeat,
                                 "bridge": BRIDGE, "vlan": vlan, "subnet": f"10.{octet}.0.0/16",
                                 "product_ovs_timeout_s": PRODUCT_TIMEOUT, "vswitchd_pid": pid,
                                 "vswitchd_rss_start_kib": vswitchd_rss_kib(pid)}}
    netns: list[str] = []
    broken = False
    rows: list[dict] = []
    with C.Cleanup(out) as cleanup:
        cleanup.add(f"remove bridge {BRIDGE}, the asker's veth and namespace", lambda: remove_all(netns))
        for n in sizes:
            pid = vswitchd_pid()
            row = measure(n, args, vlan, octet, pid, netns, out)
            row["vswitchd_restarted"] = vswitchd_pid() != pid        # its flows and figures are then void
            rows.append(row)
            lats = (row["latency"], row["latency_busy"])
            exact = row["installed_exact"] and row["changed_exact"] and row["dump_exact"]
            if row["vswitchd_restarted"] or not exact \
                    or any(x["wrong"] or x["lost"] > x["cold_n"] // 10 for x in lats):
                broken = True
            remove_all(netns)
        result["machine"]["loadavg_end"] = C._loadavg()
    result["sizes"] = rows
    result["cleanup_failures"] = cleanup.failures
    result["broken"] = broken
    report(out, result)
    out.result(result)
    return 1 if broken or cleanup.failures else 0


def report(out: C.Out, r: dict) -> None:
    out.say(f"ARP answers at scale  ({C.machine_line(r['machine'])}, load at end {r['machine'].get('loadavg_end')})")
    s = r["settings"]
    out.say(f"bridge {s['bridge']} (netdev), one VLAN; product ovs_timeout {s['product_ovs_timeout_s']} s; "
            f"ovs-vswitchd RSS at start {s['vswitchd_rss_start_kib'] / 1024:.0f} MiB")
    rows = r.get("sizes", [])
    out.say(C.table(
        ["N", "texts s", "install s", "vswitchd CPU s", "in 5 s", "RSS before MiB", "after MiB", "delta MiB", "rules",
         "idle CPU % empty", "with N", "exact", "load"],
        [[x["n"], x["flow_text_s"], x["install_s"], x["install_vswitchd_cpu_s"],
          "yes" if x["within_product_timeout"] else "NO",
          x["rss_before_kib"] / 1024, x["rss_after_kib"] / 1024, (x["rss_after_kib"] - x["rss_before_kib"]) / 1024,
          x["rules_after"], x["idle_cpu_empty_pct"], x["idle_cpu_pct"],
          "yes" if x["installed_exact"] and x["changed_exact"] and x["dump_exact"] else "NO", x["loadavg_start"]]
         for x in rows]))
    out.say("")
    out.say(C.table(
        ["N", "add one ms p50", "max", "delete one ms p50", "max", "dump s", "vswitchd CPU s", "ofctl CPU s",
         "parse CPU s", "CPU total s", "dump errors (5 s)", "count s", "count CPU s"],
        [[x["n"], x["add_one_ms_median"], x["add_one_ms_max"], x["delete_one_ms_median"], x["delete_one_ms_max"],
          x["dump_wall_s"], x["dump_vswitchd_cpu_s"], x["dump_ofctl_cpu_s"], x["dump_parse_cpu_s"],
          x["dump_cpu_total_s"], len(x["dump_errors"]), x["aggregate_wall_s"], x["aggregate_cpu_s"]]
         for x in rows]))
    out.say("")
    out.say(C.table(
        ["N", "asked", "first request p50 us", "p90", "max", "cached p50 us", "p99", "targets", "lost", "wrong",
         "upcalls", "megaflow+emc hits"],
        [[x["n"], when, lat["cold_p50_us"], lat["cold_p90_us"], lat["cold_max_us"], lat["warm_p50_us"],
          lat["warm_p99_us"], lat["cold_n"], lat["lost"], lat["wrong"], lat["datapath"]["upcalls"],
          lat["datapath"]["megaflow_hits"] + lat["datapath"]["emc_hits"]]
         for x in rows for when, lat in (("quiet", x["latency"]), ("after changes", x["latency_busy"]))]))
    for x in rows:
        if x["vswitchd_restarted"]:
            out.say(f"N={x['n']}: ovs-vswitchd was restarted (by someone else) during this size: its figures are void")
        if not x["within_product_timeout"]:
            out.say(f"N={x['n']}: the install failed under the product's timeout after "
                    f"{x['product_timeout_failed_after_s']:.1f} s: {x['product_timeout_error']}")
    C.say_cleanup_failures(out, r)


if __name__ == "__main__":
    C.exit_with(main)
