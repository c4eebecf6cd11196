"""Idle traffic (issue 15): a real daemon on a private etcd member holding
5,000 foreign endpoint records (100 other hosts x 50, on four networks, one
of them bound by the daemon) costs etcd at most 1 KiB/s while nothing changes.

How each figure is measured, and why it is sound:

* Idle: etcd's own counter ``etcd_network_client_grpc_sent_bytes_total`` of
  a member only this test uses, read twice 30 s apart once the daemon's
  ``/health`` says its view is ready (and 10 s more). Nobody else speaks
  gRPC to the member in that window (its /metrics is plain HTTP, not counted).
* Idle CPU: user + system time of the daemon's processes (/proc/PID/stat)
  over the same window, at most 1% of one core. CPU time is what the
  daemon did, not how long the machine made it wait, so a loaded CI machine
  does not inflate it much.
* A change the daemon has no interest in: 100 endpoints written on a network
  it has not bound. The writer's own replies also count in etcd's sent bytes,
  so that counter cannot tell the two apart. Two measures that can:
  etcd's ``etcd_debugging_mvcc_events_total`` (watch events sent, by this
  member, to any watcher: the writer watches nothing, so every event went to
  the daemon), and the bytes the kernel received on the daemon's own TCP
  connections to the member (``ss -tinp``, ``bytes_received`` of the sockets
  held by the daemon's processes). Both must stay (nearly) flat.
* The control that makes the second check able to fail: the same 100 writes
  on the network the daemon HAS bound must raise both measures (>= 100
  events, >= 100 records' worth of bytes) and reach its view.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from netplugin.kv import EtcdKV, Put
from netplugin.model import Binding, Endpoint, Network
from netplugin.store import Store
from tests.harness.daemon import Daemon, settings_env
from tests.harness.etcd import Member
from tests.harness.fleet import proc_cpu
from tests.harness.proc import free_port, run

pytestmark = pytest.mark.integration

HOSTS, PER_HOST = 100, 50
NETWORKS = 4                       # network 0 is the one the daemon binds
BUDGET = 1024                      # bytes/s per host (issue 15)
WINDOW = 30.0
IDLE_CPU = 1.0                     # % of one core, all the daemon's processes (issue 15)


def metric(member: Member, name: str) -> float:
    """The sum of one metric's samples on the member's /metrics."""
    with urllib.request.urlopen(f"{member.client}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{")]
    assert samples, f"etcd has no metric {name}"
    return sum(samples)


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
        return json.loads(reply.read())


def received_by(pids: list[int], member: Member) -> int:
    """Bytes the kernel received on the established TCP connections of pids to the member."""
    port = member.client.rsplit(":", 1)[1]
    out = run(["ss", "-tinpH", "state", "established", "dst", f"127.0.0.1:{port}"]).stdout
    total, mine = 0, False
    for line in out.splitlines():
        if not line[:1].isspace():          # a socket line: whose is it?
            mine = any(int(pid) in pids for pid in re.findall(r"pid=(\d+)", line))
            continue
        got = re.search(r"bytes_received:(\d+)", line)
        if mine and got:
            total += int(got.group(1))
    return total


def network(index: int) -> Network:
    subnet = ipaddress.ip_network(f"10.{200 + index}.0.0/20")
    return Network(id="n-" + secrets.token_hex(6), name=f"idle-{index}-{secrets.token_hex(2)}",
                   subnet=str(subnet), gateway=str(subnet[1]), vlan=3000 + index, origin="netctl")


def endpoint(net: Network, host: str, n: int) -> Endpoint:
    eid = secrets.token_hex(32)
    subnet = ipaddress.ip_network(net.subnet)
    return Endpoint(id=eid, network=net.id, docker_network=secrets.token_hex(32), host=host,
                    ip=str(subnet[16 + n]), prefixlen=subnet.prefixlen,
                    mac="02:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big")) + ":" + eid[:2] + ":" + eid[2:4],
                    port="npi" + eid[:11], peer="nci" + eid[:11], vlan=net.vlan, network_name=net.name or "")


def write(kv: EtcdKV, store: Store, eps: list[Endpoint]) -> None:
    """The records in the current layout (record + locator), 50 endpoints a transaction."""
    for i in range(0, len(eps), 50):
        ops = []
        for ep in eps[i:i + 50]:
            ep.check()
            ops += [Put(store.k_endpoint_at(ep), ep.to_json()), Put(store.k_locator(ep.id), f"{ep.network}/{ep.host}")]
        assert kv.txn([], ops)


@pytest.fixture
def member(tmp_path) -> Iterator[Member]:
    m = Member.single("idle", tmp_path)
    m.start()
    try:
        m.wait_healthy()
        yield m
    finally:
        m.kill()


@pytest.fixture
def cluster(member, tmp_path) -> Iterator[dict]:
    """The member with four networks, 5,000 foreign endpoints, and a daemon bound to network 0."""
    kv = EtcdKV([member.client], timeout=10)
    store = Store(kv, "/netplugin/v1")
    nets = [network(i) for i in range(NETWORKS)]
    for net in nets:
        store.create_network(net, [])
    host = "idle-" + secrets.token_hex(3)
    store.put_binding(Binding(docker_network=secrets.token_hex(32), network=nets[0].id, host=host,
                              pool=nets[0].subnet))
    eps = [endpoint(nets[h % NETWORKS], f"other-{h:03d}", h // NETWORKS * PER_HOST + n)
           for h in range(HOSTS) for n in range(PER_HOST)]
    write(kv, store, eps)
    bound = sum(ep.network == nets[0].id for ep in eps)
    metrics_port = free_port()
    sock = f"/run/netplugin-idle-{secrets.token_hex(3)}.sock"
    bridge = "nptest" + secrets.token_hex(3)
    daemon = Daemon(sock, tmp_path / "daemon.log", settings_env(
        base=dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path)),
        etcd_endpoints=member.client, etcd_prefix="/netplugin/v1", host_id=host, bridge=bridge,
        datapath_type="netdev", socket=sock, metrics_address=f"127.0.0.1:{metrics_port}"))
    try:
        daemon.start()
        yield {"kv": kv, "store": store, "nets": nets, "host": host, "daemon": daemon,
               "port": metrics_port, "bound": bound}
    finally:
        daemon.stop()
        kv.close()
        subprocess.run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge], check=False,
                       capture_output=True, timeout=30)


def wait_view(c: dict, endpoints: int, within: float = 30) -> dict:
    deadline = time.monotonic() + within
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = health(c["port"]).get("view", {})
        except OSError:
            last = {}
        if last.get("ready") and last.get("networks_followed") == 1 and last.get("endpoints") == endpoints:
            return last
        time.sleep(0.3)
    raise AssertionError(f"the view never held the bound network's {endpoints} endpoints: {last}\n"
                         f"{c['daemon'].tail()}")


def test_idle_traffic_within_budget_and_unbound_changes_cost_nothing(member, cluster):
    c = cluster
    wait_view(c, c["bound"])
    time.sleep(10)
    pids = c["daemon"].pids()
    sent0, t0 = metric(member, "etcd_network_client_grpc_sent_bytes_total"), time.monotonic()
    cpu0 = sum(proc_cpu(p) for p in pids)
    time.sleep(WINDOW)
    sent1, t1 = metric(member, "etcd_network_client_grpc_sent_bytes_total"), time.monotonic()
    cpu = (sum(proc_cpu(p) for p in pids) - cpu0) / (t1 - t0) * 100
    rate = (sent1 - sent0) / (t1 - t0)
    print(f"\nidle: etcd sent {sent1 - sent0:.0f} bytes in {t1 - t0:.1f} s = {rate:.1f} B/s "
          f"(5,000 foreign endpoints, {c['bound']} on the bound network); the daemon's processes used "
          f"{cpu:.2f}% of a core")
    assert c["daemon"].alive(), c["daemon"].tail()
    assert rate <= BUDGET, f"idle etcd traffic {rate:.0f} B/s is over the {BUDGET} B/s budget"
    assert cpu <= IDLE_CPU, f"the idle daemon used {cpu:.2f}% of a core, over the {IDLE_CPU}% budget"

    events = "etcd_debugging_mvcc_events_total"

    def change(net: Network) -> tuple[float, int]:
        """Write 100 new endpoints of other hosts on net: (watch events sent, bytes the daemon received)."""
        e0, r0 = metric(member, events), received_by(pids, member)
        write(c["kv"], c["store"], [endpoint(net, f"late-{n % 10}", 1000 + n) for n in range(100)])
        time.sleep(3)
        return metric(member, events) - e0, received_by(pids, member) - r0

    unbound_events, unbound_bytes = change(c["nets"][1])
    print(f"100 endpoints on an unbound network: {unbound_events:.0f} watch events, "
          f"{unbound_bytes} bytes to the daemon")
    bound_events, bound_bytes = change(c["nets"][0])
    wait_view(c, c["bound"] + 100, within=10)
    print(f"100 endpoints on the bound network: {bound_events:.0f} watch events, {bound_bytes} bytes to the daemon")
    record = len(endpoint(c["nets"][0], "late-0", 1).to_json())
    assert bound_events >= 100 and bound_bytes >= 100 * record, \
        "the control failed: writes on the bound network must reach the daemon, else the measure sees nothing"
    assert unbound_events <= 2, f"{unbound_events:.0f} watch events went out for a network the daemon has not bound"
    assert unbound_bytes <= 2 * record, \
        f"the daemon received {unbound_bytes} bytes for 100 endpoints on a network it has not bound"
