"""This host in the registry: a record bound to a lease that the daemon keeps
alive, so other hosts and netctl can tell a live host from a dead one.

Every heartbeat stamps its time into the durable record (``hostinfo/<host>``,
``last_seen``), in the same transaction that checks the leased record is
still there: ``netctl host ls`` shows when a host last beat, alive or dead,
to within one heartbeat. Nothing watches ``hostinfo/``, so the write wakes no
one; it is one small transaction per host every HEARTBEAT seconds."""

from __future__ import annotations

import logging
import threading
import time

from . import __version__
from .config import Config
from .model import Host
from .store import Store

log = logging.getLogger(__name__)

LEASE_TTL = 15          # seconds without a heartbeat before a host counts as dead
HEARTBEAT = 5
LAST_SEEN_EVERY = HEARTBEAT     # the durable last_seen is stamped at every beat


class HostHeartbeat:
    def __init__(self, cfg: Config, store: Store):
        self.cfg = cfg
        self.store = store
        self.keeper = store.lease_keeper(LEASE_TTL, HEARTBEAT, "heartbeat", on_grant=self._register,
                                         proof=self._stamp, logger=log)
        self.stop: threading.Event = self.keeper.stopped
        self.started = time.time()

    @property
    def lease(self) -> int | None:
        return self.keeper.lease

    def record(self) -> Host:
        return Host(host=self.cfg.host_id, bridge=self.cfg.bridge, datapath_type=self.cfg.datapath_type,
                    uplink=self.cfg.uplink, version=__version__, started=self.started, last_seen=time.time())

    def _register(self, lease: int) -> None:
        self.store.register_host(self.record(), lease)
        log.info("host %s registered", self.cfg.host_id)

    def _stamp(self) -> bool:
        return self.store.stamp_host(self.record())

    def beat(self) -> None:
        """One heartbeat: register under a new lease if needed; else refresh it
        and stamp this beat's time into the durable record, only while the
        leased record still exists (one transaction); register again under a
        new lease when it does not (the lease ran out while etcd was away)."""
        self.keeper.beat()

    def start(self) -> HostHeartbeat:
        self.keeper.every = HEARTBEAT
        self.keeper.start(at_once=True)
        return self
