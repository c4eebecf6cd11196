"""Pool gauges count what the allocator can really give out: with
``--ip-range`` a pool whose range is full reads full (and the allocator does
refuse), however empty the rest of the subnet is."""

from __future__ import annotations

import dataclasses

import pytest

import netplugin.wiring as backends
from netplugin.api import create_app
from netplugin.model import Network
from netplugin.poolspan import spans, usage


def net(subnet="10.10.0.0/24", gateway="10.10.0.1", ranges=(), aux=None) -> Network:
    return Network(id="n-0123456789ab", name="prod", subnet=subnet, gateway=gateway, vlan=100,
                   ranges=list(ranges), aux=dict(aux or {}))


def test_whole_subnet_without_network_and_broadcast():
    assert usage(net(), []) == (254, 1)                       # the gateway
    assert usage(net(), ["10.10.0.7", "10.10.0.8"]) == (254, 3)


def test_range_counts_only_its_addresses_and_those_inside_it():
    n = net(ranges=["10.10.0.128/28"], aux={"router": "10.10.0.129", "far": "10.10.0.3"})
    # 16 addresses; held: the aux inside the range and one endpoint; the gateway, the
    # other aux and a static address outside the range are not the range's
    assert usage(n, ["10.10.0.130", "10.10.0.50"]) == (16, 2)


def test_range_at_the_edge_loses_the_broadcast_address_and_ranges_merge():
    assert spans(net(ranges=["10.10.0.240/28"])) == [(0x0A0A00F0, 0x0A0A00FE)]
    n = net(ranges=["10.10.0.0/28", "10.10.0.8/29", "10.10.0.16/28"])
    assert spans(n) == [(0x0A0A0001, 0x0A0A001F)]
    assert usage(n, [])[0] == 31


def test_an_address_is_counted_once():
    assert usage(net(), ["10.10.0.1", "10.10.0.9", "10.10.0.9"]) == (254, 2)


@pytest.fixture
def metered(np):
    metrics = backends.make_metrics(np.cfg, np.store, np.parts.view)
    np.app = create_app(dataclasses.replace(np.parts, metrics=metrics))
    np.client = np.app.test_client()
    np.metrics = metrics
    return np


def gauge(np, name: str, network: str) -> float | None:
    return np.metrics.registry.get_sample_value(name, {"network": network})


def test_gauges_follow_the_ip_range_until_the_allocator_refuses(metered):
    d = metered.create_network("10.30.0.0/24", vlan=300, name="ranged", ip_range="10.30.0.64/30")
    assert gauge(metered, "netplugin_pool_size", "ranged") == 4
    assert gauge(metered, "netplugin_pool_used", "ranged") == 0     # the gateway is outside the range
    for n in range(1, 5):
        metered.run_container(d)
        assert gauge(metered, "netplugin_pool_used", "ranged") == n
    # full by the gauges, and full for real: the next address is refused
    reply = metered.client.post("/IpamDriver.RequestAddress",
                                json={"PoolID": d.pool_id, "Address": "", "Options": {}})
    assert reply.status_code >= 400 and "no free address" in reply.get_json()["Err"]
