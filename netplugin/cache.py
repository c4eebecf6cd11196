"""A list-and-watch cache of one etcd prefix (the pattern of Kubernetes
informers): the prefix is read once, then followed by a watch from the
revision of that read, into memory. Readers ask the cache, never etcd, so a
host's steady-state etcd traffic follows the rate of change of what it
follows, not the size of the cluster.

* Every record is decoded and checked by ``decode`` (the store's checked
  loaders): a bad one is skipped (and counted there), never cached.
* ``on_change(key, old, new)`` is told every difference, after a watch event
  and after a re-read alike: a re-read (a broken or compacted watch) is
  compared with what was cached, and only the difference is told.
* A broken watch is read again after an exponential backoff with jitter, so
  a thousand hosts do not all come back at the same instant after an etcd
  election; a compacted one is read again at once (etcd is fine).
* Every ``resync_every`` seconds (jittered), the cache counts the prefix in
  etcd (a count-only read, a few bytes) and reads it again only when the
  count differs from what it holds.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import HistoryCompacted, NetpluginError
from .kv import KV, Item
from .watch import RELIST_AT_ONCE, RELISTS, Relists

log = logging.getLogger(__name__)

R = TypeVar("R")

RESYNC_EVERY = 300.0      # seconds between count checks of a followed prefix
BACKOFF_FIRST = 0.5       # first pause after a broken watch, in seconds ...
BACKOFF_MAX = 30.0        # ... doubling up to this, each drawn with jitter


class Backoff:
    """Exponential backoff with "equal jitter": the n-th pause is drawn
    uniformly between half and all of min(cap, first * 2**n)."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX,
                 rng: Callable[[], float] = random.random):
        self.first = first
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next(self) -> float:
        top = min(self.cap, self.first * (2 ** self.failures))
        self.failures += 1
        return top / 2 + self.rng() * top / 2

    def reset(self) -> None:
        self.failures = 0


class _Ticker:
    """One thread per process that runs every cache's periodic check."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], float | None]]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def every(self, first: float, check: Callable[[], float | None]) -> None:
        """Run ``check`` in ``first`` seconds; it returns when to run again (None: never)."""
        with self._lock:
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + first, self._seq, check))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cache-resync", daemon=True)
                self._thread.start()
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._lock.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                _, _, check = heapq.heappop(self._heap)
            try:
                again = check()
            except Exception:  # one cache's check must not stop the others'
                log.exception("cache check failed")
                again = RESYNC_EVERY
            if again is not None:
                self.every(again, check)


TICKER = _Ticker()


def jittered(seconds: float, rng: Callable[[], float] = random.random) -> float:
    """seconds, give or take a fifth: hosts started together do not check together."""
    return seconds * (0.8 + 0.4 * rng())


class Cache(Generic[R]):
    def __init__(self, kv: KV, prefix: str, decode: Callable[[Item], R | None], name: str,
                 on_change: Callable[[str, R | None, R | None], None] | None = None,
                 forget: Callable[[str], None] | None = None, relists: Relists = RELISTS,
                 backoff: Backoff | None = None, resync_every: float = RESYNC_EVERY):
        """``forget(key)``: a key was deleted (the store clears its bad-record note)."""
        self.kv = kv
        self.prefix = prefix
        self.decode = decode
        self.name = name
        self.on_change = on_change
        self.forget = forget
        self.relists = relists
        self.backoff = backoff or Backoff()
        self.resync_every = resync_every
        self.ready = threading.Event()        # set once the first read is in
        self.stop = threading.Event()
        self.revision = 0                     # of the last read or event applied
        self._lock = threading.Lock()
        self._records: dict[str, R] = {}
        self._keys: dict[str, int] = {}       # every key under the prefix, bad ones too -> its mod revision
        self._again = threading.Event()       # the count check found a difference: read again
        self._round: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------
    def items(self) -> dict[str, R]:
        """key -> record, a copy."""
        with self._lock:
            return dict(self._records)

    def values(self) -> list[R]:
        with self._lock:
            return list(self._records.values())

    def get(self, key: str) -> R | None:
        with self._lock:
            return self._records.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def matches(self, items: list[Item]) -> bool:
        """Whether the cache holds exactly these items (a fresh read of its
        prefix), each at its revision: what the tests compare it with."""
        with self._lock:
            return self.ready.is_set() and self._keys == {item.key: item.mod_revision for item in items}

    # -- following -------------------------------------------------------------------
    def start(self) -> Cache[R]:
        self._thread = threading.Thread(target=self.run, name=f"cache:{self.name}", daemon=True)
        self._thread.start()
        if self.resync_every > 0:
            TICKER.every(jittered(self.resync_every), self._check)
        return self

    def close(self) -> None:
        self.stop.set()
        if self._round is not None:
            self._round.set()

    def run(self) -> None:
        compacted = 0
        while not self.stop.is_set():
            pause = 0.0
            self._round = threading.Event()
            self._again.clear()
            try:
                items, revision = self.kv.snapshot(self.prefix)
                self._replace(items, revision)
                self.backoff.reset()
                for event in self.kv.watch_prefix(self.prefix, revision + 1, self._watch_stop()):
                    compacted = 0
                    if event.kind == "delete":
                        self._apply(event.key, None, event.mod_revision)
                    else:
                        self._apply(event.key, Item(event.key, event.value, 0, event.mod_revision),
                                    event.mod_revision)
                reason = "drift" if self._again.is_set() else "broken"
            except HistoryCompacted as exc:
                log.info("%s: %s", self.name, exc.message)
                compacted += 1
                reason = "compacted"
                if compacted > RELIST_AT_ONCE:
                    pause = self.backoff.next()
            except NetpluginError as exc:
                reason = "broken"
                pause = self.backoff.next()
                log.warning("%s: %s; reading again in %.1f s", self.name, exc.message, pause)
            except Exception:         # a bug in a listener must not stop following
                log.exception("%s failed; reading again", self.name)
                reason = "error"
                pause = self.backoff.next()
            if reason != "compacted":
                compacted = 0
            if self.stop.is_set():
                return
            self.relists.add(self.name, reason)
            self.stop.wait(pause)

    def _watch_stop(self) -> threading.Event:
        """Set to end this round's watch: on close, or when the count check found a difference."""
        round_stop = self._round
        if round_stop is None:
            raise RuntimeError("no round under way")
        return round_stop

    def _check(self) -> float | None:
        """The periodic count check: a count-only read of the prefix, compared
        with the keys held; a difference ends the watch, and the cache reads again."""
        if self.stop.is_set():
            return None
        if self.ready.is_set():
            try:
                count = self.kv.count_prefix(self.prefix)
            except NetpluginError:
                return jittered(self.resync_every)
            with self._lock:
                held = len(self._keys)
            if count != held:
                log.warning("%s: etcd holds %d keys, the cache %d: reading again", self.name, count, held)
                self._again.set()
                if self._round is not None:
                    self._round.set()
        return jittered(self.resync_every)

    def _replace(self, items: list[Item], revision: int) -> None:
        fresh: dict[str, R] = {}
        for item in items:
            rec = self.decode(item)
            if rec is not None:
                fresh[item.key] = rec
        with self._lock:
            old = self._records
            self._records = fresh
            self._keys = {item.key: item.mod_revision for item in items}
            self.revision = revision
        if self.on_change is not None:
            for key in old.keys() | fresh.keys():
                before, after = old.get(key), fresh.get(key)
                if before != after:
                    self.on_change(key, before, after)
        self.ready.set()          # after the listeners: what they open on the first read counts too

    def _apply(self, key: str, item: Item | None, revision: int) -> None:
        rec = self.decode(item) if item is not None else None
        if item is None and self.forget is not None:
            self.forget(key)
        with self._lock:
            before = self._records.pop(key, None)
            if rec is not None:
                self._records[key] = rec
            if item is None:
                self._keys.pop(key, None)
            else:
                self._keys[key] = revision
            self.revision = max(self.revision, revision)
        if self.on_change is not None and before != rec:
            self.on_change(key, before, rec)
