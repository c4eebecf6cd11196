"""Prometheus metrics (prometheus_client), built when the daemon starts.

Counted as they happen: protocol calls by method and outcome and their
latency, errors of each backend, rate limits applied. Read from etcd when
scraped: endpoints per network, pool size and use per network, this host's
reconciler totals, and whatever collectors the wiring point adds (drctl's
jobs and catalog: backup/exporter.py; this module knows nothing of them).
The network's gauges come from this host's view (hostview.py), kept by
watches: a scrape reads one small etcd record (the reconciler's totals).
Served with ``/health`` on a loopback-only HTTP port (metrics_server.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import poolspan
from .errors import (
    DataplaneError,
    DataplaneUnavailable,
    NetpluginError,
    StoreUnavailable,
)

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

    def watch_store(self, store, view, host_id: str, *more: Callable[[Metrics], Collector]) -> None:
        """Register the collectors read at scrape time: the network's, then each
        one that more makes (the wiring point adds drctl's: wiring.make_metrics)."""
        self.collectors: list[Collector] = [StoreCollector(store, view, host_id, self)]
        self.collectors += [make(self) for make in more]
        for collector in self.collectors:
            self.registry.register(collector)


class StoreCollector(Collector):
    """Gauges read at scrape time from this host's view of etcd (kept by
    watches, so right whoever changed etcd), and the reconciler's totals."""

    def __init__(self, store, view, host_id: str, metrics: Metrics):
        self.store = store
        self.view = view
        self.host_id = host_id
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        endpoints = GaugeMetricFamily("netplugin_endpoints", "Endpoints per network and host, of the networks "
                                      "this host has bound", labels=["network", "host"])
        size = GaugeMetricFamily("netplugin_pool_size", "Addresses the allocator can give out (the network's "
                                 "--ip-range, else its subnet), per network this host has bound", labels=["network"])
        used = GaugeMetricFamily("netplugin_pool_used", "Of those, addresses held by endpoints, the gateway and aux "
                                 "addresses, per network this host has bound", labels=["network"])
        found = CounterMetricFamily("netplugin_reconcile_findings", "Leaks found by this host's reconciler",
                                    labels=["kind"])
        released = CounterMetricFamily("netplugin_reconcile_released", "Leaks released by this host's reconciler")
        repaired = CounterMetricFamily("netplugin_reconcile_repaired", "Live endpoints repaired by the reconciler")
        errors = CounterMetricFamily("netplugin_reconcile_errors",
                                     "Reconciler actions that failed or were not done on this host")
        runs = CounterMetricFamily("netplugin_reconcile_runs", "Reconciler runs on this host")
        last = GaugeMetricFamily("netplugin_reconcile_last_run_timestamp_seconds", "When the reconciler last ran")
        bad_total = CounterMetricFamily("netplugin_bad_records", "Bad records read from etcd by this process "
                                        "(each key counted once per problem)", labels=["kind"])
        bad_now = GaugeMetricFamily("netplugin_bad_records_current", "Records this process last read bad, by kind",
                                    labels=["kind"])
        try:
            networks = self.view.network_map()
            counts: dict[tuple[str, str], int] = {}
            per_net: dict[str, list[str]] = {}
            for ep in self.view.endpoints():
                key = (ep.network_name or ep.network, ep.host)
                counts[key] = counts.get(key, 0) + 1
                per_net.setdefault(ep.network, []).append(ep.ip)
            for (label, host), n in sorted(counts.items()):
                endpoints.add_metric([label, host], n)
            for net_id in sorted(self.view.bound()):
                net = networks.get(net_id)
                if net is not None:
                    allocatable, held = poolspan.usage(net, per_net.get(net.id, []))
                    size.add_metric([net.label], allocatable)
                    used.add_metric([net.label], held)
            totals = self.store.reconcile_counters(self.host_id) or {}
            found_by_kind = totals.get("found")
            for kind, n in sorted(found_by_kind.items() if isinstance(found_by_kind, dict) else []):
                if isinstance(kind, str) and _number(n):
                    found.add_metric([kind], n)
            for family, name in ((released, "released"), (repaired, "repaired"), (errors, "errors"),
                                 (runs, "runs")):
                n = totals.get(name, 0)
                family.add_metric([], n if _number(n) else 0)
            if _number(totals.get("last_run")) and totals["last_run"]:
                last.add_metric([], totals["last_run"])
        except NetpluginError as exc:
            self.metrics.backend_errors.labels("etcd").inc()
            log.warning("metrics: cannot read etcd: %s", exc.message)
        for kind, n in sorted(self.store.bad.totals().items()):
            bad_total.add_metric([kind], n)
        current: dict[str, int] = {}
        for kind, _ in self.store.bad.current().values():
            current[kind] = current.get(kind, 0) + 1
        for kind, n in sorted(current.items()):
            bad_now.add_metric([kind], n)
        yield from (endpoints, size, used, found, released, repaired, errors, runs, last, bad_total, bad_now)


def _number(value: object) -> bool:
    """A count or time read from etcd that a metric can carry (a bad report's field is left out)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
