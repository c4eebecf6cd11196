"""Prometheus metrics (prometheus_client), built when the daemon starts.

Counted as they happen: protocol calls by method and outcome and their
latency, errors of each backend, rate limits applied. Read from etcd when
scraped: endpoints per network, pool size and use per network, this host's
reconciler totals, and drctl's backup jobs and catalog (only the records that
changed since the last scrape are read again: backup/summary.py). Served with
``/health`` on a loopback-only HTTP port (metrics_server.py).
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .errors import DataplaneError, DataplaneUnavailable, NetpluginError, StoreUnavailable

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


def outcome_of(status: int) -> str:
    return "ok" if status < 400 else ("client_error" if status < 500 else "server_error")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("netplugin_requests", "Protocol calls by method and outcome",
                                ["method", "outcome"], registry=r)
        self.latency = Histogram("netplugin_request_duration_seconds", "Protocol call latency by method",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_errors = Counter("netplugin_backend_errors", "Errors talking to etcd, OVSDB or Docker",
                                      ["backend"], registry=r)
        self.limits_applied = Counter("netplugin_rate_limits_applied", "Rate limits set, changed or lifted on "
                                      "ports of this host", registry=r)
        self.limited_ports = Gauge("netplugin_rate_limited_ports", "Ports of this host with a rate limit",
                                   registry=r)
        self.started = Gauge("netplugin_start_time_seconds", "When the daemon started", registry=r)
        self.started.set(time.time())

    def observe_call(self, method: str, status: int, seconds: float, error: BaseException | None = None) -> None:
        self.requests.labels(method, outcome_of(status)).inc()
        self.latency.labels(method).observe(seconds)
        if isinstance(error, StoreUnavailable):
            self.backend_errors.labels("etcd").inc()
        elif isinstance(error, (DataplaneUnavailable, DataplaneError)):
            self.backend_errors.labels("ovsdb").inc()

    def watch_store(self, store, host_id: str) -> None:
        self.registry.register(StoreCollector(store, host_id, self))
        self.backup = BackupCollector(store, self)
        self.registry.register(self.backup)


class StoreCollector:
    """Gauges read from etcd at scrape time, so they are right whoever changed etcd."""

    def __init__(self, store, host_id: str, metrics: Metrics):
        self.store = store
        self.host_id = host_id
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        endpoints = GaugeMetricFamily("netplugin_endpoints", "Endpoints per network and host",
                                      labels=["network", "host"])
        size = GaugeMetricFamily("netplugin_pool_size", "Usable addresses per network", labels=["network"])
        used = GaugeMetricFamily("netplugin_pool_used", "Addresses in use per network", labels=["network"])
        found = CounterMetricFamily("netplugin_reconcile_findings", "Leaks found by this host's reconciler",
                                    labels=["kind"])
        released = CounterMetricFamily("netplugin_reconcile_released", "Leaks released by this host's reconciler")
        repaired = CounterMetricFamily("netplugin_reconcile_repaired", "Live endpoints repaired by the reconciler")
        errors = CounterMetricFamily("netplugin_reconcile_errors",
                                     "Reconciler actions that failed or were not done on this host")
        runs = CounterMetricFamily("netplugin_reconcile_runs", "Reconciler runs on this host")
        last = GaugeMetricFamily("netplugin_reconcile_last_run_timestamp_seconds", "When the reconciler last ran")
        try:
            import netaddr
            networks = self.store.list_networks()
            counts: dict[tuple[str, str], int] = {}
            for ep in self.store.list_endpoints():
                key = (ep.network_name or ep.network, ep.host)
                counts[key] = counts.get(key, 0) + 1
            for (net, host), n in sorted(counts.items()):
                endpoints.add_metric([net, host], n)
            for net in networks:
                size.add_metric([net.label], netaddr.IPNetwork(net.subnet).size - 2)
                used.add_metric([net.label], self.store.count_allocations(net.subnet))
            totals = self.store.get_json(self.store.k_reconcile(self.host_id, "counters")) or {}
            for kind, n in sorted((totals.get("found") or {}).items()):
                found.add_metric([kind], n)
            released.add_metric([], totals.get("released", 0))
            repaired.add_metric([], totals.get("repaired", 0))
            errors.add_metric([], totals.get("errors", 0))
            runs.add_metric([], totals.get("runs", 0))
            if totals.get("last_run"):
                last.add_metric([], totals["last_run"])
        except NetpluginError as exc:
            self.metrics.backend_errors.labels("etcd").inc()
            log.warning("metrics: cannot read etcd: %s", exc.message)
        yield from (endpoints, size, used, found, released, repaired, errors, runs, last)


class BackupCollector:
    """drctl's jobs and catalog, from etcd at scrape time (``<prefix>/backup/``).

    Cluster-wide like the pool gauges: every daemon reports the same figures.
    The reader is made at the first scrape and keeps what it read, so later
    scrapes fetch only the job and catalog records that changed."""

    def __init__(self, store, metrics: Metrics):
        self.store = store
        self.metrics = metrics
        self._reader = None

    def describe(self):
        return []

    def _read(self) -> dict:
        if self._reader is None:
            from .backup.summary import BackupReader
            self._reader = BackupReader(self.store.kv, self.store.prefix)
        return self._reader.read()

    def collect(self):
        jobs = GaugeMetricFamily("netplugin_backup_jobs", "drctl jobs (backups and restores) recorded in etcd, "
                                 "by state", labels=["state"])
        written = CounterMetricFamily("netplugin_backup_bytes", "Bytes of the backup files written by "
                                      "succeeded backup jobs recorded in etcd")
        orphaned = GaugeMetricFamily("netplugin_backup_jobs_orphaned", "Jobs queued for or active on a host "
                                     "whose drctl agent is not alive")
        agents = GaugeMetricFamily("netplugin_backup_agents", "drctl agents alive")
        last_ok = GaugeMetricFamily("netplugin_backup_last_success_timestamp_seconds", "When the newest "
                                    "verified backup of each target was taken", labels=["target"])
        last_job = GaugeMetricFamily("netplugin_backup_last_job_succeeded", "1 if the last ended backup job "
                                     "of the target succeeded, 0 if it failed, expired or was cancelled",
                                     labels=["target"])
        kept = GaugeMetricFamily("netplugin_backup_catalog_backups", "Verified backups in the catalog, "
                                 "per target", labels=["target"])
        kept_bytes = GaugeMetricFamily("netplugin_backup_catalog_bytes", "Bytes of the verified backups in "
                                       "the catalog, per target", labels=["target"])
        try:
            info = self._read()
            for state, n in info["states"].items():
                jobs.add_metric([state], n)
            written.add_metric([], info["backup_bytes_total"])
            orphaned.add_metric([], len(info["orphaned"]))
            agents.add_metric([], len(info["agents"]))
            for t in info["targets"]:
                if t["last_success"] is not None:
                    last_ok.add_metric([t["target"]], t["last_success"])
                if t["last_job"] is not None:
                    last_job.add_metric([t["target"]], 1 if t["last_job"]["succeeded"] else 0)
                kept.add_metric([t["target"]], t["backups"])
                kept_bytes.add_metric([t["target"]], t["bytes"])
        except NetpluginError as exc:
            self.metrics.backend_errors.labels("etcd").inc()
            log.warning("metrics: cannot read backup jobs from etcd: %s", exc.message)
        yield from (jobs, written, orphaned, agents, last_ok, last_job, kept, kept_bytes)
