"""drctl schedule create/ls/inspect/pause/resume/rm and drctl hosts, through
drctl's main() over the in-memory etcd: what is written, what is refused with
words that say what to do, and what the listing shows after a firing pass."""

from __future__ import annotations

import json
import time

import pytest

from netplugin.backup.config import BackupConfig
from netplugin.backup.fleet import fleet_passes
from netplugin.backup.store import BackupStore

from .netctl_runner import drctl_runner

BASE = ["-n", "prod", "--db-host", "10.10.0.10", "--option-file", "/etc/drctl/shop.cnf", "-d", "shop",
        "-v", "backups"]


@pytest.fixture
def drctl(monkeypatch, capsys, kv):
    return drctl_runner(monkeypatch, capsys, kv)


def test_create_ls_inspect_pause_resume_rm(drctl, kv):
    r = drctl("schedule", "create", "nightly", "--cron", "0 2 * * *", "--tz", "Europe/Berlin", "--host", "h2",
              "--keep-daily", "7", "--keep-monthly", "12", *BASE)
    assert r.code == 0 and r.out == "nightly\n", r.err
    assert "no drctl agent is running for host h2" in r.err
    store = BackupStore(kv, "/netplugin/v1")
    s, _ = store.get_schedule("nightly")
    assert (s.cron, s.tz, s.host, s.spec["keep_daily"], s.spec["keep_monthly"]) == ("0 2 * * *", "Europe/Berlin",
                                                                                   "h2", 7, 12)
    # an agent's pass arms it, the next one past 02:00 Berlin fires it
    passes = fleet_passes(store, BackupConfig())
    cache = passes[0].__self__.cache                # the pass follows the records by a watch
    passes[0](1_767_225_600.0)                     # 2026-01-01T00:00Z = 01:00 Berlin
    deadline = time.monotonic() + 5
    while cache.get(store.k_schedule("nightly"))[0].last_due is None:
        assert time.monotonic() < deadline, "the armed schedule did not reach the pass's cache"
        time.sleep(0.01)
    passes[0](1_767_229_205.0)                     # 02:00:05 Berlin
    passes[0].__self__.close()
    rows = json.loads(drctl("schedule", "ls", "--json").out)
    assert len(rows) == 1 and rows[0]["runs"] == 1 and rows[0]["last_result"] == "queued"
    assert rows[0]["last_run"] == 1_767_229_200.0 and rows[0]["next_run"] > rows[0]["last_run"]
    assert drctl("schedule", "ls", "-q").out == "nightly\n"
    table = drctl("schedule", "inspect", "nightly").out
    assert "0 2 * * * (Europe/Berlin)" in table and "Runs" in table
    assert drctl("schedule", "pause", "nightly").code == 0
    assert json.loads(drctl("schedule", "ls", "--json").out)[0]["paused"] is True
    assert drctl("schedule", "resume", "nightly").code == 0
    s, _ = store.get_schedule("nightly")
    assert not s.paused and s.last_due is None     # re-armed: times passed while paused are not run
    assert drctl("schedule", "rm", "nightly").code == 0
    assert drctl("schedule", "ls", "-q").out == "" and store.fired("nightly") == {}


@pytest.mark.parametrize("extra, words", [
    (["--cron", "0 2 * *"], "five fields"),
    (["--cron", "0 2 * * *", "--tz", "Nowhere/City"], "not known"),
    (["--cron", "0 2 * * *", "--host", "h2", "--place", "site=dr"], "not both"),
    (["--cron", "0 2 * * *", "--place", "site"], "KEY=VALUE"),
    (["--cron", "0 2 * * *", "--host", "h2", "--wait"], "--wait follows one job"),
])
def test_bad_creates_say_what_is_wrong_and_write_nothing(drctl, kv, extra, words):
    r = drctl("schedule", "create", "s1", *extra, *BASE)
    assert r.code == 1 and words in r.err, r.err
    assert BackupStore(kv, "/netplugin/v1").schedule_items() == []


def test_a_second_create_of_one_name_is_refused(drctl):
    assert drctl("schedule", "create", "s1", "--cron", "* * * * *", "--host", "h2", *BASE).code == 0
    r = drctl("schedule", "create", "s1", "--cron", "* * * * *", "--host", "h2", *BASE)
    assert r.code == 1 and "exists already" in r.err


def test_placed_schedule_and_hosts(drctl, kv):
    store = BackupStore(kv, "/netplugin/v1")
    store.register_agent("dr1", {"max_jobs": 5, "labels": {"site": "dr"}}, kv.grant_lease(30))
    store.register_agent("odd", {"max_jobs": "many"}, kv.grant_lease(30))
    assert drctl("schedule", "create", "p", "--cron", "* * * * *", "--place", "site=dr", *BASE).code == 0
    assert store.get_schedule("p")[0].place == {"site": "dr"}
    r = drctl("hosts", "--json")
    assert [h["host"] for h in json.loads(r.out)] == ["dr1"] and "odd" in r.err
