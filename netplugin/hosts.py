"""This host in the registry: the daemon claims its host id in etcd and
keeps the claim alive on a lease, so that two daemons never act as one host
and other hosts and netctl can tell a live host from a dead one.

The claim (``Store.claim_host``) is a create-if-absent transaction on the
lease, carrying the instance (identity.py: boot id, a random token, pid,
start time) and the settings a reconciler of this host must share. A claim
held by an earlier instance of this machine that no longer runs (kill -9 and
a restart within the lease's TTL) is taken back at once; one held by a
live instance, here or elsewhere, is not. At start a refused claim is tried
again for LEASE_TTL + HEARTBEAT seconds (a holder that just died lets its
lease lapse meanwhile), then ``refused`` is set with the reason. When the
lease is lost later, the next beat claims again; if another instance holds
the id by then, ``refused`` is set at once and ``claimed`` cleared: the
daemon stops (daemon.py).

Every heartbeat renews the lease, and etcd's answer (its TTL, 0 once the
lease is gone) says whether the claim still stands. Every LAST_SEEN_EVERY
seconds a beat also stamps its time into the durable record
(``hostinfo/<host>``, ``last_seen``), only while ``hosts/<host>`` still holds
this instance's claim (one transaction): ``netctl host ls`` shows when a dead
host was last seen, to the minute. Stamping at every beat made each idle
host a raft write every 5 s: 200 writes a second, each fsynced on every
member, for 1,000 hosts doing nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from . import __version__
from .config import Config
from .errors import Conflict, NetpluginError
from .identity import PUBLISHED, Instance, Registration, may_take, refusal, this_instance
from .store import Store

log = logging.getLogger(__name__)

LEASE_TTL = 15          # seconds without a heartbeat before a host counts as dead
HEARTBEAT = 5
LAST_SEEN_EVERY = 60.0          # seconds between stamps of the durable last_seen (and checks of the claim)
WAIT_PREVIOUS = LEASE_TTL + HEARTBEAT


class HostIdTaken(Conflict):
    """Another live instance holds this host id."""


class HostHeartbeat:
    def __init__(self, cfg: Config, store: Store, instance: Instance | None = None,
                 wait_previous: float = WAIT_PREVIOUS):
        self.cfg = cfg
        self.store = store
        self.instance = instance or this_instance(f"unix:{cfg.socket}", started=time.time())
        self.wait_previous = wait_previous
        self.keeper = store.lease_keeper(LEASE_TTL, HEARTBEAT, "heartbeat", on_grant=self._claim,
                                         proof=self._stamp, logger=log, proof_every=LAST_SEEN_EVERY)
        self.stop: threading.Event = self.keeper.stopped
        self.started = self.instance.started
        self.claimed = threading.Event()      # set while this instance holds the host id
        self.refused = threading.Event()      # set once it may not act as this host
        self.reason = ""                      # why it may not
        self.last_error = ""                  # why the last beat failed (etcd away)
        self.waiting = ""                     # who holds the id while this one waits for it to lapse
        self._claimed_json: str | None = None
        self._first_refusal: float | None = None
        self._ever_claimed = False

    @property
    def lease(self) -> int | None:
        return self.keeper.lease

    def registration(self) -> Registration:
        return Registration(host=self.cfg.host_id, instance=self.instance,
                            settings={name: getattr(self.cfg, name) for name in PUBLISHED},
                            version=__version__, last_seen=time.time())

    def _claim(self, lease: int) -> None:
        reg = self.registration()
        ok, holder = self.store.claim_host(reg, lease, lambda found: may_take(found, self.instance))
        if not ok:
            raise HostIdTaken(refusal("a netplugin daemon", self.cfg.host_id, holder,
                                      "--host-id, NETPLUGIN_HOST_ID or host_id in the settings file"))
        self._claimed_json = reg.to_json()
        self._ever_claimed = True
        self._first_refusal = None
        self.waiting = ""
        self.claimed.set()
        log.info("host %s claimed (pid %d, boot id %s)", self.cfg.host_id, self.instance.pid, self.instance.boot_id)

    def _stamp(self) -> bool:
        if self._claimed_json is None:
            return False
        return self.store.stamp_claim(self.registration(), self._claimed_json)

    def beat(self) -> bool:
        """One heartbeat: claim under a new lease if needed; else refresh it
        and stamp this beat's time, only while the claim is still ours; claim
        again under a new lease when it is not. False once refused."""
        try:
            self.keeper.beat()
            self.last_error = ""
        except HostIdTaken as exc:
            self._give_back()
            now = time.monotonic()
            if self._first_refusal is None:
                self._first_refusal = now
            if not self._ever_claimed and now - self._first_refusal < self.wait_previous:
                self.waiting = exc.message
                log.warning("host id %s is held: waiting up to %.0f s for its lease to lapse: %s",
                            self.cfg.host_id, self.wait_previous, exc.message)
                return True
            self.reason = exc.message
            self.claimed.clear()
            self.refused.set()
            log.error("%s", exc.message)
            return False
        except NetpluginError as exc:      # etcd away: the keeper logs it and tries again
            self.last_error = exc.message
            raise
        return True

    def _give_back(self) -> None:
        """The lease granted for a refused claim holds nothing: revoke it."""
        try:
            self.keeper.revoke()
        except NetpluginError:
            self.keeper.drop()

    def start(self) -> HostHeartbeat:
        self.keeper.every = HEARTBEAT
        self.keeper.start(beat=self.beat, at_once=True)
        return self
