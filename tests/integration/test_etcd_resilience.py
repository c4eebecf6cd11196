"""EtcdKV when etcd misbehaves: a wedged etcd, an etcd that goes away and
comes back, and one dead member among several endpoints. The real etcd is
reached through a small TCP proxy that the test can cut and restore."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from netplugin.errors import StoreUnavailable
from netplugin.ipam import Ipam
from netplugin.kv import EtcdKV, Put
from netplugin.store import Store

pytestmark = pytest.mark.integration


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the real etcd; down() refuses and cuts every
    connection (like a stopped etcd), up() listens again on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() thread
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def proxy(etcd_endpoint):
    parts = urlsplit(etcd_endpoint)
    p = TcpProxy((parts.hostname, parts.port or 2379))
    p.up()
    yield p
    p.down()


def test_a_wedged_etcd_gives_store_unavailable_within_the_timeout():
    """An etcd that accepts connections but never answers (overloaded, stopped)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    endpoint = f"http://127.0.0.1:{srv.getsockname()[1]}"
    kv = EtcdKV([endpoint], timeout=1)
    ipam = Ipam(Store(kv, "/netplugin/test-wedged"), "nptest-host")
    try:
        for call in (lambda: kv.get("/netplugin/test-wedged/x"),
                     lambda: kv.txn([], [Put("/netplugin/test-wedged/x", "1")]),
                     lambda: ipam.request_address("10.1.0.0/24", "", False)):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as exc:
                call()
            assert time.monotonic() - t0 < 3.0
            assert endpoint in exc.value.message
    finally:
        kv.close()
        srv.close()


def test_etcd_kv_recovers_when_etcd_comes_back(proxy, prefix):
    kv = EtcdKV([proxy.url], timeout=1)
    store = Store(kv, prefix)
    ipam = Ipam(store, "nptest-host")
    try:
        pool_id, _, _ = ipam.request_pool("10.66.0.0/24", "", False)
        first = ipam.request_address(pool_id, "", False)
        proxy.down()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            ipam.request_address(pool_id, "", False)
        assert time.monotonic() - t0 < 3.0
        proxy.up()
        t0 = time.monotonic()
        while True:
            try:
                second = ipam.request_address(pool_id, "", False)
                break
            except StoreUnavailable:
                assert time.monotonic() - t0 < 10, "EtcdKV did not reconnect within 10 s after etcd came back"
                time.sleep(0.2)
        recovered = time.monotonic() - t0
        assert second != first
        assert ipam.release_address(pool_id, first.split("/")[0]) is True
        assert store.count_allocations("10.66.0.0/24") == 1
        print(f"\n[etcd] EtcdKV worked again {recovered:.2f} s after etcd came back")
    finally:
        kv.close()


def test_one_dead_endpoint_among_two_is_skipped(prefix, etcd_endpoint):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()                                         # nothing listens there: refused
    kv = EtcdKV([dead_url, etcd_endpoint], timeout=1)
    ipam = Ipam(Store(kv, prefix), "nptest-host")
    try:
        pool_id, _, _ = ipam.request_pool("10.67.0.0/24", "", False)
        t0 = time.monotonic()
        got = [ipam.request_address(pool_id, "", False) for _ in range(20)]
        assert len(set(got)) == 20
        assert time.monotonic() - t0 < 5.0
    finally:
        kv.close()


def test_the_endpoint_in_use_dies_and_the_next_call_fails_over(proxy, prefix, etcd_endpoint):
    kv = EtcdKV([proxy.url, etcd_endpoint], timeout=1)
    ipam = Ipam(Store(kv, prefix), "nptest-host")
    try:
        pool_id, _, _ = ipam.request_pool("10.68.0.0/24", "", False)
        ipam.request_address(pool_id, "", False)        # connected through the proxy
        proxy.down()
        t0 = time.monotonic()
        outcomes = []
        for _ in range(5):
            try:
                outcomes.append(ipam.request_address(pool_id, "", False))
            except StoreUnavailable as exc:
                outcomes.append(exc)
        took = time.monotonic() - t0
        failed = [o for o in outcomes if isinstance(o, StoreUnavailable)]
        assert len(failed) <= 1, f"a healthy second endpoint, yet {len(failed)} of 5 calls failed: {failed[:2]}"
        assert took < 5.0
    finally:
        kv.close()
