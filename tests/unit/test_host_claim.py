"""A host id is claimed, not assumed (netplugin/identity.py, hosts.py
HostHeartbeat, Store.claim_host, daemon.ClaimGate), over MemoryKV: a live
claim is refused with a message naming its holder, an expired claim is
taken, a claim of this machine's earlier instance that no longer runs is
taken back at once, a lost claim held by someone else stops the daemon."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from netplugin.config import Config
from netplugin.daemon import ClaimGate
from netplugin.hosts import HostHeartbeat
from netplugin.identity import Instance, Registration, may_take, process_start, this_instance
from netplugin.kv import Put
from netplugin.store import Store


@pytest.fixture
def store(kv) -> Store:
    return Store(kv)


@pytest.fixture
def cfg() -> Config:
    return Config(host_id="h1", bridge="nptest0", datapath_type="netdev", socket="/run/np-test.sock")


def other_machine() -> Instance:
    return dataclasses.replace(this_instance(), boot_id="0f0f0f0f-1111-2222-3333-444444444444", pid=4321,
                               node="clone-of-h1")


def dead_process() -> tuple[int, int]:
    """The pid and start time of a process of this machine that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start(child.pid)
        assert start is not None
    finally:
        child.kill()
        child.wait()
    return child.pid, start


def claim_key(kv, store, host="h1") -> dict:
    return json.loads(kv.get(store.k_host(host)).value)


# -- the rule ---------------------------------------------------------------------------------

def test_may_take_free_own_and_dead_but_never_a_live_or_foreign_claim():
    me = this_instance()
    assert may_take(None, me) and may_take(me, me)
    running_here = dataclasses.replace(this_instance(), token="a" * 32)     # this very process: it runs
    assert not may_take(running_here, me)
    pid, start = dead_process()
    ended = dataclasses.replace(running_here, pid=pid, proc_start=start)
    assert may_take(ended, me)
    assert not may_take(dataclasses.replace(ended, boot_id="00-other-boot"), me)    # another machine
    assert not may_take(dataclasses.replace(ended, pid_ns=me.pid_ns + 1), me)       # another pid namespace
    reused = dataclasses.replace(running_here, proc_start=running_here.proc_start + 1)  # pid reused
    assert may_take(reused, me)


def test_instance_from_etcd_is_checked():
    good = this_instance().to_dict()
    assert Instance.from_dict(good).token == good["token"]
    for bad in ({**good, "pid": "12; rm"}, {**good, "token": "x"}, {**good, "node": "a\nb"},
                {k: v for k, v in good.items() if k != "boot_id"}, "text", {**good, "started": True}):
        with pytest.raises(ValueError):
            Instance.from_dict(bad)


# -- the daemon's claim -----------------------------------------------------------------------

def test_first_claim_publishes_the_instance_and_the_settings(kv, store, cfg):
    hb = HostHeartbeat(cfg, store, wait_previous=0)
    assert hb.beat() and hb.claimed.is_set() and not hb.refused.is_set()
    rec = claim_key(kv, store)
    assert rec["instance"]["pid"] == os.getpid() and rec["instance"]["token"] == hb.instance.token
    assert (rec["bridge"], rec["datapath_type"], rec["etcd_prefix"], rec["socket"], rec["mtu"]) == \
        ("nptest0", "netdev", "/netplugin/v1", "/run/np-test.sock", 1500)
    reg, alive = store.host_registration("h1")
    assert alive and reg is not None and reg.instance == hb.instance


def test_a_live_claim_of_another_machine_is_refused_naming_it(kv, store, cfg):
    first = HostHeartbeat(cfg, store, instance=other_machine(), wait_previous=0)
    assert first.beat() and first.claimed.is_set()
    before = kv.get(store.k_host("h1"))
    second = HostHeartbeat(cfg, store, wait_previous=0)
    assert second.beat() is False
    assert second.refused.is_set() and not second.claimed.is_set()
    assert "pid 4321 on clone-of-h1" in second.reason and "0f0f0f0f-1111" in second.reason
    assert "--host-id" in second.reason and "host_id" in second.reason
    assert kv.get(store.k_host("h1")) == before                          # untouched
    assert second.lease is None and len(kv.leases()) == 1                # its lease given back


def test_a_live_claim_of_this_machine_is_refused(kv, store, cfg):
    first = HostHeartbeat(cfg, store, wait_previous=0)
    first.beat()
    second = HostHeartbeat(cfg, store, wait_previous=0)     # same boot id, and pid that runs: this process
    assert second.beat() is False and second.refused.is_set()
    assert f"pid {os.getpid()}" in second.reason
    assert claim_key(kv, store)["instance"]["token"] == first.instance.token


def test_an_expired_claim_is_taken(kv, store, cfg):
    first = HostHeartbeat(cfg, store, instance=other_machine(), wait_previous=0)
    first.beat()
    kv.revoke_lease(first.lease)                         # its lease ran out in etcd
    second = HostHeartbeat(cfg, store, wait_previous=0)
    assert second.beat() and second.claimed.is_set()
    assert claim_key(kv, store)["instance"]["token"] == second.instance.token


def test_own_restart_within_the_lease_takes_the_id_back(kv, store, cfg):
    """kill -9 and a restart within the TTL: same boot id, the old pid has ended."""
    pid, start = dead_process()
    killed = dataclasses.replace(this_instance(), pid=pid, proc_start=start)
    first = HostHeartbeat(cfg, store, instance=killed, wait_previous=0)
    first.beat()
    old_lease = first.lease
    second = HostHeartbeat(cfg, store, wait_previous=0)
    assert second.beat() and second.claimed.is_set()
    assert old_lease in kv.leases()                      # taken while the old lease still lived
    assert kv._key_lease[store.k_host("h1")] == second.lease
    assert claim_key(kv, store)["instance"]["token"] == second.instance.token


def test_a_record_that_is_not_a_claim_is_never_taken(kv, store, cfg):
    kv.txn([], [Put(store.k_host("h1"), '{"host": "h1", "bridge": "x"}')])     # an older version's record
    hb = HostHeartbeat(cfg, store, wait_previous=0)
    assert hb.beat() is False and "not a valid claim" in hb.reason


def test_a_refused_start_waits_for_the_holders_lease_to_lapse(kv, store, cfg):
    first = HostHeartbeat(cfg, store, instance=other_machine(), wait_previous=0)
    first.beat()
    second = HostHeartbeat(cfg, store, wait_previous=60)
    assert second.beat() is True and not second.refused.is_set() and not second.claimed.is_set()
    kv.revoke_lease(first.lease)
    assert second.beat() and second.claimed.is_set()


def test_losing_the_id_to_another_instance_stops_acting(kv, store, cfg):
    hb = HostHeartbeat(cfg, store, wait_previous=0)
    hb.beat()
    kv.revoke_lease(hb.lease)                               # our lease ran out while etcd was away ...
    thief = HostHeartbeat(cfg, store, instance=other_machine(), wait_previous=0)
    assert thief.beat() and thief.claimed.is_set()          # ... and another instance took the id
    hb.keeper.lease = None                                  # the next beat claims under a new lease
    assert hb.beat() is False
    assert hb.refused.is_set() and not hb.claimed.is_set() and "clone-of-h1" in hb.reason
    assert claim_key(kv, store)["instance"]["token"] == thief.instance.token


def test_a_stamp_needs_the_claim_to_be_ours(kv, store, cfg):
    hb = HostHeartbeat(cfg, store, wait_previous=0)
    hb.beat()
    assert hb._stamp()
    other = Registration(host="h1", instance=other_machine(), settings={}, version="x", last_seen=1.0)
    kv.txn([], [Put(store.k_host("h1"), other.to_json(), lease=hb.lease)])
    assert not hb._stamp()


# -- the gate in front of the app -------------------------------------------------------------

def call(gate, path: str) -> tuple[str, bytes]:
    seen = {}
    body = b"".join(gate({"PATH_INFO": path}, lambda status, headers: seen.setdefault("status", status)))
    return seen["status"], body


def test_the_gate_answers_only_activation_until_the_id_is_claimed(kv, store, cfg):
    hb = HostHeartbeat(cfg, store, wait_previous=0)
    app_calls = []

    def app(environ, start_response):
        app_calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"{}"]
    gate = ClaimGate(app, hb)
    assert call(gate, "/Plugin.Activate")[0].startswith("200")
    status, body = call(gate, "/IpamDriver.RequestAddress")
    assert status.startswith("503") and "has not claimed host id h1" in json.loads(body)["Err"]
    kv.down = True
    with pytest.raises(Exception, match="store unavailable"):
        hb.beat()
    status, body = call(gate, "/NetworkDriver.CreateEndpoint")
    assert status.startswith("503") and json.loads(body)["Err"].startswith("store unavailable")
    assert app_calls == ["/Plugin.Activate"]
    kv.down = False
    hb.keeper.lease = None
    hb.beat()
    assert call(gate, "/IpamDriver.RequestAddress")[0].startswith("200")


def test_health_waits_for_the_libraries_and_activation_does_not(kv, store, cfg):
    """Until preload.py is done, /health (which reaches OVS) is 503 'starting'
    while Docker's activation calls are answered; then /health goes through."""
    import threading
    hb = HostHeartbeat(cfg, store, wait_previous=0)
    loaded = threading.Event()
    app_calls = []

    def app(environ, start_response):
        app_calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"{}"]
    gate = ClaimGate(app, hb, loaded, wait=0.05)
    assert call(gate, "/Plugin.Activate")[0].startswith("200")
    assert call(gate, "/IpamDriver.GetDefaultAddressSpaces")[0].startswith("200")
    status, body = call(gate, "/health")
    assert status.startswith("503") and "loading its libraries" in json.loads(body)["Err"]
    loaded.set()
    assert call(gate, "/health")[0].startswith("200")
    assert app_calls == ["/Plugin.Activate", "/IpamDriver.GetDefaultAddressSpaces", "/health"]
