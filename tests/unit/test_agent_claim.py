"""drctl agents claim their host id as the daemon does (scheduler.Agent.start,
BackupStore.claim_agent, identity.py), over MemoryKV: a live agent of
another machine is refused by name, an earlier agent of this machine whose
process is gone is taken over at once, and an agent that finds its host
taken by another when it renews stops admitting."""

from __future__ import annotations

import dataclasses
import json

import pytest

from netplugin.backup.config import BackupConfig
from netplugin.backup.scheduler import Agent
from netplugin.backup.store import BackupStore
from netplugin.errors import Conflict
from netplugin.identity import this_instance

from .fakes import MemoryKV
from .test_host_claim import dead_process, other_machine


@pytest.fixture
def bstore() -> BackupStore:
    return BackupStore(MemoryKV(), "/netplugin/t")


def agent(bstore: BackupStore, instance=None) -> Agent:
    return Agent(bstore, "h1", BackupConfig(poll=0.01, lease_ttl=5), lambda: None, instance=instance)


def holder(bstore: BackupStore) -> dict:
    return json.loads(bstore.kv.get(bstore.k_agent("h1")).value)["instance"]


def test_a_live_agent_of_another_machine_is_refused_by_name(bstore):
    first = agent(bstore, other_machine())
    first.start(wait_previous=0)
    with pytest.raises(Conflict, match="another drctl agent for host id 'h1' is already running") as err:
        agent(bstore).start(wait_previous=0)
    assert "pid 4321 on clone-of-h1" in err.value.message and "--host-id" in err.value.message
    assert holder(bstore)["token"] == first.instance.token


def test_an_agent_of_this_machine_whose_process_is_gone_is_taken_over_at_once(bstore):
    pid, start = dead_process()
    first = agent(bstore, dataclasses.replace(this_instance(), pid=pid, proc_start=start))
    first.start(wait_previous=0)
    second = agent(bstore)
    second.start(wait_previous=0)                      # its predecessor's lease still lives
    assert first.lease in bstore.kv.leases() and holder(bstore)["token"] == second.instance.token


def test_an_expired_agent_key_is_taken(bstore):
    first = agent(bstore, other_machine())
    first.start(wait_previous=0)
    bstore.kv.revoke_lease(first.lease)
    second = agent(bstore)
    second.start(wait_previous=0)
    assert holder(bstore)["token"] == second.instance.token


def test_an_agent_whose_host_was_taken_while_its_lease_lapsed_stops(bstore):
    mine = agent(bstore)
    mine.start(wait_previous=0)
    bstore.kv.revoke_lease(mine.lease)                   # its lease ran out while etcd was away ...
    thief = agent(bstore, other_machine())
    thief.start(wait_previous=0)                         # ... and another machine's agent took the host
    assert not mine.host_lost.is_set()
    mine._renew()
    assert mine.stopping.is_set() and mine.host_lost.is_set()   # drctl agent then exits 1
    assert holder(bstore)["token"] == thief.instance.token
