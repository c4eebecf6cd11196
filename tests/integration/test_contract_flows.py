"""The Flows suite (tests/contract/flows_suite.py) against ovs-ofctl on a
real bridge: what FakeFlows is held to in tests/unit/test_contract_flows.py."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from netplugin.dataplane.flows import Flows

from ..contract.flows_suite import FlowsContract


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
