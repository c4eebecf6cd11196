"""The followers' re-reads (watch.RELISTS) as a Prometheus counter, read at
scrape time: ``netplugin_watch_relists{follower, reason}``. A steady rise of
reason="compacted" means etcd compacts faster than a follower starts its
watch; of reason="broken", that etcd or the path to it keeps failing."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .watch import RELISTS, Relists


class WatchCollector(Collector):
    def __init__(self, relists: Relists = RELISTS):
        self.relists = relists

    def describe(self):
        return []

    def collect(self):
        family = CounterMetricFamily("netplugin_watch_relists", "Times a follower of etcd read its prefix again, "
                                     "by follower and reason (compacted, broken, error)",
                                     labels=["follower", "reason"])
        for (follower, reason), count in sorted(self.relists.counts().items()):
            family.add_metric([follower, reason], count)
        yield family
