"""A restore drill end to end: real dockerd, real MariaDB, the real agent as a
process, etcd. A backup of a small schema; a drill whose due time is made the
current minute through the store (so the test does not wait for the clock);
the agent starts a scratch server from the local image, restores and verifies,
records RTO and RPO and removes the server. Then the backup file is corrupted
on disk: the next drill fails and ``drctl check`` exits 1. Last, the agent is
killed (SIGKILL) as soon as a drill's scratch server exists: the restarted
agent ends or finishes that drill and removes the server."""

from __future__ import annotations

import json
import time

import pytest

from netplugin.backup.store import BackupStore
from netplugin.kv import EtcdKV
from tests.e2e.test_backup import DR, SERVER_IMAGE, SMALL_SQL, TOOLS_IMAGE

from .conftest import ETCD, docker, new_network

pytestmark = pytest.mark.e2e

SCRATCH = "label=drctl.job"          # a scratch server's label (a drill's job container has drctl.drill only)


@pytest.fixture
def dr(clean, tmp_path):
    docker("image", "inspect", SERVER_IMAGE)
    docker("image", "inspect", TOOLS_IMAGE)
    d = DR(clean, tmp_path)
    d.env["DRCTL_SCHEDULE_POLL"] = "0.5"          # the agent's env (the same dict)
    d.start_agent()
    yield d
    ids = docker("ps", "-aq", "--filter", "label=drctl.drill").stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    d.close()


def due_now(kv: EtcdKV, store: BackupStore, name: str) -> None:
    """Make the schedule's last due time the minute before this one: the next pass runs this minute's."""
    store.update_schedule(name, lambda s: setattr(s, "last_due", (time.time() // 60 - 1) * 60))


def wait_result(d: DR, name: str, after: float, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = json.loads(d.drctl("drill", "ls", "--json").stdout)
        r = next(r for r in rows if r["name"] == name)["result"]
        if r and r["finished"] > after:
            return r
        time.sleep(0.5)
    raise AssertionError(f"drill {name} recorded nothing within {timeout} s; agent log:\n{d.agent.tail()}")


def test_a_drill_restores_and_verifies_then_a_corrupted_backup_fails_check(dr):
    new_network("drillnet", "10.141.0.0/24", 181)
    dr.start_db("drill-src", "drillnet", "10.141.0.10", SMALL_SQL)
    volume = dr.volume()
    out = json.loads(dr.drctl(*dr.backup_args("small", "drillnet", "10.141.0.10", "small", volume, "--wait",
                                              "--json")).stdout)
    assert out["state"] == "succeeded", out["message"]
    backup = out["result"]["backup"]

    dr.drctl("drill", "create", "d1", "--cron", "* * * * *", "--latest", "small", "--network", "drillnet",
             "--host", dr.plugin.host_id)
    kv = EtcdKV([ETCD])
    try:
        store = BackupStore(kv, dr.plugin.prefix)
        started = time.time()
        due_now(kv, store, "d1")
        r = wait_result(dr, "d1", started - 1)
        assert r["ok"], r["message"]
        assert r["backup"] == backup and r["rto"] > 0 and 0 <= r["rpo"] < 600
        assert docker("ps", "-aq", "--filter", "name=drctl-drill-").stdout.split() == []   # server removed
        assert dr.drctl("check", "small").returncode == 0

        # corrupt the dump on disk: the next drill fails, and check says so
        path = dr.volume_path(volume) / "small" / f"{backup}.sql.zst"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        started = time.time()
        due_now(kv, store, "d1")
        r = wait_result(dr, "d1", started - 1)
        assert not r["ok"] and r["rto"] is None
        check = dr.drctl("check", "small", "--json", check=False)
        assert check.returncode == 1
        assert any("last drill d1 failed" in p for p in json.loads(check.stdout)[0]["problems"])

        # the agent killed mid-drill: its scratch server is left, and goes when the agent is back
        due_now(kv, store, "d1")
        deadline = time.monotonic() + 60
        while not (left := docker("ps", "-aq", "--filter", SCRATCH).stdout.split()):
            assert time.monotonic() < deadline, f"no scratch server within 60 s:\n{dr.agent.tail()}"
            time.sleep(0.1)
        dr.agent.kill9()
        store.update_schedule("d1", lambda s: setattr(s, "paused", True))     # no other drill meanwhile
        job_id = docker("inspect", "-f", '{{index .Config.Labels "drctl.job"}}', left[0]).stdout.strip()
        assert docker("ps", "-aq", "--filter", SCRATCH).stdout.split() == left
        dr.agent.start()
        deadline = time.monotonic() + 60
        while docker("ps", "-aq", "--filter", SCRATCH).stdout.split():
            assert time.monotonic() < deadline, f"scratch server {left} not removed:\n{dr.agent.tail()}"
            time.sleep(0.5)
        assert dr.wait_job(job_id, 60)["state"] in ("failed", "succeeded")
    finally:
        kv.close()
