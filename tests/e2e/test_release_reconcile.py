"""ReleaseEndpoint and the reconciler against real dockerd, OVS and etcd:
every kind of leak is found and repaired, nothing alive is touched."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time

import pytest

from .conftest import ETCD, IMAGE, LABEL, Plugin, docker, ip_of, new_network, pings, run, start

pytestmark = pytest.mark.e2e


def endpoint_of(container: str, network: str) -> str:
    return docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").EndpointID}}}}',
                  container).stdout.strip()


def pool_keys(plugin: Plugin, subnet: str) -> list[str]:
    return plugin.etcd_keys(f"ipam/{subnet.replace('/', '-')}/")


def test_release_endpoint_twice_and_unknown(clean):
    new_network("e2e-rel", "10.80.0.0/24", 180)
    start("rel1", "e2e-rel", cmd=("sleep", "600"))
    eid = endpoint_of("rel1", "e2e-rel")
    status, reply = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})
    assert status == 409 and "running container" in reply["Err"], reply      # alive: refused
    status, reply = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid, "Force": True})
    assert status == 200 and reply["Status"] == "released", reply
    assert reply["Removed"]["ovs_port"] and reply["Removed"]["veth"] and reply["Removed"]["record"]
    ip = reply["Removed"]["address"]
    assert ip == ip_of("rel1", "e2e-rel")
    assert clean.ovs_ports() == [] and not clean.etcd_keys(f"endpoints/{eid}")
    assert len(pool_keys(clean, "10.80.0.0/24")) == 1       # only the gateway is left
    status, again = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})
    assert status == 200 and again["Status"] == "already released", again
    status, unknown = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": "f" * 64})
    assert status == 404 and "unknown" in unknown["Err"]
    status, bad = clean.call("NetPlugin.ReleaseEndpoint", {})
    assert status == 400 and "EndpointID" in bad["Err"]


def test_release_by_address_through_netctl(clean):
    """An address claimed by a start that never finished, released by IP through netctl and the socket."""
    new_network("e2e-relip", "10.81.0.0/24", 181)
    pool = clean.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.81.0.0/24"})[1]
    assert clean.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.81.0.40"})[0] == 200
    env_socket = dict(clean.env)
    proc = clean.netctl("endpoint", "release", "--ip", "10.81.0.40", "--json")
    assert json.loads(proc.stdout)["Status"] == "released", proc.stdout
    assert not [k for k in pool_keys(clean, "10.81.0.0/24") if k.endswith("%08x" % 40)]
    again = json.loads(clean.netctl("endpoint", "release", "--ip", "10.81.0.40", "--json").stdout)
    assert again["Status"] == "already released"
    assert env_socket["NETPLUGIN_SOCKET"] == clean.socket


@pytest.fixture
def second_host(clean, tmp_path):
    other = Plugin(tmp_path, socket=f"/run/netplugin-e2e-{secrets.token_hex(3)}.sock", prefix=clean.prefix)
    other.start()
    yield other
    other.stop()
    run("ovs-vsctl", "--if-exists", "del-br", other.bridge, check=False)


def test_release_on_another_host_is_pending_then_done(clean, second_host):
    new_network("e2e-remote", "10.82.0.0/24", 182)
    docker_net = "ab" * 32           # host B's Docker network, driven through the protocol directly
    pool = second_host.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.82.0.0/24"})[1]
    assert second_host.call("NetworkDriver.CreateNetwork", {
        "NetworkID": docker_net, "Options": {}, "IPv4Data": [{"AddressSpace": "netplugin", "Pool": "10.82.0.0/24",
                                                              "Gateway": "10.82.0.1/24"}]})[0] == 200
    addr = second_host.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})[1]["Address"]
    eid = secrets.token_hex(32)
    status, _ = second_host.call("NetworkDriver.CreateEndpoint", {"NetworkID": docker_net, "EndpointID": eid,
                                                                 "Interface": {"Address": addr}})
    assert status == 200
    status, reply = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})
    assert status == 200 and reply["Status"] == "pending" and reply["Host"] == second_host.host_id, reply
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and clean.etcd_keys(f"endpoints/{eid}"):
        time.sleep(0.1)
    assert not clean.etcd_keys(f"endpoints/{eid}"), "host B must carry out the queued release"
    assert clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})[1]["Status"] == "already released"
    assert second_host.ovs_ports() == []
    second_host.call("NetworkDriver.DeleteNetwork", {"NetworkID": docker_net})


def test_every_kind_of_leak_is_repaired(clean):
    # dockerd killed with kill -9 while a container runs, and the container removed while it is down.
    # (Without live-restore the restarted dockerd stops what ran before, so this goes first.)
    new_network("e2e-leak", "10.83.0.0/24", 183)
    start("lv-gone", "e2e-leak")
    gone_eid = endpoint_of("lv-gone", "e2e-leak")
    remove_container_behind_dockers_back("lv-gone")

    for name in ("probe", "lv-veth", "lv-record", "lv-port"):
        start(name, "e2e-leak")
    ips = {n: ip_of(n, "e2e-leak") for n in ("lv-veth", "lv-record", "lv-port")}
    eids = {n: endpoint_of(n, "e2e-leak") for n in ips}
    # The daemon killed with kill -9 between RequestAddress and CreateEndpoint.
    pool = clean.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.83.0.0/24"})[1]
    orphan = clean.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})[1]["Address"]
    clean.kill9()
    clean.start()
    # A veth deleted by hand, an etcd record deleted by hand, an OVS port deleted by hand.
    run("ip", "link", "del", "np" + eids["lv-veth"][:11])
    run("etcdctl", f"--endpoints={ETCD}", "del", f"{clean.prefix}/endpoints/{eids['lv-record']}")
    run("ovs-vsctl", "del-port", "np" + eids["lv-port"][:11])
    for name in ("lv-veth", "lv-port"):      # (a lost record does not stop traffic: OVS forwards alone)
        assert not pings("probe", ips[name], count=1), f"{name} should be cut off before the repair"

    time.sleep(10.5)     # the in-flight floor: an unbound address younger than 10 s is never touched
    report = clean.reconcile("--grace", "0")
    kinds = report["counts"]
    assert kinds.get("ip_without_endpoint") == 1, report
    assert kinds.get("endpoint_without_veth") == 1 and kinds.get("port_without_record") == 1, report
    assert kinds.get("endpoint_without_port") == 1, report
    assert report["errors"] == 0, report
    assert orphan.split("/")[0] in {f["id"] for f in report["findings"]}
    for name, ip in ips.items():
        assert pings("probe", ip), f"{name} must answer again after the repair"
    assert not clean.etcd_keys(f"endpoints/{gone_eid}"), "the removed container's endpoint must be released"
    assert "np" + gone_eid[:11] not in clean.ovs_ports() + clean.veths()
    assert clean.etcd_keys(f"endpoints/{eids['lv-record']}"), "a live container's record is rebuilt"
    second = clean.reconcile("--grace", "0")
    assert second["findings"] == [], second


def remove_container_behind_dockers_back(name: str) -> None:
    """kill -9 dockerd, kill the container's processes, delete Docker's record of it, restart dockerd."""
    cid = docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())
    dockerd = int(run("pidof", "dockerd").stdout.split()[0])
    os.kill(dockerd, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{dockerd}"):
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    run("ctr", "-n", "moby", "tasks", "delete", "-f", cid, check=False)
    run("ctr", "-n", "moby", "containers", "delete", cid, check=False)
    run("rm", "-rf", f"/var/lib/docker/containers/{cid}")
    run("bash", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "services.sh"), "start",
        timeout=120)


def test_nothing_alive_is_released_under_churn(clean):
    new_network("e2e-churn", "10.84.0.0/24", 184)
    start("anchor", "e2e-churn")
    stop = threading.Event()
    reports: list[dict] = []

    def reconcile_loop():
        while not stop.is_set():
            reports.append(clean.reconcile("--grace", "0"))

    loop = threading.Thread(target=reconcile_loop)
    loop.start()
    try:
        names = [f"churn{i}" for i in range(50)]
        for batch in range(0, 50, 10):
            procs = [subprocess.Popen(["/usr/bin/docker", "run", "-d", "--label", LABEL, "--name", n, "--network",
                                       "e2e-churn", IMAGE, "sleep", "600"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE) for n in names[batch:batch + 10]]
            assert all(p.wait(120) == 0 for p in procs)
            # stop half of the batch again while the reconciler runs
            docker("rm", "-f", *names[batch:batch + 5])
        survivors = [n for i, n in enumerate(names) if i % 10 >= 5]
        time.sleep(1)
    finally:
        stop.set()
        loop.join(180)
    assert len(reports) >= 2
    for name in survivors:
        assert pings("anchor", ip_of(name, "e2e-churn"), count=1), f"{name} must still answer"
    released = [f for r in reports for f in r["findings"] if f["action"] == "release" and f["done"]]
    live_eids = {endpoint_of(n, "e2e-churn") for n in survivors + ["anchor"]}
    assert not [f for f in released if f["id"] in live_eids], "a live endpoint was released"
    assert docker("ps", "-q", "--filter", "label=netplugin.test=1", "--filter",
                  "status=running").stdout.split().__len__() == len(survivors) + 1
