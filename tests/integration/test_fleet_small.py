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
    fl = F.Fleet(cluster.endpoints, hosts=HOSTS, per_host=10, hosts_per_net=5, group=5)
    try:
        fl.build()
        fl.start()
        assert fl.ready(60), "the simulated hosts did not all hold every answer of their networks within 60 s"
        yield fl
    finally:
        fl.close()
        cluster.stop()


def test_new_endpoint_reaches_every_interested_host_and_no_other(fleet):
    for sim, net in ((fleet.sims[0], fleet.sims[0].networks[0]), (fleet.sims[-1], fleet.sims[-1].networks[-1])):
        others = [s for s in fleet.sims if s not in fleet.interested(net.id)]
        assert others, "every host is bound to this network: the test could not see a leak"
        new, got = F.convergence(fleet, sim, net, timeout=BOUND)
        late = [h for h, t in got.items() if t is None]
        assert not late, f"hosts bound to {net.id} without the answer of {new.ep.ip} after {BOUND} s: {late}"
        assert len(got) == len(fleet.interested(net.id)) >= 2
        time.sleep(1.0)                  # time enough for a host that should not get it
        leaked = [s.host_id for s in others if s.has_answer(new.ep.id)]
        assert not leaked, f"hosts not bound to {net.id} got the answer of {new.ep.ip}: {leaked}"
        assert all(s.answers() == fleet.expected_answers(s) for s in fleet.sims)
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
