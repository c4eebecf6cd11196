"""``netctl network rm`` racing container starts from both rig hosts: the CI
size (5 rounds x 4 starts per host); bench/bench_delete_race.py runs the full
50 x 20 and prints its figures."""

from __future__ import annotations

import random

import pytest

from .delete_race import SUBNET, one_round, store_of

pytestmark = pytest.mark.multihost

ROUNDS = 5
STARTS = 4


def test_network_rm_racing_starts_leaves_no_orphan_and_no_address_twice(clean_rig):
    rig = clean_rig
    rng = random.Random(14)
    outcomes = []
    for n in range(ROUNDS):
        r = one_round(rig, STARTS, rng)
        assert not r.problems, f"round {n}: {r.problems}"
        # Whoever won, the loser was told: a refused delete names what still exists,
        # and starts after a delete fail instead of leaving records behind.
        assert r.deleted or "still has" in r.refused, r
        assert r.started + r.failed_starts == 2 * STARTS, r
        outcomes.append(r.deleted)
    store = store_of(rig)
    assert [ep for ep in store.list_endpoints() if ep.ip.startswith("10.233.0.")] == []
    assert store.list_allocations(SUBNET) == []
    for host in rig.hosts:
        assert host.ports() == []
