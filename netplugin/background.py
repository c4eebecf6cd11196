"""Work a protocol handler does not make Docker wait for, or runs alongside
its own: three small thread pools, made on first use.

* ``later``: one thread, in submission order, after the handler has answered
  (the sandbox record after Join, gratuitous ARP, deferred flow deletions);
* ``alongside``: up to eight threads for work a handler starts and a later
  call waits for (the port removal Leave begins and DeleteEndpoint finishes);
* ``soon``: one thread of its own for deletions the kernel does one at a time
  (veths), with a bounded backlog: past ``BACKLOG`` waiting, the caller runs
  its own, which bounds what a crash could leave to the reconciler.

A failure in background work is logged, never lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import NetpluginError

log = logging.getLogger(__name__)

BACKLOG = 64        # jobs waiting for the ``soon`` thread at most; past it the caller runs its own


class Background:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._later: ThreadPoolExecutor | None = None
        self._helpers: ThreadPoolExecutor | None = None
        self._soon: ThreadPoolExecutor | None = None
        self._soon_pending = 0

    def later(self, fn: Callable, *args) -> Future:
        """Run fn(*args) on the background thread, in submission order."""
        with self._lock:
            if self._later is None:
                self._later = ThreadPoolExecutor(max_workers=1, thread_name_prefix="np-later")
        return self._later.submit(self._logged, fn, *args)

    def alongside(self, fn: Callable, *args) -> Future:
        """Run fn(*args) on a helper thread; its errors reach whoever waits for the future."""
        with self._lock:
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="np-helper")
        return self._helpers.submit(fn, *args)

    def after(self, delay: float, fn: Callable, *args) -> None:
        """Run fn(*args) on the background thread once delay seconds have passed."""
        timer = threading.Timer(delay, self.later, (fn, *args))
        timer.daemon = True
        timer.start()

    def soon(self, fn: Callable, *args) -> None:
        """Run fn(*args) on the ``soon`` thread, or here when BACKLOG jobs wait already."""
        with self._lock:
            queue = None
            if self._soon_pending < BACKLOG:
                self._soon_pending += 1
                if self._soon is None:
                    self._soon = ThreadPoolExecutor(max_workers=1, thread_name_prefix="np-veth")
                queue = self._soon
        if queue is None:
            fn(*args)
            return
        queue.submit(self._counted, fn, *args)

    def _counted(self, fn: Callable, *args) -> None:
        try:
            self._logged(fn, *args)
        finally:
            with self._lock:
                self._soon_pending -= 1

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until the work queued after earlier answers is done."""
        self.later(lambda: None).result(timeout=timeout)
        with self._lock:
            soon = self._soon
        if soon is not None:
            soon.submit(lambda: None).result(timeout=timeout)

    @staticmethod
    def _logged(fn: Callable, *args) -> None:
        name = getattr(fn, "__name__", fn)
        try:
            fn(*args)
        except NetpluginError as exc:
            log.warning("background %s failed: %s", name, exc.message)
        except Exception:  # background work must not fail silently
            log.exception("background %s failed", name)
