"""The Switch and Links suites (tests/contract/dataplane_suite.py) against
FakeSwitch and FakeLinks; tests/integration/test_contract_dataplane.py runs
them against Open vSwitch and the kernel."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from ..contract.dataplane_suite import LinksContract, SwitchContract
from .fakes import FakeLinks, FakeSwitch


@pytest.fixture
def switch_world():
    n = itertools.count(1)
    return SimpleNamespace(switch=FakeSwitch(), bridge="nptest0", datapath_type="netdev",
                           device=lambda: f"np{next(n):011x}")


@pytest.fixture
def links_world():
    links, n = FakeLinks(), itertools.count(1)

    def names() -> tuple[str, str]:
        short = f"{next(n):011x}"
        return "np" + short, "nc" + short

    def inside(path: str) -> dict[str, str]:
        return {name: f"{link['ip']}/{link['prefixlen']}" for name, link in links.netns.get(path, {}).items()}
    return SimpleNamespace(links=links, names=names, netns=lambda: f"/run/netns/nptest-{next(n):08x}",
                           inside=inside)


class TestFakeSwitch(SwitchContract):
    pass


class TestFakeLinks(LinksContract):
    pass
