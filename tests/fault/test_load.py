"""Load: 100 containers started at once by two daemons sharing one pool, and
1,000 endpoint create/delete cycles that must leave nothing behind.

Two daemons sharing the pool are two plugin daemons with two driver names
(``npfb`` and ``npfb2``) registered with the main dockerd, each with its own
host id and bridge, both bound to the same global network (one subnet, one
etcd pool). One dockerd talks to one plugin per driver name, so two names are
how one dockerd drives two daemons. The two-host rig (scripts/rig.sh) would
drive them from two dockerds, but it belongs to the multi-host ring for the
whole session (one rig per machine, under a lock) and starting a second copy
costs minutes of the CI budget. What this test is about, two allocators
racing for the same addresses in etcd while Docker starts containers as fast
as it can, does not depend on which dockerd asks: both daemons get their
RequestAddress calls from the same burst of ``docker run``.

The 1,000 cycles go straight to the plugin socket, in the order and with the
bodies Docker sends (RequestAddress, CreateEndpoint, Join, Leave,
DeleteEndpoint, ReleaseAddress): 1,000 ``docker run`` would take far longer
than CI allows, and Docker adds nothing the plugin sees. One cycle in three is
on a network with a bandwidth profile, so a meter and a metered table-0 flow
are made and removed too. They run as 8 streams of 125 back-to-back cycles:
one stream of 1,000 takes over 4 minutes on the shared CI machine, more than
the fault ring may spend on it, and concurrent streams are the harder case
(deletes race creates and the sync loops' passes). bench/soak_lifecycles.py
runs them strictly one after another, in any number.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from netplugin.dataplane.flows import cookie_for

from .faultkit import DOCKER, IMAGE, LABEL, Daemon, docker, host_veths, ofctl_lines, remove_containers, \
    remove_networks, rm_networks, wait_until

PARALLEL = 100
CYCLES = 1000
STREAMS = 8                            # cycles run in 8 streams of 125 sequential cycles
LOAD_SUBNET = "10.251.0.0/24"          # VLAN 3600, shared by both daemons
CAPPED_SUBNET = "10.251.1.0/24"        # VLAN 3601, every endpoint metered
PLAIN_SUBNET = "10.251.2.0/24"         # VLAN 3602


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    a = Daemon(tmp, "npfb")
    b = Daemon(tmp, "npfb2", prefix=a.prefix)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        remove_containers()
        remove_networks("npfb", "npfb2")
        a.cleanup()
        b.cleanup()


def test_100_parallel_containers_two_daemons_one_pool(daemons):
    a, b = daemons
    tag = secrets.token_hex(2)
    net_a, net_b = f"fb-load-a-{tag}", f"fb-load-b-{tag}"
    a.network(net_a, LOAD_SUBNET, "vlan=3600")
    b.network(net_b, LOAD_SUBNET)                        # binds to the global network a made
    nets = a.store.list_networks()
    assert len(nets) == 1, f"both Docker networks must be bound to one global network: {nets}"

    def start(i: int) -> subprocess.CompletedProcess:
        net = net_a if i % 2 == 0 else net_b
        argv = [DOCKER, "run", "-d", "--label", LABEL, "--name", f"fbload-{i}", "--network", net,
                IMAGE, "sleep", "600"]
        try:
            return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, -1, "", f"no answer from docker run in 180 s ({net})")

    t0 = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(start, range(PARALLEL)))
    elapsed = time.monotonic() - t0
    failed = [(i, r.stderr.strip()) for i, r in enumerate(results) if r.returncode != 0]
    print(f"\n{PARALLEL} parallel docker run on 2 daemons: {elapsed:.1f} s, {len(failed)} failed")
    if failed:  # what each daemon was doing, for a run that hung
        a.dump_threads()
        b.dump_threads()
    assert not failed, (f"{len(failed)} of {PARALLEL} docker run failed: {failed[:5]}\n"
                        f"--- npfb:\n{a.tail(30000)}\n--- npfb2:\n{b.tail(30000)}")

    fmt = "{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{.EndpointID}}{{end}}"
    out = docker("inspect", "-f", fmt, *[f"fbload-{i}" for i in range(PARALLEL)]).stdout.split("\n")
    rows = [line.split() for line in out if line.strip()]
    ips = [r[1] for r in rows]
    assert len(rows) == PARALLEL and all(len(r) == 3 for r in rows), rows
    assert len(set(ips)) == PARALLEL, f"duplicate addresses: {sorted(ip for ip in ips if ips.count(ip) > 1)}"

    # etcd agrees: one record per container, half on each host, one claim per address.
    on_a, on_b = a.records(), b.records()
    assert len(on_a) == PARALLEL // 2 and len(on_b) == PARALLEL // 2, (len(on_a), len(on_b))
    assert {ep.ip for ep in on_a + on_b} == set(ips)
    claims = a.allocations(LOAD_SUBNET) + b.allocations(LOAD_SUBNET)
    assert sorted(al.ip for _, al in claims) == sorted(ips)
    assert len(a.ports()) == PARALLEL // 2 and len(b.ports()) == PARALLEL // 2

    t0 = time.monotonic()
    remove_containers()
    print(f"removed {PARALLEL} containers in {time.monotonic() - t0:.1f} s")
    assert wait_until(lambda: not a.records() and not b.records(), 30), "records left after docker rm"
    assert not a.allocations(LOAD_SUBNET) and not b.allocations(LOAD_SUBNET)
    assert a.ports() == [] and b.ports() == []
    # Flows of unlimited ports are deleted off Docker's path, by a background thread: give it a moment.
    assert wait_until(lambda: not a.endpoint_flows() and not b.endpoint_flows() and not a.meters()
                      and not b.meters(), 15, every=1), \
        f"flows left after docker rm: {a.endpoint_flows()[:3]} {b.endpoint_flows()[:3]} ({len(a.endpoint_flows())}" \
        f" + {len(b.endpoint_flows())})"
    stuck = rm_networks(net_a, net_b)
    if stuck:
        print(f"Docker miscounts the endpoints of {stuck} (none attached, none in etcd): left for the fixture")


def _ok(daemon: Daemon, method: str, body: dict) -> dict:
    status, reply = daemon.call(method, body)
    assert status == 200, f"{method} -> {status} {reply}\n{daemon.tail()}"
    return reply


def cycle(a: Daemon, i: int, capped: str, plain: str) -> list[str]:
    """One container's life as Docker drives it; one in 75 (limited) checks the
    port's table-0 flow and meter while it lives. Returns the meters it saw."""
    net, pool = (capped, CAPPED_SUBNET) if i % 3 == 0 else (plain, PLAIN_SUBNET)
    eid = secrets.token_hex(32)
    address = _ok(a, "IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})["Address"]
    _ok(a, "NetworkDriver.CreateEndpoint", {"NetworkID": net, "EndpointID": eid, "Options": {},
                                            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}})
    joined = _ok(a, "NetworkDriver.Join", {"NetworkID": net, "EndpointID": eid,
                                            "SandboxKey": f"/var/run/docker/netns/{eid[:12]}", "Options": {}})
    # The container end of the endpoint's own pair: made for it (nc + id) or a warm pool pair (ncp).
    port = subprocess.run(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find", "Port",
                           f"external_ids:np-endpoint={eid}"], capture_output=True, text=True).stdout.split()
    assert len(port) == 1, (eid[:12], port)
    assert joined["InterfaceName"]["SrcName"] == "nc" + port[0][2:], (port, joined["InterfaceName"])
    seen = []
    if i % 25 == 0 and pool == CAPPED_SUBNET:
        # A limit holds from CreateEndpoint on: a metered table-0 flow and its meter.
        # (An unlimited port's flow is added by the sync loop, off Docker's path.)
        flow = ofctl_lines("dump-flows", a.bridge, f"table=0,cookie={cookie_for(eid):#x}/-1")
        assert len(flow) == 1, (eid[:12], flow, a.endpoint_flows())
        meter = re.search(r"meter:(\d+)", flow[0])
        assert meter, flow
        seen = [m for m in a.meters() if m.startswith(f"meter={meter.group(1)} ")]
        assert len(seen) == 1 and "rate=20000" in seen[0], (seen, a.meters())
    _ok(a, "NetworkDriver.Leave", {"NetworkID": net, "EndpointID": eid})
    _ok(a, "NetworkDriver.DeleteEndpoint", {"NetworkID": net, "EndpointID": eid})
    _ok(a, "IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": address.split("/")[0]})
    return seen


def test_1000_create_delete_cycles_leave_nothing(daemons):
    a, _ = daemons
    a.netctl("profile", "create", "fb-cap", "--rate", "20mbit")
    capped = a.network("fb-cycles-capped", CAPPED_SUBNET, "vlan=3601", "profile=fb-cap")
    plain = a.network("fb-cycles-plain", PLAIN_SUBNET, "vlan=3602")
    assert wait_until(lambda: a.bridge in subprocess.run(["ovs-vsctl", "list-br"], capture_output=True,
                                                         text=True).stdout.split(), 15), \
        f"bridge {a.bridge} not made\n{a.tail()}"

    # What must be exactly the same after the cycles (the networks and profile stay).
    keys0 = set(a.etcd_keys())
    flows0 = sorted(a.flows())
    veths0 = host_veths()
    assert a.ports() == [] and a.meters() == [] and a.endpoint_flows() == []

    metered = []
    failures: list[str] = []

    def stream(n: int) -> None:
        for k in range(CYCLES // STREAMS):
            i = n + k * STREAMS
            try:
                metered.extend(cycle(a, i, capped, plain))
            except AssertionError as exc:
                failures.append(f"cycle {i}: {exc}")
                return

    t0 = time.monotonic()
    with ThreadPoolExecutor(STREAMS) as pool:
        list(pool.map(stream, range(STREAMS)))
    elapsed = time.monotonic() - t0
    print(f"\n{CYCLES} protocol cycles in {STREAMS} streams: {elapsed:.1f} s ({CYCLES / elapsed:.1f}/s), "
          f"{len(metered)} meters checked")
    assert not failures, failures[:3]
    assert len(metered) >= 5

    # The sync loops may still be finishing a pass started before the last delete: let them settle.
    def same() -> bool:
        return (a.ports() == [] and a.meters() == [] and sorted(a.flows()) == flows0
                and set(a.etcd_keys()) == keys0)
    assert wait_until(same, 15, every=1), (
        f"left behind: ports {a.ports()}, meters {a.meters()}, "
        f"flows {sorted(set(a.flows()) ^ set(flows0))}, keys {sorted(set(a.etcd_keys()) ^ keys0)}")
    assert a.loose_veths(veths0) == set()
    assert a.records() == [] and a.allocations(CAPPED_SUBNET) == [] and a.allocations(PLAIN_SUBNET) == []
    assert rm_networks("fb-cycles-capped", "fb-cycles-plain") == []
