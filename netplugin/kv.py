"""The key-value boundary: a tiny interface over etcd v3, and its etcd
implementation. Only this module imports the etcd client.

The interface is deliberately small (get, prefix reads, counting, one
transaction primitive, leases) so the unit tests can swap in an in-memory
fake with the same semantics, and so the client library could be replaced.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import etcd_access
from .errors import HistoryCompacted, NetpluginError, StoreFull, StoreUnavailable

log = logging.getLogger(__name__)

# gRPC refuses replies over 4 MiB by default: about 7,000 endpoint records in one
# prefix read. Allow what etcd itself allows per request (its default limit is 1.5 MiB
# per value, and ranges are unbounded).
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 16 << 20)]


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class Compare:
    """A transaction guard: ``target`` is 'create', 'mod' or 'value'; op is '==' or '!='."""

    key: str
    target: str
    op: str
    value: int | bytes | str


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes | str
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Event:
    """A change seen by a watch: kind is 'put' or 'delete'."""

    kind: str
    key: str
    value: bytes
    mod_revision: int


def absent(key: str) -> Compare:
    return Compare(key, "create", "==", 0)


def unchanged(key: str, mod_revision: int) -> Compare:
    """The key still has this revision (0: it still does not exist)."""
    if mod_revision == 0:
        return absent(key)
    return Compare(key, "mod", "==", mod_revision)


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with prefix."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class KV(Protocol):
    def get(self, key: str) -> Item | None: ...
    def get_prefix(self, prefix: str, keys_only: bool = False) -> list[Item]: ...
    def count_prefix(self, prefix: str) -> int: ...
    def txn(self, compares: Iterable[Compare], success: Iterable[Put | Delete], idempotent: bool = False) -> bool: ...
    def snapshot(self, prefix: str) -> tuple[list[Item], int]: ...
    def watch_prefix(self, prefix: str, start_revision: int, stop: threading.Event) -> Iterator[Event]: ...
    def watch_prefix_cb(self, prefix: str, start_revision: int,
                        deliver: Callable[[list[Event] | NetpluginError], None]) -> Callable[[], None]: ...
    def grant_lease(self, ttl: int) -> int: ...
    def refresh_lease(self, lease_id: int) -> int: ...
    def revoke_lease(self, lease_id: int) -> None: ...
    def close(self) -> None: ...


# etcd's answer to a write while its NOSPACE alarm is raised (RESOURCE_EXHAUSTED).
SPACE_EXCEEDED = "database space exceeded"
_TRANSIENT = ("deadline exceeded", "leader changed", "no leader", "request timed out")
_ATTEMPT = threading.local()     # this thread's deadline for the call in flight, if shorter
TURN_WAITS = 6                   # a watch create waits its turn on the stream at most this many timeouts
STOP_POLL = 2.0                  # seconds: how soon a watch notices its stop event


def _client_class():
    """python-etcd3's multi-endpoint client, whose per-call timeout can be
    shortened for one attempt in one thread (the library reads ``timeout``
    on every call and offers no per-call argument)."""
    import pyetcd

    class Client(pyetcd.MultiEndpointEtcd3Client):
        @property
        def timeout(self):
            return getattr(_ATTEMPT, "timeout", None) or self._default_timeout

        @timeout.setter
        def timeout(self, value):
            self._default_timeout = value

        def get_watcher(self):
            """Watches that require a leader: a member cut off from the quorum ends
            them ("no leader") instead of leaving them silent, so a host on the
            minority side notices, reads again elsewhere, and backs off."""
            from pyetcd.etcdrpc import WatchStub
            # The whole etcd_timeout for every create on this stream, not the share
            # of whichever call first built the watcher (self.timeout is per attempt).
            return _watcher_class()(WatchStub(self.channel), timeout=self._default_timeout,
                                    call_credentials=self.call_credentials,
                                    metadata=(("hasleader", "true"), *tuple(self.metadata or ())))

        @property
        def watcher(self):
            """The watch stream, built anew (on the member in use) once the last one ended."""
            current = self._stubs.get("watcher")
            if current is None or current.ended():
                current = self._stubs["watcher"] = self.get_watcher()
            return current

        @watcher.setter
        def watcher(self, value):
            self._stubs["watcher"] = value

        def _clear_old_stubs(self):
            """The library drops every stub when any call fails over, and closed the
            watcher with them: each slow read then stranded every watch create
            queued on that stream (a closed stream sends nothing; each waited out
            its timeout in turn). A watch stream that still runs is kept: its
            watches are fine wherever the reads go, and it is replaced when it ends."""
            current = self._stubs.get("watcher")
            self._stubs.clear()
            if current is not None and not current.ended():
                self._stubs["watcher"] = current

    return Client


def _watcher_class():
    """python-etcd3's watcher, with its flaws fixed. One stream carries every
    watch of a client, and one create may be pending on it at a time.

    * When a create times out (an election, an overloaded host), the library
      forgets it; its late "created" reply was then taken as the NEXT
      create's, so that watch followed another prefix (or a cancelled watch)
      and believed itself live. Here a create that timed out is remembered as
      abandoned, and the next "created" reply on the stream (etcd answers
      creates in order) is cancelled instead of handed on. A new stream
      starts with none.
    * Watch ids are per stream: after a stream ends, etcd numbers the next
      stream's watches from 0 again, and the library cancels by id alone. A
      watch cancelled after its stream died (or after a failover replaced the
      watcher) then cancelled whichever NEW watch had its number, and that
      cache waited for events that never came. ``cancel_own`` cancels a watch
      only while the id still belongs to the caller's own callback.
    * The library's request queue holds 10 requests and is written under the
      watcher's lock: with the stream gone and 10 requests unsent, the next
      write blocked forever holding the lock, and every watch of the client
      with it. The queue here is unbounded (one request per create or cancel).
    * ``close`` only half-closed the stream: etcd kept it open, and every
      create waiting its turn on it was never sent and waited out its whole
      timeout, one after the other (hundreds of caches stalled for minutes).
      Here close cancels the call (every watch on it ends with an error, and
      its cache reads again), and waiting creates fail at once. A create
      waits at most ``timeout`` for its reply once sent, and at most
      ``TURN_WAITS`` times that for its turn (hundreds of caches starting
      together queue on one stream; the library waited for ever).
    """
    import queue

    import grpc
    from pyetcd import exceptions, watch

    class Watcher(watch.Watcher):
        @property
        def _new_watch(self):
            return self.__dict__.get("_pending")

        @_new_watch.setter
        def _new_watch(self, value):
            # Cleared under the lock by add_callback, also when it timed out.
            old = self.__dict__.get("_pending")
            if value is None and old is not None and old.id is None and old.err is None:
                self.__dict__["_abandoned"] = self.__dict__.get("_abandoned", 0) + 1
            self.__dict__["_pending"] = value

        @property
        def _request_queue(self):
            return self.__dict__["_queue"]

        @_request_queue.setter
        def _request_queue(self, value):
            # A new queue is a new stream (at start, and after one ended): nothing abandoned on it.
            self.__dict__["_queue"] = queue.Queue()
            self.__dict__["_abandoned"] = 0

        def ended(self) -> bool:
            """Whether this watcher's stream has ended (or it was closed): build another."""
            return bool(self.__dict__.get("_closed") or self._stopping)

        def add_callback(self, key, callback, range_end=None, start_revision=None, **options):
            rq = self._create_watch_request(key, range_end=range_end, start_revision=start_revision, **options)
            timeout = self.timeout or 3.0
            deadline = time.monotonic() + TURN_WAITS * timeout
            with self._lock:
                if self.__dict__.get("_closed"):
                    raise exceptions.ConnectionFailedError()
                if self._stopping:              # the last stream ended: start another
                    self._callback_thread.join()
                    self._callback_thread = None
                    self._stopping = False
                if not self._callback_thread:
                    self._callback_thread = threading.Thread(name=f"etcd-watch-{id(self):x}", target=self._run,
                                                             daemon=True)
                    self._callback_thread.start()
                while self._new_watch:          # one create at a time on a stream
                    left = deadline - time.monotonic()
                    if left <= 0 or self.__dict__.get("_closed"):
                        raise exceptions.WatchTimedOut()
                    self._new_watch_cond.wait(left)
                new_watch = watch._NewWatch(callback)
                self._request_queue.put(rq)
                self._new_watch = new_watch
                deadline = time.monotonic() + timeout
                try:
                    while new_watch.id is None and new_watch.err is None:
                        left = deadline - time.monotonic()
                        if left <= 0 or self.__dict__.get("_closed"):
                            break
                        self._new_watch_cond.wait(left)
                    if new_watch.err:
                        raise new_watch.err
                    if new_watch.id is None:
                        raise exceptions.WatchTimedOut()
                finally:
                    self._new_watch = None
                    self._new_watch_cond.notify_all()
                return new_watch.id

        def _run(self):
            error = None
            try:
                call = self._watch_stub.Watch(watch._new_request_iter(self._request_queue),
                                              credentials=self._credentials, metadata=self._metadata)
                self.__dict__["_call"] = call
                if self.__dict__.get("_closed"):
                    call.cancel()
                for rs in call:
                    self._handle_response(rs)
            except grpc.RpcError as exc:
                error = exc
            finally:
                with self._lock:
                    self._stopping = True
                    if self._new_watch:
                        self._new_watch.err = error or exceptions.ConnectionFailedError()
                        self._new_watch_cond.notify_all()
                    callbacks, self._callbacks = self._callbacks, {}
                    self._request_queue.put(None)
                    self._request_queue = None       # a fresh queue for the next stream
                for callback in callbacks.values():
                    watch._safe_callback(callback, error)

        def _handle_response(self, rs):
            if rs.created:
                with self._lock:
                    if self.__dict__.get("_abandoned", 0):
                        self.__dict__["_abandoned"] -= 1
                        self._cancel_no_lock(rs.watch_id)
                        return
            super()._handle_response(rs)
            if rs.created:
                with self._lock:      # also a create refused as compacted: its creator need not wait out its time
                    self._new_watch_cond.notify_all()

        def cancel_own(self, watch_id, callback) -> None:
            """Cancel watch_id if it is still the watch that calls ``callback``."""
            with self._lock:
                if self._callbacks.get(watch_id) is not callback:
                    return       # its stream is gone, and the id may be another watch's now
                del self._callbacks[watch_id]
                self._cancel_no_lock(watch_id)

        def close(self):
            with self._lock:
                self.__dict__["_closed"] = True
                call = self.__dict__.get("_call")
                self._new_watch_cond.notify_all()
            if call is not None:
                call.cancel()

    return Watcher


def _cancel_quietly(cancel) -> None:
    """Cancel a watch whose stream may be gone with its member: the client then
    has no endpoint left to send the cancel to, and there is nothing to cancel."""
    try:
        cancel()
    except Exception:  # any client error here means the watch is already gone
        log.debug("cancelling a watch whose connection is gone", exc_info=True)


class EtcdKV:
    """KV on etcd v3 through the python-etcd3 API (package etcd-sdk-python).

    Connects lazily: building it touches nothing, so the daemon can listen
    before etcd is up. Several endpoints fail over: an endpoint that failed is
    skipped for ``retry_after`` seconds, then tried again.
    """

    def __init__(self, endpoints: list[str], timeout: float = 3.0, cacert: str | None = None,
                 cert: str | None = None, key: str | None = None, user: str | None = None,
                 password: str | None = None, retry_after: float = 2.0, allow_plaintext_password: bool = False):
        # The same rules as the settings: never a TLS file or a password silently dropped.
        etcd_access.check(endpoints, cacert, cert, key, user, password, allow_plaintext_password)
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._tls = (cacert, cert, key)
        self._auth = (user, password)
        self._retry_after = retry_after
        self._client = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------
    def _connect(self):
        import grpc
        import pyetcd

        creds = self._credentials(grpc)
        eps = []
        for url in self.endpoints:
            parts = urlsplit(url)
            secure = parts.scheme == "https"     # one scheme for all: etcd_access.check
            eps.append(pyetcd.Endpoint(parts.hostname, parts.port or 2379, secure=secure,
                                       creds=creds if secure else None, time_retry=self._retry_after,
                                       opts=GRPC_OPTIONS))
        user, password = self._auth
        return _client_class()(endpoints=eps, timeout=self.timeout, user=user, password=password, failover=True)

    def _credentials(self, grpc: Any) -> Any:
        """TLS credentials for https:// endpoints (None for http://): the CA and
        client pair given, or the system's CA store when neither is."""
        if not self.endpoints or not self.endpoints[0].startswith("https://"):
            return None
        pem: dict[str, bytes | None] = {}
        for name, path in zip(("etcd_cacert", "etcd_cert", "etcd_key"), self._tls, strict=True):
            pem[name] = None
            try:
                if path:
                    with open(path, "rb") as fh:
                        pem[name] = fh.read()
            except OSError as exc:
                raise StoreUnavailable(f"cannot read {name} {path}: {exc.strerror}; fix the path or the "
                                       "file's permissions") from None
        return grpc.ssl_channel_credentials(pem["etcd_cacert"], pem["etcd_key"], pem["etcd_cert"])

    def _get_client(self):
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._connect()
                except StoreUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure to connect (auth needs a round trip) is an unavailable store
                    raise self._unavailable(exc) from None
            return self._client

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        detail = str(exc) or type(exc).__name__
        return StoreUnavailable(
            f"store unavailable: etcd did not answer at {', '.join(self.endpoints)} ({detail}); "
            "check that etcd is running and reachable, then retry")

    def _full(self, exc: Exception) -> StoreFull:
        return StoreFull(
            f"etcd at {', '.join(self.endpoints)} refused the write: its database is over its space quota "
            f"(the NOSPACE alarm, '{SPACE_EXCEEDED}'); reads still work. An etcd operator must free space: "
            "compact the history (etcdctl compact REVISION), defragment every member (etcdctl defrag), then "
            "etcdctl alarm disarm (docs/etcd.md, 'When etcd is full')")

    def _call(self, fn, retry: bool = True):
        """Run fn(client); map client errors to StoreUnavailable.

        A read that could not reach a member is tried again on the others until
        ``timeout`` seconds have passed: when a member dies, the survivors answer
        UNAVAILABLE while they elect a new leader (one to two seconds on a busy
        host), and a caller should see that as a pause, not an error. A
        transaction (retry=False) is sent once: it may have been applied before
        the connection broke, so its caller reads back and decides.
        """
        import pyetcd.exceptions as etcd_exc

        give_up_at = time.monotonic() + self.timeout
        last: Exception | None = None
        attempt, resent = 0, False
        while True:
            client = self._get_client()
            attempt += 1
            try:
                if retry:
                    # A first attempt gets a third of the time: a member without a
                    # leader holds a call until it has one, and another member may
                    # answer sooner. Later attempts get whatever time is left.
                    left = give_up_at - time.monotonic()
                    _ATTEMPT.timeout = max(0.2, min(left, self.timeout / 3) if attempt == 1 else left)
                return fn(client)
            except etcd_exc.NoServerAvailableError as exc:
                # Every member is marked failed: ask them all again rather than
                # waiting out retry_after with none to ask. Nothing was sent, so
                # even a transaction may go again.
                last = last or exc
                for endpoint in client.endpoints.values():
                    endpoint.last_failed = 0
                if time.monotonic() + 0.2 < give_up_at:
                    time.sleep(0.2)
                    continue
                raise self._unavailable(last) from None
            except (etcd_exc.ConnectionFailedError, ValueError) as exc:  # ValueError: "Trying to use a failed node"
                last, pause = exc, 0.05
            except etcd_exc.ConnectionTimeoutError as exc:
                last, pause = exc, 0.0
                if not retry:
                    raise self._unavailable(exc) from None
            except etcd_exc.InternalServerError as exc:
                raise self._unavailable(exc) from None
            except etcd_exc.RevisionCompactedError:
                raise                   # watch_prefix says which watch, and its follower reads again
            except Exception as exc:
                if SPACE_EXCEEDED in str(exc):
                    raise self._full(exc) from None     # no retry: only an operator can free space
                if "auth token" in str(exc).lower() or "UNAUTHENTICATED" in str(exc):
                    with self._lock:     # tokens expire; log in again
                        self._client = None
                    last, pause = exc, 0.0
                    if not retry and not resent:   # refused before it ran: safe to send again, once
                        resent = True
                        continue
                elif type(exc).__module__.startswith(("grpc", "pyetcd")):
                    # A member that waits for a leader answers a shortened attempt with
                    # UNKNOWN "context deadline exceeded" (its own timer, not the
                    # client's): that is a timeout too, worth another member's answer.
                    if not (retry and any(s in str(exc).lower() for s in _TRANSIENT)):
                        raise self._unavailable(exc) from None
                    last, pause = exc, 0.05
                else:
                    raise
            finally:
                _ATTEMPT.timeout = None
            if not retry or time.monotonic() + pause >= give_up_at - 0.05:
                raise self._unavailable(last or RuntimeError("no endpoint"))
            time.sleep(pause)

    # -- reads --------------------------------------------------------------
    @staticmethod
    def _item(value, meta) -> Item:
        return Item(meta.key.decode(), value or b"", meta.create_revision, meta.mod_revision)

    def get(self, key: str) -> Item | None:
        value, meta = self._call(lambda c: c.get(key))
        return None if meta is None else self._item(value, meta)

    def get_prefix(self, prefix: str, keys_only: bool = False) -> list[Item]:
        return self._call(lambda c: [self._item(v, m) for v, m in
                                     c.get_prefix(prefix, keys_only=keys_only, sort_order="ascend")])

    def count_prefix(self, prefix: str) -> int:
        def count(c):
            req = c._build_get_range_request(prefix, range_end=prefix_end(prefix), count_only=True)
            return c.kvstub.Range(req, c.timeout, credentials=c.call_credentials, metadata=c.metadata).count
        import grpc

        def guarded(c):
            try:
                return count(c)
            except grpc.RpcError as exc:
                c._manage_grpc_errors(exc)
        return self._call(guarded)

    def snapshot(self, prefix: str) -> tuple[list[Item], int]:
        """Every item under prefix and the store revision they were read at,
        so a watch can start right after it without missing a change."""
        def run(c):
            resp = c.get_prefix_response(prefix, sort_order="ascend")
            return ([Item(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision) for kv in resp.kvs],
                    resp.header.revision)
        return self._call(run)

    def watch_prefix(self, prefix: str, start_revision: int, stop: threading.Event) -> Iterator[Event]:
        """Changes under prefix from start_revision on, until stop is set (seen
        within ``STOP_POLL`` seconds). Raises StoreUnavailable when the watch
        breaks, HistoryCompacted when etcd no longer holds start_revision;
        callers re-snapshot."""
        import queue
        replies: queue.SimpleQueue = queue.SimpleQueue()
        cancel = self.watch_prefix_cb(prefix, start_revision, replies.put)
        try:
            while True:
                try:
                    reply = replies.get(timeout=STOP_POLL)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if stop.is_set():
                    return
                if isinstance(reply, Exception):
                    raise reply
                yield from reply
        finally:
            cancel()

    def watch_prefix_cb(self, prefix: str, start_revision: int,
                        deliver: Callable[[list[Event] | NetpluginError], None]) -> Callable[[], None]:
        """A watch without a thread of its own: ``deliver(events)`` for each
        batch, then once ``deliver(error)`` (StoreUnavailable: it broke;
        HistoryCompacted: etcd compacted start_revision away during the create)
        if it ends by itself. deliver runs on the client's stream thread: it
        must hand over and return, never block or call etcd. Returns cancel();
        a batch already on its way may still arrive after it. Raises
        HistoryCompacted or StoreUnavailable when the watch cannot be made."""
        import pyetcd.events as etcd_events
        import pyetcd.exceptions as etcd_exc
        from pyetcd import utils as etcd_utils
        ended = threading.Event()

        def end(error: NetpluginError) -> None:
            if not ended.is_set():
                ended.set()
                deliver(error)

        def on_response(response) -> None:     # called on the watcher's stream thread
            if ended.is_set():
                return
            if response is None:      # the stream was closed (a failover replaced it)
                end(StoreUnavailable(f"the watch on {prefix} ended with its stream to etcd; reading again"))
                return
            if isinstance(response, etcd_exc.RevisionCompactedError):
                end(self._compacted(prefix, start_revision, response))
                return
            if isinstance(response, Exception):
                end(self._unavailable(response))
                return
            batch = []
            for ev in response.events:
                kind = "delete" if isinstance(ev, etcd_events.DeleteEvent) else "put"
                key = ev.key.decode()
                if not key.startswith(prefix):       # never hand on another watch's event
                    end(StoreUnavailable(f"the watch on {prefix} delivered a change of {key}: reading again"))
                    return
                batch.append(Event(kind, key, ev.value or b"", ev.mod_revision))
            if batch:
                deliver(batch)

        def create(c):
            watcher = c.watcher           # the stream this watch lives on, kept for its cancel
            end_key = etcd_utils.prefix_range_end(etcd_utils.to_bytes(prefix))
            return watcher, watcher.add_callback(prefix, on_response, range_end=end_key,
                                                 start_revision=start_revision)
        try:
            watcher, watch_id = self._call(create)
        except etcd_exc.RevisionCompactedError as exc:
            raise self._compacted(prefix, start_revision, exc) from None

        def cancel() -> None:
            ended.set()
            _cancel_quietly(lambda: watcher.cancel_own(watch_id, on_response))
        return cancel

    @staticmethod
    def _compacted(prefix: str, start_revision: int, exc) -> HistoryCompacted:
        upto = getattr(exc, "compacted_revision", 0)
        return HistoryCompacted(f"the watch on {prefix} from revision {start_revision} came too late: etcd "
                                f"compacted its history up to revision {upto}; reading everything again", upto)

    # -- writes -------------------------------------------------------------
    def txn(self, compares: Iterable[Compare], success: Iterable[Put | Delete], idempotent: bool = False) -> bool:
        """Apply success if every compare holds. A transaction that may have
        been applied before the connection broke is not sent again unless the
        caller says applying it twice is harmless (``idempotent``)."""
        compares, success = list(compares), list(success)

        def run(c):
            t = c.transactions
            guards = []
            for cmp in compares:
                target = {"create": t.create, "mod": t.mod, "value": t.value}[cmp.target](cmp.key)
                guards.append(target == cmp.value if cmp.op == "==" else target != cmp.value)
            ops = []
            for op in success:
                if isinstance(op, Put):
                    ops.append(t.put(op.key, op.value, op.lease))
                elif op.prefix:
                    ops.append(t.delete(op.key, range_end=prefix_end(op.key)))
                else:
                    ops.append(t.delete(op.key))
            ok, _ = c.transaction(compare=guards, success=ops, failure=[])
            return ok
        return self._call(run, retry=idempotent)

    def grant_lease(self, ttl: int) -> int:
        return self._call(lambda c: c.lease(ttl).id)

    def refresh_lease(self, lease_id: int) -> int:
        """Keep the lease alive: the TTL etcd answered, 0 when the lease is
        gone (it ran out or was revoked: etcd says so with TTL 0, not an error)."""
        def run(c) -> int:
            replies = list(c.refresh_lease(lease_id))
            return int(replies[0].TTL) if replies else 0
        return self._call(run)

    def revoke_lease(self, lease_id: int) -> None:
        self._call(lambda c: c.revoke_lease(lease_id))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None
