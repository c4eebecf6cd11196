"""Wiring: builds the backends from a Config. Called by the daemon and
netctl at start, never at import time."""

from __future__ import annotations

import dataclasses

from .arp_proxy import ArpProxy
from .config import Config
from .dataplane.flows import Flows
from .dataplane.links import Links
from .dataplane.ratelimit import RateLimiter
from .dataplane.ovs import Switch
from .docker_api import DockerNames, DockerView
from .driver import Backends, Driver
from .ipam import Ipam
from .kv import EtcdKV
from .limit_sync import LimitSync
from .release import Releaser
from .store import Store


def make_store(cfg: Config) -> Store:
    kv = EtcdKV(cfg.etcd_endpoints, timeout=cfg.etcd_timeout, cacert=cfg.etcd_cacert, cert=cfg.etcd_cert,
                key=cfg.etcd_key, user=cfg.etcd_user, password=cfg.etcd_password)
    return Store(kv, cfg.etcd_prefix)


def make_switch(cfg: Config) -> Switch:
    """The OVSDB client; cfg.ovs_connect_timeout bounds opening the
    connection and its first dump of the database."""
    return Switch(cfg.ovsdb, cfg.ovs_timeout, connect_timeout=cfg.ovs_connect_timeout)


def reconcile_settings(cfg: Config) -> Config:
    """The settings a reconciler runs with: a new process's first OVSDB dump
    of a big database takes longer than a request of the daemon may wait."""
    return dataclasses.replace(cfg, ovs_connect_timeout=max(cfg.ovs_connect_timeout,
                                                            cfg.reconcile_ovs_connect_timeout))


def make_driver(cfg: Config) -> Driver:
    store = make_store(cfg)
    switch = make_switch(cfg)
    flows = Flows(cfg.bridge, cfg.ovs_timeout)
    limits = LimitSync(cfg, store, RateLimiter(switch, flows, cfg.rate_limit))
    arp = ArpProxy(cfg, store, switch, flows)
    return Driver(cfg, Backends(store=store, ipam=Ipam(store, cfg.host_id), links=Links(), switch=switch,
                                docker=DockerNames(cfg.docker_url, cfg.docker_timeout), limits=limits, flows=flows,
                                arp=arp))


def make_releaser(cfg: Config, driver: Driver) -> Releaser:
    return Releaser(cfg, driver.store, driver.links, driver.switch, DockerView(driver.docker),
                    remove_limit=driver.remove_limit)


def make_metrics(cfg: Config, store: Store):
    """The daemon's Prometheus metrics: its own, the gauges read from etcd at
    scrape time, and drctl's jobs and catalog (registered here, so that the
    daemon's modules never import backup)."""
    from .backup.exporter import BackupCollector
    from .metrics import Metrics
    metrics = Metrics()
    metrics.watch_store(store, cfg.host_id, lambda m: BackupCollector(store.kv, cfg.etcd_prefix, m))
    return metrics
