"""Putting the OpenFlow state back at once when Open vSwitch restarts.

OVSDB keeps bridges and ports across a restart of ovs-vswitchd (and of
ovsdb-server: the database is a file), and ports keep their OpenFlow numbers;
but flows and meters live only in vswitchd and are gone. Until they are back,
no rate limit is enforced and the ARP proxy does not answer (traffic itself
goes on: a bridge with no flows switches normally). The sync loops of
``limit_sync.py`` and ``arp_proxy.py`` put everything back on their next full
pass, which can be 10 s away; this watcher notices the restart within a second
and runs both passes at once.

A restart is noticed two ways:

* the pid in ``ovs-vswitchd.pid`` (next to the OVSDB socket) changed: vswitchd
  was restarted, by hand, by its monitor or by the service manager (a file
  read, every second);
* table 10 holds no flow at all (one aggregate request over the daemon's
  OpenFlow connection, every second), while the pipeline always keeps its
  table-miss flow there: the flows were lost (a restart whose pid file cannot
  be read, ``ovs-ofctl del-flows``, the bridge deleted and made again).

Then it puts back, from etcd, in this order: the table-miss flows, every local
port's table-0 flow with its meter (``LimitSync.resync(verify=True)``), and the
ARP answers (``ArpProxy.resync(full=True)``); until all three succeed it tries again
every second. Nothing here holds state that traffic depends on: with the
daemon down, the periodic passes of the next daemon do the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .arp_proxy import ArpProxy
from .config import Config
from .dataplane.flows import TABLE_ARP, Flows
from .errors import NetpluginError
from .limit_sync import LimitSync

log = logging.getLogger(__name__)

POLL_EVERY = 1.0
FLOWS_CHECK_EVERY = 1     # polls between two looks at table 10 (one aggregate request: cheap)


def vswitchd_pidfile(ovsdb: str) -> str | None:
    """``/var/run/openvswitch/ovs-vswitchd.pid`` for ``unix:/var/run/openvswitch/db.sock``."""
    if not ovsdb.startswith("unix:"):
        return None                    # OVSDB over TCP: vswitchd may be on another machine's view
    return os.path.join(os.path.dirname(ovsdb[len("unix:"):]) or "/", "ovs-vswitchd.pid")


class DataplaneRestorer:
    def __init__(self, cfg: Config, flows: Flows, limits: LimitSync, arp: ArpProxy, period: float = POLL_EVERY):
        self.cfg = cfg
        self.flows = flows
        self.limits = limits
        self.arp = arp
        self.period = period
        self.pidfile = vswitchd_pidfile(cfg.ovsdb)
        self.restores = 0               # completed restores (metrics, tests)
        self.last_restore_seconds: float | None = None
        self._stop = threading.Event()
        self._pid: str | None = None
        self._polls = -1                 # the first poll looks at the flows too

    # -- signals -------------------------------------------------------------------------
    def vswitchd_pid(self) -> str | None:
        if not self.pidfile:
            return None
        try:
            with open(self.pidfile) as fh:
                return fh.read().strip() or None
        except OSError:
            return None

    def pipeline_lost(self) -> bool | None:
        """True when table 10 of the bridge holds no flow; None when that cannot
        be known now (no bridge yet, vswitchd not answering). One aggregate
        request over the daemon's OpenFlow connection, which a restarted
        vswitchd closed: this also connects it again."""
        try:
            return self.flows.count(TABLE_ARP, ours=False) == 0
        except NetpluginError:
            return None

    # -- the work ------------------------------------------------------------------------
    def restore(self) -> None:
        """Table-miss flows, local ports' flows and meters, ARP answers; raises
        NetpluginError when OVS or etcd does not answer yet."""
        self.flows.ensure_pipeline()
        self.limits.resync(verify=True)
        self.arp.resync(full=True)        # read the table: the proxy's own memory of it is stale

    def check_once(self) -> bool:
        """One look; restores when needed. True when it restored."""
        pid = self.vswitchd_pid()
        restarted = pid is not None and self._pid is not None and pid != self._pid
        if pid is not None:
            self._pid = pid
        self._polls += 1
        if not restarted and (self._polls % FLOWS_CHECK_EVERY or not self.pipeline_lost()):
            return False
        why = f"ovs-vswitchd restarted (pid {pid})" if restarted else f"the flows of bridge {self.cfg.bridge} are gone"
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                self.restore()
                break
            except NetpluginError as exc:
                log.warning("%s; restoring flows and meters waits: %s", why, exc.message)
                self._stop.wait(self.period)
        else:
            return False
        self.restores += 1
        self.last_restore_seconds = time.monotonic() - started
        log.info("%s: flows and meters of bridge %s put back from etcd in %.2f s", why, self.cfg.bridge,
                 self.last_restore_seconds)
        return True

    def run(self) -> None:
        self._pid = self.vswitchd_pid()
        while not self._stop.wait(self.period):
            try:
                self.check_once()
            except Exception:
                log.exception("dataplane restore check failed")

    def start(self) -> DataplaneRestorer:
        threading.Thread(target=self.run, name="dataplane-restore", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
