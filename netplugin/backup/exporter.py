"""drctl's figures on the netplugin daemon's metrics port: a Prometheus
collector over the jobs and catalog in etcd (``<prefix>/backup/``), read at
scrape time. The wiring point (``wiring.make_metrics``) registers it, so the
network daemon's own modules know nothing of drctl.

Cluster-wide like the pool gauges: every daemon reports the same figures.
The reader (summary.BackupReader) is made at the first scrape and keeps what
it read, so later scrapes fetch only the job and catalog records that changed.
"""

from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import NetpluginError
from .store import BackupStore
from .summary import BackupReader

log = logging.getLogger(__name__)


class BackupCollector(Collector):
    """metrics: the daemon's Metrics, whose ``backend_errors`` counts an etcd
    that does not answer."""

    def __init__(self, store: BackupStore, metrics):
        self.store = store
        self.metrics = metrics
        self._reader: BackupReader | None = None

    def describe(self):
        return []

    def _read(self) -> dict:
        if self._reader is None:
            self._reader = BackupReader(self.store)
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
        drill_ok = GaugeMetricFamily("netplugin_backup_drill_succeeded", "1 if the last restore drill of the "
                                     "target restored and verified, 0 if it failed", labels=["target"])
        drill_rto = GaugeMetricFamily("netplugin_backup_drill_rto_seconds", "Seconds the last successful drill "
                                      "of the target took to load and verify", labels=["target"])
        drill_rpo = GaugeMetricFamily("netplugin_backup_drill_rpo_seconds", "Age of the data the last drill of the "
                                      "target restored, when it began", labels=["target"])
        drill_at = GaugeMetricFamily("netplugin_backup_drill_timestamp_seconds", "When the last drill of the "
                                     "target ended", labels=["target"])
        try:
            for r in self.store.drill_results():
                drill_ok.add_metric([r.target], 1 if r.ok else 0)
                drill_at.add_metric([r.target], r.finished)
                if r.rto is not None:
                    drill_rto.add_metric([r.target], r.rto)
                if r.rpo is not None:
                    drill_rpo.add_metric([r.target], r.rpo)
        except NetpluginError as exc:
            self.metrics.backend_errors.labels("etcd").inc()
            log.warning("metrics: cannot read drill results from etcd: %s", exc.message)
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
        yield from (jobs, written, orphaned, agents, last_ok, last_job, kept, kept_bytes, drill_ok, drill_rto,
                    drill_rpo, drill_at)
