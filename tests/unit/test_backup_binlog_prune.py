"""Pruning the binlog archive (binlog_prune.py): what the oldest kept backup
needs stays, the newest file always stays, nothing goes without a backup to
start from or during a replay, and a pass stopped midway is swept next time."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from netplugin.backup import binlog_prune, retention
from netplugin.backup.containers import Containers
from netplugin.backup.model import RESTORE, Job
from netplugin.backup.store import BackupStore
from netplugin.kv import Put

from .fakes import MemoryKV
from .netctl_runner import drctl_runner
from .test_backup_pitr import T0, backup, bfile


def name(n: int) -> str:
    return f"mariadb-bin.{n:06d}"


@pytest.fixture
def vol(tmp_path):
    return tmp_path / "vol"


def archive(vol, seqs, host: str = "b", store: BackupStore | None = None) -> BackupStore:
    """A store whose catalog holds files seqs of shop (on host), each one on disk."""
    store = store or BackupStore(MemoryKV(), "/np")
    os.makedirs(vol / "shop" / "binlog", exist_ok=True)
    for n in seqs:
        store.add_binlog(bfile(n, T0 + 10 * n, T0 + 10 * n + 9, host=host))
        (vol / "shop" / "binlog" / name(n)).write_bytes(b"x")
    return store


def on_disk(vol) -> list[str]:
    return sorted(os.listdir(vol / "shop" / "binlog"))


def run(store, vol, dry_run=False, backups=None, host="b"):
    return binlog_prune.prune(store, "shop", lambda v: str(vol) if v == "vol" else None, host, dry_run=dry_run,
                              backups=backups)


def test_keeps_every_file_the_oldest_backup_needs_and_removes_older(vol):
    store = archive(vol, range(1, 7))
    bs = [backup("new", name(5), 300), backup("old", name(3), 900)]
    report = run(store, vol, backups=bs)
    assert report.removed == [name(1), name(2)]
    assert "mariadb-bin.000003:900" in report.reasons[name(1)] and "old" in report.reasons[name(1)]
    assert [r.file for r in store.binlogs("shop")] == [name(n) for n in range(3, 7)]
    assert on_disk(vol) == [name(n) for n in range(3, 7)]
    assert report.kept == 4


def test_the_newest_file_is_never_removed(vol):
    store = archive(vol, [1, 2, 3])
    report = run(store, vol, backups=[backup("far", name(9), 4)])
    assert report.removed == [name(1), name(2)]
    assert [r.file for r in store.binlogs("shop")] == [name(3)] and on_disk(vol) == [name(3)]


@pytest.mark.parametrize("bs", [[], [backup("nolog", None), backup("bad", name(3), pos=2)]])
def test_no_kept_backup_with_a_position_removes_nothing(vol, bs):
    store = archive(vol, [1, 2, 3])
    report = run(store, vol, backups=bs)
    assert report.removed == [] and report.swept == []
    assert "no kept backup has binlog coordinates" in report.reasons[""]
    assert len(store.binlogs("shop")) == 3 and len(on_disk(vol)) == 3


def test_dry_run_removes_nothing(vol):
    store = archive(vol, range(1, 5))
    store.remove_binlog(bfile(1, T0 + 10, T0 + 19))          # and a leftover of a stopped pass
    report = run(store, vol, dry_run=True, backups=[backup("b1", name(3))])
    assert report.removed == [name(2)] and report.swept == [name(1)]
    assert len(store.binlogs("shop")) == 3 and len(on_disk(vol)) == 4


def test_a_bad_binlog_record_is_skipped_and_counted(vol):
    store = archive(vol, [1, 2, 3])
    store.kv.txn([], [Put(store.k_binlog("shop", name(4)), b'{"target": "shop", "file": "../../etc"}')])
    report = run(store, vol, backups=[backup("b1", name(3))])
    assert report.bad == 1 and store.bad_binlogs == 1
    assert report.removed == [name(1), name(2)]


def test_nothing_goes_while_a_restore_replays_the_archive(vol):
    store = archive(vol, [1, 2, 3])
    job = Job(id="20261204-000000-aaaaaa", kind=RESTORE, target="shop2", host="b", state="running",
              spec={"replay": {"files": [name(1)], "start_pos": 4, "stop_at": T0, "source_target": "shop"}})
    store.submit(job)
    report = run(store, vol, backups=[backup("b1", name(3))])
    assert report.removed == [] and job.id in report.reasons[""]
    assert len(store.binlogs("shop")) == 3 and len(on_disk(vol)) == 3


def test_a_replay_of_another_target_does_not_hold_the_archive_and_a_bad_one_does(vol):
    store = archive(vol, [1, 2, 3])
    other = Job(id="20261204-000000-bbbbbb", kind=RESTORE, target="shop2", host="b", state="running",
                spec={"replay": {"files": [name(1)], "start_pos": 4, "stop_at": T0, "source_target": "cart"}})
    store.submit(other)
    assert run(store, vol, backups=[backup("b1", name(3))], dry_run=True).removed == [name(1), name(2)]
    bad = Job(id="20261204-000000-cccccc", kind=RESTORE, target="shop3", host="b", state="running",
              spec={"replay": {"files": ["../x"], "source_target": "cart"}})     # fails pitr.check_replay
    store.submit(bad)
    report = run(store, vol, backups=[backup("b1", name(3))])
    assert report.removed == [] and bad.id in report.reasons[""]


def test_a_pass_stopped_after_a_record_went_is_swept_next_pass(vol):
    """Record first, then file: a kill -9 between them leaves a file without a
    record, removed by the next pass; a file the collector is writing (after
    the newest record) is never touched."""
    store = archive(vol, [1, 2, 3, 4])
    store.remove_binlog(bfile(1, T0 + 10, T0 + 19))          # the pass died here
    (vol / "shop" / "binlog" / name(5)).write_bytes(b"partial")
    report = run(store, vol, backups=[backup("b1", name(2))])
    assert report.removed == [] and report.swept == [name(1)]
    assert on_disk(vol) == [name(n) for n in (2, 3, 4, 5)]


def test_the_record_is_removed_only_while_unchanged(vol):
    store = archive(vol, [1, 2])
    old = bfile(1, T0 + 10, T0 + 19)
    store.add_binlog(bfile(1, T0 + 10, T0 + 19, size=6000, end_pos=6000))   # re-archived meanwhile
    assert store.remove_binlog_if_unchanged(old) is False
    assert [r.size for r in store.binlogs("shop")] == [6000, 5000]
    assert store.remove_binlog_if_unchanged(store.binlogs("shop")[0]) is True


def test_another_hosts_files_are_left_to_it(vol):
    store = archive(vol, [1, 2, 3], host="other")
    report = run(store, vol, backups=[backup("b1", name(3))])
    assert report.removed == [] and len(report.skipped) == 2 and "on host other" in report.skipped[0]
    assert len(on_disk(vol)) == 3


def test_retention_prunes_the_files_its_deleted_backups_needed(vol):
    """Where retention runs (the runner after a backup, and drctl prune), the
    archive follows the backups it keeps, dry or not."""
    store = archive(vol, range(1, 6))
    for i, (file, created) in enumerate([(name(2), 100.0), (name(4), 200.0)]):
        b = backup(f"shop-{i}", file, created=created, size=3, sha256=hashlib.sha256(b"abc").hexdigest())
        store.add_backup(b)
        (vol / b.path).write_bytes(b"abc")
        (vol / b.manifest_path).write_text("{}")
    kw = dict(keep_last=1, max_age=None, now=300.0, volume_path=lambda v: str(vol), host="b")
    dry = retention.prune(store, "shop", dry_run=True, **kw)
    assert dry.deleted == ["shop-0", f"binlog {name(1)}", f"binlog {name(2)}", f"binlog {name(3)}"]
    assert len(store.binlogs("shop")) == 5
    report = retention.prune(store, "shop", **kw)
    assert report.deleted == dry.deleted and "shop-1" in report.reasons[f"binlog {name(3)}"]
    assert on_disk(vol) == [name(4), name(5)]


def test_drctl_binlog_prune(monkeypatch, capsys, vol):
    kv = MemoryKV()
    store = archive(vol, range(1, 5), host=socket.gethostname(), store=BackupStore(kv, "/netplugin/v1"))
    store.add_backup(backup("b1", name(3), host=socket.gethostname()))
    monkeypatch.setattr(Containers, "volume_path", lambda self, v: str(vol))
    monkeypatch.setattr("netplugin.backup.cli.docker_client", lambda url: None)
    drctl = drctl_runner(monkeypatch, capsys, kv)
    r = drctl("binlog", "prune", "--target", "shop", "--dry-run")
    assert r.code == 0, r.err
    assert r.lines[:2] == [f"would remove shop/{name(1)}: ends before {name(3)}:900, where the oldest kept "
                           "backup b1 starts", f"would remove shop/{name(2)}: ends before {name(3)}:900, where "
                           "the oldest kept backup b1 starts"]
    assert len(on_disk(vol)) == 4
    r = drctl("binlog", "prune")
    assert r.code == 0 and r.lines[-1] == "shop: kept 2 files" and on_disk(vol) == [name(3), name(4)]
    r = drctl("binlog", "prune", "--target", "../x")
    assert r.code != 0 and "target" in r.err


def test_no_sweep_of_a_base_without_a_catalogued_file(vol):
    """Files of the cut's base with no record of that base at all may be the
    collector's current ones: left alone, as other bases' records are."""
    store = archive(vol, [1, 2])
    (vol / "shop" / "binlog" / "db-bin.000002").write_bytes(b"being written")
    report = run(store, vol, backups=[backup("b1", "db-bin.000005")])
    assert report.removed == [] and report.swept == []
    assert "db-bin.000002" in on_disk(vol) and len(store.binlogs("shop")) == 2
