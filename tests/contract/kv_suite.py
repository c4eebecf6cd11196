"""The KV protocol (netplugin/kv.py) as etcd v3 answers it through EtcdKV.

The world fixture ``kv_world`` gives:
  kv            the KV under test
  prefix        a key prefix of its own (``/...``, no trailing slash)
  unavailable() a KV of the same kind whose etcd does not answer
  pass_time(s)  let s seconds pass (a fake clock moves; etcd's really pass)
"""

from __future__ import annotations

import threading
import time

import pytest

from netplugin.errors import StoreUnavailable
from netplugin.kv import Compare, Delete, Event, Put, absent, unchanged

LEASE_TTL = 2          # etcd's smallest lease TTL with default timings


def revision(world) -> int:
    return world.kv.snapshot(world.prefix + "/")[1]


def follow(kv, prefix: str, start_revision: int, count: int, write) -> list[Event]:
    """Watch prefix from start_revision, call write(), return the first count events."""
    seen: list[Event] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def watch():
        try:
            for event in kv.watch_prefix(prefix, start_revision, stop):
                seen.append(event)
                if len(seen) >= count:
                    stop.set()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    write()
    thread.join(10)
    stop.set()
    assert not errors, errors
    assert len(seen) >= count, f"the watch saw {len(seen)} of {count} events: {seen}"
    return seen[:count]


class KVContract:
    # -- reads and revisions ---------------------------------------------------------------
    def test_a_missing_key_reads_as_none(self, kv_world):
        assert kv_world.kv.get(kv_world.prefix + "/missing") is None

    def test_one_transaction_is_one_new_revision(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        before = revision(kv_world)
        assert kv.txn([], [Put(p + "/a", "1"), Put(p + "/b", b"2")])
        a, b = kv.get(p + "/a"), kv.get(p + "/b")
        assert (a.value, b.value) == (b"1", b"2")
        assert a.create_revision == a.mod_revision == b.create_revision == b.mod_revision == before + 1
        assert revision(kv_world) == before + 1

    def test_a_rewrite_keeps_the_create_revision_a_recreate_does_not(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/k", "1")])
        first = kv.get(p + "/k")
        kv.txn([], [Put(p + "/k", "2")])
        second = kv.get(p + "/k")
        assert second.create_revision == first.create_revision
        assert second.mod_revision == first.mod_revision + 1
        kv.txn([], [Delete(p + "/k")])
        assert kv.get(p + "/k") is None
        kv.txn([], [Put(p + "/k", "3")])
        third = kv.get(p + "/k")
        assert third.create_revision == third.mod_revision == second.mod_revision + 2

    def test_deleting_nothing_makes_no_revision(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        before = revision(kv_world)
        assert kv.txn([], [Delete(p + "/nothing")])
        assert kv.txn([], [Delete(p + "/none/", prefix=True)])
        assert revision(kv_world) == before

    def test_prefix_reads_are_sorted_and_stop_at_the_prefix(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/d/b", "2"), Put(p + "/d/a", "1"), Put(p + "/d/c/x", "3"), Put(p + "/d", "self"),
                    Put(p + "/e", "other")])
        items = kv.get_prefix(p + "/d/")
        assert [i.key for i in items] == [p + "/d/a", p + "/d/b", p + "/d/c/x"]
        assert [i.value for i in items] == [b"1", b"2", b"3"]
        bare = kv.get_prefix(p + "/d/", keys_only=True)
        assert [i.key for i in bare] == [i.key for i in items]
        assert all(i.value == b"" for i in bare)
        assert [(i.create_revision, i.mod_revision) for i in bare] == \
               [(i.create_revision, i.mod_revision) for i in items]
        assert kv.count_prefix(p + "/d/") == 3
        assert kv.count_prefix(p + "/d") == 4
        assert kv.count_prefix(p + "/none/") == 0
        assert kv.get_prefix(p + "/none/") == []

    def test_a_prefix_delete_removes_only_the_prefix(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/d/a", "1"), Put(p + "/d/b", "2"), Put(p + "/dx", "3")])
        before = revision(kv_world)
        assert kv.txn([], [Delete(p + "/d/", prefix=True)])
        assert [i.key for i in kv.get_prefix(p + "/")] == [p + "/dx"]
        assert revision(kv_world) == before + 1

    def test_snapshot_reads_items_at_a_revision(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/s/a", "1"), Put(p + "/s/b", "2"), Put(p + "/t", "x")])
        items, rev = kv.snapshot(p + "/s/")
        assert [(i.key, i.value) for i in items] == [(p + "/s/a", b"1"), (p + "/s/b", b"2")]
        assert rev == items[0].mod_revision
        assert kv.snapshot(p + "/none/") == ([], rev)

    # -- transactions ------------------------------------------------------------------------
    def test_create_if_absent(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        assert kv.txn([absent(p + "/k")], [Put(p + "/k", "v")])
        before = revision(kv_world)
        assert not kv.txn([absent(p + "/k")], [Put(p + "/k", "w")])
        assert kv.get(p + "/k").value == b"v"
        assert revision(kv_world) == before                  # a failed transaction writes nothing

    def test_unchanged_since_a_revision(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        assert kv.txn([unchanged(p + "/k", 0)], [Put(p + "/k", "v")])         # 0: still absent
        rev = kv.get(p + "/k").mod_revision
        assert not kv.txn([unchanged(p + "/k", 0)], [Put(p + "/k", "x")])
        assert kv.txn([unchanged(p + "/k", rev)], [Put(p + "/k", "w")])
        assert not kv.txn([unchanged(p + "/k", rev)], [Put(p + "/k", "x")])
        assert kv.get(p + "/k").value == b"w"

    def test_value_and_revision_compares(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/k", "w")])
        item = kv.get(p + "/k")
        assert kv.txn([Compare(p + "/k", "value", "==", "w")], [])
        assert kv.txn([Compare(p + "/k", "value", "==", b"w")], [])
        assert not kv.txn([Compare(p + "/k", "value", "!=", "w")], [])
        assert kv.txn([Compare(p + "/k", "value", "!=", "v")], [])
        assert kv.txn([Compare(p + "/k", "create", "!=", 0)], [])
        assert kv.txn([Compare(p + "/k", "create", "==", item.create_revision)], [])
        assert kv.txn([Compare(p + "/k", "mod", "==", item.mod_revision)], [])
        assert not kv.txn([Compare(p + "/k", "mod", "!=", item.mod_revision)], [])
        assert kv.txn([Compare(p + "/missing", "mod", "==", 0), Compare(p + "/missing", "create", "==", 0)], [])

    def test_a_value_compare_on_a_missing_key_always_fails(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        assert not kv.txn([Compare(p + "/missing", "value", "!=", "anything")], [Put(p + "/z", "1")])
        assert not kv.txn([Compare(p + "/missing", "value", "==", "")], [Put(p + "/z", "1")])
        assert kv.get(p + "/z") is None

    def test_every_compare_must_hold(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/k", "v")])
        assert not kv.txn([absent(p + "/new"), absent(p + "/k")], [Put(p + "/new", "1"), Delete(p + "/k")])
        assert kv.get(p + "/new") is None and kv.get(p + "/k").value == b"v"

    def test_racing_claims_have_one_winner(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        wins: list[int] = []

        def claim(i: int) -> None:
            if kv.txn([absent(p + "/one")], [Put(p + "/one", str(i))]):
                wins.append(i)
        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(wins) == 1 and kv.get(p + "/one").value == str(wins[0]).encode()

    # -- watches -----------------------------------------------------------------------------
    def test_a_watch_after_a_snapshot_sees_every_later_change_in_order(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/w/a", "1")])
        _, rev = kv.snapshot(p + "/w/")

        def write():
            kv.txn([], [Put(p + "/w/b", "2"), Put(p + "/other", "x")])
            kv.txn([], [Delete(p + "/w/a")])
            kv.txn([], [Put(p + "/w/b", "3")])
        seen = follow(kv, p + "/w/", rev + 1, 3, write)
        assert [(e.kind, e.key, e.value) for e in seen] == [
            ("put", p + "/w/b", b"2"), ("delete", p + "/w/a", b""), ("put", p + "/w/b", b"3")]
        revs = [e.mod_revision for e in seen]
        assert revs[0] == rev + 1 and revs == sorted(set(revs))
        assert kv.get(p + "/w/b").mod_revision == revs[-1]

    def test_a_watch_from_an_old_revision_replays_history(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/h/a", "1")])
        start = kv.get(p + "/h/a").mod_revision
        kv.txn([], [Put(p + "/h/a", "2")])
        seen = follow(kv, p + "/h/", start, 3, lambda: kv.txn([], [Delete(p + "/h/", prefix=True)]))
        assert [(e.kind, e.value) for e in seen] == [("put", b"1"), ("put", b"2"), ("delete", b"")]
        assert [e.mod_revision for e in seen] == [start, start + 1, start + 2]

    def test_a_watched_prefix_delete_is_one_event_per_key_at_one_revision(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kv.txn([], [Put(p + "/x/b", "2"), Put(p + "/x/a", "1")])
        rev = revision(kv_world)
        seen = follow(kv, p + "/x/", rev + 1, 2, lambda: kv.txn([], [Delete(p + "/x/", prefix=True)]))
        assert sorted((e.kind, e.key) for e in seen) == [("delete", p + "/x/a"), ("delete", p + "/x/b")]
        assert {e.mod_revision for e in seen} == {rev + 1}

    def test_a_callback_watch_delivers_batches_in_order_and_nothing_after_cancel(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        _, rev = kv.snapshot(p + "/cb/")
        got: list = []
        arrived = threading.Event()

        def deliver(reply) -> None:
            got.append(reply)
            if sum(len(r) for r in got if isinstance(r, list)) >= 3:
                arrived.set()
        cancel = kv.watch_prefix_cb(p + "/cb/", rev + 1, deliver)
        try:
            kv.txn([], [Put(p + "/cb/a", "1"), Put(p + "/other", "x")])
            kv.txn([], [Put(p + "/cb/b", "2")])
            kv.txn([], [Delete(p + "/cb/a")])
            assert arrived.wait(10), got
        finally:
            cancel()
        assert not any(isinstance(r, Exception) for r in got), got
        events = [e for r in got for e in r]
        assert [(e.kind, e.key) for e in events] == [("put", p + "/cb/a"), ("put", p + "/cb/b"),
                                                   ("delete", p + "/cb/a")]
        time.sleep(0.3)               # a batch already on its way may still come
        count = len(got)
        kv.txn([], [Put(p + "/cb/late", "3")])
        time.sleep(0.5)
        assert len(got) == count, got[count:]

    # -- leases ------------------------------------------------------------------------------
    def test_revoking_a_lease_deletes_its_keys_in_one_revision(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        lease = kv.grant_lease(10)
        kv.txn([], [Put(p + "/l/a", "1", lease=lease), Put(p + "/l/b", "2", lease=lease), Put(p + "/l/keep", "3")])
        kv.refresh_lease(lease)
        rev = revision(kv_world)
        seen = follow(kv, p + "/l/", rev + 1, 2, lambda: kv.revoke_lease(lease))
        assert sorted((e.kind, e.key) for e in seen) == [("delete", p + "/l/a"), ("delete", p + "/l/b")]
        assert {e.mod_revision for e in seen} == {rev + 1}
        assert [i.key for i in kv.get_prefix(p + "/l/")] == [p + "/l/keep"]

    def test_a_gone_lease(self, kv_world):
        """Revoking it again, or writing under it, fails as etcd's NOT_FOUND;
        refreshing it is no error: etcd answers TTL 0, which is how a keeper
        notices that its lease ran out."""
        kv, p = kv_world.kv, kv_world.prefix
        lease = kv.grant_lease(10)
        kv.revoke_lease(lease)
        with pytest.raises(StoreUnavailable, match="requested lease not found"):
            kv.revoke_lease(lease)
        with pytest.raises(StoreUnavailable, match="requested lease not found"):
            kv.txn([], [Put(p + "/x", "1", lease=lease)])
        assert kv.get(p + "/x") is None
        assert kv.refresh_lease(lease) == 0
        assert kv.get(p + "/x") is None

    def test_a_put_without_a_lease_detaches_the_key(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        lease = kv.grant_lease(10)
        kv.txn([], [Put(p + "/y", "1", lease=lease)])
        kv.txn([], [Put(p + "/y", "2")])
        kv.revoke_lease(lease)
        assert kv.get(p + "/y").value == b"2"

    def test_a_lease_runs_out_without_refresh_and_lives_with_it(self, kv_world):
        kv, p = kv_world.kv, kv_world.prefix
        kept, lapsed = kv.grant_lease(LEASE_TTL), kv.grant_lease(LEASE_TTL)
        kv.txn([], [Put(p + "/kept", "1", lease=kept), Put(p + "/lapsed", "1", lease=lapsed)])
        for _ in range(8):               # 4 s: twice the TTL (etcd revokes within about 0.5 s of it)
            kv_world.pass_time(0.5)
            assert kv.refresh_lease(kept) == LEASE_TTL
        assert kv.get(p + "/kept") is not None
        assert kv.get(p + "/lapsed") is None
        assert kv.refresh_lease(lapsed) == 0
        kv.revoke_lease(kept)
        with pytest.raises(StoreUnavailable, match="requested lease not found"):
            kv.revoke_lease(lapsed)

    # -- an etcd that does not answer ----------------------------------------------------------
    def test_every_call_fails_with_store_unavailable(self, kv_world):
        kv = kv_world.unavailable()
        calls = [lambda: kv.get("/a"), lambda: kv.get_prefix("/"), lambda: kv.count_prefix("/"),
                 lambda: kv.txn([], [Put("/b", "1")]), lambda: kv.snapshot("/"), lambda: kv.grant_lease(5),
                 lambda: kv.refresh_lease(1), lambda: kv.revoke_lease(1),
                 lambda: next(iter(kv.watch_prefix("/", 1, threading.Event())))]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as exc:
                call()
            assert exc.value.message.startswith("store unavailable: etcd did not answer at ")
            assert exc.value.message.endswith("; check that etcd is running and reachable, then retry")
            assert time.monotonic() - started < 5
