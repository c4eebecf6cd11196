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
from .errors import NetpluginError
from .kv import Compare, Put
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
        self.stop = threading.Event()
        self.lease: int | None = None
        self.started = time.time()

    def record(self) -> Host:
        return Host(host=self.cfg.host_id, bridge=self.cfg.bridge, datapath_type=self.cfg.datapath_type,
                    uplink=self.cfg.uplink, version=__version__, started=self.started, last_seen=time.time())

    def beat(self) -> None:
        """One heartbeat: register under a new lease if needed; else refresh it
        and stamp this beat's time into the durable record, only while the
        leased record still exists (one transaction)."""
        if self.lease is None:
            self.lease = self.store.kv.grant_lease(LEASE_TTL)
            self.store.register_host(self.record(), self.lease)
            log.info("host %s registered", self.cfg.host_id)
            return
        self.store.kv.refresh_lease(self.lease)
        host_key = self.store.k_host(self.cfg.host_id)
        stamped = self.store.kv.txn([Compare(host_key, "create", "!=", 0)],
                                    [Put(self.store.k_hostinfo(self.cfg.host_id), self.record().to_json())],
                                    idempotent=True)
        if not stamped:                 # the lease ran out while etcd was away: the leased record is gone
            self.lease = None
            self.beat()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.beat()
            except NetpluginError as exc:
                log.warning("heartbeat: %s", exc.message)
                self.lease = None
            except Exception:  # noqa: BLE001
                log.exception("heartbeat failed")
                self.lease = None
            self.stop.wait(HEARTBEAT)

    def start(self) -> "HostHeartbeat":
        threading.Thread(target=self.run, name="heartbeat", daemon=True).start()
        return self
