"""Retention (netplugin/backup/retention.py): which backups go, and that the
last good backup never does."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplugin.backup.model import Backup
from netplugin.backup.retention import plan, prune
from netplugin.backup.store import BackupStore
from netplugin.errors import Conflict, InvalidRequest

from .fakes import MemoryKV

DAY = 86400.0
NOW = 1_800_000_000.0


def b(i: int, age_days: float, size: int = 100) -> Backup:
    return Backup(name=f"t-{i:03d}", target="t", database="d", volume="v", path=f"t/t-{i:03d}.sql.zst",
                  manifest_path=f"t/t-{i:03d}.manifest.json", size=size, sha256="0" * 64,
                  created=NOW - age_days * DAY, host="h", job=f"j{i}")


def test_keep_last_keeps_the_newest_n():
    backups = [b(i, 10 - i) for i in range(10)]
    p = plan(backups, keep_last=3, max_age=None, now=NOW)
    assert [x.name for x in p.keep] == ["t-009", "t-008", "t-007"]
    assert len(p.delete) == 7


def test_max_age_deletes_old_ones():
    backups = [b(0, 10), b(1, 5), b(2, 1)]
    p = plan(backups, keep_last=None, max_age=7 * DAY, now=NOW)
    assert [x.name for x in p.delete] == ["t-000"]


def test_the_newest_survives_any_age():
    """Backups stopped for a month: max-age must not wipe the last good one."""
    backups = [b(0, 40), b(1, 35), b(2, 30)]
    p = plan(backups, keep_last=None, max_age=7 * DAY, now=NOW)
    assert [x.name for x in p.keep] == ["t-002"]
    p = plan(backups, keep_last=1, max_age=0, now=NOW)
    assert [x.name for x in p.keep] == ["t-002"]


def test_keep_last_zero_is_refused():
    with pytest.raises(InvalidRequest, match="at least 1"):
        plan([b(0, 1)], keep_last=0, max_age=None, now=NOW)


@settings(max_examples=200, deadline=None)
@given(ages=st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=30),
       keep_last=st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
       max_age=st.one_of(st.none(), st.floats(min_value=0, max_value=50 * DAY)))
def test_never_deletes_everything_and_never_the_newest(ages, keep_last, max_age):
    backups = [b(i, age) for i, age in enumerate(ages)]
    p = plan(backups, keep_last, max_age, NOW)
    newest = max(backups, key=lambda x: (x.created, x.name))
    assert newest in p.keep and newest not in p.delete
    assert len(p.keep) + len(p.delete) == len(backups)
    if keep_last is not None:
        assert len(p.keep) <= keep_last


@pytest.fixture
def volume(tmp_path):
    return tmp_path


def _store_with(volume, backups: list[Backup], missing: set[str] = frozenset()) -> BackupStore:
    store = BackupStore(MemoryKV(), "/np")
    for x in backups:
        store.add_backup(x)
        if x.name in missing:
            continue
        os.makedirs(volume / "t", exist_ok=True)
        (volume / x.path).write_bytes(b"z" * x.size)
        (volume / x.manifest_path).write_text("{}")
    return store


def test_prune_deletes_files_and_catalog_entries(volume):
    backups = [b(i, 5 - i) for i in range(5)]
    store = _store_with(volume, backups)
    report = prune(store, "t", keep_last=2, max_age=None, now=NOW, volume_path=lambda v: str(volume))
    assert report.deleted == ["t-002", "t-001", "t-000"]
    assert [x.name for x in store.backups("t")] == ["t-004", "t-003"]
    assert sorted(os.listdir(volume / "t")) == ["t-003.manifest.json", "t-003.sql.zst", "t-004.manifest.json",
                                                "t-004.sql.zst"]


def test_prune_refuses_when_the_newest_is_missing_or_damaged(volume):
    backups = [b(0, 3), b(1, 2), b(2, 1)]
    store = _store_with(volume, backups, missing={"t-002"})
    with pytest.raises(Conflict, match="missing or damaged"):
        prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume))
    assert len(store.backups("t")) == 3
    (volume / "t/t-002.sql.zst").write_bytes(b"")                 # present but 0 bytes
    (volume / "t/t-002.manifest.json").write_text("{}")
    with pytest.raises(Conflict, match="missing or damaged"):
        prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume))


def test_prune_dry_run_changes_nothing(volume):
    store = _store_with(volume, [b(0, 3), b(1, 2)])
    report = prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), dry_run=True)
    assert report.deleted == ["t-000"] and len(store.backups("t")) == 2


def test_prune_skips_backups_on_volumes_of_other_hosts(volume):
    backups = [b(0, 3), b(1, 2)]
    backups[0].volume = "elsewhere"
    store = _store_with(volume, backups)
    report = prune(store, "t", keep_last=1, max_age=None, now=NOW,
                   volume_path=lambda v: str(volume) if v == "v" else None)
    assert report.deleted == [] and "elsewhere" in report.skipped[0]
