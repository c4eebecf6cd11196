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
* No cache has a thread of its own. The caches on one etcd client share a
  hub: the client's stream thread hands each watch's events to the hub's one
  applying thread, and the hub's two reading threads make the reads and the
  watch creates. A daemon follows its ~8 prefixes with 3 threads, not 8, and
  a thread is started when there is work and ends after a minute without.
  So listeners (``on_change``) must hand over and return: never block, never
  wait for etcd.
"""

from __future__ import annotations

import heapq
import logging
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import HistoryCompacted, NetpluginError
from .kv import KV, Event, Item
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


class _Worker:
    """A queue and the thread that drains it: started by the first item,
    ended after ``idle`` seconds with nothing to do."""

    def __init__(self, name: str, handle: Callable[[Any], None], idle: float):
        self.name = name
        self.handle = handle
        self.idle = idle
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    def put(self, item: Any) -> None:
        with self._lock:
            self._queue.put(item)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            try:
                self.handle(item)
            except Exception:  # one cache's bug must not stop the others
                log.exception("%s failed", self.name)


class Hub:
    """The threads every cache on one etcd client shares: one applies watch
    events in the order the stream brought them (so each cache's changes stay
    in order), ``readers`` make reads and watch creates (which wait for etcd)."""

    IDLE = 60.0
    _made = 0

    def __init__(self, readers: int = 2):
        Hub._made += 1
        self.tag = f"hub{Hub._made}"           # in its threads' names
        self._apply = _Worker(f"cache-apply:{self.tag}", self._handle_reply, self.IDLE)
        self._reads = [_Worker(f"cache-read{i}:{self.tag}", self._handle_read, self.IDLE) for i in range(readers)]
        self._next = 0
        self._lock = threading.Lock()

    def reply(self, cache: Cache[Any], round_: int, reply: list[Event] | NetpluginError) -> None:
        self._apply.put((cache, round_, reply))

    def read(self, cache: Cache[Any], after: float = 0.0) -> None:
        """Read cache's prefix again and watch it, now or in ``after`` seconds."""
        if after > 0:
            TICKER.every(after, lambda: self.read(cache))
            return
        with self._lock:
            worker = self._reads[self._next % len(self._reads)]
            self._next += 1
        worker.put(cache)

    @staticmethod
    def _handle_reply(item: tuple[Cache[Any], int, list[Event] | NetpluginError]) -> None:
        cache, round_, reply = item
        cache._on_reply(round_, reply)

    @staticmethod
    def _handle_read(cache: Cache[Any]) -> None:
        cache._read()


_HUBS: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_for(kv: KV) -> Hub:
    """The hub of kv's caches (one per client, made on first use)."""
    with _HUBS_LOCK:
        hub = _HUBS.get(kv)
        if hub is None:
            hub = _HUBS[kv] = Hub()
        return hub


def jittered(seconds: float, rng: Callable[[], float] = random.random) -> float:
    """seconds, give or take a fifth: hosts started together do not check together."""
    return seconds * (0.8 + 0.4 * rng())


class Cache(Generic[R]):
    def __init__(self, kv: KV, prefix: str, decode: Callable[[Item], R | None], name: str,
                 on_change: Callable[[str, R | None, R | None], None] | None = None,
                 forget: Callable[[str], None] | None = None, relists: Relists = RELISTS,
                 backoff: Backoff | None = None, resync_every: float = RESYNC_EVERY, hub: Hub | None = None):
        """``forget(key)``: a key was deleted (the store clears its bad-record note).
        hub: the threads it runs on (default: those of every cache on kv)."""
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
        self.hub = hub or hub_for(kv)
        self._serial = threading.Lock()       # a read and an applied reply never overlap
        self._round = 0                       # of the read under way; older rounds' replies are dropped
        self._cancel: Callable[[], None] | None = None    # the current round's watch
        self._compacted = 0                   # compacted watches in a row

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
        self.hub.read(self)
        if self.resync_every > 0:
            TICKER.every(jittered(self.resync_every), self._check)
        return self

    def close(self) -> None:
        """Stop following: the watch is cancelled and no read is made again."""
        self.stop.set()
        self._end_round()

    def _end_round(self) -> int:
        """Drop the current round (its watch cancelled, its late replies
        ignored); returns the next round's number."""
        with self._lock:
            self._round += 1
            cancel, self._cancel = self._cancel, None
            round_ = self._round
        if cancel is not None:
            cancel()
        return round_

    def _read(self) -> None:
        """On a hub reader: read the prefix, tell the difference, and watch
        from the read's revision; the watch's replies come to ``_on_reply``."""
        if self.stop.is_set():
            return
        round_ = self._end_round()
        try:
            items, revision = self.kv.snapshot(self.prefix)
            with self._serial:    # never across the read: the applier is every cache's
                self._replace(items, revision)
            self.backoff.reset()
            cancel = self.kv.watch_prefix_cb(self.prefix, revision + 1,
                                             lambda reply: self.hub.reply(self, round_, reply))
        except HistoryCompacted as exc:
            self._again(round_, "compacted", exc)
            return
        except NetpluginError as exc:
            self._again(round_, "broken", exc)
            return
        except Exception as exc:  # a bug in a listener must not stop following
            log.exception("%s failed; reading again", self.name)
            self._again(round_, "error", exc)
            return
        with self._lock:
            if self._round == round_ and not self.stop.is_set():
                self._cancel = cancel
                return
        cancel()                  # closed or ended while the watch was made

    def _on_reply(self, round_: int, reply: list[Event] | NetpluginError) -> None:
        """On the hub's applier: a batch of this round's events, or its end."""
        with self._serial:
            if round_ != self._round or self.stop.is_set():
                return            # a reply of a watch since dropped
            if isinstance(reply, NetpluginError):
                self._end_round()
                self._again(None, "compacted" if isinstance(reply, HistoryCompacted) else "broken", reply)
                return
            self._compacted = 0
            try:
                for event in reply:
                    if event.kind == "delete":
                        self._apply(event.key, None, event.mod_revision)
                    else:
                        self._apply(event.key, Item(event.key, event.value, 0, event.mod_revision),
                                    event.mod_revision)
            except Exception as exc:  # a bug in a listener must not stop following
                log.exception("%s failed; reading again", self.name)
                self._end_round()
                self._again(None, "error", exc)

    def _again(self, round_: int | None, reason: str, exc: BaseException) -> None:
        """Count a re-read and schedule it: at once after a compaction (up to
        RELIST_AT_ONCE in a row) or a drift, else after the backoff."""
        if self.stop.is_set() or (round_ is not None and round_ != self._round):
            return
        pause = 0.0
        if reason == "compacted":
            log.info("%s: %s", self.name, getattr(exc, "message", exc))
            self._compacted += 1
            if self._compacted > RELIST_AT_ONCE:
                pause = self.backoff.next()
        else:
            self._compacted = 0
            if reason != "drift":
                pause = self.backoff.next()
                if isinstance(exc, NetpluginError):
                    log.warning("%s: %s; reading again in %.1f s", self.name, exc.message, pause)
        self.relists.add(self.name, reason)
        self.hub.read(self, pause)

    def _check(self) -> float | None:
        """The periodic count check: a count-only read of the prefix, compared
        with the keys held; a difference drops the watch, and the cache reads again."""
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
                with self._serial:
                    self._end_round()
                    self._again(None, "drift", RuntimeError("drift"))
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
