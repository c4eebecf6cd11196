"""Poisoned records (issue #14, item 4), with the real daemon, dockerd and OVS.

Garbage goes under every key family of the daemon's prefix (and drctl's)
while containers run: records with a missing field, wrong types, a MAC with
a newline, an address outside its subnet, non-JSON, deeply nested JSON. Every
loop keeps working (a profile change still reaches the meter, a new endpoint
still gets its ARP answer, containers still ping), no flow carries any of the
poison, each bad key is logged once, and ``netctl status`` lists the bad keys.
"""

from __future__ import annotations

import json
import re
import time

from tests.harness import etcd

from .conftest import ETCD, IMAGE, LABEL, docker, ip_of, pings, run, start

NET = "poison-net"
SUBNET = "10.251.0.0/24"
MARK = "p0ison"                               # in every poisoned value that could reach a flow
# Real containers take addresses from the lower half only, so an address the poison
# names (.230, .231; 0xafb00e6/7 in flow text) in a flow can only come from a poisoned record.
REAL_RANGE = "10.251.0.0/25"
POISON_IPS = re.compile(r"10\.251\.0\.23[012](?![0-9])|0xafb00e[678](?![0-9a-f])")
NESTED = "[" * 4000 + "]" * 4000


def ofctl(plugin, *args: str) -> str:
    return run("ovs-ofctl", "-O", "OpenFlow13", *args, plugin.bridge).stdout


def wait_for(what: str, check, within: float = 30) -> None:
    stop = time.monotonic() + within
    while time.monotonic() < stop:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def poison(plugin) -> dict[str, str]:
    """key -> value of the garbage; the keys are all under the plugin's prefix."""
    p, eid = plugin.prefix, "f" * 64
    bad_ep = {"id": eid, "network": "n-0123456789ab", "docker_network": "d" * 64, "host": plugin.host_id,
              "ip": "10.251.0.230", "prefixlen": 24, "mac": f"02:4e:0a:fb:00:e6\n{MARK},actions=drop",
              "port": "npfffffffffff", "peer": "ncfffffffffff", "vlan": 251}
    return {
        f"{p}/networks/n-badbadbadbad": json.dumps({"id": "n-badbadbadbad", "name": MARK}),     # fields missing
        f"{p}/networks/n-0123456789ab": json.dumps({"id": 1, "name": [], "subnet": "x", "gateway": 2, "vlan": "v"}),
        f"{p}/index/name/{MARK}": f"../{MARK}",
        f"{p}/index/vlan/4000": NESTED,
        f"{p}/ipam/10-251-0-0-24/zz": "{not json",
        f"{p}/ipam/10.251.0.0-24/000000c8": json.dumps({"ip": "10.99.0.200", "kind": "endpoint",
                                                        "host": plugin.host_id}),              # outside the subnet
        f"{p}/endpoints/{eid}": json.dumps(bad_ep),                                            # MAC with a newline
        f"{p}/endpoints/{'e' * 64}": json.dumps(dict(bad_ep, id="e" * 64, mac="02:4e:0a:fb:00:e7",
                                                     ip=f"10.251.0.231,{MARK}")),
        f"{p}/endpoints/{'a' * 64}": NESTED,
        f"{p}/endpoints/{'b' * 64}": json.dumps({"id": "b" * 64, "vlan": 251}),                 # fields missing
        f"{p}/bindings/{plugin.host_id}/{'c' * 64}": json.dumps({"docker_network": "c" * 64, "network": 5,
                                                                 "host": f"x\n{MARK}"}),
        f"{p}/profiles/{MARK}": json.dumps({"name": MARK, "rate_kbps": "fast", "burst_kb": -1}),
        f"{p}/settings/arp-mode": f"flood;{MARK}",
        f"{p}/hosts/{MARK}-host": "not json",
        f"{p}/hostinfo/{MARK}-host": json.dumps({"host": f"h\n{MARK}"}),
        f"{p}/release/{plugin.host_id}/{eid}": json.dumps({"state": "pending", "force": "yes"}),
        f"{p}/release/{plugin.host_id}/{MARK}": json.dumps({"state": "pending", "force": True, "by": "x",
                                                            "time": 1}),
        f"{p}/released/{eid}": "[1, 2, 3]",
        f"{p}/locks/reconcile-{MARK}": NESTED,
        f"{p}/reconcile/{plugin.host_id}/counters": json.dumps({"runs": "many", "found": {"x": "y"}}),
        f"{p}/reconcile/{MARK}/last": NESTED,
        f"{p}/backup/jobs/..%2F{MARK}": "{not json",
        f"{p}/backup/catalog/{MARK}": json.dumps({"id": "../../etc", "path": "/etc/passwd"}),
    }


def test_poisoned_records_stop_no_loop_and_reach_no_flow(clean):
    plugin = clean
    wait_for("the daemon to take the network (it claims its host id first)",
             lambda: docker("network", "create", "-d", "netplugin", "--ipam-driver", "netplugin", "--subnet",
                            SUBNET, "--ip-range", REAL_RANGE, "-o", "vlan=251", NET,
                            check=False).returncode == 0, 20)
    bad = poison(plugin)
    # The layout by network: a poisoned record in the network this host has bound
    # (its view reads it), and a locator that points outside the prefix.
    net_id = next(n["id"] for n in json.loads(plugin.netctl("network", "ls", "--json").stdout)
                  if n["subnet"] == SUBNET)
    bad[f"{plugin.prefix}/net-endpoints/{net_id}/{plugin.host_id}/{'d' * 64}"] = json.dumps({
        "id": "d" * 64, "network": net_id, "docker_network": "d" * 64, "host": plugin.host_id,
        "ip": "10.251.0.232", "prefixlen": 24, "mac": f"02:4e:0a:fb:00:e8\n{MARK},actions=drop",
        "port": "npddddddddddd", "peer": "ncddddddddddd", "vlan": 251})
    bad[f"{plugin.prefix}/index/endpoint/{'9' * 64}"] = f"../../{MARK}"
    try:
        start("poison-a", NET)
        a_ip = ip_of("poison-a", NET)
        plugin.netctl("profile", "create", "poison-slow", "--rate", "40mbit")
        for key, value in bad.items():
            etcd.etcdctl(ETCD, "put", key, value)

        # a profile change still reaches the meter of a running container
        plugin.netctl("network", "set", NET, "--profile", "poison-slow")
        wait_for("the profile's meter", lambda: "rate=40000" in ofctl(plugin, "dump-meters"))
        # a new endpoint still gets its ARP answer, and containers still talk
        docker("run", "-d", "--label", LABEL, "--name", "poison-b", "--network", NET, IMAGE, "sleep", "600")
        b_ip = ip_of("poison-b", NET)
        wait_for("the new endpoint's ARP answer", lambda: f"arp_tpa={b_ip}" in ofctl(plugin, "dump-flows"))
        assert pings("poison-a", b_ip) and pings("poison-b", a_ip)
        plugin.netctl("profile", "set", "poison-slow", "--rate", "30mbit")
        wait_for("the changed meter", lambda: "rate=30000" in ofctl(plugin, "dump-meters"))

        flows = ofctl(plugin, "dump-flows")
        poisoned = [line for line in flows.splitlines() if MARK in line or POISON_IPS.search(line)]
        assert not poisoned, poisoned
        assert "02:4e:0a:fb:00:e6" not in flows and "10.99.0.200" not in flows

        status = plugin.netctl("status", "--json")
        listed = {r["key"] for r in json.loads(status.stdout)["bad_records"]}
        netplugin_keys = {k for k in bad if "/backup/" not in k and "/locks/" not in k}
        assert netplugin_keys <= listed, sorted(netplugin_keys - listed)
        text = plugin.netctl("status").stdout
        assert f"Bad records  {len(listed)}, skipped by every reader" in text
        assert f"{plugin.prefix}/endpoints/{'f' * 64}" in text and f"\\n{MARK}" in text

        log = plugin.log.read_text()
        key = f"{plugin.prefix}/endpoints/{'f' * 64}"
        assert log.count(f"skipping bad endpoint record {key}") == 1, "logged once per key, not once per pass"
        assert f"\n{MARK}" not in log, "a poisoned value forged a log line"
    finally:
        for key in bad:
            etcd.etcdctl(ETCD, "del", key, check=False)
        docker("rm", "-f", "poison-a", "poison-b", check=False)
        docker("network", "rm", NET, check=False)
        plugin.netctl("profile", "rm", "poison-slow", check=False)
