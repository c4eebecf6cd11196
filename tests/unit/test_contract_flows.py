"""The Flows suite (tests/contract/flows_suite.py) against FakeFlows;
tests/integration/test_contract_flows.py runs it against a real bridge."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from ..contract.flows_suite import FlowsContract
from .fakes import FakeFlows


@pytest.fixture
def flows_world():
    flows, numbers = FakeFlows("nptest0"), itertools.count(1)
    flows.ensure_pipeline()
    return SimpleNamespace(flows=flows, port=lambda: next(numbers))


class TestFakeFlows(FlowsContract):
    pass
