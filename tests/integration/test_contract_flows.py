"""The Flows suite (tests/contract/flows_suite.py) against Open vSwitch on a
real bridge: what FakeFlows is held to in tests/unit/test_contract_flows.py;
and the OpenFlow connection's refusals and reconnection."""

from __future__ import annotations

import secrets
import subprocess
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from netplugin.dataplane.flows import BULK, KIND_ARP_LOCAL, TABLE_ARP, TABLE_CLASSIFY, Flows, cookie_for
from netplugin.dataplane.ofchannel import DATAPATH, OpenFlowRefused

from ..contract.flows_suite import E1, E2, FlowsContract


@pytest.fixture
def flows_world(switch, bridge, veths):
    switch.ensure_bridge(bridge, "netdev")
    flows = Flows(bridge)
    flows.ensure_pipeline()

    def port() -> int:
        host, _ = veths.pair()
        switch.add_access_port(bridge, host, 100, {"np-endpoint": secrets.token_hex(32)})
        return switch.wait_ofport(host, 10)
    return SimpleNamespace(flows=flows, port=port)


class TestFlows(FlowsContract):
    pass


class TestConnection:
    """What only the real switch shows: its refusals reach the caller, and the one
    connection comes back by itself when vswitchd drops it."""

    def test_a_refused_flow_is_an_error_and_changes_nothing(self, flows_world):
        f = flows_world.flows
        port = flows_world.port()
        f._meter_ids = {port}        # believe the port has a meter it has not: the switch must say so
        f.set_port(E1, port, 100, (10_000, 2_500))              # modify refused as unknown, then added
        assert f.meters() == {port: {"rate_kbps": 10_000, "burst_kb": 2_500}}
        bad = parser.OFPFlowMod(DATAPATH, cookie=cookie_for(E2), table_id=0, command=ofp.OFPFC_ADD,
                                priority=100, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
                                out_group=ofp.OFPG_ANY, match=parser.OFPMatch(in_port=port + 1),
                                instructions=[parser.OFPInstructionMeter(4000, ofp.OFPIT_METER)])
        with pytest.raises(OpenFlowRefused) as exc:
            f._send([bad], ["a flow using meter 4000"])
        assert exc.value.message == (f"bridge {f.bridge} refused a flow using meter 4000: "
                                     "OFPET_METER_MOD_FAILED OFPMMFC_INVALID_METER")
        assert cookie_for(E2) not in f.cookies(TABLE_CLASSIFY)

    def test_the_connection_comes_back_after_the_bridge_does(self, flows_world, switch, bridge):
        f = flows_world.flows
        f.set_port(E1, flows_world.port(), 100, None)
        assert f.channel.connects == 1
        subprocess.run(["ovs-vsctl", "--timeout=20", "del-br", bridge], check=True)   # vswitchd closes the socket
        switch.ensure_bridge(bridge, "netdev")
        f.ensure_pipeline()
        assert f.count(TABLE_ARP, ours=False) == 1 and f.channel.connects == 2

    def test_more_than_a_bulk_of_answers_go_and_come_in_one_bundle(self, flows_world):
        f = flows_world.flows
        ids = [secrets.token_hex(32) for _ in range(BULK + 2)]
        f.add_flows([f.arp_answer(e, f"10.78.{i // 250}.{i % 250 + 1}", "02:00:0a:00:00:05", 100, None)
                     for i, e in enumerate(ids)])
        assert f.count(TABLE_ARP) == BULK + 2
        f.add_flows([f.arp_answer(ids[0], "10.78.0.1", "02:00:0a:00:00:05", 100, None)])    # again: replaced
        f.delete_cookies([cookie_for(e, KIND_ARP_LOCAL) for e in ids[1:]])
        assert f.cookies(TABLE_ARP) == {cookie_for(ids[0], KIND_ARP_LOCAL)}
