"""netctl (netplugin/cli/main.py) against the in-memory etcd: every command's
output for people (tables with headers), for programs (--json) and for
scripts (-q), and the exit codes: 0 ok, 1 error with 'netctl: ' on stderr,
2 usage error.

``netplugin.wiring.make_store`` is replaced so netctl's Store runs over the
same MemoryKV as the Harness hosts (h1, h2), which make endpoints the way
Docker does. ``endpoint release`` goes through a fake of the plugin socket
(``netplugin.unixhttp.call``) that hands the request to the real Flask app
with a Releaser, or through the etcd queue when no socket exists."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import pytest

import netplugin.wiring as backends
from netplugin import __version__, docker_api, unixhttp
from netplugin.api import create_app
from netplugin.model import Host
from netplugin.reconcile import Reconciler
from netplugin.release import Releaser

from .fakes import FakeDockerView
from .netctl_runner import Result, netctl_runner

SUBNET = "10.10.0.0/24"
REAL_MAKE_STORE = backends.make_store


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def sock(tmp_path) -> str:
    return str(tmp_path / "netplugin.sock")


@pytest.fixture
def netctl(monkeypatch, capsys, kv, sock):
    """Run netctl's main(argv); returns a Result."""
    return netctl_runner(monkeypatch, capsys, kv, sock)


def fields(lines: list[str]) -> dict[str, str]:
    """'Key  value' lines of print_fields (keys may hold single spaces)."""
    return dict(re.split(r"\s{2,}", line.rstrip(), maxsplit=1) for line in lines)


def ok(result: Result) -> Result:
    assert result.code == 0, result
    assert result.err == "", result
    return result


def error(result: Result, message: str) -> str:
    """Exit 1, one 'netctl: ...' line on stderr containing message, nothing on stdout."""
    assert result.code == 1, result
    assert result.out == "", result
    assert result.err.startswith("netctl: ") and result.err.endswith("\n"), result
    assert message in result.err, result
    return result.err


def usage(result: Result, message: str) -> str:
    assert result.code == 2, result
    assert result.out == "", result
    assert "usage: netctl" in result.err and message in result.err, result
    return result.err


@pytest.fixture
def prod(netctl):
    ok(netctl("network", "create", "prod", "--subnet", SUBNET, "--vlan", "100"))
    return "prod"


@pytest.fixture
def containers(np, np2, prod):
    """Two containers on h1 and one on h2, all on prod."""
    net1 = np.create_network(SUBNET, vlan=100, name="prod")
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    a, b = np.run_container(net1, ip="10.10.0.10"), np.run_container(net1, ip="10.10.0.11")
    c = np2.run_container(net2, ip="10.10.0.20")
    return {"net1": net1, "net2": net2, "a": a, "b": b, "c": c}


# -- network ---------------------------------------------------------------------------------------

def test_network_create_prints_the_name(netctl, kv):
    r = ok(netctl("network", "create", "prod", "--subnet", SUBNET, "--vlan", "100"))
    assert r.out == "prod\n"
    assert any(k.startswith("/netplugin/v1/networks/n-") for k in kv.keys())


def test_network_create_json(netctl):
    r = ok(netctl("network", "create", "db", "-s", "10.20.0.0/24", "-p", "200", "--gateway", "10.20.0.254",
                  "--ip-range", "10.20.0.128/25", "--aux-address", "router=10.20.0.2", "--json"))
    info = r.json
    assert info["name"] == "db" and info["subnet"] == "10.20.0.0/24" and info["vlan"] == 200
    assert info["gateway"] == "10.20.0.254" and info["ranges"] == ["10.20.0.128/25"]
    assert info["aux"] == {"router": "10.20.0.2"} and info["origin"] == "netctl"
    assert info["pool"]["used"] == 1 and info["endpoints"] == []    # the gateway; the router is outside the range and info["id"].startswith("n-")


@pytest.mark.parametrize("args, message", [
    (["--subnet", "10.10.0.0/24", "--vlan", "5000"],
     "argument --vlan/-p: vlan 5000 is out of range: give a VLAN id from 1 to 4094"),
    (["--subnet", "10.10.0.0/24", "--vlan", "0"], "argument --vlan/-p: vlan 0 is out of range"),
    (["--subnet", "10.10.0.0/24", "--vlan", "ten"], "argument --vlan/-p: vlan 'ten' is not a number"),
    (["--subnet", "10.10.0.1/24", "--vlan", "5"],
     "argument --subnet/-s: subnet 10.10.0.1/24 has host bits set: did you mean 10.10.0.0/24?"),
    (["--subnet", "10.0.0.0/8", "--vlan", "5"], "argument --subnet/-s: subnet 10.0.0.0/8 is /8: netplugin pools are /16 to /30"),
    (["--subnet", "10.10.0/24x", "--vlan", "5"],
     "argument --subnet/-s: subnet '10.10.0/24x' is not a valid IPv4 CIDR such as 10.10.0.0/24"),
    (["--subnet", "10.10.0.0", "--vlan", "5"], "subnet '10.10.0.0' must be an IPv4 CIDR such as 10.10.0.0/24"),
    (["--subnet", "10.10.0.0/24", "--vlan", "5", "--aux-address", "router"],
     "argument --aux-address: 'router' must look like NAME=IP"),
    (["--subnet", "10.10.0.0/24", "--vlan", "5", "--gateway", "10.11.0.1"], "gateway 10.11.0.1 is outside subnet"),
    (["--subnet", "10.10.0.0/24", "--vlan", "5", "--gateway", "ten"], "gateway 'ten' is not a valid IPv4 address"),
    (["--subnet", "10.10.0.0/24", "--vlan", "5", "--ip-range", "10.10.1.0/25"],
     "ip range 10.10.1.0/25 must be a CIDR without host bits inside subnet"),
    (["--subnet", "10.10.0.0/24", "--vlan", "5", "--aux-address", "r=10.10.0.2", "--aux-address", "r=10.10.0.3"],
     "'r' is given twice"),
    (["--subnet", "10.10.0.0/24", "--vlan", "5", "--aux-address", "r=10.10.0.1"],
     "address 10.10.0.1 cannot be both the gateway and an aux address"),
])
def test_network_create_bad_values_are_exit_2(netctl, kv, args, message):
    """A value that cannot work is a usage error, found before etcd is asked
    anything; the message names the value and what is expected."""
    err = usage(netctl("network", "create", "x", *args), message)
    assert "usage: netctl network create" in err
    assert kv.calls == []


def test_network_create_bad_name_is_exit_2(netctl, kv):
    err = usage(netctl("network", "create", "bad/name", "--subnet", "10.10.0.0/24", "--vlan", "5"),
                "network name 'bad/name' is invalid")
    assert kv.calls == [] and "bad/name" in err


@pytest.mark.parametrize("endpoints, message", [
    ("localhost:2379", "'localhost:2379' is not an etcd URL of the form http(s)://HOST:PORT"),
    ("http://127.0.0.1:2379,ftp://10.0.0.1:21", "'ftp://10.0.0.1:21' is not an etcd URL"),
    ("http://127.0.0.1", "'http://127.0.0.1' is not an etcd URL"),
    (",", "give at least one etcd URL"),
])
def test_bad_etcd_endpoints_flag_is_exit_2(netctl, kv, endpoints, message):
    for argv in (["--etcd-endpoints", endpoints, "network", "ls"], ["network", "ls", "--etcd-endpoints", endpoints]):
        err = usage(netctl(*argv), message)
        assert "argument --etcd-endpoints" in err
    assert kv.calls == []


def test_network_create_clashes_are_exit_1(netctl, prod):
    error(netctl("network", "create", "prod", "--subnet", "10.30.0.0/24", "--vlan", "300"),
          "network prod exists already with subnet 10.10.0.0/24 and VLAN 100")
    error(netctl("network", "create", "other", "--subnet", "10.10.0.0/25", "--vlan", "300"),
          "overlaps network prod")
    error(netctl("network", "create", "other", "--subnet", "10.30.0.0/24", "--vlan", "100"),
          "VLAN 100 is used by network prod")


def test_network_ls_table_quiet_and_json(netctl, prod):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/24", "--vlan", "200"))
    r = ok(netctl("network", "ls"))
    assert r.lines[0].split() == ["NAME", "SUBNET", "GATEWAY", "VLAN", "USED", "ORIGIN"]
    assert [line.split() for line in r.lines[1:]] == [
        ["db", "10.20.0.0/24", "10.20.0.1", "200", "1", "netctl"],
        ["prod", "10.10.0.0/24", "10.10.0.1", "100", "1", "netctl"]]
    rows = ok(netctl("network", "ls", "--json")).json
    assert [(n["name"], n["subnet"], n["vlan"], n["gateway"], n["origin"]) for n in rows] == [
        ("db", "10.20.0.0/24", 200, "10.20.0.1", "netctl"), ("prod", "10.10.0.0/24", 100, "10.10.0.1", "netctl")]
    assert ok(netctl("--json", "network", "ls")).json == rows        # options before the command too
    ids = [n["id"] for n in rows]
    assert all(re.fullmatch(r"n-[0-9a-f]{12}", i) for i in ids), ids
    assert ok(netctl("network", "ls", "-q")).out == f"{ids[0]}\n{ids[1]}\n"       # ids, in name order
    assert ok(netctl("-q", "network", "ls")).lines == ids


def test_network_ls_quiet_ids_feed_inspect_ipam_and_rm(netctl, prod):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/24", "--vlan", "200"))
    ids = ok(netctl("network", "ls", "-q")).lines
    assert [ok(netctl("network", "inspect", i, "--json")).json[0]["name"] for i in ids] == ["db", "prod"]
    assert [ok(netctl("ipam", "show", i, "--json")).json["subnet"] for i in ids] == ["10.20.0.0/24", SUBNET]
    for i in ids:
        assert ok(netctl("network", "rm", i)).out in ("db\n", "prod\n")
    assert ok(netctl("network", "ls", "-q")).out == ""


def test_network_ls_empty(netctl):
    assert ok(netctl("network", "ls")).lines == ["NAME  SUBNET  GATEWAY  VLAN  USED  ORIGIN"]
    assert ok(netctl("network", "ls", "--json")).json == []
    assert ok(netctl("network", "ls", "-q")).out == ""


def test_network_inspect(netctl, containers):
    r = ok(netctl("network", "inspect", "prod", "--format", "table"))
    header = r.lines.index("")
    f = fields(r.lines[:header])
    assert list(f) == ["Name", "Id", "Subnet", "Gateway", "VLAN", "Ranges", "Aux", "Origin", "Created", "Pool",
                       "Hosts", "Endpoints", "Problem"]
    assert f["Name"] == "prod" and f["Subnet"] == SUBNET and f["VLAN"] == "100"
    assert f["Gateway"] == "10.10.0.1" and f["Origin"] == "netctl"
    assert f["Pool"] == "4 used, 250 free of 254"
    assert f["Hosts"] == "h1, h2" and f["Endpoints"] == "3"
    assert f["Problem"] == "-" and f["Ranges"] == "-" and f["Aux"] == "-"
    assert r.lines[header + 1].split() == ["ENDPOINT", "HOST", "IP", "MAC"]
    rows = [line.split() for line in r.lines[header + 2:]]
    assert sorted((row[1], row[2]) for row in rows) == [("h1", "10.10.0.10"), ("h1", "10.10.0.11"),
                                                        ("h2", "10.10.0.20")]
    assert all(len(row[0]) == 12 for row in rows)
    info = ok(netctl("network", "inspect", "prod", "--json")).json[0]
    assert info["pool"] == {"subnet": SUBNET, "size": 254, "used": 4, "free": 250, "ranges": [],
                            "reserved": ["10.10.0.1"]}
    assert sorted(e["ip"] for e in info["endpoints"]) == ["10.10.0.10", "10.10.0.11", "10.10.0.20"]
    assert ok(netctl("network", "inspect", info["id"], "--json")).json[0]["name"] == "prod"    # by id


def test_network_inspect_unknown_is_exit_1(netctl):
    error(netctl("network", "inspect", "nope"), "network 'nope' does not exist: see 'netctl network ls'")


def test_network_rm_refused_with_endpoints_unless_force(netctl, kv, containers):
    error(netctl("network", "rm", "prod"),
          "network prod still has 3 endpoint(s) on host(s) h1, h2: stop those containers first, or remove them with it "
          "(netctl network rm --with-endpoints)")
    listed = ok(netctl("network", "ls", "--json")).json
    assert [n["name"] for n in listed] == ["prod"]
    assert ok(netctl("network", "ls", "-q")).lines == [listed[0]["id"]]
    error(netctl("network", "rm", "prod", "--force"), "still has 3 endpoint(s)")     # -f: as docker's, no more
    r = netctl("network", "rm", "prod", "--with-endpoints")
    assert r.code == 0 and r.out == "prod\n", r
    assert r.err.startswith("netctl: removing network prod with its 3 endpoint record(s): ")
    assert ok(netctl("network", "ls", "-q")).out == ""
    assert kv.keys("/netplugin/v1/endpoints/") == [] and kv.keys("/netplugin/v1/bindings/") == []
    assert kv.keys("/netplugin/v1/ipam/") == [] and kv.keys("/netplugin/v1/index/") == []


def test_network_rm(netctl, prod):
    assert ok(netctl("network", "rm", "prod")).out == "prod\n"
    ok(netctl("network", "create", "prod", "--subnet", SUBNET, "--vlan", "100"))
    assert ok(netctl("-q", "network", "rm", "prod")).out == ""
    error(netctl("network", "rm", "prod"), "network 'prod' does not exist")


# -- ipam -------------------------------------------------------------------------------------------

def test_ipam_show(netctl, containers):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/28", "--vlan", "200",
              "--aux-address", "router=10.20.0.2", "--ip-range", "10.20.0.8/29"))
    r = ok(netctl("ipam", "show", "db"))
    # Counted over the range the allocator gives out (.8-.14); the gateway and the
    # router sit outside it, so they are reserved but take nothing from it.
    assert r.lines == ["Subnet    10.20.0.0/28", "Size      7", "Used      0", "Free      7",
                       "Ranges    10.20.0.8/29", "Reserved  10.20.0.1, 10.20.0.2"]
    assert ok(netctl("ipam", "show", "prod", "--json")).json == {
        "subnet": SUBNET, "size": 254, "used": 4, "free": 250, "ranges": [], "reserved": ["10.10.0.1"]}
    error(netctl("ipam", "show", "nope"), "does not exist")


# -- endpoint ls / inspect -----------------------------------------------------------------------------

def test_endpoint_ls(netctl, containers):
    a, b, c = containers["a"], containers["b"], containers["c"]
    r = ok(netctl("endpoint", "ls"))
    assert r.lines[0].split() == ["ENDPOINT", "NETWORK", "HOST", "IP", "MAC", "VLAN", "PORT"]
    assert [line.split() for line in r.lines[1:]] == [
        [a.endpoint[:12], "prod", "h1", "10.10.0.10", "02:4e:0a:0a:00:0a", "100", "np" + a.endpoint[:11]],
        [b.endpoint[:12], "prod", "h1", "10.10.0.11", "02:4e:0a:0a:00:0b", "100", "np" + b.endpoint[:11]],
        [c.endpoint[:12], "prod", "h2", "10.10.0.20", "02:4e:0a:0a:00:14", "100", "np" + c.endpoint[:11]]]
    assert ok(netctl("endpoint", "ls", "-q")).out == f"{a.endpoint}\n{b.endpoint}\n{c.endpoint}\n"
    assert ok(netctl("endpoint", "ls", "--host", "h2", "-q")).out == f"{c.endpoint}\n"
    rows = ok(netctl("endpoint", "ls", "--json", "--host", "h1")).json
    assert [(e["id"], e["ip"], e["host"], e["network"]) for e in rows] == [
        (a.endpoint, "10.10.0.10", "h1", "prod"), (b.endpoint, "10.10.0.11", "h1", "prod")]
    assert set(rows[0]) == {"id", "network", "network_id", "host", "ip", "mac", "vlan", "port", "docker_network",
                            "sandbox", "created"}


def test_endpoint_ls_by_network(netctl, np, containers):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/24", "--vlan", "200"))
    d = np.run_container(np.create_network("10.20.0.0/24", vlan=200, name="db"))
    assert ok(netctl("endpoint", "ls", "--network", "db", "-q")).out == f"{d.endpoint}\n"
    assert len(ok(netctl("endpoint", "ls", "-n", "prod", "-q")).lines) == 3
    assert ok(netctl("endpoint", "ls", "--network", "db", "--host", "h2", "-q")).out == ""
    assert ok(netctl("endpoint", "ls", "--network", "db", "--host", "h2")).lines == [
        "ENDPOINT  NETWORK  HOST  IP  MAC  VLAN  PORT"]
    error(netctl("endpoint", "ls", "--network", "nope"), "network 'nope' does not exist")


def test_endpoint_inspect_by_id_prefix_and_ip(netctl, containers):
    a = containers["a"]
    r = ok(netctl("endpoint", "inspect", a.endpoint[:8], "--format", "table"))
    f = fields(r.lines)
    assert list(f) == ["Id", "Network", "Network id", "Host", "Ip", "Mac", "Vlan", "Port", "Docker network",
                       "Sandbox", "Created"]
    assert f["Id"] == a.endpoint and f["Ip"] == "10.10.0.10" and f["Host"] == "h1" and f["Network"] == "prod"
    assert f["Network id"].startswith("n-") and f["Docker network"] == containers["net1"].id
    assert f["Port"] == "np" + a.endpoint[:11] and f["Mac"] == "02:4e:0a:0a:00:0a" and f["Vlan"] == "100"
    assert time.strptime(f["Created"], "%Y-%m-%d %H:%M:%S")
    by_ip = ok(netctl("endpoint", "inspect", "10.10.0.10", "--json")).json[0]
    assert by_ip["id"] == a.endpoint and by_ip["ip"] == "10.10.0.10" and by_ip["port"] == "np" + a.endpoint[:11]
    assert ok(netctl("endpoint", "inspect", a.endpoint.upper()[:12], "--json")).json[0]["id"] == a.endpoint


def test_endpoint_inspect_unknown_or_ambiguous_is_exit_1(netctl, containers):
    error(netctl("endpoint", "inspect", "10.10.0.99"),
          "no endpoint matches '10.10.0.99' (by id prefix, IP or container on this host)")
    error(netctl("endpoint", "inspect", "abc"), "no endpoint matches 'abc'")     # under 4 characters: no prefix


def test_endpoint_inspect_ambiguous_prefix(netctl, np, prod):
    net = np.create_network(SUBNET, vlan=100, name="prod")
    np.run_container(net, endpoint="abcd" + "1" * 60)
    np.run_container(net, endpoint="abcd" + "2" * 60)
    error(netctl("endpoint", "inspect", "abcd"), "'abcd' matches 2 endpoints: give more of the id")
    assert ok(netctl("endpoint", "inspect", "abcd1", "--json")).json[0]["id"] == "abcd" + "1" * 60


def test_endpoint_inspect_by_container_name(netctl, containers, monkeypatch):
    a = containers["a"]
    monkeypatch.setattr(docker_api.DockerNames, "container_endpoints",
                        lambda self, ref: {a.endpoint} if ref == "web-1" else set())
    assert ok(netctl("endpoint", "inspect", "web-1", "--json")).json[0]["id"] == a.endpoint


# -- endpoint release --------------------------------------------------------------------------------------

@pytest.fixture
def daemon(np, sock, monkeypatch):
    """h1's daemon on the (fake) socket: unixhttp.call hands requests to the real app."""
    view = FakeDockerView()
    app = create_app(dataclasses.replace(np.parts, releaser=Releaser(np.cfg, np.store, np.parts.view, np.links, np.switch, view,
                                                                     np.limits)))
    client = app.test_client()
    calls = []

    def call(path, method, body=None, timeout=30):
        calls.append((path, method, body))
        resp = client.post("/" + method, data=json.dumps(body or {}), content_type="application/json")
        return resp.status_code, json.loads(resp.get_data(as_text=True) or "{}")
    monkeypatch.setattr(unixhttp, "call", call)
    open(sock, "w").close()                                  # the socket "exists"
    return {"view": view, "calls": calls}


def test_endpoint_release_by_id_through_the_socket(netctl, np, containers, daemon, sock):
    a = containers["a"]
    port = "np" + a.endpoint[:11]
    r = ok(netctl("endpoint", "release", a.endpoint[:12]))
    assert r.out == f"released on host h1: ovs_port={port}, veth={port}, record=True, address=10.10.0.10\n"
    assert daemon["calls"] == [(sock, "NetPlugin.ReleaseEndpoint",
                                {"Force": False, "Wait": 5.0, "EndpointID": a.endpoint})]
    assert np.store.get_endpoint(a.endpoint) is None and port not in np.switch.ports
    # again, by the full id: the API says it was released already
    assert ok(netctl("endpoint", "release", a.endpoint)).out == "already released on host h1\n"
    reply = ok(netctl("endpoint", "release", a.endpoint, "--json")).json
    assert reply["Status"] == "already released" and reply["ReleasedBy"] == "api"


def test_endpoint_release_by_ip_through_the_socket(netctl, np, containers, daemon):
    b = containers["b"]
    reply = ok(netctl("endpoint", "release", "--ip", "10.10.0.11", "--json")).json
    assert reply["Status"] == "released" and reply["EndpointID"] == b.endpoint
    body = daemon["calls"][0][2]
    assert body["Address"] == "10.10.0.11" and body["Network"] == np.store.network_by_name("prod").id
    ok(netctl("endpoint", "release", "--ip", "10.10.0.12", "--network", "prod"))   # a free address
    assert daemon["calls"][1][2]["Network"] == "prod"


def test_endpoint_release_of_a_live_container_is_exit_1_unless_forced(netctl, np, containers, daemon):
    a = containers["a"]
    daemon["view"].attach(a.endpoint, containers["net1"].id, a.ip, name="web-1")
    error(netctl("endpoint", "release", a.endpoint[:12]), "belongs to running container web-1")
    assert np.store.get_endpoint(a.endpoint) is not None
    ok(netctl("endpoint", "release", a.endpoint[:12], "--force"))
    assert daemon["calls"][-1][2]["Force"] is True
    assert np.store.get_endpoint(a.endpoint) is None


def test_endpoint_release_of_another_hosts_endpoint_is_pending(netctl, np, containers, daemon):
    c = containers["c"]
    r = ok(netctl("endpoint", "release", c.endpoint[:12], "--wait", "0"))
    assert r.out == "pending on host h2 (host h2 is not alive: the release happens when it comes back)\n"
    assert np.store.release_request("h2", c.endpoint)["state"] == "pending"


def test_endpoint_release_errors(netctl, containers, daemon):
    error(netctl("endpoint", "release"), "give an endpoint ID or --ip IP (not both)")
    error(netctl("endpoint", "release", "abcdef", "--ip", "10.10.0.10"), "give an endpoint ID or --ip IP")
    error(netctl("endpoint", "release", "ffffffff"), "no endpoint matches 'ffffffff'")
    error(netctl("endpoint", "release", "f" * 64), f"endpoint {'f' * 64} is unknown")
    error(netctl("endpoint", "release", "--ip", "10.99.0.1"), "no network holds 10.99.0.1")
    error(netctl("endpoint", "release", "--ip", "nonsense"), "--ip 'nonsense' is not an IPv4 address")
    error(netctl("endpoint", "release", "--ip", "10.10.0.1"), "is the gateway address of network prod")
    usage(netctl("endpoint", "release", "x", "--wait", "soon"), "argument --wait: invalid float value")


def test_endpoint_release_without_a_socket_queues_for_the_owner(netctl, np, containers, sock):
    assert not os.path.exists(sock)
    a, c = containers["a"], containers["c"]
    r = ok(netctl("endpoint", "release", c.endpoint[:12], "--force"))
    assert r.out == "pending on host h2\n"
    request = np.store.release_request("h2", c.endpoint)
    assert request["state"] == "pending" and request["force"] is True and request["by"] == "netctl"
    reply = ok(netctl("endpoint", "release", a.endpoint[:12], "--json")).json
    assert reply == {"Status": "pending", "EndpointID": a.endpoint, "Host": "h1"}
    assert np.store.release_request("h1", a.endpoint)["force"] is False
    np.store.answer_release_request("h2", c.endpoint, None)
    reply = ok(netctl("endpoint", "release", "--ip", c.ip, "--json")).json       # by address, too
    assert reply == {"Status": "pending", "EndpointID": c.endpoint, "Host": "h2"}
    held = {ep.ip for ep in np.store.list_endpoints()}
    free = next(f"10.10.0.{i}" for i in range(200, 250) if f"10.10.0.{i}" not in held)
    error(netctl("endpoint", "release", "--ip", free),
          f"netplugin is not running here (no socket at {sock}) and no endpoint record matches")


# -- host ----------------------------------------------------------------------------------------------

@pytest.fixture
def hosts(np, containers):
    h1_beat = time.time() - 42                          # h1's last heartbeat, 42 s ago
    lease = np.kv.grant_lease(15)
    np.store.register_host(Host(host="h1", bridge="nptest0", datapath_type="netdev", version="1.2.3",
                                last_seen=h1_beat), lease)
    dead = np.kv.grant_lease(15)
    np.store.register_host(Host(host="h2", bridge="netplugin0", datapath_type="system", uplink="bond0",
                                last_seen=time.time() - 7200), dead)
    np.kv.revoke_lease(dead)
    return {"h1_beat": h1_beat}


def test_host_ls(netctl, hosts):
    r = ok(netctl("host", "ls"))
    assert r.lines[0].split() == ["HOST", "STATE", "BRIDGE", "DATAPATH", "UPLINK", "ENDPOINTS", "LAST", "SEEN"]
    rows = [line.split() for line in r.lines[1:]]
    # LAST SEEN is the last heartbeat, alive or dead (not "now" for a live host).
    assert rows[0][:6] == ["h1", "alive", "nptest0", "netdev", "-", "2"] and rows[0][7] == "ago"
    assert 42 <= int(rows[0][6].rstrip("s")) <= int(time.time() - hosts["h1_beat"]) + 1, rows[0]
    assert rows[1] == ["h2", "dead", "netplugin0", "system", "bond0", "1", "2h", "ago"]
    assert ok(netctl("host", "ls", "-q")).out == "h1\nh2\n"
    rows = ok(netctl("host", "ls", "--json")).json
    assert [(h["host"], h["alive"], h["endpoints"], h["uplink"]) for h in rows] == [
        ("h1", True, 2, None), ("h2", False, 1, "bond0")]
    assert rows[0]["last_seen"] == hosts["h1_beat"]                        # the record's time, to the beat
    assert rows[1]["last_seen"] < time.time() - 7000


def test_host_ls_last_seen_follows_the_heartbeat(netctl, np, monkeypatch):
    """The real heartbeat stamps its time once a minute: netctl shows it for a
    live host, and the last one for a host that died."""
    import netplugin.hosts as hosts_mod
    import netplugin.lease as lease_mod
    from netplugin.hosts import HostHeartbeat
    now = {"t": time.time() - 600}
    fake = type("T", (), {"time": staticmethod(lambda: now["t"]), "monotonic": staticmethod(lambda: now["t"])})
    monkeypatch.setattr(hosts_mod, "time", fake)
    monkeypatch.setattr(lease_mod, "time", fake)
    hb = HostHeartbeat(np.cfg, np.store)
    hb.beat()                                            # registered 600 s ago
    for _ in range(60):                                  # ... and beating every 5 s until 300 s ago (a stamp's time)
        now["t"] += hosts_mod.HEARTBEAT
        hb.beat()
    [row] = ok(netctl("host", "ls", "--json")).json
    assert row["alive"] is True and row["last_seen"] == now["t"] and row["started"] == now["t"] - 300
    assert ok(netctl("host", "ls")).lines[1].split()[-2:] in (["5m", "ago"], ["4m", "ago"])
    f = fields(ok(netctl("host", "inspect", "h1", "--format", "table")).lines)
    assert f["Last seen"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now["t"])) + " (5m ago)"
    np.kv.revoke_lease(hb.lease)                         # dead: its last beat stays
    [row] = ok(netctl("host", "ls", "--json")).json
    assert row["alive"] is False and row["last_seen"] == now["t"]


def test_host_ls_empty(netctl):
    assert ok(netctl("host", "ls", "-q")).out == ""
    assert ok(netctl("host", "ls", "--json")).json == []


def test_host_inspect(netctl, np, hosts):
    r = ok(netctl("host", "inspect", "h2", "--format", "table"))
    f = fields(r.lines)
    assert f["Host"] == "h2" and f["Alive"] == "False" and f["Uplink"] == "bond0" and f["Bridge"] == "netplugin0"
    assert f["Last seen"].endswith(" (2h ago)")
    assert f["Endpoints"] == "1" and f["Last reconcile"] == "-"
    np.store.put_json(np.store.k_reconcile("h1", "last"), {"started": time.time() - 120, "findings": [{}, {}],
                                                          "status": "done"})
    r = ok(netctl("host", "inspect", "h1", "--format", "table"))
    assert "Last reconcile  2m ago, 2 finding(s)" in r.lines
    info = ok(netctl("host", "inspect", "h1", "--json")).json[0]
    assert info["host"] == "h1" and info["alive"] is True and info["version"] == "1.2.3"
    assert info["last_seen"] == hosts["h1_beat"]
    assert info["last_reconcile"]["status"] == "done"
    error(netctl("host", "inspect", "h9"), "host 'h9' never registered: see 'netctl host ls'")


# -- reconcile, version, usage, etcd down -----------------------------------------------------------------------

def test_netctl_reconcile_prints_one_json_line(netctl, np, monkeypatch):
    view = FakeDockerView()
    np.switch.ensure_bridge(np.cfg.bridge, np.cfg.datapath_type)
    monkeypatch.setattr(backends, "make_reconciler", lambda cfg: Reconciler(
        cfg, np.store, np.links, np.switch, view, Releaser(cfg, np.store, np.parts.view, np.links, np.switch, view, np.limits),
        np.limits))
    r = ok(netctl("reconcile", "--dry-run", "--json", "--host-id", "h1", "--bridge", "nptest0"))
    assert r.out.count("\n") == 1
    report = r.json
    assert report["host"] == "h1" and report["dry_run"] is True and report["status"] == "done"
    r = ok(netctl("reconcile", "--dry-run", "--host-id", "h1", "--bridge", "nptest0"))
    assert r.out.startswith("reconcile on h1: done, 0 finding(s)")
    bad = netctl("reconcile", "--grace", "-5")
    assert bad.code == 2 and "--grace must be 0 or more seconds" in bad.err


def test_version(netctl):
    assert ok(netctl("version")).out == f"netctl {__version__}\n"


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["frob"], "argument COMMAND: invalid choice: 'frob'"),
    (["network"], "the following arguments are required: ACTION"),
    (["network", "frob"], "invalid choice: 'frob'"),
    (["network", "create", "prod", "--vlan", "100"], "the following arguments are required: --subnet/-s"),
    (["network", "create", "prod", "--subnet", SUBNET], "the following arguments are required: --vlan/-p"),
    (["network", "ls", "--bogus"], "unrecognized arguments: --bogus"),
    (["endpoint", "ls", "--host"], "argument --host: expected one argument"),
    (["host"], "the following arguments are required: ACTION"),
    (["host", "inspect"], "the following arguments are required: HOST"),
])
def test_usage_errors_are_exit_2_with_a_message(netctl, kv, argv, message):
    err = usage(netctl(*argv), message)
    assert "see 'netctl" in err and "--help'" in err
    assert kv.calls == []                                   # nothing was asked of etcd


def test_etcd_down_is_exit_1_naming_the_endpoints(netctl, kv, prod):
    kv.down = True
    for argv in (["network", "ls"], ["endpoint", "ls"], ["host", "ls"], ["ipam", "show", "prod"],
                 ["network", "create", "x", "--subnet", "10.40.0.0/24", "--vlan", "40"]):
        error(netctl(*argv), "store unavailable: etcd did not answer at http://127.0.0.1:2379")


def test_unreachable_real_etcd_is_exit_1_naming_the_endpoints(netctl, monkeypatch):
    """With the real EtcdKV: a closed port on this machine, named in the message."""
    monkeypatch.setattr(backends, "make_store", REAL_MAKE_STORE)
    err = error(netctl("--etcd-endpoints", "http://127.0.0.1:1,http://127.0.0.2:1", "network", "ls"),
                "store unavailable: etcd did not answer at http://127.0.0.1:1, http://127.0.0.2:1")
    assert "check that etcd is running and reachable" in err


def test_endpoint_release_with_a_stale_socket_is_exit_1_with_a_message(netctl, np, containers, sock):
    """BUG (cli/endpoint_cmds.py, _release; cli/main.py, main): when the socket
    file exists but no daemon listens (a daemon killed with kill -9 leaves it),
    unixhttp.call raises ConnectionRefusedError, which is not a NetpluginError:
    netctl dies with a Python traceback instead of exit 1 and a 'netctl: ...'
    message (e.g. that the daemon does not answer at the socket). The same goes
    for a timeout (30 s) or a reply that is not JSON."""
    import socket as socket_mod
    stale = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    stale.bind(sock)
    stale.close()                                       # the file stays, nobody listens
    try:
        r = netctl("endpoint", "release", containers["a"].endpoint[:12])
    except OSError as exc:
        pytest.fail(f"netctl crashed with {exc!r} instead of exit 1 and a 'netctl: ' message")
    error(r, sock)


# -- docker's conventions: several names, JSON inspect, --format, --filter, rm -f, aliases -------------------------

def test_inspect_takes_several_names_and_says_which_are_missing(netctl, prod):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/24", "--vlan", "200"))
    assert [n["name"] for n in ok(netctl("network", "inspect", "prod", "db")).json] == ["prod", "db"]
    r = netctl("network", "inspect", "prod", "nope", "db")
    assert r.code == 1 and [n["name"] for n in r.json] == ["prod", "db"]
    assert r.err == "netctl: network 'nope' does not exist: see 'netctl network ls'\n"


def test_format_templates_on_listings_and_inspect(netctl, prod):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/24", "--vlan", "200"))
    assert ok(netctl("network", "ls", "--format", "{{.Name}} {{.VLAN}}")).lines == ["db 200", "prod 100"]
    assert ok(netctl("network", "ls", "--format", "table {{.Name}}\\t{{.VLAN}}")).lines == [
        "NAME   VLAN", "db     200", "prod   100"]
    assert ok(netctl("network", "ls", "--format", "json")).json[1]["vlan"] == 100
    assert json.loads(ok(netctl("network", "inspect", "prod", "--format", "{{json .Pool}}")).out)["used"] == 1
    error(netctl("network", "ls", "--format", "{{.Colour}}"), "--format: no field 'Colour'")
    error(netctl("network", "ls", "--format", "{{range .}}x{{end}}"), "is not a field")


def test_filters_on_listings(netctl, containers):
    assert ok(netctl("network", "ls", "--filter", "vlan=100", "-q")).lines != []
    assert ok(netctl("network", "ls", "--filter", "vlan=101", "-q")).lines == []
    rows = ok(netctl("endpoint", "ls", "--filter", "host=h1", "--filter", "host=h2", "--json")).json
    assert sorted(r["host"] for r in rows) == ["h1", "h1", "h2"]
    assert [r["ip"] for r in ok(netctl("endpoint", "ls", "-f", "host=h2", "-f", "network=prod", "--json")).json] \
        == ["10.10.0.20"]
    assert ok(netctl("host", "ls", "--filter", "state=dead", "-q")).lines == []
    error(netctl("endpoint", "ls", "--filter", "colour=red"),
          "--filter: unknown key 'colour': the keys are host, id, ip, mac, network, vlan")
    usage(netctl("network", "ls", "--filter", "vlan"), "'vlan' must look like KEY=VALUE")


def test_rm_takes_several_names_and_f_forgives_only_missing_ones(netctl, kv, containers):
    ok(netctl("network", "create", "db", "--subnet", "10.20.0.0/24", "--vlan", "200"))
    r = netctl("network", "rm", "nope", "db")
    assert r.code == 1 and r.out == "db\n" and "network 'nope' does not exist" in r.err
    assert ok(netctl("network", "rm", "-f", "nope")).out == ""
    assert netctl("network", "rm", "-f", "prod").code == 1                     # endpoints: -f is not enough
    assert [n["name"] for n in ok(netctl("network", "ls", "--json")).json] == ["prod"]
    r = netctl("network", "rm", "prod", "--with-endpoints", "--json")
    assert r.code == 0 and len(r.json[0]["endpoints"]) == 3 and "3 endpoint record(s)" in r.err
    assert ok(netctl("network", "ls", "-q")).out == ""


def test_contiv_aliases(netctl, containers):
    assert ok(netctl("net", "list", "-q")).lines == ok(netctl("network", "ls", "-q")).lines
    assert ok(netctl("ep", "ls", "-q")).lines == ok(netctl("endpoint", "ls", "-q")).lines
    ok(netctl("netprofile", "create", "gold", "--rate", "10mbit"))
    assert ok(netctl("profile", "ls", "-q")).lines == ["gold"]
    assert ok(netctl("netprofile", "delete", "gold")).out == "gold\n"
    assert ok(netctl("global", "info", "--json")).json == ok(netctl("global", "show", "--json")).json
