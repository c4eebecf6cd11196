"""Following a prefix in etcd: read everything, then apply each change, and
start over from a fresh read whenever the watch breaks (etcd restarted, a
member failed over, the connection dropped). Nothing is missed: the watch
starts at the revision the read was made at."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import NetpluginError
from .kv import KV, Event, Item

log = logging.getLogger(__name__)


class PrefixFollower:
    def __init__(self, kv: KV, prefix: str, on_snapshot: Callable[[list[Item]], None],
                 on_event: Callable[[Event], None], name: str, retry: float = 1.0):
        self.kv = kv
        self.prefix = prefix
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.name = name
        self.retry = retry
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PrefixFollower:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                items, revision = self.kv.snapshot(self.prefix)
                self.on_snapshot(items)
                for event in self.kv.watch_prefix(self.prefix, revision + 1, self.stop):
                    self.on_event(event)
            except NetpluginError as exc:
                log.warning("%s: %s; reading again in %.0f s", self.name, exc.message, self.retry)
            except Exception:         # a bug in a handler must not stop following
                log.exception("%s failed; reading again", self.name)
            self.stop.wait(self.retry)


class SyncLoop:
    """Brings one part of the datapath in line with etcd: ``work(full)`` runs
    whenever a followed prefix changes, and every ``period`` seconds anyway
    (``full=True`` then, and after a failure: compare with the datapath too,
    which puts back what someone changed by hand or an OVS restart lost)."""

    def __init__(self, name: str, work: Callable[[bool], None], period: float = 30.0):
        self.name = name
        self.work = work
        self.period = period
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._followers: list[PrefixFollower] = []

    def wake(self, *_) -> None:
        self._wake.set()

    def follow(self, kv: KV, prefix: str, on_event: Callable[[Event], None] | None = None) -> SyncLoop:
        self._followers.append(PrefixFollower(kv, prefix, self.wake, on_event or self.wake,
                                              f"{self.name}:{prefix.rstrip('/').rsplit('/', 1)[-1]}"))
        return self

    def start(self) -> SyncLoop:
        for follower in self._followers:
            follower.start()
        threading.Thread(target=self._run, name=self.name, daemon=True).start()
        return self

    def _run(self) -> None:
        full = True
        last_full = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            # A full pass at least every period, even while changes keep waking the loop.
            full = full or time.monotonic() - last_full >= self.period
            try:
                self.work(full)
                if full:
                    last_full = time.monotonic()
                full = False
            except NetpluginError as exc:
                log.warning("%s waits: %s", self.name, exc.message)
                full = True
                self._stop.wait(1)
                self._wake.set()          # try again in a second, not at the next period
            except Exception:         # a bug in one pass must not stop the loop
                log.exception("%s failed", self.name)
                full = True
                self._stop.wait(1)
                self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for follower in self._followers:
            follower.close()
