"""Switch's snapshot reads (one OVSDB select of the columns needed, what the
reconciler uses) against the machine's ovsdb-server: the Switch contract
holds with them, and they list exactly what ovsdbapp's replica lists."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from netplugin.dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK, Switch

from ..contract.dataplane_suite import SwitchContract


@pytest.fixture(scope="module")
def snapshot_switch(ovs_ready):
    """Never closed, like the ring's shared Switch (see conftest.switch). Its
    writes open ovsdbapp's replica on first use: patient on a loaded machine."""
    return Switch(ovs_ready, timeout=10, connect_timeout=60, snapshot_reads=True)


@pytest.fixture
def switch_world(snapshot_switch, bridge, veths):
    def device() -> str:
        host, _ = veths.pair()
        return host
    return SimpleNamespace(switch=snapshot_switch, bridge=bridge, datapath_type="netdev", device=device)


class TestSwitchWithSnapshotReads(SwitchContract):
    pass


def test_snapshot_reads_list_what_the_replica_lists(switch, snapshot_switch, bridge, veths):
    assert snapshot_switch.snapshot_reads and not switch.snapshot_reads
    uplink, _ = veths.pair()
    switch.ensure_bridge(bridge, "netdev", uplink)
    made = []
    for i in range(6):
        host, _ = veths.pair()
        ext = {EXT_ENDPOINT: f"{i + 1:064x}", EXT_NETWORK: "n-000000000001", EXT_HOST: "h1"}
        switch.add_access_port(bridge, host, 100 + i, ext, wait_vswitchd=False)
        made.append({"name": host, "tag": 100 + i, "external_ids": ext})

    def by_name(ports):
        return sorted(ports, key=lambda p: p["name"])
    assert by_name(snapshot_switch.list_ports(bridge)) == by_name(made) == by_name(switch.list_ports(bridge))
    mine = {name: br for name, br in snapshot_switch.port_bridges().items() if br == bridge}
    assert mine == {p["name"]: bridge for p in made} | {uplink: bridge}
    assert mine == {name: br for name, br in switch.port_bridges().items() if br == bridge}
    assert snapshot_switch.bridge_exists(bridge) and not snapshot_switch.bridge_exists(bridge + "x")
