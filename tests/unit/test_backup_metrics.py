"""The backup figures of the daemon's /metrics (backup/exporter.py
BackupCollector over backup/summary.py, registered by wiring.make_metrics): drctl's job and catalog
records are written through the real BackupStore into the fake etcd, then the
registry is scraped as Prometheus would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import generate_latest

from netplugin.backup.exporter import BackupCollector
from netplugin.backup.model import STATES
from netplugin.backup.store import BackupStore
from netplugin.backup.summary import BackupReader
from netplugin.config import Config
from netplugin.hostview import HostView
from netplugin.kv import Put
from netplugin.metrics import Metrics
from netplugin.store import Store
from netplugin.wiring import make_metrics

from .backup_records import put_backup, put_job
from .fakes import MemoryKV

PREFIX = "/netplugin/bkm"


@pytest.fixture
def kv() -> MemoryKV:
    return MemoryKV()


@pytest.fixture
def bstore(kv) -> BackupStore:
    return BackupStore(kv, PREFIX)


@pytest.fixture
def metrics(kv) -> Metrics:
    return make_metrics(Config(host_id="h1", etcd_prefix=PREFIX, backup_metrics=True), store := Store(kv, PREFIX),
                        HostView(store, "h1"))


def backup_collector(m: Metrics) -> BackupCollector:
    return next(c for c in m.collectors if isinstance(c, BackupCollector))


def value(m: Metrics, name: str, **labels) -> float | None:
    return m.registry.get_sample_value(name, labels)


def states(m: Metrics) -> dict[str, float | None]:
    return {s: value(m, "netplugin_backup_jobs", state=s) for s in STATES}


def test_no_jobs_reads_zero_for_every_state(metrics):
    assert states(metrics) == {s: 0 for s in STATES}
    assert value(metrics, "netplugin_backup_bytes_total") == 0
    assert value(metrics, "netplugin_backup_jobs_orphaned") == 0
    assert value(metrics, "netplugin_backup_agents") == 0


def test_jobs_are_counted_by_state(metrics, bstore):
    bstore.register_agent("h1", {"pid": 1}, bstore.kv.grant_lease(15))
    put_job(bstore, "queued", target="a")
    put_job(bstore, "queued", target="a")
    put_job(bstore, "starting", target="b")
    put_job(bstore, "running", target="c")
    put_job(bstore, "verifying", target="d")
    for _ in range(3):
        put_job(bstore, "succeeded", target="e", size=1000)
    put_job(bstore, "failed", target="e")
    put_job(bstore, "expired", target="f")
    put_job(bstore, "cancelled", target="g")
    put_job(bstore, "succeeded", target="h", kind="restore")
    assert states(metrics) == {"queued": 2, "starting": 1, "running": 1, "verifying": 1, "succeeded": 4,
                               "failed": 1, "expired": 1, "cancelled": 1}
    # a job moving on is seen at the next scrape
    job = put_job(bstore, "running", target="i")
    assert value(metrics, "netplugin_backup_jobs", state="running") == 2
    bstore.update(job.id, lambda j: j.move("failed", "the job exited with code 2", now=job.created + 99))
    assert value(metrics, "netplugin_backup_jobs", state="running") == 1
    assert value(metrics, "netplugin_backup_jobs", state="failed") == 2


def test_bytes_are_those_of_succeeded_backup_jobs_only(metrics, bstore):
    put_job(bstore, "succeeded", target="a", size=1_500_000)
    put_job(bstore, "succeeded", target="b", size=2_500)
    put_job(bstore, "succeeded", target="c", kind="restore", size=999)   # a restore writes no backup
    put_job(bstore, "failed", target="d")
    put_job(bstore, "running", target="e")
    assert value(metrics, "netplugin_backup_bytes_total") == 1_502_500


def test_bytes_never_go_down_when_old_job_records_are_removed(metrics, bstore):
    old = put_job(bstore, "succeeded", target="a", size=7_000)
    put_job(bstore, "succeeded", target="a", size=3_000)
    assert value(metrics, "netplugin_backup_bytes_total") == 10_000
    bstore.delete_job(old)                          # the agent's clean-up after keep_history
    assert value(metrics, "netplugin_backup_bytes_total") == 10_000
    assert value(metrics, "netplugin_backup_jobs", state="succeeded") == 1
    put_job(bstore, "succeeded", target="a", size=500)
    assert value(metrics, "netplugin_backup_bytes_total") == 10_500


def test_per_target_newest_backup_catalog_and_last_job(metrics, bstore):
    put_backup(bstore, "shop-db", created=1_700_086_400.0, size=300)    # the newest written first
    put_backup(bstore, "shop-db", created=1_700_000_000.0, size=100)
    put_backup(bstore, "crm-db", created=1_699_000_000.0, size=50)
    put_job(bstore, "succeeded", target="shop-db", size=300, created=1_700_086_390.0)
    put_job(bstore, "succeeded", target="crm-db", size=50, created=1_699_000_000.0)
    put_job(bstore, "failed", target="crm-db", created=1_699_100_000.0)    # the later job failed
    put_job(bstore, "failed", target="new-db")                              # never a good backup
    put_job(bstore, "succeeded", target="crm-db", kind="restore", created=1_699_200_000.0)  # not a backup job
    m = metrics
    assert value(m, "netplugin_backup_last_success_timestamp_seconds", target="shop-db") == 1_700_086_400.0
    assert value(m, "netplugin_backup_last_success_timestamp_seconds", target="crm-db") == 1_699_000_000.0
    assert value(m, "netplugin_backup_last_success_timestamp_seconds", target="new-db") is None
    assert value(m, "netplugin_backup_catalog_backups", target="shop-db") == 2
    assert value(m, "netplugin_backup_catalog_bytes", target="shop-db") == 400
    assert value(m, "netplugin_backup_catalog_backups", target="new-db") == 0
    assert value(m, "netplugin_backup_last_job_succeeded", target="shop-db") == 1
    assert value(m, "netplugin_backup_last_job_succeeded", target="crm-db") == 0
    assert value(m, "netplugin_backup_last_job_succeeded", target="new-db") == 0
    # a pruned backup leaves the catalog figures
    bstore.remove_backup(bstore.backups("shop-db")[-1])             # the oldest
    assert value(m, "netplugin_backup_catalog_backups", target="shop-db") == 1
    assert value(m, "netplugin_backup_catalog_bytes", target="shop-db") == 300


def test_jobs_of_a_host_without_a_live_agent_are_orphaned(metrics, bstore, kv):
    lease = kv.grant_lease(15)
    bstore.register_agent("h1", {"pid": 1}, lease)
    bstore.register_agent("h2", {"pid": 2}, kv.grant_lease(15))
    put_job(bstore, "running", target="a", host="h1")
    put_job(bstore, "queued", target="b", host="h1")
    put_job(bstore, "running", target="c", host="h2")
    put_job(bstore, "failed", target="d", host="h1")            # ended jobs need no agent
    assert value(metrics, "netplugin_backup_agents") == 2
    assert value(metrics, "netplugin_backup_jobs_orphaned") == 0
    kv.revoke_lease(lease)                                         # h1's agent died
    assert value(metrics, "netplugin_backup_agents") == 1
    assert value(metrics, "netplugin_backup_jobs_orphaned") == 2


def test_only_jobs_under_this_prefix_count(metrics, kv):
    put_job(BackupStore(kv, "/netplugin/other"), "running", target="a", size=5)
    assert value(metrics, "netplugin_backup_jobs", state="running") == 0


def test_scrape_with_etcd_down_answers_and_counts_the_error(metrics, bstore, kv):
    put_job(bstore, "succeeded", target="a", size=42)
    assert value(metrics, "netplugin_backup_bytes_total") == 42
    kv.set_down(True)
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE netplugin_backup_jobs gauge" in text            # the families are there, empty
    assert "netplugin_backup_jobs{" not in text                    # no stale figures
    assert not re.search(r"^netplugin_backup_bytes_total ", text, re.MULTILINE)
    assert value(metrics, "netplugin_backup_bytes_total") is None
    assert value(metrics, "netplugin_backend_errors_total", backend="etcd") >= 1
    kv.set_down(False)
    put_job(bstore, "succeeded", target="a", size=8)
    assert value(metrics, "netplugin_backup_bytes_total") == 50


def test_later_scrapes_read_only_the_records_that_changed(metrics, bstore):
    jobs = [put_job(bstore, "succeeded", target="a", size=1) for _ in range(5)]
    running = put_job(bstore, "running", target="b")
    put_backup(bstore, "a", created=1.0, size=1)
    generate_latest(metrics.registry)
    reader = backup_collector(metrics)._reader
    assert reader.reads == 7
    generate_latest(metrics.registry)
    assert reader.reads == 7                                     # nothing changed: nothing fetched
    bstore.update(running.id, lambda j: j.progress.update(bytes=1234))
    generate_latest(metrics.registry)
    assert reader.reads == 8
    assert len(jobs) == 5


def test_a_full_read_when_many_records_changed(kv, bstore):
    for _ in range(5):
        put_job(bstore, "succeeded", target="a", size=10)
    reader = BackupReader(BackupStore(kv, PREFIX), full_read=2)
    gets = []
    real_get = kv.get
    kv.get = lambda key: gets.append(key) or real_get(key)
    info = reader.read()
    assert gets == []                                            # one prefix read, not 5 gets
    assert info["backup_bytes_total"] == 50 and info["states"]["succeeded"] == 5


def test_a_damaged_job_record_is_skipped_and_the_scrape_answers(metrics, bstore, kv):
    put_job(bstore, "succeeded", target="a", size=11)
    kv.txn([], [Put(bstore.k_job("broken"), b"{not json")])
    assert value(metrics, "netplugin_backup_bytes_total") == 11
    assert value(metrics, "netplugin_backup_jobs", state="succeeded") == 1


def test_a_default_daemon_scrape_reads_etcd_once_whatever_the_jobs(kv, bstore):
    """Issue 15: a scrape of /metrics costs no etcd read beyond O(1). drctl's
    fleet-wide figures (a read of every job's key) are off unless asked for."""
    for _ in range(40):
        put_job(bstore, "succeeded", target="a", size=1)
    store = Store(kv, PREFIX)
    metrics = make_metrics(Config(host_id="h1", etcd_prefix=PREFIX), store, HostView(store, "h1"))
    reads: list[str] = []
    for name in ("get", "get_prefix", "count_prefix", "snapshot"):
        real = getattr(kv, name)
        setattr(kv, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    text = generate_latest(metrics.registry).decode()
    assert "netplugin_backup_jobs" not in text
    assert len(reads) <= 1, f"a scrape read etcd {len(reads)} times: {reads}"
    on = make_metrics(Config(host_id="h1", etcd_prefix=PREFIX, backup_metrics=True), store, HostView(store, "h1"))
    reads.clear()
    assert "netplugin_backup_jobs{" in generate_latest(on.registry).decode()
    assert len(reads) > 1                      # the control: the fleet-wide figures do read etcd
