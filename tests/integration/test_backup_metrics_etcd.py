"""The backup figures over real etcd: job and catalog records written by drctl's
own store code (BackupStore) under a fresh prefix, then the daemon's metrics
port (metrics_server.serve, the same listener the daemon runs) scraped over
HTTP as Prometheus does. And a scrape whose etcd does not answer still
answers, counting the error."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netplugin.hostview import HostView
from netplugin.backup.exporter import BackupCollector
from netplugin.backup.store import BackupStore
from netplugin.config import Config
from netplugin.kv import EtcdKV
from netplugin.metrics import Metrics
from netplugin.metrics_server import serve
from netplugin.store import Store
from netplugin.wiring import make_metrics
from tests.unit.backup_records import put_backup, put_job

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Port:
    """A metrics port serving one registry, closed afterwards."""

    def __init__(self, metrics: Metrics):
        self.port = free_port()
        self.server = serve(f"127.0.0.1:{self.port}", metrics.registry, lambda: {"healthy": True})

    def scrape(self) -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def backup_collector(m: Metrics) -> BackupCollector:
    return next(c for c in m.collectors if isinstance(c, BackupCollector))


def get(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_scraped_backup_metrics_follow_the_job_records_in_etcd(kv, prefix):
    bstore = BackupStore(kv, prefix)
    metrics = make_metrics(Config(host_id="h1", etcd_prefix=prefix, backup_metrics=True), store := Store(kv, prefix), HostView(store, "h1"))
    port = Port(metrics)
    try:
        now = time.time()
        bstore.register_agent("h1", {"pid": 1}, kv.grant_lease(15))
        put_job(bstore, "succeeded", target="shop-db", size=123_456, created=now - 7200)
        put_job(bstore, "succeeded", target="shop-db", size=654_321, created=now - 3600)
        put_job(bstore, "failed", target="crm-db", created=now - 1800)
        running = put_job(bstore, "running", target="erp-db", host="h1")
        put_job(bstore, "queued", target="hr-db", host="h9")              # no agent on h9
        put_job(bstore, "succeeded", target="shop-db", kind="restore", size=654_321)
        put_backup(bstore, "shop-db", created=now - 3600, size=654_321)
        put_backup(bstore, "shop-db", created=now - 7200, size=123_456)

        s = port.scrape()
        assert {st: get(s, "netplugin_backup_jobs", state=st) for st in
                ("queued", "starting", "running", "verifying", "succeeded", "failed", "expired", "cancelled")} == {
            "queued": 1, "starting": 0, "running": 1, "verifying": 0, "succeeded": 3, "failed": 1,
            "expired": 0, "cancelled": 0}
        assert get(s, "netplugin_backup_bytes_total") == 123_456 + 654_321
        assert get(s, "netplugin_backup_jobs_orphaned") == 1
        assert get(s, "netplugin_backup_agents") == 1
        assert get(s, "netplugin_backup_last_success_timestamp_seconds", target="shop-db") == pytest.approx(now - 3600)
        assert get(s, "netplugin_backup_last_job_succeeded", target="shop-db") == 1
        assert get(s, "netplugin_backup_last_job_succeeded", target="crm-db") == 0
        assert get(s, "netplugin_backup_catalog_bytes", target="shop-db") == 777_777

        # the running job finishes; the next scrape fetches that one record only
        reads = backup_collector(metrics)._reader.reads
        bstore.update(running.id, lambda j: (j.move("verifying", "checking"), setattr(j, "result", {"size": 1000}),
                                             j.move("succeeded", "done")))
        s = port.scrape()
        assert get(s, "netplugin_backup_jobs", state="running") == 0
        assert get(s, "netplugin_backup_jobs", state="succeeded") == 4
        assert get(s, "netplugin_backup_bytes_total") == 123_456 + 654_321 + 1000
        assert backup_collector(metrics)._reader.reads == reads + 1
    finally:
        port.close()


def test_a_scrape_answers_when_etcd_does_not(prefix):
    dead = EtcdKV([f"http://127.0.0.1:{free_port()}"], timeout=1)       # nothing listens there
    metrics = make_metrics(Config(host_id="h1", etcd_prefix=prefix, backup_metrics=True), store := Store(dead, prefix), HostView(store, "h1"))
    port = Port(metrics)
    try:
        started = time.monotonic()
        s = port.scrape()
        assert time.monotonic() - started < 15
        assert get(s, "netplugin_backup_jobs", state="running") is None
        assert get(s, "netplugin_backup_bytes_total") is None
        assert get(s, "netplugin_start_time_seconds") is not None
        # the errors are counted while the scrape runs: the next scrape shows them,
        # one for the network figures and one for the backup figures
        assert get(port.scrape(), "netplugin_backend_errors_total", backend="etcd") >= 2
    finally:
        port.close()
        dead.close()
