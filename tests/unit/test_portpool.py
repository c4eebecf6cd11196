"""The warm port pool (netplugin/portpool.py) over the fakes: pairs are made
parked (host end down, port a trunk of VLAN 4095 alone), CreateEndpoint
takes one with one OVSDB claim and no new veth or port, a failed claim
leaves nothing, the filler yields to requests, a restart adopts valid pairs
and removes broken ones, and the reconciler never counts pool pairs as
leaks."""

from __future__ import annotations

import threading
import time

import pytest

import netplugin.portpool as portpool_mod
from netplugin.config import Config
from netplugin.dataplane.links import POOL_HOST_RE
from netplugin.errors import InvalidRequest
from netplugin.portpool import PortPool

from .conftest import Harness
from .test_reconcile import clock, found, make_reconciler, record, view  # noqa: F401 - fixtures


SUBNET = "10.10.0.0/24"


@pytest.fixture
def pool(np) -> PortPool:
    p = np.parts.pool
    assert p is not None and p.size == 4
    return p


@pytest.fixture
def net(np):
    return np.create_network(SUBNET, vlan=100, name="prod")


def filled(pool: PortPool) -> list:
    pool.adopt()
    return [pool.fill_once() for _ in range(pool.size)]


def parked(np: Harness, name: str) -> bool:
    port = np.switch.ports[name]
    return (port["vlan_mode"] == "trunk" and port["trunks"] == [4095] and port["tag"] is None
            and port["external_ids"].get("np-pool") == "1" and np.links.links[name]["up"] is False)


def test_the_pool_is_filled_with_parked_pairs_up_to_its_size(np, pool):
    pairs = filled(pool)
    assert len({p.host for p in pairs}) == 4 and pool.ready() == 4
    for p in pairs:
        assert POOL_HOST_RE.fullmatch(p.host) and p.peer == "ncp" + p.host[3:]
        assert parked(np, p.host)
        assert np.links.links[p.peer]["mtu"] == np.cfg.mtu and not np.links.links[p.host]["tx_checksum"]
    assert pool.fill_once() is None                     # full: nothing more is made
    assert len(np.switch.ports) == 4
    assert np.flows.pipeline                            # the parking drop is part of it


def test_a_container_takes_a_pooled_pair_with_one_claim_and_no_new_port(np, pool, net):
    pairs = filled(pool)
    calls = len(np.switch.calls), len(np.links.calls)
    c = np.run_container(net)
    ep = record(np, c.endpoint)
    assert ep.port == pairs[0].host and ep.peer == pairs[0].peer
    switch_calls = [call[0] for call in np.switch.calls[calls[0]:]]
    link_calls = [call[0] for call in np.links.calls[calls[1]:]]
    assert "add_access_port" not in switch_calls and "create_veth" not in link_calls
    assert switch_calls.count("claim_port") == 1 and "wait_applied" in switch_calls
    port = np.switch.ports[ep.port]
    assert port["tag"] == 100 and port["vlan_mode"] == "access" and port["trunks"] == []
    assert port["external_ids"] == {"np-endpoint": c.endpoint, "np-network": ep.network, "np-host": "h1"}
    host = np.links.links[ep.port]
    assert host["up"] is True and host["alias"] == c.endpoint
    assert np.links.links[ep.peer]["mac"] == c.create_reply["Interface"]["MacAddress"]
    assert c.join_reply["InterfaceName"]["SrcName"] == ep.peer
    assert pool.ready() == 3


def test_a_pooled_endpoint_is_removed_whole(np, pool, net):
    filled(pool)
    c = np.run_container(net)
    port = record(np, c.endpoint).port
    np.stop_container(net, c)
    assert port not in np.switch.ports and port not in np.links.links
    assert record(np, c.endpoint) is None


def test_a_pair_that_lost_its_port_is_removed_and_the_next_one_taken(np, pool, net):
    pairs = filled(pool)
    np.switch.delete_port(pairs[0].host)                 # the bridge was made again, say
    c = np.run_container(net)
    assert record(np, c.endpoint).port == pairs[1].host
    assert pairs[0].host not in np.links.links and pool.ready() == 2


def test_an_empty_pool_falls_back_to_a_new_pair(np, pool, net):
    c = np.run_container(net)                           # never filled
    assert record(np, c.endpoint).port == "np" + c.endpoint[:11]
    assert pool.counts["empty"] == 1


@pytest.mark.parametrize("fake,method", [("switch", "claim_port"), ("links", "activate")])
def test_a_failed_claim_leaves_no_port_no_veth_and_no_record(np, pool, net, fake, method):
    pairs = filled(pool)
    getattr(np, fake).fail_next(method)
    body = np.endpoint_body(net, np.new_id("ep"), np.ok("IpamDriver.RequestAddress", {
        "PoolID": net.pool_id, "Address": "", "Options": {}})["Address"])
    np.fail("NetworkDriver.CreateEndpoint", body)
    taken = pairs[0].host
    assert taken not in np.switch.ports and taken not in np.links.links and pairs[0].peer not in np.links.links
    assert np.store.list_host_endpoints("h1") == []
    assert pool.ready() == 3 and pool.counts["claim_failed"] == 1
    for p in pairs[1:]:
        assert parked(np, p.host)                        # the others are untouched


def test_a_claim_is_refused_for_a_port_that_is_not_parked(np, pool, net):
    pairs = filled(pool)
    np.switch.ports[pairs[0].host]["external_ids"].pop("np-pool")     # someone changed it
    body = np.endpoint_body(net, np.new_id("ep"), np.ok("IpamDriver.RequestAddress", {
        "PoolID": net.pool_id, "Address": "", "Options": {}})["Address"])
    assert "not a parked pool port" in np.fail("NetworkDriver.CreateEndpoint", body)
    assert pairs[0].host not in np.switch.ports and pairs[0].host not in np.links.links


def test_a_refused_record_gives_the_pair_back_untouched(np, pool, net):
    filled(pool)
    c = np.run_container(net)
    ready = pool.ready()
    np.fail("NetworkDriver.CreateEndpoint", np.endpoint_body(net, c.endpoint, c.address), 409)
    assert pool.ready() == ready
    assert all(parked(np, name) for name, p in np.switch.ports.items() if "np-pool" in p["external_ids"])


def test_the_pool_size_is_a_checked_setting():
    assert Config(host_id="h").port_pool_size == 4
    for bad in (-1, 65, True):
        with pytest.raises(InvalidRequest, match="port_pool_size .* must be between 0"):
            Config(host_id="h", port_pool_size=bad).validate()
    from netplugin.config import load
    with pytest.raises(InvalidRequest, match="port_pool_size must be a whole number"):
        load("/dev/null", env={"NETPLUGIN_PORT_POOL_SIZE": "four"})
    assert load("/dev/null", env={"NETPLUGIN_PORT_POOL_SIZE": "0"}).port_pool_size == 0


def test_size_zero_means_no_pool(kv):
    from netplugin.store import Store
    from netplugin.wiring import assemble

    from .fakes import FakeDockerNames, FakeDockerView, FakeFlows, FakeLinks, FakeSwitch
    cfg = Config(host_id="h9", bridge="nptest0", datapath_type="netdev", port_pool_size=0)
    parts = assemble(cfg, Store(kv, cfg.etcd_prefix), FakeSwitch(), FakeLinks(), FakeFlows(cfg.bridge),
                     FakeDockerNames(), FakeDockerView())
    assert parts.pool is None and parts.endpoints.pool is None
    parts.view.close()


def test_the_filler_waits_while_a_request_is_in_flight(np, pool, monkeypatch):
    monkeypatch.setattr(portpool_mod, "QUIET", 0.05)
    with pool.request():
        pool.start()
        time.sleep(0.4)
        assert pool.ready() == 0 and len(np.switch.ports) == 0   # not even adopted: it waits
    stop = time.monotonic() + 5
    while pool.ready() < 4:
        assert time.monotonic() < stop, "the filler did not fill the pool once the request was over"
        time.sleep(0.01)
    pool.stop()


def test_the_filler_refills_after_a_take(np, pool, net, monkeypatch):
    monkeypatch.setattr(portpool_mod, "QUIET", 0.05)
    pool.start()
    stop = time.monotonic() + 5
    while pool.ready() < 4:
        assert time.monotonic() < stop
        time.sleep(0.01)
    np.run_container(net)
    while pool.ready() < 4:
        assert time.monotonic() < stop, "the filler did not refill the pool"
        time.sleep(0.01)
    assert len([p for p in np.switch.ports.values() if "np-pool" in p["external_ids"]]) == 4
    pool.stop()


def test_a_restart_adopts_valid_pairs_and_removes_broken_ones(np, pool, net, kv):
    pairs = filled(pool)
    c = np.run_container(net)                           # took pairs[0]: an endpoint's now
    up, wrong, no_port = pairs[1:]
    good = pool.fill_once()
    np.links.links[up.host]["up"] = True                # someone brought a parked host end up
    np.switch.ports[wrong.host]["trunks"] = [4095, 100]
    np.switch.delete_port(no_port.host)
    no_veth = "npp0123456789"
    np.switch.add_parked_port(np.cfg.bridge, no_veth, {"np-host": "h1"})
    # the next daemon, over the same switch and kernel
    fresh = PortPool(np.cfg, np.store, np.switch, np.links, np.bridge)
    out = fresh.adopt()
    assert sorted(out["removed"]) == sorted([up.host, wrong.host, no_veth])
    assert out["adopted"] == [good.host] and fresh.ready() == 1 and parked(np, good.host)
    for gone in (up.host, wrong.host, no_veth):
        assert gone not in np.switch.ports and gone not in np.links.links
    # A veth with no port on this bridge may be another daemon's on the same host
    # (its own bridge), or one being made or claimed: never removed from here.
    assert no_port.host in np.links.links and no_port.host not in out["adopted"]
    ep = record(np, c.endpoint)
    assert ep.port in np.switch.ports and ep.port in np.links.links     # the endpoint's pair is untouched


def test_a_parked_port_named_by_a_record_is_never_adopted(np, pool, net):
    """A daemon that died between writing the record and the claim: the port,
    still parked, belongs to that endpoint (the reconciler releases it with
    its record), so the next daemon neither adopts nor removes it."""
    filled(pool)
    c = np.run_container(net)
    ep = record(np, c.endpoint)
    np.switch.ports[ep.port].update(tag=None, vlan_mode="trunk", trunks=[4095],
                                    external_ids={"np-host": "h1", "np-pool": "1"})
    np.links.links[ep.port]["up"] = False                # the state right before the claim
    out = PortPool(np.cfg, np.store, np.switch, np.links, np.bridge).adopt()
    assert ep.port not in out["adopted"] and ep.port not in out["removed"]
    assert ep.port in np.switch.ports and ep.port in np.links.links
    assert len(out["adopted"]) == 3


def test_the_reconciler_never_counts_pool_pairs_as_leaks(np, pool, net, view, clock):
    filled(pool)
    rec = make_reconciler(np, view)
    clock.advance(3600)
    report = rec.run(grace=0)
    assert found(report) == []
    assert pool.ready() == 4 and all(parked(np, p) for p in np.switch.ports)


def test_a_taken_pool_pair_of_a_live_container_is_never_removed(np, pool, net, view, clock):
    filled(pool)
    c = np.run_container(net)
    ep = record(np, c.endpoint)
    view.attach(c.endpoint, net.id, c.ip, mac=ep.mac)
    np.links.netns["/proc/1/ns/net"] = {"eth0": np.links.links.pop(ep.peer)}   # Docker moved it in
    np.switch.delete_port(ep.port)                      # port and record lost
    np.store.delete_endpoint(c.endpoint)
    rec = make_reconciler(np, view)
    clock.advance(3600)
    rec.run(grace=0)
    assert ep.port in np.links.links, "the live container's veth was deleted"
    assert np.switch.ports[ep.port]["external_ids"]["np-endpoint"] == c.endpoint    # its port put back
    view.detach(c.endpoint)
    clock.advance(3600)
    rec.run(grace=0)
    assert ep.port not in np.links.links and ep.port not in np.switch.ports           # dead now: released


def test_start_and_stop_are_idempotent_and_a_stopped_filler_ends(np, pool, monkeypatch):
    monkeypatch.setattr(portpool_mod, "QUIET", 0.01)
    pool.start()
    pool.start()
    pool.stop()
    thread = pool._thread
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()


def test_the_filler_survives_a_failure(np, pool, monkeypatch):
    monkeypatch.setattr(portpool_mod, "QUIET", 0.01)
    monkeypatch.setattr(portpool_mod, "RETRY_EVERY", 0.05)
    np.switch.fail_next("add_parked_port", times=2)
    pool.start()
    stop = time.monotonic() + 5
    while pool.ready() < 4:
        assert time.monotonic() < stop
        time.sleep(0.01)
    pool.stop()
    assert pool.counts["failed"] == 2
    assert len(np.links.links) == 8                       # the failed pairs' veths were removed
    assert threading.active_count() >= 1
