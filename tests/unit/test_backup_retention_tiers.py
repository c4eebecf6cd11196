"""Tiered retention (retention.Tiers, retention.plan/prune): the bucket
selection over a simulated year of daily backups, union with keep-last, the
max-age bound, the volume budget, reasons for a dry run, and that neither the
newest nor a backup a restore is reading ever goes."""

from __future__ import annotations

import hashlib
import os
from datetime import date, datetime, timedelta, timezone

import pytest

from netplugin.backup.model import Backup, JobSpec
from netplugin.backup.retention import Tiers, over_budget, plan, prune
from netplugin.backup.store import BackupStore
from tests.unit.backup_records import put_job

from .fakes import MemoryKV

UTC = timezone.utc  # noqa: UP017 - the name says what it is


def at(d: date, hour: int = 2) -> float:
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC).timestamp()


def backup(d: date, size: int = 100, target: str = "t", volume: str = "v", hour: int = 2) -> Backup:
    name = f"{target}-{d.isoformat()}-{hour:02d}"
    return Backup(name=name, target=target, database="d", volume=volume, path=f"{target}/{name}.sql.zst",
                  manifest_path=f"{target}/{name}.manifest.json", size=size,
                  sha256=hashlib.sha256(b"z" * size).hexdigest(), created=at(d, hour), host="h", job="j1")


YEAR = [date(2026, 1, 1) + timedelta(days=i) for i in range(365)]
NOW = at(date(2027, 1, 1), 0)


def kept_days(p) -> set[str]:
    return {b.name[2:12] for b in p.keep}


def test_a_year_of_dailies_keeps_7_daily_4_weekly_12_monthly():
    p = plan([backup(d) for d in YEAR], None, None, NOW, Tiers(daily=7, weekly=4, monthly=12))
    daily = {f"2026-12-{d}" for d in range(25, 32)}
    weekly = {"2026-12-31", "2026-12-27", "2026-12-20", "2026-12-13"}        # ISO weeks 53, 52, 51, 50 of 2026
    monthly = {"2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30", "2026-07-31",
               "2026-08-31", "2026-09-30", "2026-10-31", "2026-11-30", "2026-12-31"}
    assert kept_days(p) == daily | weekly | monthly
    assert len(p.keep) == 20 and len(p.delete) == 345
    assert p.reasons["t-2026-03-31-02"] == "kept: monthly 10 of 12"
    assert p.reasons["t-2026-12-20-02"] == "kept: weekly 3 of 4"
    assert "not kept by any rule" in p.reasons["t-2026-06-15-02"]


def test_a_bucket_keeps_its_newest_backup_and_empty_buckets_do_not_count():
    days = [date(2026, 5, 1), date(2026, 5, 3), date(2026, 5, 3), date(2026, 5, 10)]
    backups = [backup(days[0]), backup(days[1], hour=1), backup(days[2], hour=23), backup(days[3])]
    p = plan(backups, None, None, NOW, Tiers(daily=3))
    # the newest 3 days WITH a backup: May 10, May 3 (its 23:00 one), May 1
    assert {b.name for b in p.keep} == {"t-2026-05-10-02", "t-2026-05-03-23", "t-2026-05-01-02"}


def test_keep_last_adds_to_the_tiers():
    p = plan([backup(d) for d in YEAR], 10, None, NOW, Tiers(monthly=2))
    assert kept_days(p) == {f"2026-12-{d}" for d in range(22, 32)} | {"2026-11-30"}


def test_max_age_bounds_what_tiers_keep_but_never_the_newest():
    p = plan([backup(d) for d in YEAR], None, 40 * 86400, NOW, Tiers(monthly=12))
    assert kept_days(p) == {"2026-12-31", "2026-11-30"}
    old = [backup(date(2025, 1, 1))]
    assert [b.name for b in plan(old, None, 1.0, NOW, Tiers(daily=1)).keep] == ["t-2025-01-01-02"]


def test_over_budget_takes_the_oldest_first_never_the_newest():
    keep = [backup(date(2026, 1, d), size=100) for d in range(1, 6)]
    assert [b.name for b in over_budget(keep, others=150, budget=400)] == ["t-2026-01-01-02", "t-2026-01-02-02",
                                                                           "t-2026-01-03-02"]
    assert [b.name for b in over_budget(keep, others=10_000, budget=1)] == [b.name for b in keep[:-1]]
    assert over_budget(keep, others=0, budget=500) == []


@pytest.fixture
def volume(tmp_path):
    return tmp_path


def _store(volume, backups: list[Backup]) -> BackupStore:
    """Catalog records written through the store with their timestamps, and their files."""
    store = BackupStore(MemoryKV(), "/np")
    for x in backups:
        store.add_backup(x)
        os.makedirs(volume / x.target, exist_ok=True)
        (volume / x.path).write_bytes(b"z" * x.size)
        (volume / x.manifest_path).write_text("{}")
    return store


def test_prune_over_a_year_leaves_exactly_the_expected_catalog_and_files(volume):
    store = _store(volume, [backup(d) for d in YEAR])
    dry = prune(store, "t", None, None, NOW, volume_path=lambda v: str(volume), host="h", dry_run=True,
                tiers=Tiers(daily=7, weekly=4, monthly=12))
    assert len(dry.deleted) == 345 and len(store.backups("t")) == 365
    assert all("not kept" in dry.reasons[n] for n in dry.deleted)
    report = prune(store, "t", None, None, NOW, volume_path=lambda v: str(volume), host="h",
                   tiers=Tiers(daily=7, weekly=4, monthly=12))
    assert sorted(report.deleted) == sorted(dry.deleted)
    left = {b.name for b in store.backups("t")}
    assert left == set(dry.kept) and len(left) == 20
    assert sorted(os.listdir(volume / "t")) == sorted(f"{n}{ext}" for n in left for ext in (".sql.zst",
                                                                                              ".manifest.json"))


def test_the_budget_counts_the_volumes_other_targets(volume):
    mine = [backup(date(2026, 1, d), size=100) for d in range(1, 6)]
    other = [backup(date(2026, 1, 1), size=300, target="u")]
    store = _store(volume, mine + other)
    report = prune(store, "t", None, None, NOW, volume_path=lambda v: str(volume), host="h", budget=600)
    assert sorted(report.deleted) == ["t-2026-01-01-02", "t-2026-01-02-02"]
    assert "over its budget of 600 bytes" in report.reasons["t-2026-01-01-02"]
    assert {b.name for b in store.backups("u")} == {"u-2026-01-01-02"}


def test_a_backup_a_restore_is_reading_is_never_deleted(volume):
    backups = [backup(date(2026, 1, d)) for d in range(1, 4)]
    store = _store(volume, backups)
    job = put_job(store, "running", target="restore-into")
    store.update(job.id, lambda j: j.spec.update(JobSpec(**{**j.spec, "backup": "t-2026-01-01-02"}).__dict__)
                 or setattr(j, "kind", "restore"))
    report = prune(store, "t", 1, None, NOW, volume_path=lambda v: str(volume), host="h")
    assert report.deleted == ["t-2026-01-02-02"]
    assert any("t-2026-01-01-02" in s and job.id in s for s in report.skipped)
    assert (volume / "t/t-2026-01-01-02.sql.zst").exists()
