"""One etcd lease kept alive from a thread: the host heartbeat, the
reconciler's lock and the drctl agent each hold their keys on one.

``grant()`` takes a lease of ``ttl`` seconds; ``renew()`` keeps it (raising a
NetpluginError when etcd does not take the renewal, e.g. it is unreachable or
the lease is gone); ``revoke()`` gives it back; ``drop()`` forgets it, to lapse
on its own. Once started, a thread runs one beat every ``every`` seconds until
``stop()``, or until a beat returns False: the lease is lost and its holder is
done with it.

The default beat is :meth:`beat`: grant a lease when there is none, handing it
to ``on_grant`` (which puts the holder's keys on it), else renew it and ask
``proof()`` whether the holder's leased key still stands; when it does not,
the lease ran out unnoticed (etcd answers the renewal of an expired lease with
a TTL of 0, not an error) and a new one is granted at once. A holder that
decides otherwise passes its own beat. A beat that raises a NetpluginError is
logged as ``<name>: <message>`` and the lease is dropped: the next beat
grants a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .errors import NetpluginError
from .kv import KV

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, kv: KV, ttl: int, every: float, name: str,
                 on_grant: Callable[[int], None] | None = None, proof: Callable[[], bool] | None = None,
                 logger: logging.Logger | None = None, proof_every: float = 0.0):
        """proof_every: seconds between proofs (0: at every beat); between
        them, etcd's TTL answer to the renewal alone says whether the lease lives."""
        self.kv = kv
        self.ttl = ttl
        self.every = every
        self.name = name
        self.on_grant = on_grant
        self.proof = proof
        self.proof_every = proof_every
        self._proved_at = 0.0                 # monotonic time of the last proof
        self.log = logger or log
        self.lease: int | None = None
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lease ----------------------------------------------------------------
    def grant(self) -> int:
        """A new lease (the one held before, if any, is left to lapse)."""
        self.lease = self.kv.grant_lease(self.ttl)
        if self.on_grant is not None:
            self.on_grant(self.lease)
        return self.lease

    def renew(self) -> int:
        """Renew the lease: the TTL etcd answered (0: it is gone)."""
        if self.lease is None:
            raise RuntimeError(f"{self.name}: no lease to renew")
        return self.kv.refresh_lease(self.lease)

    def drop(self) -> None:
        """Forget the lease without giving it back: it lapses after its TTL."""
        self.lease = None

    def revoke(self) -> None:
        """Give the lease back: its keys go at once."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self.kv.revoke_lease(lease)

    def beat(self) -> bool:
        """Grant when there is no lease, else renew it; a lease etcd says is
        gone (TTL 0), or whose proof fails, is granted anew at once. The proof
        (a write) runs at most every ``proof_every`` seconds."""
        if self.lease is None:
            self.grant()
            self._proved_at = time.monotonic()
            return True
        if self.renew() <= 0:
            self.log.warning("%s: lease %x ran out; taking a new one", self.name, self.lease)
            self.drop()
            self.grant()
            self._proved_at = time.monotonic()
            return True
        if self.proof is not None and time.monotonic() - self._proved_at >= self.proof_every:
            self._proved_at = time.monotonic()
            if not self.proof():
                self.drop()
                self.grant()
        return True

    # -- the thread ---------------------------------------------------------------
    def start(self, beat: Callable[[], bool] | None = None, at_once: bool = False) -> LeaseKeeper:
        """Beat every ``every`` seconds from a thread (the first beat at once
        with ``at_once``, else after ``every``)."""
        self.stopped.clear()
        self._thread = threading.Thread(target=self._run, args=(beat or self.beat, at_once),
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self, beat: Callable[[], bool], at_once: bool) -> None:
        if not at_once and self.stopped.wait(self.every):
            return
        while not self.stopped.is_set():
            try:
                if beat() is False:
                    return
            except NetpluginError as exc:
                self.log.warning("%s: %s", self.name, exc.message)
                self.drop()
            except Exception:         # a failed beat must not end the keeping
                self.log.exception("%s failed", self.name)
                self.drop()
            self.stopped.wait(self.every)

    def stop(self, wait: float | None = None) -> None:
        """End the thread (waiting up to ``wait`` seconds for it); the lease is kept."""
        self.stopped.set()
        thread = self._thread
        if wait is not None and thread is not None and thread.is_alive() \
                and thread is not threading.current_thread():
            thread.join(wait)
