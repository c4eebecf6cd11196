"""netctl/drctl events over the in-memory etcd: changes as they happen with
create/update/delete told apart, --since a revision replays history, filters,
drctl's job states, and --since a duration found from the hosts' own stamps."""

from __future__ import annotations

import argparse
import json
import threading

import pytest

from netplugin import networks
from netplugin.backup.store import BackupStore
from netplugin.cli import events
from netplugin.cli.parsing import OutputFlags
from netplugin.errors import InvalidRequest
from netplugin.model import Host, Network
from netplugin.store import Store

from .backup_records import put_job


class Ctx(OutputFlags):
    def __init__(self, **flags):
        self.args = argparse.Namespace(**flags)


def collect(store, start: int, n: int, ctx=None, filters=(), keys=("type", "action", "id", "name", "host"),
            shape=lambda r: r) -> list[str]:
    """The first n event lines from revision start (the stream stops there)."""
    stop, out = threading.Event(), []

    def emit(text: str) -> None:
        out.append(text)
        if len(out) >= n:
            stop.set()
    events.stream(store.follow_changes(start, stop), ctx or Ctx(json=True), keys, list(filters), emit, shape)
    return out


def make(store: Store, name: str, subnet: str, vlan: int) -> Network:
    n, reserved = networks.plan(name, subnet, vlan, None, [], {})
    store.create_network(n, reserved)
    return n


def test_history_from_a_revision_tells_create_update_delete(kv):
    store = Store(kv)
    start = store.head_revision() + 1
    prod = make(store, "prod", "10.1.0.0/24", 100)
    store.update_network(prod.id, lambda n: setattr(n, "profile", ""))
    store.set_arp_mode("flood")
    store.delete_network(prod)
    got = [json.loads(x) for x in collect(store, start, 4)]
    assert [(e["type"], e["action"]) for e in got] == [("network", "create"), ("network", "update"),
                                                       ("setting", "create"), ("network", "delete")]
    assert got[0]["attributes"] == {"name": "prod", "subnet": "10.1.0.0/24", "vlan": 100}
    assert got[0]["id"] == prod.id and got[0]["revision"] < got[1]["revision"]


def test_live_changes_arrive_while_streaming_and_filters_apply(kv):
    store = Store(kv)
    make(store, "old", "10.9.0.0/24", 90)     # before the stream: not shown

    def later():
        make(store, "db", "10.2.0.0/24", 200)
        store.set_arp_mode("proxy")
        make(store, "web", "10.3.0.0/24", 300)
    threading.Timer(0.3, later).start()
    lines = collect(store, 0, 2, ctx=Ctx(), filters=[("type", "network")])
    assert [x.split()[2:4] for x in lines] == [["network", "create"], ["network", "create"]]
    assert "name=db" in lines[0] and "name=web" in lines[1] and lines[0].startswith("rev ")


def test_a_bad_record_is_skipped_and_the_stream_goes_on(kv):
    store = Store(kv)
    start = store.head_revision() + 1
    kv.load([(f"{store.prefix}/networks/" + "ab" * 32, b"{not json")])
    make(store, "good", "10.4.0.0/24", 400)
    got = [json.loads(x) for x in collect(store, start, 1)]
    assert got[0]["attributes"]["name"] == "good"
    assert any(k.endswith("ab" * 32) for k in store.bad.current())     # counted among the bad records


def test_unknown_filter_key_lists_the_valid_ones(kv):
    with pytest.raises(InvalidRequest) as exc:
        collect(Store(kv), 0, 1, filters=[("colour", "red")])
    assert "the keys are action, host, id, name, type" in exc.value.message


def test_job_events_say_the_state_moved_to(kv):
    bstore = BackupStore(kv, "/netplugin/v1")
    start = Store(kv).head_revision() + 1
    job = put_job(bstore, "succeeded", target="t1")
    got = [json.loads(x) for x in collect(bstore, start, 5, shape=events.JobStates())]
    assert [e["action"] for e in got] == ["create", "starting", "running", "verifying", "succeeded"]
    assert all(e["id"] == job.id and e["attributes"]["target"] == "t1" for e in got)


def test_since_a_duration_is_measured_by_each_hosts_own_stamps(kv):
    store = Store(kv)
    lease = kv.grant_lease(60)
    host = Host(host="h1", started=5000.0, last_seen=5000.0)     # this host's clock: far from ours
    store.register_host(host, lease)
    marks = {}
    for t in range(5000, 5601, 60):                             # a beat a minute for 10 minutes
        host.last_seen = float(t)
        store.stamp_host(host)
        if t == 5300:
            marks["five_min_ago"] = store.head_revision()
        store.set_arp_mode("proxy" if t % 120 else "flood")
    rev, how = store.revision_ago(300, threading.Event())
    assert rev == marks["five_min_ago"] + 1 and "1 live host" in how
    rev_all, _ = store.revision_ago(10_000, threading.Event())
    assert rev_all == 1


def test_since_a_duration_without_a_live_host_asks_for_a_revision(kv):
    with pytest.raises(InvalidRequest) as exc:
        Store(kv).revision_ago(60, threading.Event())
    assert "give --since as a revision" in exc.value.message


def test_since_arg():
    assert events.since_arg("1234") == ("revision", 1234)
    assert events.since_arg("10m") == ("ago", 600.0)
    with pytest.raises(argparse.ArgumentTypeError):
        events.since_arg("yesterday")
