"""The reconciler's lock kept alive during a run, a run that lost its lock
stopping, veths of live containers kept whatever else they lost, and the
pruning of old release tombstones (netplugin/reconcile.py), over the fakes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

import netplugin.reconcile as reconcile_mod
from netplugin.dataplane.links import veth_names
from netplugin.model import Host
from netplugin.reconcile import LOCK_TTL

# The fixtures (clock, view, rec, net) are test_reconcile's own, shared here.
from .test_reconcile import HOUR, SUBNET, claim, clock, found, live, net, rec, record, view  # noqa: F401

DAY = 86400.0


class Refreshes:
    """Counts the lease refreshes that reach the store."""

    def __init__(self, kv, monkeypatch):
        self.calls = 0
        real = kv.refresh_lease

        def counted(lease_id):
            self.calls += 1
            return real(lease_id)
        monkeypatch.setattr(kv, "refresh_lease", counted)

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.calls < n:
            assert time.monotonic() < deadline, f"only {self.calls} lease refreshes, waited for {n}"
            time.sleep(0.005)


# -- the lock's lease ---------------------------------------------------------------------------------

def test_the_lock_lease_is_kept_alive_while_a_run_works(np, net, rec, clock, monkeypatch):
    monkeypatch.setattr(reconcile_mod, "LOCK_REFRESH_EVERY", 0.01)
    refreshes = Refreshes(np.kv, monkeypatch)
    claim(np, net)
    clock.advance(HOUR)
    seen = {}
    real = np.switch.list_ports

    def slow_scan(bridge):
        refreshes.wait_for(3)                         # the run works for three refresh periods and more
        seen["owner"] = np.store.lock_owner("reconcile-h1")
        return real(bridge)
    monkeypatch.setattr(np.switch, "list_ports", slow_scan)
    report = rec.run(grace=60)
    assert report["status"] == "done" and report["released"] == 1 and report["errors"] == 0
    assert seen["owner"] is not None
    assert np.kv.leases() == {} and np.store.lock_owner("reconcile-h1") is None   # given back at the end


def test_a_run_whose_lock_was_taken_over_stops_acting(np, net, rec, clock, monkeypatch):
    """The lease ran out (a long etcd stall, say) and another reconciler took
    the lock: the first run notices at its next refresh and does nothing more."""
    monkeypatch.setattr(reconcile_mod, "LOCK_REFRESH_EVERY", 0.01)
    ips = [claim(np, net) for _ in range(3)]
    clock.advance(HOUR)
    taken = {}
    real = rec._drop_address

    def first_then_lose_the_lock(subnet, offset, seen):
        real(subnet, offset, seen)
        if not taken:
            lease = next(iter(np.kv.leases()))
            np.kv.revoke_lease(lease)                           # the run's lease expired
            taken["lease"] = np.kv.grant_lease(LOCK_TTL)
            assert np.store.try_lock("reconcile-h1", "other-host:1", taken["lease"])
            keeper = next(t for t in threading.enumerate() if t.name == "lock-reconcile-h1")
            keeper.join(5)                                    # it ends once it has seen the lock lost
            assert not keeper.is_alive()
    monkeypatch.setattr(rec, "_drop_address", first_then_lose_the_lock)
    # _scan binds the actions when it runs, so the wrapper above is the one called
    report = rec.run(grace=60)
    assert report["status"].startswith("stopped: lost the lock")
    assert "other-host:1" in report["status"]
    assert report["released"] == 1 and report["errors"] == 2
    assert sorted(f["error"] for f in report["findings"] if not f["done"]) == \
        ["not done: this run lost its lock"] * 2
    assert sum(np.allocation(SUBNET, ip) is not None for ip in ips) == 2
    assert np.store.lock_owner("reconcile-h1") == "other-host:1"           # the new holder's lock is untouched
    assert set(np.kv.leases()) == {taken["lease"]}


def test_a_run_that_cannot_renew_its_lease_stops_before_it_could_expire(np, net, rec, clock, monkeypatch):
    """etcd answers the actions but no refresh gets through: once the last
    proof of the lock is nearly a lease old, the run stops acting."""
    now = {"t": 1000.0}
    monkeypatch.setattr(reconcile_mod, "monotonic", lambda: now["t"])
    ips = [claim(np, net) for _ in range(2)]
    clock.advance(HOUR)
    real = rec._drop_address

    def slow_release(subnet, offset, seen):
        real(subnet, offset, seen)
        now["t"] += LOCK_TTL                                     # a whole lease with no refresh
    monkeypatch.setattr(rec, "_drop_address", slow_release)
    report = rec.run(grace=60)
    assert report["status"].startswith("stopped: lost the lock")
    assert report["released"] == 1 and report["errors"] == 1
    assert sum(np.allocation(SUBNET, ip) is not None for ip in ips) == 1


def test_a_dry_run_and_a_normal_run_hold_no_lease_afterwards(np, net, rec, clock):
    claim(np, net)
    clock.advance(HOUR)
    assert rec.run(dry_run=True, grace=60)["status"] == "done"
    assert rec.run(grace=60)["status"] == "done"
    assert np.kv.leases() == {}
    assert [t.name for t in threading.enumerate() if t.name.startswith("lock-")] == []


# -- Docker's view protects veths and ports -------------------------------------------------------------

def test_a_live_containers_veth_is_kept_when_its_record_and_port_are_lost(np, net, rec, view, clock):
    c = np.run_container(net)
    ep = live(np, view, net, c)
    np.store.delete_endpoint(c.endpoint)
    np.switch.delete_port(ep.port)
    clock.advance(HOUR)

    report = rec.run(grace=0)
    assert found(report) == [("veth_of_live_container", c.endpoint, "repair", True)]
    assert ep.port in np.links.links                                   # never deleted
    assert np.switch.ports[ep.port]["external_ids"] == {"np-endpoint": c.endpoint, "np-network": ep.network,
                                                         "np-host": "h1"}
    assert np.switch.ports[ep.port]["tag"] == 100
    assert np.allocation(SUBNET, c.ip) is not None

    assert found(rec.run(grace=0)) == [("port_without_record", c.endpoint, "repair", True)]
    again = record(np, c.endpoint)
    assert (again.ip, again.mac, again.port) == (c.ip, ep.mac, ep.port)
    assert rec.run(grace=0)["findings"] == []


def test_without_docker_a_lone_veth_is_only_reported(np, net, rec, view, clock):
    c = np.run_container(net)
    ep = live(np, view, net, c)
    np.store.delete_endpoint(c.endpoint)
    np.switch.delete_port(ep.port)
    view.reachable = False
    clock.advance(HOUR)
    assert found(rec.run(grace=0)) == [("ip_without_endpoint", c.ip, "report", False),
                                       ("veth_without_endpoint", ep.port, "report", False)]
    assert ep.port in np.links.links and np.allocation(SUBNET, c.ip) is not None


def test_a_port_named_after_a_live_endpoint_is_not_deleted(np, net, rec, view, clock):
    """A port whose ids were overwritten but whose name is a live endpoint's."""
    c = np.run_container(net)
    ep = live(np, view, net, c)
    np.store.delete_endpoint(c.endpoint)
    np.switch.ports[ep.port]["external_ids"]["np-endpoint"] = "e" * 64
    clock.advance(HOUR)
    report = rec.run(grace=0)
    assert [(f["kind"], f["id"]) for f in report["findings"]] == [("port_without_record", c.endpoint)]
    assert ep.port in np.switch.ports and ep.port in np.links.links


def test_a_dead_containers_veth_is_still_deleted(np, net, rec, view, clock):
    other = np.run_container(net)
    live(np, view, net, other)
    host, peer = veth_names("0123456789abcdef" * 4)
    np.links.create_veth(host, peer, 1500, "02:4e:0a:0a:00:63", True)
    clock.advance(HOUR)
    assert found(rec.run(grace=0)) == [("veth_without_endpoint", host, "release", True)]
    assert host not in np.links.links


# -- release tombstones ----------------------------------------------------------------------------------

def tombstone(np, endpoint_id: str, host: str, age: float) -> str:
    key = np.store.k_tombstone(endpoint_id)
    np.store.put_json(key, {"endpoint": endpoint_id, "host": host, "ip": "10.10.0.9", "network": "n",
                            "by": "test", "time": time.time() - age})
    return key


def test_old_tombstones_of_this_host_and_of_dead_hosts_are_pruned(np, rec, clock):
    lease = np.kv.grant_lease(15)
    np.store.register_host(Host(host="h2", last_seen=time.time()), lease)     # h2 alive
    np.store.register_host(Host(host="h3", last_seen=time.time() - 30 * DAY), np.kv.grant_lease(15))
    np.kv.revoke_lease(max(np.kv.leases()))                                     # h3 dead
    old_mine = tombstone(np, "a" * 64, "h1", 8 * DAY)
    young_mine = tombstone(np, "b" * 64, "h1", 6 * DAY)
    old_live_host = tombstone(np, "c" * 64, "h2", 30 * DAY)
    old_dead_host = tombstone(np, "d" * 64, "h3", 30 * DAY)
    report = rec.run(grace=60)
    assert report["tombstones_pruned"] == 2 and report["findings"] == []
    assert np.kv.get(old_mine) is None and np.kv.get(old_dead_host) is None
    assert np.kv.get(young_mine) is not None and np.kv.get(old_live_host) is not None   # h2 prunes its own
    assert np.store.tombstone("b" * 64)["host"] == "h1"


def test_tombstone_age_is_configurable_and_dry_runs_prune_nothing(np, rec, clock):
    young = tombstone(np, "b" * 64, "h1", 2 * HOUR)
    assert rec.run(dry_run=True, grace=60, tombstone_max_age=HOUR)["tombstones_pruned"] == 0
    assert rec.run(grace=60, tombstone_max_age=None)["tombstones_pruned"] == 0
    assert np.kv.get(young) is not None
    assert rec.run(grace=60, tombstone_max_age=HOUR)["tombstones_pruned"] == 1
    assert np.kv.get(young) is None


def test_a_fresh_release_keeps_its_tombstone(np, net, rec, clock):
    c = np.run_container(net)                              # no live container: released
    clock.advance(HOUR)
    report = rec.run(grace=60)
    assert report["released"] == 1 and report["tombstones_pruned"] == 0
    assert np.store.tombstone(c.endpoint)["by"] == "reconciler"


# -- Docker's view --------------------------------------------------------------------------------------

def test_dockers_view_skips_a_container_gone_between_two_calls():
    """A container a network still lists but Docker no longer knows is not
    live; it must not make the whole view unknown."""
    import docker.errors

    from netplugin.docker_api import DockerView

    class Api:
        def inspect_network(self, net_id):
            return {"Containers": {"c1": {"EndpointID": "e1", "Name": "web", "IPv4Address": "10.0.0.2/24"},
                                   "c2": {"EndpointID": "e2", "Name": "gone", "IPv4Address": "10.0.0.3/24"}}}

        def inspect_container(self, cid):
            if cid == "c2":
                raise docker.errors.NotFound("no such container")
            return {"State": {"Running": True, "Pid": 7}}

    names = SimpleNamespace(_api=lambda: Api(), _lock=threading.Lock(), _client=None)
    view = DockerView(names).live_endpoints(["n1"])
    assert view is not None and set(view) == {"e1"}
    assert view["e1"]["ip"] == "10.0.0.2" and view["e1"]["sandbox"] == 7
