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
from tests.harness.etcd import ETCD, Member

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


def _first_event(events, timeout: float):
    """next(events) on a thread: the event, an exception, or None after timeout."""
    box: queue.Queue = queue.Queue()

    def pull() -> None:
        try:
            box.put(next(events))
        except BaseException as exc:  # noqa: BLE001 - reported through the queue
            box.put(exc)
    threading.Thread(target=pull, daemon=True).start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        return None


def test_a_watch_ended_with_its_stream_does_not_cancel_the_next_streams_watch(tmp_path):
    """etcd numbers each stream's watches from 0: a watch whose stream ended
    (its member restarted), cancelled afterwards, must not cancel the new
    stream's watch of that number (the library cancels by number alone; that
    cache then waited for events that never came). A private member: the
    test restarts it."""
    from netplugin.kv import Delete
    member = Member.single("np-streamids", tmp_path)
    member.start()
    member.wait_healthy()
    kv = EtcdKV([member.client], timeout=3)
    a, c = "/np/a/", "/np/c/"
    try:
        kv.txn([], [Put(a + "0", "1"), Put(c + "0", "1")])
        stop = threading.Event()
        old = kv.watch_prefix(a, 1, stop)                     # from revision 1: its first event is there at once
        assert _first_event(old, 5) is not None
        member.kill()                                         # the stream ends with its member
        member.start()
        member.wait_healthy()
        new, first = None, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:                    # the client's reconnect may take a few tries
            new = kv.watch_prefix(c, 1, stop)                 # a new stream: its first watch is number 0 again
            first = _first_event(new, 5)
            if first is not None and not isinstance(first, BaseException):
                break
            time.sleep(0.5)
        assert first is not None and not isinstance(first, BaseException), first
        old.close()                                           # the ended watch's cancel comes late
        kv.txn([], [Put(c + "y", "2")])
        nxt = _first_event(new, 5)
        assert nxt is not None, f"the watch on {c} was cancelled by the late cancel of the ended watch on {a}"
        assert not isinstance(nxt, BaseException) and nxt.key == c + "y", nxt
        stop.set()
        kv.txn([], [Delete("/np/", prefix=True)])
    finally:
        kv.close()
        member.stop()


def test_a_failed_over_read_keeps_the_stream_and_a_closed_stream_ends_its_watches():
    """A read that fails over must not close the watch stream (the library
    closed it half-way: every create queued on it then waited out its
    timeout, one after the other); a stream closed for real ends its
    watches with an error, so their caches read again on a new one."""
    from netplugin.errors import StoreUnavailable
    from netplugin.kv import Delete
    kv = EtcdKV([ETCD], timeout=3)
    base = f"/nptest-watch-{secrets.token_hex(4)}"
    a, b = f"{base}/a/", f"{base}/b/"
    try:
        kv.txn([], [Put(a + "0", "1")])
        _, revision = kv.snapshot(a)
        stop = threading.Event()
        events = kv.watch_prefix(a, revision, stop)
        assert _first_event(events, 5) is not None
        client = kv._get_client()
        stream = client.watcher
        client._clear_old_stubs()                 # what the client does after a read timed out
        assert client.watcher is stream, "a failed-over read replaced a live watch stream"
        kv.txn([], [Put(a + "1", "1")])
        got = _first_event(events, 5)
        assert got is not None and not isinstance(got, BaseException) and got.key == a + "1", got
        t0 = time.monotonic()
        stream.close()
        ended = _first_event(events, 5)
        assert isinstance(ended, StoreUnavailable), f"a closed stream's watch did not end: {ended!r}"
        assert client.watcher is not stream
        kv.txn([], [Put(b + "x", "1")])
        _, revision = kv.snapshot(b)
        other = kv.watch_prefix(b, revision, stop)
        got = _first_event(other, 5)
        assert got is not None and not isinstance(got, BaseException) and got.key == b + "x", got
        assert time.monotonic() - t0 < 8
        stop.set()
    finally:
        kv.txn([], [Delete(base + "/", prefix=True)])
        kv.close()
