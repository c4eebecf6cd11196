"""A warm pool of veth pairs, already made and already on the switch, so that
CreateEndpoint takes one instead of making a pair and waiting for
ovs-vswitchd to open a new port (as kuryr-kubernetes pools Neutron ports).

A pooled pair (``npp``/``ncp`` + 10 random hex digits) can carry nothing
until it is claimed, by two locks that hold on their own:

* its host end is made *down*, and stays down until the claim: the kernel
  drops every frame the container end sends (a veth delivers only to an end
  that is up), before the port is ever on the bridge;
* its OVS port is added *parked*, in the transaction that adds it: a trunk of
  VLAN 4095 alone (``np-pool=1``), so ovs-vswitchd drops untagged frames and
  every real VLAN; and one flow at the top of table 0, part of the base
  pipeline (``Flows.ensure_pipeline``, put back with it whenever the bridge is
  made or ovs-vswitchd restarts), drops VLAN 4095 from any port. The pool
  makes sure the bridge is ready (``Bridge.ensure``) before each pair.

A drop flow per port was not chosen: it needs the port's OpenFlow number,
which exists only once the port is on the bridge, and taking it away would
cost CreateEndpoint an ``ovs-ofctl`` run. A parking VLAN alone was not
chosen either: ovs-vswitchd floods an access port's VLAN to every trunk
(the uplink, the bridge's own port).

A claim is one OVSDB transaction (the VLAN tag, access mode and external ids;
the parking goes, guarded by the port still being parked) and one netlink
round (the container end's MAC, the host end's alias and up). If any step
fails the pair is destroyed: never half configured, never back in the pool.

The filler keeps the pool at its size, one pair at a time, only while no
endpoint call is in flight and none came in the last QUIET seconds. At start
it adopts the parked pairs a previous run left and removes broken ones; a
pool name that an endpoint record names is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .bridge import Bridge
from .config import Config
from .dataplane.links import POOL_HOST_RE, POOL_PREFIX, Links, peer_of, pool_names
from .dataplane.ovs import EXT_HOST, PARK_VLAN, Switch
from .errors import NetpluginError
from .store import Store

log = logging.getLogger(__name__)

QUIET = 0.1           # seconds without an endpoint call before the filler makes a pair
RETRY_EVERY = 5.0     # seconds before the filler tries again after a failure


@dataclass(frozen=True)
class Pair:
    host: str         # host end, the OVS port
    peer: str         # container end


class PortPool:
    def __init__(self, cfg: Config, store: Store, switch: Switch, links: Links, bridge: Bridge,
                 rng: random.Random | None = None):
        self.cfg = cfg
        self.store = store
        self.switch = switch
        self.links = links
        self.bridge = bridge
        self.size = cfg.port_pool_size
        self._rng = rng or random.SystemRandom()
        self._ready: list[Pair] = []
        self._lock = threading.Condition()
        self._busy = 0
        self._last_call = 0.0
        self._adopted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"taken": 0, "empty": 0, "made": 0, "failed": 0, "adopted": 0, "removed": 0,
                       "claim_failed": 0}

    # -- the request side -----------------------------------------------------------
    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Marks an endpoint call in flight: the filler waits until none is."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._last_call = time.monotonic()
                self._lock.notify_all()

    def take(self) -> Pair | None:
        """A parked pair, or None when the pool is empty (or off). A pair whose
        port or veth is gone (the bridge was made again, someone deleted it) is
        removed and the next one taken: two lookups, the port's in the local
        OVSDB replica."""
        while True:
            with self._lock:
                if not self._ready:
                    self.counts["empty"] += self.size > 0
                    return None
                pair = self._ready.pop(0)
                self._lock.notify_all()
            if self.switch.port_exists(pair.host) and self.links.exists(pair.peer):
                with self._lock:
                    self.counts["taken"] += 1
                return pair
            log.warning("port pool: pair %s lost its port or veth: removed", pair.host)
            self.discard(pair)

    def give_back(self, pair: Pair) -> None:
        """A pair taken but never touched (its endpoint's record was refused)."""
        with self._lock:
            self._ready.insert(0, pair)

    def discard(self, pair: Pair) -> None:
        """A pair taken whose fate is unknown (its endpoint's record may name it): removed."""
        self.counts["removed"] += 1
        self._destroy(pair.host)

    def claim(self, pair: Pair, endpoint_id: str, vlan: int, external_ids: dict[str, str], mac: str) -> int:
        """Make the pair the endpoint's: all or nothing. Returns the OVS
        configuration number to wait for (Switch.wait_applied) before traffic."""
        try:
            applied_at = self.switch.claim_port(pair.host, vlan, external_ids)
            self.links.activate(pair.host, pair.peer, mac, endpoint_id)
            return applied_at
        except Exception:
            self.counts["claim_failed"] += 1
            self._destroy(pair.host)
            raise

    def ready(self) -> int:
        with self._lock:
            return len(self._ready)

    # -- the filler -------------------------------------------------------------------
    def start(self) -> None:
        if self.size <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="port-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._wait_for_turn():
                return
            try:
                if not self._adopted:
                    self.adopt()
                else:
                    self.fill_once()
            except NetpluginError as exc:
                log.warning("port pool: %s; trying again in %.0f s", exc.message, RETRY_EVERY)
                self._stop.wait(RETRY_EVERY)
            except Exception:
                log.exception("port pool: unexpected failure; trying again in %.0f s", RETRY_EVERY)
                self._stop.wait(RETRY_EVERY)

    def _wait_for_turn(self) -> bool:
        """Until the pool is short, no endpoint call is in flight and none came
        in the last QUIET seconds; False once stopped."""
        with self._lock:
            while not self._stop.is_set():
                quiet_for = time.monotonic() - self._last_call
                if self._busy or (self._adopted and len(self._ready) >= self.size):
                    self._lock.wait()
                elif quiet_for < QUIET:
                    self._lock.wait(QUIET - quiet_for)
                else:
                    return True
        return False

    def fill_once(self) -> Pair | None:
        """Make one parked pair, if the pool is short of its size."""
        with self._lock:
            if len(self._ready) >= self.size:
                return None
        self.bridge.ensure()
        host, peer = pool_names(f"{self._rng.getrandbits(40):010x}")
        mac = ":".join(["02", *(f"{self._rng.getrandbits(8):02x}" for _ in range(5))])
        try:
            self.links.create_veth(host, peer, self.cfg.mtu, mac, self.cfg.datapath_type == "netdev", host_up=False)
            self.switch.add_parked_port(self.cfg.bridge, host, {EXT_HOST: self.cfg.host_id})
        except Exception:
            self.counts["failed"] += 1
            self._destroy(host)
            raise
        pair = Pair(host, peer)
        with self._lock:
            self._ready.append(pair)
            self.counts["made"] += 1
        return pair

    def adopt(self) -> dict:
        """Keep the valid parked pairs a previous run left (up to the size) and
        remove the broken ones. A pool name an endpoint record of this host names
        belongs to that endpoint, and a host end whose container end is gone
        (moved into a container) to the reconciler: neither is touched."""
        self.bridge.ensure()
        named = {ep.port for ep in self.store.list_host_endpoints(self.cfg.host_id)}
        parked = {p["name"]: p for p in self.switch.list_pool_ports(self.cfg.bridge)}
        kept: list[Pair] = []
        removed: list[str] = []
        for name in self.links.list_names(POOL_PREFIX):
            if not POOL_HOST_RE.fullmatch(name) or name in named:
                continue
            if name not in parked:
                # Not parked on this bridge: another daemon's pair on the same host
                # (its own bridge), one it is making or claiming right now, or a
                # veth whose port never came. Never this daemon's to remove.
                continue
            peer = peer_of(name)
            if not self.links.exists(peer):
                continue
            if self._valid(name, parked.get(name)) and len(kept) < self.size:
                kept.append(Pair(name, peer))
            else:
                removed.append(name)
        for name in sorted(set(parked) - {p.host for p in kept} - named):
            if POOL_HOST_RE.fullmatch(name) and name not in removed:
                removed.append(name)
        for name in removed:
            self._destroy(name)
        with self._lock:
            self._ready = kept + [p for p in self._ready if p not in kept]
            self._adopted = True
            self.counts["adopted"] += len(kept)
            self.counts["removed"] += len(removed)
        if kept or removed:
            log.info("port pool: adopted %d parked pair(s), removed %d broken one(s)", len(kept), len(removed))
        return {"adopted": [p.host for p in kept], "removed": removed}

    def _valid(self, name: str, port: dict | None) -> bool:
        """Parked exactly as add_parked_port leaves it, and its host end down."""
        return (port is not None and port["external_ids"].get(EXT_HOST) == self.cfg.host_id
                and port["vlan_mode"] == "trunk" and port["trunks"] == [PARK_VLAN] and port["tag"] in (None, [])
                and self.links.is_up(name) is False)

    def _destroy(self, host: str) -> None:
        """Remove a pair's port and veth, whatever is left of them."""
        for step, fn in (("OVS port", lambda: self.switch.delete_port(host)),
                         ("veth", lambda: self.links.delete(host))):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the rest is removed; adopt() removes it at the next start
                log.error("port pool: could not remove the %s of %s: %s", step, host, exc)
