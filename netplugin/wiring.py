"""Wiring: the one place that builds netplugin's components from a Config.

The daemon, netctl, the reconciler and drctl build what they need here, at
start, never at import time; nothing here connects to anything (every client
connects on first use). Every component gets its collaborators through its
constructor and is never changed afterwards.

Who builds what:

* ``make_components`` (the daemon): the outside clients (etcd store, OVSDB
  switch, kernel links, OpenFlow flows, Docker) and metrics, then
  ``assemble``;
* ``assemble``: everything built over those clients; the unit tests call it
  with fakes, so they run the shape the daemon runs;
* ``make_reconciler`` (``netplugin-reconcile``, ``netctl reconcile``): only
  the store, links, switch, flows and limits a reconcile pass needs;
* ``make_store`` (netctl, drctl), ``make_switch`` and ``make_metrics``
  (the daemon's metrics, drctl's collector included).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import health, host_settings
from .arp_proxy import ArpProxy
from .background import Background
from .bridge import Bridge
from .config import Config
from .dataplane.flows import Flows
from .dataplane.links import Links
from .dataplane.ofchannel import rundir_of
from .dataplane.ovs import Switch
from .dataplane.ratelimit import RateLimiter
from .dataplane.tso import UserspaceTso
from .docker_api import DockerNames, DockerView
from .endpoints import Endpoints
from .hosts import HostHeartbeat
from .hostview import HostView
from .ipam import Ipam
from .kv import EtcdKV
from .limit_sync import LimitSync
from .naming import NetworkNamer
from .networks import Networks
from .ovs_restart import DataplaneRestorer
from .portpool import PortPool
from .reconcile import Reconciler
from .release import Releaser
from .store import Store

if TYPE_CHECKING:
    from .metrics import Metrics


@dataclasses.dataclass(frozen=True)
class Components:
    """Everything one daemon runs, built once by ``assemble``."""

    cfg: Config
    store: Store
    switch: Switch
    links: Links
    flows: Flows
    docker: DockerNames
    background: Background
    limits: LimitSync
    arp: ArpProxy
    restorer: DataplaneRestorer
    namer: NetworkNamer
    ipam: Ipam
    bridge: Bridge
    networks: Networks
    endpoints: Endpoints
    releaser: Releaser
    heartbeat: HostHeartbeat
    view: HostView
    health: Callable[[], dict]
    metrics: Metrics | None = None
    pool: PortPool | None = None


def make_store(cfg: Config) -> Store:
    kv = EtcdKV(cfg.etcd_endpoints, timeout=cfg.etcd_timeout, cacert=cfg.etcd_cacert, cert=cfg.etcd_cert,
                key=cfg.etcd_key, user=cfg.etcd_user, password=cfg.etcd_password,
                allow_plaintext_password=cfg.etcd_allow_plaintext_password)
    return Store(kv, cfg.etcd_prefix)


def make_switch(cfg: Config, snapshot_reads: bool = False) -> Switch:
    """The OVSDB client; cfg.ovs_connect_timeout bounds opening the
    connection and its first dump of the database. ``snapshot_reads`` for a
    process that reads the switch once (the reconciler): see Switch."""
    return Switch(cfg.ovsdb, cfg.ovs_timeout, connect_timeout=cfg.ovs_connect_timeout,
                  snapshot_reads=snapshot_reads)


def make_tso(cfg: Config) -> UserspaceTso:
    """Userspace TSO of a netdev datapath: the bridge turns it on, the links read it."""
    return UserspaceTso(cfg.ovsdb, cfg.datapath_type, cfg.userspace_tso, cfg.ovs_timeout)


def make_flows(cfg: Config) -> Flows:
    """OpenFlow on the bridge: one connection to vswitchd's management socket,
    in the run directory of the OVSDB socket."""
    return Flows(cfg.bridge, cfg.ovs_timeout, rundir_of(cfg.ovsdb))


def make_docker(cfg: Config) -> DockerNames:
    return DockerNames(cfg.docker_url, cfg.docker_timeout)


def make_limits(cfg: Config, store: Store, view: HostView, switch: Switch, flows: Flows, background: Background,
                metrics: Metrics | None = None) -> LimitSync:
    """Port limits; a port's flows go on the background thread when it has no meter."""
    return LimitSync(cfg, store, view, RateLimiter(switch, flows, cfg.rate_limit), metrics=metrics,
                     defer=background.later)


def reconcile_settings(cfg: Config) -> Config:
    """The settings a reconciler runs with: a new process's first OVSDB dump
    of a big database takes longer than a request of the daemon may wait."""
    return dataclasses.replace(cfg, ovs_connect_timeout=max(cfg.ovs_connect_timeout,
                                                            cfg.reconcile_ovs_connect_timeout))


def assemble(cfg: Config, store: Store, switch: Switch, links: Links, flows: Flows, docker: DockerNames,
             docker_view: DockerView | None, metrics: Metrics | None = None,
             rng: random.Random | None = None, view: HostView | None = None,
             tso: UserspaceTso | None = None) -> Components:
    """Build every component over the given outside clients (``view``: this
    host's view of etcd, when the metrics were built over it already)."""
    background = Background()
    view = view if view is not None else HostView(store, cfg.host_id)
    limits = make_limits(cfg, store, view, switch, flows, background, metrics)
    arp = ArpProxy(cfg, view, switch, flows)
    namer = NetworkNamer(cfg.host_id, store, docker)
    ipam = Ipam(store, cfg.host_id, rng=rng, namer=namer)
    bridge = Bridge(cfg, store, switch, flows, tso)
    networks = Networks(cfg, store, ipam, namer)
    pool = PortPool(cfg, store, switch, links, bridge) if cfg.port_pool_size > 0 else None
    return Components(
        cfg=cfg, store=store, switch=switch, links=links, flows=flows, docker=docker, background=background,
        limits=limits, arp=arp, restorer=DataplaneRestorer(cfg, flows, limits, arp), namer=namer, ipam=ipam,
        bridge=bridge, networks=networks,
        endpoints=Endpoints(cfg, store, links, switch, bridge, networks, limits, arp, background, pool),
        releaser=Releaser(cfg, store, view, links, switch, docker_view, limits),
        heartbeat=HostHeartbeat(cfg, store), view=view,
        health=functools.partial(health.check, store, switch, cfg.bridge, view), metrics=metrics, pool=pool)


def make_components(cfg: Config) -> Components:
    """The daemon's components, over the real etcd, Open vSwitch, kernel and Docker."""
    store = make_store(cfg)
    docker = make_docker(cfg)
    view = HostView(store, cfg.host_id)
    tso = make_tso(cfg)
    return assemble(cfg, store, make_switch(cfg), Links(tso), make_flows(cfg), docker, DockerView(docker),
                    metrics=make_metrics(cfg, store, view), view=view, tso=tso)


def make_reconciler(cfg: Config) -> Reconciler:
    """What one reconcile pass needs, and no more, with the settings the
    host's daemon published (host_settings.adopt: refused when they disagree)."""
    store = make_store(cfg)
    cfg = host_settings.adopt(cfg, store)
    switch, links, flows = make_switch(cfg, snapshot_reads=True), Links(make_tso(cfg)), make_flows(cfg)
    view = HostView(store, cfg.host_id)         # never started: a pass reads etcd afresh
    limits = make_limits(cfg, store, view, switch, flows, Background())
    docker_view = DockerView(make_docker(cfg))
    releaser = Releaser(cfg, store, view, links, switch, docker_view, limits)
    return Reconciler(cfg, store, links, switch, docker_view, releaser, limits)


def make_metrics(cfg: Config, store: Store, view: HostView):
    """The daemon's Prometheus metrics: its own, the gauges read from etcd at
    scrape time, its followers' re-reads of etcd, and drctl's jobs and
    catalog (registered here, so that the daemon's modules never import backup)."""
    from .backup.exporter import BackupCollector
    from .backup.store import BackupStore
    from .metrics import Metrics
    from .watch_metrics import WatchCollector
    metrics = Metrics()
    more: list = [lambda m: WatchCollector()]
    if cfg.backup_metrics:       # fleet-wide figures, O(jobs) a scrape: only where asked for
        more.insert(0, lambda m: BackupCollector(BackupStore.beside(store), m))
    metrics.watch_store(store, view, cfg.host_id, *more)
    return metrics
