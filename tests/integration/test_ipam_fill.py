"""IPAM at 95% fill against a real etcd, under contention: four processes,
each its own daemon (EtcdKV, Store, Ipam, host id), allocate from one /21
whose other 95% is held, each until it is told the pool is exhausted. Every
free address must be handed out exactly once, no claimed address may be one
that was held, and exhaustion may only be declared once nothing is free
(the free lists the allocators remember go stale under each other all the
time here)."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import secrets
import time
import traceback

import netaddr
import pytest

from netplugin import networks
from netplugin.errors import PoolExhausted
from netplugin.ipam import Ipam
from netplugin.kv import EtcdKV, Put
from netplugin.model import Allocation
from netplugin.store import Store

from .test_ipam_etcd import random_subnet

pytestmark = pytest.mark.integration

WORKERS = 4
FILL = 0.95


class CountingKV:
    """Counts transactions (and refused ones) and range reads of one worker."""

    def __init__(self, kv):
        self.kv = kv
        self.txns = self.refused = self.ranges = 0

    def txn(self, compares, success, *a, **kw):
        self.txns += 1
        ok = self.kv.txn(compares, success, *a, **kw)
        self.refused += not ok
        return ok

    def get_prefix(self, prefix, *a, **kw):
        self.ranges += 1
        return self.kv.get_prefix(prefix, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.kv, name)


def _until_exhausted(endpoint: str, prefix: str, pool_id: str, host: str, barrier, results) -> None:
    try:
        kv = CountingKV(EtcdKV([endpoint], timeout=10))
        ipam = Ipam(Store(kv, prefix), host)
        kv.get(prefix + "/warm-up")
        barrier.wait(timeout=60)
        got, why = [], ""
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            try:
                got.append(ipam.request_address(pool_id, "", False).split("/")[0])
            except PoolExhausted as exc:
                why = exc.message
                break
        results.put(("done", host, {"got": got, "why": why, "txns": kv.txns, "refused": kv.refused,
                                    "ranges": kv.ranges}))
        kv.close()
    except BaseException:   # noqa: BLE001 - everything goes to the parent
        results.put(("error", host, traceback.format_exc()))
        with contextlib.suppress(Exception):
            barrier.abort()


def test_four_allocators_empty_a_95_percent_full_pool_without_duplicates(etcd_endpoint, store, prefix):
    subnet_s = random_subnet(21)
    net = networks.create(store, "nptest-fill-" + secrets.token_hex(3), subnet_s, 3000 + secrets.randbelow(900))
    subnet = netaddr.IPNetwork(net.subnet)
    usable = [o for o in range(1, subnet.size - 1) if str(subnet[o]) != net.gateway]
    held = set(random.Random(subnet.first).sample(usable, round(FILL * (subnet.size - 2)) - 1))
    value = Allocation("", "endpoint", "nptest-filler", network=net.id).to_json()
    offsets = sorted(held)
    for i in range(0, len(offsets), 100):
        assert store.kv.txn([], [Put(store.k_alloc(net.subnet, o), value) for o in offsets[i:i + 100]])
    free = {str(subnet[o]) for o in usable if o not in held}
    assert 90 <= len(free) <= 110, len(free)

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS + 1), ctx.Queue()
    hosts = [f"nptest-fill-{i}-{secrets.token_hex(3)}" for i in range(WORKERS)]
    procs = [ctx.Process(target=_until_exhausted, args=(etcd_endpoint, prefix, net.subnet, h, barrier, results))
             for h in hosts]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=60)
        t0 = time.monotonic()
        done: dict[str, dict] = {}
        while len(done) < WORKERS:
            msg, host, payload = results.get(timeout=150)
            assert msg == "done", f"worker {host} failed:\n{payload}"
            done[host] = payload
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()

    every = [ip for d in done.values() for ip in d["got"]]
    assert len(every) == len(set(every)), "an address was handed out twice"
    assert set(every) == free, (f"{len(free - set(every))} free addresses never handed out, "
                                f"{len(set(every) - free)} handed out that were held")
    for host, d in done.items():
        assert "has no free address" in d["why"], f"{host} stopped without exhaustion: {d['why']!r}"
    stored = {a.ip: a.host for _, a in store.list_allocations(net.subnet) if a.host in done}
    assert stored == {ip: host for host, d in done.items() for ip in d["got"]}
    txns = sum(d["txns"] for d in done.values())
    print(f"\n[ipam fill] {WORKERS} processes emptied {len(free)} free addresses of a {FILL:.0%} full "
          f"{net.subnet} in {elapsed:.2f} s: {txns} transactions ({sum(d['refused'] for d in done.values())} "
          f"refused), {sum(d['ranges'] for d in done.values())} range reads, per worker "
          + ", ".join(str(len(d["got"])) for d in done.values()))
