"""What one host follows in etcd, held in memory: its per-host interest.

A host receives and holds only what it acts on:

* its own bindings (``bindings/<host>/``), which say which networks it has bound;
* the endpoints of those networks only (one cache per bound network, opened
  when the first binding to it appears and closed with the last), so a host
  with nothing on a network receives no byte when that network's endpoints
  change;
* the networks and profiles (a few records each, changed by operators), and
  the cluster settings;
* its own release requests;
* the old layout's endpoints (``endpoints/<id>``), empty once every host has
  migrated, filtered to the bound networks.

The ARP proxy, the limit sync, the releaser, the metrics and ``/health`` read
this view, never etcd. Each cache is a list-and-watch (cache.py); listeners
subscribe to a topic before ``start`` and are told every change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .cache import Cache
from .model import Binding, Endpoint, Network, Profile
from .store import Store

log = logging.getLogger(__name__)

TOPICS = ("endpoints", "networks", "profiles", "settings", "releases")
Listener = Callable[[str, Any, Any], None]      # (key, old record or None, new record or None)


class HostView:
    def __init__(self, store: Store, host_id: str):
        self.store = store
        self.host = host_id
        self._listeners: dict[str, list[Listener]] = {topic: [] for topic in TOPICS}
        self._lock = threading.RLock()           # the set of member caches
        self._members: dict[str, Cache[Endpoint]] = {}
        self._started = False
        self.networks: Cache[Network] = store.cache_networks(self._teller("networks"))
        self.profiles: Cache[Profile] = store.cache_profiles(self._teller("profiles"))
        self.settings: Cache[str] = store.cache_settings(self._teller("settings"))
        self.releases: Cache[tuple[str, dict]] = store.cache_release_requests(host_id, self._teller("releases"))
        self.legacy: Cache[Endpoint] = store.cache_legacy_endpoints(self._on_legacy)
        self.bindings: Cache[Binding] = store.cache_bindings(host_id, self._on_binding)

    # -- subscribing -------------------------------------------------------------------
    def on(self, topic: str, listener: Listener) -> None:
        """Tell listener every change of topic (subscribe before start)."""
        self._listeners[topic].append(listener)

    def _teller(self, topic: str) -> Listener:
        def tell(key: str, old: Any, new: Any) -> None:
            for listener in self._listeners[topic]:
                try:
                    listener(key, old, new)
                except Exception:  # one listener's bug must not stop the cache
                    log.exception("a %s listener failed", topic)
        return tell

    # -- following -----------------------------------------------------------------------
    def _base(self) -> list[Cache[Any]]:
        return [self.networks, self.profiles, self.settings, self.releases, self.legacy, self.bindings]

    def caches(self) -> list[Cache[Any]]:
        """Every cache this view holds now."""
        with self._lock:
            return [*self._base(), *self._members.values()]

    def in_step(self) -> bool:
        """Whether every cache equals a fresh read of etcd, and one is open for
        each bound network (a full read of each prefix: for tests and tools)."""
        caches = self.caches()
        if set(self._members) != self.bound():
            return False
        return all(cache.matches(self.store.kv.get_prefix(cache.prefix)) for cache in caches)

    def start(self) -> HostView:
        self._started = True
        for cache in self._base():
            cache.start()
        return self

    def close(self) -> None:
        with self._lock:
            members = list(self._members.values())
            self._members.clear()
        for cache in [*self._base(), *members]:
            cache.close()

    def bound(self) -> set[str]:
        """The ids of the networks this host has bound."""
        return {b.network for b in self.bindings.values()}

    def _on_binding(self, key: str, old: Binding | None, new: Binding | None) -> None:
        wanted = self.bound()
        with self._lock:
            opened = [net for net in wanted if net not in self._members]
            closed = [net for net in self._members if net not in wanted]
            for net in opened:
                self._members[net] = self.store.cache_network_endpoints(net, self._on_member).start()
            gone = [self._members.pop(net) for net in closed]
        for cache in gone:
            cache.close()
            tell = self._teller("endpoints")
            for member_key, ep in cache.items().items():
                tell(member_key, ep, None)
        for member_key, ep in self.legacy.items().items():     # old-layout records of a network just (un)bound
            if ep.network in opened:
                self._teller("endpoints")(member_key, None, ep)
            elif ep.network in closed:
                self._teller("endpoints")(member_key, ep, None)
        if opened or closed:
            log.info("following the endpoints of %d network(s): %s", len(wanted), ", ".join(sorted(wanted)) or "none")

    def _on_member(self, key: str, old: Endpoint | None, new: Endpoint | None) -> None:
        self._teller("endpoints")(key, old, new)

    def _on_legacy(self, key: str, old: Endpoint | None, new: Endpoint | None) -> None:
        bound = self.bound()
        old = old if old is not None and old.network in bound else None
        new = new if new is not None and new.network in bound else None
        if old is not None or new is not None:
            self._teller("endpoints")(key, old, new)

    # -- reading -------------------------------------------------------------------------
    def ready(self, timeout: float = 0.0) -> bool:
        """Whether every cache has its first read in (waiting up to timeout for each)."""
        with self._lock:
            caches = [*self._base(), *self._members.values()]
        return self._started and all(cache.wait_ready(timeout) for cache in caches)

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of the networks this host has bound, any host's."""
        with self._lock:
            members = list(self._members.values())
        seen: dict[str, Endpoint] = {}
        for cache in members:
            for ep in cache.values():
                seen[ep.id] = ep
        bound = self.bound()
        for ep in self.legacy.values():        # the new layout wins while a record moves
            if ep.network in bound:
                seen.setdefault(ep.id, ep)
        return list(seen.values())

    def local_endpoints(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints() if ep.host == self.host]

    def network_map(self) -> dict[str, Network]:
        return {net.id: net for net in self.networks.values()}

    def profile_map(self) -> dict[str, Profile]:
        return {p.name: p for p in self.profiles.values()}

    def setting(self, name: str, default: str) -> str:
        for key, value in self.settings.items().items():
            if self.store.setting_name(key) == name:
                return value
        return default

    def release_requests(self) -> list[tuple[str, dict]]:
        """(endpoint id, request) of this host's queue."""
        return self.releases.values()

    def status(self) -> dict:
        """For /health: whether the view is complete, and what it holds."""
        with self._lock:
            members = dict(self._members)
        revision = max(c.revision for c in [*self._base(), *members.values()])
        return {"ready": self.ready(), "networks_followed": len(members),
                "endpoints": sum(len(c) for c in members.values()) + len(self.legacy), "revision": revision}
