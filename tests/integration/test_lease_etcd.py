"""The lease keeper (netplugin/lease.py) and its holders against a real etcd:
a lease kept alive outlives its TTL, and a lease lost behind a holder's back
(etcd answers its renewal with TTL 0, not an error) is noticed by the proof
the holder gives: the heartbeat's stamp, the reconciler lock's owner."""

from __future__ import annotations

import time

from netplugin.config import Config
from netplugin.hosts import HostHeartbeat
from netplugin.kv import Put
from netplugin.reconcile import LockKeeper

TTL = 2            # etcd's smallest lease TTL with default timings


def wait_for(cond, timeout: float = 10.0) -> bool:
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_a_kept_lease_outlives_its_ttl_and_lapses_once_stopped(kv, store, prefix):
    key = f"{prefix}/held"
    keeper = store.lease_keeper(TTL, 0.5, "test-lease", on_grant=lambda lease: kv.txn([], [Put(key, "1", lease=lease)]),
                                proof=lambda: kv.get(key) is not None).start(at_once=True)
    try:
        assert wait_for(lambda: kv.get(key) is not None)
        first = keeper.lease
        time.sleep(3 * TTL)
        assert kv.get(key) is not None and keeper.lease == first
    finally:
        keeper.stop(wait=2)
    assert wait_for(lambda: kv.get(key) is None, 3 * TTL)


def test_renewing_a_lost_lease_is_no_error_the_proof_tells(kv, store, prefix):
    key = f"{prefix}/held"
    grants: list[int] = []

    def on_grant(lease: int) -> None:
        grants.append(lease)
        kv.txn([], [Put(key, "1", lease=lease)])
    keeper = store.lease_keeper(TTL, 0.5, "test-lease", on_grant=on_grant, proof=lambda: kv.get(key) is not None)
    keeper.beat()
    kv.revoke_lease(grants[0])                     # lost behind the keeper's back
    keeper.renew()                                 # etcd says TTL 0: no error
    keeper.beat()
    assert len(grants) == 2 and keeper.lease == grants[1] and kv.get(key) is not None
    keeper.revoke()
    assert kv.get(key) is None


def test_the_heartbeat_registers_again_after_its_lease_was_lost(kv, store):
    cfg = Config(host_id=f"lease-{time.monotonic_ns()}", bridge="nptest0")
    hb = HostHeartbeat(cfg, store)
    hb.beat()
    old = hb.lease
    kv.revoke_lease(old)
    assert not store.host_alive(cfg.host_id)
    hb.beat()
    assert hb.lease not in (None, old) and store.host_alive(cfg.host_id)
    hb.keeper.revoke()


def test_the_reconciler_lock_notices_its_lease_was_lost(kv, store):
    lease = store.lease_keeper(120, 0.2, "lock-test")
    assert store.try_lock("test", "me", lease.grant())
    lock = LockKeeper(store, "test", "me", lease, every=0.2).start()
    try:
        assert lock.refresh() and lock.held()
        kv.revoke_lease(lease.lease)
        assert wait_for(lambda: bool(lock.lost))
        assert lock.lost == "the lock's lease expired" and not lock.held()
    finally:
        lock.stop()
