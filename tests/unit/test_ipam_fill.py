"""IPAM at 95% fill over MemoryKV: what an allocation costs in etcd calls.
One allocator claims from the free list its last chunk read left, so a
chunk is read only when that list runs dry or a claim loses a race, and
each claim is one transaction (the contention case against a real etcd:
tests/integration/test_ipam_fill.py)."""

from __future__ import annotations

import random

import netaddr

from netplugin.ipam import Ipam

from .test_ipam import ip_of, prefill


def test_at_95_percent_a_chunk_is_read_once_per_list_of_free_addresses(np):
    net = np.create_network(subnet="10.16.0.0/16")
    subnet = netaddr.IPNetwork("10.16.0.0/16")
    usable = list(range(2, subnet.size - 1))                  # .0.1 is the gateway
    taken = set(random.Random(3).sample(usable, round(0.95 * (subnet.size - 2)) - 1))
    prefill(np.kv, np.store, "10.16.0.0/16", taken)
    ipam = Ipam(np.store, "h-fill", rng=random.Random(5))
    ipam.request_address(net.pool_id, "", False)               # the network, cached
    reads, txns = np.kv.read_count, np.kv.txn_count
    got = {ip_of(ipam.request_address(net.pool_id, "", False)) for _ in range(300)}
    assert len(got) == 300 and not {int(ip) - subnet.first for ip in got} & taken
    assert np.kv.txn_count - txns == 300                      # one transaction each, none refused
    # about 13 of a chunk's 256 addresses are free: one chunk read per ~13 allocations
    assert np.kv.read_count - reads <= 300 / 13 * 1.5, np.kv.read_count - reads


def test_a_parsed_pool_and_its_chunks_are_kept(np):
    net = np.create_network(subnet="10.20.0.0/20")
    ipam = Ipam(np.store, "h-plan")
    ipam.request_address(net.pool_id, "", False)
    assert list(ipam._pools) == [net.pool_id]
    (spans, chunks), = ipam._plans.values()
    assert spans == [(1, 4094)] and chunks == list(range(16))
    ipam.request_address(net.pool_id, "", False)
    assert len(ipam._pools) == 1 and len(ipam._plans) == 1
