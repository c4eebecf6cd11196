"""The reconciler (netplugin/reconcile.py) over the fakes: each kind of
finding is found, gets the right action, is carried out, and a second run
finds nothing; and the safety rules: grace, the in-flight floor, live
endpoints, Docker unreachable, dry run, the lock, the stored report.

Time is a controllable clock: ``netplugin.reconcile.time`` is replaced, so
"an hour later" costs nothing."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

import netplugin.reconcile as reconcile_mod
from netplugin import reconcile_cli
from netplugin.dataplane.links import veth_names
from netplugin.errors import Conflict
from netplugin.kv import Delete
from netplugin.model import Host
from netplugin.reconcile import IN_FLIGHT_FLOOR, Reconciler, as_json_line, format_human
from netplugin.release import Releaser

from .conftest import Harness
from .fakes import FakeDockerView

SUBNET = "10.10.0.0/24"
HOUR = 3600.0


# -- helpers ------------------------------------------------------------------------------

class Clock:
    """Real time shifted by an offset the test moves forward."""

    def __init__(self):
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(reconcile_mod, "time", SimpleNamespace(time=c.time))
    return c


@pytest.fixture
def view() -> FakeDockerView:
    return FakeDockerView()


def make_reconciler(h: Harness, view) -> Reconciler:
    """A reconciler of h's host, whose bridge exists (the daemon made it at start)."""
    h.switch.ensure_bridge(h.cfg.bridge, h.cfg.datapath_type)
    return Reconciler(h.cfg, h.store, h.links, h.switch, view,
                      Releaser(h.cfg, h.store, h.parts.view, h.links, h.switch, view, h.limits), h.limits)


@pytest.fixture
def rec(np, view) -> Reconciler:
    return make_reconciler(np, view)


@pytest.fixture
def net(np):
    return np.create_network(SUBNET, vlan=100, name="prod")


def record(h: Harness, endpoint_id: str):
    got = h.store.get_endpoint(endpoint_id)
    return got[0] if got else None


def found(report: dict) -> list[tuple]:
    return sorted((f["kind"], f["id"], f["action"], f["done"]) for f in report["findings"])


def claim(h: Harness, net) -> str:
    """RequestAddress without CreateEndpoint: an unbound claim."""
    return h.ok("IpamDriver.RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": {}})["Address"] \
        .split("/")[0]


def live(h: Harness, view: FakeDockerView, net, c, name: str = "web"):
    """Docker shows container c running on net; returns c's endpoint record."""
    ep = record(h, c.endpoint)
    view.attach(c.endpoint, net.id, c.ip, mac=ep.mac, name=name)
    return ep


def drop_address(h: Harness, ip: str) -> None:
    """Delete an allocation directly, as if it had been lost."""
    offset = int(ip.rsplit(".", 1)[1])              # SUBNET is a /24 from .0
    h.store.release_address(SUBNET, offset, h.store.get_allocation(SUBNET, offset)[1])


def datapath(h: Harness) -> tuple:
    return json.dumps(h.links.links, sort_keys=True), json.dumps(h.links.netns, sort_keys=True), \
        json.dumps(h.switch.ports, sort_keys=True)


def state(h: Harness) -> tuple:
    """etcd without the reconciler's own bookkeeping, and the datapath."""
    kv = {k: v for k, v in h.kv.dump().items() if "/reconcile/" not in k and "/locks/" not in k}
    return (kv,) + datapath(h)


# -- nothing to do ---------------------------------------------------------------------------

def test_a_complete_live_endpoint_has_no_finding(np, net, rec, view, clock):
    c = np.run_container(net)
    live(np, view, net, c)
    clock.advance(HOUR)
    report = rec.run(grace=60)
    assert report["status"] == "done" and report["docker"] == "ok"
    assert report["findings"] == [] and report["counts"] == {}
    assert view.calls == [[net.id]]         # Docker is asked about this host's bound networks


# -- each kind of finding ----------------------------------------------------------------------

def test_ip_without_endpoint_is_released(np, net, rec, clock):
    ip = claim(np, net)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("ip_without_endpoint", ip, "release", True)]
    assert "no endpoint" in report["findings"][0]["detail"]
    assert np.allocation(SUBNET, ip) is None
    assert rec.run(grace=60)["findings"] == []


def test_ip_without_endpoint_leaves_other_hosts_and_network_addresses_alone(np, np2, net, rec, clock):
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    other = claim(np2, net2)                             # h2's claim: h2's reconciler's business
    clock.advance(HOUR)
    assert rec.run(grace=60)["findings"] == []
    assert np.allocation(SUBNET, other) is not None
    assert np.allocation(SUBNET, "10.10.0.1").kind == "gateway"


def test_endpoint_without_container_is_released_whole(np, net, rec, clock):
    c = np.run_container(net)                            # Docker does not show it: the container is gone
    ep = record(np, c.endpoint)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("endpoint_without_container", c.endpoint, "release", True)]
    assert report["released"] == 1
    assert record(np, c.endpoint) is None and np.allocation(SUBNET, c.ip) is None
    assert ep.port not in np.switch.ports and ep.port not in np.links.links
    assert np.store.tombstone(c.endpoint)["by"] == "reconciler"
    assert rec.run(grace=60)["findings"] == []


def test_port_without_endpoint_is_deleted_with_its_veth(np, net, rec, clock):
    c = np.run_container(net)
    ep = record(np, c.endpoint)
    np.store.delete_endpoint(c.endpoint)                 # record and address lost, port and veth left
    drop_address(np, c.ip)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("port_without_endpoint", c.endpoint, "release", True)]
    assert ep.port not in np.switch.ports and ep.port not in np.links.links and ep.peer not in np.links.links
    assert rec.run(grace=60)["findings"] == []


def test_lost_record_of_a_dead_container_converges_in_two_runs(np, net, rec, clock):
    """Only the record lost (its stamped address kept): the port and veth go
    first; the address, no longer named by a port, on the next run."""
    c = np.run_container(net)
    np.store.delete_endpoint(c.endpoint)
    clock.advance(HOUR)
    assert found(rec.run(grace=60)) == [("port_without_endpoint", c.endpoint, "release", True)]
    assert found(rec.run(grace=60)) == [("ip_without_endpoint", c.ip, "release", True)]
    assert np.allocation(SUBNET, c.ip) is None
    assert rec.run(grace=60)["findings"] == []


def test_ports_of_other_hosts_and_without_our_ids_are_not_ours(np, rec, clock):
    np.switch.ensure_bridge("nptest0", "netdev")
    np.switch.add_access_port("nptest0", "npaaaaaaaaaaa", 100, {"np-endpoint": "a" * 64, "np-host": "h9"})
    np.switch.add_access_port("nptest0", "eth7", 100, {})
    clock.advance(HOUR)
    assert rec.run(grace=0)["findings"] == []
    assert "npaaaaaaaaaaa" in np.switch.ports and "eth7" in np.switch.ports


def test_veth_without_endpoint_is_deleted(np, rec, clock):
    host, peer = veth_names("0123456789abcdef" * 4)
    np.links.create_veth(host, peer, 1500, "02:4e:0a:0a:00:63", True)
    np.links.create_veth("npnotours", "ncnotours", 1500, "02:00:00:00:00:01", True)   # not np + 11 hex
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("veth_without_endpoint", host, "release", True)]
    assert host not in np.links.links and peer not in np.links.links
    assert "npnotours" in np.links.links
    assert rec.run(grace=60)["findings"] == []


def test_endpoint_without_port_gets_its_port_again(np, net, rec, view, clock):
    c = np.run_container(net)
    ep = live(np, view, net, c)
    before = dict(np.switch.ports[ep.port])
    np.switch.delete_port(ep.port)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("endpoint_without_port", c.endpoint, "repair", True)]
    assert report["repaired"] == 1
    assert np.switch.ports[ep.port] == before
    assert np.switch.ports[ep.port]["tag"] == 100
    assert np.switch.ports[ep.port]["external_ids"] == {"np-endpoint": c.endpoint, "np-network": ep.network,
                                                         "np-host": "h1"}
    assert rec.run(grace=60)["findings"] == []


def test_endpoint_without_veth_gets_a_new_pair_plugged_into_the_container(np, net, rec, view, clock):
    c = np.run_container(net)
    ep = live(np, view, net, c)
    assert ep.sandbox                                    # Join told the driver the sandbox
    np.links.delete(ep.port)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("endpoint_without_veth", c.endpoint, "repair", True)]
    assert np.links.links[ep.port]["peer"] == ep.peer
    inside = np.links.netns[ep.sandbox]["eth0"]
    assert inside["ip"] == c.ip and inside["prefixlen"] == 24 and inside["gateway"] == "10.10.0.1"
    assert inside["mac"] == ep.mac and inside["was"] == ep.peer
    assert np.switch.ports[ep.port]["tag"] == 100
    # vswitchd let go of the stale device before a link of its name was made again
    # (it restores the old device's flags by name and would take the new one down)
    assert ("delete_port", ep.port, True) in np.switch.calls
    assert rec.run(grace=60)["findings"] == []


def record_without_sandbox(h: Harness, endpoint_id: str):
    """The endpoint's record as a daemon killed right after Join answered leaves it."""
    ep, rev = h.store.get_endpoint(endpoint_id)
    ep.sandbox = ""
    assert h.store.update_endpoint(ep, rev)
    return ep


def test_endpoint_without_veth_and_no_sandbox_is_repaired_through_dockers_pid(np, net, rec, view, clock):
    """A record without the sandbox (the daemon died right after Join answered):
    the container's namespace comes from Docker's view, its main process."""
    c = np.run_container(net)
    live(np, view, net, c)
    ep = record_without_sandbox(np, c.endpoint)
    np.links.delete(ep.port)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("endpoint_without_veth", c.endpoint, "repair", True)]
    pid = view.live[c.endpoint]["sandbox"]
    assert np.links.netns[f"/proc/{pid}/ns/net"]["eth0"]["ip"] == c.ip
    assert np.switch.ports[ep.port]["tag"] == 100


def test_endpoint_without_veth_and_no_sandbox_is_only_reported(np, net, rec, view, clock):
    c = np.run_container(net)
    live(np, view, net, c)
    view.live[c.endpoint]["sandbox"] = 0                 # Docker gives no process either
    ep = record_without_sandbox(np, c.endpoint)
    np.links.delete(ep.port)
    clock.advance(120)
    snap = state(np)
    report = rec.run(grace=60)
    assert found(report) == [("endpoint_without_veth", c.endpoint, "report", False)]
    assert state(np) == snap


def test_port_without_record_rebuilds_the_record(np, net, rec, view, clock):
    c = np.run_container(net)
    old = live(np, view, net, c)
    np.store.delete_endpoint(c.endpoint)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("port_without_record", c.endpoint, "repair", True)]
    new = record(np, c.endpoint)
    for name in ("id", "network", "docker_network", "host", "ip", "prefixlen", "mac", "port", "peer", "vlan",
                 "network_name"):
        assert getattr(new, name) == getattr(old, name), name
    alloc = np.allocation(SUBNET, c.ip)
    assert alloc.endpoint == c.endpoint and alloc.host == "h1"
    assert rec.run(grace=60)["findings"] == []


def test_port_without_record_whose_address_went_too_is_rebuilt(np, net, rec, view, clock):
    c = np.run_container(net)
    live(np, view, net, c)
    np.store.delete_endpoint(c.endpoint)
    drop_address(np, c.ip)
    clock.advance(120)
    report = rec.run(grace=60)
    assert found(report) == [("port_without_record", c.endpoint, "repair", True)]
    assert record(np, c.endpoint).ip == c.ip and np.allocation(SUBNET, c.ip).endpoint == c.endpoint


def dead_host(h: Harness, host: str, last_seen: float) -> None:
    lease = h.kv.grant_lease(15)
    h.store.register_host(Host(host=host, last_seen=last_seen), lease)
    h.kv.revoke_lease(lease)


@pytest.fixture
def etcd_clock(kv):
    """The fake etcd's own clock, which alone runs its leases out."""
    now = {"t": 1000.0}
    kv._clock = lambda: now["t"]
    return now


def test_endpoint_of_dead_host_is_released_once_etcd_has_timed_its_absence(np, np2, net, rec, clock, etcd_clock):
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    c = np2.run_container(net2)
    dead_host(np, "h2", last_seen=time.time())
    clock.advance(HOUR)

    assert rec.run(grace=60)["findings"] == []                   # off by default
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []      # the count starts: nothing yet
    clock.advance(10 * HOUR)                                     # this host's clock says nothing about h2
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []
    etcd_clock["t"] += 599
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []
    etcd_clock["t"] += 2                                         # etcd ran the 600 s timer out

    report = rec.run(grace=60, dead_host_after=600)
    assert found(report) == [("endpoint_of_dead_host", c.endpoint, "release", True)]
    assert "dead host h2" in report["findings"][0]["detail"]
    assert record(np, c.endpoint) is None and np.allocation(SUBNET, c.ip) is None
    assert np.store.tombstone(c.endpoint)["by"] == "reconciler"
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []


def test_a_host_that_came_back_is_counted_again_from_its_next_death(np, np2, net, rec, clock, etcd_clock):
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    c = np2.run_container(net2)
    dead_host(np, "h2", last_seen=time.time())
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []      # count started
    etcd_clock["t"] += 300
    lease = np.kv.grant_lease(15)
    np.store.register_host(Host(host="h2"), lease)                       # h2 is back ...
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []
    np.kv.revoke_lease(lease)                                            # ... and gone again
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []      # a new count starts here
    etcd_clock["t"] += 400                                               # 700 s since the first count
    assert rec.run(grace=60, dead_host_after=600)["findings"] == []
    assert record(np, c.endpoint) is not None
    etcd_clock["t"] += 201
    assert found(rec.run(grace=60, dead_host_after=600)) == [("endpoint_of_dead_host", c.endpoint, "release", True)]


def test_a_dead_hosts_release_is_refused_once_it_is_back(np, np2, net):
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    c = np2.run_container(net2)
    np.store.register_host(Host(host="h2"), np.kv.grant_lease(15))
    with pytest.raises(Conflict, match="alive again"):
        np.store.release_endpoint(record(np, c.endpoint), "reconciler", host_gone=True)
    assert record(np, c.endpoint) is not None


def test_endpoint_of_a_live_or_unknown_host_is_not_released(np, np2, net, rec, clock):
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    c = np2.run_container(net2)
    lease = np.kv.grant_lease(15)
    np.store.register_host(Host(host="h2", last_seen=time.time() - 2 * HOUR), lease)   # alive, old last_seen
    clock.advance(HOUR)
    assert rec.run(grace=60, dead_host_after=1)["findings"] == []
    np.kv.revoke_lease(lease)
    np.kv.txn([], [Delete(np.store.k_hostinfo("h2"))])
    assert rec.run(grace=60, dead_host_after=1)["findings"] == []   # never registered: unknown, kept
    assert record(np, c.endpoint) is not None


# -- safety ----------------------------------------------------------------------------------------

def test_grace_leaves_young_things_alone(np, net, rec, clock):
    ip = claim(np, net)
    c = np.run_container(net)                          # no container per Docker
    clock.advance(30)
    snap = state(np)
    assert rec.run(grace=60)["findings"] == [], "30 s old, grace 60 s"
    assert state(np) == snap
    clock.advance(31)
    report = rec.run(grace=60)
    assert found(report) == sorted([("ip_without_endpoint", ip, "release", True),
                                    ("endpoint_without_container", c.endpoint, "release", True)])


def test_in_flight_floor_holds_with_grace_zero(np, net, rec, clock):
    ip = claim(np, net)
    c = np.run_container(net)
    clock.advance(IN_FLIGHT_FLOOR / 2)
    snap = state(np)
    assert rec.run(grace=0)["findings"] == [], "younger than the 10 s in-flight floor"
    assert state(np) == snap
    clock.advance(IN_FLIGHT_FLOOR / 2 + 1)
    report = rec.run(grace=0)
    assert found(report) == sorted([("ip_without_endpoint", ip, "release", True),
                                    ("endpoint_without_container", c.endpoint, "release", True)])


def test_a_live_endpoint_is_never_released(np, net, rec, view, clock):
    c = np.run_container(net)
    ep = live(np, view, net, c)
    clock.advance(10 * HOUR)
    snap = state(np)
    for grace in (0, 60):
        report = rec.run(grace=grace)
        assert not [f for f in report["findings"] if f["action"] == "release"]
    assert state(np) == snap
    # even with its port gone it is repaired, never released
    np.switch.delete_port(ep.port)
    report = rec.run(grace=0)
    assert found(report) == [("endpoint_without_port", c.endpoint, "repair", True)]
    assert record(np, c.endpoint) is not None and np.allocation(SUBNET, c.ip) is not None


def test_a_live_container_protects_its_address_while_its_record_is_rebuilt(np, net, rec, view, clock):
    """Docker shows a live container at an address whose claim has no endpoint:
    the address is not released."""
    ip = claim(np, net)
    view.attach("b" * 64, net.id, ip)
    clock.advance(HOUR)
    assert rec.run(grace=0)["findings"] == []
    assert np.allocation(SUBNET, ip) is not None


# One builder per kind of leak, for the "Docker unreachable" rule.
def _leak_ip(np, net, view):
    claim(np, net)


def _leak_container(np, net, view):
    np.run_container(net)


def _leak_port(np, net, view):
    c = np.run_container(net)
    np.store.delete_endpoint(c.endpoint)
    drop_address(np, c.ip)


def _leak_veth(np, net, view):
    np.links.create_veth(*veth_names("0123456789abcdef" * 4), 1500, "02:4e:0a:0a:00:63", True)


def _lost_port(np, net, view):
    c = np.run_container(net)
    np.switch.delete_port(live(np, view, net, c).port)


def _lost_veth(np, net, view):
    c = np.run_container(net)
    np.links.delete(live(np, view, net, c).port)


def _lost_record(np, net, view):
    c = np.run_container(net)
    live(np, view, net, c)
    np.store.delete_endpoint(c.endpoint)


@pytest.mark.parametrize("leak", [_leak_ip, _leak_container, _leak_port, _leak_veth, _lost_port, _lost_veth,
                                  _lost_record], ids=lambda f: f.__name__.strip("_"))
def test_docker_unreachable_only_reports_and_changes_nothing(np, net, rec, view, clock, leak):
    """docs/leaks.md: "If Docker cannot be asked, nothing whose fate depends on
    liveness is released; such findings are reported with action `report`."
    Without Docker the reconciler cannot tell a leak from a live container whose
    record or port was lost (the address of a live container is protected only
    by Docker's view, see the test above), so every finding must be 'report'."""
    leak(np, net, view)
    view.reachable = False
    clock.advance(HOUR)
    snap = state(np)
    report = rec.run(grace=60)
    assert report["docker"].startswith("unreachable")
    assert [(f["kind"], f["action"]) for f in report["findings"] if f["action"] != "report"] == []
    assert report["released"] == 0 and report["repaired"] == 0
    assert state(np) == snap


def test_dry_run_changes_nothing(np, net, rec, view, clock):
    claim(np, net)
    np.run_container(net)
    _leak_port(np, net, view)
    _leak_veth(np, net, view)
    _lost_port(np, net, view)
    _lost_veth(np, net, view)
    clock.advance(HOUR)
    snap = state(np)
    report = rec.run(dry_run=True, grace=60)
    assert report["dry_run"] is True
    assert sorted(report["counts"]) == ["endpoint_without_container", "endpoint_without_port",
                                        "endpoint_without_veth", "ip_without_endpoint",
                                        "port_without_endpoint", "veth_without_endpoint"]
    assert not any(f["done"] for f in report["findings"])
    assert report["released"] == report["repaired"] == 0
    assert state(np) == snap
    # the same run for real does it all, and then nothing is left
    done = rec.run(grace=60)
    assert (done["released"], done["repaired"], done["errors"]) == (4, 2, 0)
    assert rec.run(grace=60)["findings"] == []


def test_a_second_reconciler_is_skipped_while_the_lock_is_held(np, net, rec, view, clock):
    ip = claim(np, net)
    clock.advance(HOUR)
    lease = np.kv.grant_lease(120)
    assert np.store.try_lock("reconcile-h1", "other-host:1", lease)
    snap = state(np)
    report = rec.run(grace=60)
    assert report["status"].startswith("skipped")
    assert "other-host:1" in report["status"]
    assert report["findings"] == []
    assert state(np) == snap
    assert np.store.get_json(np.store.k_reconcile("h1", "last")) is None     # a skipped run is not stored
    assert set(np.kv.leases()) == {lease}                                     # its own lease was revoked
    np.kv.revoke_lease(lease)
    assert found(rec.run(grace=60)) == [("ip_without_endpoint", ip, "release", True)]


def test_two_reconcilers_at_once_one_is_skipped(np, net, view, clock, monkeypatch):
    first, second = make_reconciler(np, view), make_reconciler(np, view)
    claim(np, net)
    clock.advance(HOUR)
    inner = {}
    real = np.switch.list_ports

    def scanning(bridge):
        if not inner:
            inner["lock"] = np.store.lock_owner("reconcile-h1")
            inner["report"] = second.run(grace=60)
        return real(bridge)
    monkeypatch.setattr(np.switch, "list_ports", scanning)
    report = first.run(grace=60)
    assert report["status"] == "done" and report["released"] == 1
    assert inner["lock"] is not None
    assert inner["report"]["status"].startswith("skipped") and inner["report"]["findings"] == []
    assert np.store.lock_owner("reconcile-h1") is None                    # released after the run
    assert np.kv.leases() == {}


def test_report_is_stored_and_counters_accumulate(np, net, rec, view, clock):
    ip = claim(np, net)
    c = np.run_container(net)
    np.switch.delete_port(live(np, view, net, c).port)
    clock.advance(HOUR)
    first = rec.run(grace=60)
    assert np.store.get_json(np.store.k_reconcile("h1", "last")) == first
    counters = np.store.get_json(np.store.k_reconcile("h1", "counters"))
    assert counters == {"runs": 1, "found": {"ip_without_endpoint": 1, "endpoint_without_port": 1},
                        "released": 1, "repaired": 1, "errors": 0, "last_run": first["started"]}
    claim(np, net)
    clock.advance(HOUR)
    np.switch.fail_next("add_access_port")
    np.switch.delete_port(record(np, c.endpoint).port)
    second = rec.run(grace=60)
    assert second["errors"] == 1 and second["released"] == 1
    failed = [f for f in second["findings"] if f["error"]]
    assert failed[0]["kind"] == "endpoint_without_port" and "add_access_port failed" in failed[0]["error"]
    assert np.store.get_json(np.store.k_reconcile("h1", "last")) == second
    counters = np.store.get_json(np.store.k_reconcile("h1", "counters"))
    assert counters == {"runs": 2, "found": {"ip_without_endpoint": 2, "endpoint_without_port": 2},
                        "released": 2, "repaired": 1, "errors": 1, "last_run": second["started"]}
    assert ip not in json.dumps(np.store.list_allocations(SUBNET), default=str)


def test_one_failing_action_does_not_stop_the_others(np, net, rec, clock):
    a, b = np.run_container(net), np.run_container(net)
    clock.advance(HOUR)
    np.switch.fail_next("delete_port", RuntimeError("boom"))
    report = rec.run(grace=60)
    assert report["errors"] == 1 and report["released"] == 1
    assert any(f["error"] == "RuntimeError: boom" for f in report["findings"])
    left = [x for x in (a, b) if record(np, x.endpoint) is not None]
    assert len(left) == 1
    assert found(rec.run(grace=60)) == [("endpoint_without_container", left[0].endpoint, "release", True)]


@pytest.mark.parametrize("hook", ["list_ports", "list_names"])
def test_an_endpoint_created_during_the_scan_is_not_touched(np, net, rec, clock, monkeypatch, hook):
    """BUG (reconcile.py, Reconciler._scan): the records are read first, then the
    OVS ports, then the veths. A container start whose CreateEndpoint lands
    between these reads (record, veth, port written in that order) shows up as
    a port (or veth) without a record, which has no age, so neither the grace
    period nor the 10 s in-flight floor protects it, and the action deletes it
    without reading the record again: the new container loses its port and veth.
    The datapath should be read before the records (or the record re-read before
    dropping a port or veth)."""
    target = np.switch if hook == "list_ports" else np.links
    real = getattr(target, hook)
    made = []

    def racing(*args, **kwargs):
        if not made:
            made.append(np.run_container(net))        # Docker starting a container right now
        return real(*args, **kwargs)
    monkeypatch.setattr(target, hook, racing)
    report = rec.run(grace=60)
    monkeypatch.undo()
    ep = record(np, made[0].endpoint)
    assert report["findings"] == []
    assert ep.port in np.switch.ports and ep.port in np.links.links and ep.peer in np.links.links


def test_human_and_json_output(np, net, rec, view, clock):
    ip = claim(np, net)
    view.reachable = True
    clock.advance(HOUR)
    report = rec.run(dry_run=True, grace=60)
    text = format_human(report)
    assert text.splitlines()[0].startswith("reconcile on h1: done, 1 finding(s), 0 released, 0 repaired, "
                                           "0 error(s) in ")
    assert text.splitlines()[0].endswith("(dry run)")
    assert "ip_without_endpoint" in text and ip in text and "not done" in text
    line = as_json_line(report)
    assert "\n" not in line and json.loads(line) == report
    view.reachable = False
    assert "docker: unreachable" in format_human(rec.run(dry_run=True, grace=60))


def test_netplugin_reconcile_command(np, net, view, clock, monkeypatch, capsys):
    """netplugin-reconcile --json: exactly one JSON line; --grace < 0 is a usage error."""
    import netplugin.wiring as backends
    ip = claim(np, net)
    clock.advance(HOUR)
    monkeypatch.setattr(backends, "make_reconciler", lambda cfg: make_reconciler(np, view))
    monkeypatch.setenv("NETPLUGIN_CONFIG", "/dev/null")
    assert reconcile_cli.main(["--json", "--dry-run", "--host-id", "h1", "--bridge", "nptest0"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    report = json.loads(out)
    assert report["host"] == "h1" and report["dry_run"] is True
    assert [(f["kind"], f["id"]) for f in report["findings"]] == [("ip_without_endpoint", ip)]
    assert reconcile_cli.main(["--grace", "-1"]) == 2
    assert "--grace must be 0 or more" in capsys.readouterr().err


def test_a_veth_on_another_bridge_is_another_daemons(np, rec, clock):
    """Two daemons on one kernel (a test rig): the other's veths sit on its own
    bridge and are never this host's leaks."""
    np.switch.ensure_bridge("npother0", "netdev")
    theirs, their_peer = veth_names("fedcba9876543210" * 4)
    np.links.create_veth(theirs, their_peer, 1500, "02:4e:0a:0a:00:64", True)
    np.switch.add_access_port("npother0", theirs, 200, {})
    clock.advance(120)
    assert rec.run(grace=60)["findings"] == []
    assert theirs in np.links.links


# -- progress on long passes ----------------------------------------------------------------------

def test_a_pass_reports_its_progress_per_network_and_per_finding(np, net, rec, clock):
    ips = [claim(np, net) for _ in range(5)]
    clock.advance(120)
    calls: list[tuple[str, int, int]] = []
    report = rec.run(grace=60, progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert len(report["findings"]) == len(ips)
    acting = [c for c in calls if c[0] == "acting on findings"]
    assert acting == [("acting on findings", i, 5) for i in range(6)]
    assert ("scanning the networks' addresses", 1, 1) in calls


def test_progress_lines_every_n_items_or_seconds_and_never_for_a_short_pass():
    import io

    from netplugin.reconcile_cli import ProgressLines
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines(out, seconds=10, items=100, clock=lambda: now[0])
    for i in range(251):                      # 251 items, 0.01 s each: every 100 items
        now[0] += 0.01
        lines("acting on findings", i, 250)
    assert [x.split(": ")[2].split(",")[0] for x in out.getvalue().splitlines()] == [
        "100 of 250 (40%)", "200 of 250 (80%)", "250 of 250 (100%)"]
    quiet = io.StringIO()
    short = ProgressLines(quiet, seconds=10, items=100, clock=lambda: now[0])
    for i in range(4):
        short("acting on findings", i, 3)
    assert quiet.getvalue() == ""
    slow = io.StringIO()
    timed = ProgressLines(slow, seconds=10, items=100, clock=lambda: now[0])
    for i in range(4):
        now[0] += 6                           # 6 s an item: a line every other item
        timed("scanning the networks' addresses", i, 3)
    assert len(slow.getvalue().splitlines()) == 2
