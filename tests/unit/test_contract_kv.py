"""The KV suite (tests/contract/kv_suite.py) against MemoryKV, on a clock
the suite moves; tests/integration/test_contract_kv.py runs it against etcd."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ..contract.kv_suite import KVContract
from .fakes import MemoryKV


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def pass_time(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def kv_world():
    clock = Clock()

    def unavailable() -> MemoryKV:
        down = MemoryKV(clock)
        down.down = True
        return down
    return SimpleNamespace(kv=MemoryKV(clock), prefix="/netplugin/contract", unavailable=unavailable,
                           pass_time=clock.pass_time)


class TestMemoryKV(KVContract):
    pass
