"""Wiring: builds the backends from a Config. Called by the daemon and
netctl at start, never at import time."""

from __future__ import annotations

from .config import Config
from .dataplane.links import Links
from .dataplane.ovs import Switch
from .docker_api import DockerNames, DockerView
from .driver import Backends, Driver
from .ipam import Ipam
from .kv import EtcdKV
from .release import Releaser
from .store import Store


def make_store(cfg: Config) -> Store:
    kv = EtcdKV(cfg.etcd_endpoints, timeout=cfg.etcd_timeout, cacert=cfg.etcd_cacert, cert=cfg.etcd_cert,
                key=cfg.etcd_key, user=cfg.etcd_user, password=cfg.etcd_password)
    return Store(kv, cfg.etcd_prefix)


def make_driver(cfg: Config) -> Driver:
    store = make_store(cfg)
    return Driver(cfg, Backends(store=store, ipam=Ipam(store, cfg.host_id), links=Links(),
                                switch=Switch(cfg.ovsdb, cfg.ovs_timeout),
                                docker=DockerNames(cfg.docker_url, cfg.docker_timeout)))


def make_releaser(cfg: Config, driver: Driver) -> Releaser:
    return Releaser(cfg, driver.store, driver.links, driver.switch, DockerView(driver.docker))
