"""Following a prefix in etcd: read everything, then apply each change, and
start over from a fresh read whenever the watch breaks (etcd restarted, a
member failed over, the connection dropped). Nothing is missed: the watch
starts at the revision the read was made at. When etcd has compacted that
revision away before the watch began (a slow first pass, a busy etcd), the
follower reads again at once. Every re-read is counted by follower and
reason in RELISTS (the metric netplugin_watch_relists)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import HistoryCompacted, NetpluginError
from .kv import KV, Event, Item

log = logging.getLogger(__name__)


class Relists:
    """How often each follower read its prefix again, and why ('compacted':
    etcd no longer held the revision to watch from; 'broken': the watch or
    the read failed; 'error': a handler raised)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, follower: str, reason: str) -> None:
        with self._lock:
            self._counts[(follower, reason)] = self._counts.get((follower, reason), 0) + 1

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


RELIST_AT_ONCE = 3        # compacted watches in a row read again without a pause
RELISTS = Relists()       # this process's followers; read at scrape time (watch_metrics.py)


class PrefixFollower:
    def __init__(self, kv: KV, prefix: str, on_snapshot: Callable[[list[Item]], None],
                 on_event: Callable[[Event], None], name: str, retry: float = 1.0, relists: Relists = RELISTS):
        self.relists = relists
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
        compacted = 0             # in a row: at once up to RELIST_AT_ONCE times, then the retry pause
        while not self.stop.is_set():
            pause = self.retry
            try:
                items, revision = self.kv.snapshot(self.prefix)
                self.on_snapshot(items)
                for event in self.kv.watch_prefix(self.prefix, revision + 1, self.stop):
                    compacted = 0         # this watch worked: a later compaction starts a new row
                    self.on_event(event)
                reason = "broken"             # the watch ended without being asked to
            except HistoryCompacted as exc:
                log.info("%s: %s", self.name, exc.message)
                compacted += 1
                reason = "compacted"
                if compacted <= RELIST_AT_ONCE:
                    pause = 0.0           # etcd is fine: read again at once
            except NetpluginError as exc:
                log.warning("%s: %s; reading again in %.0f s", self.name, exc.message, self.retry)
                reason = "broken"
            except Exception:         # a bug in a handler must not stop following
                log.exception("%s failed; reading again", self.name)
                reason = "error"
            if reason != "compacted":
                compacted = 0
            if not self.stop.is_set():
                self.relists.add(self.name, reason)
            self.stop.wait(pause)


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
