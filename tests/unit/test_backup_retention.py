"""Retention (netplugin/backup/retention.py): which backups go, and that the
last good backup never does."""

from __future__ import annotations

import hashlib
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


def b(i: int, age_days: float, size: int = 100, host: str = "h") -> Backup:
    """A catalog record whose dump, as _store_with writes it, is size bytes of 'z'."""
    return Backup(name=f"t-{i:03d}", target="t", database="d", volume="v", path=f"t/t-{i:03d}.sql.zst",
                  manifest_path=f"t/t-{i:03d}.manifest.json", size=size,
                  sha256=hashlib.sha256(b"z" * size).hexdigest(), created=NOW - age_days * DAY, host=host,
                  job=f"j{i}")


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
    report = prune(store, "t", keep_last=2, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert report.deleted == ["t-002", "t-001", "t-000"]
    assert [x.name for x in store.backups("t")] == ["t-004", "t-003"]
    assert sorted(os.listdir(volume / "t")) == ["t-003.manifest.json", "t-003.sql.zst", "t-004.manifest.json",
                                                "t-004.sql.zst"]


def test_prune_refuses_when_the_newest_is_missing_or_damaged(volume):
    backups = [b(0, 3), b(1, 2), b(2, 1)]
    store = _store_with(volume, backups, missing={"t-002"})
    with pytest.raises(Conflict, match="missing or damaged"):
        prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert len(store.backups("t")) == 3
    (volume / "t/t-002.sql.zst").write_bytes(b"")                 # present but 0 bytes
    (volume / "t/t-002.manifest.json").write_text("{}")
    with pytest.raises(Conflict, match="missing or damaged"):
        prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")


def test_prune_dry_run_changes_nothing(volume):
    store = _store_with(volume, [b(0, 3), b(1, 2)])
    report = prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h",
                   dry_run=True)
    assert report.deleted == ["t-000"] and len(store.backups("t")) == 2


def test_prune_skips_backups_on_volumes_of_other_hosts(volume):
    backups = [b(0, 3), b(1, 2)]
    backups[0].volume = "elsewhere"
    store = _store_with(volume, backups)
    report = prune(store, "t", keep_last=1, max_age=None, now=NOW,
                   volume_path=lambda v: str(volume) if v == "v" else None, host="h")
    assert report.deleted == [] and "elsewhere" in report.skipped[0]


# -- only this host's backups; the newest re-hashed; paths confined ----------------------------

def test_another_hosts_backups_are_never_pruned_nor_dropped(volume):
    """Two hosts back up target t into same-named volumes: h prunes only its own."""
    mine = [b(i, 10 - i) for i in range(3)]
    theirs = [b(i, 20 - i, host="other") for i in range(10, 14)]          # older than all of mine
    store = _store_with(volume, mine + theirs)
    report = prune(store, "t", keep_last=1, max_age=0, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert report.deleted == ["t-001", "t-000"]
    left = {x.name for x in store.backups("t")}
    assert left == {"t-002"} | {x.name for x in theirs}
    for x in theirs:
        assert (volume / x.path).exists() and (volume / x.manifest_path).exists()


def test_only_another_hosts_backups_means_nothing_to_do(volume):
    store = _store_with(volume, [b(i, 5 - i, host="other") for i in range(3)])
    report = prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert report.deleted == [] and len(store.backups("t")) == 3


def test_a_corrupted_newest_with_the_right_size_is_not_intact(volume):
    backups = [b(0, 3), b(1, 2), b(2, 1)]
    store = _store_with(volume, backups)
    (volume / "t/t-002.sql.zst").write_bytes(b"y" * 100)                  # same size, other bytes
    with pytest.raises(Conflict, match="sha256"):
        prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert len(store.backups("t")) == 3 and (volume / "t/t-000.sql.zst").exists()


def test_a_catalog_record_with_a_path_out_of_the_volume_is_skipped(volume, tmp_path_factory):
    """A crafted record naming ../../ paths is never unlinked; the canary survives."""
    outside = tmp_path_factory.mktemp("outside")
    canary = outside / "canary.sql.zst"
    canary.write_bytes(b"keep")
    backups = [b(0, 3), b(1, 2), b(2, 1)]
    store = _store_with(volume, backups)
    crafted = b(0, 4)
    crafted.name = "t-bad"
    crafted.path = os.path.relpath(canary, volume)
    crafted.manifest_path = "/etc/passwd"
    store.add_backup(crafted)
    report = prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert report.deleted == ["t-001", "t-000"]
    assert canary.read_bytes() == b"keep"
    assert "t-bad" in {x.name for x in store.backups("t")}                 # skipped, not dropped


def test_a_symlinked_target_folder_is_not_followed(volume, tmp_path_factory):
    """The volume's target folder replaced by a link out: nothing outside is unlinked."""
    outside = tmp_path_factory.mktemp("outside")
    backups = [b(0, 3), b(1, 2)]
    store = _store_with(outside, backups)                 # the files live outside the volume
    os.symlink(outside / "t", volume / "t")
    with pytest.raises(Conflict, match="outside"):
        prune(store, "t", keep_last=1, max_age=None, now=NOW, volume_path=lambda v: str(volume), host="h")
    assert sorted(os.listdir(outside / "t")) == ["t-000.manifest.json", "t-000.sql.zst", "t-001.manifest.json",
                                                 "t-001.sql.zst"]
