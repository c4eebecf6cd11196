"""``drctl binlog start|ls|stop`` and ``drctl restore --at`` over the in-memory
etcd: what is queued, what is refused before anything is written."""

from __future__ import annotations

import json
import os
import time

import pytest

from netplugin.backup.model import BINLOG, CANCELLED
from netplugin.backup.store import BackupStore

from .netctl_runner import drctl_runner
from .test_backup_pitr import T0, backup, bfile

NET = ("--network", "prod", "--db-host", "10.0.0.5", "--host", "h9")


@pytest.fixture
def drctl(monkeypatch, capsys, kv, tmp_path):
    run = drctl_runner(monkeypatch, capsys, kv)
    monkeypatch.setenv("DRCTL_OPTION_DIR", str(tmp_path))
    cnf = tmp_path / "client.cnf"
    with open(os.open(cnf, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
        fh.write("[client]\nuser=root\n")
    run.cnf = str(cnf)  # type: ignore[attr-defined]  # the option file the tests hand to drctl
    return run


@pytest.fixture
def store(kv):
    return BackupStore(kv, "/netplugin/v1")


def test_start_queues_one_collector_per_target_and_stop_cancels_it(drctl, store):
    r = drctl("binlog", "start", "shop", "--volume", "vol", *NET, "--option-file", drctl.cnf)
    assert r.code == 0, r.err
    job = store.get(r.out.strip())[0]
    assert job.kind == BINLOG and job.target == "shop" and job.host == "h9"
    assert job.server == "binlog+prod@10.0.0.5:3306"          # not the server's backup lock
    assert job.spec["timeout"] >= 10 * 365 * 86400 and job.spec["database"] == "" and job.spec["volume"] == "vol"
    again = drctl("binlog", "start", "shop", "--volume", "vol", *NET, "--option-file", drctl.cnf)
    assert again.code == 1 and job.id in again.err and "binlog stop shop" in again.err
    assert len(store.list_jobs()) == 1
    stop = drctl("binlog", "stop", "shop")
    assert stop.code == 0 and stop.out.strip() == job.id
    assert store.get(job.id)[0].state == CANCELLED
    assert drctl("binlog", "stop", "shop").code == 1
    assert drctl("binlog", "start", "shop", "--volume", "vol", *NET, "--option-file", drctl.cnf).code == 0


@pytest.mark.parametrize("extra, why", [
    (("--wait",), "does not end by itself"),
    (("--place", "site=dr"), "--place"),
])
def test_start_refusals(drctl, store, extra, why):
    args = [a for a in NET if a not in ("--host", "h9")] if "--place" in extra else list(NET)
    r = drctl("binlog", "start", "shop", "--volume", "vol", *args, "--option-file", drctl.cnf, *extra)
    assert r.code == 1 and why in r.err, r.err
    assert store.list_jobs() == []


def test_ls_lists_archived_files_in_utc(drctl, store):
    store.add_binlog(bfile(2, T0 + 10, T0 + 50))
    store.add_binlog(bfile(1, T0 - 100, T0 + 10))
    r = drctl("binlog", "ls")
    lines = r.out.splitlines()
    assert r.code == 0 and "FIRST EVENT (UTC)" in lines[0]
    assert "mariadb-bin.000001" in lines[1] and "mariadb-bin.000002" in lines[2]
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + 50)) in lines[2]
    rows = json.loads(drctl("binlog", "ls", "shop", "--json").out)
    assert [x["file"] for x in rows] == ["mariadb-bin.000001", "mariadb-bin.000002"] and rows[1]["end_pos"] == 5000


def test_restore_at_is_refused_before_anything_is_queued(drctl, store):
    store.add_backup(backup("shop-20261204-000000-abcdef", "mariadb-bin.000001", 900, T0 + 5))
    store.add_binlog(bfile(1, T0 - 100, T0 + 10))
    store.add_binlog(bfile(3, T0 + 50, T0 + 90))
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60))
    r = drctl("restore", "--latest", "shop", "--at", at, *NET, "--option-file", drctl.cnf)
    assert r.code == 1 and "gap" in r.err and "mariadb-bin.000002 from position 4 is missing" in r.err, r.err
    r = drctl("restore", "--latest", "shop", "--at", at[:-1], *NET, "--option-file", drctl.cnf)
    assert r.code == 1 and "no time zone" in r.err
    assert store.list_jobs() == []
    store.add_binlog(bfile(2, T0 + 10, T0 + 50))
    r = drctl("restore", "--latest", "shop", "--at", at, *NET, "--option-file", drctl.cnf, "--database", "shop_at")
    assert r.code == 0, r.err
    job = store.get(r.out.strip())[0]
    assert job.spec["replay"] == {"files": ["mariadb-bin.000001", "mariadb-bin.000002", "mariadb-bin.000003"],
                                  "start_pos": 900, "stop_at": T0 + 60, "source_target": "shop"}
    assert job.spec["backup"] == "shop-20261204-000000-abcdef" and job.spec["database"] == "shop_at"
