"""Events and the watch-fed progress of drctl --wait against a real etcd:
``netctl events`` (its own process) replays from a revision and then shows a
change within a second of its write; ``drctl events`` says the states a job
moves to; ``drctl --wait``'s follower sees every progress sample the agent
writes, reading the record once; ``--since 2s`` is found from a host's own
heartbeat stamps in etcd's history."""

from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import threading
import time

from netplugin import networks
from netplugin.backup import cli as drctl_cli
from netplugin.backup.model import RUNNING, SUCCEEDED, VERIFYING
from netplugin.backup.store import BackupStore
from netplugin.cli import events
from netplugin.kv import Put
from netplugin.model import Host
from tests.harness.daemon import settings_env
from tests.unit.backup_records import put_job


def make(store, name: str, subnet: str, vlan: int):
    net, reserved = networks.plan(name, subnet, vlan, None, [], {})
    store.create_network(net, reserved)
    return net


class Lines:
    """A process's stdout lines, read by a thread, taken with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.q.put(x) for x in proc.stdout], daemon=True).start()

    def take(self, timeout: float) -> dict:
        return json.loads(self.q.get(timeout=timeout))


def test_netctl_events_replays_then_streams_live(etcd_endpoint, store, prefix):
    start = store.head_revision() + 1
    prod = make(store, "prod", "10.61.0.0/24", 610)
    store.set_arp_mode("flood")
    proc = subprocess.Popen([sys.executable, "-m", "netplugin.cli.main", "--etcd-endpoints", etcd_endpoint,
                             "events", "--json", "--since", str(start), "--filter", "type=network",
                             "--filter", "type=setting"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=settings_env(etcd_prefix=prefix))
    try:
        lines = Lines(proc)
        first = lines.take(30)                 # the process starts: the replay comes first
        assert (first["type"], first["action"], first["id"]) == ("network", "create", prod.id)
        assert first["attributes"] == {"name": "prod", "subnet": "10.61.0.0/24", "vlan": 610}
        assert lines.take(5)["attributes"] == {"value": "flood"}
        written = time.monotonic()
        store.delete_network(prod)
        live = lines.take(5)
        took = time.monotonic() - written
        assert (live["type"], live["action"], live["id"]) == ("network", "delete", prod.id)
        assert took < 1.0, f"the delete took {took:.2f} s to arrive"
        store.kv.txn([], [Put(f"{prefix}/profiles/x", "{}")])    # a profile: filtered out, nothing arrives
        store.set_arp_mode("proxy")
        assert lines.take(5)["attributes"] == {"value": "proxy"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_drctl_events_say_the_states_a_job_moves_to(store, prefix):
    bstore = BackupStore(store.kv, prefix)
    start = store.head_revision() + 1
    job = put_job(bstore, SUCCEEDED, target="ev")
    stop, got = threading.Event(), []
    bound = threading.Timer(20, stop.set)               # a bound, should the watch lose one
    bound.start()

    def emit(text: str) -> None:
        got.append(json.loads(text))
        if len(got) == 5:
            stop.set()
    ctx = drctl_cli.Context(drctl_cli.build_parser().parse_args(["events", "--json"]))
    try:
        events.stream(bstore.follow_changes(start, stop), ctx, ["type", "action", "id"], [("type", "job")], emit,
                      events.JobStates())
    finally:
        bound.cancel()
    assert [e["action"] for e in got] == ["create", "starting", "running", "verifying", "succeeded"]
    assert {e["id"] for e in got} == {job.id}


def test_wait_follows_every_sample_through_the_watch(store, prefix):
    bstore = BackupStore(store.kv, prefix)
    job = put_job(bstore, RUNNING, target="wait")
    samples = [(1000.0 + 5 * i, i << 20) for i in range(1, 11)]

    def agent():
        for t, done in samples:
            bstore.update(job.id, lambda j, t=t, done=done: setattr(j, "progress", {
                "bytes": done, "time": t, "total": 20 << 20, "total_basis": "backup size"}))
        bstore.update(job.id, lambda j: j.move(VERIFYING, "checking", now=2000.0))
        bstore.update(job.id, lambda j: j.move(SUCCEEDED, "done", now=2001.0))
    threading.Timer(0.5, agent).start()
    out = io.StringIO()
    final = drctl_cli.follow(bstore, job.id, out)
    assert final.state == SUCCEEDED
    shown = [x for x in out.getvalue().splitlines() if x.startswith("running  ")]
    assert len(shown) == len(samples)                 # every sample the agent wrote, none skipped
    assert shown[-1].split("  ")[1:] == ["10.0 MiB", "204.8 KiB/s", "50%", "ETA 50s"]


def test_since_a_duration_by_a_hosts_own_stamps(store):
    lease = store.kv.grant_lease(30)
    host = Host(host="ev-h1", started=10_000.0, last_seen=10_000.0)       # a clock far from this one
    store.register_host(host, lease)
    marks = []
    for t in range(10_000, 10_009):
        host.last_seen = float(t)
        store.stamp_host(host)
        marks.append(store.head_revision())
    rev, how = store.revision_ago(2, threading.Event())
    assert rev == marks[6] + 1 and "1 live host" in how                 # the stamp of 10006 = 10008 - 2
    store.kv.revoke_lease(lease)
