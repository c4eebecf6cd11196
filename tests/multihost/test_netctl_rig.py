"""netctl against the real two-host rig and the real etcd: every command's
output parsed as JSON, the -q and table forms, filters by network and host,
endpoint lookup by id, address and container name (each host's Docker knows
only its own containers), refusals with their exit codes and messages."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import netctl_env, run

pytestmark = pytest.mark.multihost

NET, SUBNET, VLAN = "mh-ops", "10.233.0.0/24", 401
FIXED = "10.233.0.50"


@pytest.fixture(scope="module")
def ops(rig):
    """Global network mh-ops made with netctl; Docker binds it on both hosts;
    container ca on host a (dynamic address), cb on host b (--ip)."""
    rig.clean()
    created = json.loads(rig.a.netctl("network", "create", NET, "--subnet", SUBNET, "--vlan", str(VLAN),
                                      "--ip-range", "10.233.0.128/25", "--aux-address", "router=10.233.0.2",
                                      "--json").stdout)
    for host in rig.hosts:
        host.network(NET, SUBNET)
    rig.a.start("mh-ca", NET)
    rig.b.start("mh-cb", NET, "--ip", FIXED)
    info = {"created": created, "ip_a": rig.a.ip_of("mh-ca", NET), "ip_b": FIXED}
    eps = {e["host"]: e for e in rig.a.netctl_json("endpoint", "ls", "--network", NET)}
    info["ep_a"], info["ep_b"] = eps["rig-a"], eps["rig-b"]
    yield info
    rig.clean()


def test_network_create_json(ops):
    c = ops["created"]
    assert (c["name"], c["subnet"], c["gateway"], c["vlan"]) == (NET, SUBNET, "10.233.0.1", VLAN)
    assert c["ranges"] == ["10.233.0.128/25"] and c["aux"] == {"router": "10.233.0.2"}
    assert c["origin"] == "netctl" and c["endpoints"] == []
    # The pool is the range (.128-.254): the gateway and the router are reserved outside it.
    assert c["pool"]["used"] == 0 and c["pool"]["size"] == 127
    assert c["pool"]["reserved"] == ["10.233.0.1", "10.233.0.2"]


def test_network_ls_json_quiet_and_table(ops, rig):
    nets = {n["name"]: n for n in rig.b.netctl_json("network", "ls")}
    n = nets[NET]
    assert (n["subnet"], n["gateway"], n["vlan"], n["origin"], n["ranges"]) == \
        (SUBNET, "10.233.0.1", VLAN, "netctl", ["10.233.0.128/25"])
    assert n["id"] == ops["created"]["id"]
    quiet = rig.b.netctl("network", "ls", "-q").stdout.split()
    assert n["id"] in quiet and NET not in quiet and sorted(quiet) == sorted(x["id"] for x in nets.values())
    # The ids feed back into the other commands.
    assert rig.a.netctl_json("network", "inspect", n["id"])[0]["name"] == NET
    assert rig.a.netctl_json("ipam", "show", n["id"])["subnet"] == SUBNET
    table = rig.b.netctl("network", "ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "SUBNET", "GATEWAY", "VLAN", "USED", "ORIGIN"]
    row = next(line.split() for line in table[1:] if line.split()[0] == NET)
    assert row == [NET, SUBNET, "10.233.0.1", str(VLAN), "4", "netctl"]     # gateway, aux, 2 endpoints


def test_network_inspect_sees_both_hosts(ops, rig):
    info = rig.a.netctl_json("network", "inspect", NET)[0]
    assert info["hosts"] == ["rig-a", "rig-b"]
    assert {(e["host"], e["ip"]) for e in info["endpoints"]} == {("rig-a", ops["ip_a"]), ("rig-b", FIXED)}
    assert info["pool"]["used"] == 1 and info["name_conflict"] is None      # ca's; cb's --ip is outside the range
    text = rig.b.netctl("network", "inspect", NET, "--format", "table").stdout
    assert "Hosts      rig-a, rig-b" in text and FIXED in text


def test_ipam_show_json(ops, rig):
    usage = rig.b.netctl_json("ipam", "show", NET)
    assert usage == {"subnet": SUBNET, "size": 127, "used": 1, "free": 126, "ranges": ["10.233.0.128/25"],
                     "reserved": ["10.233.0.1", "10.233.0.2"]}     # counted over the range: ca's address only
    # The dynamic address came from the range; the fixed one is outside it.
    assert int(ops["ip_a"].rsplit(".", 1)[1]) >= 128


def test_endpoint_ls_filters(ops, rig):
    every = rig.a.netctl_json("endpoint", "ls")
    assert {(e["host"], e["ip"], e["network"], e["vlan"]) for e in every} == \
        {("rig-a", ops["ip_a"], NET, VLAN), ("rig-b", FIXED, NET, VLAN)}
    only_b = rig.a.netctl_json("endpoint", "ls", "--host", "rig-b")
    assert [e["ip"] for e in only_b] == [FIXED]
    assert only_b[0]["port"].startswith("np") and only_b[0]["mac"] == "02:4e:0a:e9:00:32"
    both = rig.b.netctl_json("endpoint", "ls", "--network", NET, "--host", "rig-a")
    assert [e["ip"] for e in both] == [ops["ip_a"]]
    assert rig.a.netctl_json("endpoint", "ls", "--host", "no-such-host") == []
    ids = rig.a.netctl("endpoint", "ls", "-q").stdout.split()
    assert sorted(ids) == sorted(e["id"] for e in every) and all(len(i) == 64 for i in ids)
    table = rig.a.netctl("endpoint", "ls").stdout.splitlines()
    assert table[0].split() == ["ENDPOINT", "NETWORK", "HOST", "IP", "MAC", "VLAN", "PORT"]
    assert len(table) == 3
    unknown = rig.a.netctl("endpoint", "ls", "--network", "no-such-net", check=False)
    assert unknown.returncode == 1 and "no-such-net" in unknown.stderr


def test_endpoint_inspect_by_id_ip_and_container(ops, rig):
    ep_b = ops["ep_b"]
    by_id = rig.a.netctl_json("endpoint", "inspect", ep_b["id"][:12])[0]
    by_ip = rig.a.netctl_json("endpoint", "inspect", FIXED)[0]
    # A container name is resolved through the Docker of the host netctl runs on.
    by_name = rig.b.netctl_json("endpoint", "inspect", "mh-cb")[0]
    assert by_id == by_ip == by_name
    assert (by_id["id"], by_id["host"], by_id["ip"], by_id["network"]) == (ep_b["id"], "rig-b", FIXED, NET)
    assert by_id["sandbox"] and by_id["docker_network"]
    assert rig.a.netctl_json("endpoint", "inspect", "mh-ca")[0]["ip"] == ops["ip_a"]
    # Host a's Docker has no container mh-cb (names with non-hex letters: "cb" once matched an endpoint id prefix).
    miss = rig.a.netctl("endpoint", "inspect", "mh-cb", check=False)
    assert miss.returncode == 1 and "no endpoint matches 'mh-cb'" in miss.stderr
    text = rig.b.netctl("endpoint", "inspect", "mh-cb", "--format", "table").stdout
    assert "Host            rig-b" in text and FIXED in text


def test_host_ls_and_inspect(ops, rig):
    hosts = {h["host"]: h for h in rig.a.netctl_json("host", "ls")}
    assert {"rig-a", "rig-b"} <= set(hosts)
    for host in rig.hosts:
        h = hosts[host.host_id]
        assert h["alive"] and h["endpoints"] == 1 and h["uplink"] == host.trunk
    assert set(rig.a.netctl("host", "ls", "-q").stdout.split()) >= {"rig-a", "rig-b"}
    table = rig.a.netctl("host", "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["HOST", "STATE", "BRIDGE"]
    one = rig.b.netctl_json("host", "inspect", "rig-b")[0]
    assert (one["host"], one["bridge"], one["uplink"], one["alive"]) == ("rig-b", "nprig-b", "nptrunk-b", True)
    miss = rig.a.netctl("host", "inspect", "rig-z", check=False)
    assert miss.returncode == 1 and "rig-z" in miss.stderr and miss.stdout == ""


def test_every_command_prints_json(ops, rig):
    """With --json, stdout is one JSON document for every command that prints anything."""
    commands = [
        ["version"], ["network", "ls"], ["network", "inspect", NET], ["ipam", "show", NET],
        ["endpoint", "ls"], ["endpoint", "ls", "--network", NET, "--host", "rig-b"],
        ["endpoint", "inspect", FIXED], ["host", "ls"], ["host", "inspect", "rig-a"], ["global", "show"],
        ["network", "create", "mh-json", "--subnet", "10.233.9.0/24", "--vlan", "409"],
        ["network", "rm", "mh-json"],
    ]
    not_json = []
    for cmd in commands:
        out = rig.a.netctl(*cmd, "--json").stdout
        try:
            json.loads(out)
        except ValueError:
            not_json.append(f"netctl {' '.join(cmd)} --json printed {out.strip()!r}")
    assert not not_json, "\n".join(not_json)


def test_rm_refused_while_endpoints_exist_then_forced(ops, rig):
    rig.a.netctl("network", "create", "mh-rm", "--subnet", "10.233.1.0/24", "--vlan", "402")
    rig.b.network("mh-rm", "10.233.1.0/24")
    rig.b.start("rm1", "mh-rm")
    before = rig.a.netctl_json("network", "inspect", "mh-rm")[0]
    refused = rig.a.netctl("network", "rm", "mh-rm", check=False)
    assert refused.returncode == 1
    assert "rig-b" in refused.stderr and "--with-endpoints" in refused.stderr
    assert rig.a.netctl_json("network", "inspect", "mh-rm")[0] == before          # nothing changed
    assert rig.a.netctl("network", "rm", "--force", "mh-rm", check=False).returncode == 1   # -f: as docker's
    assert rig.a.netctl("network", "rm", "--with-endpoints", "mh-rm").stdout.strip() == "mh-rm"
    assert before["id"] not in rig.a.netctl("network", "ls", "-q").stdout.split()
    assert "mh-rm" not in [n["name"] for n in rig.a.netctl_json("network", "ls")]
    assert [e for e in rig.a.netctl_json("endpoint", "ls", "--host", "rig-b") if e["network_id"] == before["id"]] == []
    ports = rig.b.ports()
    # its port, found by the endpoint id it carries (a pool pair keeps its npp name)
    found = run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find", "Port",
                 f"external_ids:np-endpoint={before['endpoints'][0]['id']}"]).stdout.split()
    assert len(found) == 1, found
    gone = found[0]
    # Host b's Docker still has the container and network: removing them must
    # be quick and leave nothing on the bridge, although the records are gone.
    t0 = time.monotonic()
    rig.b.docker("rm", "-f", "rm1")
    rig.b.docker("network", "rm", "mh-rm")
    assert time.monotonic() - t0 < 15
    assert gone in ports and gone not in rig.b.ports(), (gone, ports, rig.b.ports())


def test_create_refusals(ops, rig):
    same_vlan = rig.a.netctl("network", "create", "mh-dup", "--subnet", "10.233.2.0/24", "--vlan", str(VLAN),
                             check=False)
    assert same_vlan.returncode == 1 and str(VLAN) in same_vlan.stderr
    overlap = rig.a.netctl("network", "create", "mh-dup", "--subnet", "10.233.0.0/16", "--vlan", "403",
                           check=False)
    assert overlap.returncode == 1 and "10.233.0.0" in overlap.stderr
    assert "mh-dup" not in [n["name"] for n in rig.a.netctl_json("network", "ls")]


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["network"], ["network", "create", "x"], ["network", "create", "x", "--subnet", "10.9.0.0/24"],
    ["network", "ls", "--vlan", "3"], ["network", "inspect"], ["network", "rm"], ["endpoint", "ls", "--bogus"],
    ["endpoint", "inspect"], ["host"], ["host", "inspect"], ["ipam", "show"], ["--etcd-endpoints"],
])
def test_bad_arguments_exit_2(rig, argv):
    proc = rig.a.netctl(*argv, check=False)
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
    assert "error:" in proc.stderr and "usage:" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("argv, message", [
    (["network", "create", "mh-bad", "--subnet", "10.233.5.0/24", "--vlan", "5000"], "vlan 5000 is out of range"),
    (["network", "create", "mh-bad", "--subnet", "10.233.5.0/33", "--vlan", "405"], "'10.233.5.0/33'"),
    (["network", "create", "mh-bad", "--subnet", "10.233.5.9/24", "--vlan", "405"], "did you mean 10.233.5.0/24"),
    (["--etcd-endpoints", "127.0.0.1:2379", "network", "ls"], "'127.0.0.1:2379' is not an etcd URL"),
])
def test_bad_values_exit_2_naming_the_value(rig, argv, message):
    """Bad values on the command line are usage errors: exit 2, a message naming
    the value, and nothing written to etcd."""
    proc = rig.a.netctl(*argv, check=False)
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr)
    assert message in proc.stderr and "usage: netctl" in proc.stderr and proc.stdout == ""
    assert "mh-bad" not in [n["name"] for n in rig.a.netctl_json("network", "ls")]


@pytest.mark.parametrize("argv", [["network", "ls"], ["host", "ls"], ["endpoint", "ls", "--json"],
                                  ["ipam", "show", NET], ["network", "inspect", NET]])
def test_unreachable_etcd_exit_1_naming_the_endpoints(rig, argv):
    dead = "http://127.0.0.1:1,http://127.0.0.1:9"
    t0 = time.monotonic()
    # Both ways of giving the endpoints: the flag, and the environment.
    by_flag = rig.a.netctl("--etcd-endpoints", dead, *argv, check=False)
    by_env = rig.a.netctl(*argv, check=False, env=netctl_env(dead, rig.prefix))
    assert time.monotonic() - t0 < 30
    for proc in (by_flag, by_env):
        assert proc.returncode == 1, proc.stderr
        assert "http://127.0.0.1:1" in proc.stderr and "http://127.0.0.1:9" in proc.stderr, proc.stderr
        assert proc.stderr.startswith("netctl: ") and "Traceback" not in proc.stderr
        assert proc.stdout == ""
