"""Keeps every local port's limit equal to what etcd says, live.

It reads this host's view of etcd (hostview.py: profiles, networks and the
endpoints of its networks, kept by watches); any change that can alter a
local endpoint's limit wakes one worker, which recomputes the limit of every
endpoint of this host from the view and applies what differs.
A daemon restart starts with a full pass, so every limit is applied again;
a periodic pass also puts back what someone changed in OVS by hand.
"""

from __future__ import annotations

import logging
import threading
import time

from .bandwidth import effective_limit
from .config import Config
from .dataplane.flows import TABLE_CLASSIFY, cookie_for
from .dataplane.ratelimit import RateLimiter
from .errors import DataplaneError, NetpluginError, StoreUnavailable
from .hostview import HostView
from .model import Endpoint, Network
from .store import Store
from .watch import SyncLoop

log = logging.getLogger(__name__)

GONE_MEMORY = 120.0      # seconds a deleted endpoint stays barred from being limited again
FULL_PASS_EVERY = 10.0   # bounds how long an OVS restart leaves ports without limits
PORT_WAIT = 2.0          # seconds CreateEndpoint waits for a limited port's OpenFlow number
PENDING_RETRY = 0.1      # a port without an OpenFlow number yet is tried again this soon ...
PENDING_PATIENCE = 5.0   # ... for this long; after that the periodic full pass takes over
VIEW_PATIENCE = 5.0      # seconds a pass waits for the view's first reads (never a pass on half a view)
_UNKNOWN = object()      # no limit recorded for the endpoint yet


class LimitSync:
    def __init__(self, cfg: Config, store: Store, view: HostView, limiter: RateLimiter, metrics=None,
                 defer=None):
        """``store``: fresh reads where a decision cannot wait for the view
        (CreateEndpoint's limit, a meter about to be deleted). ``metrics``:
        counts limits applied (None: not counted). ``defer(fn, *args)``: runs a
        port's flow deletion after the caller's answer (None: at once)."""
        self.cfg = cfg
        self.store = store
        self.view = view
        self.limiter = limiter
        self.metrics = metrics
        self.defer = defer
        self.applied: dict[str, tuple[int, int] | None] = {}
        self._gone: dict[str, float] = {}
        self._pending: dict[str, float] = {}      # endpoint id -> when its port was first not ready
        self._stray_meters: set[int] = set()      # meters no local limited port used at the last full pass
        self._had_local = False                   # the bridge exists once a local endpoint was seen
        self._loop: SyncLoop | None = None
        self._record_lock = threading.Lock()      # applied and _gone, with the count

    def limit_of(self, ep: Endpoint, net: Network | None = None) -> tuple[int, int] | None:
        """The endpoint's limit; profiles are read only when one is named."""
        net = net if net is not None else self.store.get_network(ep.network)
        own = ep.limit or {}
        if not own.get("rate_kbps") and not own.get("profile") and not (net and net.profile):
            return None
        return effective_limit(ep, net, self.store.list_profiles())

    def apply_endpoint(self, ep: Endpoint, net: Network | None = None) -> None:
        """Called by CreateEndpoint, after the port was added.

        A port with a limit gets its meter and flow now, so the limit holds
        from the first packet. A port without one needs only its table-0 flow
        (which tells the ARP proxy the port's VLAN): the sync loop, already
        woken by this endpoint's new record, adds it moments later, off
        Docker's path; until then the port's ARP is switched normally."""
        with self._record_lock:
            self._gone.pop(ep.id, None)
        limit = self.limit_of(ep, net)
        if limit is None:
            return
        if not self.limiter.apply(ep.id, ep.port, ep.vlan, limit, wait_port=PORT_WAIT,
                                  wanted=lambda: ep.id not in self._gone):
            raise DataplaneError(f"Open vSwitch gave port {ep.port} no OpenFlow port number within {PORT_WAIT:.0f} s, "
                                 "so its bandwidth limit cannot be applied: check ovs-vswitchd, then retry")
        self._record(ep.id, limit)

    def _record(self, endpoint_id: str, limit: tuple[int, int] | None, repair: bool = False) -> bool:
        """Remember the limit a port has now, and count it once.

        CreateEndpoint and a pass woken by the endpoint's new record can both
        set the same limit on the same port, one after the other (the apply
        lock orders them): the second finds it recorded already and is not
        counted again. A repair (the bridge lost what was recorded) is counted.
        Nothing is recorded for an endpoint that is going."""
        with self._record_lock:
            if endpoint_id in self._gone:
                return False
            before = self.applied.get(endpoint_id, _UNKNOWN)
            self.applied[endpoint_id] = limit
        counted = repair or before != limit
        if counted and self.metrics is not None:
            self.metrics.limits_applied.inc()
        return counted

    def forget(self, endpoint_id: str) -> None:
        """The endpoint is going: no pass may set its flow or meter again."""
        now = time.monotonic()
        with self._record_lock:
            self.applied.pop(endpoint_id, None)
            self._gone[endpoint_id] = now
            for old in [e for e, t in self._gone.items() if now - t > GONE_MEMORY]:
                del self._gone[old]

    def remove(self, endpoint_id: str, port: str) -> None:
        """A port is going: its meter, flows and policing go before the port itself."""
        self.forget(endpoint_id)            # first: no pass may re-add them
        self.limiter.remove(endpoint_id, port, defer=self.defer)

    def resync(self, verify: bool = False) -> int:
        """Apply every local endpoint's limit that changed; returns how many were applied."""
        if not self.view.ready(VIEW_PATIENCE):
            raise StoreUnavailable("the limit sync waits for its first read of etcd")
        networks = self.view.network_map()
        profiles = self.view.profile_map()
        local = self.view.local_endpoints()
        actual = flows_present = None
        self._had_local = self._had_local or bool(local)
        if verify and self._had_local:
            # A full pass also compares with the bridge: an OVS restart drops
            # every flow and meter, and someone may have edited them by hand.
            self.limiter.flows.ensure_pipeline()
            actual = self.limiter.applied()
            flows_present = self.limiter.flows.cookies(TABLE_CLASSIFY)
        if flows_present is not None:
            # Flows of endpoints that are no longer here (deleted while a pass ran).
            keep = {cookie_for(ep.id) for ep in local if ep.id not in self._gone}
            self.limiter.flows.delete_cookies(sorted(flows_present - keep))
        changed = 0
        for ep in local:
            if ep.id in self._gone:
                continue
            want = effective_limit(ep, networks.get(ep.network), profiles)
            have = self.applied.get(ep.id, "unknown")
            if flows_present is not None and cookie_for(ep.id) not in flows_present:
                have = "drifted"
            elif actual is not None and want is not None and self.limiter.method == "meter":
                ofport = self.limiter.switch.ofport(ep.port)
                got = actual.get(ofport or -1)
                if not got or (got["rate_kbps"], got["burst_kb"]) != want:
                    have = "drifted"
            if have == want:
                continue
            try:
                if not self.limiter.apply(ep.id, ep.port, ep.vlan, want, wanted=lambda e=ep.id: e not in self._gone):
                    self._pending.setdefault(ep.id, time.monotonic())   # ovs-vswitchd has not taken it in yet
                    continue
                self._pending.pop(ep.id, None)
                if not self._record(ep.id, want, repair=have == "drifted"):
                    continue                 # set meanwhile by CreateEndpoint, or the endpoint is going
                changed += 1
                log.info("limit of endpoint %s (%s) is now %s", ep.id[:12], ep.ip,
                         f"{want[0]} kbit/s, burst {want[1]} kbit" if want else "none")
            except NetpluginError as exc:
                log.warning("cannot apply the limit of endpoint %s: %s", ep.id[:12], exc.message)
        if actual is not None and self.limiter.method == "meter":
            self._delete_stray_meters(set(actual), local, networks, profiles)
        here = {ep.id for ep in local}
        for gone in set(self.applied) - here:
            self.applied.pop(gone, None)
        self._retry_pending(here)
        if self.metrics is not None:
            self.metrics.limited_ports.set(sum(1 for v in self.applied.values() if v))
        return changed

    def _delete_stray_meters(self, meters: set[int], local: list[Endpoint], networks, profiles) -> None:
        """Meters that no local limited port uses, two full passes in a row: a
        deletion that raced a pass can leave one behind. Before deleting, the
        endpoints are read again under the apply lock, so a port made since the
        listing that was given one of these ids keeps it."""
        def used_by(endpoints: list[Endpoint]) -> set[int]:
            used = set()
            for ep in endpoints:
                if ep.id not in self._gone and effective_limit(ep, networks.get(ep.network), profiles):
                    ofport = self.limiter.switch.ofport(ep.port)
                    if ofport is not None:
                        used.add(ofport)
            return used

        stray = meters - used_by(local)
        confirm = stray & self._stray_meters
        self._stray_meters = stray - confirm
        if confirm:
            gone = self.limiter.delete_meters(confirm, lambda: used_by(
                self.store.list_host_endpoints(self.cfg.host_id)))
            if gone:
                log.warning("deleted meters %s: no local port with a limit uses them", gone)

    def _retry_pending(self, here: set[str]) -> None:
        """Ports just added wait a moment for their OpenFlow number: pass again soon."""
        now = time.monotonic()
        for eid in [e for e, t in self._pending.items() if e not in here or now - t > PENDING_PATIENCE]:
            del self._pending[eid]
        if self._pending and self._loop is not None:
            timer = threading.Timer(PENDING_RETRY, self._loop.wake)
            timer.daemon = True
            timer.start()

    # -- following etcd -------------------------------------------------------------
    def _on_endpoint(self, key: str, old: Endpoint | None, new: Endpoint | None) -> None:
        if self._loop is not None and any(ep is not None and ep.host == self.cfg.host_id for ep in (old, new)):
            self._loop.wake()

    def start(self) -> LimitSync:
        def one_pass(full: bool) -> None:
            self.resync(verify=full)
        self._loop = SyncLoop("limit-sync", one_pass, FULL_PASS_EVERY)
        self.view.on("profiles", self._loop.wake)
        self.view.on("networks", self._loop.wake)
        self.view.on("endpoints", self._on_endpoint)
        self._loop.start()
        return self

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
