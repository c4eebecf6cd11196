"""Flows (netplugin/dataplane/flows.py) as Open vSwitch answers it through
ovs-ofctl on a bridge: the same calls give the same meters, cookies and
flows.

``flows_world`` gives:
  flows    the Flows under test, on a bridge with OpenFlow 1.3 and the pipeline
  port()   the OpenFlow number of a new port on that bridge
"""

from __future__ import annotations

import re

import pytest

from netplugin.dataplane.flows import (
    KIND_ARP_LOCAL,
    KIND_ARP_UPLINK,
    KIND_PORT,
    TABLE_ARP,
    TABLE_CLASSIFY,
    cookie_for,
)
from netplugin.errors import InvalidRequest

E1, E2 = "a1" * 32, "b2" * 32


def port_flows(flows) -> dict[int, int | None]:
    """netplugin's flows on the bridge: cookie -> the meter it uses (None: none)."""
    out: dict[int, int | None] = {}
    for line in flows.dump_flows().splitlines():
        cookie = re.search(r"cookie=(0x[0-9a-f]+)", line)
        if cookie and int(cookie.group(1), 16) >> 63:
            meter = re.search(r"meter:(\d+)", line)
            out[int(cookie.group(1), 16)] = int(meter.group(1)) if meter else None
    return out


def arp(flows, endpoint_id: str, ip: str, uplink: int | None) -> str:
    return flows.arp_answer(endpoint_id, ip, "02:00:0a:00:00:05", 100, uplink)


class FlowsContract:
    def test_meters_are_supported(self, flows_world):
        assert flows_world.flows.meters_supported() is True

    def test_a_port_without_a_limit_has_a_flow_and_no_meter(self, flows_world):
        f = flows_world.flows
        port = flows_world.port()
        f.set_port(E1, port, 100, None)
        assert port_flows(f) == {cookie_for(E1): None}
        assert f.cookies(TABLE_CLASSIFY) == {cookie_for(E1)}
        assert f.meters() == {} and f.meter_ids() == set()
        assert f.has_meter(port) is False

    def test_a_limit_is_a_meter_numbered_as_the_port(self, flows_world):
        f = flows_world.flows
        port, other = flows_world.port(), flows_world.port()
        f.set_port(E1, port, 100, (10_000, 2_500))
        f.set_port(E2, other, 200, None)
        assert f.meters() == {port: {"rate_kbps": 10_000, "burst_kb": 2_500}}
        assert f.has_meter(port) and not f.has_meter(other) and not f.has_meter(None)
        assert port_flows(f) == {cookie_for(E1): port, cookie_for(E2): None}

    def test_a_limit_changes_and_goes(self, flows_world):
        f = flows_world.flows
        port = flows_world.port()
        f.set_port(E1, port, 100, (10_000, 2_500))
        f.set_port(E1, port, 100, (20_000, 5_000))
        assert f.meters() == {port: {"rate_kbps": 20_000, "burst_kb": 5_000}}
        f.set_port(E1, port, 100, None)
        assert f.meters() == {} and not f.has_meter(port)
        assert port_flows(f) == {cookie_for(E1): None}

    def test_clearing_a_port_removes_every_flow_of_the_endpoint_and_its_meter(self, flows_world):
        f = flows_world.flows
        port, other = flows_world.port(), flows_world.port()
        f.set_port(E1, port, 100, (10_000, 2_500))
        f.set_port(E2, other, 100, (30_000, 2_500))
        f.add_flows([arp(f, E1, "10.0.0.5", None), arp(f, E1, "10.0.0.5", other), arp(f, E2, "10.0.0.6", None)])
        assert f.cookies(TABLE_ARP) == {cookie_for(E1, KIND_ARP_LOCAL), cookie_for(E1, KIND_ARP_UPLINK),
                                        cookie_for(E2, KIND_ARP_LOCAL)}
        f.clear_port(E1, port)
        assert f.cookies(TABLE_CLASSIFY) == {cookie_for(E2)}
        assert f.cookies(TABLE_ARP) == {cookie_for(E2, KIND_ARP_LOCAL)}
        assert set(f.meters()) == {other}
        f.clear_port(E1, port)                                   # again: fine when absent
        f.clear_port(E1, None)

    def test_deleting_an_endpoints_flows_keeps_its_meter(self, flows_world):
        f = flows_world.flows
        port = flows_world.port()
        f.set_port(E1, port, 100, (10_000, 2_500))
        f.add_flows([arp(f, E1, "10.0.0.5", None)])
        f.delete_endpoint_flows(E1)
        assert port_flows(f) == {}
        assert f.meters() == {port: {"rate_kbps": 10_000, "burst_kb": 2_500}}

    def test_deleting_a_meter_deletes_the_flows_that_use_it(self, flows_world):
        f = flows_world.flows
        port, other = flows_world.port(), flows_world.port()
        f.set_port(E1, port, 100, (10_000, 2_500))
        f.set_port(E2, other, 100, None)
        f.del_meter(port)
        assert f.meters() == {} and not f.has_meter(port)
        assert port_flows(f) == {cookie_for(E2): None}

    def test_flows_go_by_cookie(self, flows_world):
        f = flows_world.flows
        port = flows_world.port()
        f.set_port(E1, port, 100, None)
        f.add_flows([arp(f, E1, "10.0.0.5", None), arp(f, E2, "10.0.0.6", None)])
        f.add_flows([])
        f.delete_cookies([cookie_for(E2, KIND_ARP_LOCAL), cookie_for(E2, KIND_PORT)])
        f.delete_cookies([])
        assert port_flows(f) == {cookie_for(E1): None, cookie_for(E1, KIND_ARP_LOCAL): None}
        assert f.cookies(TABLE_ARP) == {cookie_for(E1, KIND_ARP_LOCAL)}
        assert f.count(TABLE_ARP) == 1 and f.count(TABLE_CLASSIFY) == len(f.cookies(TABLE_CLASSIFY))

    @pytest.mark.parametrize("ofport, vlan, limit, message", [
        (0, 100, None, "port 0 or VLAN 100 is out of range"),
        (5, 0, None, "port 5 or VLAN 0 is out of range"),
        (5, 4095, None, "port 5 or VLAN 4095 is out of range"),
        (5, 100, (0, 100), "a meter needs a positive rate and burst"),
        (5, 100, (100, -1), "a meter needs a positive rate and burst"),
    ])
    def test_bad_numbers_are_refused_and_change_nothing(self, flows_world, ofport, vlan, limit, message):
        f = flows_world.flows
        with pytest.raises(InvalidRequest) as exc:
            f.set_port(E1, ofport, vlan, limit)
        assert exc.value.message == message
        assert port_flows(f) == {} and f.meters() == {}

    def test_a_packet_must_be_hex(self, flows_world):
        with pytest.raises(InvalidRequest) as exc:
            flows_world.flows.packet_out(1, "ff ff")
        assert exc.value.message == "packet must be hex"
