"""This host's bridge: made with its base OpenFlow pipeline on first use, made
again whenever it is gone, and compared with etcd at start-up."""

from __future__ import annotations

import logging
import threading

from .config import Config
from .dataplane.flows import Flows
from .dataplane.ovs import EXT_ENDPOINT, EXT_HOST, Switch
from .dataplane.tso import UserspaceTso
from .store import Store

log = logging.getLogger(__name__)


class Bridge:
    def __init__(self, cfg: Config, store: Store, switch: Switch, flows: Flows, tso: UserspaceTso | None = None):
        self.cfg = cfg
        self.store = store
        self.switch = switch
        self.flows = flows
        self.tso = tso
        self._ready = False
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Make the bridge and its base pipeline once, and again whenever the
        bridge is gone (an OVS database reset, someone's ovs-vsctl del-br):
        one lookup in the local OVSDB replica, far cheaper than failing every
        CreateEndpoint until a restart."""
        with self._lock:
            if self._ready and not self.switch.bridge_exists(self.cfg.bridge):
                log.warning("bridge %s disappeared from Open vSwitch: making it again", self.cfg.bridge)
                self._ready = False
            if not self._ready:
                if self.tso is not None:
                    self.tso.ensure()          # before any veth: it decides their offloads
                self.switch.ensure_bridge(self.cfg.bridge, self.cfg.datapath_type, self.cfg.uplink)
                self.flows.ensure_pipeline()
                self._ready = True

    def compare_with_store(self) -> dict:
        """Log how this host's OVS ports and its etcd endpoint records differ."""
        ports = {p["external_ids"].get(EXT_ENDPOINT): p["name"] for p in self.switch.list_ports(self.cfg.bridge)
                 if p["external_ids"].get(EXT_HOST) in (None, self.cfg.host_id)}
        records = {ep.id: ep.port for ep in self.store.list_host_endpoints(self.cfg.host_id)}
        diff = {"ports_without_record": sorted(ports[e] for e in set(ports) - set(records)),
                "records_without_port": sorted(e[:12] for e in set(records) - set(ports))}
        if diff["ports_without_record"] or diff["records_without_port"]:
            log.warning("OVS and etcd differ on host %s: %s (the reconciler repairs this)", self.cfg.host_id, diff)
        else:
            log.info("OVS and etcd agree on host %s: %d endpoints", self.cfg.host_id, len(records))
        return diff
