"""The Switch and Links suites (tests/contract/dataplane_suite.py) against
Open vSwitch and the kernel: what FakeSwitch and FakeLinks are held to in
tests/unit/test_contract_dataplane.py."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from ..contract.dataplane_suite import LinksContract, SwitchContract


@pytest.fixture
def switch_world(switch, bridge, veths):
    def device() -> str:
        host, _ = veths.pair()
        return host
    return SimpleNamespace(switch=switch, bridge=bridge, datapath_type="netdev", device=device)


@pytest.fixture
def links_world(links, veths, netns):
    def names() -> tuple[str, str]:
        _, host, peer = veths.names()
        return host, peer

    def inside(path: str) -> dict[str, str]:
        name = path.rsplit("/", 1)[-1]
        out = {}
        shown = subprocess.run(["ip", "-n", name, "-j", "addr", "show"], capture_output=True, text=True,
                               timeout=10, check=True)
        for link in json.loads(shown.stdout):
            if link["ifname"] == "lo":
                continue
            inet = [a for a in link.get("addr_info", []) if a.get("family") == "inet"]
            out[link["ifname"]] = f"{inet[0]['local']}/{inet[0]['prefixlen']}" if inet else ""
        return out
    return SimpleNamespace(links=links, names=names, netns=lambda: "/run/netns/" + netns.new(), inside=inside)


class TestSwitch(SwitchContract):
    pass


class TestLinks(LinksContract):
    pass
