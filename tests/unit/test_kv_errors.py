"""What EtcdKV makes of etcd's answers under pressure, without an etcd: the
NOSPACE answer is StoreFull at once (no retry), with the way out; a compacted
watch is HistoryCompacted naming the watch. (The real answers:
tests/integration/test_etcd_pressure.py.)"""

from __future__ import annotations

import threading
import time

import pyetcd.exceptions as etcd_exc
import pytest

from netplugin.errors import HistoryCompacted, StoreFull, StoreUnavailable
from netplugin.kv import EtcdKV


class SpaceExceeded(Exception):
    """As grpc's RpcError says it: RESOURCE_EXHAUSTED with etcd's details."""

    def __str__(self):
        return 'status = StatusCode.RESOURCE_EXHAUSTED details = "etcdserver: mvcc: database space exceeded"'


@pytest.fixture
def kv(monkeypatch):
    kv = EtcdKV(["http://127.0.0.1:1"], timeout=2)
    monkeypatch.setattr(kv, "_get_client", lambda: object())
    return kv


@pytest.mark.parametrize("retry", [True, False])
def test_nospace_is_store_full_at_once(kv, retry):
    calls = []

    def fn(client):
        calls.append(1)
        raise SpaceExceeded()
    t0 = time.monotonic()
    with pytest.raises(StoreFull) as exc:
        kv._call(fn, retry=retry)
    assert calls == [1] and time.monotonic() - t0 < 0.5        # never retried: only an operator frees space
    assert isinstance(exc.value, StoreUnavailable) and exc.value.status == 503
    for words in ("NOSPACE", "space quota", "reads still work", "etcdctl compact", "etcdctl defrag",
                  "etcdctl alarm disarm", "http://127.0.0.1:1"):
        assert words in exc.value.message


def test_other_grpc_failures_stay_store_unavailable(kv):
    class Refused(Exception):
        __module__ = "grpc"
    with pytest.raises(StoreUnavailable) as exc:
        kv._call(lambda c: (_ for _ in ()).throw(Refused("permission denied")), retry=False)
    assert not isinstance(exc.value, StoreFull)


def test_a_compacted_watch_names_the_watch(kv, monkeypatch):
    def watch(client):
        raise etcd_exc.RevisionCompactedError(1234)
    monkeypatch.setattr(kv, "_call", lambda fn, retry=True: EtcdKV._call(kv, lambda c: watch(c), retry))
    with pytest.raises(HistoryCompacted) as exc:
        next(kv.watch_prefix("/np/endpoints/", 77, threading.Event()))
    assert exc.value.compacted_revision == 1234
    assert "/np/endpoints/" in exc.value.message and "revision 77" in exc.value.message
    assert "up to revision 1234" in exc.value.message
