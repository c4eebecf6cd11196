"""The one lease keeper (netplugin/lease.py LeaseKeeper), over MemoryKV: it
keeps a lease alive from its thread, notices a lost one (a renewal refused,
or the holder's proof that its key stands failing) and grants anew, ends its
thread when a holder's beat says the lease is lost, and revokes on demand."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from netplugin.errors import StoreUnavailable
from netplugin.kv import Put
from netplugin.lease import LeaseKeeper

from .fakes import MemoryKV


def wait_for(cond, timeout: float = 3.0) -> bool:
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class Holder:
    """Puts one key on each lease granted; its proof is that key still there."""

    def __init__(self, kv: MemoryKV, key: str = "/held"):
        self.kv, self.key = kv, key
        self.grants: list[int] = []

    def on_grant(self, lease: int) -> None:
        self.grants.append(lease)
        self.kv.txn([], [Put(self.key, "me", lease=lease)])

    def proof(self) -> bool:
        return self.kv.get(self.key) is not None


@pytest.fixture
def holder(kv) -> Holder:
    return Holder(kv)


def keeper(kv, holder: Holder | None = None, every: float = 0.01, ttl: int = 15) -> LeaseKeeper:
    return LeaseKeeper(kv, ttl, every, "test-lease", on_grant=holder.on_grant if holder else None,
                       proof=holder.proof if holder else None)


def refreshes(kv: MemoryKV) -> int:
    return kv.calls.count("refresh_lease")


def test_the_first_beat_grants_and_hands_the_lease_to_its_holder(kv, holder):
    k = keeper(kv, holder)
    assert k.lease is None
    k.beat()
    assert k.lease is not None and holder.grants == [k.lease]
    assert kv.leases() == {k.lease: 15} and kv._key_lease["/held"] == k.lease


def test_the_thread_keeps_the_lease_alive(kv, holder):
    k = keeper(kv, holder).start(at_once=True)
    try:
        assert wait_for(lambda: refreshes(kv) >= 5)
        assert len(holder.grants) == 1 and k.lease in kv.leases()
    finally:
        k.stop(wait=1)
    assert not k._thread.is_alive()
    assert k.lease in kv.leases()                        # stopping keeps the lease: it lapses or is revoked


def test_the_first_beat_waits_an_interval_unless_told(kv):
    k = keeper(kv, every=0.2)
    k.grant()
    k.start()
    try:
        time.sleep(0.05)
        assert refreshes(kv) == 0
        assert wait_for(lambda: refreshes(kv) >= 1)
    finally:
        k.stop(wait=1)


def test_a_lease_that_ran_out_unnoticed_is_granted_again_at_once(kv, holder):
    """etcd answers the renewal of an expired lease with TTL 0, not an error:
    the holder's proof is what tells, and the next lease comes in the same beat."""
    k = keeper(kv, holder)
    k.beat()
    old = k.lease
    kv.revoke_lease(old)                                  # ran out while etcd was away
    assert kv.get("/held") is None
    k.beat()
    assert k.lease not in (None, old) and holder.grants == [old, k.lease]
    assert kv._key_lease["/held"] == k.lease


def test_the_thread_notices_a_lost_lease(kv, holder):
    k = keeper(kv, holder).start(at_once=True)
    try:
        assert wait_for(lambda: len(holder.grants) == 1)
        kv.revoke_lease(holder.grants[0])
        assert wait_for(lambda: len(holder.grants) == 2 and kv.get("/held") is not None)
        assert kv._key_lease["/held"] == k.lease == holder.grants[1]
    finally:
        k.stop(wait=1)


def test_a_failed_beat_is_logged_and_the_lease_dropped_then_granted_again(kv, holder, caplog):
    caplog.set_level(logging.WARNING, logger="netplugin.lease")
    k = keeper(kv, holder)
    k.beat()
    first = k.lease
    kv.set_down(True)
    k.start(at_once=True)
    try:
        assert wait_for(lambda: k.lease is None)
        assert any(r.getMessage().startswith("test-lease: store unavailable") for r in caplog.records)
        kv.set_down(False)
        assert wait_for(lambda: k.lease not in (None, first) and kv.get("/held") is not None)
    finally:
        k.stop(wait=1)


def test_a_beat_that_says_lost_ends_the_thread(kv):
    k = keeper(kv)
    k.grant()
    beats = []

    def beat() -> bool:
        beats.append(1)
        return len(beats) < 3
    k.start(beat=beat)
    assert wait_for(lambda: not k._thread.is_alive())
    assert len(beats) == 3 and k.lease in kv.leases()


def test_a_beat_that_raises_does_not_end_the_thread(kv, caplog):
    k = keeper(kv)
    k.grant()
    beats = []

    def beat() -> bool:
        beats.append(1)
        if len(beats) == 1:
            raise RuntimeError("a bug")
        return len(beats) < 3
    k.start(beat=beat)
    assert wait_for(lambda: not k._thread.is_alive())
    assert len(beats) == 3
    assert any(r.getMessage() == "test-lease failed" for r in caplog.records)


def test_revoke_gives_the_lease_back_and_its_keys_go(kv, holder):
    k = keeper(kv, holder)
    k.beat()
    k.revoke()
    assert k.lease is None and kv.leases() == {} and kv.get("/held") is None
    k.revoke()                                           # nothing held: nothing to do


def test_revoking_a_lease_already_gone_raises(kv):
    k = keeper(kv)
    lease = k.grant()
    kv.revoke_lease(lease)
    with pytest.raises(StoreUnavailable, match="lease not found"):
        k.revoke()
    assert k.lease is None


def test_drop_leaves_the_lease_to_lapse(kv):
    k = keeper(kv)
    lease = k.grant()
    k.drop()
    assert k.lease is None and lease in kv.leases()
    with pytest.raises(RuntimeError, match="no lease to renew"):
        k.renew()


def test_a_lease_kept_alive_outlives_its_ttl_and_lapses_once_stopped():
    now = {"t": 0.0}
    kv = MemoryKV(clock=lambda: now["t"])
    holder = Holder(kv)
    k = LeaseKeeper(kv, 3, 1.0, "test-lease", on_grant=holder.on_grant, proof=holder.proof)
    k.beat()
    for _ in range(10):                                  # ten seconds of beats, every second
        now["t"] += 1.0
        k.beat()
    assert holder.grants == [k.lease] and kv.get("/held") is not None
    now["t"] += 3.5                                      # no beat for longer than the TTL
    assert kv.get("/held") is None


def test_stop_from_another_thread_ends_a_waiting_keeper(kv):
    k = keeper(kv, every=30)
    k.grant()
    k.start()
    t = threading.Thread(target=k.stop, kwargs={"wait": 2})
    t.start()
    t.join(3)
    assert not k._thread.is_alive()
