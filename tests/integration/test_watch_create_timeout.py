"""A watch create that times out must not hijack the next watch (kv.py's
watcher): python-etcd3 took the late "created" reply of a timed-out create
as the next create's, so a watch on /b/ then received /a/'s changes and
none of its own. Seen in the fleet simulation under load; here made at will
with a create timeout of 10 microseconds, on the shared etcd."""

from __future__ import annotations

import contextlib
import queue
import secrets
import threading
import time

import pytest

from netplugin.kv import EtcdKV, Put
from tests.harness.etcd import ETCD

pytestmark = pytest.mark.integration


def test_a_timed_out_watch_create_does_not_hand_its_watch_to_the_next():
    import pyetcd.exceptions as etcd_exc
    kv = EtcdKV([ETCD], timeout=3)
    base = f"/nptest-watch-{secrets.token_hex(4)}"
    a, b = f"{base}/a/", f"{base}/b/"
    try:
        client = kv._get_client()
        watcher = client.watcher
        watcher.timeout = 1e-5
        with pytest.raises(etcd_exc.WatchTimedOut):
            watcher.add_callback(a.encode(), lambda _: None, range_end=f"{base}/a0".encode())
        watcher.timeout = 3
        got: queue.Queue = queue.Queue()
        stop = threading.Event()
        revision = 0                                   # the next create, right away: while the late reply is due

        def follow():
            try:
                for event in kv.watch_prefix(b, revision, stop):
                    got.put(event.key)
            except Exception as exc:  # noqa: BLE001 - reported through the queue
                got.put(exc)
        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.5)
        kv.txn([], [Put(a + "x", "1")])
        kv.txn([], [Put(b + "y", "1")])
        first = got.get(timeout=5)
        assert first == b + "y", f"the watch on {b} was handed {first!r}"
        stop.set()
    finally:
        kv.txn([], [__import__("netplugin.kv", fromlist=["Delete"]).Delete(base + "/", prefix=True)])
        kv.close()


def test_a_watch_create_waits_the_whole_etcd_timeout():
    """The watcher is built inside the first watch call, whose attempt has a
    third of etcd_timeout: its creates must still wait the whole of it."""
    kv = EtcdKV([ETCD], timeout=3)
    stop = threading.Event()
    try:
        events = kv.watch_prefix(f"/nptest-watch-{secrets.token_hex(4)}/", 0, stop)

        def first() -> None:
            with contextlib.suppress(Exception):     # ends when the test closes the client
                next(events, None)
        threading.Thread(target=first, daemon=True).start()
        deadline = time.monotonic() + 5
        while "watcher" not in kv._get_client()._stubs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kv._get_client().watcher.timeout == 3
    finally:
        stop.set()
        kv.close()
