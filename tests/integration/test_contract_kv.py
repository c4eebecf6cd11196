"""The KV suite (tests/contract/kv_suite.py) against EtcdKV on the real etcd:
what MemoryKV is held to in tests/unit/test_contract_kv.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from netplugin.kv import EtcdKV

from ..contract.kv_suite import KVContract

NOBODY = "http://127.0.0.1:1"       # a port where no etcd answers


@pytest.fixture
def kv_world(kv, prefix):
    made: list[EtcdKV] = []

    def unavailable() -> EtcdKV:
        made.append(EtcdKV([NOBODY], timeout=0.5))
        return made[-1]
    yield SimpleNamespace(kv=kv, prefix=prefix, unavailable=unavailable, pass_time=time.sleep)
    for k in made:
        k.close()


class TestEtcdKV(KVContract):
    pass
