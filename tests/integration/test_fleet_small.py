"""Small fleet simulation (issue 15): 20 simulated hosts, each running the
product's host-side code (view by list and watch, heartbeat, ARP proxy, limit
sync, IPAM) over the in-memory switch, on a 3-member etcd cluster of the
test's own on 127.0.0.1 (a cluster, as in production: watches then cross
member boundaries, and a private cluster keeps the shared etcd's load and
keys out of the figures). The full sizes are bench/bench_fleet.py.

Proves: a new endpoint's ARP answer reaches every host bound to its network
within 10 s, and never a host that is not; a profile's new rate reaches every
limited endpoint's meter; all hosts allocating from one pool at once get no
address twice, each held by exactly one allocation key.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import fleet as F
from tests.harness.etcd import Cluster

HOSTS = 20
BOUND = 10.0        # seconds: generous for a loaded CI machine


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("fleet-etcd"), 3)
    cluster.start()
    # Two worker processes, as the benchmark splits its 1,000 hosts: the same code path.
    fl = F.Fleet(cluster.endpoints, hosts=HOSTS, per_host=10, hosts_per_net=5, group=5, workers=2)
    try:
        fl.build()
        fl.start()
        assert fl.ready(60), "the simulated hosts did not all hold every answer of their networks within 60 s"
        yield fl
    finally:
        fl.close()
        cluster.stop()


def test_new_endpoint_reaches_every_interested_host_and_no_other(fleet):
    for host_id in (fleet.layout[0][0], fleet.layout[-1][0]):
        net_id = fleet.networks_of(host_id)[-1]
        others = [h for h, _ in fleet.layout if h not in fleet.interested(net_id)]
        assert others, "every host is bound to this network: the test could not see a leak"
        eid, got = F.convergence(fleet, host_id, net_id, timeout=BOUND)
        late = [h for h, t in got.items() if t is None]
        assert not late, f"hosts bound to {net_id} without the answer of {eid[:12]} after {BOUND} s: {late}"
        assert sorted(got) == sorted(fleet.interested(net_id)) and len(got) >= 2
        fleet.per_net[net_id] += 1
        time.sleep(1.0)                  # time enough for a host that should not get it
        leaked = fleet.leaked(eid, net_id)
        assert not leaked, f"hosts not bound to {net_id} got the answer of {eid[:12]}: {leaked}"
        assert fleet.answers_ok(), "a host holds more or fewer answers than its networks have endpoints"
    assert fleet.foreign() == 0, "a host's view holds endpoints of a network it has not bound"


def test_profile_rate_reaches_every_limited_meter(fleet):
    got = F.profile_convergence(fleet, 23_456, timeout=BOUND)
    assert len(got) == HOSTS                  # the first endpoint of each host is limited
    late = [k for k, t in got.items() if t is None]
    assert not late, f"meters without the new rate after {BOUND} s: {late}"


def test_no_duplicate_address_when_every_host_allocates_from_one_pool(fleet):
    res = F.allocate_together(fleet, per_host=10)
    assert res["allocations"] == HOSTS * 10
    assert res["duplicates"] == 0, res
    assert res["held"] == res["allocations"] and res["held_twice"] == 0 and res["unheld"] == 0, res
